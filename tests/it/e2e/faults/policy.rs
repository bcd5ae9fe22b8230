//! The policy file edited while serving, as a ConfigMap edit reaches a pod
//! (the test writes the file the server reads; there is no kubelet): deny →
//! warn, then a typo, then back to deny, under load through the apiserver.
//!
//! Guarantee: a valid edit is served within `--config-poll-interval`; an
//! invalid one keeps the last good policy (no failed admission, no verdict of
//! neither policy), is logged, and shows as
//! `tailguard_config_last_reload_successful 0`; readiness stays true.

use std::path::Path;
use std::time::{Duration, Instant};

use super::load::{Expect, Load};
use super::{Env, namespaces, no_wrong_verdicts, probes};
use crate::e2e::Setup;

const PATIENCE: Duration = Duration::from_secs(30);
const RELOADED: &str = "tailguard_config_reloads_total{result=\"success\"}";
const REFUSED: &str = "tailguard_config_reloads_total{result=\"failure\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_kube, has_kubectl, has_helm)),
    ignore = "needs kube-apiserver, etcd, kubectl and helm: scripts/build-kube.sh and scripts/install-tools.sh, or run scripts/test.sh"
)]
async fn invalid_policy_edit_keeps_the_last_good_policy() {
    let case = "invalid_policy_edit_keeps_the_last_good_policy";
    let env = Env::start(
        case,
        Setup {
            serve_args: &["--config-poll-interval", "200ms"],
            ..Setup::default()
        },
    )
    .await;
    namespaces(&env, "baseline").await;
    let file = env.webhook.dir.join("config.yaml");
    let deny = env.serve.1.clone();
    assert!(
        !deny.contains("enforcement"),
        "the chart's policy enforces by default:\n{deny}"
    );
    let load = Load::start(env.client(), probes(false), 2, Duration::from_millis(30));
    assert!(load.wait_right(20, PATIENCE).await, "the load never got going");

    // deny -> warn: the two probes that were denied are admitted (with warnings).
    load.mark("policy warn");
    let since = load.now();
    let warn_in = edit(&env, &file, &format!("{deny}enforcement: warn\n"), RELOADED).await;
    for probe in ["exit-node-hostname-ds", "kernel-ds"] {
        load.expect_since(probe, Expect::Allowed, since);
    }
    assert!(load.wait_right(20, PATIENCE).await);

    // A typo: refused, the warn policy stays.
    load.mark("policy invalid");
    let refused_in = edit(&env, &file, &format!("{deny}enforcement: sometimes\n"), REFUSED).await;
    let metric = env.webhook.metric("tailguard_config_last_reload_successful");
    let ready = env.webhook.health_get("/readyz");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Back to deny.
    load.mark("policy deny");
    let since = load.now();
    let deny_in = edit(&env, &file, &deny, RELOADED).await;
    load.expect_since("exit-node-hostname-ds", Expect::Denied("exit-node-hostname"), since);
    load.expect_since("kernel-ds", Expect::Denied("pod-security-level"), since);
    assert!(load.wait_right(20, PATIENCE).await);
    let tally = load.stop().await;

    eprintln!(
        "{case}: deny->warn served {warn_in:?} after the write, the invalid edit refused {refused_in:?} after, \
         warn->deny {deny_in:?} after (poll interval 200 ms)"
    );
    no_wrong_verdicts(case, &tally);
    assert_eq!(tally.total().failed, 0, "{}", tally.report(case));
    assert_eq!(metric, Some(0.0), "the refused edit shows on /metrics");
    assert_eq!(ready.0, 200, "readiness stays true: {ready:?}");
    assert!(
        env.webhook
            .log_text()
            .contains("policy file changed but does not load; still serving the previous policy"),
        "{}",
        env.webhook.log_text()
    );
    assert_eq!(env.webhook.metric("tailguard_config_last_reload_successful"), Some(1.0));
}

/// Replaces the policy file atomically (as the kubelet's swap does) and waits
/// until `counter` counts the change; how long that took.
async fn edit(env: &Env, file: &Path, text: &str, counter: &str) -> Duration {
    let before = env.webhook.metric(counter).unwrap_or(0.0);
    let temporary = file.with_extension("new");
    std::fs::write(&temporary, text).expect("write the new policy");
    std::fs::rename(&temporary, file).expect("swap the policy in");
    let written = Instant::now();
    while env.webhook.metric(counter).unwrap_or(0.0) <= before {
        assert!(
            written.elapsed() < PATIENCE,
            "{counter} never moved:\n{}",
            env.webhook.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    written.elapsed()
}
