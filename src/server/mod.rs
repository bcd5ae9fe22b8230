//! `tailguard serve`: the HTTPS admission webhook (HTTP/2 and HTTP/1.1 over
//! TLS), and a plain-HTTP listener for health checks and metrics.
//!
//! The request path only moves bytes: TLS, HTTP, then `admission::validate`
//! on the body as received. Certificates are reloaded from disk when they
//! change, or, with `--cert-secret`, kept in a Secret shared by the replicas
//! and swapped in when it changes (`cluster::certs`); shutdown drains
//! in-flight reviews and closes idle connections.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::Router;
use clap::{Args, Parser};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admission::{NamespaceSource, NoCluster};
use crate::certs::{self, DevCerts, DevCertsOutcome, SecretCerts};
use crate::cluster::{self, certs::SelfCerts, namespaces::NamespaceCache};
use crate::config::Config;

pub mod health;
pub mod http;
mod idle;
pub mod metrics;
pub mod tls;

pub use metrics::Metrics;

/// Flags of `tailguard serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// HTTPS webhook address [default: 0.0.0.0:8443; with --dev 127.0.0.1:8443]. Port 0 picks a free port.
    #[arg(long, env = "TAILGUARD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Plain-HTTP address of /healthz, /readyz and /metrics [default: 0.0.0.0:8080; with --dev 127.0.0.1:8080].
    #[arg(long, env = "TAILGUARD_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,

    /// Serving certificate (PEM, leaf first); reloaded when it changes.
    #[arg(
        long,
        env = "TAILGUARD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "dev",
        required_unless_present_any = ["dev", "cert_secret"]
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key of the serving certificate (PEM).
    #[arg(
        long,
        env = "TAILGUARD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert",
        conflicts_with = "dev"
    )]
    pub tls_key: Option<PathBuf>,

    /// Development mode: generate (or reuse) a CA and a localhost certificate in --certs-dir,
    /// print the caBundle, listen on 127.0.0.1.
    #[arg(long, env = "TAILGUARD_DEV")]
    pub dev: bool,

    /// Where --dev keeps ca.crt, ca.key, tls.crt and tls.key; with --cert-secret, where the
    /// certificates from the Secret are written (ca.crt, tls.crt, tls.key) and served from.
    #[arg(long, env = "TAILGUARD_CERTS_DIR", value_name = "DIR", default_value = "certs")]
    pub certs_dir: PathBuf,

    /// Extra DNS name or IP address for the --dev serving certificate (repeatable).
    #[arg(long = "dev-san", value_name = "NAME")]
    pub dev_sans: Vec<String>,

    /// Policy file (YAML).
    #[arg(long, env = "TAILGUARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Watch namespaces through the apiserver (in-cluster account or kubeconfig) so that
    /// namespace-aware rules run. Without it they are skipped.
    #[arg(long, env = "TAILGUARD_CLUSTER")]
    pub cluster: bool,

    /// Kubeconfig file to reach the apiserver with (implies --cluster).
    #[arg(long, env = "TAILGUARD_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Self-managed certificates (boxed: keeps the `Command` enum small).
    #[command(flatten)]
    pub self_certs: Box<SelfCertArgs>,

    /// Limits and timeouts (boxed: keeps the `Command` enum small).
    #[command(flatten)]
    pub limits: Box<ServeLimits>,

    /// The background audit of existing workloads (boxed: keeps the `Command` enum small).
    #[command(flatten)]
    pub audit: Box<AuditFlags>,
}

/// Flags of the background audit (the chart's `audit` values).
#[derive(Debug, Clone, clap::Args)]
pub struct AuditFlags {
    /// Re-evaluate the cluster's existing workloads this often (`0s`: never). Needs
    /// cluster access; the results are `tailguard_audit_*` gauges on /metrics.
    #[arg(long, env = "TAILGUARD_AUDIT_INTERVAL", value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub audit_interval: Duration,

    /// Also write the results as wgpolicyk8s.io/v1alpha2 PolicyReports, one per namespace.
    #[arg(long, env = "TAILGUARD_POLICY_REPORTS")]
    pub policy_reports: bool,
}

/// Flags of `tailguard serve --cert-secret` (the chart's `certificates.mode: self`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Self-managed certificates")]
pub struct SelfCertArgs {
    /// Manage the certificates in this Secret (type kubernetes.io/tls: tls.crt, tls.key, ca.crt,
    /// ca.key): created with a new CA if absent, shared by every replica, renewed before expiry.
    /// Needs cluster access (implies --cluster).
    #[arg(
        long,
        env = "TAILGUARD_CERT_SECRET",
        value_name = "NAME",
        conflicts_with_all = ["dev", "tls_cert", "tls_key"]
    )]
    pub cert_secret: Option<String>,

    /// Namespace of the --cert-secret Secret (in a pod: POD_NAMESPACE from the downward API).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS")]
    pub cert_namespace: Option<String>,

    /// DNS name (or IP address) of the serving certificate (repeatable; at least one with
    /// --cert-secret), e.g. the Service's `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`.
    #[arg(long = "cert-dns", value_name = "NAME", requires = "cert_secret", conflicts_with_all = ["dev", "tls_cert"])]
    pub cert_dns: Vec<String>,

    /// Validating/MutatingWebhookConfiguration whose webhooks get the CA as caBundle (repeatable;
    /// both kinds are tried by name; a missing one is retried).
    #[arg(
        long = "ca-bundle-webhook",
        value_name = "NAME",
        requires = "cert_secret",
        conflicts_with_all = ["dev", "tls_cert"]
    )]
    pub ca_bundle_webhooks: Vec<String>,

    /// How often the Secret (renewal, rotation by another replica) and the caBundles are checked.
    #[arg(long, env = "TAILGUARD_CERT_CHECK_INTERVAL", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub cert_check_interval: Duration,
}

/// Limits and timeouts of `tailguard serve`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits and timeouts")]
pub struct ServeLimits {
    /// Largest request body accepted (bytes; Ki/Mi suffixes allowed); larger gets 413.
    #[arg(long, env = "TAILGUARD_MAX_BODY_BYTES", value_name = "BYTES", default_value = "8Mi", value_parser = parse_size)]
    pub max_body_bytes: usize,

    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "TAILGUARD_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How long to keep accepting new connections after SIGTERM (while /readyz fails and
    /// endpoints are updated); existing connections are closed at once.
    #[arg(long, env = "TAILGUARD_SHUTDOWN_DELAY", value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Time allowed for a TLS handshake.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Time allowed for HTTP/1 request headers (also closes idle keep-alive connections).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Time allowed to receive a request body.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Most concurrent webhook connections. At the limit, the connection idle the
    /// longest is closed to make room; with none idle, clients wait in the listen backlog.
    #[arg(long, env = "TAILGUARD_MAX_CONNECTIONS", value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,

    /// Close a connection (HTTP/2 included) with no request for this long.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How often the certificate files are checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub cert_poll_interval: Duration,
}

#[derive(Parser)]
struct ServeOnly {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeArgs {
    /// Parses `serve` flags (without the program and subcommand names), e.g. for in-process tests.
    pub fn try_parse_from<I, T>(args: I) -> Result<ServeArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("serve")).chain(args.into_iter().map(Into::into));
        ServeOnly::try_parse_from(argv).map(|s| s.args)
    }
}

/// `tailguard serve`: bind, print the dev caBundle if any, serve until SIGTERM/SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before anything slow, so a signal during start-up is a clean shutdown too.
    let shutdown = shutdown_signal()?;
    let server = Server::bind(args).await?;
    if let Some(bundle) = server.ca_bundle() {
        println!("caBundle: {bundle}");
    }
    server.serve(shutdown).await
}

/// A bound, not yet serving, webhook server.
pub struct Server {
    tls_listener: TcpListener,
    health_listener: TcpListener,
    acceptor: TlsAcceptor,
    state: http::AppState,
    health: Arc<health::Health>,
    cert_files: tls::CertFiles,
    /// The files as loaded at start, watched for changes (not with --cert-secret).
    cert_fingerprint: Option<tls::Fingerprint>,
    dev: Option<DevCerts>,
    self_certs: Option<SelfCertsTask>,
    audit: Option<AuditTask>,
    limits: Limits,
}

/// What `serve()` needs to run the self-managed certificate loop.
struct SelfCertsTask {
    client: kube::Client,
    config: SelfCerts,
    dir: PathBuf,
}

/// What `serve()` needs to run the background audit.
struct AuditTask {
    client: kube::Client,
    interval: Duration,
    policy_reports: bool,
    state: Arc<cluster::audit::AuditState>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    handshake_timeout: Duration,
    idle_timeout: Duration,
    header_read_timeout: Duration,
    max_connections: usize,
    shutdown_grace: Duration,
    shutdown_delay: Duration,
    cert_poll_interval: Duration,
}

impl Server {
    /// Loads the policy and the certificate (generating dev certificates with
    /// `--dev`), connects the namespace cache if asked, and binds both
    /// listeners (TLS first). Fails if the certificate files are missing or invalid.
    ///
    /// With `--cert-secret` no certificate is loaded here: `serve()` fetches it
    /// from the Secret in the background and readiness fails until it is in place.
    pub async fn bind(args: ServeArgs) -> anyhow::Result<Server> {
        let config = match &args.config {
            Some(path) => Config::load(path).with_context(|| format!("cannot load policy {}", path.display()))?,
            None => Config::default(),
        };
        let metrics = Arc::new(Metrics::new(
            &http::ENDPOINTS.iter().map(|e| e.name).collect::<Vec<_>>(),
        ));
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
            config: Arc::new(config),
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
            limits: Limits {
                handshake_timeout: args.limits.handshake_timeout,
                idle_timeout: args.limits.idle_timeout.max(Duration::from_millis(10)),
                header_read_timeout: args.limits.header_read_timeout,
                max_connections: args.limits.max_connections.max(1),
                shutdown_grace: args.limits.shutdown_grace,
                shutdown_delay: args.limits.shutdown_delay,
                cert_poll_interval: args.limits.cert_poll_interval.max(Duration::from_millis(10)),
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

    /// Serves until `shutdown` completes, then drains: stops accepting (after
    /// `--shutdown-delay`), asks every connection to finish (HTTP/2 GOAWAY, idle
    /// HTTP/1 closed), waits up to `--shutdown-grace`, and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Server {
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
            limits,
        } = self;
        let addr = tls_listener.local_addr()?;
        let health_addr = health_listener.local_addr()?;
        tracing::info!(
            %addr,
            %health_addr,
            dev = dev.is_some(),
            cert_secret = self_certs.as_ref().map(|t| format!("{}/{}", t.config.namespace, t.config.secret)),
            cluster = health.namespaces.is_some(),
            endpoints = http::ENDPOINTS.iter().map(|e| e.path).collect::<Vec<_>>().join(","),
            "listening"
        );

        let auditor = audit.map(|task| {
            tokio::spawn(cluster::audit::run_periodically(
                task.client,
                state.config.clone(),
                task.interval,
                task.policy_reports,
                task.state,
            ))
        });
        let reloader = match (cert_fingerprint, self_certs) {
            (Some(fingerprint), _) => tokio::spawn(tls::watch(
                cert_files,
                fingerprint,
                health.resolver.clone(),
                state.metrics.clone(),
                limits.cert_poll_interval,
            )),
            (None, Some(task)) => {
                let install = installer(task.dir, cert_files, health.resolver.clone(), state.metrics.clone());
                tokio::spawn(cluster::certs::run(task.client, task.config, install))
            }
            (None, None) => tokio::spawn(async {}),
        };
        let (health_stop, health_stopped) = tokio::sync::oneshot::channel::<()>();
        let health_router = health::router(health.clone());
        let health_server = tokio::spawn(async move {
            let stopped = async {
                let _ = health_stopped.await;
            };
            if let Err(e) = axum::serve(health_listener, health_router)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "health listener failed");
            }
        });

        let service = http::router(state);
        accept_loop(tls_listener, acceptor, service, limits, &health, shutdown).await;

        reloader.abort();
        if let Some(auditor) = auditor {
            auditor.abort();
        }
        let _ = health_stop.send(());
        let mut health_server = health_server;
        if tokio::time::timeout(Duration::from_secs(1), &mut health_server)
            .await
            .is_err()
        {
            health_server.abort();
        }
        tracing::info!("shut down");
        Ok(())
    }
}

/// Checks the `--cert-secret` flags: a namespace, at least one valid name.
fn self_certs_config(args: &ServeArgs, secret: &str) -> anyhow::Result<SelfCerts> {
    let flags = &args.self_certs;
    let namespace = flags
        .cert_namespace
        .clone()
        .filter(|ns| !ns.trim().is_empty())
        .with_context(|| {
            format!(
                "--cert-secret {secret}: the Secret's namespace is unknown: pass --cert-namespace NS or set \
                 POD_NAMESPACE (in a pod, from the downward API: fieldRef metadata.namespace)"
            )
        })?;
    if flags.cert_dns.is_empty() {
        anyhow::bail!(
            "--cert-secret {secret}: at least one --cert-dns NAME is required (the Service's DNS names, \
             e.g. tailguard, tailguard.{namespace}, tailguard.{namespace}.svc)"
        );
    }
    for name in &flags.cert_dns {
        certs::check_name(name).with_context(|| format!("--cert-dns {name}"))?;
    }
    Ok(SelfCerts {
        namespace,
        secret: secret.to_string(),
        names: flags.cert_dns.clone(),
        webhooks: flags.ca_bundle_webhooks.clone(),
        interval: flags.cert_check_interval.max(Duration::from_millis(100)),
    })
}

/// With `--cert-secret`: writes the Secret's certificates into `dir` (only
/// files whose content changed) and serves them from there.
fn installer(
    dir: PathBuf,
    files: tls::CertFiles,
    resolver: Arc<tls::CertResolver>,
    metrics: Arc<Metrics>,
) -> impl FnMut(&SecretCerts) -> anyhow::Result<()> + Send {
    move |secret: &SecretCerts| {
        for (name, contents, private) in [
            (certs::CA_CERT_FILE, &secret.ca.cert_pem, false),
            (certs::TLS_KEY_FILE, &secret.serving.key_pem, true),
            (certs::TLS_CERT_FILE, &secret.serving.cert_pem, false),
        ] {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_ref() != Some(contents) {
                certs::write_pem(&path, contents, private)?;
            }
        }
        let loaded = files
            .load()
            .context("cannot load the certificate written from the Secret")?;
        let not_after = loaded.not_after.map(certs::unix_seconds);
        if resolver.install(loaded, &metrics) {
            tracing::info!(
                cert = %files.cert.display(),
                not_after,
                "serving the certificate from the Secret"
            );
        }
        Ok(())
    }
}

/// SIGTERM or SIGINT. Handlers are installed when this is called.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// HTTP settings per negotiated protocol.
struct Protocols {
    auto: auto::Builder<TokioExecutor>,
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: &Limits) -> Protocols {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_concurrent_streams(256);
        Protocols {
            h1: builder.clone().http1_only(),
            h2: builder.clone().http2_only(),
            auto: builder,
        }
    }

    fn for_alpn(&self, alpn: Option<&[u8]>) -> &auto::Builder<TokioExecutor> {
        match alpn {
            Some(b"h2") => &self.h2,
            Some(b"http/1.1") => &self.h1,
            _ => &self.auto,
        }
    }
}

/// Shutdown phases broadcast to connections: a connection accepted in phase
/// `p` finishes when the phase goes above `p`.
const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const CLOSED: u8 = 2;

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: Router,
    limits: Limits,
    health: &health::Health,
    shutdown: impl Future<Output = ()>,
) {
    let protocols = Arc::new(Protocols::new(&limits));
    let metrics = health.metrics.clone();
    let (phase, _) = watch::channel(RUNNING);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let mut stop_accepting_at: Option<tokio::time::Instant> = None;
    let epoch = std::time::Instant::now();
    let mut open = idle::Connections::default();
    loop {
        let at_limit = connections.len() >= limits.max_connections;
        // At the limit, an idle connection can give up its slot.
        let can_accept = !at_limit || open.most_idle().is_some();
        tokio::select! {
            () = &mut shutdown, if stop_accepting_at.is_none() => {
                health.draining.store(true, Ordering::Relaxed);
                tracing::info!(
                    connections = connections.len(),
                    delay = ?limits.shutdown_delay,
                    grace = ?limits.shutdown_grace,
                    "draining connections"
                );
                phase.send_replace(DRAINING);
                stop_accepting_at = Some(tokio::time::Instant::now() + limits.shutdown_delay);
            }
            () = tokio::time::sleep_until(stop_accepting_at.unwrap_or_else(tokio::time::Instant::now)),
                if stop_accepting_at.is_some() => break,
            // At the limit with nothing idle: look again shortly (going idle wakes nobody).
            () = tokio::time::sleep(Duration::from_millis(100)), if !can_accept => {}
            accepted = listener.accept(), if can_accept => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= limits.max_connections
                        && let Some(idle) = open.most_idle()
                    {
                        tracing::debug!(%peer, "at the connection limit: closing the most idle connection");
                        idle.evict();
                    }
                    let accepted_in = *phase.borrow();
                    let activity = idle::Activity::new(epoch);
                    open.add(&activity);
                    connections.spawn(connection(
                        stream,
                        peer,
                        acceptor.clone(),
                        protocols.clone(),
                        service.clone(),
                        metrics.clone(),
                        phase.subscribe(),
                        accepted_in,
                        limits,
                        activity,
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "connection task panicked");
                }
            }
        }
    }
    drop(listener);
    phase.send_replace(CLOSED);
    let open = connections.len();
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open,
            remaining = connections.len(),
            "grace period over; closing the remaining connections"
        );
        connections.shutdown().await;
    }
}

/// Decrements the open-connections gauge however the task ends.
struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    protocols: Arc<Protocols>,
    service: Router,
    metrics: Arc<Metrics>,
    mut phase: watch::Receiver<u8>,
    accepted_in: u8,
    limits: Limits,
    activity: Arc<idle::Activity>,
) {
    let handshake_timeout = limits.handshake_timeout;
    metrics.connection_opened();
    let _open = OpenConnection(metrics.clone());
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let tls = tokio::select! {
        handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                metrics.tls_handshake_failed();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics.tls_handshake_failed();
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        () = finished(&mut phase, accepted_in) => return,
    };
    let builder = protocols.for_alpn(tls.get_ref().1.alpn_protocol());
    let service = idle::Tracked {
        inner: TowerToHyperService::new(service),
        activity: activity.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    let mut conn = pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = finished(&mut phase, accepted_in) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = activity.wind_down(limits.idle_timeout) => {
            tracing::debug!(%peer, "closing an idle connection");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Completes when this connection should wind down.
async fn finished(phase: &mut watch::Receiver<u8>, accepted_in: u8) {
    // Not holding the watch borrow across anything: the result is dropped here.
    let _ = phase.wait_for(|p| *p > accepted_in).await;
}

/// `15s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("invalid duration {text:?}"))
}

/// `8388608`, `512Ki`, `8Mi`, `1Gi` (also `k`, `M`, `G` as powers of 1000).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number.parse().map_err(|_| format!("invalid size {text:?}"))?;
    let factor: usize = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" | "K" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(format!("invalid size {text:?} (use Ki, Mi or Gi)")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_size("8Mi"), Ok(8 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("8 MB").is_err());
        assert!(parse_size("99999999999999999999Gi").is_err());
    }

    #[test]
    fn flags() {
        let args = ServeArgs::try_parse_from(["--dev", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(args.dev);
        assert_eq!(args.limits.max_body_bytes, 8 << 20);
        assert_eq!(args.limits.shutdown_grace, Duration::from_secs(15));
        assert!(ServeArgs::try_parse_from(["--dev", "--tls-cert", "a", "--tls-key", "b"]).is_err());
        assert!(ServeArgs::try_parse_from(["--tls-cert", "a"]).is_err());
    }

    #[test]
    fn self_cert_flags() {
        let args = ServeArgs::try_parse_from([
            "--cert-secret",
            "tg-certs",
            "--cert-namespace",
            "tailguard",
            "--cert-dns",
            "tailguard",
            "--cert-dns",
            "tailguard.tailguard.svc",
            "--ca-bundle-webhook",
            "tailguard",
            "--ca-bundle-webhook",
            "tailguard-mutating",
        ])
        .unwrap();
        let config = self_certs_config(&args, "tg-certs").unwrap();
        assert_eq!(config.namespace, "tailguard");
        assert_eq!(config.names, ["tailguard", "tailguard.tailguard.svc"]);
        assert_eq!(config.webhooks, ["tailguard", "tailguard-mutating"]);
        assert_eq!(config.interval, Duration::from_secs(30));
        for conflicting in [&["--dev"][..], &["--tls-cert", "a", "--tls-key", "b"]] {
            let mut argv = vec!["--cert-secret", "s", "--cert-dns", "x"];
            argv.extend_from_slice(conflicting);
            assert!(ServeArgs::try_parse_from(argv).is_err(), "{conflicting:?}");
        }
        // --cert-dns and --ca-bundle-webhook only with --cert-secret.
        assert!(ServeArgs::try_parse_from(["--dev", "--cert-dns", "x"]).is_err());
        assert!(ServeArgs::try_parse_from(["--dev", "--ca-bundle-webhook", "x"]).is_err());
        assert!(ServeArgs::try_parse_from(["--tls-cert", "a", "--tls-key", "b", "--cert-dns", "x"]).is_err());
        // No names, bad names, no namespace: clear errors.
        let no_dns = ServeArgs::try_parse_from(["--cert-secret", "s", "--cert-namespace", "ns"]).unwrap();
        let e = format!("{:#}", self_certs_config(&no_dns, "s").unwrap_err());
        assert!(e.contains("--cert-dns"), "{e}");
        let bad =
            ServeArgs::try_parse_from(["--cert-secret", "s", "--cert-namespace", "ns", "--cert-dns", "a b"]).unwrap();
        assert!(self_certs_config(&bad, "s").is_err());
        let mut no_ns = ServeArgs::try_parse_from(["--cert-secret", "s", "--cert-dns", "x"]).unwrap();
        no_ns.self_certs.cert_namespace = None;
        let e = format!("{:#}", self_certs_config(&no_ns, "s").unwrap_err());
        assert!(e.contains("--cert-namespace") && e.contains("POD_NAMESPACE"), "{e}");
    }
}
