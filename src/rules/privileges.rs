//! What kernel-mode Tailscale needs from the node and the runtime:
//! `privileged` (NET_ADMIN), `tun-device`, `host-network`, `ip-forwarding`, and
//! `userspace-default` (privileges given, but containerboot's default mode).

use k8s_openapi::api::core::v1::PodSpec;

use super::{Context, Findings, RuleId};
use crate::config::ContainerRuntime;
use crate::mode::Mode;
use crate::security::{Has, Privileges};
use crate::tailscale::{ModeSetting, Setting, TailscaleContainer};
use crate::workload::WorkloadKind;

const TUN: &str = "/dev/net/tun";

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    let pod = &cx.workload.pod;
    let pod_path = cx.workload.kind.pod_spec_path();
    let daemonset = cx.workload.kind == WorkloadKind::DaemonSet;
    for tc in &cx.containers {
        let tun = tun_mount(tc, pod);
        let privileges = Privileges::of(tc.container, pod, cx.config.runtime);
        match tc.mode() {
            ModeSetting::Set(Mode::Tun) => {
                net_admin(tc, &privileges, out);
                tun_device(tc, &privileges, &tun, cx.config.runtime, out);
                if daemonset && pod.host_network != Some(true) {
                    out.report(
                        RuleId::HostNetwork,
                        format!("{pod_path}.hostNetwork"),
                        format!(
                            "container `{}` runs Tailscale in kernel mode in a DaemonSet without hostNetwork: it configures the pod's own network namespace, so the node's own traffic does not reach the tailnet (the pod's does)",
                            tc.name()
                        ),
                        "set spec.template.spec.hostNetwork: true (and dnsPolicy: ClusterFirstWithHostNet) if the node should join the tailnet; leave it if only this pod should",
                    );
                }
                ip_forwarding(cx, tc, &privileges, out);
            }
            ModeSetting::Default => {
                let asks_for_kernel =
                    privileges.privileged || tc.adds_capability("NET_ADMIN") || matches!(tun, Tun::Mounted);
                if asks_for_kernel {
                    let (path, why) = match tc.env.get("TS_USERSPACE") {
                        Some((i, _)) => (
                            tc.env_path(i),
                            "TS_USERSPACE is set to a value containerboot does not read as a boolean, so the default (true) applies",
                        ),
                        None => (format!("{}.env", tc.path), "TS_USERSPACE is unset and defaults to true"),
                    };
                    out.report(
                        RuleId::UserspaceDefault,
                        path,
                        format!(
                            "container `{}` is given kernel-mode privileges (privileged, NET_ADMIN or /dev/net/tun) but {why}: Tailscale runs in userspace mode and creates no tailscale0 interface (it still works; the privileges are unused)",
                            tc.name()
                        ),
                        "set TS_USERSPACE=\"false\" if you meant kernel mode, or drop the privileges if userspace mode is what you want",
                    );
                }
            }
            ModeSetting::Set(Mode::Userspace) | ModeSetting::Unknown => {}
        }
    }
}

/// Kernel mode creates and configures tailscale0: CAP_NET_ADMIN is required.
fn net_admin(tc: &TailscaleContainer<'_>, privileges: &Privileges<'_>, out: &mut Findings<'_>) {
    if privileges.has("NET_ADMIN") != Has::No {
        return;
    }
    let (path, why, printed, hint) = if privileges.root() {
        (
            format!("{}.securityContext.capabilities.add", tc.path),
            "without NET_ADMIN".to_owned(),
            "operation not permitted",
            "add securityContext.capabilities.add: [NET_ADMIN] (or privileged: true), or use userspace mode (TS_USERSPACE=true)",
        )
    } else {
        (
            format!("{}.securityContext.runAsUser", tc.path),
            format!(
                "as user {} (Kubernetes gives a non-root process no capabilities, whatever capabilities.add says)",
                privileges.run_as_user.unwrap_or_default()
            ),
            "permission denied",
            "run this container as root (runAsUser: 0) with NET_ADMIN, or use userspace mode (TS_USERSPACE=true), which needs no privileges",
        )
    };
    out.report(
        RuleId::Privileged,
        path,
        format!(
            r#"container `{}` runs Tailscale in kernel mode (TS_USERSPACE=false) {why}: tailscaled cannot create the tailscale0 interface (`tstun.New("tailscale0"): {printed}`) and containerboot never starts"#,
            tc.name()
        ),
        hint,
    );
}

/// Kernel mode opens /dev/net/tun; containerboot creates it (mknod 10:200)
/// when it is missing, which needs CAP_MKNOD.
fn tun_device(
    tc: &TailscaleContainer<'_>,
    privileges: &Privileges<'_>,
    tun: &Tun,
    runtime: ContainerRuntime,
    out: &mut Findings<'_>,
) {
    match tun {
        Tun::Mounted => {}
        Tun::WrongType(path, ty) => out.report(
            RuleId::TunDevice,
            path.clone(),
            format!("the /dev/net/tun hostPath volume has type `{ty}`, but /dev/net/tun is a character device, so the kubelet refuses to start the pod"),
            "set the hostPath type to CharDevice (or leave it unset)",
        ),
        // A privileged container sees the host's devices.
        Tun::Missing if privileges.privileged => {}
        Tun::Missing => {
            let message = |why: &str, printed: &str| {
                format!(
                    "container `{}` runs Tailscale in kernel mode with no /dev/net/tun, and {why}: containerboot exits with \"unable to create tuntap device file: {printed}\"",
                    tc.name()
                )
            };
            let hint = "mount the host's device (a hostPath volume {path: /dev/net/tun, type: CharDevice} at /dev/net/tun), or add MKNOD to securityContext.capabilities.add";
            let path = format!("{}.volumeMounts", tc.path);
            match privileges.has("MKNOD") {
                Has::Yes => {}
                Has::No if !privileges.root() => {
                    out.report(RuleId::TunDevice, path, message("it runs as a non-root user, who cannot create it", "mkdir /dev/net: permission denied"), hint)
                }
                Has::No => out.report(
                    RuleId::TunDevice,
                    path,
                    message(
                        &format!(
                            "it may not create it (no CAP_MKNOD{})",
                            match runtime {
                                ContainerRuntime::CriO => ": CRI-O does not grant it by default",
                                _ => "",
                            }
                        ),
                        "operation not permitted",
                    ),
                    hint,
                ),
                Has::DependsOnRuntime => out.report_uncertain(
                    RuleId::TunDevice,
                    path,
                    format!(
                        "container `{}` runs Tailscale in kernel mode with no /dev/net/tun: containerboot creates it itself (mknod 10:200), which works where the runtime grants CAP_MKNOD and allows the device (containerd's defaults) and fails with \"unable to create tuntap device file: operation not permitted\" where it does not (CRI-O's defaults)",
                        tc.name()
                    ),
                    format!("{hint}; or tell tailguard the cluster's runtime (`runtime:` in the policy config)"),
                ),
            }
        }
    }
}

/// Settings that make containerboot turn IP forwarding on at start (it exits
/// when it cannot), and an exit node, which forwards nothing without it.
fn ip_forwarding(cx: &Context<'_>, tc: &TailscaleContainer<'_>, privileges: &Privileges<'_>, out: &mut Findings<'_>) {
    if privileges.privileged || forwarding_set_up(&cx.workload.pod) {
        return;
    }
    let needs = [
        "TS_ROUTES",
        "TS_DEST_IP",
        "TS_EXPERIMENTAL_DEST_DNS_NAME",
        "TS_TAILNET_TARGET_IP",
        "TS_TAILNET_TARGET_FQDN",
    ]
    .into_iter()
    .find_map(|name| match tc.env.setting(name) {
        Setting::Known(i, v) if !v.is_empty() => Some((tc.env_path(i), name)),
        _ => None,
    });
    let exit_node = tc.up_args().filter(|up| up.bool("advertise-exit-node"));
    let (path, what, consequence) = match (needs, exit_node) {
        (Some((path, name)), _) => (
            path,
            name.to_owned(),
            "containerboot exits with \"you can either set the sysctls as a privileged initContainer, or run the tailscale container with privileged=true.\"",
        ),
        (None, Some(up)) => (
            up.path.clone(),
            "--advertise-exit-node".to_owned(),
            "the exit node forwards no traffic",
        ),
        (None, None) => return,
    };
    let place = if cx.workload.pod.host_network == Some(true) {
        "the node's"
    } else {
        "the pod's (a new network namespace copies the node's IPv4 setting and starts with IPv6 forwarding off)"
    };
    out.report(
        RuleId::IpForwarding,
        path,
        format!(
            "{what} needs IP forwarding, and container `{}` cannot turn it on (it is not privileged, so /proc/sys is read-only): it works only if {place} forwarding is already on; where it is off, {consequence}",
            tc.name()
        ),
        "set net.ipv4.ip_forward=1 (and net.ipv6.conf.all.forwarding=1) in a privileged init container, or make this container privileged",
    );
}

/// A privileged init container that sets sysctls, or pod-level sysctls that
/// turn forwarding on.
fn forwarding_set_up(pod: &PodSpec) -> bool {
    let sysctls = pod
        .security_context
        .as_ref()
        .and_then(|s| s.sysctls.as_deref())
        .unwrap_or_default();
    let by_sysctls = sysctls
        .iter()
        .any(|s| s.name.contains("forwarding") || s.name.ends_with("ip_forward"));
    let by_init = pod.init_containers.iter().flatten().any(|c| {
        c.security_context.as_ref().and_then(|s| s.privileged) == Some(true)
            && c.command
                .iter()
                .flatten()
                .chain(c.args.iter().flatten())
                .any(|a| a.contains("ip_forward") || a.contains("forwarding"))
    });
    by_sysctls || by_init
}

enum Tun {
    Mounted,
    Missing,
    WrongType(String, String),
}

/// Whether the container gets the host's /dev/net/tun through a hostPath mount.
fn tun_mount(tc: &TailscaleContainer<'_>, pod: &PodSpec) -> Tun {
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = tc.container.volume_mounts.as_deref().unwrap_or_default();
    for mount in mounts {
        let Some((vi, volume)) = volumes.iter().enumerate().find(|(_, v)| v.name == mount.name) else {
            continue;
        };
        let Some(host) = &volume.host_path else {
            continue;
        };
        let covers = |host_dir: &str| {
            host.path.trim_end_matches('/') == host_dir
                && mount.mount_path.trim_end_matches('/') == host_dir
                && mount.sub_path.as_deref().is_none_or(str::is_empty)
        };
        if !(covers(TUN) || covers("/dev/net") || covers("/dev")) {
            continue;
        }
        return match host.type_.as_deref() {
            Some(ty) if covers(TUN) && !matches!(ty, "" | "CharDevice") => Tun::WrongType(
                format!("{}.volumes[{vi}].hostPath.type", tc_pod_path(tc)),
                ty.to_owned(),
            ),
            _ => Tun::Mounted,
        };
    }
    Tun::Missing
}

/// The pod spec path a container path starts with.
fn tc_pod_path<'a>(tc: &'a TailscaleContainer<'_>) -> &'a str {
    tc.path
        .rsplit_once(".containers[")
        .or_else(|| tc.path.rsplit_once(".initContainers["))
        .map_or(tc.path.as_str(), |(base, _)| base)
}
