//! The review decision as a pure function: AdmissionReview bytes in, bytes out.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::{Value, json};
use tailguard::admission::{NamespaceSource, NoCluster, Outcome, ReviewError, Verdict, mutate, validate};
use tailguard::config::{Config, Enforcement};
use tailguard::rules::{NamespaceFacts, RuleId, Severity};

use crate::support::{self, Review, review::UID};

fn fixture_object(rel: &str) -> Value {
    support::documents(&format!("tests/fixtures/{rel}"))
        .pop()
        .expect("a document")
}

/// A review of `object` in namespace tailscale-system.
fn review(operation: &str, object: Value) -> Vec<u8> {
    Review::new(operation, object).namespace("tailscale-system").to_vec()
}

fn response(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).expect("response JSON");
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], UID);
    v["response"].clone()
}

#[test]
fn broken_daemonset_is_denied_with_every_deny_finding() {
    let out = validate(
        &review("CREATE", fixture_object("incident/01-original.yaml")),
        &Config::default(),
        &NoCluster,
    )
    .expect("reviewed");
    let r = response(&out.body);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    let message = r["status"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("tailguard denied DaemonSet/tailscale-system/tailscale-worker:"),
        "{message}"
    );
    assert!(
        message.contains("[exit-node-hostname] spec.template.spec.containers[0].env[4].value"),
        "{message}"
    );
    assert!(
        message.contains("[unexpanded-variable]") && message.contains("[probe-shell]"),
        "{message}"
    );
    assert!(message.contains("Fix: "), "{message}");
    assert!(!out.verdict.allowed());
}

#[test]
fn fixed_daemonset_is_allowed_and_warnings_are_returned() {
    let out = validate(
        &review("CREATE", fixture_object("incident/05-final.yaml")),
        &Config::default(),
        &NoCluster,
    )
    .expect("reviewed");
    let r = response(&out.body);
    assert_eq!(r["allowed"], true);
    assert!(r.get("status").is_none());
    let warn = validate(
        &review("UPDATE", fixture_object("rules/resources/fail-no-limits.yaml")),
        &Config::default(),
        &NoCluster,
    )
    .expect("reviewed");
    let r = response(&warn.body);
    assert_eq!(r["allowed"], true);
    let warnings = r["warnings"].as_array().expect("warnings");
    assert!(
        warnings[0]
            .as_str()
            .is_some_and(|w| w.starts_with("tailguard: [resources]")),
        "{warnings:?}"
    );
}

#[test]
fn deletes_non_workloads_and_terminating_objects_are_allowed() {
    let object = fixture_object("incident/01-original.yaml");
    let r = response(
        &validate(&review("DELETE", object.clone()), &Config::default(), &NoCluster)
            .expect("ok")
            .body,
    );
    assert_eq!(r["allowed"], true);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "$(X)"}});
    let r = response(
        &validate(&review("CREATE", cm), &Config::default(), &NoCluster)
            .expect("ok")
            .body,
    );
    assert_eq!(r["allowed"], true);
    let mut terminating = object;
    terminating["metadata"]["deletionTimestamp"] = json!("2026-11-25T10:00:00Z");
    let r = response(
        &validate(&review("UPDATE", terminating), &Config::default(), &NoCluster)
            .expect("ok")
            .body,
    );
    assert_eq!(r["allowed"], true, "finalizer removal must not be blocked");
}

#[test]
fn malformed_reviews_are_errors_not_panics() {
    let config = Config::default();
    assert!(matches!(validate(b"", &config, &NoCluster), Err(ReviewError::Json(_))));
    assert!(matches!(
        validate(b"{not json", &config, &NoCluster),
        Err(ReviewError::Json(_))
    ));
    assert!(matches!(
        validate(b"[1,2]", &config, &NoCluster),
        Err(ReviewError::Json(_))
    ));
    let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#;
    assert!(matches!(
        validate(v1beta1, &config, &NoCluster),
        Err(ReviewError::Version { .. })
    ));
    let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    assert!(matches!(
        validate(no_request, &config, &NoCluster),
        Err(ReviewError::NoRequest)
    ));
    let mut body: Value = serde_json::from_slice(&review("CREATE", json!({"kind": "Pod"}))).expect("json");
    body["request"]["uid"] = json!("");
    assert!(matches!(
        validate(&serde_json::to_vec(&body).expect("json"), &config, &NoCluster),
        Err(ReviewError::NoUid)
    ));
}

#[test]
fn an_unreadable_workload_is_refused_with_the_reason() {
    let pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "not-a-list"}});
    let out = validate(&review("CREATE", pod), &Config::default(), &NoCluster).expect("reviewed");
    let r = response(&out.body);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 400);
    assert!(
        r["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not read this Pod"))
    );
}

struct Baseline;
impl NamespaceSource for Baseline {
    fn namespace(&self, name: &str) -> NamespaceFacts {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "baseline"},
                         "annotations": {"tailguard.io/skip-rules": "host-network, resources"}}
        }))
        .expect("namespace");
        NamespaceFacts::Known(Arc::new(ns))
    }
}

#[test]
fn namespace_facts_drive_pod_security_and_skip_rules() {
    let object = fixture_object("incident/05-final.yaml");
    let config = Config::default();
    let out = validate(&review("CREATE", object.clone()), &config, &Baseline).expect("reviewed");
    assert!(!out.verdict.allowed());
    assert!(
        out.verdict
            .findings
            .iter()
            .any(|f| f.rule.name() == "pod-security-level")
    );
    let out = validate(
        &review(
            "CREATE",
            fixture_object("rules/host-network/fail-kernel-daemonset-pod-network.yaml"),
        ),
        &config,
        &Baseline,
    )
    .expect("reviewed");
    assert!(
        !out.verdict.findings.iter().any(|f| f.rule.name() == "host-network"),
        "skipped by annotation"
    );
    let unknown = validate(&review("CREATE", object), &config, &NoCluster).expect("reviewed");
    assert!(
        unknown.verdict.allowed(),
        "without namespace facts the namespace rule is skipped, not guessed"
    );
}

fn update_review(old: Value, new: Value) -> Vec<u8> {
    Review::new("UPDATE", new)
        .namespace("tailscale-system")
        .old_object(old)
        .to_vec()
}

#[test]
fn an_update_is_refused_only_for_violations_it_introduces() {
    let config = Config::default();
    let good = fixture_object("incident/05-final.yaml");
    let broken = fixture_object("incident/02-hostname-flag-removed.yaml");
    // Introducing a violation: refused.
    let out = validate(&update_review(good.clone(), broken.clone()), &config, &NoCluster).expect("reviewed");
    assert!(!out.verdict.allowed());
    // Already broken before (e.g. admitted before tailguard or a new rule): the update
    // (a scale, a label, a partial fix) goes through, with the violation as a warning.
    let mut relabelled = broken.clone();
    relabelled["metadata"]["labels"] = json!({"team": "net"});
    let out = validate(&update_review(broken.clone(), relabelled), &config, &NoCluster).expect("reviewed");
    assert!(out.verdict.allowed(), "{:?}", out.verdict.findings);
    let r = response(&out.body);
    let warnings = r["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.contains("[exit-node-hostname]") && w.contains("already present"))),
        "{warnings:?}"
    );
    // A new violation next to an old one is still refused.
    let mut worse = broken.clone();
    worse["spec"]["template"]["spec"]["containers"][0]["image"] = json!("tailscale/tailscale:latest");
    worse["spec"]["template"]["spec"]["containers"][0]["env"][0] =
        json!({"name": "TS_AUTHKEY", "value": "tskey-auth-x"});
    let out = validate(&update_review(broken, worse), &config, &NoCluster).expect("reviewed");
    assert!(!out.verdict.allowed());
    assert!(
        out.verdict
            .findings
            .iter()
            .any(|f| f.rule.name() == "literal-auth-key" && f.severity == tailguard::rules::Severity::Deny)
    );
}

// --- enforcement modes (deny | warn | audit) ---

const WOULD_DENY: &str = "tailguard would deny (enforcement: warn): ";

/// A synced namespace cache whose namespace carries `tailguard.io/enforcement`
/// (or nothing), and no other label or annotation.
struct Enforced(Option<&'static str>);
impl NamespaceSource for Enforced {
    fn namespace(&self, name: &str) -> NamespaceFacts {
        let annotations = match self.0 {
            Some(mode) => json!({"tailguard.io/enforcement": mode}),
            None => json!({}),
        };
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}})).expect("namespace");
        NamespaceFacts::Known(Arc::new(ns))
    }
}

/// A cache that has not synced: namespaces are unknown.
struct NotSynced;
impl NamespaceSource for NotSynced {
    fn namespace(&self, _: &str) -> NamespaceFacts {
        NamespaceFacts::Unknown
    }
    fn unavailable(&self) -> Option<&'static str> {
        Some("the namespace cache has not synced yet")
    }
}

fn policy(enforcement: &str) -> Config {
    Config::from_yaml(&format!("enforcement: {enforcement}\n")).expect("valid config")
}

fn warnings_of(r: &Value) -> Vec<String> {
    r["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn rule_names(rules: &[RuleId]) -> Vec<&'static str> {
    rules.iter().map(|r| r.name()).collect()
}

/// The rules of the deny findings, each once: what an admitting mode lets through.
fn deny_rules(verdict: &Verdict) -> Vec<RuleId> {
    let mut rules = Vec::new();
    for f in verdict.findings.iter().filter(|f| f.severity == Severity::Deny) {
        if !rules.contains(&f.rule) {
            rules.push(f.rule);
        }
    }
    rules
}

/// (violating create, clean create, update introducing violations) of the same DaemonSet.
fn enforcement_cases() -> [(&'static str, Vec<u8>); 3] {
    let good = fixture_object("incident/05-final.yaml");
    let broken = fixture_object("incident/02-hostname-flag-removed.yaml");
    [
        (
            "violating",
            review("CREATE", fixture_object("incident/01-original.yaml")),
        ),
        ("clean", review("CREATE", good.clone())),
        ("update", update_review(good, broken)),
    ]
}

#[test]
fn enforcement_deny_refuses_violations_as_before() {
    for (case, body) in enforcement_cases() {
        let out = validate(&body, &policy("deny"), &NoCluster).expect("reviewed");
        let default = validate(&body, &Config::default(), &NoCluster).expect("reviewed");
        assert_eq!(out.body, default.body, "{case}: deny is the default");
        let r = response(&out.body);
        assert_eq!(out.verdict.enforcement, Some(Enforcement::Deny), "{case}");
        assert!(out.verdict.would_deny.is_empty(), "{case}");
        assert!(!warnings_of(&r).iter().any(|w| w.starts_with(WOULD_DENY)), "{case}");
        if case == "clean" {
            assert_eq!(r["allowed"], true, "{case}");
        } else {
            assert_eq!(r["allowed"], false, "{case}");
            assert_eq!(r["status"]["code"], 403, "{case}");
        }
    }
}

#[test]
fn enforcement_warn_admits_and_warns_about_every_would_be_denial() {
    for (case, body) in enforcement_cases() {
        let out = validate(&body, &policy("warn"), &NoCluster).expect("reviewed");
        let r = response(&out.body);
        assert_eq!(r["allowed"], true, "{case}");
        assert!(r.get("status").is_none(), "{case}");
        assert_eq!(out.verdict.enforcement, Some(Enforcement::Warn), "{case}");
        // The findings keep their deny severity; the mode is what let them through.
        assert_eq!(out.verdict.would_deny, deny_rules(&out.verdict), "{case}");
        let warnings = warnings_of(&r);
        let would: Vec<&String> = warnings.iter().filter(|w| w.starts_with(WOULD_DENY)).collect();
        // One warning per rule, with the fix.
        assert_eq!(would.len(), out.verdict.would_deny.len(), "{case}: {warnings:?}");
        for (warning, rule) in would.iter().zip(&out.verdict.would_deny) {
            assert!(
                warning.starts_with(&format!("{WOULD_DENY}[{rule}] spec.template.spec.")),
                "{warning}"
            );
            assert!(warning.contains(" Fix: "), "{warning}");
        }
        match case {
            "violating" => assert_eq!(
                rule_names(&out.verdict.would_deny),
                ["unexpanded-variable", "probe-shell", "exit-node-hostname"]
            ),
            "clean" => {
                assert!(out.verdict.would_deny.is_empty() && warnings.is_empty(), "{warnings:?}");
            }
            _ => assert_eq!(
                rule_names(&out.verdict.would_deny),
                ["probe-shell", "exit-node-hostname"],
                "only what the update introduces"
            ),
        }
    }
}

#[test]
fn enforcement_audit_admits_silently_but_keeps_warn_findings() {
    for (case, body) in enforcement_cases() {
        let out = validate(&body, &policy("audit"), &NoCluster).expect("reviewed");
        let r = response(&out.body);
        assert_eq!(r["allowed"], true, "{case}");
        assert!(r.get("status").is_none(), "{case}");
        assert_eq!(out.verdict.enforcement, Some(Enforcement::Audit), "{case}");
        assert_eq!(out.verdict.would_deny, deny_rules(&out.verdict), "{case}");
        assert_eq!(out.verdict.would_deny.is_empty(), case == "clean", "{case}");
        assert!(r.get("warnings").is_none(), "{case}: audit records only");
    }
    // A rule set to warn still warns in audit mode.
    let config = Config::from_yaml("enforcement: audit\nrules:\n  probe-shell: warn\n").expect("valid config");
    let out = validate(
        &review("CREATE", fixture_object("incident/01-original.yaml")),
        &config,
        &NoCluster,
    )
    .expect("reviewed");
    let warnings = warnings_of(&response(&out.body));
    assert!(out.verdict.allowed());
    assert_eq!(
        rule_names(&out.verdict.would_deny),
        ["unexpanded-variable", "exit-node-hostname"]
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("tailguard: [probe-shell] "), "{warnings:?}");
}

#[test]
fn enforcement_applies_after_the_update_downgrade_of_existing_violations() {
    // Already broken, relabelled: nothing would be denied in any mode, the
    // existing violations are ordinary warnings.
    let broken = fixture_object("incident/02-hostname-flag-removed.yaml");
    let mut relabelled = broken.clone();
    relabelled["metadata"]["labels"] = json!({"team": "net"});
    let body = update_review(broken, relabelled);
    for mode in ["deny", "warn", "audit"] {
        let out = validate(&body, &policy(mode), &NoCluster).expect("reviewed");
        assert!(out.verdict.allowed(), "{mode}");
        assert!(out.verdict.would_deny.is_empty(), "{mode}");
        let warnings = warnings_of(&response(&out.body));
        assert!(!warnings.is_empty(), "{mode}");
        assert!(
            warnings
                .iter()
                .all(|w| w.starts_with("tailguard: [") && w.contains("already present")),
            "{mode}: {warnings:?}"
        );
    }
}

#[test]
fn namespace_annotation_overrides_the_policy_both_ways() {
    let violating = review("CREATE", fixture_object("incident/01-original.yaml"));
    // Policy deny, namespace audit: admitted, recorded.
    let out = validate(&violating, &policy("deny"), &Enforced(Some("audit"))).expect("reviewed");
    assert!(out.verdict.allowed());
    assert_eq!(out.verdict.enforcement, Some(Enforcement::Audit));
    assert_eq!(out.verdict.would_deny.len(), 3);
    assert!(response(&out.body).get("warnings").is_none());
    // Policy audit, namespace deny: refused.
    let out = validate(&violating, &policy("audit"), &Enforced(Some("deny"))).expect("reviewed");
    assert!(!out.verdict.allowed());
    assert_eq!(out.verdict.enforcement, Some(Enforcement::Deny));
    assert!(out.verdict.would_deny.is_empty());
    assert_eq!(response(&out.body)["status"]["code"], 403);
    // Policy audit, namespace warn.
    let out = validate(&violating, &policy("audit"), &Enforced(Some("warn"))).expect("reviewed");
    assert!(out.verdict.allowed());
    assert_eq!(out.verdict.enforcement, Some(Enforcement::Warn));
    let warnings = warnings_of(&response(&out.body));
    assert_eq!(warnings.iter().filter(|w| w.starts_with(WOULD_DENY)).count(), 3);
    // A namespace without the annotation gets the policy's mode.
    let out = validate(&violating, &policy("warn"), &Enforced(None)).expect("reviewed");
    assert_eq!(out.verdict.enforcement, Some(Enforcement::Warn));
    assert!(out.verdict.allowed());
}

#[test]
fn an_invalid_enforcement_annotation_is_ignored_with_a_warning() {
    let violating = review("CREATE", fixture_object("incident/01-original.yaml"));
    let expected = |mode: &str| {
        format!(
            "tailguard: annotation tailguard.io/enforcement=\"maybe\" on namespace tailscale-system is not deny|warn|audit; using {mode}"
        )
    };
    // Policy warn: still warn (not refused, not silenced), and the owner is told.
    let out = validate(&violating, &policy("warn"), &Enforced(Some("maybe"))).expect("reviewed");
    assert!(out.verdict.allowed());
    assert_eq!(out.verdict.enforcement, Some(Enforcement::Warn));
    assert_eq!(out.verdict.would_deny.len(), 3);
    let warnings = warnings_of(&response(&out.body));
    assert!(warnings.contains(&expected("warn")), "{warnings:?}");
    assert_eq!(warnings.iter().filter(|w| w.starts_with(WOULD_DENY)).count(), 3);
    // Policy deny: still refused, with the same explanation.
    let out = validate(&violating, &policy("deny"), &Enforced(Some("maybe"))).expect("reviewed");
    assert!(!out.verdict.allowed());
    assert_eq!(out.verdict.enforcement, Some(Enforcement::Deny));
    assert!(warnings_of(&response(&out.body)).contains(&expected("deny")));
    // Policy audit: a typo of `deny` must not enforce less than the policy either.
    let out = validate(&violating, &policy("audit"), &Enforced(Some("Deny"))).expect("reviewed");
    assert!(out.verdict.allowed());
    assert_eq!(out.verdict.enforcement, Some(Enforcement::Audit));
    let warnings = warnings_of(&response(&out.body));
    assert_eq!(
        warnings,
        [
            "tailguard: annotation tailguard.io/enforcement=\"Deny\" on namespace tailscale-system is not deny|warn|audit; using audit"
        ]
    );
    // Objects tailguard's rules do not apply to are not bothered with it.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                     "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}});
    let out = validate(&review("CREATE", pod), &policy("deny"), &Enforced(Some("maybe"))).expect("reviewed");
    assert!(out.verdict.allowed());
    assert!(response(&out.body).get("warnings").is_none());
    // Surrounding whitespace is tolerated.
    let out = validate(&violating, &policy("deny"), &Enforced(Some(" warn\n"))).expect("reviewed");
    assert_eq!(out.verdict.enforcement, Some(Enforcement::Warn));
}

#[test]
fn an_unknown_namespace_gets_the_policy_mode() {
    let violating = review("CREATE", fixture_object("incident/01-original.yaml"));
    for mode in Enforcement::ALL {
        let config = policy(mode.as_str());
        let out = validate(&violating, &config, &NoCluster).expect("reviewed");
        assert_eq!(out.verdict.enforcement, Some(mode));
        assert_eq!(out.verdict.allowed(), mode != Enforcement::Deny, "{mode}");
        let out = validate(&violating, &config, &NotSynced).expect("reviewed");
        assert_eq!(out.verdict.enforcement, Some(mode));
        assert_eq!(out.verdict.allowed(), mode != Enforcement::Deny, "{mode}");
        let warnings = warnings_of(&response(&out.body));
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("tailguard.io/enforcement were not applied")),
            "{warnings:?}"
        );
    }
}

#[test]
fn enforcement_modes_do_not_soften_unreadable_objects_or_injection_denials() {
    let pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "not-a-list"}});
    for mode in ["warn", "audit"] {
        let out = validate(&review("CREATE", pod.clone()), &policy(mode), &Enforced(Some(mode))).expect("reviewed");
        assert!(
            matches!(out.verdict.outcome, Outcome::Unreadable(_)),
            "{mode}: an unreadable object is still refused"
        );
        assert_eq!(response(&out.body)["status"]["code"], 400);
        assert_eq!(out.verdict.enforcement, None);
        // An injection the pod asked for but cannot get is not a rule finding either.
        let asks = json!({"apiVersion": "v1", "kind": "Pod",
                          "metadata": {"name": "web", "labels": {"tailguard.io/inject": "maybe"}},
                          "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}});
        let out = mutate(&review("CREATE", asks), &policy(mode), &Enforced(Some(mode))).expect("reviewed");
        assert!(
            !out.verdict.allowed(),
            "{mode}: an invalid injection label is still refused"
        );
        assert!(matches!(out.verdict.outcome, Outcome::Refused(_)) && out.verdict.would_deny.is_empty());
    }
}
