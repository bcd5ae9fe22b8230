//! External tools the tests use (installed or built by scripts/install-tools.sh,
//! build-kube.sh, build-oracle.sh and image.sh, which print the variables).
//!
//! A test that needs one is `#[cfg_attr(not(has_TOOL), ignore = "why")]`:
//! build.rs sets `has_TOOL` when the tool's variables name existing paths, so
//! plain `cargo test` lists the test as ignored with the reason. With
//! `TAILGUARD_REQUIRE_TOOLS=1` (scripts/test.sh) build.rs sets every cfg and a
//! missing tool fails here, in the test: CI can never pass by skipping.

use std::path::PathBuf;

/// The path in environment variable `var`; panics, naming the variable, when
/// it is not set or names nothing.
pub fn tool(var: &str) -> PathBuf {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.exists() => p,
        Some(p) => panic!(
            "{var}={} does not exist: build it (scripts/test.sh does), or run plain `cargo test` to ignore this test",
            p.display()
        ),
        None => panic!(
            "{var} is not set: run scripts/test.sh, which installs the tools and sets it (plain `cargo test` ignores this test)"
        ),
    }
}
