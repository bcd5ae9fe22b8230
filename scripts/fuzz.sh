#!/usr/bin/env bash
# Bounded fuzzing of tailguard with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh                       # every target, 60 s each
#   scripts/fuzz.sh 300 review manifest   # 300 s each, two targets
#   scripts/fuzz.sh --minimize 120        # then merge new coverage into fuzz/corpus (cmin, capped)
#
# Targets (fuzz/fuzz_targets/, entry points in fuzz/src/lib.rs):
#   review             arbitrary bytes into admission::validate and ::mutate
#   review_structured  fuzzer-built AdmissionReviews: patch applies, is idempotent, no key echoed
#   expansion          the $(VAR) model against an independent kubelet model
#   manifest           the YAML reader of `check` and `inject`
#
# Needs a nightly toolchain (`rustup toolchain install nightly`); installs
# cargo-fuzz from crates.io (pinned) if it is missing. Each target starts from
# the committed seeds in fuzz/corpus/<target>/ and writes what it finds to
# fuzz/target/corpus-work/<target>/ (git-ignored), so a run never touches the
# committed corpus unless --minimize is given. A crash is written to
# fuzz/artifacts/<target>/ and makes the script exit 1: copy it to
# fuzz/regressions/<target>/ (replayed by tests/it/fuzz_regressions.rs) and fix it.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
# Per-target cap on the committed corpus (tests/it/fuzz_regressions.rs checks the total).
CORPUS_CAP=${FUZZ_CORPUS_CAP:-50}
ALL_TARGETS=(review review_structured expansion manifest)

minimize=0
seconds=60
targets=()
for arg in "$@"; do
  case "$arg" in
    --minimize) minimize=1 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *[!0-9]*) targets+=("$arg") ;;
    *) seconds=$arg ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# -a: debug assertions (overflow checks), as `cargo test` runs the same entry points.
# Built once; the binaries are then run directly, so sources changing during a
# long run do not trigger rebuilds.
cargo +nightly fuzz build --fuzz-dir fuzz -a
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$triple/release

crashed=()
for target in "${targets[@]}"; do
  seeds=fuzz/corpus/$target
  work=fuzz/target/corpus-work/$target
  mkdir -p "$seeds" "$work" "fuzz/artifacts/$target"
  echo "fuzz.sh: $target for ${seconds}s" >&2
  log=fuzz/target/fuzz-$target.log
  # -timeout: one input taking over 5 s is a finding (the apiserver's webhook timeout is 1-30 s).
  "$bin_dir/$target" "$work" "$seeds" -artifact_prefix="fuzz/artifacts/$target/" \
    -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -max_len=65536 \
    -dict=fuzz/fuzz.dict -print_final_stats=1 >"$log" 2>&1 || true
  grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|==[0-9]+==|SUMMARY|Test unit written)' "$log" >&2 || true
  if grep -qE '^(==[0-9]+== ERROR|SUMMARY: libFuzzer|Test unit written to .*(crash|timeout|oom|leak))' "$log"; then
    crashed+=("$target")
  fi
  runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
  echo "fuzz.sh: $target: ${runs:-?} executions (up to ${seconds}s); $(find "$work" -type f | wc -l) inputs in $work" >&2
done

if [ "$minimize" = 1 ]; then
  for target in "${targets[@]}"; do
    merged=fuzz/target/corpus-merged/$target
    rm -rf "$merged" && mkdir -p "$merged"
    "$bin_dir/$target" -merge=1 -timeout=5 -max_len=65536 \
      "$merged" "fuzz/corpus/$target" "fuzz/target/corpus-work/$target" >/dev/null 2>&1
    # The merge dropped redundant inputs; if more than the cap remain, keep a
    # spread over sizes (the smallest, the largest and evenly in between).
    find "fuzz/corpus/$target" -type f -delete
    find "$merged" -type f -printf '%s %p\n' | sort -n |
      awk -v cap="$CORPUS_CAP" '{ line[NR] = $0 }
        END { n = (NR < cap) ? NR : cap
              for (i = 0; i < n; i++) print line[(n > 1) ? int(i * (NR - 1) / (n - 1)) + 1 : 1] }' |
      cut -d' ' -f2- |
      while read -r file; do cp "$file" "fuzz/corpus/$target/"; done
    echo "fuzz.sh: fuzz/corpus/$target: $(find "fuzz/corpus/$target" -type f | wc -l) files, $(du -sh "fuzz/corpus/$target" | cut -f1)" >&2
  done
fi

if [ ${#crashed[@]} -gt 0 ]; then
  echo "fuzz.sh: CRASH in ${crashed[*]}: see fuzz/artifacts/<target>/; keep the input in fuzz/regressions/<target>/" >&2
  exit 1
fi
echo "fuzz.sh: no crash" >&2
