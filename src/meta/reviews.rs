//! The GC review queue (`gc_manifest_reviews`, `gc_blob_reviews`): written in the same
//! transaction as the event that may create garbage, so no event is ever missed.
//!
//! Queue rows are hot: every push, mount, tag move and manifest deletion touches some, and
//! so does GC's batch of deletions. So a transaction only *collects* its reviews while it
//! runs, and writes them when it commits, as its last statements, in one global order
//! (manifests by id, then blobs by digest). A transaction holding queue rows then never waits
//! for anything but queue rows later in that order, and no lock cycle can run through the
//! queue (tests/races.rs `review_queue_rows_are_locked_in_one_order`).

use std::collections::BTreeMap;

use sqlx::Row;

use super::sql::{bind_all, digest_col, placeholders};
use super::{MetaResult, WriteTx};
use crate::oci::Digest;

/// Rows per statement when the queue is written.
const REVIEW_BATCH: usize = 500;

/// Reviews a transaction has collected: row → earliest due (Unix ms). Ordered maps, so that
/// they are written in the global lock order.
#[derive(Default)]
pub(super) struct PendingReviews {
    manifests: BTreeMap<i64, i64>,
    blobs: BTreeMap<String, i64>,
}

fn keep_earliest<K: Ord>(map: &mut BTreeMap<K, i64>, key: K, due: i64) {
    map.entry(key)
        .and_modify(|d| *d = (*d).min(due))
        .or_insert(due);
}

impl WriteTx {
    /// Queues a manifest for GC review, no earlier than `due` (Unix ms; an earlier due wins).
    pub(super) fn review_manifest(&mut self, id: i64, due: i64) {
        keep_earliest(&mut self.reviews.manifests, id, due);
    }

    /// Queues a blob for GC review (its links are reviewed with it).
    pub(super) fn review_blob(&mut self, digest: &Digest, due: i64) {
        keep_earliest(&mut self.reviews.blobs, digest.to_string(), due);
    }

    /// Before manifests `ids` are deleted: queues what their deletion may turn into garbage —
    /// their blobs, children and referrers (read now, while the edges still exist).
    pub(super) async fn review_dependents(&mut self, ids: &[i64]) -> MetaResult<()> {
        for chunk in ids.chunks(REVIEW_BATCH) {
            let within = placeholders(1, chunk.len());
            let sql = format!(
                "SELECT DISTINCT blob_digest FROM manifest_blobs WHERE manifest_id IN ({within})"
            );
            let blobs = bind_all(sqlx::query(&sql), chunk.iter().copied())
                .fetch_all(self.conn())
                .await?;
            for r in &blobs {
                self.review_blob(&digest_col(r, "blob_digest")?, 0);
            }
            let sql = format!(
                "SELECT child_id FROM manifest_children WHERE parent_id IN ({within})
                 UNION
                 SELECT r.id FROM manifests m
                   JOIN manifests r ON r.repository_id = m.repository_id AND r.subject_digest = m.digest
                 WHERE m.id IN ({within})"
            );
            let manifests = bind_all(sqlx::query(&sql), chunk.iter().copied())
                .fetch_all(self.conn())
                .await?;
            for r in &manifests {
                self.review_manifest(r.try_get::<i64, _>(0)?, 0);
            }
        }
        Ok(())
    }

    /// Writes the collected reviews, manifests by id and then blobs by digest. Called by
    /// `commit` only, so that these are the transaction's last locks.
    pub(super) async fn write_reviews(&mut self) -> MetaResult<()> {
        let pending = std::mem::take(&mut self.reviews);
        self.upsert_reviews("gc_manifest_reviews", "manifest_id", pending.manifests)
            .await?;
        self.upsert_reviews("gc_blob_reviews", "blob_digest", pending.blobs)
            .await
    }

    /// Upserts `rows` (key → due, in key order) into one queue table; an earlier due wins.
    async fn upsert_reviews<K>(
        &mut self,
        table: &str,
        key: &str,
        rows: BTreeMap<K, i64>,
    ) -> MetaResult<()>
    where
        K: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Clone + Send,
    {
        let rows: Vec<(K, i64)> = rows.into_iter().collect();
        for chunk in rows.chunks(REVIEW_BATCH) {
            let sql = format!(
                "INSERT INTO {table} ({key}, due) VALUES {}
                 ON CONFLICT ({key}) DO UPDATE SET due = CASE WHEN excluded.due < {table}.due
                                                         THEN excluded.due ELSE {table}.due END",
                value_pairs(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for (k, due) in chunk {
                q = q.bind(k.clone()).bind(*due);
            }
            q.execute(self.conn()).await?;
        }
        Ok(())
    }
}

/// `($1, $2), ($3, $4), …` for `n` pairs.
fn value_pairs(n: usize) -> String {
    (0..n)
        .map(|i| format!("({})", placeholders(2 * i + 1, 2)))
        .collect::<Vec<_>>()
        .join(", ")
}
