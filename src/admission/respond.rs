//! The AdmissionReview response: status, warnings and patch, rendered from a
//! [`Verdict`].

use base64::Engine as _;
use kube::core::Status;
use serde::Serialize;

use super::{API_VERSION, KIND, Outcome, Verdict};
use crate::catalog::{Finding, Severity};
use crate::config::Enforcement;

#[derive(Serialize)]
struct ReviewOut<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// Base64 RFC 6902 patch (the documented form; kube-core would send a byte array).
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(rename = "patchType", skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
}

/// The denial message shown by kubectl: every deny finding, one per line.
pub fn denial_message(object: &str, findings: &[Finding]) -> String {
    let mut message = format!("tailguard denied {object}:");
    for f in findings.iter().filter(|f| f.severity == Severity::Deny) {
        message.push_str("\n- ");
        message.push_str(&f.to_string());
    }
    message
}

/// The warnings of a review: with `enforcement: warn`, the deny findings that
/// were let through (first: they matter most), then the warn findings.
fn warnings(verdict: &Verdict) -> Vec<String> {
    let mut out = Vec::new();
    // `audit` records would-be denials in logs and metrics only.
    if verdict.enforcement == Some(Enforcement::Warn) && !verdict.would_deny.is_empty() {
        out = grouped_warnings(
            &verdict.findings,
            Severity::Deny,
            "tailguard would deny (enforcement: warn):",
        );
    }
    out.extend(grouped_warnings(&verdict.findings, Severity::Warn, "tailguard:"));
    out
}

/// One warning per rule, listing every path: the apiserver cuts each warning
/// to 256 characters once a response's warnings pass 4 KiB, which would drop
/// the fixes if every finding had its own.
fn grouped_warnings(findings: &[Finding], severity: Severity, prefix: &str) -> Vec<String> {
    let mut grouped: Vec<(&Finding, Vec<&str>)> = Vec::new();
    for f in findings.iter().filter(|f| f.severity == severity) {
        match grouped.iter_mut().find(|(first, _)| first.rule == f.rule) {
            Some((_, paths)) => paths.push(&f.path),
            None => grouped.push((f, vec![&f.path])),
        }
    }
    grouped
        .into_iter()
        .map(|(f, paths)| {
            let more = if paths.len() > 1 {
                format!(" (and {} more)", paths.len() - 1)
            } else {
                String::new()
            };
            format!(
                "{prefix} [{}] {}: {}{more} Fix: {}",
                f.rule,
                paths.join(", "),
                f.message,
                f.hint
            )
        })
        .collect()
}

pub(super) fn respond(verdict: &Verdict) -> Vec<u8> {
    let object = verdict.object.as_deref().unwrap_or("object");
    let status = match &verdict.outcome {
        Outcome::Allowed { .. } => None,
        Outcome::Denied => {
            Some(Status::failure(&denial_message(object, &verdict.findings), "Forbidden").with_code(403))
        }
        Outcome::Unreadable(e) => Some(Status::failure(e, "BadRequest").with_code(400)),
        Outcome::Refused(why) => {
            Some(Status::failure(&format!("tailguard denied {object}: {why}"), "Forbidden").with_code(403))
        }
    };
    let warnings = warnings(verdict)
        .into_iter()
        .chain(verdict.notes.iter().cloned())
        .collect();
    let patch = verdict
        .patch()
        .filter(|p| !p.is_empty())
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p.as_bytes()));
    let out = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: ResponseOut {
            uid: &verdict.uid,
            allowed: verdict.allowed(),
            status,
            warnings,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
        },
    };
    // Serializing plain structs of strings cannot fail.
    serde_json::to_vec(&out).unwrap_or_else(|_| b"{}".to_vec())
}
