//! wharf: an OCI Distribution registry whose metadata — manifests, tags, and the
//! manifest→blob and manifest→child edges — lives in SQLite or PostgreSQL, so that garbage
//! collection and usage reporting are SQL queries rather than storage walks.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod fsck;
pub mod gc;
pub mod import;
pub mod meta;
pub mod metrics;
pub mod oci;
pub mod registry;
pub mod storage;
pub mod tls;
pub mod usage;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};

use config::Config;
use meta::MetaStore;
use registry::{Options, Registry};

/// Opens the database (running migrations) and the storage driver named by `config`.
pub async fn open_registry(config: &Config) -> anyhow::Result<Registry> {
    let meta = MetaStore::open(&config.database.url, config.database.maxconnections).await?;
    let storage = storage::open(config).await?;
    Ok(Registry::new(
        meta,
        storage,
        Options {
            replica: replica_id(),
            delete_enabled: config.storage.delete.enabled,
            redirect_enabled: !config.storage.redirect.disable,
        },
    ))
}

/// This process's name among the replicas: `WHARF_REPLICA` when set (e.g. the pod name), else
/// the host name and process id.
pub fn replica_id() -> String {
    if let Ok(r) = std::env::var("WHARF_REPLICA") {
        if !r.is_empty() {
            return r;
        }
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wharf".into());
    format!("{host}-{}", std::process::id())
}

/// What the HTTP server needs besides the registry, from the configuration.
pub struct ServerOptions {
    pub access: api::AccessControl,
    /// HTTPS: the rustls configuration, and its certificate (reloaded on SIGHUP).
    pub tls: Option<(rustls::ServerConfig, Arc<tls::ReloadingCert>)>,
    pub gc: config::GcConfig,
    /// `storage.maintenance.readonly.enabled`: refuse every write.
    pub read_only: bool,
    /// Worker threads; 0 means one per CPU.
    pub workers: usize,
    pub access_log: bool,
    /// How long requests in flight may take to finish when the server stops.
    pub drain_timeout: std::time::Duration,
    pub timeouts: config::TimeoutsConfig,
    pub limits: config::LimitsConfig,
}

impl ServerOptions {
    /// The options `config` describes (reads the htpasswd file or token keys it names).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let tls = match &config.http.tls {
            Some(t) => Some(tls::server_config(&t.certificate, &t.key)?),
            None => None,
        };
        Ok(ServerOptions {
            access: api::AccessControl(auth::Auth::from_config(&config.auth)?),
            tls,
            gc: config.gc.clone(),
            read_only: config.storage.maintenance.readonly.enabled,
            workers: config.http.workers,
            access_log: config.log.accesslog,
            drain_timeout: config.http.draintimeout,
            timeouts: config.http.timeouts.clone(),
            limits: config.http.limits.clone(),
        })
    }
}

/// The debug listener (`http.debug.addr`): Prometheus metrics at `/metrics`. Keep it off the
/// public network (docker-compose does not publish it).
pub fn debug_server(registry: Arc<Registry>, listener: TcpListener) -> anyhow::Result<Server> {
    let handle = metrics::install();
    let data = web::Data::from(registry);
    let server = HttpServer::new(move || {
        let handle = handle.clone();
        App::new().app_data(data.clone()).route(
            "/metrics",
            web::get().to(move |registry: web::Data<Registry>| {
                let handle = handle.clone();
                async move {
                    registry.report_pool_gauges();
                    actix_web::HttpResponse::Ok()
                        .content_type("text/plain; version=0.0.4")
                        .body(handle.render())
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// Builds the HTTP server on an already bound listener (tests bind port 0).
pub fn http_server(
    registry: Arc<Registry>,
    options: ServerOptions,
    listener: TcpListener,
) -> anyhow::Result<Server> {
    let data = web::Data::from(registry);
    let access = web::Data::new(options.access);
    let read_only = web::Data::new(api::ReadOnly(options.read_only));
    let uploads = web::Data::new(api::UploadLimits::new(
        options.limits.concurrentuploads,
        options.timeouts.readbody,
        options.limits.maxheaderbytes,
    ));
    let gc = web::Data::new(options.gc);
    let (workers, access_log) = (options.workers, options.access_log);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(access.clone())
            .app_data(read_only.clone())
            .app_data(uploads.clone())
            .app_data(gc.clone())
            .app_data(web::Data::new(AccessLog(access_log)))
            .wrap(actix_web::middleware::from_fn(access_log_mw))
            .wrap(api::default_headers())
            .configure(api::configure)
    })
    .workers(if workers == 0 { num_cpus() } else { workers })
    .shutdown_timeout(options.drain_timeout.as_secs())
    .client_request_timeout(options.timeouts.readheader)
    // The caller decides what a signal means (see `wharf serve`).
    .disable_signals();
    let server = match options.tls {
        Some((tls, _)) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

/// Gives every request an id (the client's `X-Request-Id` when it sent a sane one), returned
/// in the response and carried by every log line of the request; with `log.accesslog`, logs
/// one line per request: method, route, repository, status, bytes, duration and user.
async fn access_log_mw(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    use actix_web::body::BodySize;
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = req.method().clone();
    let (route, repository) = api::describe_path(req.path());
    let bytes_in: u64 = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let access_log = req.app_data::<web::Data<AccessLog>>().is_some_and(|a| a.0);
    let span = tracing::info_span!("request", id = %id);
    let guard = InFlight::start();
    let mut res = next.call(req).instrument(span).await?;
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&id) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(REQUEST_ID_HEADER),
            v,
        );
    }
    let bytes_out = match res.response().body().size() {
        BodySize::Sized(n) => n,
        _ => 0,
    };
    let status = res.status().as_u16().to_string();
    let method_label = method.as_str().to_owned();
    ::metrics::counter!(metrics::HTTP_REQUESTS, "route" => route, "method" => method_label.clone(), "status" => status)
        .increment(1);
    ::metrics::histogram!(metrics::HTTP_DURATION, "route" => route, "method" => method_label)
        .record(started.elapsed().as_secs_f64());
    ::metrics::counter!(metrics::HTTP_BYTES_IN).increment(bytes_in);
    ::metrics::counter!(metrics::HTTP_BYTES_OUT).increment(bytes_out);
    if access_log {
        let user = res
            .request()
            .extensions()
            .get::<api::CallerName>()
            .map(|c| c.0.clone());
        tracing::info!(
            target: "wharf::access",
            request_id = %id,
            %method,
            route,
            repository = repository.as_deref().unwrap_or(""),
            status = res.status().as_u16(),
            bytes_in,
            bytes_out,
            ms = (started.elapsed().as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
            user = user.as_deref().unwrap_or("-"),
        );
    }
    // In flight until the response body has been sent (or the client went away).
    Ok(res.map_body(move |_, body| Tracked {
        inner: Box::pin(body),
        _guard: guard,
    }))
}

/// Requests being served, bodies included (a graceful stop waits for them).
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many requests are being served right now, response bodies included.
pub fn requests_in_flight() -> usize {
    IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst)
}

struct InFlight;

impl InFlight {
    fn start() -> Self {
        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A response body that counts as in flight until it is done.
struct Tracked<B> {
    inner: std::pin::Pin<Box<B>>,
    _guard: InFlight,
}

impl<B: actix_web::body::MessageBody> actix_web::body::MessageBody for Tracked<B> {
    type Error = B::Error;

    fn size(&self) -> actix_web::body::BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<bytes::Bytes, Self::Error>>> {
        self.get_mut().inner.as_mut().poll_next(cx)
    }
}

/// The request id header, set on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Whether to log one line per request.
#[derive(Clone, Copy)]
struct AccessLog(bool);

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// How often the server folds the usage journal into the aggregates (reports fold first
/// anyway; this keeps the journal short).
const USAGE_FOLD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Background maintenance inside `wharf serve`: folding the usage journal, purging abandoned
/// uploads.
pub fn spawn_maintenance(registry: Arc<Registry>, config: &Config) {
    if config.storage.maintenance.readonly.enabled {
        tracing::info!("read-only mode: upload purging and usage folding are paused");
        return;
    }
    let folder = registry.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(USAGE_FOLD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Whichever replica gets the fold lock folds; the others skip this round.
            if let Err(e) = folder.fold_usage(false).await {
                tracing::warn!(error = format!("{e:#}"), "folding the usage journal failed");
            }
        }
    });
    let purge = config.storage.maintenance.uploadpurging.clone();
    if !purge.enabled {
        return;
    }
    tokio::spawn(async move {
        let interval = purge.interval.max(std::time::Duration::from_secs(1));
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            if !registry
                .lead_job("upload_purging", lease_ttl(interval))
                .await
            {
                continue;
            }
            match registry.purge_uploads(purge.age, purge.dryrun).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(uploads = n, dry_run = purge.dryrun, "upload purge finished")
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "upload purge failed"),
            }
        }
    });
}

/// How long a job's lease lasts: two intervals, so the holder renews it in time and a dead
/// replica's job passes on within two intervals.
pub fn lease_ttl(interval: std::time::Duration) -> std::time::Duration {
    (interval * 2).max(std::time::Duration::from_secs(1))
}
