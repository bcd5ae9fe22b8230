//! Prometheus metrics: a `prometheus-client` [`Registry`] built once at start.
//!
//! Every series the request path touches is created in [`Metrics::new`] and
//! kept as a handle (a counter or histogram sharing its atomics with the
//! registry), so recording a review is index arithmetic and atomic adds: no
//! allocation, no label hashing, no registry lookup. Series that exist before
//! anything happens (`... 0`) are created there too. `/metrics` encodes the
//! registry in the OpenMetrics text format ([`CONTENT_TYPE`]); process
//! metrics and the background audit's gauges are collected at scrape time.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::rules::{Finding, RuleId, Severity};

mod process;

use process::ProcessCollector;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the review latency histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

const SEVERITIES: [Severity; 2] = [Severity::Deny, Severity::Warn];

/// How a review ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReviewResult {
    Allowed,
    Denied,
    /// No review: bad request, wrong content type, body too large or too slow.
    Error,
}

impl ReviewResult {
    const ALL: [ReviewResult; 3] = [ReviewResult::Allowed, ReviewResult::Denied, ReviewResult::Error];

    fn index(self) -> usize {
        match self {
            ReviewResult::Allowed => 0,
            ReviewResult::Denied => 1,
            ReviewResult::Error => 2,
        }
    }

    fn label(self) -> &'static str {
        match self {
            ReviewResult::Allowed => "allowed",
            ReviewResult::Denied => "denied",
            ReviewResult::Error => "error",
        }
    }
}

impl EncodeLabelValue for ReviewResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_str(encoder, self.label())
    }
}

/// The `result` of a certificate or policy reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ReloadResult {
    Success,
    Failure,
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_str(
            encoder,
            match self {
                ReloadResult::Success => "success",
                ReloadResult::Failure => "failure",
            },
        )
    }
}

/// A rule's stable kebab-case name (`RuleId::name`).
impl EncodeLabelValue for RuleId {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_str(encoder, self.name())
    }
}

/// `deny` or `warn`.
impl EncodeLabelValue for Severity {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_str(
            encoder,
            match self {
                Severity::Deny => "deny",
                Severity::Warn => "warn",
            },
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReviewLabels {
    endpoint: &'static str,
    result: ReviewResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FindingLabels {
    rule: RuleId,
    severity: Severity,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuleLabels {
    rule: RuleId,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// The handles of one admission endpoint.
#[derive(Debug)]
struct EndpointMetrics {
    /// Indexed by [`ReviewResult::index`].
    results: [Counter; 3],
    duration: Histogram,
}

/// Everything `/metrics` reports. Shared through `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    endpoints: Vec<EndpointMetrics>,
    /// `RuleId::ALL.len() × SEVERITIES.len()`, rule-major.
    findings: Vec<Counter>,
    /// Per rule (`RuleId::ALL` order): reviews admitted despite a deny finding
    /// (enforcement warn or audit).
    would_deny: Vec<Counter>,
    tls_reloads_success: Counter,
    tls_reloads_failure: Counter,
    tls_handshake_failures: Counter,
    tls_cert_not_after: Gauge,
    config_reloads_success: Counter,
    config_reloads_failure: Counter,
    config_last_reload_successful: Gauge,
    config_loaded_at: Gauge,
    config_hash: Gauge,
    connections_open: Gauge,
    connections_total: Counter,
    namespace_cache_ready: Gauge,
    /// The background audit's gauges, once [`Metrics::attach_audit`] is called.
    audit: Arc<OnceLock<Arc<dyn Collector>>>,
}

impl Metrics {
    /// Metrics for the given admission endpoints (their labels, e.g. `validate`).
    ///
    /// Counter names are registered without `_total`: the encoder appends it.
    /// Help texts have no final period: the registry adds it.
    pub fn new(endpoints: &[&'static str]) -> Metrics {
        let mut registry = Registry::default();

        let reviews = Family::<ReviewLabels, Counter>::default();
        let durations: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        let endpoints = endpoints
            .iter()
            .map(|&endpoint| EndpointMetrics {
                results: ReviewResult::ALL
                    .map(|result| reviews.get_or_create_owned(&ReviewLabels { endpoint, result })),
                duration: durations.get_or_create_owned(&EndpointLabels { endpoint }),
            })
            .collect();
        registry.register(
            "tailguard_reviews",
            "Admission requests answered, by endpoint and result",
            reviews,
        );

        let findings_family = Family::<FindingLabels, Counter>::default();
        let findings = RuleId::ALL
            .iter()
            .flat_map(|&rule| SEVERITIES.map(|severity| (rule, severity)))
            .map(|(rule, severity)| findings_family.get_or_create_owned(&FindingLabels { rule, severity }))
            .collect();
        registry.register(
            "tailguard_findings",
            "Rule findings reported in reviews, by rule and severity",
            findings_family,
        );

        let would_deny_family = Family::<RuleLabels, Counter>::default();
        let would_deny = RuleId::ALL
            .iter()
            .map(|&rule| would_deny_family.get_or_create_owned(&RuleLabels { rule }))
            .collect();
        registry.register(
            "tailguard_would_deny",
            "Reviews admitted only because the enforcement mode (warn or audit) let a deny finding through, by rule",
            would_deny_family,
        );

        registry.register(
            "tailguard_review_duration_seconds",
            "Time from request headers to response, by endpoint",
            durations,
        );

        let reloads = Family::<ReloadLabels, Counter>::default();
        let tls_reloads_success = reloads.get_or_create_owned(&ReloadLabels {
            result: ReloadResult::Success,
        });
        let tls_reloads_failure = reloads.get_or_create_owned(&ReloadLabels {
            result: ReloadResult::Failure,
        });
        registry.register(
            "tailguard_tls_reloads",
            "Serving certificate reloads, by result",
            reloads,
        );

        let tls_handshake_failures = Counter::default();
        registry.register(
            "tailguard_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let tls_cert_not_after = Gauge::default();
        registry.register(
            "tailguard_tls_cert_expiry_timestamp_seconds",
            "Expiry (notAfter) of the serving certificate, Unix time",
            tls_cert_not_after.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        let config_reloads_success = config_reloads.get_or_create_owned(&ReloadLabels {
            result: ReloadResult::Success,
        });
        let config_reloads_failure = config_reloads.get_or_create_owned(&ReloadLabels {
            result: ReloadResult::Failure,
        });
        registry.register(
            "tailguard_config_reloads",
            "Policy file changes read while serving, by result (failure: unreadable or invalid, the previous policy kept)",
            config_reloads,
        );
        // 1 until a change fails to load: the server does not start without a valid policy.
        let config_last_reload_successful = Gauge::default();
        config_last_reload_successful.set(1);
        registry.register(
            "tailguard_config_last_reload_successful",
            "1 when the policy file as it is now is the policy being served; 0 while a change to it fails to load",
            config_last_reload_successful.clone(),
        );
        let config_loaded_at = Gauge::default();
        registry.register(
            "tailguard_config_last_reload_success_timestamp_seconds",
            "When the policy being served was loaded (at start or by a reload), Unix time",
            config_loaded_at.clone(),
        );
        let config_hash = Gauge::default();
        registry.register(
            "tailguard_config_hash",
            "Hash of the policy file being served (53-bit FNV-1a of its bytes): equal on replicas serving the same policy",
            config_hash.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "tailguard_connections_open",
            "Open webhook connections",
            connections_open.clone(),
        );
        let connections_total = Counter::default();
        registry.register(
            "tailguard_connections",
            "Accepted webhook connections",
            connections_total.clone(),
        );
        let namespace_cache_ready = Gauge::default();
        registry.register(
            "tailguard_namespace_cache_ready",
            "1 when the namespace cache has synced with the apiserver",
            namespace_cache_ready.clone(),
        );

        let audit: Arc<OnceLock<Arc<dyn Collector>>> = Arc::default();
        registry.register_collector(Box::new(Attached(audit.clone())));
        registry.register_collector(Box::new(ProcessCollector::new()));

        Metrics {
            registry,
            endpoints,
            findings,
            would_deny,
            tls_reloads_success,
            tls_reloads_failure,
            tls_handshake_failures,
            tls_cert_not_after,
            config_reloads_success,
            config_reloads_failure,
            config_last_reload_successful,
            config_loaded_at,
            config_hash,
            connections_open,
            connections_total,
            namespace_cache_ready,
            audit,
        }
    }

    /// Adds the background audit's series (`tailguard_audit_*`) to this
    /// registry; only the first call has an effect.
    pub fn attach_audit(&self, audit: Arc<dyn Collector>) {
        let _ = self.audit.set(audit);
    }

    /// Records one request to endpoint number `endpoint` (its index in `new`).
    ///
    /// An allowed review with deny findings is one the enforcement mode (warn
    /// or audit) let through (see `admission::Verdict::would_deny`): each of
    /// those rules counts once as a would-be denial.
    pub fn record_review(&self, endpoint: usize, result: ReviewResult, elapsed: Duration, findings: &[Finding]) {
        if let Some(m) = self.endpoints.get(endpoint) {
            m.results[result.index()].inc();
            m.duration.observe(elapsed.as_secs_f64());
        }
        let mut would_deny = [false; RuleId::ALL.len()];
        for finding in findings {
            let rule = RuleId::ALL.iter().position(|r| *r == finding.rule);
            let severity = SEVERITIES.iter().position(|s| *s == finding.severity);
            if let (Some(rule), Some(severity)) = (rule, severity)
                && let Some(counter) = self.findings.get(rule * SEVERITIES.len() + severity)
            {
                counter.inc();
            }
            if result == ReviewResult::Allowed
                && finding.severity == Severity::Deny
                && let Some(seen) = rule.and_then(|r| would_deny.get_mut(r))
            {
                *seen = true;
            }
        }
        for (counter, _) in self.would_deny.iter().zip(would_deny).filter(|(_, seen)| *seen) {
            counter.inc();
        }
    }

    pub fn tls_reloaded(&self, ok: bool) {
        if ok {
            &self.tls_reloads_success
        } else {
            &self.tls_reloads_failure
        }
        .inc();
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    /// The serving certificate's expiry, Unix seconds.
    pub fn set_tls_cert_not_after(&self, unix_seconds: i64) {
        self.tls_cert_not_after.set(unix_seconds);
    }

    /// A change of the policy file was read: loaded (`true`), or refused and
    /// the previous policy kept (`false`).
    pub fn config_reloaded(&self, ok: bool) {
        if ok {
            &self.config_reloads_success
        } else {
            &self.config_reloads_failure
        }
        .inc();
        self.config_last_reload_successful.set(i64::from(ok));
    }

    /// The policy now served: its [hash](super::config_reload::content_hash)
    /// and when it was loaded (Unix seconds).
    pub fn set_config_loaded(&self, hash: u64, unix_seconds: i64) {
        // 53 bits: exact as the float a scraper reads.
        self.config_hash.set((hash & ((1 << 53) - 1)) as i64);
        self.config_loaded_at.set(unix_seconds);
    }

    /// Successful and failed policy reloads so far.
    pub fn config_reloads(&self) -> (u64, u64) {
        (self.config_reloads_success.get(), self.config_reloads_failure.get())
    }

    pub fn connection_opened(&self) {
        self.connections_open.inc();
        self.connections_total.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    pub fn set_namespace_cache_ready(&self, ready: bool) {
        self.namespace_cache_ready.set(i64::from(ready));
    }

    /// Successful and failed certificate reloads so far.
    pub fn tls_reloads(&self) -> (u64, u64) {
        (self.tls_reloads_success.get(), self.tls_reloads_failure.get())
    }

    /// The OpenMetrics text exposition (served as [`CONTENT_TYPE`]), `# EOF` included.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail, nor can the collectors here.
        let encoded = text::encode(&mut out, &self.registry);
        debug_assert!(encoded.is_ok(), "metrics encoding failed");
        out
    }
}

/// The collector [`Metrics::attach_audit`] fills in: nothing until then.
#[derive(Debug)]
struct Attached(Arc<OnceLock<Arc<dyn Collector>>>);

impl Collector for Attached {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        match self.0.get() {
            Some(collector) => collector.encode(encoder),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
