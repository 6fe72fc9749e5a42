//! Test harness: a real wharf server on an ephemeral port, per test, on a chosen backend; an
//! HTTP client with registry helpers; and a generator of OCI images (no fixtures on disk).
#![allow(dead_code)]

pub mod images;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use wharf::config::Config;
use wharf::registry::Registry;

/// The metadata + storage combination a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    SqliteFs,
    PostgresFs,
    PostgresS3,
}

/// Runs each listed `async fn name(backend: Backend)` once per backend, as separate tests.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_fs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::SqliteFs).await
                }
            )*
        }
        mod postgres_fs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::PostgresFs).await
                }
            )*
        }
        mod postgres_s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::PostgresS3).await
                }
            )*
        }
    };
}

/// A PostgreSQL session of the test's own (its connection driven in the background).
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A database for one test. PostgreSQL tests get their own database, created from the
/// server at WHARF_TEST_POSTGRES_URL and dropped afterwards.
pub struct TestDatabase {
    pub url: String,
    admin_url: Option<String>,
    name: Option<String>,
}

fn postgres_admin_url() -> String {
    std::env::var("WHARF_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "WHARF_TEST_POSTGRES_URL is not set: the PostgreSQL tests need a server. \
             Run the suite with scripts/test (it starts a throwaway PostgreSQL), or set \
             WHARF_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test"
        )
    })
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

async fn pg_admin(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    let task = tokio::spawn(conn);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = task.await;
}

impl TestDatabase {
    pub async fn new(backend: Backend, dir: &Path) -> Self {
        match backend {
            Backend::SqliteFs => TestDatabase {
                url: format!("sqlite://{}", dir.join("wharf.db").display()),
                admin_url: None,
                name: None,
            },
            Backend::PostgresFs | Backend::PostgresS3 => {
                let admin = postgres_admin_url();
                let name = format!("wharf_t_{}", uuid::Uuid::new_v4().simple());
                pg_admin(&admin, &format!("CREATE DATABASE {name}")).await;
                // scripts/test runs the PostgreSQL tests again at the isolation levels operators
                // set cluster-wide: wharf must not depend on the database's default.
                if let Ok(level) = std::env::var("WHARF_TEST_PG_ISOLATION") {
                    pg_admin(
                        &admin,
                        &format!(
                            "ALTER DATABASE {name} SET default_transaction_isolation = '{level}'"
                        ),
                    )
                    .await;
                }
                TestDatabase {
                    url: with_database(&admin, &name),
                    admin_url: Some(admin),
                    name: Some(name),
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let (Some(admin), Some(name)) = (self.admin_url.clone(), self.name.clone()) {
            // Drop runs outside async context; a helper thread with its own runtime cleans up.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(pg_admin(
                    &admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ));
            })
            .join();
        }
    }
}

/// A running registry.
pub struct TestServer {
    pub url: String,
    pub root: PathBuf,
    pub registry: Arc<Registry>,
    /// Handles of our own onto the server's database and storage, to look behind the API.
    pub meta: wharf::meta::MetaStore,
    pub storage: Arc<dyn wharf::storage::BlobStore>,
    pub client: Client,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub db: TestDatabase,
    pub backend: Backend,
    /// The test's own bucket on the local S3 server (S3 backends).
    pub s3: Option<TestBucket>,
}

pub struct TestBucket {
    pub endpoint: String,
    pub bucket: String,
}

fn s3_endpoint() -> String {
    std::env::var("WHARF_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "WHARF_TEST_S3_ENDPOINT is not set: the S3 tests need an S3-compatible server. \
             Run the suite with scripts/test (it starts moto_server), or start one \
             (moto_server -H 127.0.0.1 -p 9000) and set WHARF_TEST_S3_ENDPOINT=http://127.0.0.1:9000"
        )
    })
}

/// The S3 server's credentials (`WHARF_TEST_S3_ACCESSKEY` / `_SECRETKEY`; moto takes any).
pub fn s3_credentials() -> (String, String) {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "test".to_string());
    (
        var("WHARF_TEST_S3_ACCESSKEY"),
        var("WHARF_TEST_S3_SECRETKEY"),
    )
}

impl TestBucket {
    pub async fn create() -> Self {
        let endpoint = s3_endpoint();
        // Short: s3s-fs names a file after base64(bucket) + base64(key) + the upload id, and
        // a blob key under a root directory leaves little room below 255 bytes.
        let bucket = format!("wt-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let b = TestBucket { endpoint, bucket };
        b.client()
            .create_bucket()
            .bucket(&b.bucket)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "creating bucket {} on the S3 server at {}: {}",
                    b.bucket,
                    b.endpoint,
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
        b
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        let (key, secret) = s3_credentials();
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .http_client(wharf::storage::https_client())
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                key, secret, None, None, "tests",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}

pub fn blob_key(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap();
    format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
}

impl TestEnv {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::new(backend, dir.path()).await;
        let s3 = match backend {
            Backend::PostgresS3 => Some(TestBucket::create().await),
            _ => None,
        };
        TestEnv {
            dir,
            db,
            backend,
            s3,
        }
    }

    /// The environment that configures a server for this test (in-process or a child).
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("WHARF_DATABASE_URL".to_string(), self.db.url.clone()),
            ("WHARF_DATABASE_MAXCONNECTIONS".to_string(), "8".to_string()),
        ];
        match &self.s3 {
            Some(b) => env.extend([
                ("REGISTRY_STORAGE_S3_BUCKET".to_string(), b.bucket.clone()),
                (
                    "REGISTRY_STORAGE_S3_REGIONENDPOINT".to_string(),
                    b.endpoint.clone(),
                ),
                (
                    "REGISTRY_STORAGE_S3_ACCESSKEY".to_string(),
                    s3_credentials().0,
                ),
                (
                    "REGISTRY_STORAGE_S3_SECRETKEY".to_string(),
                    s3_credentials().1,
                ),
                (
                    "REGISTRY_STORAGE_S3_ROOTDIRECTORY".to_string(),
                    "/registry".to_string(),
                ),
                // Small parts, so that ordinary tests cross part boundaries.
                (
                    "REGISTRY_STORAGE_S3_CHUNKSIZE".to_string(),
                    "5M".to_string(),
                ),
                (
                    "REGISTRY_STORAGE_S3_MULTIPARTCOPYTHRESHOLDSIZE".to_string(),
                    "6M".to_string(),
                ),
                (
                    "REGISTRY_STORAGE_S3_MULTIPARTCOPYCHUNKSIZE".to_string(),
                    "5M".to_string(),
                ),
            ]),
            None => env.push((
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".to_string(),
                self.dir.path().join("storage").display().to_string(),
            )),
        }
        env
    }

    pub fn config(&self, extra: &[(&str, &str)]) -> Config {
        let mut env = vec![("REGISTRY_HTTP_ADDR".to_string(), "127.0.0.1:0".to_string())];
        env.extend(self.env_vars());
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::load(None, env).unwrap()
    }

    /// Writes an object at a blob's path behind the registry's back (fsck tests).
    pub async fn put_raw_blob(&self, digest: &str, data: &[u8]) {
        match &self.s3 {
            Some(b) => {
                b.client()
                    .put_object()
                    .bucket(&b.bucket)
                    .key(format!("registry/{}", blob_key(digest)))
                    .body(data.to_vec().into())
                    .send()
                    .await
                    .unwrap();
            }
            None => {
                let path = self.dir.path().join("storage").join(blob_key(digest));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, data).unwrap();
            }
        }
    }

    /// Deletes a blob's object behind the registry's back (fsck tests).
    pub async fn remove_raw_blob(&self, digest: &str) {
        match &self.s3 {
            Some(b) => {
                b.client()
                    .delete_object()
                    .bucket(&b.bucket)
                    .key(format!("registry/{}", blob_key(digest)))
                    .send()
                    .await
                    .unwrap();
            }
            None => std::fs::remove_file(self.dir.path().join("storage").join(blob_key(digest)))
                .unwrap(),
        }
    }

    pub async fn start(&self) -> TestServer {
        self.start_with(&[]).await
    }

    pub async fn start_with(&self, extra: &[(&str, &str)]) -> TestServer {
        TestServer::start(self.config(extra)).await
    }

    /// A server configured by a YAML file (what env variables cannot say, e.g. a policy)
    /// plus this test's backend variables.
    pub async fn start_with_yaml(&self, yaml: &str) -> TestServer {
        let path = self.dir.path().join("wharf.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut env = vec![("REGISTRY_HTTP_ADDR".to_string(), "127.0.0.1:0".to_string())];
        env.extend(self.env_vars());
        TestServer::start(Config::load(Some(&path), env).unwrap()).await
    }
}

/// Server warnings and errors go to the test's output (shown when a test fails).
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        init_logging();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let root = config
            .storage
            .filesystem
            .clone()
            .map(|f| f.rootdirectory)
            .unwrap_or_default();
        let gc = config.gc.clone();
        // The collector runs only where a test asks for it (it would race the assertions of
        // the others); `wharf serve` runs it by default.
        let gc_enabled = config.gc.interval < Duration::from_secs(1);
        let own = config.clone();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let registry =
                    Arc::new(wharf::open_registry(&config).await.expect("open registry"));
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = listener.local_addr().unwrap().port();
                let mut options =
                    wharf::ServerOptions::from_config(&config).expect("server options");
                options.workers = 2;
                options.access_log = false;
                let server = wharf::http_server(registry.clone(), options, listener).unwrap();
                if gc_enabled {
                    wharf::gc::spawn(registry.clone(), gc);
                }
                tx.send((server.handle(), registry, port)).ok().unwrap();
                server.await.unwrap();
            })
        });
        let (handle, registry, port) = rx.await.expect("server failed to start");
        let url = format!("http://127.0.0.1:{port}");
        let meta = wharf::meta::MetaStore::open(&own.database.url, 4)
            .await
            .expect("open the server's database");
        let storage = wharf::storage::open(&own)
            .await
            .expect("open the server's storage");
        TestServer {
            client: Client::new(&url),
            url,
            root,
            registry,
            meta,
            storage,
            handle,
            thread: Some(thread),
        }
    }

    /// Stops the server and waits until its port is closed.
    pub async fn stop(mut self) {
        self.handle.stop(false).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Whether storage holds the blob's object (asked of the storage driver, not the database).
    pub async fn blob_exists(&self, digest: &str) -> bool {
        let d: wharf::oci::Digest = digest.parse().unwrap();
        self.storage.blob_stat(&d).await.unwrap().is_some()
    }

    pub async fn blob_object(&self, digest: &str) -> Vec<u8> {
        use futures_util::StreamExt;
        let d: wharf::oci::Digest = digest.parse().unwrap();
        let size = self
            .storage
            .blob_stat(&d)
            .await
            .unwrap()
            .expect("object exists");
        let mut stream = self.storage.blob_read(&d, 0, size).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    /// Uploads that still have data in storage.
    pub async fn stored_uploads(&self) -> usize {
        self.storage.stored_uploads().await.unwrap().len()
    }
}

/// What thrifty pushes met (see `Client::push_image_thrifty`).
#[derive(Default, Debug)]
pub struct PushStats {
    pub skipped_after_head: std::sync::atomic::AtomicU64,
    pub mounted: std::sync::atomic::AtomicU64,
    /// Mounts answered with an upload session (the blob was gone or going).
    pub mount_fell_back: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    /// Manifests refused in an attempt that relied on a HEAD or a mount: the window between
    /// the client's check and its manifest PUT, in which GC took the blob.
    pub refused_after_skip_or_mount: std::sync::atomic::AtomicU64,
}

/// HTTP client with registry helpers. Paths are relative to the server URL.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    /// `Authorization` sent with every request.
    pub auth: Option<String>,
}

pub async fn error_code(resp: Response) -> String {
    let body: Value = resp.json().await.expect("error body is JSON");
    body["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_string()
}

impl Client {
    pub fn new(base: &str) -> Self {
        Client {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap(),
            auth: None,
        }
    }

    /// The same client sending `Authorization: <value>`.
    pub fn with_auth(&self, value: &str) -> Client {
        Client {
            auth: Some(value.to_string()),
            ..self.clone()
        }
    }

    /// The same client with Basic credentials.
    pub fn with_basic(&self, user: &str, password: &str) -> Client {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.with_auth(&format!("Basic {b}"))
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{}", self.base, path)
        }
    }

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match &self.auth {
            Some(a) => r.header("Authorization", a),
            None => r,
        }
    }

    /// A GET whose transport errors are returned, not unwrapped.
    pub async fn get_raw(&self, path: &str) -> reqwest::Result<Response> {
        self.req(Method::GET, path).send().await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.unwrap()
    }

    pub async fn head(&self, path: &str) -> Response {
        self.req(Method::HEAD, path).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.req(Method::DELETE, path).send().await.unwrap()
    }

    /// Pushes a blob in one POST; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let resp = self
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "monolithic push to {repo}"
        );
        digest
    }

    /// Closes an upload with a bodyless `PUT ?digest=`; asserts the blob was created.
    pub async fn close_upload(&self, location: &str, digest: &str) {
        let r = self
            .req(
                Method::PUT,
                &with_query(location, &format!("digest={digest}")),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "closing {location}: {}",
            r.text().await.unwrap()
        );
    }

    /// Starts an upload session; returns its Location.
    pub async fn start_upload(&self, repo: &str) -> String {
        let resp = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        resp.headers()["location"].to_str().unwrap().to_string()
    }

    /// Pushes a blob as a sequence of PATCH chunks with Content-Range, then PUT.
    pub async fn push_blob_chunked(&self, repo: &str, data: &[u8], chunk: usize) -> String {
        let digest = sha256(data);
        let mut location = self.start_upload(repo).await;
        let mut offset = 0usize;
        for piece in data.chunks(chunk.max(1)) {
            let resp = self
                .req(Method::PATCH, &location)
                .header("Content-Type", "application/octet-stream")
                .header(
                    "Content-Range",
                    format!("{}-{}", offset, offset + piece.len() - 1),
                )
                .body(piece.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED, "PATCH at {offset}");
            offset += piece.len();
            assert_eq!(
                resp.headers()["range"].to_str().unwrap(),
                format!("0-{}", offset - 1)
            );
            location = resp.headers()["location"].to_str().unwrap().to_string();
        }
        let resp = self
            .req(
                Method::PUT,
                &with_query(&location, &format!("digest={digest}")),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        digest
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let resp = self.put_manifest(repo, reference, media_type, body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "manifest push to {repo}:{reference}: {text}"
        );
        sha256(body)
    }

    /// Pushes every blob and manifest of an image (children before the index).
    pub async fn push_image(&self, repo: &str, tag: &str, image: &images::Image) -> String {
        for blob in &image.blobs {
            self.push_blob(repo, blob).await;
        }
        for (media_type, body) in &image.children {
            self.push_manifest(repo, &sha256(body), media_type, body)
                .await;
        }
        self.push_manifest(repo, tag, &image.media_type, &image.manifest)
            .await
    }

    /// Pushes an image, retrying when GC collected parts of it before the manifest arrived
    /// (the registry refuses such a push; it never accepts one referencing collected data).
    /// Returns how many attempts were refused.
    pub async fn push_image_retrying(&self, repo: &str, tag: &str, img: &images::Image) -> u32 {
        'attempt: for attempt in 0..200 {
            for blob in &img.blobs {
                self.push_blob(repo, blob).await;
            }
            for (mt, child) in &img.children {
                let r = self.put_manifest(repo, &sha256(child), mt, child).await;
                if r.status() != StatusCode::CREATED {
                    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
                    continue 'attempt;
                }
            }
            let r = self
                .put_manifest(repo, tag, &img.media_type, &img.manifest)
                .await;
            if r.status() == StatusCode::CREATED {
                return attempt;
            }
            assert_eq!(
                error_code(r).await,
                "MANIFEST_BLOB_UNKNOWN",
                "only a collected blob may refuse a push"
            );
        }
        panic!("{repo}:{tag} could not be pushed in 200 attempts");
    }

    /// Pushes an image the way thrifty clients do: a blob the repository already has (HEAD
    /// 200) is not sent again, and a blob `from` has is mounted rather than uploaded. Each
    /// attempt that a collected blob refuses is retried from the top. Counts what happened in
    /// `stats`, so that a run can say which race windows it actually hit.
    pub async fn push_image_thrifty(
        &self,
        repo: &str,
        from: &str,
        tag: &str,
        img: &images::Image,
        stats: &PushStats,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        'attempt: for _ in 0..200 {
            let mut trusted_the_registry = false;
            for blob in &img.blobs {
                let d = sha256(blob);
                if self.head(&format!("/v2/{repo}/blobs/{d}")).await.status() == StatusCode::OK {
                    stats.skipped_after_head.fetch_add(1, Relaxed);
                    trusted_the_registry = true;
                    continue;
                }
                let r = self
                    .req(
                        Method::POST,
                        &format!("/v2/{repo}/blobs/uploads/?mount={d}&from={from}"),
                    )
                    .send()
                    .await
                    .unwrap();
                match r.status() {
                    StatusCode::CREATED => {
                        stats.mounted.fetch_add(1, Relaxed);
                        trusted_the_registry = true;
                    }
                    StatusCode::ACCEPTED => {
                        stats.mount_fell_back.fetch_add(1, Relaxed);
                        let loc = r.headers()["location"].to_str().unwrap().to_string();
                        let r = self
                            .req(Method::PUT, &with_query(&loc, &format!("digest={d}")))
                            .body(blob.clone())
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), StatusCode::CREATED);
                    }
                    other => panic!("mount answered {other}"),
                }
            }
            let manifests = img
                .children
                .iter()
                .map(|(mt, body)| (mt.as_str(), sha256(body), body))
                .chain(std::iter::once((
                    img.media_type.as_str(),
                    tag.to_string(),
                    &img.manifest,
                )));
            for (mt, reference, body) in manifests {
                let r = self.put_manifest(repo, &reference, mt, body).await;
                if r.status() != StatusCode::CREATED {
                    assert_eq!(
                        error_code(r).await,
                        "MANIFEST_BLOB_UNKNOWN",
                        "only a collected blob may refuse a push"
                    );
                    stats.refused.fetch_add(1, Relaxed);
                    if trusted_the_registry {
                        stats.refused_after_skip_or_mount.fetch_add(1, Relaxed);
                    }
                    continue 'attempt;
                }
            }
            return;
        }
        panic!("{repo}:{tag} could not be pushed in 200 attempts");
    }

    /// A blob's bytes, following a redirect to storage as clients do.
    pub async fn blob_bytes(&self, repo: &str, digest: &str) -> Option<Vec<u8>> {
        let mut resp = self.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        if resp.status() == StatusCode::NOT_FOUND {
            return None;
        }
        if resp.status() == StatusCode::TEMPORARY_REDIRECT {
            assert_eq!(
                resp.headers()["docker-content-digest"].to_str().unwrap(),
                digest
            );
            let location = resp.headers()["location"].to_str().unwrap().to_string();
            resp = self.http.get(location).send().await.unwrap();
        }
        assert_eq!(resp.status(), StatusCode::OK);
        Some(resp.bytes().await.unwrap().to_vec())
    }

    /// Pulls an image by tag and checks every byte against its digest.
    pub async fn pull_and_verify(&self, repo: &str, reference: &str) {
        let resp = self
            .req(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
            .header("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "pull {repo}:{reference}");
        let digest = resp.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string();
        let body = resp.bytes().await.unwrap();
        assert_eq!(sha256(&body), digest);
        let m: Value = serde_json::from_slice(&body).unwrap();
        if let Some(children) = m["manifests"].as_array() {
            for c in children {
                Box::pin(self.pull_and_verify(repo, c["digest"].as_str().unwrap())).await;
            }
        } else {
            let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
            blobs.extend(
                m["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["digest"].as_str().unwrap().to_string()),
            );
            for b in blobs {
                let bytes = self
                    .blob_bytes(repo, &b)
                    .await
                    .unwrap_or_else(|| panic!("blob {b} missing in {repo}"));
                assert_eq!(sha256(&bytes), b);
            }
        }
    }
}

pub fn with_query(location: &str, q: &str) -> String {
    if location.contains('?') {
        format!("{location}&{q}")
    } else {
        format!("{location}?{q}")
    }
}
