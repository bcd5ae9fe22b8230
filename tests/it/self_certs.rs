//! `tailguard serve --cert-secret` (the chart's `certificates.mode: self`)
//! against a real kube-apiserver: two replicas started together converge on
//! one CA, the caBundle is patched and the apiserver then calls the webhook,
//! a restart reuses the Secret, an expiring serving certificate is renewed
//! (and served without a restart) under the same CA, a new name is added from
//! the same CA, readiness waits for the certificates, and the create/update
//! conflict paths of the library function use what the other writer wrote.
//!
//! The server authenticates as a user with exactly the RBAC the chart grants
//! (no list/watch on Secrets). One apiserver for the whole file.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tailguard::certs::{self, CaPem, CertInfo, SecretCerts};
use tailguard::cluster::certs::{KubeSecret, SecretAction, SecretStore, ensure_secret, secret_data};

use crate::support::harness::{KubeBinaries, TestCluster};
use crate::support::{BIN, Serve, TempDir, process, tls_client, tls_connect};
use crate::tools;

const NS: &str = "tailguard";
const TEST_NS: &str = "webhook-test";
const SECRET: &str = "tg-certs";
const WEBHOOK: &str = "tailguard";
/// The identity the servers run as, with the chart's RBAC.
const USER: &str = "tailguard-self-certs";
const PATIENCE: Duration = Duration::from_secs(20);
const ALLOWED: &str = "tailguard_reviews_total{endpoint=\"validate\",result=\"allowed\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_kube),
    ignore = "needs kube-apiserver and etcd (KUBE_APISERVER_BIN, ETCD_BIN): scripts/build-kube.sh, or run scripts/test.sh"
)]
async fn self_managed_certificates() {
    let _heavy = crate::support::heavy();
    let (apiserver, etcd) = (tools::tool("KUBE_APISERVER_BIN"), tools::tool("ETCD_BIN"));
    let cluster = TestCluster::start(&KubeBinaries { apiserver, etcd }, "self-certs").await;
    eprintln!("apiserver ready in {:?}", cluster.startup);
    let admin = cluster.client.clone();
    setup(&admin).await;
    let kubeconfig = cluster.kubeconfig_for("self-certs.kubeconfig", USER, &[]);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let work = TempDir::new("self-certs");

    // --- 1. Two replicas started at the same moment converge on one CA. ---
    // Both processes are spawned before either is waited for.
    let (launch_a, launch_b) = (
        Replica::launch("a", &kubeconfig, work.path(), NS, &[]),
        Replica::launch("b", &kubeconfig, work.path(), NS, &[]),
    );
    let (mut a, mut b) = (launch_a.listening(), launch_b.listening());
    let (ready_a, ready_b) = (a.wait_ready(), b.wait_ready());
    eprintln!(
        "two replicas, spawn to /readyz 200: a {ready_a:?}, b {ready_b:?}; \
         bind to certificates in place (in-process): a {}ms, b {}ms",
        a.in_place_ms(),
        b.in_place_ms()
    );
    let secret = secrets.get(SECRET).await.expect("the Secret was created");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let first = certs_of(&secret);
    let created = a.count("created the certificate Secret with a new CA and serving certificate")
        + b.count("created the certificate Secret with a new CA and serving certificate");
    assert_eq!(
        created,
        1,
        "exactly one replica creates the Secret\n{}\n{}",
        a.log(),
        b.log()
    );
    let lost = a.decisions("lost-race").len() + b.decisions("lost-race").len();
    eprintln!("create race: {lost} replica(s) lost the create and re-read the Secret");
    for replica in [&a, &b] {
        let served = served_cert(replica.addr, &first.ca.cert_pem).await;
        assert_eq!(
            served.as_ref(),
            Ok(&leaf_der(&first.serving.cert_pem)),
            "replica {} serves the Secret's certificate, chaining to its ca.crt",
            replica.name
        );
        // Written to --certs-dir, without the CA key.
        let dir = replica.certs_dir();
        assert_eq!(read(&dir.join("tls.crt")), first.serving.cert_pem);
        assert_eq!(read(&dir.join("ca.crt")), first.ca.cert_pem);
        assert!(!dir.join("ca.key").exists());
    }

    // The webhook configuration appears after the servers (they log it missing and retry),
    // with an empty caBundle; the servers patch it and the apiserver then calls tailguard.
    a.wait_log("no Validating or MutatingWebhookConfiguration of this name yet; will retry");
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    webhooks
        .create(&PostParams::default(), &webhook_configuration(a.addr))
        .await
        .expect("create the ValidatingWebhookConfiguration");
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    mutating
        .create(&PostParams::default(), &mutating_configuration())
        .await
        .expect("create the MutatingWebhookConfiguration");
    let bundle = certs::ca_bundle(&first.ca.cert_pem);
    let patched_in = wait_ca_bundle(&webhooks, &bundle).await;
    eprintln!("caBundle patched {patched_in:?} after the configuration was created");
    // Both kinds of that name, every webhook entry.
    let started = Instant::now();
    loop {
        let config = mutating.get(WEBHOOK).await.expect("mutating configuration");
        let bundles: Vec<Option<String>> = config
            .webhooks
            .unwrap_or_default()
            .iter()
            .map(|w| {
                w.client_config
                    .ca_bundle
                    .as_ref()
                    .map(|b| certs::ca_bundle(&String::from_utf8_lossy(&b.0)))
            })
            .collect();
        if bundles.len() == 2 && bundles.iter().all(|b| b.as_deref() == Some(bundle.as_str())) {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "mutating caBundles: {bundles:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = a.metric(ALLOWED);
    let admitted_in = create_configmap_through_webhook(&admin, "through-a").await;
    assert!(
        a.metric(ALLOWED) > before,
        "the apiserver's review reached replica a ({before} before)"
    );
    eprintln!("first admission through the webhook {admitted_in:?} after the caBundle was patched");

    // A reapplied configuration (Helm upgrade) with an empty caBundle gets fixed again.
    webhooks
        .patch(
            WEBHOOK,
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"webhooks": [{"name": "validate.tailguard.io", "clientConfig": {"caBundle": null}}]}),
            ),
        )
        .await
        .expect("clear the caBundle");
    assert_ne!(ca_bundle_of(&webhooks).await, bundle);
    let repatched_in = wait_ca_bundle(&webhooks, &bundle).await;
    eprintln!("cleared caBundle restored in {repatched_in:?}");

    // --- 2. A restart reuses the Secret: same CA, same certificate, no write. ---
    let version = secret.metadata.resource_version.clone();
    drop(a);
    let mut a = Replica::spawn("a2", &kubeconfig, work.path(), &[]);
    a.wait_ready();
    assert_eq!(a.in_place_decision(), "reused", "{}", a.log());
    let after_restart = secrets.get(SECRET).await.expect("Secret");
    assert_eq!(
        after_restart.metadata.resource_version, version,
        "a reuse writes nothing"
    );
    assert_eq!(certs_of(&after_restart), first);
    assert_eq!(
        served_cert(a.addr, &first.ca.cert_pem).await,
        Ok(leaf_der(&first.serving.cert_pem))
    );

    // --- 3. An expiring serving certificate is renewed under the same CA, and both
    //        running replicas serve the new one without a restart. ---
    let short = certs::issue_serving_cert(&first.ca, &["localhost"], &[], Duration::from_secs(600)).expect("issue");
    put_serving(&secrets, &short).await;
    let renewed_at = Instant::now();
    let renewed = wait_secret(&secrets, |c| {
        leaf_info(&c.serving.cert_pem).remaining(SystemTime::now()) > Duration::from_secs(300 * 24 * 3600)
    })
    .await;
    assert_eq!(renewed.ca, first.ca, "renewal keeps the CA (and the caBundle)");
    assert_ne!(renewed.serving, first.serving);
    certs::verify_serving_cert(
        &first.ca.cert_pem,
        &renewed.serving.cert_pem,
        &["localhost".into()],
        SystemTime::now(),
    )
    .expect("the renewed certificate chains to the same CA");
    for replica in [&a, &b] {
        wait_served(replica, &first.ca.cert_pem, &renewed.serving.cert_pem).await;
    }
    eprintln!(
        "expiring certificate renewed and served by both replicas in {:?}",
        renewed_at.elapsed()
    );
    let renewals = a.decisions("renewed").len() + b.decisions("renewed").len();
    assert!(renewals >= 1, "{}\n{}", a.log(), b.log());
    assert_eq!(ca_bundle_of(&webhooks).await, bundle);
    let before = b.metric(ALLOWED);
    set_webhook_url(&webhooks, b.addr).await;
    create_configmap_through_webhook(&admin, "through-b").await;
    assert!(b.metric(ALLOWED) > before, "the apiserver's review reached replica b");

    // --- 3b. A replica wanting another name reissues from the same CA; the replica
    //         with the old list does not reissue back (the old names are kept). ---
    drop(b);
    // Also given a webhook configuration its RBAC does not cover: logged, retried, not fatal.
    let mut b = Replica::spawn(
        "b2",
        &kubeconfig,
        work.path(),
        &[
            "--cert-dns",
            "tailguard.tailguard.svc",
            "--ca-bundle-webhook",
            "not-granted",
        ],
    );
    b.wait_ready();
    b.wait_log("cannot set the caBundle; will retry");
    assert!(b.log().contains("403 Forbidden"), "{}", b.log());
    assert_eq!(b.in_place_decision(), "reissued", "{}", b.log());
    assert_eq!(b.decisions("reissued").len(), 1, "{}", b.log());
    let reissued = certs_of(&secrets.get(SECRET).await.expect("Secret"));
    assert_eq!(reissued.ca, first.ca);
    assert_eq!(
        leaf_info(&reissued.serving.cert_pem).names,
        ["localhost", "tailguard.tailguard.svc"]
    );
    let settled = secrets.get(SECRET).await.expect("Secret").metadata.resource_version;
    tokio::time::sleep(Duration::from_millis(1500)).await; // five check intervals
    assert_eq!(
        secrets.get(SECRET).await.expect("Secret").metadata.resource_version,
        settled,
        "no ping-pong between replicas with different name lists\n{}",
        a.log()
    );
    wait_served(&a, &first.ca.cert_pem, &reissued.serving.cert_pem).await;

    // --- Readiness waits for the certificates: a replica that cannot read its Secret
    //     (forbidden in that namespace) is alive but not ready, and serves no TLS. ---
    let blocked = Replica::launch("blocked", &kubeconfig, work.path(), "default", &[]).listening();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, body) = blocked.health_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no TLS certificate loaded"), "{body}");
    assert_eq!(blocked.health_get("/healthz").0, 200);
    assert!(served_cert(blocked.addr, &first.ca.cert_pem).await.is_err());
    assert!(
        blocked.log().contains("certificate Secret sync failed; retrying"),
        "{}",
        blocked.log()
    );
    drop(blocked);

    // --- 4. The conflict paths of the library function, against the apiserver. ---
    let names = vec!["localhost".to_string()];
    // Create loses: another writer creates the Secret between our read and our create.
    let store = Interloper::new(KubeSecret::new(admin.clone(), NS, "race-create"));
    let ensured = ensure_secret(&store, &names, None).await.expect("ensure");
    let theirs = store.wrote().expect("the interloper wrote first");
    assert_eq!(ensured.lost_races, 1);
    assert_eq!(ensured.action, SecretAction::Reused);
    assert_eq!(ensured.certs, theirs, "the loser uses the winner's CA and certificate");
    assert_eq!(certs_of(&secrets.get("race-create").await.expect("Secret")), theirs);

    // Update loses: the serving certificate is expiring, another writer renews it first.
    put_serving_named(&secrets, "race-create", &short_for(&theirs.ca)).await;
    let store = Interloper::new(KubeSecret::new(admin.clone(), NS, "race-create"));
    let ensured = ensure_secret(&store, &names, None).await.expect("ensure");
    let theirs = store.wrote().expect("the interloper renewed first");
    assert_eq!(ensured.lost_races, 1);
    assert_eq!(ensured.action, SecretAction::Reused);
    assert_eq!(ensured.certs, theirs);
    assert_eq!(certs_of(&secrets.get("race-create").await.expect("Secret")), theirs);

    // Two concurrent calls on a new Secret: one creates, the other ends up with the same CA.
    for round in 0..3 {
        let name = format!("race-join-{round}");
        let (s1, s2) = (
            KubeSecret::new(admin.clone(), NS, &name),
            KubeSecret::new(admin.clone(), NS, &name),
        );
        let (r1, r2) = tokio::join!(ensure_secret(&s1, &names, None), ensure_secret(&s2, &names, None));
        let (r1, r2) = (r1.expect("first"), r2.expect("second"));
        assert_eq!(r1.certs.ca, r2.certs.ca, "round {round}");
        let decisions = [r1.action, r2.action];
        assert_eq!(
            decisions.iter().filter(|d| **d == SecretAction::Created).count(),
            1,
            "round {round}: {decisions:?}"
        );
        assert_eq!(certs_of(&secrets.get(&name).await.expect("Secret")).ca, r1.certs.ca);
        eprintln!(
            "join round {round}: {decisions:?}, lost races {}",
            r1.lost_races + r2.lost_races
        );
    }
}

// --- the cluster ---

async fn setup(client: &kube::Client) {
    let params = PatchParams::apply("self-certs-test").force();
    for ns in [NS, TEST_NS] {
        let doc = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        Api::<Namespace>::all(client.clone())
            .patch(ns, &params, &Patch::Apply(doc))
            .await
            .expect("namespace");
    }
    // What the chart grants the server for `certificates.mode: self`.
    let cluster_role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": USER},
        "rules": [
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["admissionregistration.k8s.io"],
             "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
             "resourceNames": [WEBHOOK], "verbs": ["get", "patch", "list", "watch"]}
        ]
    });
    let binding = |kind: &str, role_kind: &str| {
        let metadata = match kind {
            "RoleBinding" => json!({"name": USER, "namespace": NS}),
            _ => json!({"name": USER}),
        };
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": USER},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]
        })
    };
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": USER, "namespace": NS},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update", "patch"]}]
    });
    Api::<ClusterRole>::all(client.clone())
        .patch(USER, &params, &Patch::Apply(cluster_role))
        .await
        .expect("ClusterRole");
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            USER,
            &params,
            &Patch::Apply(binding("ClusterRoleBinding", "ClusterRole")),
        )
        .await
        .expect("ClusterRoleBinding");
    Api::<Role>::namespaced(client.clone(), NS)
        .patch(USER, &params, &Patch::Apply(role))
        .await
        .expect("Role");
    Api::<RoleBinding>::namespaced(client.clone(), NS)
        .patch(USER, &params, &Patch::Apply(binding("RoleBinding", "Role")))
        .await
        .expect("RoleBinding");
}

/// A ValidatingWebhookConfiguration for ConfigMaps created in the test namespace,
/// calling `addr` as `localhost`, with no caBundle and `failurePolicy: Fail`.
fn webhook_configuration(addr: SocketAddr) -> ValidatingWebhookConfiguration {
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": [{
            "name": "validate.tailguard.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://localhost:{}/validate", addr.port()), "caBundle": ""},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": TEST_NS}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}]
        }]
    }))
    .expect("webhook configuration")
}

/// A MutatingWebhookConfiguration of the same name, two webhooks, one with a stale
/// caBundle; it matches nothing (an object label nobody sets).
fn mutating_configuration() -> MutatingWebhookConfiguration {
    let webhook = |name: &str, bundle: &str| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"url": "https://localhost:1/mutate", "caBundle": bundle},
            "objectSelector": {"matchLabels": {"tailguard.io/never": "set"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
        })
    };
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": [webhook("a.tailguard.io", ""), webhook("b.tailguard.io", &certs::ca_bundle("stale"))]
    }))
    .expect("mutating configuration")
}

async fn set_webhook_url(api: &Api<ValidatingWebhookConfiguration>, addr: SocketAddr) {
    let url = format!("https://localhost:{}/validate", addr.port());
    let patch = json!({"webhooks": [{"name": "validate.tailguard.io", "clientConfig": {"url": url}}]});
    api.patch(WEBHOOK, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .expect("point the webhook at another replica");
}

async fn ca_bundle_of(api: &Api<ValidatingWebhookConfiguration>) -> String {
    let config = api.get(WEBHOOK).await.expect("webhook configuration");
    let bundle = config.webhooks.unwrap_or_default()[0].client_config.ca_bundle.clone();
    bundle
        .map(|b| certs::ca_bundle(&String::from_utf8_lossy(&b.0)))
        .unwrap_or_default()
}

/// Waits until the webhook configuration's caBundle is `bundle`; returns how long it took.
async fn wait_ca_bundle(api: &Api<ValidatingWebhookConfiguration>, bundle: &str) -> Duration {
    let started = Instant::now();
    while ca_bundle_of(api).await != bundle {
        assert!(started.elapsed() < PATIENCE, "the caBundle was not set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Creates a ConfigMap in the webhook's namespace, retrying while the apiserver
/// has not yet picked up the new caBundle; returns how long until it was admitted.
async fn create_configmap_through_webhook(client: &kube::Client, name: &str) -> Duration {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), TEST_NS);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).expect("cm");
    let started = Instant::now();
    loop {
        match api.create(&PostParams::default(), &cm).await {
            Ok(_) => return started.elapsed(),
            Err(e) => {
                assert!(
                    started.elapsed() < PATIENCE,
                    "the apiserver could not call the webhook: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// --- the Secret ---

fn certs_of(secret: &Secret) -> SecretCerts {
    let data = secret_data(secret);
    let text = |key: &str| String::from_utf8(data.get(key).cloned().unwrap_or_default()).expect("UTF-8");
    SecretCerts {
        ca: CaPem {
            cert_pem: text("ca.crt"),
            key_pem: text("ca.key"),
        },
        serving: certs::CertPem {
            cert_pem: text("tls.crt"),
            key_pem: text("tls.key"),
        },
    }
}

async fn put_serving(secrets: &Api<Secret>, serving: &certs::CertPem) {
    put_serving_named(secrets, SECRET, serving).await;
}

async fn put_serving_named(secrets: &Api<Secret>, name: &str, serving: &certs::CertPem) {
    let patch = json!({"data": {
        "tls.crt": ByteString(serving.cert_pem.clone().into_bytes()),
        "tls.key": ByteString(serving.key_pem.clone().into_bytes()),
    }});
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("replace the serving certificate in the Secret");
}

/// Polls the Secret until `done` holds for its certificates.
async fn wait_secret(secrets: &Api<Secret>, done: impl Fn(&SecretCerts) -> bool) -> SecretCerts {
    let started = Instant::now();
    loop {
        let certs = certs_of(&secrets.get(SECRET).await.expect("Secret"));
        if done(&certs) {
            return certs;
        }
        assert!(started.elapsed() < PATIENCE, "the Secret did not change as expected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A serving certificate with ten minutes left (less than a third of its validity).
fn short_for(ca: &CaPem) -> certs::CertPem {
    certs::issue_serving_cert(ca, &["localhost"], &[], Duration::from_secs(600)).expect("issue")
}

/// A store that, on the first create or replace, first writes the Secret itself
/// (another replica winning the race), then forwards ours, which then conflicts.
struct Interloper {
    inner: KubeSecret,
    wrote: std::sync::Mutex<Option<SecretCerts>>,
}

impl Interloper {
    fn new(inner: KubeSecret) -> Interloper {
        Interloper {
            inner,
            wrote: std::sync::Mutex::new(None),
        }
    }

    fn wrote(&self) -> Option<SecretCerts> {
        self.wrote.lock().expect("lock").clone()
    }

    /// The other writer: reads, plans and writes as a replica would.
    async fn interfere(&self) {
        if self.wrote().is_some() {
            return;
        }
        let names = ["localhost".to_string()];
        let current = self.inner.get().await.expect("interloper get");
        let plan = certs::plan_secret(current.as_ref().map(secret_data).as_ref(), &names, SystemTime::now());
        let ours = certs::carry_out(&plan, &names).expect("interloper certs");
        let data = ours.to_data().into_iter().map(|(k, v)| (k, ByteString(v))).collect();
        match current {
            None => {
                let secret = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(self.inner.name().to_string()),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(data),
                    ..Default::default()
                };
                self.inner.create(&secret).await.expect("interloper create");
            }
            Some(mut secret) => {
                secret.data = Some(data);
                self.inner.replace(&secret).await.expect("interloper replace");
            }
        }
        *self.wrote.lock().expect("lock") = Some(ours);
    }
}

impl SecretStore for Interloper {
    async fn get(&self) -> kube::Result<Option<Secret>> {
        self.inner.get().await
    }

    async fn create(&self, secret: &Secret) -> kube::Result<Secret> {
        self.interfere().await;
        self.inner.create(secret).await
    }

    async fn replace(&self, secret: &Secret) -> kube::Result<Secret> {
        self.interfere().await;
        self.inner.replace(secret).await
    }

    fn namespace(&self) -> &str {
        self.inner.namespace()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

// --- certificates ---

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn leaf_der(pem: &str) -> Vec<u8> {
    certs::first_cert(pem.as_bytes()).expect("certificate").to_vec()
}

fn leaf_info(pem: &str) -> CertInfo {
    CertInfo::parse(&leaf_der(pem)).expect("parse certificate")
}

/// The certificate `addr` presents to a client that trusts only `ca_pem` and
/// asks for `localhost`; an error if the handshake fails.
async fn served_cert(addr: SocketAddr, ca_pem: &str) -> Result<Vec<u8>, String> {
    let tls = tls_connect(addr, tls_client(ca_pem, &[]))
        .await
        .map_err(|e| e.to_string())?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| der.to_vec())
        .ok_or_else(|| "no certificate".to_string())
}

/// Waits until `replica` serves `cert_pem`.
async fn wait_served(replica: &Replica, ca_pem: &str, cert_pem: &str) {
    let want = leaf_der(cert_pem);
    let started = Instant::now();
    loop {
        let got = served_cert(replica.addr, ca_pem).await;
        if got.as_ref() == Ok(&want) {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "replica {} does not serve the Secret's certificate: {:?}\n{}",
            replica.name,
            got.map(|_| "another certificate"),
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- the server processes ---

/// `tailguard serve --cert-secret` as the chart runs it (one replica); killed
/// on drop. Derefs to its [`Serve`].
struct Replica {
    name: String,
    dir: PathBuf,
    serve: Serve,
}

/// A replica spawned but not yet known to listen.
struct Launching {
    name: String,
    dir: PathBuf,
    launching: process::Launching,
}

impl Replica {
    fn spawn(name: &str, kubeconfig: &Path, base: &Path, extra: &[&str]) -> Replica {
        Replica::launch(name, kubeconfig, base, NS, extra).listening()
    }

    fn launch(name: &str, kubeconfig: &Path, base: &Path, namespace: &str, extra: &[&str]) -> Launching {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = base.join(format!("{name}-{}", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).expect("replica dir");
        let mut command = Serve::command(Path::new(BIN), "info,tailguard=debug");
        command
            .args(["--cert-secret", SECRET, "--cert-namespace", namespace])
            .args(["--cert-dns", "localhost", "--ca-bundle-webhook", WEBHOOK])
            .args(extra)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--certs-dir")
            .arg(dir.join("certs"))
            .args(["--cert-check-interval", "300ms"]);
        let launching = Serve::launch(&format!("tailguard {name}"), &mut command, dir.join("serve.log"));
        Launching {
            name: name.to_string(),
            dir,
            launching,
        }
    }
}

impl Launching {
    /// Waits for the `listening` log line.
    fn listening(self) -> Replica {
        Replica {
            name: self.name,
            dir: self.dir,
            serve: self.launching.listening(),
        }
    }
}

impl Deref for Replica {
    type Target = Serve;

    fn deref(&self) -> &Serve {
        &self.serve
    }
}

impl Replica {
    /// Waits for `/readyz` 200; returns the time from spawn.
    fn wait_ready(&mut self) -> Duration {
        self.serve.wait_ready()
    }

    fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    fn log(&self) -> String {
        self.serve.log_text()
    }

    /// How many log lines have this message.
    fn count(&self, message: &str) -> usize {
        self.serve.logs(message).len()
    }

    /// Log lines with `decision` = `decision`, other than the one-time "in place" line.
    fn decisions(&self, decision: &str) -> Vec<Value> {
        self.serve
            .log_fields()
            .into_iter()
            .filter(|f| f["decision"] == decision && f["message"] != "self-managed certificates in place")
            .collect()
    }

    /// Waits until a line with this message has been logged.
    fn wait_log(&self, message: &str) {
        let started = Instant::now();
        while self.count(message) == 0 {
            assert!(
                started.elapsed() < PATIENCE,
                "replica {} never logged {message:?}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first "self-managed certificates in place" line (the first sync).
    fn in_place(&self) -> Value {
        self.serve
            .logs("self-managed certificates in place")
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// The `decision` of the "self-managed certificates in place" line.
    fn in_place_decision(&self) -> String {
        self.in_place()["decision"].as_str().unwrap_or_default().to_string()
    }

    /// `elapsed_ms` of the "self-managed certificates in place" line.
    fn in_place_ms(&self) -> u64 {
        self.in_place()["elapsed_ms"].as_u64().unwrap_or_default()
    }

    fn metric(&self, series: &str) -> f64 {
        self.serve.metric(series).unwrap_or(0.0)
    }
}
