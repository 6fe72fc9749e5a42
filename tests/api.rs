//! The distribution API end to end, through a real server, on every backend.

mod common;

use common::images::{self, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use common::{Backend, TestEnv, error_code, sha256, with_query};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

backend_tests!(
    base_endpoint,
    monolithic_blob_and_ranges,
    chunked_upload_with_out_of_order_chunk,
    streamed_patch_and_final_chunk_in_put,
    digest_mismatch_leaves_nothing,
    upload_sessions_are_bound_to_their_repository,
    cancel_upload,
    cross_repository_mount,
    manifests_by_tag_and_digest,
    docker_schema2_and_manifest_list,
    manifest_validation_errors,
    index_children_must_exist,
    tag_and_manifest_deletion,
    tags_list_pagination,
    catalog_pagination,
    referrers_api,
    blob_delete,
    bad_input_never_5xx,
    upload_resumes_after_restart,
    unsynced_upload_bytes_are_checked_elsewhere,
    progress_lost_in_a_system_crash_is_not_built_on,
    truncated_body_is_not_committed,
    deletes_can_be_disabled,
    concurrent_pushes_of_one_blob,
);

async fn base_endpoint(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    for path in ["/v2/", "/v2"] {
        let r = s.client.get(path).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["docker-distribution-api-version"],
            "registry/2.0"
        );
    }
    assert_eq!(s.client.get("/healthz").await.status(), 200);
    assert_eq!(s.client.get("/readyz").await.status(), 200);
    let r = s.client.get("/v2/no/such/endpoint").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
}

async fn monolithic_blob_and_ranges(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let data = images::noise(1, 10_000);
    let d = c.push_blob("a/b", &data).await;

    let r = c.head(&format!("/v2/a/b/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "10000");
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(c.blob_bytes("a/b", &d).await.unwrap(), data);
    assert!(s.blob_exists(&d).await, "blob at Distribution's path");

    let r = c
        .req(Method::GET, &format!("/v2/a/b/blobs/{d}"))
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[100..200]);
    let r = c
        .req(Method::GET, &format!("/v2/a/b/blobs/{d}"))
        .header("Range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[9990..]);
    let r = c
        .req(Method::GET, &format!("/v2/a/b/blobs/{d}"))
        .header("Range", "bytes=10000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */10000");

    // Not linked in another repository.
    let r = c.get(&format!("/v2/other/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    // The empty blob.
    let e = c.push_blob("a/b", b"").await;
    assert_eq!(c.blob_bytes("a/b", &e).await.unwrap(), b"");
}

async fn chunked_upload_with_out_of_order_chunk(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let data = images::noise(2, 300_000);
    let loc = c.start_upload("chunks").await;
    assert!(loc.starts_with("/v2/chunks/blobs/uploads/"), "{loc}");

    let patch = |range: String, body: Vec<u8>| {
        c.req(Method::PATCH, &loc)
            .header("Content-Range", range)
            .header("Content-Type", "application/octet-stream")
            .body(body)
            .send()
    };
    let r = patch("0-99999".into(), data[..100_000].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-99999");
    assert!(r.headers().contains_key("docker-upload-uuid"));

    // Out of order: 416, offset unchanged.
    let r = patch("150000-199999".into(), data[150_000..200_000].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["range"], "0-99999");
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_INVALID");
    // Content-Range disagreeing with Content-Length: 416, offset unchanged.
    let r = patch("100000-100009".into(), vec![0u8; 5]).await.unwrap();
    assert_eq!(r.status(), 416);
    // Malformed Content-Range: 400.
    let r = patch("abc".into(), vec![0u8; 5]).await.unwrap();
    assert_eq!(r.status(), 400);

    let r = c.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-99999");
    assert_eq!(r.headers()["location"].to_str().unwrap(), loc);

    let r = patch("100000-299999".into(), data[100_000..].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-299999");

    // A final PUT whose chunk starts at the wrong offset: 416, upload still resumable.
    let d = sha256(&data);
    let r = c
        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .header("Content-Range", "5-9")
        .body(vec![0u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["range"], "0-299999");

    let r = c
        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("/v2/chunks/blobs/{d}")
    );
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), d);
    assert_eq!(c.blob_bytes("chunks", &d).await.unwrap(), data);
    assert_eq!(s.stored_uploads().await, 0);
    // The session is gone.
    let r = c.get(&loc).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // Many small chunks.
    let d2 = c.push_blob_chunked("chunks", &data[..50_000], 4096).await;
    assert_eq!(c.blob_bytes("chunks", &d2).await.unwrap(), &data[..50_000]);
}

async fn streamed_patch_and_final_chunk_in_put(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let data = images::noise(3, 3 << 20);
    let loc = c.start_upload("stream").await;
    // Docker's streaming mode: PATCH without Content-Range, body sent as a stream.
    let first = data[..2 << 20].to_vec();
    let stream = futures_util::stream::iter(
        first
            .chunks(65536)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = c
        .req(Method::PATCH, &loc)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", (2 << 20) - 1)
    );
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    // The last chunk travels with the PUT.
    let d = sha256(&data);
    let r = c
        .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
        .header("Content-Range", format!("{}-{}", 2 << 20, (3 << 20) - 1))
        .body(data[2 << 20..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(c.blob_bytes("stream", &d).await.unwrap(), data);
}

async fn digest_mismatch_leaves_nothing(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let data = images::noise(4, 5000);
    let wrong = sha256(b"something else");
    let r = c
        .req(
            Method::POST,
            &format!("/v2/x/blobs/uploads/?digest={wrong}"),
        )
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");

    let loc = c.start_upload("x").await;
    c.req(Method::PATCH, &loc)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let r = c
        .req(Method::PUT, &with_query(&loc, &format!("digest={wrong}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(c.get(&loc).await.status(), 404, "the session is discarded");

    for d in [wrong, sha256(&data)] {
        assert_eq!(c.head(&format!("/v2/x/blobs/{d}")).await.status(), 404);
        assert!(!s.blob_exists(&d).await);
    }
    assert_eq!(s.stored_uploads().await, 0, "no upload data left behind");
    // A garbage digest parameter.
    let r = c
        .req(Method::POST, "/v2/x/blobs/uploads/?digest=sha256:nothex")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

async fn upload_sessions_are_bound_to_their_repository(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let loc = c.start_upload("owner").await;
    let id = loc.rsplit('/').next().unwrap();
    for method in [Method::GET, Method::PATCH, Method::PUT, Method::DELETE] {
        let r = c
            .req(
                method.clone(),
                &format!("/v2/intruder/blobs/uploads/{id}?digest={}", sha256(b"")),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method}");
        assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    }
    // Unknown and malformed ids.
    let unknown = uuid::Uuid::new_v4();
    assert_eq!(
        c.get(&format!("/v2/owner/blobs/uploads/{unknown}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        c.get("/v2/owner/blobs/uploads/..%2F..%2Fetc")
            .await
            .status()
            .as_u16()
            / 100,
        4
    );
    assert_eq!(
        c.get(&loc).await.status(),
        204,
        "the owner's session is intact"
    );
}

async fn cancel_upload(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let loc = c.start_upload("c").await;
    c.req(Method::PATCH, &loc)
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(s.stored_uploads().await, 1);
    let r = c.delete(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(c.get(&loc).await.status(), 404);
    assert_eq!(c.delete(&loc).await.status(), 404);
    assert_eq!(s.stored_uploads().await, 0);
}

async fn cross_repository_mount(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let data = images::noise(5, 2000);
    let d = c.push_blob("src", &data).await;

    let r = c
        .req(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("/v2/dst/blobs/{d}")
    );
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), d);
    assert_eq!(c.blob_bytes("dst", &d).await.unwrap(), data);

    // Without `from`, a blob the registry already stores is mounted too.
    let r = c
        .req(Method::POST, &format!("/v2/third/blobs/uploads/?mount={d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A blob the source repository does not have: a regular upload session instead.
    let unknown = sha256(b"never pushed");
    let r = c
        .req(
            Method::POST,
            &format!("/v2/dst2/blobs/uploads/?mount={unknown}&from=src"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v2/dst2/blobs/uploads/")
    );
    let r = c
        .req(
            Method::POST,
            &format!("/v2/dst3/blobs/uploads/?mount={d}&from=nothere"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(c.head(&format!("/v2/dst3/blobs/{d}")).await.status(), 404);
}

async fn manifests_by_tag_and_digest(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[10, 11], 1000);
    let d = c.push_image("team/app", "v1", &img).await;

    for reference in ["v1", d.as_str()] {
        let r = c.get(&format!("/v2/team/app/manifests/{reference}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), d);
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            img.manifest.as_slice(),
            "byte for byte"
        );
        let r = c.head(&format!("/v2/team/app/manifests/{reference}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"].to_str().unwrap(),
            img.manifest.len().to_string()
        );
    }
    // Whitespace and key order are the client's: a re-serialised body has another digest.
    let mut pretty =
        serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&img.manifest).unwrap())
            .unwrap();
    pretty.push(b'\n');
    let d2 = c
        .push_manifest("team/app", "pretty", OCI_MANIFEST, &pretty)
        .await;
    assert_ne!(d, d2);
    assert_eq!(
        c.get("/v2/team/app/manifests/pretty")
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        pretty.as_slice()
    );

    // PUT by digest.
    let r = c
        .put_manifest("team/app", &d, OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("/v2/team/app/manifests/{d}")
    );
    // Retagging moves the tag.
    let img2 = images::single(OCI_MANIFEST, "linux/amd64", &[12], 1000);
    let d3 = c.push_image("team/app", "v1", &img2).await;
    assert_eq!(
        c.get("/v2/team/app/manifests/v1").await.headers()["docker-content-digest"]
            .to_str()
            .unwrap(),
        d3
    );

    let r = c.get("/v2/team/app/manifests/nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = c.get(&format!("/v2/other/manifests/{d}")).await;
    assert_eq!(r.status(), 404);
    c.pull_and_verify("team/app", "v1").await;

    // An OCI artifact with its own config media type (a Helm chart).
    let chart = images::noise(99, 500);
    let config = br#"{"name":"mychart","version":"1.0.0"}"#.to_vec();
    c.push_blob("charts/mychart", &chart).await;
    c.push_blob("charts/mychart", &config).await;
    let helm = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": sha256(&chart), "size": chart.len()}]
    }))
    .unwrap();
    c.push_manifest("charts/mychart", "1.0.0", OCI_MANIFEST, &helm)
        .await;
    c.pull_and_verify("charts/mychart", "1.0.0").await;
}

async fn docker_schema2_and_manifest_list(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let list = images::multiarch(
        DOCKER_LIST,
        7,
        &["linux/amd64", "linux/arm64"],
        2,
        2000,
        &[],
    );
    let d = c.push_image("docker/img", "latest", &list).await;
    let r = c.get("/v2/docker/img/manifests/latest").await;
    assert_eq!(r.headers()["content-type"], DOCKER_LIST);
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), d);
    let child = &list.children[0].1;
    let r = c
        .get(&format!("/v2/docker/img/manifests/{}", sha256(child)))
        .await;
    assert_eq!(r.headers()["content-type"], DOCKER_MANIFEST);
    c.pull_and_verify("docker/img", "latest").await;

    let index = images::multiarch(
        OCI_INDEX,
        8,
        &["linux/amd64", "linux/arm64", "linux/s390x"],
        1,
        1000,
        &[],
    );
    c.push_image("oci/img", "latest", &index).await;
    c.pull_and_verify("oci/img", "latest").await;
}

async fn manifest_validation_errors(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[20], 500);

    // Blobs not pushed yet.
    let r = c.put_manifest("v", "t", OCI_MANIFEST, &img.manifest).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // Blobs pushed to another repository only.
    for blob in &img.blobs {
        c.push_blob("elsewhere", blob).await;
    }
    let r = c.put_manifest("v", "t", OCI_MANIFEST, &img.manifest).await;
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    for blob in &img.blobs {
        c.push_blob("v", blob).await;
    }

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (OCI_MANIFEST, b"{not json".to_vec(), "MANIFEST_INVALID"),
        (OCI_MANIFEST, b"[1,2]".to_vec(), "MANIFEST_INVALID"),
        (OCI_INDEX, img.manifest.clone(), "MANIFEST_INVALID"),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            br#"{"schemaVersion":1,"name":"v","tag":"t","architecture":"amd64","fsLayers":[],"history":[]}"#.to_vec(),
            "MANIFEST_INVALID",
        ),
        (
            OCI_MANIFEST,
            String::from_utf8(img.manifest.clone()).unwrap().replace("sha256:", "sha256:zz").into_bytes(),
            "MANIFEST_INVALID",
        ),
    ];
    for (ct, body, code) in cases {
        let r = c.put_manifest("v", "t", ct, &body).await;
        assert_eq!(r.status(), 400, "{}", String::from_utf8_lossy(&body));
        let text = r.text().await.unwrap();
        assert!(text.contains(code), "{text}");
        if ct.contains("v1+prettyjws") {
            assert!(text.contains("schema 1"), "{text}");
        }
    }
    // Digest in the URL must match the body.
    let r = c
        .put_manifest("v", &sha256(b"other"), OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // 4 MiB is accepted; more is 413.
    let mut big = serde_json::from_slice::<Value>(&img.manifest).unwrap();
    big["annotations"] = json!({"pad": ""});
    let base_len = serde_json::to_vec(&big).unwrap().len();
    big["annotations"]["pad"] = Value::String("x".repeat(4 * 1024 * 1024 - base_len));
    let exactly = serde_json::to_vec(&big).unwrap();
    assert_eq!(exactly.len(), 4 * 1024 * 1024);
    assert_eq!(
        c.put_manifest("v", "big", OCI_MANIFEST, &exactly)
            .await
            .status(),
        201
    );
    let mut over = exactly.clone();
    over.push(b' ');
    let r = c.put_manifest("v", "bigger", OCI_MANIFEST, &over).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    // Bad tag.
    let r = c
        .put_manifest("v", "-bad", OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status(), 400);
    // Nothing above changed what `t` is: it was never stored.
    assert_eq!(c.get("/v2/v/manifests/t").await.status(), 404);
    c.push_manifest("v", "t", OCI_MANIFEST, &img.manifest).await;
}

async fn index_children_must_exist(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let index = images::multiarch(OCI_INDEX, 30, &["linux/amd64", "linux/arm64"], 1, 500, &[]);
    for blob in &index.blobs {
        c.push_blob("idx", blob).await;
    }
    let r = c
        .put_manifest("idx", "v1", OCI_INDEX, &index.manifest)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // Children in another repository do not count.
    for (mt, child) in &index.children {
        for blob in &index.blobs {
            c.push_blob("other", blob).await;
        }
        c.push_manifest("other", &sha256(child), mt, child).await;
    }
    let r = c
        .put_manifest("idx", "v1", OCI_INDEX, &index.manifest)
        .await;
    assert_eq!(r.status(), 400);
    c.push_image("idx", "v1", &index).await;
    c.pull_and_verify("idx", "v1").await;
}

async fn tag_and_manifest_deletion(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[40], 500);
    let d = c.push_image("del", "a", &img).await;
    c.push_manifest("del", "b", OCI_MANIFEST, &img.manifest)
        .await;

    // Deleting by tag removes the tag only.
    assert_eq!(c.delete("/v2/del/manifests/a").await.status(), 202);
    assert_eq!(c.get("/v2/del/manifests/a").await.status(), 404);
    assert_eq!(c.get("/v2/del/manifests/b").await.status(), 200);
    assert_eq!(c.get(&format!("/v2/del/manifests/{d}")).await.status(), 200);
    assert_eq!(c.delete("/v2/del/manifests/a").await.status(), 404);

    // Deleting by digest removes the manifest and every tag on it.
    assert_eq!(
        c.delete(&format!("/v2/del/manifests/{d}")).await.status(),
        202
    );
    assert_eq!(c.get(&format!("/v2/del/manifests/{d}")).await.status(), 404);
    assert_eq!(c.get("/v2/del/manifests/b").await.status(), 404);
    let tags: Value = c.get("/v2/del/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!([]));
    let r = c.delete(&format!("/v2/del/manifests/{d}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // A child of an index cannot be deleted while the index lists it.
    let index = images::multiarch(OCI_INDEX, 41, &["linux/amd64", "linux/arm64"], 1, 500, &[]);
    let id = c.push_image("del", "multi", &index).await;
    let child = sha256(&index.children[0].1);
    let r = c.delete(&format!("/v2/del/manifests/{child}")).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "DENIED");
    c.pull_and_verify("del", "multi").await;
    assert_eq!(
        c.delete(&format!("/v2/del/manifests/{id}")).await.status(),
        202
    );
    assert_eq!(
        c.delete(&format!("/v2/del/manifests/{child}"))
            .await
            .status(),
        202
    );
}

async fn tags_list_pagination(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[50], 100);
    c.push_image("tagged", "seed", &img).await;
    let mut names = vec!["seed".to_string()];
    for t in [
        "b", "a", "C", "_z", "v1.0", "v1.10", "v1.2", "latest", "Z-9",
    ] {
        c.push_manifest("tagged", t, OCI_MANIFEST, &img.manifest)
            .await;
        names.push(t.to_string());
    }
    names.sort(); // byte order
    let all: Value = c.get("/v2/tagged/tags/list").await.json().await.unwrap();
    assert_eq!(all["name"], "tagged");
    assert_eq!(all["tags"], json!(names));

    let mut seen = Vec::new();
    let mut url = "/v2/tagged/tags/list?n=3".to_string();
    loop {
        let r = c.get(&url).await;
        assert_eq!(r.status(), 200);
        let link = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_string());
        let page: Value = r.json().await.unwrap();
        let page: Vec<String> = serde_json::from_value(page["tags"].clone()).unwrap();
        assert!(page.len() <= 3);
        seen.extend(page);
        match link {
            Some(l) => {
                url = l
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_string()
            }
            None => break,
        }
    }
    assert_eq!(seen, names);
    // `last` is exclusive.
    let r: Value = c
        .get("/v2/tagged/tags/list?last=b&n=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["tags"],
        json!(
            names
                .iter()
                .filter(|t| t.as_str() > "b")
                .take(2)
                .collect::<Vec<_>>()
        )
    );
    // n=0: empty, no Link.
    let r = c.get("/v2/tagged/tags/list?n=0").await;
    assert!(r.headers().get("link").is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!([]));
    let r = c.get("/v2/unknown/repo/tags/list").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    assert_eq!(c.get("/v2/tagged/tags/list?n=-1").await.status(), 400);
}

async fn catalog_pagination(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[60], 100);
    let mut repos = vec!["a", "a/b", "a-b", "b/c/d", "z"];
    for r in &repos {
        c.push_image(r, "t", &img).await;
    }
    // A repository with only an unfinished upload is not listed.
    c.start_upload("onlyupload").await;
    repos.sort();
    let all: Value = c.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(all["repositories"], json!(repos));
    let r = c.get("/v2/_catalog?n=2").await;
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert!(link.contains("rel=\"next\""), "{link}");
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["repositories"], json!(repos[..2]));
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let page: Value = c.get(next).await.json().await.unwrap();
    assert_eq!(page["repositories"], json!(repos[2..4]));
    let r = c.get("/v2/_catalog?n=0").await;
    assert!(r.headers().get("link").is_none());
}

async fn referrers_api(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[70], 300);
    // A referrer pushed before its subject is accepted and listed.
    let sig = images::referrer(
        "application/vnd.dev.cosign.signature",
        OCI_MANIFEST,
        &img.manifest,
        1,
    );
    let sbom = images::referrer("application/spdx+json", OCI_MANIFEST, &img.manifest, 2);
    for blob in &sig.blobs {
        c.push_blob("ref", blob).await;
    }
    let r = c
        .put_manifest("ref", &sig.digest(), OCI_MANIFEST, &sig.manifest)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["oci-subject"].to_str().unwrap(), img.digest());
    let subject = c.push_image("ref", "v1", &img).await;
    c.push_image("ref", &sbom.digest(), &sbom).await;

    let r = c.get(&format!("/v2/ref/referrers/{subject}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    assert!(r.headers().get("oci-filters-applied").is_none());
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX);
    let list = index["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let entry = list
        .iter()
        .find(|m| m["digest"] == sig.digest().as_str())
        .unwrap();
    assert_eq!(
        entry["artifactType"],
        "application/vnd.dev.cosign.signature"
    );
    assert_eq!(entry["size"], sig.manifest.len());
    assert_eq!(entry["mediaType"], OCI_MANIFEST);
    assert_eq!(entry["annotations"]["org.example.seed"], "1");

    let r = c
        .get(&format!(
            "/v2/ref/referrers/{subject}?artifactType=application/spdx%2Bjson"
        ))
        .await;
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], sbom.digest().as_str());

    // Unknown subject or repository: an empty index, never 404.
    for path in [
        format!("/v2/ref/referrers/{}", sha256(b"x")),
        format!("/v2/nobody/referrers/{subject}"),
    ] {
        let r = c.get(&path).await;
        assert_eq!(r.status(), 200);
        let index: Value = r.json().await.unwrap();
        assert_eq!(index["manifests"], json!([]));
    }
    // artifactType falls back to the config media type.
    let plain = images::single(OCI_MANIFEST, "linux/amd64", &[71], 100);
    let mut m: Value = serde_json::from_slice(&plain.manifest).unwrap();
    m["subject"] =
        json!({"mediaType": OCI_MANIFEST, "digest": subject, "size": img.manifest.len()});
    let body = serde_json::to_vec(&m).unwrap();
    for blob in &plain.blobs {
        c.push_blob("ref", blob).await;
    }
    c.push_manifest("ref", &sha256(&body), OCI_MANIFEST, &body)
        .await;
    let index: Value = c
        .get(&format!(
            "/v2/ref/referrers/{subject}?artifactType=application/vnd.oci.image.config.v1%2Bjson"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        c.get(&format!("/v2/ref/referrers/sha256:bad"))
            .await
            .status(),
        400
    );
}

async fn blob_delete(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[80], 300);
    let d = c.push_image("bd", "v1", &img).await;
    let layer = sha256(&img.blobs[1]);
    let r = c.delete(&format!("/v2/bd/blobs/{layer}")).await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "a layer the repository's manifest uses stays"
    );
    c.pull_and_verify("bd", "v1").await;
    assert_eq!(
        c.delete(&format!("/v2/bd/manifests/{d}")).await.status(),
        202
    );
    assert_eq!(
        c.delete(&format!("/v2/bd/blobs/{layer}")).await.status(),
        202
    );
    let r = c.get(&format!("/v2/bd/blobs/{layer}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    assert_eq!(
        c.delete(&format!("/v2/bd/blobs/{layer}")).await.status(),
        404
    );
    // Unlinking is per repository: another repository's copy is untouched.
    let other = c.push_blob("bd2", &images::noise(81, 100)).await;
    assert_eq!(
        c.delete(&format!("/v2/bd/blobs/{other}")).await.status(),
        404
    );
    assert!(c.blob_bytes("bd2", &other).await.is_some());
}

async fn bad_input_never_5xx(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let long = "a".repeat(300);
    let d = sha256(b"x");
    let cases: Vec<(Method, String, u16, &str)> = vec![
        (
            Method::GET,
            format!("/v2/{long}/tags/list"),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/UPPER/tags/list".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/.hidden/tags/list".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a%2F..%2F..%2Fb/tags/list".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::PUT,
            "/v2/a/manifests/tag:with:colons".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            format!("/v2/a/manifests/{}", "t".repeat(129)),
            400,
            "MANIFEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/blobs/sha256:xyz".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/blobs/md5:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/blobs/notadigest".into(),
            400,
            "DIGEST_INVALID",
        ),
        (Method::HEAD, format!("/v2/a/blobs/{d}"), 404, ""),
        (Method::POST, format!("/v2/a/blobs/{d}"), 405, ""),
        (Method::PATCH, "/v2/a/manifests/latest".into(), 405, ""),
        (
            Method::PUT,
            format!("/v2/a/blobs/uploads/{}", uuid::Uuid::new_v4()),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            Method::POST,
            "/v2/a/blobs/uploads/?mount=garbage".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::POST,
            "/v2/a/blobs/uploads/?mount=sha256:00&from=b".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::POST,
            format!("/v2/a/blobs/uploads/?mount={d}&from=BAD"),
            400,
            "NAME_INVALID",
        ),
        (Method::GET, "/v2/a/tags/list?n=abc".into(), 400, ""),
        (Method::GET, "/v2/_catalog?n=99999999999999".into(), 400, ""),
        (
            Method::GET,
            "/v2/a/referrers/zzz".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/%ff%fe/tags/list".into(),
            400,
            "NAME_INVALID",
        ),
    ];
    for (method, path, status, code) in cases {
        let r = c
            .req(method.clone(), &path)
            .body("junk")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        if !code.is_empty() {
            assert_eq!(error_code(r).await, code, "{method} {path}");
        }
    }
    // A PUT to an upload without a digest.
    let loc = c.start_upload("a").await;
    let r = c.req(Method::PUT, &loc).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(
        c.get(&loc).await.status(),
        204,
        "the upload survives a bad PUT"
    );
}

/// On S3 (5 MiB parts in tests) the first chunk completes a part and leaves a segment before
/// the restart; the second completes another part from that segment.
/// A PATCH leaves its bytes to the page cache on the filesystem (S3 parts are durable at once)
/// and records the last durable state, the checkpoint, beside the one clients resume from.
/// Bytes past the checkpoint that another kernel wrote (another machine, or this one before a
/// crash) are read back and checked first: intact, the upload goes on; damaged or lost, it
/// resumes from the checkpoint, and the blob is never wrong.
async fn unsynced_upload_bytes_are_checked_elsewhere(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let data = images::noise(91, 300_000);
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&env.db.url).await.unwrap();
    let state = |id: String| {
        let db = db.clone();
        async move {
            let row: (i64, i64, String) =
                sqlx::query_as("SELECT size, synced_size, unsynced_on FROM uploads WHERE id = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            row
        }
    };
    let elsewhere = |id: String| {
        let db = db.clone();
        async move {
            sqlx::query("UPDATE uploads SET unsynced_on = 'another-kernel' WHERE id = $1")
                .bind(id)
                .execute(&db)
                .await
                .unwrap();
        }
    };
    let patch = |loc: String, from: usize, to: usize| {
        let c = c.clone();
        let chunk = data[from..to].to_vec();
        async move {
            c.req(Method::PATCH, &loc)
                .header("Content-Range", format!("{from}-{}", to - 1))
                .body(chunk)
                .send()
                .await
                .unwrap()
        }
    };
    let id_of = |loc: &str| {
        let path = loc.split('?').next().unwrap();
        path.rsplit('/').next().unwrap().to_string()
    };
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string();
    let durable = b == Backend::PostgresS3;

    let loc = c.start_upload("ckpt").await;
    let id = id_of(&loc);
    let r = patch(loc, 0, 100_000).await;
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    if durable {
        assert_eq!(state(id.clone()).await, (100_000, 100_000, String::new()));
    } else {
        assert_eq!(state(id.clone()).await, (100_000, 0, boot_id.clone()));
    }

    // Written "elsewhere" and intact: checked, synced, and the upload goes on.
    elsewhere(id.clone()).await;
    let r = patch(loc, 100_000, 200_000).await;
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    if durable {
        // Nothing past the checkpoint: nothing to check.
        assert_eq!(state(id.clone()).await.1, 200_000);
        // As an older wharf leaves a row (it records no checkpoint): the driver's appends are
        // durable, so nothing is rolled back (its part list could not follow a roll back).
        sqlx::query("UPDATE uploads SET synced_size = 0, unsynced_on = '' WHERE id = $1")
            .bind(id.clone())
            .execute(&db)
            .await
            .unwrap();
    } else {
        assert_eq!(state(id.clone()).await, (200_000, 100_000, boot_id.clone()));

        // Written elsewhere and damaged (the page cache's copy never reached the disk): the
        // upload goes back to its checkpoint, and says so.
        let file = s.root.join(format!("wharf/uploads/{id}/data"));
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[150_000] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        elsewhere(id.clone()).await;
        let r = patch(loc.clone(), 200_000, 300_000).await;
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["range"], "0-99999");
        // Where progress saves are relaxed (SQLite) the row names the kernel that saved it.
        let saved_on = if b == Backend::SqliteFs {
            boot_id.clone()
        } else {
            String::new()
        };
        assert_eq!(state(id.clone()).await, (100_000, 100_000, saved_on));
        let r = c.get(&loc).await;
        assert_eq!(r.headers()["range"], "0-99999");

        // Cut short (a crash lost the tail): the same.
        let r = patch(loc.clone(), 100_000, 200_000).await;
        assert_eq!(r.status(), 202);
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(150_000).unwrap();
        elsewhere(id.clone()).await;
        let r = patch(loc.clone(), 200_000, 300_000).await;
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["range"], "0-99999");

        let r = patch(loc.clone(), 100_000, 200_000).await;
        assert_eq!(r.status(), 202);

        // Lost again, and the client closes the upload: the PUT is refused with the offset to
        // resume from (closing it would store the wrong blob or discard the upload).
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[120_000] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        elsewhere(id.clone()).await;
        let r = c
            .req(
                Method::PUT,
                &with_query(&loc, &format!("digest={}", sha256(&data[..200_000]))),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["range"], "0-99999");
        assert_eq!(c.get(&loc).await.status(), 204, "the upload is still there");
        let r = patch(loc.clone(), 100_000, 200_000).await;
        assert_eq!(r.status(), 202);
    }
    let r = patch(loc, 200_000, 300_000).await;
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let d = sha256(&data);
    c.close_upload(&loc, &d).await;
    assert_eq!(c.blob_bytes("ckpt", &d).await.unwrap(), data);
    db.close().await;
}

/// On SQLite an upload's progress is saved without syncing the WAL, so a system crash can take
/// the row back to an earlier save than the client was acknowledged. A request that does not
/// say where its bytes go is then refused once with the saved offset rather than appended at
/// the wrong place; one with a Content-Range is checked against it as always. On PostgreSQL
/// progress commits are durable, and nothing is refused.
async fn progress_lost_in_a_system_crash_is_not_built_on(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let data = images::noise(92, 300_000);
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&env.db.url).await.unwrap();
    let streamed = |loc: String, from: usize, to: usize| {
        let c = c.clone();
        let chunk = data[from..to].to_vec();
        async move { c.req(Method::PATCH, &loc).body(chunk).send().await.unwrap() }
    };
    let next = |r: reqwest::Response| {
        assert_eq!(r.status(), 202);
        r.headers()["location"].to_str().unwrap().to_string()
    };
    let loc = c.start_upload("lost").await;
    let id = loc
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let loc = next(streamed(loc, 0, 100_000).await);
    // The row as the first save left it.
    type Row = (i64, Vec<u8>, String, i64, Vec<u8>);
    let first: Row = sqlx::query_as(
        "SELECT size, hash_state, driver_state, synced_size, synced_hash_state FROM uploads WHERE id = $1",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    let loc = next(streamed(loc, 100_000, 200_000).await);

    let relaxed = b == Backend::SqliteFs;
    if relaxed {
        // The system crashed: the database came back with the first save only, written by
        // the kernel before the restart.
        sqlx::query(
            "UPDATE uploads SET size = $2, hash_state = $3, driver_state = $4, synced_size = $5,
                    synced_hash_state = $6, unsynced_on = 'the-kernel-before' WHERE id = $1",
        )
        .bind(&id)
        .bind(first.0)
        .bind(first.1)
        .bind(first.2)
        .bind(first.3)
        .bind(first.4)
        .execute(&db)
        .await
        .unwrap();
    } else {
        sqlx::query(
            "UPDATE uploads SET unsynced_on = 'the-kernel-before' WHERE id = $1 AND unsynced_on <> ''",
        )
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();
    }
    // The client goes on where it was told the upload stands.
    let r = streamed(loc.clone(), 200_000, 300_000).await;
    let loc = if relaxed {
        assert_eq!(
            r.status(),
            416,
            "a stream appended after a lost save lands in the wrong place"
        );
        assert_eq!(r.headers()["range"], "0-99999");
        assert_eq!(error_code(r).await, "BLOB_UPLOAD_INVALID");
        assert_eq!(c.get(&loc).await.headers()["range"], "0-99999");
        // Told where the upload stands, the client resumes from there; once is enough.
        next(streamed(loc, 100_000, 300_000).await)
    } else {
        next(r)
    };
    let d = sha256(&data);
    c.close_upload(&loc, &d).await;
    assert_eq!(c.blob_bytes("lost", &d).await.unwrap(), data);
    db.close().await;
}

async fn upload_resumes_after_restart(b: Backend) {
    let env = TestEnv::new(b).await;
    let data = images::noise(90, 12_000_000);
    let s = env.start().await;
    let loc = s.client.start_upload("resume").await;
    let r = s
        .client
        .req(Method::PATCH, &loc)
        .header("Content-Range", "0-6999999")
        .body(data[..7_000_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    s.stop().await;

    // A new process on the same database and storage continues where the first stopped.
    let s = env.start().await;
    let r = s.client.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-6999999");
    let d = sha256(&data);
    let r = s
        .client
        .req(Method::PATCH, &loc)
        .header("Content-Range", format!("7000000-{}", data.len() - 1))
        .body(data[7_000_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    s.client.close_upload(&loc, &d).await;
    assert_eq!(s.client.blob_bytes("resume", &d).await.unwrap(), data);
}

/// Sends `method path` announcing a body of `len` bytes, sends `sent` of them and hangs up.
async fn send_truncated(url: &str, method: &str, path: &str, len: usize, sent: Vec<u8>) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").to_string();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    tokio::task::spawn_blocking(move || {
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.write_all(head.as_bytes()).unwrap();
        sock.write_all(&sent).unwrap();
        sock.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = sock.read_to_end(&mut out);
    })
    .await
    .unwrap();
}

async fn truncated_body_is_not_committed(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let loc = c.start_upload("trunc").await;
    c.req(Method::PATCH, &loc)
        .header("Content-Range", "0-99")
        .body(vec![7u8; 100])
        .send()
        .await
        .unwrap();

    // Announce 10000 bytes, send 4000, hang up.
    send_truncated(&s.url, "PATCH", &loc, 10_000, vec![9u8; 4000]).await;

    let r = c.get(&loc).await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"],
        "0-99",
        "the partial body was not recorded"
    );
    // The upload continues correctly from byte 100.
    let mut data = vec![7u8; 100];
    data.extend(vec![3u8; 500]);
    let r = c
        .req(Method::PATCH, &loc)
        .header("Content-Range", "100-599")
        .body(vec![3u8; 500])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let d = sha256(&data);
    c.close_upload(&loc, &d).await;
    assert_eq!(c.blob_bytes("trunc", &d).await.unwrap(), data);

    // A monolithic POST whose body ends early (small and large ones take different paths):
    // nothing is stored.
    for len in [10_000usize, 3 << 20] {
        let whole = images::noise(96, len);
        let d = sha256(&whole);
        let path = format!("/v2/trunc/blobs/uploads/?digest={d}");
        send_truncated(&s.url, "POST", &path, len, whole[..len / 2].to_vec()).await;
        assert_eq!(
            c.head(&format!("/v2/trunc/blobs/{d}")).await.status(),
            404,
            "{len}"
        );
        assert!(!s.blob_exists(&d).await, "{len}");
        // The whole body then goes in.
        assert_eq!(c.push_blob("trunc", &whole).await, d);
        assert_eq!(c.blob_bytes("trunc", &d).await.unwrap(), whole);
    }
    assert_eq!(s.stored_uploads().await, 0);
}

async fn deletes_can_be_disabled(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env
        .start_with(&[("REGISTRY_STORAGE_DELETE_ENABLED", "false")])
        .await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[95], 100);
    let d = c.push_image("nodel", "v1", &img).await;
    for path in [
        format!("/v2/nodel/manifests/{d}"),
        "/v2/nodel/manifests/v1".into(),
        format!("/v2/nodel/blobs/{}", sha256(&img.blobs[0])),
    ] {
        let r = c.delete(&path).await;
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(error_code(r).await, "UNSUPPORTED");
    }
    c.pull_and_verify("nodel", "v1").await;
}

async fn concurrent_pushes_of_one_blob(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let data = images::noise(96, 200_000);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = s.client.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                c.push_blob(&format!("conc/r{}", i % 3), &data).await
            } else {
                c.push_blob_chunked(&format!("conc/r{}", i % 3), &data, 30_000)
                    .await
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let d = sha256(&data);
    for r in 0..3 {
        assert_eq!(
            s.client
                .blob_bytes(&format!("conc/r{r}"), &d)
                .await
                .unwrap(),
            data
        );
    }
    assert_eq!(s.blob_object(&d).await, data);
    assert_eq!(s.stored_uploads().await, 0);
}
