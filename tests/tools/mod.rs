//! External tools the tests use (installed by scripts/install-tools.sh and
//! scripts/build-kube.sh). Without one, a test says loudly that it skipped;
//! with `TAILGUARD_REQUIRE_TOOLS=1` (the README's test command sets it) a
//! missing tool is a failure, so CI can never pass by skipping.

use std::path::PathBuf;

/// The path in environment variable `var`, if the tool is available.
pub fn tool(var: &str, test: &str) -> Option<PathBuf> {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        other => {
            let why = match other {
                Some(p) => format!("{var}={} does not exist", p.display()),
                None => format!("{var} is not set"),
            };
            if std::env::var("TAILGUARD_REQUIRE_TOOLS").as_deref() == Ok("1") {
                panic!("{test}: {why}, and TAILGUARD_REQUIRE_TOOLS=1 requires it (run scripts/test.sh)");
            }
            // Straight to stderr: the test harness captures eprintln!, and a skip must be seen.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "*** SKIPPED {test}: {why}. Run scripts/test.sh to install the tools and run it. ***"
            );
            None
        }
    }
}
