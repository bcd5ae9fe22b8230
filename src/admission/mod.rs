//! AdmissionReview in, AdmissionReview out: the webhook's decision as a pure
//! function of the request body and a namespace snapshot. The HTTP layer only
//! moves bytes.
//!
//! The request is decoded once, into types that hold only what the rules read:
//! `oldObject`, `userInfo`, `managedFields` and `status` are skipped by the
//! parser without being built.

use kube::core::admission::Operation;
use serde_json::value::RawValue;

use crate::config::{Config, ENFORCEMENT_ANNOTATION, Enforcement};
use crate::inject::patch::JsonPatch;
use crate::inject::{self, Decision, OptIn};
use crate::rules::{self, Finding, NamespaceFacts, RuleId, Severity};
use crate::workload::{Workload, WorkloadError, WorkloadKind};

mod decode;
mod existing;
mod respond;

use decode::{ObjectIn, Parse, RequestIn};

pub use respond::denial_message;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Where the rules get namespace facts from (the cluster cache, or nothing).
pub trait NamespaceSource {
    fn namespace(&self, name: &str) -> NamespaceFacts;

    /// Why namespaces are temporarily unknown (a cache not synced yet), if they
    /// are: reviews then say that namespace-aware rules were skipped.
    fn unavailable(&self) -> Option<&'static str> {
        None
    }
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
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub uid: String,
    pub outcome: Outcome,
    /// `Kind/namespace/name` of the object, when it was one tailguard reads.
    pub object: Option<String>,
    pub findings: Vec<Finding>,
    /// Warnings besides warn findings (what was injected, or why not).
    pub notes: Vec<String>,
    /// The enforcement mode applied to the rule findings; `None` when no rules
    /// ran (not a workload, unreadable, terminating, `/mutate`).
    pub enforcement: Option<Enforcement>,
    /// Rules with a deny finding that did not refuse the object because the
    /// mode is `warn` or `audit` (each rule once). In those modes the findings
    /// keep their deny severity: an allowed review with deny findings is
    /// exactly one admitted by the mode, which is what the metrics count.
    pub would_deny: Vec<RuleId>,
}

/// What the review answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Admitted, with the JSON Patch to apply when a sidecar is injected.
    Allowed { patch: Option<JsonPatch> },
    /// Refused by the deny findings (HTTP-style code 403 in the response).
    Denied,
    /// Refused because tailguard could not read the object (400), whatever
    /// the enforcement mode: an unread object is an unchecked one.
    Unreadable(String),
    /// Refused for a reason other than rule findings: a pod that asked for a
    /// sidecar tailguard cannot build as asked (403).
    Refused(String),
}

impl Outcome {
    /// The decision as logged and traced.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Allowed { .. } => "allowed",
            Outcome::Denied => "denied",
            Outcome::Unreadable(_) => "unreadable",
            Outcome::Refused(_) => "refused",
        }
    }
}

impl Verdict {
    fn allow(uid: &str, object: Option<String>) -> Verdict {
        Verdict {
            uid: uid.to_owned(),
            outcome: Outcome::Allowed { patch: None },
            object,
            findings: Vec::new(),
            notes: Vec::new(),
            enforcement: None,
            would_deny: Vec::new(),
        }
    }

    pub fn allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed { .. })
    }

    /// The JSON Patch returned (mutation), if any.
    pub fn patch(&self) -> Option<&JsonPatch> {
        match &self.outcome {
            Outcome::Allowed { patch } => patch.as_ref(),
            _ => None,
        }
    }
}

/// The review response: bytes to send, and what was decided.
#[derive(Debug)]
pub struct Reviewed {
    pub body: Vec<u8>,
    pub verdict: Verdict,
}

/// Answers a `/validate` review.
pub fn validate(body: &[u8], config: &Config, namespaces: &dyn NamespaceSource) -> Result<Reviewed, ReviewError> {
    review(body, |request| decide_validate(request, config, namespaces))
}

/// Answers a `/mutate` review: injects the egress sidecar into opted-in pods.
pub fn mutate(body: &[u8], config: &Config, namespaces: &dyn NamespaceSource) -> Result<Reviewed, ReviewError> {
    review(body, |request| decide_mutate(request, config, namespaces))
}

fn review(body: &[u8], decide: impl FnOnce(&mut RequestIn<'_>) -> Verdict) -> Result<Reviewed, ReviewError> {
    review_parsed(body, Parse::OnePass, decide)
}

/// The reference reading of a review, for the tests and fuzz targets that
/// prove the one-pass read equivalent: every part held raw and decoded on its
/// own, as tailguard always read reviews. Same verdicts, same bytes.
#[doc(hidden)]
pub mod reference {
    use super::*;

    pub fn validate(body: &[u8], config: &Config, namespaces: &dyn NamespaceSource) -> Result<Reviewed, ReviewError> {
        review_parsed(body, Parse::Raw, |request| decide_validate(request, config, namespaces))
    }

    pub fn mutate(body: &[u8], config: &Config, namespaces: &dyn NamespaceSource) -> Result<Reviewed, ReviewError> {
        review_parsed(body, Parse::Raw, |request| decide_mutate(request, config, namespaces))
    }
}

fn review_parsed(
    body: &[u8],
    parse: Parse,
    decide: impl FnOnce(&mut RequestIn<'_>) -> Verdict,
) -> Result<Reviewed, ReviewError> {
    let mut request = decode::request(body, parse)?;
    let verdict = decide(&mut request);
    Ok(Reviewed {
        body: respond::respond(&verdict),
        verdict,
    })
}

/// The workload in a request, if it is one tailguard reads (`Ok(None)` otherwise).
fn workload_of(request: &mut RequestIn<'_>) -> Result<Option<Workload>, Box<Verdict>> {
    // Only creates and updates of the object itself carry a pod spec to judge.
    let judged = matches!(request.operation, Operation::Create | Operation::Update)
        && request.sub_resource.as_deref().is_none_or(str::is_empty)
        && decode::reads_group(&request.kind.group);
    let (Some(kind), true) = (WorkloadKind::from_kind(&request.kind.kind), judged) else {
        return Ok(None);
    };
    let decoded = match request.object.take() {
        None => return Ok(None),
        Some(ObjectIn::Read(workload)) => Ok(*workload),
        Some(ObjectIn::Raw(raw)) => decode_object(kind, raw),
    };
    match decoded.map(|w| with_request_names(w, request)) {
        Ok(w) => Ok(Some(w)),
        // The apiserver has already validated the object, so this is tailguard's
        // own limit; refuse rather than let an unread object through unchecked.
        Err(e) => {
            let mut v = Verdict::allow(
                &request.uid,
                Some(format!("{kind}/{}", request.namespace.as_deref().unwrap_or("-"))),
            );
            v.outcome = Outcome::Unreadable(format!("tailguard could not read this {kind}: {e}"));
            Err(Box::new(v))
        }
    }
}

/// Why an object the apiserver accepted could not be read by tailguard.
#[derive(Debug, thiserror::Error)]
enum DecodeError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0} has no spec")]
    NoSpec(WorkloadKind),
    #[error(transparent)]
    Spec(#[from] WorkloadError),
}

/// Decodes an object held raw (the old object of an UPDATE; the object when
/// the one-pass read could not).
fn decode_object(kind: WorkloadKind, object: &RawValue) -> Result<Workload, DecodeError> {
    let o = serde_json::from_str::<decode::RawObject<'_>>(object.get())?;
    let spec = o.spec.ok_or(DecodeError::NoSpec(kind))?;
    let mut de = serde_json::Deserializer::from_str(spec.get());
    Ok(Workload::decode(kind, o.metadata.unwrap_or_default(), &mut de)?)
}

/// On create the object may not carry its namespace or name yet; the request does.
fn with_request_names(mut workload: Workload, request: &RequestIn<'_>) -> Workload {
    let meta = &mut workload.meta;
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace.clone_from(&request.namespace);
    }
    if meta.name.as_deref().is_none_or(str::is_empty) {
        meta.name.clone_from(&request.name);
    }
    workload
}

fn facts_for(workload: &Workload, namespaces: &dyn NamespaceSource) -> NamespaceFacts {
    match workload.namespace() {
        Some(ns) => namespaces.namespace(ns),
        None => NamespaceFacts::Unknown,
    }
}

fn decide_validate(request: &mut RequestIn<'_>, config: &Config, namespaces: &dyn NamespaceSource) -> Verdict {
    let workload = match workload_of(request) {
        Ok(Some(w)) => w,
        Ok(None) => return Verdict::allow(&request.uid, None),
        Err(v) => return *v,
    };
    let mut verdict = Verdict::allow(&request.uid, Some(workload.reference()));
    // Never block an object on its way out (finalizers being removed).
    if workload.meta.deletion_timestamp.is_some() {
        return verdict;
    }
    let facts = facts_for(&workload, namespaces);
    verdict.findings = rules::evaluate(&workload, config, &facts);
    if !facts.is_known()
        && let Some(why) = namespaces.unavailable()
        && rules::applies(&workload, config)
    {
        verdict.notes.push(format!(
            "tailguard: {why}: pod-security-level, {} and {ENFORCEMENT_ANNOTATION} were not applied to this object",
            rules::SKIP_RULES_ANNOTATION
        ));
    }
    if request.operation == Operation::Update && verdict.findings.iter().any(|f| f.severity == Severity::Deny) {
        existing::keep_existing_violations(request, &workload, config, &facts, &mut verdict.findings);
    }
    let (mode, bad_annotation) = enforcement(config, &facts, workload.namespace());
    // Said only where tailguard's rules run: other pods of the namespace are unaffected.
    if let Some(warning) = bad_annotation
        && rules::applies(&workload, config)
    {
        verdict.notes.push(warning);
    }
    verdict.enforcement = Some(mode);
    // The mode acts on what would have been refused, after the UPDATE
    // downgrade above: only violations the update introduces are concerned.
    let denied_rules = verdict.findings.iter().filter(|f| f.severity == Severity::Deny);
    if mode == Enforcement::Deny {
        if denied_rules.count() > 0 {
            verdict.outcome = Outcome::Denied;
        }
    } else {
        for f in denied_rules {
            if !verdict.would_deny.contains(&f.rule) {
                verdict.would_deny.push(f.rule);
            }
        }
    }
    verdict
}

/// The enforcement mode for a namespace: its [`ENFORCEMENT_ANNOTATION`] if
/// valid, else the policy's (also when the namespace is unknown). A value
/// tailguard does not understand is ignored with a warning, never guessed at:
/// guessing `deny` would refuse pods the namespace owner meant to let through,
/// guessing `audit` would enforce less than the policy says.
fn enforcement(config: &Config, facts: &NamespaceFacts, namespace: Option<&str>) -> (Enforcement, Option<String>) {
    let policy = config.enforcement;
    let Some(value) = facts.annotation(ENFORCEMENT_ANNOTATION) else {
        return (policy, None);
    };
    if let Some(mode) = Enforcement::from_name(value.trim()) {
        return (mode, None);
    }
    // Bounded: the annotation is user input and warnings share a 4 KiB budget.
    let shown: String = value.chars().take(64).collect();
    let cut = if shown.len() < value.len() { "..." } else { "" };
    let warning = format!(
        "tailguard: annotation {ENFORCEMENT_ANNOTATION}={shown:?}{cut} on namespace {} is not deny|warn|audit; using {policy}",
        namespace.unwrap_or("-")
    );
    (policy, Some(warning))
}

/// Enforcement modes do not apply here: an injection denial is not a policy
/// finding to roll out gradually but a pod that asked for a sidecar tailguard
/// cannot build as asked (an invalid annotation, a namespace not readable yet).
/// Admitting it would start the pod without the egress it depends on.
fn decide_mutate(request: &mut RequestIn<'_>, config: &Config, namespaces: &dyn NamespaceSource) -> Verdict {
    // Pods are injected when created; templates are left alone.
    if request.operation != Operation::Create || request.kind.kind != "Pod" {
        return Verdict::allow(&request.uid, None);
    }
    let workload = match workload_of(request) {
        Ok(Some(w)) => w,
        Ok(None) => return Verdict::allow(&request.uid, None),
        Err(v) => return *v,
    };
    let mut verdict = Verdict::allow(&request.uid, Some(workload.reference()));
    match inject::decide(&workload, &facts_for(&workload, namespaces), config, OptIn::Webhook) {
        Decision::NotOptedIn | Decision::AlreadyInjected => {}
        Decision::Skip(why) => verdict.notes.push(format!("tailguard: sidecar not injected: {why}")),
        Decision::Inject { patch, summary } => {
            verdict.notes.push(format!("tailguard: {summary}"));
            verdict.outcome = Outcome::Allowed { patch: Some(patch) };
        }
        Decision::Deny(why) => verdict.outcome = Outcome::Refused(why),
    }
    verdict
}
