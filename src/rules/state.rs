//! `shared-state-secret`: several pods storing their node state in one Secret.

use super::{Context, Findings, RuleId};
use crate::expansion;
use crate::tailscale::{EnvValue, TailscaleContainer};
use crate::workload::WorkloadKind;

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    let Some(many) = cx.workload.many_pods() else {
        return;
    };
    for tc in &cx.containers {
        let (path, secret) = match tc.env.get("TS_KUBE_SECRET") {
            // envFrom may set it: unknown, not the default.
            None if tc.env.has_env_from => continue,
            None => (format!("{}.env", tc.path), "`tailscale`".to_owned()),
            Some((i, EnvValue::Known(v))) if !v.is_empty() => (tc.env_path(i), format!("`{v}`")),
            Some((i, EnvValue::External)) if !per_pod(tc, i, cx.workload.kind) => {
                (tc.env_path(i), "(a value that is the same for every pod)".to_owned())
            }
            // "" keeps state out of Secrets; a per-pod name is what we want.
            Some(_) => continue,
        };
        out.report(
            RuleId::SharedStateSecret,
            path,
            format!(
                "{many} store their Tailscale state in the same Secret {secret} (TS_KUBE_SECRET{}): the first pod writes its machine and node keys there and every other pod starts as that same node, so they share one tailnet identity and address and keep taking the node over from each other",
                if tc.env.is_set("TS_KUBE_SECRET") { "" } else { " defaults to `tailscale`" }
            ),
            "give each pod its own Secret: env POD_NAME from fieldRef metadata.name, then TS_KUBE_SECRET=$(POD_NAME) (RBAC must allow those Secrets); or set TS_KUBE_SECRET=\"\" and keep state in TS_STATE_DIR on a per-node hostPath",
        );
    }
}

/// Whether the external value of env[index] differs per pod (it is, or expands,
/// a fieldRef to the pod's name or uid, or the node's name in a DaemonSet).
fn per_pod(tc: &TailscaleContainer<'_>, index: usize, kind: WorkloadKind) -> bool {
    let vars = tc.env.vars();
    let per_pod_field = |i: usize| {
        vars[i]
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .is_some_and(|f| match f.field_path.as_str() {
                "metadata.name" | "metadata.uid" => true,
                "spec.nodeName" => kind == WorkloadKind::DaemonSet,
                _ => false,
            })
    };
    if vars[index].value_from.is_some() {
        // A ConfigMap/Secret value cannot be judged; only a shared fieldRef is known-bad.
        return vars[index]
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .is_none()
            || per_pod_field(index);
    }
    let value = vars[index].value.as_deref().unwrap_or_default();
    expansion::references(value).any(|(name, _)| tc.env.get_before(name, index).is_some_and(|(j, _)| per_pod_field(j)))
}
