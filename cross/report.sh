#!/usr/bin/env bash
# Writes cross/REPORT.md: the static agent's size per target against the
# budget, a per-crate size breakdown (when cargo-bloat is installed), and the
# agent's memory use (once the agent has the commands to measure).
#
#   cross/report.sh                 # builds (incrementally) with cross/build.sh first
#   FLEET_REPORT_NO_BUILD=1 cross/report.sh   # report on target/cross as it is
#
# Memory figures are measured from /proc/<pid>/status (VmRSS, VmHWM) of the
# agent process; see rss_after and pull_peak below (the latter with
# bench/lib.sh, the code bench/pull.sh measures with). Set FLEET_REPORT_IDLE_CMD /
# FLEET_REPORT_PULL_CMD to measure any command now (for example a prototype).
#
# Exits non-zero when a target is over its size budget.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# shellcheck source=cross/targets.sh
. "$repo/cross/targets.sh"

out=${FLEET_CROSS_OUT:-$repo/target/cross}
export FLEET_CROSS_OUT=$out
report=$repo/cross/REPORT.md
budget_aarch64=6000000 # bytes (6 MB): the stated budget for Jetsons / arm64 boxes
build_secs="not measured (FLEET_REPORT_NO_BUILD)"

# Budget in bytes per target; empty: no budget set.
budget() {
  case "$1" in
    aarch64-*) echo "$budget_aarch64" ;;
    armv7-*) echo "$budget_aarch64" ;; # no separate figure stated: hold armv7 to the same
    *) echo "" ;;
  esac
}
budget_note() {
  case "$1" in
    aarch64-*) echo "6 MB" ;;
    armv7-*) echo "6 MB (assumed, same as aarch64)" ;;
    *) echo "none set" ;;
  esac
}
mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1000000 }'; }

# --------------------------------------------------------------- memory ---

# Prints "VmRSS=<n> kB VmHWM=<n> kB" of a pid, from /proc/<pid>/status.
proc_mem() {
  awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } END { if (r == "") exit 1; printf "VmRSS=%s kB VmHWM=%s kB\n", r, h }' \
    "/proc/$1/status" 2>/dev/null
}

# rss_after SECONDS CMD...: starts CMD, waits SECONDS, prints its memory
# (resident now and high-water mark), then stops it (TERM, KILL after 10 s).
# Fails if CMD exited before the time was up.
rss_after() {
  local secs=$1; shift
  "$@" >/dev/null 2>&1 &
  local pid=$! i mem
  for ((i = 0; i < secs; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; echo "exited after ${i}s, before ${secs}s"; return 1; }
    sleep 1
  done
  mem=$(proc_mem "$pid") || { echo "exited before measurement"; return 1; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "$mem"
}

# within KEY BUDGET_KB FIGURE: "yes"/"NO" for the first KEY=<kB> in FIGURE.
within() {
  local kb
  kb=$(grep -o "$1=[0-9]*" <<<"$3" | head -1 | cut -d= -f2)
  if [ -z "$kb" ]; then echo "—"; elif [ "$kb" -le "$2" ]; then echo yes; else echo "**NO**"; fi
}

# The agent commands to measure. Empty: not measurable yet.
# Idle: the agent connected to a broker (mosquitto on 127.0.0.1), nothing to do.
# By default: the x86_64 static binary's `fleet-agent run` against Mosquitto on
# a free loopback port (agent_env in cross/targets.sh), no apps.
read -r -a idle_cmd <<<"${FLEET_REPORT_IDLE_CMD:-}"
# Pull: the agent fetching and unpacking an image with a 1 GiB layer from a
# local docker-registry, measured with bench/pull.sh's code (bench/lib.sh):
# FLEET_REPORT_PULL_MIB sets the layer's size (default 1024), FLEET_REPORT_NO_PULL=1 skips it.
read -r -a pull_cmd <<<"${FLEET_REPORT_PULL_CMD:-}"

# pull_peak BIN: prints the peak RSS of `BIN pull --unpack` of a fresh one-layer
# image (bench_make_layer: real files, tar+gzip), with its wall time.
pull_peak() {
  local bin=$1 mib=${FLEET_REPORT_PULL_MIB:-1024}
  (
    # shellcheck source=bench/lib.sh
    . "$repo/bench/lib.sh"
    bench_work=$(mktemp -d)
    trap bench_cleanup EXIT
    bench_start_registry >&2
    bench_make_layer "$mib" "$bench_work/layer.tar.gz"
    bench_push_image report/files:1 "$bench_work/layer.tar.gz" \
      application/vnd.oci.image.layer.v1.tar+gzip "$bench_layer_diff_id" >/dev/null
    rm -f "$bench_work/layer.tar.gz"
    if [ "${#pull_cmd[@]}" -gt 0 ]; then
      bench_run_peak "${pull_cmd[@]}"
    else
      bench_run_peak "$bin" pull "$bench_addr/report/files:1" --state-dir "$bench_work/state" \
        --reserve 0 --unpack -o json
    fi
    [ "$bench_rc" -eq 0 ] || { echo "the pull failed (exit $bench_rc)"; exit 1; }
    echo "VmHWM=$bench_hwm_kb kB ($(bench_calc "$bench_hwm_kb / 1024" 1) MB) for $mib MiB of files in $bench_layer_files files ($bench_secs s in all; bench/pull.sh has the details)"
  )
}

# ------------------------------------------------------------------ build ---

if [ -z "${FLEET_REPORT_NO_BUILD:-}" ]; then
  times=$(mktemp)
  trap 'rm -f "$times"' EXIT
  FLEET_CROSS_TIMES=$times cross/build.sh
  build_secs="$(cat "$times") s for this run's \`cross/build.sh\` (incremental when already built; clean figures are in cross/README.md)"
fi

# ------------------------------------------------------------------ write ---

over=0
{
  echo "# Static agent report"
  echo
  echo "Written by \`cross/report.sh\` on $(date -u +%Y-%m-%d) from commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet -- . ':!cross/REPORT.md' 2>/dev/null || echo ' (with uncommitted changes)'),"
  echo "$(rustc --version). Build time: $build_secs."
  echo
  echo "## Size (stripped, static, release profile)"
  echo
  echo "| target | bytes | size | zstd -19 | budget | within |"
  echo "|---|---:|---:|---:|---|---|"
  for t in "${all_targets[@]}"; do
    bin=$out/$t/fleet-agent
    if [ ! -f "$bin" ]; then
      echo "| $t | — | not built | — | $(budget_note "$t") | — |"
      continue
    fi
    size=$(stat -c %s "$bin")
    z=$(zstd -19 -q -c "$bin" | wc -c)
    b=$(budget "$t")
    verdict="—"
    if [ -n "$b" ]; then
      if [ "$size" -le "$b" ]; then verdict="yes"; else verdict="**NO**"; over=1; fi
    fi
    echo "| $t | $size | $(mb "$size") | $(mb "$z") | $(budget_note "$t") | $verdict |"
  done
  echo
  echo "zstd -19 is roughly what an agent self-update would send over the air."
  echo
  echo "## Where the bytes go (aarch64-unknown-linux-musl)"
  echo
  if command -v cargo-bloat >/dev/null; then
    echo "\`cargo bloat --crates\` (cargo-bloat $(cargo bloat --version 2>/dev/null | awk '{print $NF}'),"
    echo "installed with \`cargo install cargo-bloat --locked\` from crates.io), on the same"
    echo "release profile without \`strip\` (it needs the symbols). Sizes are of \`.text\`."
    echo
    echo '```'
    (
      t=aarch64-unknown-linux-musl
      target_env "$t"
      CARGO_PROFILE_RELEASE_STRIP=false cargo bloat --release --locked -p fleet-agent --bin fleet-agent \
        --target "$t" --crates -n 25 2>/dev/null
    ) || echo "cargo bloat failed"
    echo '```'
  else
    echo "Not measured: cargo-bloat is not installed (\`cargo install cargo-bloat --locked\`)."
  fi
  echo
  echo "## Memory"
  echo
  echo "Measured from \`/proc/<pid>/status\` of the agent process (\`rss_after\`, \`pull_peak\` in"
  echo "\`cross/report.sh\`, the latter with bench/lib.sh), on the x86_64 musl binary run natively: under qemu-user the"
  echo "figures would be the emulator's. Real arm64 figures come from running the same"
  echo "functions on a device."
  echo
  echo "| what | figure | budget | within |"
  echo "|---|---|---|---|"
  x86_bin=$out/x86_64-unknown-linux-musl/fleet-agent
  if [ "${#idle_cmd[@]}" -eq 0 ] && [ -x "$x86_bin" ]; then
    idle_dir=$(mktemp -d)
    idle_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    if agent_env "$idle_dir" "$idle_port" >"$idle_dir/setup.log" 2>&1; then
      idle_cmd=("$x86_bin" run --config "$idle_dir/agent.toml" --device report-idle)
    fi
  fi
  if [ "${#idle_cmd[@]}" -gt 0 ]; then
    fig=$(rss_after 60 "${idle_cmd[@]}" || true)
    echo "| idle RSS after 60 s connected to Mosquitto (no apps) | $fig | 10 MB | $(within VmRSS 10240 "$fig") |"
  else
    echo "| idle RSS after 60 s connected | not measured: x86_64-unknown-linux-musl not built, or mosquitto missing | 10 MB | — |"
  fi
  if [ -n "${agent_env_pid:-}" ]; then kill "$agent_env_pid" 2>/dev/null || true; rm -rf "$idle_dir"; fi
  if [ -n "${FLEET_REPORT_NO_PULL:-}" ]; then
    echo "| peak RSS while pulling + unpacking a 1 GiB layer | not measured (FLEET_REPORT_NO_PULL) | 64 MB | — |"
  elif [ ! -x "$x86_bin" ] && [ "${#pull_cmd[@]}" -eq 0 ]; then
    echo "| peak RSS while pulling + unpacking a 1 GiB layer | not measured: x86_64-unknown-linux-musl not built | 64 MB | — |"
  else
    fig=$(pull_peak "$x86_bin" || true)
    echo "| peak RSS while pulling + unpacking a 1 GiB layer | $fig | 64 MB | $(within VmHWM 65536 "$fig") |"
  fi
  echo
  echo "Where the memory goes (heaptrack on \`fleet-agent run\`, idle): the largest"
  echo "consumer was sled's global metrics, 41 histograms of 65,536 buckets each"
  echo "(21 MiB, allocated and zero-filled on the first \`Db\` open even with metrics"
  echo "compiled out). third_party/sled carries a one-function patch that skips them"
  echo "(third_party/sled/PATCHES.md); that took idle RSS from 26 MB to 5 MB and the"
  echo "1 GiB pull peak from 34 MB to 13 MB. Of the idle figure, about 4 MB is the"
  echo "binary's own mapped text (RssFile) and about 1 MB is heap and stacks (RssAnon)."
} >"$report"

echo "cross/report.sh: wrote $report"
cat "$report"
[ "$over" -eq 0 ] || { echo "cross/report.sh: a target is over its size budget" >&2; exit 1; }
