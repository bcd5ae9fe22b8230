//! The clock stepped forward past certificate renewal. tailguard (self-managed
//! certificates, checked every second) runs with libfaketime preloaded, so
//! its CLOCK_REALTIME jumps 300 days ahead as an NTP step would, while the
//! apiserver keeps the real time (a node's clock, not the cluster's): a third
//! of the serving certificate's year is then left, so it is renewed. Then the
//! clock steps back.
//!
//! Guarantee: the renewed certificate is valid on the apiserver's clock too
//! (it starts with its CA, not at the stepped "now"), so no admission fails;
//! stepping back changes nothing.

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tailguard::certs::{self, CertInfo};
use tailguard::cluster::certs::secret_data;

use super::load::Load;
use super::{Env, namespaces, no_wrong_verdicts, probes};
use crate::e2e::{RELEASE_NAMESPACE, Setup};
use crate::support::TempDir;
use crate::tools;

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_kube, has_kubectl, has_helm, has_faketime)),
    ignore = "needs kube-apiserver, etcd, kubectl, helm and libfaketime: scripts/build-kube.sh and scripts/install-tools.sh, or run scripts/test.sh"
)]
async fn clock_stepped_past_renewal_keeps_admitting() {
    let case = "clock_stepped_past_renewal_keeps_admitting";
    let dir = TempDir::new("faketime");
    let offset = dir.join("offset");
    std::fs::write(&offset, "+0\n").expect("write the clock offset");
    let lib = tools::tool("TAILGUARD_FAKETIME_LIB");
    let (lib, offset_path) = (lib.display().to_string(), offset.display().to_string());
    let serve_env = [
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME_TIMESTAMP_FILE", offset_path.as_str()),
        // Read the file at every call, so the step takes effect at once.
        ("FAKETIME_NO_CACHE", "1"),
        // Only the wall clock steps (as with NTP); timers keep running.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let env = Env::start(
        case,
        Setup {
            self_certs: true,
            serve_env: &serve_env,
            ..Setup::default()
        },
    )
    .await;
    namespaces(&env, "baseline").await;
    let secret_name = env
        .serve
        .2
        .iter()
        .find_map(|a| a.strip_prefix("--cert-secret="))
        .expect("--cert-secret")
        .to_string();
    let secrets: Api<Secret> = Api::namespaced(env.client(), RELEASE_NAMESPACE);
    let serving = async || {
        let data = secret_data(&secrets.get(&secret_name).await.expect("the certificate Secret"));
        let text = |key: &str| String::from_utf8(data.get(key).cloned().unwrap_or_default()).expect("PEM");
        (text("tls.crt"), text("ca.crt"))
    };
    let (before, ca) = serving().await;

    let load = Load::start(env.client(), probes(false), 2, Duration::from_millis(30));
    assert!(load.wait_right(20, PATIENCE).await, "the load never got going");

    load.mark("clock stepped");
    std::fs::write(&offset, "+300d\n").expect("step the clock");
    let stepped = Instant::now();
    let renewed = loop {
        let (now, _) = serving().await;
        if now != before {
            break now;
        }
        assert!(
            stepped.elapsed() < PATIENCE,
            "no renewal after the step:\n{}",
            env.webhook.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let renewed_in = stepped.elapsed();
    let info = CertInfo::parse(&certs::first_cert(renewed.as_bytes()).expect("tls.crt")).expect("tls.crt");
    let real_now = SystemTime::now();
    assert!(info.not_before <= real_now, "valid now, on the real clock");
    certs::verify_serving_cert(&ca, &renewed, &info.names, real_now).expect("the renewed certificate, today");
    assert!(load.wait_right(20, PATIENCE).await);

    load.mark("clock back");
    std::fs::write(&offset, "+0\n").expect("step the clock back");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(serving().await.0, renewed, "stepping back renews nothing");
    let tally = load.stop().await;

    eprintln!(
        "{case}: renewed {renewed_in:?} after the step; the new certificate starts at unix {} (real now {})",
        certs::unix_seconds(info.not_before),
        certs::unix_seconds(real_now)
    );
    no_wrong_verdicts(case, &tally);
    assert_eq!(tally.total().failed, 0, "{}", tally.report(case));
    let log = env.webhook.log_text();
    assert!(log.contains("renewed the serving certificate"), "{log}");
}
