//! What kernel-mode Tailscale needs from the node: `privileged`, `host-network`,
//! `tun-device`, and `userspace-default` (asked for kernel mode, got userspace).

use k8s_openapi::api::core::v1::PodSpec;

use super::{Context, Findings, RuleId};
use crate::tailscale::{Mode, TailscaleContainer};
use crate::workload::WorkloadKind;

const TUN: &str = "/dev/net/tun";

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    let pod = &cx.workload.pod;
    let pod_path = cx.workload.kind.pod_spec_path();
    let daemonset = cx.workload.kind == WorkloadKind::DaemonSet;
    for tc in &cx.containers {
        let tun = tun_mount(tc, pod);
        match tc.mode() {
            Mode::Kernel => {
                privileged(tc, daemonset, out);
                if daemonset && pod.host_network != Some(true) {
                    out.report(
                        RuleId::HostNetwork,
                        format!("{pod_path}.hostNetwork"),
                        format!(
                            "container `{}` runs Tailscale in kernel mode in a DaemonSet without hostNetwork: it configures the pod's own network namespace, so the node's traffic never reaches the tailnet (no subnet routes, no exit node for the node)",
                            tc.name()
                        ),
                        "set spec.template.spec.hostNetwork: true (and dnsPolicy: ClusterFirstWithHostNet), or use userspace mode if only this pod needs the tailnet",
                    );
                }
                match tun {
                    Tun::Mounted => {}
                    Tun::WrongType(path, ty) => out.report(
                        RuleId::TunDevice,
                        path,
                        format!("the /dev/net/tun hostPath volume has type `{ty}`, but /dev/net/tun is a character device, so the kubelet refuses to start the pod"),
                        "set the hostPath type to CharDevice (or leave it unset)",
                    ),
                    // A privileged container sees the host's devices; containerboot
                    // also creates /dev/net/tun itself when it may.
                    Tun::Missing if tc.privileged() => {}
                    Tun::Missing => out.report(
                        RuleId::TunDevice,
                        format!("{}.volumeMounts", tc.path),
                        format!(
                            "container `{}` runs Tailscale in kernel mode (TS_USERSPACE=false) but has no /dev/net/tun: tailscaled cannot open the TUN device and exits",
                            tc.name()
                        ),
                        "add a hostPath volume {path: /dev/net/tun, type: CharDevice} mounted at /dev/net/tun, or set securityContext.privileged: true",
                    ),
                }
            }
            Mode::DefaultUserspace => {
                let asks_for_kernel = tc.privileged() || tc.adds_capability("NET_ADMIN") || matches!(tun, Tun::Mounted);
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
                            "container `{}` is given kernel-mode privileges (privileged, NET_ADMIN or /dev/net/tun) but {why}: Tailscale runs in userspace mode, creates no TUN interface and routes nothing for the pod or node",
                            tc.name()
                        ),
                        "set TS_USERSPACE=\"false\" for kernel mode, or drop the privileges if userspace mode is what you want",
                    );
                }
            }
            Mode::Userspace | Mode::Unknown => {}
        }
    }
}

fn privileged(tc: &TailscaleContainer<'_>, daemonset: bool, out: &mut Findings<'_>) {
    if tc.privileged() {
        return;
    }
    if daemonset {
        out.report(
            RuleId::Privileged,
            format!("{}.securityContext.privileged", tc.path),
            format!(
                "container `{}` runs Tailscale in kernel mode on the node (DaemonSet) without privileged: true: it cannot create the TUN device or change the node's routes and firewall, and crash-loops",
                tc.name()
            ),
            "set securityContext.privileged: true on this container (and label the namespace pod-security.kubernetes.io/enforce=privileged)",
        );
    } else if !tc.adds_capability("NET_ADMIN") {
        out.report(
            RuleId::Privileged,
            format!("{}.securityContext.capabilities.add", tc.path),
            format!(
                "container `{}` runs Tailscale in kernel mode without NET_ADMIN: it cannot configure the TUN interface, routes or firewall, and exits",
                tc.name()
            ),
            "add securityContext.capabilities.add: [NET_ADMIN] (plus the /dev/net/tun device), or use userspace mode (TS_USERSPACE=true)",
        );
    }
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
