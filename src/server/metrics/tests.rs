//! Tests of the metrics: the exposition read back with a small OpenMetrics parser.
use std::collections::BTreeMap;

use std::time::{SystemTime, UNIX_EPOCH};

use super::process::*;
use super::*;
use crate::audit::{AuditReport, Audited, ObjectRef};
use crate::cluster::audit::AuditState;

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
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
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
    m.config_reloaded(true);
    m.config_reloaded(false);
    m.set_config_loaded(u64::MAX, 1_800_000_000);
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
        ("tailguard_config_reloads", "counter"),
        ("tailguard_config_last_reload_successful", "gauge"),
        ("tailguard_config_last_reload_success_timestamp_seconds", "gauge"),
        ("tailguard_config_hash", "gauge"),
    ] {
        assert_eq!(x.types.get(family).map(String::as_str), Some(kind), "{family}");
    }
    assert_eq!(
        x.help["tailguard_reviews"],
        "Admission requests answered, by endpoint and result."
    );

    // Every (endpoint, result) pair exists from the start.
    let reviews = |endpoint, result| x.get("tailguard_reviews_total", &[("endpoint", endpoint), ("result", result)]);
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
    // The last policy change did not load: counted, and the gauge says so.
    let config_reloads = |result| x.get("tailguard_config_reloads_total", &[("result", result)]);
    assert_eq!(
        (config_reloads("success"), config_reloads("failure")),
        (Some(1.0), Some(1.0))
    );
    assert_eq!(x.get("tailguard_config_last_reload_successful", &[]), Some(0.0));
    assert_eq!(
        x.get("tailguard_config_last_reload_success_timestamp_seconds", &[]),
        Some(1_800_000_000.0)
    );
    // 53 bits, exact as a float.
    assert_eq!(x.get("tailguard_config_hash", &[]), Some(((1_u64 << 53) - 1) as f64));
    assert_eq!(m.config_reloads(), (1, 1));

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

// --- the background audit's gauges (cluster::audit::AuditState) ---

fn audited(namespace: &str, kind: &str, name: &str, rule: RuleId) -> Audited {
    Audited {
        object: format!("{kind}/{namespace}/{name}"),
        target: ObjectRef {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
        },
        finding: Finding {
            rule,
            severity: Severity::Deny,
            path: String::new(),
            message: String::new(),
            hint: String::new(),
        },
    }
}

#[test]
fn audit_gauges_join_the_registry_and_drop_fixed_workloads() {
    let metrics = Metrics::new(&["validate"]);
    let state = Arc::new(AuditState::default());
    metrics.attach_audit(state.clone());
    assert!(
        !metrics.render().contains("tailguard_audit"),
        "nothing before the first run"
    );

    let rule = RuleId::ALL[0];
    let series = |ns: &str| {
        format!(
            "tailguard_audit_violations{{rule=\"{}\",namespace=\"{ns}\",kind=\"DaemonSet\",severity=\"deny\"}}",
            rule.name()
        )
    };
    let mut report = AuditReport {
        findings: vec![
            audited("legacy", "DaemonSet", "a", rule),
            audited("legacy", "DaemonSet", "b", rule),
            audited("other", "DaemonSet", "c", rule),
        ],
        tailscale_objects: 4,
        errors: vec!["cannot list pods".into()],
        ..AuditReport::default()
    };
    state.publish(&report, 0.25, None);
    let text = metrics.render();
    assert!(text.contains(&format!("{} 2\n", series("legacy"))), "{text}");
    assert!(text.contains(&format!("{} 1\n", series("other"))), "{text}");
    assert!(text.contains("\ntailguard_audit_objects 4\n"), "{text}");
    assert!(text.contains("\ntailguard_audit_errors 1\n"), "{text}");
    assert!(text.contains("\ntailguard_audit_duration_seconds 0.25\n"), "{text}");
    assert!(text.contains("\ntailguard_audit_last_run_timestamp_seconds "), "{text}");
    assert!(!text.contains("tailguard_audit_policy_reports_ok"), "{text}");
    assert!(text.ends_with("# EOF\n"));

    // `legacy` fixed: its series goes, `other` keeps its own.
    report.findings.retain(|f| f.target.namespace == "other");
    report.errors.clear();
    state.publish(&report, 0.5, Some(Err("forbidden".into())));
    let text = metrics.render();
    assert!(!text.contains("namespace=\"legacy\""), "{text}");
    assert!(text.contains(&format!("{} 1\n", series("other"))), "{text}");
    assert!(text.contains("\ntailguard_audit_errors 0\n"), "{text}");
    assert!(text.contains("\ntailguard_audit_policy_reports_ok 0\n"), "{text}");
    assert_eq!(text.matches("# TYPE tailguard_audit_violations gauge\n").count(), 1);
}
