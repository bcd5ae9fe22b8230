//! Tells the integration tests (tests/it) which external tools are there.
//!
//! A test that needs a tool (helm, kube-apiserver and etcd, the runtime oracle,
//! the built image, ...) is `#[cfg_attr(not(has_TOOL), ignore = "why")]`:
//! libtest has no way to ignore a test at run time, so this script sets
//! `has_TOOL` when every variable of the tool names an existing path (the
//! variables scripts/install-tools.sh, build-kube.sh, build-oracle.sh and
//! image.sh print). Plain `cargo test` then lists such tests as ignored, with
//! the reason, instead of passing them silently. With
//! `TAILGUARD_REQUIRE_TOOLS=1` (scripts/test.sh) every cfg is set, so a missing
//! tool fails its tests (tests/it/tools names the variable).
//!
//! The library and binaries do not use these cfgs. A tool built after its
//! variable was set is seen once build.rs reruns: change the variable, or
//! touch this file.

use std::path::Path;

/// cfg name, and the variables that must all name existing paths.
const TOOLS: &[(&str, &[&str])] = &[
    ("has_helm", &["HELM_BIN"]),
    ("has_kubectl", &["KUBECTL_BIN"]),
    ("has_kubernetes_validate", &["KUBERNETES_VALIDATE_BIN"]),
    ("has_tailscale", &["TAILSCALE_BIN"]),
    ("has_kube", &["KUBE_APISERVER_BIN", "ETCD_BIN"]),
    ("has_faketime", &["TAILGUARD_FAKETIME_LIB"]),
    ("has_oracle", &["TAILGUARD_ORACLE_BIN", "TAILGUARD_ORACLE_ROOTFS"]),
    (
        "has_image",
        &["TAILGUARD_IMAGE_ARCHIVE", "TAILGUARD_IMAGE_LAYOUT", "TAILGUARD_OCI_BIN"],
    ),
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TAILGUARD_REQUIRE_TOOLS");
    let require = std::env::var("TAILGUARD_REQUIRE_TOOLS").as_deref() == Ok("1");
    for (cfg, vars) in TOOLS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        let mut found = true;
        for var in *vars {
            println!("cargo::rerun-if-env-changed={var}");
            found &= std::env::var_os(var).is_some_and(|p| Path::new(&p).exists());
        }
        if found || require {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
