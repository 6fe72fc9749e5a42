//! Starting and stopping the two registries (and the S3 server) on loopback with equivalent
//! configurations: filesystem or the same local S3 server, deletes enabled, access logs off,
//! blob GETs proxied rather than redirected (so both serve the bytes themselves).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Distribution,
    Wharf,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Distribution => "distribution",
            Kind::Wharf => "wharf",
        }
    }
}

#[derive(Clone)]
pub enum Storage {
    Filesystem(PathBuf),
    S3 { endpoint: String, bucket: String },
}

/// Everything one registry instance needs.
#[derive(Clone)]
pub struct Setup {
    pub kind: Kind,
    pub dir: PathBuf,
    pub storage: Storage,
    /// wharf only: the database URL.
    pub database: String,
    pub wharf_bin: PathBuf,
}

pub struct Server {
    child: Child,
    pub pid: u32,
    pub url: String,
    pub startup_s: f64,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_ready(url: &str, child: &mut Child, log: &Path, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse()?;
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            bail!(
                "{} exited ({status}) before answering; last log lines:\n{}",
                url,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if v2_ok(&addr) {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!(
                "{url} did not answer GET /v2/ within {limit:?}; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// GET /v2/ with a blocking socket: the probe must not depend on an async runtime being idle.
fn v2_ok(addr: &std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

impl Setup {
    /// The storage section, the same keys in both (they follow Distribution's).
    fn storage_yaml(&self) -> String {
        match &self.storage {
            Storage::Filesystem(root) => {
                format!("  filesystem:\n    rootdirectory: {}\n", root.display())
            }
            // A regionendpoint means path-style in both (2.8 has no forcepathstyle key).
            Storage::S3 { endpoint, bucket } => format!(
                "  redirect:\n    disable: true\n  s3:\n    accesskey: bench\n    secretkey: bench\n    region: us-east-1\n    regionendpoint: {endpoint}\n    bucket: {bucket}\n    secure: false\n    rootdirectory: /\n{}",
                if self.kind == Kind::Distribution {
                    "    v4auth: true\n"
                } else {
                    ""
                }
            ),
        }
    }

    fn config(&self, port: u16) -> String {
        let storage = self.storage_yaml();
        match self.kind {
            Kind::Distribution => format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: regbench\nstorage:\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n  maintenance:\n    uploadpurging:\n      enabled: false\n{storage}"
            ),
            Kind::Wharf => format!(
                "log:\n  level: warn\n  accesslog: false\nhttp:\n  addr: 127.0.0.1:{port}\nstorage:\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n{storage}database:\n  url: {}\n",
                self.database
            ),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join(format!("{}.yml", self.kind.label()))
    }

    /// Writes the configuration (on `port`) and returns its path.
    pub fn write_config(&self, port: u16) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.config_path();
        std::fs::write(&path, self.config(port))?;
        Ok(path)
    }

    pub fn command(&self, config: &Path) -> Command {
        let mut cmd = match self.kind {
            Kind::Distribution => {
                let mut c = Command::new("docker-registry");
                c.arg("serve").arg(config);
                c
            }
            Kind::Wharf => {
                let mut c = Command::new(&self.wharf_bin);
                c.arg("--config").arg(config).arg("serve");
                c
            }
        };
        // Distribution 2.8's S3 driver panics at start when AWS_CA_BUNDLE is set; neither
        // needs it for a plain-HTTP endpoint.
        cmd.env_remove("AWS_CA_BUNDLE")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("RUST_LOG");
        cmd
    }

    /// Starts the registry and waits until GET /v2/ answers 200.
    pub fn start(&self) -> anyhow::Result<Server> {
        let port = free_port()?;
        let config = self.write_config(port)?;
        let log = self.dir.join(format!("{}.log", self.kind.label()));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let started = Instant::now();
        let mut child = self
            .command(&config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| match self.kind {
                Kind::Distribution => {
                    "starting docker-registry (install it: apt-get install docker-registry)"
                        .to_string()
                }
                Kind::Wharf => format!("starting {}", self.wharf_bin.display()),
            })?;
        let url = format!("http://127.0.0.1:{port}");
        if let Err(e) = wait_ready(&url, &mut child, &log, Duration::from_secs(120)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(Server {
            pid: child.id(),
            child,
            url,
            startup_s: started.elapsed().as_secs_f64(),
        })
    }
}

impl Server {
    pub fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// moto_server on loopback, with the given buckets.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub async fn start(dir: &Path, buckets: &[&str]) -> anyhow::Result<Moto> {
        let port = free_port()?;
        let tmp = dir.join("moto-tmp");
        std::fs::create_dir_all(&tmp)?;
        let log = std::fs::File::create(dir.join("moto.log"))?;
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting moto_server (pip install 'moto[server]==5.1.22')")?;
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::builder().no_proxy().build()?;
        let started = Instant::now();
        while client.get(&moto.endpoint).send().await.is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "moto_server did not start; see {}",
                    dir.join("moto.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for b in buckets {
            let r = client.put(format!("{}/{b}", moto.endpoint)).send().await?;
            anyhow::ensure!(
                r.status().is_success(),
                "creating bucket {b}: {}",
                r.status()
            );
        }
        Ok(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a one-shot command (such as a GC) to completion: wall seconds, its peak RSS in MB
/// and its stdout. stderr goes to `log`.
pub fn run_timed(mut cmd: Command, log: &Path) -> anyhow::Result<(f64, f64, String)> {
    let out_path = log.with_extension("out");
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    // Peak RSS: the child's VmHWM, polled until it exits (rusage's maxrss would include what
    // the child inherited from this process before exec).
    let pid = child.id();
    let mut child = child;
    let mut rss = 0.0f64;
    let status = loop {
        if let Some(peak) = crate::out::peak_rss_mb(pid) {
            rss = rss.max(peak);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = started.elapsed().as_secs_f64();
    let stdout = std::fs::read_to_string(&out_path)?;
    if !status.success() {
        let err = std::fs::read_to_string(log).unwrap_or_default();
        bail!(
            "{:?} failed ({status}): {}",
            cmd.get_program(),
            err.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    Ok((wall, rss, stdout))
}
