//! The policy configuration: one type, read from YAML, shared by the webhook and the CLI.
//!
//! ```yaml
//! images:                       # which containers are Tailscale containers
//!   - tailscale/tailscale
//!   - registry.example.com/mirror/tailscale*
//! rules:                        # per-rule severity: deny | warn | off
//!   image-tag: off
//!   resources: deny
//! exemptions:                   # namespaces where some (or all) rules do not run
//!   - namespace: sandbox
//!     rules: [resources]
//!   - namespace: legacy-*       # trailing * matches a prefix; no rules = every rule
//! runtime: containerd           # containerd | cri-o | unknown (default)
//! enforcement: deny             # deny (default) | warn | audit; a namespace overrides it
//!                               # with the annotation tailguard.io/enforcement
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::catalog::{Level, RuleId};
use crate::image::{NamePattern, image_repository};
use crate::memo::Memo;
use crate::mode::Mode;

/// Images recognised as Tailscale when the config names none. Registry hosts
/// `docker.io/` and `index.docker.io/` are normalised away before matching.
pub const DEFAULT_IMAGES: &[&str] = &["tailscale/tailscale", "ghcr.io/tailscale/tailscale"];

/// Namespace annotation overriding [`Config::enforcement`] for that namespace.
pub const ENFORCEMENT_ANNOTATION: &str = "tailguard.io/enforcement";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config{}: {message}", location.as_deref().map(|l| format!(" ({l})")).unwrap_or_default())]
    Invalid { location: Option<String>, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    images: Option<Vec<String>>,
    #[serde(default)]
    rules: BTreeMap<String, Level>,
    #[serde(default)]
    exemptions: Vec<ExemptionFile>,
    #[serde(default)]
    injection: InjectionConfig,
    #[serde(default)]
    runtime: ContainerRuntime,
    #[serde(default)]
    enforcement: Enforcement,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExemptionFile {
    namespace: String,
    #[serde(default)]
    rules: Vec<String>,
}

/// A parsed, validated policy. Cheap to share (`Arc<Config>`); nothing in it is
/// rebuilt per request.
#[derive(Debug, Clone)]
pub struct Config {
    images: Vec<NamePattern>,
    levels: [Level; RuleId::ALL.len()],
    exemptions: Vec<Exemption>,
    pub injection: InjectionConfig,
    allowed_sidecar_images: Vec<NamePattern>,
    /// The cluster's container runtime: some verdicts depend on what it grants.
    pub runtime: ContainerRuntime,
    /// What the webhook does with deny findings, unless the namespace says otherwise.
    pub enforcement: Enforcement,
    /// What reviews compute from this config alone (the rendered sidecar).
    pub memo: Memo,
}

/// What `/validate` does with a rule's deny finding, so a policy can be rolled
/// out gradually (audit, then warn, then deny) without breaking deployments:
/// `deny` refuses the object, `warn` admits it with a warning saying it would
/// be refused, `audit` admits it silently (logs and metrics only).
///
/// Ordered from the least to the most strict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    Audit,
    Warn,
    #[default]
    Deny,
}

impl Enforcement {
    pub const ALL: [Enforcement; 3] = [Enforcement::Audit, Enforcement::Warn, Enforcement::Deny];

    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Audit => "audit",
            Enforcement::Warn => "warn",
            Enforcement::Deny => "deny",
        }
    }

    /// The mode named `name` exactly as the config spells it (`deny`, `warn`, `audit`).
    pub fn from_name(name: &str) -> Option<Enforcement> {
        Enforcement::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The container runtime of the cluster's nodes. What a container may do
/// without asking (its default capabilities) differs: containerd grants
/// `MKNOD`, CRI-O does not. `Unknown` never turns a runtime-dependent guess
/// into a deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerRuntime {
    Containerd,
    CriO,
    #[default]
    Unknown,
}

impl ContainerRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRuntime::Containerd => "containerd",
            ContainerRuntime::CriO => "cri-o",
            ContainerRuntime::Unknown => "unknown",
        }
    }

    /// The capabilities the runtime gives a container by default (without the
    /// `CAP_` prefix), or `None` when the runtime is unknown.
    pub fn default_capabilities(self) -> Option<&'static [&'static str]> {
        match self {
            ContainerRuntime::Containerd => Some(&[
                "CHOWN",
                "DAC_OVERRIDE",
                "FSETID",
                "FOWNER",
                "MKNOD",
                "NET_RAW",
                "SETGID",
                "SETUID",
                "SETFCAP",
                "SETPCAP",
                "NET_BIND_SERVICE",
                "SYS_CHROOT",
                "KILL",
                "AUDIT_WRITE",
            ]),
            ContainerRuntime::CriO => Some(&[
                "CHOWN",
                "DAC_OVERRIDE",
                "FSETID",
                "FOWNER",
                "SETGID",
                "SETUID",
                "SETPCAP",
                "NET_BIND_SERVICE",
                "KILL",
            ]),
            ContainerRuntime::Unknown => None,
        }
    }
}

/// Defaults for injected egress sidecars; namespaces and pods override the
/// per-workload ones with `tailguard.io/*` annotations.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct InjectionConfig {
    /// Sidecar image.
    pub image: String,
    /// Repositories a `tailguard.io/image` annotation may name (trailing * = prefix).
    pub allowed_images: Vec<String>,
    /// Secret holding the auth key, and its key.
    pub auth_secret: String,
    pub auth_secret_key: String,
    /// `userspace` (HTTP/SOCKS5 proxies, no privileges) or `tun` (NET_ADMIN, TUN device).
    pub mode: Mode,
    /// Exit node (a tailnet IP) for egress, if any.
    pub exit_node: Option<String>,
    pub tags: Vec<String>,
    pub accept_routes: bool,
    /// An init container with restartPolicy Always (Kubernetes >= 1.29); false
    /// appends a plain container for older clusters.
    pub native_sidecar: bool,
    pub http_proxy_port: u16,
    pub socks5_port: u16,
    /// Extra NO_PROXY entries: the cluster's pod and service CIDRs, internal domains.
    pub no_proxy: Vec<String>,
    pub cluster_domain: String,
    /// Namespaces never injected (the webhook's own is added by `serve`).
    pub excluded_namespaces: Vec<String>,
    pub resources: k8s_openapi::api::core::v1::ResourceRequirements,
    /// UID for the userspace sidecar (non-root).
    pub run_as_user: i64,
}

impl Default for InjectionConfig {
    fn default() -> Self {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let q = |s: &str| Quantity(s.to_owned());
        InjectionConfig {
            image: "tailscale/tailscale:v1.96.4".into(),
            allowed_images: DEFAULT_IMAGES.iter().map(|s| (*s).to_owned()).collect(),
            auth_secret: "tailscale-auth".into(),
            auth_secret_key: "authkey".into(),
            mode: Mode::Userspace,
            exit_node: None,
            tags: Vec::new(),
            accept_routes: false,
            native_sidecar: true,
            http_proxy_port: 1055,
            socks5_port: 1080,
            no_proxy: Vec::new(),
            cluster_domain: "cluster.local".into(),
            excluded_namespaces: vec!["kube-system".into()],
            resources: k8s_openapi::api::core::v1::ResourceRequirements {
                requests: Some([("cpu".to_owned(), q("10m")), ("memory".to_owned(), q("32Mi"))].into()),
                limits: Some([("memory".to_owned(), q("128Mi"))].into()),
                ..Default::default()
            },
            run_as_user: 1000,
        }
    }
}

#[derive(Debug, Clone)]
struct Exemption {
    namespace: NamePattern,
    /// Empty means every rule.
    rules: Vec<RuleId>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            images: DEFAULT_IMAGES.iter().map(|s| NamePattern::parse(s)).collect(),
            levels: RuleId::ALL.map(|r| r.default_level()),
            exemptions: Vec::new(),
            allowed_sidecar_images: DEFAULT_IMAGES.iter().map(|s| NamePattern::parse(s)).collect(),
            injection: InjectionConfig::default(),
            runtime: ContainerRuntime::Unknown,
            enforcement: Enforcement::Deny,
            memo: Memo::default(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_file_text(path, &text)
    }

    /// [`Config::from_yaml`] of `text` as read from `path`: errors are located
    /// at `path:line N` (or `path`), as [`Config::load`] reports them.
    pub fn from_file_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text).map_err(|e| match e {
            ConfigError::Invalid { location, message } => ConfigError::Invalid {
                location: Some(match location {
                    Some(l) => format!("{}:{l}", path.display()),
                    None => path.display().to_string(),
                }),
                message,
            },
            other => other,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            serde_saphyr::from_str_with_options(text, crate::manifest::read_options(text.len())).map_err(|e| {
                let e = crate::manifest::YamlError::from(e);
                // serde-saphyr does not name the field; the line does.
                let field = e.line.and_then(|l| key_path_at(text, l));
                ConfigError::Invalid {
                    location: e.line.map(|l| format!("line {l}")),
                    message: match field {
                        Some(field) => format!("{field}: {}", e.message),
                        None => e.message,
                    },
                }
            })?
        };
        let mut config = Config::default();
        if let Some(images) = file.images {
            if images.iter().any(|i| i.trim().is_empty()) {
                return Err(invalid("images: an image pattern is empty"));
            }
            config.images = images.iter().map(|s| NamePattern::parse(s.trim())).collect();
        }
        for (name, level) in file.rules {
            let rule = rule_by_name(&name, "rules")?;
            config.levels[rule as usize] = level;
        }
        config.allowed_sidecar_images = file
            .injection
            .allowed_images
            .iter()
            .map(|s| NamePattern::parse(s))
            .collect();
        config.injection = file.injection;
        config.runtime = file.runtime;
        config.enforcement = file.enforcement;
        config.validate_injection()?;
        for e in file.exemptions {
            if e.namespace.is_empty() {
                return Err(invalid("exemptions: namespace must not be empty"));
            }
            let rules = e
                .rules
                .iter()
                .map(|r| rule_by_name(r, "exemptions"))
                .collect::<Result<Vec<_>, _>>()?;
            config.exemptions.push(Exemption {
                namespace: NamePattern::parse(&e.namespace),
                rules,
            });
        }
        Ok(config)
    }

    /// Whether `image` (as written in a container spec) is a Tailscale image.
    pub fn is_tailscale_image(&self, image: &str) -> bool {
        let repo = image_repository(image);
        self.images.iter().any(|p| p.matches(repo))
    }

    /// Whether an injected sidecar may use `image` (an annotation can name only allowed repositories).
    pub fn sidecar_image_allowed(&self, image: &str) -> bool {
        let repo = image_repository(image);
        self.allowed_sidecar_images.iter().any(|p| p.matches(repo))
    }

    fn validate_injection(&self) -> Result<(), ConfigError> {
        let i = &self.injection;
        let problem = if i.image.trim().is_empty() {
            Some("injection.image must not be empty".to_owned())
        } else if let Some(e) = i
            .exit_node
            .as_deref()
            .filter(|e| e.parse::<std::net::IpAddr>().is_err())
        {
            Some(format!("injection.exitNode must be a tailnet IP address, not `{e}`"))
        } else if let Some(t) = i.tags.iter().find(|t| !t.starts_with("tag:") || t.len() < 5) {
            Some(format!("injection.tags: `{t}` is not a tag (tag:name)"))
        } else if i.http_proxy_port == 0 || i.socks5_port == 0 || i.http_proxy_port == i.socks5_port {
            Some("injection.httpProxyPort and socks5Port must be distinct non-zero ports".to_owned())
        } else {
            None
        };
        match problem {
            Some(message) => Err(ConfigError::Invalid {
                location: None,
                message,
            }),
            None => Ok(()),
        }
    }

    pub fn level(&self, rule: RuleId) -> Level {
        self.levels[rule as usize]
    }

    /// Whether the config exempts `namespace` from `rule`.
    pub fn exempt(&self, namespace: &str, rule: RuleId) -> bool {
        self.exemptions
            .iter()
            .any(|e| e.namespace.matches(namespace) && (e.rules.is_empty() || e.rules.contains(&rule)))
    }
}

/// The dotted key path (`rules.privileged`) of the block mapping entry on
/// 1-based `line`, from the keys of the lines above it with less indentation.
fn key_path_at(text: &str, line: usize) -> Option<String> {
    let mut path = Vec::new();
    let mut parent_indent = usize::MAX;
    for row in text.lines().take(line).collect::<Vec<_>>().into_iter().rev() {
        let mut entry = row.trim_start();
        let mut indent = row.len() - entry.len();
        // A sequence item: its entry starts past the dash.
        while let Some(rest) = entry.strip_prefix('-').filter(|r| r.starts_with([' ', '\t'])) {
            let item = rest.trim_start();
            indent += entry.len() - item.len();
            entry = item;
        }
        if indent >= parent_indent || entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        parent_indent = indent;
        let key = entry
            .split_once(": ")
            .map(|(key, _)| key)
            .or_else(|| entry.strip_suffix(':'))
            .map(|key| key.trim().trim_matches(['"', '\'']))
            .filter(|key| !key.is_empty() && !key.starts_with(['{', '[', '-']));
        match key {
            Some(key) => path.push(key),
            // The line with the error holds no key of its own (a sequence item).
            None if path.is_empty() => {}
            None => return None,
        }
        if indent == 0 {
            break;
        }
    }
    (!path.is_empty()).then(|| path.into_iter().rev().collect::<Vec<_>>().join("."))
}

fn invalid(message: &str) -> ConfigError {
    ConfigError::Invalid {
        location: None,
        message: message.to_owned(),
    }
}

fn rule_by_name(name: &str, section: &str) -> Result<RuleId, ConfigError> {
    RuleId::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = RuleId::ALL.iter().map(|r| r.name()).collect();
        ConfigError::Invalid {
            location: None,
            message: format!("{section}: unknown rule `{name}` (known rules: {})", known.join(", ")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_recognises_official_images_only() {
        let c = Config::default();
        assert!(c.is_tailscale_image("tailscale/tailscale:stable"));
        assert!(c.is_tailscale_image("ghcr.io/tailscale/tailscale:v1.96.4"));
        assert!(c.is_tailscale_image("index.docker.io/tailscale/tailscale"));
        assert!(!c.is_tailscale_image("nginx:1.27"));
        assert!(!c.is_tailscale_image("example.com/tailscale/tailscale-exporter"));
    }

    #[test]
    fn config_file_sets_levels_images_and_exemptions() {
        let c = Config::from_yaml(
            "images: [mirror.local/tail*]\nrules:\n  image-tag: off\n  resources: deny\nexemptions:\n  - namespace: legacy-*\n    rules: [privileged]\n  - namespace: sandbox\n",
        )
        .expect("valid config");
        assert!(c.is_tailscale_image("mirror.local/tailscale:v1"));
        assert!(!c.is_tailscale_image("tailscale/tailscale"));
        assert_eq!(c.level(RuleId::ImageTag), Level::Off);
        assert_eq!(c.level(RuleId::Resources), Level::Deny);
        assert_eq!(c.level(RuleId::Privileged), Level::Deny);
        assert!(c.exempt("legacy-a", RuleId::Privileged));
        assert!(!c.exempt("legacy-a", RuleId::HostNetwork));
        assert!(c.exempt("sandbox", RuleId::HostNetwork));
        assert!(!c.exempt("prod", RuleId::Privileged));
    }

    #[test]
    fn config_errors_name_the_problem() {
        let e = Config::from_yaml("rules:\n  no-such-rule: deny\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown rule `no-such-rule`"), "{e}");
        let e = Config::from_yaml("rules:\n  privileged: maybe\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::from_yaml("imagez: []\n").unwrap_err().to_string();
        assert!(e.contains("imagez"), "{e}");
        let e = Config::from_yaml("injection:\n  mode: tun\n  httpProxyPort: many\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("(line 3): injection.httpProxyPort: "), "{e}");
        assert_eq!(
            key_path_at("exemptions:\n  - namespace: a\n    rules:\n      - [x\n", 4).as_deref(),
            Some("exemptions.rules")
        );
    }

    #[test]
    fn enforcement_defaults_to_deny_and_rejects_unknown_modes() {
        assert_eq!(Config::default().enforcement, Enforcement::Deny);
        assert_eq!(
            Config::from_yaml("images: [tailscale/tailscale]\n")
                .expect("valid config")
                .enforcement,
            Enforcement::Deny
        );
        for mode in Enforcement::ALL {
            let c = Config::from_yaml(&format!("enforcement: {mode}\n")).expect("valid config");
            assert_eq!(c.enforcement, mode);
            assert_eq!(Enforcement::from_name(mode.as_str()), Some(mode));
        }
        let e = Config::from_yaml("rules:\n  resources: deny\nenforcement: maybe\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("enforcement") && e.contains("maybe"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(Enforcement::Audit < Enforcement::Warn && Enforcement::Warn < Enforcement::Deny);
        assert_eq!(Enforcement::from_name("Deny"), None);
    }
}
