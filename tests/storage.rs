//! The storage driver conformance suite: one contract, every driver (filesystem and S3, the
//! latter against the local S3 server `scripts/test` starts). Distribution's driver test suite
//! is the model: objects written through uploads, read whole and in ranges, stat'ed, listed
//! and deleted; uploads in pieces of every size, resumed by another driver instance from the
//! saved state, failing half way, and committed twice at once.

mod common;

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use wharf::config::Config;
use wharf::oci::{Digest, UploadId};
use wharf::storage::{BlobStore, StorageErrorKind};

use common::TestBucket;

#[derive(Clone, Copy, Debug)]
enum Driver {
    Filesystem,
    S3,
}

/// A driver on a fresh store; `reopen` gives another instance on the same store (as another
/// replica, or the same one after a restart, would have).
struct Store {
    config: Config,
    driver: Arc<dyn BlobStore>,
    _dir: tempfile::TempDir,
}

impl Store {
    async fn new(kind: Driver) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![(
            "WHARF_DATABASE_URL".to_string(),
            format!("sqlite://{}", dir.path().join("unused.db").display()),
        )];
        match kind {
            Driver::Filesystem => env.push((
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".into(),
                dir.path().join("storage").display().to_string(),
            )),
            Driver::S3 => {
                let b = TestBucket::create().await;
                let (key, secret) = common::s3_credentials();
                for (k, v) in [
                    ("BUCKET", b.bucket.as_str()),
                    ("REGIONENDPOINT", b.endpoint.as_str()),
                    ("ACCESSKEY", key.as_str()),
                    ("SECRETKEY", secret.as_str()),
                    ("ROOTDIRECTORY", "/conf"),
                    // The smallest parts S3 allows, so that pieces cross part boundaries.
                    ("CHUNKSIZE", "5M"),
                    ("MULTIPARTCOPYTHRESHOLDSIZE", "6M"),
                    ("MULTIPARTCOPYCHUNKSIZE", "5M"),
                ] {
                    env.push((format!("REGISTRY_STORAGE_S3_{k}"), v.to_string()));
                }
            }
        }
        let config = Config::load(None, env).unwrap();
        let driver = wharf::storage::open(&config).await.unwrap();
        Store {
            config,
            driver,
            _dir: dir,
        }
    }

    async fn reopen(&self) -> Arc<dyn BlobStore> {
        wharf::storage::open(&self.config).await.unwrap()
    }
}

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[0] ^ seed)
        .collect()
}

/// An upload's progress as the database would keep it.
#[derive(Clone, Default)]
struct Progress {
    state: String,
    size: u64,
}

/// One request appending `piece` (as `chunks` body chunks) to the upload.
async fn append(
    store: &dyn BlobStore,
    id: &UploadId,
    at: &mut Progress,
    piece: &[u8],
) -> wharf::storage::StorageResult<()> {
    let mut w = store.open_upload(id).await?;
    let chunks: Vec<io::Result<Bytes>> = piece
        .chunks(64 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut body = futures_util::stream::iter(chunks);
    let appended = w.append(&at.state, at.size, &mut body).await?;
    assert_eq!(appended.written, piece.len() as u64);
    at.size += appended.written;
    at.state = appended.state;
    Ok(())
}

async fn commit(store: &dyn BlobStore, id: &UploadId, at: &Progress, digest: &Digest) {
    let mut w = store.open_upload(id).await.unwrap();
    w.commit(&at.state, at.size, digest).await.unwrap();
}

/// Uploads `content` in the given pieces and commits it; returns its digest.
async fn put(store: &dyn BlobStore, content: &[u8], pieces: &[usize]) -> Digest {
    let id = UploadId::generate();
    let mut at = Progress::default();
    let mut rest = content;
    for &n in pieces {
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        append(store, &id, &mut at, piece).await.unwrap();
        rest = tail;
    }
    if !rest.is_empty() {
        append(store, &id, &mut at, rest).await.unwrap();
    }
    let digest = Digest::of(content);
    commit(store, &id, &at, &digest).await;
    digest
}

async fn read(store: &dyn BlobStore, digest: &Digest, start: u64, len: u64) -> Vec<u8> {
    let mut s = store.blob_read(digest, start, len).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn put_get_range_stat_delete(kind: Driver) {
    let store = Store::new(kind).await;
    let s = store.driver.as_ref();
    s.check().await.unwrap();
    for len in [0usize, 1, 4096, 300 << 10] {
        let content = data(len as u8, len);
        let d = put(s, &content, &[]).await;
        assert_eq!(s.blob_stat(&d).await.unwrap(), Some(len as u64), "{len}");
        assert_eq!(read(s, &d, 0, len as u64).await, content, "{len} whole");
        if len > 2 {
            let l = len as u64;
            assert_eq!(read(s, &d, 0, 1).await, content[..1]);
            assert_eq!(read(s, &d, l - 1, 1).await, content[len - 1..]);
            assert_eq!(
                read(s, &d, 1, l - 2).await,
                content[1..len - 1],
                "{len} middle"
            );
        }
        s.blob_delete(&d).await.unwrap();
        assert_eq!(s.blob_stat(&d).await.unwrap(), None);
        // A missing object is NotFound for reads and no error for deletes.
        let err = s
            .blob_read(&d, 0, 1)
            .await
            .err()
            .expect("read of a deleted blob");
        assert_eq!(err.kind(), StorageErrorKind::NotFound, "{err}");
        s.blob_delete(&d).await.unwrap();
    }
}

async fn uploads_in_pieces_of_every_size(kind: Driver) {
    let store = Store::new(kind).await;
    let s = store.driver.as_ref();
    const MIB: usize = 1 << 20;
    // Around every boundary a driver has: tiny pieces, S3's 5 MiB minimum part, and pieces
    // that complete a part and start the next.
    let pieces = [
        1,
        7,
        4096,
        0,
        65_536,
        5 * MIB - 1,
        1,
        5 * MIB,
        5 * MIB + 1,
        3,
        2 * MIB,
    ];
    let total: usize = pieces.iter().sum();
    let content = data(3, total);
    let d = put(s, &content, &pieces).await;
    assert_eq!(s.blob_stat(&d).await.unwrap(), Some(total as u64));
    let back = read(s, &d, 0, total as u64).await;
    assert!(back == content, "content differs after a pieced upload");
    assert_eq!(Digest::of(&back), d);
    // One request bigger than two parts.
    let big = data(4, 12 * MIB + 5);
    let d = put(s, &big, &[big.len()]).await;
    assert!(read(s, &d, 0, big.len() as u64).await == big);
}

async fn resume_from_state_on_another_instance(kind: Driver) {
    let store = Store::new(kind).await;
    let first = store.driver.clone();
    let content = data(5, (6 << 20) + 12_345);
    let id = UploadId::generate();
    let mut at = Progress::default();
    append(first.as_ref(), &id, &mut at, &content[..3 << 20])
        .await
        .unwrap();
    append(
        first.as_ref(),
        &id,
        &mut at,
        &content[3 << 20..(5 << 20) + 1],
    )
    .await
    .unwrap();
    drop(first);
    // Another replica continues from what the database recorded.
    let second = store.reopen().await;
    append(second.as_ref(), &id, &mut at, &content[(5 << 20) + 1..])
        .await
        .unwrap();
    let d = Digest::of(&content);
    commit(second.as_ref(), &id, &at, &d).await;
    assert_eq!(
        second.blob_stat(&d).await.unwrap(),
        Some(content.len() as u64)
    );
    assert!(read(second.as_ref(), &d, 0, content.len() as u64).await == content);
    // The committed upload left nothing behind.
    assert!(second.stored_uploads().await.unwrap().is_empty());
}

/// A body that fails half way: nothing of it counts, and the next request at the recorded
/// offset succeeds.
async fn failed_body_leaves_upload_resumable(kind: Driver) {
    let store = Store::new(kind).await;
    let s = store.driver.as_ref();
    let content = data(6, 7 << 20);
    let id = UploadId::generate();
    let mut at = Progress::default();
    append(s, &id, &mut at, &content[..1 << 20]).await.unwrap();

    let mut w = s.open_upload(&id).await.unwrap();
    let broken: Vec<io::Result<Bytes>> = vec![
        // Longer than the rest of the blob: a leftover tail would show.
        Ok(Bytes::copy_from_slice(&data(99, 8 << 20))),
        Err(io::Error::other("client went away")),
    ];
    let mut body = futures_util::stream::iter(broken);
    let err = w
        .append(&at.state, at.size, &mut body)
        .await
        .err()
        .expect("a failed body fails the append");
    assert_eq!(err.kind(), StorageErrorKind::Body, "{err}");
    drop(w);

    append(s, &id, &mut at, &content[1 << 20..]).await.unwrap();
    let d = Digest::of(&content);
    commit(s, &id, &at, &d).await;
    assert_eq!(
        s.blob_stat(&d).await.unwrap(),
        Some(content.len() as u64),
        "the failed body's bytes ended up in the blob"
    );
    assert!(read(s, &d, 0, content.len() as u64).await == content);
}

/// Appending at an offset the stored data does not reach is refused as lost data, never
/// written with a hole.
async fn offset_beyond_data_is_refused(kind: Driver) {
    let store = Store::new(kind).await;
    let s = store.driver.as_ref();
    let id = UploadId::generate();
    let mut at = Progress::default();
    append(s, &id, &mut at, &data(7, 1000)).await.unwrap();
    let mut w = s.open_upload(&id).await.unwrap();
    let mut body = futures_util::stream::iter(vec![Ok::<_, io::Error>(Bytes::from_static(b"x"))]);
    let err = w
        .append(&at.state, at.size + 10, &mut body)
        .await
        .err()
        .expect("an append past the data");
    assert_eq!(err.kind(), StorageErrorKind::UploadDataLost, "{err}");
}

async fn concurrent_commits_of_one_digest(kind: Driver) {
    let store = Store::new(kind).await;
    let s = store.driver.as_ref();
    let content = data(8, (5 << 20) + 77);
    let d = Digest::of(&content);
    let mut uploads = Vec::new();
    for _ in 0..3 {
        let id = UploadId::generate();
        let mut at = Progress::default();
        append(s, &id, &mut at, &content).await.unwrap();
        uploads.push((id, at));
    }
    let commits = uploads.iter().map(|(id, at)| commit(s, id, at, &d));
    futures_util::future::join_all(commits).await;
    assert_eq!(s.blob_stat(&d).await.unwrap(), Some(content.len() as u64));
    assert!(read(s, &d, 0, content.len() as u64).await == content);
}

/// Staging puts the object in place ahead of the commit where the driver can (the
/// filesystem must), keeps the upload's data, and leaves an object already there alone; after
/// the staged object was deleted (by GC), `commit` still places it.
async fn staged_object_can_be_placed_again(kind: Driver) {
    let store = Store::new(kind).await;
    let s = store.driver.as_ref();
    let content = data(9, (1 << 20) + 5);
    let d = Digest::of(&content);
    let id = UploadId::generate();
    let mut at = Progress::default();
    append(s, &id, &mut at, &content).await.unwrap();
    let stage = |at: Progress| {
        let (id, d) = (id.clone(), d.clone());
        async move {
            let mut w = s.open_upload(&id).await.unwrap();
            w.stage(&at.state, at.size, &d).await.unwrap()
        }
    };
    let staged = stage(at.clone()).await;
    assert_eq!(staged, matches!(kind, Driver::Filesystem));
    if staged {
        assert!(read(s, &d, 0, content.len() as u64).await == content);
        // Again: the object already there stays.
        assert!(stage(at.clone()).await);
        assert!(read(s, &d, 0, content.len() as u64).await == content);
        s.blob_delete(&d).await.unwrap();
        assert!(s.stored_uploads().await.unwrap().iter().any(|u| u.id == id));
    }
    assert_eq!(s.blob_stat(&d).await.unwrap(), None);
    commit(s, &id, &at, &d).await;
    assert!(read(s, &d, 0, content.len() as u64).await == content);
    assert!(!s.stored_uploads().await.unwrap().iter().any(|u| u.id == id));
}

/// `blob_put` stores a small object in one step; an object already there stays unless the
/// caller asks to replace it.
async fn whole_objects_from_memory(kind: Driver) {
    let store = Store::new(kind).await;
    let s = store.driver.as_ref();
    let content = data(10, 70_000);
    let d = Digest::of(&content);
    s.blob_put(&d, Bytes::from(content.clone()), false)
        .await
        .unwrap();
    assert!(read(s, &d, 0, content.len() as u64).await == content);
    // Again: the same bytes, harmless.
    s.blob_put(&d, Bytes::from(content.clone()), false)
        .await
        .unwrap();
    assert!(read(s, &d, 0, content.len() as u64).await == content);
    // A damaged object (here: other bytes under the name) is replaced only when asked to.
    let other = data(11, 100);
    s.blob_put(&d, Bytes::from(other.clone()), true)
        .await
        .unwrap();
    assert_eq!(s.blob_stat(&d).await.unwrap(), Some(100));
    s.blob_put(&d, Bytes::from(content.clone()), true)
        .await
        .unwrap();
    assert!(read(s, &d, 0, content.len() as u64).await == content);
    let empty = Digest::of(b"");
    s.blob_put(&empty, Bytes::new(), false).await.unwrap();
    assert_eq!(s.blob_stat(&empty).await.unwrap(), Some(0));
    let listed = s.list_blobs().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(s.stored_uploads().await.unwrap().is_empty());
}

async fn listing_and_purging(kind: Driver) {
    let store = Store::new(kind).await;
    let s = store.driver.as_ref();
    let a = put(s, &data(9, 10), &[]).await;
    let b = put(s, &data(10, 20_000), &[5000]).await;
    let mut listed: Vec<(Digest, u64)> = s
        .list_blobs()
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.digest, o.size))
        .collect();
    listed.sort();
    let mut want = vec![(a, 10), (b, 20_000)];
    want.sort();
    assert_eq!(listed, want);

    // Upload data is listed until it is aborted or purged.
    let kept = UploadId::generate();
    let mut at = Progress::default();
    append(s, &kept, &mut at, &data(11, 100)).await.unwrap();
    let orphan = UploadId::generate();
    append(s, &orphan, &mut Progress::default(), &data(12, 6 << 20))
        .await
        .unwrap();
    let mut ids: Vec<UploadId> = s
        .stored_uploads()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    ids.sort();
    let mut want = vec![kept.clone(), orphan.clone()];
    want.sort();
    assert_eq!(ids, want);
    s.purge_upload(&orphan).await.unwrap();
    s.upload_abort(&kept, &at.state).await.unwrap();
    assert!(s.stored_uploads().await.unwrap().is_empty());
    // Both are idempotent.
    s.purge_upload(&orphan).await.unwrap();
    s.upload_abort(&kept, &at.state).await.unwrap();
    // Uploads leave no blob objects behind.
    assert_eq!(s.list_blobs().await.unwrap().len(), 2);
}

/// Writes an object at a path relative to the store's root, behind the driver's back (as
/// another program, e.g. Distribution, would have).
async fn put_raw(store: &Store, path: &str, data: &[u8]) {
    match &store.config.storage.s3 {
        Some(s3) => {
            let b = TestBucket {
                endpoint: s3.regionendpoint.clone().unwrap(),
                bucket: s3.bucket.clone(),
            };
            let root = s3.rootdirectory.trim_matches('/');
            b.client()
                .put_object()
                .bucket(&b.bucket)
                .key(format!("{root}/{path}"))
                .body(data.to_vec().into())
                .send()
                .await
                .unwrap();
        }
        None => {
            let root = &store
                .config
                .storage
                .filesystem
                .as_ref()
                .unwrap()
                .rootdirectory;
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, data).unwrap();
        }
    }
}

/// Listing a subtree and reading small files by path (what `wharf import` reads a
/// Distribution tree with): relative paths, nothing outside the prefix, NotFound for a
/// missing file, a size cap, and no way out of the root.
async fn tree_listing_and_reading(kind: Driver) {
    let store = Store::new(kind).await;
    let s = store.driver.as_ref();
    let files = [
        "docker/registry/v2/repositories/a/b/_layers/sha256/aa/link",
        "docker/registry/v2/repositories/a/b/_manifests/tags/v1/current/link",
        "docker/registry/v2/repositories/c/_manifests/revisions/sha256/bb/link",
    ];
    for (i, f) in files.iter().enumerate() {
        put_raw(&store, f, format!("content {i}").as_bytes()).await;
    }
    put_raw(&store, "docker/registry/v2/repositoriesX/other", b"x").await;
    let mut listed = s
        .list_files("docker/registry/v2/repositories/")
        .await
        .unwrap();
    listed.sort();
    assert_eq!(listed, files);
    let mut under_a = s
        .list_files("docker/registry/v2/repositories/a/")
        .await
        .unwrap();
    under_a.sort();
    assert_eq!(under_a, files[..2]);
    assert!(s.list_files("nothing/here/").await.unwrap().is_empty());

    assert_eq!(
        s.read_file(files[1], 100).await.unwrap().as_ref(),
        b"content 1"
    );
    let missing = s.read_file("docker/registry/v2/nope/link", 100).await;
    assert_eq!(missing.unwrap_err().kind(), StorageErrorKind::NotFound);
    assert!(s.read_file(files[1], 4).await.is_err(), "over the cap");
    for bad in ["../outside", "/etc/passwd", "a/../../b", ""] {
        assert!(s.read_file(bad, 100).await.is_err(), "{bad:?}");
        assert!(s.list_files(bad).await.is_err(), "{bad:?}");
    }
}

macro_rules! driver_tests {
    ($($name:ident),* $(,)?) => {
        mod filesystem {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Driver::Filesystem).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Driver::S3).await
                }
            )*
        }
    };
}

driver_tests!(
    put_get_range_stat_delete,
    uploads_in_pieces_of_every_size,
    resume_from_state_on_another_instance,
    failed_body_leaves_upload_resumable,
    offset_beyond_data_is_refused,
    concurrent_commits_of_one_digest,
    staged_object_can_be_placed_again,
    whole_objects_from_memory,
    listing_and_purging,
    tree_listing_and_reading,
);

/// The filesystem driver serialises writers of one upload, across instances (processes):
/// a second request waits for the first to finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_upload_writers_wait_for_each_other() {
    let store = Store::new(Driver::Filesystem).await;
    let other = store.reopen().await;
    let id = UploadId::generate();
    let first = store.driver.open_upload(&id).await.unwrap();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let waiter = {
        let id = id.clone();
        tokio::spawn(async move {
            let w = other.open_upload(&id).await.map(|_| ());
            let _ = tx.send(());
            w
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        rx.try_recv().is_err(),
        "the second writer got in while the first held the upload"
    );
    drop(first);
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("the second writer never got in")
        .unwrap()
        .unwrap();
}
