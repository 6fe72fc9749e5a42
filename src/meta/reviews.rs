//! The GC review queue (`gc_manifest_reviews`, `gc_blob_reviews`): written in the same
//! transaction as the event that may create garbage, so no event is ever missed.

use super::{MetaResult, WriteTx};
use crate::oci::Digest;

impl WriteTx {
    /// Queues a manifest for GC review, no earlier than `due` (Unix ms; an earlier due wins).
    pub(super) async fn review_manifest(&mut self, id: i64, due: i64) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO gc_manifest_reviews (manifest_id, due) VALUES ($1, $2)
             ON CONFLICT (manifest_id) DO UPDATE SET due = CASE WHEN excluded.due < gc_manifest_reviews.due
                                                                THEN excluded.due ELSE gc_manifest_reviews.due END",
        )
        .bind(id)
        .bind(due)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Queues a blob for GC review (its links are reviewed with it).
    pub(super) async fn review_blob(&mut self, digest: &Digest, due: i64) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO gc_blob_reviews (blob_digest, due) VALUES ($1, $2)
             ON CONFLICT (blob_digest) DO UPDATE SET due = CASE WHEN excluded.due < gc_blob_reviews.due
                                                                THEN excluded.due ELSE gc_blob_reviews.due END",
        )
        .bind(digest.as_str())
        .bind(due)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Before manifest `id` is deleted: queues what its deletion may turn into garbage — its
    /// blobs, its children and its referrers.
    pub(super) async fn review_dependents(&mut self, id: i64) -> MetaResult<()> {
        for sql in [
            "INSERT INTO gc_blob_reviews (blob_digest, due)
             SELECT blob_digest, 0 FROM manifest_blobs WHERE manifest_id = $1
             ON CONFLICT (blob_digest) DO UPDATE SET due = 0",
            "INSERT INTO gc_manifest_reviews (manifest_id, due)
             SELECT child_id, 0 FROM manifest_children WHERE parent_id = $1
             ON CONFLICT (manifest_id) DO UPDATE SET due = 0",
            "INSERT INTO gc_manifest_reviews (manifest_id, due)
             SELECT r.id, 0 FROM manifests m
               JOIN manifests r ON r.repository_id = m.repository_id AND r.subject_digest = m.digest
             WHERE m.id = $1
             ON CONFLICT (manifest_id) DO UPDATE SET due = 0",
        ] {
            sqlx::query(sql).bind(id).execute(self.conn()).await?;
        }
        Ok(())
    }
}
