//! Prometheus metrics kept in atomics: no registry, no locks on the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::rules::{Finding, RuleId, Severity};

/// Upper bounds of the review latency histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

const SEVERITIES: [Severity; 2] = [Severity::Deny, Severity::Warn];

/// How a review ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewResult {
    Allowed,
    Denied,
    /// No review: bad request, wrong content type, body too large or too slow.
    Error,
}

impl ReviewResult {
    const ALL: [ReviewResult; 3] = [ReviewResult::Allowed, ReviewResult::Denied, ReviewResult::Error];

    fn label(self) -> &'static str {
        match self {
            ReviewResult::Allowed => "allowed",
            ReviewResult::Denied => "denied",
            ReviewResult::Error => "error",
        }
    }
}

/// Counters of one admission endpoint.
#[derive(Debug)]
struct EndpointMetrics {
    name: &'static str,
    results: [AtomicU64; 3],
    /// Per bucket (not cumulative); the last slot is above the largest bound.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// Everything `/metrics` reports. Shared through `Arc`; all updates are relaxed atomics.
#[derive(Debug)]
pub struct Metrics {
    endpoints: Vec<EndpointMetrics>,
    /// `RuleId::ALL.len() × SEVERITIES.len()`, rule-major.
    findings: Vec<AtomicU64>,
    /// Per rule: reviews admitted despite a deny finding (enforcement warn or audit).
    would_deny: Vec<AtomicU64>,
    tls_reloads_success: AtomicU64,
    tls_reloads_failure: AtomicU64,
    tls_handshake_failures: AtomicU64,
    tls_cert_not_after: AtomicI64,
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    namespace_cache_ready: AtomicBool,
}

impl Metrics {
    /// Metrics for the given admission endpoints (their labels, e.g. `validate`).
    pub fn new(endpoints: &[&'static str]) -> Metrics {
        Metrics {
            endpoints: endpoints
                .iter()
                .map(|name| EndpointMetrics {
                    name,
                    results: Default::default(),
                    buckets: Default::default(),
                    sum_nanos: AtomicU64::new(0),
                })
                .collect(),
            findings: (0..RuleId::ALL.len() * SEVERITIES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            would_deny: RuleId::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            tls_reloads_success: AtomicU64::new(0),
            tls_reloads_failure: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            tls_cert_not_after: AtomicI64::new(0),
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            namespace_cache_ready: AtomicBool::new(false),
        }
    }

    /// Records one request to endpoint number `endpoint` (its index in `new`).
    ///
    /// An allowed review with deny findings is one the enforcement mode (warn
    /// or audit) let through (see `admission::Verdict::would_deny`): each of
    /// those rules counts once as a would-be denial.
    pub fn record_review(&self, endpoint: usize, result: ReviewResult, elapsed: Duration, findings: &[Finding]) {
        if let Some(m) = self.endpoints.get(endpoint) {
            let r = ReviewResult::ALL.iter().position(|x| *x == result).unwrap_or(0);
            m.results[r].fetch_add(1, Relaxed);
            let secs = elapsed.as_secs_f64();
            let bucket = DURATION_BUCKETS
                .iter()
                .position(|bound| secs <= *bound)
                .unwrap_or(DURATION_BUCKETS.len());
            m.buckets[bucket].fetch_add(1, Relaxed);
            m.sum_nanos
                .fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        }
        let mut would_deny = [false; RuleId::ALL.len()];
        for finding in findings {
            let rule = RuleId::ALL.iter().position(|r| *r == finding.rule);
            let severity = SEVERITIES.iter().position(|s| *s == finding.severity);
            if let (Some(rule), Some(severity)) = (rule, severity)
                && let Some(counter) = self.findings.get(rule * SEVERITIES.len() + severity)
            {
                counter.fetch_add(1, Relaxed);
            }
            if result == ReviewResult::Allowed
                && finding.severity == Severity::Deny
                && let Some(seen) = rule.and_then(|r| would_deny.get_mut(r))
            {
                *seen = true;
            }
        }
        for (counter, _) in self.would_deny.iter().zip(would_deny).filter(|(_, seen)| *seen) {
            counter.fetch_add(1, Relaxed);
        }
    }

    pub fn tls_reloaded(&self, ok: bool) {
        if ok {
            &self.tls_reloads_success
        } else {
            &self.tls_reloads_failure
        }
        .fetch_add(1, Relaxed);
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Relaxed);
    }

    /// The serving certificate's expiry, Unix seconds.
    pub fn set_tls_cert_not_after(&self, unix_seconds: i64) {
        self.tls_cert_not_after.store(unix_seconds, Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    pub fn set_namespace_cache_ready(&self, ready: bool) {
        self.namespace_cache_ready.store(ready, Relaxed);
    }

    /// Successful and failed certificate reloads so far.
    pub fn tls_reloads(&self) -> (u64, u64) {
        (
            self.tls_reloads_success.load(Relaxed),
            self.tls_reloads_failure.load(Relaxed),
        )
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let o = &mut out;
        header(
            o,
            "tailguard_reviews_total",
            "counter",
            "Admission requests answered, by endpoint and result.",
        );
        for m in &self.endpoints {
            for (i, result) in ReviewResult::ALL.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "tailguard_reviews_total{{endpoint=\"{}\",result=\"{}\"}} {}",
                    m.name,
                    result.label(),
                    m.results[i].load(Relaxed)
                );
            }
        }
        header(
            o,
            "tailguard_findings_total",
            "counter",
            "Rule findings reported in reviews, by rule and severity.",
        );
        for (r, rule) in RuleId::ALL.iter().enumerate() {
            for (s, severity) in SEVERITIES.iter().enumerate() {
                let n = self
                    .findings
                    .get(r * SEVERITIES.len() + s)
                    .map_or(0, |c| c.load(Relaxed));
                let _ = writeln!(
                    o,
                    "tailguard_findings_total{{rule=\"{}\",severity=\"{severity}\"}} {n}",
                    rule.name()
                );
            }
        }
        header(
            o,
            "tailguard_would_deny_total",
            "counter",
            "Reviews admitted only because the enforcement mode (warn or audit) let a deny finding through, by rule.",
        );
        for (rule, counter) in RuleId::ALL.iter().zip(&self.would_deny) {
            let _ = writeln!(
                o,
                "tailguard_would_deny_total{{rule=\"{}\"}} {}",
                rule.name(),
                counter.load(Relaxed)
            );
        }
        header(
            o,
            "tailguard_review_duration_seconds",
            "histogram",
            "Time from request headers to response, by endpoint.",
        );
        for m in &self.endpoints {
            let mut cumulative = 0;
            for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
                cumulative += m.buckets[i].load(Relaxed);
                let _ = writeln!(
                    o,
                    "tailguard_review_duration_seconds_bucket{{endpoint=\"{}\",le=\"{bound}\"}} {cumulative}",
                    m.name
                );
            }
            cumulative += m.buckets[DURATION_BUCKETS.len()].load(Relaxed);
            let sum = m.sum_nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(
                o,
                "tailguard_review_duration_seconds_bucket{{endpoint=\"{}\",le=\"+Inf\"}} {cumulative}",
                m.name
            );
            let _ = writeln!(
                o,
                "tailguard_review_duration_seconds_sum{{endpoint=\"{}\"}} {sum}",
                m.name
            );
            let _ = writeln!(
                o,
                "tailguard_review_duration_seconds_count{{endpoint=\"{}\"}} {cumulative}",
                m.name
            );
        }
        header(
            o,
            "tailguard_tls_reloads_total",
            "counter",
            "Serving certificate reloads, by result.",
        );
        let (ok, failed) = self.tls_reloads();
        let _ = writeln!(o, "tailguard_tls_reloads_total{{result=\"success\"}} {ok}");
        let _ = writeln!(o, "tailguard_tls_reloads_total{{result=\"failure\"}} {failed}");
        header(
            o,
            "tailguard_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out.",
        );
        let _ = writeln!(
            o,
            "tailguard_tls_handshake_failures_total {}",
            self.tls_handshake_failures.load(Relaxed)
        );
        header(
            o,
            "tailguard_tls_cert_expiry_timestamp_seconds",
            "gauge",
            "Expiry (notAfter) of the serving certificate, Unix time.",
        );
        let _ = writeln!(
            o,
            "tailguard_tls_cert_expiry_timestamp_seconds {}",
            self.tls_cert_not_after.load(Relaxed)
        );
        header(o, "tailguard_connections_open", "gauge", "Open webhook connections.");
        let _ = writeln!(o, "tailguard_connections_open {}", self.connections_open.load(Relaxed));
        header(
            o,
            "tailguard_connections_total",
            "counter",
            "Accepted webhook connections.",
        );
        let _ = writeln!(
            o,
            "tailguard_connections_total {}",
            self.connections_total.load(Relaxed)
        );
        header(
            o,
            "tailguard_namespace_cache_ready",
            "gauge",
            "1 when the namespace cache has synced with the apiserver.",
        );
        let _ = writeln!(
            o,
            "tailguard_namespace_cache_ready {}",
            u8::from(self.namespace_cache_ready.load(Relaxed))
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::new(&["validate"]);
        m.record_review(0, ReviewResult::Allowed, Duration::from_micros(30), &[]);
        m.record_review(0, ReviewResult::Denied, Duration::from_micros(700), &[]);
        m.record_review(0, ReviewResult::Error, Duration::from_secs(3), &[]);
        m.record_review(7, ReviewResult::Error, Duration::from_secs(3), &[]); // unknown endpoint: ignored
        m.tls_reloaded(true);
        let text = m.render();
        assert!(text.contains("tailguard_reviews_total{endpoint=\"validate\",result=\"allowed\"} 1\n"));
        assert!(text.contains("tailguard_reviews_total{endpoint=\"validate\",result=\"denied\"} 1\n"));
        assert!(text.contains("tailguard_reviews_total{endpoint=\"validate\",result=\"error\"} 1\n"));
        assert!(text.contains("tailguard_review_duration_seconds_bucket{endpoint=\"validate\",le=\"0.00005\"} 1\n"));
        assert!(text.contains("tailguard_review_duration_seconds_bucket{endpoint=\"validate\",le=\"0.001\"} 2\n"));
        assert!(text.contains("tailguard_review_duration_seconds_bucket{endpoint=\"validate\",le=\"1\"} 2\n"));
        assert!(text.contains("tailguard_review_duration_seconds_bucket{endpoint=\"validate\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("tailguard_review_duration_seconds_count{endpoint=\"validate\"} 3\n"));
        assert!(text.contains("tailguard_tls_reloads_total{result=\"success\"} 1\n"));
        assert!(text.contains("tailguard_namespace_cache_ready 0\n"));
        let rule = RuleId::ALL[0].name();
        assert!(text.contains(&format!(
            "tailguard_findings_total{{rule=\"{rule}\",severity=\"deny\"}} 0\n"
        )));
        assert!(text.contains(&format!("tailguard_would_deny_total{{rule=\"{rule}\"}} 0\n")));
    }

    #[test]
    fn deny_findings_of_admitted_reviews_count_once_per_rule_as_would_deny() {
        let finding = |rule: RuleId, severity: Severity| Finding {
            rule,
            severity,
            path: "spec.containers[0]".into(),
            message: String::new(),
            hint: String::new(),
        };
        let (a, b) = (RuleId::ALL[0], RuleId::ALL[1]);
        let m = Metrics::new(&["validate"]);
        let t = Duration::from_micros(10);
        // Admitted by the mode: two findings of `a` count once.
        let admitted = [
            finding(a, Severity::Deny),
            finding(a, Severity::Deny),
            finding(b, Severity::Warn),
        ];
        m.record_review(0, ReviewResult::Allowed, t, &admitted);
        // Refused (enforcement deny): not a would-be denial.
        m.record_review(0, ReviewResult::Denied, t, &[finding(a, Severity::Deny)]);
        let text = m.render();
        assert!(
            text.contains(&format!("tailguard_would_deny_total{{rule=\"{}\"}} 1\n", a.name())),
            "{text}"
        );
        assert!(text.contains(&format!("tailguard_would_deny_total{{rule=\"{}\"}} 0\n", b.name())));
        assert!(text.contains(&format!(
            "tailguard_findings_total{{rule=\"{}\",severity=\"deny\"}} 3\n",
            a.name()
        )));
    }
}
