//! The webhook's rules over manifest documents, offline: what `tailguard
//! check` reports (and what the oracle and the corpus tests judge with).
//! Pure: the CLI reads the files and prints the report.

use serde::Serialize;

use crate::catalog::{Finding, Severity};
use crate::config::Config;
use crate::manifest::{Document, ReadError};
use crate::namespace::{Declared, NamespaceFacts};
use crate::rules;
use crate::workload::Workload;

/// One finding, located.
#[derive(Debug, Clone, Serialize)]
pub struct Located {
    pub file: String,
    pub line: usize,
    /// `Kind/namespace/name` (`-` when the manifest leaves the namespace to the client).
    pub object: String,
    #[serde(flatten)]
    pub finding: Finding,
}

/// Everything a check run found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Located>,
    pub errors: Vec<String>,
    #[serde(skip)]
    pub objects: usize,
}

impl Report {
    /// 0 no deny finding, 1 at least one, 2 some input could not be read.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if self.findings.iter().any(|f| f.finding.severity == Severity::Deny) {
            1
        } else {
            0
        }
    }
}

/// Runs the rules over manifest documents. Namespaces defined in the same
/// input stand in for the cluster's (labels, annotations); other namespaces are
/// unknown, so namespace-aware rules skip them.
pub fn check_documents(docs: &[Document], read_errors: Vec<ReadError>, config: &Config) -> Report {
    let mut errors: Vec<String> = read_errors.iter().map(ToString::to_string).collect();
    let mut namespaces = Declared::default();
    for doc in docs {
        if let Err(e) = namespaces.add(&doc.object) {
            errors.push(format!("{}:{}: Namespace: {e}", doc.source, doc.line));
        }
    }
    let mut report = Report::default();
    for doc in docs {
        let workload = match Workload::from_value(&doc.object) {
            Ok(Some(w)) => w,
            Ok(None) => continue,
            Err(e) => {
                errors.push(format!("{}:{}: {e}", doc.source, doc.line));
                continue;
            }
        };
        report.objects += 1;
        let facts = namespaces
            .get(workload.namespace())
            .map_or(NamespaceFacts::Unknown, |ns| NamespaceFacts::Known(ns.clone()));
        let object = workload.reference();
        for finding in rules::evaluate(&workload, config, &facts) {
            report.findings.push(Located {
                file: doc.source.clone(),
                line: doc.line,
                object: object.clone(),
                finding,
            });
        }
    }
    report.errors = errors;
    report
}
