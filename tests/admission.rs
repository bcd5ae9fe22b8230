//! The review decision as a pure function: AdmissionReview bytes in, bytes out.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::{Value, json};
use tailguard::admission::{NamespaceSource, NoCluster, ReviewError, validate};
use tailguard::config::Config;
use tailguard::rules::NamespaceFacts;

fn fixture_object(rel: &str) -> Value {
    let text =
        std::fs::read_to_string(format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))).expect("fixture");
    let (docs, _) = tailguard::manifest::parse_stream(rel, &text);
    docs.into_iter().last().expect("a document").object
}

fn review(operation: &str, object: Value) -> Vec<u8> {
    let kind = object["kind"].as_str().unwrap_or("Pod").to_owned();
    let group = if kind == "Pod" { "" } else { "apps" };
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": "daemonsets"},
            "namespace": "tailscale-system",
            "operation": operation,
            "userInfo": {"username": "admin"},
            "object": object,
            "oldObject": null,
            "dryRun": false
        }
    }))
    .expect("json")
}

fn response(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).expect("response JSON");
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
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
    assert!(!out.verdict.allowed);
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
    assert!(!out.verdict.allowed);
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
        unknown.verdict.allowed,
        "without namespace facts the namespace rule is skipped, not guessed"
    );
}

fn update_review(old: Value, new: Value) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&review("UPDATE", new)).expect("json");
    body["request"]["oldObject"] = old;
    serde_json::to_vec(&body).expect("json")
}

#[test]
fn an_update_is_refused_only_for_violations_it_introduces() {
    let config = Config::default();
    let good = fixture_object("incident/05-final.yaml");
    let broken = fixture_object("incident/02-hostname-flag-removed.yaml");
    // Introducing a violation: refused.
    let out = validate(&update_review(good.clone(), broken.clone()), &config, &NoCluster).expect("reviewed");
    assert!(!out.verdict.allowed);
    // Already broken before (e.g. admitted before tailguard or a new rule): the update
    // (a scale, a label, a partial fix) goes through, with the violation as a warning.
    let mut relabelled = broken.clone();
    relabelled["metadata"]["labels"] = json!({"team": "net"});
    let out = validate(&update_review(broken.clone(), relabelled), &config, &NoCluster).expect("reviewed");
    assert!(out.verdict.allowed, "{:?}", out.verdict.findings);
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
    assert!(!out.verdict.allowed);
    assert!(
        out.verdict
            .findings
            .iter()
            .any(|f| f.rule.name() == "literal-auth-key" && f.severity == tailguard::rules::Severity::Deny)
    );
}
