//! `unexpanded-variable`: references the kubelet leaves verbatim.

use k8s_openapi::api::core::v1::Container;

use super::{Context, Findings, RuleId};
use crate::expansion;
use crate::tailscale::TailscaleContainer;

/// Env vars the kubelet always defines (the `kubernetes` Service in `default`).
const ALWAYS_DEFINED: &[&str] = &[
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "KUBERNETES_SERVICE_PORT_HTTPS",
    "KUBERNETES_PORT",
    "KUBERNETES_PORT_443_TCP",
    "KUBERNETES_PORT_443_TCP_PROTO",
    "KUBERNETES_PORT_443_TCP_PORT",
    "KUBERNETES_PORT_443_TCP_ADDR",
];

/// containerboot settings passed on without a shell: `$VAR` stays literal there.
const NO_SHELL_ENV: &[&str] = &[
    "TS_EXTRA_ARGS",
    "TS_TAILSCALED_EXTRA_ARGS",
    "TS_HOSTNAME",
    "TS_ROUTES",
    "TS_KUBE_SECRET",
    "TS_STATE_DIR",
    "TS_AUTHKEY",
    "TS_AUTH_KEY",
    "TS_DEST_IP",
    "TS_LOCAL_ADDR_PORT",
    "TS_SOCKS5_SERVER",
    "TS_OUTBOUND_HTTP_PROXY_LISTEN",
];

const SHELLS: &[&str] = &["sh", "bash", "ash", "dash", "zsh", "ksh"];

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    if !out.enabled(RuleId::UnexpandedVariable) {
        return;
    }
    let service_links = cx.workload.pod.enable_service_links != Some(false);
    for tc in &cx.containers {
        check_env(tc, service_links, out);
        check_command_and_args(tc, service_links, out);
    }
}

/// Where an unresolved name might still come from.
enum Unresolved {
    /// Nowhere: the reference stays verbatim.
    Never,
    /// Defined, but later in `env` than the value that uses it.
    Later(usize),
    /// Maybe from `envFrom` or a Service link: the manifest cannot tell.
    Maybe(&'static str),
}

fn classify(tc: &TailscaleContainer<'_>, name: &str, later: Option<usize>, service_links: bool) -> Unresolved {
    if let Some(i) = later {
        return Unresolved::Later(i);
    }
    if tc.env.has_env_from {
        return Unresolved::Maybe("it may come from this container's envFrom, which the manifest does not show");
    }
    if service_links && is_service_link_name(name) {
        return Unresolved::Maybe("it looks like a Service link variable, which exists only if that Service does");
    }
    Unresolved::Never
}

/// `<SVC>_SERVICE_HOST`, `<SVC>_PORT_...` and friends, injected per Service.
fn is_service_link_name(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && (name.ends_with("_SERVICE_HOST") || name.contains("_SERVICE_PORT") || has_port_proto(name))
}

/// `..._PORT_<number>_<TCP|UDP|SCTP>...`
fn has_port_proto(name: &str) -> bool {
    name.match_indices("_PORT_").any(|(i, m)| {
        let rest = &name[i + m.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && ["_TCP", "_UDP", "_SCTP"].iter().any(|p| rest[digits..].starts_with(p))
    })
}

fn check_env(tc: &TailscaleContainer<'_>, service_links: bool, out: &mut Findings<'_>) {
    for (i, var) in tc.env.vars().iter().enumerate() {
        let Some(value) = var.value.as_deref() else {
            continue;
        };
        // Built only for a finding: most values have none.
        let path = || tc.env_path(i);
        for (name, _) in expansion::references(value) {
            if tc.env.get_before(name, i).is_some() || ALWAYS_DEFINED.contains(&name) {
                continue;
            }
            let later = tc.env.defined_after(name, i);
            report(
                tc,
                &path(),
                &var.name,
                name,
                classify(tc, name, later, service_links),
                out,
            );
        }
        if NO_SHELL_ENV.contains(&var.name.as_str()) {
            for (shell_ref, _) in expansion::shell_references(value) {
                out.report(
                    RuleId::UnexpandedVariable,
                    path(),
                    format!(
                        "{} contains `{shell_ref}`, but containerboot reads {} without a shell, so Tailscale gets the text `{shell_ref}` itself{}",
                        var.name,
                        var.name,
                        hostname_consequence(tc, &var.name, shell_ref)
                    ),
                    format!(
                        "use Kubernetes' syntax `$({})` with that variable defined earlier in env",
                        shell_ref.trim_start_matches('$').trim_start_matches('{').trim_end_matches('}')
                    ),
                );
            }
        }
    }
}

/// What `tailscale up` prints when the unexpanded text reaches a hostname
/// (TS_HOSTNAME, or --hostname in TS_EXTRA_ARGS), the usual place for it.
fn hostname_consequence(tc: &TailscaleContainer<'_>, field: &str, text: &str) -> String {
    let hostname = match field {
        "TS_HOSTNAME" => tc.env.literal("TS_HOSTNAME").map(|(_, v)| v.to_owned()),
        "TS_EXTRA_ARGS" => tc.up_args().and_then(|up| up.value("hostname").map(str::to_owned)),
        _ => None,
    };
    match hostname.filter(|h| h.contains(text)) {
        Some(h) => match super::flags::valid_hostname(&h) {
            Err(why) => format!(": `tailscale up` exits with `{why}`"),
            Ok(()) => String::new(),
        },
        None => String::new(),
    }
}

fn report(tc: &TailscaleContainer<'_>, path: &str, field: &str, name: &str, why: Unresolved, out: &mut Findings<'_>) {
    let container = tc.name();
    let consequence = hostname_consequence(tc, field, &format!("$({name})"));
    match why {
        Unresolved::Later(j) => out.report(
            RuleId::UnexpandedVariable,
            path,
            format!(
                "{field} uses `$({name})`, but {name} is defined later (env[{j}]); Kubernetes expands only variables defined earlier in the list, so the text `$({name})` is passed on as is{consequence}"
            ),
            format!("move env[{j}] ({name}) above {field} in container `{container}`"),
        ),
        Unresolved::Never => out.report(
            RuleId::UnexpandedVariable,
            path,
            format!(
                "`$({name})` is not an env var of container `{container}`, so Kubernetes leaves the text `$({name})` unexpanded{consequence}"
            ),
            format!(
                "define {name} in this container's env before it is used (e.g. valueFrom.fieldRef.fieldPath: spec.nodeName), or write `$$({name})` if you mean the literal text"
            ),
        ),
        Unresolved::Maybe(reason) => out.report_uncertain(
            RuleId::UnexpandedVariable,
            path,
            format!("`$({name})` is not defined in container `{container}`'s env; {reason}"),
            format!("define {name} explicitly in env before it is used"),
        ),
    }
}

fn check_command_and_args(tc: &TailscaleContainer<'_>, service_links: bool, out: &mut Findings<'_>) {
    let c = tc.container;
    let shell = runs_shell(c);
    // containerboot reads no arguments: with the image's entrypoint, `args`
    // (expanded or not) reach nothing that uses them.
    let args = if c.command.as_ref().is_none_or(Vec::is_empty) {
        &None
    } else {
        &c.args
    };
    for (field, list) in [("command", &c.command), ("args", args)] {
        let Some(list) = list else { continue };
        for (i, item) in list.iter().enumerate() {
            let path = || format!("{}.{field}[{i}]", tc.path);
            for (name, _) in expansion::references(item) {
                if tc.env.get(name).is_some() || ALWAYS_DEFINED.contains(&name) {
                    continue;
                }
                report(tc, &path(), field, name, classify(tc, name, None, service_links), out);
            }
            if shell.is_some() {
                continue;
            }
            for (shell_ref, _) in expansion::shell_references(item) {
                let message = format!(
                    "{field}[{i}] contains `{shell_ref}`, but exec-form {field} run without a shell, so the program gets the text `{shell_ref}`"
                );
                let hint = format!(
                    "use `$({})` (defined in env), or run the command through `sh -c`",
                    shell_ref
                        .trim_start_matches('$')
                        .trim_start_matches('{')
                        .trim_end_matches('}')
                );
                // The image's own entrypoint (containerboot) and tailscale's
                // binaries never expand it; a custom entrypoint script might.
                if entrypoint_is_tailscale(c) {
                    out.report(RuleId::UnexpandedVariable, path(), message, hint);
                } else {
                    out.report_uncertain(RuleId::UnexpandedVariable, path(), message, hint);
                }
            }
        }
    }
}

/// The shell a container's command runs (`sh -c ...`), if any.
fn runs_shell(c: &Container) -> Option<&'static str> {
    shell_name(c.command.as_ref()?.first()?)
}

/// `program` (a path or a name) if it is a shell.
pub(super) fn shell_name(program: &str) -> Option<&'static str> {
    let base = program.rsplit('/').next().unwrap_or(program);
    SHELLS.iter().copied().find(|s| *s == base)
}

fn entrypoint_is_tailscale(c: &Container) -> bool {
    match c.command.as_ref().and_then(|cmd| cmd.first()) {
        None => true,
        Some(first) => {
            let base = first.rsplit('/').next().unwrap_or(first);
            matches!(base, "containerboot" | "tailscale" | "tailscaled")
        }
    }
}
