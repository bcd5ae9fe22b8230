//! Fixture files and their headers, shared by the rule tests and the runtime
//! oracle tests. A fixture is a YAML manifest whose leading `#` lines say what
//! must be found and what the real Tailscale binaries must do with it:
//!
//! - `# expect: SEVERITY RULE PATH [@Kind/namespace/name]`: for each rule (and
//!   object) named, the findings must be exactly the expected ones;
//! - `# expect-clean: RULE`: no finding of that rule;
//! - `# expect-no-deny`: no deny finding at all;
//! - `# runtime: containerd|cri-o`: the cluster's runtime, for `check` (the
//!   policy's `runtime:`) and for the oracle's capability profile;
//! - `# oracle: OUTCOME [text it printed ...] [@Kind/namespace/name]`: what the
//!   oracle must observe (outcomes as in tests/oracle/README.md); the text, when
//!   given, must appear in what the container printed;
//! - `# oracle-skip: REASON`: the oracle cannot emulate this case (said why);
//! - `# oracle-depends: FACT: WHY`: the outcome turns on a fact outside the
//!   workload (the cluster's RBAC, a node's sysctl allowlist) that neither
//!   `check` nor the webhook can see: a failure there is not a missed deny;
//! - `# oracle-peer: IP name=NAME [exit-node] [approved]`: a tailnet node the
//!   manifest refers to;
//! - `# oracle-value: secret/NAME/KEY=VALUE` (or `configmap/...`): a value the
//!   pod reads that the manifest does not define;
//! - `# source:`, `# what:`, `# substituted:`, `# note:` and free text: documentation.
//!
//! A header naming a rule that does not exist fails (rule_fixtures.rs checks
//! every fixture's with [`Header::unknown_rules`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tailguard::config::Config;
use tailguard::rules::RuleId;

/// One expected finding: severity, rule, path, object (when named).
pub type ExpectedFinding = (String, String, String, Option<String>);

#[derive(Debug, Clone, Default)]
pub struct Header {
    pub exact: BTreeSet<ExpectedFinding>,
    pub clean: Vec<String>,
    pub no_deny: bool,
    pub runtime: Option<String>,
    pub oracle: Vec<OracleExpect>,
    pub oracle_skip: Option<String>,
    pub oracle_depends: Option<String>,
    pub peers: Vec<Peer>,
    pub values: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OracleExpect {
    pub outcome: String,
    /// Text the container must have printed (empty: no text required).
    pub text: String,
    /// `Kind/namespace/name`, when the file holds several workloads.
    pub object: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub ip: String,
    pub name: String,
    pub exit_node: bool,
    pub approved: bool,
}

impl Header {
    pub fn parse(text: &str, file: &Path) -> Header {
        let mut h = Header::default();
        for line in text.lines().take_while(|l| l.starts_with('#')) {
            let body = line.trim_start_matches('#').trim();
            let words: Vec<&str> = body.split_whitespace().collect();
            let rest = |key: &str| body.strip_prefix(key).map(str::trim).unwrap_or_default().to_owned();
            match words.as_slice() {
                ["expect:", severity, rule, path] => {
                    h.exact
                        .insert((severity.to_string(), rule.to_string(), path.to_string(), None));
                }
                ["expect:", severity, rule, path, object] => {
                    let object = object.strip_prefix('@').unwrap_or(object).to_string();
                    h.exact
                        .insert((severity.to_string(), rule.to_string(), path.to_string(), Some(object)));
                }
                ["expect-clean:", rule] => h.clean.push(rule.to_string()),
                ["expect-no-deny"] => h.no_deny = true,
                ["runtime:", runtime] => h.runtime = Some(runtime.to_string()),
                ["oracle:", outcome, ..] => {
                    let mut text = rest("oracle:");
                    text = text.strip_prefix(outcome).unwrap_or(&text).trim().to_owned();
                    // A trailing `@Kind/namespace/name` names the object.
                    let split = match text.rsplit_once('@') {
                        Some((t, o)) if !o.contains(' ') && (t.is_empty() || t.ends_with(' ')) => {
                            Some((t.trim().to_owned(), o.to_owned()))
                        }
                        _ => None,
                    };
                    let object = split.map(|(t, o)| {
                        text = t;
                        o
                    });
                    h.oracle.push(OracleExpect {
                        outcome: outcome.to_string(),
                        text,
                        object,
                    });
                }
                ["oracle-skip:", ..] => h.oracle_skip = Some(rest("oracle-skip:")),
                ["oracle-depends:", ..] => h.oracle_depends = Some(rest("oracle-depends:")),
                ["oracle-peer:", ip, more @ ..] => {
                    let name = more
                        .iter()
                        .find_map(|w| w.strip_prefix("name="))
                        .unwrap_or_else(|| panic!("{}: oracle-peer needs name=NAME: {line:?}", file.display()));
                    h.peers.push(Peer {
                        ip: ip.to_string(),
                        name: name.to_string(),
                        exit_node: more.contains(&"exit-node"),
                        approved: more.contains(&"approved"),
                    });
                }
                ["oracle-value:", ..] => {
                    let kv = rest("oracle-value:");
                    let (k, v) = kv
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{}: oracle-value needs KEY=VALUE: {line:?}", file.display()));
                    h.values.insert(k.trim().to_owned(), v.trim().to_owned());
                }
                [first, ..] if first.starts_with("expect") || first.starts_with("oracle") => {
                    panic!("{}: malformed header line {line:?}", file.display())
                }
                _ => {}
            }
        }
        h
    }

    /// The policy `check` runs with: the defaults, plus the header's runtime.
    pub fn config(&self) -> Config {
        match &self.runtime {
            Some(r) => Config::from_yaml(&format!("runtime: {r}")).expect("runtime in fixture header"),
            None => Config::default(),
        }
    }

    /// Every rule the header names (`expect:` and `expect-clean:` lines).
    pub fn rules(&self) -> impl Iterator<Item = &str> {
        self.exact
            .iter()
            .map(|(_, rule, _, _)| rule.as_str())
            .chain(self.clean.iter().map(String::as_str))
    }

    /// The rules the header names that tailguard does not have.
    pub fn unknown_rules(&self) -> Vec<&str> {
        self.rules().filter(|r| RuleId::from_name(r).is_none()).collect()
    }

    /// The oracle expectation for `object` (one naming it, else one naming none).
    pub fn oracle_for(&self, object: &str) -> Option<&OracleExpect> {
        self.oracle
            .iter()
            .find(|o| o.object.as_deref() == Some(object))
            .or_else(|| self.oracle.iter().find(|o| o.object.is_none()))
    }
}

/// The `.yaml` files under tests/fixtures/`dir`, sorted.
pub fn fixture_files(dir: &str) -> Vec<PathBuf> {
    yaml_files(&super::repo().join("tests/fixtures").join(dir))
}

/// The `.yaml` files under `root` (any depth), sorted.
pub fn yaml_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
