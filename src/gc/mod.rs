//! Online garbage collection: the run loop, batching, storage deletion and the report. What
//! counts as garbage, and the locking that makes deletion safe while pushes go on, is SQL in
//! `meta/gc.rs`; the protocol and its argument are in docs/gc.md.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::meta::{GcBlob, GcManifest, GcPolicy, MetaStore};
use crate::registry::Registry;
use crate::storage::BlobStore;

/// Rows locked and deleted per transaction.
const BATCH: usize = 200;
/// Candidates fetched per scan; a run rescans only when a scan filled it.
const SCAN: i64 = 50_000;
/// Object deletions in flight at once within a batch (one wave).
const DELETE_CONCURRENCY: usize = 16;
/// No object delete of a phase-2 batch starts later than this after its rows were locked.
const PHASE2_DEADLINE: Duration = Duration::from_secs(60);
/// How long a queue slice (what `wharf serve` runs) keeps starting batches. A slice that
/// reaches it with due work left says so (`GcReport::unfinished`) and the server starts the
/// next one at once: every run stays short, and a large backlog still drains at full speed.
pub const SLICE: Duration = Duration::from_millis(500);

/// What a run examines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every row old enough to be garbage: the safety net, and what `wharf gc` runs.
    #[default]
    Full,
    /// Only the rows an event queued for review (tag deleted or moved, manifest deleted,
    /// blob uploaded or mounted): cost follows the garbage, not the store.
    Queue,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Queue => "queue",
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub mode: Mode,
    pub dry_run: bool,
    /// Rows looked at as candidates (manifests and blobs).
    pub candidates_examined: u64,
    pub manifests_deleted: u64,
    pub links_deleted: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    pub duration_ms: u64,
    /// A queue slice stopped at its time budget with due work left.
    pub unfinished: bool,
    pub manifests: Vec<ReportManifest>,
    pub blobs: Vec<ReportBlob>,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReportManifest {
    pub repository: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReportBlob {
    pub digest: String,
    pub size: u64,
}

impl From<GcManifest> for ReportManifest {
    fn from(m: GcManifest) -> Self {
        ReportManifest {
            repository: m.repository,
            digest: m.digest.to_string(),
            size: m.size,
        }
    }
}

impl From<GcBlob> for ReportBlob {
    fn from(b: GcBlob) -> Self {
        ReportBlob {
            digest: b.digest.to_string(),
            size: b.size,
        }
    }
}

/// One GC run over the metadata store and the storage it describes. With `dry_run`, reports
/// what a full run would delete and changes nothing.
pub async fn run(
    meta: &MetaStore,
    storage: &dyn BlobStore,
    policy: GcPolicy,
    mode: Mode,
    dry_run: bool,
) -> anyhow::Result<GcReport> {
    let started = Instant::now();
    let mut report = GcReport {
        mode,
        dry_run,
        ..Default::default()
    };
    if mode == Mode::Queue && !dry_run {
        // No time budget: the run stops when nothing due is left.
        run_queue(meta, storage, policy, None, &mut report).await?;
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }
    if dry_run {
        let plan = meta.gc_plan(&policy).await?;
        report.candidates_examined = (plan.manifests.len() + plan.blobs.len()) as u64;
        report.manifests_deleted = plan.manifests.len() as u64;
        report.links_deleted = plan.links;
        report.blobs_deleted = plan.blobs.len() as u64;
        report.bytes_freed = plan.blobs.iter().map(|b| b.size).sum();
        report.manifests = plan.manifests.into_iter().map(Into::into).collect();
        report.blobs = plan.blobs.into_iter().map(Into::into).collect();
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }

    // Manifests, until nothing more goes: deleting an index frees its children, deleting a
    // subject frees its referrers.
    loop {
        let ids = meta.gc_manifest_candidates(&policy, SCAN).await?;
        report.candidates_examined += ids.len() as u64;
        let mut progress = false;
        for batch in ids.chunks(BATCH) {
            let deleted = meta.gc_delete_manifests(batch, &policy).await?;
            progress |= !deleted.is_empty();
            report.manifests_deleted += deleted.len() as u64;
            report.manifests.extend(deleted.into_iter().map(Into::into));
        }
        if !progress {
            break; // nothing left, or every candidate was claimed by a concurrent push
        }
    }

    tracing::debug!(target: "wharf::gc", ms = started.elapsed().as_millis() as u64, "manifests done");
    // Links in batches of blobs, each its own short transaction (one statement over every
    // link would hold SQLite's write lock for the whole scan).
    let mut after: Option<crate::oci::Digest> = None;
    loop {
        let digests = meta
            .gc_link_candidates(&policy, after.as_ref(), SCAN)
            .await?;
        report.candidates_examined += digests.len() as u64;
        for batch in digests.chunks(BATCH) {
            report.links_deleted += meta.gc_delete_links_of(batch, &policy).await?;
        }
        if (digests.len() as i64) < SCAN {
            break;
        }
        after = digests.last().cloned();
    }
    tracing::debug!(target: "wharf::gc", ms = started.elapsed().as_millis() as u64, "links done");

    // Blobs: finish what an interrupted run left marked, then mark and delete new garbage.
    delete_marked_blobs(meta, storage, None, &mut report).await?;
    tracing::debug!(target: "wharf::gc", ms = started.elapsed().as_millis() as u64, "leftover blobs done");
    loop {
        let candidates = meta.gc_blob_candidates(&policy, SCAN).await?;
        tracing::debug!(target: "wharf::gc", ms = started.elapsed().as_millis() as u64, n = candidates.len(), "blob candidates");
        report.candidates_examined += candidates.len() as u64;
        let mut marked = 0;
        for batch in candidates.chunks(BATCH) {
            marked += meta.gc_mark_blobs(batch, &policy).await?;
            delete_marked_blobs(meta, storage, None, &mut report).await?;
        }
        if marked == 0 || (candidates.len() as i64) < SCAN {
            break;
        }
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// One queue slice (what the server runs every `gc.interval`): due entries in batches until
/// `budget` is spent. Sets `report.unfinished` and returns early when due work is left.
pub async fn run_slice(
    meta: &MetaStore,
    storage: &dyn BlobStore,
    policy: GcPolicy,
    budget: Duration,
) -> anyhow::Result<GcReport> {
    let started = Instant::now();
    let mut report = GcReport {
        mode: Mode::Queue,
        ..Default::default()
    };
    report.unfinished =
        run_queue(meta, storage, policy, Some(started + budget), &mut report).await?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// A run over the review queue. Deleting a manifest queues its children, referrers and blobs
/// (in the same transaction), so a drained queue has followed a deletion all the way down.
///
/// Each batch either removes its entries from the queue or moves their due time past the
/// cutoff (see `gc_settle_*`), so no batch is fetched twice in one run; should one come back
/// unchanged all the same (a concurrent writer keeps re-queueing it), the run moves on. Returns
/// whether it stopped at the deadline (checked after each batch, so every run makes progress)
/// with due work left.
async fn run_queue(
    meta: &MetaStore,
    storage: &dyn BlobStore,
    policy: GcPolicy,
    deadline: Option<Instant>,
    report: &mut GcReport,
) -> anyhow::Result<bool> {
    let spent = || deadline.is_some_and(|d| Instant::now() >= d);
    if delete_marked_blobs(meta, storage, deadline, report).await? {
        return Ok(true); // leftovers of an earlier run took the whole budget
    }
    let mut last: Vec<i64> = Vec::new();
    loop {
        let ids = meta.gc_due_manifests(&policy, BATCH as i64).await?;
        if ids.is_empty() {
            break;
        }
        if ids == last {
            break; // a concurrent writer keeps these; the next run sees them again
        }
        report.candidates_examined += ids.len() as u64;
        let deleted = meta.gc_delete_manifests(&ids, &policy).await?;
        report.manifests_deleted += deleted.len() as u64;
        report.manifests.extend(deleted.into_iter().map(Into::into));
        meta.gc_settle_manifests(&ids, &policy).await?;
        if spent() {
            return Ok(true);
        }
        last = ids;
    }
    let mut last: Vec<crate::oci::Digest> = Vec::new();
    loop {
        let digests = meta.gc_due_blobs(&policy, BATCH as i64).await?;
        if digests.is_empty() {
            break;
        }
        if digests == last {
            break;
        }
        report.candidates_examined += digests.len() as u64;
        report.links_deleted += meta.gc_delete_links_of(&digests, &policy).await?;
        meta.gc_mark_blobs(&digests, &policy).await?;
        delete_marked_blobs(meta, storage, deadline, report).await?;
        meta.gc_settle_blobs(&digests).await?;
        if spent() {
            return Ok(true);
        }
        last = digests;
    }
    Ok(false)
}

/// Phase 2 for every blob marked `deleting`: objects first, under the row locks, then rows.
///
/// An object delete must never start once the row lock may be gone: then an upload may have
/// revived the row and written the object again. So the deletes go in waves, and before each
/// wave the transaction is checked to be alive, and the batch's deadline not passed (rows left
/// over stay `deleting` for the next run). What remains assumed: the lock is not lost while
/// one wave is in flight (each driver delete is bounded in time and not retried late; see
/// docs/gc.md).
///
/// Stops early, leaving marked blobs for the next run, at `deadline` (checked after each batch,
/// so every call makes progress) or at a batch's own deadline; returns whether it did.
async fn delete_marked_blobs(
    meta: &MetaStore,
    storage: &dyn BlobStore,
    deadline: Option<Instant>,
    report: &mut GcReport,
) -> anyhow::Result<bool> {
    loop {
        let mut batch = meta.gc_begin_blob_delete(BATCH as i64).await?;
        if batch.blobs().is_empty() {
            batch.finish(&[]).await?;
            return Ok(false);
        }
        let locked_at = Instant::now();
        let blobs: Vec<GcBlob> = batch.blobs().to_vec();
        let mut done: Vec<GcBlob> = Vec::with_capacity(blobs.len());
        for wave in blobs.chunks(DELETE_CONCURRENCY) {
            for b in wave {
                crate::failpoint::hit("gc.deleting_object", b.digest.as_str()).await;
            }
            if locked_at.elapsed() > PHASE2_DEADLINE {
                tracing::warn!(
                    left = blobs.len() - done.len(),
                    "GC phase 2 batch ran past its deadline; the rest waits for the next run"
                );
                break;
            }
            batch.still_locked().await.map_err(|e| {
                anyhow::anyhow!("GC lost its database session while deleting objects; no further object was deleted: {e}")
            })?;
            // Boxed futures (the driver's), not closures returning async blocks: the run stays
            // `Send` for any executor.
            let deletions: Vec<_> = wave
                .iter()
                .map(|b| storage.blob_delete(&b.digest))
                .collect();
            let results: Vec<_> = futures_util::stream::iter(deletions)
                .buffer_unordered(DELETE_CONCURRENCY)
                .collect()
                .await;
            for r in results {
                // Any failure leaves the rows `deleting`; the next run tries again.
                r?;
            }
            done.extend(wave.iter().cloned());
        }
        batch.finish(&done).await?;
        report.blobs_deleted += done.len() as u64;
        report.bytes_freed += done.iter().map(|b| b.size).sum::<u64>();
        let finished_all = done.len() == blobs.len();
        report.blobs.extend(done.into_iter().map(Into::into));
        if !finished_all || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(true);
        }
    }
}

/// The background collector inside `wharf serve` (on the server's actix system): a queue slice
/// every `interval` (back to back while a slice ends unfinished), a full pass at start and every
/// `fullinterval`.
pub fn spawn(registry: std::sync::Arc<Registry>, config: crate::config::GcConfig) {
    actix_web::rt::spawn(async move {
        let interval = config.interval.max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_full: Option<Instant> = None;
        let mut backlog = false;
        loop {
            if !backlog {
                tick.tick().await;
            }
            backlog = false;
            // One replica at a time collects (the lease passes on if it dies).
            if !registry.lead_job("gc", crate::lease_ttl(interval)).await {
                continue;
            }
            let policy = GcPolicy::with_grace(config.graceperiod, config.deleteuntagged);
            let result = match last_full {
                Some(t) if t.elapsed() < config.fullinterval => {
                    registry.collect_garbage_slice(policy, SLICE).await
                }
                _ => {
                    last_full = Some(Instant::now());
                    registry.collect_garbage(policy, Mode::Full, false).await
                }
            };
            match result {
                Ok(r) => {
                    backlog = r.unfinished;
                    log_report(&r)
                }
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "garbage collection failed; will retry"
                ),
            }
        }
    });
}

pub fn log_report(r: &GcReport) {
    tracing::info!(
        target: "wharf::gc",
        mode = ?r.mode,
        dry_run = r.dry_run,
        candidates_examined = r.candidates_examined,
        manifests_deleted = r.manifests_deleted,
        links_deleted = r.links_deleted,
        blobs_deleted = r.blobs_deleted,
        bytes_freed = r.bytes_freed,
        duration_ms = r.duration_ms,
        unfinished = r.unfinished,
        "garbage collection run"
    );
}
