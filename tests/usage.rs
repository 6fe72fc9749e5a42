//! Usage reports against ground truth computed here, independently, from what the test pushed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::images::{self, Image, OCI_INDEX, OCI_MANIFEST};
use common::{Backend, TestEnv, sha256};
use serde_json::Value;

backend_tests!(
    usage_matches_ground_truth,
    namespaces_of_older_repositories_are_backfilled_once,
    aggregates_do_not_drift_under_concurrent_writes_folds_and_gc,
    fsck_finds_drifted_aggregates_and_repair_rebuilds_them
);

/// Folders race only where writers do not queue behind them: on SQLite a fold is a write
/// transaction, so a push (and any other fold) waits for it and there is no race to reach.
mod postgres_only {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_folds_take_turns() {
        super::concurrent_folds_take_turns(crate::common::Backend::PostgresFs).await
    }
}

/// What one repository holds, as the test pushed it.
#[derive(Default)]
struct Truth {
    tags: u64,
    manifests: BTreeSet<String>,
    tagged: BTreeSet<String>,
    dangling: BTreeSet<String>,
    blobs: BTreeMap<String, u64>,
}

impl Truth {
    /// Records an image's manifests and blobs; `tag` or not.
    fn add(&mut self, img: &Image, tag: Option<&str>) {
        let top = img.digest();
        self.manifests.insert(top.clone());
        match tag {
            Some(_) => {
                self.tags += 1;
                self.tagged.insert(top.clone());
                self.dangling.remove(&top);
            }
            None if !self.tagged.contains(&top) => {
                self.dangling.insert(top);
            }
            None => {}
        }
        for (_, child) in &img.children {
            self.manifests.insert(sha256(child));
        }
        for b in &img.blobs {
            self.blobs.insert(sha256(b), b.len() as u64);
        }
    }
}

fn sizes(set: &BTreeMap<String, u64>) -> u64 {
    set.values().sum()
}

async fn usage_matches_ground_truth(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let mut truth: BTreeMap<&str, Truth> = BTreeMap::new();

    // team/app: a tagged image (layer 1 is shared with other/svc), a signature on it.
    let app = images::single(OCI_MANIFEST, "linux/amd64", &[1, 2], 3000);
    c.push_image("team/app", "v1", &app).await;
    truth.entry("team/app").or_default().add(&app, Some("v1"));
    let sig = images::referrer(
        "application/vnd.example.sig",
        OCI_MANIFEST,
        &app.manifest,
        9,
    );
    c.push_image("team/app", &sig.digest(), &sig).await;
    truth.entry("team/app").or_default().add(&sig, None);
    // team/web: a tagged image sharing layer 2 with team/app (inside the namespace), two tags
    // on it, and an untagged image with its own layer.
    let web = images::single(OCI_MANIFEST, "linux/amd64", &[2, 3], 5000);
    c.push_image("team/web", "v1", &web).await;
    c.push_manifest("team/web", "latest", OCI_MANIFEST, &web.manifest)
        .await;
    truth.entry("team/web").or_default().add(&web, Some("v1"));
    truth.entry("team/web").or_default().tags += 1;
    let loose = images::single(OCI_MANIFEST, "linux/amd64", &[4], 7000);
    c.push_image("team/web", &loose.digest(), &loose).await;
    truth.entry("team/web").or_default().add(&loose, None);
    // other/svc/api: a tagged multi-arch index whose platforms share layer 1 with team/app.
    let svc = images::multiarch(
        OCI_INDEX,
        20,
        &["linux/amd64", "linux/arm64"],
        1,
        4000,
        &[1],
    );
    c.push_image("other/svc/api", "v2", &svc).await;
    truth
        .entry("other/svc/api")
        .or_default()
        .add(&svc, Some("v2"));
    // solo: a repository at the top level; and a blob uploaded but never referenced.
    let solo = images::single(OCI_MANIFEST, "linux/amd64", &[5], 1000);
    c.push_image("solo", "x", &solo).await;
    truth.entry("solo").or_default().add(&solo, Some("x"));
    let unreferenced = images::noise(77, 12345);
    c.push_blob("solo", &unreferenced).await;

    // Ground truth, per repository.
    let mut referenced_by: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (repo, t) in &truth {
        for d in t.blobs.keys() {
            referenced_by.entry(d.clone()).or_default().insert(repo);
        }
    }
    let exclusive = |repos: &BTreeSet<&str>, t: &BTreeMap<String, u64>| -> u64 {
        t.iter()
            .filter(|(d, _)| referenced_by[*d].iter().all(|r| repos.contains(r)))
            .map(|(_, s)| *s)
            .sum()
    };

    let report: Value = c.get("/admin/usage?top=3").await.json().await.unwrap();
    let cli = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["usage", "--format", "json", "--top", "3"])
        .envs(env.env_vars())
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let from_cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let from_meta = serde_json::to_value(s.registry.usage("", 3).await.unwrap()).unwrap();
    assert_eq!(report, from_cli, "endpoint and CLI agree");
    assert_eq!(report, from_meta, "endpoint and library agree");
    let differences = wharf::usage::check(&s.meta).await.unwrap();
    assert!(
        differences.is_empty(),
        "kept and reference agree: {differences:?}"
    );

    let repos = report["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), truth.len());
    for (name, t) in &truth {
        let r = repos
            .iter()
            .find(|r| r["repository"] == *name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let only: BTreeSet<&str> = [*name].into_iter().collect();
        let ex = exclusive(&only, &t.blobs);
        assert_eq!(r["tags"], t.tags, "{name} tags");
        assert_eq!(r["manifests"], t.manifests.len(), "{name} manifests");
        assert_eq!(r["tagged_manifests"], t.tagged.len(), "{name} tagged");
        assert_eq!(r["untagged_manifests"], t.dangling.len(), "{name} untagged");
        assert_eq!(r["blobs"], t.blobs.len(), "{name} blobs");
        assert_eq!(r["logical_size"], sizes(&t.blobs), "{name} logical");
        assert_eq!(r["exclusive_size"], ex, "{name} exclusive");
        assert_eq!(r["shared_size"], sizes(&t.blobs) - ex, "{name} shared");
        assert!(r["last_push_ms"].as_i64().unwrap() > 0);
    }

    // Namespaces: every proper prefix; deduplicated across their repositories.
    let namespaces: BTreeMap<&str, Vec<&str>> = [
        ("team", vec!["team/app", "team/web"]),
        ("other", vec!["other/svc/api"]),
        ("other/svc", vec!["other/svc/api"]),
    ]
    .into_iter()
    .collect();
    let ns_report = report["namespaces"].as_array().unwrap();
    assert_eq!(
        ns_report
            .iter()
            .map(|n| n["namespace"].as_str().unwrap())
            .collect::<Vec<_>>(),
        namespaces.keys().copied().collect::<Vec<_>>()
    );
    for (ns, members) in &namespaces {
        let n = ns_report.iter().find(|n| n["namespace"] == *ns).unwrap();
        let mut blobs = BTreeMap::new();
        let (mut tags, mut manifests) = (0, 0);
        for m in members {
            blobs.extend(truth[m].blobs.clone());
            tags += truth[m].tags;
            manifests += truth[m].manifests.len();
        }
        let set: BTreeSet<&str> = members.iter().copied().collect();
        let ex = exclusive(&set, &blobs);
        assert_eq!(n["repositories"], members.len(), "{ns}");
        assert_eq!(n["tags"], tags, "{ns}");
        assert_eq!(n["manifests"], manifests, "{ns}");
        assert_eq!(n["blobs"], blobs.len(), "{ns}");
        assert_eq!(n["logical_size"], sizes(&blobs), "{ns}");
        assert_eq!(n["exclusive_size"], ex, "{ns}");
        assert_eq!(n["shared_size"], sizes(&blobs) - ex, "{ns}");
    }
    // Inside "team", layer 2 is shared by both repositories but exclusive to the namespace.
    let team = ns_report.iter().find(|n| n["namespace"] == "team").unwrap();
    let team_app = repos
        .iter()
        .find(|r| r["repository"] == "team/app")
        .unwrap();
    assert!(
        team["exclusive_size"].as_u64().unwrap() > team_app["exclusive_size"].as_u64().unwrap()
    );

    // The registry.
    let all: BTreeMap<String, u64> = truth.values().flat_map(|t| t.blobs.clone()).collect();
    let physical = sizes(&all) + unreferenced.len() as u64;
    let logical: u64 = truth.values().map(|t| sizes(&t.blobs)).sum();
    let g = &report["registry"];
    assert_eq!(g["repositories"], truth.len());
    assert_eq!(g["blobs"], all.len() + 1);
    assert_eq!(g["physical_size"], physical);
    assert_eq!(g["logical_size"], logical);
    assert!((g["dedup_ratio"].as_f64().unwrap() - logical as f64 / physical as f64).abs() < 1e-9);
    assert_eq!(
        g["pending_gc_size"],
        unreferenced.len() as u64,
        "only the unreferenced upload waits for GC"
    );

    // Largest: tagged images by total size, blobs by size.
    let images: Vec<&str> = report["largest_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["repository"].as_str().unwrap())
        .collect();
    assert_eq!(images.len(), 3);
    assert_eq!(images[0], "other/svc/api", "the index totals its children");
    let biggest = all
        .iter()
        .map(|(_, s)| *s)
        .max()
        .unwrap()
        .max(unreferenced.len() as u64);
    assert_eq!(report["largest_blobs"][0]["size"], biggest);

    // Limited to a namespace.
    let team_only: Value = c
        .get("/admin/usage?namespace=team")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = team_only["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repository"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.iter().copied().collect::<BTreeSet<_>>(),
        ["team/app", "team/web"].into_iter().collect()
    );
    assert!(
        team_only["largest_images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["repository"].as_str().unwrap().starts_with("team/"))
    );
    let csv = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["usage", "--format", "csv", "--namespace", "other"])
        .envs(env.env_vars())
        .output()
        .unwrap();
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert!(csv.starts_with("kind,name,"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.starts_with("repository,other/svc/api,1,1,3,1,0,")),
        "{csv}"
    );
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("namespace,")).count(),
        2,
        "{csv}"
    );

    // Deleting a tag moves the image to "untagged" at once; GC later frees its bytes.
    assert_eq!(c.delete("/v2/solo/manifests/x").await.status(), 202);
    let after: Value = c
        .get("/admin/usage?namespace=solo")
        .await
        .json()
        .await
        .unwrap();
    let solo_row = after["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repository"] == "solo")
        .unwrap();
    assert_eq!(solo_row["tags"], 0);
    assert_eq!(solo_row["untagged_manifests"], 1);
}

/// A database from before namespaces were recorded gets them at the next start, once: later
/// starts do not scan the repositories again.
async fn namespaces_of_older_repositories_are_backfilled_once(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[1], 1000);
    s.client.push_image("team/app/web", "v1", &img).await;
    s.stop().await;

    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&env.db.url).await.unwrap();
    let namespaces = || async {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT namespace FROM repository_namespaces ORDER BY namespace")
                .fetch_all(&db)
                .await
                .unwrap();
        rows
    };
    assert_eq!(namespaces().await, ["team", "team/app"]);

    // As an older wharf left it: no namespaces, no record of the backfill.
    sqlx::query("DELETE FROM repository_namespaces")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM wharf_state")
        .execute(&db)
        .await
        .unwrap();
    env.start().await.stop().await;
    assert_eq!(namespaces().await, ["team", "team/app"]);
    let usage = {
        let s = env.start().await;
        let r = s.client.get("/admin/usage?namespace=team").await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        s.stop().await;
        v
    };
    assert!(usage.to_string().contains("team/app/web"), "{usage}");

    // Recorded as done: a later start leaves the table alone.
    sqlx::query("DELETE FROM repository_namespaces")
        .execute(&db)
        .await
        .unwrap();
    env.start().await.stop().await;
    assert!(namespaces().await.is_empty());
    db.close().await;
}

/// The maintained aggregates against the views, after a workload that changes every figure
/// while folds (two folders, on two pools) and GC run all along: pushes into repositories of
/// several namespaces sharing layers, mounts, re-tags, tag and manifest deletions, and GC
/// collecting what was untagged. After the writes stop, one more fold must leave every
/// aggregate exactly equal to what the views compute from the edge tables.
async fn aggregates_do_not_drift_under_concurrent_writes_folds_and_gc(b: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::time::Duration;

    let env = TestEnv::new(b).await;
    let (grace, grace_ms): (&'static str, u64) = match b {
        Backend::PostgresS3 => ("3000ms", 3000),
        _ => ("500ms", 500),
    };
    let s = env
        .start_with(&[
            ("REGISTRY_GC_INTERVAL", "20ms"),
            ("REGISTRY_GC_GRACEPERIOD", grace),
            ("REGISTRY_GC_DELETEUNTAGGED", "true"),
        ])
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let changed = Arc::new(AtomicU64::new(0));
    let folds = Arc::new(AtomicU64::new(0));
    // Two folders: the server's registry (gives way when the lock is taken) and a second pool
    // (queues for the lock), as two replicas would.
    let mut folders = Vec::new();
    for queue in [false, true] {
        let (stop, changed, folds) = (stop.clone(), changed.clone(), folds.clone());
        let registry = s.registry.clone();
        let meta = s.meta.clone();
        folders.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let done = if queue {
                    meta.fold_usage(true).await
                } else {
                    registry.fold_usage(false).await.map_err(|e| panic!("{e}"))
                }
                .expect("fold");
                changed.fetch_add(done.pairs_changed, Relaxed);
                folds.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(if queue { 7 } else { 3 })).await;
            }
        }));
    }

    const REPOS: [&str; 5] = ["team/app", "team/web", "team/sub/x", "other/svc", "solo"];
    let stats = Arc::new(common::PushStats::default());
    let mut clients = Vec::new();
    for client_id in 0..4u64 {
        let c = s.client.clone();
        let stats = stats.clone();
        clients.push(tokio::spawn(async move {
            let mut tagged: Vec<(String, String)> = Vec::new();
            for round in 0..10u64 {
                let repo = REPOS[((client_id + round) % 5) as usize];
                let from = REPOS[((client_id + round + 1) % 5) as usize];
                // Layers 1..=4 are shared across clients and repositories; each image also
                // has a layer of its own.
                let shared = 1 + (client_id + round) % 4;
                let own = 100 + client_id * 20 + round % 3;
                let img = if round % 4 == 3 {
                    images::multiarch(
                        OCI_INDEX,
                        500 + client_id * 10 + round % 2,
                        &["linux/amd64", "linux/arm64"],
                        1,
                        3000,
                        &[shared],
                    )
                } else {
                    images::single(OCI_MANIFEST, "linux/amd64", &[shared, own], 3000)
                };
                let tag = format!("c{client_id}-r{round}");
                if round % 2 == 0 {
                    c.push_image_retrying(repo, &tag, &img).await;
                } else {
                    c.push_image_thrifty(repo, from, &tag, &img, &stats).await;
                }
                tagged.push((repo.to_owned(), tag.clone()));
                // A second tag on the same manifest, moved on later rounds.
                let r = c
                    .put_manifest(
                        repo,
                        &format!("moving-{client_id}"),
                        &img.media_type,
                        &img.manifest,
                    )
                    .await;
                assert!(
                    r.status() == 201 || common::error_code(r).await == "MANIFEST_BLOB_UNKNOWN",
                    "a re-tag is accepted, or refused because GC took a part meanwhile"
                );
                match round % 3 {
                    // Untag the oldest image: GC collects it after the grace period.
                    0 if tagged.len() > 2 => {
                        let (r, t) = tagged.remove(0);
                        let status = c.delete(&format!("/v2/{r}/manifests/{t}")).await.status();
                        assert!(status == 202 || status == 404, "{status}");
                    }
                    // Delete a manifest outright (its tags go with it).
                    1 => {
                        let status = c
                            .delete(&format!("/v2/{repo}/manifests/{}", img.digest()))
                            .await
                            .status();
                        assert!(
                            [202, 404, 409].contains(&status.as_u16()),
                            "deleting a manifest: {status}"
                        );
                    }
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(grace_ms / 10 + 20 * client_id)).await;
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    // Let GC collect what the last rounds untagged, still folding meanwhile.
    tokio::time::sleep(Duration::from_millis(grace_ms * 3)).await;
    stop.store(true, Relaxed);
    for f in folders {
        f.await.unwrap();
    }
    assert!(
        changed.load(Relaxed) > 0 && folds.load(Relaxed) > 20,
        "the folds ran during the writes ({} folds, {} pair changes)",
        folds.load(Relaxed),
        changed.load(Relaxed)
    );

    let differences = wharf::usage::check(&s.meta).await.unwrap();
    assert!(
        differences.is_empty(),
        "the aggregates drifted:\n{}",
        differences.join("\n")
    );
    // The workload left something to count, and GC did collect.
    let usage = s.meta.reference_registry_usage().await.unwrap();
    assert!(usage.manifests > 0 && usage.tags > 0, "{usage:?}");
    let kept = s.meta.repository_usage("").await.unwrap();
    assert!(kept.iter().any(|r| r.figures.exclusive_size > 0));
    assert!(kept.iter().any(|r| r.figures.shared_size > 0));
    s.stop().await;
}

/// Aggregates changed behind wharf's back (as a bug, or a hand edit, would leave them) are
/// found by `wharf fsck`, which fails naming them; `wharf fsck --repair` rebuilds them.
async fn fsck_finds_drifted_aggregates_and_repair_rebuilds_them(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    c.push_image(
        "team/app",
        "v1",
        &images::single(OCI_MANIFEST, "linux/amd64", &[1, 2], 2000),
    )
    .await;
    c.push_image(
        "team/web",
        "v1",
        &images::single(OCI_MANIFEST, "linux/amd64", &[2, 3], 2000),
    )
    .await;
    assert!(wharf::usage::check(&s.meta).await.unwrap().is_empty());
    let before: Value = c.get("/admin/usage").await.json().await.unwrap();

    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&env.db.url).await.unwrap();
    for sql in [
        "UPDATE usage_repositories SET exclusive_size = exclusive_size + 7",
        "UPDATE usage_namespaces SET blobs = blobs + 1",
        "DELETE FROM usage_blobs",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    db.close().await;
    let differences = wharf::usage::check(&s.meta).await.unwrap();
    assert!(
        differences
            .iter()
            .any(|d| d.starts_with("repository team/app")),
        "{differences:?}"
    );
    assert!(
        differences.iter().any(|d| d.starts_with("namespace team")),
        "{differences:?}"
    );
    assert!(
        differences.iter().any(|d| d.starts_with("largest blobs")),
        "{differences:?}"
    );
    s.stop().await;

    let fsck = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("fsck")
            .args(args)
            .envs(env.env_vars())
            .env("REGISTRY_LOG_LEVEL", "error")
            .output()
            .unwrap()
    };
    let out = fsck(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "fsck must fail on drifted aggregates"
    );
    assert!(stdout.contains("USAGE   repository team/app"), "{stdout}");
    assert!(stderr.contains("wharf fsck --repair"), "{stderr}");

    let out = fsck(&["--repair"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage aggregates rebuilt"));
    let out = fsck(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let s = env.start().await;
    let after: Value = s.client.get("/admin/usage").await.json().await.unwrap();
    assert_eq!(
        before, after,
        "the rebuilt report is the report before the damage"
    );
    s.stop().await;
}

/// Two folders (two replicas) must not decide about one blob at once: each decides from what
/// is accounted, and the second would not see the first's uncommitted decision. The first
/// fold is paused after deciding about the shared layer of repository a (the blob is
/// accounted nowhere yet); meanwhile repository b pushes an image with the same layer and a
/// second folder runs. It must wait for the first (the fold lock); if it went ahead, both
/// would count the layer as exclusively theirs.
async fn concurrent_folds_take_turns(b: Backend) {
    use std::time::Duration;
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let shared = images::single(OCI_MANIFEST, "linux/amd64", &[41], 3000);
    let layer = sha256(&shared.blobs[1]);
    assert!(shared.blob_digests().contains(&layer));
    // The server folds only when asked here (tests run no maintenance loop).
    s.registry.fold_usage(true).await.unwrap();
    c.push_image("race/a", "v1", &shared).await;

    let mut pause = wharf::failpoint::arm("usage.fold_blob", &layer);
    let registry = s.registry.clone();
    let first = tokio::spawn(async move { registry.fold_usage(true).await.unwrap() });
    pause.reached().await;
    c.push_image("race/b", "v1", &shared).await;
    let meta = s.meta.clone();
    let second = tokio::spawn(async move { meta.fold_usage(true).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second_waited = !second.is_finished();
    pause.release();
    first.await.unwrap();
    second.await.unwrap();

    let differences = wharf::usage::check(&s.meta).await.unwrap();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(
        second_waited,
        "the second fold ran while the first held its decision"
    );
    let race = s.meta.namespace_usage("race").await.unwrap();
    assert_eq!(race[0].figures.exclusive_size, race[0].figures.logical_size);
    for r in s.meta.repository_usage("race").await.unwrap() {
        assert_eq!(
            r.figures.exclusive_size, 0,
            "{} shares every layer",
            r.repository
        );
    }
    s.stop().await;
}
