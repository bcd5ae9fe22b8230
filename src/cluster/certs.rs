//! Self-managed certificates (`serve --cert-secret`): the kube side.
//!
//! Every replica runs the same loop: read the certificate Secret, let
//! [`certs::plan_secret`] decide (create / reuse / reissue / renew / new CA),
//! write the result back with optimistic concurrency (create fails with
//! AlreadyExists, update with Conflict when another replica got there first;
//! then re-read and use what the winner wrote), hand the certificates to the
//! server, and set the CA as `caBundle` of the named webhook configurations.
//!
//! Needs `get`, `create` and `update` on the Secret and `get`, `patch`,
//! `list` and `watch` on the webhook configurations (by name: the watch
//! selects `metadata.name`); it never lists or watches Secrets.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use super::ca_bundle::{Bundle, sync_ca_bundle, watch_configurations};
use crate::certs::{self, SecretCerts, SecretData, SecretPlan};

/// Field manager name of tailguard's writes.
pub const FIELD_MANAGER: &str = "tailguard";
/// How many read-decide-write rounds one sync tries when it keeps losing races.
const ROUNDS: usize = 5;
/// After a watched webhook configuration changes, how long to wait for more
/// changes before checking.
const CHANGE_SETTLE: Duration = Duration::from_millis(100);
/// For how many checks after a CA change the caBundle still trusts the old CA:
/// the check that saw the change and the next one, by which every other
/// replica (checking at the same interval) has seen it too.
const OVERLAP_SYNCS: usize = 2;

/// What `serve --cert-secret` manages.
#[derive(Debug, Clone)]
pub struct SelfCerts {
    pub namespace: String,
    pub secret: String,
    /// Names of the serving certificate (DNS names or IP addresses).
    pub names: Vec<String>,
    /// Validating/MutatingWebhookConfigurations whose caBundle is set to the CA.
    pub webhooks: Vec<String>,
    /// How often the Secret and the webhook configurations are checked.
    pub interval: Duration,
}

/// Where the certificate Secret is read and written. [`KubeSecret`] is the
/// real one; tests wrap it to interleave another writer.
pub trait SecretStore: Sync {
    /// The Secret, or `None` if it does not exist.
    fn get(&self) -> impl Future<Output = kube::Result<Option<Secret>>> + Send;
    fn create(&self, secret: &Secret) -> impl Future<Output = kube::Result<Secret>> + Send;
    /// Replaces the Secret; `secret.metadata.resourceVersion` makes it conditional.
    fn replace(&self, secret: &Secret) -> impl Future<Output = kube::Result<Secret>> + Send;
    fn namespace(&self) -> &str;
    fn name(&self) -> &str;

    /// `namespace/name`, for logs.
    fn describe(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }
}

/// A Secret in the cluster, by namespace and name.
#[derive(Clone)]
pub struct KubeSecret {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl KubeSecret {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> KubeSecret {
        KubeSecret {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl SecretStore for KubeSecret {
    async fn get(&self) -> kube::Result<Option<Secret>> {
        self.api.get_opt(&self.name).await
    }

    async fn create(&self, secret: &Secret) -> kube::Result<Secret> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        self.api.create(&params, secret).await
    }

    async fn replace(&self, secret: &Secret) -> kube::Result<Secret> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        self.api.replace(&self.name, &params, secret).await
    }

    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// What a sync did with the Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretAction {
    /// It did not exist: this replica generated a CA and created it.
    Created,
    /// It was good as it was.
    Reused,
    /// A new serving certificate from the same CA (names missing, or unusable).
    Reissued,
    /// A new serving certificate from the same CA before the old one expires.
    Renewed,
    /// A new CA (the old one unusable or due for rotation).
    NewCa,
    /// The Secret was deleted or unusable while this replica held good
    /// certificates: those were written back (no new CA, caBundle unchanged).
    Restored,
}

impl SecretAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretAction::Created => "created",
            SecretAction::Reused => "reused",
            SecretAction::Reissued => "reissued",
            SecretAction::Renewed => "renewed",
            SecretAction::NewCa => "new-ca",
            SecretAction::Restored => "restored",
        }
    }
}

/// The outcome of [`ensure_secret`].
#[derive(Debug, Clone)]
pub struct Ensured {
    /// What the Secret holds now.
    pub certs: SecretCerts,
    /// What this replica did last (after a lost race: usually `Reused`).
    pub action: SecretAction,
    /// How many writes lost a race to another writer (AlreadyExists or Conflict).
    pub lost_races: usize,
}

/// Reads the Secret, decides, writes if needed, and returns what it holds now.
/// A lost race (the create answered AlreadyExists, the update Conflict) is
/// logged and followed by a re-read, so every replica ends up with what the
/// winner wrote. Every decision is logged.
///
/// `held` is what this replica serves (none at start). When the Secret is
/// gone or its CA or serving pair unusable (deleted, edited by hand) but
/// `held` is still good, `held` is written back: a new CA would leave the
/// caBundle and every other replica on the old one until their next check,
/// failing admissions meanwhile.
pub async fn ensure_secret<S: SecretStore>(
    store: &S,
    names: &[String],
    held: Option<&SecretCerts>,
) -> anyhow::Result<Ensured> {
    let target = store.describe();
    let mut lost_races = 0;
    for _ in 0..ROUNDS {
        let current = store
            .get()
            .await
            .map_err(|e| concise(e, &format!("cannot read Secret {target}")))?;
        let data = current.as_ref().map(secret_data);
        let now = SystemTime::now();
        let plan = certs::plan_secret(data.as_ref(), names, now);
        if let SecretPlan::Reuse(_) = plan {
            let certs = certs::carry_out(&plan, names).context("cannot read the certificates")?;
            tracing::debug!(secret = %target, decision = "reused", "certificate Secret is good as it is");
            return Ok(Ensured {
                certs,
                action: SecretAction::Reused,
                lost_races,
            });
        }
        // Only over damage: a Secret that is gone, or whose CA or serving pair is
        // unusable. An expiring or narrower certificate is renewed or reissued
        // from the same CA as usual (the caBundle does not change).
        let damaged = matches!(
            plan,
            SecretPlan::Create
                | SecretPlan::NewCa { .. }
                | SecretPlan::Reissue {
                    reason: certs::Reissue::Unusable(_),
                    ..
                }
        );
        let restore = held
            .filter(|h| damaged && matches!(certs::plan_secret(Some(&h.to_data()), names, now), SecretPlan::Reuse(_)));
        let (decision, certs) = match (restore, &plan) {
            (Some(held), _) => (SecretAction::Restored, held.clone()),
            (None, SecretPlan::Create) => (
                SecretAction::Created,
                certs::carry_out(&plan, names).context("cannot generate certificates")?,
            ),
            (None, SecretPlan::NewCa { .. }) => (
                SecretAction::NewCa,
                certs::carry_out(&plan, names).context("cannot generate certificates")?,
            ),
            (
                None,
                SecretPlan::Reissue {
                    reason: certs::Reissue::Expiring { .. },
                    ..
                },
            ) => (
                SecretAction::Renewed,
                certs::carry_out(&plan, names).context("cannot generate certificates")?,
            ),
            (None, _) => (
                SecretAction::Reissued,
                certs::carry_out(&plan, names).context("cannot generate certificates")?,
            ),
        };
        let result = match current {
            None => store.create(&new_secret(store, &certs)).await,
            Some(mut secret) => {
                let data = secret.data.get_or_insert_with(BTreeMap::new);
                for (key, value) in certs.to_data() {
                    data.insert(key, ByteString(value));
                }
                store.replace(&secret).await
            }
        };
        match result {
            Ok(_) => {
                log_decision(&target, decision, &plan, &certs);
                return Ok(Ensured {
                    certs,
                    action: decision,
                    lost_races,
                });
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.is_conflict() => {
                lost_races += 1;
                tracing::info!(
                    secret = %target,
                    decision = "lost-race",
                    attempted = decision.as_str(),
                    reason = %status.reason,
                    "another replica wrote the certificate Secret first; re-reading it to use what it wrote"
                );
            }
            Err(e) => {
                let doing = if decision == SecretAction::Created {
                    "create"
                } else {
                    "update"
                };
                return Err(concise(e, &format!("cannot {doing} Secret {target}")));
            }
        }
    }
    anyhow::bail!("Secret {target} kept changing while tailguard tried to write it ({ROUNDS} rounds); will retry")
}

/// A kube error as one readable line: the apiserver's message and code (not
/// the whole Status), with what RBAC is missing when it is Forbidden.
pub(super) fn concise(error: kube::Error, doing: &str) -> anyhow::Error {
    match error {
        kube::Error::Api(status) => {
            let hint = if status.is_forbidden() {
                " (tailguard's ServiceAccount needs get, create and update on this Secret, and get and patch \
                 on the webhook configurations it is given)"
            } else {
                ""
            };
            anyhow::anyhow!("{doing}: {} ({} {}){hint}", status.message, status.code, status.reason)
        }
        other => anyhow::Error::new(other).context(doing.to_string()),
    }
}

fn log_decision(target: &str, decision: SecretAction, plan: &SecretPlan, written: &SecretCerts) {
    let expires = |pem: &str| {
        certs::first_cert(pem.as_bytes())
            .and_then(|der| certs::CertInfo::parse(&der))
            .map(|info| certs::unix_seconds(info.not_after))
            .unwrap_or_default()
    };
    let (ca_not_after, not_after) = (expires(&written.ca.cert_pem), expires(&written.serving.cert_pem));
    let reason = match plan {
        SecretPlan::Create => "the Secret does not exist".to_string(),
        other => other.reason(),
    };
    match decision {
        SecretAction::Created => tracing::info!(
            secret = %target, decision = decision.as_str(), ca_not_after, not_after,
            "created the certificate Secret with a new CA and serving certificate"
        ),
        SecretAction::Reused => {}
        SecretAction::Reissued => tracing::info!(
            secret = %target, decision = decision.as_str(), %reason, not_after,
            "issued a new serving certificate from the existing CA (caBundle unchanged)"
        ),
        SecretAction::Renewed => tracing::info!(
            secret = %target, decision = decision.as_str(), %reason, not_after,
            "renewed the serving certificate from the existing CA (caBundle unchanged)"
        ),
        SecretAction::NewCa => tracing::warn!(
            secret = %target, decision = decision.as_str(), %reason, ca_not_after, not_after,
            "generated a new CA (the previous one stays in the caBundle while it is valid)"
        ),
        SecretAction::Restored => tracing::warn!(
            secret = %target, decision = decision.as_str(), found = %reason, ca_not_after, not_after,
            "the certificate Secret was deleted or unusable; wrote back the certificates this replica serves"
        ),
    }
}

/// A Secret's data as plain bytes.
pub fn secret_data(secret: &Secret) -> SecretData {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

fn new_secret<S: SecretStore>(store: &S, certs: &SecretCerts) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(store.name().to_string()),
            namespace: Some(store.namespace().to_string()),
            labels: Some([("app.kubernetes.io/managed-by".to_string(), "tailguard".to_string())].into()),
            annotations: Some(
                [(
                    "tailguard.io/certificates".to_string(),
                    "self-managed by tailguard serve --cert-secret".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(certs.to_data().into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Secret::default()
    }
}

// --- the loop ---

/// Keeps the Secret, the served certificate and the caBundles right, forever:
/// at start (retrying with backoff until the Secret can be read and written),
/// then every `interval`, and whenever one of the webhook configurations
/// changes (they are watched by name). `install` receives the Secret's certificates after
/// every successful sync (it writes them out and swaps the served certificate
/// when they changed).
///
/// The caBundles are set before a certificate is served: when the CA changes
/// (the Secret replaced by another replica's, a CA rotation), the bundle
/// trusts the old and the new CA for [`OVERLAP_SYNCS`] checks, so neither
/// this replica's new certificate nor another replica's old one (until its
/// own next check) is ever refused by the apiserver.
pub async fn run(
    client: kube::Client,
    config: SelfCerts,
    mut install: impl FnMut(&SecretCerts) -> anyhow::Result<()> + Send,
) {
    let store = KubeSecret::new(client.clone(), &config.namespace, &config.secret);
    let started = Instant::now();
    let mut held: Option<SecretCerts> = None;
    // The CA(s) served before the last change, and for how many more checks to trust them.
    let mut overlap: Option<(String, usize)> = None;
    let mut backoff = Duration::from_millis(250);
    // Last logged state per webhook configuration name, to log changes only.
    let mut bundle_states: BTreeMap<String, Bundle> = BTreeMap::new();
    // A change to a webhook configuration (a caBundle edited by hand, a Helm
    // upgrade re-applying it) wakes the loop at once. Dropped with this future.
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut watches = tokio::task::JoinSet::new();
    for name in &config.webhooks {
        watches.spawn(watch_configurations(client.clone(), name.clone(), changed.clone()));
    }
    loop {
        let wait = match ensure_secret(&store, &config.names, held.as_ref()).await {
            Ok(ensured) => {
                if let Some(old) = held.as_ref().filter(|old| old.ca.cert_pem != ensured.certs.ca.cert_pem) {
                    overlap = Some((old.ca.cert_pem.clone(), OVERLAP_SYNCS));
                }
                let bundle = match &overlap {
                    Some((old, _)) => certs::bundle_union(&ensured.certs.ca.cert_pem, old),
                    None => ensured.certs.ca.cert_pem.clone(),
                };
                for name in &config.webhooks {
                    let state = sync_ca_bundle(&client, name, &bundle).await;
                    if bundle_states.get(name) != Some(&state) {
                        state.log(name, config.interval);
                    }
                    bundle_states.insert(name.clone(), state);
                }
                overlap = overlap.and_then(|(old, left)| (left > 1).then(|| (old, left - 1)));
                match install(&ensured.certs) {
                    Ok(()) => {
                        if held.is_none() {
                            tracing::info!(
                                secret = %store.describe(),
                                decision = ensured.action.as_str(),
                                lost_races = ensured.lost_races,
                                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                                "self-managed certificates in place"
                            );
                        }
                        held = Some(ensured.certs);
                        backoff = Duration::from_millis(250);
                        config.interval
                    }
                    Err(e) => {
                        tracing::error!(
                            error = format!("{e:#}"),
                            "cannot install the certificates from the Secret"
                        );
                        next_backoff(&mut backoff, config.interval)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    secret = %store.describe(),
                    error = format!("{e:#}"),
                    ready = held.is_some(),
                    "certificate Secret sync failed; retrying"
                );
                next_backoff(&mut backoff, config.interval)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = changed.notified() => {
                // Let a burst of changes (both kinds, a re-apply) settle into one sync.
                tokio::time::sleep(CHANGE_SETTLE).await;
            }
        }
    }
}

fn next_backoff(backoff: &mut Duration, max: Duration) -> Duration {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(max.max(Duration::from_millis(250)));
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let mut b = Duration::from_millis(250);
        let waits: Vec<u128> = (0..6)
            .map(|_| next_backoff(&mut b, Duration::from_secs(2)).as_millis())
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000]);
    }

    #[test]
    fn new_secret_is_a_tls_secret() {
        struct Named;
        impl SecretStore for Named {
            async fn get(&self) -> kube::Result<Option<Secret>> {
                Ok(None)
            }
            async fn create(&self, s: &Secret) -> kube::Result<Secret> {
                Ok(s.clone())
            }
            async fn replace(&self, s: &Secret) -> kube::Result<Secret> {
                Ok(s.clone())
            }
            fn namespace(&self) -> &str {
                "tailguard"
            }
            fn name(&self) -> &str {
                "tg-certs"
            }
        }
        let certs = certs::carry_out(&SecretPlan::Create, &["tailguard".to_string()]).unwrap();
        let secret = new_secret(&Named, &certs);
        assert_eq!(secret.metadata.name.as_deref(), Some("tg-certs"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("tailguard"));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = secret_data(&secret);
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["ca.crt", "ca.key", "tls.crt", "tls.key"]
        );
        assert_eq!(data, certs.to_data());
    }

    /// A Secret kept in memory.
    #[derive(Default)]
    struct Memory(std::sync::Mutex<Option<Secret>>);

    impl Memory {
        fn set(&self, secret: Option<Secret>) {
            *self.0.lock().unwrap() = secret;
        }
        fn data(&self) -> Option<SecretData> {
            self.0.lock().unwrap().as_ref().map(secret_data)
        }
    }

    impl SecretStore for Memory {
        async fn get(&self) -> kube::Result<Option<Secret>> {
            Ok(self.0.lock().unwrap().clone())
        }
        async fn create(&self, s: &Secret) -> kube::Result<Secret> {
            self.set(Some(s.clone()));
            Ok(s.clone())
        }
        async fn replace(&self, s: &Secret) -> kube::Result<Secret> {
            self.set(Some(s.clone()));
            Ok(s.clone())
        }
        fn namespace(&self) -> &str {
            "tailguard"
        }
        fn name(&self) -> &str {
            "tg-certs"
        }
    }

    #[tokio::test]
    async fn a_deleted_or_damaged_secret_gets_the_held_certificates_back() {
        let names = ["localhost".to_string()];
        let store = Memory::default();
        let first = ensure_secret(&store, &names, None).await.unwrap();
        assert_eq!(first.action, SecretAction::Created);
        let held = first.certs;

        // Deleted: written back as it was, no new CA.
        store.set(None);
        let again = ensure_secret(&store, &names, Some(&held)).await.unwrap();
        assert_eq!(again.action, SecretAction::Restored);
        assert_eq!(again.certs, held);
        assert_eq!(store.data(), Some(held.to_data()));

        // Edited to garbage: the same.
        let mut garbled = store.0.lock().unwrap().clone().unwrap();
        for key in ["tls.crt", "ca.key"] {
            garbled
                .data
                .as_mut()
                .unwrap()
                .insert(key.into(), ByteString(b"garbage".to_vec()));
        }
        store.set(Some(garbled));
        let again = ensure_secret(&store, &names, Some(&held)).await.unwrap();
        assert_eq!(again.action, SecretAction::Restored);
        assert_eq!(store.data(), Some(held.to_data()));

        // Replaced by another good pair (another replica's): adopted, not overwritten.
        let other = certs::carry_out(&SecretPlan::Create, &names).unwrap();
        store.set(Some(new_secret(&store, &other)));
        let adopted = ensure_secret(&store, &names, Some(&held)).await.unwrap();
        assert_eq!(adopted.action, SecretAction::Reused);
        assert_eq!(adopted.certs, other);

        // An expiring certificate put in the Secret: renewed from its CA, not overwritten.
        let short = certs::issue_serving_cert(&other.ca, &["localhost"], &[], Duration::from_secs(600)).unwrap();
        let mut expiring = other.clone();
        expiring.serving = short;
        store.set(Some(new_secret(&store, &expiring)));
        let renewed = ensure_secret(&store, &names, Some(&held)).await.unwrap();
        assert_eq!(renewed.action, SecretAction::Renewed);
        assert_eq!(renewed.certs.ca, other.ca);

        // Held certificates that no longer fit (another name wanted): not restored.
        store.set(None);
        let wider = ["localhost".to_string(), "tailguard.tailguard.svc".to_string()];
        let fresh = ensure_secret(&store, &wider, Some(&held)).await.unwrap();
        assert_eq!(fresh.action, SecretAction::Created);
        assert_ne!(fresh.certs.ca, held.ca);
    }
}
