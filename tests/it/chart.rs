//! The Helm chart (`charts/tailguard`) as helm renders it: lint, the Kubernetes schemas of the
//! supported versions, the webhook configurations and RBAC of every certificate mode, the values
//! schema, and the policy file as the server reads it. Runs the real `helm` (HELM_BIN) and
//! `kubernetes-validate` (KUBERNETES_VALIDATE_BIN); see tests/it/tools.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use tailguard::config::Config;
use tailguard::manifest::parse_stream;
use tailguard::rules::RuleId;

use crate::support::{self, TempDir};
use crate::tools;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/tailguard");
const RELEASE: &str = "tg";
const NAMESPACE: &str = "tailguard-system";
/// The release's full name (release name + chart name): Service, webhook configurations, RBAC.
const FULLNAME: &str = "tg-tailguard";
/// Kubernetes versions the rendered chart must be valid for.
const KUBE_VERSIONS: &[&str] = &["1.33.0", "1.34.0"];
/// Any base64 will do where the test does not need a real CA.
const CA_BUNDLE: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==";
const URL_SECRET_SETS: &[&str] = &[
    "webhook.url=https://10.1.2.3:8443/",
    "certificates.mode=secret",
    "certificates.caBundle=LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
];
const SECRET_SETS: &[&str] = &[
    "certificates.mode=secret",
    "certificates.secretName=tailguard-tls",
    "certificates.caBundle=LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
];

/// Every way the chart is meant to be installed: (label, --set values).
const MODES: &[(&str, &[&str])] = &[
    ("self", &[]),
    ("cert-manager", &["certificates.mode=cert-manager"]),
    (
        "cert-manager-issuer",
        &[
            "certificates.mode=cert-manager",
            "certificates.certManager.issuerRef.name=cluster-ca",
            "certificates.certManager.issuerRef.kind=ClusterIssuer",
        ],
    ),
    ("secret", SECRET_SETS),
    ("url", &["webhook.url=https://10.1.2.3:8443"]),
    ("url-secret", URL_SECRET_SETS),
    ("vap-fallback", &["vapFallback.enabled=true"]),
];

// --- running helm ---

struct Helm {
    bin: PathBuf,
    /// HELM_{CACHE,CONFIG,DATA}_HOME: keeps the user's helm settings out of the test.
    home: TempDir,
}

impl Helm {
    fn new() -> Helm {
        Helm {
            bin: tools::tool("HELM_BIN"),
            home: TempDir::new("helm-home"),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let home = &self.home;
        Command::new(&self.bin)
            .args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null())
            .output()
            .expect("run helm")
    }

    /// `helm template` with the given `--set` values (and extra arguments); the output or the error.
    fn try_template(&self, sets: &[&str], extra: &[&str]) -> Result<String, String> {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
        for set in sets {
            args.extend(["--set", set]);
        }
        args.extend(extra);
        let out = self.run(&args);
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).expect("helm output is UTF-8"))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn template(&self, sets: &[&str]) -> String {
        self.try_template(sets, &[])
            .unwrap_or_else(|e| panic!("helm template --set {sets:?} failed:\n{e}"))
    }

    fn objects(&self, sets: &[&str]) -> Rendered {
        Rendered::parse(&self.template(sets))
    }
}

// --- the rendered objects ---

struct Rendered(Vec<Value>);

impl Rendered {
    fn parse(text: &str) -> Rendered {
        let (docs, errors) = parse_stream("helm template", text);
        assert!(errors.is_empty(), "rendered chart does not parse: {errors:?}");
        Rendered(docs.into_iter().map(|d| d.object).collect())
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn has(&self, kind: &str) -> bool {
        !self.all(kind).is_empty()
    }

    /// The one object of `kind` (named `name`, when given).
    fn one(&self, kind: &str, name: Option<&str>) -> &Value {
        let found: Vec<_> = self
            .all(kind)
            .into_iter()
            .filter(|o| name.is_none_or(|n| o["metadata"]["name"] == n))
            .collect();
        assert_eq!(found.len(), 1, "expected one {kind} {name:?}, found {}", found.len());
        found[0]
    }

    fn webhooks(&self, kind: &str) -> Vec<&Value> {
        let config = self.one(kind, Some(FULLNAME));
        config["webhooks"].as_array().expect("webhooks").iter().collect()
    }

    fn container(&self) -> &Value {
        &self.one("Deployment", Some(FULLNAME))["spec"]["template"]["spec"]["containers"][0]
    }

    fn args(&self) -> Vec<String> {
        strings(&self.container()["args"])
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("not a string: {s}")).to_owned())
        .collect()
}

/// The `kubernetes.io/metadata.name NotIn` values of a webhook's namespaceSelector.
fn excluded_namespaces(webhook: &Value) -> BTreeSet<String> {
    let exprs = webhook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .expect("namespaceSelector.matchExpressions");
    let by_name: Vec<_> = exprs
        .iter()
        .filter(|e| e["key"] == "kubernetes.io/metadata.name")
        .collect();
    assert_eq!(by_name.len(), 1, "{webhook}");
    assert_eq!(by_name[0]["operator"], "NotIn", "{webhook}");
    strings(&by_name[0]["values"]).into_iter().collect()
}

/// The matchExpression on `key` in `selector` (namespaceSelector or objectSelector), if any.
fn expression<'a>(selector: &'a Value, key: &str) -> Option<&'a Value> {
    selector["matchExpressions"]
        .as_array()?
        .iter()
        .find(|e| e["key"] == key)
}

/// What every webhook of every mode must have.
fn assert_common_webhook_fields(webhook: &Value, timeout: u64) {
    assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]), "{webhook}");
    assert_eq!(webhook["sideEffects"], "None", "{webhook}");
    assert_eq!(webhook["timeoutSeconds"], timeout, "{webhook}");
    let excluded = excluded_namespaces(webhook);
    assert!(
        excluded.contains(NAMESPACE) && excluded.contains("kube-system"),
        "{webhook}"
    );
}

const VALIDATE: &str = "ValidatingWebhookConfiguration";
const MUTATE: &str = "MutatingWebhookConfiguration";

// --- tests ---

#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn lint_strict_passes_for_every_mode() {
    let helm = Helm::new();
    for (label, sets) in MODES {
        let mut args = vec!["lint", "--strict", CHART, "--namespace", NAMESPACE];
        for set in *sets {
            args.extend(["--set", set]);
        }
        let out = helm.run(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "helm lint --strict ({label}) failed:\n{text}");
        assert!(text.contains("0 chart(s) failed"), "{label}: {text}");
    }
}

#[test]
#[cfg_attr(
    not(all(has_helm, has_kubernetes_validate)),
    ignore = "needs helm and kubernetes-validate (HELM_BIN, KUBERNETES_VALIDATE_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn every_mode_is_valid_for_supported_kubernetes_versions() {
    let (helm, validate) = (Helm::new(), tools::tool("KUBERNETES_VALIDATE_BIN"));
    let dir = TempDir::new("validate");
    let mut files = Vec::new();
    for (label, sets) in MODES {
        let path = dir.join(format!("{label}.yaml"));
        std::fs::write(&path, helm.template(sets)).expect("write rendered chart");
        files.push(path);
    }
    for version in KUBE_VERSIONS {
        let out = Command::new(&validate)
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .stdin(Stdio::null())
            .output()
            .expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubernetes-validate -k {version} failed:\n{text}");
        // Only cert-manager's own kinds (CRDs) may go unchecked.
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.starts_with("WARN") && line.contains("cert-manager.io/v1"),
                "kubernetes-validate -k {version}: {line}"
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn self_mode_webhooks_rbac_and_server_flags() {
    let helm = Helm::new();
    let r = helm.objects(&[]);

    // Validating: pods, workloads, cronjobs; CREATE and UPDATE; only objects with a Tailscale image.
    let validating = r.webhooks(VALIDATE);
    let mut resources = BTreeSet::new();
    for w in &validating {
        assert_common_webhook_fields(w, 5);
        assert_eq!(w["failurePolicy"], "Fail", "{w}");
        let service = &w["clientConfig"]["service"];
        assert_eq!(service["name"], FULLNAME);
        assert_eq!(service["namespace"], NAMESPACE);
        assert_eq!(service["path"], "/validate");
        assert_eq!(service["port"], 443);
        assert!(
            w["clientConfig"].get("caBundle").is_none(),
            "self mode: the server patches it"
        );
        assert!(w["clientConfig"].get("url").is_none());
        for rule in w["rules"].as_array().expect("rules") {
            assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]));
            assert_eq!(rule["apiVersions"], json!(["v1"]));
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    resources.insert(format!("{group}/{resource}"));
                }
            }
        }
        let conditions = w["matchConditions"].as_array().expect("matchConditions");
        assert_eq!(conditions.len(), 1, "{w}");
        let cel = conditions[0]["expression"].as_str().expect("expression");
        assert!(cel.contains("\"tailscale\""), "{cel}");
        let spec = if w["rules"][0]["resources"] == json!(["pods"]) {
            "object.spec"
        } else if w["rules"][0]["resources"] == json!(["cronjobs"]) {
            "object.spec.jobTemplate.spec.template.spec"
        } else {
            "object.spec.template.spec"
        };
        for list in ["containers", "initContainers"] {
            let field = format!("{spec}.{list}");
            assert!(cel.contains(&format!("has({field}) && {field}.exists(")), "{cel}");
        }
        // Every step down to the pod spec is guarded, so a missing field never errors.
        let mut path = String::from("object");
        for step in spec.split('.').skip(1) {
            path = format!("{path}.{step}");
            assert!(cel.contains(&format!("has({path})")), "{path} unguarded in {cel}");
        }
    }
    let expected: BTreeSet<String> = [
        "/pods",
        "apps/deployments",
        "apps/statefulsets",
        "apps/daemonsets",
        "apps/replicasets",
        "batch/jobs",
        "batch/cronjobs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert!(expected.is_subset(&resources), "validated: {resources:?}");

    // Mutating: pods CREATE only, opted-in namespaces and opted-in pods.
    let mutating = r.webhooks(MUTATE);
    assert_eq!(mutating.len(), 2);
    for w in &mutating {
        assert_common_webhook_fields(w, 5);
        assert_eq!(w["failurePolicy"], "Fail", "{w}");
        assert_eq!(w["reinvocationPolicy"], "IfNeeded", "{w}");
        assert_eq!(w["clientConfig"]["service"]["path"], "/mutate");
        assert_eq!(
            w["rules"],
            json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}])
        );
    }
    let label = "tailguard.io/inject";
    let by_namespace = mutating
        .iter()
        .find(|w| expression(&w["namespaceSelector"], label).is_some_and(|e| e["operator"] == "In"))
        .expect("a webhook for namespaces labelled tailguard.io/inject=enabled");
    assert_eq!(
        expression(&by_namespace["namespaceSelector"], label).expect("label")["values"],
        json!(["enabled"])
    );
    let opt_out = expression(&by_namespace["objectSelector"], label).expect("pod opt-out");
    assert_eq!(opt_out["operator"], "NotIn");
    assert_eq!(opt_out["values"], json!(["false"]));
    let by_pod = mutating
        .iter()
        .find(|w| expression(&w["objectSelector"], label).is_some_and(|e| e["operator"] == "In"))
        .expect("a webhook for pods labelled tailguard.io/inject=true");
    assert_eq!(
        expression(&by_pod["objectSelector"], label).expect("label")["values"],
        json!(["true"])
    );
    let elsewhere = expression(&by_pod["namespaceSelector"], label).expect("other namespaces only");
    assert_eq!(elsewhere["operator"], "NotIn");
    assert_eq!(elsewhere["values"], json!(["enabled"]));

    // The server keeps its certificate in a Secret and patches both configurations by name.
    let args = r.args();
    assert_eq!(args[0], "serve");
    for arg in [
        "--cluster".to_owned(),
        "--config=/etc/tailguard/config/config.yaml".to_owned(),
        format!("--cert-secret={FULLNAME}-certs"),
        format!("--cert-dns={FULLNAME}"),
        format!("--cert-dns={FULLNAME}.{NAMESPACE}"),
        format!("--cert-dns={FULLNAME}.{NAMESPACE}.svc"),
        format!("--cert-dns={FULLNAME}.{NAMESPACE}.svc.cluster.local"),
        format!("--ca-bundle-webhook={FULLNAME}"),
    ] {
        assert!(args.contains(&arg), "{arg} missing from {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--tls-")), "{args:?}");
    let env = &r.container()["env"];
    assert!(
        env.as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "POD_NAMESPACE" && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "{env}"
    );

    // RBAC: namespaces read-only; the two webhook configurations and the Secret by name.
    let cluster_role = r.one("ClusterRole", Some(FULLNAME));
    assert_eq!(
        cluster_role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["admissionregistration.k8s.io"],
             "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
             "resourceNames": [FULLNAME], "verbs": ["get", "patch", "list", "watch"]},
        ])
    );
    let role = r.one("Role", Some(FULLNAME));
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [format!("{FULLNAME}-certs")],
             "verbs": ["get", "update", "patch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        ])
    );
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = r.one(binding, Some(FULLNAME));
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}])
        );
    }
    assert!(!r.has("Certificate") && !r.has("Issuer"));
}

#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn deployment_is_highly_available_and_locked_down() {
    let helm = Helm::new();
    let r = helm.objects(&[]);
    let deployment = r.one("Deployment", Some(FULLNAME));
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], FULLNAME);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert!(pod["affinity"]["podAntiAffinity"].is_object(), "{pod}");
    let spread = pod["topologySpreadConstraints"]
        .as_array()
        .expect("topologySpreadConstraints");
    assert!(spread.iter().any(|c| c["topologyKey"] == "kubernetes.io/hostname"));
    let shutdown = r
        .args()
        .iter()
        .find_map(|a| a.strip_prefix("--shutdown-delay=").map(str::to_owned))
        .expect("--shutdown-delay");
    assert_eq!(shutdown, "5s");
    assert!(pod["terminationGracePeriodSeconds"].as_u64().expect("grace period") > 5 + 15);

    let c = r.container();
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "health"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "health"})
    );
    let ports = c["ports"].as_array().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "health" && p["containerPort"] == 8080)
    );
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "webhook" && p["containerPort"] == 8443)
    );
    assert_eq!(
        c["image"],
        format!("tailguard:{}", env!("CARGO_PKG_VERSION")),
        "image tag defaults to the chart's appVersion, which follows Cargo.toml"
    );

    let service = r.one("Service", Some(FULLNAME));
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}])
    );
    let pdb = r.one("PodDisruptionBudget", Some(FULLNAME));
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // A policy change rolls the pods.
    let checksum = |r: &Rendered| {
        r.one("Deployment", None)["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone()
    };
    let changed = helm.objects(&["config.rules.resources=deny"]);
    assert!(checksum(&r).is_string());
    assert_ne!(checksum(&r), checksum(&changed));

    // One replica: a PodDisruptionBudget of minAvailable 1 would block every drain.
    assert!(!helm.objects(&["replicaCount=1"]).has("PodDisruptionBudget"));
}

#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn cert_manager_mode_issues_the_serving_certificate_and_injects_the_ca() {
    let helm = Helm::new();
    let r = helm.objects(&["certificates.mode=cert-manager"]);
    let serving = format!("{FULLNAME}-serving");
    for kind in [VALIDATE, MUTATE] {
        let config = r.one(kind, Some(FULLNAME));
        assert_eq!(
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            format!("{NAMESPACE}/{serving}"),
            "{kind}"
        );
        for w in r.webhooks(kind) {
            assert!(w["clientConfig"].get("caBundle").is_none(), "the CA injector sets it");
        }
    }
    // selfSigned Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    let self_signed = r.one("Issuer", Some(&format!("{FULLNAME}-selfsigned")));
    assert!(self_signed["spec"]["selfSigned"].is_object());
    let ca = r.one("Certificate", Some(&format!("{FULLNAME}-ca")));
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(ca["spec"]["issuerRef"]["name"], format!("{FULLNAME}-selfsigned"));
    let ca_issuer = r.one("Issuer", Some(&format!("{FULLNAME}-ca")));
    assert_eq!(ca_issuer["spec"]["ca"]["secretName"], ca["spec"]["secretName"]);
    let cert = r.one("Certificate", Some(&serving));
    assert_eq!(cert["spec"]["issuerRef"]["name"], format!("{FULLNAME}-ca"));
    assert_eq!(
        cert["spec"]["dnsNames"],
        json!([
            FULLNAME,
            format!("{FULLNAME}.{NAMESPACE}"),
            format!("{FULLNAME}.{NAMESPACE}.svc"),
            format!("{FULLNAME}.{NAMESPACE}.svc.cluster.local"),
        ])
    );
    // The Deployment serves the Secret cert-manager writes, and reloads it on renewal.
    let pod = &r.one("Deployment", None)["spec"]["template"]["spec"];
    let tls = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "tls")
        .expect("tls volume");
    assert_eq!(tls["secret"]["secretName"], cert["spec"]["secretName"]);
    let args = r.args();
    assert!(
        args.contains(&"--tls-cert=/etc/tailguard/tls/tls.crt".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--tls-key=/etc/tailguard/tls/tls.key".to_owned()),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.starts_with("--cert-secret")), "{args:?}");
    // No Secret or webhook-configuration write access outside self mode.
    assert!(!r.has("Role"));
    assert_eq!(r.one("ClusterRole", None)["rules"].as_array().map(Vec::len), Some(1));

    // With an existing issuer, only the serving Certificate is rendered.
    let r = helm.objects(&[
        "certificates.mode=cert-manager",
        "certificates.certManager.issuerRef.name=cluster-ca",
        "certificates.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    assert!(!r.has("Issuer"));
    let cert = r.one("Certificate", None);
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": "cluster-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
}

#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn secret_mode_sets_the_ca_bundle_and_mounts_the_secret() {
    let helm = Helm::new();
    let r = helm.objects(SECRET_SETS);
    for kind in [VALIDATE, MUTATE] {
        assert!(r.one(kind, None)["metadata"].get("annotations").is_none(), "{kind}");
        for w in r.webhooks(kind) {
            assert_eq!(w["clientConfig"]["caBundle"], CA_BUNDLE, "{w}");
            assert_eq!(w["clientConfig"]["service"]["name"], FULLNAME, "{w}");
        }
    }
    let pod = &r.one("Deployment", None)["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["secret"]["secretName"] == "tailguard-tls"),
        "{pod}"
    );
    assert!(r.args().contains(&"--tls-cert=/etc/tailguard/tls/tls.crt".to_owned()));
    assert!(!r.has("Role") && !r.has("Certificate"));
}

/// The documented workflow: `tailguard certs` writes ca-bundle.txt, `--set-file` passes it.
#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn secret_mode_takes_the_ca_bundle_from_tailguard_certs() {
    let helm = Helm::new();
    let dir = TempDir::new("certs");
    let out_dir = dir.join("certs");
    let dns = format!("{FULLNAME}.{NAMESPACE}.svc");
    let out = support::run_cli(&["certs", "--out", support::path_str(&out_dir), "--dns", &dns], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bundle_file = out_dir.join("ca-bundle.txt");
    let bundle = std::fs::read_to_string(&bundle_file).expect("ca-bundle.txt");
    let set_file = format!("certificates.caBundle={}", bundle_file.display());
    let text = helm
        .try_template(
            &["certificates.mode=secret", "certificates.secretName=tailguard-tls"],
            &["--set-file", &set_file],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let r = Rendered::parse(&text);
    for kind in [VALIDATE, MUTATE] {
        for w in r.webhooks(kind) {
            assert_eq!(w["clientConfig"]["caBundle"], bundle.trim(), "{w}");
        }
    }
}

#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn webhook_url_replaces_the_service() {
    let helm = Helm::new();
    for (url, sets) in [
        ("https://10.1.2.3:8443", &["webhook.url=https://10.1.2.3:8443"][..]),
        ("https://10.1.2.3:8443", URL_SECRET_SETS),
    ] {
        let r = helm.objects(sets);
        for (kind, path) in [(VALIDATE, "/validate"), (MUTATE, "/mutate")] {
            for w in r.webhooks(kind) {
                assert_common_webhook_fields(w, 5);
                assert_eq!(w["clientConfig"]["url"], format!("{url}{path}"), "{w}");
                assert!(w["clientConfig"].get("service").is_none(), "{w}");
            }
        }
        // The server runs elsewhere: nothing to schedule in the cluster.
        for kind in ["Service", "Deployment", "PodDisruptionBudget"] {
            assert!(!r.has(kind), "{kind} rendered although webhook.url is set");
        }
    }
    let r = helm.objects(URL_SECRET_SETS);
    assert_eq!(r.webhooks(VALIDATE)[0]["clientConfig"]["caBundle"], CA_BUNDLE);
}

#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn values_reach_the_webhook_configurations() {
    let helm = Helm::new();
    let r = helm.objects(&[
        "webhook.timeoutSeconds=12",
        "webhook.validating.failurePolicy=Ignore",
        "webhook.mutating.failurePolicy=Ignore",
        "webhook.mutating.reinvocationPolicy=Never",
        "webhook.excludeNamespaces={monitoring,flux-system}",
        "config.images={tailscale/tailscale,mirror.example.com/ts*}",
    ]);
    for kind in [VALIDATE, MUTATE] {
        for w in r.webhooks(kind) {
            assert_common_webhook_fields(w, 12);
            assert_eq!(w["failurePolicy"], "Ignore", "{w}");
            let excluded = excluded_namespaces(w);
            assert!(
                excluded.contains("monitoring") && excluded.contains("flux-system"),
                "{w}"
            );
            if kind == MUTATE {
                assert_eq!(w["reinvocationPolicy"], "Never", "{w}");
            }
        }
    }
    // A configured image without "tailscale" in its name is still sent to the webhook.
    for w in r.webhooks(VALIDATE) {
        let cel = w["matchConditions"][0]["expression"].as_str().expect("expression");
        assert!(cel.contains(r#"["tailscale","mirror.example.com/ts"]"#), "{cel}");
    }

    // Either configuration can be turned off; the server is told only about what exists.
    let r = helm.objects(&["webhook.validating.enabled=false"]);
    assert!(!r.has(VALIDATE) && r.has(MUTATE));
    let r = helm.objects(&["webhook.validating.enabled=false", "webhook.mutating.enabled=false"]);
    assert!(!r.has(VALIDATE) && !r.has(MUTATE));
    assert!(!r.args().iter().any(|a| a.starts_with("--ca-bundle-webhook")));
}

#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn schema_rejects_bad_values() {
    let helm = Helm::new();
    let cases: &[(&[&str], &str)] = &[
        (&["certificates.mode=bogus"], "/certificates/mode"),
        (
            &["webhook.validating.failurePolicy=Sometimes"],
            "/webhook/validating/failurePolicy",
        ),
        (
            &["webhook.mutating.failurePolicy=Sometimes"],
            "/webhook/mutating/failurePolicy",
        ),
        (
            &["webhook.mutating.reinvocationPolicy=Always"],
            "/webhook/mutating/reinvocationPolicy",
        ),
        (&["webhook.timeoutSeconds=60"], "/webhook/timeoutSeconds"),
        (&["webhook.timeoutSeconds=0"], "/webhook/timeoutSeconds"),
        (
            &["certificates.mode=secret", "certificates.caBundle=Zm9v"],
            "/certificates/secretName",
        ),
        (
            &["certificates.mode=secret", "certificates.secretName=tls"],
            "/certificates/caBundle",
        ),
        (
            &[
                "certificates.mode=secret",
                "certificates.secretName=tls",
                "certificates.caBundle=-----BEGIN CERTIFICATE-----",
            ],
            "/certificates/caBundle",
        ),
        (
            &["certificates.mode=cert-manager", "webhook.url=https://10.1.2.3:8443"],
            "/webhook/url",
        ),
        (&["webhook.url=http://10.1.2.3:8443"], "/webhook/url"),
        (&["replicaCount=0"], "/replicaCount"),
        (&["vapFallback.enabled=yes"], "/vapFallback/enabled"),
        (&["unknownKey=1"], "unknownKey"),
        (&["webhook.failurePolicy=Fail"], "failurePolicy"),
        (&["config.rules.no-such-rule=deny"], "no-such-rule"),
        (&["config.rules.resources=sometimes"], "/config/rules/resources"),
        (&["config.injection.mode=kernel"], "/config/injection/mode"),
        (&["config.injection.bogus=1"], "bogus"),
    ];
    for (sets, needle) in cases {
        match helm.try_template(sets, &[]) {
            Ok(_) => panic!("helm template accepted --set {sets:?}"),
            Err(e) => {
                assert!(
                    e.contains("values don't meet the specifications of the schema"),
                    "{sets:?}: {e}"
                );
                assert!(e.contains(needle), "{sets:?}: expected {needle:?} in\n{e}");
            }
        }
    }
}

/// The schema's rule names are the server's: a new rule must be added to values.schema.json.
#[test]
fn schema_knows_every_rule() {
    let text = std::fs::read_to_string(format!("{CHART}/values.schema.json")).expect("values.schema.json");
    let schema: Value = serde_json::from_str(&text).expect("values.schema.json is JSON");
    let rules = &schema["properties"]["config"]["properties"]["rules"]["propertyNames"]["enum"];
    let in_schema: BTreeSet<String> = strings(rules).into_iter().collect();
    let in_server: BTreeSet<String> = RuleId::ALL.iter().map(|r| r.name().to_owned()).collect();
    assert_eq!(in_schema, in_server);
    let exemption_rules =
        &schema["properties"]["config"]["properties"]["exemptions"]["items"]["properties"]["rules"]["items"]["enum"];
    assert_eq!(exemption_rules, rules);
}

#[test]
fn chart_version_follows_the_crate() {
    let text = std::fs::read_to_string(format!("{CHART}/Chart.yaml")).expect("Chart.yaml");
    let chart: Value = tailguard::manifest::parse_document(&text).expect("Chart.yaml is YAML");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "bump Chart.yaml's appVersion"
    );
}

/// The rendered policy file is one the server accepts, and never injects into the release namespace.
#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn policy_config_is_accepted_by_the_server() {
    let helm = Helm::new();
    let config_of = |r: &Rendered| -> String {
        r.one("ConfigMap", Some(FULLNAME))["data"]["config.yaml"]
            .as_str()
            .expect("config.yaml")
            .to_owned()
    };
    let default = config_of(&helm.objects(&[]));
    let config = Config::from_yaml(&default).unwrap_or_else(|e| panic!("{e}\n{default}"));
    assert_eq!(config.injection.excluded_namespaces, ["kube-system", NAMESPACE]);

    let dir = TempDir::new("values");
    let values = dir.join("values.yaml");
    std::fs::write(
        &values,
        r#"
config:
  images: [tailscale/tailscale, ghcr.io/tailscale/tailscale, "registry.example.com/mirror/tailscale*"]
  rules:
    resources: deny
    image-tag: off          # YAML 1.1 reads this as false; the chart writes "off"
  exemptions:
    - namespace: sandbox
      rules: [resources, image-tag]
    - namespace: "legacy-*"
  injection:
    image: tailscale/tailscale:v1.96.4
    allowedImages: [tailscale/tailscale]
    authSecret: ts-auth
    authSecretKey: key
    mode: userspace
    exitNode: 100.64.0.1
    tags: ["tag:egress"]
    acceptRoutes: true
    nativeSidecar: true
    httpProxyPort: 1055
    socks5Port: 1080
    noProxy: [10.0.0.0/8]
    clusterDomain: cluster.local
    excludedNamespaces: [monitoring]
    resources: {limits: {memory: 64Mi}}
    runAsUser: 1000
"#,
    )
    .expect("write values");
    let values = values.to_str().expect("UTF-8 path");
    let text = helm
        .try_template(&[], &["-f", values])
        .unwrap_or_else(|e| panic!("{e}"));
    let full = config_of(&Rendered::parse(&text));
    let config = Config::from_yaml(&full).unwrap_or_else(|e| panic!("{e}\n{full}"));
    assert_eq!(config.injection.excluded_namespaces, ["monitoring", NAMESPACE]);
    assert_eq!(config.level(RuleId::ImageTag), tailguard::rules::Level::Off, "{full}");
    assert_eq!(config.level(RuleId::Resources), tailguard::rules::Level::Deny);
    assert!(config.is_tailscale_image("registry.example.com/mirror/tailscale-fork:1.0"));
    assert!(config.exempt("legacy-app", RuleId::Privileged));
}

/// The rendered chart piped into `tailguard check -` (it holds no Tailscale workload).
#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn rendered_chart_passes_tailguard_check() {
    let helm = Helm::new();
    for (label, sets) in MODES {
        let out = check_stdin(&helm.template(sets));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{label}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// NOTES.txt's smoke test: the DaemonSet it tells users to dry-run is one tailguard refuses.
#[test]
fn notes_smoke_test_daemonset_is_denied() {
    let notes = std::fs::read_to_string(format!("{CHART}/templates/NOTES.txt")).expect("NOTES.txt");
    let start = notes.find("<<'EOF'\n").expect("heredoc in NOTES.txt") + "<<'EOF'\n".len();
    let len = notes[start..].find("     EOF\n").expect("end of heredoc");
    let manifest: String = notes[start..start + len]
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("     ").unwrap_or(l)))
        .collect();
    assert!(
        !manifest.contains("{{"),
        "the DaemonSet must be plain YAML:\n{manifest}"
    );
    let out = check_stdin(&manifest);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deny unexpanded-variable"), "{stdout}");
    assert!(stdout.contains("deny shared-state-secret"), "{stdout}");
    assert!(
        notes.contains("workloads.validate.tailguard.io"),
        "NOTES names the webhook that refuses it"
    );
}

fn check_stdin(input: &str) -> Output {
    support::run_cli(&["check", "-"], Some(input))
}

/// The chart's fallback policy file is exactly `tailguard policy export`.
#[test]
fn fallback_policy_matches_policy_export() {
    let file = std::fs::read_to_string(format!("{CHART}/files/fallback-policy.yaml")).expect("fallback-policy.yaml");
    let exported = tailguard::policy::fallback_policy_yaml("tailguard-fallback").expect("export");
    assert_eq!(
        file, exported,
        "charts/tailguard/files/fallback-policy.yaml is stale: regenerate it with `tailguard policy export -o charts/tailguard/files/fallback-policy.yaml`"
    );
}

/// The chart renders the fallback policy only when asked, named per release.
#[test]
#[cfg_attr(
    not(has_helm),
    ignore = "needs helm (HELM_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn fallback_policy_renders_on_request_named_per_release() {
    let helm = Helm::new();
    let off = helm.objects(&[]);
    assert!(!off.has("ValidatingAdmissionPolicy"), "the fallback is opt-in");
    let on = helm.objects(&["vapFallback.enabled=true"]);
    let name = format!("{FULLNAME}-fallback");
    let policy = on.one("ValidatingAdmissionPolicy", Some(&name));
    let binding = on.one("ValidatingAdmissionPolicyBinding", Some(&name));
    assert_eq!(binding["spec"]["policyName"], name.as_str());
    let mut expected = tailguard::policy::fallback_policy("tailguard-fallback");
    expected[0]["metadata"]["name"] = Value::String(name.clone());
    assert_eq!(policy["spec"], expected[0]["spec"]);
}
