//! `tailguard serve`: the HTTPS admission webhook (HTTP/2 and HTTP/1.1 over
//! TLS), and a plain-HTTP listener for health checks and metrics.
//!
//! The request path only moves bytes: TLS, HTTP, then `admission::validate`
//! on the body as received. The policy file is reloaded when it changes
//! (`config_reload`: an invalid one keeps the last good policy). Certificates
//! are reloaded from disk when they change, or, with `--cert-secret`, kept in a Secret shared by the replicas
//! and swapped in when it changes (`cluster::certs`); shutdown drains
//! in-flight reviews and closes idle connections.

use std::future::Future;

use anyhow::Context as _;

mod args;
mod bind;
pub mod config_reload;
pub mod health;
pub mod http;
mod idle;
pub mod metrics;
mod self_certs;
mod serve;
pub mod tls;

pub use args::{AuditFlags, SelfCertArgs, ServeArgs, ServeLimits, parse_duration, parse_size};
pub use bind::Server;
pub use metrics::Metrics;

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
