#!/usr/bin/env bash
# Dependency policy (deny.toml): licenses, bans (no OpenSSL, no wildcard
# versions, duplicates reported) and sources (crates.io only).
#
#   scripts/deny.sh
#
# Installs cargo-deny from crates.io (pinned; skipped when that version is
# already installed). The advisories check is NOT run: the RustSec advisory
# database is a git repository this environment cannot fetch (see SECURITY.md);
# run `cargo deny check advisories` where it can.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
if [ "$(cargo deny --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DENY_VERSION" ]; then
  cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION"
fi
echo "deny.sh: cargo-deny $CARGO_DENY_VERSION: checking bans licenses sources (advisories: not checked, the advisory database cannot be fetched here)" >&2
cargo deny --log-level error check bans licenses sources
