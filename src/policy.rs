//! A ValidatingAdmissionPolicy (CEL, evaluated by the apiserver itself) for the
//! subset of tailguard's rules that CEL can express, so a cluster keeps the
//! basic guard rails while the webhook is unavailable. The webhook remains the
//! full check; this is the fallback.

use serde_json::{Value, json};

/// The rules the fallback policy covers, by tailguard rule name.
pub const COVERED_RULES: &[&str] = &[
    "privileged",
    "host-network",
    "tun-device",
    "literal-auth-key",
    "exit-node-hostname",
];

/// The official image repositories, as CEL string literals test them.
const IMAGE_MATCH: &str = "c.image.contains('tailscale/tailscale')";

/// The policy and its binding, as Kubernetes objects (in that order).
pub fn fallback_policy(name: &str) -> Vec<Value> {
    let variables = json!([
        {
            "name": "podSpec",
            "expression": "object.kind == 'Pod' ? object.spec : (object.kind == 'CronJob' ? object.spec.jobTemplate.spec.template.spec : object.spec.template.spec)"
        },
        {
            "name": "tailscale",
            "expression": format!(
                "(has(variables.podSpec.initContainers) ? variables.podSpec.initContainers : []).filter(c, has(c.image) && {IMAGE_MATCH}) + variables.podSpec.containers.filter(c, has(c.image) && {IMAGE_MATCH})"
            )
        },
        {
            // TS_USERSPACE parsed as Go's strconv.ParseBool reads false.
            "name": "kernel",
            "expression": "variables.tailscale.filter(c, has(c.env) && c.env.exists(e, e.name == 'TS_USERSPACE' && has(e.value) && e.value in ['false', '0', 'f', 'F', 'FALSE', 'False']))"
        },
        {
            "name": "privileged",
            "expression": "variables.kernel.filter(c, has(c.securityContext) && has(c.securityContext.privileged) && c.securityContext.privileged)"
        }
    ]);
    let validations = json!([
        {
            "expression": "object.kind != 'DaemonSet' || size(variables.kernel) == size(variables.privileged)",
            "message": "tailguard fallback [privileged]: a kernel-mode (TS_USERSPACE=false) Tailscale container in a DaemonSet needs securityContext.privileged: true",
            "reason": "Forbidden"
        },
        {
            "expression": "object.kind != 'DaemonSet' || size(variables.kernel) == 0 || (has(variables.podSpec.hostNetwork) && variables.podSpec.hostNetwork)",
            "message": "tailguard fallback [host-network]: a kernel-mode Tailscale DaemonSet needs hostNetwork: true, or it routes the pod instead of the node",
            "reason": "Forbidden"
        },
        {
            "expression": "variables.kernel.all(c, (has(c.securityContext) && has(c.securityContext.privileged) && c.securityContext.privileged) || (has(c.volumeMounts) && has(variables.podSpec.volumes) && c.volumeMounts.exists(m, m.mountPath == '/dev/net/tun' && variables.podSpec.volumes.exists(v, v.name == m.name && has(v.hostPath) && v.hostPath.path == '/dev/net/tun'))))",
            "message": "tailguard fallback [tun-device]: kernel-mode Tailscale needs the host's /dev/net/tun (a hostPath volume mounted at /dev/net/tun) or privileged: true",
            "reason": "Forbidden"
        },
        {
            "expression": "variables.tailscale.all(c, !has(c.env) || c.env.all(e, !(e.name in ['TS_AUTHKEY', 'TS_AUTH_KEY']) || !has(e.value) || e.value == '' || e.value.startsWith('file:') || e.value.contains('$(')))",
            "message": "tailguard fallback [literal-auth-key]: TS_AUTHKEY must come from a Secret (valueFrom.secretKeyRef) or a file: path, never a literal in the manifest",
            "reason": "Forbidden"
        },
        {
            "expression": "variables.tailscale.all(c, !has(c.env) || c.env.all(e, e.name != 'TS_EXTRA_ARGS' || !has(e.value) || e.value.split(' ').all(t, !t.matches('^--?exit-node=') || t.split('=', 2)[1].matches('^([0-9.]*|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*|auto:.*)$'))))",
            "message": "tailguard fallback [exit-node-hostname]: --exit-node must be the exit node's Tailscale IP; tailscale up refuses a hostname while starting",
            "reason": "Forbidden"
        }
    ]);
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": name,
            "annotations": {
                "tailguard.io/generated-by": "tailguard policy export",
                "tailguard.io/covers": COVERED_RULES.join(",")
            }
        },
        "spec": {
            // A CEL error must not block workloads: the webhook is the real check.
            "failurePolicy": "Ignore",
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": ["", "apps", "batch"],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["pods", "deployments", "statefulsets", "daemonsets", "replicasets", "jobs", "cronjobs"]
                }]
            },
            "variables": variables,
            "validations": validations
        }
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {
                    "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]
                }
            }
        }
    });
    vec![policy, binding]
}

/// The policy as a YAML stream.
pub fn fallback_policy_yaml(name: &str) -> Result<String, serde_yaml::Error> {
    let docs = fallback_policy(name)
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(docs.join("---\n"))
}
