//! Blob storage: bytes by digest, and the bytes of uploads in progress. Drivers know nothing of
//! manifests, repositories or the database; they store, stream and delete objects.
//!
//! Blobs live at Distribution's path, `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`
//! under the root, so an existing Distribution tree can be served in place.

mod fs;
mod s3;

pub use s3::https_client;

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

pub use fs::FsDriver;
pub use s3::S3Driver;

use crate::oci::Digest;

pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object not found")]
    NotFound,
    /// The request body failed (client went away, or sent less than it announced).
    #[error("request body: {0}")]
    Body(String),
    /// The upload's stored bytes no longer match its recorded size.
    #[error("upload data is missing or shorter than recorded ({found} of {expected} bytes)")]
    UploadDataLost { expected: u64, found: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type StorageResult<T> = Result<T, StorageError>;

/// The result of appending a request body to an upload.
#[derive(Debug)]
pub struct Appended {
    /// Driver state to save with the upload (opaque to callers).
    pub state: String,
    pub written: u64,
}

/// A blob object found in storage.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub digest: Digest,
    pub size: u64,
    /// Seconds since the object was put in place.
    pub age_secs: u64,
}

/// Held while one request writes to an upload; other requests for the same upload wait.
pub struct UploadLock {
    /// The filesystem driver's file lock; S3 needs none (see s3.rs).
    file: Option<fs::UploadFile>,
}

/// The configured storage driver.
pub enum BlobStore {
    Filesystem(FsDriver),
    S3(S3Driver),
}

fn no_lock() -> StorageError {
    StorageError::Other(anyhow::anyhow!("filesystem upload used without its lock"))
}

impl BlobStore {
    pub fn describe(&self) -> String {
        match self {
            BlobStore::Filesystem(d) => format!("filesystem at {}", d.root().display()),
            BlobStore::S3(d) => d.describe(),
        }
    }

    /// Readiness: the storage answers and is writable.
    pub async fn check(&self) -> StorageResult<()> {
        match self {
            BlobStore::Filesystem(d) => d.check().await,
            BlobStore::S3(d) => d.check().await,
        }
    }

    pub async fn upload_lock(&self, id: &str) -> StorageResult<UploadLock> {
        match self {
            BlobStore::Filesystem(d) => Ok(UploadLock {
                file: Some(d.upload_lock(id).await?),
            }),
            BlobStore::S3(_) => Ok(UploadLock { file: None }),
        }
    }

    /// Appends `body` to upload `id`, which holds `offset` bytes. Returns once the bytes are
    /// durable. On error nothing is recorded as written: the next append starts again at
    /// `offset`.
    pub async fn upload_append<S>(
        &self,
        lock: &mut UploadLock,
        id: &str,
        state: &str,
        offset: u64,
        body: S,
    ) -> StorageResult<Appended>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        match self {
            BlobStore::Filesystem(d) => {
                let file = lock.file.as_mut().ok_or_else(no_lock)?;
                d.upload_append(file, state, offset, body).await
            }
            BlobStore::S3(d) => d.upload_append(id, state, offset, body).await,
        }
    }

    /// Makes the upload's `size` bytes the object for `digest`.
    pub async fn upload_commit(
        &self,
        lock: &mut UploadLock,
        id: &str,
        state: &str,
        size: u64,
        digest: &Digest,
    ) -> StorageResult<()> {
        match self {
            BlobStore::Filesystem(d) => {
                let file = lock.file.as_mut().ok_or_else(no_lock)?;
                d.upload_commit(file, id, state, size, digest).await
            }
            BlobStore::S3(d) => d.upload_commit(id, state, size, digest).await,
        }
    }

    /// Discards an upload's bytes. Missing data is not an error.
    pub async fn upload_abort(&self, id: &str, state: &str) -> StorageResult<()> {
        match self {
            BlobStore::Filesystem(d) => d.upload_abort(id, state).await,
            BlobStore::S3(d) => d.upload_abort(id, state).await,
        }
    }

    /// Uploads that have data in storage, with the age in seconds of their newest data.
    pub async fn stored_uploads(&self) -> StorageResult<Vec<(String, u64)>> {
        match self {
            BlobStore::Filesystem(d) => d.stored_uploads().await,
            BlobStore::S3(d) => d.stored_uploads().await,
        }
    }

    /// Removes whatever storage holds for an upload the database does not know.
    pub async fn purge_upload(&self, id: &str) -> StorageResult<()> {
        match self {
            BlobStore::Filesystem(d) => d.upload_abort(id, "").await,
            BlobStore::S3(d) => d.purge_upload(id).await,
        }
    }

    /// Streams `len` bytes of the blob from `start`.
    pub async fn blob_read(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> StorageResult<ByteStream> {
        match self {
            BlobStore::Filesystem(d) => d.blob_read(digest, start, len).await,
            BlobStore::S3(d) => d.blob_read(digest, start, len).await,
        }
    }

    /// Size of the stored object, if any (fsck and tests; the API trusts the database).
    pub async fn blob_stat(&self, digest: &Digest) -> StorageResult<Option<u64>> {
        match self {
            BlobStore::Filesystem(d) => d.blob_stat(digest).await,
            BlobStore::S3(d) => d.blob_stat(digest).await,
        }
    }

    /// Every blob object in storage (fsck only; nothing on a request path lists storage).
    pub async fn list_blobs(&self) -> StorageResult<Vec<StoredObject>> {
        match self {
            BlobStore::Filesystem(d) => d.list_blobs().await,
            BlobStore::S3(d) => d.list_blobs().await,
        }
    }

    /// Deletes the object. A missing object is not an error.
    pub async fn blob_delete(&self, digest: &Digest) -> StorageResult<()> {
        match self {
            BlobStore::Filesystem(d) => d.blob_delete(digest).await,
            BlobStore::S3(d) => d.blob_delete(digest).await,
        }
    }

    /// A URL the client may fetch the blob from directly, when the driver offers one.
    pub async fn redirect_url(&self, digest: &Digest) -> StorageResult<Option<String>> {
        match self {
            BlobStore::Filesystem(_) => Ok(None),
            BlobStore::S3(d) => d.redirect_url(digest).await,
        }
    }
}
