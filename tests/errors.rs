//! Errors from the layers below the API keep their meaning on the way out: a database that is
//! busy answers a retryable 503 with Retry-After (never a 500), and an object missing behind
//! a stored blob's row is reported loudly as data loss.

mod common;

use common::{Backend, TestEnv, error_code};

backend_tests!(missing_object_behind_a_row_is_counted);

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
    let (admin, conn) = tokio_postgres::connect(&env.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
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

    let (mut locker, conn) = tokio_postgres::connect(&env.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
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
