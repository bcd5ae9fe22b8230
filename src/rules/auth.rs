//! Auth keys: `literal-auth-key`, `auth-key-file`, `no-auth-key` and
//! `auth-once-extra-args`.
//! Messages never repeat a key's value.

use super::{Context, Findings, RuleId};
use crate::config::DEFAULT_IMAGES;
use crate::image::image_repository;
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
        no_auth_key(tc, out);
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

/// No way to log in without a person: no auth key, no OAuth client, no
/// tailscaled config file. Only a warning: the state (a Secret's `authkey`, or
/// a node logged in once by hand) may hold what the manifest does not.
fn no_auth_key(tc: &TailscaleContainer<'_>, out: &mut Findings<'_>) {
    let sources = [
        "TS_AUTHKEY",
        "TS_AUTH_KEY",
        "TS_CLIENT_ID",
        "TS_CLIENT_SECRET",
        "TS_ID_TOKEN",
        "TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR",
    ];
    if tc.env.has_env_from || sources.iter().any(|s| tc.env.is_set(s)) {
        return;
    }
    let up = tc.up_args();
    if up
        .as_ref()
        .is_some_and(|up| SECRET_FLAGS.iter().any(|f| up.value(f).is_some()))
    {
        return;
    }
    let state = match tc.env.literal("TS_KUBE_SECRET") {
        Some((_, "")) => "a node logged in before, kept in TS_STATE_DIR".to_owned(),
        Some((_, name)) => format!("an `authkey` entry in its state Secret `{name}`"),
        None if !tc.env.is_set("TS_KUBE_SECRET") => "an `authkey` entry in its state Secret `tailscale`".to_owned(),
        None => "an `authkey` entry in its state Secret".to_owned(),
    };
    out.report(
        RuleId::NoAuthKey,
        format!("{}.env", tc.path),
        format!(
            "container `{}` gets no auth key (TS_AUTHKEY, OAuth client or --auth-key): unless {state} provides one, `tailscale up` waits for someone to open the login URL it logs, /healthz answers 503, and containerboot gives up after 60 s and restarts",
            tc.name()
        ),
        "set TS_AUTHKEY from a Secret (valueFrom.secretKeyRef), or TS_CLIENT_ID/TS_CLIENT_SECRET for an OAuth client",
    );
}
