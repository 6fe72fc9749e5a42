//! `wharf fsck`: compares storage with the database. It walks storage, which garbage
//! collection never does. Orphans are objects no row knows: a crash during an upload's commit
//! (object renamed in, row not committed) leaves one, and so do files copied in by hand; they
//! can be removed. (GC deletes an object before its row, so a GC crash leaves a `deleting`
//! row, never an orphan.) Active rows whose object is missing would be data loss: they are
//! reported, never "repaired".

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
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.orphans.len() as u64 == self.orphans_deleted
            && self.missing.is_empty()
            && self.size_mismatch.is_empty()
    }
}

/// With `delete_orphans`, removes orphans older than `min_age` (younger ones may belong to an
/// upload committing right now).
pub async fn run(
    meta: &MetaStore,
    storage: &dyn BlobStore,
    delete_orphans: bool,
    min_age: Duration,
) -> anyhow::Result<FsckReport> {
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
