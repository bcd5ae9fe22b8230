//! The admission routes: bytes in, `admission::*` call, bytes out.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tracing::Instrument as _;
use tracing::field::Empty;

use super::metrics::{Metrics, ReviewResult};
use crate::admission::{self, NamespaceSource, ReviewError, Reviewed};
use crate::config::Config;

/// A review function of the pure core.
pub type ReviewFn = fn(&[u8], &Config, &dyn NamespaceSource) -> Result<Reviewed, ReviewError>;

/// One admission endpoint: URL path, metrics/log label, review function.
pub struct Endpoint {
    pub path: &'static str,
    pub name: &'static str,
    pub review: ReviewFn,
}

/// The admission endpoints. Adding one is one line here.
#[rustfmt::skip]
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint { path: "/validate", name: "validate", review: admission::validate },
    Endpoint { path: "/mutate", name: "mutate", review: admission::mutate },
];

/// Bodies larger than this are reviewed on the blocking pool, not inline.
pub const BLOCKING_THRESHOLD: usize = 256 * 1024;

/// What the admission handlers share.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub namespaces: Arc<dyn NamespaceSource + Send + Sync>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
}

/// The router of the HTTPS listener: one POST route per [`ENDPOINTS`] entry.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (index, endpoint) in ENDPOINTS.iter().enumerate() {
        router = router.route(
            endpoint.path,
            post(move |State(state): State<AppState>, request: Request| review(state, index, endpoint, request)),
        );
    }
    router.with_state(state)
}

/// Handles one review inside its `review` span: the endpoint from the start;
/// uid, kind and object once the review is read; the decision and the elapsed
/// microseconds at the end.
async fn review(state: AppState, index: usize, endpoint: &'static Endpoint, request: Request) -> Response {
    let span = tracing::info_span!(
        "review",
        endpoint = endpoint.name,
        uid = Empty,
        kind = Empty,
        object = Empty,
        decision = Empty,
        micros = Empty,
    );
    review_in_span(state, index, endpoint, request).instrument(span).await
}

async fn review_in_span(state: AppState, index: usize, endpoint: &'static Endpoint, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let reject = |status: StatusCode, message: String| {
        let elapsed = started.elapsed();
        state.metrics.record_review(index, ReviewResult::Error, elapsed, &[]);
        tracing::Span::current()
            .record("decision", "error")
            .record("micros", elapsed.as_micros() as u64);
        tracing::warn!(endpoint = endpoint.name, status = status.as_u16(), error = %message, "request refused");
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            message + "\n",
        )
            .into_response()
    };
    if !is_json(&parts.headers) {
        return reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json".to_string(),
        );
    }
    let max = state.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {max} bytes"),
        );
    }
    let hint = declared.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
    let body = match tokio::time::timeout(state.body_timeout, read_body(body, max, hint)).await {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => {
            return reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {max} bytes"),
            );
        }
        Ok(Err(BodyError::Read(e))) => {
            return reject(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"));
        }
        Err(_) => {
            return reject(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {:?}", state.body_timeout),
            );
        }
    };
    let reviewed = if body.len() > BLOCKING_THRESHOLD {
        let (config, namespaces, f) = (state.config.clone(), state.namespaces.clone(), endpoint.review);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| run_review(f, &body, &config, &*namespaces)))
            .await
            .unwrap_or_else(|e| Err(format!("review task failed: {e}")))
    } else {
        run_review(endpoint.review, &body, &state.config, &*state.namespaces)
    };
    match reviewed {
        Ok(Ok(reviewed)) => {
            let elapsed = started.elapsed();
            let verdict = &reviewed.verdict;
            let result = if verdict.allowed {
                ReviewResult::Allowed
            } else {
                ReviewResult::Denied
            };
            state.metrics.record_review(index, result, elapsed, &verdict.findings);
            let span = tracing::Span::current();
            span.record("uid", verdict.uid.as_str())
                .record("decision", if verdict.allowed { "allowed" } else { "denied" })
                .record("micros", elapsed.as_micros() as u64);
            if let Some(object) = verdict.object.as_deref() {
                // `Kind/namespace/name` (or `Kind/name`).
                let (kind, name) = object.split_once('/').unwrap_or((object, ""));
                span.record("kind", kind).record("object", name);
            }
            if verdict.findings.is_empty() && verdict.unreadable.is_none() {
                tracing::info!(
                    endpoint = endpoint.name,
                    uid = %verdict.uid,
                    object = verdict.object.as_deref().unwrap_or("-"),
                    allowed = verdict.allowed,
                    findings = 0,
                    micros = elapsed.as_micros() as u64,
                    "review"
                );
            } else {
                let rules: Vec<&str> = verdict.findings.iter().map(|f| f.rule.name()).collect();
                tracing::info!(
                    endpoint = endpoint.name,
                    uid = %verdict.uid,
                    object = verdict.object.as_deref().unwrap_or("-"),
                    allowed = verdict.allowed,
                    findings = verdict.findings.len(),
                    rules = rules.join(","),
                    unreadable = verdict.unreadable.as_deref(),
                    micros = elapsed.as_micros() as u64,
                    "review"
                );
            }
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                reviewed.body,
            )
                .into_response()
        }
        Ok(Err(e)) => reject(StatusCode::BAD_REQUEST, e.to_string()),
        Err(panic) => reject(StatusCode::INTERNAL_SERVER_ERROR, panic),
    }
}

/// Runs a review, turning a panic in the core into an error for this request only.
fn run_review(
    f: ReviewFn,
    body: &[u8],
    config: &Config,
    namespaces: &dyn NamespaceSource,
) -> Result<Result<Reviewed, ReviewError>, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| f(body, config, namespaces))).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("internal error while reviewing: {what}")
    })
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// Reads the whole body, refusing more than `max` bytes. A body that arrives
/// in one frame (the usual case) is not copied.
async fn read_body(mut body: Body, max: usize, hint: usize) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue; // trailers
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if so_far + data.len() > max {
            return Err(BodyError::TooLarge);
        }
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(first) = first.take() {
                    rest.reserve(hint.max(first.len() + data.len()).min(max));
                    rest.extend_from_slice(&first);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(match first {
        Some(first) => first,
        None => Bytes::from(rest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON;charset=UTF-8", true),
            ("application/json-patch+json", false),
            ("text/plain", false),
            ("application/jsonx", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&headers), ok, "{value}");
        }
    }

    #[tokio::test]
    async fn body_limits() {
        let body = Body::from(vec![b'x'; 100]);
        assert_eq!(read_body(body, 100, 100).await.ok().map(|b| b.len()), Some(100));
        let body = Body::from(vec![b'x'; 101]);
        assert!(matches!(read_body(body, 100, 0).await, Err(BodyError::TooLarge)));
    }
}
