//! The objects created through the apiserver: three pod shapes in two
//! namespaces, the same in every case.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

/// Labelled `tailguard.io/inject=enabled`: tailguard's mutating webhook sees its pods.
pub const OPTED_IN: &str = "bench-inject";
/// No label: only pods with a Tailscale container are sent (to /validate).
pub const PLAIN: &str = "bench-plain";
/// The label every created pod carries, to delete them all at once.
const LABEL: &str = "bench=overhead";

/// A pod shape: which webhook calls the apiserver makes for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A valid userspace Tailscale pod: sent to /validate.
    Tailscale,
    /// An app pod in the opted-in namespace: sent to /mutate; with tailguard the
    /// injected sidecar makes it a Tailscale pod, so /validate follows.
    AppOptedIn,
    /// An app pod elsewhere: the webhooks' selectors and matchConditions keep
    /// it from every webhook (the cost of having the configurations at all).
    AppNotSent,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Tailscale, Shape::AppOptedIn, Shape::AppNotSent];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Tailscale => "tailscale-pod",
            Shape::AppOptedIn => "app-pod-opted-in",
            Shape::AppNotSent => "app-pod-not-sent",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Shape::Tailscale => "Tailscale pod",
            Shape::AppOptedIn => "app pod, opted-in namespace",
            Shape::AppNotSent => "app pod, not opted in",
        }
    }

    /// Where the webhooks are called for it (with tailguard).
    pub fn endpoints(self) -> &'static str {
        match self {
            Shape::Tailscale => "/validate",
            Shape::AppOptedIn => "/mutate + /validate",
            Shape::AppNotSent => "none (not sent)",
        }
    }

    fn namespace(self) -> &'static str {
        match self {
            Shape::AppOptedIn => OPTED_IN,
            _ => PLAIN,
        }
    }

    fn pod(self, name: &str) -> anyhow::Result<Pod> {
        let container = match self {
            Shape::Tailscale => json!({
                "name": "tailscale",
                "image": "tailscale/tailscale:v1.96.4",
                "env": [
                    {"name": "TS_AUTHKEY", "valueFrom": {"secretKeyRef": {"name": "tailscale-auth", "key": "authkey"}}},
                    {"name": "TS_USERSPACE", "value": "true"},
                    {"name": "TS_EXTRA_ARGS", "value": "--accept-routes"}
                ],
                "resources": {"limits": {"memory": "128Mi"}}
            }),
            _ => json!({"name": "app", "image": "nginx:1.27", "resources": {"limits": {"memory": "64Mi"}}}),
        };
        let (key, value) = LABEL.split_once('=').context("label")?;
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace(), "labels": {key: value}},
            "spec": {"containers": [container]}
        }))?)
    }
}

/// Creates both namespaces (the opted-in one labelled for injection; both
/// name an exit node, as injection needs one).
pub async fn create_namespaces(client: &kube::Client) -> anyhow::Result<()> {
    for (name, labels) in [
        (PLAIN, json!({})),
        (OPTED_IN, json!({"tailguard.io/inject": "enabled"})),
    ] {
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels, "annotations": {"tailguard.io/exit-node": "100.64.0.1"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("create namespace {name}"))?;
    }
    Ok(())
}

/// Creates `count` pods of `shape` one after another and returns each
/// create's latency. `injected` says whether the stored pod must carry
/// tailguard's sidecar (checked on every pod).
pub async fn create(
    client: &kube::Client,
    shape: Shape,
    prefix: &str,
    count: usize,
    injected: bool,
) -> anyhow::Result<Vec<Duration>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), shape.namespace());
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let pod = shape.pod(&name)?;
        let started = Instant::now();
        let created = api
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("create pod {name}"))?;
        latencies.push(started.elapsed());
        let has_sidecar = created
            .spec
            .and_then(|s| s.init_containers)
            .is_some_and(|c| c.iter().any(|c| c.name == "tailscale"));
        if has_sidecar != injected {
            bail!("pod {name}: sidecar injected = {has_sidecar}, expected {injected}");
        }
    }
    Ok(latencies)
}

/// Deletes every pod created so far.
pub async fn delete_all(client: &kube::Client) -> anyhow::Result<()> {
    for ns in [PLAIN, OPTED_IN] {
        Api::<Pod>::namespaced(client.clone(), ns)
            .delete_collection(&DeleteParams::default(), &ListParams::default().labels(LABEL))
            .await
            .with_context(|| format!("delete the pods in {ns}"))?;
    }
    Ok(())
}
