//! Per-workload egress settings: config defaults, overridden by namespace
//! annotations, overridden by pod (template) annotations. Every value is
//! validated; a bad one names the annotation and who set it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::Config;
pub use crate::mode::Mode;
use crate::rules::NamespaceFacts;

pub const AUTH_SECRET: &str = "tailguard.io/auth-secret";
pub const AUTH_SECRET_KEY: &str = "tailguard.io/auth-secret-key";
pub const EXIT_NODE: &str = "tailguard.io/exit-node";
pub const MODE: &str = "tailguard.io/mode";
pub const TAGS: &str = "tailguard.io/tags";
pub const ACCEPT_ROUTES: &str = "tailguard.io/accept-routes";
pub const IMAGE: &str = "tailguard.io/image";
pub const CPU_REQUEST: &str = "tailguard.io/cpu-request";
pub const CPU_LIMIT: &str = "tailguard.io/cpu-limit";
pub const MEMORY_REQUEST: &str = "tailguard.io/memory-request";
pub const MEMORY_LIMIT: &str = "tailguard.io/memory-limit";

/// The resolved settings for one pod's sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub image: String,
    pub auth_secret: String,
    pub auth_secret_key: String,
    pub mode: Mode,
    pub exit_node: Option<IpAddr>,
    pub tags: Vec<String>,
    pub accept_routes: bool,
    /// (resource, quantity) overrides: `requests.cpu`, `limits.memory`, ...
    pub resources: Vec<(&'static str, &'static str, String)>,
}

/// Where a setting came from, for error messages.
struct Source<'a> {
    annotations: &'a BTreeMap<String, String>,
    who: String,
}

/// A `tailguard.io/*` annotation tailguard cannot honour: the pod is refused
/// with this, rather than injected with settings it did not ask for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}=\"{value}\" on {who}: {why}")]
pub struct BadAnnotation {
    pub key: &'static str,
    pub value: String,
    /// `pod NAME` or `namespace NAME`.
    pub who: String,
    pub why: String,
}

/// Resolves and validates the settings.
pub fn resolve(
    config: &Config,
    namespace: &NamespaceFacts,
    namespace_name: &str,
    pod_annotations: &BTreeMap<String, String>,
    pod_name: &str,
) -> Result<Settings, BadAnnotation> {
    let empty = BTreeMap::new();
    let ns_annotations = match namespace {
        NamespaceFacts::Known(ns) => ns.metadata.annotations.as_ref().unwrap_or(&empty),
        _ => &empty,
    };
    // Pod first: it overrides the namespace.
    let sources = [
        Source {
            annotations: pod_annotations,
            who: format!("pod {pod_name}"),
        },
        Source {
            annotations: ns_annotations,
            who: format!("namespace {namespace_name}"),
        },
    ];
    let lookup = |key: &str| -> Option<(&str, &str)> {
        sources
            .iter()
            .find_map(|s| s.annotations.get(key).map(|v| (v.trim(), s.who.as_str())))
    };
    let bad = |key: &'static str, value: &str, who: &str, why: &str| BadAnnotation {
        key,
        value: value.to_owned(),
        who: who.to_owned(),
        why: why.to_owned(),
    };
    let d = &config.injection;

    let image = match lookup(IMAGE) {
        Some((v, who)) if !config.sidecar_image_allowed(v) => {
            return Err(bad(
                IMAGE,
                v,
                who,
                &format!(
                    "image not allowed by tailguard's config (injection.allowedImages: {})",
                    d.allowed_images.join(", ")
                ),
            ));
        }
        Some((v, _)) => v.to_owned(),
        None => d.image.clone(),
    };
    let auth_secret = match lookup(AUTH_SECRET) {
        Some((v, who)) if !is_dns_subdomain(v) => {
            return Err(bad(AUTH_SECRET, v, who, "not a valid Secret name"));
        }
        Some((v, _)) => v.to_owned(),
        None => d.auth_secret.clone(),
    };
    let auth_secret_key = match lookup(AUTH_SECRET_KEY) {
        Some((v, who)) if !is_secret_key(v) => {
            return Err(bad(
                AUTH_SECRET_KEY,
                v,
                who,
                "not a valid Secret key (letters, digits, -, _, .)",
            ));
        }
        Some((v, _)) => v.to_owned(),
        None => d.auth_secret_key.clone(),
    };
    let mode = match lookup(MODE) {
        None => d.mode,
        Some((v, who)) => Mode::from_name(v).ok_or_else(|| bad(MODE, v, who, "mode must be `userspace` or `tun`"))?,
    };
    let exit_node = match lookup(EXIT_NODE) {
        Some(("", _)) => None,
        Some((v, who)) => Some(v.parse::<IpAddr>().map_err(|_| {
            bad(
                EXIT_NODE,
                v,
                who,
                "the exit node must be its tailnet IP address (e.g. 100.64.0.1): a name is refused while Tailscale starts",
            )
        })?),
        None => d.exit_node.as_deref().and_then(|e| e.parse().ok()),
    };
    let tags = match lookup(TAGS) {
        Some((v, who)) => {
            let tags: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            if let Some(t) = tags.iter().find(|t| !is_tag(t)) {
                return Err(bad(
                    TAGS,
                    v,
                    who,
                    &format!("`{t}` is not a tag (tag:name, letters, digits and dashes)"),
                ));
            }
            tags
        }
        None => d.tags.clone(),
    };
    let accept_routes = match lookup(ACCEPT_ROUTES) {
        Some(("true", _)) => true,
        Some(("false", _)) => false,
        Some((v, who)) => return Err(bad(ACCEPT_ROUTES, v, who, "must be `true` or `false`")),
        None => d.accept_routes,
    };
    let mut resources = Vec::new();
    for (key, section, resource) in [
        (CPU_REQUEST, "requests", "cpu"),
        (CPU_LIMIT, "limits", "cpu"),
        (MEMORY_REQUEST, "requests", "memory"),
        (MEMORY_LIMIT, "limits", "memory"),
    ] {
        if let Some((v, who)) = lookup(key) {
            if !is_quantity(v) {
                return Err(bad(key, v, who, "not a Kubernetes quantity (e.g. 100m, 64Mi)"));
            }
            resources.push((section, resource, v.to_owned()));
        }
    }
    Ok(Settings {
        image,
        auth_secret,
        auth_secret_key,
        mode,
        exit_node,
        tags,
        accept_routes,
        resources,
    })
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_secret_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn is_tag(t: &str) -> bool {
    t.strip_prefix("tag:").is_some_and(|name| {
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && name.as_bytes()[0].is_ascii_alphabetic()
    })
}

/// A plain Kubernetes quantity: a decimal number with an optional SI or binary suffix.
fn is_quantity(s: &str) -> bool {
    let digits = s.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
    let (number, suffix) = s.split_at(digits);
    !number.is_empty()
        && number.parse::<f64>().is_ok_and(|n| n > 0.0)
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]
        .contains(&suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators() {
        assert!(
            is_quantity("100m")
                && is_quantity("64Mi")
                && is_quantity("1.5")
                && !is_quantity("64MB")
                && !is_quantity("0")
        );
        assert!(is_tag("tag:egress") && !is_tag("egress") && !is_tag("tag:") && !is_tag("tag:a_b"));
        assert!(is_dns_subdomain("tailscale-auth") && !is_dns_subdomain("Tailscale") && !is_dns_subdomain("a..b"));
    }
}
