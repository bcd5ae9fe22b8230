//! TLS: the rustls configuration, a certificate resolver that can be swapped
//! at run time, and the task that reloads the certificate files when they change.
//! The resolver is tailguard's own (a `ResolvesServerCert` over a lock) because
//! rustls's stock resolvers are fixed at construction, and a certificate
//! renewed by cert-manager or by another replica must be served without a
//! restart or a dropped connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ServerConfig, SignatureAlgorithm, SignatureScheme};

use super::metrics::Metrics;
use crate::certs;

/// The PEM files the serving certificate comes from.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loaded serving certificate and what the logs and metrics say about it.
pub struct Loaded {
    pub key: CertifiedKey,
    pub not_after: Option<SystemTime>,
    /// The files as they were just before they were read.
    pub fingerprint: Fingerprint,
}

/// Identity of the certificate and key files (see [`FileId`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Option<FileId>, Option<FileId>);

impl CertFiles {
    /// Reads and checks the pair: parseable, key matching the certificate.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let fingerprint = self.fingerprint();
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        let certified = certs::certified_key(&cert, &key)
            .with_context(|| format!("{} and {}", self.cert.display(), self.key.display()))?;
        let not_after = certified
            .cert
            .first()
            .and_then(|der| certs::CertInfo::parse(der).ok())
            .map(|info| info.not_after);
        Ok(Loaded {
            key: certified,
            not_after,
            fingerprint,
        })
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint(FileId::of(&self.cert), FileId::of(&self.key))
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// What a path resolves to, and that file's identity and size: a Kubernetes
/// Secret volume swaps a `..data` symlink, so the target changes, not the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileId {
    target: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        let target = std::fs::canonicalize(path).ok()?;
        let meta = std::fs::metadata(&target).ok()?;
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt as _;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Some(FileId {
            target,
            dev,
            ino,
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// Hands rustls the current certificate; the reloader swaps it.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> CertResolver {
        CertResolver {
            current: RwLock::new(Arc::new(key)),
        }
    }

    /// No certificate yet (self-managed certificates before the first sync):
    /// handshakes fail and readiness says "no TLS certificate loaded" until
    /// [`CertResolver::install`] is called.
    pub fn empty() -> CertResolver {
        CertResolver::new(CertifiedKey::new(Vec::new(), Arc::new(NoKey)))
    }

    /// The certificate served now; its `cert` is empty while there is none.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }

    /// Serves `loaded` from now on and updates the metrics; false (and nothing
    /// changes) when that certificate is already being served.
    pub fn install(&self, loaded: Loaded, metrics: &Metrics) -> bool {
        if loaded.key.cert == self.current().cert {
            return false;
        }
        if let Some(not_after) = loaded.not_after {
            metrics.set_tls_cert_not_after(certs::unix_seconds(not_after));
        }
        let first = self.current().cert.is_empty();
        self.replace(loaded.key);
        if !first {
            metrics.tls_reloaded(true);
        }
        true
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current();
        (!current.cert.is_empty()).then_some(current)
    }
}

/// The key of the empty placeholder certificate: signs nothing.
#[derive(Debug)]
struct NoKey;

impl SigningKey for NoKey {
    fn choose_scheme(&self, _: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        None
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::Anonymous
    }
}

/// TLS 1.2 and 1.3 with ring, ALPN `h2` then `http/1.1`, certificates from `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS configuration")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Polls the certificate files every `interval` and swaps the served
/// certificate when they differ from `seen` (as loaded at start-up). A pair
/// that does not load (half-written, key not matching) is logged and counted;
/// the last good one keeps serving.
pub async fn watch(
    files: CertFiles,
    mut seen: Fingerprint,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let probe = files.clone();
        let previous = seen.clone();
        let Ok((fingerprint, loaded)) = tokio::task::spawn_blocking(move || {
            let fingerprint = probe.fingerprint();
            let changed = fingerprint != previous;
            (fingerprint, changed.then(|| probe.load()))
        })
        .await
        else {
            continue;
        };
        seen = fingerprint;
        match loaded {
            None => {}
            Some(Ok(loaded)) => {
                seen = loaded.fingerprint;
                if loaded.key.cert == resolver.current().cert {
                    tracing::debug!(cert = %files.cert.display(), "certificate files touched, content unchanged");
                    continue;
                }
                let expires = loaded.not_after.map(certs::unix_seconds);
                if let Some(expires) = expires {
                    metrics.set_tls_cert_not_after(expires);
                }
                resolver.replace(loaded.key);
                metrics.tls_reloaded(true);
                tracing::info!(cert = %files.cert.display(), not_after = ?expires, "serving certificate reloaded");
            }
            Some(Err(e)) => {
                metrics.tls_reloaded(false);
                tracing::warn!(
                    error = format!("{e:#}"),
                    "certificate files changed but do not load; still serving the previous certificate"
                );
            }
        }
    }
}
