//! Storage errors, each with a kind that says what the caller (and the client) can do about it.

use std::io;

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
    /// The store refused a write for lack of space or quota.
    #[error("storage is full: {0}")]
    Full(String),
    /// The store did not answer in time, or asked us to slow down: worth retrying.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Io(io::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type StorageResult<T> = Result<T, StorageError>;

/// What a storage error means for the request that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    NotFound,
    /// The client's body failed: its fault, its retry.
    Body,
    /// An upload's bytes are gone: the client must start the upload again.
    UploadDataLost,
    /// Out of space or quota: nothing to retry until space is freed.
    Full,
    /// Transient: retry later.
    Unavailable,
    /// Anything else: the server's fault.
    Internal,
}

impl StorageError {
    pub fn kind(&self) -> StorageErrorKind {
        match self {
            StorageError::NotFound => StorageErrorKind::NotFound,
            StorageError::Body(_) => StorageErrorKind::Body,
            StorageError::UploadDataLost { .. } => StorageErrorKind::UploadDataLost,
            StorageError::Full(_) => StorageErrorKind::Full,
            StorageError::Unavailable(_) => StorageErrorKind::Unavailable,
            StorageError::Io(e) => io_kind(e),
            StorageError::Other(_) => StorageErrorKind::Internal,
        }
    }
}

fn io_kind(e: &io::Error) -> StorageErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => return StorageErrorKind::Full,
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::NotFound => StorageErrorKind::NotFound,
        io::ErrorKind::TimedOut => StorageErrorKind::Unavailable,
        _ => StorageErrorKind::Internal,
    }
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        match io_kind(&e) {
            StorageErrorKind::Full => StorageError::Full(e.to_string()),
            _ => StorageError::Io(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_get_their_kind() {
        let full: StorageError = io::Error::from_raw_os_error(libc::ENOSPC).into();
        assert_eq!(full.kind(), StorageErrorKind::Full);
        let quota: StorageError = io::Error::from_raw_os_error(libc::EDQUOT).into();
        assert_eq!(quota.kind(), StorageErrorKind::Full);
        let gone: StorageError = io::Error::from(io::ErrorKind::NotFound).into();
        assert_eq!(gone.kind(), StorageErrorKind::NotFound);
        let other: StorageError = io::Error::from_raw_os_error(libc::EIO).into();
        assert_eq!(other.kind(), StorageErrorKind::Internal);
    }
}
