//! AdmissionReview in, AdmissionReview out: the webhook's decision as a pure
//! function of the request body and a namespace snapshot. The HTTP layer only
//! moves bytes.
//!
//! The request is decoded once, into types that hold only what the rules read:
//! `oldObject`, `userInfo`, `managedFields` and `status` are skipped by the
//! parser without being built.

use kube::core::Status;
use kube::core::admission::Operation;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::Config;
use crate::rules::{self, Finding, NamespaceFacts, Severity};
use crate::workload::{Meta, Workload, WorkloadKind};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Where the rules get namespace facts from (the cluster cache, or nothing).
pub trait NamespaceSource {
    fn namespace(&self, name: &str) -> NamespaceFacts;
}

/// No cluster access: namespace-aware rules are skipped.
pub struct NoCluster;

impl NamespaceSource for NoCluster {
    fn namespace(&self, _: &str) -> NamespaceFacts {
        NamespaceFacts::Unknown
    }
}

/// A body that is not an AdmissionReview tailguard can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not valid JSON for an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported review {api_version}/{kind}: tailguard serves {API_VERSION} {KIND} only")]
    Version { api_version: String, kind: String },
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has no uid")]
    NoUid,
}

/// The decision, for the caller's logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub uid: String,
    pub allowed: bool,
    /// `Kind/namespace/name` of the object, when it was one tailguard reads.
    pub object: Option<String>,
    pub findings: Vec<Finding>,
    /// Set when the object could not be read; the review is then refused.
    pub unreadable: Option<String>,
}

/// The review response: bytes to send, and what was decided.
#[derive(Debug)]
pub struct Reviewed {
    pub body: Vec<u8>,
    pub verdict: Verdict,
}

// --- request (decode only what is read) ---

#[derive(Deserialize)]
struct ReviewIn<'a> {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    /// Decoded after the version check, so a foreign review gets that error.
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    #[serde(default)]
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    operation: Operation,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    kind: String,
}

#[derive(Deserialize)]
struct ObjectIn<'a> {
    #[serde(default)]
    metadata: Option<Meta>,
    #[serde(borrow, default)]
    spec: Option<&'a RawValue>,
}

// --- response ---

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
}

/// Answers a `/validate` review.
pub fn validate(body: &[u8], config: &Config, namespaces: &dyn NamespaceSource) -> Result<Reviewed, ReviewError> {
    let review: ReviewIn<'_> = serde_json::from_slice(body)?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::Version {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let request: RequestIn<'_> = serde_json::from_str(review.request.ok_or(ReviewError::NoRequest)?.get())?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    let verdict = decide(&request, config, namespaces);
    Ok(Reviewed {
        body: respond(&verdict),
        verdict,
    })
}

fn decide(request: &RequestIn<'_>, config: &Config, namespaces: &dyn NamespaceSource) -> Verdict {
    let allow = |object: Option<String>| Verdict {
        uid: request.uid.clone(),
        allowed: true,
        object,
        findings: Vec::new(),
        unreadable: None,
    };
    // Only creates and updates of the object itself carry a pod spec to judge.
    let judged = matches!(request.operation, Operation::Create | Operation::Update)
        && request.sub_resource.as_deref().is_none_or(str::is_empty)
        && matches!(request.kind.group.as_str(), "" | "apps" | "batch");
    let (Some(kind), Some(object), true) = (WorkloadKind::from_kind(&request.kind.kind), request.object, judged) else {
        return allow(None);
    };
    let reference = |meta: &Meta| {
        format!(
            "{kind}/{}/{}",
            request.namespace.as_deref().unwrap_or("-"),
            meta.name
                .clone()
                .or_else(|| request.name.clone())
                .unwrap_or_else(|| meta.display_name())
        )
    };
    let parsed = serde_json::from_str::<ObjectIn<'_>>(object.get())
        .map_err(|e| e.to_string())
        .and_then(|o| {
            let mut meta = o.metadata.unwrap_or_default();
            // On create the object may not carry its namespace yet; the request does.
            if meta.namespace.as_deref().is_none_or(str::is_empty) {
                meta.namespace.clone_from(&request.namespace);
            }
            let spec = o.spec.ok_or_else(|| format!("{kind} has no spec"))?;
            let mut de = serde_json::Deserializer::from_str(spec.get());
            Workload::decode(kind, meta, &mut de).map_err(|e| e.to_string())
        });
    let workload = match parsed {
        Ok(w) => w,
        // The apiserver has already validated the object, so this is tailguard's
        // own limit; refuse rather than let an unread object through unchecked.
        Err(e) => {
            return Verdict {
                uid: request.uid.clone(),
                allowed: false,
                object: Some(format!("{kind}/{}", request.namespace.as_deref().unwrap_or("-"))),
                findings: Vec::new(),
                unreadable: Some(format!("tailguard could not read this {kind}: {e}")),
            };
        }
    };
    // Never block an object on its way out (finalizers being removed).
    if workload.meta.deletion_timestamp.is_some() {
        return allow(Some(reference(&workload.meta)));
    }
    let facts = match workload.namespace() {
        Some(ns) => namespaces.namespace(ns),
        None => NamespaceFacts::Unknown,
    };
    let findings = rules::evaluate(&workload, config, &facts);
    Verdict {
        uid: request.uid.clone(),
        allowed: !findings.iter().any(|f| f.severity == Severity::Deny),
        object: Some(reference(&workload.meta)),
        findings,
        unreadable: None,
    }
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

fn respond(verdict: &Verdict) -> Vec<u8> {
    let status = (!verdict.allowed).then(|| match &verdict.unreadable {
        Some(e) => Status::failure(e, "BadRequest").with_code(400),
        None => {
            let object = verdict.object.as_deref().unwrap_or("object");
            Status::failure(&denial_message(object, &verdict.findings), "Forbidden").with_code(403)
        }
    });
    let warnings = verdict
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warn)
        .map(|f| format!("tailguard: {f}"))
        .collect();
    let out = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: ResponseOut {
            uid: &verdict.uid,
            allowed: verdict.allowed,
            status,
            warnings,
        },
    };
    // Serializing plain structs of strings cannot fail.
    serde_json::to_vec(&out).unwrap_or_else(|_| b"{}".to_vec())
}
