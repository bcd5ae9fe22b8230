#!/usr/bin/env bash
# The static tailguard binary that goes into the container image. Both
# scripts/image.sh and the Dockerfile's build stage run this, so both paths
# ship the same binary: a release build for <arch>-unknown-linux-musl (no libc
# in the image), built with cargo-auditable (the dependency list is embedded
# in the binary's .dep-v0 section), symbols stripped, and the source and cargo
# home paths remapped so the bytes do not depend on where the checkout is.
#
# Installs what it needs, from registries only, cached by version under
# ${TAILGUARD_CACHE:-$HOME/.cache/tailguard}: the musl target (rustup),
# cargo-auditable (crates.io), and musl-tools (apt-get) when the C parts of
# ring need musl's compiler wrapper.
#
# stdout: exactly one line, TAILGUARD_STATIC_BIN=/abs/path (for eval);
# everything else goes to stderr. CARGO_TARGET_DIR selects the target dir.
set -euo pipefail

log_prefix=static-binary
# shellcheck source=scripts/go-build-common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/go-build-common.sh"

AUDITABLE_VERSION=0.7.7

t_start=$(now)
repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cache_root=${TAILGUARD_CACHE:-${HOME:?HOME or TAILGUARD_CACHE must be set}/.cache/tailguard}
target="$(uname -m)-unknown-linux-musl"

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  log "adding the $target target with rustup"
  rustup target add "$target" >&2 || die "rustup target add $target failed"
fi

# ring compiles C and assembly for the target: musl's gcc wrapper.
if ! command -v musl-gcc >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "musl-gcc is missing and there is no apt-get (install musl-tools)"
  [[ $(id -u) == 0 ]] || die "installing musl-tools needs root"
  log "installing musl-tools with apt-get"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >&2; }; } ||
    die "apt-get install musl-tools failed"
fi

auditable_root="$cache_root/tools/cargo-auditable-$AUDITABLE_VERSION"
if [[ ! -x $auditable_root/bin/cargo-auditable ]]; then
  mkdir -p -- "$cache_root/tools"
  t0=$(now)
  log "installing cargo-auditable $AUDITABLE_VERSION (cold: about a minute)"
  tmp="$auditable_root.tmp.$$"
  trap_cleanup
  tmp_paths+=("$tmp")
  cargo install --quiet --locked --root "$tmp" --version "=$AUDITABLE_VERSION" cargo-auditable >&2 ||
    die "cargo install cargo-auditable failed"
  rm -rf -- "$auditable_root"
  mv -- "$tmp" "$auditable_root"
  log "cargo-auditable ready in $(elapsed "$t0")"
fi
export PATH="$auditable_root/bin:$PATH"

cargo_home=${CARGO_HOME:-$HOME/.cargo}
target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
export TARGET_CC=musl-gcc
export CARGO_PROFILE_RELEASE_STRIP=symbols
# Paths that would otherwise end up in panic messages: the checkout, the
# registry sources, generated sources under the target dir.
flags_var="CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$target")_RUSTFLAGS"
export "$flags_var=--remap-path-prefix=$target_dir=/target --remap-path-prefix=$repo_root=/src --remap-path-prefix=$cargo_home=/cargo"

t0=$(now)
log "building tailguard for $target (release, auditable)"
(cd -- "$repo_root" && cargo auditable build --quiet --release --locked --target "$target" --bin tailguard --target-dir "$target_dir") >&2 ||
  die "cargo auditable build failed"
bin="$target_dir/$target/release/tailguard"
"$bin" --version >&2 || die "the static binary does not run here"
log "static binary $bin ($(stat -c %s "$bin") bytes) in $(elapsed "$t0") (total $(elapsed "$t_start"))"
printf 'TAILGUARD_STATIC_BIN=%q\n' "$bin"
