//! The admission routes: bytes in, `admission::*` call, bytes out.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use tracing::Instrument as _;
use tracing::field::Empty;

use super::config_reload::Policy;
use super::metrics::{Metrics, ReviewResult};
use crate::admission::{self, NamespaceSource, Outcome, ReviewError, Reviewed};
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
    /// The policy, swapped when the policy file changes; a review uses the one
    /// served when its body has been read, to the end.
    pub policy: Arc<Policy>,
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
    match answer(&state, endpoint, request).await {
        Ok(reviewed) => {
            let elapsed = started.elapsed();
            record_review(&state, index, endpoint, &reviewed, elapsed);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                reviewed.body,
            )
                .into_response()
        }
        Err(error) => {
            let elapsed = started.elapsed();
            state.metrics.record_review(index, ReviewResult::Error, elapsed, &[]);
            tracing::Span::current()
                .record("decision", "error")
                .record("micros", elapsed.as_micros() as u64);
            tracing::warn!(
                endpoint = endpoint.name,
                status = error.status().as_u16(),
                error = %error,
                "request refused"
            );
            error.into_response()
        }
    }
}

/// Why a request got no review in return: the HTTP status and a one-line
/// reason, sent as text (the apiserver logs it; kubectl shows it).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Content-Type must be application/json")]
    NotJson,
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("cannot read the request body: {0}")]
    Read(String),
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Review(#[from] ReviewError),
    /// A panic in the core, contained to this request.
    #[error("internal error while reviewing: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Read(_) | ApiError::Review(_) => StatusCode::BAD_REQUEST,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// Reads the request and runs the review (on the blocking pool when large).
async fn answer(state: &AppState, endpoint: &'static Endpoint, request: Request) -> Result<Reviewed, ApiError> {
    let (parts, mut body) = request.into_parts();
    if !is_json(&parts.headers) {
        return Err(ApiError::NotJson);
    }
    let max = state.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // One deadline for the whole body, however it trickles in (hyper's
    // timeouts cover headers and idle connections, not a slow body).
    let deadline = tokio::time::Instant::now() + state.body_timeout;
    let read = async {
        if declared.is_some_and(|n| n > max as u64) {
            return Err(ApiError::TooLarge(max));
        }
        match Limited::new(&mut body, max).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => Err(ApiError::TooLarge(max)),
            Err(e) => Err(ApiError::Read(e.to_string())),
        }
    };
    let bytes = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(ApiError::TooLarge(max))) => {
            if parts.version == Version::HTTP_2 {
                drain(&mut body, max.saturating_mul(DRAIN_FACTOR), deadline).await;
            }
            return Err(ApiError::TooLarge(max));
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(ApiError::Timeout(state.body_timeout)),
    };
    if bytes.len() > BLOCKING_THRESHOLD {
        let (config, namespaces, f) = (state.policy.current(), state.namespaces.clone(), endpoint.review);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| run_review(f, &bytes, &config, &*namespaces)))
            .await
            .unwrap_or_else(|e| Err(ApiError::Internal(format!("review task failed: {e}"))))
    } else {
        // Lock-free, no reference count touched on the fast path; released
        // when the (synchronous) review returns.
        let config = state.policy.load();
        run_review(endpoint.review, &bytes, &config, &*state.namespaces)
    }
}

/// How much of an oversized HTTP/2 body is read and dropped, as a multiple of
/// the limit, before the 413 is sent.
const DRAIN_FACTOR: usize = 4;

/// Reads and drops the rest of an oversized HTTP/2 request body (at most
/// `budget` bytes, until `deadline`), so that the 413 ends a stream the client
/// has finished sending. Answering earlier is allowed (RFC 9113 §8.1: the
/// response, then RST_STREAM NO_ERROR), and Go clients such as the apiserver
/// read the 413 either way, but some clients (curl 7.x) drop the response on
/// that reset and report only a stream error. Past the budget the stream is
/// reset as before. HTTP/1.1 needs none of this: hyper closes the connection
/// after the response.
async fn drain(body: &mut Body, budget: usize, deadline: tokio::time::Instant) {
    let mut left = budget;
    let _ = tokio::time::timeout_at(deadline, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, Bytes::len);
            if n > left {
                break;
            }
            left -= n;
        }
    })
    .await;
}

/// Counts and logs an answered review, and fills in the `review` span.
fn record_review(state: &AppState, index: usize, endpoint: &Endpoint, reviewed: &Reviewed, elapsed: Duration) {
    let verdict = &reviewed.verdict;
    let result = if verdict.allowed() {
        ReviewResult::Allowed
    } else {
        ReviewResult::Denied
    };
    state.metrics.record_review(index, result, elapsed, &verdict.findings);
    let span = tracing::Span::current();
    span.record("uid", verdict.uid.as_str())
        .record("decision", verdict.outcome.as_str())
        .record("micros", elapsed.as_micros() as u64);
    if let Some(object) = verdict.object.as_deref() {
        // `Kind/namespace/name` (or `Kind/name`).
        let (kind, name) = object.split_once('/').unwrap_or((object, ""));
        span.record("kind", kind).record("object", name);
    }
    if verdict.findings.is_empty() && verdict.allowed() {
        tracing::info!(
            endpoint = endpoint.name,
            uid = %verdict.uid,
            object = verdict.object.as_deref().unwrap_or("-"),
            decision = verdict.outcome.as_str(),
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
            decision = verdict.outcome.as_str(),
            findings = verdict.findings.len(),
            rules = rules.join(","),
            reason = match &verdict.outcome {
                Outcome::Unreadable(why) | Outcome::Refused(why) => Some(why.as_str()),
                Outcome::Allowed { .. } | Outcome::Denied => None,
            },
            micros = elapsed.as_micros() as u64,
            "review"
        );
    }
}

/// Runs a review, turning a panic in the core into an error for this request only.
fn run_review(
    f: ReviewFn,
    body: &[u8],
    config: &Config,
    namespaces: &dyn NamespaceSource,
) -> Result<Reviewed, ApiError> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(body, config, namespaces))) {
        Ok(reviewed) => Ok(reviewed?),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(ApiError::Internal(what))
        }
    }
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
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

    fn state(max_body_bytes: usize) -> AppState {
        AppState {
            policy: Arc::new(Policy::new(Config::default())),
            namespaces: Arc::new(admission::NoCluster),
            metrics: Arc::new(Metrics::new(&ENDPOINTS.iter().map(|e| e.name).collect::<Vec<_>>())),
            max_body_bytes,
            body_timeout: Duration::from_secs(5),
        }
    }

    /// One request through [`router`], as the connection would send it.
    async fn send(state: AppState, content_type: &str, body: Vec<u8>) -> (StatusCode, String, String) {
        use tower::ServiceExt as _;
        let request = axum::http::Request::post("/validate")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .expect("request");
        let response = router(state).oneshot(request).await.expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, content_type, String::from_utf8_lossy(&bytes).into_owned())
    }

    const REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"ConfigMap"},"operation":"CREATE","object":{}}}"#;

    #[tokio::test]
    async fn router_answers_a_review() {
        let (status, content_type, body) = send(state(1024), "application/json", REVIEW.into()).await;
        assert_eq!((status, content_type.as_str()), (StatusCode::OK, "application/json"));
        assert!(body.contains(r#""uid":"u-1","allowed":true"#), "{body}");
    }

    #[tokio::test]
    async fn router_refuses_what_is_not_a_review() {
        let cases = [
            (
                "text/plain",
                REVIEW.as_bytes().to_vec(),
                1024,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            ),
            (
                "application/json",
                b"{not json".to_vec(),
                1024,
                StatusCode::BAD_REQUEST,
                "request body is not valid JSON",
            ),
            (
                "application/json",
                br#"{"apiVersion":"v1","kind":"Pod"}"#.to_vec(),
                1024,
                StatusCode::BAD_REQUEST,
                "unsupported review v1/Pod",
            ),
            (
                "application/json",
                REVIEW.as_bytes().to_vec(),
                100,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body is larger than 100 bytes",
            ),
        ];
        for (content_type, body, max, want_status, want_text) in cases {
            let state = state(max);
            let metrics = state.metrics.clone();
            let (status, got_type, text) = send(state, content_type, body).await;
            assert_eq!(status, want_status, "{text}");
            assert_eq!(got_type, "text/plain; charset=utf-8");
            assert!(text.starts_with(want_text) && text.ends_with('\n'), "{text}");
            assert!(
                metrics
                    .render()
                    .contains("tailguard_reviews_total{endpoint=\"validate\",result=\"error\"} 1\n"),
                "the refusal is counted as an error"
            );
        }
    }
}
