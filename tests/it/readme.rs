//! The README's examples are real: the policy config parses, every rule is in
//! the rule table, and the namespace example is what injection reads.

use tailguard::config::Config;
use tailguard::rules::RuleId;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

/// The first ```yaml block after `heading`.
fn yaml_after(text: &str, heading: &str) -> String {
    let section = &text[text.find(heading).unwrap_or_else(|| panic!("no {heading} in README"))..];
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = section[start..].find("```").expect("closed block");
    section[start..start + end].to_owned()
}

#[test]
fn policy_config_example_parses() {
    let yaml = yaml_after(&readme(), "## Policy config");
    let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("README policy example: {e}\n{yaml}"));
    assert_eq!(config.injection.exit_node.as_deref(), Some("100.64.0.1"));
    assert!(config.exempt("sandbox", RuleId::Resources));
}

#[test]
fn rule_table_lists_every_rule_with_its_default() {
    let text = readme();
    for rule in RuleId::ALL {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", rule.name())))
            .unwrap_or_else(|| panic!("README rule table has no row for {rule}"));
        let default = format!("{:?}", rule.default_level()).to_lowercase();
        assert!(
            row.contains(&format!("| {default}")),
            "README row for {rule} does not say `{default}`: {row}"
        );
    }
}

#[test]
fn injection_example_namespace_is_valid_for_the_injector() {
    let yaml = yaml_after(&readme(), "## Egress sidecar injection");
    let (docs, errors) = tailguard::manifest::parse_stream("README", &yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let pod = "\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: payments}\nspec:\n  containers: [{name: app, image: nginx:1.27}]\n";
    let out = tailguard::cli::inject::inject_stream(
        "README",
        &format!("{yaml}{pod}"),
        &Default::default(),
        &Config::default(),
    );
    assert!(out.errors.is_empty() && docs.len() == 1, "{:?}", out.errors);
    assert!(
        out.output
            .contains("--exit-node=100.64.0.1 --advertise-tags=tag:egress"),
        "{}",
        out.output
    );
    assert!(out.output.contains("name: payments-tailscale"), "{}", out.output);
}
