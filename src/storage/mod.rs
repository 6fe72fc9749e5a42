//! Blob storage: bytes by digest, and the bytes of uploads in progress. Drivers know nothing of
//! manifests, repositories or the database; they store, stream and delete objects.
//!
//! Blobs live at Distribution's path, `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`
//! under the root, so an existing Distribution tree can be served in place. Every driver
//! implements [`BlobStore`] and passes the one conformance suite in `tests/storage.rs`.

mod error;
mod fs;
mod measured;
mod s3;

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

pub use error::{StorageError, StorageErrorKind, StorageResult};
pub use fs::FsDriver;
pub use measured::Measured;
pub use s3::{S3Driver, https_client};

use crate::config::Config;
use crate::oci::{Digest, UploadId};

pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A request body as a driver reads it (actix's payload is not `Send`).
pub type BodyStream<'a> = dyn Stream<Item = io::Result<Bytes>> + Unpin + 'a;

/// The result of appending a request body to an upload.
#[derive(Debug)]
pub struct Appended {
    /// Driver state to save with the upload (opaque to callers).
    pub state: String,
    pub written: u64,
    /// The bytes are durable already (S3: every part is). Otherwise
    /// [`UploadWriter::sync`] makes them so, and the driver keeps no state of its own (an
    /// upload going back to its checkpoint keeps the state it has).
    pub durable: bool,
}

/// A blob object found in storage.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub digest: Digest,
    pub size: u64,
    /// Seconds since the object was put in place.
    pub age_secs: u64,
}

/// Upload data found in storage: the upload's id and the age in seconds of its newest data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpload {
    pub id: UploadId,
    pub age_secs: u64,
}

/// A storage driver. Every method is safe to call from several processes sharing the store.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Where the bytes are, for logs.
    fn describe(&self) -> String;

    /// Readiness: the storage answers and is writable.
    async fn check(&self) -> StorageResult<()>;

    /// Opens upload `id` for one request's writes. While the returned writer lives, other
    /// requests for the same upload (in any process) wait here, or the driver otherwise makes
    /// concurrent writers harmless (S3: unique keys, see s3.rs).
    async fn open_upload<'a>(&'a self, id: &UploadId) -> StorageResult<Box<dyn UploadWriter + 'a>>;

    /// Discards an upload's bytes. Missing data is not an error.
    async fn upload_abort(&self, id: &UploadId, state: &str) -> StorageResult<()>;

    /// Uploads that have data in storage.
    async fn stored_uploads(&self) -> StorageResult<Vec<StoredUpload>>;

    /// Removes whatever storage holds for an upload the database does not know (no state).
    async fn purge_upload(&self, id: &UploadId) -> StorageResult<()>;

    /// Streams `len` bytes of the blob from `start`. A missing object is `NotFound`.
    async fn blob_read(&self, digest: &Digest, start: u64, len: u64) -> StorageResult<ByteStream>;

    /// Size of the stored object, if any (fsck and tests; the API trusts the database).
    async fn blob_stat(&self, digest: &Digest) -> StorageResult<Option<u64>>;

    /// Every blob object in storage (fsck only; nothing on a request path lists storage).
    async fn list_blobs(&self) -> StorageResult<Vec<StoredObject>>;

    /// Deletes the object. A missing object is not an error.
    async fn blob_delete(&self, digest: &Digest) -> StorageResult<()>;

    /// Stores `data` (the caller checked its digest) as the object for `digest`, durably, in
    /// one step: a small blob pushed whole needs no upload. An object already there may be
    /// left as it is (the filesystem does), unless `replace` (the caller found it damaged).
    async fn blob_put(&self, digest: &Digest, data: Bytes, replace: bool) -> StorageResult<()>;

    /// Every object under `prefix` (a path relative to the storage root, e.g.
    /// `docker/registry/v2/repositories/`), as paths relative to the root, in no set order.
    /// A missing prefix is an empty list. (`wharf import` reads a Distribution tree so.)
    async fn list_files(&self, prefix: &str) -> StorageResult<Vec<String>>;

    /// A small object by its path relative to the root: NotFound when missing, an error when
    /// larger than `max` bytes.
    async fn read_file(&self, path: &str, max: u64) -> StorageResult<Bytes>;

    /// A URL the client may fetch the blob from directly, when the driver offers one.
    async fn redirect_url(&self, _digest: &Digest) -> StorageResult<Option<String>> {
        Ok(None)
    }
}

/// One request's hold on an upload (see [`BlobStore::open_upload`]).
#[async_trait(?Send)]
pub trait UploadWriter: Send {
    /// Appends `body` to the upload, which holds `offset` bytes as `state` describes. Returns
    /// once the bytes are written; durable only if [`Appended::durable`] says so. On error
    /// nothing is recorded as written: the next append starts again at `offset`.
    async fn append(
        &mut self,
        state: &str,
        offset: u64,
        body: &mut BodyStream<'_>,
    ) -> StorageResult<Appended>;

    /// Makes the upload's first `size` bytes the object for `digest`, durably.
    async fn commit(&mut self, state: &str, size: u64, digest: &Digest) -> StorageResult<()>;

    /// Puts the upload's first `size` bytes in place as the object for `digest`, durably,
    /// ahead of the database commit and outside the blob row's lock, while keeping the
    /// upload's data so that `commit` can place it again (the caller re-checks the object
    /// under the lock: a GC that held the row may have deleted it meanwhile). An object
    /// already there is left as it is. Returns false when the driver cannot, and then
    /// `commit` under the lock is the only placement.
    async fn stage(&mut self, _state: &str, _size: u64, _digest: &Digest) -> StorageResult<bool> {
        Ok(false)
    }

    /// Makes every byte appended so far durable (nothing to do where appends are).
    async fn sync(&mut self) -> StorageResult<()> {
        Ok(())
    }

    /// Streams `len` bytes of the upload's data from `start`: bytes another kernel wrote and
    /// may not have made durable are checked against their recorded hash before anyone
    /// trusts them. `None` from a driver whose appends are durable: whatever its uploads
    /// hold is.
    async fn read_back(
        &mut self,
        _state: &str,
        _start: u64,
        _len: u64,
    ) -> StorageResult<Option<ByteStream>> {
        Ok(None)
    }
}

/// A path relative to the storage root that stays under it: no empty, `.` or `..`
/// components, no leading `/`. Returns it, or an error naming it.
pub fn relative_path(path: &str) -> StorageResult<&str> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .trim_end_matches('/')
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(path)
    } else {
        Err(StorageError::Other(anyhow::anyhow!(
            "not a path under the storage root: {path:?}"
        )))
    }
}

/// Opens the driver `config` names: S3 when `storage.s3` is set, else the filesystem.
pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    if let Some(s3) = &config.storage.s3 {
        let driver = S3Driver::new(s3, config.storage.redirect.expiry).await?;
        driver.check().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach S3 bucket {:?} at {}: {e}. Check storage.s3.bucket, regionendpoint, credentials \
                 (and forcepathstyle: {})",
                s3.bucket,
                s3.regionendpoint.as_deref().unwrap_or("AWS"),
                s3.path_style()
            )
        })?;
        return Ok(Arc::new(Measured::new(driver, "s3")));
    }
    let fs = config.storage.filesystem.clone().unwrap_or_default();
    let driver = FsDriver::new(&fs.rootdirectory).with_context(|| {
        format!(
            "cannot use storage.filesystem.rootdirectory {}: create it or point the setting at a writable directory",
            fs.rootdirectory.display()
        )
    })?;
    Ok(Arc::new(Measured::new(driver, "filesystem")))
}
