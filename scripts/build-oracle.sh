#!/usr/bin/env bash
# Build the runtime oracle for tailguard's tests: the real Tailscale container
# entrypoint (containerboot) with tailscaled and the tailscale CLI, built from
# source fetched through the Go module proxy, an image-like root filesystem
# (busybox + those binaries, like the Alpine-based tailscale/tailscale image),
# and tests/oracle's `tailguard-oracle` driver. Nothing prebuilt is downloaded
# except Debian's busybox-static package (installed with apt-get if missing).
#
# The Tailscale version is pinned by tests/oracle/go.mod (tailscale.com); go.sum
# makes the sources verifiable. Everything is cached per version in
#   ${TAILGUARD_CACHE:-$HOME/.cache/tailguard}/oracle/<tailscale-version>/
# and reused on later runs; tailguard-oracle itself is rebuilt when the sources
# under tests/oracle change. Set TAILGUARD_ORACLE_REBUILD=1 to force a rebuild.
#
# Beside the rootfs, `apptools/` holds the clients an emulated app container
# uses in traffic cases (mounted only into that container, never into the
# image): the host's curl with its shared libraries (apt-get installs curl if
# missing). The Go client is tailguard-oracle itself (`http-get`).
#
# stdout carries exactly two lines, meant for eval:
#   TAILGUARD_ORACLE_BIN=/abs/path
#   TAILGUARD_ORACLE_ROOTFS=/abs/path
# Everything else goes to stderr. Usage: eval "$(scripts/build-oracle.sh)"
#
# A cold build (empty Go build cache) takes ~5-9 minutes and ~1 GB RAM on 2
# cores (measured with GOFLAGS=-p=1; both cores are used by default), plus the
# first download of the module sources; a warm
# run takes well under a second. Running the oracle needs root.
set -euo pipefail

log_prefix=build-oracle
# shellcheck source=scripts/go-build-common.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/go-build-common.sh"

# Bump when the layout of the root filesystem (or of apptools) below changes.
rootfs_layout=1
apptools_layout=1

t_start=$(now)
repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
oracle_mod="$repo_root/tests/oracle"


ts_ver=$(modver "$oracle_mod/go.mod" tailscale.com) # e.g. v1.96.4
[[ $ts_ver =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
  die "unexpected tailscale.com version '$ts_ver' (want a release vX.Y.Z)"

cache_root=${TAILGUARD_CACHE:-${HOME:?HOME or TAILGUARD_CACHE must be set}/.cache/tailguard}
out_dir="$cache_root/oracle/$ts_ver"
mkdir -p -- "$out_dir"
out_dir=$(cd -- "$out_dir" && pwd -P)
oracle_bin="$out_dir/tailguard-oracle"
rootfs="$out_dir/rootfs"
tsbin="$rootfs/usr/local/bin"
apptools="$out_dir/apptools"

# Hash of the oracle's sources: the cached binary must have been built from them.
src_hash=$(cd -- "$oracle_mod" && cat go.mod go.sum $(LC_ALL=C ls ./*.go) | sha256sum | cut -c1-16)

tailscale_ok() {
  local out
  [[ -x $tsbin/containerboot && -x $tsbin/tailscaled && -x $tsbin/tailscale ]] &&
    out=$("$tsbin/tailscale" version 2>/dev/null) &&
    [[ $out == "${ts_ver#v}"* ]] &&
    out=$("$tsbin/tailscaled" --version 2>/dev/null) &&
    [[ $out == "${ts_ver#v}"* ]]
}
rootfs_ok() {
  [[ -f $rootfs/.tailguard-rootfs && -x $rootfs/bin/busybox && -L $rootfs/bin/sh ]] &&
    [[ $(<"$rootfs/.tailguard-rootfs") == "layout=$rootfs_layout tailscale=$ts_ver" ]]
}
curl_id() {
  local c
  c=$(command -v curl 2>/dev/null) || return 0
  printf 'curl=%s' "$(sha256sum <"$c" | cut -c1-16)"
}
apptools_ok() {
  [[ -f $apptools/.tailguard-apptools && -x $apptools/bin/curl ]] &&
    [[ $(<"$apptools/.tailguard-apptools") == "layout=$apptools_layout $(curl_id)" ]]
}
oracle_ok() {
  [[ -x $oracle_bin ]] &&
    [[ $("$oracle_bin" version 2>/dev/null) == "tailguard-oracle $src_hash tailscale.com $ts_ver" ]]
}

emit() {
  printf 'TAILGUARD_ORACLE_BIN=%q\n' "$oracle_bin"
  printf 'TAILGUARD_ORACLE_ROOTFS=%q\n' "$rootfs"
}

rebuild=${TAILGUARD_ORACLE_REBUILD:-0}
if [[ $rebuild != 1 ]] && tailscale_ok && rootfs_ok && apptools_ok && oracle_ok; then
  log "reusing cached oracle for tailscale $ts_ver in $out_dir ($(elapsed "$t_start"))"
  emit
  exit 0
fi

# Serialise concurrent builds of the same version; whoever waited re-checks.
lock_cache_dir "$out_dir"
if [[ $rebuild != 1 ]] && tailscale_ok && rootfs_ok && apptools_ok && oracle_ok; then
  log "reusing oracle built meanwhile in $out_dir ($(elapsed "$t_start"))"
  emit
  exit 0
fi

trap_cleanup

find_go

# Read-only module mode: the committed go.mod/go.sum must be complete.
# GOFLAGS_EXTRA (e.g. -p=1) can make a build gentler on a shared machine.
export GOFLAGS="-mod=readonly -buildvcs=false ${GOFLAGS_EXTRA:-}"
export CGO_ENABLED=0
log "using $("$go_bin" version)"

# --- busybox-static ----------------------------------------------------------
busybox_src=${TAILGUARD_BUSYBOX:-/bin/busybox}
need_busybox() {
  [[ -x $busybox_src ]] || return 0
  if [[ -z ${TAILGUARD_BUSYBOX:-} ]] && command -v dpkg-query >/dev/null 2>&1; then
    # A dynamically linked /bin/busybox (package "busybox") cannot run in the rootfs.
    [[ $(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null) == "install ok installed" ]] || return 0
  fi
  return 1
}
install_busybox() {
  command -v apt-get >/dev/null 2>&1 ||
    die "$busybox_src is missing and there is no apt-get: install a static busybox and set TAILGUARD_BUSYBOX"
  [[ $(id -u) == 0 ]] || die "installing busybox-static needs root"
  if ! apt-cache show busybox-static >/dev/null 2>&1; then
    log "apt-get update (no package lists yet)"
    apt-get update -qq >&2 || die "apt-get update failed"
  fi
  log "installing busybox-static with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >&2 ||
    { log "retrying after apt-get update"; apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >&2; } ||
    die "apt-get install busybox-static failed"
}

# --- the tailscale binaries ---------------------------------------------------
if [[ $rebuild == 1 ]] || ! tailscale_ok || ! rootfs_ok; then
  if need_busybox; then install_busybox; fi
  [[ -x $busybox_src ]] || die "no busybox at $busybox_src"

  bin_tmp="$out_dir/bin.tmp.$$"
  tmp_paths+=("$bin_tmp")
  mkdir -p -- "$bin_tmp"
  if [[ $rebuild != 1 ]] && tailscale_ok; then
    cp -p -- "$tsbin/containerboot" "$tsbin/tailscaled" "$tsbin/tailscale" "$bin_tmp/"
  else
    t0=$(now)
    log "building containerboot, tailscaled, tailscale $ts_ver (cold: several minutes) ..."
    (cd -- "$oracle_mod" && "$go_bin" build -trimpath -o "$bin_tmp/" \
      tailscale.com/cmd/containerboot tailscale.com/cmd/tailscaled tailscale.com/cmd/tailscale)
    log "built the tailscale binaries in $(elapsed "$t0")"
  fi

  # --- the image-like root filesystem (tailscale/tailscale is Alpine-based:
  # busybox applets, no bash/curl/jq; entrypoint /usr/local/bin/containerboot).
  rfs_tmp="$out_dir/rootfs.tmp.$$"
  tmp_paths+=("$rfs_tmp")
  rm -rf -- "$rfs_tmp"
  mkdir -p -- "$rfs_tmp"
  (
    cd -- "$rfs_tmp"
    mkdir -p bin sbin lib usr/bin usr/sbin usr/lib usr/local/bin usr/local/sbin \
      etc/ssl/certs dev proc sys run tmp var/lib var/log var/cache var/tmp root home mnt opt srv
    chmod 1777 tmp var/tmp
    chmod 0700 root
    ln -s /run var/run
    cp -- "$busybox_src" bin/busybox
    chmod 0755 bin/busybox
    while IFS= read -r applet; do
      [[ -n $applet && $applet != bin/busybox ]] || continue
      mkdir -p -- "$(dirname -- "$applet")"
      [[ -e $applet || -L $applet ]] || ln -s /bin/busybox "$applet"
    done < <(bin/busybox --list-full)
    install -m 0755 "$bin_tmp/containerboot" "$bin_tmp/tailscaled" "$bin_tmp/tailscale" usr/local/bin/
    cat >etc/passwd <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/:/sbin/nologin
EOF
    cat >etc/group <<'EOF'
root:x:0:root
nobody:x:65534:
EOF
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >etc/hosts
    printf 'nameserver 127.0.0.1\n' >etc/resolv.conf
    printf 'hosts: files dns\n' >etc/nsswitch.conf
    printf 'tailscale\n' >etc/hostname
    printf 'NAME="tailguard-oracle image (busybox, tailscale %s)"\nID=tailguard-oracle\n' "$ts_ver" >etc/os-release
    for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
      if [[ -f $ca ]]; then cp -- "$ca" etc/ssl/certs/ca-certificates.crt; break; fi
    done
  )
  # The busybox must run inside the root filesystem (i.e. be static).
  if [[ $(id -u) == 0 ]] && command -v chroot >/dev/null 2>&1; then
    chroot "$rfs_tmp" /bin/sh -c 'true' ||
      die "$busybox_src does not run inside the rootfs (not a static busybox?)"
  fi
  printf 'layout=%s tailscale=%s\n' "$rootfs_layout" "$ts_ver" >"$rfs_tmp/.tailguard-rootfs"
  rm -rf -- "$rootfs"
  mv -- "$rfs_tmp" "$rootfs"
  tailscale_ok || die "the built tailscale binaries do not report version ${ts_ver#v}"
  rootfs_ok || die "rootfs check failed after building it"
  log "root filesystem ready in $rootfs"
fi

# --- apptools: curl and its libraries, run through their own loader ----------
if [[ $rebuild == 1 ]] || ! apptools_ok; then
  if ! command -v curl >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "curl is missing and there is no apt-get"
    [[ $(id -u) == 0 ]] || die "installing curl needs root"
    log "installing curl with apt-get"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >&2 ||
      { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >&2; }; } ||
      die "apt-get install curl failed"
  fi
  curl_bin=$(command -v curl)
  at_tmp="$out_dir/apptools.tmp.$$"
  tmp_paths+=("$at_tmp")
  rm -rf -- "$at_tmp"
  mkdir -p -- "$at_tmp/bin" "$at_tmp/lib" "$at_tmp/libexec"
  cp -L -- "$curl_bin" "$at_tmp/libexec/curl"
  loader=""
  while read -r lib; do
    [[ -n $lib ]] || continue
    cp -L -- "$lib" "$at_tmp/lib/"
    if [[ $lib == */ld-linux* || $lib == */ld-musl* ]]; then loader=$(basename -- "$lib"); fi
  done < <(ldd "$curl_bin" | grep -o '/[^ ]*' | sort -u)
  [[ -n $loader ]] || die "no dynamic loader found in ldd $curl_bin"
  # The app image's own paths stay untouched: curl runs through the copied loader.
  printf '#!/bin/sh\nexec /opt/tailguard-app/lib/%s --library-path /opt/tailguard-app/lib /opt/tailguard-app/libexec/curl "$@"\n' \
    "$loader" >"$at_tmp/bin/curl"
  chmod 0755 "$at_tmp/bin/curl"
  : >"$at_tmp/bin/tailguard-oracle" # mount point for the Go client (this oracle)
  printf 'layout=%s %s\n' "$apptools_layout" "$(curl_id)" >"$at_tmp/.tailguard-apptools"
  rm -rf -- "$apptools"
  mv -- "$at_tmp" "$apptools"
  apptools_ok || die "apptools check failed after building it"
  log "app clients ready in $apptools ($("$curl_bin" --version | head -1 | cut -d' ' -f1-2))"
fi

# --- tailguard-oracle ------------------------------------------------------------
if [[ $rebuild == 1 ]] || ! oracle_ok; then
  t0=$(now)
  tmp="$oracle_bin.tmp.$$"
  tmp_paths+=("$tmp")
  log "building tailguard-oracle (sources $src_hash) ..."
  (cd -- "$oracle_mod" && "$go_bin" build -trimpath -ldflags "-X main.srcHash=$src_hash" -o "$tmp" .)
  mv -f -- "$tmp" "$oracle_bin"
  oracle_ok || die "$oracle_bin version does not match the sources"
  log "built tailguard-oracle in $(elapsed "$t0")"
fi

log "oracle for tailscale $ts_ver ready in $out_dir (total $(elapsed "$t_start"))"
emit
