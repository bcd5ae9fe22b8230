//! etcd stopped (SIGSTOP) for longer than the webhook timeout, then continued.
//!
//! Guarantee: tailguard's review path never waits on the apiserver or etcd,
//! so the webhook keeps answering within its timeout while etcd hangs (the
//! apiserver still calls it: admission runs before storage); requests stall
//! in the apiserver's storage step and complete, or time out there, with no
//! failed webhook call and no wrong verdict.

use std::time::Duration;

use super::load::Load;
use super::{Env, namespaces, no_wrong_verdicts, probes};
use crate::e2e::Setup;

/// The webhook timeout of this case; etcd is stopped for twice as long.
const TIMEOUT_SECONDS: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_kube, has_kubectl, has_helm)),
    ignore = "needs kube-apiserver, etcd, kubectl and helm: scripts/build-kube.sh and scripts/install-tools.sh, or run scripts/test.sh"
)]
async fn etcd_stopped_past_the_webhook_timeout() {
    let case = "etcd_stopped_past_the_webhook_timeout";
    let timeout = TIMEOUT_SECONDS.to_string();
    let values = [("webhook.timeoutSeconds", timeout.as_str())];
    let env = Env::start(
        case,
        Setup {
            values: &values,
            ..Setup::default()
        },
    )
    .await;
    namespaces(&env, "baseline").await;
    let load = Load::start(env.client(), probes(false), 2, Duration::from_millis(30));
    assert!(
        load.wait_right(20, Duration::from_secs(30)).await,
        "the load never got going"
    );
    let reviews = || env.reviews("validate", "allowed") + env.reviews("validate", "denied");

    load.mark("etcd stopped");
    env.cluster.pause_etcd();
    let before = reviews();
    tokio::time::sleep(Duration::from_secs(2 * TIMEOUT_SECONDS)).await;
    let during = reviews() - before;
    let ready_during = env.webhook.health_get("/readyz");
    env.cluster.resume_etcd();
    load.mark("etcd continued");
    assert!(
        load.wait_right(20, Duration::from_secs(60)).await,
        "reviews never came right after etcd continued"
    );
    load.mark("recovered");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;

    eprintln!(
        "{case}: reviews answered by tailguard while etcd was stopped: {during}; /readyz then: {ready_during:?}; \
         last non-right answer {:?} after etcd was stopped",
        tally.recovery_after("etcd stopped")
    );
    no_wrong_verdicts(case, &tally);
    assert_eq!(ready_during.0, 200, "readiness does not depend on etcd");
    assert!(
        during > 0.0,
        "the apiserver kept calling tailguard while etcd was stopped"
    );
    assert_eq!(
        tally.total().failed,
        0,
        "no webhook call failed: {}",
        tally.report(case)
    );
    assert_eq!(
        tally.total().flagged,
        0,
        "the namespace watch (served by the apiserver's cache) held"
    );
}
