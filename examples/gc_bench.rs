//! GC benchmark: seeds a store of N blobs (images of 10 blobs each, every image tagged except
//! 1%, whose blobs are therefore garbage, and whose untagging queued them for review, as a tag
//! deletion does), then drains the queue in slices as the server does (each slice stops
//! starting batches after `gc::SLICE`; the next starts at once): the longest slice, how many,
//! and the time to drain. Then an idle slice, and a full pass over every row (the periodic
//! safety net); the tag list of the
//! repository (whole, and a first page of 100); and manifest PUT latency while idle and while
//! a full pass runs beside the pushes.
//!
//!     cargo run --release --example gc_bench -- [--database-url URL] [SIZES...]
//!
//! SIZES default to 1000 10000 100000. Without --database-url each size gets a fresh SQLite
//! file; with a postgres:// URL (whose user may CREATE DATABASE) each size gets a fresh
//! database. Rows are inserted directly (the API would take far longer to seed); the garbage
//! blobs get real objects so the run deletes real files.

use std::time::{Duration, Instant};

use wharf::config::Config;
use wharf::meta::seed::{SeedManifest, Seeder};
use wharf::meta::{GcPolicy, MetaStore, NewManifest, PutManifestOutcome};
use wharf::oci::{Digest, RepoName, Tag};

const BLOBS_PER_IMAGE: usize = 10;

fn digest(kind: &str, n: usize) -> String {
    wharf::oci::Digest::of(format!("{kind}-{n}").as_bytes()).to_string()
}

async fn seed(url: &str, root: &std::path::Path, blobs: usize) -> anyhow::Result<usize> {
    let mut seeder = Seeder::open(url).await?;
    let old = wharf::meta::now_ms() - 48 * 3600 * 1000;
    let images = blobs / BLOBS_PER_IMAGE;
    let garbage_images = (images / 100).max(1);
    seeder.repository(1, "bench/app", old).await?;
    for i in 0..images {
        let id = i as i64 + 1;
        let layers: Vec<String> = (0..BLOBS_PER_IMAGE)
            .map(|k| digest("b", i * BLOBS_PER_IMAGE + k))
            .collect();
        for d in &layers {
            seeder.blob(d, 1000, old).await?;
            seeder.link(1, d, old).await?;
        }
        let refs: Vec<&str> = layers.iter().map(String::as_str).collect();
        seeder
            .manifest(&SeedManifest {
                id,
                repository_id: 1,
                digest: &digest("m", i),
                media_type: "application/vnd.oci.image.manifest.v1+json",
                config_digest: None,
                payload: b"{}",
                total_size: 2,
                created_at: old,
                blobs: &refs,
            })
            .await?;
        if i >= garbage_images {
            seeder.tag(1, &format!("tag-{i}"), id, old).await?;
        } else {
            // Untagged, as a tag deletion leaves it: queued for review.
            seeder.manifest_review(id, 0).await?;
        }
    }
    seeder.finish().await?;
    let blob_root = root.join("docker/registry/v2/blobs/sha256");
    for n in 0..garbage_images * BLOBS_PER_IMAGE {
        let d = digest("b", n);
        let hex = &d["sha256:".len()..];
        let dir = blob_root.join(&hex[..2]).join(hex);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("data"), vec![0u8; 1000])?;
    }
    Ok(garbage_images * BLOBS_PER_IMAGE)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut base_url = None;
    if let Some(i) = args.iter().position(|a| a == "--database-url") {
        base_url = Some(args.remove(i + 1));
        args.remove(i);
    }
    let sizes: Vec<usize> = if args.is_empty() {
        vec![1000, 10_000, 100_000]
    } else {
        args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?
    };
    sqlx::any::install_default_drivers();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    println!(
        "backend\tblobs\tgarbage_blobs\tslices\tmax_slice_ms\tdrain_ms\tmanifests_deleted\tblobs_deleted\tidle_slice_ms\tfull_pass_ms\ttags_all_ms\ttags_100_ms\tput_p50_idle_ms\tput_p50_during_full_ms\tput_p99_during_full_ms\tfull_pass_beside_puts_ms"
    );
    for blobs in sizes {
        let dir = tempfile::tempdir()?;
        let (url, backend, cleanup) = match &base_url {
            Some(admin) => {
                let name = format!("wharf_bench_{}", uuid::Uuid::new_v4().simple());
                let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await?;
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
                (format!("{base}/{name}"), "postgres", Some((client, name)))
            }
            None => (
                format!("sqlite://{}", dir.path().join("wharf.db").display()),
                "sqlite",
                None,
            ),
        };
        let env = vec![
            ("WHARF_DATABASE_URL".to_string(), url.clone()),
            (
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".to_string(),
                dir.path().join("storage").display().to_string(),
            ),
        ];
        let config = Config::load(None, env)?;
        let registry = wharf::open_registry(&config).await?;
        let garbage = seed(&url, &dir.path().join("storage"), blobs).await?;
        let policy = GcPolicy::with_grace(Duration::from_secs(24 * 3600), true);
        let timed = |mode| {
            let registry = &registry;
            async move {
                let started = Instant::now();
                let report = registry.collect_garbage(policy, mode, false).await?;
                anyhow::Ok((started.elapsed().as_secs_f64() * 1000.0, report))
            }
        };
        let slice = || {
            let registry = &registry;
            async move {
                let started = Instant::now();
                let report = registry
                    .collect_garbage_slice(policy, wharf::gc::SLICE)
                    .await?;
                anyhow::Ok((started.elapsed().as_secs_f64() * 1000.0, report))
            }
        };
        let (mut slices, mut max_slice_ms, mut drain_ms) = (0, 0f64, 0f64);
        let (mut manifests_deleted, mut blobs_deleted) = (0, 0);
        loop {
            let (ms, r) = slice().await?;
            slices += 1;
            max_slice_ms = max_slice_ms.max(ms);
            drain_ms += ms;
            manifests_deleted += r.manifests_deleted;
            blobs_deleted += r.blobs_deleted;
            if !r.unfinished {
                break;
            }
        }
        anyhow::ensure!(
            blobs_deleted as usize == garbage,
            "expected {garbage} blobs collected, got {blobs_deleted}"
        );
        let (idle_ms, idle) = slice().await?;
        anyhow::ensure!(idle.blobs_deleted == 0 && !idle.unfinished);
        let (full_ms, full) = timed(wharf::gc::Mode::Full).await?;
        anyhow::ensure!(
            full.blobs_deleted == 0 && full.manifests_deleted == 0,
            "the queue missed garbage"
        );
        let repo: RepoName = "bench/app".parse().map_err(anyhow::Error::msg)?;
        let pusher = MetaStore::open(&url, 2).await?;
        let count = |t: Option<wharf::meta::Names>| t.map_or(0, |t| t.len());
        let started = Instant::now();
        let all = count(pusher.tags(&repo, None, None).await?);
        let tags_all_ms = started.elapsed().as_secs_f64() * 1000.0;
        let started = Instant::now();
        let page = count(pusher.tags(&repo, None, Some(100)).await?);
        let tags_100_ms = started.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(page == 100 && all > 100, "tags: {all}, page {page}");
        let idle = manifest_puts(&pusher, blobs, 0, 100).await?;
        // Pushes beside a full pass: the pass must not hold up a push for long.
        let full_pass = async {
            let started = Instant::now();
            let r = registry
                .collect_garbage(policy, wharf::gc::Mode::Full, false)
                .await?;
            anyhow::Ok((started.elapsed().as_secs_f64() * 1000.0, r))
        };
        let ((beside_ms, _), during) =
            tokio::try_join!(full_pass, manifest_puts(&pusher, blobs, 1, 100))?;
        println!(
            "{backend}\t{blobs}\t{garbage}\t{slices}\t{max_slice_ms:.1}\t{drain_ms:.1}\t{manifests_deleted}\t{blobs_deleted}\t{idle_ms:.1}\t{full_ms:.1}\t{tags_all_ms:.1}\t{tags_100_ms:.1}\t{:.2}\t{:.2}\t{:.2}\t{beside_ms:.1}",
            idle[idle.len() / 2],
            during[during.len() / 2],
            during[during.len() * 99 / 100]
        );
        drop(pusher);
        drop(registry);
        if let Some((client, name)) = cleanup {
            client
                .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await?;
        }
    }
    Ok(())
}

/// `n` manifest PUTs of new images made of the store's tagged blobs; latencies in ms, sorted.
async fn manifest_puts(
    meta: &MetaStore,
    blobs: usize,
    round: usize,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let repo: RepoName = "bench/app".parse().map_err(anyhow::Error::msg)?;
    let garbage = (blobs / BLOBS_PER_IMAGE / 100).max(1) * BLOBS_PER_IMAGE;
    let mut latencies = Vec::with_capacity(n);
    for p in 0..n {
        let picks: Vec<usize> = (0..BLOBS_PER_IMAGE)
            .map(|k| garbage + (p * 13 + k * 7) % (blobs - garbage))
            .collect();
        let digests: Vec<Digest> = picks
            .iter()
            .map(|&i| digest("b", i).parse())
            .collect::<Result<_, _>>()?;
        let sizes = vec![1000u64; digests.len()];
        let payload = format!("{{\"gc_bench\":{round},\"put\":{p}}}");
        let d = Digest::of(payload.as_bytes());
        let tag: Tag = format!("put-{round}-{p}")
            .parse()
            .map_err(anyhow::Error::msg)?;
        let started = Instant::now();
        let outcome = meta
            .put_manifest(&NewManifest {
                repository: &repo,
                digest: &d,
                media_type: "application/vnd.oci.image.manifest.v1+json",
                artifact_type: None,
                config: None,
                subject: None,
                payload: payload.as_bytes(),
                blobs: &digests,
                blob_sizes: &sizes,
                children: &[],
                child_sizes: &[],
                tag: Some(&tag),
            })
            .await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(outcome == PutManifestOutcome::Stored, "{outcome:?}");
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}
