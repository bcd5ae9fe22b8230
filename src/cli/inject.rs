//! `tailguard inject`: the webhook's sidecar injection, offline, on manifests
//! (Pods and the pod templates of Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, Jobs and CronJobs). Documents that are not changed are printed
//! exactly as they were read.
//!
//! Exit status: 0 done, 1 a workload was refused (bad annotation, tun mode in a
//! restricted namespace), 2 unreadable input.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;

use crate::config::Config;
use crate::inject::{self, Decision, OptIn};
use crate::manifest::split_documents;
use crate::rules::NamespaceFacts;
use crate::workload::Workload;

#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Manifest file or directory; `-` (the default) reads stdin.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub files: Vec<PathBuf>,
    /// Annotations of the target namespace, as the webhook would read them
    /// (`tailguard.io/exit-node=100.64.0.1,tailguard.io/mode=userspace`). A
    /// Namespace in the input takes precedence for its own objects.
    #[arg(long, value_delimiter = ',')]
    pub namespace_annotations: Vec<String>,
    /// Policy config (YAML): injection defaults.
    #[arg(long, env = "TAILGUARD_CONFIG")]
    pub config: Option<PathBuf>,
}

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

pub fn run(args: InjectArgs) -> ExitCode {
    let Some(config) = super::load_config(args.config.as_deref(), "inject") else {
        return ExitCode::from(2);
    };
    let mut annotations = BTreeMap::new();
    for pair in &args.namespace_annotations {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                annotations.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => {
                eprintln!("tailguard inject: --namespace-annotations: `{pair}` is not key=value");
                return ExitCode::from(2);
            }
        }
    }
    let (sources, read_errors) = super::read_inputs(&args.files);
    let mut unreadable = !read_errors.is_empty();
    for e in read_errors {
        eprintln!("error: {e}");
    }
    let mut denied = false;
    let mut stdout = std::io::stdout().lock();
    for (i, (source, text)) in sources.iter().enumerate() {
        let result = inject_stream(source, text, &annotations, &config);
        for note in &result.notes {
            eprintln!("{note}");
        }
        for e in &result.errors {
            eprintln!("error: {e}");
        }
        denied |= result.denied;
        unreadable |= !result.errors.is_empty() && !result.denied;
        let sep = if i > 0 { "---\n" } else { "" };
        if let Err(e) = write!(stdout, "{sep}{}", result.output)
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("tailguard inject: cannot write output: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::from(if unreadable {
        2
    } else if denied {
        1
    } else {
        0
    })
}

/// Injects every workload of one manifest stream. Pure: the golden tests call it.
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
        match crate::manifest::parse_document(&chunk) {
            Ok(v) => parsed.push((line, chunk, Some(v))),
            Err(e) => {
                result.errors.push(format!("{source}:{line}: invalid YAML: {e}"));
                parsed.push((line, chunk, None));
            }
        }
    }
    // Namespaces in the input stand in for the cluster's.
    let mut namespaces: BTreeMap<String, Arc<Namespace>> = BTreeMap::new();
    for (_, _, v) in &parsed {
        for item in items(v.as_ref()) {
            if item.get("kind").and_then(Value::as_str) == Some("Namespace")
                && let Ok(ns) = serde_json::from_value::<Namespace>(item.clone())
                && let Some(name) = ns.metadata.name.clone()
            {
                namespaces.insert(name, Arc::new(ns));
            }
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
            match crate::manifest::to_yaml(&value) {
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
    namespaces: &BTreeMap<String, Arc<Namespace>>,
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
        workload
            .namespace()
            .and_then(|ns| namespaces.get(ns))
            .cloned()
            .unwrap_or_else(|| default_ns.clone()),
    );
    match inject::decide(&workload, &facts, config, OptIn::Offline) {
        Decision::Inject { patch, summary } => {
            // A pod template may have no metadata yet; the patch adds below it.
            let prefix = inject::template_prefix(workload.kind);
            if let Some(template) = pointer_mut(object, prefix)
                && let Value::Object(map) = template
            {
                map.entry("metadata")
                    .or_insert_with(|| Value::Object(Default::default()));
            }
            match json_patch::patch(object, &patch) {
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
