//! Manifests and their edges (`manifests`, `manifest_blobs`, `manifest_children`), and
//! referrers (manifests with a subject).

use std::collections::HashSet;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{FromRow, bind_all, bind_digests, digest_col, from_rows, now_ms, placeholders};
use super::{DeleteOutcome, MetaResult, MetaStore, WriteTx};
use crate::oci::{Digest, RepoName, Tag};

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
    pub payload: Vec<u8>,
}

impl FromRow for ManifestRecord {
    fn from_row(r: &AnyRow) -> MetaResult<Self> {
        Ok(ManifestRecord {
            digest: digest_col(r, "digest")?,
            media_type: r.try_get("media_type")?,
            payload: r.try_get("payload")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub payload: Vec<u8>,
}

impl FromRow for Referrer {
    fn from_row(r: &AnyRow) -> MetaResult<Self> {
        Ok(Referrer {
            digest: digest_col(r, "digest")?,
            media_type: r.try_get("media_type")?,
            artifact_type: r.try_get("artifact_type")?,
            payload: r.try_get("payload")?,
        })
    }
}

/// Everything recorded for a manifest PUT.
pub struct NewManifest<'a> {
    pub repository: &'a RepoName,
    pub digest: &'a Digest,
    pub media_type: &'a str,
    pub artifact_type: Option<&'a str>,
    pub config: Option<&'a Digest>,
    pub subject: Option<&'a Digest>,
    pub payload: &'a [u8],
    pub blobs: &'a [Digest],
    /// The sizes the manifest's descriptors declare, `blob_sizes[i]` for `blobs[i]`.
    pub blob_sizes: &'a [u64],
    pub children: &'a [Digest],
    pub child_sizes: &'a [u64],
    pub tag: Option<&'a Tag>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PutManifestOutcome {
    Stored,
    MissingBlob(Digest),
    MissingChild(Digest),
    /// A descriptor declares another size than the stored blob or manifest has.
    SizeMismatch {
        digest: Digest,
        declared: u64,
        stored: u64,
    },
}

/// Rows per multi-row INSERT: far below both databases' bound-parameter limits.
const EDGE_BATCH: usize = 500;

impl MetaStore {
    #[tracing::instrument(skip_all)]
    pub async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> MetaResult<Option<ManifestRecord>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.payload FROM manifests m JOIN repositories r ON r.id = m.repository_id
             WHERE r.name = $1 AND m.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(ManifestRecord::from_row).transpose()
    }

    #[tracing::instrument(skip_all)]
    pub async fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> MetaResult<Option<ManifestRecord>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.payload
             FROM repositories r JOIN tags t ON t.repository_id = r.id JOIN manifests m ON m.id = t.manifest_id
             WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(ManifestRecord::from_row).transpose()
    }

    #[tracing::instrument(skip_all)]
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> MetaResult<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.artifact_type, m.payload
             FROM manifests m JOIN repositories r ON r.id = m.repository_id
             WHERE r.name = $1 AND m.subject_digest = $2 AND ($3 = '' OR m.artifact_type = $3)
             ORDER BY m.digest",
        )
        .bind(repo.as_str())
        .bind(subject.as_str())
        .bind(artifact_type.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        from_rows(&rows)
    }

    /// Records a manifest, its edges and its tag in one transaction. Every referenced blob
    /// must be stored and servable in the repository, and every child must be a manifest of
    /// the repository; they stay locked until commit so that GC cannot remove them meanwhile.
    #[tracing::instrument(skip_all)]
    pub async fn put_manifest(&self, m: &NewManifest<'_>) -> MetaResult<PutManifestOutcome> {
        retrying!("put_manifest", self.put_manifest_once(m))
    }

    async fn put_manifest_once(&self, m: &NewManifest<'_>) -> MetaResult<PutManifestOutcome> {
        let mut tx = self.begin_write().await?;
        let repo_id = tx.ensure_repository(m.repository).await?;
        let now = now_ms();

        // Blobs servable in the repository, and child manifests of the repository. Row locks
        // are taken in one global order everywhere (blobs by digest, manifests by id, as GC
        // takes them), so that these locks and GC's cannot form a deadlock.
        const BLOBS: &str = "SELECT b.digest, b.size FROM blobs b
             WHERE b.digest IN ({in}) AND b.status = 'active'
               AND NOT EXISTS (SELECT 1 FROM lost_blobs l WHERE l.digest = b.digest)
               AND (EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = $1 AND rb.blob_digest = b.digest)
                 OR EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.repository_id = $1 AND mb.blob_digest = b.digest))
             ORDER BY b.digest";
        const CHILDREN: &str =
            "SELECT id, digest, total_size, CAST(length(payload) AS BIGINT) AS size FROM manifests
             WHERE repository_id = $1 AND digest IN ({in}) ORDER BY id";
        let blobs = match tx.lock_referenced(BLOBS, repo_id, m.blobs).await? {
            Ok(rows) => rows,
            Err(missing) => return Ok(PutManifestOutcome::MissingBlob(missing)),
        };
        let children = match tx.lock_referenced(CHILDREN, repo_id, m.children).await? {
            Ok(rows) => rows,
            Err(missing) => return Ok(PutManifestOutcome::MissingChild(missing)),
        };
        let wanted = m.blobs.iter().zip(m.blob_sizes);
        let wanted = wanted.chain(m.children.iter().zip(m.child_sizes));
        for (digest, &declared) in wanted {
            let row = blobs.iter().chain(&children).find(|r| {
                r.try_get::<String, _>("digest")
                    .is_ok_and(|d| d == digest.as_str())
            });
            if let Some(r) = row {
                let stored = r.try_get::<i64, _>("size")? as u64;
                if stored != declared {
                    return Ok(PutManifestOutcome::SizeMismatch {
                        digest: digest.clone(),
                        declared,
                        stored,
                    });
                }
            }
        }
        let mut referenced_size: i64 = 0;
        for r in &blobs {
            referenced_size += r.try_get::<i64, _>("size")?;
        }
        for r in &children {
            referenced_size += r.try_get::<i64, _>("total_size")?;
        }
        let child_ids = children
            .iter()
            .map(|r| r.try_get::<i64, _>("id"))
            .collect::<Result<Vec<_>, _>>()?;
        crate::failpoint::hit("manifest_put.locked", m.repository.as_str()).await;

        // A re-push of a stored manifest refreshes its age (GC's grace period counts from the
        // latest push) and, on PostgreSQL, locks its row: if GC is deleting it, this waits and
        // then inserts it afresh. Edges are idempotent, so both paths write them.
        let manifest_id: i64 = sqlx::query(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, config_digest, subject_digest,
                                    payload, total_size, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at
             RETURNING id",
        )
        .bind(repo_id)
        .bind(m.digest.as_str())
        .bind(m.media_type)
        .bind(m.artifact_type)
        .bind(m.config.map(Digest::as_str))
        .bind(m.subject.map(Digest::as_str))
        .bind(m.payload)
        .bind(m.payload.len() as i64 + referenced_size)
        .bind(now)
        .fetch_one(tx.conn())
        .await?
        .try_get(0)?;
        tx.insert_edges(manifest_id, repo_id, m.blobs, &child_ids)
            .await?;
        // Untagged (or untagged later) it becomes garbage once the grace period is over.
        tx.review_manifest(manifest_id, now);
        if let Some(tag) = m.tag {
            tx.set_tag(repo_id, tag, manifest_id, now).await?;
        }
        tx.commit().await?;
        Ok(PutManifestOutcome::Stored)
    }

    /// Deletes a manifest (and the tags pointing at it) unless an index in the repository
    /// still lists it.
    #[tracing::instrument(skip_all)]
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> MetaResult<DeleteOutcome> {
        retrying!("delete_manifest", self.delete_manifest_once(repo, digest))
    }

    async fn delete_manifest_once(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> MetaResult<DeleteOutcome> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT m.id FROM manifests m JOIN repositories r ON r.id = m.repository_id
             WHERE r.name = $1 AND m.digest = $2{}",
            tx.dialect.lock_update()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(repo.as_str())
            .bind(digest.as_str())
            .fetch_optional(tx.conn())
            .await?
        else {
            return Ok(DeleteOutcome::NotFound);
        };
        let id: i64 = row.try_get(0)?;
        let parent = sqlx::query(
            "SELECT p.digest FROM manifest_children c JOIN manifests p ON p.id = c.parent_id WHERE c.child_id = $1 LIMIT 1",
        )
        .bind(id)
        .fetch_optional(tx.conn())
        .await?;
        if let Some(p) = parent {
            return Ok(DeleteOutcome::ReferencedBy(digest_col(&p, "digest")?));
        }
        tx.review_dependents(&[id]).await?;
        tx.delete_manifest_rows(&[id]).await?;
        tx.commit().await?;
        Ok(DeleteOutcome::Deleted)
    }
}

impl WriteTx {
    /// Runs `select` (`$1` the repository, `{in}` where the digest list goes) over `digests`
    /// with a share lock on every row found, so that GC cannot delete them before commit.
    /// Returns the rows, or the first digest no row was found for.
    async fn lock_referenced(
        &mut self,
        select: &str,
        repo_id: i64,
        digests: &[Digest],
    ) -> MetaResult<Result<Vec<AnyRow>, Digest>> {
        if digests.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let sql = format!(
            "{}{}",
            select.replace("{in}", &placeholders(2, digests.len())),
            self.dialect.lock_share()
        );
        let rows = bind_digests(sqlx::query(&sql).bind(repo_id), digests)
            .fetch_all(self.conn())
            .await?;
        let found: HashSet<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>("digest"))
            .collect::<Result<_, _>>()?;
        Ok(match digests.iter().find(|d| !found.contains(d.as_str())) {
            Some(missing) => Err(missing.clone()),
            None => Ok(rows),
        })
    }

    /// Deletes a manifest row; its tags and edges go with it (ON DELETE CASCADE).
    pub(super) async fn delete_manifest_rows(&mut self, ids: &[i64]) -> MetaResult<()> {
        for chunk in ids.chunks(EDGE_BATCH) {
            let sql = format!(
                "DELETE FROM manifests WHERE id IN ({})",
                placeholders(1, chunk.len())
            );
            bind_all(sqlx::query(&sql), chunk.iter().copied())
                .execute(self.conn())
                .await?;
        }
        Ok(())
    }

    async fn insert_edges(
        &mut self,
        manifest_id: i64,
        repo_id: i64,
        blobs: &[Digest],
        child_ids: &[i64],
    ) -> MetaResult<()> {
        for chunk in blobs.chunks(EDGE_BATCH) {
            let values = (0..chunk.len())
                .map(|i| format!("($1, $2, ${})", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO manifest_blobs (manifest_id, repository_id, blob_digest) VALUES {values}
                 ON CONFLICT (manifest_id, blob_digest) DO NOTHING"
            );
            bind_digests(sqlx::query(&sql).bind(manifest_id).bind(repo_id), chunk)
                .execute(self.conn())
                .await?;
        }
        for chunk in child_ids.chunks(EDGE_BATCH) {
            let values = (0..chunk.len())
                .map(|i| format!("($1, ${})", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO manifest_children (parent_id, child_id) VALUES {values}
                 ON CONFLICT (parent_id, child_id) DO NOTHING"
            );
            bind_all(sqlx::query(&sql).bind(manifest_id), chunk.iter().copied())
                .execute(self.conn())
                .await?;
        }
        Ok(())
    }
}
