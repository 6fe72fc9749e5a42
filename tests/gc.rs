//! Online garbage collection: what goes, what stays, and that nothing referenced is ever lost
//! while pushes, deletes and GC runs overlap.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::images::{self, OCI_INDEX, OCI_MANIFEST};
use common::{Backend, TestEnv, TestServer, sha256};
use wharf::gc::{self, GcReport};
use wharf::meta::GcPolicy;

backend_tests!(
    tagged_multiarch_keeps_everything_then_goes_when_untagged,
    referrers_live_and_die_with_their_subject,
    dry_run_matches_the_real_run,
    grace_period_and_untagged_policy,
    queue_slices_pass_young_entries_and_drain_the_backlog,
    fsck_finds_orphans_and_missing_objects,
    torture_concurrent_pushes_deletes_and_gc,
);

fn now_policy(delete_untagged: bool) -> GcPolicy {
    GcPolicy::with_grace(Duration::ZERO, delete_untagged)
}

async fn collect(s: &TestServer, delete_untagged: bool) -> GcReport {
    // Rows must be strictly older than the cutoff.
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.registry
        .collect_garbage(now_policy(delete_untagged), gc::Mode::Full, false)
        .await
        .unwrap()
}

fn blob_set(r: &GcReport) -> BTreeSet<String> {
    r.blobs.iter().map(|b| b.digest.clone()).collect()
}

fn manifest_set(r: &GcReport) -> BTreeSet<(String, String)> {
    r.manifests
        .iter()
        .map(|m| (m.repository.clone(), m.digest.clone()))
        .collect()
}

async fn tagged_multiarch_keeps_everything_then_goes_when_untagged(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    // Two tagged images sharing one layer (seed 1000); the index has two platforms with
    // distinct layers.
    let multi = images::multiarch(
        OCI_INDEX,
        10,
        &["linux/amd64", "linux/arm64"],
        2,
        5000,
        &[1000],
    );
    let other = images::single(OCI_MANIFEST, "linux/amd64", &[1000, 1001], 5000);
    c.push_image("app", "multi", &multi).await;
    c.push_image("app", "other", &other).await;

    let r = collect(&s, true).await;
    assert_eq!(r.manifests_deleted, 0, "{:?}", r.manifests);
    assert_eq!(r.blobs_deleted, 0, "{:?}", r.blobs);
    c.pull_and_verify("app", "multi").await;
    c.pull_and_verify("app", "other").await;
    for blob in &multi.blobs {
        assert!(s.blob_exists(&sha256(blob)).await);
    }

    // Untag the index: it, its two children and every blob only they use go.
    assert_eq!(c.delete("/v2/app/manifests/multi").await.status(), 202);
    let r = collect(&s, true).await;
    let expected_manifests: BTreeSet<_> = std::iter::once(multi.digest())
        .chain(multi.children.iter().map(|(_, m)| sha256(m)))
        .map(|d| ("app".to_string(), d))
        .collect();
    assert_eq!(manifest_set(&r), expected_manifests);
    let shared = sha256(&images::layer(1000, 5000));
    let other_blobs: BTreeSet<String> = other.blob_digests().into_iter().collect();
    let expected_blobs: BTreeSet<String> = multi
        .blob_digests()
        .into_iter()
        .filter(|d| !other_blobs.contains(d))
        .collect();
    assert_eq!(blob_set(&r), expected_blobs);
    assert!(!expected_blobs.contains(&shared));
    assert_eq!(
        r.bytes_freed,
        multi
            .blobs
            .iter()
            .filter(|b| !other_blobs.contains(&sha256(b)))
            .map(|b| b.len() as u64)
            .sum::<u64>()
    );
    for d in &expected_blobs {
        assert!(!s.blob_exists(d).await, "object {d} deleted");
        assert_eq!(c.head(&format!("/v2/app/blobs/{d}")).await.status(), 404);
    }
    for (_, d) in &expected_manifests {
        assert_eq!(c.get(&format!("/v2/app/manifests/{d}")).await.status(), 404);
    }
    // The shared layer and the other image are intact.
    assert!(s.blob_exists(&shared).await);
    c.pull_and_verify("app", "other").await;
    let fsck = s.registry.fsck(false, Duration::ZERO).await.unwrap();
    assert!(fsck.is_clean() && fsck.orphans.is_empty(), "{fsck:?}");

    // Nothing left to do.
    let r = collect(&s, true).await;
    assert_eq!((r.manifests_deleted, r.blobs_deleted), (0, 0));
}

async fn referrers_live_and_die_with_their_subject(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[2000], 3000);
    let subject = c.push_image("signed", "v1", &img).await;
    let sig = images::referrer(
        "application/vnd.dev.cosign.signature",
        OCI_MANIFEST,
        &img.manifest,
        1,
    );
    c.push_image("signed", &sig.digest(), &sig).await;

    let r = collect(&s, true).await;
    assert_eq!(
        r.manifests_deleted, 0,
        "an untagged referrer stays while its subject does"
    );
    let index: serde_json::Value = c
        .get(&format!("/v2/signed/referrers/{subject}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    c.pull_and_verify("signed", &sig.digest()).await;

    assert_eq!(c.delete("/v2/signed/manifests/v1").await.status(), 202);
    let r = collect(&s, true).await;
    let expected: BTreeSet<_> = [subject.clone(), sig.digest()]
        .into_iter()
        .map(|d| ("signed".to_string(), d))
        .collect();
    assert_eq!(
        manifest_set(&r),
        expected,
        "the signature went with its image"
    );
    for blob in img.blobs.iter().chain(&sig.blobs) {
        assert!(!s.blob_exists(&sha256(blob)).await);
    }

    // Even without delete_untagged, a referrer whose subject was deleted goes.
    let img2 = images::single(OCI_MANIFEST, "linux/amd64", &[2001], 100);
    let subject2 = c.push_image("signed", "v2", &img2).await;
    let sig2 = images::referrer(
        "application/vnd.example.sig",
        OCI_MANIFEST,
        &img2.manifest,
        2,
    );
    c.push_image("signed", &sig2.digest(), &sig2).await;
    assert_eq!(
        c.delete(&format!("/v2/signed/manifests/{subject2}"))
            .await
            .status(),
        202
    );
    let r = collect(&s, false).await;
    assert_eq!(
        manifest_set(&r),
        [("signed".to_string(), sig2.digest())]
            .into_iter()
            .collect()
    );
}

async fn dry_run_matches_the_real_run(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    // A mix: kept and dropped indexes, nested referrers, shared layers across repositories,
    // untagged manifests, a blob uploaded and never used, an index of indexes.
    let keep = images::multiarch(
        OCI_INDEX,
        30,
        &["linux/amd64", "linux/arm64"],
        1,
        1000,
        &[3000],
    );
    let drop = images::multiarch(
        OCI_INDEX,
        31,
        &["linux/amd64", "linux/arm64"],
        1,
        1000,
        &[3000],
    );
    c.push_image("mix/a", "keep", &keep).await;
    c.push_image("mix/a", "drop", &drop).await;
    c.push_image("mix/b", "drop", &drop).await;
    c.push_image("mix/b", "keep", &keep).await;
    let sig = images::referrer("application/x.sig", OCI_INDEX, &drop.manifest, 5);
    c.push_image("mix/a", &sig.digest(), &sig).await;
    let sig_of_sig = images::referrer("application/x.sig", OCI_MANIFEST, &sig.manifest, 6);
    c.push_image("mix/a", &sig_of_sig.digest(), &sig_of_sig)
        .await;
    let loose = images::single(OCI_MANIFEST, "linux/amd64", &[3001], 500);
    c.push_image("mix/a", &loose.digest(), &loose).await;
    c.push_blob("mix/c", &images::noise(3002, 700)).await;
    // An index whose child is itself an index.
    let outer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": keep.digest(), "size": keep.manifest.len()}]
    }))
    .unwrap();
    c.push_manifest("mix/a", "outer", OCI_INDEX, &outer).await;
    assert_eq!(c.delete("/v2/mix/a/manifests/drop").await.status(), 202);
    assert_eq!(c.delete("/v2/mix/a/manifests/keep").await.status(), 202); // still listed by "outer"
    assert_eq!(c.delete("/v2/mix/b/manifests/drop").await.status(), 202);

    tokio::time::sleep(Duration::from_millis(5)).await;
    let policy = now_policy(true);
    let plan = s
        .registry
        .collect_garbage(policy, gc::Mode::Full, true)
        .await
        .unwrap();
    assert!(plan.dry_run);
    // The dry run changed nothing.
    let again = s
        .registry
        .collect_garbage(policy, gc::Mode::Full, true)
        .await
        .unwrap();
    assert_eq!(manifest_set(&plan), manifest_set(&again));
    c.pull_and_verify("mix/a", &drop.digest()).await;

    // The review queue alone finds exactly the plan: every event that made garbage queued it.
    let real = s
        .registry
        .collect_garbage(policy, gc::Mode::Queue, false)
        .await
        .unwrap();
    assert_eq!(manifest_set(&plan), manifest_set(&real));
    assert_eq!(blob_set(&plan), blob_set(&real));
    assert_eq!(plan.links_deleted, real.links_deleted);
    assert_eq!(plan.bytes_freed, real.bytes_freed);
    let full = s
        .registry
        .collect_garbage(policy, gc::Mode::Full, false)
        .await
        .unwrap();
    assert_eq!(
        (
            full.manifests_deleted,
            full.links_deleted,
            full.blobs_deleted
        ),
        (0, 0, 0),
        "{full:?}"
    );
    // What is left in the queue is only what is still referenced or too young.
    let plan_after = s
        .registry
        .collect_garbage(policy, gc::Mode::Full, true)
        .await
        .unwrap();
    assert_eq!(plan_after.manifests_deleted + plan_after.blobs_deleted, 0);
    // drop (2 repos × index + 2 children), sig, sig_of_sig, loose.
    assert_eq!(real.manifests_deleted, 2 * 3 + 3, "{:?}", real.manifests);
    c.pull_and_verify("mix/a", "outer").await;
    c.pull_and_verify("mix/b", "keep").await;
    assert_eq!(
        c.head(&format!(
            "/v2/mix/c/blobs/{}",
            sha256(&images::noise(3002, 700))
        ))
        .await
        .status(),
        404
    );
}

async fn grace_period_and_untagged_policy(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let img = images::single(OCI_MANIFEST, "linux/amd64", &[4000], 100);
    let d = c.push_image("grace", &img.digest(), &img).await; // untagged
    c.push_blob("grace", &images::noise(4001, 100)).await; // never referenced

    let r = s
        .registry
        .collect_garbage(
            GcPolicy::with_grace(Duration::from_secs(3600), true),
            gc::Mode::Full,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        (r.manifests_deleted, r.links_deleted, r.blobs_deleted),
        (0, 0, 0),
        "young rows stay"
    );
    let r = collect(&s, false).await;
    assert_eq!(
        r.manifests_deleted, 0,
        "untagged manifests stay without deleteuntagged"
    );
    assert_eq!(r.blobs_deleted, 1, "the unreferenced blob goes");
    c.pull_and_verify("grace", &d).await;
    let r = collect(&s, true).await;
    assert_eq!(r.manifests_deleted, 1);
    assert_eq!(r.blobs_deleted, img.blobs.len() as u64);
}

/// The server's queue runs are slices with a time budget. A slice that meets entries it must
/// keep (unreferenced but too young) moves them out of the way, so the next slice reaches the
/// garbage behind them; and a backlog drains over several slices, each one batch long here.
async fn queue_slices_pass_young_entries_and_drain_the_backlog(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    // Old garbage: an untagged image, queued when pushed (due = its push time).
    let old = images::single(OCI_MANIFEST, "linux/amd64", &[5000], 300);
    let old_digest = c.push_image("slices", &old.digest(), &old).await;
    let loose = images::noise(5002, 200); // and an old blob nothing references
    c.push_blob("slices", &loose).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = wharf::meta::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // More than one batch (200) of young garbage queued ahead of it: tagged, then untagged,
    // which queues each with due 0. Variants of one image (an annotation each) share its blobs.
    let young = images::single(OCI_MANIFEST, "linux/amd64", &[5001], 300);
    c.push_image("slices", "young", &young).await;
    let mut template: serde_json::Value = serde_json::from_slice(&young.manifest).unwrap();
    const YOUNG: usize = 230;
    for i in 0..YOUNG {
        template["annotations"] = serde_json::json!({ "n": i.to_string() });
        let body = serde_json::to_vec(&template).unwrap();
        c.push_manifest("slices", &format!("v{i}"), OCI_MANIFEST, &body)
            .await;
        assert_eq!(
            c.delete(&format!("/v2/slices/manifests/v{i}"))
                .await
                .status(),
            202
        );
    }
    assert_eq!(c.delete("/v2/slices/manifests/young").await.status(), 202);
    // The same for blobs: a deleted manifest queues its blobs with due 0, and these are young.
    let layers: Vec<u64> = (6000..6000 + YOUNG as u64).collect();
    let many = images::single(OCI_MANIFEST, "linux/amd64", &layers, 50);
    c.push_image("slices", "many", &many).await;
    assert_eq!(
        c.delete(&format!("/v2/slices/manifests/{}", many.digest()))
            .await
            .status(),
        202
    );

    let policy = GcPolicy {
        cutoff_ms: cutoff,
        delete_untagged: true,
    };
    let mut slices = Vec::new();
    loop {
        let r = s
            .registry
            .collect_garbage_slice(policy, Duration::ZERO)
            .await
            .unwrap();
        let unfinished = r.unfinished;
        slices.push(r);
        if !unfinished {
            break;
        }
        assert!(
            slices.len() < 20,
            "the slices never got past the young entries: {:?}",
            slices
                .iter()
                .map(|r| (r.candidates_examined, r.manifests_deleted, r.blobs_deleted))
                .collect::<Vec<_>>()
        );
    }
    assert!(slices.len() >= 2, "one batch per slice: {}", slices.len());
    let manifests: Vec<_> = slices.iter().flat_map(manifest_set).collect();
    assert_eq!(manifests, vec![("slices".to_string(), old_digest.clone())]);
    let blobs: BTreeSet<String> = slices.iter().flat_map(blob_set).collect();
    let mut expected: BTreeSet<String> = old.blob_digests().into_iter().collect();
    expected.insert(sha256(&loose));
    assert_eq!(blobs, expected);
    assert_eq!(
        c.get(&format!("/v2/slices/manifests/{old_digest}"))
            .await
            .status(),
        404
    );

    // The young entries stayed queued: once they are old enough, the queue alone finds them.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = s
        .registry
        .collect_garbage(now_policy(true), gc::Mode::Queue, false)
        .await
        .unwrap();
    assert_eq!(r.manifests_deleted as usize, YOUNG + 1, "{:?}", r.manifests);
    let expected: BTreeSet<String> = young
        .blob_digests()
        .into_iter()
        .chain(many.blob_digests())
        .collect();
    assert_eq!(blob_set(&r), expected);
    let full = collect(&s, true).await;
    assert_eq!((full.manifests_deleted, full.blobs_deleted), (0, 0));
}

async fn fsck_finds_orphans_and_missing_objects(b: Backend) {
    let env = TestEnv::new(b).await;
    let s = env.start().await;
    let c = &s.client;
    let kept = c.push_blob("f", &images::noise(5000, 100)).await;
    let lost = c.push_blob("f", &images::noise(5001, 100)).await;
    env.remove_raw_blob(&lost).await;
    let orphan = images::noise(5002, 50);
    let od = sha256(&orphan);
    env.put_raw_blob(&od, &orphan).await;

    let r = s
        .registry
        .fsck(true, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        r.missing
            .iter()
            .map(|b| b.digest.clone())
            .collect::<Vec<_>>(),
        vec![lost.clone()]
    );
    assert_eq!(r.orphans.len(), 1);
    assert_eq!(
        r.orphans_deleted, 0,
        "a young orphan may be an upload committing now"
    );
    assert!(s.blob_exists(&od).await);
    let r = s.registry.fsck(true, Duration::ZERO).await.unwrap();
    assert_eq!(r.orphans_deleted, 1);
    assert!(!s.blob_exists(&od).await);
    assert!(!r.is_clean(), "a missing object is never clean");
    assert!(s.blob_exists(&kept).await);
}

/// Several clients push multi-arch images sharing layers, delete tags and push the same
/// content again, while GC runs continuously (every 20 ms inside the server, and in a loop
/// from a second process). The grace period is 500 ms: with none, the collector may take a
/// push's blobs before its manifest arrives on every attempt (the registry then refuses the
/// manifest, correctly, and the client never gets through). 500 ms is shorter than anything
/// an operator would configure, so untagged images are collected while clients are re-pushing
/// the very same blobs: marks race uploads, deletions race manifest PUTs and mounts. A push may
/// be refused and retried; every tag that was acknowledged must pull completely, during the
/// run and after it, and storage and database must agree at the end.
async fn torture_concurrent_pushes_deletes_and_gc(b: Backend) {
    let env = TestEnv::new(b).await;
    // S3 round trips make a push take longer; the grace period must stay above that.
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
    let deadlocks_before = pg_deadlocks(&env).await;
    // Another GC in a separate process, looping.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc_thread = {
        let stop = stop.clone();
        let vars = env.env_vars();
        std::thread::spawn(move || {
            let mut runs = 0;
            let mut deleted_blobs = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
                    .args(["gc", "--json"])
                    .envs(vars.clone())
                    .env("REGISTRY_GC_GRACEPERIOD", grace)
                    .env("REGISTRY_LOG_LEVEL", "error")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "wharf gc failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                deleted_blobs += report["blobs_deleted"].as_u64().unwrap();
                runs += 1;
            }
            (runs, deleted_blobs)
        })
    };

    let clients = 4u64;
    let rounds = 8u64;
    let stats = std::sync::Arc::new(common::PushStats::default());
    let mut tasks = Vec::new();
    for client_id in 0..clients {
        let c = s.client.clone();
        let stats = stats.clone();
        tasks.push(tokio::spawn(async move {
            let repo = format!("torture/r{}", client_id % 2);
            let mut live: Vec<(String, images::Image)> = Vec::new();
            let mut refused = 0;
            for round in 0..rounds {
                // Three images per client, pushed again and again: content that was just
                // untagged comes back while the collector is taking it. Layer 9000+k is shared
                // by every client's image k.
                let k = round % 3;
                let img = images::multiarch(
                    OCI_INDEX,
                    10_000 + client_id * 10 + k,
                    &["linux/amd64", "linux/arm64"],
                    1,
                    20_000,
                    &[9000 + k],
                );
                let tag = format!("c{client_id}-r{round}");
                if client_id < 2 {
                    refused += c.push_image_retrying(&repo, &tag, &img).await;
                } else {
                    // These trust the registry: HEAD-then-skip, and mounts from the other
                    // repository (which pushes the same shared layers).
                    let other = format!("torture/r{}", (client_id + 1) % 2);
                    c.push_image_thrifty(&repo, &other, &tag, &img, &stats)
                        .await;
                }
                c.pull_and_verify(&repo, &tag).await;
                live.push((tag, img));
                if live.len() > 1 {
                    let (old, _) = live.remove(0);
                    assert_eq!(
                        c.delete(&format!("/v2/{repo}/manifests/{old}"))
                            .await
                            .status(),
                        202
                    );
                }
                for (t, _) in &live {
                    c.pull_and_verify(&repo, t).await;
                }
                // Let the collector catch up with what was just untagged.
                tokio::time::sleep(Duration::from_millis(
                    grace_ms * 3 / 10 + 75 * (client_id % 3),
                ))
                .await;
            }
            (repo, live, refused)
        }));
    }
    let mut survivors = Vec::new();
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(v) => survivors.push(v),
            Err(e) => failure = Some(e),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (gc_runs, external_deleted) = gc_thread.join().unwrap();
    if let Some(e) = failure {
        std::panic::resume_unwind(e.into_panic());
    }
    assert!(gc_runs > 0);

    tokio::time::sleep(Duration::from_millis(grace_ms + 50)).await;
    let last = s
        .registry
        .collect_garbage(
            GcPolicy::with_grace(Duration::from_millis(grace_ms), true),
            gc::Mode::Full,
            false,
        )
        .await
        .unwrap();
    let mut referenced = BTreeSet::new();
    for (repo, tags, _) in &survivors {
        for (t, img) in tags {
            s.client.pull_and_verify(repo, t).await;
            referenced.extend(img.blob_digests());
        }
    }
    let fsck = s.registry.fsck(false, Duration::ZERO).await.unwrap();
    assert!(
        fsck.missing.is_empty() && fsck.size_mismatch.is_empty(),
        "{fsck:?}"
    );
    assert!(
        fsck.orphans.is_empty(),
        "storage holds objects the database does not know: {fsck:?}"
    );
    let refused: u32 = survivors.iter().map(|s| s.2).sum();
    // Exactly what the surviving tags reference is left: everything else was collected.
    let stored: BTreeSet<String> = s
        .meta
        .all_blobs()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.digest.to_string())
        .collect();
    assert_eq!(
        stored, referenced,
        "after the last run ({} blobs deleted by it)",
        last.blobs_deleted
    );
    eprintln!(
        "torture: {gc_runs} external GC runs deleting {external_deleted} blobs, {refused} pushes refused and retried, {} blobs stored at the end; thrifty clients: {stats:?}",
        fsck.rows
    );
    assert_eq!(
        pg_deadlocks(&env).await,
        deadlocks_before,
        "PostgreSQL detected a deadlock during the run"
    );
    use std::sync::atomic::Ordering::Relaxed;
    // Whether a HEAD found the blob or a mount succeeded depends on what GC had taken: the
    // counts are printed above; the thrifty path itself must have run.
    assert!(
        stats.skipped_after_head.load(Relaxed)
            + stats.mounted.load(Relaxed)
            + stats.mount_fell_back.load(Relaxed)
            > 0,
        "the thrifty clients never checked a blob before pushing it"
    );
}

/// Deadlocks PostgreSQL detected in the test's database so far (None on SQLite).
async fn pg_deadlocks(env: &TestEnv) -> Option<i64> {
    if env.backend == Backend::SqliteFs {
        return None;
    }
    let client = common::pg_connect(&env.db.url).await;
    // Backends report to the statistics when idle, at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .execute("SELECT pg_stat_clear_snapshot()", &[])
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    Some(row.get(0))
}
