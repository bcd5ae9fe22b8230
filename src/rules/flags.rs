//! `tailscale up` arguments: `unknown-up-flag` and `invalid-hostname`.

use super::{Context, Findings, RuleId};
use crate::tailscale::{UP_FLAGS, UpArgs};

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    for tc in &cx.containers {
        let up = tc.up_args();
        if let Some(up) = &up {
            unknown_flags(up, out);
            if let Some(hostname) = up.value("hostname") {
                hostname_rule(hostname, &up.path, "--hostname", out);
            }
        }
        if let Some((i, hostname)) = tc.env.literal("TS_HOSTNAME") {
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
                    "`{token}` is not a `tailscale up` flag (Tailscale 1.96): tailscale up exits with \"flag provided but not defined\" and the container crash-loops"
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
    // An unexpanded `$(VAR)` is reported by unexpanded-variable, with the cause.
    if hostname.contains("$(") {
        return;
    }
    if let Err(why) = valid_hostname(hostname) {
        out.report(
            RuleId::InvalidHostname,
            path,
            format!("{source} `{hostname}` is not a valid Tailscale hostname ({why}): `tailscale up` refuses it and the container crash-loops"),
            "use lowercase letters, digits and dashes, 1-63 characters per label, starting and ending with a letter or digit; for per-pod names use $(POD_NAME) defined earlier from fieldRef metadata.name",
        );
    }
}

/// Tailscale's hostname check: dot-separated DNS labels of letters, digits and
/// dashes, each 1-63 bytes, not starting or ending with a dash; at most 253 bytes.
pub fn valid_hostname(hostname: &str) -> Result<(), String> {
    let name = hostname.strip_suffix('.').unwrap_or(hostname);
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label `{label}` is longer than 63 characters"));
        }
        let bytes = label.as_bytes();
        if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
            return Err(format!("label `{label}` must start and end with a letter or digit"));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(format!("`{c}` is not allowed"));
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
        for bad in ["", "-a", "a-", "a_b", "$NODE_NAME", "a..b", &"x".repeat(64)] {
            assert!(valid_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn suggests_near_flags() {
        assert_eq!(closest_flag("acept-routes"), Some("accept-routes"));
        assert_eq!(closest_flag("exitnode"), Some("exit-node"));
        assert_eq!(closest_flag("completely-different-thing"), None);
    }
}
