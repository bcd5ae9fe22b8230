//! How tailscaled reaches the network. One type for the policy's
//! `injection.mode`, the `tailguard.io/mode` annotation, the injected sidecar
//! and what a container's `TS_USERSPACE` asks containerboot for.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Netstack with HTTP/SOCKS5 proxies, no privileges (`TS_USERSPACE=true`,
    /// containerboot's default).
    Userspace,
    /// Kernel networking through a TUN device (`TS_USERSPACE=false`): needs
    /// NET_ADMIN and /dev/net/tun.
    Tun,
}

impl Mode {
    /// The name used in the policy and the annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Userspace => "userspace",
            Mode::Tun => "tun",
        }
    }

    pub fn from_name(name: &str) -> Option<Mode> {
        match name {
            "userspace" => Some(Mode::Userspace),
            "tun" => Some(Mode::Tun),
            _ => None,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
