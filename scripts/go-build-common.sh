# Shared by scripts/build-kube.sh and scripts/build-oracle.sh (sourced, not
# run): logging to stderr, timing, reading a pinned module version from a
# go.mod, finding the Go toolchain, and removing temporary paths on exit.
# The sourcing script sets `log_prefix` first.

log() { printf '%s: %s\n' "$log_prefix" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# Version of module $2 as required in go.mod $1. Plain text parsing (no `go`
# invocation) keeps the warm path fast.
modver() {
  awk -v m="$2" '
    $1 == "require" { $1 = ""; $0 = $0 }
    $1 == m && $2 ~ /^v[0-9]/ { print $2; found = 1; exit }
    END { if (!found) exit 1 }' "$1" ||
    die "cannot find $2 in $1"
}

# Temporary files and directories listed in tmp_paths go on exit, however the
# script ends.
tmp_paths=()
cleanup() { ((${#tmp_paths[@]} == 0)) || rm -rf -- "${tmp_paths[@]}"; }
trap_cleanup() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# The Go toolchain: $GO, `go` on PATH, or the image's /usr/local/go.
find_go() {
  go_bin=${GO:-$(command -v go || true)}
  [[ -n $go_bin ]] || go_bin=/usr/local/go/bin/go
  [[ -x $go_bin ]] || die "no go toolchain found (set GO=/path/to/go)"
}

# Takes the build lock of cache directory $1, waiting while another build of it
# runs (parallel test runners), and removes what builds killed mid-way left
# there. The lock is held until the script exits.
lock_cache_dir() {
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"$1/.lock"
  if ! flock -n 9; then
    log "another build of $1 is running; waiting for it"
    flock 9
  fi
  rm -rf -- "$1"/*.tmp.*
}
