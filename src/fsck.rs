//! `wharf fsck`: compares storage with the database. It walks storage, which garbage
//! collection never does. Orphans are objects no row knows: a crash during an upload's commit
//! (object renamed in, row not committed) leaves one, and so do files copied in by hand; they
//! can be removed. (GC deletes an object before its row, so a GC crash leaves a `deleting`
//! row, never an orphan.) Active rows whose object is missing would be data loss: they are
//! reported, never "repaired".
//!
//! It also checks the maintained usage aggregates against the views that define them
//! (`crate::usage::check`); `--repair` rebuilds the aggregates from the edge tables.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::gc::ReportBlob;
use crate::meta::MetaStore;
use crate::storage::BlobStore;

#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub objects: u64,
    pub rows: u64,
    /// Objects in storage that no blob row knows.
    pub orphans: Vec<ReportBlob>,
    pub orphans_deleted: u64,
    /// Active blob rows whose object is missing.
    pub missing: Vec<ReportBlob>,
    /// Active blob rows whose object has another size.
    pub size_mismatch: Vec<ReportBlob>,
    /// Rows GC marked for deletion and has not finished (the next GC run finishes them).
    pub pending_deletion: u64,
    /// Missing or damaged objects recorded as lost (`--repair`): clients are then told the
    /// blob is not stored, push it again, and the push restores it.
    pub marked_lost: u64,
    /// Usage figures the maintained aggregates got wrong (compared with the views).
    pub usage_differences: Vec<String>,
    /// `--repair` rebuilt the usage aggregates because of those differences.
    pub usage_rebuilt: bool,
}

/// What a run may change.
#[derive(Debug, Clone, Copy)]
pub struct FsckOptions {
    /// Delete orphaned objects at least `min_age` old.
    pub delete_orphans: bool,
    pub min_age: Duration,
    /// Record missing and damaged objects as lost (see `FsckReport::marked_lost`).
    pub repair: bool,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.orphans.len() as u64 == self.orphans_deleted
            && self.missing.is_empty()
            && self.size_mismatch.is_empty()
            && (self.usage_differences.is_empty() || self.usage_rebuilt)
    }
}

/// Compares storage with the database, and changes what `opts` allow.
pub async fn run(
    meta: &MetaStore,
    storage: &dyn BlobStore,
    opts: FsckOptions,
) -> anyhow::Result<FsckReport> {
    let FsckOptions {
        delete_orphans,
        min_age,
        repair,
    } = opts;
    let objects = storage.list_blobs().await?;
    let rows = meta.all_blobs().await?;
    let mut report = FsckReport {
        objects: objects.len() as u64,
        rows: rows.len() as u64,
        ..Default::default()
    };
    let stored: HashMap<_, _> = objects.iter().map(|o| (o.digest.clone(), o)).collect();
    let known: HashMap<_, _> = rows.iter().map(|r| (&r.digest, r)).collect();
    for row in &rows {
        let (digest, size) = (&row.digest, &row.size);
        if row.status != "active" {
            report.pending_deletion += 1;
            continue;
        }
        match stored.get(digest) {
            None => report.missing.push(ReportBlob {
                digest: digest.to_string(),
                size: *size,
            }),
            Some(o) if o.size != *size => report.size_mismatch.push(ReportBlob {
                digest: digest.to_string(),
                size: o.size,
            }),
            Some(_) => {}
        }
    }
    if repair {
        let damaged = report.missing.iter().chain(&report.size_mismatch);
        let damaged: Vec<(crate::oci::Digest, u64)> = damaged
            .filter_map(|b| {
                let size = rows.iter().find(|r| r.digest.as_str() == b.digest)?.size;
                Some((b.digest.parse().ok()?, size))
            })
            .collect();
        for (digest, size) in damaged {
            // Confirmed under the row lock: an upload may have restored it since the listing.
            let still_lost =
                || async { !matches!(storage.blob_stat(&digest).await, Ok(Some(s)) if s == size) };
            if meta.mark_lost(&digest, still_lost).await? {
                tracing::warn!(%digest, "recorded as lost: the next push of this blob restores it");
                report.marked_lost += 1;
            }
        }
    }
    report.usage_differences = crate::usage::check(meta).await?;
    if repair && !report.usage_differences.is_empty() {
        tracing::warn!(
            differences = report.usage_differences.len(),
            "usage aggregates disagree with the edge tables; rebuilding them"
        );
        meta.rebuild_usage().await?;
        report.usage_rebuilt = true;
    }
    for o in &objects {
        if known.contains_key(&o.digest) {
            continue;
        }
        report.orphans.push(ReportBlob {
            digest: o.digest.to_string(),
            size: o.size,
        });
        if !delete_orphans || o.age_secs < min_age.as_secs() {
            continue;
        }
        // The listing is old news: an upload may be committing this digest right now. The
        // claim waits for it, and fails if any row knows the digest by then.
        if let Some(claim) = meta.claim_orphan(&o.digest).await? {
            crate::failpoint::hit("fsck.claimed", o.digest.as_str()).await;
            storage.blob_delete(&o.digest).await?;
            claim.finish().await?;
            report.orphans_deleted += 1;
        }
    }
    Ok(report)
}
