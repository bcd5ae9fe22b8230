//! Building a [`Server`]: policy, certificates, kube client, namespace cache, audit task, listeners and state.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::config_reload::{Policy, Reloader, content_hash};
use super::self_certs::{SelfCertsTask, self_certs_config};
use super::serve::Limits;
use super::{Metrics, ServeArgs, health, http, tls};
use crate::admission::{NamespaceSource, NoCluster};
use crate::certs::{self, DevCerts, DevCertsOutcome};
use crate::cluster::{self, namespaces::NamespaceCache};
use crate::config::{Config, ConfigError};

/// A bound, not yet serving, webhook server.
pub struct Server {
    pub(super) tls_listener: TcpListener,
    pub(super) health_listener: TcpListener,
    pub(super) acceptor: TlsAcceptor,
    pub(super) state: http::AppState,
    pub(super) health: Arc<health::Health>,
    pub(super) cert_files: tls::CertFiles,
    /// The files as loaded at start, watched for changes (not with --cert-secret).
    pub(super) cert_fingerprint: Option<tls::Fingerprint>,
    pub(super) dev: Option<DevCerts>,
    pub(super) self_certs: Option<SelfCertsTask>,
    pub(super) audit: Option<AuditTask>,
    /// The policy file, watched for changes (with --config, unless --config-poll-interval is 0).
    pub(super) config_watch: Option<Reloader>,
    pub(super) limits: Limits,
}

/// What `serve()` needs to run the background audit.
pub(super) struct AuditTask {
    pub(super) client: kube::Client,
    pub(super) interval: Duration,
    pub(super) policy_reports: bool,
    pub(super) state: Arc<cluster::audit::AuditState>,
}

impl Server {
    /// Loads the policy and the certificate (generating dev certificates with
    /// `--dev`), connects the namespace cache if asked, and binds both
    /// listeners (TLS first). Fails if the certificate files are missing or invalid.
    ///
    /// With `--cert-secret` no certificate is loaded here: `serve()` fetches it
    /// from the Secret in the background and readiness fails until it is in place.
    pub async fn bind(args: ServeArgs) -> anyhow::Result<Server> {
        // Read once and parsed from that text, so the reloader compares later
        // reads with exactly what is served.
        let (config, text) = match &args.config {
            Some(path) => {
                let loaded = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read {
                        path: path.display().to_string(),
                        source,
                    })
                    .and_then(|text| Ok((Config::from_file_text(path, &text)?, text)));
                loaded.with_context(|| format!("cannot load policy {}", path.display()))?
            }
            None => (Config::default(), String::new()),
        };
        let metrics = Arc::new(Metrics::new(
            &http::ENDPOINTS.iter().map(|e| e.name).collect::<Vec<_>>(),
        ));
        metrics.set_config_loaded(content_hash(text.as_bytes()), certs::unix_seconds(SystemTime::now()));
        let config_watch = match &args.config {
            Some(path) if !args.limits.config_poll_interval.is_zero() => Some(Reloader::new(path.clone(), text)),
            _ => None,
        };
        let self_config = match &args.self_certs.cert_secret {
            Some(secret) => Some(self_certs_config(&args, secret)?),
            None => None,
        };
        let (cert_files, dev) = if self_config.is_some() {
            std::fs::create_dir_all(&args.certs_dir)
                .with_context(|| format!("cannot create the certificate directory {}", args.certs_dir.display()))?;
            let files = tls::CertFiles {
                cert: args.certs_dir.join(certs::TLS_CERT_FILE),
                key: args.certs_dir.join(certs::TLS_KEY_FILE),
            };
            (files, None)
        } else if args.dev {
            let (dir, sans) = (args.certs_dir.clone(), args.dev_sans.clone());
            let dev = tokio::task::spawn_blocking(move || certs::ensure_dev_certs(&dir, &sans))
                .await
                .context("certificate generation task failed")?
                .with_context(|| {
                    format!(
                        "cannot prepare development certificates in {}",
                        args.certs_dir.display()
                    )
                })?;
            match dev.outcome {
                DevCertsOutcome::Reused => {
                    tracing::info!(dir = %args.certs_dir.display(), "reusing development certificates")
                }
                DevCertsOutcome::Reissued => tracing::info!(
                    dir = %args.certs_dir.display(),
                    "issued a new development serving certificate under the existing CA (caBundle unchanged)"
                ),
                DevCertsOutcome::Generated => tracing::warn!(
                    dir = %args.certs_dir.display(),
                    "generated a new development CA: register the new caBundle"
                ),
            }
            let files = tls::CertFiles {
                cert: dev.cert_path.clone(),
                key: dev.key_path.clone(),
            };
            (files, Some(dev))
        } else {
            match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => (
                    tls::CertFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                    },
                    None,
                ),
                _ => anyhow::bail!(
                    "--tls-cert and --tls-key are required (or --cert-secret for self-managed certificates, \
                     or --dev for generated development certificates)"
                ),
            }
        };
        let (resolver, cert_fingerprint) = if self_config.is_some() {
            (Arc::new(tls::CertResolver::empty()), None)
        } else {
            let loaded = cert_files.load().context("cannot load the serving certificate")?;
            if let Some(not_after) = loaded.not_after {
                metrics.set_tls_cert_not_after(certs::unix_seconds(not_after));
                if not_after <= SystemTime::now() {
                    tracing::warn!(cert = %cert_files.cert.display(), "the serving certificate has expired");
                } else if not_after <= SystemTime::now() + certs::MIN_REMAINING_VALIDITY {
                    tracing::warn!(cert = %cert_files.cert.display(), "the serving certificate expires within 24 hours");
                }
            }
            let fingerprint = loaded.fingerprint;
            (Arc::new(tls::CertResolver::new(loaded.key)), Some(fingerprint))
        };
        let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(resolver.clone())?));

        let client = if args.cluster || args.kubeconfig.is_some() || self_config.is_some() {
            Some(cluster::client(args.kubeconfig.as_deref()).await?)
        } else {
            None
        };
        let cache = client.clone().map(|client| Arc::new(NamespaceCache::start(client)));
        let audit = match &client {
            Some(client) if !args.audit.audit_interval.is_zero() => Some(AuditTask {
                client: client.clone(),
                interval: args.audit.audit_interval,
                policy_reports: args.audit.policy_reports,
                state: Arc::new(cluster::audit::AuditState::default()),
            }),
            None if !args.audit.audit_interval.is_zero() => {
                anyhow::bail!("--audit-interval needs cluster access (--cluster or --kubeconfig)")
            }
            _ => None,
        };
        let self_certs = match (self_config, client) {
            (Some(config), Some(client)) => Some(SelfCertsTask {
                client,
                config,
                dir: args.certs_dir.clone(),
            }),
            _ => None,
        };
        let namespaces: Arc<dyn NamespaceSource + Send + Sync> = match &cache {
            Some(cache) => cache.clone(),
            None => Arc::new(NoCluster),
        };

        let host = if args.dev {
            Ipv4Addr::LOCALHOST
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        let listen = args.listen.unwrap_or(SocketAddr::from((host, 8443)));
        let health_listen = args.health_listen.unwrap_or(SocketAddr::from((host, 8080)));
        let tls_listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let health_listener = TcpListener::bind(health_listen)
            .await
            .with_context(|| format!("cannot listen on {health_listen} (health)"))?;

        let state = http::AppState {
            policy: Arc::new(Policy::new(config)),
            namespaces,
            metrics: metrics.clone(),
            max_body_bytes: args.limits.max_body_bytes,
            body_timeout: args.limits.body_timeout,
        };
        let health = Arc::new(health::Health {
            metrics,
            resolver,
            namespaces: cache,
            audit: audit.as_ref().map(|a| a.state.clone()),
            draining: Default::default(),
        });
        Ok(Server {
            tls_listener,
            health_listener,
            acceptor,
            state,
            health,
            cert_files,
            cert_fingerprint,
            dev,
            self_certs,
            audit,
            config_watch,
            limits: Limits {
                handshake_timeout: args.limits.handshake_timeout,
                idle_timeout: args.limits.idle_timeout.max(Duration::from_millis(10)),
                header_read_timeout: args.limits.header_read_timeout,
                max_connections: args.limits.max_connections.max(1),
                shutdown_grace: args.limits.shutdown_grace,
                shutdown_delay: args.limits.shutdown_delay,
                cert_poll_interval: args.limits.cert_poll_interval.max(Duration::from_millis(10)),
                config_poll_interval: args.limits.config_poll_interval.max(Duration::from_millis(10)),
            },
        })
    }

    /// The bound HTTPS address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tls_listener.local_addr()
    }

    /// The bound health/metrics address.
    pub fn health_addr(&self) -> std::io::Result<SocketAddr> {
        self.health_listener.local_addr()
    }

    /// With `--dev`: the caBundle value (base64 of the CA PEM).
    pub fn ca_bundle(&self) -> Option<String> {
        self.dev.as_ref().map(|d| certs::ca_bundle(&d.ca_cert_pem))
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }
}
