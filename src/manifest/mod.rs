//! Reading manifests: multi-document YAML (or JSON) streams, `List` kinds
//! flattened, each document with the line it starts on so errors and findings
//! can point at it; and writing objects back as YAML. Pure: the CLI does the
//! file and stdin reading.

use std::fmt;

use serde_json::Value;
use serde_saphyr::MessageFormatter as _;

mod write;

pub use write::to_yaml;

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

/// Nesting deeper than this is refused (the limit of serde_yaml, which read
/// manifests before; real objects stay far below it).
pub const MAX_DEPTH: usize = 128;
/// The fewest and most events (nodes and their ends) that aliases may replay
/// in one document; see `alias_event_limit`.
pub const MIN_ALIAS_EVENTS: usize = 10_000;
pub const MAX_ALIAS_EVENTS: usize = 100_000;

/// Events that aliases may replay in a document of `len` bytes: 10 per byte,
/// within `MIN_ALIAS_EVENTS..=MAX_ALIAS_EVENTS` (serde_yaml, before, allowed
/// 100 per event of the document). A hand-written manifest reuses a few
/// anchors (an env list, a securityContext): hundreds of events. A "billion
/// laughs" document would replay billions; it is refused at the limit.
pub fn alias_event_limit(len: usize) -> usize {
    len.saturating_mul(10).clamp(MIN_ALIAS_EVENTS, MAX_ALIAS_EVENTS)
}

/// Text that aliases may replay in one document, beyond the document's own
/// length: one alias of a large block scalar is fine, thousands are not.
pub const MAX_ALIAS_BYTES: usize = 16 << 20;

/// How a document of `len` bytes is read: YAML 1.2 as Kubernetes' reader
/// types it (the YAML 1.1 readings of typed fields are `yaml11_fixups`), the
/// same values serde_yaml produced before, and bounds on what aliases replay.
pub(crate) fn read_options(len: usize) -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            // Without aliases, events, nodes and text are bounded by the
            // document's length; only what aliases replay needs a cap (below).
            max_events: usize::MAX,
            max_nodes: usize::MAX,
            max_total_scalar_bytes: len.saturating_add(MAX_ALIAS_BYTES),
            // A manifest may reuse one anchor many times; the replay caps
            // bound the cost, so no ratio heuristic.
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: alias_event_limit(len),
        },
        // `yes`, `on`, `0440`, `1_000` stay strings in untyped values, as in
        // YAML 1.2: `yaml11_fixups` converts the typed fields that need it.
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        // `.inf`/`.nan` read as JSON null, as serde_json has no such numbers.
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
        // A repeated key keeps its last value; `<<` is an ordinary key; `~:` is
        // the key "~" (all as before).
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        merge_keys: serde_saphyr::MergeKeyPolicy::AsOrdinary,
        null_as_string: true,
        // `!!binary` text is kept as written, not decoded.
        ignore_binary_tag_for_string: true,
        // One-line messages: the caller says where.
        with_snippet: false,
    }
}

/// A YAML document that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line in the text parsed, when known.
    pub line: Option<usize>,
    /// What is wrong, without the location.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} at line {line}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for YamlError {}

impl From<serde_saphyr::Error> for YamlError {
    fn from(e: serde_saphyr::Error) -> YamlError {
        use serde_saphyr::Error as E;
        use serde_saphyr::budget::BudgetBreach as B;
        fn original(e: &E) -> &E {
            match e {
                E::WithSnippet { error, .. } | E::AliasError { error, .. } => original(error),
                other => other,
            }
        }
        let message = match original(&e) {
            E::AliasReplayLimitExceeded {
                max_total_replayed_events,
                ..
            } => format!(
                "aliases expand to more than {max_total_replayed_events} YAML events (a YAML alias bomb?): refused"
            ),
            E::AliasExpansionLimitExceeded { .. }
            | E::AliasReplayStackDepthExceeded { .. }
            | E::Budget {
                breach: B::Aliases { .. } | B::RecordedAnchorEvents { .. } | B::RecordedAnchorBytes { .. },
                ..
            } => "aliases expand too far (a YAML alias bomb?): refused".to_owned(),
            E::Budget {
                breach: B::ScalarBytes { .. },
                ..
            } => format!(
                "aliases expand to more than {} MiB of text (a YAML alias bomb?): refused",
                MAX_ALIAS_BYTES >> 20
            ),
            E::Budget {
                breach: B::Depth { .. },
                ..
            } => format!("nested more than {MAX_DEPTH} levels deep"),
            E::Budget { breach, .. } => format!("too large to read ({breach:?})"),
            other => serde_saphyr::DefaultMessageFormatter
                .format_message(other)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        };
        YamlError {
            line: e
                .location()
                .and_then(|l| usize::try_from(l.line()).ok())
                .filter(|&l| l > 0),
            message,
        }
    }
}

/// Parses one YAML document as Kubernetes would read it.
pub fn parse_document(text: &str) -> Result<Value, YamlError> {
    let mut value: Value = serde_saphyr::from_str_with_options(text, read_options(text.len()))?;
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
                line: Some(
                    e.line
                        .map_or(start, |l| start + (l - 1).min(chunk.lines().count().saturating_sub(1))),
                ),
                message: format!("invalid YAML: {}", e.message),
            }),
        }
    }
    (docs, errors)
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
    fn reads_values_as_before_the_move_to_serde_saphyr() {
        let text = "kind: Pod\na: yes\nb: on\nc: 0440\nd: 1_000\ne: .inf\n~: tilde\nf: 1\nf: 2\n<<: {g: 1}\nh: 0x1F\ni: 'yes'\nj: !!binary aGk=\n";
        let value = parse_document(text).expect("valid");
        assert_eq!(
            value,
            serde_json::json!({"kind": "Pod", "a": "yes", "b": "on", "c": "0440", "d": "1_000", "e": null,
                "~": "tilde", "f": 2, "<<": {"g": 1}, "h": 31, "i": "yes", "j": "aGk="})
        );
        let value = parse_document("{\"kind\": \"List\", \"items\": [{\"a\": [1, 2.5, null, true]}]}").expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({"kind": "List", "items": [{"a": [1, 2.5, null, true]}]})
        );
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_with_a_line() {
        let mut text = String::from("kind: ConfigMap\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let (docs, errors) = parse_stream("bomb.yaml", &format!("kind: Pod\n---\n{text}"));
        assert_eq!(docs.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].to_string(),
            format!(
                "bomb.yaml:{}: invalid YAML: aliases expand to more than {MIN_ALIAS_EVENTS} YAML events (a YAML alias bomb?): refused",
                errors[0].line.expect("a line")
            )
        );
        assert!(errors[0].line.is_some_and(|l| (3..=13).contains(&l)), "{}", errors[0]);
        // A few aliases are fine.
        let value = parse_document("a: &a {x: [1, 2]}\nb: *a\nc: *a\n").expect("aliases");
        assert_eq!(value["c"]["x"][1], 2);
        // Unoptimised, the parser needs more stack per level than a test
        // thread's 2 MiB for this depth (the CLI parses on the main thread).
        let deep = std::thread::Builder::new().stack_size(32 << 20).spawn(|| {
            let nested = |depth: usize| format!("a: {}{}\n", "[".repeat(depth), "]".repeat(depth));
            assert!(parse_document(&nested(MAX_DEPTH - 1)).is_ok());
            parse_document(&nested(MAX_DEPTH + 1)).expect_err("too deep")
        });
        let e = deep.expect("thread").join().expect("no overflow");
        assert_eq!(e.message, "nested more than 128 levels deep");
    }
}
