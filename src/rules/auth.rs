//! Auth keys: `literal-auth-key` and `auth-once-extra-args`. Messages never
//! repeat a key's value.

use super::{Context, Findings, RuleId};
use crate::tailscale::EnvValue;

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
