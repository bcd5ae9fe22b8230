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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, text,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::rules::{Finding, RuleId, Severity};

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

/// The `result` of a certificate reload.
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

/// `process_*` metrics of this process, read from `/proc/self` at each scrape
/// (as kubert and the Go client report them). Where `/proc` is missing or
/// unreadable the affected series are left out.
#[derive(Debug)]
struct ProcessCollector {
    /// Clock ticks per second of the times in `/proc/self/stat`.
    ticks_per_second: f64,
    page_size: u64,
    /// Unix time the process started, computed once.
    start_time: Option<f64>,
}

/// Entries of the ELF auxiliary vector (`/proc/self/auxv`), see getauxval(3).
const AT_PAGESZ: usize = 6;
const AT_CLKTCK: usize = 17;

/// The numbers of `/proc/self/stat` after the command name (field 3 onwards,
/// see proc_pid_stat(5)): `[fields[STAT_UTIME], ...]`.
const STAT_UTIME: usize = 14 - 3;
const STAT_STIME: usize = 15 - 3;
const STAT_THREADS: usize = 20 - 3;
const STAT_STARTTIME: usize = 22 - 3;
const STAT_VSIZE: usize = 23 - 3;
const STAT_RSS: usize = 24 - 3;

impl ProcessCollector {
    fn new() -> ProcessCollector {
        let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
        let ticks = auxv_value(&auxv, AT_CLKTCK).filter(|&t| t > 0).unwrap_or(100);
        let page_size = auxv_value(&auxv, AT_PAGESZ).filter(|&p| p > 0).unwrap_or(4096);
        let ticks_per_second = ticks as f64;
        let start_time = (|| {
            let boot: u64 = std::fs::read_to_string("/proc/stat")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("btime "))?
                .trim()
                .parse()
                .ok()?;
            let started: u64 = stat_fields(&std::fs::read_to_string("/proc/self/stat").ok()?)?
                .get(STAT_STARTTIME)?
                .parse()
                .ok()?;
            Some(boot as f64 + started as f64 / ticks_per_second)
        })()
        .or_else(|| {
            // No /proc: "now" is close enough, as metrics are set up at start.
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs_f64())
        });
        ProcessCollector {
            ticks_per_second,
            page_size: page_size as u64,
            start_time,
        }
    }
}

/// One value of the auxiliary vector: native-endian (type, value) word pairs.
fn auxv_value(auxv: &[u8], key: usize) -> Option<usize> {
    const WORD: usize = std::mem::size_of::<usize>();
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let (k, v) = pair.split_at(WORD);
        let k = usize::from_ne_bytes(k.try_into().ok()?);
        let v = usize::from_ne_bytes(v.try_into().ok()?);
        (k == key).then_some(v)
    })
}

/// The fields of `/proc/self/stat` from the state (field 3) on; the command
/// name before them is in parentheses and may contain spaces.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// The soft `Max open files` limit from `/proc/self/limits` (none if unlimited).
fn max_open_files(limits: &str) -> Option<i64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One gauge series, left out when `value` is unknown.
fn const_gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<N>,
) -> fmt::Result {
    let Some(value) = value else {
        return Ok(());
    };
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields = stat_fields(&stat).unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(STAT_UTIME), field(STAT_STIME)) {
            let cpu = ConstCounter::new((user + system) as f64 / self.ticks_per_second);
            cpu.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
        }
        const_gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            field(STAT_RSS).and_then(|pages| i64::try_from(pages.saturating_mul(self.page_size)).ok()),
        )?;
        const_gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            field(STAT_VSIZE).and_then(|bytes| i64::try_from(bytes).ok()),
        )?;
        const_gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            std::fs::read_dir("/proc/self/fd")
                .ok()
                .and_then(|dir| i64::try_from(dir.count()).ok()),
        )?;
        const_gauge(
            e,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|limits| max_open_files(&limits)),
        )?;
        const_gauge(
            e,
            "process_threads",
            "Number of OS threads in the process.",
            field(STAT_THREADS).and_then(|n| i64::try_from(n).ok()),
        )?;
        const_gauge(
            e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            self.start_time,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// One sample line: `name{label="value",...} value`.
    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// What a small OpenMetrics text parser makes of an exposition.
    #[derive(Debug, Default)]
    struct Exposition {
        /// Family name → type, from `# TYPE`.
        types: BTreeMap<String, String>,
        help: BTreeMap<String, String>,
        samples: Vec<Sample>,
    }

    impl Exposition {
        /// Parses and checks the structure: metadata before samples, every
        /// sample in a declared family with a suffix its type allows, one
        /// final `# EOF`.
        fn parse(text: &str) -> Exposition {
            let mut out = Exposition::default();
            let mut lines = text.lines().peekable();
            let mut eof = false;
            while let Some(line) = lines.next() {
                assert!(!eof, "a line after # EOF: {line:?}");
                if line == "# EOF" {
                    eof = true;
                    assert!(lines.peek().is_none(), "trailing text after # EOF");
                    continue;
                }
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                    assert!(
                        out.types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "family {name} declared twice"
                    );
                    continue;
                }
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let (name, help) = rest.split_once(' ').expect("# HELP name text");
                    out.help.insert(name.to_owned(), help.to_owned());
                    continue;
                }
                assert!(!line.starts_with('#'), "unexpected comment {line:?}");
                let sample = parse_sample(line);
                let family = out
                    .family_of(&sample.name)
                    .unwrap_or_else(|| panic!("sample of an undeclared family: {line:?}"));
                assert!(out.help.contains_key(&family), "no # HELP for {family}");
                out.samples.push(sample);
            }
            assert!(eof, "no # EOF at the end");
            out
        }

        /// The declared family a sample name belongs to, given its type's suffixes.
        fn family_of(&self, sample: &str) -> Option<String> {
            self.types.iter().find_map(|(family, kind)| {
                let suffixes: &[&str] = match kind.as_str() {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                suffixes
                    .iter()
                    .any(|s| sample.strip_prefix(family.as_str()) == Some(s))
                    .then(|| family.clone())
            })
        }

        fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let want: BTreeMap<String, String> =
                labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let mut found = self.samples.iter().filter(|s| s.name == name && s.labels == want);
            let value = found.next()?.value;
            assert!(found.next().is_none(), "{name} {labels:?} appears twice");
            Some(value)
        }

        fn series(&self, name: &str) -> Vec<&Sample> {
            self.samples.iter().filter(|s| s.name == name).collect()
        }
    }

    fn parse_sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).expect("sample name");
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(mut s) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = s.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = s.split_once("=\"").expect("label=\"value\"");
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name {key:?} in {line:?}"
                );
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("unterminated label value") {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c} in {line:?}"),
                        },
                        (_, c) => value.push(c),
                    }
                };
                assert!(
                    labels.insert(key.to_owned(), value).is_none(),
                    "label twice in {line:?}"
                );
                s = &after[end + 1..];
                s = s.strip_prefix(',').unwrap_or(s);
            }
        }
        let value = rest.strip_prefix(' ').expect("a space before the value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        Sample {
            name: name.to_owned(),
            labels,
            value,
        }
    }

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
        assert!(text.contains("tailguard_review_duration_seconds_bucket{le=\"0.00005\",endpoint=\"validate\"} 1\n"));
        assert!(text.contains("tailguard_review_duration_seconds_bucket{le=\"0.001\",endpoint=\"validate\"} 2\n"));
        assert!(text.contains("tailguard_review_duration_seconds_bucket{le=\"1.0\",endpoint=\"validate\"} 2\n"));
        assert!(text.contains("tailguard_review_duration_seconds_bucket{le=\"+Inf\",endpoint=\"validate\"} 3\n"));
        assert!(text.contains("tailguard_review_duration_seconds_count{endpoint=\"validate\"} 3\n"));
        assert!(text.contains("tailguard_tls_reloads_total{result=\"success\"} 1\n"));
        assert!(text.contains("tailguard_namespace_cache_ready 0\n"));
        let rule = RuleId::ALL[0].name();
        assert!(text.contains(&format!(
            "tailguard_findings_total{{rule=\"{rule}\",severity=\"deny\"}} 0\n"
        )));
        assert!(text.contains(&format!("tailguard_would_deny_total{{rule=\"{rule}\"}} 0\n")));
        assert!(text.ends_with("# EOF\n"), "{text}");
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

    /// The exposition read back with a parser: names, types, labels and values.
    #[test]
    fn exposition_parses_back_with_the_expected_series() {
        let m = Metrics::new(&["validate", "mutate"]);
        let deny = Finding {
            rule: RuleId::ALL[1],
            severity: Severity::Deny,
            path: String::new(),
            message: String::new(),
            hint: String::new(),
        };
        m.record_review(1, ReviewResult::Allowed, Duration::from_millis(3), &[deny]);
        m.record_review(1, ReviewResult::Denied, Duration::from_micros(200), &[]);
        m.tls_reloaded(false);
        m.tls_handshake_failed();
        m.set_tls_cert_not_after(1_900_000_000);
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.set_namespace_cache_ready(true);
        let x = Exposition::parse(&m.render());

        for (family, kind) in [
            ("tailguard_reviews", "counter"),
            ("tailguard_findings", "counter"),
            ("tailguard_would_deny", "counter"),
            ("tailguard_review_duration_seconds", "histogram"),
            ("tailguard_tls_reloads", "counter"),
            ("tailguard_tls_handshake_failures", "counter"),
            ("tailguard_tls_cert_expiry_timestamp_seconds", "gauge"),
            ("tailguard_connections_open", "gauge"),
            ("tailguard_connections", "counter"),
            ("tailguard_namespace_cache_ready", "gauge"),
        ] {
            assert_eq!(x.types.get(family).map(String::as_str), Some(kind), "{family}");
        }
        assert_eq!(
            x.help["tailguard_reviews"],
            "Admission requests answered, by endpoint and result."
        );

        // Every (endpoint, result) pair exists from the start.
        let reviews =
            |endpoint, result| x.get("tailguard_reviews_total", &[("endpoint", endpoint), ("result", result)]);
        assert_eq!(reviews("mutate", "allowed"), Some(1.0));
        assert_eq!(reviews("mutate", "denied"), Some(1.0));
        assert_eq!(reviews("mutate", "error"), Some(0.0));
        assert_eq!(reviews("validate", "allowed"), Some(0.0));
        assert_eq!(x.series("tailguard_reviews_total").len(), 6);

        // Every (rule, severity) pair and every rule, at 0 unless counted.
        assert_eq!(x.series("tailguard_findings_total").len(), RuleId::ALL.len() * 2);
        assert_eq!(x.series("tailguard_would_deny_total").len(), RuleId::ALL.len());
        for rule in RuleId::ALL {
            let counted = rule == RuleId::ALL[1];
            let findings = x.get(
                "tailguard_findings_total",
                &[("rule", rule.name()), ("severity", "deny")],
            );
            assert_eq!(findings, Some(f64::from(u8::from(counted))), "{rule:?}");
            assert_eq!(
                x.get(
                    "tailguard_findings_total",
                    &[("rule", rule.name()), ("severity", "warn")]
                ),
                Some(0.0)
            );
            assert_eq!(
                x.get("tailguard_would_deny_total", &[("rule", rule.name())]),
                Some(f64::from(u8::from(counted)))
            );
        }

        // The histogram: the same bounds, cumulative, +Inf = count.
        for endpoint in ["validate", "mutate"] {
            let buckets: Vec<(String, f64)> = x
                .series("tailguard_review_duration_seconds_bucket")
                .into_iter()
                .filter(|s| s.labels["endpoint"] == endpoint)
                .map(|s| (s.labels["le"].clone(), s.value))
                .collect();
            let bounds: Vec<f64> = buckets
                .iter()
                .map(|(le, _)| {
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().expect("le")
                    }
                })
                .collect();
            let expected: Vec<f64> = DURATION_BUCKETS.iter().copied().chain([f64::INFINITY]).collect();
            assert_eq!(bounds, expected, "{endpoint}");
            assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
            let count = x.get("tailguard_review_duration_seconds_count", &[("endpoint", endpoint)]);
            assert_eq!(buckets.last().map(|b| b.1), count);
            let sum = x.get("tailguard_review_duration_seconds_sum", &[("endpoint", endpoint)]);
            if endpoint == "mutate" {
                assert_eq!(count, Some(2.0));
                assert!(sum.is_some_and(|s| (s - 0.0032).abs() < 1e-9), "{sum:?}");
                let le = |bound: &str| buckets.iter().find(|(le, _)| le == bound).map(|b| b.1);
                assert_eq!(le("0.0001"), Some(0.0));
                assert_eq!(le("0.00025"), Some(1.0));
                assert_eq!(le("0.0025"), Some(1.0));
                assert_eq!(le("0.005"), Some(2.0));
            } else {
                assert_eq!((count, sum), (Some(0.0), Some(0.0)));
            }
        }

        assert_eq!(
            x.get("tailguard_tls_reloads_total", &[("result", "success")]),
            Some(0.0)
        );
        assert_eq!(
            x.get("tailguard_tls_reloads_total", &[("result", "failure")]),
            Some(1.0)
        );
        assert_eq!(x.get("tailguard_tls_handshake_failures_total", &[]), Some(1.0));
        assert_eq!(
            x.get("tailguard_tls_cert_expiry_timestamp_seconds", &[]),
            Some(1_900_000_000.0)
        );
        assert_eq!(x.get("tailguard_connections_open", &[]), Some(1.0));
        assert_eq!(x.get("tailguard_connections_total", &[]), Some(2.0));
        assert_eq!(x.get("tailguard_namespace_cache_ready", &[]), Some(1.0));
        assert_eq!(m.tls_reloads(), (0, 1));

        // Nothing of the audit until it is attached.
        assert!(!x.types.keys().any(|k| k.starts_with("tailguard_audit")));
    }

    #[test]
    fn process_metrics_come_from_proc_self() {
        let x = Exposition::parse(&Metrics::new(&[]).render());
        assert_eq!(x.types.get("process_cpu_seconds").map(String::as_str), Some("counter"));
        for gauge in [
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            assert_eq!(x.types.get(gauge).map(String::as_str), Some("gauge"), "{gauge}");
        }
        let value = |name| x.get(name, &[]).unwrap_or_else(|| panic!("no {name}"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_resident_memory_bytes") > 1024.0 * 1024.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 24.0 * 3600.0,
            "{started} vs {now}"
        );
    }

    #[test]
    fn proc_parsers() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 1234 567890 89 18446744073709551615";
        let fields = stat_fields(stat).expect("fields");
        assert_eq!(fields[0], "S");
        assert_eq!(fields[STAT_UTIME], "7");
        assert_eq!(fields[STAT_STIME], "3");
        assert_eq!(fields[STAT_THREADS], "5");
        assert_eq!(fields[STAT_STARTTIME], "1234");
        assert_eq!(fields[STAT_VSIZE], "567890");
        assert_eq!(fields[STAT_RSS], "89");
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files("Max open files            unlimited            unlimited            files"),
            None
        );
        let word = |n: usize| n.to_ne_bytes();
        let auxv: Vec<u8> = [
            word(AT_PAGESZ),
            word(16384),
            word(AT_CLKTCK),
            word(250),
            word(0),
            word(0),
        ]
        .concat();
        assert_eq!(auxv_value(&auxv, AT_PAGESZ), Some(16384));
        assert_eq!(auxv_value(&auxv, AT_CLKTCK), Some(250));
        assert_eq!(auxv_value(&auxv, 99), None);
    }
}
