//! Real-shaped AdmissionReview bodies, generated deterministically.
//!
//! Objects look like what the kube-apiserver sends a webhook: defaulted fields,
//! `kubectl.kubernetes.io/last-applied-configuration`, `managedFields` whose
//! `fieldsV1` trees are derived from the object itself (`f:` fields, `k:{...}`
//! list keys, `.` markers), `userInfo`, `options`.

/// Namespace of the Tailscale DaemonSet (Pod Security `privileged`).
pub const NS_TAILSCALE: &str = "tailscale-system";
/// Namespace of the Tailscale pods sent to /validate (Pod Security `baseline`).
pub const NS_APPS: &str = "apps";
/// Namespace opted in to sidecar injection, for /mutate.
pub const NS_INJECT: &str = "payments";

/// The uid of every review's request (answers must echo it).
pub const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

mod objects;
mod parts;

use serde_json::{Value, json};

use objects::{big_pod, daemonset, mid_app_pod, small_app_pod, small_ts_pod};
use parts::{app_container, managed_entry, managed_fields_of, pod_object, pod_spec, review, ts_sidecar};

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
