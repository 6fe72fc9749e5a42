//! Import progress (`imported_repositories`): which repositories of a Distribution tree
//! `wharf import` has finished.

use std::collections::HashSet;

use sqlx::Row;

use super::sql::now_ms;
use super::{MetaResult, MetaStore};

impl MetaStore {
    /// Names of the repositories imported so far.
    pub async fn imported_repositories(&self) -> MetaResult<HashSet<String>> {
        let rows = sqlx::query("SELECT name FROM imported_repositories")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?)
    }

    /// Records that `name` is imported completely.
    pub async fn mark_imported(&self, name: &str) -> MetaResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO imported_repositories (name, imported_at) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET imported_at = excluded.imported_at",
        )
        .bind(name)
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// Forgets the progress (`wharf import --again` reads every repository again).
    pub async fn forget_imports(&self) -> MetaResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM imported_repositories")
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }
}
