//! A ValidatingAdmissionPolicy (CEL, evaluated by the apiserver itself) for the
//! subset of tailguard's rules that CEL can express, so a cluster keeps the
//! basic guard rails while the webhook is unavailable. The webhook remains the
//! full check; this is the fallback.

use serde_json::{Value, json};

/// The rules the fallback policy covers, by tailguard rule name.
pub const COVERED_RULES: &[&str] = &["privileged", "literal-auth-key", "exit-node-hostname"];

/// The official image repositories, as CEL string literals test them.
const IMAGE_MATCH: &str = "c.image.contains('tailscale/tailscale')";

/// A container that runs containerboot: no `command` replacing the image's entrypoint.
const RUNS_CONTAINERBOOT: &str = "(!has(c.command) || size(c.command) == 0)";

/// The policy and its binding, as Kubernetes objects (in that order). It
/// covers only verdicts that hold on every runtime and node; the ones that
/// depend on the runtime (`tun-device`) or are warnings stay with the webhook.
pub fn fallback_policy(name: &str) -> Vec<Value> {
    let variables = json!([
        {
            "name": "podSpec",
            "expression": "object.kind == 'Pod' ? object.spec : (object.kind == 'CronJob' ? object.spec.jobTemplate.spec.template.spec : object.spec.template.spec)"
        },
        {
            // containerboot containers: main ones, and native sidecars (a plain
            // init container runs to completion and is never Tailscale).
            "name": "tailscale",
            "expression": format!(
                "(has(variables.podSpec.initContainers) ? variables.podSpec.initContainers : []).filter(c, has(c.image) && {IMAGE_MATCH} && {RUNS_CONTAINERBOOT} && has(c.restartPolicy) && c.restartPolicy == 'Always') + variables.podSpec.containers.filter(c, has(c.image) && {IMAGE_MATCH} && {RUNS_CONTAINERBOOT})"
            )
        },
        {
            // TS_USERSPACE parsed as Go's strconv.ParseBool reads false.
            "name": "kernel",
            "expression": "variables.tailscale.filter(c, has(c.env) && c.env.exists(e, e.name == 'TS_USERSPACE' && has(e.value) && e.value in ['false', '0', 'f', 'F', 'FALSE', 'False']))"
        },
        {
            // Privileged, or NET_ADMIN added: what creating tailscale0 needs.
            "name": "netAdmin",
            "expression": "variables.kernel.filter(c, has(c.securityContext) && ((has(c.securityContext.privileged) && c.securityContext.privileged) || (has(c.securityContext.capabilities) && has(c.securityContext.capabilities.add) && c.securityContext.capabilities.add.exists(a, a in ['NET_ADMIN', 'CAP_NET_ADMIN', 'ALL']))))"
        }
    ]);
    let validations = json!([
        {
            "expression": "size(variables.kernel) == size(variables.netAdmin)",
            "message": "tailguard fallback [privileged]: a kernel-mode (TS_USERSPACE=false) Tailscale container needs NET_ADMIN (securityContext.capabilities.add) or privileged: true, or tailscaled cannot create tailscale0",
            "reason": "Forbidden"
        },
        {
            "expression": "variables.tailscale.all(c, !has(c.env) || c.env.all(e, !(e.name in ['TS_AUTHKEY', 'TS_AUTH_KEY']) || !has(e.value) || e.value == '' || e.value.startsWith('file:') || e.value.contains('$(')))",
            "message": "tailguard fallback [literal-auth-key]: TS_AUTHKEY must come from a Secret (valueFrom.secretKeyRef) or a file: path, never a literal in the manifest",
            "reason": "Forbidden"
        },
        {
            "expression": "variables.tailscale.all(c, !has(c.env) || c.env.all(e, e.name != 'TS_EXTRA_ARGS' || !has(e.value) || e.value.split(' ').all(t, !t.matches('^--?exit-node=') || t.contains('$(') || t.split('=', 2)[1].matches('^([0-9.]*|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*|auto:.*)$'))))",
            "message": "tailguard fallback [exit-node-hostname]: --exit-node must be the exit node's Tailscale IP; tailscale up refuses a name while it starts",
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
pub fn fallback_policy_yaml(name: &str) -> Result<String, serde_saphyr::SerializeError> {
    let docs = fallback_policy(name)
        .iter()
        .map(crate::manifest::to_yaml)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(docs.join("---\n"))
}
