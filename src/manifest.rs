//! Reading manifests: multi-document YAML (or JSON) streams, `List` kinds
//! flattened, each document with the line it starts on so errors and findings
//! can point at it. Pure: the CLI does the file and stdin reading.

use std::fmt;

use serde_json::Value;

/// One object from a manifest stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file it came from (`-` for stdin).
    pub source: String,
    /// 1-based line where its YAML document starts.
    pub line: usize,
    pub object: Value,
}

/// A document that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub source: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// Splits a YAML stream into its documents' (start line, text). A document
/// separator is `---` at the start of a line; `...` ends a document.
pub fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_marker =
            |m: &str| line == m || line.starts_with(&format!("{m} ")) || line.starts_with(&format!("{m}\t"));
        if is_marker("---") {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 1;
            // `--- {inline: doc}` keeps its content on the marker line.
            let rest = line[3..].trim_start();
            if !rest.is_empty() && !rest.starts_with('#') {
                current.push_str(rest);
                current.push('\n');
            } else {
                start = i + 2;
            }
        } else if is_marker("...") {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
        } else {
            if current.is_empty() && line.trim().is_empty() {
                start = i + 2;
                continue;
            }
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs.retain(|(_, d)| !d.trim().is_empty());
    docs
}

/// Kubernetes reads manifests as YAML 1.1 (sigs.k8s.io/yaml); the parser here
/// is YAML 1.2. Where that changes a value's type in a typed field, convert it
/// back: `defaultMode: 0440` is octal 288, `hostNetwork: yes` is true.
const OCTAL_FIELDS: &[&str] = &["defaultMode", "mode"];
const BOOL_FIELDS: &[&str] = &[
    "allowPrivilegeEscalation",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "hostIPC",
    "hostNetwork",
    "hostPID",
    "hostUsers",
    "optional",
    "privileged",
    "readOnly",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "stdin",
    "stdinOnce",
    "tty",
];

fn yaml11_fixups(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if let Value::String(s) = v {
                    if OCTAL_FIELDS.contains(&key.as_str())
                        && s.len() > 1
                        && s.starts_with('0')
                        && s.bytes().all(|b| (b'0'..=b'7').contains(&b))
                        && let Ok(n) = i64::from_str_radix(s, 8)
                    {
                        *v = Value::from(n);
                    } else if BOOL_FIELDS.contains(&key.as_str()) {
                        match s.as_str() {
                            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => *v = Value::Bool(true),
                            "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => *v = Value::Bool(false),
                            _ => {}
                        }
                    }
                } else {
                    yaml11_fixups(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(yaml11_fixups),
        _ => {}
    }
}

/// Parses one YAML document as Kubernetes would read it.
pub fn parse_document(text: &str) -> Result<Value, serde_yaml::Error> {
    let mut value: Value = serde_yaml::from_str(text)?;
    yaml11_fixups(&mut value);
    Ok(value)
}

/// Parses a manifest stream. Returns the objects read and the errors met;
/// one broken document does not hide the others.
pub fn parse_stream(source: &str, text: &str) -> (Vec<Document>, Vec<ReadError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (start, chunk) in split_documents(text) {
        match parse_document(&chunk) {
            Ok(Value::Null) => {}
            Ok(value) => flatten(source, start, value, &mut docs, &mut errors),
            Err(e) => errors.push(ReadError {
                source: source.to_owned(),
                // The parser may point just past the end of the document; clamp to its last line.
                line: Some(e.location().map_or(start, |l| {
                    start + (l.line() - 1).min(chunk.lines().count().saturating_sub(1))
                })),
                message: format!("invalid YAML: {}", strip_location(&e.to_string())),
            }),
        }
    }
    (docs, errors)
}

fn strip_location(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}

fn flatten(source: &str, line: usize, value: Value, docs: &mut Vec<Document>, errors: &mut Vec<ReadError>) {
    let Value::Object(map) = value else {
        errors.push(ReadError {
            source: source.to_owned(),
            line: Some(line),
            message: "document is not a Kubernetes object (expected a mapping with apiVersion and kind)".into(),
        });
        return;
    };
    let is_list = map
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == "List" || k.ends_with("List"));
    let mut object = Value::Object(map);
    if is_list && let Value::Array(items) = object["items"].take() {
        for item in items {
            flatten(source, line, item, docs, errors);
        }
        return;
    }
    docs.push(Document {
        source: source.to_owned(),
        line,
        object,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_with_their_lines() {
        let text = "# leading comment\napiVersion: v1\nkind: ConfigMap\n---\n\n---\nkind: Pod\nmetadata: {name: a}\n...\n--- {kind: Secret}\n";
        let (docs, errors) = parse_stream("f.yaml", text);
        assert!(errors.is_empty(), "{errors:?}");
        let kinds: Vec<(&str, usize)> = docs
            .iter()
            .map(|d| (d.object["kind"].as_str().unwrap_or("?"), d.line))
            .collect();
        assert_eq!(kinds, vec![("ConfigMap", 1), ("Pod", 7), ("Secret", 10)]);
    }

    #[test]
    fn flattens_lists_and_reports_errors_with_lines() {
        let text = "kind: List\nitems:\n- kind: Pod\n- kind: DaemonSet\n---\nkind: Pod\nmetadata: [unclosed\n---\n- just a list\n";
        let (docs, errors) = parse_stream("f.yaml", text);
        assert_eq!(docs.len(), 2);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].line, Some(7), "{}", errors[0]);
        assert_eq!(errors[1].line, Some(9), "{}", errors[1]);
    }

    #[test]
    fn reads_yaml_1_1_octal_modes_and_booleans_as_kubernetes_does() {
        let text = "kind: Pod\nspec:\n  hostNetwork: yes\n  volumes:\n  - secret: {defaultMode: 0440}\n  containers:\n  - env: [{name: A, value: 'yes'}]\n";
        let (docs, errors) = parse_stream("f", text);
        assert!(errors.is_empty(), "{errors:?}");
        let spec = &docs[0].object["spec"];
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["volumes"][0]["secret"]["defaultMode"], 288);
        assert_eq!(
            spec["containers"][0]["env"][0]["value"], "yes",
            "string fields stay strings"
        );
    }

    #[test]
    fn block_scalars_keep_their_content() {
        let text = "kind: ConfigMap\ndata:\n  a: |\n    line one\n    --- not a marker\n";
        let (docs, errors) = parse_stream("f", text);
        assert!(errors.is_empty());
        assert_eq!(docs[0].object["data"]["a"], "line one\n--- not a marker\n");
    }
}
