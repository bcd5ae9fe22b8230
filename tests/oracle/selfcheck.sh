#!/usr/bin/env bash
# Self-check of the runtime oracle: runs every case in tests/oracle/testdata
# (or the files given) and compares the outcome with the one the file name
# starts with (<outcome>--<what>.json) and the "expectOutput" substring in the
# file (matched against the outcome JSON text). A case with `"kube": "selfcheck"`
# runs against a throwaway kube-apiserver (selfcheck-kube.sh; binaries from
# scripts/build-kube.sh) in a namespace of its own; without one it is skipped.
#
# Usage (as root): tests/oracle/selfcheck.sh [-j JOBS] [case.json ...]
# Builds/reuses the oracle with scripts/build-oracle.sh. Exit 0 iff none fails.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
jobs=1
if [[ ${1:-} == -j ]]; then
  jobs=$2
  shift 2
fi
cases=("$@")
((${#cases[@]})) || cases=("$here"/testdata/*.json)

eval "$("$here/../../scripts/build-oracle.sh")"
export TAILGUARD_ORACLE_BIN TAILGUARD_ORACLE_ROOTFS

out_dir=$(mktemp -d "${TMPDIR:-/tmp}/oracle-selfcheck.XXXXXX")
trap 'rm -rf -- "$out_dir"' EXIT

# The file each case runs from ("" = skipped, why in skip_why).
run_files=()
skip_why=()
need_kube=0
for f in "${cases[@]}"; do
  run_files+=("$f")
  skip_why+=("")
  if grep -q '"kube": *"selfcheck"' "$f"; then need_kube=1; fi
done
if ((need_kube)); then
  # shellcheck source=selfcheck-kube.sh
  source "$here/selfcheck-kube.sh"
  trap 'kube_stop; rm -rf -- "$out_dir"' EXIT
  t_kube=$(date +%s.%N)
  kube_ok=0
  if kube_start "$out_dir/kube"; then
    kube_ok=1
    printf 'kube-apiserver %s up in %ss\n' "$KUBE_SERVER" "$(awk -v a="$t_kube" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
  fi
  for i in "${!cases[@]}"; do
    f=${cases[$i]}
    grep -q '"kube": *"selfcheck"' "$f" || continue
    if ((!kube_ok)); then
      run_files[i]=""
      skip_why[i]="no kube-apiserver"
    elif ! kube_case "$f" "$out_dir/case-$i.json" "$i"; then
      run_files[i]=""
      skip_why[i]="setting up its namespace failed"
    else
      run_files[i]="$out_dir/case-$i.json"
    fi
  done
fi

run_one() {
  local f=$1 out=$2 t0 t1
  t0=$(date +%s.%N)
  if "$TAILGUARD_ORACLE_BIN" run <"$f" >"$out.json" 2>"$out.err"; then :; else echo "oracle-error" >"$out.json"; fi
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }' >"$out.time"
}
export -f run_one

t_all=$(date +%s.%N)
for i in "${!cases[@]}"; do
  [[ -n ${run_files[$i]} ]] || continue
  printf '%s\0%s\0' "${run_files[$i]}" "$out_dir/$((i + 1))"
done | xargs -0 -r -n 2 -P "$jobs" bash -c 'run_one "$1" "$2"' _
total=$(awk -v a="$t_all" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

fail=0
skipped=0
i=0
for f in "${cases[@]}"; do
  i=$((i + 1))
  name=$(basename -- "$f" .json)
  if [[ -z ${run_files[$((i - 1))]} ]]; then
    printf '%-52s %6s   skipped (%s)\n' "$name" "-" "${skip_why[$((i - 1))]}"
    skipped=$((skipped + 1))
    continue
  fi
  want=${name%%--*}
  expect=$(sed -n 's/^  "expectOutput": "\(.*\)",\{0,1\}$/\1/p' "$f" | sed 's/\\\(.\)/\1/g')
  res=$(<"$out_dir/$i.json")
  got=$(sed -n 's/^{"outcome":"\([a-z-]*\)".*/\1/p' <<<"$res")
  status=ok
  if [[ $got != "$want" ]]; then
    status="FAIL (outcome $got, want $want)"
  elif [[ -n $expect && $res != *"$expect"* ]]; then
    status="FAIL (output lacks: $expect)"
  fi
  printf '%-52s %6ss  %s\n' "$name" "$(<"$out_dir/$i.time")" "$status"
  if [[ $status != ok ]]; then
    fail=1
    printf '    %s\n' "$res" | cut -c1-2000
    sed 's/^/    stderr: /' "$out_dir/$i.err" | tail -20
  fi
done
printf '%d cases (%d skipped), %s s wall with -j %s\n' "${#cases[@]}" "$skipped" "$total" "$jobs"
# The test suite's run must not pass by skipping.
if [[ ${TAILGUARD_REQUIRE_TOOLS:-} == 1 && $skipped -gt 0 ]]; then
  echo "selfcheck: $skipped case(s) skipped, and TAILGUARD_REQUIRE_TOOLS=1 requires every one" >&2
  fail=1
fi
exit $fail
