//! kube-apiserver restarted (SIGKILL, down for a while, started again) while
//! tailguard runs with cluster access, and a namespace label changed as soon
//! as it is back, before tailguard has listed namespaces again. So that the
//! change always lands in that gap (tailguard's relist backoff would make it
//! a race), tailguard reaches the apiserver through a relay the test keeps
//! closed from the restart until the label has changed; the apiserver calls
//! tailguard all along.
//!
//! Guarantee: no review is judged on namespace facts that may be stale. From
//! the moment the namespace watch breaks until a new full list has arrived,
//! namespace-aware rules are skipped and the review says so (a warning), an
//! opted-in pod is refused rather than admitted without its sidecar, and
//! `/readyz` fails; afterwards the new label is honoured.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::load::{Expect, Load};
use super::{ENFORCE, Env, PSA_NS, namespaces, no_wrong_verdicts, probes};
use crate::e2e::Setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_kube, has_kubectl, has_helm)),
    ignore = "needs kube-apiserver, etcd, kubectl and helm: scripts/build-kube.sh and scripts/install-tools.sh, or run scripts/test.sh"
)]
async fn apiserver_restart_never_uses_stale_namespace_facts() {
    let case = "apiserver_restart_never_uses_stale_namespace_facts";
    let mut env = Env::start(
        case,
        Setup {
            relayed: true,
            ..Setup::default()
        },
    )
    .await;
    let relay = env.relay.take().expect("relayed");
    namespaces(&env, "privileged").await;
    let load = Load::start(env.client(), probes(true), 2, Duration::from_millis(30));
    assert!(
        load.wait_right(20, Duration::from_secs(30)).await,
        "the load never got going"
    );

    load.mark("apiserver down");
    relay.close();
    let restart = env.cluster.restart_apiserver(Duration::from_secs(2)).await;
    load.mark("apiserver back");
    // The apiserver calls tailguard again, but tailguard cannot list yet.
    let ready_in_gap = env.webhook.health_get("/readyz");
    let namespaces_api: Api<Namespace> = Api::all(env.client());
    namespaces_api
        .patch(
            PSA_NS,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {ENFORCE: "baseline"}}})),
        )
        .await
        .expect("relabel the namespace");
    load.expect("kernel-ds", Expect::Denied("pod-security-level"));
    load.mark("label changed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.open();
    load.mark("relay open");
    let changed = Instant::now();
    assert!(
        env.webhook.wait_health_ok("/readyz", Duration::from_secs(30)),
        "tailguard never became ready again:\n{}",
        env.webhook.log_text()
    );
    let ready_after = changed.elapsed();
    assert!(
        load.wait_right(20, Duration::from_secs(30)).await,
        "reviews never came right after the restart"
    );
    load.mark("recovered");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;

    eprintln!(
        "{case}: apiserver ready {restart:?} after it was started again; /readyz in the gap: {ready_in_gap:?}; \
         tailguard ready {ready_after:?} after it could reach the apiserver again; last non-right answer {:?} after that",
        tally.recovery_after("relay open")
    );
    no_wrong_verdicts(case, &tally);
    assert_eq!(
        ready_in_gap.0, 503,
        "not ready while the namespace watch is broken: {ready_in_gap:?}"
    );
    // In the gap, with the new label: never the old verdict silently.
    let gap = tally.phase("label changed");
    assert!(
        gap.flagged > 0,
        "the kernel-mode DaemonSet was reviewed in the gap and said so: {}",
        tally.report(case)
    );
    let log = env.webhook.log_text();
    assert!(
        log.contains("namespace watch failed") && log.contains("namespace cache listed again after its watch broke"),
        "{log}"
    );
    // Once listed again, everything is judged on current facts.
    let recovered = tally.phase("recovered");
    assert_eq!(
        (recovered.flagged, recovered.failed, recovered.unavailable),
        (0, 0, 0),
        "{}",
        tally.report(case)
    );
    assert!(recovered.right > 0);
}
