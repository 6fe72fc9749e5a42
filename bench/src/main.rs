//! regbench: wharf and CNCF Distribution side by side, on this machine, with the same data and
//! the same clients. Run through `scripts/bench` (which builds wharf in release mode and
//! installs Distribution and skopeo); see the README's Benchmarks section.
//!
//!     regbench all --wharf target/release/wharf [--work DIR] [--only fs,lists,gc,s3] [--secs S]
//!     regbench report DIR/results.tsv
//!
//! Sections:
//! - limits: SHA-256 on one core, durable and page-cache disk writes, page-cache reads;
//! - fs: both registries on the local filesystem (wharf with its default SQLite): skopeo
//!   push/pull of a large image (1 GiB + 4 MiB layers), of 8 images x 32 small layers
//!   (4-64 KiB, 8 shared) and of 2 multi-arch indexes; over the raw API, concurrent pushes
//!   and GETs of 4 KiB blobs, one 1 GiB blob pushed and pulled, 32 clients pulling one image;
//! - lists: stores of 10k and 100k tags and repositories: start-up time, tag list and
//!   catalog latency (p50/p99);
//! - gc: stores of 1k, 10k, 100k blobs with 1% garbage: Distribution's offline
//!   `garbage-collect` against wharf's online queue run and its full pass;
//! - import: `wharf import` of a Distribution tree of 10k manifests, beside copying the same
//!   images over the API;
//! - s3: both registries on the same local S3 server (moto; wharf with PostgreSQL when one
//!   answers at 127.0.0.1:5432, else SQLite): skopeo and raw-API scenarios.

mod images;
mod limits;
mod load;
mod out;
mod report;
mod seed;
mod servers;
mod skopeo;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::{Parser, Subcommand};

use crate::load::Target;
use crate::out::Out;
use crate::servers::{Kind, Setup, Storage};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every section and print the side-by-side table.
    All {
        /// The wharf binary to measure (a release build).
        #[arg(long)]
        wharf: PathBuf,
        /// Scratch directory: stores, layouts (kept between runs), logs and results.
        #[arg(long, default_value = "target/bench")]
        work: PathBuf,
        /// Comma-separated sections to run (limits, fs, lists, gc, import, s3); default all.
        #[arg(long)]
        only: Option<String>,
        /// Seconds each timed load runs.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// PostgreSQL URL whose user may CREATE DATABASE, for wharf in the s3 section
        /// ("none": SQLite).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
        postgres: String,
        /// Directory for the seeded stores (default: under /dev/shm when it exists).
        #[arg(long)]
        seeded: Option<PathBuf>,
    },
    /// Print the table for a results file.
    Report { results: PathBuf },
    /// One raw-API load against a running registry (for profiling): push-small, push-mono,
    /// get-small, get-large, big, pulls.
    Load {
        url: String,
        scenario: String,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// The server's PID, for its CPU time and peak RSS.
        #[arg(long)]
        pid: Option<u32>,
    },
}

const SETS: [&str; 3] = ["large", "small", "multiarch"];
const KINDS: [Kind; 2] = [Kind::Distribution, Kind::Wharf];

/// Sizes of the raw-API scenarios: the large blob, the layers of the image 32 clients pull,
/// and how many small blobs the GET load picks from (pushed first).
#[derive(Clone, Copy)]
struct Shape {
    big: usize,
    pull_layer: usize,
    get_blobs: usize,
}

const FS_SHAPE: Shape = Shape {
    big: 1 << 30,
    pull_layer: 16 << 20,
    get_blobs: 512,
};

/// Smaller on S3: the local S3 server (moto, in Python) is the bottleneck of every S3 figure
/// and would otherwise take most of the benchmark's time.
const S3_SHAPE: Shape = Shape {
    big: 256 << 20,
    pull_layer: 4 << 20,
    get_blobs: 64,
};

struct Bench {
    work: PathBuf,
    /// Where the seeded stores (lists, gc) live: tmpfs when there is one.
    seeded: PathBuf,
    wharf: PathBuf,
    secs: f64,
    salt: u64,
}

impl Bench {
    fn setup(
        &self,
        kind: Kind,
        section: &str,
        storage: Option<Storage>,
        db: Option<String>,
    ) -> Setup {
        let base = if section.starts_with("lists") || section.starts_with("gc") {
            &self.seeded
        } else {
            &self.work
        };
        let dir = base.join(section).join(kind.label());
        let data = dir.join("data");
        Setup {
            kind,
            storage: storage.unwrap_or(Storage::Filesystem(data.clone())),
            database: db.unwrap_or(format!("sqlite://{}", dir.join("wharf.db").display())),
            wharf_bin: self.wharf.clone(),
            dir,
        }
    }

    /// Both registries of a section on the filesystem, each under `<dir>/data`.
    fn filesystem_pair(&self, section: &str) -> (Setup, Setup) {
        (
            self.setup(Kind::Distribution, section, None, None),
            self.setup(Kind::Wharf, section, None, None),
        )
    }

    fn fresh(&self, section: &str) -> anyhow::Result<()> {
        for base in [&self.work, &self.seeded] {
            let dir = base.join(section);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        Ok(())
    }

    /// Image layouts for skopeo, made once and kept in the work directory.
    fn layouts(
        &self,
        names: &[&str],
    ) -> anyhow::Result<Vec<(String, PathBuf, images::SetSummary)>> {
        let mut sets = Vec::new();
        for &name in names {
            let dir = self.work.join("layouts").join(name);
            let started = Instant::now();
            let summary = images::make_set(name, &dir)?;
            eprintln!(
                "  layout {name}: {} tags, {} blobs, {:.1} MB ({:.1} s)",
                summary.tags.len(),
                summary.unique_blobs,
                summary.unique_bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
            sets.push((name.to_string(), dir, summary));
        }
        Ok(sets)
    }

    /// skopeo and raw-API scenarios against one running registry.
    async fn traffic(
        &self,
        prefix: &str,
        server: &servers::Server,
        label: &str,
        sets: &[(String, PathBuf, images::SetSummary)],
        shape: Shape,
    ) -> anyhow::Result<()> {
        let pid = Some(server.pid);
        for (name, layout, summary) in sets {
            let mut out = Out::start(label, &format!("{prefix}.skopeo.{name}"), pid);
            let scratch = self.work.join(prefix).join(label);
            skopeo::push_pull(
                &mut out,
                server.host(),
                &format!("skopeo/{name}"),
                layout,
                summary,
                &scratch,
                if name == "large" { 2 } else { 1 },
            )?;
            out.finish();
        }
        let t = Target::new(&server.url)?;
        for (scenario, repo, size, how) in [
            ("push_4KiB_x16", "raw/small", 4096, load::Push::PostPut),
            (
                "push_64KiB_x16_monolithic",
                "raw/mono",
                64 << 10,
                load::Push::Monolithic,
            ),
        ] {
            let mut out = Out::start(label, &format!("{prefix}.raw.{scenario}"), pid);
            load::push_small(&t, &mut out, repo, size, 16, self.secs, self.salt, how).await?;
            out.finish();
        }
        let mut out = Out::start(label, &format!("{prefix}.raw.get_4KiB_x32"), pid);
        load::get_small(
            &t,
            &mut out,
            "raw/get",
            4096,
            shape.get_blobs,
            32,
            self.secs,
            self.salt,
        )
        .await?;
        out.finish();
        let mut out = Out::start(label, &format!("{prefix}.raw.big_blob"), pid);
        load::big(&t, &mut out, "raw/big", shape.big, self.salt).await?;
        out.finish();
        let mut out = Out::start(label, &format!("{prefix}.raw.get_large_x8"), pid);
        let size = shape.big / 4;
        load::get_large(&t, &mut out, "raw/large", size, 8, self.secs, self.salt).await?;
        out.finish();
        let mut out = Out::start(label, &format!("{prefix}.raw.pull_x32"), pid);
        load::pulls(&t, &mut out, "raw/pull", 4, shape.pull_layer, 32, self.secs).await?;
        out.finish();
        Ok(())
    }

    async fn fs(&self) -> anyhow::Result<()> {
        let sets = self.layouts(&SETS)?;
        // skopeo's own ceiling, no registry involved: the large image from one layout into
        // another (it reads, hashes and writes every byte, as a pull does).
        if let Some((_, layout, summary)) = sets.iter().find(|(name, ..)| name == "large") {
            let mut out = Out::start("machine", "skopeo", None);
            let scratch = self.work.join("fs").join("skopeo-local");
            skopeo::local_copy(&mut out, layout, summary, &scratch, 2)?;
            out.finish();
        }
        for kind in KINDS {
            self.fresh(&format!("fs/{}", kind.label()))?;
            let server = self.setup(kind, "fs", None, None).start()?;
            self.traffic("fs", &server, kind.label(), &sets, FS_SHAPE)
                .await?;
            server.stop();
        }
        Ok(())
    }

    async fn lists(&self) -> anyhow::Result<()> {
        for size in [10_000, 100_000] {
            let section = format!("lists/{size}");
            self.fresh(&section)?;
            let (d, w) = self.filesystem_pair(&section);
            let started = Instant::now();
            let late =
                seed::lists(&d.dir.join("data"), &w.dir.join("data"), &w.database, size).await?;
            eprintln!(
                "  seeded {size} tags and repositories in both stores ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            for setup in [&d, &w] {
                let label = setup.kind.label();
                // Start-up: median of three starts on the same store.
                let mut times = Vec::new();
                let mut server = None;
                for _ in 0..3 {
                    if let Some(s) = server.take() {
                        servers::Server::stop(s);
                    }
                    let s = setup.start()?;
                    times.push(s.startup_s);
                    server = Some(s);
                }
                let server = server.unwrap();
                times.sort_by(|a, b| a.total_cmp(b));
                let mut out = Out::start(label, &format!("lists.{size}.startup"), None);
                out.metric("startup_s", times[1], "lower");
                out.finish();
                let t = Target::new(&server.url)?;
                let pid = Some(server.pid);
                let secs = self.secs / 4.0;
                let scenarios = [
                    (
                        "tags_list_all",
                        "/v2/lists/tags/tags/list".to_string(),
                        "tags",
                        vec![size],
                    ),
                    // Distribution 2.8 ignores n on tags/list and answers with every tag.
                    (
                        "tags_list_n100_at_90pct",
                        format!("/v2/lists/tags/tags/list?n=100&last=t{:06}", size * 9 / 10),
                        "tags",
                        vec![100, size],
                    ),
                    (
                        "catalog_n100_first",
                        "/v2/_catalog?n=100".to_string(),
                        "repositories",
                        vec![100],
                    ),
                    (
                        "catalog_n100_at_90pct",
                        format!("/v2/_catalog?n=100&last={late}"),
                        "repositories",
                        vec![100],
                    ),
                ];
                for (name, path, key, expect) in scenarios {
                    let mut out = Out::start(label, &format!("lists.{size}.{name}"), pid);
                    load::list(&t, &mut out, &path, key, &expect, 1, secs).await?;
                    out.finish();
                }
                // The whole tag list on 4 connections at once (busier than one client: on 2
                // cores the requests queue behind each other).
                let mut out = Out::start(label, &format!("lists.{size}.tags_list_all_x4"), pid);
                let path = "/v2/lists/tags/tags/list";
                load::list(&t, &mut out, path, "tags", &[size], 4, secs).await?;
                out.finish();
                server.stop();
            }
            self.fresh(&section)?;
        }
        Ok(())
    }

    async fn gc(&self) -> anyhow::Result<()> {
        for blobs in [1_000, 10_000, 100_000] {
            let section = format!("gc/{blobs}");
            self.fresh(&section)?;
            let (d, w) = self.filesystem_pair(&section);
            let (droot, wroot) = (d.dir.join("data"), w.dir.join("data"));
            let (droot, wroot) = (&droot, &wroot);
            let started = Instant::now();
            let store = seed::gc(droot, wroot, &w.database, blobs).await?;
            eprintln!(
                "  seeded {} images ({} blob files in Distribution's tree), {} deleted ({:.1} s)",
                store.images,
                store.dist_blobs,
                store.garbage_images,
                started.elapsed().as_secs_f64()
            );
            let scenario = format!("gc.{blobs}_blobs");

            // Distribution: offline mark and sweep over the whole tree.
            let cfg = d.write_config(servers::free_port()?)?;
            let mut gc = Command::new("docker-registry");
            gc.arg("garbage-collect")
                .arg(&cfg)
                .env_remove("AWS_CA_BUNDLE");
            let (secs, rss, _) = servers::run_timed(gc, &d.dir.join("gc.log"))?;
            let left = seed::Tree::new(droot).count_blobs()?;
            ensure!(
                left == store.dist_keep,
                "Distribution's GC left {left} blobs, expected {}",
                store.dist_keep
            );
            let mut out = Out::start("distribution", &scenario, None);
            out.metric("gc_s", secs, "lower");
            out.metric("gc_peak_rss_MB", rss, "lower");
            out.finish();

            // wharf: the queue run its server makes online, then the periodic full pass.
            let cfg = w.write_config(servers::free_port()?)?;
            let run = |args: &[&str], log: &str| {
                let mut c = Command::new(&self.wharf);
                c.arg("--config")
                    .arg(&cfg)
                    .arg("gc")
                    .args(args)
                    .env_remove("RUST_LOG");
                servers::run_timed(c, &w.dir.join(log))
            };
            let (queue_s, rss, report) = run(&["--queue", "--json"], "gc-queue.log")?;
            let report: serde_json::Value = serde_json::from_str(&report)?;
            let left = seed::Tree::new(wroot).count_blobs()?;
            ensure!(
                left == store.wharf_keep,
                "wharf's GC left {left} blobs, expected {}",
                store.wharf_keep
            );
            let (full_s, _, full) = run(&["--json"], "gc-full.log")?;
            let full: serde_json::Value = serde_json::from_str(&full)?;
            ensure!(
                full["blobs_deleted"] == 0,
                "the full pass found garbage the queue run missed: {full}"
            );
            let mut out = Out::start("wharf", &scenario, None);
            out.metric("gc_s", queue_s, "lower");
            out.metric("gc_peak_rss_MB", rss, "lower");
            out.metric(
                "wharf_gc_reported_ms",
                report["duration_ms"].as_f64().unwrap_or(f64::NAN),
                "info",
            );
            out.metric("wharf_full_pass_s", full_s, "info");
            out.finish();
            self.fresh(&section)?;
        }
        Ok(())
    }

    /// `wharf import` of a Distribution tree of 10k manifests on disk, beside copying the
    /// same images into a fresh wharf over the API (8 clients; the least a copy costs: no
    /// reading from a source registry).
    async fn import(&self, postgres: &str) -> anyhow::Result<()> {
        const MANIFESTS: usize = 10_000;
        let section = "import";
        self.fresh(section)?;
        let w = self.setup(Kind::Wharf, section, None, None);
        let root = w.dir.join("data");
        let started = Instant::now();
        let images = seed::import_tree(&root, MANIFESTS)?;
        let objects = seed::Tree::new(&root).count_blobs()?;
        eprintln!(
            "  seeded a Distribution tree: {MANIFESTS} manifests, {objects} objects ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        let cfg = w.write_config(servers::free_port()?)?;
        let mut cmd = Command::new(&self.wharf);
        cmd.arg("--config")
            .arg(&cfg)
            .args(["import", "--json"])
            .env_remove("RUST_LOG")
            .env("REGISTRY_LOG_LEVEL", "warn");
        let (secs, rss, report) = servers::run_timed(cmd, &w.dir.join("import.log"))?;
        let report: serde_json::Value = serde_json::from_str(&report)?;
        ensure!(
            report["manifests"] == MANIFESTS
                && report["problems"].as_array().is_some_and(|p| p.is_empty()),
            "the import did not take every manifest: {report}"
        );
        let repositories = report["repositories_imported"].as_f64().unwrap_or(0.0);

        // The same images over the API, into a fresh wharf.
        let api = self.setup(Kind::Wharf, "import-api", None, None);
        self.fresh("import-api")?;
        let server = api.start()?;
        let t = std::sync::Arc::new(Target::new(&server.url)?);
        let images = std::sync::Arc::new(images);
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..8 {
            let (t, images, next) = (t.clone(), images.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((repo, tag, img)) = images.get(i) else {
                        return anyhow::Ok(());
                    };
                    for data in &img.data {
                        t.push_blob(repo, bytes::Bytes::from(data.clone())).await?;
                    }
                    t.put_manifest(repo, tag, images::OCI_MANIFEST, img.manifest.clone())
                        .await?;
                }
            }));
        }
        for w in workers {
            w.await??;
        }
        let api_s = started.elapsed().as_secs_f64();
        server.stop();

        let (s3_secs, s3_objects) = self.import_s3(&root, postgres).await?;

        let mut out = Out::start("wharf", "import.10k_manifests_fs", None);
        out.metric("import_s", secs, "info");
        out.metric("import_peak_rss_MB", rss, "info");
        out.metric("repositories_per_s", repositories / secs, "info");
        out.metric("manifests_per_s", MANIFESTS as f64 / secs, "info");
        out.metric("objects_per_s", objects as f64 / secs, "info");
        out.metric("api_copy_s", api_s, "info");
        out.metric("import_vs_api_copy_x", api_s / secs, "info");
        out.finish();
        let mut out = Out::start("wharf", "import.10k_manifests_s3", None);
        out.metric("import_s", s3_secs, "info");
        out.metric("manifests_per_s", MANIFESTS as f64 / s3_secs, "info");
        out.metric("objects_per_s", s3_objects as f64 / s3_secs, "info");
        out.finish();
        self.fresh(section)?;
        self.fresh("import-api")?;
        Ok(())
    }

    /// The same tree on S3 (the local moto server; wharf with PostgreSQL when one answers):
    /// uploaded file by file, then imported. Returns the import's seconds and the objects.
    async fn import_s3(&self, tree: &Path, postgres: &str) -> anyhow::Result<(f64, usize)> {
        let dir = self.work.join("import-s3");
        self.fresh("import-s3")?;
        std::fs::create_dir_all(&dir)?;
        let moto = servers::Moto::start(&dir, &["tree"]).await?;
        let mut files = Vec::new();
        let mut dirs = vec![tree.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d)? {
                let e = e?;
                if e.file_type()?.is_dir() {
                    dirs.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
        let started = Instant::now();
        let client = reqwest::Client::builder().no_proxy().build()?;
        let uploads = futures_util::stream::iter(files.iter().map(|f| {
            let key = f.strip_prefix(tree).unwrap().to_string_lossy().into_owned();
            let url = format!("{}/tree/{key}", moto.endpoint);
            let client = client.clone();
            let f = f.clone();
            async move {
                let r = client.put(url).body(std::fs::read(&f)?).send().await?;
                ensure!(r.status().is_success(), "PUT {key}: {}", r.status());
                anyhow::Ok(())
            }
        }));
        use futures_util::StreamExt;
        let results: Vec<anyhow::Result<()>> = uploads.buffer_unordered(32).collect().await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let objects = seed::Tree::new(tree).count_blobs()?;
        eprintln!(
            "  uploaded the tree to S3: {} files ({:.1} s)",
            files.len(),
            started.elapsed().as_secs_f64()
        );
        let db = scratch_database(postgres).await?;
        let storage = Storage::S3 {
            endpoint: moto.endpoint.clone(),
            bucket: "tree".into(),
        };
        let w = self.setup(
            Kind::Wharf,
            "import-s3",
            Some(storage),
            db.as_ref().map(|d| d.url.clone()),
        );
        let cfg = w.write_config(servers::free_port()?)?;
        let mut cmd = Command::new(&self.wharf);
        cmd.arg("--config")
            .arg(&cfg)
            .args(["import", "--json", "--concurrency", "8"])
            .env_remove("RUST_LOG")
            .env("REGISTRY_LOG_LEVEL", "warn");
        let (secs, _, report) = servers::run_timed(cmd, &w.dir.join("import.log"))?;
        let report: serde_json::Value = serde_json::from_str(&report)?;
        ensure!(
            report["problems"].as_array().is_some_and(|p| p.is_empty()),
            "the S3 import reported problems: {report}"
        );
        if let Some(db) = db {
            db.drop().await?;
        }
        drop(moto);
        self.fresh("import-s3")?;
        Ok((secs, objects))
    }

    async fn s3(&self, postgres: &str) -> anyhow::Result<()> {
        self.fresh("s3")?;
        std::fs::create_dir_all(self.work.join("s3"))?;
        let moto = servers::Moto::start(&self.work.join("s3"), &["distribution", "wharf"]).await?;
        let sets = self.layouts(&["multiarch"])?;
        let db = scratch_database(postgres).await?;
        for kind in KINDS {
            let storage = Storage::S3 {
                endpoint: moto.endpoint.clone(),
                bucket: kind.label().to_string(),
            };
            let server = self
                .setup(
                    kind,
                    "s3",
                    Some(storage),
                    db.as_ref().map(|d| d.url.clone()),
                )
                .start()?;
            self.traffic("s3", &server, kind.label(), &sets, S3_SHAPE)
                .await?;
            server.stop();
        }
        if let Some(db) = db {
            db.drop().await?;
        }
        drop(moto);
        Ok(())
    }
}

struct ScratchDb {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl ScratchDb {
    async fn drop(self) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await?;
        Ok(())
    }
}

/// A fresh PostgreSQL database for wharf, or None (SQLite) when none answers.
async fn scratch_database(admin_url: &str) -> anyhow::Result<Option<ScratchDb>> {
    if admin_url == "none" {
        return Ok(None);
    }
    let Ok((admin, conn)) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await else {
        eprintln!("  no PostgreSQL at {admin_url}: wharf uses SQLite in the s3 section");
        return Ok(None);
    };
    tokio::spawn(conn);
    let name = format!("regbench_{}", std::process::id());
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(admin_url);
    let url = format!("{base}/{name}");
    Ok(Some(ScratchDb { admin, name, url }))
}

/// Deletes a directory when dropped, also when the benchmark fails half-way: seeded stores
/// on tmpfs hold memory and inodes.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Seeded stores left in /dev/shm by runs that were killed.
fn remove_stale_seeded_stores() {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("regbench-") {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn machine(out: &mut Out) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = mem
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse::<f64>()
        .unwrap_or(0.0)
        / 1048576.0;
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "not found".into())
    };
    eprintln!(
        "machine: {model}, {} CPUs, {mem:.0} GiB RAM, kernel {}\n{}\n{}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        version("uname", "-r"),
        version("docker-registry", "--version"),
        version("skopeo", "--version"),
    );
    out.metric(
        "cpus",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0) as f64,
        "info",
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    match Cli::parse().cmd {
        Cmd::Report { results } => print!("{}", report::render(&results)?),
        Cmd::Load {
            url,
            scenario,
            secs,
            pid,
        } => {
            let t = Target::new(&url)?;
            let salt = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64;
            let mut out = Out::start("registry", &scenario, pid);
            match scenario.as_str() {
                "push-small" => {
                    let how = load::Push::PostPut;
                    load::push_small(&t, &mut out, "load/small", 4096, 16, secs, salt, how).await?
                }
                "push-mono" => {
                    let how = load::Push::Monolithic;
                    load::push_small(&t, &mut out, "load/mono", 64 << 10, 16, secs, salt, how)
                        .await?
                }
                "get-large" => {
                    load::get_large(&t, &mut out, "load/large", 256 << 20, 8, secs, salt).await?
                }
                "get-small" => {
                    load::get_small(&t, &mut out, "load/get", 4096, 512, 32, secs, salt).await?
                }
                "big" => load::big(&t, &mut out, "load/big", 1 << 30, salt).await?,
                "pulls" => load::pulls(&t, &mut out, "load/pull", 4, 16 << 20, 32, secs).await?,
                other => {
                    anyhow::bail!(
                        "unknown scenario {other:?}: push-small, push-mono, get-small, get-large, big, pulls"
                    )
                }
            }
            out.finish();
        }
        Cmd::All {
            wharf,
            work,
            only,
            secs,
            postgres,
            seeded,
        } => {
            std::fs::create_dir_all(&work)?;
            let work = work.canonicalize()?;
            let wharf = wharf
                .canonicalize()
                .context("the wharf binary (cargo build --release)")?;
            let results = work.join("results.tsv");
            let _ = std::fs::remove_file(&results);
            out::record_to(&results)?;
            // Seeded stores hold 100k+ directories; on this class of VM disk every mkdir costs
            // ~0.2 ms, so they live on tmpfs (the same medium for both registries).
            let seeded = match seeded {
                Some(dir) => dir,
                None if Path::new("/dev/shm").is_dir() => {
                    remove_stale_seeded_stores();
                    PathBuf::from(format!("/dev/shm/regbench-{}", std::process::id()))
                }
                None => work.join("seeded"),
            };
            std::fs::create_dir_all(&seeded)?;
            let _cleanup = RemoveOnDrop(seeded.clone());
            let bench = Bench {
                seeded,
                work,
                wharf,
                secs,
                salt: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos() as u64,
            };
            let wanted = |s: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == s));
            let started = Instant::now();
            eprintln!("== warming memory");
            let mut out = Out::start("machine", "memory", None);
            limits::warm_memory(&mut out)?;
            out.finish();
            if wanted("limits") {
                eprintln!("== limits");
                let mut out = Out::start("machine", "limits", None);
                machine(&mut out);
                limits::measure(&mut out, &bench.work.join("limits"), 1024)?;
            }
            for name in ["fs", "lists", "gc", "import", "s3"] {
                if !wanted(name) {
                    continue;
                }
                eprintln!(
                    "== {name} ({:.0} s so far)",
                    started.elapsed().as_secs_f64()
                );
                match name {
                    "fs" => bench.fs().await?,
                    "lists" => bench.lists().await?,
                    "gc" => bench.gc().await?,
                    "import" => bench.import(&postgres).await?,
                    _ => bench.s3(&postgres).await?,
                }
            }
            eprintln!("== done in {:.0} s\n", started.elapsed().as_secs_f64());
            let table = report::render(&results)?;
            std::fs::write(bench.work.join("results.md"), &table)?;
            print!("{table}");
            eprintln!("\n(results: {} and results.md)", results.display());
        }
    }
    Ok(())
}
