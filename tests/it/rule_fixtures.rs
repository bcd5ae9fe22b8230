//! Table-driven rule tests: every file under tests/fixtures/{rules,incident}
//! is a case. Its header comments say what the rules must find:
//!
//! - `# expect: SEVERITY RULE PATH [@Kind/namespace/name]`: for each rule (and
//!   object) named, the findings must be exactly the expected ones;
//! - `# expect-clean: RULE`: no finding of that rule;
//! - `# expect-no-deny`: no deny finding at all;
//! - `# runtime: containerd|cri-o`: the policy's `runtime:` for this case.
//!
//! (tests/it/support/fixtures.rs has the whole header format; tests/it/oracle.rs
//! runs the same files through the real Tailscale binaries.) A new case is a new file.

use std::collections::BTreeSet;
use std::path::Path;

use tailguard::cli::check::{Located, check_documents};
use tailguard::manifest::parse_stream;
use tailguard::rules::RuleId;

use crate::support::fixtures::{Header, fixture_files};
use crate::support::repo;

fn run_case(file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let expect = Header::parse(&text, file);
    if expect.exact.is_empty() && expect.clean.is_empty() && !expect.no_deny {
        return Err("no expectations in header: the case asserts nothing".into());
    }
    let (docs, errors) = parse_stream(&file.display().to_string(), &text);
    let report = check_documents(&docs, errors, &expect.config());
    if !report.errors.is_empty() {
        return Err(format!("unreadable: {:?}", report.errors));
    }
    let key = |f: &Located, with_object: bool| {
        (
            f.finding.severity.to_string(),
            f.finding.rule.name().to_string(),
            f.finding.path.clone(),
            with_object.then(|| f.object.clone()),
        )
    };
    let mut problems = Vec::new();
    // Exact findings, per rule named in the header (and per object where given).
    let named: BTreeSet<(String, Option<String>)> =
        expect.exact.iter().map(|(_, r, _, o)| (r.clone(), o.clone())).collect();
    for (rule, object) in &named {
        let got: BTreeSet<_> = report
            .findings
            .iter()
            .filter(|f| f.finding.rule.name() == rule && object.as_ref().is_none_or(|o| &f.object == o))
            .map(|f| key(f, object.is_some()))
            .collect();
        let want: BTreeSet<_> = expect
            .exact
            .iter()
            .filter(|(_, r, _, o)| r == rule && o == object)
            .cloned()
            .collect();
        if got != want {
            problems.push(format!("rule {rule} {object:?}:\n  want {want:?}\n  got  {got:?}"));
        }
    }
    for rule in &expect.clean {
        let hits: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.finding.rule.name() == rule)
            .collect();
        if !hits.is_empty() {
            problems.push(format!("expected no {rule} finding, got {hits:#?}"));
        }
    }
    if expect.no_deny {
        let denies: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.finding.severity == tailguard::rules::Severity::Deny)
            .collect();
        if !denies.is_empty() {
            problems.push(format!("expected no deny finding, got {denies:#?}"));
        }
    }
    // Every finding must explain itself and say how to fix it.
    for f in &report.findings {
        if f.finding.message.len() < 20 || f.finding.hint.len() < 10 {
            problems.push(format!("finding without a real message or hint: {f:?}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn run_all(dir: &str) {
    let files = fixture_files(dir);
    assert!(!files.is_empty(), "no fixtures under tests/fixtures/{dir}");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| run_case(f).err().map(|e| format!("{}:\n{e}", f.display())))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn rule_fixtures() {
    run_all("rules");
}

#[test]
fn incident_stages() {
    run_all("incident");
}

/// Each rule has at least one failing and one passing case, in its own folder.
#[test]
fn every_rule_has_a_failing_and_a_passing_fixture() {
    let files = fixture_files("rules");
    for rule in RuleId::ALL {
        let in_dir: Vec<_> = files
            .iter()
            .filter(|f| f.parent().and_then(|p| p.file_name()).is_some_and(|n| n == rule.name()))
            .filter_map(|f| f.file_name()?.to_str().map(str::to_owned))
            .collect();
        assert!(
            in_dir.iter().any(|n| n.starts_with("fail-")),
            "rule {rule} has no fail-*.yaml fixture"
        );
        assert!(
            in_dir.iter().any(|n| n.starts_with("pass-")),
            "rule {rule} has no pass-*.yaml fixture"
        );
    }
}

/// A header can only name rules tailguard has (a renamed or misspelt rule
/// would otherwise be a case that checks nothing), the folders of
/// tests/fixtures/rules are rule names, and each rule's `fail-*.yaml` cases
/// expect a finding of that rule.
#[test]
fn fixture_headers_name_known_rules() {
    let mut problems = Vec::new();
    for dir in ["rules", "incident", "realworld"] {
        for file in fixture_files(dir) {
            let text = std::fs::read_to_string(&file).expect("fixture");
            for rule in Header::parse(&text, &file).unknown_rules() {
                problems.push(format!("{}: no rule named {rule:?}", file.display()));
            }
        }
    }
    let rules_dir = repo().join("tests/fixtures/rules");
    for entry in std::fs::read_dir(&rules_dir).expect("tests/fixtures/rules") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() && RuleId::from_name(name).is_none() {
            problems.push(format!("{}: not named after a rule", path.display()));
        }
    }
    for file in fixture_files("rules") {
        let (Some(rule), Some(name)) = (
            file.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()),
            file.file_name().and_then(|n| n.to_str()),
        ) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("fixture");
        if name.starts_with("fail-") && !Header::parse(&text, &file).exact.iter().any(|(_, r, _, _)| r == rule) {
            problems.push(format!(
                "{}: a fail case of {rule} expects no {rule} finding",
                file.display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
