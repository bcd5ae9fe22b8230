//! Exit nodes: `exit-node-hostname`, `exit-node-self`, `exit-node-unpinned`, `lan-access`.

use std::net::IpAddr;

use super::{Context, Findings, RuleId};
use crate::mode::Mode;
use crate::tailscale::ModeSetting;
use crate::workload::WorkloadKind;

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    for tc in &cx.containers {
        let Some(up) = tc.up_args() else { continue };
        let advertises = up.bool("advertise-exit-node");
        if let Some(exit) = up.exit_node() {
            // `auto:any` lets Tailscale choose; unexpanded `$(..)` is reported elsewhere.
            if exit.parse::<IpAddr>().is_err() && !exit.starts_with("auto:") && !exit.contains("$(") {
                out.report(
                    RuleId::ExitNodeHostname,
                    up.path.clone(),
                    format!(
                        "--exit-node={exit} names the exit node by hostname: containerboot runs `tailscale up` before Tailscale knows any peer, and it exits with `invalid value \"{exit}\" for --exit-node; must be IP or unique node name` (even when that exit node exists and is approved), so the pod crash-loops"
                    ),
                    "use the exit node's Tailscale IP (`tailscale ip -4` on the exit node), e.g. --exit-node=100.64.0.1",
                );
            }
            if advertises {
                out.report(
                    RuleId::ExitNodeSelf,
                    up.path.clone(),
                    format!("container `{}` both advertises an exit node (--advertise-exit-node) and uses one (--exit-node={exit}): `tailscale up` exits with \"Cannot advertise an exit node and use an exit node at the same time.\"", tc.name()),
                    "run exit nodes and exit-node clients as separate workloads (e.g. one DaemonSet pinned to the exit node, one for the other nodes)",
                );
            }
            if tc.mode() == ModeSetting::Set(Mode::Tun) && !up.bool("exit-node-allow-lan-access") {
                out.report(
                    RuleId::LanAccess,
                    up.path.clone(),
                    "a kernel-mode exit-node client sends all traffic through the exit node, including traffic to the local network and cluster: the node or pod can lose its LAN and cluster connectivity",
                    "add --exit-node-allow-lan-access to TS_EXTRA_ARGS",
                );
            }
        }
        if advertises && cx.workload.kind == WorkloadKind::DaemonSet && !pinned(cx) {
            out.report(
                RuleId::ExitNodeUnpinned,
                format!("{}.nodeSelector", cx.workload.kind.pod_spec_path()),
                "this DaemonSet advertises an exit node and runs on every node, so every node becomes an exit node (and each needs approval)",
                "pin it to the intended node with nodeSelector (e.g. kubernetes.io/hostname: <node>) or a required node affinity",
            );
        }
    }
}

/// Whether the pods are restricted to chosen nodes.
fn pinned(cx: &Context<'_>) -> bool {
    let pod = &cx.workload.pod;
    pod.node_selector.as_ref().is_some_and(|s| !s.is_empty())
        || pod.node_name.as_deref().is_some_and(|n| !n.is_empty())
        || pod
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
            .is_some_and(|r| !r.node_selector_terms.is_empty())
}
