//! The S3 driver (AWS S3 and S3-compatible stores: MinIO, Ceph, moto, ...).
//!
//! Blobs live at `<rootdirectory>/docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`, as
//! Distribution lays them out. An upload is an S3 multipart upload at
//! `<rootdirectory>/wharf/uploads/<id>/data`, created when its first part is due:
//!
//! - Part `n` (1-based) is `chunksize << ((n - 1) / 1000)` bytes (capped at 5 GiB): parts
//!   double every thousand, so 10,000 parts hold 9.7 TiB with the default 10 MiB (S3 objects
//!   end at 5 TiB), and the size of every part follows from its number alone, whatever the
//!   client's chunks.
//! - Bytes that do not fill a part yet are written as *segment* objects
//!   (`uploads/<id>/seg-<offset>-<nonce>`), each with a unique key and never rewritten. The
//!   next request that completes a part reads them back. Only the parts, their ETags and the
//!   segments that are current are recorded (in the upload's driver state, in the database);
//!   two racing requests can therefore not corrupt each other: the loser's part either loses
//!   in S3 too, or its ETag does not match the recorded one and completion fails.
//! - Completion uploads the remaining segments as the last part (which may be short),
//!   completes the multipart upload, and copies the object to the blob key: one CopyObject up
//!   to `multipartcopythresholdsize`, a multipart copy above (never a single-request copy
//!   above S3's 5 GiB limit). Everything under the upload's prefix is then deleted.

use std::io;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{
    Appended, BlobStore, BodyStream, ByteStream, StorageError, StorageResult, StoredObject,
    StoredUpload, UploadWriter,
};
use crate::config::S3Config;
use crate::oci::{Digest, UploadId};

const MIN_PART: u64 = 5 * 1024 * 1024;
const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
const MAX_PARTS: i32 = 10_000;
/// How long one blob DeleteObject may take (see `blob_delete`).
const DELETE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct S3Driver {
    client: Client,
    bucket: String,
    /// Key prefix: empty, or ending with '/'.
    root: String,
    chunk_size: u64,
    copy_chunk_size: u64,
    copy_concurrency: usize,
    copy_threshold: u64,
    encrypt: bool,
    key_id: Option<String>,
    storage_class: Option<StorageClass>,
    redirect_expiry: Duration,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UploadState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multipart: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parts: Vec<Part>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    n: i32,
    etag: String,
    size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Segment {
    key: String,
    size: u64,
}

impl UploadState {
    fn parse(s: &str) -> StorageResult<Self> {
        if s.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_str(s)
            .map_err(|e| StorageError::Other(anyhow::anyhow!("corrupt S3 upload state: {e}")))
    }

    fn to_string(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum::<u64>()
            + self.segments.iter().map(|s| s.size).sum::<u64>()
    }

    fn segment_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }
}

fn s3_err<E>(what: &str, e: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = e.code().map(str::to_owned);
    let status = e.raw_response().map(|r| r.status().as_u16());
    let transient = matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_));
    let message = e.message().map(str::to_owned);
    let detail = match (&code, message) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.clone(),
        _ => format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e)),
    };
    let detail = format!("S3 {what}: {detail}");
    match (code.as_deref(), status) {
        (Some("QuotaExceeded" | "XMinioStorageFull"), _) | (_, Some(507)) => {
            StorageError::Full(detail)
        }
        (Some("SlowDown" | "ServiceUnavailable" | "RequestTimeout" | "Throttling"), _)
        | (_, Some(503)) => StorageError::Unavailable(detail),
        _ if transient => StorageError::Unavailable(detail),
        _ => StorageError::Other(anyhow::anyhow!(detail)),
    }
}

/// A store without ListMultipartUploads (s3s-fs, some gateways).
fn not_implemented<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    e.code() == Some("NotImplemented") || e.raw_response().map(|r| r.status().as_u16()) == Some(501)
}

/// Upload purging then covers what the database knows: every multipart upload wharf starts is
/// recorded in its upload's state, and stale uploads are aborted from it. Multipart uploads of
/// requests that died before saving their state cannot be found; said once per process.
fn multipart_listing_unsupported() {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "this S3 store does not implement ListMultipartUploads: upload purging aborts the \
             multipart uploads the database records; any started by a request that died before \
             saving its state stay until the bucket's lifecycle rules remove them"
        );
    }
}

fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    if matches!(e.code(), Some("NoSuchKey" | "NotFound" | "NoSuchUpload")) {
        return true;
    }
    e.raw_response().map(|r| r.status().as_u16()) == Some(404)
}

/// Applies the configured storage class and server-side encryption to a request builder that
/// writes an object (PutObject, CopyObject, CreateMultipartUpload: different types, same
/// setters).
macro_rules! object_options {
    ($driver:expr, $req:expr) => {{
        let mut req = $req;
        if let Some(sc) = &$driver.storage_class {
            req = req.storage_class(sc.clone());
        }
        if $driver.encrypt {
            req = match &$driver.key_id {
                Some(k) => req
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .ssekms_key_id(k),
                None => req.server_side_encryption(ServerSideEncryption::Aes256),
            };
        }
        req
    }};
}

/// Size of part `n` (1-based): `chunk`, doubling every thousand parts, at most 5 GiB.
fn part_size(chunk: u64, n: i32) -> u64 {
    let shift = ((n.max(1) - 1) / 1000) as u32;
    chunk.checked_shl(shift).unwrap_or(MAX_PART).min(MAX_PART)
}

impl S3Driver {
    pub async fn new(c: &S3Config, redirect_expiry: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !c.bucket.is_empty(),
            "storage.s3.bucket is required (REGISTRY_STORAGE_S3_BUCKET)"
        );
        anyhow::ensure!(
            !c.skipverify,
            "storage.s3.skipverify is not supported: give the endpoint a certificate the system trusts, \
             or point AWS_CA_BUNDLE at its CA certificate"
        );
        anyhow::ensure!(
            c.chunksize >= MIN_PART && c.chunksize <= MAX_PART,
            "storage.s3.chunksize must be between 5 MiB and 5 GiB (S3's part size limits), not {}",
            c.chunksize
        );
        anyhow::ensure!(
            c.multipartcopychunksize >= MIN_PART && c.multipartcopychunksize <= MAX_PART,
            "storage.s3.multipartcopychunksize must be between 5 MiB and 5 GiB"
        );
        anyhow::ensure!(
            c.multipartcopythresholdsize <= MAX_PART,
            "storage.s3.multipartcopythresholdsize must be at most 5 GiB: larger objects cannot be copied in one request"
        );
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(https_client())
            .region(Region::new(c.region.clone()));
        if let (Some(ak), Some(sk)) = (&c.accesskey, &c.secretkey) {
            loader =
                loader.credentials_provider(Credentials::new(ak, sk, None, None, "wharf-config"));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared);
        if let Some(endpoint) = c.regionendpoint.as_deref().filter(|e| !e.is_empty()) {
            let url = if endpoint.contains("://") {
                endpoint.to_owned()
            } else if c.secure {
                format!("https://{endpoint}")
            } else {
                format!("http://{endpoint}")
            };
            builder = builder.endpoint_url(url);
        }
        builder = builder.force_path_style(c.path_style());
        let root = c.rootdirectory.trim_matches('/');
        Ok(S3Driver {
            client: Client::from_conf(builder.build()),
            bucket: c.bucket.clone(),
            root: if root.is_empty() {
                String::new()
            } else {
                format!("{root}/")
            },
            chunk_size: c.chunksize,
            copy_chunk_size: c.multipartcopychunksize,
            copy_concurrency: c.multipartcopymaxconcurrency.max(1),
            copy_threshold: c.multipartcopythresholdsize,
            encrypt: c.encrypt,
            key_id: c.keyid.clone().filter(|k| !k.is_empty()),
            storage_class: match c.storageclass.as_str() {
                "" | "NONE" => None,
                other => Some(StorageClass::from(other)),
            },
            redirect_expiry,
        })
    }

    fn blob_key(&self, digest: &Digest) -> String {
        let hex = digest.hex();
        format!(
            "{}docker/registry/v2/blobs/sha256/{}/{hex}/data",
            self.root,
            &hex[..2]
        )
    }

    fn upload_prefix(&self, id: &str) -> String {
        format!("{}wharf/uploads/{id}/", self.root)
    }

    fn upload_key(&self, id: &str) -> String {
        format!("{}data", self.upload_prefix(id))
    }

    fn part_size(&self, n: i32) -> u64 {
        part_size(self.chunk_size, n)
    }

    async fn get_bytes(&self, key: &str) -> StorageResult<Bytes> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_err("GetObject", e))?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Other(anyhow::anyhow!("S3 GetObject body: {e}")))?;
        Ok(data.into_bytes())
    }

    async fn read_segments(&self, st: &UploadState) -> StorageResult<BytesMut> {
        let mut buf = BytesMut::with_capacity(st.segment_bytes() as usize);
        for s in &st.segments {
            let data = self.get_bytes(&s.key).await?;
            if data.len() as u64 != s.size {
                return Err(StorageError::UploadDataLost {
                    expected: s.size,
                    found: data.len() as u64,
                });
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf)
    }

    /// Starts a multipart upload of `key` (with the configured class and encryption).
    async fn create_multipart(&self, key: &str) -> StorageResult<String> {
        let req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream");
        let out = object_options!(self, req)
            .send()
            .await
            .map_err(|e| s3_err("CreateMultipartUpload", e))?;
        out.upload_id().map(str::to_owned).ok_or_else(|| {
            StorageError::Other(anyhow::anyhow!(
                "S3 CreateMultipartUpload returned no upload id"
            ))
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> StorageResult<()> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_err("CompleteMultipartUpload", e))?;
        Ok(())
    }

    async fn ensure_multipart(&self, id: &str, st: &mut UploadState) -> StorageResult<String> {
        if let Some(m) = &st.multipart {
            return Ok(m.clone());
        }
        let upload_id = self.create_multipart(&self.upload_key(id)).await?;
        st.multipart = Some(upload_id.clone());
        Ok(upload_id)
    }

    async fn upload_part(&self, id: &str, st: &mut UploadState, data: Bytes) -> StorageResult<()> {
        let n = st.parts.last().map_or(1, |p| p.n + 1);
        if n > MAX_PARTS {
            return Err(StorageError::Other(anyhow::anyhow!(
                "upload {id} needs more than {MAX_PARTS} parts; raise storage.s3.chunksize"
            )));
        }
        let upload_id = self.ensure_multipart(id, st).await?;
        let size = data.len() as u64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.upload_key(id))
            .upload_id(upload_id)
            .part_number(n)
            .body(S3Body::from(data))
            .send()
            .await
            .map_err(|e| s3_err("UploadPart", e))?;
        let etag = out.e_tag().unwrap_or_default().to_owned();
        st.parts.push(Part { n, etag, size });
        st.segments.clear();
        Ok(())
    }

    async fn upload_append(
        &self,
        id: &str,
        state: &str,
        offset: u64,
        body: &mut BodyStream<'_>,
    ) -> StorageResult<Appended> {
        let mut st = UploadState::parse(state)?;
        if st.size() != offset {
            return Err(StorageError::UploadDataLost {
                expected: offset,
                found: st.size(),
            });
        }
        let mut written = 0u64;
        let mut buf = BytesMut::new();
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    written += chunk.len() as u64;
                    buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => return Err(StorageError::Body(e.to_string())),
                None => break,
            }
            // Cut every full part as soon as it is complete: memory stays within about one
            // part (plus the segments it starts with), whatever the request's size.
            loop {
                let next = st.parts.last().map_or(1, |p| p.n + 1);
                let pending = st.segment_bytes();
                let need = self.part_size(next);
                if pending + (buf.len() as u64) < need {
                    break;
                }
                let mut part = self.read_segments(&st).await?;
                let take = (need - pending) as usize;
                part.extend_from_slice(&buf.split_to(take));
                self.upload_part(id, &mut st, part.freeze()).await?;
            }
        }
        if !buf.is_empty() {
            let key = format!(
                "{}seg-{}-{}",
                self.upload_prefix(id),
                offset + written - buf.len() as u64,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            let size = buf.len() as u64;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .body(S3Body::from(buf.freeze()))
                .send()
                .await
                .map_err(|e| s3_err("PutObject", e))?;
            st.segments.push(Segment { key, size });
        }
        Ok(Appended {
            state: st.to_string(),
            written,
            durable: true,
        })
    }

    async fn upload_commit(
        &self,
        id: &str,
        state: &str,
        size: u64,
        digest: &Digest,
    ) -> StorageResult<()> {
        let mut st = UploadState::parse(state)?;
        if st.size() != size {
            return Err(StorageError::UploadDataLost {
                expected: size,
                found: st.size(),
            });
        }
        let dest = self.blob_key(digest);
        if st.parts.is_empty() {
            // Smaller than one part: one PutObject.
            let data = self.read_segments(&st).await?;
            self.put_final(&dest, data.freeze()).await?;
        } else {
            if !st.segments.is_empty() {
                let data = self.read_segments(&st).await?;
                self.upload_part(id, &mut st, data.freeze()).await?;
            }
            let parts: Vec<CompletedPart> = st
                .parts
                .iter()
                .map(|p| {
                    CompletedPart::builder()
                        .part_number(p.n)
                        .e_tag(&p.etag)
                        .build()
                })
                .collect();
            let upload_id = st.multipart.clone().unwrap_or_default();
            self.complete_multipart(&self.upload_key(id), &upload_id, parts)
                .await?;
            self.copy(&self.upload_key(id), &dest, size).await?;
        }
        if let Err(e) = self.delete_prefix(&self.upload_prefix(id)).await {
            tracing::warn!(upload = id, error = %e, "could not remove a committed upload's temporary objects");
        }
        Ok(())
    }

    async fn put_final(&self, key: &str, data: Bytes) -> StorageResult<()> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .body(S3Body::from(data));
        req = object_options!(self, req);
        req.send().await.map_err(|e| s3_err("PutObject", e))?;
        Ok(())
    }

    fn copy_source(&self, key: &str) -> String {
        let encoded: String = key
            .split('/')
            .map(|seg| {
                percent_encoding::utf8_percent_encode(seg, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("/");
        format!("{}/{encoded}", self.bucket)
    }

    /// Server-side copy; a multipart copy above the threshold (and always above 5 GiB).
    async fn copy(&self, src: &str, dest: &str, size: u64) -> StorageResult<()> {
        if size <= self.copy_threshold {
            let mut req = self
                .client
                .copy_object()
                .bucket(&self.bucket)
                .key(dest)
                .copy_source(self.copy_source(src));
            req = object_options!(self, req);
            req.send().await.map_err(|e| s3_err("CopyObject", e))?;
            return Ok(());
        }
        let upload_id = self.create_multipart(dest).await?;
        // At most 10,000 parts: grow the copy part size for huge objects.
        let chunk = self
            .copy_chunk_size
            .max(size.div_ceil(MAX_PARTS as u64))
            .min(MAX_PART);
        let ranges: Vec<(i32, u64, u64)> = (0..size.div_ceil(chunk))
            .map(|i| (i as i32 + 1, i * chunk, ((i + 1) * chunk).min(size) - 1))
            .collect();
        let source = self.copy_source(src);
        let results: Vec<StorageResult<CompletedPart>> = futures_util::stream::iter(ranges)
            .map(|(n, a, b)| {
                let req = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(dest)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={a}-{b}"));
                async move {
                    let out = req.send().await.map_err(|e| s3_err("UploadPartCopy", e))?;
                    let etag = out
                        .copy_part_result()
                        .and_then(|r| r.e_tag())
                        .unwrap_or_default()
                        .to_owned();
                    Ok(CompletedPart::builder().part_number(n).e_tag(etag).build())
                }
            })
            .buffered(self.copy_concurrency)
            .collect()
            .await;
        let mut parts = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(p) => parts.push(p),
                Err(e) => {
                    let _ = self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(dest)
                        .upload_id(&upload_id)
                        .send()
                        .await;
                    return Err(e);
                }
            }
        }
        self.complete_multipart(dest, &upload_id, parts).await?;
        Ok(())
    }

    /// Every object under `prefix`, across all pages of ListObjectsV2.
    async fn list(&self, prefix: &str) -> StorageResult<Vec<aws_sdk_s3::types::Object>> {
        let mut objects = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| s3_err("ListObjectsV2", e))?;
            objects.extend(page.contents().iter().cloned());
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(objects),
            }
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> StorageResult<()> {
        for obj in self.list(prefix).await? {
            if let Some(key) = obj.key() {
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| s3_err("DeleteObject", e))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for S3Driver {
    fn describe(&self) -> String {
        format!("s3 bucket {} under {:?}", self.bucket, self.root)
    }

    async fn check(&self) -> StorageResult<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| s3_err("HeadBucket", e))?;
        Ok(())
    }

    async fn upload_abort(&self, id: &UploadId, state: &str) -> StorageResult<()> {
        let st = UploadState::parse(state).unwrap_or_default();
        if let Some(upload_id) = &st.multipart {
            match self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(self.upload_key(id.as_str()))
                .upload_id(upload_id)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(s3_err("AbortMultipartUpload", e)),
            }
        }
        self.delete_prefix(&self.upload_prefix(id.as_str())).await
    }

    /// Upload ids with objects or multipart uploads in storage, and their age in seconds.
    async fn stored_uploads(&self) -> StorageResult<Vec<StoredUpload>> {
        let prefix = format!("{}wharf/uploads/", self.root);
        let now = std::time::SystemTime::now();
        let age_of = |t: Option<&aws_sdk_s3::primitives::DateTime>| {
            t.and_then(|t| std::time::SystemTime::try_from(*t).ok())
                .and_then(|t| now.duration_since(t).ok())
                .map_or(0, |d| d.as_secs())
        };
        let mut found: std::collections::BTreeMap<String, u64> = Default::default();
        for obj in self.list(&prefix).await? {
            if let Some(id) = obj
                .key()
                .and_then(|k| k.strip_prefix(&prefix))
                .and_then(|k| k.split('/').next())
            {
                let age = age_of(obj.last_modified());
                let e = found.entry(id.to_owned()).or_insert(age);
                *e = (*e).min(age);
            }
        }
        let mut key_marker = None;
        let mut id_marker = None;
        loop {
            let out = match self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker)
                .set_upload_id_marker(id_marker)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) if not_implemented(&e) => {
                    multipart_listing_unsupported();
                    break;
                }
                Err(e) => return Err(s3_err("ListMultipartUploads", e)),
            };
            for u in out.uploads() {
                if let Some(id) = u
                    .key()
                    .and_then(|k| k.strip_prefix(&prefix))
                    .and_then(|k| k.split('/').next())
                {
                    let age = age_of(u.initiated());
                    let e = found.entry(id.to_owned()).or_insert(age);
                    *e = (*e).min(age);
                }
            }
            if out.is_truncated() == Some(true) {
                key_marker = out.next_key_marker().map(str::to_owned);
                id_marker = out.next_upload_id_marker().map(str::to_owned);
            } else {
                break;
            }
        }
        // Only prefixes named like an upload id are ours.
        Ok(found
            .into_iter()
            .filter_map(|(id, age_secs)| {
                Some(StoredUpload {
                    id: id.parse().ok()?,
                    age_secs,
                })
            })
            .collect())
    }

    /// Aborts every multipart upload under an upload's prefix and deletes its objects (for
    /// uploads the database no longer knows).
    async fn purge_upload(&self, id: &UploadId) -> StorageResult<()> {
        let out = match self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(self.upload_prefix(id.as_str()))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if not_implemented(&e) => {
                multipart_listing_unsupported();
                return self.delete_prefix(&self.upload_prefix(id.as_str())).await;
            }
            Err(e) => return Err(s3_err("ListMultipartUploads", e)),
        };
        for u in out.uploads() {
            if let (Some(key), Some(upload_id)) = (u.key(), u.upload_id()) {
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
                    .await;
            }
        }
        self.delete_prefix(&self.upload_prefix(id.as_str())).await
    }

    async fn blob_read(&self, digest: &Digest, start: u64, len: u64) -> StorageResult<ByteStream> {
        if len == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.blob_key(digest))
            .range(format!("bytes={start}-{}", start + len - 1))
            .send()
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    StorageError::NotFound
                } else {
                    s3_err("GetObject", e)
                }
            })?;
        let stream = futures_util::stream::unfold(out.body, |mut body| async move {
            match body.next().await {
                Some(Ok(b)) => Some((Ok(b), body)),
                Some(Err(e)) => Some((Err(io::Error::other(e)), body)),
                None => None,
            }
        });
        Ok(Box::pin(stream))
    }

    async fn blob_stat(&self, digest: &Digest) -> StorageResult<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.blob_key(digest))
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(s3_err("HeadObject", e)),
        }
    }

    async fn blob_put(&self, digest: &Digest, data: Bytes, _replace: bool) -> StorageResult<()> {
        // A PutObject replaces whatever is there, atomically; the same bytes either way.
        self.put_final(&self.blob_key(digest), data).await
    }

    async fn blob_delete(&self, digest: &Digest) -> StorageResult<()> {
        // GC deletes objects under row locks it must not outlive: a delete is one attempt,
        // bounded in time, never an SDK retry landing after the caller gave up.
        let once = aws_sdk_s3::config::Builder::default()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(DELETE_TIMEOUT)
                    .build(),
            );
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.blob_key(digest))
            .customize()
            .config_override(once)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(s3_err("DeleteObject", e)),
        }
    }

    async fn list_blobs(&self) -> StorageResult<Vec<StoredObject>> {
        let prefix = format!("{}docker/registry/v2/blobs/sha256/", self.root);
        let now = std::time::SystemTime::now();
        let mut blobs = Vec::new();
        for obj in self.list(&prefix).await? {
            let Some(rest) = obj.key().and_then(|k| k.strip_prefix(&prefix)) else {
                continue;
            };
            let mut parts = rest.split('/');
            let (_, hex, data) = (parts.next(), parts.next(), parts.next());
            if data != Some("data") {
                continue;
            }
            let Some(Ok(digest)) = hex.map(|h| format!("sha256:{h}").parse::<Digest>()) else {
                continue;
            };
            let age_secs = obj
                .last_modified()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                .and_then(|t| now.duration_since(t).ok())
                .map_or(0, |d| d.as_secs());
            blobs.push(StoredObject {
                digest,
                size: obj.size().unwrap_or(0).max(0) as u64,
                age_secs,
            });
        }
        Ok(blobs)
    }

    async fn list_files(&self, prefix: &str) -> StorageResult<Vec<String>> {
        let full = format!("{}{}", self.root, super::relative_path(prefix)?);
        Ok(self
            .list(&full)
            .await?
            .iter()
            .filter_map(|o| o.key()?.strip_prefix(&self.root).map(str::to_owned))
            .collect())
    }

    async fn read_file(&self, path: &str, max: u64) -> StorageResult<Bytes> {
        let key = format!("{}{}", self.root, super::relative_path(path)?);
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|se| se.is_no_such_key()) => {
                return Err(StorageError::NotFound);
            }
            Err(e) => return Err(s3_err("GetObject", e)),
        };
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Other(anyhow::anyhow!("S3 GetObject body: {e}")))?
            .into_bytes();
        if data.len() as u64 > max {
            return Err(StorageError::Other(anyhow::anyhow!(
                "{path} is larger than {max} bytes"
            )));
        }
        Ok(data)
    }

    async fn redirect_url(&self, digest: &Digest) -> StorageResult<Option<String>> {
        let presign = PresigningConfig::expires_in(self.redirect_expiry)
            .context("storage.redirect.expiry")
            .map_err(StorageError::Other)?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.blob_key(digest))
            .presigned(presign)
            .await
            .map_err(|e| s3_err("presign GetObject", e))?;
        Ok(Some(req.uri().to_owned()))
    }

    async fn open_upload<'a>(&'a self, id: &UploadId) -> StorageResult<Box<dyn UploadWriter + 'a>> {
        // No lock: concurrent writers cannot corrupt an upload (see the module comment).
        Ok(Box::new(S3Upload {
            driver: self,
            id: id.clone(),
        }))
    }
}

/// An upload opened by one request.
struct S3Upload<'a> {
    driver: &'a S3Driver,
    id: UploadId,
}

#[async_trait(?Send)]
impl UploadWriter for S3Upload<'_> {
    async fn append(
        &mut self,
        state: &str,
        offset: u64,
        body: &mut BodyStream<'_>,
    ) -> StorageResult<Appended> {
        self.driver
            .upload_append(self.id.as_str(), state, offset, body)
            .await
    }

    async fn commit(&mut self, state: &str, size: u64, digest: &Digest) -> StorageResult<()> {
        self.driver
            .upload_commit(self.id.as_str(), state, size, digest)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_that_any_blob_fits_ten_thousand() {
        let chunk = 10 << 20;
        assert_eq!(part_size(chunk, 1), chunk);
        assert_eq!(part_size(chunk, 1000), chunk);
        assert_eq!(part_size(chunk, 1001), 2 * chunk);
        assert_eq!(part_size(chunk, 10_000), chunk << 9);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(chunk, n)).sum();
        // 9.76 TiB: beyond S3's 5 TiB object limit, so no blob S3 can hold runs out of parts.
        assert_eq!(total, 10 * (1 << 20) * 1000 * 1023);
        assert!(total > 5 << 40, "{total}");
        assert_eq!(part_size(MAX_PART, 5000), MAX_PART, "capped at 5 GiB");
    }

    #[test]
    fn state_round_trips_and_sizes() {
        let st = UploadState {
            multipart: Some("u".into()),
            parts: vec![Part {
                n: 1,
                etag: "e".into(),
                size: 10,
            }],
            segments: vec![Segment {
                key: "k".into(),
                size: 3,
            }],
        };
        let back = UploadState::parse(&st.to_string()).unwrap();
        assert_eq!(back.size(), 13);
        assert_eq!(back.segment_bytes(), 3);
        assert_eq!(UploadState::parse("").unwrap().size(), 0);
        assert!(UploadState::parse("{not json").is_err());
    }
}

/// The SDK's HTTP(S) client: hyper with rustls on ring, trusting the platform's roots.
pub fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}
