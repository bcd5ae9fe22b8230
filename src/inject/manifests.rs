//! Injection over manifest streams, offline: what `tailguard inject` prints.
//! Pods and the pod templates of Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, Jobs and CronJobs are injected as the webhook would; documents
//! that are not changed are returned exactly as they were read. Pure: the CLI
//! reads the files and writes the output.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;

use super::{Decision, OptIn};
use crate::config::Config;
use crate::manifest::{self, split_documents};
use crate::namespace::{Declared, NamespaceFacts};
use crate::workload::Workload;

/// The result of injecting one stream.
#[derive(Debug, Default)]
pub struct Injected {
    /// The output stream.
    pub output: String,
    /// One line per workload: what was done.
    pub notes: Vec<String>,
    /// Refusals and unreadable documents.
    pub errors: Vec<String>,
    pub denied: bool,
}

/// Injects every workload of one manifest stream.
pub fn inject_stream(
    source: &str,
    text: &str,
    namespace_annotations: &BTreeMap<String, String>,
    config: &Config,
) -> Injected {
    let mut result = Injected::default();
    let chunks = split_documents(text);
    let mut parsed: Vec<(usize, String, Option<Value>)> = Vec::new();
    for (line, chunk) in chunks {
        match manifest::parse_document(&chunk) {
            Ok(v) => parsed.push((line, chunk, Some(v))),
            Err(e) => {
                result.errors.push(format!("{source}:{line}: invalid YAML: {e}"));
                parsed.push((line, chunk, None));
            }
        }
    }
    // Namespaces in the input stand in for the cluster's; one that does not
    // decode is left to `tailguard check` to report.
    let mut namespaces = Declared::default();
    for (_, _, v) in &parsed {
        for item in items(v.as_ref()) {
            let _ = namespaces.add(item);
        }
    }
    let default_ns = Arc::new(Namespace {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            annotations: Some(namespace_annotations.clone()),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut out = Vec::new();
    for (line, chunk, value) in parsed {
        let Some(mut value) = value else {
            out.push(chunk);
            continue;
        };
        let mut changed = false;
        let is_list = value.get("items").is_some_and(Value::is_array)
            && value
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"));
        if is_list {
            if let Some(Value::Array(list)) = value.get_mut("items") {
                for item in list {
                    changed |= inject_object(source, line, item, &namespaces, &default_ns, config, &mut result);
                }
            }
        } else {
            changed = inject_object(source, line, &mut value, &namespaces, &default_ns, config, &mut result);
        }
        if changed {
            match manifest::to_yaml(&value) {
                Ok(yaml) => out.push(yaml),
                Err(e) => {
                    result.errors.push(format!("{source}:{line}: cannot write YAML: {e}"));
                    out.push(chunk);
                }
            }
        } else {
            out.push(chunk);
        }
    }
    result.output = out.join("---\n");
    result
}

fn items(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(v) => match v.get("items").and_then(Value::as_array) {
            Some(list) => list.iter().collect(),
            None => vec![v],
        },
        None => Vec::new(),
    }
}

/// Injects one object in place; true when it changed.
fn inject_object(
    source: &str,
    line: usize,
    object: &mut Value,
    namespaces: &Declared,
    default_ns: &Arc<Namespace>,
    config: &Config,
    result: &mut Injected,
) -> bool {
    let workload = match Workload::from_value(object) {
        Ok(Some(w)) => w,
        Ok(None) => return false,
        Err(e) => {
            result.errors.push(format!("{source}:{line}: {e}"));
            return false;
        }
    };
    let reference = workload.reference();
    let facts = NamespaceFacts::Known(
        namespaces
            .get(workload.namespace())
            .cloned()
            .unwrap_or_else(|| default_ns.clone()),
    );
    match super::decide(&workload, &facts, config, OptIn::Offline) {
        Decision::Inject { patch, summary } => {
            // A pod template may have no metadata yet; the patch adds below it.
            let prefix = super::template_prefix(workload.kind);
            if let Some(template) = pointer_mut(object, prefix)
                && let Value::Object(map) = template
            {
                map.entry("metadata")
                    .or_insert_with(|| Value::Object(Default::default()));
            }
            let applied = patch
                .operations()
                .map_err(|e| e.to_string())
                .and_then(|ops| json_patch::patch(object, &ops).map_err(|e| e.to_string()));
            match applied {
                Ok(()) => {
                    result.notes.push(format!("{reference}: {summary}"));
                    true
                }
                Err(e) => {
                    result
                        .errors
                        .push(format!("{source}:{line}: {reference}: patch does not apply: {e}"));
                    false
                }
            }
        }
        Decision::Skip(why) => {
            result.notes.push(format!("{reference}: not injected: {why}"));
            false
        }
        Decision::AlreadyInjected => {
            result.notes.push(format!("{reference}: already injected"));
            false
        }
        Decision::NotOptedIn => false,
        Decision::Deny(why) => {
            result.errors.push(format!("{source}:{line}: {reference}: {why}"));
            result.denied = true;
            false
        }
    }
}

fn pointer_mut<'a>(v: &'a mut Value, tokens: &[&str]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(v, |v, t| v.get_mut(*t))
}
