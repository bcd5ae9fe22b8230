//! `tailscale up` arguments: `unknown-up-flag` and `invalid-hostname`.

use super::{Context, Findings, RuleId};
use crate::tailscale::{Setting, TailscaleContainer, UP_FLAGS, UpArgs};

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    for tc in &cx.containers {
        let up = tc.up_args();
        // `$(VAR)` left unexpanded is reported by unexpanded-variable, with
        // its cause; an escaped `$$(VAR)` becomes literal text and is judged here.
        if let Some(up) = &up {
            unknown_flags(up, out);
            repeated_flags(tc, up, out);
            if let Some(hostname) = up.value("hostname").filter(|h| !h.is_empty())
                && !tc
                    .env
                    .literal("TS_EXTRA_ARGS")
                    .is_some_and(|(i, _)| tc.has_unresolved_reference(i))
            {
                hostname_rule(hostname, &up.path, "--hostname", out);
            }
        }
        if let Some((i, hostname)) = tc.env.literal("TS_HOSTNAME")
            && !hostname.is_empty()
            && !tc.has_unresolved_reference(i)
        {
            hostname_rule(hostname, &tc.env_path(i), "TS_HOSTNAME", out);
        }
    }
}

fn unknown_flags(up: &UpArgs, out: &mut Findings<'_>) {
    for token in &up.unknown {
        let (message, hint) = if token.starts_with('-') {
            let name = token.trim_start_matches('-').split('=').next().unwrap_or_default();
            (
                format!(
                    "`{token}` is not a `tailscale up` flag (Tailscale 1.96): tailscale up exits with `flag provided but not defined: -{name}` and the container crash-loops"
                ),
                match closest_flag(name) {
                    Some(known) => format!(
                        "did you mean --{known}? Otherwise remove it (tailscaled flags go in TS_TAILSCALED_EXTRA_ARGS)"
                    ),
                    None => "remove it; tailscaled flags go in TS_TAILSCALED_EXTRA_ARGS".to_owned(),
                },
            )
        } else {
            (
                format!(
                    "`{token}` is not a flag: containerboot splits TS_EXTRA_ARGS on whitespace with no shell, so quotes and spaces inside values do not work and `tailscale up` rejects stray arguments"
                ),
                "write each flag as --name=value with no spaces in the value".to_owned(),
            )
        };
        out.report(RuleId::UnknownUpFlag, up.path.clone(), message, hint);
    }
}

/// `tailscale up` accepts each flag once ("flag provided multiple times").
/// containerboot passes some itself, from its settings, before TS_EXTRA_ARGS:
/// --accept-dns always (taking the first `--accept-dns` of TS_EXTRA_ARGS over),
/// --authkey, --client-id, --client-secret, --id-token and --audience when
/// set, --advertise-routes when TS_ROUTES is set (even empty), --hostname when
/// TS_HOSTNAME is not empty.
fn repeated_flags(tc: &TailscaleContainer<'_>, up: &UpArgs, out: &mut Findings<'_>) {
    let mut passed: Vec<(&str, String)> = vec![("accept-dns", "TS_ACCEPT_DNS".to_owned())];
    // TS_AUTHKEY wins over TS_AUTH_KEY when both are set.
    let auth_key_var = match tc.env.setting("TS_AUTHKEY") {
        Setting::Unset => "TS_AUTH_KEY",
        _ => "TS_AUTHKEY",
    };
    for (name, var) in [
        ("auth-key", auth_key_var),
        ("client-id", "TS_CLIENT_ID"),
        ("client-secret", "TS_CLIENT_SECRET"),
        ("id-token", "TS_ID_TOKEN"),
        ("audience", "TS_AUDIENCE"),
        ("hostname", "TS_HOSTNAME"),
        ("advertise-routes", "TS_ROUTES"),
    ] {
        let set = match tc.env.setting(var) {
            Setting::Known(_, v) => !v.is_empty() || var == "TS_ROUTES",
            // From a Secret or fieldRef: set, and not empty in any working setup.
            Setting::Unknown(Some(_)) => true,
            Setting::Unknown(None) | Setting::Unset => false,
        };
        if set {
            passed.push((name, var.to_owned()));
        }
    }
    let mut accept_dns_taken = false;
    for (raw_name, value) in &up.flags {
        let name = canonical_flag(raw_name);
        // parseAcceptDNS removes the first --accept-dns[=bool] from TS_EXTRA_ARGS.
        if name == "accept-dns" && !accept_dns_taken && raw_name.as_str() == "accept-dns" {
            let parses = value
                .as_deref()
                .is_none_or(|v| crate::tailscale::parse_go_bool(v).is_some());
            if parses {
                accept_dns_taken = true;
                continue;
            }
        }
        if let Some((_, from)) = passed.iter().find(|(n, _)| *n == name) {
            let message = format!(
                "TS_EXTRA_ARGS passes --{raw_name}, which containerboot already passes to `tailscale up` (from {from}): it accepts a flag once and exits with `flag provided multiple times`"
            );
            let hint = format!("set it in one place only: {from}, or --{name} in TS_EXTRA_ARGS");
            out.report(RuleId::UnknownUpFlag, up.path.clone(), message, hint);
        }
        passed.push((name, "an earlier TS_EXTRA_ARGS flag".to_owned()));
    }
}

/// The name `tailscale up` knows a flag by (its CleanUpArgs rewrites the old spellings).
fn canonical_flag(name: &str) -> &str {
    match name {
        "authkey" => "auth-key",
        "posture-checking" => "report-posture",
        other => other,
    }
}

/// The known flag nearest to `name`, if it is a plausible typo.
fn closest_flag(name: &str) -> Option<&'static str> {
    UP_FLAGS
        .iter()
        .map(|f| (edit_distance(name, f.name), f.name))
        .filter(|(d, _)| *d <= 2.max(name.len() / 4))
        .min()
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn hostname_rule(hostname: &str, path: &str, source: &str, out: &mut Findings<'_>) {
    if let Err(why) = valid_hostname(hostname) {
        out.report(
            RuleId::InvalidHostname,
            path,
            format!("{source} `{hostname}` is not a hostname Tailscale accepts: `tailscale up` exits with `{why}` and the container crash-loops"),
            "use letters, digits and dashes, 1-63 characters per label, starting and ending with a letter or digit; for per-pod names use $(POD_NAME) defined earlier from fieldRef metadata.name (and `$(`, not `$$(`)",
        );
    }
}

/// Tailscale's hostname check (`dnsname.ValidHostname`, which `tailscale up`
/// applies to a non-empty --hostname), with the error text it prints.
pub fn valid_hostname(hostname: &str) -> Result<(), String> {
    const MAX_NAME: usize = 253;
    const MAX_LABEL: usize = 63;
    // ToFQDN: an optional leading dot, an optional trailing dot, length checks.
    let name = hostname.strip_prefix('.').unwrap_or(hostname);
    let without_dot = name.strip_suffix('.').unwrap_or(name);
    if !hostname.is_empty() && hostname != "." {
        let total = name.len() + usize::from(!name.ends_with('.'));
        if total > MAX_NAME + 1 {
            return Err(format!("\"{without_dot}\" is too long to be a DNS name"));
        }
        let mut labels: Vec<&str> = without_dot.split('.').collect();
        labels.pop();
        if let Some(label) = labels.iter().find(|l| l.is_empty() || l.len() > MAX_LABEL) {
            return Err(format!("\"{label}\" is not a valid DNS label"));
        }
    }
    let fqdn = if hostname.is_empty() || hostname == "." {
        ""
    } else {
        without_dot
    };
    for label in fqdn.split('.') {
        let bytes = label.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return Err("empty DNS label".to_owned());
        };
        if label.len() > MAX_LABEL {
            return Err(format!("\"{label}\" is too long, max length is {MAX_LABEL} bytes"));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(format!(
                "\"{label}\" is not a valid DNS label: must start with a letter or number"
            ));
        }
        if !last.is_ascii_alphanumeric() {
            return Err(format!(
                "\"{label}\" is not a valid DNS label: must end with a letter or number"
            ));
        }
        if let Some(c) = bytes[1..bytes.len().saturating_sub(1).max(1)]
            .iter()
            .find(|c| !(c.is_ascii_alphanumeric() || **c == b'-'))
        {
            return Err(format!(
                "\"{label}\" is not a valid DNS label: contains invalid character '{}'",
                char::from(*c)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_follow_tailscale_rules() {
        for ok in ["node-a", "a", "Node1", "exit.example", "a-b-c"] {
            assert!(valid_hostname(ok).is_ok(), "{ok}");
        }
        for bad in ["-a", "a-", "a_b", "$NODE_NAME", "a..b", &"x".repeat(64), "."] {
            assert!(valid_hostname(bad).is_err(), "{bad}");
        }
        assert_eq!(
            valid_hostname("$(NODE_NAME)"),
            Err("\"$(NODE_NAME)\" is not a valid DNS label: must start with a letter or number".to_owned())
        );
        assert_eq!(
            valid_hostname("a_b"),
            Err("\"a_b\" is not a valid DNS label: contains invalid character '_'".to_owned())
        );
    }

    #[test]
    fn suggests_near_flags() {
        assert_eq!(closest_flag("acept-routes"), Some("accept-routes"));
        assert_eq!(closest_flag("exitnode"), Some("exit-node"));
        assert_eq!(closest_flag("completely-different-thing"), None);
    }
}
