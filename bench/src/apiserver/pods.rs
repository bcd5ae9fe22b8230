//! The objects created through the apiserver: four pod shapes in two
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
    /// The opted-in app pod as tailguard's /mutate leaves it, created in the
    /// other namespace: sent to /validate only. Against `AppOptedIn`, what
    /// storing the injected pod costs the apiserver, apart from the calls.
    AppInjected,
}

impl Shape {
    pub const ALL: [Shape; 4] = [
        Shape::Tailscale,
        Shape::AppOptedIn,
        Shape::AppNotSent,
        Shape::AppInjected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Tailscale => "tailscale-pod",
            Shape::AppOptedIn => "app-pod-opted-in",
            Shape::AppNotSent => "app-pod-not-sent",
            Shape::AppInjected => "app-pod-injected",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Shape::Tailscale => "Tailscale pod",
            Shape::AppOptedIn => "app pod, opted-in namespace",
            Shape::AppNotSent => "app pod, not opted in",
            Shape::AppInjected => "app pod, injected beforehand",
        }
    }

    /// Where the webhooks are called for it (with tailguard).
    pub fn endpoints(self) -> &'static str {
        match self {
            Shape::Tailscale => "/validate",
            Shape::AppOptedIn => "/mutate + /validate",
            Shape::AppNotSent => "none (not sent)",
            Shape::AppInjected => "/validate",
        }
    }

    fn namespace(self) -> &'static str {
        match self {
            Shape::AppOptedIn => OPTED_IN,
            _ => PLAIN,
        }
    }

    /// Whether the stored pod carries tailguard's sidecar.
    pub fn injected(self, backend_is_tailguard: bool) -> bool {
        match self {
            Shape::AppOptedIn => backend_is_tailguard,
            Shape::AppInjected => true,
            Shape::Tailscale | Shape::AppNotSent => false,
        }
    }

    fn pod(self, name: &str, injected: &Pod) -> anyhow::Result<Pod> {
        if self == Shape::AppInjected {
            let mut pod = injected.clone();
            pod.metadata.name = Some(name.to_owned());
            pod.metadata.namespace = Some(self.namespace().to_owned());
            return Ok(pod);
        }
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

/// The opted-in app pod as the apiserver would store it with tailguard's
/// configurations in effect (a dry-run create): the pod `Shape::AppInjected`
/// creates. Its identity (uid, resourceVersion, creation time, managedFields)
/// and status are dropped; its spec keeps the defaults the apiserver filled
/// in, as the stored opted-in pod has them.
pub async fn injected_by_tailguard(client: &kube::Client) -> anyhow::Result<Pod> {
    let dry = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let mut pod = Api::<Pod>::namespaced(client.clone(), OPTED_IN)
        .create(&dry, &Shape::AppOptedIn.pod("injected", &Pod::default())?)
        .await
        .context("dry-run create of the opted-in app pod")?;
    if !has_sidecar(&pod) {
        bail!("the dry-run create of the opted-in app pod came back without the sidecar");
    }
    let meta = &mut pod.metadata;
    (meta.uid, meta.resource_version, meta.creation_timestamp) = (None, None, None);
    meta.managed_fields = None;
    pod.status = None;
    Ok(pod)
}

/// Whether `pod` carries tailguard's sidecar (an init container named `tailscale`).
fn has_sidecar(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == "tailscale"))
}

/// Creates `count` pods of `shape` one after another and returns each
/// create's latency. `injected` says whether the stored pod must carry
/// tailguard's sidecar (checked on every pod); `template` is the pod
/// `Shape::AppInjected` copies.
pub async fn create(
    client: &kube::Client,
    shape: Shape,
    template: &Pod,
    prefix: &str,
    count: usize,
    injected: bool,
) -> anyhow::Result<Vec<Duration>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), shape.namespace());
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let pod = shape.pod(&name, template)?;
        let started = Instant::now();
        let created = api
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("create pod {name}"))?;
        latencies.push(started.elapsed());
        let has_sidecar = has_sidecar(&created);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The pre-injected pod is the template under its own name, in the
    /// namespace that is not opted in (so it is sent to /validate only).
    #[test]
    fn the_injected_shape_copies_the_template_elsewhere() {
        let template: Pod = serde_json::from_value(json!({
            "metadata": {"name": "injected", "namespace": OPTED_IN, "labels": {"bench": "overhead"}},
            "spec": {
                "initContainers": [{"name": "tailscale", "image": "tailscale/tailscale:v1.96.4"}],
                "containers": [{"name": "app", "image": "nginx:1.27"}]
            }
        }))
        .expect("template");
        let pod = Shape::AppInjected.pod("p-1", &template).expect("pod");
        assert_eq!(pod.metadata.name.as_deref(), Some("p-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some(PLAIN));
        assert_eq!(pod.spec, template.spec);
        assert!(Shape::AppInjected.injected(false) && Shape::AppInjected.injected(true));
        assert!(Shape::AppOptedIn.injected(true) && !Shape::AppOptedIn.injected(false));
        // The other shapes ignore the template.
        let app = Shape::AppNotSent.pod("p-2", &template).expect("pod");
        assert_eq!(app.metadata.namespace.as_deref(), Some(PLAIN));
        assert!(app.spec.is_some_and(|s| s.init_containers.is_none()));
    }
}
