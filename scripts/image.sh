#!/usr/bin/env bash
# Build tailguard's container image without a Docker engine: the static binary
# (scripts/static-binary.sh, the same build the Dockerfile runs) packed by
# scripts/oci (go-containerregistry) into an image with no base layer:
# /tailguard, /etc/passwd and /etc/group for uid/gid 65532, nothing else.
#
#   scripts/image.sh                 # -> target/image/
#   scripts/image.sh --reproducible  # also builds everything a second time in
#                                    # a separate target dir and fails unless
#                                    # the two digests are equal
#
# Output in target/image/: oci/ (an OCI image layout), tailguard-<version>.tar
# (an image archive: docker load, podman load, kind load image-archive,
# skopeo, crane), tailguard-<version>.deps.json (the dependency list embedded
# by cargo-auditable). Reproducible: timestamps are SOURCE_DATE_EPOCH (default:
# the commit's time), labels are the version, revision and source of the
# checkout. stdout carries only eval-able lines:
#   TAILGUARD_IMAGE_DIGEST TAILGUARD_IMAGE_ARCHIVE TAILGUARD_IMAGE_LAYOUT
#   TAILGUARD_IMAGE_BYTES TAILGUARD_OCI_BIN
set -euo pipefail

log_prefix=image
# shellcheck source=scripts/go-build-common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/go-build-common.sh"

t_start=$(now)
repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cache_root=${TAILGUARD_CACHE:-${HOME:?HOME or TAILGUARD_CACHE must be set}/.cache/tailguard}
reproducible=0
[[ ${1:-} == --reproducible ]] && reproducible=1

version=$(awk -F'"' '/^version *=/ { print $2; exit }' "$repo_root/Cargo.toml")
[[ -n $version ]] || die "no version in Cargo.toml"
revision=$(git -C "$repo_root" rev-parse HEAD 2>/dev/null || echo unknown)
source_url=${TAILGUARD_IMAGE_SOURCE:-$(git -C "$repo_root" remote get-url origin 2>/dev/null || echo unknown)}
if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
  SOURCE_DATE_EPOCH=$(git -C "$repo_root" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH

# --- the packer, cached by the hash of its sources ------------------------------
oci_src="$repo_root/scripts/oci"
src_hash=$(cat "$oci_src/go.mod" "$oci_src/go.sum" "$oci_src"/*.go | sha256sum | cut -c1-16)
oci_bin="$cache_root/oci/$src_hash/tailguard-oci"
if [[ ! -x $oci_bin ]]; then
  find_go
  mkdir -p -- "$(dirname -- "$oci_bin")"
  t0=$(now)
  log "building the OCI packer (go-containerregistry)"
  (cd -- "$oci_src" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" "$go_bin" build -trimpath -o "$oci_bin.tmp.$$" .) ||
    die "building scripts/oci failed"
  mv -f -- "$oci_bin.tmp.$$" "$oci_bin"
  log "packer ready in $(elapsed "$t0")"
fi

# build TARGET_DIR OUT_DIR: the binary and the image; prints the packer's lines.
build() {
  local bin
  bin=$(CARGO_TARGET_DIR="$1" "$repo_root/scripts/static-binary.sh") || die "static build failed"
  eval "$bin"
  "$oci_bin" build --binary "$TAILGUARD_STATIC_BIN" --out "$2" --name tailguard --version "$version" \
    --revision "$revision" --source "$source_url" --licenses Apache-2.0
}

out="$repo_root/target/image"
result=$(build "$repo_root/target" "$out")
digest=$(sed -n 's/^digest=//p' <<<"$result")
bytes=$(sed -n 's/^compressed_bytes=//p' <<<"$result")
archive=$(sed -n 's/^archive=//p' <<<"$result")
log "image tailguard:$version $digest ($bytes bytes compressed) in $out"

if [[ $reproducible == 1 ]]; then
  # Everything again, from a target dir of its own (no artifact shared).
  again=$(build "$repo_root/target/image-repro-build" "$repo_root/target/image-repro")
  digest2=$(sed -n 's/^digest=//p' <<<"$again")
  [[ $digest == "$digest2" ]] ||
    die "not reproducible: $digest vs $digest2 (compare target/image and target/image-repro)"
  cmp -s "$archive" "$(sed -n 's/^archive=//p' <<<"$again")" || die "the two archives differ"
  log "reproducible: a second build from its own target dir gives $digest2"
fi

log "done in $(elapsed "$t_start")"
printf 'TAILGUARD_IMAGE_DIGEST=%q\nTAILGUARD_IMAGE_ARCHIVE=%q\nTAILGUARD_IMAGE_LAYOUT=%q\nTAILGUARD_IMAGE_BYTES=%q\nTAILGUARD_OCI_BIN=%q\n' \
  "$digest" "$archive" "$out/oci" "$bytes" "$oci_bin"
