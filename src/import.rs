//! `wharf import`: adopts a CNCF Distribution (registry:2 / registry:3) storage tree where it
//! lies. Distribution keeps blobs where wharf does (`docker/registry/v2/blobs/sha256/<2>/<hex>/data`),
//! so no byte is copied: the tree's link files are read through the storage driver and become
//! rows — repositories, blobs and their links, manifests with every edge, tags.
//!
//! What is read, per repository `<name>` under `docker/registry/v2/repositories/`:
//! `_layers/sha256/<hex>/link` (a blob linked into the repository),
//! `_manifests/revisions/sha256/<hex>/link` (a manifest; its payload is the blob of that digest),
//! `_manifests/tags/<tag>/current/link` (a tag). `_uploads/` holds unfinished uploads, which are
//! reported and left alone. A manifest or tag Distribution deleted has no link any more, so it
//! stays deleted.
//!
//! Everything goes through the registry's own use cases (adopting a blob checks its object
//! under the row lock; a manifest is stored like a push, edges and all), so an import runs
//! while wharf serves and collects garbage: each manifest's blobs are adopted, young, right
//! before the manifest, and GC's grace period protects them until it is stored. Broken entries
//! are reported with their path and skipped; the rest imports. A repository is recorded as
//! imported once complete, so an interrupted run continues where it stopped and a second run
//! changes nothing (`again` reads everything again).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::oci::{Digest, Reference, RepoName, Tag, manifest};
use crate::registry::{MAX_MANIFEST_BYTES, Registry};

/// Where Distribution keeps its repositories, relative to the storage root.
pub const REPOSITORIES: &str = "docker/registry/v2/repositories/";
/// A link file holds one digest; anything longer is not one.
const LINK_MAX: u64 = 1024;

#[derive(Debug, Clone)]
pub struct Options {
    /// Report what would be imported, and the problems; change nothing.
    pub dry_run: bool,
    /// Only repositories matching this pattern (`team/*`, `team/**`, as in access policies).
    pub repositories: Option<String>,
    /// Repositories imported at once.
    pub concurrency: usize,
    /// Hash every adopted blob and compare it with its digest and size.
    pub verify: bool,
    /// Read every repository again, including those a previous run finished.
    pub again: bool,
    /// Redraw a one-line progress display on stderr (a terminal) instead of logging a line
    /// per repository.
    pub progress: bool,
}

/// What is wrong with one entry of the tree. It is skipped; the rest imports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub kind: &'static str,
    /// The entry's path relative to the storage root.
    pub path: String,
    pub detail: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// Repositories in the tree (matching the pattern).
    pub repositories: u64,
    /// Imported by this run (or, in a dry run, that would be).
    pub repositories_imported: u64,
    /// Skipped: a previous run finished them.
    pub repositories_already_imported: u64,
    pub manifests: u64,
    pub tags: u64,
    /// Blob links adopted (a blob linked into two repositories counts twice).
    pub blob_links: u64,
    /// Distinct blobs adopted, and their bytes.
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Unfinished uploads found under `_uploads` (left alone).
    pub leftover_uploads: u64,
    /// Objects in the blob store that no imported link or manifest reaches: left alone
    /// (Distribution's manifest payloads are among them; wharf keeps manifests in its
    /// database). `wharf fsck --delete-orphans` removes them once Distribution is retired.
    pub unreached_objects: u64,
    pub unreached_bytes: u64,
    pub problems: Vec<Problem>,
    pub elapsed_ms: u64,
}

/// The path of a blob's object relative to the storage root (Distribution's layout).
pub fn blob_path(digest: &Digest) -> String {
    let hex = digest.hex();
    format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
}

/// One repository's entries in the tree: link paths by digest or tag.
#[derive(Debug, Default)]
struct RepoTree {
    layers: BTreeMap<String, String>,
    revisions: BTreeMap<String, String>,
    tags: BTreeMap<String, String>,
    uploads: BTreeSet<String>,
}

/// Sorts the listing of `repositories/` into repositories. Entries that are not a
/// repository's (bad names) are problems.
fn sort_tree(paths: Vec<String>, problems: &mut Vec<Problem>) -> BTreeMap<String, RepoTree> {
    let mut repos: BTreeMap<String, RepoTree> = BTreeMap::new();
    for path in paths {
        let Some(rel) = path.strip_prefix(REPOSITORIES) else {
            continue;
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let Some(at) = parts.iter().position(|p| p.starts_with('_')) else {
            continue;
        };
        let name = parts[..at].join("/");
        let rest = &parts[at..];
        let entry = repos.entry(name.clone()).or_default();
        match rest {
            ["_layers", "sha256", hex, "link"] => {
                entry.layers.insert(format!("sha256:{hex}"), path.clone());
            }
            ["_manifests", "revisions", "sha256", hex, "link"] => {
                entry
                    .revisions
                    .insert(format!("sha256:{hex}"), path.clone());
            }
            ["_manifests", "tags", tag, "current", "link"] => {
                entry.tags.insert(tag.to_string(), path.clone());
            }
            ["_uploads", id, ..] => {
                entry
                    .uploads
                    .insert(format!("{REPOSITORIES}{name}/_uploads/{id}"));
            }
            _ => {}
        }
    }
    repos.retain(|name, _| {
        if name.parse::<RepoName>().is_ok() {
            return true;
        }
        problems.push(Problem {
            kind: "invalid-repository-name",
            path: format!("{REPOSITORIES}{name}"),
            detail: "not a valid repository name; its entries are skipped".into(),
        });
        false
    });
    repos
}

/// What the whole run shares: the registry, the options, blobs already adopted or checked.
struct Run<'a> {
    registry: &'a Registry,
    options: &'a Options,
    /// Digest → size (or None: missing or failed verification), once looked at.
    blobs: Mutex<HashMap<String, Option<u64>>>,
    problems: Mutex<Vec<Problem>>,
    /// Running totals for the progress display.
    manifests_done: AtomicU64,
    bytes_adopted: AtomicU64,
}

#[derive(Default)]
struct RepoCounts {
    manifests: u64,
    tags: u64,
    blob_links: u64,
}

impl Run<'_> {
    fn problem(&self, kind: &'static str, path: &str, detail: impl Into<String>) {
        let p = Problem {
            kind,
            path: path.to_owned(),
            detail: detail.into(),
        };
        tracing::warn!(kind = p.kind, path = %p.path, detail = %p.detail, "import: skipped");
        self.problems.lock().unwrap().push(p);
    }

    /// The digest a link file holds, checked against the digest its path names (if any).
    async fn read_link(&self, path: &str, expect: Option<&str>) -> Option<Digest> {
        let content = match self.registry.storage().read_file(path, LINK_MAX).await {
            Ok(c) => c,
            Err(e) => {
                self.problem("invalid-link", path, format!("cannot read the link: {e}"));
                return None;
            }
        };
        let text = String::from_utf8_lossy(&content);
        let digest = match text.trim().parse::<Digest>() {
            Ok(d) => d,
            Err(_) => {
                self.problem(
                    "invalid-link",
                    path,
                    format!(
                        "the link holds {:?}, not a digest (truncated or half-written)",
                        text.trim()
                    ),
                );
                return None;
            }
        };
        if let Some(e) = expect {
            if digest.as_str() != e {
                self.problem(
                    "invalid-link",
                    path,
                    format!("the link holds {digest}, but its path names {e}"),
                );
                return None;
            }
        }
        Some(digest)
    }

    /// Reads link files named by digest (`_layers`, `_manifests/revisions`), 16 at a time.
    async fn read_links<'t>(
        &self,
        links: &'t BTreeMap<String, String>,
    ) -> Vec<(&'t String, Option<Digest>)> {
        stream::iter(links.iter())
            .map(|(d, path)| async move { (path, self.read_link(path, Some(d)).await) })
            .buffer_unordered(16)
            .collect()
            .await
    }

    /// Checks the blob's object once per run (size; with `verify`, its content hash).
    async fn check_blob(&self, digest: &Digest) -> anyhow::Result<Option<u64>> {
        if let Some(known) = self.blobs.lock().unwrap().get(digest.as_str()) {
            return Ok(*known);
        }
        let storage = self.registry.storage();
        let mut size = storage.blob_stat(digest).await?;
        if let (Some(n), true) = (size, self.options.verify) {
            let mut hasher = Sha256::new();
            let mut body = storage.blob_read(digest, 0, n).await?;
            let mut read = 0u64;
            while let Some(chunk) = body.try_next().await? {
                read += chunk.len() as u64;
                hasher.update(&chunk);
            }
            let actual = Digest::from_sha256_bytes(&hasher.finalize());
            if actual != *digest || read != n {
                self.problem(
                    "digest-mismatch",
                    &blob_path(digest),
                    format!("the object ({read} bytes) hashes to {actual}"),
                );
                size = None;
            }
        }
        self.blobs.lock().unwrap().insert(digest.to_string(), size);
        Ok(size)
    }

    /// Adopts `digest` into `repo` (after checking it). False when its object is missing.
    async fn adopt(&self, repo: &RepoName, digest: &Digest) -> anyhow::Result<bool> {
        let Some(size) = self.check_blob(digest).await? else {
            return Ok(false);
        };
        if self.options.dry_run {
            return Ok(true);
        }
        let adopted = self.registry.adopt_blob(repo, digest, size).await?;
        if let Some(n) = adopted {
            self.bytes_adopted.fetch_add(n, Ordering::Relaxed);
        }
        if adopted.is_none() {
            // Gone between the check and the row lock.
            self.blobs.lock().unwrap().insert(digest.to_string(), None);
        }
        Ok(adopted.is_some())
    }

    async fn import_repository(&self, name: &str, tree: &RepoTree) -> anyhow::Result<RepoCounts> {
        let repo: RepoName = name.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut counts = RepoCounts::default();

        // Manifests: their payloads, parsed.
        let mut manifests: BTreeMap<Digest, (Bytes, manifest::ParsedManifest, String)> =
            BTreeMap::new();
        for (path, digest) in self.read_links(&tree.revisions).await {
            let Some(digest) = digest else { continue };
            if let Some((payload, parsed)) = self.read_manifest(path, &digest).await? {
                manifests.insert(digest, (payload, parsed, path.clone()));
            }
        }

        // Tags, by the manifest they point at: a tagged manifest is stored under its tag at
        // once (an untagged one would be garbage to GC after the grace period).
        let mut tags_of: BTreeMap<Digest, Vec<(Tag, String)>> = BTreeMap::new();
        for (tag, path) in &tree.tags {
            let Ok(t) = tag.parse::<Tag>() else {
                self.problem("invalid-tag", path, format!("{tag:?} is not a valid tag"));
                continue;
            };
            if let Some(digest) = self.read_link(path, None).await {
                tags_of.entry(digest).or_default().push((t, path.clone()));
            }
        }

        // Store them children first (an index needs its children), referrers last.
        let mut stored: BTreeSet<Digest> = BTreeSet::new();
        let mut failed: BTreeSet<Digest> = BTreeSet::new();
        let mut order: Vec<&Digest> = manifests.keys().collect();
        order.sort_by_key(|d| manifests[*d].1.subject.is_some());
        loop {
            let mut progressed = false;
            for digest in &order {
                if stored.contains(*digest) || failed.contains(*digest) {
                    continue;
                }
                let (payload, parsed, path) = &manifests[*digest];
                if let Some(child) = parsed
                    .children
                    .iter()
                    .find(|c| failed.contains(*c) || !manifests.contains_key(*c))
                {
                    self.problem(
                        "missing-child",
                        path,
                        format!("the index lists {child}, which the repository does not hold"),
                    );
                    failed.insert((*digest).clone());
                    progressed = true;
                    continue;
                }
                if !parsed.children.iter().all(|c| stored.contains(c)) {
                    continue;
                }
                progressed = true;
                let tags = tags_of.get(*digest).map(Vec::as_slice).unwrap_or_default();
                if self
                    .store_manifest(&repo, digest, payload, parsed, path, tags, &mut counts)
                    .await?
                {
                    stored.insert((*digest).clone());
                } else {
                    failed.insert((*digest).clone());
                }
            }
            if !progressed {
                break;
            }
        }

        // Links no manifest accounted for (a blob pushed but never referenced, say).
        for (path, digest) in self.read_links(&tree.layers).await {
            let Some(digest) = digest else { continue };
            let referenced = manifests
                .iter()
                .any(|(d, m)| stored.contains(d) && m.1.blobs.contains(&digest));
            if referenced {
                continue;
            }
            if self.adopt(&repo, &digest).await? {
                counts.blob_links += 1;
            } else {
                self.problem(
                    "missing-blob",
                    path,
                    format!("links {digest}, whose object is missing or damaged"),
                );
            }
        }

        // Tags whose manifest was not stored.
        for (digest, tags) in &tags_of {
            if stored.contains(digest) {
                continue;
            }
            for (_, path) in tags {
                self.problem(
                    "tag-to-missing-revision",
                    path,
                    format!("the tag points at {digest}, which the repository does not hold (or was skipped)"),
                );
            }
        }
        Ok(counts)
    }

    /// A revision's payload, parsed; None (with a problem) when it cannot be imported.
    async fn read_manifest(
        &self,
        path: &str,
        digest: &Digest,
    ) -> anyhow::Result<Option<(Bytes, manifest::ParsedManifest)>> {
        let payload = match self
            .registry
            .storage()
            .read_file(&blob_path(digest), MAX_MANIFEST_BYTES as u64)
            .await
        {
            Ok(p) => p,
            Err(e) if e.kind() == crate::storage::StorageErrorKind::NotFound => {
                self.problem(
                    "missing-blob",
                    path,
                    format!("the manifest's payload {digest} is missing"),
                );
                return Ok(None);
            }
            Err(e) => {
                self.problem(
                    "invalid-manifest",
                    path,
                    format!("cannot read the payload: {e}"),
                );
                return Ok(None);
            }
        };
        if Digest::of(&payload) != *digest {
            self.problem(
                "digest-mismatch",
                &blob_path(digest),
                format!("the manifest payload hashes to {}", Digest::of(&payload)),
            );
            return Ok(None);
        }
        let schema1 = serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()
            .and_then(|v| v.get("schemaVersion").and_then(|s| s.as_u64()))
            == Some(1);
        if schema1 {
            self.problem(
                "schema1-manifest",
                path,
                "Docker schema 1 manifests are not supported; push the image again as schema 2 or OCI",
            );
            return Ok(None);
        }
        match manifest::parse(&payload, None) {
            Ok(parsed) => Ok(Some((payload, parsed))),
            Err(e) => {
                self.problem("invalid-manifest", path, e);
                Ok(None)
            }
        }
    }

    /// Adopts the manifest's blobs and stores it, under each of its tags (or by digest when
    /// it has none). False when it cannot be stored.
    #[allow(clippy::too_many_arguments)]
    async fn store_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        payload: &Bytes,
        parsed: &manifest::ParsedManifest,
        path: &str,
        tags: &[(Tag, String)],
        counts: &mut RepoCounts,
    ) -> anyhow::Result<bool> {
        for blob in &parsed.blobs {
            if !self.adopt(repo, blob).await? {
                self.problem(
                    "missing-blob",
                    path,
                    format!("the manifest references {blob}, whose object is missing or damaged"),
                );
                return Ok(false);
            }
            counts.blob_links += 1;
        }
        let references: Vec<(Reference, &str)> = if tags.is_empty() {
            vec![(Reference::Digest(digest.clone()), path)]
        } else {
            tags.iter()
                .map(|(t, p)| (Reference::Tag(t.clone()), p.as_str()))
                .collect()
        };
        let mut stored = false;
        for (reference, at) in references {
            if !self.options.dry_run {
                if let Err(e) = self
                    .registry
                    .put_manifest(repo, &reference, None, payload)
                    .await
                {
                    self.problem("manifest-refused", at, e.to_string());
                    continue;
                }
            }
            stored = true;
            if let Reference::Tag(_) = reference {
                counts.tags += 1;
            }
        }
        if !stored {
            return Ok(false);
        }
        counts.manifests += 1;
        self.manifests_done.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// Imports the Distribution tree under the registry's storage root.
pub async fn run(registry: &Registry, options: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = Report {
        dry_run: options.dry_run,
        ..Report::default()
    };
    let mut problems = Vec::new();
    let listing = registry.storage().list_files(REPOSITORIES).await?;
    tracing::info!(entries = listing.len(), storage = %registry.describe_storage(), "import: listed the tree");
    let mut repos = sort_tree(listing, &mut problems);
    if let Some(p) = &options.repositories {
        repos.retain(|name, _| crate::auth::policy::pattern_matches(p, name));
    }
    report.repositories = repos.len() as u64;
    if options.again && !options.dry_run {
        registry.forget_imports().await?;
    }
    let done = registry.imported_repositories().await?;

    let run = Run {
        registry,
        options,
        blobs: Mutex::new(HashMap::new()),
        problems: Mutex::new(problems),
        manifests_done: AtomicU64::new(0),
        bytes_adopted: AtomicU64::new(0),
    };
    for (name, tree) in &repos {
        for dir in &tree.uploads {
            run.problem(
                "leftover-upload",
                dir,
                format!("an unfinished upload into {name}; left alone"),
            );
            report.leftover_uploads += 1;
        }
    }
    let todo: Vec<(&String, &RepoTree)> = repos
        .iter()
        .filter(|(name, _)| options.dry_run || !done.contains(*name))
        .collect();
    report.repositories_already_imported = report.repositories - todo.len() as u64;
    let total = todo.len();
    let finished = Arc::new(AtomicUsize::new(0));
    let drawing = options.progress.then(|| {
        let finished = finished.clone();
        let run_started = Instant::now();
        move |run: &Run<'_>| {
            let secs = run_started.elapsed().as_secs_f64().max(0.001);
            let manifests = run.manifests_done.load(Ordering::Relaxed);
            eprint!(
                "\rimport: {}/{total} repositories, {manifests} manifests ({:.0}/s), {:.1} MB of blobs   ",
                finished.load(Ordering::Relaxed),
                manifests as f64 / secs,
                run.bytes_adopted.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
    });
    let work = stream::iter(todo)
        .map(|(name, tree)| {
            let run = &run;
            let finished = finished.clone();
            async move {
                let counts = run.import_repository(name, tree).await?;
                if !options.dry_run {
                    run.registry.mark_imported(name).await?;
                }
                let n = finished.fetch_add(1, Ordering::Relaxed) + 1;
                if options.progress {
                    return Ok(counts);
                }
                tracing::info!(
                    repository = %name,
                    manifests = counts.manifests,
                    tags = counts.tags,
                    blob_links = counts.blob_links,
                    progress = %format!("{n}/{total}"),
                    "import: repository imported"
                );
                Ok(counts)
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect::<Vec<anyhow::Result<RepoCounts>>>();
    let results = match &drawing {
        None => work.await,
        Some(draw) => {
            tokio::pin!(work);
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                tokio::select! {
                    r = &mut work => {
                        draw(&run);
                        eprintln!();
                        break r;
                    }
                    _ = tick.tick() => draw(&run),
                }
            }
        }
    };
    for r in results {
        let c = r?;
        report.repositories_imported += 1;
        report.manifests += c.manifests;
        report.tags += c.tags;
        report.blob_links += c.blob_links;
    }

    // What the tree holds that nothing imported reaches.
    let seen = run.blobs.into_inner().unwrap();
    for (_, size) in seen.iter() {
        if let Some(n) = size {
            report.blobs += 1;
            report.blob_bytes += n;
        }
    }
    if options.repositories.is_none() {
        let known = registry.known_blobs().await?;
        for object in registry.storage().list_blobs().await? {
            let digest = object.digest.as_str();
            if !known.contains(digest) && !seen.get(digest).is_some_and(Option::is_some) {
                report.unreached_objects += 1;
                report.unreached_bytes += object.size;
            }
        }
    }
    let mut problems = run.problems.into_inner().unwrap();
    problems.sort();
    report.problems = problems;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
