//! Serving a bound [`Server`]: the background tasks, the accept loop, connections, and the graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use super::self_certs::installer;
use super::{Metrics, Server, config_reload, health, http, idle, tls};
use crate::cluster;

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) handshake_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) header_read_timeout: Duration,
    pub(super) max_connections: usize,
    pub(super) shutdown_grace: Duration,
    pub(super) shutdown_delay: Duration,
    pub(super) cert_poll_interval: Duration,
    pub(super) config_poll_interval: Duration,
}

impl Server {
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
            config_watch,
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
            config_watched = config_watch.as_ref().map(|w| w.path().display().to_string()),
            endpoints = http::ENDPOINTS.iter().map(|e| e.path).collect::<Vec<_>>().join(","),
            "listening"
        );

        let auditor = audit.map(|task| {
            tokio::spawn(cluster::audit::run_periodically(
                task.client,
                state.policy.subscribe(),
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
        let config_watcher = config_watch.map(|reloader| {
            tokio::spawn(config_reload::watch(
                reloader,
                state.policy.clone(),
                state.metrics.clone(),
                limits.config_poll_interval,
            ))
        });
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
        for task in [auditor, config_watcher].into_iter().flatten() {
            task.abort();
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

/// Spawns hyper's tasks (HTTP/2 streams) inside the span of the connection
/// that spawns them, so a review's logs carry its connection.
#[derive(Clone, Copy)]
struct SpanExecutor;

impl<F> hyper::rt::Executor<F> for SpanExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        TokioExecutor::new().execute(future.in_current_span());
    }
}

/// HTTP settings per negotiated protocol. ALPN has already said which protocol
/// the client speaks, so the connection is served as exactly that one rather
/// than by sniffing the first bytes (`auto` is kept for clients without ALPN).
struct Protocols {
    auto: auto::Builder<SpanExecutor>,
    h1: auto::Builder<SpanExecutor>,
    h2: auto::Builder<SpanExecutor>,
}

impl Protocols {
    fn new(limits: &Limits) -> Protocols {
        let mut builder = auto::Builder::new(SpanExecutor);
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

    /// The builder for `alpn`, and the protocol name logged on the connection span.
    fn for_alpn(&self, alpn: Option<&[u8]>) -> (&auto::Builder<SpanExecutor>, &'static str) {
        match alpn {
            Some(b"h2") => (&self.h2, "h2"),
            Some(b"http/1.1") => (&self.h1, "http1.1"),
            _ => (&self.auto, "auto"),
        }
    }
}

/// Shutdown phases broadcast to connections: a connection accepted in phase
/// `p` finishes when the phase goes above `p`. Hand-written rather than
/// hyper-util's `GracefulShutdown`: that one owns each connection future and
/// has one signal for all, while tailguard needs two phases (connections
/// accepted during `--shutdown-delay` live until it ends) and to wind down a
/// single connection (idle, or evicted at `--max-connections`) on its own. Each
/// connection still ends through hyper's own `graceful_shutdown`.
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
    // Set with DRAINING: HTTP/1 responses then carry `Connection: close`.
    let draining = Arc::new(AtomicBool::new(false));
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let mut stop_accepting_at: Option<tokio::time::Instant> = None;
    let epoch = std::time::Instant::now();
    let mut open = idle::Connections::default();
    let mut connection_number: u64 = 0;
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
                draining.store(true, Ordering::Relaxed);
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
                    connection_number += 1;
                    let span = tracing::info_span!(
                        "connection",
                        conn = connection_number,
                        %peer,
                        protocol = tracing::field::Empty,
                    );
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
                        draining.clone(),
                    ).instrument(span));
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
    draining: Arc<AtomicBool>,
) {
    let handshake_timeout = limits.handshake_timeout;
    // Connections still handshaking when draining starts finish it: new ones
    // are accepted until --shutdown-delay ends, and these are no different.
    let handshake_until = accepted_in.max(DRAINING);
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
        () = finished(&mut phase, handshake_until) => return,
    };
    let (builder, protocol) = protocols.for_alpn(tls.get_ref().1.alpn_protocol());
    tracing::Span::current().record("protocol", protocol);
    // HTTP/1 (the apiserver's webhook client always uses it) stays open until
    // --shutdown-delay ends, each response then saying `Connection: close`:
    // closing an idle HTTP/1 connection at SIGTERM races with a request the
    // client is already writing on it, and the apiserver does not retry a
    // webhook call, so that admission would fail. HTTP/2 gets GOAWAY at once
    // (requests after it are retried on a new connection).
    let http1 = protocol == "http1.1";
    let wind_down_after = if http1 { handshake_until } else { accepted_in };
    let service = idle::Tracked {
        inner: TowerToHyperService::new(service),
        activity: activity.clone(),
        close_when: http1.then_some(draining),
    };
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    let mut conn = pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = finished(&mut phase, wind_down_after) => {
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
