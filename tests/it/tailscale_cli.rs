//! Keeps tailguard's list of `tailscale up` flags honest against the real CLI
//! (the pinned static binary installed by scripts/install-tools.sh).

use std::collections::BTreeSet;
use std::process::Command;

use tailguard::tailscale::UP_FLAGS;

use crate::tools;

/// `tailscale up --help` prints `  --name value` or `  --name, --name=false` per flag, on stderr.
fn help_flags(help: &str) -> BTreeSet<(String, bool)> {
    help.lines()
        .filter_map(|l| l.strip_prefix("  --"))
        .map(|rest| {
            let name = rest.split([' ', ',']).next().unwrap_or_default().to_owned();
            let takes_value = !rest.contains(&format!("--{name}=false"));
            (name, takes_value)
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(has_tailscale),
    ignore = "needs the tailscale CLI (TAILSCALE_BIN): scripts/install-tools.sh, or run scripts/test.sh"
)]
fn up_flags_match_the_real_cli() {
    let bin = tools::tool("TAILSCALE_BIN");
    let out = Command::new(&bin)
        .args(["up", "--help"])
        .output()
        .expect("run tailscale up --help");
    let help = String::from_utf8_lossy(&out.stderr);
    let from_cli = help_flags(&help);
    assert!(from_cli.len() > 20, "parsed too few flags from help:\n{help}");
    let ours: BTreeSet<(String, bool)> = UP_FLAGS.iter().map(|f| (f.name.to_owned(), f.takes_value)).collect();
    let missing: Vec<_> = from_cli.difference(&ours).collect();
    assert!(
        missing.is_empty(),
        "flags the CLI documents but tailguard does not know: {missing:?}"
    );
    // Flags we know beyond the help text (hidden aliases) must still be accepted:
    // Go's flag package rejects an undefined flag (exit 2) before handling --help (exit 0).
    for (name, takes_value) in ours.difference(&from_cli) {
        let arg = if *takes_value {
            format!("--{name}=x")
        } else {
            format!("--{name}")
        };
        let status = Command::new(&bin)
            .args(["up", &arg, "--help"])
            .output()
            .expect("run tailscale")
            .status;
        assert!(status.success(), "tailscale up does not accept {arg} (exit {status})");
    }
    let bogus = Command::new(&bin)
        .args(["up", "--no-such-flag", "--help"])
        .output()
        .expect("run tailscale")
        .status;
    assert!(
        !bogus.success(),
        "an unknown flag must be refused, or the probe above proves nothing"
    );
}
