//! UPDATE reviews: violations the old object already had warn instead of
//! deny, so a workload admitted before a rule existed can still be changed.

use super::RequestIn;
use super::{decode_object, with_request_names};
use crate::catalog::{Finding, RuleId, Severity};
use crate::config::Config;
use crate::namespace::NamespaceFacts;
use crate::rules;
use crate::workload::Workload;

/// On UPDATE, a violation the old object already had does not block the update
/// (so a workload admitted before a rule existed can still be scaled, labelled
/// or fixed step by step); it is returned as a warning. Only new ones deny.
pub(super) fn keep_existing_violations(
    request: &RequestIn<'_>,
    workload: &Workload,
    config: &Config,
    facts: &NamespaceFacts,
    findings: &mut [Finding],
) {
    let Some(old) = request
        .old_object
        .and_then(|raw| decode_object(workload.kind, raw).ok())
        .map(|old| with_request_names(old, request))
    else {
        return;
    };
    // Compare by names, not indices: an inserted env var or container shifts indices.
    let before: Vec<(RuleId, String)> = rules::evaluate(&old, config, facts)
        .into_iter()
        .filter(|b| b.severity == Severity::Deny)
        .map(|b| (b.rule, stable_path(&old, &b.path)))
        .collect();
    for f in findings.iter_mut().filter(|f| f.severity == Severity::Deny) {
        let key = (f.rule, stable_path(workload, &f.path));
        if before.contains(&key) {
            f.severity = Severity::Warn;
            f.message = format!("(already present before this update, so not blocking it) {}", f.message);
        }
    }
}

/// A finding path with list indices replaced by the names of what they index
/// (`containers[0].env[3]` → `containers[tailscale].env[TS_EXTRA_ARGS]`).
fn stable_path(w: &Workload, path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut container = None;
    for segment in path.split('.') {
        if !out.is_empty() {
            out.push('.');
        }
        let indexed = segment
            .strip_suffix(']')
            .and_then(|s| s.split_once('['))
            .and_then(|(field, i)| Some((field, i.parse::<usize>().ok()?)));
        let name = indexed.and_then(|(field, i)| match field {
            "containers" => {
                container = w.pod.containers.get(i);
                container.map(|c| c.name.as_str())
            }
            "initContainers" => {
                container = w.pod.init_containers.as_ref().and_then(|v| v.get(i));
                container.map(|c| c.name.as_str())
            }
            "env" => container.and_then(|c| c.env.as_ref()?.get(i)).map(|e| e.name.as_str()),
            "volumes" => w.pod.volumes.as_ref().and_then(|v| v.get(i)).map(|v| v.name.as_str()),
            _ => None,
        });
        match (indexed, name) {
            (Some((field, _)), Some(name)) => {
                out.push_str(field);
                out.push('[');
                out.push_str(name);
                out.push(']');
            }
            _ => out.push_str(segment),
        }
    }
    out
}
