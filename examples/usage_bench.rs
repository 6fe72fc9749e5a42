//! Usage-report benchmark: seeds R repositories (`org<k>/app<i>`, 50 organisations) of one
//! tagged image each; every image references 10 blobs, 8 of its own and 2 from a shared pool,
//! so R = 10,000 gives 100,000 blobs. Then times each report.
//!
//!     cargo run --release --example usage_bench -- [--database-url URL] [REPOSITORIES]
//!
//! Without --database-url a fresh SQLite file is used; with a postgres:// URL (whose user may
//! CREATE DATABASE) a fresh database is created and dropped.

use std::time::Instant;

use wharf::meta::seed::{SeedManifest, Seeder};

fn digest(kind: &str, n: usize) -> String {
    wharf::oci::Digest::of(format!("{kind}-{n}").as_bytes()).to_string()
}

async fn seed(url: &str, repos: usize) -> anyhow::Result<usize> {
    let mut seeder = Seeder::open(url).await?;
    let now = wharf::meta::now_ms();
    let pool_size = repos * 2;
    for n in 0..pool_size {
        seeder
            .blob(&digest("shared", n), 1000 + (n % 7919) as u64, now)
            .await?;
    }
    for i in 0..repos {
        let id = i as i64 + 1;
        seeder
            .repository(id, &format!("org{}/app{i}", i % 50), now)
            .await?;
        let mut refs = Vec::new();
        for k in 0..8 {
            let d = digest("own", i * 8 + k);
            seeder
                .blob(&d, 5000 + ((i * 8 + k) % 100_003) as u64, now)
                .await?;
            refs.push(d);
        }
        for k in 0..2 {
            // Each shared blob is used by a handful of repositories across organisations.
            let d = digest("shared", (i * 7 + k * 13) % pool_size);
            if !refs.contains(&d) {
                refs.push(d);
            }
        }
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        seeder
            .manifest(&SeedManifest {
                id,
                repository_id: id,
                digest: &digest("m", i),
                media_type: "application/vnd.oci.image.manifest.v1+json",
                config_digest: None,
                payload: b"{}",
                total_size: 10_000,
                created_at: now,
                blobs: &refs,
            })
            .await?;
        seeder.tag(id, "latest", id, now).await?;
    }
    seeder.finish().await?;
    Ok(pool_size + repos * 8)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut admin = None;
    if let Some(i) = args.iter().position(|a| a == "--database-url") {
        admin = Some(args.remove(i + 1));
        args.remove(i);
    }
    let repos: usize = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir()?;
    let (url, cleanup) = match &admin {
        Some(a) => {
            let name = format!("wharf_usage_{}", uuid::Uuid::new_v4().simple());
            let (client, conn) = tokio_postgres::connect(a, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await?;
            let base = a.rsplit_once('/').map(|(b, _)| b).unwrap_or(a);
            (format!("{base}/{name}"), Some((client, name)))
        }
        None => (
            format!("sqlite://{}", dir.path().join("wharf.db").display()),
            None,
        ),
    };
    let meta = wharf::meta::MetaStore::open(&url, 4).await?;
    let blobs = seed(&url, repos).await?;
    let backend = if cleanup.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!("{backend}: {repos} repositories, {blobs} blobs");
    println!("report\tms\trows");
    macro_rules! time {
        ($label:expr, $e:expr) => {{
            let started = Instant::now();
            let rows = $e.await?;
            println!(
                "{}\t{:.1}\t{}",
                $label,
                started.elapsed().as_secs_f64() * 1000.0,
                rows
            );
        }};
    }
    time!("registry_usage", async {
        meta.registry_usage().await.map(|_| 1)
    });
    time!("namespace_usage (all 50)", async {
        meta.namespace_usage("").await.map(|v| v.len())
    });
    time!("namespace_usage org1", async {
        meta.namespace_usage("org1").await.map(|v| v.len())
    });
    time!("repository_usage (all)", async {
        meta.repository_usage("").await.map(|v| v.len())
    });
    time!("repository_usage org1", async {
        meta.repository_usage("org1").await.map(|v| v.len())
    });
    time!("largest_images 10", async {
        meta.largest_images("", 10).await.map(|v| v.len())
    });
    time!("largest_blobs 10", async {
        meta.largest_blobs(10).await.map(|v| v.len())
    });
    drop(meta);
    if let Some((client, name)) = cleanup {
        client
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await?;
    }
    Ok(())
}
