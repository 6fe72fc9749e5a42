//! GC benchmark: seeds a store of N blobs (images of 10 blobs each, every image tagged except
//! 1%, whose blobs are therefore garbage, and whose untagging queued them for review, as a tag
//! deletion does), then times a queue run (what the server runs every interval), an idle queue
//! run, and a full pass over every row (the periodic safety net).
//!
//!     cargo run --release --example gc_bench -- [--database-url URL] [SIZES...]
//!
//! SIZES default to 1000 10000 100000. Without --database-url each size gets a fresh SQLite
//! file; with a postgres:// URL (whose user may CREATE DATABASE) each size gets a fresh
//! database. Rows are inserted directly (the API would take far longer to seed); the garbage
//! blobs get real objects so the run deletes real files.

use std::time::{Duration, Instant};

use sqlx::Executor;
use sqlx::any::AnyPoolOptions;
use wharf::config::Config;
use wharf::meta::GcPolicy;

const BLOBS_PER_IMAGE: usize = 10;

fn digest(kind: &str, n: usize) -> String {
    wharf::oci::Digest::of(format!("{kind}-{n}").as_bytes()).to_string()
}

async fn seed(url: &str, root: &std::path::Path, blobs: usize) -> anyhow::Result<usize> {
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    let old = wharf::meta::now_ms() - 48 * 3600 * 1000;
    let images = blobs / BLOBS_PER_IMAGE;
    let garbage_images = (images / 100).max(1);
    let mut tx = pool.begin().await?;
    tx.execute(
        format!("INSERT INTO repositories (id, name, created_at) VALUES (1, 'bench/app', {old})")
            .as_str(),
    )
    .await?;
    for chunk in (0..images).collect::<Vec<_>>().chunks(100) {
        let mut b = Vec::new();
        let mut rb = Vec::new();
        let mut m = Vec::new();
        let mut mb = Vec::new();
        let mut t = Vec::new();
        let mut q = Vec::new();
        for &i in chunk {
            let id = i + 1;
            m.push(format!(
                "({id}, 1, '{}', 'application/vnd.oci.image.manifest.v1+json', '{{}}', 2, {old})",
                digest("m", i)
            ));
            for k in 0..BLOBS_PER_IMAGE {
                let d = digest("b", i * BLOBS_PER_IMAGE + k);
                b.push(format!("('{d}', 1000, 'active', {old})"));
                rb.push(format!("(1, '{d}', {old})"));
                mb.push(format!("({id}, 1, '{d}')"));
            }
            if i >= garbage_images {
                t.push(format!("(1, 'tag-{i}', {id}, {old})"));
            } else {
                q.push(format!("({id}, 0)"));
            }
        }
        tx.execute(
            format!(
                "INSERT INTO blobs (digest, size, status, created_at) VALUES {}",
                b.join(",")
            )
            .as_str(),
        )
        .await?;
        tx.execute(
            format!(
                "INSERT INTO repository_blobs (repository_id, blob_digest, created_at) VALUES {}",
                rb.join(",")
            )
            .as_str(),
        )
        .await?;
        tx.execute(
            format!(
                "INSERT INTO manifests (id, repository_id, digest, media_type, payload, total_size, created_at) VALUES {}",
                m.join(",")
            )
            .as_str(),
        )
        .await?;
        tx.execute(
            format!(
                "INSERT INTO manifest_blobs (manifest_id, repository_id, blob_digest) VALUES {}",
                mb.join(",")
            )
            .as_str(),
        )
        .await?;
        if !q.is_empty() {
            tx.execute(
                format!(
                    "INSERT INTO gc_manifest_reviews (manifest_id, due) VALUES {}",
                    q.join(",")
                )
                .as_str(),
            )
            .await?;
        }
        if !t.is_empty() {
            tx.execute(
                format!(
                    "INSERT INTO tags (repository_id, name, manifest_id, updated_at) VALUES {}",
                    t.join(",")
                )
                .as_str(),
            )
            .await?;
        }
    }
    tx.commit().await?;
    if url.starts_with("postgres") {
        // Identity columns were given explicit ids; move the sequence past them.
        pool.execute("SELECT setval(pg_get_serial_sequence('manifests', 'id'), (SELECT MAX(id) FROM manifests))").await?;
        pool.execute("ANALYZE").await?;
    }
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
        "backend\tblobs\tgarbage_blobs\tqueue_run_ms\tmanifests_deleted\tblobs_deleted\tidle_queue_run_ms\tfull_pass_ms"
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
                let report = wharf::gc::run(registry, policy, mode, false).await?;
                anyhow::Ok((started.elapsed().as_secs_f64() * 1000.0, report))
            }
        };
        let (queue_ms, report) = timed(wharf::gc::Mode::Queue).await?;
        anyhow::ensure!(
            report.blobs_deleted as usize == garbage,
            "expected {garbage} blobs collected, got {}",
            report.blobs_deleted
        );
        let (idle_ms, idle) = timed(wharf::gc::Mode::Queue).await?;
        anyhow::ensure!(idle.blobs_deleted == 0);
        let (full_ms, full) = timed(wharf::gc::Mode::Full).await?;
        anyhow::ensure!(
            full.blobs_deleted == 0 && full.manifests_deleted == 0,
            "the queue missed garbage"
        );
        println!(
            "{backend}\t{blobs}\t{garbage}\t{queue_ms:.1}\t{}\t{}\t{idle_ms:.1}\t{full_ms:.1}",
            report.manifests_deleted, report.blobs_deleted
        );
        drop(registry);
        if let Some((client, name)) = cleanup {
            client
                .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await?;
        }
    }
    Ok(())
}
