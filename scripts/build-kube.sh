#!/usr/bin/env bash
# Build real kube-apiserver and etcd binaries from source fetched through the Go
# module proxy, for tailguard's integration tests. Nothing prebuilt is downloaded.
#
# Versions are pinned by tests/kube/go.mod (k8s.io/kubernetes) and
# tests/kube/etcd/go.mod (go.etcd.io/etcd/server/v3); go.sum files make the
# sources verifiable. Binaries are cached per version pair in
#   ${TAILGUARD_CACHE:-$HOME/.cache/tailguard}/kube/<k8s-version>-etcd-<etcd-version>/
# and reused on later runs. Set TAILGUARD_KUBE_REBUILD=1 to force a rebuild.
#
# stdout carries exactly two lines, meant for eval:
#   KUBE_APISERVER_BIN=/abs/path
#   ETCD_BIN=/abs/path
# Everything else goes to stderr. Usage: eval "$(scripts/build-kube.sh)"
#
# A cold build (empty Go build cache) takes ~4 minutes and ~1.7 GB RAM on 2 cores,
# plus the first download of ~750 MB of module sources; a warm run takes ~0.1 s.
set -euo pipefail

log_prefix=build-kube
# shellcheck source=scripts/go-build-common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/go-build-common.sh"

t_start=$(now)
repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
kube_mod="$repo_root/tests/kube"
etcd_mod="$kube_mod/etcd"


k8s_ver=$(modver "$kube_mod/go.mod" k8s.io/kubernetes)     # e.g. v1.34.4
etcd_ver=$(modver "$etcd_mod/go.mod" go.etcd.io/etcd/server/v3) # e.g. v3.6.5
[[ $k8s_ver =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] ||
  die "unexpected k8s.io/kubernetes version '$k8s_ver' (want a release vX.Y.Z)"
k8s_major=${BASH_REMATCH[1]}
k8s_minor=${BASH_REMATCH[2]}

cache_root=${TAILGUARD_CACHE:-${HOME:?HOME or TAILGUARD_CACHE must be set}/.cache/tailguard}
out_dir="$cache_root/kube/${k8s_ver}-etcd-${etcd_ver}"
mkdir -p -- "$out_dir"
out_dir=$(cd -- "$out_dir" && pwd -P)
apiserver_bin="$out_dir/kube-apiserver"
etcd_bin="$out_dir/etcd"

# The cached binaries are usable if they exist and report the pinned versions.
apiserver_ok() {
  [[ -x $apiserver_bin ]] &&
    [[ $("$apiserver_bin" --version 2>/dev/null) == "Kubernetes $k8s_ver" ]]
}
etcd_ok() {
  local out
  [[ -x $etcd_bin ]] && out=$("$etcd_bin" --version 2>/dev/null) &&
    [[ $'\n'$out$'\n' == *$'\n'"etcd Version: ${etcd_ver#v}"$'\n'* ]]
}

emit() {
  printf 'KUBE_APISERVER_BIN=%q\n' "$apiserver_bin"
  printf 'ETCD_BIN=%q\n' "$etcd_bin"
}

if [[ ${TAILGUARD_KUBE_REBUILD:-0} != 1 ]] && apiserver_ok && etcd_ok; then
  log "reusing cached $k8s_ver / etcd $etcd_ver in $out_dir ($(elapsed "$t_start"))"
  emit
  exit 0
fi

# Serialise concurrent builds of the same version pair (e.g. parallel test
# runners).
lock_cache_dir "$out_dir"

trap_cleanup

find_go

# Read-only module mode: the committed go.mod/go.sum must already be complete,
# so a build never edits them and every source is checked against go.sum.
# GOMODCACHE/GOPROXY/GOCACHE are left at the caller's settings.
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0

log "using $("$go_bin" version)"

# build <module dir> <package> <dest> [go build flags...]: builds into a
# temporary file next to <dest>, then renames it into place (atomic).
build() {
  local mod=$1 pkg=$2 dest=$3
  shift 3
  local tmp="$dest.tmp.$$"
  tmp_paths+=("$tmp")
  local t0
  t0=$(now)
  log "building $pkg (module $mod) ..."
  (cd -- "$mod" && "$go_bin" build -trimpath -o "$tmp" "$@" "$pkg")
  mv -f -- "$tmp" "$dest"
  log "built $(basename -- "$dest") in $(elapsed "$t0")"
}

if [[ ${TAILGUARD_KUBE_REBUILD:-0} == 1 ]] || ! apiserver_ok; then
  # Mirrors upstream hack/lib/version.sh + golang.sh for a release build:
  # version ldflags into component-base and client-go, -s -w, -trimpath,
  # tags selinux,notest,grpcnotrace, CGO_ENABLED=0. The proxy does not expose
  # the release commit, so gitCommit is left empty and gitTreeState is
  # "archive" (source from an archive, not a git checkout). buildDate is the
  # release's tag time as served by the proxy, which keeps the build reproducible.
  build_date=$(cd -- "$kube_mod" &&
    "$go_bin" list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes) ||
    die "go list -m k8s.io/kubernetes failed"
  kube_ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X '$pkg.gitVersion=$k8s_ver'"
    kube_ldflags+=" -X '$pkg.gitMajor=$k8s_major'"
    kube_ldflags+=" -X '$pkg.gitMinor=$k8s_minor'"
    kube_ldflags+=" -X '$pkg.gitCommit='"
    kube_ldflags+=" -X '$pkg.gitTreeState=archive'"
    kube_ldflags+=" -X '$pkg.buildDate=$build_date'"
  done
  build "$kube_mod" k8s.io/kubernetes/cmd/kube-apiserver "$apiserver_bin" \
    -tags selinux,notest,grpcnotrace -ldflags "$kube_ldflags"
  apiserver_ok || die "$apiserver_bin --version does not print 'Kubernetes $k8s_ver'"
fi

if [[ ${TAILGUARD_KUBE_REBUILD:-0} == 1 ]] || ! etcd_ok; then
  # etcd's version string is a compiled-in constant; only its git SHA comes from
  # ldflags upstream, and the proxy does not expose it, so it keeps its default.
  build "$etcd_mod" go.etcd.io/etcd/server/v3 "$etcd_bin" -ldflags "-s -w"
  etcd_ok || die "$etcd_bin --version does not print 'etcd Version: ${etcd_ver#v}'"
fi

if command -v sha256sum >/dev/null 2>&1; then
  (cd -- "$out_dir" && sha256sum kube-apiserver etcd) | sed 's/^/build-kube: sha256 /' >&2
fi
log "kube-apiserver $k8s_ver + etcd $etcd_ver ready in $out_dir (total $(elapsed "$t_start"))"
emit
