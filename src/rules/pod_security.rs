//! `pod-security-level`: Pod Security Admission checks pods, not the workloads
//! that create them, so a DaemonSet whose pods need more than its namespace's
//! `enforce` level is accepted and then every pod is refused. This module
//! models the baseline and restricted checks that Tailscale pods can trip.

use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};

use super::{Context, Findings, NamespaceFacts, RuleId};

pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Pod Security Standards levels, least to most strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PsaLevel {
    Privileged,
    Baseline,
    Restricted,
}

impl PsaLevel {
    pub fn parse(s: &str) -> Option<PsaLevel> {
        match s {
            "privileged" => Some(PsaLevel::Privileged),
            "baseline" => Some(PsaLevel::Baseline),
            "restricted" => Some(PsaLevel::Restricted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PsaLevel::Privileged => "privileged",
            PsaLevel::Baseline => "baseline",
            PsaLevel::Restricted => "restricted",
        }
    }
}

/// The level a namespace enforces: `None` when unknown. A namespace without the
/// label gets the cluster default, `privileged` unless configured otherwise.
pub fn enforced_level(ns: &NamespaceFacts) -> Option<PsaLevel> {
    match ns {
        NamespaceFacts::Unknown => None,
        NamespaceFacts::Missing => Some(PsaLevel::Privileged),
        NamespaceFacts::Known(_) => Some(
            ns.label(ENFORCE_LABEL)
                .and_then(PsaLevel::parse)
                .unwrap_or(PsaLevel::Privileged),
        ),
    }
}

/// One field that a level forbids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub what: String,
    /// The least strict level that already forbids it.
    pub forbidden_from: PsaLevel,
}

/// Capabilities baseline allows containers to add.
const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const RESTRICTED_VOLUMES: &str =
    "configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected, secret";

/// Every Pod Security violation of `pod` (whose path is `base`).
pub fn violations(pod: &PodSpec, base: &str) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut add = |path: String, what: String, level: PsaLevel| {
        v.push(Violation {
            path,
            what,
            forbidden_from: level,
        })
    };
    for (field, on) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        if on == Some(true) {
            add(format!("{base}.{field}"), format!("{field}: true"), PsaLevel::Baseline);
        }
    }
    let pod_sc = pod.security_context.as_ref();
    for (i, sysctl) in pod_sc
        .and_then(|s| s.sysctls.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
            add(
                format!("{base}.securityContext.sysctls[{i}]"),
                format!("the unsafe sysctl {}", sysctl.name),
                PsaLevel::Baseline,
            );
        }
    }
    let pod_seccomp = pod_sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    if pod_seccomp == Some("Unconfined") {
        add(
            format!("{base}.securityContext.seccompProfile.type"),
            "seccompProfile Unconfined".into(),
            PsaLevel::Baseline,
        );
    }
    let pod_non_root = pod_sc.and_then(|s| s.run_as_non_root);
    if pod_sc.and_then(|s| s.run_as_user) == Some(0) {
        add(
            format!("{base}.securityContext.runAsUser"),
            "runAsUser: 0".into(),
            PsaLevel::Restricted,
        );
    }
    for (i, volume) in pod.volumes.as_deref().unwrap_or_default().iter().enumerate() {
        if volume.host_path.is_some() {
            add(
                format!("{base}.volumes[{i}].hostPath"),
                format!("the hostPath volume `{}`", volume.name),
                PsaLevel::Baseline,
            );
        } else {
            let allowed = volume.config_map.is_some()
                || volume.csi.is_some()
                || volume.downward_api.is_some()
                || volume.empty_dir.is_some()
                || volume.ephemeral.is_some()
                || volume.persistent_volume_claim.is_some()
                || volume.projected.is_some()
                || volume.secret.is_some();
            if !allowed {
                add(
                    format!("{base}.volumes[{i}]"),
                    format!(
                        "the volume `{}` (restricted allows only {RESTRICTED_VOLUMES})",
                        volume.name
                    ),
                    PsaLevel::Restricted,
                );
            }
        }
    }
    let lists = [
        ("initContainers", pod.init_containers.as_deref().unwrap_or_default()),
        ("containers", pod.containers.as_slice()),
    ];
    for (field, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            container_violations(c, &format!("{base}.{field}[{i}]"), pod_seccomp, pod_non_root, &mut add);
        }
    }
    v
}

fn container_violations(
    c: &Container,
    path: &str,
    pod_seccomp: Option<&str>,
    pod_non_root: Option<bool>,
    add: &mut impl FnMut(String, String, PsaLevel),
) {
    let name = &c.name;
    let sc: Option<&SecurityContext> = c.security_context.as_ref();
    if sc.and_then(|s| s.privileged) == Some(true) {
        add(
            format!("{path}.securityContext.privileged"),
            format!("privileged: true in `{name}`"),
            PsaLevel::Baseline,
        );
    }
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    for (j, cap) in caps
        .and_then(|c| c.add.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let bare = cap.strip_prefix("CAP_").unwrap_or(cap);
        let cap_path = format!("{path}.securityContext.capabilities.add[{j}]");
        if !BASELINE_CAPS.contains(&bare) {
            add(
                cap_path,
                format!("the capability {bare} in `{name}`"),
                PsaLevel::Baseline,
            );
        } else if bare != "NET_BIND_SERVICE" {
            add(
                cap_path,
                format!("the capability {bare} in `{name}` (restricted allows only NET_BIND_SERVICE)"),
                PsaLevel::Restricted,
            );
        }
    }
    for (j, port) in c.ports.as_deref().unwrap_or_default().iter().enumerate() {
        if port.host_port.is_some_and(|p| p != 0) {
            add(
                format!("{path}.ports[{j}].hostPort"),
                format!("hostPort in `{name}`"),
                PsaLevel::Baseline,
            );
        }
    }
    if sc.and_then(|s| s.proc_mount.as_deref()).is_some_and(|m| m != "Default") {
        add(
            format!("{path}.securityContext.procMount"),
            format!("a non-default procMount in `{name}`"),
            PsaLevel::Baseline,
        );
    }
    let seccomp = sc.and_then(|s| s.seccomp_profile.as_ref()).map(|p| p.type_.as_str());
    if seccomp == Some("Unconfined") {
        add(
            format!("{path}.securityContext.seccompProfile.type"),
            format!("seccompProfile Unconfined in `{name}`"),
            PsaLevel::Baseline,
        );
    } else if !matches!(seccomp.or(pod_seccomp), Some("RuntimeDefault" | "Localhost")) {
        add(
            format!("{path}.securityContext.seccompProfile"),
            format!("no RuntimeDefault/Localhost seccompProfile for `{name}`"),
            PsaLevel::Restricted,
        );
    }
    if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
        add(
            format!("{path}.securityContext.allowPrivilegeEscalation"),
            format!("allowPrivilegeEscalation not false in `{name}`"),
            PsaLevel::Restricted,
        );
    }
    if sc.and_then(|s| s.run_as_non_root).or(pod_non_root) != Some(true) {
        add(
            format!("{path}.securityContext.runAsNonRoot"),
            format!("runAsNonRoot not true for `{name}`"),
            PsaLevel::Restricted,
        );
    }
    if sc.and_then(|s| s.run_as_user) == Some(0) {
        add(
            format!("{path}.securityContext.runAsUser"),
            format!("runAsUser: 0 in `{name}`"),
            PsaLevel::Restricted,
        );
    }
    let drops_all = caps
        .and_then(|c| c.drop.as_deref())
        .is_some_and(|d| d.iter().any(|x| x == "ALL"));
    if !drops_all {
        add(
            format!("{path}.securityContext.capabilities.drop"),
            format!("capabilities not dropping ALL in `{name}`"),
            PsaLevel::Restricted,
        );
    }
}

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    if !out.enabled(RuleId::PodSecurityLevel) {
        return;
    }
    let Some(level) = enforced_level(cx.namespace) else {
        return;
    };
    if level == PsaLevel::Privileged {
        return;
    }
    let ns = cx.workload.namespace().unwrap_or("default");
    let kind = cx.workload.kind;
    let consequence = if kind == crate::workload::WorkloadKind::Pod {
        "the Pod is refused".to_owned()
    } else {
        format!("the {kind} is accepted but every pod it creates is refused")
    };
    for v in violations(&cx.workload.pod, kind.pod_spec_path()) {
        if v.forbidden_from > level {
            continue;
        }
        out.report(
            RuleId::PodSecurityLevel,
            v.path,
            format!(
                "namespace `{ns}` enforces the `{}` Pod Security level, which forbids {}: {consequence}",
                level.as_str(),
                v.what
            ),
            if v.forbidden_from == PsaLevel::Baseline {
                format!(
                    "Tailscale in kernel mode needs the `privileged` level: label the namespace {ENFORCE_LABEL}=privileged, or run Tailscale in userspace mode (TS_USERSPACE=true, no privileges, no hostPath)"
                )
            } else {
                "meet the restricted profile (runAsNonRoot, drop ALL capabilities, allowPrivilegeEscalation: false, seccompProfile RuntimeDefault), or relax the namespace to `baseline`".to_owned()
            },
        );
    }
}
