//! The races the GC protocol exists for, reached on purpose: fail points pause one side at the
//! exact step (a manifest PUT after its locks, a mount or an upload after it refreshed a link),
//! garbage collection runs into the paused side's locks, and the paused side then finishes.
//! On PostgreSQL each test waits until GC is seen waiting on a row lock (pg_stat_activity),
//! so a pass means the race was reached; on SQLite the paused transaction holds the write
//! lock and GC waits for it at the writer gate. Every test ends by checking that what the
//! client was told is stored is still there.

mod common;

use std::time::Duration;

use common::images::{self, OCI_MANIFEST};
use common::{Backend, TestEnv, TestServer, sha256};
use wharf::gc::Mode;
use wharf::meta::GcPolicy;

backend_tests!(
    manifest_put_against_gc_mark,
    mount_refreshing_a_link_against_gc,
    duplicate_upload_refreshing_a_link_against_gc,
    fsck_orphan_deletion_against_an_upload,
    pushing_again_restores_a_lost_object,
    fsck_repair_makes_clients_push_a_lost_blob_again,
    staged_object_deleted_by_gc_is_placed_again,
);

/// PostgreSQL tests optionally run at another default isolation level (the protocol sets
/// READ COMMITTED itself; the operator's default must not matter).
async fn set_default_isolation(env: &TestEnv, level: &str) {
    let client = common::pg_connect(&env.db.url).await;
    client
        .batch_execute(&format!(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = ''{level}''', current_database()); END $$"
        ))
        .await
        .unwrap();
}

/// Returns once some session of the test's database waits on a lock (PostgreSQL), or after a
/// moment (SQLite, where the waiter queues on the in-process writer gate).
async fn until_someone_waits(env: &TestEnv) {
    if env.backend == Backend::SqliteFs {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return;
    }
    until_waiting(env, 1).await;
}

/// A policy under which everything written until now is old enough to be garbage: a GC run
/// that started now. Rows written (or refreshed) after it are young to that run.
async fn policy_now() -> GcPolicy {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let p = GcPolicy::with_grace(Duration::ZERO, true);
    tokio::time::sleep(Duration::from_millis(5)).await;
    p
}

/// A GC run with `policy`, in the background.
fn gc(s: &TestServer, policy: GcPolicy) -> tokio::task::JoinHandle<wharf::gc::GcReport> {
    let registry = s.registry.clone();
    tokio::spawn(async move {
        registry
            .collect_garbage(policy, Mode::Full, false)
            .await
            .expect("gc run")
    })
}

async fn assert_blob_served(s: &TestServer, repo: &str, data: &[u8]) {
    let d = sha256(data);
    assert!(
        s.blob_exists(&d).await,
        "the object of {d} was deleted although a client was told it is stored"
    );
    let r = s
        .client
        .req(reqwest::Method::GET, &format!("/v2/{repo}/blobs/{d}"))
        .header("Range", format!("bytes=0-{}", data.len() - 1))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "GET {d}: {}", r.status());
    assert_eq!(r.bytes().await.unwrap().as_ref(), data);
}

/// Pushes `data` into `repo` and deletes the repository's link to it: the blob is garbage
/// to the next GC. Returns its digest.
async fn pushed_then_unlinked(s: &TestServer, repo: &str, data: &[u8]) -> String {
    let digest = s.client.push_blob(repo, data).await;
    let r = s.client.delete(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status(), 202);
    digest
}

async fn assert_fsck_clean(s: &TestServer) {
    let r = s.registry.fsck(false, Duration::ZERO).await.unwrap();
    assert!(r.missing.is_empty() && r.size_mismatch.is_empty(), "{r:?}");
}

/// A manifest PUT holds its blobs `FOR SHARE`; GC's mark waits on them; the PUT commits its
/// edges; GC's re-check must see them. At REPEATABLE READ with a plain BEGIN, the re-check ran
/// on the old snapshot and the blobs were deleted under an acknowledged manifest.
async fn manifest_put_against_gc_mark(b: Backend) {
    let env = TestEnv::new(b).await;
    if b != Backend::SqliteFs {
        set_default_isolation(&env, "repeatable read").await;
    }
    let s = env.start().await;
    let repo = format!("race/put-{}", uuid::Uuid::new_v4().simple());
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[41, 42], 3000);
    for blob in &img.blobs {
        s.client.push_blob(&repo, blob).await;
    }

    let policy = policy_now().await;
    let mut pause = wharf::failpoint::arm("manifest_put.locked", &repo);
    let put = {
        let (c, repo, img) = (s.client.clone(), repo.clone(), img.clone());
        tokio::spawn(async move {
            c.put_manifest(&repo, "v1", &img.media_type, &img.manifest)
                .await
                .status()
        })
    };
    pause.reached().await;
    let gc = gc(&s, policy);
    until_someone_waits(&env).await;
    pause.release();

    assert_eq!(put.await.unwrap(), 201);
    let report = gc.await.unwrap();
    assert_eq!(report.blobs_deleted, 0, "{report:?}");
    for blob in &img.blobs {
        assert_blob_served(&s, &repo, blob).await;
    }
    s.client.pull_and_verify(&repo, "v1").await;
    assert_fsck_clean(&s).await;
}

/// A mount into a repository that already links the blob refreshes the link's age; a GC link
/// deletion that waited on it must not delete the refreshed link, and the blob must survive
/// the run: the mount was answered 201, so a manifest pushed now must find the blob.
async fn mount_refreshing_a_link_against_gc(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let repo = format!("race/mount-{}", uuid::Uuid::new_v4().simple());
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[43], 2000);
    for blob in &img.blobs {
        s.client.push_blob(&repo, blob).await;
    }
    // The GC run's cutoff is taken now: the links are old to it, the refresh below is not.
    let policy = policy_now().await;

    let layer = sha256(&img.blobs[1]);
    let mut pause = wharf::failpoint::arm("mount.linked", &repo);
    let mount = {
        let (c, repo, layer) = (s.client.clone(), repo.clone(), layer.clone());
        tokio::spawn(async move {
            c.req(
                reqwest::Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?mount={layer}&from={repo}"),
            )
            .send()
            .await
            .unwrap()
            .status()
        })
    };
    pause.reached().await;
    let gc = gc(&s, policy);
    until_someone_waits(&env).await;
    pause.release();
    assert_eq!(mount.await.unwrap(), 201);
    gc.await.unwrap();

    // Only the mounted layer was protected; the config is pushed again with the manifest.
    s.client.push_blob(&repo, &img.blobs[0]).await;
    let r = s
        .client
        .put_manifest(&repo, "v1", &img.media_type, &img.manifest)
        .await;
    assert_eq!(
        r.status(),
        201,
        "a manifest pushed right after a 201 mount was refused: {}",
        r.text().await.unwrap()
    );
    assert_blob_served(&s, &repo, &img.blobs[1]).await;
    assert_fsck_clean(&s).await;
}

/// The same for a second upload of a blob the repository already links.
async fn duplicate_upload_refreshing_a_link_against_gc(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let repo = format!("race/dup-{}", uuid::Uuid::new_v4().simple());
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[44], 2000);
    for blob in &img.blobs {
        s.client.push_blob(&repo, blob).await;
    }
    let policy = policy_now().await;

    let layer = &img.blobs[1];
    let mut pause = wharf::failpoint::arm("upload.linked", &sha256(layer));
    let upload = {
        let (c, repo, layer) = (s.client.clone(), repo.clone(), layer.clone());
        tokio::spawn(async move { c.push_blob(&repo, &layer).await })
    };
    pause.reached().await;
    let gc = gc(&s, policy);
    until_someone_waits(&env).await;
    pause.release();
    upload.await.unwrap();
    gc.await.unwrap();

    s.client.push_blob(&repo, &img.blobs[0]).await;
    let r = s
        .client
        .put_manifest(&repo, "v1", &img.media_type, &img.manifest)
        .await;
    assert_eq!(
        r.status(),
        201,
        "a manifest pushed right after a 201 upload was refused: {}",
        r.text().await.unwrap()
    );
    assert_blob_served(&s, &repo, layer).await;
    assert_fsck_clean(&s).await;
}

/// fsck lists an object no row knows (an orphan); an upload of the same digest inserts its row
/// and puts the new object in place, and is paused before commit; fsck's delete of the
/// "orphan" must wait for the upload and then leave the object alone.
async fn fsck_orphan_deletion_against_an_upload(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let repo = format!("race/fsck-{}", uuid::Uuid::new_v4().simple());
    let data = images::noise(45, 5000);
    let digest = sha256(&data);
    env.put_raw_blob(&digest, &data).await;

    let mut pause = wharf::failpoint::arm("upload.linked", &digest);
    let upload = {
        let (c, repo, data) = (s.client.clone(), repo.clone(), data.clone());
        tokio::spawn(async move { c.push_blob(&repo, &data).await })
    };
    pause.reached().await;
    let fsck = {
        let registry = s.registry.clone();
        tokio::spawn(async move { registry.fsck(true, Duration::ZERO).await.unwrap() })
    };
    until_someone_waits(&env).await;
    pause.release();
    upload.await.unwrap();
    let report = fsck.await.unwrap();
    assert_eq!(report.orphans_deleted, 0, "{report:?}");
    assert_blob_served(&s, &repo, &data).await;
    assert_fsck_clean(&s).await;

    // A real orphan still goes.
    let orphan = images::noise(46, 100);
    env.put_raw_blob(&sha256(&orphan), &orphan).await;
    let r = s.registry.fsck(true, Duration::ZERO).await.unwrap();
    assert_eq!(r.orphans_deleted, 1, "{r:?}");
    assert!(!s.blob_exists(&sha256(&orphan)).await);
}

/// An object lost behind an active row (reported by fsck) is restored by the next push of the
/// blob; a mount of it is refused (the client then uploads, which restores it too).
async fn pushing_again_restores_a_lost_object(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let repo = format!("heal/{}", uuid::Uuid::new_v4().simple());
    let data = images::noise(47, 7000);
    let digest = sha256(&data);
    s.client.push_blob(&repo, &data).await;
    env.remove_raw_blob(&digest).await;
    let r = s.registry.fsck(false, Duration::ZERO).await.unwrap();
    assert_eq!(r.missing.len(), 1, "{r:?}");

    let mount = s
        .client
        .req(
            reqwest::Method::POST,
            &format!("/v2/other/{repo}/blobs/uploads/?mount={digest}&from={repo}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        mount.status(),
        202,
        "a mount of a lost object must not succeed"
    );

    s.client.push_blob(&repo, &data).await;
    assert_blob_served(&s, &repo, &data).await;
    assert_fsck_clean(&s).await;
}

/// After `fsck --repair` records a lost object, clients that check before they push (HEAD,
/// mount, manifest PUT) are told the blob is not stored, so they send it again; that push
/// restores the object and the blob is whole again.
async fn fsck_repair_makes_clients_push_a_lost_blob_again(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let repo = format!("repair/{}", uuid::Uuid::new_v4().simple());
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[49], 3000);
    s.client.push_image(&repo, "v1", &img).await;
    let lost = &img.blobs[1];
    let digest = sha256(lost);
    env.remove_raw_blob(&digest).await;

    let opts = wharf::fsck::FsckOptions {
        delete_orphans: false,
        min_age: Duration::ZERO,
        repair: true,
    };
    let r = s.registry.fsck_with(opts).await.unwrap();
    assert_eq!((r.missing.len(), r.marked_lost), (1, 1), "{r:?}");
    let head = s.client.head(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(head.status(), 404, "a lost blob must not look stored");
    let again = s
        .client
        .put_manifest(&repo, "v2", &img.media_type, &img.manifest)
        .await;
    assert_eq!(
        again.status(),
        400,
        "a manifest must not be accepted over a lost blob"
    );
    let mount = s
        .client
        .req(
            reqwest::Method::POST,
            &format!("/v2/other/{repo}/blobs/uploads/?mount={digest}&from={repo}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(mount.status(), 202);

    // The client pushes the image again, as it would after those answers.
    s.client.push_image(&repo, "v2", &img).await;
    assert_eq!(
        s.client
            .head(&format!("/v2/{repo}/blobs/{digest}"))
            .await
            .status(),
        200
    );
    s.client.pull_and_verify(&repo, "v1").await;
    assert_fsck_clean(&s).await;
    let r = s.registry.fsck_with(opts).await.unwrap();
    assert_eq!(r.marked_lost, 0, "{r:?}");
}

/// GC's phase 2 holds a `deleting` row's lock while it deletes the object. If its database
/// session ends meanwhile, the lock is gone and an upload of the same digest can revive the
/// row and write the object; the still-running GC must not delete it then.
async fn gc_phase2_lock_lost_against_reupload(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let repo = format!("race/lost-{}", uuid::Uuid::new_v4().simple());
    let data = images::noise(48, 6000);
    let digest = pushed_then_unlinked(&s, &repo, &data).await;
    let policy = policy_now().await;

    let mut pause = wharf::failpoint::arm("gc.deleting_object", &digest);
    let gc = {
        let registry = s.registry.clone();
        tokio::spawn(async move { registry.collect_garbage(policy, Mode::Full, false).await })
    };
    pause.reached().await;
    // The GC's session ends (an idle-in-transaction timeout, a failover, an operator).
    let admin = common::pg_connect(&env.db.url).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND state LIKE 'idle in transaction%') t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        killed, 1,
        "GC's session was not found idle in its transaction"
    );
    // The upload gets the row the lock no longer protects, and writes the object again.
    s.client.push_blob(&repo, &data).await;
    pause.release();
    let result = gc.await.unwrap();
    assert!(result.is_err(), "GC went on without its locks: {result:?}");
    assert_blob_served(&s, &repo, &data).await;
    assert_fsck_clean(&s).await;
}

/// A pushed blob's object is stored (staged) before its row is locked: a small one pushed
/// whole on every backend, an upload's on the filesystem (hard-linked). A GC deleting the
/// blob's old `deleting` row deletes that object meanwhile; the push then gets a fresh row and
/// must see, under its lock, that the object is gone and store it again rather than trust
/// what it staged.
async fn staged_object_deleted_by_gc_is_placed_again(b: Backend) {
    for (seed, chunked) in [(50u64, false), (51, true)] {
        // A store of its own each time: GC must find exactly this blob.
        let env = TestEnv::new(b).await;
        let s = env.start().await;
        let repo = format!("race/staged-{}", uuid::Uuid::new_v4().simple());
        let data = images::noise(seed, 9000);
        let digest = pushed_then_unlinked(&s, &repo, &data).await;
        // A chunked push sends its chunks first (on SQLite a paused GC holds the one writer,
        // which the upload's progress needs); its final PUT is what races.
        let session = if chunked {
            let loc = s.client.start_upload(&repo).await;
            let r = s
                .client
                .req(reqwest::Method::PATCH, &loc)
                .header("Content-Range", format!("0-{}", data.len() - 1))
                .body(data.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            Some(r.headers()["location"].to_str().unwrap().to_string())
        } else {
            None
        };
        let policy = policy_now().await;

        // GC marks the blob and pauses in phase 2, holding its row, before deleting the object.
        let mut gc_pause = wharf::failpoint::arm("gc.deleting_object", &digest);
        let gc = gc(&s, policy);
        gc_pause.reached().await;
        // The push stages (the object is still there) and pauses before locking the row.
        let mut staged = wharf::failpoint::arm("upload.staged", &digest);
        let upload = {
            let (c, repo, data, digest) =
                (s.client.clone(), repo.clone(), data.clone(), digest.clone());
            tokio::spawn(async move {
                match session {
                    Some(loc) => c.close_upload(&loc, &digest).await,
                    None => {
                        c.push_blob(&repo, &data).await;
                    }
                }
            })
        };
        if chunked && env.backend == Backend::PostgresS3 {
            // An S3 upload cannot stage: its object is placed under the row lock only.
            drop(staged);
            gc_pause.release();
            gc.await.unwrap();
            upload.await.unwrap();
        } else {
            staged.reached().await;
            gc_pause.release();
            let report = gc.await.unwrap();
            assert_eq!(report.blobs_deleted, 1, "{report:?}");
            assert!(!s.blob_exists(&digest).await);
            staged.release();
            upload.await.unwrap();
        }
        assert_blob_served(&s, &repo, &data).await;
        assert_fsck_clean(&s).await;
    }
}

/// Returns once `n` sessions of the test's database wait on locks.
async fn until_waiting(env: &TestEnv, n: i64) {
    let client = common::pg_connect(&env.db.url).await;
    for _ in 0..500 {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} sessions never waited on locks together: the race was not reached");
}

/// Deadlocks PostgreSQL counted in the test's database so far.
async fn deadlocks(admin: &tokio_postgres::Client) -> i64 {
    admin
        .execute("SELECT pg_stat_clear_snapshot()", &[])
        .await
        .unwrap();
    admin
        .query_one(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Fails if PostgreSQL counts a deadlock beyond `before` within the next 3 s: one is
/// detected after deadlock_timeout (1 s) and reported to the statistics at the detecting
/// backend's next idle moment.
async fn assert_no_deadlock_since(admin: &tokio_postgres::Client, before: i64, what: &str) {
    for _ in 0..30 {
        assert_eq!(
            deadlocks(admin).await,
            before,
            "a deadlock formed between {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An index PUT locks its children `FOR SHARE` while GC's manifest pass locks the same rows
/// `FOR UPDATE`. Both must take them in one order (by id), or each holds what the other waits
/// for: a deadlock, which PostgreSQL breaks by failing one of them. The children are chosen so
/// that their digest order (the order of the PUT's index scan) is the reverse of their id
/// order; a third session holds the first child so that GC and the PUT queue up behind it.
async fn index_put_and_gc_lock_children_in_one_order(b: Backend, digests_reversed: bool) {
    let env = TestEnv::new(b).await;
    // On a store of real size the PUT reads its children through the (repository, digest)
    // index, i.e. in digest order; on this tiny one the planner would scan the table in id
    // order and hide the problem.
    let client = common::pg_connect(&env.db.url).await;
    client
        .batch_execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET enable_seqscan = off', current_database()); EXECUTE format('ALTER DATABASE %I SET enable_bitmapscan = off', current_database()); END $$",
        )
        .await
        .unwrap();
    let s = env.start().await;
    let repo = format!("race/order-{}", uuid::Uuid::new_v4().simple());
    let img = (0..64)
        .map(|seed| {
            images::multiarch(
                images::OCI_INDEX,
                900 + seed,
                &["linux/amd64", "linux/arm64"],
                1,
                300,
                &[],
            )
        })
        .find(|i| (sha256(&i.children[1].1) < sha256(&i.children[0].1)) == digests_reversed)
        .expect("an index whose children sort the wanted way");
    for blob in &img.blobs {
        s.client.push_blob(&repo, blob).await;
    }
    for (mt, child) in &img.children {
        s.client
            .push_manifest(&repo, &sha256(child), mt, child)
            .await;
    }
    let policy = policy_now().await;

    let mut admin = common::pg_connect(&env.db.url).await;
    let before = deadlocks(&admin).await;
    let holder = admin.transaction().await.unwrap();
    holder
        .execute(
            "SELECT id FROM manifests WHERE digest = $1 FOR UPDATE",
            &[&sha256(&img.children[0].1)],
        )
        .await
        .unwrap();

    let gc = gc(&s, policy);
    until_waiting(&env, 1).await;
    let put = {
        let (c, repo, img) = (s.client.clone(), repo.clone(), img.clone());
        tokio::spawn(async move {
            c.put_manifest(&repo, "v1", &img.media_type, &img.manifest)
                .await
                .status()
        })
    };
    until_waiting(&env, 2).await;
    holder.rollback().await.unwrap();

    let status = put.await.unwrap();
    gc.await.unwrap();
    // GC may have taken the (old, unreferenced) children first; then the index is refused
    // like any index whose children are gone. Never a 500, never a 503.
    assert!(
        status == 201 || status == 400,
        "index PUT answered {status}"
    );
    assert_no_deadlock_since(&admin, before, "the index PUT and GC").await;
    assert_fsck_clean(&s).await;
}

/// Every transaction that queues GC reviews (a manifest DELETE, GC deleting a batch of
/// manifests, a PUT moving a tag, an upload, a mount) locks rows of the review queue. If one
/// took them in the order it met them (GC: the blobs of the first manifest of its batch, then
/// those of the next), two transactions could each hold a row the other waits for. Here blobs
/// sort a < m < z; GC's batch deletes M1 {a, z} then M2 {m} while a client deletes M3 {m, z};
/// a third session holds m's queue row so that the client queues for m first and GC, holding
/// z, queues behind it. Released, the client gets m and needs z: in the order-of-meeting
/// design that is a deadlock, broken by PostgreSQL failing one transaction after 1 s.
async fn review_queue_rows_are_locked_in_one_order(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let repo = format!("race/reviews-{}", uuid::Uuid::new_v4().simple());
    let mut layers: Vec<Vec<u8>> = (0..3).map(|i| images::noise(7100 + i, 300)).collect();
    layers.sort_by_key(|l| sha256(l));
    let (a, m, z) = (&layers[0], &layers[1], &layers[2]);
    let manifest = |seed: u64, layers: &[&Vec<u8>]| {
        let config = images::noise(7200 + seed, 64);
        let descriptors: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(l), "size": l.len(),
                })
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(&config), "size": config.len(),
            },
            "layers": descriptors,
        }))
        .unwrap();
        (config, body)
    };
    let m1 = manifest(1, &[a, z]);
    let m2 = manifest(2, &[m]);
    let m3 = manifest(3, &[m, z]);
    for blob in [a, m, z, &m1.0, &m2.0, &m3.0] {
        s.client.push_blob(&repo, blob).await;
    }
    // M1 before M2 (GC's batch goes by id); M3 tagged, so GC does not take it.
    s.client
        .push_manifest(&repo, &sha256(&m1.1), OCI_MANIFEST, &m1.1)
        .await;
    s.client
        .push_manifest(&repo, &sha256(&m2.1), OCI_MANIFEST, &m2.1)
        .await;
    s.client
        .push_manifest(&repo, "keep", OCI_MANIFEST, &m3.1)
        .await;
    let policy = policy_now().await;

    let mut admin = common::pg_connect(&env.db.url).await;
    let before = deadlocks(&admin).await;
    let holder = admin.transaction().await.unwrap();
    let held = holder
        .execute(
            "SELECT 1 FROM gc_blob_reviews WHERE blob_digest = $1 FOR UPDATE",
            &[&sha256(m)],
        )
        .await
        .unwrap();
    assert_eq!(held, 1, "the upload queued m for review");

    let delete = {
        let (c, path) = (
            s.client.clone(),
            format!("/v2/{repo}/manifests/{}", sha256(&m3.1)),
        );
        tokio::spawn(async move { c.delete(&path).await.status() })
    };
    until_waiting(&env, 1).await;
    let gc = gc(&s, policy);
    until_waiting(&env, 2).await;
    holder.rollback().await.unwrap();

    assert_eq!(delete.await.unwrap(), 202);
    let report = gc.await.unwrap();
    assert!(report.manifests_deleted >= 2, "{report:?}");
    assert_no_deadlock_since(&admin, before, "the manifest DELETE and GC").await;
    assert_fsck_clean(&s).await;
}

mod postgres_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn index_put_and_gc_lock_children_in_one_order_digests_reversed() {
        index_put_and_gc_lock_children_in_one_order(Backend::PostgresFs, true).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn index_put_and_gc_lock_children_in_one_order_digests_in_id_order() {
        index_put_and_gc_lock_children_in_one_order(Backend::PostgresFs, false).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn review_queue_rows_are_locked_in_one_order() {
        super::review_queue_rows_are_locked_in_one_order(Backend::PostgresFs).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gc_phase2_lock_lost_against_reupload_fs() {
        gc_phase2_lock_lost_against_reupload(Backend::PostgresFs).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gc_phase2_lock_lost_against_reupload_s3() {
        gc_phase2_lock_lost_against_reupload(Backend::PostgresS3).await
    }
}
