//! Blob uploads: sessions, chunks, completion.
//!
//! An upload's state — size, running SHA-256 state, storage driver state — is in the database
//! after every request, so any replica can take the next request. A request holds the storage's
//! upload lock while it writes, re-reads the state under the lock, and saves the new state only
//! if nobody moved the upload on meanwhile.
//!
//! Where the driver's appends are not durable by themselves (the filesystem), a PATCH does not
//! wait for its bytes to reach the disk: the saved state may run up to [`SYNC_EVERY`] bytes
//! ahead of the checkpoint, the last state known durable. The bytes past the checkpoint are
//! in the page cache of the kernel that wrote them (its boot id is saved with them). A request
//! on that kernel trusts them, as any process there reads the same cache; a request anywhere
//! else (another machine, or the same one after a crash or reboot) first reads them back and
//! checks them against the saved hash state, and falls back to the checkpoint when they do
//! not match. The final PUT makes everything durable before the blob commits. So a crash can
//! cost a client a resume from an earlier offset, never a wrong blob.

use std::sync::OnceLock;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{Registry, io_stream};
use crate::error::{Error, Result};
use crate::meta::UploadRecord;
use crate::oci::{Digest, RepoName, Sha256Hasher, UploadId};
use crate::storage::UploadWriter;

/// How many bytes past its checkpoint an upload may hold before a PATCH syncs them. Bounds
/// what a crash can make a client send again and what checking unsynced bytes reads back.
pub const SYNC_EVERY: u64 = 64 << 20;

/// This kernel's boot id: bytes past a checkpoint that another boot id wrote may be gone.
/// Where there is none to read (not Linux), every process counts as its own kernel.
pub fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("process-{}", UploadId::generate()))
    })
}

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
        self.check_unsynced(writer, record, range.is_none()).await?;
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
        let mut hashed = io_stream(body).map(|r: std::io::Result<Bytes>| {
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
        let mut next = record.clone();
        next.size = record.size + appended.written;
        next.hash_state = hasher.save();
        next.driver_state = appended.state;
        if appended.durable {
            next.checkpoint_at_end();
        } else if save == Save::Progress && next.size - next.synced_size >= SYNC_EVERY {
            self.sync_or_roll_back(writer, record).await?;
            next.checkpoint_at_end();
        } else {
            next.unsynced_on = boot_id().to_owned();
        }
        if save == Save::Progress {
            self.save_progress(record.size, &mut next).await?;
        }
        *record = next;
        Ok(())
    }

    /// Saves `next` as the upload's state if the upload is still at `expected_size`. Where
    /// the database may lose such a save in a system crash, `next` records this kernel as the
    /// one whose crash could take it back (see `check_unsynced`).
    async fn save_progress(&self, expected_size: u64, next: &mut UploadRecord) -> Result<()> {
        if self.meta.relaxed_writes_may_be_lost() {
            next.unsynced_on = boot_id().to_owned();
        }
        if self.meta.save_upload_progress(expected_size, next).await? {
            return Ok(());
        }
        // Cannot happen while the storage lock serialises writers; refuse rather than guess.
        Err(Error::BlobUploadInvalid(format!(
            "upload {} was changed by a concurrent request; check its status and resume",
            next.id
        )))
    }

    /// Makes the upload's bytes durable. Should that fail, the bytes past the checkpoint are
    /// not to be trusted (a failed writeback is reported once, and the page cache may keep
    /// serving bytes the disk never got), so the upload goes back to its checkpoint.
    async fn sync_or_roll_back(
        &self,
        writer: &mut dyn UploadWriter,
        record: &mut UploadRecord,
    ) -> Result<()> {
        let Err(e) = writer.sync().await else {
            return Ok(());
        };
        let mut back = record.rolled_back()?;
        self.save_progress(record.size, &mut back).await?;
        tracing::error!(upload = %record.id, error = %e, size = back.size, "could not make an upload's data durable; it was rolled back to its checkpoint");
        *record = back;
        Err(e.into())
    }

    /// An upload state written on another kernel (another machine, or this one before a
    /// crash) is confirmed before anything is added to it. Bytes past the checkpoint are
    /// trusted only once they are read back and match the saved hash state (then they are
    /// synced here and become the checkpoint); otherwise the upload goes back to its
    /// checkpoint and the request is refused with the offset to resume from. Where the
    /// database may have lost the latest saves in that crash (relaxed writes), the state may
    /// also be older than what the client was last told: a request that does not say where
    /// its bytes go (`implicit_offset`: no Content-Range) is refused once with the offset.
    async fn check_unsynced(
        &self,
        writer: &mut dyn UploadWriter,
        record: &mut UploadRecord,
        implicit_offset: bool,
    ) -> Result<()> {
        if record.unsynced_on.is_empty() || record.unsynced_on == boot_id() {
            return Ok(());
        }
        let written_on = record.unsynced_on.clone();
        if record.size > record.synced_size {
            self.check_unsynced_bytes(writer, record).await?;
        } else {
            // Nothing past the checkpoint to read back: the state is confirmed here.
            let mut next = record.clone();
            next.unsynced_on.clear();
            self.save_progress(record.size, &mut next).await?;
            *record = next;
        }
        if implicit_offset && self.meta.relaxed_writes_may_be_lost() {
            tracing::warn!(
                upload = %record.id,
                %written_on,
                size = record.size,
                "an upload last saved before a restart of the system may have lost its latest progress; the client is asked to resume from the saved offset"
            );
            return Err(Error::RangeInvalid {
                message: format!(
                    "the upload was last saved before the system restarted, so the registry may hold less of it than it acknowledged; it holds {} bytes: resume from byte {} (or send a Content-Range)",
                    record.size, record.size
                ),
                offset: record.size,
            });
        }
        Ok(())
    }

    /// The read-back half of `check_unsynced`: the bytes past the checkpoint.
    async fn check_unsynced_bytes(
        &self,
        writer: &mut dyn UploadWriter,
        record: &mut UploadRecord,
    ) -> Result<()> {
        let mut hasher = record.checkpoint_hasher()?;
        let len = record.size - record.synced_size;
        let intact = match writer
            .read_back(&record.driver_state, record.synced_size, len)
            .await
        {
            // Durable appends: nothing to check (and nothing a roll back could keep consistent
            // with the driver's state).
            Ok(None) => true,
            Ok(Some(mut bytes)) => {
                let mut read = 0u64;
                let mut failed = false;
                while let Some(piece) = bytes.next().await {
                    match piece {
                        Ok(b) => {
                            read += b.len() as u64;
                            hasher.update(&b);
                        }
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                !failed && read == len && hasher.save() == record.hash_state
            }
            Err(_) => false,
        };
        if intact && writer.sync().await.is_ok() {
            let mut next = record.clone();
            next.checkpoint_at_end();
            self.save_progress(record.size, &mut next).await?;
            *record = next;
            return Ok(());
        }
        let mut back = record.rolled_back()?;
        tracing::warn!(
            upload = %record.id,
            written_on = %record.unsynced_on,
            size = record.size,
            checkpoint = back.size,
            "bytes past an upload's checkpoint, written before a crash or on another machine, did not survive; the upload resumes from its checkpoint"
        );
        self.save_progress(record.size, &mut back).await?;
        let lost = record.size;
        *record = back;
        // Whatever this request meant to do, it assumed the upload held `lost` bytes: a
        // streamed PATCH would append in the wrong place and a PUT would close the wrong blob.
        // The client checks the status and resumes.
        Err(Error::RangeInvalid {
            message: format!(
                "the upload's bytes past {} (of {lost}) did not survive a crash or were written on another machine and lost; resume from byte {}",
                record.size, record.size
            ),
            offset: record.size,
        })
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
        if record.size > record.synced_size {
            // Synced here, where a failure can roll the upload back; the commit's own sync
            // then finds nothing left to write.
            self.sync_or_roll_back(writer.as_mut(), &mut record).await?;
        }
        self.commit_upload(repo, writer.as_mut(), &record, digest, true)
            .await
    }

    /// Checks the digest of what `record` holds and commits the blob: the object is put in
    /// place (staged before the blob row's lock where the driver can, checked or placed under
    /// it), then the row, its link and the end of the upload (its row, if `rowed`) commit
    /// together. Returns the blob's size.
    async fn commit_upload(
        &self,
        repo: &RepoName,
        writer: &mut dyn UploadWriter,
        record: &UploadRecord,
        digest: &Digest,
        rowed: bool,
    ) -> Result<u64> {
        let id = &record.id;
        let hasher = Sha256Hasher::restore(&record.hash_state).ok_or_else(|| {
            Error::internal("upload", format!("corrupt hash state for upload {id}"))
        })?;
        let actual = hasher.digest();
        if actual != *digest {
            // Nothing of a mismatched upload is kept.
            if rowed {
                self.meta.delete_upload(id).await?;
            }
            self.storage.upload_abort(id, &record.driver_state).await?;
            return Err(Error::DigestInvalid(format!(
                "the uploaded content ({} bytes) has digest {actual}, not {digest}; the upload was discarded",
                record.size
            )));
        }

        // The object goes in place before the row is locked where the driver can keep the
        // upload's data meanwhile (the filesystem links it): the slow part of placing it (the
        // directory sync) then holds no lock, which on SQLite is the one writer's.
        let staged = writer
            .stage(&record.driver_state, record.size, digest)
            .await?;
        if staged {
            crate::failpoint::hit("upload.staged", digest.as_str()).await;
        }
        let commit = self.meta.begin_blob_commit(digest, record.size).await?;
        let mut needs_object = commit.needs_object();
        if staged || !needs_object {
            // Checked under the row lock rather than trusted: a staged object may have been
            // deleted by a GC that held the row until now, and pushing a blob again repairs a
            // lost or damaged object the row says is stored.
            let found = self.storage.blob_stat(digest).await?;
            needs_object = found != Some(record.size);
            if needs_object && !commit.needs_object() {
                tracing::error!(
                    %digest,
                    ?found,
                    expected = record.size,
                    "a stored blob's object was missing or damaged; restoring it from this upload"
                );
            } else if needs_object {
                tracing::info!(%digest, "a staged object was removed by a concurrent GC; placing it again");
            }
        }
        if needs_object {
            writer
                .commit(&record.driver_state, record.size, digest)
                .await?;
        }
        commit.finish(repo, digest, rowed.then_some(id)).await?;
        if !needs_object {
            // The object is in place (stored before, or staged by this request); the
            // upload's own copy of the bytes goes.
            if let Err(e) = self.storage.upload_abort(id, &record.driver_state).await {
                tracing::warn!(upload = %id, error = %e, "could not remove the data of a deduplicated upload");
            }
        }
        Ok(record.size)
    }

    /// POST ?digest=: a whole blob in one request. It gets no upload row: no client can
    /// address the session, nothing resumes it, and the only commits are the blob's own. Should
    /// the request die half way, its data is upload data no row knows, which upload purging
    /// removes (`purge_uploads`). A body that says it holds at most [`SMALL_BLOB`] bytes
    /// (`length`, its Content-Length) is taken into memory and stored in one step instead.
    #[tracing::instrument(skip_all, fields(repository = %repo))]
    pub async fn monolithic_upload<S, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        length: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let _in_flight = InFlight::start();
        if let Some(length) = length.filter(|&n| n <= SMALL_BLOB) {
            let data = read_whole(body, length).await?;
            return self.put_small_blob(repo, digest, data).await;
        }
        let id = UploadId::generate();
        let mut record = UploadRecord {
            id: id.clone(),
            repository: repo.to_string(),
            size: 0,
            hash_state: Sha256Hasher::new().save(),
            driver_state: String::new(),
            synced_size: 0,
            synced_hash_state: Sha256Hasher::new().save(),
            unsynced_on: String::new(),
        };
        let mut writer = self.storage.open_upload(&id).await?;
        let mut result = self
            .append_locked(writer.as_mut(), &mut record, None, body, Save::Nothing)
            .await;
        if result.is_ok() {
            result = self
                .commit_upload(repo, writer.as_mut(), &record, digest, false)
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

    /// A small blob whole from memory: checked, its object stored before the blob row is
    /// locked and checked again under the lock (a GC that held the old row may have deleted it
    /// meanwhile; then it is stored again), then row and link commit. Nothing is stored when
    /// the digest does not match.
    async fn put_small_blob(&self, repo: &RepoName, digest: &Digest, data: Bytes) -> Result<u64> {
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(Error::DigestInvalid(format!(
                "the uploaded content ({} bytes) has digest {actual}, not {digest}; nothing was stored",
                data.len()
            )));
        }
        let size = data.len() as u64;
        self.storage.blob_put(digest, data.clone(), false).await?;
        crate::failpoint::hit("upload.staged", digest.as_str()).await;
        let commit = self.meta.begin_blob_commit(digest, size).await?;
        let found = self.storage.blob_stat(digest).await?;
        if found != Some(size) {
            tracing::info!(%digest, ?found, "a stored object was missing or damaged under the row lock; storing it again");
            self.storage.blob_put(digest, data, true).await?;
        }
        commit.finish(repo, digest, None).await?;
        Ok(size)
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

impl UploadRecord {
    /// Everything the upload holds is durable: the checkpoint moves to its end.
    fn checkpoint_at_end(&mut self) {
        self.synced_size = self.size;
        self.synced_hash_state = self.hash_state.clone();
        self.unsynced_on.clear();
    }

    /// The hash state at the checkpoint.
    fn checkpoint_hasher(&self) -> Result<Sha256Hasher> {
        if self.synced_size == 0 && self.synced_hash_state.is_empty() {
            return Ok(Sha256Hasher::new());
        }
        Sha256Hasher::restore(&self.synced_hash_state).ok_or_else(|| {
            Error::internal(
                "upload",
                format!("corrupt checkpoint hash state for upload {}", self.id),
            )
        })
    }

    /// The upload as it was at its checkpoint.
    fn rolled_back(&self) -> Result<UploadRecord> {
        let mut back = self.clone();
        back.size = self.synced_size;
        back.hash_state = self.checkpoint_hasher()?.save();
        back.synced_hash_state = back.hash_state.clone();
        back.unsynced_on.clear();
        Ok(back)
    }
}

/// Monolithic pushes up to this size (by their Content-Length) are read into memory and stored
/// in one step: no upload file, no staging link, one write and sync of the object.
pub const SMALL_BLOB: u64 = 1 << 20;

/// A body of exactly `length` bytes, in one buffer.
async fn read_whole<S, E>(body: S, length: u64) -> Result<Bytes>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| Error::BlobUploadInvalid(format!("reading the request body: {e}")))?;
        let held = first.as_ref().map_or(0, |f| f.len()) + buf.len();
        if (held + chunk.len()) as u64 > length {
            return Err(Error::SizeInvalid(format!(
                "the body holds more than its Content-Length of {length} bytes"
            )));
        }
        // A body in one chunk (the usual case) is kept as it is, without a copy.
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            Some(f) => {
                buf.reserve(length as usize);
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
            None => buf.extend_from_slice(&chunk),
        }
    }
    let data = first.unwrap_or_else(|| buf.freeze());
    if data.len() as u64 != length {
        return Err(Error::BlobUploadInvalid(format!(
            "the body ended after {} of its {length} bytes; nothing was stored",
            data.len()
        )));
    }
    Ok(data)
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
