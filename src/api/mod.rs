//! HTTP only: parse typed input, call a use case, shape the response. No SQL and no storage
//! calls here.

mod blobs;
mod manifests;
pub mod routes;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::{Method, header};
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use crate::auth::{Auth, Caller, Need};
use crate::config::GcConfig;
use crate::error::{Error, Result};
use crate::registry::Registry;
use routes::Route;

/// The authenticated caller's name, kept in the request's extensions for the access log.
#[derive(Clone)]
pub struct CallerName(pub String);

/// What the access log says a request was for: the route's kind and repository.
pub fn describe_path(path: &str) -> (&'static str, Option<String>) {
    if path.starts_with("/admin/") {
        return ("admin", None);
    }
    if !path.starts_with("/v2") {
        return ("other", None);
    }
    let tail = path.strip_prefix("/v2").unwrap_or_default();
    let tail = tail.strip_prefix('/').unwrap_or(tail);
    match routes::parse(tail) {
        Ok(r) => (r.kind(), r.repository().map(|n| n.to_string())),
        Err(_) => ("unknown", None),
    }
}

/// A request body as handlers read it: failing when it stalls (see `UploadLimits`).
pub(crate) type Body =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = std::result::Result<web::Bytes, String>>>>;

/// What an upload request may use: a place among the concurrent uploads, and how long its
/// body may stall.
pub struct UploadLimits {
    slots: Option<Arc<tokio::sync::Semaphore>>,
    stall: std::time::Duration,
    max_header_bytes: usize,
}

impl UploadLimits {
    pub fn new(concurrent: usize, stall: std::time::Duration, max_header_bytes: usize) -> Self {
        UploadLimits {
            slots: (concurrent > 0).then(|| Arc::new(tokio::sync::Semaphore::new(concurrent))),
            stall,
            max_header_bytes,
        }
    }

    /// Refuses a request whose line and headers exceed `http.limits.maxheaderbytes`.
    fn check_head(&self, req: &HttpRequest) -> Result<()> {
        let size = req.uri().to_string().len()
            + req
                .headers()
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if size > self.max_header_bytes {
            return Err(Error::HeadersTooLarge(format!(
                "the request line and headers are {size} bytes; the limit is {} (http.limits.maxheaderbytes)",
                self.max_header_bytes
            )));
        }
        Ok(())
    }

    /// A place for one upload request, or 429.
    fn admit(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>> {
        match &self.slots {
            None => Ok(None),
            Some(s) => s.clone().try_acquire_owned().map(Some).map_err(|_| {
                Error::TooManyRequests(
                    "too many uploads in progress on this server; retry shortly".into(),
                )
            }),
        }
    }

    /// The body, failing when no data arrives for the stall timeout.
    fn body(&self, payload: web::Payload) -> Body {
        let stall = self.stall;
        Box::pin(futures_util::stream::unfold(
            payload,
            move |mut p| async move {
                use futures_util::StreamExt;
                match tokio::time::timeout(stall, p.next()).await {
                    Ok(Some(Ok(b))) => Some((Ok(b), p)),
                    Ok(Some(Err(e))) => Some((Err(e.to_string()), p)),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(format!(
                            "no data for {}s (http.timeouts.readbody)",
                            stall.as_secs()
                        )),
                        p,
                    )),
                }
            },
        ))
    }
}

/// `storage.maintenance.readonly.enabled`.
#[derive(Clone, Copy, Default)]
pub struct ReadOnly(pub bool);

fn refuse_writes(read_only: &ReadOnly, method: &Method) -> Result<()> {
    if read_only.0 && !matches!(*method, Method::GET | Method::HEAD) {
        return Err(Error::ReadOnly);
    }
    Ok(())
}

/// The access control the server enforces (None: an open registry).
#[derive(Clone, Default)]
pub struct AccessControl(pub Option<Arc<Auth>>);

/// A request that was let through, and by whom: handlers ask it about further access (the
/// source of a mount, the entries of the catalog).
pub struct Allowed<'a> {
    auth: Option<&'a Auth>,
    caller: Caller,
}

impl Allowed<'_> {
    pub fn may_pull(&self, repository: &crate::oci::RepoName) -> bool {
        self.auth
            .is_none_or(|a| a.may_pull(&self.caller, repository))
    }

    /// The catalog lists everything (open registry, token with catalog scope, htpasswd
    /// without a policy) rather than what this caller may pull.
    pub fn sees_whole_catalog(&self) -> bool {
        self.auth.is_none_or(|a| a.catalog_unfiltered(&self.caller))
    }
}

/// Lets the request through if its caller may do what it needs.
async fn authorize<'a>(
    req: &HttpRequest,
    access: &'a AccessControl,
    need: &Need,
) -> Result<Allowed<'a>> {
    let Some(auth) = access.0.as_deref() else {
        return Ok(Allowed {
            auth: None,
            caller: Caller::Anonymous,
        });
    };
    let caller = auth
        .caller(header_str(req, header::AUTHORIZATION), need)
        .await?;
    if let Some(name) = caller.name() {
        // For the access log.
        req.extensions_mut().insert(CallerName(name.to_owned()));
    }
    auth.check(&caller, need)?;
    Ok(Allowed {
        auth: Some(auth),
        caller,
    })
}

pub const API_VERSION_HEADER: &str = "Docker-Distribution-API-Version";
pub const DIGEST_HEADER: &str = "Docker-Content-Digest";
pub const UPLOAD_UUID_HEADER: &str = "Docker-Upload-UUID";

/// Registers the registry's routes on an actix app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").to(healthz))
        .service(web::resource("/readyz").to(readyz))
        .service(web::resource("/admin/usage").route(web::get().to(usage)))
        .service(web::resource("/admin/gc").route(web::post().to(admin_gc)))
        .service(web::resource("/v2").to(dispatch))
        .service(web::resource("/v2/{tail:.*}").to(dispatch));
}

/// Headers every registry response carries.
pub fn default_headers() -> DefaultHeaders {
    DefaultHeaders::new().add((API_VERSION_HEADER, "registry/2.0"))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Ready when the database and the storage both answer.
async fn readyz(registry: web::Data<Registry>) -> HttpResponse {
    let r = registry.readiness().await;
    if r.is_ready() {
        return HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n");
    }
    let mut msg = String::from("not ready\n");
    if let Err(e) = &r.database {
        tracing::warn!(error = %e, "readiness: database check failed");
        msg.push_str("database: unavailable\n");
    }
    if let Err(e) = &r.storage {
        tracing::warn!(error = %e, "readiness: storage check failed");
        msg.push_str("storage: unavailable\n");
    }
    HttpResponse::ServiceUnavailable()
        .content_type("text/plain")
        .body(msg)
}

/// The usage report as JSON (`?namespace=team&top=10`); needs the admin right.
async fn usage(
    req: HttpRequest,
    registry: web::Data<Registry>,
    access: web::Data<AccessControl>,
) -> Result<HttpResponse> {
    authorize(&req, &access, &Need::Admin).await?;
    let q = query(&req)?;
    let namespace = q
        .get("namespace")
        .map(|n| n.trim_end_matches('/'))
        .unwrap_or_default();
    let top = match q.get("top") {
        Some(t) => t
            .parse::<u32>()
            .map_err(|_| Error::Unsupported(format!("invalid top={t:?}: expected a number")))?,
        None => 10,
    };
    let report = registry.usage(namespace, top).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// The query parameters. Nothing a client sends reaches a database unchecked: a NUL byte (which
/// PostgreSQL text cannot hold) or a control character is refused here, for every endpoint.
/// `POST /admin/gc[?dry_run=true]`: one full garbage collection run with the configured
/// grace period, its report as JSON; needs the admin right.
async fn admin_gc(
    req: HttpRequest,
    registry: web::Data<Registry>,
    access: web::Data<AccessControl>,
    gc: web::Data<GcConfig>,
    read_only: web::Data<ReadOnly>,
) -> Result<HttpResponse> {
    authorize(&req, &access, &Need::Admin).await?;
    let dry_run = match query(&req)?.get("dry_run").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::Unsupported(format!(
                "dry_run={other:?}: expected true or false"
            )));
        }
    };
    if !dry_run && read_only.0 {
        return Err(Error::ReadOnly);
    }
    let policy = crate::meta::GcPolicy::with_grace(gc.graceperiod, gc.deleteuntagged);
    let report = registry
        .collect_garbage(policy, crate::gc::Mode::Full, dry_run)
        .await
        .map_err(Error::Internal)?;
    crate::gc::log_report(&report);
    Ok(HttpResponse::Ok().json(report))
}

pub(crate) fn query(req: &HttpRequest) -> Result<HashMap<String, String>> {
    let q = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| Error::Unsupported(format!("malformed query string: {e}")))?;
    if let Some((k, _)) = q
        .iter()
        .find(|(k, v)| k.chars().chain(v.chars()).any(char::is_control))
    {
        return Err(Error::Unsupported(format!(
            "query parameter {:?} holds a control character",
            k.escape_debug().to_string()
        )));
    }
    Ok(q)
}

#[tracing::instrument(skip_all, fields(method = %req.method(), path = %req.path()))]
async fn dispatch(
    req: HttpRequest,
    body: web::Payload,
    registry: web::Data<Registry>,
    access: web::Data<AccessControl>,
    read_only: web::Data<ReadOnly>,
    uploads: web::Data<UploadLimits>,
) -> Result<HttpResponse> {
    uploads.check_head(&req)?;
    let tail = req.path().strip_prefix("/v2").unwrap_or_default();
    let tail = tail.strip_prefix('/').unwrap_or(tail);
    let route = routes::parse(tail)?;
    let m = req.method();
    let allowed = authorize(&req, &access, &route.need(m)).await?;
    refuse_writes(&read_only, m)?;
    // Requests that write upload bytes take a place among the concurrent uploads, and their
    // bodies may not stall.
    let writes_bytes = match &route {
        Route::Upload(..) => matches!(*m, Method::PATCH | Method::PUT),
        Route::UploadStart(_) => *m == Method::POST && req.query_string().contains("digest="),
        _ => false,
    };
    let _slot = if writes_bytes { uploads.admit()? } else { None };
    let body = uploads.body(body);
    let reg = registry.get_ref();
    match route {
        Route::Base if m == Method::GET || m == Method::HEAD => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body("{}")),
        Route::Catalog if m == Method::GET => manifests::catalog(&req, reg, &allowed).await,
        Route::Tags(name) if m == Method::GET => manifests::tags(&req, reg, &name).await,
        Route::Manifest(name, reference) => match *m {
            Method::GET => manifests::get(reg, &name, &reference, true).await,
            Method::HEAD => manifests::get(reg, &name, &reference, false).await,
            Method::PUT => manifests::put(&req, body, reg, &name, &reference).await,
            Method::DELETE => manifests::delete(reg, &name, &reference).await,
            _ => Err(Error::MethodNotAllowed),
        },
        Route::Referrers(name, digest) if m == Method::GET => {
            manifests::referrers(&req, reg, &name, &digest).await
        }
        Route::Blob(name, digest) => match *m {
            Method::GET => blobs::get(&req, reg, &name, &digest, true).await,
            Method::HEAD => blobs::get(&req, reg, &name, &digest, false).await,
            Method::DELETE => blobs::delete(reg, &name, &digest).await,
            _ => Err(Error::MethodNotAllowed),
        },
        Route::UploadStart(name) if m == Method::POST => {
            blobs::start_upload(&req, body, reg, &name, &allowed).await
        }
        Route::Upload(name, id) => match *m {
            Method::GET => blobs::upload_status(reg, &name, &id).await,
            Method::PATCH => blobs::patch_upload(&req, body, reg, &name, &id).await,
            Method::PUT => blobs::put_upload(&req, body, reg, &name, &id).await,
            Method::DELETE => blobs::cancel_upload(reg, &name, &id).await,
            _ => Err(Error::MethodNotAllowed),
        },
        _ => Err(Error::MethodNotAllowed),
    }
}

/// A request header as text, if present and valid.
pub(crate) fn header_str<'a>(
    req: &'a HttpRequest,
    name: impl header::AsHeaderName,
) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `?n=` and `?last=` of the listing endpoints.
pub(crate) fn pagination(req: &HttpRequest) -> Result<(Option<u32>, Option<String>)> {
    let q = query(req)?;
    let n = match q.get("n") {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s.parse::<u32>().map_err(|_| {
            Error::Unsupported(format!(
                "invalid pagination parameter n={s:?}: expected a non-negative integer"
            ))
        })?),
    };
    Ok((n, q.get("last").filter(|l| !l.is_empty()).cloned()))
}
