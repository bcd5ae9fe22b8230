//! `tailguard check --output sarif`: the check report as a SARIF 2.1.0 log,
//! the format GitHub code scanning (and other SARIF viewers) ingest.
//!
//! One run; the driver lists every rule (not only those found) with the
//! level the loaded config gives it, so a viewer can explain any result and
//! show what is switched off.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::config::Config;
use crate::rules::{Level, RuleId, Severity};

use crate::check::{Located, Report};

pub const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";
pub const VERSION: &str = "2.1.0";
/// Key of our own fingerprint in `partialFingerprints`; bump the suffix if
/// the hashed fields ever change, so old and new alerts are not confused.
pub const FINGERPRINT_KEY: &str = "tailguard/v1";

#[derive(Debug, Serialize)]
pub struct Log {
    #[serde(rename = "$schema")]
    pub schema: &'static str,
    pub version: &'static str,
    pub runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub tool: Tool,
    pub invocations: Vec<Invocation>,
    pub results: Vec<SarifResult>,
}

#[derive(Debug, Serialize)]
pub struct Tool {
    pub driver: Driver,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Driver {
    pub name: &'static str,
    pub version: &'static str,
    pub semantic_version: &'static str,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub id: &'static str,
    pub name: String,
    pub short_description: Text,
    pub full_description: Text,
    pub help: Text,
    pub default_configuration: Configuration,
}

#[derive(Debug, Serialize)]
pub struct Configuration {
    pub level: &'static str,
    /// Only written for rules the config turns off (SARIF's default is true).
    #[serde(skip_serializing_if = "is_true")]
    pub enabled: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Serialize)]
pub struct Text {
    pub text: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    pub execution_successful: bool,
    pub tool_execution_notifications: Vec<Notification>,
}

#[derive(Debug, Serialize)]
pub struct Notification {
    pub level: &'static str,
    pub message: Text,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SarifResult {
    pub rule_id: &'static str,
    pub rule_index: usize,
    pub level: &'static str,
    pub message: Text,
    pub locations: Vec<Location>,
    pub partial_fingerprints: BTreeMap<&'static str, String>,
    pub properties: ResultProperties,
}

#[derive(Debug, Serialize)]
pub struct ResultProperties {
    /// Object path of the offending field, as in the text and JSON output.
    pub path: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub physical_location: PhysicalLocation,
    pub logical_locations: Vec<LogicalLocation>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalLocation {
    pub artifact_location: ArtifactLocation,
    pub region: Region,
}

#[derive(Debug, Serialize)]
pub struct ArtifactLocation {
    pub uri: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Region {
    pub start_line: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogicalLocation {
    pub name: String,
    pub fully_qualified_name: String,
    pub kind: &'static str,
}

/// The SARIF log for a check report. `cwd` (the working directory) turns
/// absolute input paths below it into repository-relative URIs.
pub fn log(report: &Report, config: &Config, cwd: Option<&Path>) -> Log {
    let rules = RuleId::ALL
        .iter()
        .map(|&rule| describe(rule, config.level(rule)))
        .collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let results = report.findings.iter().map(|f| result(f, cwd, &mut seen)).collect();
    let notifications = report
        .errors
        .iter()
        .map(|e| Notification {
            level: "error",
            message: Text { text: e.clone() },
        })
        .collect();
    Log {
        schema: SCHEMA,
        version: VERSION,
        runs: vec![Run {
            tool: Tool {
                driver: Driver {
                    name: "tailguard",
                    version: env!("CARGO_PKG_VERSION"),
                    semantic_version: env!("CARGO_PKG_VERSION"),
                    rules,
                },
            },
            invocations: vec![Invocation {
                execution_successful: report.errors.is_empty(),
                tool_execution_notifications: notifications,
            }],
            results,
        }],
    }
}

fn describe(rule: RuleId, level: Level) -> Rule {
    let summary = rule.summary();
    Rule {
        id: rule.name(),
        name: pascal_case(rule.name()),
        short_description: Text {
            text: summary.to_owned(),
        },
        full_description: Text {
            text: format!("{summary} (default level: {}).", level_name(rule.default_level())),
        },
        help: Text {
            text: format!(
                "Catches: {summary}. Each result names the offending field and ends with how to fix it. \
                 The level is set in the policy config (`rules: {{{}: deny|warn|off}}`); \
                 a namespace opts out with the `{}` annotation.",
                rule.name(),
                crate::rules::SKIP_RULES_ANNOTATION
            ),
        },
        default_configuration: match level {
            Level::Deny => Configuration {
                level: "error",
                enabled: true,
            },
            Level::Warn => Configuration {
                level: "warning",
                enabled: true,
            },
            Level::Off => Configuration {
                level: "none",
                enabled: false,
            },
        },
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Deny => "deny",
        Level::Warn => "warn",
        Level::Off => "off",
    }
}

/// `exit-node-hostname` -> `ExitNodeHostname`: SARIF's `name` is an identifier.
fn pascal_case(kebab: &str) -> String {
    kebab
        .split('-')
        .flat_map(|word| {
            let mut chars = word.chars();
            chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars)
        })
        .collect()
}

fn result(f: &Located, cwd: Option<&Path>, seen: &mut BTreeMap<String, usize>) -> SarifResult {
    let finding = &f.finding;
    let uri = artifact_uri(&f.file, cwd);
    // Messages are sentences without their final stop; viewers show the text as is.
    let text = match (finding.hint.is_empty(), finding.message.ends_with(['.', '!', '?'])) {
        (true, _) => finding.message.clone(),
        (false, true) => format!("{} Fix: {}", finding.message, finding.hint),
        (false, false) => format!("{}. Fix: {}", finding.message, finding.hint),
    };
    // Not the line: moving a document in its file must not make a new alert.
    // The occurrence count keeps two results with the same key apart.
    let hash = fingerprint(&[&uri, finding.rule.name(), &f.object, &finding.path]);
    let n = seen.entry(hash.clone()).or_insert(0);
    *n += 1;
    let name = f.object.rsplit('/').next().unwrap_or(&f.object).to_owned();
    SarifResult {
        rule_id: finding.rule.name(),
        // RuleId::ALL is in declaration order, as the driver's rules are.
        rule_index: finding.rule as usize,
        level: match finding.severity {
            Severity::Deny => "error",
            Severity::Warn => "warning",
        },
        message: Text { text },
        locations: vec![Location {
            physical_location: PhysicalLocation {
                artifact_location: ArtifactLocation { uri },
                region: Region {
                    start_line: f.line.max(1),
                },
            },
            logical_locations: vec![LogicalLocation {
                name,
                fully_qualified_name: f.object.clone(),
                kind: "resource",
            }],
        }],
        partial_fingerprints: BTreeMap::from([(FINGERPRINT_KEY, format!("{hash}:{n}"))]),
        properties: ResultProperties {
            path: finding.path.clone(),
        },
    }
}

/// 64-bit FNV-1a over the fields, NUL-separated: fixed by definition, unlike
/// std's hasher, so fingerprints stay the same across tailguard builds.
fn fingerprint(fields: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for field in fields {
        for &b in field.as_bytes().iter().chain(&[0u8]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// The input's name as a URI reference: relative paths stay relative (code
/// scanning resolves them against the repository root), absolute ones below
/// `cwd` become relative to it, others become `file://` URIs; stdin is `stdin`.
pub fn artifact_uri(file: &str, cwd: Option<&Path>) -> String {
    if file == "-" {
        return "stdin".to_owned();
    }
    let path = Path::new(file);
    if path.is_absolute() {
        if let Some(rel) = cwd.and_then(|c| path.strip_prefix(c).ok())
            && let Some(rel) = rel.to_str()
            && !rel.is_empty()
        {
            return encode(&rel.replace('\\', "/"), false);
        }
        let slashed = file.replace('\\', "/");
        // A Windows drive path (`C:/x`) needs the third slash a Unix one brings.
        let sep = if slashed.starts_with('/') {
            "file://"
        } else {
            "file:///"
        };
        return format!("{sep}{}", encode(&slashed, true));
    }
    let slashed = file.replace('\\', "/");
    let mut rel = slashed.as_str();
    while let Some(rest) = rel.strip_prefix("./") {
        rel = rest;
    }
    encode(rel, false)
}

/// Percent-encodes all but unreserved characters and `/` (and `:` where it
/// cannot be mistaken for a scheme), so spaces and the like stay valid URIs.
fn encode(path: &str, keep_colon: bool) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) || (keep_colon && b == b':') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_relative_where_possible_and_encoded() {
        let cwd = Path::new("/repo");
        assert_eq!(artifact_uri("-", Some(cwd)), "stdin");
        assert_eq!(artifact_uri("manifests/a.yaml", Some(cwd)), "manifests/a.yaml");
        assert_eq!(artifact_uri("./manifests/a.yaml", None), "manifests/a.yaml");
        assert_eq!(artifact_uri("/repo/manifests/a.yaml", Some(cwd)), "manifests/a.yaml");
        assert_eq!(
            artifact_uri("/elsewhere/a b.yaml", Some(cwd)),
            "file:///elsewhere/a%20b.yaml"
        );
        assert_eq!(artifact_uri("dir/ü #1.yaml", None), "dir/%C3%BC%20%231.yaml");
        assert_eq!(artifact_uri("c:x.yaml", None), "c%3Ax.yaml");
    }

    #[test]
    fn names_and_fingerprints_are_stable() {
        assert_eq!(pascal_case("exit-node-hostname"), "ExitNodeHostname");
        assert_eq!(pascal_case("resources"), "Resources");
        // FNV-1a's published test vector: the empty input hashes to the offset basis.
        assert_eq!(fingerprint(&[]), "cbf29ce484222325");
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
    }

    #[test]
    fn rule_index_is_the_position_in_the_driver_rules() {
        for (i, rule) in RuleId::ALL.iter().enumerate() {
            assert_eq!(*rule as usize, i, "{rule}");
        }
    }
}
