#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo fuzz, libFuzzer),
# each for a bounded time, and prints per target the executions and the
# corpus size.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); TARGETs default to all of them. Each
# target starts from its committed seeds (fuzz/corpus/<target>, read only)
# and from what earlier runs found (fuzz/grown/<target>, where new inputs
# go; not committed). Exits non-zero if any target crashed, panicked on an
# invariant or hung (an input taking over FUZZ_TIMEOUT seconds, default 10),
# naming the input that did it (under fuzz/artifacts/<target>/).
#
# Uses `cargo +nightly fuzz` when a nightly toolchain is installed, else
# the stable toolchain with RUSTC_BOOTSTRAP=1, since the instrumentation
# flags are nightly-only (FUZZ_TOOLCHAIN=stable forces the fallback). No
# sanitizer by default: the code has no unsafe, so AddressSanitizer would
# find little and cost build and run time; FUZZ_SANITIZER=address adds it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
shift || true
case $seconds in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac
all_targets=(unit_file xfleet unit_name api_body)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
sanitizer=${FUZZ_SANITIZER:-none}
timeout=${FUZZ_TIMEOUT:-10}

if ! cargo fuzz --version >/dev/null 2>&1 && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is missing; run scripts/setup.sh (cargo install cargo-fuzz --locked)" >&2
  exit 1
fi
if [ "${FUZZ_TOOLCHAIN:-}" != stable ] && cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
  toolchain="nightly ($(cargo +nightly --version))"
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
  toolchain="stable with RUSTC_BOOTSTRAP=1 ($(cargo --version))"
fi
echo "fuzz.sh: ${targets[*]}, ${seconds}s each, sanitizer $sanitizer, $toolchain"

start=$(date +%s)
# One build for every target: they share all dependencies.
"${fuzz[@]}" build --sanitizer "$sanitizer"
built=$(date +%s)
echo "fuzz.sh: built in $((built - start))s"

mkdir -p artifacts
summary=()
failed=()
for target in "${targets[@]}"; do
  mkdir -p "grown/$target" "corpus/$target" "artifacts/$target"
  log="artifacts/$target.log"
  echo "fuzz.sh: running $target for ${seconds}s (log: fuzz/$log)"
  status=0
  "${fuzz[@]}" run --sanitizer "$sanitizer" "$target" "grown/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  corpus=$(grep -Eo 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n 1 | cut -d' ' -f2)
  line=$(printf '%-10s %10s execs  corpus %-12s seeds %3d' "$target" "${runs:-?}" "${corpus:-?}" \
    "$(find "corpus/$target" -type f | wc -l)")
  if [ "$status" -ne 0 ]; then
    artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
    grep -E "panicked at|^(left|right|  left|  right):|ERROR: libFuzzer|SUMMARY" "$log" | head -n 8 >&2 || true
    echo "fuzz.sh: $target FAILED (exit $status); input: ${artifact:-fuzz/$log}" >&2
    echo "fuzz.sh: reproduce with: cd fuzz && ${fuzz[*]} run --sanitizer $sanitizer $target ${artifact:-<artifact>}" >&2
    failed+=("$target")
    line="$line  FAILED: ${artifact:-fuzz/$log}"
  fi
  summary+=("$line")
done

echo "fuzz.sh: done in $(($(date +%s) - start))s (build $((built - start))s)"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failing targets: ${failed[*]}" >&2
  exit 1
fi
