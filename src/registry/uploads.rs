//! Blob uploads: sessions, chunks, completion.
//!
//! An upload's state — size, running SHA-256 state, storage driver state — is in the database
//! after every request, so any replica can take the next request. A request holds the storage's
//! upload lock while it writes, re-reads the state under the lock, and saves the new state only
//! if nobody moved the upload on meanwhile.

use std::io;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{Registry, io_stream};
use crate::error::{Error, Result};
use crate::meta::UploadRecord;
use crate::oci::{Digest, RepoName, Sha256Hasher, UploadId};
use crate::storage::UploadWriter;

/// An upload's position, for the `Range` and `Location` headers.
#[derive(Debug, Clone)]
pub struct UploadStatus {
    pub id: UploadId,
    pub size: u64,
}

/// A chunk's `Content-Range: <start>-<end>` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
}

impl ContentRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
}

impl Registry {
    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadStatus> {
        let id = UploadId::generate();
        self.meta
            .create_upload(repo, &id, &Sha256Hasher::new().save(), "")
            .await?;
        Ok(UploadStatus { id, size: 0 })
    }

    async fn upload_record(&self, repo: &RepoName, id: &UploadId) -> Result<UploadRecord> {
        match self.meta.upload(id).await? {
            Some(u) if u.repository == repo.as_str() => Ok(u),
            _ => Err(Error::BlobUploadUnknown(format!("upload {id} in {repo}"))),
        }
    }

    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn upload_status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadStatus> {
        let u = self.upload_record(repo, id).await?;
        Ok(UploadStatus {
            id: u.id,
            size: u.size,
        })
    }

    /// Opens the upload in storage (which serialises writers) and re-reads its state then.
    async fn open_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<(Box<dyn UploadWriter + '_>, UploadRecord)> {
        // Checked before touching storage, so unknown ids create nothing there.
        self.upload_record(repo, id).await?;
        let writer = self.storage.open_upload(id).await?;
        let record = self.upload_record(repo, id).await?;
        Ok((writer, record))
    }

    /// Writes `body` at the upload's end and, with `save`, records the new state (so that any
    /// replica can resume from it). A request that completes the upload in the same breath
    /// need not: nothing resumes from a state the next step replaces.
    async fn append_locked<S, E>(
        &self,
        writer: &mut dyn UploadWriter,
        record: &mut UploadRecord,
        range: Option<ContentRange>,
        body: S,
        save: Save,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if let Some(r) = range {
            if r.start != record.size {
                return Err(Error::RangeInvalid {
                    message: format!(
                        "chunk starts at byte {} but the upload holds {} bytes; resume from byte {}",
                        r.start, record.size, record.size
                    ),
                    offset: record.size,
                });
            }
        }
        let mut hasher = Sha256Hasher::restore(&record.hash_state).ok_or_else(|| {
            Error::internal(
                "upload",
                format!("corrupt hash state for upload {}", record.id),
            )
        })?;
        let mut hashed = io_stream(body).map(|r: io::Result<Bytes>| {
            if let Ok(b) = &r {
                hasher.update(b);
            }
            r
        });
        let appended = writer
            .append(&record.driver_state, record.size, &mut hashed)
            .await?;
        if let Some(r) = range {
            if appended.written != r.len() {
                return Err(Error::RangeInvalid {
                    message: format!(
                        "Content-Range announced {} bytes but the body held {}",
                        r.len(),
                        appended.written
                    ),
                    offset: record.size,
                });
            }
        }
        if appended.written == 0 {
            return Ok(());
        }
        let new_size = record.size + appended.written;
        let hash_state = hasher.save();
        if save == Save::Progress
            && !self
                .meta
                .save_upload_progress(
                    &record.id,
                    record.size,
                    new_size,
                    &hash_state,
                    &appended.state,
                )
                .await?
        {
            // Cannot happen while the storage lock serialises writers; refuse rather than guess.
            return Err(Error::BlobUploadInvalid(format!(
                "upload {} was changed by a concurrent request; check its status and resume",
                record.id
            )));
        }
        record.size = new_size;
        record.hash_state = hash_state;
        record.driver_state = appended.state;
        Ok(())
    }

    /// PATCH: appends a chunk (with `Content-Range`) or a stream (without).
    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn append_upload<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        range: Option<ContentRange>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let _in_flight = InFlight::start();
        let (mut writer, mut record) = self.open_upload(repo, id).await?;
        self.append_locked(writer.as_mut(), &mut record, range, body, Save::Progress)
            .await?;
        Ok(UploadStatus {
            id: record.id,
            size: record.size,
        })
    }

    /// PUT ?digest=: appends the final chunk (if any), checks the digest and commits the blob.
    /// Returns the blob's size.
    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn complete_upload<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        range: Option<ContentRange>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let _in_flight = InFlight::start();
        let (mut writer, mut record) = self.open_upload(repo, id).await?;
        self.append_locked(writer.as_mut(), &mut record, range, body, Save::Progress)
            .await?;
        self.commit_upload(repo, writer.as_mut(), &record, digest)
            .await
    }

    /// Checks the digest of what `record` holds and commits the blob: the object is put in
    /// place under the blob row's lock, then the row, its link and the end of the upload
    /// commit together. Returns the blob's size.
    async fn commit_upload(
        &self,
        repo: &RepoName,
        writer: &mut dyn UploadWriter,
        record: &UploadRecord,
        digest: &Digest,
    ) -> Result<u64> {
        let id = &record.id;
        let hasher = Sha256Hasher::restore(&record.hash_state).ok_or_else(|| {
            Error::internal("upload", format!("corrupt hash state for upload {id}"))
        })?;
        let actual = hasher.digest();
        if actual != *digest {
            // Nothing of a mismatched upload is kept.
            self.meta.delete_upload(id).await?;
            self.storage.upload_abort(id, &record.driver_state).await?;
            return Err(Error::DigestInvalid(format!(
                "the uploaded content ({} bytes) has digest {actual}, not {digest}; the upload was discarded",
                record.size
            )));
        }

        let commit = self.meta.begin_blob_commit(digest, record.size).await?;
        let mut needs_object = commit.needs_object();
        if !needs_object {
            // The row says the object is stored; check under the row lock rather than trust
            // it, so that pushing a blob again repairs a lost or damaged object.
            let found = self.storage.blob_stat(digest).await?;
            if found != Some(record.size) {
                tracing::error!(
                    %digest,
                    ?found,
                    expected = record.size,
                    "a stored blob's object was missing or damaged; restoring it from this upload"
                );
                needs_object = true;
            }
        }
        if needs_object {
            writer
                .commit(&record.driver_state, record.size, digest)
                .await?;
        }
        commit.finish(repo, digest, id).await?;
        if !needs_object {
            // The registry already stored these bytes.
            if let Err(e) = self.storage.upload_abort(id, &record.driver_state).await {
                tracing::warn!(upload = %id, error = %e, "could not remove the data of a deduplicated upload");
            }
        }
        Ok(record.size)
    }

    /// POST ?digest=: a whole blob in one request. It gets no upload row: no client can
    /// address the session, nothing resumes it, and the only commits are the blob's own. Should
    /// the request die half way, its data is upload data no row knows, which upload purging
    /// removes (`purge_uploads`).
    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn monolithic_upload<S, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let _in_flight = InFlight::start();
        let id = UploadId::generate();
        let mut record = UploadRecord {
            id: id.clone(),
            repository: repo.to_string(),
            size: 0,
            hash_state: Sha256Hasher::new().save(),
            driver_state: String::new(),
        };
        let mut writer = self.storage.open_upload(&id).await?;
        let mut result = self
            .append_locked(writer.as_mut(), &mut record, None, body, Save::Nothing)
            .await;
        if result.is_ok() {
            result = self
                .commit_upload(repo, writer.as_mut(), &record, digest)
                .await
                .map(|_| ());
        }
        drop(writer);
        if let Err(e) = result {
            // Its bytes go at once (the failure may be a full disk, and the space must come
            // back even if the database cannot write now).
            if let Err(e) = self.storage.upload_abort(&id, &record.driver_state).await {
                tracing::warn!(upload = %id, error = %e, "could not remove a failed upload's data; upload purging will");
            }
            return Err(e);
        }
        Ok(record.size)
    }

    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let record = self.upload_record(repo, id).await?;
        self.meta.delete_upload(id).await?;
        self.storage.upload_abort(id, &record.driver_state).await?;
        Ok(())
    }

    /// Aborts uploads untouched for longer than `age`, and removes upload data in storage
    /// that no upload row knows (a request that died before saving its state leaves such data,
    /// e.g. an S3 multipart upload) once it is as old. Returns how many (would be) purged.
    #[tracing::instrument(skip_all)]
    pub async fn purge_uploads(
        &self,
        age: std::time::Duration,
        dry_run: bool,
    ) -> anyhow::Result<usize> {
        let before = crate::meta::now_ms() - age.as_millis() as i64;
        let mut purged = 0;
        for stored in self.storage.stored_uploads().await? {
            let id = stored.id;
            if stored.age_secs < age.as_secs() || self.meta.upload(&id).await?.is_some() {
                continue;
            }
            purged += 1;
            if dry_run {
                tracing::info!(upload = %id, "would purge upload data no upload knows (dry run)");
            } else {
                self.storage.purge_upload(&id).await?;
                tracing::info!(upload = %id, "purged upload data no upload knows");
            }
        }
        let stale = self.meta.stale_uploads(before).await?;
        for u in &stale {
            if dry_run {
                tracing::info!(upload = %u.id, repository = %u.repository, size = u.size, "would purge stale upload (dry run)");
                continue;
            }
            if self.meta.delete_upload(&u.id).await? {
                self.storage.upload_abort(&u.id, &u.driver_state).await?;
                tracing::info!(upload = %u.id, repository = %u.repository, size = u.size, "purged stale upload");
            }
        }
        Ok(purged + stale.len())
    }
}

/// Counts an upload request writing to storage (the uploads-in-flight gauge) while it lives.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!(crate::metrics::UPLOADS_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::UPLOADS_IN_FLIGHT).decrement(1.0);
    }
}

/// Whether an append records the upload's new state in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Save {
    /// The state a client (on any replica) resumes from: a PATCH, or a PUT's final chunk,
    /// which must be resumable should the commit fail.
    Progress,
    /// A monolithic POST ?digest=: the bytes go straight on to the commit in this request,
    /// and if that fails the whole upload is discarded; no one can resume it (it has no row).
    Nothing,
}
