//! The cluster side of the audit: list what exists (paged, so thousands of
//! workloads stay cheap), judge it with `crate::audit`, and publish the
//! result: `tailguard audit` prints it; `serve --audit-interval` keeps gauges
//! and, with `--policy-reports`, one `wgpolicyk8s.io/v1alpha2` PolicyReport
//! per namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::audit::{AuditReport, ObjectRef, audit};
use crate::config::Config;
use crate::rules::Severity;

/// Objects per list call.
const PAGE: u32 = 500;
/// The kinds with a pod spec, as (group, version, kind, plural).
const KINDS: [(&str, &str, &str, &str); 7] = [
    ("apps", "v1", "Deployment", "deployments"),
    ("apps", "v1", "StatefulSet", "statefulsets"),
    ("apps", "v1", "DaemonSet", "daemonsets"),
    ("apps", "v1", "ReplicaSet", "replicasets"),
    ("batch", "v1", "Job", "jobs"),
    ("batch", "v1", "CronJob", "cronjobs"),
    ("", "v1", "Pod", "pods"),
];
const MANAGER: &str = "tailguard";
const REPORT_NAME: &str = "tailguard";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tailguard");

fn report_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
        "policyreports",
    )
}

/// Every page of one list.
async fn list_paged(api: &Api<DynamicObject>, ar: &ApiResource) -> Result<Vec<Value>, kube::Error> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = api.list(&params).await?;
        for item in page.items {
            let mut v = serde_json::to_value(&item).unwrap_or(Value::Null);
            // List items come without their type.
            v["apiVersion"] = json!(ar.api_version);
            v["kind"] = json!(ar.kind);
            out.push(v);
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// What exists: every object with a pod spec (in `namespace`, or all) and every
/// namespace; a kind that cannot be listed is an error and the rest goes on.
pub async fn list(
    client: &kube::Client,
    namespace: Option<&str>,
) -> (Vec<Value>, BTreeMap<String, Arc<Namespace>>, Vec<String>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (group, version, kind, plural) in KINDS {
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api = match namespace {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar),
            None => Api::<DynamicObject>::all_with(client.clone(), &ar),
        };
        match list_paged(&api, &ar).await {
            Ok(items) => objects.extend(items),
            Err(e) => errors.push(format!("cannot list {plural}: {e}")),
        }
    }
    let mut namespaces = BTreeMap::new();
    let api: Api<Namespace> = Api::all(client.clone());
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        match api.list(&params).await {
            Ok(page) => {
                for ns in page.items {
                    if let Some(name) = ns.metadata.name.clone() {
                        namespaces.insert(name, Arc::new(ns));
                    }
                }
                token = page.metadata.continue_.filter(|t| !t.is_empty());
                if token.is_none() {
                    break;
                }
            }
            Err(e) => {
                errors.push(format!(
                    "cannot list namespaces (namespace rules judge them as missing): {e}"
                ));
                break;
            }
        }
    }
    (objects, namespaces, errors)
}

/// Lists and judges.
pub async fn run_once(client: &kube::Client, namespace: Option<&str>, config: &Config) -> AuditReport {
    let (objects, namespaces, errors) = list(client, namespace).await;
    let mut report = audit(&objects, &namespaces, config);
    report.errors.extend(errors);
    report
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn resource(r: &ObjectRef) -> Value {
    json!({"apiVersion": r.api_version, "kind": r.kind, "namespace": r.namespace, "name": r.name, "uid": r.uid})
}

/// The PolicyReport of each namespace with a Tailscale workload: a `fail`
/// (deny) or `warn` result per finding, a `pass` per clean workload.
pub fn policy_reports(report: &AuditReport) -> BTreeMap<String, Value> {
    let now = now_seconds();
    let mut by_ns: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for f in &report.findings {
        let (result, severity) = match f.finding.severity {
            Severity::Deny => ("fail", "high"),
            Severity::Warn => ("warn", "medium"),
        };
        by_ns.entry(f.target.namespace.clone()).or_default().push(json!({
            "policy": "tailguard",
            "rule": f.finding.rule.to_string(),
            "result": result,
            "severity": severity,
            "category": "Tailscale",
            "source": "tailguard",
            "scored": true,
            "message": format!("{}: {} (fix: {})", f.finding.path, f.finding.message, f.finding.hint),
            "properties": {"path": f.finding.path},
            "resources": [resource(&f.target)],
            "timestamp": {"seconds": now, "nanos": 0},
        }));
    }
    for clean in &report.clean {
        by_ns.entry(clean.namespace.clone()).or_default().push(json!({
            "policy": "tailguard",
            "result": "pass",
            "source": "tailguard",
            "scored": true,
            "message": "no finding",
            "resources": [resource(clean)],
            "timestamp": {"seconds": now, "nanos": 0},
        }));
    }
    by_ns
        .into_iter()
        .map(|(ns, results)| {
            let count = |r: &str| results.iter().filter(|x| x["result"] == r).count();
            let doc = json!({
                "apiVersion": "wgpolicyk8s.io/v1alpha2",
                "kind": "PolicyReport",
                "metadata": {"name": REPORT_NAME, "namespace": ns, "labels": {MANAGED_BY.0: MANAGED_BY.1}},
                "summary": {"pass": count("pass"), "fail": count("fail"), "warn": count("warn"), "error": 0, "skip": 0},
                "results": results,
            });
            (ns, doc)
        })
        .collect()
}

/// Applies the reports; a namespace whose earlier tailguard report has no
/// Tailscale workload any more gets an empty one (nothing to report, not stale).
pub async fn write_policy_reports(client: &kube::Client, report: &AuditReport) -> Result<usize, kube::Error> {
    let ar = report_resource();
    let mut docs = policy_reports(report);
    let all = Api::<DynamicObject>::all_with(client.clone(), &ar);
    let existing = all
        .list(&ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)))
        .await?;
    let stale: BTreeSet<String> = existing
        .items
        .iter()
        .filter_map(|r| r.metadata.namespace.clone())
        .filter(|ns| !docs.contains_key(ns))
        .collect();
    for ns in stale {
        docs.insert(
            ns.clone(),
            json!({
                "apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
                "metadata": {"name": REPORT_NAME, "namespace": ns, "labels": {MANAGED_BY.0: MANAGED_BY.1}},
                "summary": {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0},
                "results": [],
            }),
        );
    }
    let params = PatchParams::apply(MANAGER).force();
    for (ns, doc) in &docs {
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
            .patch(REPORT_NAME, &params, &Patch::Apply(doc))
            .await?;
    }
    Ok(docs.len())
}

/// The background audit's latest result, for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditState {
    rendered: Mutex<String>,
}

impl AuditState {
    /// The audit's series, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.rendered.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn publish(&self, report: &AuditReport, seconds: f64, reports_written: Option<Result<usize, String>>) {
        let mut out = String::new();
        out.push_str(
            "# HELP tailguard_audit_violations Findings on existing workloads at the last background audit.\n",
        );
        out.push_str("# TYPE tailguard_audit_violations gauge\n");
        for ((ns, rule, kind, severity), n) in report.counts() {
            let _ = writeln!(
                out,
                "tailguard_audit_violations{{rule=\"{rule}\",namespace=\"{}\",kind=\"{kind}\",severity=\"{severity}\"}} {n}",
                ns.replace(['\\', '"', '\n'], "_")
            );
        }
        out.push_str(
            "# HELP tailguard_audit_objects Workloads with a Tailscale container at the last background audit.\n",
        );
        out.push_str("# TYPE tailguard_audit_objects gauge\n");
        let _ = writeln!(out, "tailguard_audit_objects {}", report.tailscale_objects);
        out.push_str("# HELP tailguard_audit_errors Objects or kinds the last background audit could not read.\n");
        out.push_str("# TYPE tailguard_audit_errors gauge\n");
        let _ = writeln!(out, "tailguard_audit_errors {}", report.errors.len());
        out.push_str("# HELP tailguard_audit_last_run_timestamp_seconds When the last background audit finished.\n");
        out.push_str("# TYPE tailguard_audit_last_run_timestamp_seconds gauge\n");
        let _ = writeln!(out, "tailguard_audit_last_run_timestamp_seconds {}", now_seconds());
        out.push_str("# HELP tailguard_audit_duration_seconds How long the last background audit took.\n");
        out.push_str("# TYPE tailguard_audit_duration_seconds gauge\n");
        let _ = writeln!(out, "tailguard_audit_duration_seconds {seconds:.3}");
        if let Some(written) = reports_written {
            out.push_str("# HELP tailguard_audit_policy_reports_ok Whether the last PolicyReport update succeeded.\n");
            out.push_str("# TYPE tailguard_audit_policy_reports_ok gauge\n");
            let _ = writeln!(out, "tailguard_audit_policy_reports_ok {}", u8::from(written.is_ok()));
        }
        if let Ok(mut r) = self.rendered.lock() {
            *r = out;
        }
    }
}

/// `serve --audit-interval`: audits at start and then every `interval`.
pub async fn run_periodically(
    client: kube::Client,
    config: Arc<Config>,
    interval: Duration,
    write_reports: bool,
    state: Arc<AuditState>,
) {
    loop {
        let started = std::time::Instant::now();
        let report = run_once(&client, None, &config).await;
        let written = if write_reports {
            Some(write_policy_reports(&client, &report).await.map_err(|e| e.to_string()))
        } else {
            None
        };
        let deny = report
            .findings
            .iter()
            .filter(|f| f.finding.severity == Severity::Deny)
            .count();
        match &written {
            Some(Err(e)) => tracing::warn!(error = %e, "audit: cannot write PolicyReports"),
            Some(Ok(n)) => tracing::debug!(reports = n, "audit: PolicyReports written"),
            None => {}
        }
        for e in &report.errors {
            tracing::warn!(error = %e, "audit: incomplete");
        }
        tracing::info!(
            objects = report.tailscale_objects,
            findings = report.findings.len(),
            deny,
            seconds = started.elapsed().as_secs_f64(),
            "audit finished"
        );
        state.publish(&report, started.elapsed().as_secs_f64(), written);
        tokio::time::sleep(interval).await;
    }
}
