//! The plain-HTTP health and metrics listener: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::metrics::Metrics;
use super::tls::CertResolver;
use crate::cluster::audit::AuditState;
use crate::cluster::namespaces::NamespaceCache;

/// What readiness and metrics look at.
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub resolver: Arc<CertResolver>,
    /// Present when cluster access is configured.
    pub namespaces: Option<Arc<NamespaceCache>>,
    /// Present when the background audit runs.
    pub audit: Option<Arc<AuditState>>,
    /// Set once shutdown has begun.
    pub draining: AtomicBool,
}

impl Health {
    /// `Ok` when the webhook should receive traffic, else why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("shutting down");
        }
        if self.resolver.current().cert.is_empty() {
            return Err("no TLS certificate loaded");
        }
        if let Some(cache) = &self.namespaces
            && !cache.is_ready()
        {
            return Err("namespace cache has not synced with the apiserver");
        }
        Ok(())
    }
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<Health>>) -> Response {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> Response {
    if let Some(cache) = &health.namespaces {
        health.metrics.set_namespace_cache_ready(cache.is_ready());
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        match &health.audit {
            Some(audit) => health.metrics.render() + &audit.render(),
            None => health.metrics.render(),
        },
    )
        .into_response()
}
