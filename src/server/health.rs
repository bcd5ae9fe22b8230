//! The plain-HTTP health and metrics listener: `/healthz`, `/readyz`, `/metrics`
//! (OpenMetrics text).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::metrics::{CONTENT_TYPE, Metrics};
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
    ///
    /// The policy is deliberately not part of it. A policy file edited into
    /// an invalid one while serving keeps the last good policy in force and
    /// shows on `/metrics` (`tailguard_config_last_reload_successful 0`) and
    /// in the log. Every replica reads the same ConfigMap, so failing
    /// readiness on it would take the whole fleet out of the Service at once
    /// and turn a typo into an admission outage; the last good policy is one
    /// that was deployed on purpose. (At start-up an invalid policy is fatal:
    /// there is no last good one.)
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("shutting down");
        }
        if self.resolver.current().cert.is_empty() {
            return Err("no TLS certificate loaded");
        }
        // Not ready before the first list and while the watch is broken: a
        // replica whose namespace facts may be stale should not take traffic
        // another replica can judge. (The kubelet's failureThreshold keeps a
        // seconds-long apiserver restart from flipping it.)
        if let Some(why) = self.namespaces.as_ref().and_then(|cache| cache.not_ready_reason()) {
            return Err(why);
        }
        Ok(())
    }
}

/// The routes; the background audit's gauges (if any) join the metrics registry here.
pub fn router(health: Arc<Health>) -> Router {
    if let Some(audit) = &health.audit {
        health.metrics.attach_audit(audit.clone());
    }
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
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        health.metrics.render(),
    )
        .into_response()
}
