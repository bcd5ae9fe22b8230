//! Auth keys: `literal-auth-key`, `auth-key-file` and `auth-once-extra-args`.
//! Messages never repeat a key's value.

use super::{Context, Findings, RuleId};
use crate::config::{DEFAULT_IMAGES, image_repository};
use crate::tailscale::{EnvValue, TailscaleContainer};

const SECRET_VARS: &[&str] = &["TS_AUTHKEY", "TS_AUTH_KEY", "TS_CLIENT_SECRET"];
const SECRET_FLAGS: &[&str] = &["auth-key", "authkey", "client-secret"];

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    for tc in &cx.containers {
        for (i, var) in tc.env.vars().iter().enumerate() {
            if !SECRET_VARS.contains(&var.name.as_str()) || var.value_from.is_some() {
                continue;
            }
            // A value built from a secretKeyRef variable is External: fine.
            let literal = match tc.env.get_before(&var.name, i + 1) {
                Some((_, EnvValue::Known(v))) => !v.is_empty() && !v.starts_with("file:"),
                _ => false,
            };
            if literal {
                out.report(
                    RuleId::LiteralAuthKey,
                    tc.env_path(i),
                    format!(
                        "{} is written into the manifest: anyone who can read this object (or its Git history) can join machines to your tailnet",
                        var.name
                    ),
                    format!(
                        "store the key in a Secret and use valueFrom.secretKeyRef for {} (or `file:` with a mounted Secret); revoke the exposed key",
                        var.name
                    ),
                );
            }
        }
        if let Some(up) = tc.up_args() {
            for flag in SECRET_FLAGS {
                if up
                    .value(flag)
                    .is_some_and(|v| !v.is_empty() && !v.starts_with("file:") && !v.contains("$("))
                {
                    out.report(
                        RuleId::LiteralAuthKey,
                        up.path.clone(),
                        format!("TS_EXTRA_ARGS passes --{flag} with a literal key: anyone who can read this object can join machines to your tailnet"),
                        "remove it from TS_EXTRA_ARGS and set TS_AUTHKEY from a Secret (valueFrom.secretKeyRef); revoke the exposed key",
                    );
                }
            }
        }
        auth_key_file(tc, out);
        if tc.env.bool("TS_AUTH_ONCE") == Some(true)
            && let Some((i, extra)) = tc.env.literal("TS_EXTRA_ARGS")
            && !extra.trim().is_empty()
        {
            out.report(
                RuleId::AuthOnceExtraArgs,
                tc.env_path(i),
                "with TS_AUTH_ONCE=true, containerboot runs `tailscale up` only on first login; on restarts it runs `tailscale set` and TS_EXTRA_ARGS is not applied again, so later edits to it have no effect",
                "unset TS_AUTH_ONCE if TS_EXTRA_ARGS must apply on every start, or use settings containerboot re-applies (TS_ROUTES, TS_HOSTNAME)",
            );
        }
    }
}

/// `TS_AUTHKEY=file:PATH`: `tailscale up` reads PATH at the first login. The
/// official image holds no such file, so it must come from a volume.
fn auth_key_file(tc: &TailscaleContainer<'_>, out: &mut Findings<'_>) {
    let Some((i, path)) = ["TS_AUTHKEY", "TS_AUTH_KEY"]
        .iter()
        .find_map(|name| tc.env.literal(name))
        .and_then(|(i, v)| Some((i, v.strip_prefix("file:")?)))
    else {
        return;
    };
    let mounted = tc.container.volume_mounts.iter().flatten().any(|m| {
        let dir = m.mount_path.trim_end_matches('/');
        path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/')) || dir.is_empty()
    });
    if mounted {
        return;
    }
    let message = format!(
        "the auth key is read from {path}, but no volume of container `{}` is mounted there: `tailscale up` exits with \"open {path}: no such file or directory\" at the first login",
        tc.name()
    );
    let hint = "mount the Secret holding the key (a secret volume) at that directory, or use valueFrom.secretKeyRef";
    let image = tc.container.image.as_deref().unwrap_or_default();
    // A derived image may carry the file; the official ones do not.
    if DEFAULT_IMAGES.contains(&image_repository(image)) {
        out.report(RuleId::AuthKeyFile, tc.env_path(i), message, hint);
    } else {
        out.report_uncertain(RuleId::AuthKeyFile, tc.env_path(i), message, hint);
    }
}
