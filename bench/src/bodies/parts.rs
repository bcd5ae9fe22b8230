//! Building blocks of the objects: containers, pod specs, metadata,
//! managedFields derived from the object, the AdmissionReview envelope.

use serde_json::{Map, Value, json};

use super::UID;

pub(super) const TIME: &str = "2026-01-12T09:14:03Z";

pub(super) fn uid(n: u64) -> String {
    format!("5f0c9a3e-1b7d-4c2e-9a6f-{:012x}", 0x3c41_77a2_0000 + n)
}

pub(super) fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

pub(super) fn resource_env(name: &str, container: &str, resource: &str) -> Value {
    json!({"name": name, "valueFrom": {"resourceFieldRef": {"containerName": container, "resource": resource, "divisor": "0"}}})
}

/// Fields the apiserver defaults in every container.
pub(super) fn default_container(c: &mut Value) {
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

pub(super) fn app_container(name: &str, image: &str, env: usize, probes: bool) -> Value {
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
pub(super) fn ts_sidecar(extra: usize) -> Value {
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

pub(super) fn pod_spec(containers: Vec<Value>, init: Vec<Value>, mut volumes: Vec<Value>, defaulted: bool) -> Value {
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

pub(super) fn pod_object(name: &str, ns: &str, spec: Value, replicaset: bool) -> Value {
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
pub(super) fn managed_fields_of(object: &Value) -> Value {
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

pub(super) fn managed_entry(manager: &str, operation: &str, fields: Value, subresource: Option<&str>) -> Value {
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
pub(super) fn review(
    group: &str,
    version: &str,
    kind: &str,
    resource: &str,
    name: &str,
    ns: &str,
    object: Value,
) -> Vec<u8> {
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let gvr = json!({"group": group, "version": version, "resource": resource});
    let body = json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": UID,
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
