//! Golden injection cases: `tests/inject/<case>.yaml` → `<case>.injected.yaml`
//! (what `tailguard inject` prints), or `<case>.denied.txt` (text the refusal
//! must contain). Cases are discovered automatically; `TAILGUARD_BLESS=1`
//! rewrites the golden files.
//!
//! Each case also runs every Pod through the webhook path (`admission::mutate`)
//! and applies the returned JSON Patch with the json-patch crate: the result
//! must equal the CLI's output, so the two paths cannot drift. And every
//! injected workload must pass tailguard's own rules, and injecting again must
//! change nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;
use tailguard::admission::{NamespaceSource, mutate};
use tailguard::cli::inject::inject_stream;
use tailguard::config::Config;
use tailguard::manifest::parse_stream;
use tailguard::rules::{self, NamespaceFacts};
use tailguard::workload::Workload;

use crate::support::Review;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/inject")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_str()
                .is_some_and(|s| s.ends_with(".yaml") && !s.ends_with(".injected.yaml"))
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "injection cases went missing: {cases:?}");
    cases
}

struct Namespaces(BTreeMap<String, Arc<Namespace>>);

impl NamespaceSource for Namespaces {
    fn namespace(&self, name: &str) -> NamespaceFacts {
        self.0
            .get(name)
            .map_or(NamespaceFacts::Missing, |ns| NamespaceFacts::Known(ns.clone()))
    }
}

fn namespaces(objects: &[Value]) -> Namespaces {
    Namespaces(
        objects
            .iter()
            .filter(|o| o["kind"] == "Namespace")
            .filter_map(|o| serde_json::from_value::<Namespace>(o.clone()).ok())
            .filter_map(|ns| Some((ns.metadata.name.clone()?, Arc::new(ns))))
            .collect(),
    )
}

fn objects(source: &str, text: &str) -> Vec<Value> {
    let (docs, errors) = parse_stream(source, text);
    assert!(errors.is_empty(), "{source}: {errors:?}");
    docs.into_iter().map(|d| d.object).collect()
}

const UID: &str = "c0ffee00-0000-4000-8000-000000000001";

fn pod_review(pod: &Value) -> Vec<u8> {
    Review::create(pod.clone()).uid(UID).to_vec()
}

/// The policy every golden case is injected with (tests/inject/config/policy.yaml).
fn golden_config() -> Config {
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject/config/policy.yaml"))
        .expect("tests/inject/config/policy.yaml")
}

/// Runs the webhook on `pod`; returns the patched pod, or None when no patch came back.
fn webhook(pod: &Value, ns: &dyn NamespaceSource) -> Result<Option<Value>, String> {
    let reviewed = mutate(&pod_review(pod), &golden_config(), ns).map_err(|e| e.to_string())?;
    let response: Value = serde_json::from_slice(&reviewed.body).map_err(|e| e.to_string())?;
    let r = &response["response"];
    assert_eq!(r["uid"], UID);
    if r["allowed"] != true {
        return Err(r["status"]["message"].as_str().unwrap_or_default().to_owned());
    }
    let Some(b64) = r["patch"].as_str() else {
        return Ok(None);
    };
    assert_eq!(r["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| e.to_string())?;
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).map_err(|e| format!("webhook patch does not apply: {e}"))?;
    Ok(Some(patched))
}

fn run_case(case: &Path, bless: bool) -> Result<(), String> {
    let name = case.display().to_string();
    let text = std::fs::read_to_string(case).map_err(|e| e.to_string())?;
    let input = objects(&name, &text);
    let ns = namespaces(&input);
    let config = golden_config();
    let result = inject_stream(&name, &text, &BTreeMap::new(), &config);
    let denied_file = case.with_extension("denied.txt");
    let golden = PathBuf::from(name.replace(".yaml", ".injected.yaml"));

    if denied_file.exists() {
        let want = std::fs::read_to_string(&denied_file).map_err(|e| e.to_string())?;
        let want = want.trim();
        if !result.denied || !result.errors.iter().any(|e| e.contains(want)) {
            return Err(format!(
                "expected a refusal containing {want:?}, got {:?}",
                result.errors
            ));
        }
        for pod in input.iter().filter(|o| o["kind"] == "Pod") {
            match webhook(pod, &ns) {
                Err(message) if message.contains(want) => {}
                other => return Err(format!("webhook must refuse with {want:?}, got {other:?}")),
            }
        }
        return Ok(());
    }
    if !result.errors.is_empty() {
        return Err(format!("unexpected errors: {:?}", result.errors));
    }
    if bless {
        std::fs::write(&golden, &result.output).map_err(|e| e.to_string())?;
    }
    let want = std::fs::read_to_string(&golden)
        .map_err(|e| format!("{}: {e} (run with TAILGUARD_BLESS=1 to create it)", golden.display()))?;
    if result.output != want {
        return Err(format!(
            "output differs from {}:\n--- got ---\n{}",
            golden.display(),
            result.output
        ));
    }
    let output = objects(&name, &result.output);
    assert_eq!(output.len(), input.len(), "{name}: documents lost or added");

    // Webhook path: the same result, by patch.
    for (before, after) in input.iter().zip(&output) {
        if before["kind"] != "Pod" {
            continue;
        }
        let opted_in = ns.0.values().any(|n| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("tailguard.io/inject"))
                .map(String::as_str)
                == Some("enabled")
        });
        match webhook(before, &ns)? {
            Some(patched) if &patched != after => {
                return Err(format!(
                    "webhook result differs from CLI output:\n{patched:#}\nvs\n{after:#}"
                ));
            }
            Some(_) => {}
            None if opted_in && before != after => return Err("the CLI injected but the webhook did not".into()),
            None => {}
        }
        // Reinvocation on the injected pod: no patch.
        if before != after && webhook(after, &ns)?.is_some() {
            return Err("a second pass over the injected pod returned a patch".into());
        }
    }
    // Every injected workload passes tailguard's own rules.
    for (before, after) in input.iter().zip(&output) {
        if before == after {
            continue;
        }
        let w = Workload::from_value(after)
            .map_err(|e| e.to_string())?
            .ok_or("not a workload")?;
        let facts = w.namespace().map_or(NamespaceFacts::Unknown, |n| ns.namespace(n));
        let findings = rules::evaluate(&w, &config, &facts);
        if !findings.is_empty() {
            return Err(format!("injected workload fails tailguard's rules: {findings:#?}"));
        }
    }
    // Idempotent offline too.
    let again = inject_stream(&name, &result.output, &BTreeMap::new(), &config);
    if again.output != result.output {
        return Err("injecting the output again changed it".into());
    }
    Ok(())
}

#[test]
fn golden_injection_cases() {
    let bless = std::env::var("TAILGUARD_BLESS").as_deref() == Ok("1");
    let failures: Vec<String> = cases()
        .iter()
        .filter_map(|c| run_case(c, bless).err().map(|e| format!("{}:\n{e}", c.display())))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn unknown_namespace_is_refused_not_guessed() {
    let pod = objects(
        "p",
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject/namespace-opt-in.yaml"))
            .expect("case"),
    )
    .into_iter()
    .find(|o| o["kind"] == "Pod")
    .expect("pod");
    let err = webhook(&pod, &Unknown).expect_err("must refuse");
    assert!(err.contains("cannot read namespace apps"), "{err}");
}

struct Unknown;
impl NamespaceSource for Unknown {
    fn namespace(&self, _: &str) -> NamespaceFacts {
        NamespaceFacts::Unknown
    }
}
