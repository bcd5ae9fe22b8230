//! The containers tailguard injects: the Tailscale sidecar, the
//! `tailguard-routes` init container (tun mode with an exit node), and the
//! proxy variables the app containers get.

use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, ObjectFieldSelector, Probe,
    SeccompProfile, SecretKeySelector, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::settings::{Mode, Settings};
use super::{RUN_VOLUME, SIDECAR_NAME, SOCKET_DIR, TUN_VOLUME};
use crate::config::Config;
use crate::tailscale::DEFAULT_HEALTH_PORT;

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
/// own rules (tests/it/inject.rs checks this over every case).
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

pub(super) fn routes_container(s: &Settings, config: &Config, cidrs: &[(IpAddr, u8)]) -> Container {
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
pub(super) fn cluster_cidrs(no_proxy: &[String]) -> Vec<(IpAddr, u8)> {
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
