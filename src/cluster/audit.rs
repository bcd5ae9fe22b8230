//! The cluster side of the audit: list what exists (paged, so thousands of
//! workloads stay cheap), judge it with `crate::audit`, and publish the
//! result: `tailguard audit` prints it; `serve --audit-interval` keeps gauges
//! and, with `--policy-reports`, one `wgpolicyk8s.io/v1alpha2` PolicyReport
//! per namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    crate::certs::unix_seconds(SystemTime::now())
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

/// The labels of `tailguard_audit_violations`, in this order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, EncodeLabelSet)]
struct ViolationLabels {
    rule: String,
    namespace: String,
    kind: String,
    severity: Severity,
}

/// The background audit's latest result: gauges that join the `/metrics`
/// registry as a collector (`Metrics::attach_audit`). Nothing is reported
/// before the first audit has finished.
#[derive(Debug, Default)]
pub struct AuditState {
    violations: Family<ViolationLabels, Gauge>,
    /// The label sets of `violations`, to drop those the next audit no longer finds.
    published: Mutex<BTreeSet<ViolationLabels>>,
    objects: Gauge,
    errors: Gauge,
    last_run: Gauge,
    duration: Gauge<f64, AtomicU64>,
    policy_reports_ok: Gauge,
    /// An audit has finished.
    ran: AtomicBool,
    /// That audit wrote PolicyReports (so `policy_reports_ok` means something).
    wrote_reports: AtomicBool,
}

impl AuditState {
    /// Replaces the gauges with what `report` found (also called by the metrics tests).
    pub(crate) fn publish(&self, report: &AuditReport, seconds: f64, reports_written: Option<Result<usize, String>>) {
        let counts: BTreeMap<ViolationLabels, u64> = report
            .counts()
            .into_iter()
            .map(|((namespace, rule, kind, severity), n)| {
                let labels = ViolationLabels {
                    rule,
                    namespace,
                    kind,
                    severity,
                };
                (labels, n)
            })
            .collect();
        {
            // Replaces the series without a moment where none exist: a
            // workload fixed since the last run loses its series, the others
            // keep theirs with the new count.
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            for (labels, n) in &counts {
                self.violations
                    .get_or_create(labels)
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            for gone in published.iter().filter(|l| !counts.contains_key(*l)) {
                self.violations.remove(gone);
            }
            *published = counts.into_keys().collect();
        }
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.objects.set(count(report.tailscale_objects));
        self.errors.set(count(report.errors.len()));
        self.last_run.set(now_seconds());
        self.duration.set((seconds * 1000.0).round() / 1000.0);
        if let Some(written) = &reports_written {
            self.policy_reports_ok.set(i64::from(written.is_ok()));
        }
        self.wrote_reports.store(reports_written.is_some(), Ordering::Relaxed);
        self.ran.store(true, Ordering::Release);
    }
}

impl Collector for AuditState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if !self.ran.load(Ordering::Acquire) {
            return Ok(());
        }
        fn one(
            encoder: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            metric: &impl EncodeMetric,
        ) -> std::fmt::Result {
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        }
        let e = &mut encoder;
        one(
            e,
            "tailguard_audit_violations",
            "Findings on existing workloads at the last background audit.",
            &self.violations,
        )?;
        one(
            e,
            "tailguard_audit_objects",
            "Workloads with a Tailscale container at the last background audit.",
            &self.objects,
        )?;
        one(
            e,
            "tailguard_audit_errors",
            "Objects or kinds the last background audit could not read.",
            &self.errors,
        )?;
        one(
            e,
            "tailguard_audit_last_run_timestamp_seconds",
            "When the last background audit finished.",
            &self.last_run,
        )?;
        one(
            e,
            "tailguard_audit_duration_seconds",
            "How long the last background audit took.",
            &self.duration,
        )?;
        if self.wrote_reports.load(Ordering::Relaxed) {
            one(
                e,
                "tailguard_audit_policy_reports_ok",
                "Whether the last PolicyReport update succeeded.",
                &self.policy_reports_ok,
            )?;
        }
        Ok(())
    }
}

/// `serve --audit-interval`: audits at start, then every `interval` and
/// whenever the policy changes (a reloaded policy file), each time under the
/// policy served then.
pub async fn run_periodically(
    client: kube::Client,
    mut policy: tokio::sync::watch::Receiver<Arc<Config>>,
    interval: Duration,
    write_reports: bool,
    state: Arc<AuditState>,
) {
    loop {
        let config = policy.borrow_and_update().clone();
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
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            // A change while this audit ran counts too. (If the sender were
            // gone, this branch is disabled and the interval alone applies.)
            Ok(()) = policy.changed() => tracing::info!("audit: the policy changed; auditing again under it"),
        }
    }
}
