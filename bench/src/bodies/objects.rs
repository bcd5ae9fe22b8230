//! The six benchmark cases' objects.

use serde_json::{Value, json};

use super::parts::{
    TIME, app_container, default_container, field_env, managed_entry, managed_fields_of, pod_object, pod_spec,
    resource_env, review, ts_sidecar, uid,
};
use super::{NS_APPS, NS_INJECT, NS_TAILSCALE};

const INCIDENT_FINAL: &str = include_str!("../../../tests/fixtures/incident/05-final.yaml");

pub(super) fn small_ts_pod() -> Vec<u8> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ts-proxy", "namespace": NS_APPS, "labels": {"app": "ts-proxy"}},
        "spec": {
            "containers": [{
                "name": "tailscale",
                "image": "tailscale/tailscale:v1.96.4",
                "env": [
                    {"name": "TS_AUTHKEY", "valueFrom": {"secretKeyRef": {"name": "tailscale-auth", "key": "authkey"}}},
                    {"name": "TS_KUBE_SECRET", "value": ""},
                    {"name": "TS_USERSPACE", "value": "true"},
                    {"name": "TS_HOSTNAME", "value": "ts-proxy"}
                ],
                "resources": {"limits": {"memory": "128Mi"}},
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default"
        }
    });
    review("", "v1", "Pod", "pods", "ts-proxy", NS_APPS, pod)
}

pub(super) fn small_app_pod() -> Vec<u8> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": NS_INJECT, "labels": {"app": "web"}},
        "spec": {
            "containers": [{
                "name": "nginx",
                "image": "nginx:1.27",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"limits": {"memory": "128Mi"}},
                "imagePullPolicy": "IfNotPresent",
                "terminationMessagePath": "/dev/termination-log"
            }],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default"
        }
    });
    review("", "v1", "Pod", "pods", "web", NS_INJECT, pod)
}

pub(super) fn mid_app_pod() -> Vec<u8> {
    let containers = vec![app_container("api", "ghcr.io/example/payments-api:3.12.0", 12, true)];
    let spec = pod_spec(containers, vec![], vec![], true);
    let mut pod = pod_object("payments-api-5c8f7d9b4-q7w2e", NS_INJECT, spec, true);
    let fields = managed_fields_of(&pod);
    pod["metadata"]["managedFields"] = json!([managed_entry("kube-controller-manager", "Update", fields, None)]);
    review("", "v1", "Pod", "pods", "payments-api-5c8f7d9b4-q7w2e", NS_INJECT, pod)
}

/// A ReplicaSet's pod: app, log shipper, (Tailscale sidecar), init migration;
/// `managers` controller-manager-like managedFields entries.
pub(super) fn big_pod(tailscale: bool, managers: usize) -> Vec<u8> {
    let ns = if tailscale { NS_APPS } else { NS_INJECT };
    let mut containers = vec![
        app_container("checkout", "ghcr.io/example/checkout:5.3.2", 70, true),
        app_container("fluent-bit", "cr.fluentbit.io/fluent/fluent-bit:3.2.4", 14, false),
        app_container("envoy", "envoyproxy/envoy:v1.32.2", 10, true),
    ];
    if tailscale {
        containers.push(ts_sidecar(4));
    }
    let init = vec![app_container(
        "migrate",
        "ghcr.io/example/checkout-migrate:5.3.2",
        16,
        false,
    )];
    let extra_volumes = vec![
        json!({"name": "app-config", "configMap": {"name": "checkout-config", "defaultMode": 420}}),
        json!({"name": "app-secrets", "secret": {"secretName": "checkout-secrets", "defaultMode": 420}}),
        json!({"name": "fluent-bit-config", "configMap": {"name": "fluent-bit", "defaultMode": 420}}),
        json!({"name": "envoy-config", "configMap": {"name": "checkout-envoy", "defaultMode": 420}}),
        json!({"name": "varlog", "emptyDir": {}}),
        json!({"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}),
    ];
    let mut spec = pod_spec(containers, init, extra_volumes, true);
    spec["affinity"] = json!({
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "checkout"}},
                "topologyKey": "kubernetes.io/hostname"
            }
        }]}
    });
    spec["topologySpreadConstraints"] = json!([{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "checkout"}}
    }]);
    spec["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
    spec["priorityClassName"] = json!("business-critical");
    spec["priority"] = json!(100000);
    let name = "checkout-7d9f8b6c5-x2k4q";
    let mut pod = pod_object(name, ns, spec, true);
    let fields = managed_fields_of(&pod);
    let mut entries = vec![managed_entry("kube-controller-manager", "Update", fields.clone(), None)];
    for i in 1..managers {
        entries.push(managed_entry(
            &format!("controller-{i}"),
            "Update",
            fields.clone(),
            None,
        ));
    }
    pod["metadata"]["managedFields"] = Value::Array(entries);
    review("", "v1", "Pod", "pods", name, ns, pod)
}

/// incident/05-final.yaml's `tailscale-exit-node` DaemonSet, as the apiserver
/// sends it after `kubectl apply`: defaults, more settings in env, tolerations,
/// last-applied annotation, managedFields.
pub(super) fn daemonset() -> Vec<u8> {
    let mut ds = incident_daemonset();
    {
        let tmpl = &mut ds["spec"]["template"];
        tmpl["metadata"]["annotations"] = json!({
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9002",
            "kubectl.kubernetes.io/default-container": "tailscale"
        });
        tmpl["metadata"]["labels"]["app.kubernetes.io/name"] = json!("tailscale");
        tmpl["metadata"]["labels"]["app.kubernetes.io/component"] = json!("exit-node");
        let spec = &mut tmpl["spec"];
        let c = &mut spec["containers"][0];
        let env = c["env"].as_array_mut().expect("env");
        // Downward API first, so later values may expand them.
        let mut more = vec![
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
        ];
        more.append(env);
        more.extend([
            json!({"name": "TS_ACCEPT_DNS", "value": "false"}),
            json!({"name": "TS_SOCKET", "value": "/var/run/tailscale/tailscaled.sock"}),
            json!({"name": "TS_DEBUG_FIREWALL_MODE", "value": "auto"}),
            json!({"name": "TS_TAILSCALED_EXTRA_ARGS", "value": "--port=41641"}),
            resource_env("GOMAXPROCS", "tailscale", "limits.cpu"),
            resource_env("GOMEMLIMIT", "tailscale", "limits.memory"),
            json!({"name": "TZ", "value": "UTC"}),
            json!({"name": "OTEL_SERVICE_NAME", "value": "tailscale-exit-node"}),
            json!({"name": "OTEL_RESOURCE_ATTRIBUTES", "value": "k8s.node.name=$(NODE_NAME),k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"}),
        ]);
        *env = more;
        c["ports"] = json!([
            {"name": "wireguard", "containerPort": 41641, "hostPort": 41641, "protocol": "UDP"},
            {"name": "metrics", "containerPort": 9002, "hostPort": 9002, "protocol": "TCP"}
        ]);
        c["resources"]["limits"]["cpu"] = json!("1");
        default_container(c);
        spec["tolerations"] = json!([
            {"operator": "Exists", "effect": "NoSchedule"},
            {"operator": "Exists", "effect": "NoExecute"},
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
        ]);
        spec["priorityClassName"] = json!("system-node-critical");
    }
    ds["metadata"]["labels"] = json!({
        "app.kubernetes.io/name": "tailscale",
        "app.kubernetes.io/component": "exit-node",
        "app.kubernetes.io/part-of": "network",
        "app.kubernetes.io/managed-by": "kubectl"
    });
    // Applied server-side (kubectl apply --server-side, Flux, Argo CD): the
    // applier's managedFields entry covers what it set, not the defaults.
    let fields = managed_fields_of(&ds);
    {
        let spec = &mut ds["spec"];
        spec["revisionHistoryLimit"] = json!(10);
        spec["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}});
        let pod = &mut spec["template"]["spec"];
        pod["restartPolicy"] = json!("Always");
        pod["terminationGracePeriodSeconds"] = json!(30);
        pod["schedulerName"] = json!("default-scheduler");
        pod["securityContext"] = json!({});
        pod["serviceAccount"] = json!("tailscale");
        spec["template"]["metadata"]["creationTimestamp"] = Value::Null;
    }
    let meta = &mut ds["metadata"];
    meta["annotations"] = json!({"deprecated.daemonset.template.generation": "1"});
    meta["uid"] = json!(uid(8));
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!(TIME);
    let mut entry = managed_entry("kustomize-controller", "Apply", fields, None);
    entry["apiVersion"] = json!("apps/v1");
    meta["managedFields"] = json!([entry]);
    ds["status"] =
        json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0});
    review(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "tailscale-exit-node",
        NS_TAILSCALE,
        ds,
    )
}

fn incident_daemonset() -> Value {
    let (docs, _) = tailguard::manifest::parse_stream("05-final.yaml", INCIDENT_FINAL);
    for doc in docs {
        let v = doc.object;
        if v["kind"] == "DaemonSet" && v["metadata"]["name"] == "tailscale-exit-node" {
            return v;
        }
    }
    panic!("tests/fixtures/incident/05-final.yaml has no tailscale-exit-node DaemonSet")
}
