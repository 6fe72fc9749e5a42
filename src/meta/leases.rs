//! Job leases (`job_leases`): which replica runs a background job now.

use super::sql::now_ms;
use super::{MetaResult, MetaStore};

impl MetaStore {
    /// Takes or renews the lease on `job` for `ttl_ms` if it is free, expired, or already
    /// `holder`'s. Returns whether `holder` holds it now.
    pub async fn take_lease(&self, job: &str, holder: &str, ttl_ms: i64) -> MetaResult<bool> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO job_leases (job, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE job_leases.holder = excluded.holder OR job_leases.expires_at < $4
             RETURNING holder",
        )
        .bind(job)
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(now)
        .fetch_optional(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(row.is_some())
    }

    /// Gives the lease up (a replica stopping), so another may take the job at once.
    pub async fn release_lease(&self, job: &str, holder: &str) -> MetaResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM job_leases WHERE job = $1 AND holder = $2")
            .bind(job)
            .bind(holder)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }
}
