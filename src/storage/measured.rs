//! A driver wrapper that measures every operation of the driver it wraps: latency by driver
//! and operation, and errors by kind (see `metrics`).

use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Appended, BlobStore, BodyStream, ByteStream, StorageResult, StoredObject, StoredUpload,
    UploadWriter,
};
use crate::metrics::{STORAGE_DURATION, STORAGE_ERRORS};
use crate::oci::{Digest, UploadId};

pub struct Measured<S> {
    inner: S,
    driver: &'static str,
}

impl<S> Measured<S> {
    pub fn new(inner: S, driver: &'static str) -> Self {
        Measured { inner, driver }
    }
}

fn record<T>(driver: &'static str, op: &'static str, started: Instant, r: &StorageResult<T>) {
    metrics::histogram!(STORAGE_DURATION, "driver" => driver, "op" => op)
        .record(started.elapsed().as_secs_f64());
    if let Err(e) = r {
        let kind = format!("{:?}", e.kind()).to_lowercase();
        metrics::counter!(STORAGE_ERRORS, "driver" => driver, "op" => op, "kind" => kind)
            .increment(1);
    }
}

macro_rules! measured {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let r = $call.await;
        record($self.driver, $op, started, &r);
        r
    }};
}

#[async_trait]
impl<S: BlobStore> BlobStore for Measured<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn check(&self) -> StorageResult<()> {
        measured!(self, "check", self.inner.check())
    }

    async fn open_upload<'a>(&'a self, id: &UploadId) -> StorageResult<Box<dyn UploadWriter + 'a>> {
        let inner = measured!(self, "open_upload", self.inner.open_upload(id))?;
        Ok(Box::new(MeasuredUpload {
            inner,
            driver: self.driver,
        }))
    }

    async fn upload_abort(&self, id: &UploadId, state: &str) -> StorageResult<()> {
        measured!(self, "upload_abort", self.inner.upload_abort(id, state))
    }

    async fn stored_uploads(&self) -> StorageResult<Vec<StoredUpload>> {
        measured!(self, "stored_uploads", self.inner.stored_uploads())
    }

    async fn purge_upload(&self, id: &UploadId) -> StorageResult<()> {
        measured!(self, "purge_upload", self.inner.purge_upload(id))
    }

    async fn blob_read(&self, digest: &Digest, start: u64, len: u64) -> StorageResult<ByteStream> {
        measured!(self, "blob_read", self.inner.blob_read(digest, start, len))
    }

    async fn blob_stat(&self, digest: &Digest) -> StorageResult<Option<u64>> {
        measured!(self, "blob_stat", self.inner.blob_stat(digest))
    }

    async fn list_blobs(&self) -> StorageResult<Vec<StoredObject>> {
        measured!(self, "list_blobs", self.inner.list_blobs())
    }

    async fn list_files(&self, prefix: &str) -> StorageResult<Vec<String>> {
        measured!(self, "list_files", self.inner.list_files(prefix))
    }

    async fn read_file(&self, path: &str, max: u64) -> StorageResult<Bytes> {
        measured!(self, "read_file", self.inner.read_file(path, max))
    }

    async fn blob_delete(&self, digest: &Digest) -> StorageResult<()> {
        measured!(self, "blob_delete", self.inner.blob_delete(digest))
    }

    async fn blob_put(&self, digest: &Digest, data: Bytes, replace: bool) -> StorageResult<()> {
        measured!(self, "blob_put", self.inner.blob_put(digest, data, replace))
    }

    async fn redirect_url(&self, digest: &Digest) -> StorageResult<Option<String>> {
        measured!(self, "redirect_url", self.inner.redirect_url(digest))
    }
}

struct MeasuredUpload<'a> {
    inner: Box<dyn UploadWriter + 'a>,
    driver: &'static str,
}

#[async_trait(?Send)]
impl UploadWriter for MeasuredUpload<'_> {
    async fn append(
        &mut self,
        state: &str,
        offset: u64,
        body: &mut BodyStream<'_>,
    ) -> StorageResult<Appended> {
        measured!(
            self,
            "upload_append",
            self.inner.append(state, offset, body)
        )
    }

    async fn commit(&mut self, state: &str, size: u64, digest: &Digest) -> StorageResult<()> {
        measured!(
            self,
            "upload_commit",
            self.inner.commit(state, size, digest)
        )
    }

    async fn stage(&mut self, state: &str, size: u64, digest: &Digest) -> StorageResult<bool> {
        measured!(self, "upload_stage", self.inner.stage(state, size, digest))
    }

    async fn sync(&mut self) -> StorageResult<()> {
        measured!(self, "upload_sync", self.inner.sync())
    }

    async fn read_back(
        &mut self,
        state: &str,
        start: u64,
        len: u64,
    ) -> StorageResult<Option<ByteStream>> {
        self.inner.read_back(state, start, len).await
    }
}
