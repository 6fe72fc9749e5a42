//! `wharf import` against trees written by the real CNCF Distribution (Debian's
//! `docker-registry`, 2.8.x): on disk and on S3, pushed through its API, then stopped and
//! imported in place. Every tag and digest must pull byte-identical from wharf, deleted things
//! stay deleted, broken entries are reported and skipped, re-runs change nothing, and an import
//! killed midway and run again ends where one clean run does.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::images::{self, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use common::{Backend, Client, TestEnv, TestServer, free_port, sha256};
use wharf::meta::GcPolicy;

backend_tests!(a_distribution_tree_imports_in_place);

/// CNCF Distribution on loopback, storing where the test's wharf stores.
struct Distribution {
    child: Child,
    client: Client,
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_distribution(env: &TestEnv) -> Distribution {
    let port = free_port();
    let storage = match &env.s3 {
        Some(b) => {
            let (key, secret) = common::s3_credentials();
            format!(
                "  s3:\n    accesskey: {key}\n    secretkey: {secret}\n    region: us-east-1\n    \
                 regionendpoint: {}\n    bucket: {}\n    secure: false\n    v4auth: true\n    \
                 rootdirectory: /registry\n",
                b.endpoint, b.bucket
            )
        }
        None => format!(
            "  filesystem:\n    rootdirectory: {}\n",
            env.dir.path().join("storage").display()
        ),
    };
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n{storage}  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n"
    );
    let path = env.dir.path().join("distribution.yml");
    std::fs::write(&path, config).unwrap();
    // Distribution 2.8's S3 driver panics at start when AWS_CA_BUNDLE is set.
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&path)
        .env_remove("AWS_CA_BUNDLE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run docker-registry (CNCF Distribution: apt-get install docker-registry; .ci/run does)");
    let d = Distribution {
        child,
        client: Client::new(&format!("http://127.0.0.1:{port}")),
    };
    for _ in 0..100 {
        if let Ok(r) = d.client.get_raw("/v2/").await {
            if r.status() == 200 {
                return d;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Distribution did not start");
}

/// Pushes an image the way Distribution takes it (POST, PATCH, PUT per blob).
async fn push(c: &Client, repo: &str, tag: &str, img: &images::Image) {
    for blob in &img.blobs {
        c.push_blob_chunked(repo, blob, 1 << 20).await;
    }
    for (media_type, body) in &img.children {
        c.push_manifest(repo, &sha256(body), media_type, body).await;
    }
    c.push_manifest(repo, tag, &img.media_type, &img.manifest)
        .await;
}

/// `wharf import` as operators run it; returns its JSON report.
fn import(env: &TestEnv, args: &[&str], extra_env: &[(&str, &str)]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("import")
        .arg("--json")
        .args(args)
        .envs(env.env_vars())
        .envs(extra_env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wharf import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn problem_kinds(report: &serde_json::Value) -> Vec<String> {
    let mut kinds: Vec<String> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    kinds
}

/// What the test pushed: (repository, tag, image) still tagged at the end.
type Pushed = Vec<(String, String, images::Image)>;

/// The content every tree here holds: single-arch (two tags on one manifest), an OCI index
/// and a Docker manifest list sharing a layer across repositories, nested names, a signature
/// with a subject, a tag moved to another manifest, and a manifest deleted through the API.
async fn fill(d: &Distribution) -> (Pushed, Vec<(String, String)>) {
    let c = &d.client;
    let mut kept: Pushed = Vec::new();
    let single = images::single(OCI_MANIFEST, "linux/amd64", &[1, 2], 3000);
    push(c, "import/single", "v1", &single).await;
    push(c, "import/single", "latest", &single).await;
    kept.push(("import/single".into(), "v1".into(), single.clone()));
    kept.push(("import/single".into(), "latest".into(), single.clone()));

    let index = images::multiarch(
        OCI_INDEX,
        31,
        &["linux/amd64", "linux/arm64"],
        1,
        2000,
        &[900],
    );
    push(c, "import/nested/deep/multi", "v1", &index).await;
    kept.push(("import/nested/deep/multi".into(), "v1".into(), index));
    let list = images::multiarch(
        DOCKER_LIST,
        32,
        &["linux/amd64", "linux/arm/v7"],
        1,
        2000,
        &[900],
    );
    push(c, "import/docker", "v2", &list).await;
    kept.push(("import/docker".into(), "v2".into(), list));

    let signature = images::referrer(
        "application/vnd.example.sig",
        OCI_MANIFEST,
        &single.manifest,
        5,
    );
    push(c, "import/single", "sig", &signature).await;
    kept.push(("import/single".into(), "sig".into(), signature));

    let before = images::single(DOCKER_MANIFEST, "linux/amd64", &[41], 1000);
    let after = images::single(DOCKER_MANIFEST, "linux/amd64", &[42], 1000);
    push(c, "import/moving", "stable", &before).await;
    push(c, "import/moving", "stable", &after).await;
    kept.push(("import/moving".into(), "stable".into(), after));

    let doomed = images::single(OCI_MANIFEST, "linux/amd64", &[51], 1000);
    push(c, "import/moving", "gone", &doomed).await;
    let r = c
        .delete(&format!("/v2/import/moving/manifests/{}", doomed.digest()))
        .await;
    assert_eq!(r.status(), 202, "Distribution deletes the manifest");
    let deleted = vec![
        ("import/moving".to_string(), "gone".to_string()),
        ("import/moving".to_string(), doomed.digest()),
    ];
    (kept, deleted)
}

async fn assert_serves(s: &TestServer, kept: &Pushed, deleted: &[(String, String)]) {
    for (repo, tag, img) in kept {
        let r = s.client.get(&format!("/v2/{repo}/manifests/{tag}")).await;
        assert_eq!(r.status(), 200, "{repo}:{tag}");
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &img.manifest[..],
            "{repo}:{tag} byte-identical"
        );
        s.client.pull_and_verify(repo, tag).await;
    }
    for (repo, reference) in deleted {
        let r = s
            .client
            .get(&format!("/v2/{repo}/manifests/{reference}"))
            .await;
        assert_eq!(r.status(), 404, "{repo}:{reference} stays deleted");
    }
}

async fn a_distribution_tree_imports_in_place(b: Backend) {
    let env = TestEnv::new(b).await;
    let d = start_distribution(&env).await;
    let (kept, deleted) = fill(&d).await;
    drop(d);

    let dry = import(&env, &["--dry-run"], &[]);
    assert_eq!(problem_kinds(&dry), Vec::<String>::new(), "{dry:#}");
    let report = import(&env, &[], &[]);
    assert_eq!(problem_kinds(&report), Vec::<String>::new(), "{report:#}");
    assert_eq!(report["repositories"], 4);
    assert_eq!(report["repositories_imported"], 4);
    assert_eq!(report["manifests"], dry["manifests"]);
    assert_eq!(report["tags"], 6);
    // Distribution keeps manifest payloads as blobs; wharf keeps them in its database.
    assert!(report["unreached_objects"].as_u64().unwrap() > 0);

    let s = env.start().await;
    assert_serves(&s, &kept, &deleted).await;
    // The signature is found as a referrer of its subject.
    let single = &kept[0].2;
    let referrers: serde_json::Value = s
        .client
        .get(&format!("/v2/import/single/referrers/{}", single.digest()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(referrers["manifests"].as_array().unwrap().len(), 1);
    // skopeo (a client nobody here wrote) copies the whole index out of wharf.
    let layout = env.dir.path().join("copied");
    let out = Command::new("skopeo")
        .env("CONTAINERS_REGISTRIES_CONF", "/dev/null")
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!(
            "docker://{}/import/nested/deep/multi:v1",
            s.client
                .url("")
                .trim_start_matches("http://")
                .trim_end_matches('/')
        ))
        .arg(format!("oci:{}:v1", layout.display()))
        .output()
        .expect("skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Usage reports the imported content.
    let usage = s.registry.usage("import", 10).await.unwrap();
    let usage = serde_json::to_value(&usage).unwrap();
    assert_eq!(
        usage["repositories"].as_array().unwrap().len(),
        4,
        "{usage:#}"
    );

    // A zero-grace GC deletes nothing an imported tag reaches.
    let gc = s
        .registry
        .collect_garbage(
            GcPolicy::with_grace(Duration::ZERO, true),
            wharf::gc::Mode::Full,
            false,
        )
        .await
        .unwrap();
    assert_serves(&s, &kept, &deleted).await;
    // What it may take: the manifest the moved tag left (untagged), the blobs linked by the
    // deleted manifest (Distribution keeps a deleted manifest's layer links).
    let reached: Vec<String> = kept
        .iter()
        .flat_map(|(_, _, img)| img.blob_digests())
        .collect();
    for blob in &gc.blobs {
        assert!(!reached.contains(&blob.digest.to_string()), "{gc:?}");
    }
    assert_eq!(gc.manifests_deleted, 1, "{gc:?}");

    // A second run changes nothing.
    let again = import(&env, &[], &[]);
    assert_eq!(again["repositories_imported"], 0);
    assert_eq!(again["repositories_already_imported"], 4);
    assert_serves(&s, &kept, &deleted).await;
}

/// Broken entries, made on purpose in a tree Distribution wrote: each is reported with its
/// kind and path and skipped, and the rest imports. A dry run reports the same and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_entries_are_reported_and_skipped() {
    let env = TestEnv::new(Backend::SqliteFs).await;
    let d = start_distribution(&env).await;
    let c = &d.client;
    let healthy = images::single(OCI_MANIFEST, "linux/amd64", &[61], 1000);
    push(c, "broken/healthy", "v1", &healthy).await;
    let truncated = images::single(OCI_MANIFEST, "linux/amd64", &[62], 1000);
    push(c, "broken/truncated", "v1", &truncated).await;
    push(c, "broken/truncated", "v2", &truncated).await;
    let lost = images::single(OCI_MANIFEST, "linux/amd64", &[63], 1000);
    push(c, "broken/lost", "v1", &lost).await;
    // An upload started and never finished.
    c.start_upload("broken/healthy").await;
    drop(d);

    let root = env.dir.path().join("storage/docker/registry/v2");
    let repos = root.join("repositories");
    // A half-written tag link.
    std::fs::write(
        repos.join("broken/truncated/_manifests/tags/v1/current/link"),
        "sha256:12",
    )
    .unwrap();
    // A layer whose object is gone.
    let layer = sha256(&lost.blobs[1]);
    let hex = &layer[7..];
    std::fs::remove_dir_all(root.join(format!("blobs/sha256/{}/{hex}", &hex[..2]))).unwrap();
    // A schema-1 manifest, as old Docker pushed them, tagged.
    let schema1 = br#"{"schemaVersion":1,"name":"broken/old","tag":"v1","architecture":"amd64","fsLayers":[],"history":[]}"#;
    let s1 = sha256(schema1);
    let s1hex = &s1[7..];
    let blob_dir = root.join(format!("blobs/sha256/{}/{s1hex}", &s1hex[..2]));
    std::fs::create_dir_all(&blob_dir).unwrap();
    std::fs::write(blob_dir.join("data"), schema1).unwrap();
    for link in [
        format!("broken/old/_manifests/revisions/sha256/{s1hex}/link"),
        "broken/old/_manifests/tags/v1/current/link".to_string(),
    ] {
        let p = repos.join(link);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &s1).unwrap();
    }
    // A tag whose revision does not exist.
    let ghost = repos.join("broken/healthy/_manifests/tags/ghost/current/link");
    std::fs::create_dir_all(ghost.parent().unwrap()).unwrap();
    std::fs::write(ghost, sha256(b"no such manifest")).unwrap();

    let expected = [
        "invalid-link",            // truncated:v1
        "leftover-upload",         // healthy/_uploads
        "missing-blob",            // lost's layer link
        "missing-blob",            // lost's manifest
        "schema1-manifest",        // old
        "tag-to-missing-revision", // healthy:ghost
        "tag-to-missing-revision", // lost:v1 (its manifest was skipped)
        "tag-to-missing-revision", // old:v1
    ];
    let dry = import(&env, &["--dry-run"], &[]);
    assert_eq!(problem_kinds(&dry), expected, "{dry:#}");
    for p in dry["problems"].as_array().unwrap() {
        assert!(
            p["path"]
                .as_str()
                .unwrap()
                .starts_with("docker/registry/v2/"),
            "{p}"
        );
    }
    let s = env.start().await;
    let catalog: serde_json::Value = s.client.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!([]),
        "a dry run changes nothing"
    );

    let report = import(&env, &[], &[]);
    assert_eq!(problem_kinds(&report), expected, "{report:#}");
    s.client.pull_and_verify("broken/healthy", "v1").await;
    s.client.pull_and_verify("broken/truncated", "v2").await;
    assert_eq!(
        s.client
            .get("/v2/broken/truncated/manifests/v1")
            .await
            .status(),
        404
    );
    assert_eq!(
        s.client.get("/v2/broken/lost/manifests/v1").await.status(),
        404
    );
    assert_eq!(
        s.client.get("/v2/broken/old/manifests/v1").await.status(),
        404
    );
}

/// Everything the database says about the registry's content, for comparing two imports.
async fn state(s: &TestServer) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let catalog: serde_json::Value = s.client.get("/v2/_catalog").await.json().await.unwrap();
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let tags: serde_json::Value = s
            .client
            .get(&format!("/v2/{repo}/tags/list"))
            .await
            .json()
            .await
            .unwrap();
        for tag in tags["tags"].as_array().unwrap() {
            let tag = tag.as_str().unwrap();
            let r = s.client.head(&format!("/v2/{repo}/manifests/{tag}")).await;
            let digest = r.headers()["docker-content-digest"]
                .to_str()
                .unwrap()
                .to_string();
            out.insert(format!("tag {repo}:{tag}"), digest);
        }
    }
    for b in s.meta.all_blobs().await.unwrap() {
        out.insert(format!("blob {}", b.digest), b.size.to_string());
    }
    out
}

/// An import SIGKILLed midway, then run again, ends exactly where one clean run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_import_resumes_to_the_same_end_state() {
    let env = TestEnv::new(Backend::SqliteFs).await;
    let d = start_distribution(&env).await;
    let repos = 24u64;
    for i in 0..repos {
        let img = images::multiarch(
            OCI_INDEX,
            200 + i,
            &["linux/amd64", "linux/arm64"],
            1,
            500,
            &[77],
        );
        push(&d.client, &format!("resume/r{i:02}"), "v1", &img).await;
    }
    drop(d);

    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["import", "--concurrency", "1"])
        .envs(env.env_vars())
        .env("REGISTRY_LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("the import ended without importing anything")
            .unwrap();
        if line.contains("import: repository imported") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let partial = import(&env, &["--dry-run"], &[]);
    let s = env.start().await;
    let catalog: serde_json::Value = s.client.get("/v2/_catalog").await.json().await.unwrap();
    let after_kill = catalog["repositories"].as_array().unwrap().len() as u64;
    assert!(
        after_kill < repos,
        "the import finished before it was killed: the test did not reach its point ({partial})"
    );
    let resumed = import(&env, &[], &[]);
    assert!(
        resumed["repositories_already_imported"].as_u64().unwrap() >= 1,
        "{resumed:#}"
    );
    let resumed_state = state(&s).await;
    s.stop().await;

    let clean_db = format!("sqlite://{}", env.dir.path().join("clean.db").display());
    let clean = import(&env, &[], &[("WHARF_DATABASE_URL", clean_db.as_str())]);
    assert_eq!(clean["repositories_imported"], repos);
    let s = env
        .start_with(&[("WHARF_DATABASE_URL", clean_db.as_str())])
        .await;
    let clean_state = state(&s).await;
    assert_eq!(resumed_state.len(), clean_state.len());
    assert_eq!(resumed_state, clean_state);
    assert_eq!(
        resumed_state
            .keys()
            .filter(|k| k.starts_with("tag "))
            .count() as u64,
        repos
    );
}

/// `--verify` hashes every blob (a flipped byte is reported and the manifest skipped; without
/// it the sizes match and nothing is noticed), and `--repositories` limits the import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_hashes_blobs_and_a_pattern_limits_the_import() {
    let env = TestEnv::new(Backend::SqliteFs).await;
    let d = start_distribution(&env).await;
    let flipped = images::single(OCI_MANIFEST, "linux/amd64", &[71], 1000);
    push(&d.client, "team/a/flipped", "v1", &flipped).await;
    let other = images::single(OCI_MANIFEST, "linux/amd64", &[72], 1000);
    push(&d.client, "other/b", "v1", &other).await;
    drop(d);
    let layer = sha256(&flipped.blobs[1]);
    let hex = &layer[7..];
    let path = env.dir.path().join(format!(
        "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let unverified = import(&env, &["--dry-run"], &[]);
    assert_eq!(problem_kinds(&unverified), Vec::<String>::new());
    let verified = import(&env, &["--dry-run", "--verify"], &[]);
    assert_eq!(
        problem_kinds(&verified),
        [
            "digest-mismatch",         // the object
            "missing-blob",            // its layer link
            "missing-blob",            // the manifest that references it
            "tag-to-missing-revision", // the manifest's tag
        ],
        "{verified:#}"
    );

    let only = import(&env, &["--repositories", "other/*"], &[]);
    assert_eq!(only["repositories"], 1);
    let s = env.start().await;
    let catalog: serde_json::Value = s.client.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!(["other/b"]));
    s.client.pull_and_verify("other/b", "v1").await;
}

/// Online: wharf serves and collects garbage every 20 ms while the import runs, and
/// Distribution keeps serving the tree (read-only) alongside. Every imported tag pulls from
/// wharf once the grace period is over and GC has run many times, and Distribution still
/// serves what it served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_while_wharf_collects_garbage_and_distribution_serves() {
    let env = TestEnv::new(Backend::PostgresFs).await;
    let d = start_distribution(&env).await;
    let (kept, deleted) = fill(&d).await;
    let s = env
        .start_with(&[
            ("REGISTRY_GC_INTERVAL", "20ms"),
            ("REGISTRY_GC_GRACEPERIOD", "2s"),
            ("REGISTRY_GC_FULLINTERVAL", "100ms"),
        ])
        .await;
    let report = import(&env, &[], &[]);
    assert_eq!(problem_kinds(&report), Vec::<String>::new(), "{report:#}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_serves(&s, &kept, &deleted).await;
    for (repo, tag, img) in &kept {
        // pull_and_verify also fetches every child and blob and checks each digest.
        d.client.pull_and_verify(repo, tag).await;
        let r = d
            .client
            .req(reqwest::Method::GET, &format!("/v2/{repo}/manifests/{tag}"))
            .header("Accept", &img.media_type)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "Distribution still serves {repo}:{tag}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), &img.manifest[..]);
    }
}
