//! `containerboot-settings`: the combinations of settings containerboot
//! refuses before it starts anything (cmd/containerboot/settings.go,
//! `validate`, of the pinned release). Each is a certain exit at start, printed
//! as `invalid configuration: invalid configuration: <reason>`. Each check came
//! with a release; an image tagged older than that release does not run it.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Context, Findings, RuleId};
use crate::tailscale::{Setting, TailscaleContainer};

/// What a setting is, as far as a check needs: set to a non-empty value or not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Given {
    No,
    Yes,
    /// From a Secret, ConfigMap or fieldRef: present, value unknown.
    Maybe,
}

impl Given {
    fn and(self, other: Given) -> Given {
        match (self, other) {
            (Given::No, _) | (_, Given::No) => Given::No,
            (Given::Yes, Given::Yes) => Given::Yes,
            _ => Given::Maybe,
        }
    }
}

/// One of containerboot's start-up checks.
struct Check {
    given: Given,
    /// The release that introduced it.
    since: (u32, u32),
    /// What containerboot prints.
    reason: &'static str,
    /// The settings it is about, the first that is set names the path.
    vars: &'static [&'static str],
    hint: &'static str,
}

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    if !out.enabled(RuleId::ContainerbootSettings) {
        return;
    }
    for tc in &cx.containers {
        validate(tc, out);
    }
}

fn validate(tc: &TailscaleContainer<'_>, out: &mut Findings<'_>) {
    let given = |name: &str| match tc.env.setting(name) {
        Setting::Unset => Given::No,
        Setting::Known(_, "") => Given::No,
        Setting::Known(..) => Given::Yes,
        Setting::Unknown(_) => Given::Maybe,
    };
    // A boolean read with defaultBool: unparseable text means the default.
    let flag = |name: &str, default: bool| match tc.env.setting(name).bool_or(default) {
        Some(true) => Given::Yes,
        Some(false) => Given::No,
        None => Given::Maybe,
    };
    let userspace = flag("TS_USERSPACE", true);
    let auth_key = match tc.env.setting("TS_AUTHKEY") {
        Setting::Unset => given("TS_AUTH_KEY"),
        _ => given("TS_AUTHKEY"),
    };
    let oauth = [
        given("TS_CLIENT_ID"),
        given("TS_CLIENT_SECRET"),
        given("TS_ID_TOKEN"),
        given("TS_AUDIENCE"),
    ]
    .into_iter()
    .fold(Given::No, |acc, g| match (acc, g) {
        (Given::Yes, _) | (_, Given::Yes) => Given::Yes,
        (Given::Maybe, _) | (_, Given::Maybe) => Given::Maybe,
        _ => Given::No,
    });
    let not = |g: Given| match g {
        Given::Yes => Given::No,
        Given::No => Given::Yes,
        Given::Maybe => Given::Maybe,
    };
    let ingress_proxy = flag("EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS", false);
    // In Kubernetes (KUBERNETES_SERVICE_HOST is always set there) the state
    // Secret defaults to `tailscale`; only an explicit "" turns it off.
    let kube_secret = match tc.env.setting("TS_KUBE_SECRET") {
        Setting::Unset => Given::Yes,
        _ => given("TS_KUBE_SECRET"),
    };
    let versioned_config = given("TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR");
    let conflicts_with_versioned_config = [
        "TS_HOSTNAME",
        "TS_EXTRA_ARGS",
        "TS_AUTHKEY",
        "TS_CLIENT_ID",
        "TS_CLIENT_SECRET",
        "TS_ID_TOKEN",
        "TS_AUDIENCE",
    ]
    .into_iter()
    .map(given)
    .chain([
        // TS_ROUTES counts when set at all, even to "".
        match tc.env.setting("TS_ROUTES") {
            Setting::Unset => Given::No,
            Setting::Known(..) => Given::Yes,
            Setting::Unknown(_) => Given::Maybe,
        },
        // TS_ACCEPT_DNS counts when it parses as a boolean.
        match tc.env.setting("TS_ACCEPT_DNS") {
            Setting::Unset => Given::No,
            Setting::Known(_, v) if crate::tailscale::parse_go_bool(v).is_some() => Given::Yes,
            Setting::Known(..) => Given::No,
            Setting::Unknown(_) => Given::Maybe,
        },
    ])
    .fold(Given::No, |acc, g| match (acc, g) {
        (Given::Yes, _) | (_, Given::Yes) => Given::Yes,
        (Given::Maybe, _) | (_, Given::Maybe) => Given::Maybe,
        _ => Given::No,
    });

    // In validate's order (containerboot reports the first only), each with the
    // release that introduced it (read from containerboot's source at v1.60,
    // 1.76, 1.78, 1.80, 1.90, 1.94 and 1.96).
    let checks = [
        Check {
            given: given("TS_DEST_IP").and(userspace),
            since: (1, 60),
            reason: "TS_DEST_IP is not supported with TS_USERSPACE",
            vars: &["TS_DEST_IP"],
            hint: KERNEL,
        },
        Check {
            given: given("TS_EXPERIMENTAL_DEST_DNS_NAME").and(userspace),
            since: (1, 76),
            reason: "TS_EXPERIMENTAL_DEST_DNS_NAME is not supported with TS_USERSPACE",
            vars: &["TS_EXPERIMENTAL_DEST_DNS_NAME"],
            hint: KERNEL,
        },
        Check {
            given: given("TS_EXPERIMENTAL_DEST_DNS_NAME").and(given("TS_DEST_IP")),
            since: (1, 76),
            reason: "TS_EXPERIMENTAL_DEST_DNS_NAME and TS_DEST_IP cannot both be set",
            vars: &["TS_EXPERIMENTAL_DEST_DNS_NAME"],
            hint: "set only one of them",
        },
        Check {
            given: given("TS_TAILNET_TARGET_IP").and(userspace),
            since: (1, 60),
            reason: "TS_TAILNET_TARGET_IP is not supported with TS_USERSPACE",
            vars: &["TS_TAILNET_TARGET_IP"],
            hint: KERNEL,
        },
        Check {
            given: given("TS_TAILNET_TARGET_FQDN").and(userspace),
            since: (1, 60),
            reason: "TS_TAILNET_TARGET_FQDN is not supported with TS_USERSPACE",
            vars: &["TS_TAILNET_TARGET_FQDN"],
            hint: KERNEL,
        },
        Check {
            given: given("TS_TAILNET_TARGET_FQDN").and(given("TS_TAILNET_TARGET_IP")),
            since: (1, 60),
            reason: "Both TS_TAILNET_TARGET_IP and TS_TAILNET_FQDN cannot be set",
            vars: &["TS_TAILNET_TARGET_FQDN"],
            hint: "set only one of them",
        },
        Check {
            given: versioned_config.and(conflicts_with_versioned_config),
            since: (1, 76),
            reason: "TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR cannot be set in combination with TS_HOSTNAME, TS_EXTRA_ARGS, TS_AUTHKEY, TS_ROUTES, TS_ACCEPT_DNS, TS_CLIENT_ID, TS_CLIENT_SECRET, TS_ID_TOKEN, TS_AUDIENCE.",
            vars: &["TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR"],
            hint: "put those settings in the tailscaled config file, or drop TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR",
        },
        Check {
            given: given("TS_ID_TOKEN").and(not(given("TS_CLIENT_ID"))),
            since: (1, 94),
            reason: "TS_ID_TOKEN is set but TS_CLIENT_ID is not set",
            vars: &["TS_ID_TOKEN"],
            hint: "set TS_CLIENT_ID too",
        },
        Check {
            given: given("TS_AUDIENCE").and(not(given("TS_CLIENT_ID"))),
            since: (1, 94),
            reason: "TS_AUDIENCE is set but TS_CLIENT_ID is not set",
            vars: &["TS_AUDIENCE"],
            hint: "set TS_CLIENT_ID too",
        },
        Check {
            given: given("TS_ID_TOKEN").and(given("TS_CLIENT_SECRET")),
            since: (1, 94),
            reason: "TS_ID_TOKEN and TS_CLIENT_SECRET cannot both be set",
            vars: &["TS_ID_TOKEN"],
            hint: "set only one of them",
        },
        Check {
            given: given("TS_ID_TOKEN").and(given("TS_AUDIENCE")),
            since: (1, 94),
            reason: "TS_ID_TOKEN and TS_AUDIENCE cannot both be set",
            vars: &["TS_ID_TOKEN"],
            hint: "set only one of them",
        },
        Check {
            given: given("TS_AUDIENCE").and(given("TS_CLIENT_SECRET")),
            since: (1, 94),
            reason: "TS_AUDIENCE and TS_CLIENT_SECRET cannot both be set",
            vars: &["TS_AUDIENCE"],
            hint: "set only one of them",
        },
        Check {
            given: auth_key.and(oauth),
            since: (1, 94),
            reason: "TS_AUTHKEY cannot be used with TS_CLIENT_ID, TS_CLIENT_SECRET, TS_ID_TOKEN, or TS_AUDIENCE.",
            vars: &["TS_AUTHKEY", "TS_AUTH_KEY"],
            hint: "authenticate with an auth key or with OAuth/workload identity, not both",
        },
        Check {
            given: ingress_proxy.and(userspace),
            since: (1, 60),
            reason: "EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS is not supported in userspace mode",
            vars: &["EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS"],
            hint: KERNEL,
        },
        Check {
            given: ingress_proxy.and(not(given("TS_SERVE_CONFIG"))),
            since: (1, 60),
            reason: "EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS is set but this is not a cluster ingress proxy",
            vars: &["EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS"],
            hint: "set TS_SERVE_CONFIG, or drop the setting",
        },
        Check {
            given: ingress_proxy.and(not(given("POD_IP"))),
            since: (1, 60),
            reason: "EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS is set but POD_IP is not set",
            vars: &["EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS"],
            hint: "set POD_IP from fieldRef status.podIP",
        },
        Check {
            given: flag("TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS", false).and(userspace),
            since: (1, 76),
            reason: "TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS is not supported in userspace mode",
            vars: &["TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS"],
            hint: KERNEL,
        },
        Check {
            given: flag("TS_ENABLE_HEALTH_CHECK", false).and(given("TS_HEALTHCHECK_ADDR_PORT")),
            since: (1, 78),
            reason: "TS_HEALTHCHECK_ADDR_PORT is deprecated and will be removed in 1.82.0, use TS_ENABLE_HEALTH_CHECK and optionally TS_LOCAL_ADDR_PORT",
            vars: &["TS_HEALTHCHECK_ADDR_PORT"],
            hint: "drop TS_HEALTHCHECK_ADDR_PORT; TS_LOCAL_ADDR_PORT sets where /healthz is served",
        },
    ];
    // A tag older than the check's release: that containerboot lacks it.
    let runs = |since: (u32, u32)| tc.version().is_none_or(|v| v >= since);
    for c in checks {
        if c.given != Given::No && runs(c.since) {
            refuse(tc, c.given, c.vars, c.reason.to_owned(), c.hint, out);
        }
    }
    // Address parsing came with TS_LOCAL_ADDR_PORT (1.78).
    let parses_addresses = tc.version().is_none_or(|v| v >= (1, 78));
    for (name, needed) in [
        ("TS_HEALTHCHECK_ADDR_PORT", Given::Yes),
        (
            "TS_LOCAL_ADDR_PORT",
            match (
                flag("TS_ENABLE_HEALTH_CHECK", false),
                flag("TS_ENABLE_METRICS", false),
                given("TS_EGRESS_PROXIES_CONFIG_PATH"),
            ) {
                (Given::Yes, _, _) | (_, Given::Yes, _) | (_, _, Given::Yes) => Given::Yes,
                (Given::No, Given::No, Given::No) => Given::No,
                _ => Given::Maybe,
            },
        ),
        ("TS_DEBUG_ADDR_PORT", Given::Yes),
    ] {
        let Setting::Known(_, value) = tc.env.setting(name) else {
            continue;
        };
        // Empty means off (TS_LOCAL_ADDR_PORT="" serves nothing): not parsed.
        if needed == Given::No || value.is_empty() || !parses_addresses {
            continue;
        }
        if let Err(why) = parse_addr_port(value) {
            refuse(
                tc,
                needed,
                &[name],
                format!("error parsing {name} value \"{value}\": {why}"),
                "write it as IP:port, e.g. [::]:9002 or 0.0.0.0:9002 (no host names, IPv6 in brackets)",
                out,
            );
        }
    }
    for (name, release) in [
        ("TS_EGRESS_PROXIES_CONFIG_PATH", (1, 80)),
        ("TS_INGRESS_PROXIES_CONFIG_PATH", (1, 90)),
    ] {
        let g = given(name).and(not(kube_secret));
        if g != Given::No && tc.version().is_none_or(|v| v >= release) {
            refuse(
                tc,
                g,
                &[name],
                format!("{name} is only supported for Tailscale running on Kubernetes"),
                "keep state in a Secret (TS_KUBE_SECRET), which these proxies need",
                out,
            );
        }
    }
}

const KERNEL: &str = "set TS_USERSPACE=\"false\" (kernel mode, with NET_ADMIN and the TUN device), or drop the setting";

fn refuse(
    tc: &TailscaleContainer<'_>,
    given: Given,
    vars: &[&str],
    reason: String,
    hint: &str,
    out: &mut Findings<'_>,
) {
    let path = vars
        .iter()
        .find_map(|v| tc.env.get(v))
        .map_or_else(|| format!("{}.env", tc.path), |(i, _)| tc.env_path(i));
    let message =
        format!("containerboot refuses these settings and exits at start: \"invalid configuration: {reason}\"");
    if given == Given::Yes {
        out.report(RuleId::ContainerbootSettings, path, message, hint);
    } else {
        out.report_uncertain(
            RuleId::ContainerbootSettings,
            path,
            format!("{message}, if the values that come from outside the manifest are not empty"),
            hint,
        );
    }
}

/// Go's `netip.ParseAddrPort`: an IP (IPv6 in brackets, with an optional
/// zone) and a decimal port; no host names.
fn parse_addr_port(s: &str) -> Result<(), String> {
    let (ip, port) = s.rsplit_once(':').ok_or("not an ip:port")?;
    if ip.is_empty() {
        return Err("no IP".into());
    }
    if port.is_empty() {
        return Err("no port".into());
    }
    let (ip, bracketed) = match ip.strip_prefix('[') {
        Some(rest) => (rest.strip_suffix(']').ok_or("missing ]")?, true),
        None => (ip, false),
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
        return Err(format!("invalid port \"{port}\" parsing \"{s}\""));
    }
    let unzoned = ip.split_once('%').map_or(ip, |(addr, _)| addr);
    if ip.parse::<Ipv4Addr>().is_ok() {
        return if bracketed {
            Err(format!(
                "invalid ip:port \"{s}\", square brackets can only be used with IPv6 addresses"
            ))
        } else {
            Ok(())
        };
    }
    if unzoned.parse::<Ipv6Addr>().is_ok() {
        return if bracketed {
            Ok(())
        } else {
            Err(format!(
                "invalid ip:port \"{s}\", IPv6 addresses must be surrounded by square brackets"
            ))
        };
    }
    Err(format!("ParseAddr(\"{ip}\"): unable to parse IP"))
}

#[cfg(test)]
mod tests {
    use super::parse_addr_port;

    #[test]
    fn addr_ports_parse_like_go_netip() {
        for ok in [
            "[::]:9002",
            "0.0.0.0:9002",
            "127.0.0.1:1",
            "[fe80::1%eth0]:80",
            "[::1]:65535",
        ] {
            assert!(parse_addr_port(ok).is_ok(), "{ok}");
        }
        for bad in [
            ":9002",
            "localhost:9002",
            "[::]",
            "::1:80",
            "[127.0.0.1]:80",
            "1.2.3.4:+80",
            "1.2.3.4:70000",
            "9002",
        ] {
            assert!(parse_addr_port(bad).is_err(), "{bad}");
        }
    }
}
