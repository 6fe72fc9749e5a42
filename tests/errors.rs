//! Errors from the layers below the API keep their meaning on the way out: a database that is
//! busy answers a retryable 503 with Retry-After (never a 500), and an object missing behind
//! a stored blob's row is reported loudly as data loss.

mod common;

use common::images::{self, OCI_INDEX, OCI_MANIFEST};
use common::{Backend, TestEnv, error_code, sha256, with_query};
use reqwest::Method;
use serde_json::Value;

backend_tests!(
    missing_object_behind_a_row_is_counted,
    control_characters_never_reach_the_database,
    descriptor_sizes_must_match_what_is_stored,
    malformed_content_range_leaves_the_upload_alone,
    read_only_mode_serves_reads_and_refuses_writes,
    metrics_series_appear_and_move,
);

async fn missing_object_behind_a_row_is_counted(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let data = common::images::noise(7, 4096);
    let d = s.client.push_blob("lost/app", &data).await;
    let digest: wharf::oci::Digest = d.parse().unwrap();
    s.storage.blob_delete(&digest).await.unwrap();

    let before = wharf::registry::missing_objects_seen();
    // A range read always goes through storage (a whole-blob GET on S3 may redirect).
    let r = s
        .client
        .req(reqwest::Method::GET, &format!("/v2/lost/app/blobs/{d}"))
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    assert!(
        wharf::registry::missing_objects_seen() > before,
        "the lost object was not counted"
    );
}

/// A lock held elsewhere past PostgreSQL's `lock_timeout` is a moment to retry: 503 with
/// Retry-After and the UNAVAILABLE code; once the lock is gone the same request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_database_answers_503_with_retry_after() {
    let env = TestEnv::new(Backend::PostgresFs).await;
    let admin = common::pg_connect(&env.db.url).await;
    let db: String = admin
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!("ALTER DATABASE {db} SET lock_timeout = '200ms'"))
        .await
        .unwrap();

    let s = env.start().await;
    let img = common::images::single(common::images::OCI_MANIFEST, "linux/amd64", &[3, 4], 1000);
    s.client.push_image("busy/app", "v1", &img).await;
    assert_eq!(s.client.get("/v2/busy/app/tags/list").await.status(), 200);

    let mut locker = common::pg_connect(&env.db.url).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE tags IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let r = s.client.get("/v2/busy/app/tags/list").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_code(r).await, "UNAVAILABLE");

    tx.rollback().await.unwrap();
    assert_eq!(s.client.get("/v2/busy/app/tags/list").await.status(), 200);
}

/// A NUL byte in any text a client sends is refused with 400 before it reaches either
/// database (PostgreSQL text cannot hold one: it used to answer 500).
async fn control_characters_never_reach_the_database(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[51], 500);
    s.client.push_image("nul/app", "v1", &img).await;
    let subject = img.digest();
    for path in [
        "/v2/nul/app/tags/list?n=1&last=%00".to_string(),
        "/v2/nul/app/tags/list?last=a%00b".to_string(),
        "/v2/_catalog?n=1&last=%00".to_string(),
        format!("/v2/nul/app/referrers/{subject}?artifactType=%00"),
        "/admin/usage?namespace=%00".to_string(),
        "/v2/nul/app/tags/list?last=%0A".to_string(),
    ] {
        let r = s.client.get(&path).await;
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(error_code(r).await, "UNSUPPORTED", "{path}");
    }
    // Text inside a manifest that is stored as text: its artifact type.
    let mut m: Value = serde_json::from_slice(&img.manifest).unwrap();
    m["artifactType"] = Value::String("application/x\u{0}sig".to_string());
    let body = serde_json::to_vec(&m).unwrap();
    let r = s
        .client
        .put_manifest("nul/app", "v2", OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    // Nothing stored was touched.
    s.client.pull_and_verify("nul/app", "v1").await;
}

/// A descriptor must declare the size of what it points at: a layer off by one byte, or an
/// index entry with a wrong manifest size, is MANIFEST_INVALID naming the descriptor.
async fn descriptor_sizes_must_match_what_is_stored(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[52], 700);
    s.client.push_image("size/app", "v1", &img).await;

    let mut m: Value = serde_json::from_slice(&img.manifest).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let size = m["layers"][0]["size"].as_u64().unwrap();
    m["layers"][0]["size"] = Value::from(size + 1);
    let body = serde_json::to_vec(&m).unwrap();
    let r = s
        .client
        .put_manifest("size/app", "bad", OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("MANIFEST_INVALID") && text.contains(&layer),
        "{text}"
    );

    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": img.digest(),
                       "size": img.manifest.len() + 3,
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    });
    let body = serde_json::to_vec(&index).unwrap();
    let r = s
        .client
        .put_manifest("size/app", "idx", OCI_INDEX, &body)
        .await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains(&img.digest()), "{text}");
    assert_eq!(
        s.client.get("/v2/size/app/manifests/bad").await.status(),
        404
    );
    assert_eq!(
        s.client.get("/v2/size/app/manifests/idx").await.status(),
        404
    );
    s.client.pull_and_verify("size/app", "v1").await;
}

/// Content-Range is `<start>-<end>`; other shapes are refused (400) and change nothing.
async fn malformed_content_range_leaves_the_upload_alone(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let loc = s.client.start_upload("range/app").await;
    let data = images::noise(53, 10);
    for bad in [
        "bytes=0-9",
        "0-9/10",
        "0 - 9",
        "bytes 0-9/10",
        "0-",
        "-9",
        "0-9-",
    ] {
        let r = s
            .client
            .req(Method::PATCH, &loc)
            .header("Content-Range", bad)
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
        assert_eq!(error_code(r).await, "BLOB_UPLOAD_INVALID", "{bad:?}");
        let st = s.client.get(&loc).await;
        assert_eq!(st.headers()["range"], "0-0", "{bad:?} moved the upload");
    }
    let r = s
        .client
        .req(Method::PATCH, &loc)
        .header("Content-Range", "0-9")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let d = sha256(&data);
    s.client.close_upload(&loc, &d).await;
    assert_eq!(s.client.blob_bytes("range/app", &d).await.unwrap(), data);
}

/// A tmpfs of its own for the storage, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// On a full disk a push gets 507 saying so, gives its space back (monolithic and chunked),
/// reads keep working, and pushes work again as soon as there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_a_clear_error_and_gives_space_back() {
    let env = TestEnv::new(Backend::SqliteFs).await;
    let disk = SmallDisk::mount(env.dir.path().join("storage"), "40m");
    let s = env.start().await;
    let first = images::noise(54, 25 << 20);
    let d1 = s.client.push_blob("full/app", &first).await;

    let second = images::noise(55, 25 << 20);
    let r = s
        .client
        .req(
            Method::POST,
            &format!("/v2/full/app/blobs/uploads/?digest={}", sha256(&second)),
        )
        .body(second.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    let text = r.text().await.unwrap();
    assert!(text.contains("storage is full"), "{text}");
    assert_eq!(
        s.stored_uploads().await,
        0,
        "the failed push kept its bytes"
    );

    // Chunked: the failing PATCH is cut back to the recorded size; the upload stays usable.
    let loc = s.client.start_upload("full/app").await;
    let part = images::noise(56, 5 << 20);
    let r = s
        .client
        .req(Method::PATCH, &loc)
        .body(part.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = s
        .client
        .req(Method::PATCH, &loc)
        .body(images::noise(57, 20 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    let st = s.client.get(&loc).await;
    assert_eq!(st.headers()["range"], format!("0-{}", (5 << 20) - 1));
    let used: u64 = walk_size(&disk.path.join("wharf/uploads"));
    assert_eq!(used, 5 << 20, "the failed PATCH's bytes stayed on disk");

    // Reads work; small pushes work while there is room.
    assert_eq!(s.client.blob_bytes("full/app", &d1).await.unwrap(), first);
    let small = images::noise(58, 1024);
    s.client.push_blob("full/app", &small).await;
    // The chunked upload completes once it fits.
    let r = s
        .client
        .req(
            Method::PUT,
            &with_query(&loc, &format!("digest={}", sha256(&part))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    s.stop().await;
    drop(disk);
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            walk_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}

/// `storage.maintenance.readonly.enabled`: reads and GC dry runs go on; every write is 405
/// with an OCI error saying the registry is read-only.
async fn read_only_mode_serves_reads_and_refuses_writes(b: Backend) {
    let env = TestEnv::new(b).await;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[71], 800);
    let s = env.start().await;
    s.client.push_image("ro/app", "v1", &img).await;
    s.stop().await;

    let s = env
        .start_with(&[("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "true")])
        .await;
    s.client.pull_and_verify("ro/app", "v1").await;
    assert_eq!(s.client.get("/v2/ro/app/tags/list").await.status(), 200);
    let layer = sha256(&img.blobs[1]);
    let d = img.digest();
    let writes = [
        (
            Method::PUT,
            "/v2/ro/app/manifests/v2".to_string(),
            img.manifest.clone(),
        ),
        (
            Method::POST,
            "/v2/ro/app/blobs/uploads/".to_string(),
            vec![],
        ),
        (
            Method::POST,
            format!("/v2/ro/app/blobs/uploads/?digest={layer}"),
            img.blobs[1].clone(),
        ),
        (Method::DELETE, format!("/v2/ro/app/manifests/{d}"), vec![]),
        (Method::DELETE, format!("/v2/ro/app/blobs/{layer}"), vec![]),
        (Method::POST, "/admin/gc".to_string(), vec![]),
    ];
    for (m, path, body) in writes {
        let r = s
            .client
            .req(m.clone(), &path)
            .header("Content-Type", OCI_MANIFEST)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{m} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNSUPPORTED", "{m} {path}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("read-only"),
            "{body}"
        );
    }
    let r = s
        .client
        .req(Method::POST, "/admin/gc?dry_run=true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.client.pull_and_verify("ro/app", "v1").await;
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/metrics` on the debug listener: the series operators need appear, and move.
async fn metrics_series_appear_and_move(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let debug = format!("http://{}", listener.local_addr().unwrap());
    let server = wharf::debug_server(s.registry.clone(), listener).unwrap();
    tokio::spawn(server);
    let scrape = || async {
        let r = s
            .client
            .http
            .get(format!("{debug}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };

    let img = images::single(OCI_MANIFEST, "linux/amd64", &[91], 3000);
    s.client.push_image("metrics/app", "v1", &img).await;
    s.client.pull_and_verify("metrics/app", "v1").await;
    // Small blobs pushed whole are stored in one step (blob_put); uploads append.
    s.client
        .push_blob_chunked("metrics/app", &images::noise(92, 5000), 2000)
        .await;
    s.registry
        .collect_garbage(
            wharf::meta::GcPolicy::with_grace(std::time::Duration::ZERO, true),
            wharf::gc::Mode::Full,
            false,
        )
        .await
        .unwrap();
    let before = scrape().await;
    for series in [
        "wharf_http_requests_total",
        "wharf_http_request_duration_seconds_bucket",
        "wharf_http_received_bytes_total",
        "wharf_http_sent_bytes_total",
        "wharf_uploads_in_flight",
        "wharf_gc_runs_total",
        "wharf_gc_run_duration_seconds_bucket",
        "wharf_gc_blobs_deleted_total",
        "wharf_gc_bytes_freed_total",
        "wharf_db_pool_connections_in_use",
        "wharf_db_pool_connections_idle",
        "wharf_db_write_wait_seconds_bucket",
        "wharf_storage_operation_duration_seconds_bucket",
    ] {
        assert!(before.contains(series), "{series} missing from:\n{before}");
    }
    let driver = if b == Backend::PostgresS3 {
        "s3"
    } else {
        "filesystem"
    };
    for op in ["upload_append", "blob_put"] {
        assert!(
            sample(
                &before,
                "wharf_storage_operation_duration_seconds_count",
                &[&format!("driver=\"{driver}\""), &format!("op=\"{op}\"")]
            ) > 0.0,
            "{op}"
        );
    }

    let blob_gets = |t: &str| {
        sample(
            t,
            "wharf_http_requests_total",
            &["route=\"blob\"", "method=\"GET\""],
        )
    };
    let sent = |t: &str| sample(t, "wharf_http_sent_bytes_total", &[]);
    let gc_runs = |t: &str| sample(t, "wharf_gc_runs_total", &["mode=\"dry_run\""]);
    s.client.pull_and_verify("metrics/app", "v1").await;
    s.registry
        .collect_garbage(
            wharf::meta::GcPolicy::with_grace(std::time::Duration::ZERO, true),
            wharf::gc::Mode::Full,
            true,
        )
        .await
        .unwrap();
    let after = scrape().await;
    assert!(
        blob_gets(&after) > blob_gets(&before),
        "blob GETs did not move"
    );
    assert!(sent(&after) > sent(&before), "bytes sent did not move");
    assert!(gc_runs(&after) > gc_runs(&before), "GC runs did not move");
}

/// Slow clients cannot hold the server: a request head trickled in (slowloris) is cut off after
/// `http.timeouts.readheader`, a body that stalls fails after `http.timeouts.readbody` (the
/// upload stays where it was), uploads beyond `http.limits.concurrentuploads` get 429, and an
/// oversized head is refused; other clients are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_greedy_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new(Backend::SqliteFs).await;
    let s = env
        .start_with(&[
            ("REGISTRY_HTTP_TIMEOUTS_READHEADER", "1s"),
            ("REGISTRY_HTTP_TIMEOUTS_READBODY", "1s"),
            ("REGISTRY_HTTP_LIMITS_CONCURRENTUPLOADS", "1"),
        ])
        .await;
    let addr = s.url.trim_start_matches("http://").to_string();

    // Slowloris: a header line every 300 ms, for up to 6 s.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut cut_off = false;
    for i in 0..20 {
        if conn
            .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(std::time::Duration::from_millis(300), conn.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(n)) => {
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(head.starts_with("HTTP/1.1 408"), "{head}");
                cut_off = true;
                break;
            }
            Err(_) => {}
        }
        // Meanwhile everyone else is served.
        assert_eq!(s.client.get("/v2/").await.status(), 200);
    }
    assert!(
        cut_off,
        "a trickled request head held its connection for {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(4));

    // An oversized request head: over the configured limit (32 KiB by default) it is 431,
    // far over it the HTTP layer refuses it; either way the server goes on.
    for size in [40 << 10, 200 << 10] {
        let r = s
            .client
            .req(Method::GET, "/v2/")
            .header("X-Huge", "a".repeat(size))
            .send()
            .await;
        if let Ok(r) = r {
            assert_eq!(r.status(), 431, "{size}");
        }
    }
    // On a new connection: the client may have pooled one the server closed after refusing
    // the head, and would see a reset there, which says nothing about the server.
    let fresh = common::Client::new(&s.url);
    assert_eq!(fresh.get("/v2/").await.status(), 200);

    // A body that stalls: the request fails, the upload stays at its offset.
    let loc = s.client.start_upload("slow/app").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let stalled = {
        let (c, loc) = (s.client.clone(), loc.clone());
        tokio::spawn(async move {
            c.req(Method::PATCH, &loc)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
        })
    };
    tx.send(Ok(bytes::Bytes::from(vec![1u8; 100_000])))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // While it holds the only upload place, another upload is told to come back.
    let other = s.client.start_upload("slow/app").await;
    let r = s
        .client
        .req(Method::PATCH, &other)
        .body(vec![2u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    // The stalled body is given up on.
    match tokio::time::timeout(std::time::Duration::from_secs(10), stalled)
        .await
        .expect("the stalled request was never ended")
        .unwrap()
    {
        Ok(r) => assert_eq!(r.status(), 400),
        Err(_) => {} // the server may close while the client still sends
    }
    drop(tx);
    assert_eq!(s.client.get(&loc).await.headers()["range"], "0-0");
    // The place is free again.
    let r = s
        .client
        .req(Method::PATCH, &other)
        .body(vec![2u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}
