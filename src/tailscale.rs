//! What a Tailscale container will do, read from its spec: containerboot's
//! environment (with Kubernetes' `$(VAR)` expansion applied), its mode, and the
//! `tailscale up` flags it passes.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, EnvVar};

use crate::config::Config;
use crate::expansion;
use crate::mode::Mode;
use crate::workload::Workload;

/// Largest expanded env value modelled; a bigger one counts as unknown.
const MAX_EXPANDED_VALUE: usize = 64 << 10;

/// containerboot's health endpoint port when `TS_LOCAL_ADDR_PORT` is unset.
pub const DEFAULT_HEALTH_PORT: u16 = 9002;

/// A container that runs the Tailscale image.
#[derive(Debug)]
pub struct TailscaleContainer<'a> {
    pub container: &'a Container,
    /// Object path, e.g. `spec.template.spec.containers[0]`.
    pub path: String,
    /// An init container (a native sidecar when its restartPolicy is Always).
    pub init: bool,
    pub env: EnvModel<'a>,
}

/// The value an env entry ends up with in the running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    /// A literal after `$(VAR)` expansion (unresolved references stay verbatim).
    Known(String),
    /// From `valueFrom` (fieldRef, secretKeyRef, ...), or expanded from one:
    /// not knowable from the manifest.
    External,
}

/// A container's `env`, expanded in order as the kubelet does.
#[derive(Debug)]
pub struct EnvModel<'a> {
    vars: &'a [EnvVar],
    values: Vec<EnvValue>,
    index: EnvIndex<'a>,
    /// The container has `envFrom`: names not in `env` may still be defined.
    pub has_env_from: bool,
}

impl<'a> EnvModel<'a> {
    pub fn new(container: &'a Container) -> Self {
        let vars = container.env.as_deref().unwrap_or_default();
        let mut values: Vec<EnvValue> = Vec::with_capacity(vars.len());
        let mut index = EnvIndex::new(vars);
        for (i, var) in vars.iter().enumerate() {
            let value = match (&var.value, &var.value_from) {
                (_, Some(_)) => EnvValue::External,
                (Some(v), None) => {
                    let mut external = false;
                    let expanded = expansion::expand_bounded(
                        v,
                        |name| match lookup_before(&index, &values, name, i) {
                            Some((_, EnvValue::Known(s))) => Some(s.as_str()),
                            Some((_, EnvValue::External)) => {
                                external = true;
                                None
                            }
                            None => None,
                        },
                        MAX_EXPANDED_VALUE,
                    );
                    match expanded {
                        Some(text) if !external => EnvValue::Known(text),
                        // Too large to model (or from outside the manifest): unknown.
                        _ => EnvValue::External,
                    }
                }
                (None, None) => EnvValue::Known(String::new()),
            };
            values.push(value);
            index.add(var.name.as_str(), i);
        }
        EnvModel {
            vars,
            values,
            index,
            has_env_from: container.env_from.as_ref().is_some_and(|e| !e.is_empty()),
        }
    }

    pub fn vars(&self) -> &'a [EnvVar] {
        self.vars
    }

    /// The effective definition of `name` (the last one wins), with its index.
    pub fn get(&self, name: &str) -> Option<(usize, &EnvValue)> {
        let i = self.index.last(name)?;
        Some((i, self.values.get(i)?))
    }

    /// The definition of `name` visible to `env[index]` (only earlier entries).
    pub fn get_before(&self, name: &str, index: usize) -> Option<(usize, &EnvValue)> {
        lookup_before(&self.index, &self.values, name, index)
    }

    /// Where `name` is defined after `env[index]`, if it is.
    pub fn defined_after(&self, name: &str, index: usize) -> Option<usize> {
        self.index.first_after(name, index)
    }

    /// The literal value of `name`, if it is set and knowable.
    pub fn literal(&self, name: &str) -> Option<(usize, &str)> {
        match self.get(name)? {
            (i, EnvValue::Known(v)) => Some((i, v.as_str())),
            (_, EnvValue::External) => None,
        }
    }

    /// A containerboot setting as the container will see it: unset only when
    /// the manifest shows it is (no `env` entry and no `envFrom` that may
    /// supply it).
    pub fn setting(&self, name: &str) -> Setting<'_> {
        match self.get(name) {
            Some((i, EnvValue::Known(v))) => Setting::Known(i, v.as_str()),
            Some((i, EnvValue::External)) => Setting::Unknown(Some(i)),
            None if self.has_env_from => Setting::Unknown(None),
            None => Setting::Unset,
        }
    }

    pub fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A boolean as containerboot reads it (Go's `strconv.ParseBool`): `None`
    /// when unset, external or unparseable, in which case the default applies.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.literal(name).and_then(|(_, v)| parse_go_bool(v))
    }
}

fn lookup_before<'v>(
    index: &EnvIndex<'_>,
    values: &'v [EnvValue],
    name: &str,
    before: usize,
) -> Option<(usize, &'v EnvValue)> {
    let i = index.last_before(name, before)?;
    Some((i, values.get(i)?))
}

/// Envs up to this long are searched entry by entry.
const SCANNED_ENV: usize = 32;

/// Where each env name is defined. The rules ask dozens of times per
/// container; a small env (nearly all) is searched in place, without hashing
/// or allocating, and a big one gets a map from name to its positions, so
/// lookups stay linear in big envs.
#[derive(Debug)]
enum EnvIndex<'a> {
    Scan(&'a [EnvVar]),
    Map(HashMap<&'a str, Vec<usize>>),
}

impl<'a> EnvIndex<'a> {
    fn new(vars: &'a [EnvVar]) -> Self {
        if vars.len() <= SCANNED_ENV {
            EnvIndex::Scan(vars)
        } else {
            EnvIndex::Map(HashMap::with_capacity(vars.len()))
        }
    }

    /// Records that `env[i]` defines `name` (in order of `i`; a scanned env
    /// has them all already).
    fn add(&mut self, name: &'a str, i: usize) {
        if let EnvIndex::Map(map) = self {
            map.entry(name).or_default().push(i);
        }
    }

    /// The last definition of `name`.
    fn last(&self, name: &str) -> Option<usize> {
        self.last_before(name, usize::MAX)
    }

    /// The last definition of `name` before `env[before]`.
    fn last_before(&self, name: &str, before: usize) -> Option<usize> {
        match self {
            EnvIndex::Scan(vars) => vars.get(..before.min(vars.len()))?.iter().rposition(|v| v.name == name),
            EnvIndex::Map(map) => {
                let at = map.get(name)?;
                at.get(at.partition_point(|&i| i < before).checked_sub(1)?).copied()
            }
        }
    }

    /// The first definition of `name` after `env[index]`.
    fn first_after(&self, name: &str, index: usize) -> Option<usize> {
        match self {
            EnvIndex::Scan(vars) => {
                let from = index.checked_add(1)?;
                let at = vars.get(from..)?.iter().position(|v| v.name == name)?;
                Some(from + at)
            }
            EnvIndex::Map(map) => {
                let at = map.get(name)?;
                at.get(at.partition_point(|&i| i <= index)).copied()
            }
        }
    }
}

/// One containerboot setting (an env var), as far as the manifest tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting<'e> {
    /// Not set: containerboot's default applies.
    Unset,
    /// Set to this text (after `$(VAR)` expansion), at `env[index]`.
    Known(usize, &'e str),
    /// Set from outside the manifest (`valueFrom`, `envFrom`): at `env[index]`
    /// when it is in `env`.
    Unknown(Option<usize>),
}

impl<'e> Setting<'e> {
    /// The text, when set and known.
    pub fn known(self) -> Option<&'e str> {
        match self {
            Setting::Known(_, v) => Some(v),
            _ => None,
        }
    }

    /// The text, treating unset as containerboot's empty default; `None` when unknown.
    pub fn or_empty(self) -> Option<&'e str> {
        match self {
            Setting::Unset => Some(""),
            Setting::Known(_, v) => Some(v),
            Setting::Unknown(_) => None,
        }
    }

    /// A boolean as containerboot reads it (`defaultBool`: unparseable means
    /// the default); `None` when unknown.
    pub fn bool_or(self, default: bool) -> Option<bool> {
        self.or_empty().map(|v| parse_go_bool(v).unwrap_or(default))
    }

    pub fn index(self) -> Option<usize> {
        match self {
            Setting::Known(i, _) | Setting::Unknown(Some(i)) => Some(i),
            _ => None,
        }
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `(major, minor)` of a `vX.Y[.Z]` (or `X.Y.Z`) image tag.
pub fn image_version(image: &str) -> Option<(u32, u32)> {
    let tag = crate::image::image_tag(image)?;
    let mut parts = tag.strip_prefix('v').unwrap_or(tag).split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether the container's process is containerboot, the image's entrypoint:
/// no `command` (the entrypoint stays), or a command that runs containerboot
/// (directly, or at the end of a shell script). A `command` such as `sh -c
/// "sysctl ..."` replaces the entrypoint, and no Tailscale runs there.
pub fn runs_containerboot(c: &Container) -> bool {
    let Some(command) = c.command.as_deref().filter(|c| !c.is_empty()) else {
        return true;
    };
    let names_containerboot = |s: &String| {
        s.split(|c: char| c.is_whitespace() || ";&|()`'\"".contains(c))
            .any(|word| word.rsplit('/').next() == Some("containerboot"))
    };
    command.iter().chain(c.args.iter().flatten()).any(names_containerboot)
}

/// What a container's `TS_USERSPACE` says about how tailscaled will run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSetting {
    /// Unset or unparseable: containerboot's default, userspace.
    Default,
    /// Set to a value containerboot reads.
    Set(Mode),
    /// Comes from a ConfigMap/Secret: unknown.
    Unknown,
}

impl<'a> TailscaleContainer<'a> {
    /// The Tailscale containers of a workload (init containers included), in spec order.
    pub fn find(workload: &'a Workload, config: &Config) -> Vec<TailscaleContainer<'a>> {
        let base = workload.kind.pod_spec_path();
        let init = workload.pod.init_containers.as_deref().unwrap_or_default();
        let main = &workload.pod.containers;
        let mut out = Vec::new();
        for (list, field, is_init) in [(init, "initContainers", true), (main.as_slice(), "containers", false)] {
            for (i, c) in list.iter().enumerate() {
                // A plain init container runs to completion before the pod
                // starts: whatever it runs, it is not the pod's Tailscale.
                if is_init && c.restart_policy.as_deref() != Some("Always") {
                    continue;
                }
                if c.image.as_deref().is_some_and(|image| config.is_tailscale_image(image)) && runs_containerboot(c) {
                    out.push(TailscaleContainer {
                        container: c,
                        path: format!("{base}.{field}[{i}]"),
                        init: is_init,
                        env: EnvModel::new(c),
                    });
                }
            }
        }
        out
    }

    pub fn name(&self) -> &str {
        &self.container.name
    }

    /// The Tailscale release of the image, from a `vX.Y[.Z]` tag; `None` for
    /// `latest`, `stable`, a digest alone or no tag (a current release).
    pub fn version(&self) -> Option<(u32, u32)> {
        image_version(self.container.image.as_deref().unwrap_or_default())
    }

    pub fn env_path(&self, index: usize) -> String {
        format!("{}.env[{index}].value", self.path)
    }

    pub fn mode(&self) -> ModeSetting {
        match self.env.get("TS_USERSPACE") {
            // envFrom may set it: unknown, not unset.
            None if self.env.has_env_from => ModeSetting::Unknown,
            None => ModeSetting::Default,
            Some((_, EnvValue::External)) => ModeSetting::Unknown,
            Some((_, EnvValue::Known(v))) => match parse_go_bool(v) {
                Some(true) => ModeSetting::Set(Mode::Userspace),
                Some(false) => ModeSetting::Set(Mode::Tun),
                None => ModeSetting::Default,
            },
        }
    }

    /// Whether `env[index]`'s raw value has a `$(VAR)` the kubelet leaves
    /// unexpanded (not an escaped `$$(VAR)`).
    pub fn has_unresolved_reference(&self, index: usize) -> bool {
        let raw = self
            .env
            .vars()
            .get(index)
            .and_then(|v| v.value.as_deref())
            .unwrap_or_default();
        expansion::references(raw).any(|(name, _)| self.env.get_before(name, index).is_none())
    }

    pub fn privileged(&self) -> bool {
        self.container
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false)
    }

    pub fn adds_capability(&self, cap: &str) -> bool {
        self.container
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.as_ref())
            .is_some_and(|add| add.iter().any(|a| a.strip_prefix("CAP_").unwrap_or(a) == cap))
    }

    /// The `tailscale up` arguments from `TS_EXTRA_ARGS`, if set and knowable.
    pub fn up_args(&self) -> Option<UpArgs> {
        let (index, value) = self.env.literal("TS_EXTRA_ARGS")?;
        Some(UpArgs::parse(value, self.env_path(index)))
    }
}

/// A `tailscale up` flag: its name and whether it takes a value.
pub struct UpFlag {
    pub name: &'static str,
    pub takes_value: bool,
}

/// The flags of `tailscale up` in Tailscale 1.96 (checked against the real CLI's
/// `--help` in tests/it/tailscale_cli.rs).
pub const UP_FLAGS: &[UpFlag] = &include!("tailscale_up_flags.in");

pub fn up_flag(name: &str) -> Option<&'static UpFlag> {
    UP_FLAGS.iter().find(|f| f.name == name)
}

/// `TS_EXTRA_ARGS` as `tailscale up` parses it: containerboot splits on
/// whitespace (no shell, no quoting) and Go's flag package reads the tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpArgs {
    /// Where the arguments come from (the env value's path).
    pub path: String,
    pub flags: Vec<(String, Option<String>)>,
    /// Tokens that are not known flags (or stray positional arguments).
    pub unknown: Vec<String>,
}

impl UpArgs {
    pub fn parse(value: &str, path: String) -> UpArgs {
        let mut flags = Vec::new();
        let mut unknown = Vec::new();
        let mut tokens = value.split_whitespace();
        while let Some(token) = tokens.next() {
            let Some(body) = token.strip_prefix("--").or_else(|| token.strip_prefix('-')) else {
                unknown.push(token.to_owned());
                continue;
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (body, None),
            };
            match up_flag(name) {
                Some(flag) => {
                    let value = if inline.is_none() && flag.takes_value {
                        tokens.next().map(str::to_owned)
                    } else {
                        inline
                    };
                    flags.push((name.to_owned(), value));
                }
                None => unknown.push(token.to_owned()),
            }
        }
        UpArgs { path, flags, unknown }
    }

    /// The last value given for `name` (`Some("")` for a bare boolean flag).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// A boolean flag's value: present without a value means true.
    pub fn bool(&self, name: &str) -> bool {
        match self.value(name) {
            Some("") => true,
            Some(v) => parse_go_bool(v).unwrap_or(false),
            None => false,
        }
    }

    /// The exit node in use, if a non-empty one is given.
    pub fn exit_node(&self) -> Option<&str> {
        self.value("exit-node").filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(env: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "ts", "image": "tailscale/tailscale", "env": env})).expect("container")
    }

    /// A scanned env and a mapped one answer every query alike, and an env
    /// past the scanned size gets the map.
    #[test]
    fn env_index_scan_and_map_agree() {
        let names = ["A", "B", "A", "C", "B", "A", "D"];
        let vars: Vec<EnvVar> = names
            .iter()
            .map(|n| EnvVar {
                name: (*n).to_owned(),
                ..EnvVar::default()
            })
            .collect();
        let scan = EnvIndex::new(&vars);
        assert!(matches!(scan, EnvIndex::Scan(_)));
        let mut map = EnvIndex::Map(HashMap::new());
        for (i, v) in vars.iter().enumerate() {
            map.add(&v.name, i);
        }
        for name in ["A", "B", "C", "D", "E"] {
            assert_eq!(scan.last(name), map.last(name), "{name}");
            for at in 0..=vars.len() + 1 {
                assert_eq!(
                    scan.last_before(name, at),
                    map.last_before(name, at),
                    "{name} before {at}"
                );
                assert_eq!(
                    scan.first_after(name, at),
                    map.first_after(name, at),
                    "{name} after {at}"
                );
            }
        }
        assert_eq!(scan.last("A"), Some(5));
        assert_eq!(scan.last_before("A", 5), Some(2));
        assert_eq!(scan.first_after("A", 2), Some(5));
        let big = vec![EnvVar::default(); SCANNED_ENV + 1];
        assert!(matches!(EnvIndex::new(&big), EnvIndex::Map(_)));
    }

    #[test]
    fn env_expands_in_order_and_tracks_external_values() {
        let c = container(json!([
            {"name": "A", "value": "a"},
            {"name": "B", "value": "$(A)-$(C)"},
            {"name": "C", "value": "c"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "D", "value": "$(NODE)"},
            {"name": "A", "value": "override"},
        ]));
        let env = EnvModel::new(&c);
        assert_eq!(env.literal("B"), Some((1, "a-$(C)")));
        assert_eq!(env.get("D"), Some((4, &EnvValue::External)));
        assert_eq!(env.literal("A"), Some((5, "override")));
        assert_eq!(env.get_before("A", 2).map(|(i, _)| i), Some(0));
        assert!(env.get_before("C", 1).is_none());
    }

    #[test]
    fn mode_follows_containerboot_parsing() {
        for (value, mode) in [
            ("false", ModeSetting::Set(Mode::Tun)),
            ("0", ModeSetting::Set(Mode::Tun)),
            ("true", ModeSetting::Set(Mode::Userspace)),
            ("no", ModeSetting::Default),
        ] {
            let c = container(json!([{"name": "TS_USERSPACE", "value": value}]));
            let w = TailscaleContainer {
                container: &c,
                path: String::new(),
                init: false,
                env: EnvModel::new(&c),
            };
            assert_eq!(w.mode(), mode, "TS_USERSPACE={value}");
        }
    }

    #[test]
    fn up_args_parse_like_go_flags() {
        let a = UpArgs::parse(
            "--exit-node=100.64.0.1 --accept-routes --hostname node-a -advertise-exit-node=false --bogus stray",
            "p".into(),
        );
        assert_eq!(a.exit_node(), Some("100.64.0.1"));
        assert!(a.bool("accept-routes"));
        assert!(!a.bool("advertise-exit-node"));
        assert_eq!(a.value("hostname"), Some("node-a"));
        assert_eq!(a.unknown, vec!["--bogus".to_owned(), "stray".to_owned()]);
    }
}
