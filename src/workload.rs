//! Workloads: the typed view of any object that carries a pod spec.
//!
//! Decoding reads only what rules and injection use: metadata names, labels and
//! annotations, the replica count and the pod spec (typed as k8s-openapi's
//! `PodSpec`). Everything else (`managedFields`, `status`, selectors, ...) is
//! skipped by the deserializer without being built.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::PodSpec;
use serde::{Deserialize, Deserializer};

/// Kinds that carry a pod spec, and where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    pub fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "Pod" => WorkloadKind::Pod,
            "Deployment" => WorkloadKind::Deployment,
            "StatefulSet" => WorkloadKind::StatefulSet,
            "DaemonSet" => WorkloadKind::DaemonSet,
            "ReplicaSet" => WorkloadKind::ReplicaSet,
            "Job" => WorkloadKind::Job,
            "CronJob" => WorkloadKind::CronJob,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
        }
    }

    /// The object path of the pod spec, used as the prefix of every finding path.
    pub fn pod_spec_path(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "spec",
            WorkloadKind::CronJob => "spec.jobTemplate.spec.template.spec",
            _ => "spec.template.spec",
        }
    }

    /// The object path of the pod template's metadata.
    pub fn pod_meta_path(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "metadata",
            WorkloadKind::CronJob => "spec.jobTemplate.spec.template.metadata",
            _ => "spec.template.metadata",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The metadata fields tailguard reads. Unknown fields (managedFields above all)
/// are skipped, not built.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub generate_name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
}

impl Meta {
    /// The name, or `generateName` followed by `*` when the server has not named it yet.
    pub fn display_name(&self) -> String {
        match (&self.name, &self.generate_name) {
            (Some(n), _) if !n.is_empty() => n.clone(),
            (_, Some(g)) if !g.is_empty() => format!("{g}*"),
            _ => "<unnamed>".to_owned(),
        }
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An object with a pod spec, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub meta: Meta,
    /// The pod template's metadata; for a Pod, a copy of `meta` is not kept: see [`Workload::pod_meta`].
    pub template_meta: Option<Meta>,
    /// `replicas` (Deployment, StatefulSet, ReplicaSet) or `parallelism` (Job, CronJob), if set.
    pub replicas: Option<i32>,
    pub pod: PodSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{kind} has no pod spec at {path}")]
    MissingPodSpec { kind: WorkloadKind, path: &'static str },
    #[error("{kind} spec is not a valid {kind}: {message}")]
    Spec { kind: WorkloadKind, message: String },
}

// The parts of workload specs that tailguard reads; serde skips the rest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TemplatedSpec {
    #[serde(default)]
    replicas: Option<i32>,
    #[serde(default)]
    parallelism: Option<i32>,
    #[serde(default)]
    template: Option<Template>,
}

#[derive(Deserialize)]
struct Template {
    #[serde(default, deserialize_with = "null_as_default")]
    metadata: Meta,
    #[serde(default)]
    spec: Option<PodSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CronJobSpec {
    #[serde(default)]
    job_template: Option<JobTemplate>,
}

#[derive(Deserialize)]
struct JobTemplate {
    #[serde(default)]
    spec: Option<TemplatedSpec>,
}

impl Workload {
    /// Decodes the `spec` of an object of `kind` whose metadata is already read.
    /// `spec` is any serde deserializer: a JSON slice on the webhook path, a
    /// `serde_json::Value` built from YAML on the CLI path.
    pub fn decode<'de, D>(kind: WorkloadKind, meta: Meta, spec: D) -> Result<Workload, WorkloadError>
    where
        D: Deserializer<'de>,
        D::Error: fmt::Display,
    {
        let spec_error = |e: D::Error| WorkloadError::Spec {
            kind,
            message: e.to_string(),
        };
        let missing = WorkloadError::MissingPodSpec {
            kind,
            path: kind.pod_spec_path(),
        };
        match kind {
            WorkloadKind::Pod => {
                let pod = PodSpec::deserialize(spec).map_err(spec_error)?;
                Ok(Workload {
                    kind,
                    meta,
                    template_meta: None,
                    replicas: None,
                    pod,
                })
            }
            WorkloadKind::CronJob => {
                let spec = CronJobSpec::deserialize(spec).map_err(spec_error)?;
                let job = spec.job_template.and_then(|j| j.spec).ok_or(missing)?;
                Workload::from_templated(kind, meta, job)
            }
            _ => {
                let spec = TemplatedSpec::deserialize(spec).map_err(spec_error)?;
                Workload::from_templated(kind, meta, spec)
            }
        }
    }

    fn from_templated(kind: WorkloadKind, meta: Meta, spec: TemplatedSpec) -> Result<Workload, WorkloadError> {
        let missing = || WorkloadError::MissingPodSpec {
            kind,
            path: kind.pod_spec_path(),
        };
        let template = spec.template.ok_or_else(missing)?;
        let pod = template.spec.ok_or_else(missing)?;
        let replicas = match kind {
            WorkloadKind::Job | WorkloadKind::CronJob => spec.parallelism,
            WorkloadKind::DaemonSet => None,
            _ => spec.replicas,
        };
        Ok(Workload {
            kind,
            meta,
            template_meta: Some(template.metadata),
            replicas,
            pod,
        })
    }

    /// Decodes a whole object (`kind`, `metadata`, `spec`) held as a JSON value,
    /// as the CLI reads manifests. `Ok(None)` for kinds without a pod spec.
    pub fn from_value(object: &serde_json::Value) -> Result<Option<Workload>, WorkloadError> {
        let Some(kind) = object
            .get("kind")
            .and_then(|k| k.as_str())
            .and_then(WorkloadKind::from_kind)
        else {
            return Ok(None);
        };
        let meta = match object.get("metadata") {
            Some(m) => Meta::deserialize(m).map_err(|e| WorkloadError::Spec {
                kind,
                message: format!("metadata: {e}"),
            })?,
            None => Meta::default(),
        };
        let spec = object.get("spec").ok_or(WorkloadError::MissingPodSpec {
            kind,
            path: kind.pod_spec_path(),
        })?;
        Workload::decode(kind, meta, spec).map(Some)
    }

    /// The metadata the pods will carry (the template's, or the Pod's own).
    pub fn pod_meta(&self) -> &Meta {
        self.template_meta.as_ref().unwrap_or(&self.meta)
    }

    pub fn namespace(&self) -> Option<&str> {
        self.meta.namespace.as_deref().filter(|n| !n.is_empty())
    }

    /// `Kind/namespace/name`, with `-` for a namespace the manifest leaves to the client.
    pub fn reference(&self) -> String {
        format!(
            "{}/{}/{}",
            self.kind,
            self.namespace().unwrap_or("-"),
            self.meta.display_name()
        )
    }

    /// Why several pods run from this one spec at once, if they do.
    pub fn many_pods(&self) -> Option<String> {
        match self.kind {
            WorkloadKind::DaemonSet => Some("every pod of the DaemonSet (one per node)".to_owned()),
            WorkloadKind::Pod => None,
            WorkloadKind::Job | WorkloadKind::CronJob => match self.replicas {
                Some(n) if n > 1 => Some(format!("the {n} parallel pods of the {}", self.kind)),
                _ => None,
            },
            _ => match self.replicas {
                Some(n) if n > 1 => Some(format!("the {n} replicas of the {}", self.kind)),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_each_kind_from_its_pod_spec_path() {
        let pod_spec = json!({"containers": [{"name": "ts", "image": "tailscale/tailscale"}]});
        let cases = [
            ("Pod", json!(pod_spec.clone())),
            ("DaemonSet", json!({"template": {"spec": pod_spec.clone()}})),
            (
                "Deployment",
                json!({"replicas": 3, "template": {"spec": pod_spec.clone()}}),
            ),
            ("Job", json!({"parallelism": 2, "template": {"spec": pod_spec.clone()}})),
            (
                "CronJob",
                json!({"jobTemplate": {"spec": {"template": {"spec": pod_spec.clone()}}}}),
            ),
        ];
        for (kind, spec) in cases {
            let obj = json!({"kind": kind, "metadata": {"name": "x", "managedFields": [{"a": 1}]}, "spec": spec});
            let w = Workload::from_value(&obj).expect("decodes").expect("is a workload");
            assert_eq!(w.kind.as_str(), kind);
            assert_eq!(w.pod.containers[0].name, "ts");
        }
        let obj = json!({"kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": 3, "template": {"spec": pod_spec}}});
        let w = Workload::from_value(&obj).ok().flatten().expect("workload");
        assert_eq!(w.replicas, Some(3));
        assert!(w.many_pods().is_some());
    }

    #[test]
    fn other_kinds_are_not_workloads_and_broken_specs_are_errors() {
        assert!(matches!(Workload::from_value(&json!({"kind": "ConfigMap"})), Ok(None)));
        let e = Workload::from_value(&json!({"kind": "DaemonSet", "spec": {}})).unwrap_err();
        assert!(e.to_string().contains("spec.template.spec"), "{e}");
        let e = Workload::from_value(&json!({"kind": "Pod", "spec": {"containers": "nope"}})).unwrap_err();
        assert!(e.to_string().contains("Pod spec"), "{e}");
    }

    #[test]
    fn null_labels_are_empty() {
        let m: Meta = serde_json::from_str(r#"{"name":"a","labels":null}"#).expect("meta");
        assert!(m.labels.is_empty());
    }
}
