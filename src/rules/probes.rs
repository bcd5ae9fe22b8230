//! Probes that can never pass: `probe-shell` (shell syntax with no shell, tools
//! the image lacks) and `probe-healthz-disabled` (a /healthz that containerboot
//! does not serve, or serves elsewhere).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::variables::shell_name;
use super::{Context, Findings, RuleId};
use crate::config::DEFAULT_IMAGES;
use crate::image::image_repository;
use crate::tailscale::{DEFAULT_HEALTH_PORT, Setting, TailscaleContainer};

const HEALTHZ_FORM: &str = "set TS_ENABLE_HEALTH_CHECK=\"true\" and probe it with httpGet {path: /healthz, port: 9002}";

/// Shell syntax that only a shell understands.
const SHELL_SYNTAX: &[&str] = &["|", "&&", "||", ";", ">", "<", "`", "$("];

/// Tools the official image (Alpine with busybox) does not ship.
const MISSING_TOOLS: &[&str] = &["bash", "curl", "jq", "python", "python3", "dig", "kubectl"];

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    let host_network = cx.workload.pod.host_network == Some(true);
    for tc in &cx.containers {
        let c = tc.container;
        for (field, probe) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            let Some(probe) = probe else { continue };
            let path = format!("{}.{field}", tc.path);
            exec_probe(tc, probe, &path, out);
            healthz_probe(tc, probe, &path, host_network, out);
        }
    }
}

fn exec_probe(tc: &TailscaleContainer<'_>, probe: &Probe, path: &str, out: &mut Findings<'_>) {
    let Some(command) = probe.exec.as_ref().and_then(|e| e.command.as_ref()) else {
        return;
    };
    let Some(first) = command.first() else { return };
    let shell = runs_shell_list(command);
    if shell.is_none() {
        let syntax = command
            .iter()
            .enumerate()
            .find_map(|(i, arg)| SHELL_SYNTAX.iter().find(|s| arg.contains(*s)).map(|s| (i, *s)));
        if let Some((i, s)) = syntax {
            out.report(
                RuleId::ProbeShell,
                format!("{path}.exec.command[{i}]"),
                format!(
                    "exec probes run `{first}` directly, without a shell, so `{s}` is passed to it as a plain argument and the probe always fails"
                ),
                format!(
                    "wrap it as [\"sh\", \"-c\", \"{}\"], or better: {HEALTHZ_FORM}",
                    command.join(" ").replace('"', "\\\"")
                ),
            );
            return;
        }
        if command.len() == 1 && first.contains(' ') {
            out.report(
                RuleId::ProbeShell,
                format!("{path}.exec.command[0]"),
                format!("`{first}` is one argument: the kubelet looks for a program with that whole name, finds none, and the probe always fails"),
                format!("split it into separate list items, or {HEALTHZ_FORM}"),
            );
            return;
        }
    } else if let Some(s) = shell.filter(|s| *s == "bash") {
        missing_tool(tc, s, &format!("{path}.exec.command[0]"), out);
    }
    compact_json_grep(command, path, out);
    // The program itself and every word of a shell script.
    let words: Vec<(usize, &str)> = command
        .iter()
        .enumerate()
        .skip(usize::from(shell.is_some()))
        .flat_map(|(i, arg)| {
            arg.split(|c: char| c.is_whitespace() || "|&;()`".contains(c))
                .map(move |w| (i, w))
        })
        .collect();
    for (i, word) in words {
        let base = word.rsplit('/').next().unwrap_or(word);
        if MISSING_TOOLS.contains(&base) {
            missing_tool(tc, base, &format!("{path}.exec.command[{i}]"), out);
            return;
        }
    }
}

/// `tailscale status --json | grep '"Key":"Value"'`: the CLI prints indented
/// JSON, with a space after every colon, so a compact pattern never matches.
fn compact_json_grep(command: &[String], path: &str, out: &mut Findings<'_>) {
    for (i, arg) in command.iter().enumerate() {
        let Some(json_at) = arg.find("tailscale status") else {
            continue;
        };
        let rest = &arg[json_at..];
        let Some(grep_at) = rest.find("grep") else {
            continue;
        };
        let (status, grep) = rest.split_at(grep_at);
        if !status.contains("--json") && !status.contains("-json") {
            continue;
        }
        let Some(pattern) = ["\":\"", "\":true", "\":false", "\":["]
            .into_iter()
            .find(|p| grep.contains(p))
        else {
            continue;
        };
        out.report(
            RuleId::ProbeShell,
            format!("{path}.exec.command[{i}]"),
            format!(
                "the probe greps `tailscale status --json` for compact JSON (`{pattern}` with no space), but the CLI prints indented JSON with a space after each colon (`\"BackendState\": \"Running\"`): the pattern never matches and the probe always fails"
            ),
            format!("match the printed form (a space after the colon), or better: {HEALTHZ_FORM}"),
        );
        return;
    }
}

fn runs_shell_list(command: &[String]) -> Option<&'static str> {
    shell_name(command.first()?)
}

fn missing_tool(tc: &TailscaleContainer<'_>, tool: &str, path: &str, out: &mut Findings<'_>) {
    let image = tc.container.image.as_deref().unwrap_or_default();
    // Only the official images are known to be Alpine/busybox; a custom
    // mirror or derived image may ship the tool.
    let official = DEFAULT_IMAGES.contains(&image_repository(image));
    let message = format!(
        "the probe runs `{tool}`, which the Tailscale image (Alpine with busybox) does not ship, so the probe always fails"
    );
    let hint = format!("use busybox tools (sh, grep, wget) or `tailscale status`, or better: {HEALTHZ_FORM}");
    if official {
        out.report(RuleId::ProbeShell, path, message, hint);
    } else {
        out.report_uncertain(RuleId::ProbeShell, path, message, hint);
    }
}

fn healthz_probe(tc: &TailscaleContainer<'_>, probe: &Probe, path: &str, host_network: bool, out: &mut Findings<'_>) {
    let Some(http) = &probe.http_get else { return };
    if !http.path.as_deref().unwrap_or("/").starts_with("/healthz") {
        return;
    }
    // Where containerboot serves /healthz, if it does: the deprecated
    // TS_HEALTHCHECK_ADDR_PORT, or TS_LOCAL_ADDR_PORT (default [::]:9002) with
    // TS_ENABLE_HEALTH_CHECK=true.
    let (served_at, addr) = match tc.env.setting("TS_HEALTHCHECK_ADDR_PORT") {
        Setting::Unknown(_) => return,
        Setting::Known(i, v) if !v.is_empty() => (format!("{v} ({})", tc.env_path(i)), v.to_owned()),
        _ => {
            let enabled = tc.env.setting("TS_ENABLE_HEALTH_CHECK");
            match enabled.bool_or(false) {
                None => return,
                Some(false) => {
                    let at = enabled
                        .index()
                        .map_or_else(|| format!("{}.env", tc.path), |i| tc.env_path(i));
                    out.report(
                        RuleId::ProbeHealthzDisabled,
                        format!("{path}.httpGet"),
                        format!(
                            "the probe asks for /healthz, but containerboot serves it only when TS_ENABLE_HEALTH_CHECK=true ({at} does not enable it): the probe never passes"
                        ),
                        HEALTHZ_FORM,
                    );
                    return;
                }
                Some(true) => {}
            }
            match tc.env.setting("TS_LOCAL_ADDR_PORT") {
                Setting::Unknown(_) => return,
                Setting::Unset => (
                    format!("[::]:{DEFAULT_HEALTH_PORT} (the default)"),
                    format!("[::]:{DEFAULT_HEALTH_PORT}"),
                ),
                Setting::Known(i, "") => {
                    out.report(
                        RuleId::ProbeHealthzDisabled,
                        format!("{path}.httpGet"),
                        format!(
                            "the probe asks for /healthz, but TS_LOCAL_ADDR_PORT is empty ({}), so containerboot serves nothing: the probe never passes",
                            tc.env_path(i)
                        ),
                        "remove TS_LOCAL_ADDR_PORT (the default is [::]:9002) or set it to an address and port",
                    );
                    return;
                }
                Setting::Known(i, v) => (format!("{v} ({})", tc.env_path(i)), v.to_owned()),
            }
        }
    };
    let Some((listen_host, port)) = split_host_port(&addr) else {
        return;
    };
    let Ok(listen_ip) = listen_host.parse::<IpAddr>() else {
        return;
    };
    // The kubelet probes from the node's network namespace: `host`, or the pod IP.
    let probe_host = http.host.as_deref().filter(|h| !h.is_empty());
    let probe_loopback =
        probe_host.is_some_and(|h| h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    let reachable = match (listen_ip.is_unspecified(), listen_ip.is_loopback(), probe_host) {
        // Listening everywhere: the pod IP answers; loopback only when the pod shares the node's network.
        (true, _, None) => Some(true),
        (true, _, Some(_)) if probe_loopback => Some(host_network),
        // Listening on loopback only: reached from the node only through a shared network namespace.
        (_, true, _) => Some(host_network && probe_loopback),
        // A probe to a named host or another address, or a listener on one address: cannot tell.
        _ => None,
    };
    if reachable == Some(false) {
        let (target, hint) = match probe_host {
            Some(h) => (
                format!("`{h}`, which the kubelet resolves in the node's network namespace, not the pod's"),
                "drop httpGet.host (the kubelet then probes the pod IP) and listen on all addresses (TS_LOCAL_ADDR_PORT=[::]:9002)",
            ),
            None => (
                "the pod IP".to_owned(),
                "listen on all addresses (TS_LOCAL_ADDR_PORT=[::]:9002) or on $(POD_IP):9002 with POD_IP from fieldRef status.podIP",
            ),
        };
        out.report(
            RuleId::ProbeHealthzDisabled,
            format!("{path}.httpGet"),
            format!("containerboot serves /healthz on {served_at}, but the kubelet probes {target}, where nothing listens: the probe never passes"),
            hint,
        );
        return;
    }
    let probe_port = match &http.port {
        IntOrString::Int(p) => Some(*p),
        IntOrString::String(name) => tc
            .container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port),
    };
    match probe_port {
        Some(p) if i64::from(p) == i64::from(port) => {}
        Some(p) => out.report(
            RuleId::ProbeHealthzDisabled,
            format!("{path}.httpGet.port"),
            format!("the probe asks port {p} for /healthz, but containerboot serves it on {served_at}: the probe never passes"),
            format!("probe port {port}"),
        ),
        None => out.report(
            RuleId::ProbeHealthzDisabled,
            format!("{path}.httpGet.port"),
            "the probe's named port is not a port of this container: the probe never passes".to_owned(),
            format!("probe port {port}, where containerboot serves /healthz"),
        ),
    }
}

/// `host:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}
