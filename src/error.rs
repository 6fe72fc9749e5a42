//! The registry's one error type and the one place it becomes an HTTP response: the error codes
//! of the distribution spec's table, each with its status, in the spec's JSON body
//! `{"errors":[{"code","message","detail"}]}`. Failures that are not the client's fault are
//! logged with their context and answered as a bare 500 without internals.
//!
//! The layers below have their own errors (`MetaError`, `StorageError`), each with a kind;
//! the `From` impls here are the only place a kind becomes an OCI code and a status. This
//! module imports nothing from the HTTP or use-case layers.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::auth::Denial;
use crate::meta::MetaError;
use crate::oci::upload_range;
use crate::storage::{StorageError, StorageErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("{0}")]
    BlobUploadInvalid(String),
    #[error("blob upload unknown to registry: {0}")]
    BlobUploadUnknown(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("manifest references a blob unknown to this repository: {0}")]
    ManifestBlobUnknown(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("{0}")]
    NameInvalid(String),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    #[error("{0}")]
    SizeInvalid(String),
    /// A manifest over the size limit: SIZE_INVALID with 413.
    #[error("{0}")]
    TooLarge(String),
    /// An out-of-order chunk, a mismatched Content-Range or a final PUT at the wrong offset:
    /// 416 with the upload's current state, which the request did not change.
    #[error("{message}")]
    RangeInvalid { message: String, offset: u64 },
    #[error("{0}")]
    Denied(String),
    /// 401 with the challenge a client answers with credentials.
    #[error("{message}")]
    Unauthorized { challenge: String, message: String },
    /// A request that would break what is stored (e.g. deleting a manifest an index needs).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unsupported(String),
    /// A path under /v2/ that is no endpoint of the API.
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// `storage.maintenance.readonly.enabled`: a write was refused (405, as Distribution).
    #[error(
        "the registry is in read-only mode for maintenance; pushes and deletes are refused until it ends"
    )]
    ReadOnly,
    /// The request line and headers are over the configured limit (431).
    #[error("{0}")]
    HeadersTooLarge(String),
    /// This server has as many uploads in progress as it takes (429 with Retry-After).
    #[error("{0}")]
    TooManyRequests(String),
    /// Retryable: the database or storage is busy or unreachable (503 with Retry-After).
    #[error("the registry is temporarily unavailable; retry shortly ({0})")]
    Unavailable(String),
    /// The storage or the database has no room for the write (507).
    #[error(
        "the registry's storage is full; free space (e.g. by garbage collection) and retry ({0})"
    )]
    StorageFull(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        Error::Internal(anyhow::anyhow!("{context}: {e}"))
    }

    /// The spec's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BlobUnknown(_) => "BLOB_UNKNOWN",
            Error::BlobUploadInvalid(_) | Error::RangeInvalid { .. } => "BLOB_UPLOAD_INVALID",
            Error::BlobUploadUnknown(_) => "BLOB_UPLOAD_UNKNOWN",
            Error::DigestInvalid(_) => "DIGEST_INVALID",
            Error::ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            Error::ManifestInvalid(_) => "MANIFEST_INVALID",
            Error::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            Error::NameInvalid(_) => "NAME_INVALID",
            Error::NameUnknown(_) | Error::NoRoute(_) => "NAME_UNKNOWN",
            Error::SizeInvalid(_) | Error::TooLarge(_) => "SIZE_INVALID",
            Error::Denied(_) | Error::Conflict(_) => "DENIED",
            Error::Unauthorized { .. } => "UNAUTHORIZED",
            Error::Unsupported(_)
            | Error::MethodNotAllowed
            | Error::ReadOnly
            | Error::HeadersTooLarge(_) => "UNSUPPORTED",
            Error::Unavailable(_) | Error::StorageFull(_) => "UNAVAILABLE",
            Error::TooManyRequests(_) => "TOOMANYREQUESTS",
            Error::Internal(_) => "UNKNOWN",
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::BlobUnknown(_)
            | Error::BlobUploadUnknown(_)
            | Error::ManifestUnknown(_)
            | Error::NameUnknown(_)
            | Error::NoRoute(_) => StatusCode::NOT_FOUND,
            Error::BlobUploadInvalid(_)
            | Error::DigestInvalid(_)
            | Error::ManifestBlobUnknown(_)
            | Error::ManifestInvalid(_)
            | Error::NameInvalid(_)
            | Error::SizeInvalid(_)
            | Error::Unsupported(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RangeInvalid { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::Denied(_) => StatusCode::FORBIDDEN,
            Error::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::MethodNotAllowed | Error::ReadOnly => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if let Error::Internal(e) = self {
            tracing::error!(error = format!("{e:#}"), "request failed");
            return HttpResponse::build(status)
                .content_type("application/json")
                .body(r#"{"errors":[{"code":"UNKNOWN","message":"internal server error"}]}"#);
        }
        let mut resp = HttpResponse::build(status);
        if let Error::RangeInvalid { offset, .. } = self {
            resp.insert_header((header::RANGE, upload_range(*offset)));
        }
        match self {
            Error::Unauthorized { challenge, .. } => {
                if let Ok(v) = HeaderValue::from_str(challenge) {
                    resp.insert_header((header::WWW_AUTHENTICATE, v));
                }
            }
            Error::Unavailable(msg) => {
                tracing::warn!(error = %msg, "answered 503: retryable");
                resp.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            Error::StorageFull(msg) => tracing::error!(error = %msg, "storage full"),
            Error::TooManyRequests(_) => {
                resp.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            _ => {}
        }
        resp.content_type("application/json").body(
            json!({"errors": [{"code": self.code(), "message": self.to_string(), "detail": null}]})
                .to_string(),
        )
    }
}

impl From<Denial> for Error {
    fn from(d: Denial) -> Self {
        match d {
            Denial::Unauthorized { challenge, message } => {
                Error::Unauthorized { challenge, message }
            }
            Denial::Forbidden(msg) => Error::Denied(msg),
        }
    }
}

impl From<MetaError> for Error {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Busy(msg) | MetaError::Race(msg) => {
                Error::Unavailable(format!("database busy: {msg}"))
            }
            MetaError::Full(msg) => Error::StorageFull(format!("database: {msg}")),
            e => Error::Internal(anyhow::Error::new(e).context("metadata")),
        }
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e.kind() {
            StorageErrorKind::NotFound => Error::BlobUnknown("stored object not found".into()),
            StorageErrorKind::Body => Error::BlobUploadInvalid(e.to_string()),
            StorageErrorKind::UploadDataLost => {
                Error::BlobUploadInvalid(format!("{e}; cancel this upload and start a new one"))
            }
            StorageErrorKind::Full => Error::StorageFull(e.to_string()),
            StorageErrorKind::Unavailable => Error::Unavailable(e.to_string()),
            StorageErrorKind::Internal => Error::Internal(anyhow::Error::new(e).context("storage")),
        }
    }
}
