//! TLS for the HTTP listener (`http.tls.certificate`, `http.tls.key`, as Distribution's), on
//! rustls. The certificate is read again when its files change (noticed at the next handshake,
//! at most once a second) or on SIGHUP, so a renewed certificate takes effect without a
//! restart; a renewal that cannot be used keeps the previous certificate and says so in the log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::Context;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

type Stamp = Option<(SystemTime, u64)>;

pub struct ReloadingCert {
    certificate: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
}

struct State {
    current: Arc<CertifiedKey>,
    stamps: (Stamp, Stamp),
    checked: Instant,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn load(certificate: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .with_context(|| format!("cannot read http.tls.certificate {}", certificate.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("http.tls.certificate {} is not PEM", certificate.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "http.tls.certificate {} holds no certificate",
        certificate.display()
    );
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "cannot read a private key from http.tls.key {}",
            key.display()
        )
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .context("http.tls.key: unsupported key type (use RSA, ECDSA P-256/P-384 or Ed25519)")?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .context("http.tls.key does not belong to http.tls.certificate")?;
    Ok(Arc::new(certified))
}

impl ReloadingCert {
    pub fn open(certificate: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let current = load(certificate, key)?;
        Ok(Arc::new(ReloadingCert {
            certificate: certificate.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(State {
                current,
                stamps: (stamp(certificate), stamp(key)),
                checked: Instant::now(),
            }),
        }))
    }

    /// Reads the files again (SIGHUP, or a change was noticed).
    pub fn reload(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_locked(&mut st);
    }

    fn reload_locked(&self, st: &mut State) {
        st.stamps = (stamp(&self.certificate), stamp(&self.key));
        st.checked = Instant::now();
        match load(&self.certificate, &self.key) {
            Ok(c) => {
                st.current = c;
                tracing::info!(certificate = %self.certificate.display(), "TLS certificate loaded");
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "TLS certificate changed but cannot be used; keeping the previous one"
            ),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed().as_secs() >= 1 {
            st.checked = Instant::now();
            if (stamp(&self.certificate), stamp(&self.key)) != st.stamps {
                self.reload_locked(&mut st);
            }
        }
        Some(st.current.clone())
    }
}

/// The listener's TLS configuration, and the certificate (to reload it on SIGHUP).
pub fn server_config(
    certificate: &Path,
    key: &Path,
) -> anyhow::Result<(ServerConfig, Arc<ReloadingCert>)> {
    let cert = ReloadingCert::open(certificate, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, cert))
}
