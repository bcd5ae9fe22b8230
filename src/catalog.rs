//! The rule catalog: every rule's stable name, default level and summary,
//! the levels a policy can set, and what a finding is. A leaf: the policy
//! (`config`) and the rules (`rules`) both read it, and it reads neither.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Deny,
    Warn,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Deny => "deny",
            Severity::Warn => "warn",
        })
    }
}

/// A rule's configured level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Deny,
    Warn,
    Off,
}

macro_rules! rules {
    ($($variant:ident => $name:literal, $level:ident, $summary:literal;)*) => {
        /// Every rule, with a stable kebab-case name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum RuleId { $($variant),* }

        impl RuleId {
            pub const ALL: [RuleId; [$($name),*].len()] = [$(RuleId::$variant),*];

            pub fn name(self) -> &'static str {
                match self { $(RuleId::$variant => $name),* }
            }

            pub fn default_level(self) -> Level {
                match self { $(RuleId::$variant => Level::$level),* }
            }

            /// One line on what the rule catches (README table, `--help`).
            pub fn summary(self) -> &'static str {
                match self { $(RuleId::$variant => $summary),* }
            }

            pub fn from_name(name: &str) -> Option<RuleId> {
                match name { $($name => Some(RuleId::$variant),)* _ => None }
            }
        }
    };
}

rules! {
    UnexpandedVariable => "unexpanded-variable", Deny, "`$(VAR)` that Kubernetes will not expand, or shell `$VAR` where no shell runs";
    Privileged => "privileged", Deny, "kernel-mode Tailscale without the privileges it needs";
    TunDevice => "tun-device", Deny, "kernel mode with no /dev/net/tun and no right to create it";
    ContainerbootSettings => "containerboot-settings", Deny, "settings containerboot refuses at start";
    ProbeShell => "probe-shell", Deny, "exec probe written as shell without a shell, or using tools the image lacks";
    ProbeHealthzDisabled => "probe-healthz-disabled", Deny, "httpGet /healthz probe that containerboot does not serve";
    ExitNodeHostname => "exit-node-hostname", Deny, "--exit-node given a name, refused while tailscale starts";
    ExitNodeSelf => "exit-node-self", Deny, "one node both advertises and uses an exit node";
    SharedStateSecret => "shared-state-secret", Deny, "several pods share one TS_KUBE_SECRET: one tailnet node for all";
    LiteralAuthKey => "literal-auth-key", Deny, "auth key written into the manifest";
    AuthKeyFile => "auth-key-file", Deny, "`file:` auth key at a path no volume provides";
    InvalidHostname => "invalid-hostname", Deny, "--hostname/TS_HOSTNAME that Tailscale rejects";
    UnknownUpFlag => "unknown-up-flag", Deny, "TS_EXTRA_ARGS token that `tailscale up` does not accept";
    PodSecurityLevel => "pod-security-level", Deny, "pods need more than the namespace's Pod Security level allows";
    HostNetwork => "host-network", Warn, "kernel-mode Tailscale DaemonSet without hostNetwork: it routes the pod, not the node";
    UserspaceDefault => "userspace-default", Warn, "TUN/privileges configured but TS_USERSPACE left at its default (true)";
    IpForwarding => "ip-forwarding", Warn, "subnet router, exit node or proxy that needs IP forwarding it cannot turn on";
    NoAuthKey => "no-auth-key", Warn, "no auth key: a person must log the pod in";
    AuthOnceExtraArgs => "auth-once-extra-args", Warn, "TS_AUTH_ONCE=true: TS_EXTRA_ARGS is not re-applied on restart";
    ExitNodeUnpinned => "exit-node-unpinned", Warn, "DaemonSet makes every node an exit node";
    LanAccess => "lan-access", Warn, "kernel-mode exit-node client without --exit-node-allow-lan-access";
    ImageTag => "image-tag", Warn, "Tailscale image with `latest` or no tag";
    Resources => "resources", Warn, "Tailscale container without resource limits";
}

impl RuleId {
    /// Whether a deny from this rule claims that the real Tailscale runtime
    /// fails (exits, never passes a probe, misbehaves): what tests/it/oracle.rs
    /// checks against the real binaries. The others are policy (a key in the
    /// manifest, resource limits, the image tag) or the apiserver's own
    /// refusal (Pod Security), checked elsewhere.
    pub fn is_runtime_claim(self) -> bool {
        !matches!(
            self,
            RuleId::LiteralAuthKey | RuleId::PodSecurityLevel | RuleId::ImageTag | RuleId::Resources
        )
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One problem found in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: RuleId,
    pub severity: Severity,
    /// Object path of the offending field, e.g. `spec.template.spec.containers[0].env[3].value`.
    pub path: String,
    /// What is wrong and why it fails.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {} Fix: {}", self.rule, self.path, self.message, self.hint)
    }
}
