//! Use cases: the order in which storage is written and the database committed.
//!
//! Bytes first, rows second: an upload's bytes are durable before its offset is saved; a blob's
//! object is in place before its row is committed; nothing is answered before both. Deletes go
//! the other way (rows first; the bytes go when GC reaches them).

mod uploads;

use std::io;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::meta::{DeleteOutcome, ManifestRecord, MetaStore, NewManifest, PutManifestOutcome};
use crate::oci::{Digest, ParsedManifest, Reference, RepoName, manifest};
use crate::storage::{BlobStore, ByteStream, StorageError};

pub use uploads::{ContentRange, UploadStatus};

/// Manifests larger than this are refused with 413 (Distribution's limit too).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

pub struct Registry {
    pub meta: MetaStore,
    pub storage: BlobStore,
    pub delete_enabled: bool,
    pub redirect_enabled: bool,
}

/// How a blob GET is answered.
pub enum BlobBody {
    Redirect(String),
    Bytes(ByteStream),
}

pub struct StoredManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => Error::BlobUnknown("stored object not found".into()),
            StorageError::Body(msg) => {
                Error::BlobUploadInvalid(format!("request body failed: {msg}"))
            }
            e @ StorageError::UploadDataLost { .. } => {
                Error::BlobUploadInvalid(format!("{e}; cancel this upload and start a new one"))
            }
            StorageError::Io(e) => Error::internal("storage", e),
            StorageError::Other(e) => Error::Internal(e.context("storage")),
        }
    }
}

impl Registry {
    // ---- blobs -------------------------------------------------------------------------

    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.meta
            .blob_in_repository(repo, digest)
            .await?
            .ok_or_else(|| Error::BlobUnknown(digest.to_string()))
    }

    /// The body for `len` bytes from `start` of a blob whose size the caller checked.
    pub async fn blob_body(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
        whole: bool,
    ) -> Result<BlobBody> {
        if whole && self.redirect_enabled {
            if let Some(url) = self.storage.redirect_url(digest).await? {
                return Ok(BlobBody::Redirect(url));
            }
        }
        Ok(BlobBody::Bytes(
            self.storage.blob_read(digest, start, len).await?,
        ))
    }

    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.require_delete()?;
        match self.meta.unlink_blob(repo, digest).await? {
            DeleteOutcome::Deleted => Ok(()),
            DeleteOutcome::NotFound => Err(Error::BlobUnknown(digest.to_string())),
            DeleteOutcome::ReferencedBy(m) => Err(Error::Conflict(format!(
                "blob {digest} is referenced by manifest {m} in {repo}; delete that manifest first"
            ))),
        }
    }

    /// Cross-repository mount: links a stored blob into `repo` without moving bytes. With
    /// `from`, the blob must be servable there; without, any stored blob can be mounted.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<Option<u64>> {
        let available = match from {
            Some(source) => self.meta.blob_in_repository(source, digest).await?,
            None => self.meta.blob_stored(digest).await?,
        };
        if available.is_none() {
            return Ok(None);
        }
        Ok(self.meta.link_blob(repo, digest).await?)
    }

    // ---- manifests ---------------------------------------------------------------------

    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: &Bytes,
    ) -> Result<StoredManifest> {
        let parsed: ParsedManifest =
            manifest::parse(body, content_type).map_err(Error::ManifestInvalid)?;
        let digest = Digest::of(body);
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return Err(Error::DigestInvalid(format!(
                    "the manifest's digest is {digest}, not {d} as the URL says"
                )));
            }
        }
        let tag = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        let outcome = self
            .meta
            .put_manifest(&NewManifest {
                repository: repo,
                digest: &digest,
                media_type: parsed.media_type.as_str(),
                artifact_type: parsed.artifact_type.as_deref(),
                config: parsed.config.as_ref(),
                subject: parsed.subject.as_ref(),
                payload: body,
                blobs: &parsed.blobs,
                children: &parsed.children,
                tag,
            })
            .await?;
        match outcome {
            PutManifestOutcome::Stored => Ok(StoredManifest {
                digest,
                subject: parsed.subject,
            }),
            PutManifestOutcome::MissingBlob(d) => Err(Error::ManifestBlobUnknown(format!(
                "blob {d} (push it to {repo} first, or mount it)"
            ))),
            PutManifestOutcome::MissingChild(d) => Err(Error::ManifestBlobUnknown(format!(
                "child manifest {d} (push it to {repo} before the index)"
            ))),
        }
    }

    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestRecord> {
        let found = match reference {
            Reference::Tag(t) => self.meta.manifest_by_tag(repo, t).await?,
            Reference::Digest(d) => self.meta.manifest_by_digest(repo, d).await?,
        };
        found.ok_or_else(|| Error::ManifestUnknown(format!("{repo}:{reference}")))
    }

    /// By tag: removes the tag only. By digest: removes the manifest and its tags.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.require_delete()?;
        match reference {
            Reference::Tag(t) => {
                if self.meta.delete_tag(repo, t).await? {
                    Ok(())
                } else {
                    Err(Error::ManifestUnknown(format!("{repo}:{t}")))
                }
            }
            Reference::Digest(d) => match self.meta.delete_manifest(repo, d).await? {
                DeleteOutcome::Deleted => Ok(()),
                DeleteOutcome::NotFound => Err(Error::ManifestUnknown(format!("{repo}@{d}"))),
                DeleteOutcome::ReferencedBy(parent) => Err(Error::Conflict(format!(
                    "manifest {d} is listed by index {parent} in {repo}; delete the index first"
                ))),
            },
        }
    }

    fn require_delete(&self) -> Result<()> {
        if self.delete_enabled {
            Ok(())
        } else {
            Err(Error::Unsupported(
                "deletes are disabled on this registry (storage.delete.enabled: false)".into(),
            ))
        }
    }

    // ---- listings ----------------------------------------------------------------------

    pub async fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<String>> {
        self.meta
            .tags(repo, last, limit)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.to_string()))
    }

    pub async fn catalog(&self, last: Option<&str>, limit: Option<u32>) -> Result<Vec<String>> {
        Ok(self.meta.catalog(last, limit).await?)
    }

    /// The referrers of `subject` as an OCI image index (empty, never 404, for an unknown
    /// subject).
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Value> {
        let referrers = self.meta.referrers(repo, subject, artifact_type).await?;
        let manifests: Vec<Value> = referrers
            .into_iter()
            .map(|r| {
                let mut d = json!({
                    "mediaType": r.media_type,
                    "digest": r.digest.as_str(),
                    "size": r.payload.len(),
                });
                if let Some(at) = r.artifact_type {
                    d["artifactType"] = Value::String(at);
                }
                let annotations = serde_json::from_slice::<Value>(&r.payload)
                    .ok()
                    .and_then(|v| v.get("annotations").cloned())
                    .filter(Value::is_object);
                if let Some(a) = annotations {
                    d["annotations"] = a;
                }
                d
            })
            .collect();
        Ok(json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "manifests": manifests,
        }))
    }
}

/// Adapts a request body so that its bytes feed `hasher` as the storage driver pulls them.
pub(crate) fn io_stream<S, E>(
    body: S,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Unpin
where
    S: futures_util::Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures_util::StreamExt;
    body.map(|r| r.map_err(|e| io::Error::other(e.to_string())))
}
