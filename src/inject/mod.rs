//! Tailscale egress sidecar injection: a pure function from a pod (or pod
//! template), its namespace's facts and the config to a decision and a JSON
//! Patch. The mutating webhook and `tailguard inject` both call [`decide`].

use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    HostPathVolumeSource, ObjectFieldSelector, Probe, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::config::Config;
use crate::rules::NamespaceFacts;
use crate::rules::pod_security::{PsaLevel, enforced_level};
use crate::tailscale::DEFAULT_HEALTH_PORT;
use crate::workload::{Workload, WorkloadKind};

pub mod manifests;
pub mod patch;
pub mod settings;

use patch::PatchBuilder;
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
        patch: json_patch::Patch,
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
                    "tailguard cannot read namespace {ns} yet (no cluster access, or its cache has not synced), so it cannot tell whether or how to inject the Tailscale sidecar; it refuses rather than guess. Retry shortly"
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
    let routes = match (settings.mode, settings.exit_node) {
        (Mode::Tun, Some(exit)) => {
            let cidrs = cluster_cidrs(&inj.no_proxy);
            if cidrs.is_empty() {
                return Decision::Deny(format!(
                    "tailguard.io/mode=tun with exit node {exit}: in kernel mode tailscaled routes everything except the pod's own subnet to the exit node (--exit-node-allow-lan-access keeps only directly connected subnets local), so cluster DNS and Services would be sent to the exit node and time out. tailguard keeps the cluster's CIDRs local with ip rules, but injection.noProxy in its config lists none: add the cluster's pod and service CIDRs there (e.g. 10.244.0.0/16, 10.96.0.0/12), or use tailguard.io/mode=userspace"
                ));
            }
            Some(routes_container(&settings, config, &cidrs))
        }
        _ => None,
    };
    let sidecar = sidecar(&settings, config);
    let app_env = proxy_env(&settings, config);
    let hash = spec_hash(&sidecar, &app_env);
    let sidecar = serde_json::to_value(&sidecar).unwrap_or(Value::Null);

    let mut p = PatchBuilder::new(template_prefix(workload.kind));
    p.set_key(
        &["metadata", "annotations"],
        !meta.annotations.is_empty(),
        INJECTED_ANNOTATION,
        Value::String(hash),
    );
    for (i, c) in pod.containers.iter().enumerate() {
        let existing = c.env.as_deref().unwrap_or_default();
        let missing: Vec<Value> = app_env
            .iter()
            // A variable the app already sets (in either case) stays the app's.
            .filter(|v| !existing.iter().any(|e| e.name.eq_ignore_ascii_case(&v.name)))
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect();
        if !missing.is_empty() {
            let index = i.to_string();
            p.append(&["spec", "containers", &index, "env"], !existing.is_empty(), missing);
        }
    }
    let mut has_init = pod.init_containers.as_ref().is_some_and(|v| !v.is_empty());
    if inj.native_sidecar {
        p.prepend(&["spec", "initContainers"], has_init, sidecar);
        has_init = true;
    } else {
        p.append(&["spec", "containers"], true, vec![sidecar]);
    }
    if let Some(routes) = routes {
        // First of all: the rules must exist before tailscaled routes anything.
        let routes = serde_json::to_value(routes).unwrap_or(Value::Null);
        p.prepend(&["spec", "initContainers"], has_init, routes);
    }
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
    let has_volumes = pod.volumes.as_ref().is_some_and(|v| !v.is_empty());
    p.append(
        &["spec", "volumes"],
        has_volumes,
        volumes
            .iter()
            .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
            .collect(),
    );
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

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }
}

/// The sidecar container. Every pod it is injected into must pass tailguard's
/// own rules (tests/inject.rs checks this over every case).
pub fn sidecar(s: &Settings, config: &Config) -> Container {
    let inj = &config.injection;
    let mut vars = vec![
        // POD_NAME first: TS_HOSTNAME below expands it, and Kubernetes only
        // expands variables defined earlier in the list.
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_UID", "metadata.uid"),
        EnvVar {
            name: "TS_AUTHKEY".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: s.auth_secret.clone(),
                    key: s.auth_secret_key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        },
        // State in memory: no Secret shared between pods, a fresh node per pod.
        env("TS_KUBE_SECRET", ""),
        env("TS_HOSTNAME", "$(POD_NAME)"),
        env("TS_USERSPACE", if s.mode == Mode::Userspace { "true" } else { "false" }),
        env("TS_SOCKET", format!("{SOCKET_DIR}/tailscaled.sock")),
        env("TS_ENABLE_HEALTH_CHECK", "true"),
        env("TS_LOCAL_ADDR_PORT", format!("[::]:{DEFAULT_HEALTH_PORT}")),
    ];
    if s.mode == Mode::Userspace {
        // 127.0.0.1, not localhost: Go listens on one address of a name
        // (127.0.0.1 here), and the apps are told this exact address.
        vars.push(env(
            "TS_OUTBOUND_HTTP_PROXY_LISTEN",
            format!("{PROXY_HOST}:{}", inj.http_proxy_port),
        ));
        vars.push(env("TS_SOCKS5_SERVER", format!("{PROXY_HOST}:{}", inj.socks5_port)));
    }
    let mut args = Vec::new();
    if let Some(exit) = s.exit_node {
        args.push(format!("--exit-node={exit}"));
        if s.mode == Mode::Tun {
            // Keep LAN and cluster traffic off the exit node.
            args.push("--exit-node-allow-lan-access".into());
        }
    }
    if !s.tags.is_empty() {
        args.push(format!("--advertise-tags={}", s.tags.join(",")));
    }
    if s.accept_routes {
        args.push("--accept-routes".into());
    }
    if !args.is_empty() {
        vars.push(env("TS_EXTRA_ARGS", args.join(" ")));
    }
    // /healthz passes once the node has tailnet IPs. With an exit node that
    // is not enough: an exit node IP that is not in the tailnet (or not
    // approved) leaves the proxies dialling the internet directly, so the
    // probes require the exit node to be selected and offering exit routes,
    // and the app does not start until it is.
    let check = match s.exit_node {
        None => Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(i32::from(DEFAULT_HEALTH_PORT)),
                ..Default::default()
            }),
            ..Default::default()
        },
        Some(exit) => Probe {
            exec: Some(ExecAction {
                command: Some(vec!["/bin/sh".into(), "-c".into(), exit_node_check(exit)]),
            }),
            timeout_seconds: Some(5),
            ..Default::default()
        },
    };
    let healthz = |period: i32, failures: i32| Probe {
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..check.clone()
    };
    let mut resources = inj.resources.clone();
    for (section, resource, quantity) in &s.resources {
        let map = if *section == "limits" {
            &mut resources.limits
        } else {
            &mut resources.requests
        };
        map.get_or_insert_with(Default::default)
            .insert((*resource).to_owned(), Quantity(quantity.clone()));
    }
    let security_context = match s.mode {
        Mode::Userspace => SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(inj.run_as_user),
            run_as_group: Some(inj.run_as_user),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        },
        Mode::Tun => SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: None,
            }),
            ..Default::default()
        },
    };
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(s.image.clone()),
        env: Some(vars),
        resources: Some(resources),
        security_context: Some(security_context),
        startup_probe: Some(healthz(2, 60)),
        readiness_probe: Some(healthz(10, 3)),
        restart_policy: inj.native_sidecar.then(|| "Always".to_owned()),
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: RUN_VOLUME.into(),
                mount_path: SOCKET_DIR.into(),
                ..Default::default()
            })
            .chain((s.mode == Mode::Tun).then(|| VolumeMount {
                name: TUN_VOLUME.into(),
                mount_path: "/dev/net/tun".into(),
                ..Default::default()
            }))
            .collect(),
        ),
        ..Default::default()
    }
}

/// The init container that keeps the cluster's CIDRs off the exit node in
/// kernel mode. tailscaled's own rules sit at priority 5210-5270 (table 52);
/// these come first and send cluster destinations to the main table.
pub const ROUTES_NAME: &str = "tailguard-routes";
const ROUTES_PRIORITY: u16 = 2500;

fn routes_container(s: &Settings, config: &Config, cidrs: &[(IpAddr, u8)]) -> Container {
    // Idempotent: a re-run of the init container in the same sandbox
    // first removes what an earlier run added.
    let mut script = format!(
        "set -e; while ip rule del pref {ROUTES_PRIORITY} 2>/dev/null; do :; done; while ip -6 rule del pref {ROUTES_PRIORITY} 2>/dev/null; do :; done"
    );
    for (ip, bits) in cidrs {
        let family = if ip.is_ipv6() { "-6 " } else { "" };
        let _ = write!(
            script,
            "; ip {family}rule add to {ip}/{bits} lookup main pref {ROUTES_PRIORITY}"
        );
    }
    Container {
        name: ROUTES_NAME.into(),
        image: Some(s.image.clone()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
        resources: Some(config.injection.resources.clone()),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The address ranges among injection.noProxy entries (an address alone is
/// a /32 or /128), re-formatted from their parsed values.
fn cluster_cidrs(no_proxy: &[String]) -> Vec<(IpAddr, u8)> {
    no_proxy
        .iter()
        .filter_map(|entry| {
            let (ip, bits) = entry.trim().split_once('/').unwrap_or((entry.trim(), ""));
            let ip: IpAddr = ip.parse().ok()?;
            let max = if ip.is_ipv6() { 128 } else { 32 };
            let bits = if bits.is_empty() { max } else { bits.parse().ok()? };
            (bits <= max).then_some((ip, bits))
        })
        .collect()
}

/// Where the userspace sidecar's proxies listen, and where apps are sent.
const PROXY_HOST: &str = "127.0.0.1";

/// The exit-node probe: `tailscale exit-node list` shows only peers that
/// offer exit routes, and marks the one in use "selected" (or "selected but
/// offline ...") in its last column: matched there, so a peer whose host name
/// contains "selected" cannot pass it.
fn exit_node_check(exit: IpAddr) -> String {
    format!(
        "tailscale exit-node list 2>&1 | grep -qE '[[:space:]]selected( but offline.*)?[[:space:]]*$' || {{ echo 'exit node {exit} is not in use (tailscale exit-node list shows none selected): make sure {exit} is a node of this tailnet and approved as an exit node'; exit 1; }}"
    )
}

/// Proxy variables for the app containers (userspace mode): egress through
/// the sidecar's proxies, cluster traffic direct.
pub fn proxy_env(s: &Settings, config: &Config) -> Vec<EnvVar> {
    if s.mode != Mode::Userspace {
        return Vec::new();
    }
    let inj = &config.injection;
    let http = format!("http://{PROXY_HOST}:{}", inj.http_proxy_port);
    let socks = format!("socks5://{PROXY_HOST}:{}", inj.socks5_port);
    let domain = inj.cluster_domain.trim_matches('.');
    let mut no_proxy = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        ".svc".to_owned(),
        format!(".svc.{domain}"),
        format!(".{domain}"),
        "kubernetes.default".to_owned(),
        // Always defined by the kubelet, so Kubernetes expands it.
        "$(KUBERNETES_SERVICE_HOST)".to_owned(),
    ];
    no_proxy.extend(inj.no_proxy.iter().cloned());
    let no_proxy = no_proxy.join(",");
    let mut vars = Vec::new();
    for (upper, value) in [
        ("HTTP_PROXY", &http),
        ("HTTPS_PROXY", &http),
        ("ALL_PROXY", &socks),
        ("NO_PROXY", &no_proxy),
    ] {
        vars.push(env(upper, value.clone()));
        // Many tools read only the lowercase names.
        vars.push(env(&upper.to_ascii_lowercase(), value.clone()));
    }
    vars
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
