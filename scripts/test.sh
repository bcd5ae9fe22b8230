#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the test tools (helm,
# kubectl, the tailscale CLI, kubernetes-validate), builds kube-apiserver
# and etcd and the runtime oracle (the real containerboot, tailscaled and
# tailscale of the pinned release) from the Go module proxy (cached by version under
# ${TAILGUARD_CACHE:-~/.cache/tailguard}), builds the container image twice and
# checks the digests match (scripts/image.sh --reproducible; tests/it/image.rs
# smoke-runs it), then runs fmt, clippy and every test
# with missing tools treated as failures, not skips, and the dependency policy
# (scripts/deny.sh: licenses, bans, sources).
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
set -a
eval "$(scripts/install-tools.sh)"
eval "$(scripts/build-kube.sh)"
eval "$(scripts/build-oracle.sh)"
eval "$(scripts/image.sh --reproducible)"
TAILGUARD_REQUIRE_TOOLS=1
set +a
echo "test.sh: tools ready in $(( $(date +%s) - start ))s" >&2

cargo fmt --all -- --check
scripts/deny.sh
# The oracle against outcomes known from running the binaries by hand, before
# tests/it/oracle.rs trusts it with every verdict.
tests/oracle/selfcheck.sh -j 2
cargo clippy --locked --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --workspace --all-targets 2>&1 | tee "$log"
echo "test.sh: done in $(( $(date +%s) - start ))s" >&2
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i; if ($(i+1) ~ /^ignored;/) s += $i } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
