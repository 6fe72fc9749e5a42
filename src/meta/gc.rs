//! Garbage collection in SQL: which rows are garbage, and deleting them so that no
//! acknowledged manifest can ever reference a blob whose object is gone. The protocol and the
//! argument are in docs/gc.md; every step here names the rule it implements.
//!
//! Rule L (lock, then look): every deletion first locks the rows it will delete in one
//! statement, and only then, in a *new* statement, re-checks that they are garbage. On
//! PostgreSQL at READ COMMITTED a new statement sees everything committed before the lock was
//! granted, including the edges of a manifest PUT that held the row `FOR SHARE`; a single
//! `SELECT … WHERE NOT EXISTS … FOR UPDATE` would not (its subqueries keep the old snapshot).
//! On SQLite the write transaction holds the database's write lock, which is stronger.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{
    FromRow, bind_all, bind_digests, digest_col, from_rows, now_ms, placeholders, u64_col,
};
use super::{MetaResult, MetaStore, WriteTx};
use crate::oci::Digest;

/// What counts as garbage in one run.
#[derive(Debug, Clone, Copy)]
pub struct GcPolicy {
    /// Rows created (pushed, linked) after this instant (Unix ms) are never garbage.
    pub cutoff_ms: i64,
    /// Untagged manifests that no index lists are garbage.
    pub delete_untagged: bool,
}

impl GcPolicy {
    pub fn with_grace(grace: std::time::Duration, delete_untagged: bool) -> Self {
        GcPolicy {
            cutoff_ms: now_ms() - grace.as_millis() as i64,
            delete_untagged,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GcManifest {
    pub repository: String,
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GcBlob {
    pub digest: Digest,
    pub size: u64,
}

/// What a run would delete (dry run).
#[derive(Debug, Default)]
pub struct GcPlan {
    pub manifests: Vec<GcManifest>,
    pub links: u64,
    pub blobs: Vec<GcBlob>,
}

/// A manifest is unreferenced, judged from its own row and its direct neighbours: untagged,
/// listed by no index, and either a referrer whose subject is gone from its repository or
/// (with delete_untagged, the parameter `$flag`) not a referrer at all. The manifest graph is
/// a DAG (a digest cannot contain itself), so deleting what is unreferenced and old enough
/// until nothing changes deletes exactly what is unreachable from the roots (see `gc_plan`).
fn manifest_unreferenced(flag: usize) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)
    AND NOT EXISTS (SELECT 1 FROM manifest_children c WHERE c.child_id = m.id)
    AND ((m.subject_digest IS NULL AND ${flag} = 1)
      OR (m.subject_digest IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM manifests s WHERE s.repository_id = m.repository_id AND s.digest = m.subject_digest)))"
    )
}

/// A manifest is garbage: older than the cutoff (`$1`) and unreferenced (policy flag `$2`).
fn manifest_is_garbage() -> String {
    format!("m.created_at < $1 AND {}", manifest_unreferenced(2))
}

/// A blob is garbage: stored, old enough, linked to no repository, referenced by no manifest.
const BLOB_IS_GARBAGE: &str = "b.status = 'active' AND b.created_at < $1
    AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.blob_digest = b.digest)
    AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest)";

/// A link is garbage: old enough and no manifest of its repository references the blob.
/// (Written against the table's own name rather than an alias: the DELETE below applies it
/// to the row it deletes, so PostgreSQL re-evaluates the age of a row it had to wait for.)
const LINK_IS_GARBAGE: &str = "repository_blobs.created_at < $1
    AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb
                    WHERE mb.repository_id = repository_blobs.repository_id AND mb.blob_digest = repository_blobs.blob_digest)";

/// Blob rows whose deletion was committed (phase 1) but not finished (phase 2).
pub struct BlobDelete {
    tx: WriteTx,
    digests: Vec<GcBlob>,
}

impl FromRow for GcManifest {
    fn from_row(r: &AnyRow) -> MetaResult<Self> {
        Ok(GcManifest {
            repository: r.try_get("name")?,
            digest: digest_col(r, "digest")?,
            size: u64_col(r, "total_size")?,
        })
    }
}

impl FromRow for GcBlob {
    fn from_row(r: &AnyRow) -> MetaResult<Self> {
        Ok(GcBlob {
            digest: digest_col(r, "digest")?,
            size: u64_col(r, "size")?,
        })
    }
}

impl BlobDelete {
    /// The blobs whose objects must be deleted before `finish`.
    pub fn blobs(&self) -> &[GcBlob] {
        &self.digests
    }

    /// Fails unless the transaction, and so its row locks, is still alive: the session may
    /// have been ended meanwhile (idle timeout, `pg_terminate_backend`, failover), and then an
    /// upload may already have revived a row and written its object.
    pub async fn still_locked(&mut self) -> MetaResult<()> {
        sqlx::query("SELECT 1").execute(self.tx.conn()).await?;
        Ok(())
    }

    /// Deletes the rows of `done` (blobs of this batch whose objects are gone) and commits.
    /// The rest stay `deleting` for the next run.
    pub async fn finish(mut self, done: &[GcBlob]) -> MetaResult<()> {
        if !done.is_empty() {
            let sql = format!(
                "DELETE FROM blobs WHERE status = 'deleting' AND digest IN ({})",
                placeholders(1, done.len())
            );
            bind_all(sqlx::query(&sql), done.iter().map(|b| b.digest.as_str()))
                .execute(self.tx.conn())
                .await?;
        }
        self.tx.commit().await
    }
}

fn policy_flag(p: &GcPolicy) -> i64 {
    i64::from(p.delete_untagged)
}

impl MetaStore {
    /// Up to `limit` manifests that look like garbage now (unlocked; `gc_delete_manifests`
    /// re-checks).
    pub async fn gc_manifest_candidates(&self, p: &GcPolicy, limit: i64) -> MetaResult<Vec<i64>> {
        let garbage = manifest_is_garbage();
        let sql = format!("SELECT m.id FROM manifests m WHERE {garbage} ORDER BY m.id LIMIT $3");
        let rows = sqlx::query(&sql)
            .bind(p.cutoff_ms)
            .bind(policy_flag(p))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?)
    }

    /// Deletes those of `ids` that are still garbage once locked (rule L). Returns them.
    pub async fn gc_delete_manifests(
        &self,
        ids: &[i64],
        p: &GcPolicy,
    ) -> MetaResult<Vec<GcManifest>> {
        retrying!("gc_delete_manifests", self.gc_delete_manifests_once(ids, p))
    }

    async fn gc_delete_manifests_once(
        &self,
        ids: &[i64],
        p: &GcPolicy,
    ) -> MetaResult<Vec<GcManifest>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let lock = format!(
            "SELECT id FROM manifests WHERE id IN ({}) ORDER BY id{}",
            placeholders(1, ids.len()),
            tx.dialect.lock_update()
        );
        bind_all(sqlx::query(&lock), ids.iter().copied())
            .fetch_all(tx.conn())
            .await?;

        // A new statement (rule L) picks those still garbage; all of them go together. A parent
        // deleted here queues its children, which the next batch examines.
        let check = format!(
            "SELECT m.id, r.name, m.digest, m.total_size FROM manifests m JOIN repositories r ON r.id = m.repository_id
             WHERE m.id IN ({}) AND {} ORDER BY m.id",
            placeholders(3, ids.len()),
            manifest_is_garbage()
        );
        let rows = bind_all(
            sqlx::query(&check).bind(p.cutoff_ms).bind(policy_flag(p)),
            ids.iter().copied(),
        )
        .fetch_all(tx.conn())
        .await?;
        let doomed = rows
            .iter()
            .map(|r| r.try_get::<i64, _>("id"))
            .collect::<Result<Vec<_>, _>>()?;
        tx.review_dependents(&doomed).await?;
        tx.delete_manifest_rows(&doomed).await?;
        let deleted = from_rows(&rows)?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// Up to `limit` blobs, in digest order after `after`, with links that look like garbage
    /// now (unlocked; `gc_delete_links_of` re-checks).
    pub async fn gc_link_candidates(
        &self,
        p: &GcPolicy,
        after: Option<&Digest>,
        limit: i64,
    ) -> MetaResult<Vec<Digest>> {
        let sql = format!(
            "SELECT DISTINCT repository_blobs.blob_digest FROM repository_blobs
             WHERE {LINK_IS_GARBAGE} AND repository_blobs.blob_digest > $2
             ORDER BY repository_blobs.blob_digest LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(p.cutoff_ms)
            .bind(after.map_or("", |d| d.as_str()))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| digest_col(r, "blob_digest")).collect()
    }

    /// Up to `limit` blobs that look like garbage now (unlocked).
    pub async fn gc_blob_candidates(&self, p: &GcPolicy, limit: i64) -> MetaResult<Vec<Digest>> {
        let sql = format!(
            "SELECT b.digest FROM blobs b WHERE {BLOB_IS_GARBAGE} ORDER BY b.digest LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(p.cutoff_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| digest_col(r, "digest")).collect()
    }

    /// Phase 1: marks those of `digests` that are still garbage once locked (rule L) as
    /// `deleting`, and commits. From then on no request can use them: readers, mounts and
    /// manifest PUTs only see `active` blobs.
    pub async fn gc_mark_blobs(&self, digests: &[Digest], p: &GcPolicy) -> MetaResult<u64> {
        retrying!("gc_mark_blobs", self.gc_mark_blobs_once(digests, p))
    }

    async fn gc_mark_blobs_once(&self, digests: &[Digest], p: &GcPolicy) -> MetaResult<u64> {
        if digests.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let lock = format!(
            "SELECT digest FROM blobs WHERE digest IN ({}) ORDER BY digest{}",
            placeholders(1, digests.len()),
            tx.dialect.lock_update()
        );
        bind_digests(sqlx::query(&lock), digests)
            .fetch_all(tx.conn())
            .await?;
        let mark = format!(
            "UPDATE blobs SET status = 'deleting' WHERE digest IN (
                 SELECT b.digest FROM blobs b WHERE b.digest IN ({}) AND {BLOB_IS_GARBAGE})",
            placeholders(2, digests.len())
        );
        let marked = bind_digests(sqlx::query(&mark).bind(p.cutoff_ms), digests)
            .execute(tx.conn())
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(marked)
    }

    /// Phase 2: locks up to `limit` blobs marked `deleting` (including those a crashed run
    /// left behind). The caller deletes their objects while the lock is held, then calls
    /// `finish`. A blob an upload revived meanwhile is `active` again and is not returned.
    pub async fn gc_begin_blob_delete(&self, limit: i64) -> MetaResult<BlobDelete> {
        let mut tx = self.begin_write().await?;
        let lock = format!(
            "SELECT digest FROM blobs WHERE status = 'deleting' ORDER BY digest LIMIT $1{}",
            tx.dialect.lock_update()
        );
        let locked = sqlx::query(&lock).bind(limit).fetch_all(tx.conn()).await?;
        let mut digests = Vec::new();
        if !locked.is_empty() {
            let locked = locked
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<Vec<_>, _>>()?;
            // Defence in depth, under the locks and in a fresh statement: a marked blob that
            // anything references was marked by a broken protocol. Its object is not deleted;
            // the row goes back to `active` (if the object is already gone, fsck reports it and
            // the next push of the blob restores it).
            let revive = format!(
                "UPDATE blobs SET status = 'active' WHERE status = 'deleting' AND digest IN ({})
                   AND (EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = blobs.digest)
                     OR EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.blob_digest = blobs.digest))
                 RETURNING digest",
                placeholders(1, locked.len())
            );
            let revived = bind_all(sqlx::query(&revive), locked.iter().map(String::as_str))
                .fetch_all(tx.conn())
                .await?;
            for r in &revived {
                tracing::error!(
                    digest = %digest_col(r, "digest")?,
                    "GC refused to delete a blob marked for deletion that is still referenced; \
                     it stays stored (please report this: the GC protocol was violated)"
                );
            }
            let check = format!(
                "SELECT digest, size FROM blobs WHERE status = 'deleting' AND digest IN ({})",
                placeholders(1, locked.len())
            );
            let rows = bind_all(sqlx::query(&check), locked)
                .fetch_all(tx.conn())
                .await?;
            digests = from_rows(&rows)?;
        }
        Ok(BlobDelete { tx, digests })
    }

    // ---- the review queue ------------------------------------------------------------

    /// Manifests queued for review and due before the cutoff.
    pub async fn gc_due_manifests(&self, p: &GcPolicy, limit: i64) -> MetaResult<Vec<i64>> {
        let rows = sqlx::query("SELECT manifest_id FROM gc_manifest_reviews WHERE due < $1 ORDER BY due, manifest_id LIMIT $2")
            .bind(p.cutoff_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?)
    }

    /// Drops the reviews of `ids` that are settled: the manifest is gone, or something keeps
    /// it (a tag, a parent index, an existing subject, or the policy). Unreferenced manifests
    /// that are merely too young keep their entry, due when they are old enough.
    pub async fn gc_settle_manifests(&self, ids: &[i64], p: &GcPolicy) -> MetaResult<()> {
        retrying!("gc_settle_manifests", self.gc_settle_manifests_once(ids, p))
    }

    async fn gc_settle_manifests_once(&self, ids: &[i64], p: &GcPolicy) -> MetaResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // Queue rows are locked in the global order first (see reviews.rs); a DELETE alone
        // would lock them in whatever order its scan meets them.
        let lock = format!(
            "SELECT manifest_id FROM gc_manifest_reviews WHERE manifest_id IN ({}) ORDER BY manifest_id{}",
            placeholders(1, ids.len()),
            tx.dialect.lock_update()
        );
        bind_all(sqlx::query(&lock), ids.iter().copied())
            .fetch_all(tx.conn())
            .await?;
        // The policy flag is $1, the ids follow.
        let sql = format!(
            "DELETE FROM gc_manifest_reviews WHERE manifest_id IN ({}) AND NOT EXISTS (
                 SELECT 1 FROM manifests m WHERE m.id = gc_manifest_reviews.manifest_id AND {})",
            placeholders(2, ids.len()),
            manifest_unreferenced(1)
        );
        bind_all(sqlx::query(&sql).bind(policy_flag(p)), ids.iter().copied())
            .execute(tx.conn())
            .await?;
        // The rest are unreferenced but too young: due again when the manifest is old enough
        // (`due` is on the scale of `created_at`). Until then no run fetches them, so a run
        // that stops at its time budget never meets the same entries at the queue's head.
        let sql = format!(
            "UPDATE gc_manifest_reviews SET due = COALESCE(
                 (SELECT m.created_at FROM manifests m WHERE m.id = gc_manifest_reviews.manifest_id), 0)
             WHERE manifest_id IN ({})",
            placeholders(1, ids.len())
        );
        bind_all(sqlx::query(&sql), ids.iter().copied())
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Blobs queued for review and due before the cutoff.
    pub async fn gc_due_blobs(&self, p: &GcPolicy, limit: i64) -> MetaResult<Vec<Digest>> {
        let rows = sqlx::query("SELECT blob_digest FROM gc_blob_reviews WHERE due < $1 ORDER BY due, blob_digest LIMIT $2")
            .bind(p.cutoff_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| digest_col(r, "blob_digest")).collect()
    }

    /// Removes the garbage links of these blobs. Returns how many.
    pub async fn gc_delete_links_of(&self, digests: &[Digest], p: &GcPolicy) -> MetaResult<u64> {
        if digests.is_empty() {
            return Ok(0);
        }
        retrying!("gc_delete_links", self.delete_garbage_links(digests, p))
    }

    /// Rule L for links: lock the garbage links of these blobs, then delete
    /// in a new statement those still garbage. A mount or duplicate upload that refreshed a
    /// link's age before our lock was granted has committed by then, and the new statement
    /// sees it; a link that became garbage in between is locked by the DELETE itself, which
    /// re-evaluates the link's own age after any wait. Removing a link never endangers a blob
    /// by itself: the blob is only deleted after its own locked re-check, and a repository
    /// whose manifest references the blob serves it through that edge, link or not.
    async fn delete_garbage_links(&self, digests: &[Digest], p: &GcPolicy) -> MetaResult<u64> {
        let within = format!(
            " AND repository_blobs.blob_digest IN ({})",
            placeholders(2, digests.len())
        );
        let mut tx = self.begin_write().await?;
        let lock = format!(
            "SELECT repository_id, blob_digest FROM repository_blobs WHERE {LINK_IS_GARBAGE}{within}
             ORDER BY blob_digest, repository_id{}",
            tx.dialect.lock_update()
        );
        bind_digests(sqlx::query(&lock).bind(p.cutoff_ms), digests)
            .fetch_all(tx.conn())
            .await?;
        let delete = format!("DELETE FROM repository_blobs WHERE {LINK_IS_GARBAGE}{within}");
        let done = bind_digests(sqlx::query(&delete).bind(p.cutoff_ms), digests)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Drops the reviews of `digests` that are settled: the blob is gone or being deleted, or a
    /// manifest references it. A blob still linked (young links) keeps its entry, due when
    /// the youngest link is old enough.
    pub async fn gc_settle_blobs(&self, digests: &[Digest]) -> MetaResult<()> {
        retrying!("gc_settle_blobs", self.gc_settle_blobs_once(digests))
    }

    async fn gc_settle_blobs_once(&self, digests: &[Digest]) -> MetaResult<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let lock = format!(
            "SELECT blob_digest FROM gc_blob_reviews WHERE blob_digest IN ({}) ORDER BY blob_digest{}",
            placeholders(1, digests.len()),
            tx.dialect.lock_update()
        );
        bind_digests(sqlx::query(&lock), digests)
            .fetch_all(tx.conn())
            .await?;
        let sql = format!(
            "DELETE FROM gc_blob_reviews WHERE blob_digest IN ({}) AND (
                 NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = gc_blob_reviews.blob_digest AND b.status = 'active')
                 OR EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = gc_blob_reviews.blob_digest))",
            placeholders(1, digests.len())
        );
        bind_digests(sqlx::query(&sql), digests)
            .execute(tx.conn())
            .await?;
        // The rest are kept by a young link or are young themselves: due again when the
        // youngest of the blob and its links is old enough.
        let sql = format!(
            "UPDATE gc_blob_reviews SET due = COALESCE((
                 SELECT CASE WHEN MAX(rb.created_at) > b.created_at THEN MAX(rb.created_at) ELSE b.created_at END
                   FROM blobs b LEFT JOIN repository_blobs rb ON rb.blob_digest = b.digest
                  WHERE b.digest = gc_blob_reviews.blob_digest
                  GROUP BY b.digest, b.created_at), 0)
             WHERE blob_digest IN ({})",
            placeholders(1, digests.len())
        );
        bind_digests(sqlx::query(&sql), digests)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Entries in the review queue (manifests, blobs).
    pub async fn gc_queue_len(&self) -> MetaResult<(u64, u64)> {
        let m: i64 = sqlx::query("SELECT COUNT(*) FROM gc_manifest_reviews")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let b: i64 = sqlx::query("SELECT COUNT(*) FROM gc_blob_reviews")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok((m as u64, b as u64))
    }

    /// Everything a run with policy `p` would delete, computed in one pass from the roots
    /// (tagged manifests, manifests younger than the cutoff, and — without delete_untagged —
    /// every manifest that is not a referrer) by following child and subject edges. It is
    /// computed independently of the deleting path, and tests hold the two to each other.
    pub async fn gc_plan(&self, p: &GcPolicy) -> MetaResult<GcPlan> {
        const KEPT: &str = "WITH RECURSIVE edges(parent, child) AS (
                SELECT parent_id, child_id FROM manifest_children
                UNION ALL
                SELECT s.id, m.id FROM manifests m
                  JOIN manifests s ON s.repository_id = m.repository_id AND s.digest = m.subject_digest
            ),
            kept(id) AS (
                SELECT m.id FROM manifests m
                 WHERE m.created_at >= $1
                    OR EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)
                    OR (m.subject_digest IS NULL AND $2 = 0)
                UNION
                SELECT e.child FROM edges e JOIN kept k ON e.parent = k.id
            )";
        let sql = format!(
            "{KEPT} SELECT r.name, m.digest, m.total_size FROM manifests m JOIN repositories r ON r.id = m.repository_id
             WHERE m.id NOT IN (SELECT id FROM kept) ORDER BY r.name, m.digest"
        );
        let rows = sqlx::query(&sql)
            .bind(p.cutoff_ms)
            .bind(policy_flag(p))
            .fetch_all(&self.pool)
            .await?;
        let manifests = from_rows(&rows)?;

        // Edges that survive: those of kept manifests.
        let live_edges = "SELECT mb.repository_id, mb.blob_digest FROM manifest_blobs mb WHERE mb.manifest_id IN (SELECT id FROM kept)";
        let links_sql = format!(
            "{KEPT}, live(repository_id, blob_digest) AS ({live_edges})
             SELECT COUNT(*) FROM repository_blobs rb
             WHERE rb.created_at < $1 AND NOT EXISTS (
                 SELECT 1 FROM live l WHERE l.repository_id = rb.repository_id AND l.blob_digest = rb.blob_digest)"
        );
        let links: i64 = sqlx::query(&links_sql)
            .bind(p.cutoff_ms)
            .bind(policy_flag(p))
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let blobs_sql = format!(
            "{KEPT}, live(repository_id, blob_digest) AS ({live_edges})
             SELECT b.digest, b.size FROM blobs b
             WHERE b.status = 'deleting'
                OR (b.created_at < $1
                    AND NOT EXISTS (SELECT 1 FROM live l WHERE l.blob_digest = b.digest)
                    AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.blob_digest = b.digest
                                    AND (rb.created_at >= $1 OR EXISTS (
                                        SELECT 1 FROM live l WHERE l.repository_id = rb.repository_id
                                                                AND l.blob_digest = rb.blob_digest))))
             ORDER BY b.digest"
        );
        let rows = sqlx::query(&blobs_sql)
            .bind(p.cutoff_ms)
            .bind(policy_flag(p))
            .fetch_all(&self.pool)
            .await?;
        let blobs = from_rows(&rows)?;
        Ok(GcPlan {
            manifests,
            links: links as u64,
            blobs,
        })
    }
}
