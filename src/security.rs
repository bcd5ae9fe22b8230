//! What a container may do once it runs: its user and its effective
//! capabilities, as the kubelet and the container runtime set them up from the
//! `securityContext` (pod and container) and the runtime's defaults.

use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::config::ContainerRuntime;

/// Whether a container will hold a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Has {
    Yes,
    No,
    /// It depends on the runtime's defaults, and the runtime is not known.
    DependsOnRuntime,
}

/// A container's privileges as the runtime grants them.
#[derive(Debug, Clone)]
pub struct Privileges<'a> {
    pub privileged: bool,
    /// The uid the process runs as, when the manifest sets one (the Tailscale
    /// image runs as root otherwise).
    pub run_as_user: Option<i64>,
    add: &'a [String],
    drop: &'a [String],
    runtime: ContainerRuntime,
}

impl<'a> Privileges<'a> {
    pub fn of(container: &'a Container, pod: &PodSpec, runtime: ContainerRuntime) -> Self {
        let sc = container.security_context.as_ref();
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        Privileges {
            privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
            run_as_user: sc
                .and_then(|s| s.run_as_user)
                .or_else(|| pod.security_context.as_ref().and_then(|s| s.run_as_user)),
            add: caps.and_then(|c| c.add.as_deref()).unwrap_or_default(),
            drop: caps.and_then(|c| c.drop.as_deref()).unwrap_or_default(),
            runtime,
        }
    }

    /// Runs as root (uid 0): the only user whose process holds capabilities,
    /// since Kubernetes gives no ambient capabilities.
    pub fn root(&self) -> bool {
        self.run_as_user.is_none_or(|u| u == 0)
    }

    /// Whether the process will hold `cap` (without `CAP_`) in its effective set.
    /// Runtimes apply `drop: [ALL]`, then `add`, then the named drops.
    pub fn has(&self, cap: &str) -> Has {
        if self.privileged && self.root() {
            return Has::Yes;
        }
        if !self.root() {
            return Has::No;
        }
        let named = |list: &[String], c: &str| list.iter().any(|x| x.strip_prefix("CAP_").unwrap_or(x) == c);
        if named(self.drop, cap) {
            return Has::No;
        }
        if named(self.add, cap) || named(self.add, "ALL") {
            return Has::Yes;
        }
        if named(self.drop, "ALL") {
            return Has::No;
        }
        match self.runtime.default_capabilities() {
            Some(defaults) if defaults.contains(&cap) => Has::Yes,
            Some(_) => Has::No,
            None => {
                let granted_by = |r: ContainerRuntime| r.default_capabilities().is_some_and(|d| d.contains(&cap));
                match (
                    granted_by(ContainerRuntime::Containerd),
                    granted_by(ContainerRuntime::CriO),
                ) {
                    (true, true) => Has::Yes,
                    (false, false) => Has::No,
                    _ => Has::DependsOnRuntime,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn privileges_of(container: serde_json::Value, pod: serde_json::Value, runtime: ContainerRuntime) -> Has {
        let c: Container = serde_json::from_value(container).expect("container");
        let p: PodSpec = serde_json::from_value(pod).expect("pod");
        Privileges::of(&c, &p, runtime).has("MKNOD")
    }

    #[test]
    fn mknod_follows_the_runtime_and_the_security_context() {
        let plain = json!({"name": "ts"});
        let pod = json!({"containers": []});
        assert_eq!(
            privileges_of(plain.clone(), pod.clone(), ContainerRuntime::Containerd),
            Has::Yes
        );
        assert_eq!(
            privileges_of(plain.clone(), pod.clone(), ContainerRuntime::CriO),
            Has::No
        );
        assert_eq!(
            privileges_of(plain.clone(), pod.clone(), ContainerRuntime::Unknown),
            Has::DependsOnRuntime
        );
        let drop_all_add =
            json!({"name": "ts", "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["CAP_MKNOD"]}}});
        assert_eq!(
            privileges_of(drop_all_add, pod.clone(), ContainerRuntime::CriO),
            Has::Yes
        );
        let drop_all = json!({"name": "ts", "securityContext": {"capabilities": {"drop": ["ALL"]}}});
        assert_eq!(
            privileges_of(drop_all, pod.clone(), ContainerRuntime::Containerd),
            Has::No
        );
        let non_root_pod = json!({"containers": [], "securityContext": {"runAsUser": 1000}});
        let privileged = json!({"name": "ts", "securityContext": {"privileged": true}});
        assert_eq!(
            privileges_of(privileged.clone(), non_root_pod, ContainerRuntime::Containerd),
            Has::No
        );
        assert_eq!(privileges_of(privileged, pod, ContainerRuntime::CriO), Has::Yes);
    }
}
