//! Upload sessions (`uploads`): size, running hash state and driver state after every
//! request, so that any replica can take the next one.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{FromRow, from_rows, now_ms, u64_col};
use super::{MetaError, MetaResult, MetaStore};
use crate::oci::{RepoName, UploadId};

#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub id: UploadId,
    pub repository: String,
    pub size: u64,
    pub hash_state: Vec<u8>,
    pub driver_state: String,
}

impl FromRow for UploadRecord {
    fn from_row(r: &AnyRow) -> MetaResult<Self> {
        let id: String = r.try_get("id")?;
        Ok(UploadRecord {
            id: id
                .parse()
                .map_err(|_| MetaError::Corrupt(format!("upload id {id:?}")))?,
            repository: r.try_get("repository")?,
            size: u64_col(r, "size")?,
            hash_state: r.try_get("hash_state")?,
            driver_state: r.try_get("driver_state")?,
        })
    }
}

const SELECT_UPLOAD: &str =
    "SELECT u.id, r.name AS repository, u.size, u.hash_state, u.driver_state
     FROM uploads u JOIN repositories r ON r.id = u.repository_id";

impl MetaStore {
    pub async fn upload(&self, id: &UploadId) -> MetaResult<Option<UploadRecord>> {
        let row = sqlx::query(&format!("{SELECT_UPLOAD} WHERE u.id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(UploadRecord::from_row).transpose()
    }

    /// Uploads not touched since `before_ms`.
    pub async fn stale_uploads(&self, before_ms: i64) -> MetaResult<Vec<UploadRecord>> {
        let rows = sqlx::query(&format!("{SELECT_UPLOAD} WHERE u.updated_at < $1"))
            .bind(before_ms)
            .fetch_all(&self.pool)
            .await?;
        from_rows(&rows)
    }

    pub async fn create_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        hash_state: &[u8],
        driver_state: &str,
    ) -> MetaResult<()> {
        retrying!(
            "create_upload",
            self.create_upload_once(repo, id, hash_state, driver_state)
        )
    }

    async fn create_upload_once(
        &self,
        repo: &RepoName,
        id: &UploadId,
        hash_state: &[u8],
        driver_state: &str,
    ) -> MetaResult<()> {
        let mut tx = self.begin_write().await?;
        let repo_id = tx.ensure_repository(repo).await?;
        sqlx::query(
            "INSERT INTO uploads (id, repository_id, size, hash_state, driver_state, created_at, updated_at)
             VALUES ($1, $2, 0, $3, $4, $5, $5)",
        )
        .bind(id.as_str())
        .bind(repo_id)
        .bind(hash_state)
        .bind(driver_state)
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// Records an upload's progress if it is still at `expected_size` (another request may have
    /// moved it on). Returns false if it was not.
    pub async fn save_upload_progress(
        &self,
        id: &UploadId,
        expected_size: u64,
        size: u64,
        hash_state: &[u8],
        driver_state: &str,
    ) -> MetaResult<bool> {
        retrying!(
            "save_upload_progress",
            self.save_upload_progress_once(id, expected_size, size, hash_state, driver_state)
        )
    }

    async fn save_upload_progress_once(
        &self,
        id: &UploadId,
        expected_size: u64,
        size: u64,
        hash_state: &[u8],
        driver_state: &str,
    ) -> MetaResult<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE uploads SET size = $3, hash_state = $4, driver_state = $5, updated_at = $6
             WHERE id = $1 AND size = $2",
        )
        .bind(id.as_str())
        .bind(expected_size as i64)
        .bind(size as i64)
        .bind(hash_state)
        .bind(driver_state)
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn delete_upload(&self, id: &UploadId) -> MetaResult<bool> {
        retrying!("delete_upload", self.delete_upload_once(id))
    }

    async fn delete_upload_once(&self, id: &UploadId) -> MetaResult<bool> {
        let mut tx = self.begin_write().await?;
        let deleted = tx.delete_upload(id).await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

impl super::WriteTx {
    pub(super) async fn delete_upload(&mut self, id: &UploadId) -> MetaResult<bool> {
        let done = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id.as_str())
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
