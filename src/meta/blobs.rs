//! Blobs and their links into repositories (`blobs`, `repository_blobs`): which bytes are
//! stored, and which repositories may serve them.

use sqlx::Row;

use super::sql::{digest_col, now_ms, u64_col};
use super::{DeleteOutcome, MetaError, MetaResult, MetaStore, WriteTx};
use crate::oci::{Digest, RepoName, UploadId};

/// A blob row as fsck sees it.
#[derive(Debug, Clone)]
pub struct BlobRow {
    pub digest: Digest,
    pub size: u64,
    /// `active`, or `deleting` (GC phase 1 done, phase 2 not yet).
    pub status: String,
}

/// A claim on a digest that no blob row knows, taken to delete its orphaned object (fsck):
/// an uncommitted `deleting` row that an upload of the same digest waits for, so the object
/// cannot be replaced by a live one between the check and the delete. Dropping it rolls back.
pub struct OrphanClaim {
    tx: WriteTx,
    digest: Digest,
}

impl OrphanClaim {
    /// The object is deleted: removes the claim and commits.
    pub async fn finish(mut self) -> MetaResult<()> {
        sqlx::query("DELETE FROM blobs WHERE digest = $1 AND status = 'deleting'")
            .bind(self.digest.as_str())
            .execute(self.tx.conn())
            .await?;
        self.tx.commit().await
    }
}

/// An open commit of an uploaded blob: the blob row is locked until `finish` or drop.
pub struct BlobCommit {
    tx: WriteTx,
    needs_object: bool,
    /// The row is this transaction's own insert: nothing can refer to it yet (`lost_blobs`
    /// rows go with the blob row they name).
    inserted: bool,
}

impl MetaStore {
    /// Size of `digest` if this repository may serve it: the blob is stored (active) and is
    /// linked to the repository (uploaded or mounted there) or referenced by one of its
    /// manifests.
    #[tracing::instrument(skip_all)]
    pub async fn blob_in_repository(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> MetaResult<Option<u64>> {
        let row = sqlx::query(
            "SELECT b.size FROM blobs b, repositories r
             WHERE r.name = $1 AND b.digest = $2 AND b.status = 'active'
               AND NOT EXISTS (SELECT 1 FROM lost_blobs l WHERE l.digest = b.digest)
               AND (EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = r.id AND rb.blob_digest = b.digest)
                 OR EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.repository_id = r.id AND mb.blob_digest = b.digest))",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| u64_col(&r, "size")).transpose()
    }

    /// Size of `digest` if it is stored anywhere in the registry.
    pub async fn blob_stored(&self, digest: &Digest) -> MetaResult<Option<u64>> {
        let row = sqlx::query(
            "SELECT size FROM blobs b WHERE b.digest = $1 AND b.status = 'active'
               AND NOT EXISTS (SELECT 1 FROM lost_blobs l WHERE l.digest = b.digest)",
        )
        .bind(digest.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| u64_col(&r, "size")).transpose()
    }

    /// Every blob row (fsck).
    pub async fn all_blobs(&self) -> MetaResult<Vec<BlobRow>> {
        let rows = sqlx::query("SELECT digest, size, status FROM blobs ORDER BY digest")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(BlobRow {
                    digest: digest_col(r, "digest")?,
                    size: u64_col(r, "size")?,
                    status: r.try_get("status")?,
                })
            })
            .collect()
    }

    /// Records that an active blob's object is missing or damaged (fsck --repair), after
    /// `still_lost` confirms it under the row's lock (an upload may have restored it since the
    /// listing). Returns whether it was recorded.
    pub async fn mark_lost<F, Fut>(&self, digest: &Digest, still_lost: F) -> MetaResult<bool>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT status FROM blobs WHERE digest = $1{}",
            tx.dialect.lock_update()
        );
        let active = sqlx::query(&sql)
            .bind(digest.as_str())
            .fetch_optional(tx.conn())
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?
            .is_some_and(|s| s == "active");
        if !active || !still_lost().await {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO lost_blobs (digest, found_at) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest.as_str())
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Claims `digest` for deleting an orphaned object, if no row (committed or being
    /// inserted by an upload) knows it; waits for an upload inserting it to finish.
    pub async fn claim_orphan(&self, digest: &Digest) -> MetaResult<Option<OrphanClaim>> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO blobs (digest, size, status, created_at) VALUES ($1, 0, 'deleting', $2)
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest.as_str())
        .bind(now_ms())
        .execute(tx.conn())
        .await?
        .rows_affected()
            == 1;
        Ok(inserted.then(|| OrphanClaim {
            tx,
            digest: digest.clone(),
        }))
    }

    /// Starts committing an uploaded blob. The blob row is created or locked; if
    /// [`BlobCommit::needs_object`] the caller must put the object in place before
    /// [`BlobCommit::finish`] (the row lock keeps GC from deleting it meanwhile).
    #[tracing::instrument(skip_all)]
    pub async fn begin_blob_commit(&self, digest: &Digest, size: u64) -> MetaResult<BlobCommit> {
        let mut tx = self.begin_write().await?;
        // A few rounds at most: a row can vanish between our insert and our lock only when GC
        // finishes deleting it in between, and then the next insert succeeds.
        for _ in 0..5 {
            let inserted = sqlx::query(
                "INSERT INTO blobs (digest, size, status, created_at) VALUES ($1, $2, 'active', $3)
                 ON CONFLICT (digest) DO NOTHING",
            )
            .bind(digest.as_str())
            .bind(size as i64)
            .bind(now_ms())
            .execute(tx.conn())
            .await?
            .rows_affected()
                == 1;
            if inserted {
                return Ok(BlobCommit {
                    tx,
                    needs_object: true,
                    inserted: true,
                });
            }
            let sql = format!(
                "SELECT status FROM blobs WHERE digest = $1{}",
                tx.dialect.lock_update()
            );
            let Some(row) = sqlx::query(&sql)
                .bind(digest.as_str())
                .fetch_optional(tx.conn())
                .await?
            else {
                continue;
            };
            let status: String = row.try_get(0)?;
            let lost = sqlx::query("SELECT 1 FROM lost_blobs WHERE digest = $1")
                .bind(digest.as_str())
                .fetch_optional(tx.conn())
                .await?
                .is_some();
            if status == "active" && !lost {
                // A duplicate upload protects the blob for a full grace period, as the first
                // did (the row is locked: GC's re-check waits for this commit and sees it).
                sqlx::query("UPDATE blobs SET created_at = $2 WHERE digest = $1")
                    .bind(digest.as_str())
                    .bind(now_ms())
                    .execute(tx.conn())
                    .await?;
                return Ok(BlobCommit {
                    tx,
                    needs_object: false,
                    inserted: false,
                });
            }
            // GC has committed to deleting this object and may have removed it already (or
            // fsck found it lost); the upload writes it again, under this row lock, and
            // revives the row.
            sqlx::query("UPDATE blobs SET status = 'active', created_at = $2 WHERE digest = $1")
                .bind(digest.as_str())
                .bind(now_ms())
                .execute(tx.conn())
                .await?;
            return Ok(BlobCommit {
                tx,
                needs_object: true,
                inserted: false,
            });
        }
        Err(MetaError::Busy(format!(
            "blob {digest} kept changing under the upload"
        )))
    }

    /// Links a stored blob into `repo` (a cross-repository mount). Returns its size, or None if
    /// the blob is not stored.
    #[tracing::instrument(skip_all)]
    pub async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> MetaResult<Option<u64>> {
        retrying!("link_blob", self.link_blob_once(repo, digest))
    }

    async fn link_blob_once(&self, repo: &RepoName, digest: &Digest) -> MetaResult<Option<u64>> {
        let mut tx = self.begin_write().await?;
        // The repository row first: rows are locked in one global order (postgres.rs), and
        // a new repository's row is locked by its insert until commit.
        let repo_id = tx.ensure_repository(repo).await?;
        // Refreshing the row's age both locks it (a GC mark waits for this commit, then its
        // re-check sees a young blob) and protects the blob for a full grace period. If GC
        // marked it first, the re-evaluated `status` no longer matches: nothing is mounted.
        let Some(row) = sqlx::query(
            "UPDATE blobs SET created_at = $2 WHERE digest = $1 AND status = 'active'
               AND NOT EXISTS (SELECT 1 FROM lost_blobs l WHERE l.digest = blobs.digest)
             RETURNING size",
        )
        .bind(digest.as_str())
        .bind(now_ms())
        .fetch_optional(tx.conn())
        .await?
        else {
            return Ok(None);
        };
        let size = u64_col(&row, "size")?;
        tx.link(repo_id, digest).await?;
        tx.review_blob(digest, now_ms());
        crate::failpoint::hit("mount.linked", repo.as_str()).await;
        tx.commit().await?;
        Ok(Some(size))
    }

    /// Removes a blob's link from a repository, unless a manifest there still references it.
    #[tracing::instrument(skip_all)]
    pub async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> MetaResult<DeleteOutcome> {
        retrying!("unlink_blob", self.unlink_blob_once(repo, digest))
    }

    async fn unlink_blob_once(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> MetaResult<DeleteOutcome> {
        let mut tx = self.begin_write().await?;
        let Some(repo_id) = tx.repository_id(repo).await? else {
            return Ok(DeleteOutcome::NotFound);
        };
        let user = sqlx::query(
            "SELECT m.digest FROM manifest_blobs mb JOIN manifests m ON m.id = mb.manifest_id
             WHERE mb.repository_id = $1 AND mb.blob_digest = $2 LIMIT 1",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .fetch_optional(tx.conn())
        .await?;
        if let Some(row) = user {
            return Ok(DeleteOutcome::ReferencedBy(digest_col(&row, "digest")?));
        }
        let done = sqlx::query(
            "DELETE FROM repository_blobs WHERE repository_id = $1 AND blob_digest = $2",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .execute(tx.conn())
        .await?;
        let deleted = done.rows_affected() == 1;
        if deleted {
            tx.review_blob(digest, 0);
        }
        tx.commit().await?;
        Ok(if deleted {
            DeleteOutcome::Deleted
        } else {
            DeleteOutcome::NotFound
        })
    }
}

impl WriteTx {
    async fn link(&mut self, repo_id: i64, digest: &Digest) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO repository_blobs (repository_id, blob_digest, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (repository_id, blob_digest) DO UPDATE SET created_at = excluded.created_at",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .bind(now_ms())
        .execute(self.conn())
        .await?;
        Ok(())
    }
}

impl BlobCommit {
    /// True when no stored object backs the row yet: the caller must write it before `finish`.
    pub fn needs_object(&self) -> bool {
        self.needs_object
    }

    /// Links the blob into `repo`, ends the upload (`None`: one without a row, a monolithic
    /// POST) and commits.
    pub async fn finish(
        mut self,
        repo: &RepoName,
        digest: &Digest,
        upload: Option<&UploadId>,
    ) -> MetaResult<()> {
        if let Some(upload) = upload {
            self.tx.delete_upload(upload).await?;
        }
        self.link_and_commit(repo, digest).await
    }

    /// Links a blob whose object another program put in place (and the caller checked under
    /// the row lock) into `repo`, and commits: `wharf import` adopting a Distribution tree.
    pub async fn finish_adopted(self, repo: &RepoName, digest: &Digest) -> MetaResult<()> {
        self.link_and_commit(repo, digest).await
    }

    async fn link_and_commit(mut self, repo: &RepoName, digest: &Digest) -> MetaResult<()> {
        let repo_id = self.tx.ensure_repository(repo).await?;
        self.tx.link(repo_id, digest).await?;
        // Unreferenced until a manifest uses it: GC looks again once the grace period is over.
        self.tx.review_blob(digest, now_ms());
        // The object is in place now (written or checked under the row lock). A row this
        // transaction inserted has no such record: it went with the row before (the foreign
        // key cascades).
        if !self.inserted {
            sqlx::query("DELETE FROM lost_blobs WHERE digest = $1")
                .bind(digest.as_str())
                .execute(self.tx.conn())
                .await?;
        }
        crate::failpoint::hit("upload.linked", digest.as_str()).await;
        self.tx.commit().await
    }
}
