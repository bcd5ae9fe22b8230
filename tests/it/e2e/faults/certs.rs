//! Self-managed certificates (`--cert-secret`, the chart's `certificates.mode:
//! self`) under hand-made damage, with the apiserver calling all along:
//! the Secret deleted, edited to garbage, replaced by another replica's
//! certificates, and the caBundle of the webhook configuration edited by hand.
//!
//! Guarantees: a deleted or damaged Secret is written back with the
//! certificates the replica serves (no new CA, so no failed admission); a
//! replaced Secret is adopted with the caBundle trusting both CAs before the
//! new certificate is served (no failed admission); a hand-edited caBundle is
//! set back as soon as the watch on the webhook configurations reports the
//! edit (well before the next periodic check), and calls fail only until then.

use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use tailguard::certs::{self, SecretData, SecretPlan};
use tailguard::cluster::certs::secret_data;

use super::load::{Judged, Load};
use super::{Env, namespaces, no_wrong_verdicts, probes};
use crate::e2e::{RELEASE_NAMESPACE, Setup};

/// The periodic check of this case: long enough to tell the watch's repair
/// of the caBundle from the periodic one.
const CHECK_INTERVAL: Duration = Duration::from_secs(3);
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_kube, has_kubectl, has_helm)),
    ignore = "needs kube-apiserver, etcd, kubectl and helm: scripts/build-kube.sh and scripts/install-tools.sh, or run scripts/test.sh"
)]
async fn certificate_secret_and_ca_bundle_damage_is_repaired() {
    let case = "certificate_secret_and_ca_bundle_damage_is_repaired";
    let env = Env::start(
        case,
        Setup {
            self_certs: true,
            cert_check_interval: "3s",
            ..Setup::default()
        },
    )
    .await;
    namespaces(&env, "baseline").await;
    let arg = |prefix: &str| {
        env.serve
            .2
            .iter()
            .find_map(|a| a.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {:?}", env.serve.2))
            .to_string()
    };
    let (secret_name, webhook_name) = (arg("--cert-secret="), arg("--ca-bundle-webhook="));
    let secrets: Api<Secret> = Api::namespaced(env.client(), RELEASE_NAMESPACE);
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(env.client());
    let original = secret_data(&secrets.get(&secret_name).await.expect("the Secret tailguard created"));
    let original_ca = text(&original, "ca.crt");
    let first = bundles(&webhooks, &webhook_name).await;
    assert!(
        all_are(&first, &certs::ca_bundle(&original_ca)),
        "tailguard set its CA as caBundle: {first:?}"
    );

    let load = Load::start(env.client(), probes(false), 2, Duration::from_millis(30));
    assert!(load.wait_right(20, PATIENCE).await, "the load never got going");

    // 1. Deleted.
    load.mark("secret deleted");
    secrets
        .delete(&secret_name, &DeleteParams::default())
        .await
        .expect("delete the Secret");
    let written_back = async || {
        secrets
            .get_opt(&secret_name)
            .await
            .ok()
            .flatten()
            .filter(|s| secret_data(s) == original)
    };
    let deleted_back = wait(&format!("Secret {secret_name} written back"), written_back).await;
    assert!(load.wait_right(10, PATIENCE).await);

    // 2. Edited to garbage (the serving certificate and the CA key).
    load.mark("secret garbage");
    let garbage = json!({"data": {"tls.crt": "Z2FyYmFnZQ==", "ca.key": "Z2FyYmFnZQ=="}});
    secrets
        .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&garbage))
        .await
        .expect("garble the Secret");
    let garbage_back = wait("garbled Secret written back", written_back).await;
    assert!(load.wait_right(10, PATIENCE).await);

    // 3. Replaced by another replica's certificates (another CA, the same names).
    load.mark("secret replaced");
    let serving = text(&original, "tls.crt");
    let names = certs::CertInfo::parse(&certs::first_cert(serving.as_bytes()).expect("tls.crt"))
        .expect("tls.crt")
        .names;
    let theirs = certs::carry_out(&SecretPlan::Create, &names).expect("another replica's certificates");
    let mut replaced = secrets.get(&secret_name).await.expect("Secret");
    replaced.data = Some(theirs.to_data().into_iter().map(|(k, v)| (k, ByteString(v))).collect());
    secrets
        .replace(&secret_name, &Default::default(), &replaced)
        .await
        .expect("replace the Secret");
    let their_bundle = certs::ca_bundle(&theirs.ca.cert_pem);
    let overlap = wait("a caBundle trusting both CAs", async || {
        let now = bundles(&webhooks, &webhook_name).await;
        now.iter()
            .all(|b| {
                let pem = decode(b);
                pem.contains(theirs.ca.cert_pem.trim()) && pem.contains(original_ca.trim())
            })
            .then_some(())
    })
    .await;
    let settled = wait("the caBundle on the new CA alone", async || {
        all_are(&bundles(&webhooks, &webhook_name).await, &their_bundle).then_some(())
    })
    .await;
    assert!(load.wait_right(10, PATIENCE).await);
    assert_eq!(
        secret_data(&secrets.get(&secret_name).await.expect("Secret")),
        theirs.to_data(),
        "the replaced Secret is adopted, not overwritten"
    );

    // 4. The caBundle edited by hand (someone else's CA).
    load.mark("caBundle edited");
    let stranger = certs::carry_out(&SecretPlan::Create, &names).expect("a stranger CA");
    let edited = Instant::now();
    let config = webhooks.get(&webhook_name).await.expect("webhook configuration");
    let ops: Vec<_> = (0..config.webhooks.as_ref().map_or(0, Vec::len))
        .map(|i| {
            json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                   "value": certs::ca_bundle(&stranger.ca.cert_pem)})
        })
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(json!(ops)).expect("patch");
    webhooks
        .patch(&webhook_name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .expect("edit the caBundle");
    wait("the caBundle set back", async || {
        all_are(&bundles(&webhooks, &webhook_name).await, &their_bundle).then_some(())
    })
    .await;
    let bundle_back = edited.elapsed();
    assert!(load.wait_right(10, PATIENCE).await);
    load.mark("repaired");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;

    eprintln!(
        "{case}: deleted Secret written back in {deleted_back:?}, garbled in {garbage_back:?}; replaced: both CAs \
         trusted after {overlap:?}, the new one alone after {settled:?} more; hand-edited caBundle set back in \
         {bundle_back:?}, last failed call {:?} after the edit",
        tally.recovery_after("caBundle edited")
    );
    no_wrong_verdicts(case, &tally);
    for phase in ["secret deleted", "secret garbage", "secret replaced", "repaired"] {
        assert_eq!(tally.phase(phase).failed, 0, "{phase}: {}", tally.report(case));
    }
    // Set back by the watch, before the periodic check would have; calls fail only until then.
    assert!(
        bundle_back < CHECK_INTERVAL,
        "{bundle_back:?}:\n{}",
        env.webhook.log_text()
    );
    let edited_phase = tally.phase("caBundle edited");
    assert!(
        tally.recovery_after("caBundle edited") < CHECK_INTERVAL,
        "{}\n{}",
        tally.report(case),
        tally.examples(Judged::Failed, 5)
    );
    eprintln!(
        "{case}: failed admissions while the caBundle was wrong: {} of {}",
        edited_phase.failed, edited_phase.sent
    );
    let log = env.webhook.log_text();
    assert!(log.contains("wrote back the certificates this replica serves"), "{log}");
}

/// Every webhook has `bundle` (and there is at least one).
fn all_are(bundles: &[String], bundle: &str) -> bool {
    !bundles.is_empty() && bundles.iter().all(|b| b == bundle)
}

fn text(data: &SecretData, key: &str) -> String {
    String::from_utf8(data.get(key).cloned().unwrap_or_default()).expect("PEM text")
}

fn decode(bundle: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(bundle)
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The caBundle (base64) of every webhook of the validating configuration `name`.
async fn bundles(api: &Api<ValidatingWebhookConfiguration>, name: &str) -> Vec<String> {
    let config = api.get(name).await.expect("webhook configuration");
    config
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| certs::ca_bundle(&String::from_utf8_lossy(&b.0)))
                .unwrap_or_default()
        })
        .collect()
}

/// Polls `check` until it gives something; how long that took.
async fn wait<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> Duration {
    let started = Instant::now();
    loop {
        if check().await.is_some() {
            return started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
