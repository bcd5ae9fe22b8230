//! The integration tests: one test binary (one link instead of one per file),
//! one module per area. `cargo test --test it MODULE::` runs one area, e.g.
//! `cargo test --test it server_tls::`.
//!
//! Layout: the modules below are the tests; `support/` holds what they share
//! (temporary directories and processes, the AdmissionReview builder, test
//! PKI and HTTPS clients, fixture headers, the throwaway control plane, the
//! runtime oracle's runner) and `tools/` the external tools. The data they
//! read stays beside this folder: `tests/fixtures`, `tests/inject`,
//! `tests/data`, `tests/kube`, `tests/oracle`.
//!
//! Tests that need an external tool are `#[ignore]`d, with the reason, when
//! it is missing (build.rs looks; see `tools`); scripts/test.sh installs every
//! tool and sets `TAILGUARD_REQUIRE_TOOLS=1`, under which a missing tool fails.
//!
//! Everything runs in one process, two tests at a time on two cores: no test
//! changes the environment or the working directory, temporary directories
//! have names of their own, servers listen on port 0, and the heavy tests (a
//! kube-apiserver and etcd, pods in the runtime oracle) hold one of the
//! `support::heavy` slots while they run.

mod support;
mod tools;

mod admission;
mod chart;
mod cli_check;
mod cli_inject;
mod e2e;
mod fuzz_regressions;
mod hostile_input;
mod image;
mod inject;
mod injection_traffic;
mod oracle;
mod policy_reload;
mod properties;
mod readme;
mod rule_fixtures;
mod self_certs;
mod server_tls;
mod tailscale_cli;
