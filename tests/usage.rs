//! Usage reports against ground truth computed here, independently, from what the test pushed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::images::{self, Image, OCI_INDEX, OCI_MANIFEST};
use common::{Backend, TestEnv, sha256};
use serde_json::Value;

backend_tests!(
    usage_matches_ground_truth,
    namespaces_of_older_repositories_are_backfilled_once
);

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
