//! Manifest, tag-list, catalog and referrers endpoints.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::BytesMut;
use futures_util::StreamExt;

use super::{DIGEST_HEADER, header_str, pagination, query};
use crate::error::{Error, Result};
use crate::meta::Names;
use crate::oci::{Digest, Reference, RepoName, manifest};
use crate::registry::{MAX_MANIFEST_BYTES, Registry};

pub async fn get(
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
    with_body: bool,
) -> Result<HttpResponse> {
    let m = reg.get_manifest(name, reference).await?;
    let mut resp = HttpResponse::Ok();
    resp.insert_header((header::CONTENT_TYPE, m.media_type.as_str()))
        .insert_header((DIGEST_HEADER, m.digest.as_str()))
        .insert_header((header::ETAG, format!("\"{}\"", m.digest)));
    let len = m.payload.len() as u64;
    if with_body {
        Ok(resp.body(m.payload))
    } else {
        Ok(resp
            .no_chunking(len)
            .streaming(futures_util::stream::empty::<Result<web::Bytes>>()))
    }
}

async fn read_manifest_body(req: &HttpRequest, mut body: super::Body) -> Result<web::Bytes> {
    let too_large = |n: String| {
        Error::TooLarge(format!(
            "manifest is {n} bytes; the limit is {MAX_MANIFEST_BYTES} bytes (4 MiB)"
        ))
    };
    if let Some(len) = header_str(req, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok()) {
        if len > MAX_MANIFEST_BYTES as u64 {
            return Err(too_large(len.to_string()));
        }
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| Error::ManifestInvalid(format!("request body failed: {e}")))?;
        if buf.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(too_large("more than that".into()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub async fn put(
    req: &HttpRequest,
    body: super::Body,
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
) -> Result<HttpResponse> {
    let body = read_manifest_body(req, body).await?;
    let content_type = header_str(req, header::CONTENT_TYPE)
        .map(|ct| ct.split(';').next().unwrap_or_default().trim());
    let stored = reg
        .put_manifest(name, reference, content_type, &body)
        .await?;
    let mut resp = HttpResponse::Created();
    resp.insert_header((
        header::LOCATION,
        format!("/v2/{name}/manifests/{}", stored.digest),
    ))
    .insert_header((DIGEST_HEADER, stored.digest.as_str()))
    .insert_header((header::CONTENT_LENGTH, 0));
    if let Some(subject) = &stored.subject {
        resp.insert_header(("OCI-Subject", subject.as_str()));
    }
    Ok(resp.finish())
}

pub async fn delete(
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
) -> Result<HttpResponse> {
    reg.delete_manifest(name, reference).await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::CONTENT_LENGTH, 0))
        .finish())
}

/// Runs a listing with one extra row to learn whether a next page exists; returns the page
/// and the `Link` header for the next one.
async fn page<F, Fut>(req: &HttpRequest, list: F) -> Result<(Names, Option<String>)>
where
    F: FnOnce(Option<String>, Option<u32>) -> Fut,
    Fut: std::future::Future<Output = Result<Names>>,
{
    let (n, last) = pagination(req)?;
    if n == Some(0) {
        return Ok((Names::default(), None));
    }
    let mut items = list(last, n.map(|n| n.saturating_add(1))).await?;
    let link = match n {
        Some(n) if items.len() > n as usize => {
            items.truncate(n as usize);
            let last = items.last().unwrap_or_default();
            let next = format!(
                "{}?n={n}&last={}",
                req.path(),
                percent_encoding::utf8_percent_encode(last, percent_encoding::NON_ALPHANUMERIC)
            );
            Some(format!("<{next}>; rel=\"next\""))
        }
        _ => None,
    };
    Ok((items, link))
}

/// `{"<prefix>…": [names]}` written straight from the listing (see `Names`).
fn listing(prefix: &str, names: &Names, link: Option<String>) -> HttpResponse {
    let mut body = String::with_capacity(prefix.len() + 3);
    body.push_str(prefix);
    names.write_json_array(&mut body);
    body.push('}');
    let mut resp = HttpResponse::Ok();
    if let Some(l) = link {
        resp.insert_header((header::LINK, l));
    }
    resp.content_type("application/json").body(body)
}

pub async fn tags(req: &HttpRequest, reg: &Registry, name: &RepoName) -> Result<HttpResponse> {
    let (tags, link) = page(req, |last, n| async move {
        reg.tags(name, last.as_deref(), n).await
    })
    .await?;
    if tags.is_empty() {
        // Unknown repositories are NAME_UNKNOWN even when the page would be empty.
        reg.tags(name, None, Some(0)).await?;
    }
    // Repository names need no JSON escaping (their grammar has no quote or backslash).
    let prefix = format!("{{\"name\":\"{}\",\"tags\":", name.as_str());
    Ok(listing(&prefix, &tags, link))
}

/// The catalog: every repository, or (with an access policy) those the caller may pull.
pub async fn catalog(
    req: &HttpRequest,
    reg: &Registry,
    allowed: &super::Allowed<'_>,
) -> Result<HttpResponse> {
    let (repos, link) = page(req, |last, n| async move {
        if allowed.sees_whole_catalog() {
            return reg.catalog(last.as_deref(), n).await;
        }
        // Filtered page by page until `n` names pass (or the catalog ends).
        const BATCH: u32 = 500;
        let mut out = Vec::new();
        let mut after = last;
        loop {
            let batch = reg.catalog(after.as_deref(), Some(BATCH)).await?;
            let done = (batch.len() as u32) < BATCH;
            after = batch.last().map(str::to_string);
            for name in batch.iter() {
                let visible = name.parse::<RepoName>().is_ok_and(|r| allowed.may_pull(&r));
                if visible {
                    out.push(name.to_string());
                }
                if n.is_some_and(|n| out.len() as u32 >= n) {
                    return Ok(Names::from_sorted(out));
                }
            }
            if done {
                return Ok(Names::from_sorted(out));
            }
        }
    })
    .await?;
    Ok(listing("{\"repositories\":", &repos, link))
}

pub async fn referrers(
    req: &HttpRequest,
    reg: &Registry,
    name: &RepoName,
    subject: &Digest,
) -> Result<HttpResponse> {
    let q = query(req)?;
    let artifact_type = q.get("artifactType").filter(|a| !a.is_empty());
    let index = reg
        .referrers(name, subject, artifact_type.map(String::as_str))
        .await?;
    let mut resp = HttpResponse::Ok();
    if artifact_type.is_some() {
        resp.insert_header(("OCI-Filters-Applied", "artifactType"));
    }
    Ok(resp
        .content_type(manifest::OCI_INDEX)
        .body(index.to_string()))
}
