//! Use cases: the order in which storage is written and the database committed.
//!
//! Bytes first, rows second: an upload's bytes are durable before its offset is saved; a blob's
//! object is in place before its row is committed; nothing is answered before both. Deletes go
//! the other way (rows first; the bytes go when GC reaches them).

mod uploads;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::fsck::{FsckOptions, FsckReport};
use crate::gc::{GcReport, Mode};
use crate::meta::{
    DeleteOutcome, GcPolicy, ManifestRecord, MetaStore, Names, NewManifest, PutManifestOutcome,
};
use crate::oci::{Digest, ParsedManifest, Reference, RepoName, manifest};
use crate::storage::{BlobStore, ByteStream, StorageErrorKind};
use crate::usage::UsageReport;

pub use uploads::{ContentRange, UploadStatus};

/// Manifests larger than this are refused with 413 (Distribution's limit too).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The registry's use cases over one metadata store and one storage driver. Its parts are
/// private: the HTTP layer, the CLI and the background jobs go through these methods.
pub struct Registry {
    meta: MetaStore,
    storage: Arc<dyn BlobStore>,
    options: Options,
    /// Background jobs whose lease this replica holds.
    leading: std::sync::Mutex<Vec<&'static str>>,
}

/// What the configuration decides about the use cases.
#[derive(Debug, Clone)]
pub struct Options {
    /// This process's name among the replicas (job leases, logs, metrics).
    pub replica: String,
    /// `storage.delete.enabled`
    pub delete_enabled: bool,
    /// Whole-blob GETs may be answered with a redirect to the storage (`storage.redirect`).
    pub redirect_enabled: bool,
}

/// Blob GETs that found an active row but no object: data loss, counted since start.
static MISSING_OBJECTS: AtomicU64 = AtomicU64::new(0);

/// How many blob reads found a row but no object since the process started.
pub fn missing_objects_seen() -> u64 {
    MISSING_OBJECTS.load(Ordering::Relaxed)
}

/// Readiness of the registry's dependencies.
#[derive(Debug)]
pub struct Readiness {
    pub database: std::result::Result<(), String>,
    pub storage: std::result::Result<(), String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.database.is_ok() && self.storage.is_ok()
    }
}

/// How a blob GET is answered.
pub enum BlobBody {
    Redirect(String),
    Bytes(ByteStream),
}

pub struct StoredManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

impl Registry {
    pub fn new(meta: MetaStore, storage: Arc<dyn BlobStore>, options: Options) -> Self {
        Registry {
            meta,
            storage,
            options,
            leading: Default::default(),
        }
    }

    /// Where the blobs are, for logs.
    pub fn describe_storage(&self) -> String {
        self.storage.describe()
    }

    // ---- operations --------------------------------------------------------------------

    /// Whether this replica may run background job `job` now: it takes (or renews) the job's
    /// lease for `ttl`. Logs and exports (`wharf_job_lease_held`) when that changes.
    pub async fn lead_job(&self, job: &'static str, ttl: Duration) -> bool {
        let held = match self
            .meta
            .take_lease(job, &self.options.replica, ttl.as_millis() as i64)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(job, error = %e, "cannot take the job lease; skipping this run");
                false
            }
        };
        {
            let mut leading = self.leading.lock().unwrap_or_else(|e| e.into_inner());
            let was = leading.contains(&job);
            if held && !was {
                leading.push(job);
                tracing::info!(job, replica = %self.options.replica, "this replica now runs the job");
            } else if !held && was {
                leading.retain(|j| *j != job);
                tracing::info!(job, replica = %self.options.replica, "another replica runs the job now");
            }
        }
        metrics::gauge!(crate::metrics::JOB_LEASE_HELD, "job" => job, "replica" => self.options.replica.clone())
            .set(if held { 1.0 } else { 0.0 });
        held
    }

    /// Gives up this replica's job leases (at shutdown), so another replica takes over at once.
    pub async fn release_jobs(&self) {
        let jobs: Vec<&'static str> = self
            .leading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for job in jobs {
            let _ = self.meta.release_lease(job, &self.options.replica).await;
        }
    }

    /// Samples the database pool into its gauges (at each metrics scrape).
    pub fn report_pool_gauges(&self) {
        let (in_use, idle) = self.meta.pool_usage();
        metrics::gauge!(crate::metrics::DB_POOL_IN_USE).set(in_use as f64);
        metrics::gauge!(crate::metrics::DB_POOL_IDLE).set(idle as f64);
    }

    /// Whether the database and the storage both answer (storage: and accepts a write).
    #[tracing::instrument(skip_all)]
    pub async fn readiness(&self) -> Readiness {
        let (db, storage) = tokio::join!(self.meta.ping(), self.storage.check());
        Readiness {
            database: db.map_err(|e| e.to_string()),
            storage: storage.map_err(|e| e.to_string()),
        }
    }

    /// The usage report (`wharf usage`, `GET /admin/usage`).
    #[tracing::instrument(skip_all)]
    pub async fn usage(&self, namespace: &str, top: u32) -> Result<UsageReport> {
        Ok(crate::usage::report(&self.meta, namespace, top).await?)
    }

    /// Folds the usage journal into the aggregates (meta/aggregates.rs). `wait`: queue for
    /// the fold lock rather than leave the round to the replica holding it.
    pub async fn fold_usage(&self, wait: bool) -> Result<crate::meta::FoldOutcome> {
        Ok(self.meta.fold_usage(wait).await?)
    }

    /// One garbage collection run (see `gc::run`).
    #[tracing::instrument(skip_all)]
    pub async fn collect_garbage(
        &self,
        policy: GcPolicy,
        mode: Mode,
        dry_run: bool,
    ) -> anyhow::Result<GcReport> {
        let started = std::time::Instant::now();
        let result = crate::gc::run(&self.meta, self.storage.as_ref(), policy, mode, dry_run).await;
        record_gc(
            if dry_run { "dry_run" } else { mode.label() },
            started,
            &result,
        );
        result
    }

    /// One queue slice of at most about `budget` (see `gc::run_slice`): what the server runs.
    pub async fn collect_garbage_slice(
        &self,
        policy: GcPolicy,
        budget: std::time::Duration,
    ) -> anyhow::Result<GcReport> {
        let started = std::time::Instant::now();
        let result = crate::gc::run_slice(&self.meta, self.storage.as_ref(), policy, budget).await;
        record_gc(Mode::Queue.label(), started, &result);
        result
    }

    /// Storage compared with the database (see `fsck::run`), changing what `opts` allow.
    #[tracing::instrument(skip_all)]
    pub async fn fsck_with(&self, opts: FsckOptions) -> anyhow::Result<FsckReport> {
        crate::fsck::run(&self.meta, self.storage.as_ref(), opts).await
    }

    /// `fsck_with` that repairs nothing and deletes only orphans, when asked.
    pub async fn fsck(
        &self,
        delete_orphans: bool,
        min_age: Duration,
    ) -> anyhow::Result<FsckReport> {
        self.fsck_with(FsckOptions {
            delete_orphans,
            min_age,
            repair: false,
        })
        .await
    }

    // ---- blobs -------------------------------------------------------------------------

    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.meta
            .blob_in_repository(repo, digest)
            .await?
            .ok_or_else(|| Error::BlobUnknown(digest.to_string()))
    }

    /// The body for `len` bytes from `start` of a blob whose size the caller checked.
    #[tracing::instrument(skip_all)]
    pub async fn blob_body(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
        whole: bool,
    ) -> Result<BlobBody> {
        if whole && self.options.redirect_enabled {
            if let Some(url) = self.storage.redirect_url(digest).await? {
                return Ok(BlobBody::Redirect(url));
            }
        }
        match self.storage.blob_read(digest, start, len).await {
            Ok(stream) => Ok(BlobBody::Bytes(stream)),
            Err(e) if e.kind() == StorageErrorKind::NotFound => {
                // The database says the blob is stored and servable: an object missing behind
                // an active row is lost data, never an ordinary miss.
                MISSING_OBJECTS.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::OBJECTS_MISSING).increment(1);
                tracing::error!(
                    %digest,
                    storage = %self.storage.describe(),
                    "DATA LOSS: an active blob row has no object in storage; run `wharf fsck` \
                     and push the blob again to restore it"
                );
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.require_delete()?;
        match self.meta.unlink_blob(repo, digest).await? {
            DeleteOutcome::Deleted => Ok(()),
            DeleteOutcome::NotFound => Err(Error::BlobUnknown(digest.to_string())),
            DeleteOutcome::ReferencedBy(m) => Err(Error::Conflict(format!(
                "blob {digest} is referenced by manifest {m} in {repo}; delete that manifest first"
            ))),
        }
    }

    /// Cross-repository mount: links a stored blob into `repo` without moving bytes. With
    /// `from`, the blob must be servable there; without, any stored blob can be mounted.
    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<Option<u64>> {
        let available = match from {
            Some(source) => self.meta.blob_in_repository(source, digest).await?,
            None => self.meta.blob_stored(digest).await?,
        };
        let Some(size) = available else {
            return Ok(None);
        };
        // A mount promises bytes it does not move: refuse it (the client then uploads them,
        // which restores the object) when the object behind the row is gone.
        if self.storage.blob_stat(digest).await? != Some(size) {
            MISSING_OBJECTS.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%digest, "DATA LOSS: a mount found the blob's object missing or damaged; answering with an upload so the client restores it");
            return Ok(None);
        }
        Ok(self.meta.link_blob(repo, digest).await?)
    }

    /// Adopts an object of `size` bytes another program stored at the blob's path (a
    /// Distribution tree being imported): records the blob, links it into `repo` and returns
    /// its size, or None when no such object is there. The object is checked under the blob
    /// row's lock, so a GC run that was deleting the digest cannot leave a row without its
    /// object.
    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn adopt_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<u64>> {
        let commit = self.meta.begin_blob_commit(digest, size).await?;
        if self.storage.blob_stat(digest).await? != Some(size) {
            return Ok(None);
        }
        commit.finish_adopted(repo, digest).await?;
        Ok(Some(size))
    }

    /// Repositories a previous `wharf import` finished.
    pub async fn imported_repositories(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self.meta.imported_repositories().await?)
    }

    /// Records that `wharf import` finished `name`.
    pub async fn mark_imported(&self, name: &str) -> Result<()> {
        Ok(self.meta.mark_imported(name).await?)
    }

    /// Forgets what `wharf import` finished, so that it reads everything again.
    pub async fn forget_imports(&self) -> Result<()> {
        Ok(self.meta.forget_imports().await?)
    }

    /// Digests of every blob the database knows.
    pub async fn known_blobs(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self
            .meta
            .all_blobs()
            .await?
            .into_iter()
            .map(|b| b.digest.to_string())
            .collect())
    }

    /// The storage driver, for tools that read what it holds (`wharf import`).
    pub fn storage(&self) -> &dyn BlobStore {
        self.storage.as_ref()
    }

    // ---- manifests ---------------------------------------------------------------------

    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: &Bytes,
    ) -> Result<StoredManifest> {
        let parsed: ParsedManifest =
            manifest::parse(body, content_type).map_err(Error::ManifestInvalid)?;
        let digest = Digest::of(body);
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return Err(Error::DigestInvalid(format!(
                    "the manifest's digest is {digest}, not {d} as the URL says"
                )));
            }
        }
        let tag = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        let outcome = self
            .meta
            .put_manifest(&NewManifest {
                repository: repo,
                digest: &digest,
                media_type: parsed.media_type.as_str(),
                artifact_type: parsed.artifact_type.as_deref(),
                config: parsed.config.as_ref(),
                subject: parsed.subject.as_ref(),
                payload: body,
                blobs: &parsed.blobs,
                blob_sizes: &parsed.blob_sizes,
                children: &parsed.children,
                child_sizes: &parsed.child_sizes,
                tag,
            })
            .await?;
        match outcome {
            PutManifestOutcome::Stored => Ok(StoredManifest {
                digest,
                subject: parsed.subject,
            }),
            PutManifestOutcome::MissingBlob(d) => Err(Error::ManifestBlobUnknown(format!(
                "blob {d} (push it to {repo} first, or mount it)"
            ))),
            PutManifestOutcome::MissingChild(d) => Err(Error::ManifestBlobUnknown(format!(
                "child manifest {d} (push it to {repo} before the index)"
            ))),
            PutManifestOutcome::SizeMismatch {
                digest,
                declared,
                stored,
            } => Err(Error::ManifestInvalid(format!(
                "the descriptor of {digest} declares {declared} bytes, but it has {stored}"
            ))),
        }
    }

    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestRecord> {
        let found = match reference {
            Reference::Tag(t) => self.meta.manifest_by_tag(repo, t).await?,
            Reference::Digest(d) => self.meta.manifest_by_digest(repo, d).await?,
        };
        found.ok_or_else(|| Error::ManifestUnknown(format!("{repo}:{reference}")))
    }

    /// By tag: removes the tag only. By digest: removes the manifest and its tags.
    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.require_delete()?;
        match reference {
            Reference::Tag(t) => {
                if self.meta.delete_tag(repo, t).await? {
                    Ok(())
                } else {
                    Err(Error::ManifestUnknown(format!("{repo}:{t}")))
                }
            }
            Reference::Digest(d) => match self.meta.delete_manifest(repo, d).await? {
                DeleteOutcome::Deleted => Ok(()),
                DeleteOutcome::NotFound => Err(Error::ManifestUnknown(format!("{repo}@{d}"))),
                DeleteOutcome::ReferencedBy(parent) => Err(Error::Conflict(format!(
                    "manifest {d} is listed by index {parent} in {repo}; delete the index first"
                ))),
            },
        }
    }

    fn require_delete(&self) -> Result<()> {
        if self.options.delete_enabled {
            Ok(())
        } else {
            Err(Error::Unsupported(
                "deletes are disabled on this registry (storage.delete.enabled: false)".into(),
            ))
        }
    }

    // ---- listings ----------------------------------------------------------------------

    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Names> {
        self.meta
            .tags(repo, last, limit)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.to_string()))
    }

    #[tracing::instrument(skip_all)]
    pub async fn catalog(&self, last: Option<&str>, limit: Option<u32>) -> Result<Names> {
        Ok(self.meta.catalog(last, limit).await?)
    }

    /// The referrers of `subject` as an OCI image index (empty, never 404, for an unknown
    /// subject).
    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Value> {
        let referrers = self.meta.referrers(repo, subject, artifact_type).await?;
        let manifests: Vec<Value> = referrers
            .into_iter()
            .map(|r| {
                let mut d = json!({
                    "mediaType": r.media_type,
                    "digest": r.digest.as_str(),
                    "size": r.payload.len(),
                });
                if let Some(at) = r.artifact_type {
                    d["artifactType"] = Value::String(at);
                }
                let annotations = serde_json::from_slice::<Value>(&r.payload)
                    .ok()
                    .and_then(|v| v.get("annotations").cloned())
                    .filter(Value::is_object);
                if let Some(a) = annotations {
                    d["annotations"] = a;
                }
                d
            })
            .collect();
        Ok(json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "manifests": manifests,
        }))
    }
}

/// Adapts a request body so that its bytes feed `hasher` as the storage driver pulls them.
pub(crate) fn io_stream<S, E>(
    body: S,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Unpin
where
    S: futures_util::Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures_util::StreamExt;
    body.map(|r| r.map_err(|e| io::Error::other(e.to_string())))
}

fn record_gc(mode: &'static str, started: std::time::Instant, result: &anyhow::Result<GcReport>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(crate::metrics::GC_RUNS, "mode" => mode, "result" => outcome).increment(1);
    metrics::histogram!(crate::metrics::GC_DURATION, "mode" => mode)
        .record(started.elapsed().as_secs_f64());
    if let (Ok(r), false) = (result, mode == "dry_run") {
        metrics::counter!(crate::metrics::GC_MANIFESTS_DELETED).increment(r.manifests_deleted);
        metrics::counter!(crate::metrics::GC_BLOBS_DELETED).increment(r.blobs_deleted);
        metrics::counter!(crate::metrics::GC_BYTES_FREED).increment(r.bytes_freed);
    }
}
