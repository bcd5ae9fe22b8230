//! Faults survived: the cluster around tailguard misbehaves while a steady
//! load of reviews goes through the apiserver ([`load`]), and every answer is
//! judged against the verdict it must get. Each case prints its tally per
//! phase (the figures SECURITY.md quotes) and fails on any wrong verdict;
//! failed admissions are held to the bound each case documents.

mod apiserver;
mod certs;
mod clock;
mod etcd;
mod load;
mod policy;
mod replicas;

use serde_json::{Value, json};

use super::{Env, app_pod, doc_of_kind, tailscale_daemonset};
use crate::support::documents;
use load::{Expect, Probe, Tally};

/// The namespace whose Pod Security label decides the kernel-mode probe.
const PSA_NS: &str = "faults-psa";
/// Opted in to injection.
const APPS_NS: &str = "faults-apps";
/// Nothing special.
const PLAIN_NS: &str = "faults";
/// The Pod Security label.
const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Creates the namespaces the probes use and waits until tailguard has seen them.
async fn namespaces(env: &Env, psa_level: &str) {
    env.namespace(PSA_NS, &[(ENFORCE, psa_level)], &[]).await;
    env.namespace(APPS_NS, &[("tailguard.io/inject", "enabled")], &[]).await;
    env.namespace(PLAIN_NS, &[], &[]).await;
    env.sync().await;
}

/// The kernel-mode exit node of the incident (privileged, host network, host
/// paths): allowed in a `privileged` namespace, denied by
/// `pod-security-level` in a `baseline` one.
fn kernel_daemonset(namespace: &str) -> Value {
    let mut ds = doc_of_kind(
        &documents("tests/fixtures/rules/pod-security-level/fail-kernel-in-baseline.yaml"),
        "DaemonSet",
    );
    ds["metadata"]["namespace"] = json!(namespace);
    ds
}

/// The probes every case sends: a good userspace DaemonSet, one naming its
/// exit node by hostname, the kernel-mode one whose verdict depends on its
/// namespace's label (`psa_allows`: the namespace starts `privileged`), and
/// an app pod in an opted-in namespace.
fn probes(psa_allows: bool) -> Vec<Probe> {
    vec![
        Probe::new(
            "userspace-ds",
            tailscale_daemonset("ts-good", PLAIN_NS, &[]),
            Expect::Allowed,
        ),
        Probe::new(
            "exit-node-hostname-ds",
            tailscale_daemonset(
                "ts-bad",
                PLAIN_NS,
                &[json!({"name": "TS_EXTRA_ARGS", "value": "--exit-node=tethys"})],
            ),
            Expect::Denied("exit-node-hostname"),
        ),
        Probe::new(
            "kernel-ds",
            kernel_daemonset(PSA_NS),
            if psa_allows {
                Expect::Allowed
            } else {
                Expect::Denied("pod-security-level")
            },
        ),
        Probe::new("opted-in-pod", app_pod("web", APPS_NS), Expect::Injected),
    ]
}

/// Prints the tally and fails on any wrong verdict.
fn no_wrong_verdicts(case: &str, tally: &Tally) {
    eprintln!("{}", tally.report(case));
    let total = tally.total();
    assert_eq!(
        total.wrong,
        0,
        "{case}: wrong verdicts:\n{}",
        tally.examples(load::Judged::Wrong, 10)
    );
    assert!(total.right > 0, "{case}: no review was judged right at all");
    if total.failed > 0 {
        eprintln!(
            "{case}: failed admissions:\n{}",
            tally.examples(load::Judged::Failed, 10)
        );
    }
}
