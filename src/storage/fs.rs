//! The filesystem driver.
//!
//! An upload is one file, `wharf/uploads/<id>/data`, written at the offset the database
//! records, fdatasync'ed when the caller asks (at checkpoints, and before the blob commits:
//! appends are not durable by themselves), and linked (staged) or renamed into the blob path
//! when the upload completes (then the directory is fsync'ed). An exclusive `flock` on the upload file
//! serialises requests for the same upload, across processes too; bytes past the recorded
//! offset (a request that failed half way) are cut off before the next append.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::task::spawn_blocking;

use super::{
    Appended, BlobStore, BodyStream, ByteStream, StorageError, StorageResult, StoredObject,
    StoredUpload, UploadWriter,
};
use crate::oci::{Digest, UploadId};

/// Appends are written in pieces of this size, one piece in flight while the next arrives.
const WRITE_PIECE: usize = 1 << 20;
/// Blobs are read in pieces of this size.
const READ_PIECE: u64 = 512 << 10;

/// Starts writing a range of dirty pages to disk without waiting for it, so that the next
/// fdatasync (a checkpoint, or the commit) finds little left to write: a large push then streams to
/// disk as it arrives instead of writing everything at the end. Only a hint: durability still
/// comes from fdatasync.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, at: u64, len: usize) {
    // SAFETY: sync_file_range on a valid open descriptor; it reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _at: u64, _len: usize) {}

/// Exactly `len` bytes at `pos`, read straight into a fresh buffer (not zeroed first: at
/// GB/s, clearing every buffer before the read overwrites it costs a copy's worth of CPU).
fn read_piece(file: &File, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let spare = buf.spare_capacity_mut();
        // SAFETY: pread writes at most `len - filled` bytes (the spare capacity's length or
        // less) through the pointer into memory this Vec owns; `set_len` below only covers
        // the bytes it reports written.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                len - filled,
                (pos + filled as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "blob is shorter than recorded",
            ));
        }
        // SAFETY: the first `filled + n` bytes are initialised (pread wrote `n` of them).
        unsafe { buf.set_len(filled + n as usize) };
    }
    Ok(Bytes::from(buf))
}

pub struct FsDriver {
    root: PathBuf,
}

/// An upload opened by one request: its data file, under an exclusive `flock`.
struct FsUpload<'a> {
    driver: &'a FsDriver,
    id: UploadId,
    file: Arc<File>,
    /// The file's length when the lock was taken (no one else writes it while we hold it).
    opened_len: u64,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    spawn_blocking(f).await.map_err(io::Error::other)?
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FsDriver {
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("docker/registry/v2/blobs"))?;
        std::fs::create_dir_all(root.join("wharf/uploads"))?;
        Ok(FsDriver { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("docker/registry/v2/blobs")
            .join(digest.algorithm())
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// An [`UploadId`] holds no path separator or dot, so this stays under the root.
    fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.root.join("wharf/uploads").join(id.as_str())
    }
}

#[async_trait]
impl BlobStore for FsDriver {
    fn describe(&self) -> String {
        format!("filesystem at {}", self.root.display())
    }

    async fn check(&self) -> StorageResult<()> {
        let probe = self.root.join("wharf/.ready");
        blocking(move || {
            std::fs::write(&probe, b"ok")?;
            std::fs::remove_file(&probe)
        })
        .await?;
        Ok(())
    }

    async fn open_upload<'a>(&'a self, id: &UploadId) -> StorageResult<Box<dyn UploadWriter + 'a>> {
        let dir = self.upload_dir(id);
        let file = blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join("data"))?;
            // SAFETY: flock on a valid open descriptor; it is released when the file closes.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let len = file.metadata()?.len();
            Ok((file, len))
        })
        .await?;
        Ok(Box::new(FsUpload {
            driver: self,
            id: id.clone(),
            file: Arc::new(file.0),
            opened_len: file.1,
        }))
    }

    async fn upload_abort(&self, id: &UploadId, _state: &str) -> StorageResult<()> {
        let dir = self.upload_dir(id);
        blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await?;
        Ok(())
    }

    async fn purge_upload(&self, id: &UploadId) -> StorageResult<()> {
        self.upload_abort(id, "").await
    }

    async fn blob_read(&self, digest: &Digest, start: u64, len: u64) -> StorageResult<ByteStream> {
        let path = self.blob_path(digest);
        // A blob that fits in one piece is opened and read in one blocking call.
        let (file, first) = blocking(move || {
            let file = File::open(path)?;
            let first = if len <= READ_PIECE {
                Some(read_piece(&file, start, len as usize)?)
            } else {
                None
            };
            Ok((file, first))
        })
        .await
        .map_err(not_found)?;
        if let Some(piece) = first {
            return Ok(Box::pin(futures_util::stream::once(
                async move { Ok(piece) },
            )));
        }
        Ok(read_stream(Arc::new(file), start, len))
    }

    async fn blob_stat(&self, digest: &Digest) -> StorageResult<Option<u64>> {
        let path = self.blob_path(digest);
        match blocking(move || std::fs::metadata(path)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Upload directories and the age in seconds of their data.
    async fn stored_uploads(&self) -> StorageResult<Vec<StoredUpload>> {
        let base = self.root.join("wharf/uploads");
        let found = blocking(move || {
            use std::os::unix::fs::MetadataExt;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&base)? {
                let entry = entry?;
                // Only directories named like an upload id are ours.
                let Ok(id) = entry.file_name().to_string_lossy().parse::<UploadId>() else {
                    continue;
                };
                let m =
                    std::fs::metadata(entry.path().join("data")).or_else(|_| entry.metadata())?;
                out.push(StoredUpload {
                    id,
                    age_secs: (now - m.mtime()).max(0) as u64,
                });
            }
            Ok(out)
        })
        .await?;
        Ok(found)
    }

    /// Every blob object, with its size and how long ago it was put in place (ctime: a
    /// rename sets it). Only fsck walks storage.
    async fn list_blobs(&self) -> StorageResult<Vec<StoredObject>> {
        let base = self.root.join("docker/registry/v2/blobs/sha256");
        let objects = blocking(move || {
            use std::os::unix::fs::MetadataExt;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let mut out = Vec::new();
            let prefixes = match std::fs::read_dir(&base) {
                Ok(d) => d,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(e),
            };
            for prefix in prefixes {
                let prefix = prefix?;
                for entry in std::fs::read_dir(prefix.path())? {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                        continue;
                    };
                    match std::fs::metadata(entry.path().join("data")) {
                        Ok(m) => out.push(StoredObject {
                            digest,
                            size: m.len(),
                            age_secs: (now - m.ctime()).max(0) as u64,
                        }),
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(out)
        })
        .await?;
        Ok(objects)
    }

    async fn list_files(&self, prefix: &str) -> StorageResult<Vec<String>> {
        let base = self.root.join(super::relative_path(prefix)?);
        let root = self.root.clone();
        let files = blocking(move || {
            let mut out = Vec::new();
            let mut dirs = vec![base];
            while let Some(dir) = dirs.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(d) => d,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let kind = entry.file_type()?;
                    if kind.is_dir() {
                        dirs.push(entry.path());
                    } else if kind.is_file() {
                        if let Ok(rel) = entry.path().strip_prefix(&root) {
                            out.push(rel.to_string_lossy().into_owned());
                        }
                    }
                }
            }
            Ok(out)
        })
        .await?;
        Ok(files)
    }

    async fn read_file(&self, path: &str, max: u64) -> StorageResult<Bytes> {
        let full = self.root.join(super::relative_path(path)?);
        let display = path.to_owned();
        let data = blocking(move || {
            use std::io::Read;
            let file = File::open(&full)?;
            let mut buf = Vec::new();
            file.take(max + 1).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => StorageError::NotFound,
            _ => StorageError::Io(e),
        })?;
        if data.len() as u64 > max {
            return Err(StorageError::Other(anyhow::anyhow!(
                "{display} is larger than {max} bytes"
            )));
        }
        Ok(Bytes::from(data))
    }

    async fn blob_put(&self, digest: &Digest, data: Bytes, replace: bool) -> StorageResult<()> {
        let dst = self.blob_path(digest);
        blocking(move || put_whole(&dst, &data, replace)).await?;
        Ok(())
    }

    async fn blob_delete(&self, digest: &Digest) -> StorageResult<()> {
        let path = self.blob_path(digest);
        blocking(move || {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
}

#[async_trait(?Send)]
impl UploadWriter for FsUpload<'_> {
    async fn append(
        &mut self,
        _state: &str,
        offset: u64,
        body: &mut BodyStream<'_>,
    ) -> StorageResult<Appended> {
        let result = self.append_at(offset, body).await;
        match &result {
            Ok(a) => self.opened_len = offset + a.written,
            Err(_) => {
                // Give the space of a failed request back (a full disk must not stay full of
                // it); the upload stays resumable at its recorded size.
                let file = self.file.clone();
                // Unknown if that failed too: the next append then cuts the file first.
                self.opened_len = blocking(move || {
                    let len = file.metadata()?.len();
                    if len > offset {
                        file.set_len(offset)?;
                        return Ok(offset);
                    }
                    Ok(len)
                })
                .await
                .unwrap_or(u64::MAX);
            }
        }
        result
    }

    async fn commit(&mut self, _state: &str, size: u64, digest: &Digest) -> StorageResult<()> {
        self.commit_at(size, digest).await
    }

    async fn stage(&mut self, _state: &str, size: u64, digest: &Digest) -> StorageResult<bool> {
        self.stage_at(size, digest).await
    }

    async fn sync(&mut self) -> StorageResult<()> {
        let file = self.file.clone();
        blocking(move || file.sync_data()).await?;
        Ok(())
    }

    async fn read_back(
        &mut self,
        _state: &str,
        start: u64,
        len: u64,
    ) -> StorageResult<Option<ByteStream>> {
        Ok(Some(read_stream(self.file.clone(), start, len)))
    }
}

impl FsUpload<'_> {
    async fn append_at(&self, offset: u64, body: &mut BodyStream<'_>) -> StorageResult<Appended> {
        let upload = self;
        let found = self.opened_len;
        if found > offset {
            let file = upload.file.clone();
            blocking(move || file.set_len(offset)).await?;
        }
        if found < offset {
            return Err(StorageError::UploadDataLost {
                expected: offset,
                found,
            });
        }

        let mut pos = offset;
        let mut piece = BytesMut::with_capacity(WRITE_PIECE);
        let mut in_flight: Option<tokio::task::JoinHandle<io::Result<()>>> = None;
        loop {
            let next = body.next().await;
            let done = match next {
                Some(Ok(chunk)) => {
                    piece.extend_from_slice(&chunk);
                    false
                }
                Some(Err(e)) => {
                    if let Some(w) = in_flight.take() {
                        let _ = w.await;
                    }
                    return Err(StorageError::Body(e.to_string()));
                }
                None => true,
            };
            if piece.len() >= WRITE_PIECE || (done && !piece.is_empty()) {
                if let Some(w) = in_flight.take() {
                    w.await.map_err(io::Error::other)??;
                }
                let data = piece.split().freeze();
                let file = upload.file.clone();
                let at = pos;
                pos += data.len() as u64;
                in_flight = Some(spawn_blocking(move || {
                    file.write_all_at(&data, at)?;
                    start_writeback(&file, at, data.len());
                    Ok(())
                }));
            }
            if done {
                break;
            }
        }
        if let Some(w) = in_flight.take() {
            w.await.map_err(io::Error::other)??;
        }
        Ok(Appended {
            state: String::new(),
            written: pos - offset,
            durable: false,
        })
    }

    /// A second name for the upload's data file at the blob path (a hard link), so that the
    /// data file stays for `commit_at` should the caller need it. Filesystems without hard
    /// links (or a store split over two) decline.
    async fn stage_at(&self, size: u64, digest: &Digest) -> StorageResult<bool> {
        let src = self.driver.upload_dir(&self.id).join("data");
        let dst = self.driver.blob_path(digest);
        let file = self.file.clone();
        let staged = blocking(move || {
            trim_and_sync(&file, size)?;
            let dst_dir = dst.parent().expect("blob path has a parent");
            std::fs::create_dir_all(dst_dir)?;
            match std::fs::hard_link(&src, &dst) {
                // An object already there may have been linked by a request that has not
                // synced the directory yet: sync it either way before anyone relies on it.
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot hard-link upload data into place; placing it at commit");
                    return Ok(false);
                }
            }
            sync_dir(dst_dir)?;
            Ok(true)
        })
        .await?;
        Ok(staged)
    }

    async fn commit_at(&self, size: u64, digest: &Digest) -> StorageResult<()> {
        let src_dir = self.driver.upload_dir(&self.id);
        let dst = self.driver.blob_path(digest);
        let file = self.file.clone();
        blocking(move || {
            trim_and_sync(&file, size)?;
            let dst_dir = dst.parent().expect("blob path has a parent");
            std::fs::create_dir_all(dst_dir)?;
            std::fs::rename(src_dir.join("data"), &dst)?;
            sync_dir(dst_dir)?;
            let _ = std::fs::remove_dir(&src_dir);
            Ok(())
        })
        .await?;
        Ok(())
    }
}

/// Writes `data` as the file `dst`, durably: first as an unnamed file in its directory
/// (`O_TMPFILE`: a crash leaves nothing behind), synced, then named and the directory synced.
/// An existing `dst` stays unless `replace`. Where the filesystem has no unnamed files, a
/// temporary name and a rename.
fn put_whole(dst: &Path, data: &[u8], replace: bool) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = dst.parent().expect("blob path has a parent");
    std::fs::create_dir_all(dir)?;
    let unnamed = OpenOptions::new()
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    let named = match unnamed {
        Ok(mut file) => {
            file.write_all(data)?;
            file.sync_data()?;
            match link_unnamed(&file, dst) {
                Ok(()) => true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && !replace => true,
                Err(_) => false,
            }
        }
        Err(_) => false,
    };
    if !named {
        let tmp = dir.join(format!(".put-{}", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(data)?;
            file.sync_data()?;
            if replace || !dst.exists() {
                std::fs::rename(&tmp, dst)
            } else {
                std::fs::remove_file(&tmp)
            }
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
    }
    sync_dir(dir)
}

/// Gives an `O_TMPFILE` file the name `dst` (fails if `dst` exists).
fn link_unnamed(file: &File, dst: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = CString::new(dst.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths that live across the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Cuts the upload's data to its recorded `size` (the recorded size is the truth; anything
/// past it is from a failed request) and makes it durable.
fn trim_and_sync(file: &File, size: u64) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len < size {
        return Err(io::Error::new(
            ErrorKind::UnexpectedEof,
            format!("upload holds {len} bytes, {size} recorded"),
        ));
    }
    if len > size {
        file.set_len(size)?;
    }
    file.sync_data()
}

/// `len` bytes of `file` from `start`, read a piece ahead: the next read runs while this piece
/// is sent.
fn read_stream(file: Arc<File>, start: u64, len: u64) -> ByteStream {
    let end = start + len;

    let read = move |pos: u64| {
        let file = file.clone();
        let want = (end - pos).min(READ_PIECE) as usize;
        (
            pos + want as u64,
            spawn_blocking(move || read_piece(&file, pos, want)),
        )
    };
    let (next, pending) = read(start);
    let stream = futures_util::stream::try_unfold((next, Some(pending)), move |(next, pending)| {
        let read = read.clone();
        async move {
            let Some(pending) = pending else {
                return Ok(None);
            };
            let piece = pending.await.map_err(io::Error::other)??;
            let ahead = (next < end).then(|| read(next));
            Ok(Some(match ahead {
                Some((after, handle)) => (piece, (after, Some(handle))),
                None => (piece, (next, None)),
            }))
        }
    });
    Box::pin(stream)
}

fn not_found(e: io::Error) -> StorageError {
    if e.kind() == ErrorKind::NotFound {
        StorageError::NotFound
    } else {
        e.into()
    }
}
