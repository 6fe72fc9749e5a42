//! Configuration: defaults that need no file, then a YAML file, then environment overrides.
//!
//! Keys follow CNCF Distribution's where the concept is the same (`http.addr`,
//! `storage.filesystem.rootdirectory`, `storage.delete.enabled`, `storage.redirect.disable`,
//! `storage.maintenance.uploadpurging.*`, `log.level`), so an operator's habits carry over.
//! Environment variables override any key the way Distribution's do: `REGISTRY_HTTP_ADDR`
//! sets `http.addr`, `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY` sets
//! `storage.filesystem.rootdirectory`; `WHARF_` works as the same prefix. That is why no key
//! contains an underscore.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};
use serde_yaml::{Mapping, Value};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Accepted for compatibility with Distribution's files; ignored.
    pub version: Option<Value>,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub storage: StorageConfig,
    pub database: DatabaseConfig,
    pub gc: GcConfig,
    /// Access control; without it, the registry is open (anyone may push and delete).
    pub auth: AuthConfig,
}

/// `auth`: one way to authenticate (`htpasswd` or `token`, as Distribution's), and with
/// htpasswd an optional `policy` of who may do what where.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub htpasswd: Option<HtpasswdConfig>,
    pub token: Option<TokenConfig>,
    pub policy: Option<PolicyConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HtpasswdConfig {
    #[serde(default = "default_realm")]
    pub realm: String,
    pub path: PathBuf,
}

fn default_realm() -> String {
    "wharf".into()
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// The token service's URL, sent to clients in the `WWW-Authenticate` challenge.
    pub realm: String,
    /// This registry's name: tokens must carry it in `aud`.
    pub service: String,
    /// Tokens must carry it in `iss`.
    pub issuer: String,
    /// PEM certificates whose keys sign tokens.
    pub rootcertbundle: Option<PathBuf>,
    /// Or a JWK set file with those keys.
    pub jwks: Option<PathBuf>,
}

/// `auth.policy` (see `auth::policy`): groups and grants.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Group name → member user names.
    pub groups: std::collections::HashMap<String, Vec<String>>,
    pub grants: Vec<GrantConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// `alice`, `group:devs`, `*` (any authenticated user), `anonymous`.
    pub who: Vec<String>,
    /// Repository name patterns (`team/*`, `*/public/**`); every repository when absent.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// `pull`, `push`, `delete`, `admin`.
    pub actions: Vec<String>,
}

/// Online garbage collection (see docs/gc.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Run the collector inside `wharf serve`.
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Manifests, blobs and blob links younger than this are never collected: it covers a
    /// push in progress (blobs uploaded, manifest not yet pushed).
    #[serde(deserialize_with = "duration")]
    pub graceperiod: Duration,
    /// Collect manifests that no tag points at and no index lists.
    pub deleteuntagged: bool,
    /// Between runs the collector examines only what events queued; every `fullinterval` it
    /// examines every row instead (the safety net for anything a queue entry missed).
    #[serde(deserialize_with = "duration")]
    pub fullinterval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(3600),
            graceperiod: Duration::from_secs(24 * 3600),
            deleteuntagged: true,
            fullinterval: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// error, warn, info, debug, trace; `RUST_LOG` takes precedence when set.
    pub level: String,
    /// `text` or `json`.
    pub formatter: String,
    /// Log one line per request (method, path, status, duration).
    pub accesslog: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            formatter: "text".into(),
            accesslog: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    /// Worker threads serving HTTP; 0 means one per CPU.
    pub workers: usize,
    /// Serve HTTPS with this certificate and key (PEM).
    pub tls: Option<TlsConfig>,
    /// On SIGTERM or SIGINT: stop accepting, and give requests in flight this long to finish
    /// (Distribution's `http.draintimeout`).
    #[serde(deserialize_with = "duration")]
    pub draintimeout: Duration,
    /// The debug listener (metrics), as Distribution's `http.debug`.
    pub debug: Option<DebugConfig>,
    pub timeouts: TimeoutsConfig,
    pub limits: LimitsConfig,
}

/// How long a slow client may take (so that one cannot hold connections and workers).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// To send a request's line and headers once the connection is open (or the previous
    /// request ended): after it, 408 and the connection is closed.
    #[serde(deserialize_with = "duration")]
    pub readheader: Duration,
    /// Between two pieces of a request body: a body that stalls longer fails the request (an
    /// upload stays resumable at its last acknowledged offset).
    #[serde(deserialize_with = "duration")]
    pub readbody: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            readheader: Duration::from_secs(10),
            readbody: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Upload requests (PATCH, PUT, monolithic POST) writing at once in this process; more
    /// are answered 429 TOOMANYREQUESTS with Retry-After. 0: no limit.
    pub concurrentuploads: usize,
    /// Request line and headers together may be this large; larger is 431. (The HTTP layer
    /// itself refuses heads over 128 KiB.)
    pub maxheaderbytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            concurrentuploads: 256,
            maxheaderbytes: 32 << 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugConfig {
    /// e.g. `127.0.0.1:5001`; serves `/metrics`.
    pub addr: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:5000".into(),
            workers: 0,
            tls: None,
            draintimeout: Duration::from_secs(60),
            debug: None,
            timeouts: TimeoutsConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub filesystem: Option<FilesystemConfig>,
    pub s3: Option<S3Config>,
    pub delete: DeleteConfig,
    pub redirect: RedirectConfig,
    pub maintenance: MaintenanceConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesystemConfig {
    /// Blobs live under `<rootdirectory>/docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`,
    /// the same layout as Distribution's.
    pub rootdirectory: PathBuf,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        Self {
            rootdirectory: PathBuf::from("./data"),
        }
    }
}

/// S3 and S3-compatible storage; keys and meanings as Distribution's s3 driver.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub region: String,
    /// Endpoint of an S3-compatible store (MinIO, Ceph, ...): `http://minio:9000`, or a host
    /// whose scheme `secure` picks.
    pub regionendpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`). Defaults to true whenever
    /// `regionendpoint` is set: virtual-hosted addressing needs DNS for `bucket.endpoint`,
    /// which S3-compatible stores rarely have (Distribution 3 changed this default and broke
    /// MinIO users), and false for AWS itself.
    pub forcepathstyle: Option<bool>,
    pub bucket: String,
    /// Static credentials; without them the standard AWS chain applies (environment,
    /// profile, web identity, instance metadata).
    pub accesskey: Option<String>,
    pub secretkey: Option<String>,
    pub secure: bool,
    pub skipverify: bool,
    /// Key prefix inside the bucket.
    pub rootdirectory: String,
    /// Multipart part size for uploads (at least 5 MiB); parts double every 1000.
    #[serde(deserialize_with = "byte_size")]
    pub chunksize: u64,
    #[serde(deserialize_with = "byte_size")]
    pub multipartcopychunksize: u64,
    pub multipartcopymaxconcurrency: usize,
    /// Objects larger than this are copied with a multipart copy (at most 5 GiB).
    #[serde(deserialize_with = "byte_size")]
    pub multipartcopythresholdsize: u64,
    pub encrypt: bool,
    /// KMS key id for `encrypt` (SSE-KMS); without it, SSE-S3 (AES256).
    pub keyid: Option<String>,
    /// STANDARD, REDUCED_REDUNDANCY, ...; NONE sends no storage class (for stores that
    /// reject the header).
    pub storageclass: String,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            regionendpoint: None,
            forcepathstyle: None,
            bucket: String::new(),
            accesskey: None,
            secretkey: None,
            secure: true,
            skipverify: false,
            rootdirectory: String::new(),
            chunksize: 10 << 20,
            multipartcopychunksize: 32 << 20,
            multipartcopymaxconcurrency: 100,
            multipartcopythresholdsize: 32 << 20,
            encrypt: false,
            keyid: None,
            storageclass: "STANDARD".into(),
        }
    }
}

impl S3Config {
    pub fn path_style(&self) -> bool {
        self.forcepathstyle.unwrap_or_else(|| {
            self.regionendpoint
                .as_deref()
                .is_some_and(|e| !e.is_empty())
        })
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("region", &self.region)
            .field("regionendpoint", &self.regionendpoint)
            .field("forcepathstyle", &self.path_style())
            .field("bucket", &self.bucket)
            .field("accesskey", &self.accesskey)
            .field("secretkey", &self.secretkey.as_ref().map(|_| "***"))
            .field("rootdirectory", &self.rootdirectory)
            .field("chunksize", &self.chunksize)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteConfig {
    /// Allow DELETE of manifests, tags and blob links through the API.
    pub enabled: bool,
}

impl Default for DeleteConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedirectConfig {
    /// Serve blob bytes through wharf even when the storage could redirect to a presigned URL.
    pub disable: bool,
    /// Lifetime of a presigned URL.
    #[serde(deserialize_with = "duration")]
    pub expiry: Duration,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            disable: false,
            expiry: Duration::from_secs(20 * 60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceConfig {
    pub uploadpurging: UploadPurgingConfig,
    pub readonly: ReadOnlyConfig,
}

/// `storage.maintenance.readonly` (Distribution's key): pushes and deletes are refused, reads
/// go on; the background collector and upload purging pause (GC dry runs still answer).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ReadOnlyConfig {
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadPurgingConfig {
    pub enabled: bool,
    /// Uploads untouched for this long are aborted.
    #[serde(deserialize_with = "duration")]
    pub age: Duration,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Log what would be purged without purging it.
    pub dryrun: bool,
}

impl Default for UploadPurgingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            age: Duration::from_secs(168 * 3600),
            interval: Duration::from_secs(24 * 3600),
            dryrun: false,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/wharf.db` or `postgres://user:pass@host:5432/db`. Empty means a SQLite
    /// file `wharf.db` under the filesystem root directory.
    pub url: String,
    pub maxconnections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            maxconnections: 16,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("maxconnections", &self.maxconnections)
            .finish()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Config {
    /// Loads `path` (if given; a missing explicit file is an error) and applies environment
    /// overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut tree = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| {
                    format!(
                        "cannot read config file {}: check the path passed to --config",
                        p.display()
                    )
                })?;
                if text.trim().is_empty() {
                    Value::Mapping(Mapping::new())
                } else {
                    serde_yaml::from_str(&text)
                        .with_context(|| format!("config file {} is not valid YAML", p.display()))?
                }
            }
            None => Value::Mapping(Mapping::new()),
        };
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }
        for (key, value) in env {
            let Some(rest) = key
                .strip_prefix("REGISTRY_")
                .or_else(|| key.strip_prefix("WHARF_"))
            else {
                continue;
            };
            if NOT_CONFIG_KEYS.contains(&key.as_str()) || key.starts_with("WHARF_TEST_") {
                continue;
            }
            let path: Vec<String> = rest.split('_').map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                continue;
            }
            set_path(&mut tree, &path, &value)
                .with_context(|| format!("environment variable {key}"))?;
        }
        let mut config: Config = serde_yaml::from_value(tree).context(
            "invalid configuration (see config/wharf.yaml for every key; env overrides look like REGISTRY_HTTP_ADDR)",
        )?;
        config.fill_defaults()?;
        Ok(config)
    }

    fn fill_defaults(&mut self) -> anyhow::Result<()> {
        if self.storage.s3.is_some() {
            anyhow::ensure!(
                self.storage.filesystem.is_none(),
                "configure one storage driver: storage.filesystem or storage.s3, not both"
            );
            anyhow::ensure!(
                !self.database.url.is_empty(),
                "database.url is required with S3 storage (WHARF_DATABASE_URL=postgres://...): \
                 the default SQLite file lives under storage.filesystem.rootdirectory"
            );
            return Ok(());
        }
        let root = self
            .storage
            .filesystem
            .get_or_insert_with(FilesystemConfig::default);
        if self.database.url.is_empty() {
            self.database.url =
                format!("sqlite://{}", root.rootdirectory.join("wharf.db").display());
        }
        Ok(())
    }
}

/// Environment variables with a config prefix that are not config keys. Anything else under
/// the prefixes must name a key: a misspelled `REGISTRY_AUTH_*` (or a Distribution key wharf
/// does not have) is refused loudly rather than ignored (ignoring it could run a registry
/// without the access control the operator asked for).
const NOT_CONFIG_KEYS: &[&str] = &["WHARF_CONFIG"];

fn set_path(tree: &mut Value, path: &[String], raw: &str) -> anyhow::Result<()> {
    let Value::Mapping(map) = tree else {
        bail!("cannot set a key below a value that is not a mapping");
    };
    let key = Value::String(path[0].clone());
    if path.len() == 1 {
        // Parse as a YAML scalar so that `true`, `16` and `24h` keep their natural types.
        let value =
            serde_yaml::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        let value = if value.is_null() {
            Value::String(raw.to_owned())
        } else {
            value
        };
        map.insert(key, value);
        return Ok(());
    }
    let child = map
        .entry(key)
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if child.is_null() {
        *child = Value::Mapping(Mapping::new());
    }
    set_path(child, &path[1..], raw)
}

/// Go-style durations ("168h", "90m", "30s", "1h30m", "500ms") or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected e.g. 24h, 30m, 10s"))?;
        let unit_secs = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {unit:?} (use h, m, s or ms)"
                ));
            }
        };
        total += Duration::from_secs_f64(n * unit_secs);
        rest = tail;
    }
    Ok(total)
}

/// A byte count: a number, or a string with a K/M/G suffix (powers of 1024: "10M", "5G").
fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom("a size must be a non-negative integer")),
        Value::String(s) => {
            let t = s.trim();
            let (num, mult) = match t.char_indices().last() {
                Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
                Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
                Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
                _ => (t, 1),
            };
            num.trim().parse::<u64>().map(|n| n * mult).map_err(|_| {
                serde::de::Error::custom(format!("invalid size {s:?}: use bytes or e.g. 10M, 1G"))
            })
        }
        _ => Err(serde::de::Error::custom(
            "expected a size such as 10485760 or 10M",
        )),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = Value::deserialize(d)?;
    match v {
        Value::Number(n) => n.as_u64().map(Duration::from_secs).ok_or_else(|| {
            serde::de::Error::custom("a duration in seconds must be a non-negative integer")
        }),
        Value::String(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom("expected a duration such as 24h")),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn shipped_configs_load() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        Config::load(
            Some(&dir.join("wharf.yaml")),
            Vec::<(String, String)>::new(),
        )
        .unwrap();
        let env = vec![(
            "WHARF_DATABASE_URL".to_string(),
            "postgres://wharf@postgres/wharf".to_string(),
        )];
        let prod = Config::load(Some(&dir.join("production.yaml")), env).unwrap();
        assert!(prod.auth.htpasswd.is_some() && prod.http.debug.is_some());
        crate::auth::policy::Policy::new(prod.auth.policy.unwrap()).unwrap();
    }

    use super::*;

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.http.addr, "0.0.0.0:5000");
        assert_eq!(c.database.url, "sqlite://./data/wharf.db");
        assert!(c.storage.delete.enabled);
        assert_eq!(
            c.storage.maintenance.uploadpurging.age,
            Duration::from_secs(168 * 3600)
        );
        assert!(c.gc.enabled && c.gc.deleteuntagged);
        assert_eq!(c.gc.graceperiod, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn env_overrides_like_distribution() {
        let env = vec![
            (
                "REGISTRY_HTTP_ADDR".to_string(),
                "127.0.0.1:6000".to_string(),
            ),
            (
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".to_string(),
                "/srv/reg".to_string(),
            ),
            (
                "WHARF_STORAGE_DELETE_ENABLED".to_string(),
                "false".to_string(),
            ),
            (
                "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE".to_string(),
                "2h".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
            ("WHARF_CONFIG".to_string(), "/etc/wharf.yaml".to_string()),
            (
                "WHARF_TEST_POSTGRES_URL".to_string(),
                "postgres://x".to_string(),
            ),
        ];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:6000");
        assert_eq!(
            c.storage.filesystem.unwrap().rootdirectory,
            PathBuf::from("/srv/reg")
        );
        assert_eq!(c.database.url, "sqlite:///srv/reg/wharf.db");
        assert!(!c.storage.delete.enabled);
        assert_eq!(
            c.storage.maintenance.uploadpurging.age,
            Duration::from_secs(7200)
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let env = vec![("REGISTRY_HTTP_ADDRESS".to_string(), "x".to_string())];
        let err = format!("{:#}", Config::load(None, env).unwrap_err());
        assert!(err.contains("address"), "{err}");
        let env = vec![(
            "REGISTRY_AUTH_HTPASSWD_FILE".to_string(),
            "/auth/htpasswd".to_string(),
        )];
        let err = format!("{:#}", Config::load(None, env).unwrap_err());
        assert!(err.contains("file"), "{err}");
        // Distribution's keys for the same thing are wharf's.
        let env = vec![(
            "REGISTRY_AUTH_HTPASSWD_PATH".to_string(),
            "/auth/htpasswd".to_string(),
        )];
        let c = Config::load(None, env).unwrap();
        assert_eq!(
            c.auth.htpasswd.unwrap().path,
            std::path::PathBuf::from("/auth/htpasswd")
        );
    }

    #[test]
    fn s3_path_style_defaults_to_true_with_a_custom_endpoint() {
        let base = vec![
            ("REGISTRY_STORAGE_S3_BUCKET".to_string(), "b".to_string()),
            (
                "WHARF_DATABASE_URL".to_string(),
                "postgres://x@h/db".to_string(),
            ),
        ];
        let c = Config::load(None, base.clone()).unwrap();
        let s3 = c.storage.s3.unwrap();
        assert!(!s3.path_style(), "AWS itself: virtual-hosted");
        assert!(c.storage.filesystem.is_none());
        let mut env = base.clone();
        env.push((
            "REGISTRY_STORAGE_S3_REGIONENDPOINT".to_string(),
            "http://minio:9000".to_string(),
        ));
        env.push((
            "REGISTRY_STORAGE_S3_CHUNKSIZE".to_string(),
            "16M".to_string(),
        ));
        let s3 = Config::load(None, env.clone()).unwrap().storage.s3.unwrap();
        assert!(s3.path_style(), "custom endpoint: path-style");
        assert_eq!(s3.chunksize, 16 << 20);
        env.push((
            "REGISTRY_STORAGE_S3_FORCEPATHSTYLE".to_string(),
            "false".to_string(),
        ));
        assert!(
            !Config::load(None, env)
                .unwrap()
                .storage
                .s3
                .unwrap()
                .path_style()
        );
        // S3 without a database URL is refused with the fix in the message.
        let err = format!("{:#}", Config::load(None, base[..1].to_vec()).unwrap_err());
        assert!(err.contains("database.url"), "{err}");
        let with_secret = vec![
            ("REGISTRY_STORAGE_S3_BUCKET".to_string(), "b".to_string()),
            (
                "REGISTRY_STORAGE_S3_SECRETKEY".to_string(),
                "hunter2".to_string(),
            ),
            (
                "WHARF_DATABASE_URL".to_string(),
                "postgres://x@h/db".to_string(),
            ),
        ];
        let dbg = format!("{:?}", Config::load(None, with_secret).unwrap());
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("3 days").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://./x.db"), "sqlite://./x.db");
    }
}
