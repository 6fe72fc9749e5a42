//! Usage-report benchmark at registry scale. Seeds BLOBS blobs in the shape of a real
//! registry: repositories `org<k>/app<i>` in 50 organisations, ten images per repository,
//! each image ten blobs (eight of its own, two from a shared pool used by a handful of
//! repositories across organisations), nine images in ten tagged. So 1M blobs are 10,000
//! repositories and 100,000 manifests; 10M blobs are 100,000 repositories and 1M manifests.
//!
//! Then it times: rebuilding the usage aggregates from the edge tables (what `wharf fsck
//! --repair` and the first start after the upgrade do), every report, 200 manifest PUTs
//! (p50/p99, with the usage journal's triggers; and again without them, to show what the
//! journal costs a push), folding those PUTs into the aggregates, and a tag list.
//!
//!     cargo run --release --example usage_bench -- [--database-url URL] [--reference] [BLOBS...]
//!
//! Without --database-url each size gets a fresh SQLite file; with a postgres:// URL (whose
//! user may CREATE DATABASE) each size gets a fresh database, dropped afterwards.
//! --keep leaves the database behind (and prints its URL).
//! --reference also times the views the aggregates replace (slow at scale: minutes at 10M).

use std::time::Instant;

use wharf::meta::seed::{SeedManifest, Seeder};
use wharf::meta::{MetaStore, NewManifest, PutManifestOutcome};
use wharf::oci::{Digest, RepoName, Tag};

const ORGS: usize = 50;
const IMAGES_PER_REPOSITORY: usize = 10;
const OWN_BLOBS: usize = 8;
const SHARED_BLOBS: usize = 2;
const BLOBS_PER_IMAGE: usize = OWN_BLOBS + SHARED_BLOBS;
const PUTS: usize = 200;

fn digest(kind: &str, n: usize) -> String {
    Digest::of(format!("{kind}-{n}").as_bytes()).to_string()
}

fn own_size(n: usize) -> u64 {
    5000 + (n % 100_003) as u64
}

/// Seeds the store; returns (repositories, manifests, blobs).
async fn seed(url: &str, blobs: usize) -> anyhow::Result<(usize, usize, usize)> {
    let mut seeder = Seeder::open(url).await?;
    let now = wharf::meta::now_ms();
    let images = (blobs / BLOBS_PER_IMAGE).max(IMAGES_PER_REPOSITORY);
    let repos = images / IMAGES_PER_REPOSITORY;
    let pool_size = (images * SHARED_BLOBS / 5).max(10);
    for n in 0..pool_size {
        seeder
            .blob(&digest("shared", n), 1000 + (n % 7919) as u64, now)
            .await?;
    }
    let mut own = 0;
    for r in 0..repos {
        let repo_id = r as i64 + 1;
        seeder
            .repository(repo_id, &format!("org{}/app{r}", r % ORGS), now)
            .await?;
        for k in 0..IMAGES_PER_REPOSITORY {
            let i = r * IMAGES_PER_REPOSITORY + k;
            let mut refs = Vec::new();
            for _ in 0..OWN_BLOBS {
                let d = digest("own", own);
                seeder.blob(&d, own_size(own), now).await?;
                refs.push(d);
                own += 1;
            }
            for s in 0..SHARED_BLOBS {
                // Each shared blob is used by about five images, in repositories far apart.
                let d = digest("shared", (i * 7 + s * 13) % pool_size);
                if !refs.contains(&d) {
                    refs.push(d);
                }
            }
            let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
            let id = i as i64 + 1;
            seeder
                .manifest(&SeedManifest {
                    id,
                    repository_id: repo_id,
                    digest: &digest("m", i),
                    media_type: "application/vnd.oci.image.manifest.v1+json",
                    config_digest: None,
                    payload: b"{}",
                    total_size: 10_000 + i as u64,
                    created_at: now - (images - i) as i64,
                    blobs: &refs,
                })
                .await?;
            if k != 0 {
                seeder
                    .tag(repo_id, &format!("v{k}"), id, now - (images - i) as i64)
                    .await?;
            }
        }
    }
    seeder.finish().await?;
    Ok((repos, images, pool_size + own))
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `PUTS` manifest PUTs into one repository, each a new image of ten of its blobs, tagged.
/// Returns the latencies in ms, sorted.
async fn manifest_puts(meta: &MetaStore, round: usize) -> anyhow::Result<Vec<f64>> {
    let repo: RepoName = "org0/app0".parse().map_err(anyhow::Error::msg)?;
    let mut latencies = Vec::with_capacity(PUTS);
    for p in 0..PUTS {
        let blobs: Vec<Digest> = (0..BLOBS_PER_IMAGE)
            .map(|k| {
                digest(
                    "own",
                    (p * 13 + k * 7) % (OWN_BLOBS * IMAGES_PER_REPOSITORY),
                )
                .parse()
            })
            .collect::<Result<_, _>>()?;
        let sizes: Vec<u64> = (0..BLOBS_PER_IMAGE)
            .map(|k| own_size((p * 13 + k * 7) % (OWN_BLOBS * IMAGES_PER_REPOSITORY)))
            .collect();
        let payload = format!("{{\"bench\":{round},\"put\":{p}}}");
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
                blobs: &blobs,
                blob_sizes: &sizes,
                children: &[],
                child_sizes: &[],
                tag: Some(&tag),
            })
            .await?;
        latencies.push(ms(started));
        anyhow::ensure!(outcome == PutManifestOutcome::Stored, "{outcome:?}");
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

const TRIGGERS: &[(&str, &str)] = &[
    ("manifest_blobs_usage_insert", "manifest_blobs"),
    ("manifest_blobs_usage_delete", "manifest_blobs"),
    ("manifests_usage_insert", "manifests"),
    ("manifests_usage_update", "manifests"),
    ("manifests_usage_delete", "manifests"),
    ("tags_usage_insert", "tags"),
    ("tags_usage_update", "tags"),
    ("tags_usage_delete", "tags"),
    ("manifest_children_usage_insert", "manifest_children"),
    ("manifest_children_usage_delete", "manifest_children"),
    ("repositories_usage_insert", "repositories"),
    ("blobs_usage_insert", "blobs"),
    ("blobs_usage_delete", "blobs"),
    ("blobs_usage_update", "blobs"),
];

/// Turns the usage journal's triggers off or on (for the comparison only). PostgreSQL
/// disables them; SQLite has no such switch, so they are dropped and created again from the
/// text SQLite keeps of them.
async fn set_triggers(
    url: &str,
    postgres: bool,
    on: bool,
    saved: &mut Vec<String>,
) -> anyhow::Result<()> {
    let pool = sqlx::AnyPool::connect(url).await?;
    for (name, table) in TRIGGERS {
        if postgres {
            let verb = if on { "ENABLE" } else { "DISABLE" };
            sqlx::query(&format!("ALTER TABLE {table} {verb} TRIGGER {name}"))
                .execute(&pool)
                .await?;
        } else if !on {
            let sql: String = sqlx::query_scalar(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = $1",
            )
            .bind(*name)
            .fetch_one(&pool)
            .await?;
            saved.push(sql);
            sqlx::query(&format!("DROP TRIGGER {name}"))
                .execute(&pool)
                .await?;
        }
    }
    if on && !postgres {
        for sql in saved.drain(..) {
            sqlx::query(&sql).execute(&pool).await?;
        }
    }
    pool.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut admin = None;
    if let Some(i) = args.iter().position(|a| a == "--database-url") {
        admin = Some(args.remove(i + 1));
        args.remove(i);
    }
    let keep = match args.iter().position(|a| a == "--keep") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let reference = match args.iter().position(|a| a == "--reference") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let sizes: Vec<usize> = if args.is_empty() {
        vec![100_000]
    } else {
        args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?
    };
    sqlx::any::install_default_drivers();
    for blobs in sizes {
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
        let backend = if cleanup.is_some() {
            "postgres"
        } else {
            "sqlite"
        };
        let started = Instant::now();
        let meta = MetaStore::open(&url, 4).await?;
        let (repos, manifests, seeded) = seed(&url, blobs).await?;
        println!(
            "== {backend}: {seeded} blobs, {manifests} manifests, {repos} repositories (seeded in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
        println!("{backend}\t{seeded}\tmeasure\tms\trows");
        macro_rules! time {
            ($label:expr, $e:expr) => {{
                let started = Instant::now();
                let rows = $e.await?;
                println!(
                    "{backend}\t{seeded}\t{}\t{:.1}\t{}",
                    $label,
                    ms(started),
                    rows
                );
            }};
        }
        time!("rebuild aggregates", async {
            meta.rebuild_usage().await.map(|_| 0)
        });
        time!("registry_usage", async {
            meta.registry_usage().await.map(|_| 1)
        });
        time!("namespace_usage (all)", async {
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
        time!("repository_usage org1/app1", async {
            meta.repository_usage("org1/app1").await.map(|v| v.len())
        });
        time!("largest_images 10", async {
            meta.largest_images("", 10).await.map(|v| v.len())
        });
        time!("largest_blobs 10", async {
            meta.largest_blobs(10).await.map(|v| v.len())
        });
        let repo: RepoName = "org0/app0".parse().map_err(anyhow::Error::msg)?;
        time!("tags list org0/app0", async {
            meta.tags(&repo, None, None)
                .await
                .map(|t| t.map_or(0, |t| t.len()))
        });
        if reference {
            time!("view registry_usage", async {
                meta.reference_registry_usage().await.map(|_| 1)
            });
            time!("view namespace_usage (all)", async {
                meta.reference_namespace_usage("").await.map(|v| v.len())
            });
            time!("view repository_usage org1", async {
                meta.reference_repository_usage("org1")
                    .await
                    .map(|v| v.len())
            });
        }
        // Manifest PUTs with and without the journal's triggers, in alternating rounds (so
        // that neither side gets the warmer cache), after a warm-up round.
        let postgres = cleanup.is_some();
        manifest_puts(&meta, 99).await?;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let mut saved = Vec::new();
        for round in 0..6 {
            let on = round % 2 == 0;
            set_triggers(&url, postgres, on, &mut saved).await?;
            let puts = manifest_puts(&meta, round).await?;
            if on { &mut with } else { &mut without }.extend(puts);
        }
        set_triggers(&url, postgres, true, &mut saved).await?;
        for v in [&mut with, &mut without] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "{backend}\t{seeded}\tmanifest PUT p50 / p99\t{:.2} / {:.2}\t{}",
            percentile(&with, 0.5),
            percentile(&with, 0.99),
            with.len()
        );
        println!(
            "{backend}\t{seeded}\tmanifest PUT p50 / p99, no usage triggers\t{:.2} / {:.2}\t{}",
            percentile(&without, 0.5),
            percentile(&without, 0.99),
            without.len()
        );
        // The rounds without triggers left the aggregates behind; the real thing never does.
        time!("rebuild after the comparison", async {
            meta.rebuild_usage().await.map(|_| 0)
        });
        let puts = manifest_puts(&meta, 7).await?;
        time!("fold 200 PUTs", async {
            meta.fold_usage(true).await.map(|f| f.entries)
        });
        drop(puts);
        time!("fold (idle)", async {
            meta.fold_usage(true).await.map(|f| f.entries)
        });
        let differences = if seeded <= 1_000_000 || reference {
            wharf::usage::check(&meta).await?.len()
        } else {
            0 // the check runs the views: minutes at this size
        };
        anyhow::ensure!(differences == 0, "aggregates differ from the views");
        drop(meta);
        if keep {
            println!("kept: {url}");
            std::mem::forget(dir);
        } else if let Some((client, name)) = cleanup {
            client
                .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await?;
        }
    }
    Ok(())
}
