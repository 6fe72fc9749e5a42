//! What only the S3 driver does: redirects to presigned URLs (and the switch that turns them
//! off), and blobs of any size pushed in chunks of any size. The rest of the suite runs on S3
//! through the `postgres_s3` backend of every other test file.

mod common;

use common::images::{self, OCI_MANIFEST};
use common::{Backend, TestEnv, sha256, with_query};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_gets_redirect_to_storage_unless_disabled() {
    let env = TestEnv::new(Backend::PostgresS3).await;
    let bucket = env.s3.as_ref().unwrap().bucket.clone();
    let s = env.start().await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[1], 100_000);
    c.push_image("redir/app", "v1", &img).await;
    let layer = sha256(&img.blobs[1]);

    let r = c.get(&format!("/v2/redir/app/blobs/{layer}")).await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    // Path-style, because a custom endpoint is configured: endpoint/bucket/key.
    let expected_prefix = format!(
        "{}/{bucket}/registry/docker/registry/v2/blobs/sha256/{}/",
        env.s3.as_ref().unwrap().endpoint,
        &layer[7..9]
    );
    assert!(location.starts_with(&expected_prefix), "{location}");
    assert!(
        location.contains("X-Amz-Expires=1200"),
        "default expiry 20m: {location}"
    );
    let body = c
        .http
        .get(&location)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&body), layer);
    // HEAD, ranges and manifests are answered directly.
    assert_eq!(
        c.head(&format!("/v2/redir/app/blobs/{layer}"))
            .await
            .status(),
        200
    );
    let r = c
        .req(Method::GET, &format!("/v2/redir/app/blobs/{layer}"))
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &img.blobs[1][..10]);
    assert_eq!(c.get("/v2/redir/app/manifests/v1").await.status(), 200);
    s.stop().await;

    let s = env
        .start_with(&[
            ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true"),
            ("REGISTRY_STORAGE_REDIRECT_EXPIRY", "5m"),
        ])
        .await;
    let r = s.client.get(&format!("/v2/redir/app/blobs/{layer}")).await;
    assert_eq!(
        r.status(),
        200,
        "redirect.disable serves the bytes through wharf"
    );
    assert_eq!(sha256(&r.bytes().await.unwrap()), layer);
}

/// Chunk `i` of the large blob: deterministic, so the test never holds the whole blob.
fn chunk(i: u64, len: usize) -> Vec<u8> {
    images::noise(1_000_000 + i, len)
}

/// A 2 GiB blob pushed as 2048 PATCH chunks of 1 MiB each: every part boundary falls inside
/// some chunk, small chunks accumulate as segments, and the result is copied with a multipart
/// copy (it is far above the copy threshold). Verified by streaming it back through the
/// redirect and hashing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gib_blob_in_one_mib_chunks() {
    let env = TestEnv::new(Backend::PostgresS3).await;
    // Large copy parts: moto re-reads the whole source object for every UploadPartCopy (S3
    // itself copies server-side), and 410 copies of a 2 GiB object would take minutes.
    let s = env
        .start_with(&[("REGISTRY_STORAGE_S3_MULTIPARTCOPYCHUNKSIZE", "512M")])
        .await;
    let c = &s.client;
    const MIB: usize = 1 << 20;
    let chunks: u64 = std::env::var("WHARF_TEST_LARGE_BLOB_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let mut hasher = Sha256::new();
    let mut loc = c.start_upload("large/blob").await;
    for i in 0..chunks {
        let data = chunk(i, MIB);
        hasher.update(&data);
        let start = i as usize * MIB;
        let r = c
            .req(Method::PATCH, &loc)
            .header("Content-Range", format!("{}-{}", start, start + MIB - 1))
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "chunk {i}");
        loc = r.headers()["location"].to_str().unwrap().to_string();
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let r = c
        .req(Method::PUT, &with_query(&loc, &format!("digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let size = chunks * MIB as u64;
    let r = c.head(&format!("/v2/large/blob/blobs/{digest}")).await;
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        size.to_string()
    );
    // Stream it back (through the redirect) and hash it.
    let r = c.get(&format!("/v2/large/blob/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = c.http.get(location).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut back = Sha256::new();
    let mut n = 0u64;
    while let Some(piece) = stream.next().await {
        let piece = piece.unwrap();
        n += piece.len() as u64;
        back.update(&piece);
    }
    assert_eq!(n, size);
    assert_eq!(format!("sha256:{}", hex::encode(back.finalize())), digest);
    assert_eq!(
        s.stored_uploads().await,
        0,
        "no segments or multipart uploads left behind"
    );
}
