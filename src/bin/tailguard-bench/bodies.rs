//! Real-shaped AdmissionReview bodies, generated deterministically.
//!
//! Objects look like what the kube-apiserver sends a webhook: defaulted fields,
//! `kubectl.kubernetes.io/last-applied-configuration`, `managedFields` whose
//! `fieldsV1` trees are derived from the object itself (`f:` fields, `k:{...}`
//! list keys, `.` markers), `userInfo`, `options`.

use serde_json::{Map, Value, json};

/// Namespace of the Tailscale DaemonSet (Pod Security `privileged`).
pub const NS_TAILSCALE: &str = "tailscale-system";
/// Namespace of the Tailscale pods sent to /validate (Pod Security `baseline`).
pub const NS_APPS: &str = "apps";
/// Namespace opted in to sidecar injection, for /mutate.
pub const NS_INJECT: &str = "payments";

const TIME: &str = "2026-01-12T09:14:03Z";
const INCIDENT_FINAL: &str = include_str!("../../../tests/fixtures/incident/05-final.yaml");

/// One review body and what it exercises.
pub struct Case {
    pub name: &'static str,
    pub endpoint: &'static str,
    pub what: &'static str,
    pub body: Vec<u8>,
}

/// The six benchmark cases: three sizes, each for /validate and /mutate.
///
/// /validate gets Tailscale workloads (every rule runs); /mutate gets app pods
/// of the same sizes in an opted-in namespace (the sidecar is injected): a
/// Tailscale pod sent to /mutate would only be skipped.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "ts-pod-1k",
            endpoint: "/validate",
            what: "Tailscale userspace pod, as written by hand",
            body: small_ts_pod(),
        },
        Case {
            name: "ts-daemonset-8k",
            endpoint: "/validate",
            what: "kernel-mode Tailscale DaemonSet (incident 05-final), 19 env vars, probes, tolerations, server-side-apply managedFields",
            body: daemonset(),
        },
        Case {
            name: "ts-pod-30k",
            endpoint: "/validate",
            what: "ReplicaSet pod with a Tailscale sidecar, 4 containers, big managedFields",
            body: big_pod(true, 1),
        },
        Case {
            name: "app-pod-1k",
            endpoint: "/mutate",
            what: "nginx pod in an opted-in namespace (sidecar injected)",
            body: small_app_pod(),
        },
        Case {
            name: "app-pod-8k",
            endpoint: "/mutate",
            what: "ReplicaSet app pod, 12 env vars, 3 probes, managedFields, opted-in namespace (sidecar injected)",
            body: mid_app_pod(),
        },
        Case {
            name: "app-pod-30k",
            endpoint: "/mutate",
            what: "ReplicaSet app pod, 3 containers, big managedFields, opted-in namespace (sidecar injected)",
            body: big_pod(false, 1),
        },
    ]
}

// --- growth series ---

/// A body family whose size grows with `n`.
pub struct Series {
    pub name: &'static str,
    pub endpoint: &'static str,
    pub make: fn(usize) -> Vec<u8>,
    /// The smallest meaningful `n`.
    pub min: usize,
}

pub fn series() -> Vec<Series> {
    vec![
        Series {
            name: "managedFields entries (Tailscale pod)",
            endpoint: "/validate",
            make: |n| grow_managed_fields(true, n),
            min: 0,
        },
        Series {
            name: "env entries (Tailscale container)",
            endpoint: "/validate",
            make: grow_ts_env,
            min: 0,
        },
        Series {
            name: "containers (app + Tailscale sidecar)",
            endpoint: "/validate",
            make: |n| grow_containers(true, n),
            min: 0,
        },
        Series {
            name: "managedFields entries (app pod)",
            endpoint: "/mutate",
            make: |n| grow_managed_fields(false, n),
            min: 0,
        },
        Series {
            name: "containers (app pod, all injected)",
            endpoint: "/mutate",
            make: |n| grow_containers(false, n),
            min: 1,
        },
    ]
}

/// The smallest `n >= min` whose body is at least `bytes` long (bodies grow with `n`).
pub fn sized(series: &Series, bytes: usize) -> (usize, Vec<u8>) {
    let make = series.make;
    let mut lo = series.min;
    let first = make(lo);
    if first.len() >= bytes {
        return (lo, first);
    }
    let mut step = 1;
    let (mut hi, mut body) = loop {
        let n = lo + step;
        let b = make(n);
        if b.len() >= bytes || n > 1 << 20 {
            break (n, b);
        }
        lo = n;
        step *= 2;
    };
    // Invariant: make(hi) is big enough, make(lo) is not.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let b = make(mid);
        if b.len() >= bytes {
            hi = mid;
            body = b;
        } else {
            lo = mid;
        }
    }
    (hi, body)
}

fn grow_managed_fields(tailscale: bool, n: usize) -> Vec<u8> {
    let (name, ns) = if tailscale {
        ("ts-mf", NS_APPS)
    } else {
        ("app-mf", NS_INJECT)
    };
    let mut containers = vec![app_container("app", "ghcr.io/example/app:2.4.1", 6, false)];
    if tailscale {
        containers.push(ts_sidecar(0));
    }
    let spec = pod_spec(containers, vec![], vec![], true);
    let mut pod = pod_object(name, ns, spec, false);
    let base = managed_fields_of(&pod);
    let entries = (0..n)
        .map(|i| {
            managed_entry(
                &format!("controller-{i}"),
                if i % 5 == 4 { "Apply" } else { "Update" },
                base.clone(),
                None,
            )
        })
        .collect();
    pod["metadata"]["managedFields"] = Value::Array(entries);
    review("", "v1", "Pod", "pods", name, ns, pod)
}

fn grow_ts_env(n: usize) -> Vec<u8> {
    let mut ts = ts_sidecar(n);
    ts["name"] = json!("tailscale");
    let spec = pod_spec(vec![ts], vec![], vec![], true);
    let pod = pod_object("ts-env", NS_APPS, spec, false);
    review("", "v1", "Pod", "pods", "ts-env", NS_APPS, pod)
}

fn grow_containers(tailscale: bool, n: usize) -> Vec<u8> {
    let ns = if tailscale { NS_APPS } else { NS_INJECT };
    let mut containers: Vec<Value> = (0..n)
        .map(|i| app_container(&format!("worker-{i}"), "ghcr.io/example/worker:1.9.0", 8, i % 2 == 0))
        .collect();
    if tailscale {
        containers.push(ts_sidecar(0));
    }
    let spec = pod_spec(containers, vec![], vec![], true);
    let pod = pod_object("many-containers", ns, spec, true);
    review("", "v1", "Pod", "pods", "many-containers", ns, pod)
}

// --- the cases ---

fn small_ts_pod() -> Vec<u8> {
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

fn small_app_pod() -> Vec<u8> {
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

fn mid_app_pod() -> Vec<u8> {
    let containers = vec![app_container("api", "ghcr.io/example/payments-api:3.12.0", 12, true)];
    let spec = pod_spec(containers, vec![], vec![], true);
    let mut pod = pod_object("payments-api-5c8f7d9b4-q7w2e", NS_INJECT, spec, true);
    let fields = managed_fields_of(&pod);
    pod["metadata"]["managedFields"] = json!([managed_entry("kube-controller-manager", "Update", fields, None)]);
    review("", "v1", "Pod", "pods", "payments-api-5c8f7d9b4-q7w2e", NS_INJECT, pod)
}

/// A ReplicaSet's pod: app, log shipper, (Tailscale sidecar), init migration;
/// `managers` controller-manager-like managedFields entries.
pub fn big_pod(tailscale: bool, managers: usize) -> Vec<u8> {
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
fn daemonset() -> Vec<u8> {
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

// --- building blocks ---

fn uid(n: u64) -> String {
    format!("5f0c9a3e-1b7d-4c2e-9a6f-{:012x}", 0x3c41_77a2_0000 + n)
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn resource_env(name: &str, container: &str, resource: &str) -> Value {
    json!({"name": name, "valueFrom": {"resourceFieldRef": {"containerName": container, "resource": resource, "divisor": "0"}}})
}

/// Fields the apiserver defaults in every container.
fn default_container(c: &mut Value) {
    c["imagePullPolicy"] = json!("IfNotPresent");
    c["terminationMessagePath"] = json!("/dev/termination-log");
    c["terminationMessagePolicy"] = json!("File");
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let p = &mut c[probe];
        if p.is_object() {
            for (k, v) in [("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1)] {
                if p.get(k).is_none() {
                    p[k] = json!(v);
                }
            }
            if p.get("failureThreshold").is_none() {
                p["failureThreshold"] = json!(3);
            }
            if p.get("httpGet").is_some() {
                p["httpGet"]["scheme"] = json!("HTTP");
            }
        }
    }
    if c.get("ports").is_none() {
        return;
    }
    if let Some(ports) = c["ports"].as_array_mut() {
        for port in ports {
            if port.get("protocol").is_none() {
                port["protocol"] = json!("TCP");
            }
        }
    }
}

const PREFIXES: &[&str] = &[
    "DATABASE", "REDIS", "KAFKA", "FEATURE", "CACHE", "HTTP", "GRPC", "AUTH", "PAYMENTS", "LOG", "METRICS", "SEARCH",
];
const SUFFIXES: &[&str] = &[
    "URL",
    "TIMEOUT_MS",
    "POOL_SIZE",
    "ENABLED",
    "HOST",
    "PORT",
    "RETRIES",
    "SECRET",
];

/// Realistic env vars: URLs, numbers, flags, secret and config map references,
/// some values expanding downward-API variables defined first.
fn app_env(n: usize) -> Vec<Value> {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    for i in 0..n.saturating_sub(2) {
        let prefix = PREFIXES[i % PREFIXES.len()];
        let suffix = SUFFIXES[(i / PREFIXES.len()) % SUFFIXES.len()];
        let round = i / (PREFIXES.len() * SUFFIXES.len());
        let name = if round == 0 {
            format!("{prefix}_{suffix}")
        } else {
            format!("{prefix}_{suffix}_{round}")
        };
        let lower = prefix.to_ascii_lowercase();
        let v = match suffix {
            "URL" => {
                json!({"name": name, "value": format!("http://{lower}.platform.svc.cluster.local:8080/v1?client=$(POD_NAME)")})
            }
            "TIMEOUT_MS" => json!({"name": name, "value": format!("{}", 250 + i * 10)}),
            "POOL_SIZE" | "RETRIES" => json!({"name": name, "value": format!("{}", 3 + i % 17)}),
            "ENABLED" => json!({"name": name, "value": if i % 3 == 0 { "false" } else { "true" }}),
            "HOST" => json!({"name": name, "value": format!("{lower}-primary.{lower}.svc.cluster.local")}),
            "PORT" => {
                json!({"name": name, "valueFrom": {"configMapKeyRef": {"name": format!("{lower}-endpoints"), "key": "port"}}})
            }
            _ => {
                json!({"name": name, "valueFrom": {"secretKeyRef": {"name": format!("{lower}-credentials"), "key": "password"}}})
            }
        };
        env.push(v);
    }
    env.truncate(n);
    env
}

fn http_probe(path: &str, port: u16, failures: u32) -> Value {
    json!({"httpGet": {"path": path, "port": port}, "initialDelaySeconds": 5, "failureThreshold": failures})
}

fn app_container(name: &str, image: &str, env: usize, probes: bool) -> Value {
    let mut c = json!({
        "name": name,
        "image": image,
        "args": ["--config=/etc/app/config.yaml", "--log-format=json", "--listen=:8080"],
        "env": app_env(env),
        "envFrom": [{"configMapRef": {"name": format!("{name}-env")}}],
        "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "metrics", "containerPort": 9090},
            {"name": "grpc", "containerPort": 9000}
        ],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "volumeMounts": [
            {"name": "app-config", "mountPath": format!("/etc/{name}"), "readOnly": true},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "kube-api-access-8kq2x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
        ],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 10001,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    });
    if probes {
        c["livenessProbe"] = http_probe("/livez", 8080, 3);
        c["readinessProbe"] = http_probe("/readyz", 8080, 3);
        c["startupProbe"] = http_probe("/startupz", 8080, 30);
    }
    default_container(&mut c);
    c
}

/// A userspace Tailscale sidecar as people write it, with `extra` more settings.
fn ts_sidecar(extra: usize) -> Value {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_UID", "metadata.uid"),
        json!({"name": "TS_AUTHKEY", "valueFrom": {"secretKeyRef": {"name": "tailscale-auth", "key": "authkey"}}}),
        json!({"name": "TS_KUBE_SECRET", "value": "$(POD_NAME)"}),
        json!({"name": "TS_USERSPACE", "value": "true"}),
        json!({"name": "TS_EXTRA_ARGS", "value": "--advertise-tags=tag:checkout --accept-routes"}),
        json!({"name": "TS_ENABLE_HEALTH_CHECK", "value": "true"}),
        json!({"name": "TS_LOCAL_ADDR_PORT", "value": "[::]:9002"}),
        json!({"name": "TS_OUTBOUND_HTTP_PROXY_LISTEN", "value": "127.0.0.1:1055"}),
        json!({"name": "TS_SOCKS5_SERVER", "value": "127.0.0.1:1080"}),
    ];
    env.extend(app_env(extra + 2).into_iter().skip(2));
    let mut c = json!({
        "name": "tailscale",
        "image": "tailscale/tailscale:v1.96.4",
        "env": env,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 9002}},
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
    });
    default_container(&mut c);
    c
}

fn pod_spec(containers: Vec<Value>, init: Vec<Value>, mut volumes: Vec<Value>, defaulted: bool) -> Value {
    volumes.push(json!({"name": "kube-api-access-8kq2x", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
    ]}}));
    if !volumes.iter().any(|v| v["name"] == "tmp") {
        volumes.push(json!({"name": "tmp", "emptyDir": {}}));
    }
    if !volumes.iter().any(|v| v["name"] == "app-config") {
        volumes.push(json!({"name": "app-config", "configMap": {"name": "app-config", "defaultMode": 420}}));
    }
    let mut spec = json!({"containers": containers, "volumes": volumes});
    if !init.is_empty() {
        spec["initContainers"] = Value::Array(init);
    }
    if defaulted {
        for (k, v) in [
            ("dnsPolicy", json!("ClusterFirst")),
            ("enableServiceLinks", json!(true)),
            ("preemptionPolicy", json!("PreemptLowerPriority")),
            ("priority", json!(0)),
            ("restartPolicy", json!("Always")),
            ("schedulerName", json!("default-scheduler")),
            ("securityContext", json!({"fsGroup": 10001})),
            ("serviceAccount", json!("default")),
            ("serviceAccountName", json!("default")),
            ("terminationGracePeriodSeconds", json!(30)),
            (
                "tolerations",
                json!([
                    {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
                    {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}
                ]),
            ),
        ] {
            spec[k] = v;
        }
    }
    spec
}

fn pod_object(name: &str, ns: &str, spec: Value, replicaset: bool) -> Value {
    let mut meta = json!({
        "name": name,
        "namespace": ns,
        "labels": {
            "app.kubernetes.io/name": name.split('-').next().unwrap_or(name),
            "app.kubernetes.io/version": "5.3.2",
            "app.kubernetes.io/part-of": "shop",
            "team": "payments"
        },
        "annotations": {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9090",
            "checksum/config": "9f2c4e1a7b3d5f60c8e2a4b6d8f0a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5"
        }
    });
    if replicaset {
        let rs = name.rsplit_once('-').map_or(name, |(rs, _)| rs);
        meta["generateName"] = json!(format!("{rs}-"));
        meta["labels"]["pod-template-hash"] = json!("7d9f8b6c5");
        meta["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": uid(3),
            "controller": true, "blockOwnerDeletion": true
        }]);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": "Pending", "qosClass": "Burstable"}})
}

/// A `fieldsV1` tree for everything the object sets in metadata and spec.
fn managed_fields_of(object: &Value) -> Value {
    let mut owned = Map::new();
    let mut meta = Map::new();
    for key in ["labels", "annotations", "ownerReferences", "generateName"] {
        if let Some(v) = object["metadata"].get(key) {
            meta.insert(key.to_owned(), v.clone());
        }
    }
    owned.insert("metadata".to_owned(), Value::Object(meta));
    if let Some(spec) = object.get("spec") {
        owned.insert("spec".to_owned(), spec.clone());
    }
    fields_v1(&Value::Object(owned))
}

fn fields_v1(v: &Value) -> Value {
    let Value::Object(map) = v else {
        return json!({});
    };
    let mut out = Map::new();
    for (k, child) in map {
        out.insert(format!("f:{k}"), fields_child(child));
    }
    Value::Object(out)
}

fn fields_child(child: &Value) -> Value {
    match child {
        Value::Object(m) if m.is_empty() => json!({}),
        Value::Object(_) => {
            let mut t = fields_v1(child);
            if let Value::Object(m) = &mut t {
                m.insert(".".to_owned(), json!({}));
            }
            t
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(|i| list_key(i).is_some()) => {
            let mut out = Map::new();
            out.insert(".".to_owned(), json!({}));
            for item in items {
                let mut t = fields_v1(item);
                if let Value::Object(m) = &mut t {
                    m.insert(".".to_owned(), json!({}));
                }
                out.insert(list_key(item).unwrap_or_default(), t);
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// How server-side apply keys list items: `k:{"name":"x"}` and friends.
fn list_key(item: &Value) -> Option<String> {
    let key = if let Some(name) = item.get("name").filter(|_| item.get("containerPort").is_none()) {
        json!({"name": name})
    } else if let Some(path) = item.get("mountPath") {
        json!({"mountPath": path})
    } else if let Some(port) = item.get("containerPort") {
        json!({"containerPort": port, "protocol": item.get("protocol").cloned().unwrap_or(json!("TCP"))})
    } else {
        return None;
    };
    Some(format!("k:{key}"))
}

fn managed_entry(manager: &str, operation: &str, fields: Value, subresource: Option<&str>) -> Value {
    let mut e = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": "v1",
        "time": TIME,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields
    });
    if let Some(s) = subresource {
        e["subresource"] = json!(s);
    }
    e
}

/// A CREATE AdmissionReview v1 for `object`, as the apiserver sends it.
fn review(group: &str, version: &str, kind: &str, resource: &str, name: &str, ns: &str, object: Value) -> Vec<u8> {
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let gvr = json!({"group": group, "version": version, "resource": resource});
    let body = json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": name,
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": uid(1),
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kube-controller-manager"}
        }
    });
    serde_json::to_vec(&body).expect("serializable")
}
