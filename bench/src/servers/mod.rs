//! The servers tailguard is compared with, each run as this binary in its own
//! process (`tailguard-bench --serve KIND`), behind the same TLS stack as
//! tailguard: tokio-rustls with ring and tailguard's own `server_config`,
//! hyper-util's HTTP/1.1 or HTTP/2 chosen by ALPN, axum routing, TCP_NODELAY.
//!
//! - [`kube_rs`]: the baseline, what kube-rs's admission example does per request;
//! - [`null`]: the floor, a webhook that reads only the uid;
//! - [`diff`]: a naive webhook that diffs whole objects (optional).

pub mod diff;
pub mod kube_rs;
pub mod null;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::routing::post;
use clap::ValueEnum;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A comparison server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Kind {
    /// The baseline: kube-rs's admission example's work per request.
    KubeRs,
    /// The floor: reads the uid, answers allowed.
    Null,
    /// A naive webhook diffing whole objects with json_patch::diff.
    Diff,
}

impl Kind {
    /// The name on the command line and in the printed runs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::KubeRs => "kube-rs",
            Kind::Null => "null",
            Kind::Diff => "diff",
        }
    }

    /// What it stands for in the report.
    pub fn role(self) -> &'static str {
        match self {
            Kind::KubeRs => "baseline",
            Kind::Null => "floor",
            Kind::Diff => "diff",
        }
    }

    /// One request's work without the network: decode, decide, encode.
    pub fn in_process(self, body: &[u8]) -> Vec<u8> {
        match self {
            Kind::KubeRs => kube_rs::in_process(body),
            Kind::Null => null::in_process(body),
            Kind::Diff => diff::in_process(body),
        }
    }

    fn router(self) -> Router {
        match self {
            Kind::KubeRs => Router::new()
                .route("/validate", post(kube_rs::handler))
                .route("/mutate", post(kube_rs::handler)),
            Kind::Null => Router::new()
                .route("/validate", post(null::handler))
                .route("/mutate", post(null::handler)),
            Kind::Diff => Router::new()
                .route("/validate", post(diff::handler))
                .route("/mutate", post(diff::handler)),
        }
    }
}

/// `tailguard-bench --serve KIND --cert C --key K`: binds 127.0.0.1:0, prints
/// `listening ADDR` on stdout, serves until stdin closes (the parent went away)
/// or it is killed.
pub fn serve(kind: Kind, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let cert = std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let key = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    let certified = tailguard::certs::certified_key(&cert, &key).context("serving certificate")?;
    let resolver = Arc::new(tailguard::server::tls::CertResolver::new(certified));
    let acceptor = TlsAcceptor::from(Arc::new(tailguard::server::tls::server_config(resolver)?));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The parent holds our stdin; when it exits, so do we.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    runtime.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        println!("listening {}", listener.local_addr()?);
        let app = kind.router();
        let h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        let h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (acceptor, app, h1, h2) = (acceptor.clone(), app.clone(), h1.clone(), h2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let builder = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    h2
                } else {
                    h1
                };
                let _ = builder
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    })
}
