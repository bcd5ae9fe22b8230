//! Tailscale egress sidecar injection: a pure function from a pod (or pod
//! template), its namespace's facts and the config to a decision and a JSON
//! Patch. The mutating webhook and `tailguard inject` both call [`decide`].

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, EnvVar, HostPathVolumeSource, Volume};
use serde_json::value::RawValue;

use crate::config::{Config, InjectionConfig};
use crate::rules::NamespaceFacts;
use crate::rules::pod_security::{PsaLevel, enforced_level};
use crate::workload::{Workload, WorkloadKind};

pub mod manifests;
pub mod patch;
pub mod settings;
mod sidecar;

pub use sidecar::{ROUTES_NAME, proxy_env, sidecar};
use sidecar::{cluster_cidrs, routes_container};

use patch::{JsonPatch, PatchBuilder, to_raw};
use settings::{Mode, Settings};

/// Namespace label (`enabled`) and pod label (`true`/`false`) that opt in or out.
pub const INJECT_LABEL: &str = "tailguard.io/inject";
/// Records the injected sidecar's spec hash; its presence makes injection a no-op.
pub const INJECTED_ANNOTATION: &str = "tailguard.io/injected";
pub const SIDECAR_NAME: &str = "tailscale";
const TUN_VOLUME: &str = "tailguard-tun";
/// An emptyDir for the LocalAPI socket at the path the `tailscale` CLI uses
/// by default, so `kubectl exec -c tailscale -- tailscale status` works with
/// no flags. A non-root containerboot cannot create /var/run/tailscale in
/// the image ("failed to symlink socket: ... permission denied").
const RUN_VOLUME: &str = "tailguard-run";
const SOCKET_DIR: &str = "/var/run/tailscale";

/// How opt-in is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    /// Admission: the namespace label or the pod label decides.
    Webhook,
    /// `tailguard inject`: asked for explicitly, so only a pod label `false` opts out.
    Offline,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Neither the namespace nor the pod asked for injection.
    NotOptedIn,
    /// Asked for, but not injected, and why (shown as a warning).
    Skip(String),
    /// Already carries tailguard's sidecar: nothing to do.
    AlreadyInjected,
    Inject {
        patch: JsonPatch,
        /// What was injected (shown as a warning).
        summary: String,
    },
    /// The pod must not be created as it is.
    Deny(String),
}

/// Where the pod template lives in an object of `kind`, as JSON Pointer tokens.
pub fn template_prefix(kind: WorkloadKind) -> &'static [&'static str] {
    match kind {
        WorkloadKind::Pod => &[],
        WorkloadKind::CronJob => &["spec", "jobTemplate", "spec", "template"],
        _ => &["spec", "template"],
    }
}

pub fn decide(workload: &Workload, namespace: &NamespaceFacts, config: &Config, opt_in: OptIn) -> Decision {
    let meta = workload.pod_meta();
    let ns = workload.namespace().unwrap_or("default");
    let name = workload.meta.display_name();
    let inj = &config.injection;

    let pod_choice = match meta.labels.get(INJECT_LABEL).map(String::as_str) {
        Some("false") => return Decision::Skip(format!("label {INJECT_LABEL}=false opts this pod out")),
        Some("true") => true,
        Some(other) => {
            return Decision::Deny(format!(
                "label {INJECT_LABEL}=\"{other}\" on pod {name}: must be \"true\" or \"false\""
            ));
        }
        None => false,
    };
    if inj.excluded_namespaces.iter().any(|x| x == ns) {
        return Decision::Skip(format!("namespace {ns} is never injected"));
    }
    if opt_in == OptIn::Webhook {
        match namespace {
            NamespaceFacts::Unknown => {
                return Decision::Deny(format!(
                    "tailguard cannot read namespace {ns} yet (no cluster access, its cache has not synced, or its namespace watch broke and it is listing again), so it cannot tell whether or how to inject the Tailscale sidecar; it refuses rather than guess. Retry shortly"
                ));
            }
            // The apiserver only sends pods of opted-in namespaces (or labelled
            // pods), so a namespace the cache has not seen yet was just created:
            // refuse rather than admit the pod without its sidecar.
            NamespaceFacts::Missing => {
                return Decision::Deny(format!(
                    "namespace {ns} is not in tailguard's namespace cache yet (just created?), so its egress settings are unknown; retry in a moment"
                ));
            }
            _ if pod_choice => {}
            facts if facts.label(INJECT_LABEL) == Some("enabled") => {}
            _ => return Decision::NotOptedIn,
        }
    }
    if meta.annotations.contains_key(INJECTED_ANNOTATION) {
        return Decision::AlreadyInjected;
    }
    let pod = &workload.pod;
    if pod.host_network == Some(true) {
        return Decision::Skip(
            "hostNetwork pods share the node's network; a sidecar would change the node's egress".into(),
        );
    }
    let has_tailscale = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .any(|c| c.image.as_deref().is_some_and(|i| config.is_tailscale_image(i)));
    if has_tailscale {
        return Decision::Skip("the pod already runs a Tailscale container".into());
    }
    let settings = match settings::resolve(config, namespace, ns, &meta.annotations, &name) {
        Ok(s) => s,
        Err(e) => return Decision::Deny(e.to_string()),
    };
    if settings.mode == Mode::Tun
        && let Some(level @ (PsaLevel::Baseline | PsaLevel::Restricted)) = enforced_level(namespace)
    {
        return Decision::Deny(format!(
            "tailguard.io/mode=tun needs NET_ADMIN and the host's /dev/net/tun, but namespace {ns} enforces the `{}` Pod Security level, which forbids both: the pod would be refused. Use tailguard.io/mode=userspace (HTTP/SOCKS5 proxies, no privileges)",
            level.as_str()
        ));
    }
    // Kernel mode with an exit node: tailscaled's policy routing sends all
    // but the pod's own subnet to the exit node (--exit-node-allow-lan-access
    // keeps only directly connected subnets), cluster DNS and Services
    // included. The routes init container keeps the cluster's CIDRs local.
    if let (Mode::Tun, Some(exit)) = (settings.mode, settings.exit_node)
        && cluster_cidrs(&inj.no_proxy).is_empty()
    {
        return Decision::Deny(format!(
            "tailguard.io/mode=tun with exit node {exit}: in kernel mode tailscaled routes everything except the pod's own subnet to the exit node (--exit-node-allow-lan-access keeps only directly connected subnets local), so cluster DNS and Services would be sent to the exit node and time out. tailguard keeps the cluster's CIDRs local with ip rules, but injection.noProxy in its config lists none: add the cluster's pod and service CIDRs there (e.g. 10.244.0.0/16, 10.96.0.0/12), or use tailguard.io/mode=userspace"
        ));
    }
    // The same settings under the same config render the same containers:
    // rendered once, then shared by every pod that asks for them.
    let entry = config.memo.get(
        |(s, i): &(Settings, InjectionConfig)| *s == settings && i == inj,
        || {
            let rendered = Rendered::new(&settings, config);
            ((settings.clone(), inj.clone()), rendered)
        },
    );
    let r = &entry.1;

    let mut p = PatchBuilder::new(template_prefix(workload.kind));
    p.set_key(
        &["metadata", "annotations"],
        !meta.annotations.is_empty(),
        INJECTED_ANNOTATION,
        &r.hash_json,
    );
    for (i, c) in pod.containers.iter().enumerate() {
        let existing = c.env.as_deref().unwrap_or_default();
        let missing: Vec<&RawValue> = r
            .app_env
            .iter()
            // A variable the app already sets (in either case) stays the app's.
            .filter(|(name, _)| !existing.iter().any(|e| e.name.eq_ignore_ascii_case(name)))
            .map(|(_, v)| &**v)
            .collect();
        if !missing.is_empty() {
            let index = i.to_string();
            p.append(&["spec", "containers", &index, "env"], !existing.is_empty(), &missing);
        }
    }
    let mut has_init = pod.init_containers.as_ref().is_some_and(|v| !v.is_empty());
    if inj.native_sidecar {
        p.prepend(&["spec", "initContainers"], has_init, &r.sidecar);
        has_init = true;
    } else {
        p.append(&["spec", "containers"], true, &[&r.sidecar]);
    }
    if let Some(routes) = &r.routes {
        // First of all: the rules must exist before tailscaled routes anything.
        p.prepend(&["spec", "initContainers"], has_init, routes);
    }
    let has_volumes = pod.volumes.as_ref().is_some_and(|v| !v.is_empty());
    let volumes: Vec<&RawValue> = r.volumes.iter().map(|v| &**v).collect();
    p.append(&["spec", "volumes"], has_volumes, &volumes);
    let mut summary = format!(
        "injected Tailscale egress sidecar `{SIDECAR_NAME}` ({} mode, auth Secret {}/{}",
        settings.mode.as_str(),
        settings.auth_secret,
        settings.auth_secret_key
    );
    if let Some(exit) = settings.exit_node {
        let _ = write!(summary, ", exit node {exit}");
    }
    summary.push(')');
    Decision::Inject {
        patch: p.build(),
        summary,
    }
}

/// What injection renders from the settings and the config alone, as JSON
/// text ready to be copied into patches.
struct Rendered {
    sidecar: Box<RawValue>,
    /// The proxy variables for the app containers: (name, EnvVar as JSON).
    app_env: Vec<(String, Box<RawValue>)>,
    /// The hash recorded in [`INJECTED_ANNOTATION`], as a JSON string.
    hash_json: Box<RawValue>,
    /// The `tailguard-routes` init container (tun mode with an exit node).
    routes: Option<Box<RawValue>>,
    volumes: Vec<Box<RawValue>>,
}

impl Rendered {
    fn new(settings: &Settings, config: &Config) -> Rendered {
        let sidecar = sidecar(settings, config);
        let app_env = proxy_env(settings, config);
        let hash = spec_hash(&sidecar, &app_env);
        let routes = match (settings.mode, settings.exit_node) {
            (Mode::Tun, Some(_)) => {
                let cidrs = cluster_cidrs(&config.injection.no_proxy);
                (!cidrs.is_empty()).then(|| to_raw(&routes_container(settings, config, &cidrs)))
            }
            _ => None,
        };
        let mut volumes = vec![Volume {
            name: RUN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }];
        if settings.mode == Mode::Tun {
            volumes.push(Volume {
                name: TUN_VOLUME.into(),
                host_path: Some(HostPathVolumeSource {
                    path: "/dev/net/tun".into(),
                    type_: Some("CharDevice".into()),
                }),
                ..Default::default()
            });
        }
        Rendered {
            sidecar: to_raw(&sidecar),
            app_env: app_env.iter().map(|v| (v.name.clone(), to_raw(v))).collect(),
            hash_json: to_raw(&hash),
            routes,
            volumes: volumes.iter().map(to_raw).collect(),
        }
    }
}

/// A stable short hash of what was injected (FNV-1a, 64 bits).
fn spec_hash(sidecar: &Container, app_env: &[EnvVar]) -> String {
    let text = serde_json::to_string(&(sidecar, app_env)).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injected(config: &Config) -> JsonPatch {
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "apps", "labels": {"tailguard.io/inject": "true"}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
        let workload = Workload::from_value(&pod).expect("pod").expect("a workload");
        match decide(&workload, &NamespaceFacts::Unknown, config, OptIn::Offline) {
            Decision::Inject { patch, .. } => patch,
            other => panic!("not injected: {other:?}"),
        }
    }

    #[test]
    fn rendered_sidecars_are_reused_and_follow_config_changes() {
        let mut config = Config::default();
        let first = injected(&config);
        assert_eq!(injected(&config), first);
        assert_eq!(config.memo.len(), 1, "the same settings render once");
        // The config changed in place after use: the memo must not answer for it.
        config.injection.http_proxy_port = 3128;
        let changed = injected(&config);
        assert_ne!(changed, first);
        assert!(String::from_utf8_lossy(changed.as_bytes()).contains("127.0.0.1:3128"));
    }
}
