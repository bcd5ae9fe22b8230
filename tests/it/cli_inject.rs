//! `tailguard inject` as a user runs it: the real binary on files and stdin.

use std::process::Output;

use crate::support;

fn case(name: &str) -> String {
    format!("{}/tests/inject/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn inject(args: &[&str], stdin: Option<&str>) -> Output {
    let config = case("config/policy.yaml");
    let mut all = vec!["inject", "--config", &config];
    all.extend_from_slice(args);
    support::run_cli(&all, stdin)
}

#[test]
fn prints_the_golden_output_and_explains_on_stderr() {
    let out = inject(&["-f", &case("namespace-opt-in.yaml")], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let want = std::fs::read_to_string(case("namespace-opt-in.injected.yaml")).expect("golden");
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Pod/apps/web: injected Tailscale egress sidecar"));
}

#[test]
fn namespace_annotations_flag_configures_the_sidecar() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec:\n  containers: [{name: a, image: nginx:1.27}]\n";
    let out = inject(
        &[
            "--namespace-annotations",
            "tailguard.io/exit-node=100.64.0.7,tailguard.io/tags=tag:ci",
        ],
        Some(pod),
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--exit-node=100.64.0.7 --advertise-tags=tag:ci"),
        "{text}"
    );
}

#[test]
fn refusals_exit_1_and_bad_input_exits_2() {
    let out = inject(&["-f", &case("tun-in-baseline-denied.yaml")], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("enforces the `baseline` Pod Security level"));
    let out = inject(&[], Some("kind: Pod\nmetadata: {name: [\n"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-:1: invalid YAML"));
    let out = inject(&["--namespace-annotations", "novalue"], Some(""));
    assert_eq!(out.status.code(), Some(2));
}

/// Kernel mode with an exit node needs the cluster's CIDRs (injection.noProxy)
/// to keep cluster DNS and Services off the exit node; without them the pod is
/// refused with that reason (injection_traffic.rs shows what breaks).
#[test]
fn tun_with_an_exit_node_needs_the_cluster_cidrs() {
    let out = support::run_cli(&["inject", "-f", &case("tun-in-privileged.yaml")], None);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cluster DNS and Services would be sent to the exit node")
            && stderr.contains("injection.noProxy"),
        "{stderr}"
    );
}
