//! Upload sessions (`uploads`): size, running hash state and driver state after every
//! request, so that any replica can take the next one; and the last of those states known
//! durable (the checkpoint, migration V10).

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
    /// The checkpoint: how much of the upload is known durable, and the hash state there.
    pub synced_size: u64,
    pub synced_hash_state: Vec<u8>,
    /// Boot id of the kernel holding the bytes past the checkpoint ('' when there are none).
    pub unsynced_on: String,
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
            synced_size: u64_col(r, "synced_size")?,
            synced_hash_state: r
                .try_get::<Option<Vec<u8>>, _>("synced_hash_state")?
                .unwrap_or_default(),
            unsynced_on: r.try_get("unsynced_on")?,
        })
    }
}

const SELECT_UPLOAD: &str =
    "SELECT u.id, r.name AS repository, u.size, u.hash_state, u.driver_state,
            u.synced_size, u.synced_hash_state, u.unsynced_on
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
            "INSERT INTO uploads (id, repository_id, size, hash_state, driver_state, created_at, updated_at,
                                  synced_size, synced_hash_state, unsynced_on)
             VALUES ($1, $2, 0, $3, $4, $5, $5, 0, $3, '')",
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

    /// Records an upload's progress (size, states and checkpoint as `to` holds them) if it is
    /// still at `expected_size` (another request may have moved it on). Returns false if it
    /// was not.
    pub async fn save_upload_progress(
        &self,
        expected_size: u64,
        to: &UploadRecord,
    ) -> MetaResult<bool> {
        retrying!(
            "save_upload_progress",
            self.save_upload_progress_once(expected_size, to)
        )
    }

    async fn save_upload_progress_once(
        &self,
        expected_size: u64,
        to: &UploadRecord,
    ) -> MetaResult<bool> {
        // One statement, so no transaction around it: a PATCH's only write. Relaxed: the
        // caller records which kernel wrote it (`unsynced_on`) and treats the state as
        // unconfirmed on any other.
        let statement = sqlx::query(
            "UPDATE uploads SET size = $3, hash_state = $4, driver_state = $5, updated_at = $6,
                    synced_size = $7, synced_hash_state = $8, unsynced_on = $9
             WHERE id = $1 AND size = $2",
        )
        .bind(to.id.as_str())
        .bind(expected_size as i64)
        .bind(to.size as i64)
        .bind(to.hash_state.as_slice())
        .bind(to.driver_state.as_str())
        .bind(now_ms())
        .bind(to.synced_size as i64)
        .bind(to.synced_hash_state.as_slice())
        .bind(to.unsynced_on.as_str());
        let done = self.write_relaxed(statement).await?;
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
