#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ (the fuzz crate) with libFuzzer's coverage
# instrumentation on the stable toolchain (what `cargo fuzz build -s none`
# does, without cargo-fuzz or nightly) and runs each for SECONDS, seeded from
# the signed fixtures where they fit. Prints one line per target: executions,
# executions per second, corpus units found, peak RSS, crashes. Exits non-zero
# if any target crashed, leaked past its memory limit or timed out; the
# input that did it is kept in $FUZZ_WORK/artifacts/<target>/.
#
# Usage: scripts/fuzz-run.sh [SECONDS] [--report FILE] [TARGET...]
#   SECONDS   per target (default 60); CI runs 10.
#   --report  also write the table as Markdown to FILE (a long run's report,
#             e.g. fuzz/REPORT.md).
#   TARGET    the targets to run (default: every [[bin]] of the fuzz crate).
# Environment: FUZZ_WORK (default target/fuzz): build dir, corpora, logs.
#   The corpora persist there, so a second run continues from the first.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${1:-60}
[ $# -gt 0 ] && shift
report=""
if [ "${1:-}" = "--report" ]; then
  report=$2
  shift 2
fi
case $seconds in
  '' | *[!0-9]*) echo "fuzz-run: SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;;
esac

manifest=fuzz/Cargo.toml
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(sed -n '/^\[\[bin\]\]/{n;s/^name = "\(.*\)"/\1/p}' "$manifest")
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz-run: no targets in $manifest" >&2; exit 1; }

work=${FUZZ_WORK:-$root/target/fuzz}
triple=$(rustc -vV | sed -n 's/^host: //p')
# Coverage for libFuzzer through LLVM's sancov pass (stable -C flags), the
# `fuzzing` cfg, and the checks a fuzz build wants. RUSTFLAGS reach only the
# target's code because --target is given (build scripts stay plain).
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
bin_args=()
for t in "${targets[@]}"; do bin_args+=(--bin "$t"); done
cargo build --manifest-path "$manifest" --locked --release \
  --target "$triple" --target-dir "$work/build" "${bin_args[@]}"
bins=$work/build/$triple/release

# Seeds: real inputs of the right shape, so the fuzzer starts past the parser
# front doors.
seeds_for() {
  case $1 in
    envelope_verify | desired_verify | trust_bootstrap | messages)
      echo "$root/protocol/tests/fixtures" ;;
  esac
}

header=$(printf '%-18s %12s %10s %8s %8s %8s  %s' target executions exec/s units rss_mb crashes result)
echo "$header"
rows=()
failed=0
for t in "${targets[@]}"; do
  corpus=$work/corpus/$t
  artifacts=$work/artifacts/$t
  log=$work/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  seeds=$(seeds_for "$t")
  set +e
  # shellcheck disable=SC2086 # $seeds is one path or nothing
  "$bins/$t" -max_total_time="$seconds" -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=1024 -artifact_prefix="$artifacts/" \
    "$corpus" $seeds >"$log" 2>&1
  rc=$?
  set -e
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  runs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  rss=$(stat peak_rss_mb)
  units=$(find "$corpus" -type f | wc -l)
  crashes=$(find "$artifacts" -type f | wc -l)
  result=ok
  if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    result="FAILED (exit $rc; see $log)"
    failed=1
  fi
  row=$(printf '%-18s %12s %10s %8s %8s %8s  %s' "$t" "${runs:-?}" "${rate:-?}" "$units" "${rss:-?}" "$crashes" "$result")
  echo "$row"
  rows+=("| \`$t\` | ${runs:-?} | ${rate:-?} | $units | ${rss:-?} | $crashes | $result |")
  if [ "$result" != ok ]; then
    tail -30 "$log" >&2
  fi
done

if [ -n "$report" ]; then
  {
    echo "# Fuzzing report"
    echo
    echo "Written by \`scripts/fuzz-run.sh $seconds --report $report\` on $(date -u +%Y-%m-%d)"
    echo "from commit $(git rev-parse --short HEAD), $(rustc --version), libFuzzer from"
    echo "libfuzzer-sys with sancov coverage on stable (no sanitizer), $(nproc) cores shared"
    echo "with other work. $seconds s per target, one process each, corpora seeded from"
    echo "\`protocol/tests/fixtures\` where the input is a signed document or a message."
    echo
    echo "| target | executions | exec/s | corpus units | peak RSS MB | crashes | result |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${rows[@]}"
  } >"$report"
  echo "fuzz-run: report in $report"
fi
if [ "$failed" -ne 0 ]; then
  echo "fuzz-run: a target failed; its input is under $work/artifacts/" >&2
  exit 1
fi
echo "fuzz-run: ${#targets[@]} targets, ${seconds} s each, no crash"
