//! Blob and upload endpoints.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};

use super::{DIGEST_HEADER, UPLOAD_UUID_HEADER, header_str, query};
use crate::error::{Error, Result};
use crate::oci::{Digest, RepoName, UploadId, upload_range};
use crate::registry::{BlobBody, ContentRange, Registry, UploadStatus};

fn upload_location(name: &RepoName, id: &UploadId) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

fn blob_location(name: &RepoName, digest: &Digest) -> String {
    format!("/v2/{name}/blobs/{digest}")
}

fn upload_response(status: StatusCode, name: &RepoName, upload: &UploadStatus) -> HttpResponse {
    HttpResponseBuilder::new(status)
        .insert_header((header::LOCATION, upload_location(name, &upload.id)))
        .insert_header((header::RANGE, upload_range(upload.size)))
        .insert_header((UPLOAD_UUID_HEADER, upload.id.as_str()))
        .insert_header((header::CONTENT_LENGTH, 0))
        .finish()
}

fn created_blob(name: &RepoName, digest: &Digest) -> HttpResponse {
    HttpResponse::Created()
        .insert_header((header::LOCATION, blob_location(name, digest)))
        .insert_header((DIGEST_HEADER, digest.as_str()))
        .insert_header((header::CONTENT_LENGTH, 0))
        .finish()
}

/// A byte range of a blob GET: `bytes=a-b`, `bytes=a-` or `bytes=-n`. Multiple ranges are
/// answered with the whole blob (RFC 9110 allows ignoring Range).
enum RangeRequest {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeRequest::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeRequest::Whole;
            };
            let end = if b.is_empty() {
                Some(size.saturating_sub(1))
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => Some(e.min(size.saturating_sub(1))),
                    _ => return RangeRequest::Whole,
                }
            };
            if start >= size {
                None
            } else {
                end.map(|e| (start, e))
            }
        }
        (true, false) => {
            let Ok(n) = b.parse::<u64>() else {
                return RangeRequest::Whole;
            };
            if n == 0 || size == 0 {
                None
            } else {
                Some((size - n.min(size), size - 1))
            }
        }
        (true, true) => return RangeRequest::Whole,
    };
    match parsed {
        Some((s, e)) => RangeRequest::Part(s, e),
        None => RangeRequest::Unsatisfiable,
    }
}

pub async fn get(
    req: &HttpRequest,
    reg: &Registry,
    name: &RepoName,
    digest: &Digest,
    with_body: bool,
) -> Result<HttpResponse> {
    let size = reg.blob_size(name, digest).await?;
    let mut resp = HttpResponse::Ok();
    resp.insert_header((DIGEST_HEADER, digest.as_str()))
        .insert_header((header::ETAG, format!("\"{digest}\"")))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CACHE_CONTROL, "max-age=31536000"))
        .content_type("application/octet-stream");
    if !with_body {
        return Ok(resp
            .no_chunking(size)
            .streaming(futures_util::stream::empty::<Result<web::Bytes>>()));
    }
    let (start, len, partial) = match parse_range(header_str(req, header::RANGE), size) {
        RangeRequest::Whole => (0, size, false),
        RangeRequest::Part(s, e) => (s, e - s + 1, true),
        RangeRequest::Unsatisfiable => {
            return Ok(HttpResponse::RangeNotSatisfiable()
                .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                .content_type("application/json")
                .body(
                    serde_json::json!({"errors": [{"code": "SIZE_INVALID",
                        "message": format!("requested range not satisfiable: the blob is {size} bytes"), "detail": null}]})
                    .to_string(),
                ));
        }
    };
    match reg.blob_body(digest, start, len, !partial).await? {
        BlobBody::Redirect(url) => Ok(HttpResponse::TemporaryRedirect()
            .insert_header((header::LOCATION, url))
            .insert_header((DIGEST_HEADER, digest.as_str()))
            .finish()),
        BlobBody::Bytes(stream) => {
            if partial {
                resp.status(StatusCode::PARTIAL_CONTENT).insert_header((
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{size}", start + len - 1),
                ));
            }
            Ok(resp.no_chunking(len).streaming(stream))
        }
    }
}

pub async fn delete(reg: &Registry, name: &RepoName, digest: &Digest) -> Result<HttpResponse> {
    reg.delete_blob(name, digest).await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::CONTENT_LENGTH, 0))
        .finish())
}

fn digest_param(req: &HttpRequest, key: &str) -> Result<Option<Digest>> {
    match query(req)?.get(key) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(super::routes::digest_error),
    }
}

pub async fn start_upload(
    req: &HttpRequest,
    body: super::Body,
    reg: &Registry,
    name: &RepoName,
    allowed: &super::Allowed<'_>,
) -> Result<HttpResponse> {
    let q = query(req)?;
    if let Some(mount) = q.get("mount") {
        let digest: Digest = mount.parse().map_err(super::routes::digest_error)?;
        let from = match q.get("from") {
            Some(f) => Some(f.parse::<RepoName>().map_err(Error::NameInvalid)?),
            None => None,
        };
        // Mounting from a repository needs pull there; a mount without `from` may take any
        // stored blob, which only a caller who may pull everywhere could find out about.
        let may_mount = match &from {
            Some(source) => allowed.may_pull(source),
            None => allowed.sees_whole_catalog(),
        };
        if may_mount
            && reg
                .mount_blob(name, &digest, from.as_ref())
                .await?
                .is_some()
        {
            return Ok(created_blob(name, &digest));
        }
        // Not mountable: the spec says to answer with a regular upload session.
    } else if let Some(digest) = digest_param(req, "digest")? {
        reg.monolithic_upload(name, &digest, content_length(req), body)
            .await?;
        return Ok(created_blob(name, &digest));
    }
    let upload = reg.start_upload(name).await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, &upload))
}

pub async fn upload_status(reg: &Registry, name: &RepoName, id: &UploadId) -> Result<HttpResponse> {
    let upload = reg.upload_status(name, id).await?;
    Ok(upload_response(StatusCode::NO_CONTENT, name, &upload))
}

/// `Content-Range: <start>-<end>`, exactly as the spec writes it (and Distribution accepts it):
/// digits, a dash, digits. Anything else is refused before the upload is touched.
fn content_range(req: &HttpRequest) -> Result<Option<ContentRange>> {
    let Some(raw) = req.headers().get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        Error::BlobUploadInvalid(
            "malformed Content-Range: expected <start>-<end>, e.g. 0-1023".into(),
        )
    };
    let v = raw.to_str().map_err(|_| bad())?;
    let (a, b) = v.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return Err(bad());
    }
    let start = a.parse::<u64>().map_err(|_| bad())?;
    let end = b.parse::<u64>().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok(Some(ContentRange { start, end }))
}

fn content_length(req: &HttpRequest) -> Option<u64> {
    header_str(req, header::CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

/// Refuses a chunk whose Content-Length disagrees with its Content-Range, before reading it.
async fn check_chunk(
    req: &HttpRequest,
    reg: &Registry,
    name: &RepoName,
    id: &UploadId,
) -> Result<Option<ContentRange>> {
    let range = content_range(req)?;
    if let (Some(r), Some(len)) = (range, content_length(req)) {
        if r.len() != len {
            let upload = reg.upload_status(name, id).await?;
            return Err(Error::RangeInvalid {
                message: format!(
                    "Content-Range {}-{} is {} bytes but Content-Length is {len}",
                    r.start,
                    r.end,
                    r.len()
                ),
                offset: upload.size,
            });
        }
    }
    Ok(range)
}

pub async fn patch_upload(
    req: &HttpRequest,
    body: super::Body,
    reg: &Registry,
    name: &RepoName,
    id: &UploadId,
) -> Result<HttpResponse> {
    let range = check_chunk(req, reg, name, id).await?;
    let upload = reg.append_upload(name, id, range, body).await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, &upload))
}

pub async fn put_upload(
    req: &HttpRequest,
    body: super::Body,
    reg: &Registry,
    name: &RepoName,
    id: &UploadId,
) -> Result<HttpResponse> {
    let Some(digest) = digest_param(req, "digest")? else {
        // An unknown session is the bigger problem: say so first.
        reg.upload_status(name, id).await?;
        return Err(Error::DigestInvalid(
            "PUT to an upload needs ?digest=<digest of the whole blob>".into(),
        ));
    };
    let range = check_chunk(req, reg, name, id).await?;
    reg.complete_upload(name, id, &digest, range, body).await?;
    Ok(created_blob(name, &digest))
}

pub async fn cancel_upload(reg: &Registry, name: &RepoName, id: &UploadId) -> Result<HttpResponse> {
    reg.cancel_upload(name, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(v: &str, size: u64) -> Option<(u64, u64)> {
        match parse_range(Some(v), size) {
            RangeRequest::Part(a, b) => Some((a, b)),
            _ => None,
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(part("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(part("bytes=90-", 100), Some((90, 99)));
        assert_eq!(part("bytes=90-200", 100), Some((90, 99)));
        assert_eq!(part("bytes=-10", 100), Some((90, 99)));
        assert_eq!(part("bytes=-1000", 100), Some((0, 99)));
        assert!(matches!(
            parse_range(Some("bytes=100-"), 100),
            RangeRequest::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(Some("bytes=0-1,5-6"), 100),
            RangeRequest::Whole
        ));
        assert!(matches!(
            parse_range(Some("items=0-1"), 100),
            RangeRequest::Whole
        ));
        assert!(matches!(
            parse_range(Some("bytes=5-1"), 100),
            RangeRequest::Whole
        ));
        assert!(matches!(parse_range(None, 100), RangeRequest::Whole));
    }
}
