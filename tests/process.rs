//! The real `wharf` binary as separate processes: killed with SIGKILL after acknowledging
//! writes, and two replicas sharing one database and one storage root.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::images::{self, OCI_INDEX};
use common::{Backend, Client, TestEnv, free_port, sha256, with_query};
use reqwest::Method;

backend_tests!(
    sigkill_loses_nothing_acknowledged,
    sigkill_during_gc_and_pushes,
    two_replicas_share_uploads_and_manifests,
    upload_purging,
    sigterm_drains_a_push_in_flight,
    replicas_starting_together_all_start,
    a_newer_schema_is_refused_naming_both_versions,
    background_jobs_run_on_one_replica_at_a_time,
    load_balanced_replicas_survive_a_kill_and_a_drain,
);

struct Process {
    child: Child,
    client: Client,
}

/// What `wharf migrate --status` prints for the environment's database.
fn migrate_status(env: &TestEnv) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["migrate", "--status"])
        .envs(env.env_vars())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn spawn(env: &TestEnv) -> Process {
    spawn_with(env, &[]).await
}

async fn spawn_with(env: &TestEnv, extra: &[(&str, &str)]) -> Process {
    spawn_logging(env, extra, Stdio::inherit()).await
}

/// Starts `wharf serve`; `extra` variables win over the defaults; its log goes to `stderr`.
async fn spawn_logging(env: &TestEnv, extra: &[(&str, &str)], stderr: Stdio) -> Process {
    spawn_on(env, free_port(), extra, stderr).await
}

/// Starts `wharf serve` on `port` and waits until it is ready.
async fn spawn_on(env: &TestEnv, port: u16, extra: &[(&str, &str)], stderr: Stdio) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("serve")
        .env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("REGISTRY_HTTP_WORKERS", "2")
        .envs(env.env_vars())
        .env("REGISTRY_LOG_LEVEL", "warn")
        .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start wharf");
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    let started = Instant::now();
    loop {
        if let Ok(r) = client.http.get(client.url("/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "wharf did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Process { child, client }
}

impl Process {
    fn kill9(mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn sigkill_loses_nothing_acknowledged(b: Backend) {
    let env = TestEnv::new(b).await;
    let p = spawn(&env).await;
    let image = images::multiarch(
        OCI_INDEX,
        700,
        &["linux/amd64", "linux/arm64"],
        2,
        200_000,
        &[],
    );
    let digest = p.client.push_image("crash/app", "v1", &image).await;
    let data = images::noise(701, 1_500_000);
    let loc = p.client.start_upload("crash/app").await;
    let r = p
        .client
        .req(Method::PATCH, &loc)
        .header("Content-Range", "0-999999")
        .body(data[..1_000_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    p.kill9();

    let p = spawn(&env).await;
    p.client.pull_and_verify("crash/app", "v1").await;
    p.client.pull_and_verify("crash/app", &digest).await;
    let r = p.client.get(&loc).await;
    assert_eq!(
        r.headers()["range"],
        "0-999999",
        "the acknowledged chunk survived"
    );
    let r = p
        .client
        .req(
            Method::PUT,
            &with_query(&loc, &format!("digest={}", sha256(&data))),
        )
        .header("Content-Range", format!("1000000-{}", data.len() - 1))
        .body(data[1_000_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        p.client
            .blob_bytes("crash/app", &sha256(&data))
            .await
            .unwrap(),
        data
    );
}

/// SIGKILL the server while it collects garbage continuously and clients push, and a
/// `wharf gc` process in the middle of its run; again and again. After the last restart every
/// acknowledged tag pulls and fsck finds nothing missing.
async fn sigkill_during_gc_and_pushes(b: Backend) {
    let env = TestEnv::new(b).await;
    // Longer than a push takes (S3 round trips make pushes slower), or the collector takes
    // the junk's blobs before its manifests arrive on every attempt.
    let (grace, wait) = match b {
        Backend::PostgresS3 => ("2s", 2100),
        _ => ("400ms", 420),
    };
    let gc_env = [
        ("REGISTRY_GC_INTERVAL", "10ms"),
        ("REGISTRY_GC_GRACEPERIOD", grace),
    ];
    let mut acknowledged: Vec<(String, images::Image)> = Vec::new();
    for round in 0..4u64 {
        let p = spawn_with(&env, &gc_env).await;
        // Garbage for the collector: images pushed and untagged at once.
        for k in 0..3 {
            let junk = images::multiarch(
                OCI_INDEX,
                900 + round * 10 + k,
                &["linux/amd64", "linux/arm64"],
                2,
                30_000,
                &[],
            );
            let tag = format!("junk{k}");
            p.client
                .push_image_retrying("crashgc/app", &tag, &junk)
                .await;
            p.client
                .delete(&format!("/v2/crashgc/app/manifests/{tag}"))
                .await;
        }
        let keep = images::multiarch(
            OCI_INDEX,
            950 + round,
            &["linux/amd64", "linux/arm64"],
            2,
            30_000,
            &[],
        );
        let tag = format!("keep{round}");
        p.client
            .push_image_retrying("crashgc/app", &tag, &keep)
            .await;
        acknowledged.push((tag, keep));
        // Past the grace period: the collector is deleting this round's junk when we kill it.
        tokio::time::sleep(Duration::from_millis(wait)).await;

        // A second collector, killed part-way through its run.
        let mut gc = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["gc"])
            .envs(env.env_vars())
            .env("REGISTRY_GC_GRACEPERIOD", "0s")
            .env("REGISTRY_LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // A push in flight when the server dies.
        let c = p.client.clone();
        let in_flight =
            images::multiarch(OCI_INDEX, 980 + round, &["linux/amd64"], 3, 200_000, &[]);
        let push = tokio::spawn(async move {
            for blob in &in_flight.blobs {
                let _ = c
                    .req(
                        Method::POST,
                        &format!("/v2/crashgc/app/blobs/uploads/?digest={}", sha256(blob)),
                    )
                    .body(blob.clone())
                    .send()
                    .await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20 + 17 * round)).await;
        unsafe { libc::kill(gc.id() as i32, libc::SIGKILL) };
        let _ = gc.wait();
        p.kill9();
        let _ = push.await;
    }

    let p = spawn(&env).await;
    for (tag, img) in &acknowledged {
        p.client.pull_and_verify("crashgc/app", tag).await;
        p.client.pull_and_verify("crashgc/app", &img.digest()).await;
    }
    // Finish whatever the killed collectors left marked, then compare storage and database.
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["gc"])
        .envs(env.env_vars())
        .env("REGISTRY_GC_GRACEPERIOD", "0s")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["fsck", "--json"])
        .envs(env.env_vars())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "fsck: {report}");
    assert_eq!(report["missing"], serde_json::json!([]));
    assert_eq!(report["pending_deletion"], 0);
    for (tag, _) in &acknowledged {
        p.client.pull_and_verify("crashgc/app", tag).await;
    }
}

async fn two_replicas_share_uploads_and_manifests(b: Backend) {
    let env = TestEnv::new(b).await;
    let a = spawn(&env).await;
    let b2 = spawn(&env).await;
    let replicas = [&a.client, &b2.client];

    // A chunked upload whose PATCHes alternate between the replicas.
    let data = images::noise(800, 2_000_000);
    let mut loc = a.client.start_upload("replicas/app").await;
    let chunk = 150_000;
    for (i, piece) in data.chunks(chunk).enumerate() {
        let c = replicas[i % 2];
        let start = i * chunk;
        let r = c
            .req(Method::PATCH, &loc)
            .header(
                "Content-Range",
                format!("{}-{}", start, start + piece.len() - 1),
            )
            .body(piece.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "chunk {i} on replica {}", i % 2);
        loc = r.headers()["location"].to_str().unwrap().to_string();
    }
    let d = sha256(&data);
    b2.client.close_upload(&loc, &d).await;
    assert_eq!(a.client.blob_bytes("replicas/app", &d).await.unwrap(), data);

    // A manifest pushed to one replica is immediately pullable from the other.
    let image = images::multiarch(
        OCI_INDEX,
        801,
        &["linux/amd64", "linux/arm64"],
        1,
        50_000,
        &[],
    );
    for i in 0..5 {
        let tag = format!("t{i}");
        replicas[i % 2]
            .push_image("replicas/app", &tag, &image)
            .await;
        replicas[(i + 1) % 2]
            .pull_and_verify("replicas/app", &tag)
            .await;
    }
}

async fn upload_purging(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let stale = s.client.start_upload("purge").await;
    s.client
        .req(Method::PATCH, &stale)
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        s.registry
            .purge_uploads(Duration::from_millis(10), true)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.client.get(&stale).await.status(),
        204,
        "a dry run purges nothing"
    );
    let fresh_age = Duration::from_secs(3600);
    assert_eq!(s.registry.purge_uploads(fresh_age, false).await.unwrap(), 0);
    assert_eq!(
        s.registry
            .purge_uploads(Duration::from_millis(10), false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.client.get(&stale).await.status(), 404);
    assert_eq!(s.stored_uploads().await, 0);

    // Upload data that no upload row knows (its request died before saving state) goes too.
    let orphan = s.client.start_upload("purge").await;
    s.client
        .req(Method::PATCH, &orphan)
        .body(vec![2u8; 6 << 20])
        .send()
        .await
        .unwrap();
    let id = orphan.rsplit('/').next().unwrap();
    assert!(s.meta.delete_upload(&id.parse().unwrap()).await.unwrap());
    assert_eq!(s.stored_uploads().await, 1);
    assert_eq!(
        s.registry
            .purge_uploads(Duration::ZERO, false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.stored_uploads().await, 0);
}

/// SIGTERM: wharf stops accepting connections at once, lets a PATCH in flight finish (within
/// `http.draintimeout`), and exits cleanly; the upload is resumable by the next process. Its
/// log (JSON) has an access line per request, with the request id it returned, and no error.
async fn sigterm_drains_a_push_in_flight(b: Backend) {
    let env = TestEnv::new(b).await;
    let log = env.dir.path().join("wharf.log");
    let p = spawn_logging(
        &env,
        &[
            ("REGISTRY_HTTP_DRAINTIMEOUT", "30s"),
            ("REGISTRY_LOG_FORMATTER", "json"),
            ("REGISTRY_LOG_LEVEL", "info"),
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    )
    .await;
    let loc = p.client.start_upload("drain/app").await;
    let data = images::noise(81, 3 << 20);

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let patch = {
        let (c, loc) = (p.client.clone(), loc.clone());
        tokio::spawn(async move {
            let r = c
                .req(Method::PATCH, &loc)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .unwrap();
            (r.status(), r.headers().get("x-request-id").cloned())
        })
    };
    tx.send(Ok(bytes::Bytes::copy_from_slice(&data[..1 << 20])))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new client, so a new connection (the old one may be kept alive, and is still served).
    let refused = Client::new(&p.client.base).get_raw("/v2/").await;
    assert!(
        refused.is_err(),
        "a new connection was accepted after SIGTERM"
    );
    tx.send(Ok(bytes::Bytes::copy_from_slice(&data[1 << 20..])))
        .await
        .unwrap();
    drop(tx);
    let (status, request_id) = patch.await.unwrap();
    assert_eq!(status, 202, "the PATCH in flight did not finish");
    let mut p = p;
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "wharf did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "wharf exited with {exit}");

    let q = spawn(&env).await;
    let r = q.client.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], format!("0-{}", data.len() - 1));
    let r = q
        .client
        .req(
            Method::PUT,
            &with_query(&loc, &format!("digest={}", sha256(&data))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !lines.iter().any(|l| l["level"] == "ERROR"),
        "errors were logged:\n{text}"
    );
    let id = request_id
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_string();
    let access = lines
        .iter()
        .find(|l| l["fields"]["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no access line for request {id}:\n{text}"));
    assert_eq!(access["fields"]["route"], "upload");
    assert_eq!(access["fields"]["status"], 202);
    assert_eq!(access["fields"]["repository"], "drain/app");
    assert_eq!(
        access["fields"]["bytes_in"], 0,
        "a streamed body has no Content-Length"
    );
}

/// Eight processes migrating a new database at once, then eight serving it at once: all
/// succeed (migrations are serialised by a lock; the later ones find nothing to do).
async fn replicas_starting_together_all_start(b: Backend) {
    let env = TestEnv::new(b).await;
    let migrations: Vec<_> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_wharf"))
                .arg("migrate")
                .envs(env.env_vars())
                .env("REGISTRY_LOG_LEVEL", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for m in migrations {
        let out = m.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "wharf migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let fresh = TestEnv::new(b).await;
    let starting: Vec<_> = (0..8).map(|_| spawn(&fresh)).collect();
    let replicas = futures_util::future::join_all(starting).await;
    let img = images::multiarch(OCI_INDEX, 850, &["linux/amd64"], 1, 1000, &[]);
    replicas[0].client.push_image("many/app", "v1", &img).await;
    for r in &replicas {
        r.client.pull_and_verify("many/app", "v1").await;
    }
    let text = migrate_status(&fresh);
    assert!(
        text.contains(" 0 pending") || text.contains("applied, 0 pending"),
        "{text}"
    );
}

/// A database migrated by a newer wharf: this one refuses to start, naming both versions, and
/// `migrate --status` shows what it does not know.
async fn a_newer_schema_is_refused_naming_both_versions(b: Backend) {
    let env = TestEnv::new(b).await;
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("migrate")
        .envs(env.env_vars())
        .output()
        .unwrap();
    assert!(out.status.success());
    let future = "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
                  SELECT 999, 'from_the_future', applied_on, checksum FROM refinery_schema_history WHERE version = 1";
    match b {
        Backend::SqliteFs => {
            let path = env.db.url.trim_start_matches("sqlite://");
            rusqlite::Connection::open(path)
                .unwrap()
                .execute(future, [])
                .unwrap();
        }
        _ => {
            let client = common::pg_connect(&env.db.url).await;
            client.execute(future, &[]).await.unwrap();
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("serve")
        .envs(env.env_vars())
        .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "wharf served a schema it does not know"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    // The newest version this wharf knows: its last migration file.
    let newest = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix('V')?
                .split("__")
                .next()?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap();
    assert!(
        err.contains("version 999") && err.contains(&format!("up to {newest}")),
        "{err}"
    );
    let text = migrate_status(&env);
    assert!(
        text.contains("from_the_future") && text.contains("unknown to this wharf"),
        "{text}"
    );
}

fn count_lines(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Two replicas with the collector every 100 ms: only the one holding the job's lease runs it;
/// when it dies (SIGKILL, no goodbye), the lease expires and the other takes the job over.
async fn background_jobs_run_on_one_replica_at_a_time(b: Backend) {
    let env = TestEnv::new(b).await;
    let logs = [env.dir.path().join("a.log"), env.dir.path().join("b.log")];
    let extra = [
        ("REGISTRY_GC_INTERVAL", "100ms"),
        ("REGISTRY_LOG_LEVEL", "info"),
        ("REGISTRY_LOG_ACCESSLOG", "false"),
    ];
    let a = spawn_logging(
        &env,
        &extra,
        Stdio::from(std::fs::File::create(&logs[0]).unwrap()),
    )
    .await;
    let bb = spawn_logging(
        &env,
        &extra,
        Stdio::from(std::fs::File::create(&logs[1]).unwrap()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let runs = |i: usize| count_lines(&logs[i], "garbage collection run");
    let (ra, rb) = (runs(0), runs(1));
    assert!(
        (ra > 0) != (rb > 0),
        "exactly one replica should collect: {ra} and {rb} runs"
    );
    let (leader, other, other_log) = if ra > 0 { (a, bb, 1) } else { (bb, a, 0) };
    leader.kill9();
    let before = runs(other_log);
    let started = Instant::now();
    while runs(other_log) == before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the surviving replica never took the job over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(count_lines(&logs[other_log], "this replica now runs the job") > 0);
    drop(other);
}

/// nginx (round robin, as an operator runs it) in front of three replicas sharing the
/// database and the storage. skopeo pushes a multi-arch image through it while one replica is
/// SIGKILLed and restarted and another drained with SIGTERM and restarted; the push succeeds
/// (skopeo retries what the dead replica dropped), everything pulls byte-identical through the
/// balancer and from each replica, and fsck is clean.
async fn load_balanced_replicas_survive_a_kill_and_a_drain(b: Backend) {
    let env = TestEnv::new(b).await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let quiet = || Stdio::null();
    let mut replicas = Vec::new();
    for &p in &ports {
        replicas.push(Some(spawn_on(&env, p, &[], quiet()).await));
    }

    let lb_port = free_port();
    let dir = env.dir.path().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let servers: String = ports
        .iter()
        .map(|p| format!("server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n"))
        .collect();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 1;\nevents {{}}\nhttp {{\n access_log off;\n upstream wharf {{\n{servers} }}\n server {{\n listen 127.0.0.1:{lb_port};\n client_max_body_size 0;\n proxy_request_buffering off;\n proxy_buffering off;\n location / {{\n proxy_pass http://wharf;\n proxy_http_version 1.1;\n proxy_set_header Host $http_host;\n proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n proxy_read_timeout 300s;\n }}\n }}\n}}\n"
        ),
    )
    .unwrap();
    let nginx = Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-g")
        .arg(format!(
            "daemon off; pid {}/nginx.pid; error_log {}/error.log;",
            dir.display(),
            dir.display()
        ))
        .spawn()
        .expect("start nginx (apt-get install nginx-light; .ci/run does)");
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            // SIGTERM: the master stops its workers (SIGKILL would leave them running).
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let _nginx = Killed(nginx);
    let lb = Client::new(&format!("http://127.0.0.1:{lb_port}"));
    let started = Instant::now();
    while lb
        .http
        .get(lb.url("/v2/"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let image = images::multiarch(
        OCI_INDEX,
        870,
        &["linux/amd64", "linux/arm64", "linux/ppc64le", "linux/s390x"],
        2,
        3 << 20,
        &[871],
    );
    let layout = env.dir.path().join("layout");
    images::write_layout(&layout, "v1", &image);
    let src = format!("oci:{}:v1", layout.display());
    let dest = format!("docker://127.0.0.1:{lb_port}/deploy/app:v1");
    let skopeo_push = move || {
        Command::new("skopeo")
            .args([
                "copy",
                "--all",
                "--preserve-digests",
                "--retry-times",
                "10",
                "--dest-tls-verify=false",
            ])
            .arg(&src)
            .arg(&dest)
            .env("CONTAINERS_REGISTRIES_CONF", "/dev/null")
            .output()
            .expect("run skopeo")
    };
    let first = {
        let p = skopeo_push.clone();
        std::thread::spawn(p)
    };

    // Replica 0 dies mid-push and comes back; then replica 1 is drained and comes back.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !first.is_finished(),
        "the push ended before the replica was killed: make it larger"
    );
    replicas[0].take().unwrap().kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    replicas[0] = Some(spawn_on(&env, ports[0], &[], quiet()).await);
    let mut draining = replicas[1].take().unwrap();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(draining.child.id() as i32, libc::SIGTERM) };
    let exit = draining.child.wait().unwrap();
    assert!(exit.success(), "the drained replica exited with {exit}");
    replicas[1] = Some(spawn_on(&env, ports[1], &[], quiet()).await);

    // A chunk that was streaming into the killed replica fails the push (nginx cannot resend
    // a body it already streamed, and skopeo does not retry that): the client pushes again,
    // as a CI job or an operator would, and the registry takes it from where it stands.
    let mut out = first.join().unwrap();
    let mut attempts = 1;
    while !out.status.success() && attempts < 3 {
        eprintln!(
            "push attempt {attempts} failed (a replica died under it), pushing again: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        attempts += 1;
        let p = skopeo_push.clone();
        out = tokio::task::spawn_blocking(p).await.unwrap();
    }
    assert!(
        out.status.success(),
        "skopeo push through the balancer failed {attempts} times:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lb.pull_and_verify("deploy/app", "v1").await;
    for r in replicas.iter().flatten() {
        r.client.pull_and_verify("deploy/app", "v1").await;
    }
    let back = env.dir.path().join("back");
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://127.0.0.1:{lb_port}/deploy/app:v1"))
        .arg(format!("oci:{}:v1", back.display()))
        .env("CONTAINERS_REGISTRIES_CONF", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str().unwrap(),
        image.digest()
    );
    for blob in &image.blobs {
        let d = sha256(blob);
        let path = back
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        assert!(std::fs::read(&path).unwrap() == *blob, "{d} differs");
    }
    let fsck = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["fsck", "--json"])
        .envs(env.env_vars())
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}
