//! The baseline: the naive webhook most people write first, served by the
//! same TLS stack as tailguard (tokio-rustls with ring, hyper-util auto
//! HTTP/1.1 + HTTP/2 chosen by ALPN, TCP_NODELAY), in its own process.
//!
//! The handler takes `Json<AdmissionReview<DynamicObject>>` (axum's extractor,
//! with its error-path tracking), adds one label to a copy of the object,
//! diffs the two whole objects with `json_patch::diff`, and answers
//! `AdmissionResponse::with_patch(..).into_review()` (the patch as kube-core
//! serializes it: a JSON array of byte values).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const LABEL: &str = "naive.example.com/reviewed";

/// The handler's logic, shared by the served handler and the in-process loop.
pub fn decide(review: AdmissionReview<DynamicObject>) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let response = AdmissionResponse::from(&request);
    let Some(object) = &request.object else {
        return response.into_review();
    };
    let before = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let mut labelled = object.clone();
    labelled
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(LABEL.to_owned(), "true".to_owned());
    let after = match serde_json::to_value(&labelled) {
        Ok(v) => v,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let patch = json_patch::diff(&before, &after);
    match response.with_patch(patch) {
        Ok(r) => r.into_review(),
        Err(e) => AdmissionResponse::invalid(e.to_string()).into_review(),
    }
}

/// What one request costs without the network: axum's `Json` decoding, the
/// handler, and serializing the response (as `Json` does).
pub fn in_process(body: &[u8]) -> Vec<u8> {
    match Json::<AdmissionReview<DynamicObject>>::from_bytes(body) {
        Ok(Json(review)) => serde_json::to_vec(&decide(review)).unwrap_or_default(),
        Err(e) => e.body_text().into_bytes(),
    }
}

async fn handler(Json(review): Json<AdmissionReview<DynamicObject>>) -> Json<AdmissionReview<DynamicObject>> {
    Json(decide(review))
}

/// `tailguard-bench --serve-baseline`: binds 127.0.0.1:0, prints `listening ADDR`
/// on stdout, serves until stdin closes (the parent went away) or it is killed.
pub fn serve(cert: &Path, key: &Path) -> anyhow::Result<()> {
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
        let app = Router::new()
            .route("/validate", post(handler))
            .route("/mutate", post(handler));
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
