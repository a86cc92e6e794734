#!/usr/bin/env bash
# Runtime benchmark, in one run on this machine (needs root):
#  1. "release staged (bundle + rootfs ready) → container process running"
#     through the agent's runtime (ContainerRuntime::timed_start, by the
#     agent/examples/runtime_bench.rs helper) against the runtime binary run
#     directly on the same kind of bundle (`run -d`, and `create` + `start`),
#     N runs each, interleaved; median and p90, for crun and runc
#     (goal: agent <= crun + 30 ms);
#  2. the idle memory of `fleet-agent run` (VmRSS, VmHWM) after 60 s
#     connected to Mosquitto on loopback, managing two running apps applied
#     from an OCI layout with one signed desired state (goal: <= 10 MB).
# Writes bench/REPORT-runtime.md. Never fails on timing.
#
# Usage: bench/runtime.sh [N]   (default 20)
# Environment: BENCH_IDLE_SECS (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
n=${1:-20}
idle_secs=${BENCH_IDLE_SECS:-60}
report=bench/REPORT-runtime.md

[ "$(id -u)" -eq 0 ] || { echo "bench/runtime.sh: needs root (overlay mounts, crun/runc)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "bench/runtime.sh: /bin/busybox missing (busybox-static)" >&2; exit 1; }

cargo build --release --locked -p fleet-agent --bin fleet-agent --example runtime_bench >&2
target=${CARGO_TARGET_DIR:-target}
agent=$target/release/fleet-agent
helper=$target/release/examples/runtime_bench

# crun 1.8 refuses hybrid cgroup hosts whose hugetlb sits on v2 (as the tests do).
if [ -d /sys/fs/cgroup ]; then
  mkdir -p /sys/fs/cgroup/hugetlb 2>/dev/null || true
  mountpoint -q /sys/fs/cgroup/hugetlb || mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb 2>/dev/null || true
fi

bench_work=$(mktemp -d)
mosq_pid=""
agent_pid=""
idle_rt_bin=""
cleanup() {
  [ -n "$agent_pid" ] && kill -KILL "$agent_pid" 2>/dev/null
  [ -n "$mosq_pid" ] && kill "$mosq_pid" 2>/dev/null
  # Containers and overlay mounts the bench left (after a failure).
  local root id m
  for root in "$bench_work"/*/agent-root "$bench_work"/*/direct-root "$bench_work"/idle*/runtime-root; do
    [ -d "$root" ] || continue
    for rt in crun runc; do
      command -v "$rt" >/dev/null || continue
      for id in $("$rt" --root "$root" list -q 2>/dev/null || true); do
        "$rt" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
      done
    done
  done
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(awk -v w="$bench_work" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r)
  bench_cleanup
}
trap cleanup EXIT

# stats FILE WHAT: "median p90" (ms) of the WHAT samples (p90: nearest rank).
stats() {
  awk -v w="$2" '$1 == w { print $2 }' "$1" | sort -n | awk '
    { v[NR] = $1 }
    END {
      if (NR == 0) { print "- -"; exit }
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      r = int(0.9 * NR); if (r < 0.9 * NR) r++
      printf "%.1f %.1f\n", m, v[r]
    }'
}

# ------------------------------------------------------------- start ---

start_rows=""
goal_line=""
for rt in crun runc; do
  bin=$(command -v "$rt" || true)
  if [ -z "$bin" ]; then
    start_rows+="| $rt | not installed | | | |"$'\n'
    continue
  fi
  echo "== $rt: $n starts through the agent, $n with run -d, $n with create + start" >&2
  samples=$bench_work/start-$rt.txt
  if ! "$helper" start "$rt" "$bin" "$n" "$bench_work/start-$rt" >"$samples" 2>"$bench_work/start-$rt.err"; then
    echo "bench/runtime.sh: the $rt start bench failed:" >&2
    tail -5 "$bench_work/start-$rt.err" >&2
    start_rows+="| $rt | failed: $(tail -1 "$bench_work/start-$rt.err") | | | |"$'\n'
    continue
  fi
  read -r a_med a_p90 <<<"$(stats "$samples" agent)"
  read -r r_med r_p90 <<<"$(stats "$samples" run-d)"
  read -r c_med c_p90 <<<"$(stats "$samples" create-start)"
  version=$("$bin" --version | head -1)
  start_rows+="| $rt ($version) | $a_med / $a_p90 | $r_med / $r_p90 | $c_med / $c_p90 | $(bench_calc "$a_med - $r_med" 1) / $(bench_calc "$a_med - $c_med" 1) |"$'\n'
  if [ "$rt" = crun ]; then
    verdict=$(awk -v a="$a_med" -v r="$r_med" 'BEGIN { print (a <= r + 30) ? "met" : "missed" }')
    goal_line="Goal agent ≤ crun + 30 ms (medians, against \`crun run -d\`): **$verdict** ($a_med ms against $r_med + 30 ms)."
  fi
done

# -------------------------------------------------------------- idle ---

idle_row=""
idle_notes=""
apply_failures=""
# idle_run NAME EXTRA_TOML: a device with two apps, `fleet-agent run` for
# idle_secs; sets idle_mem ("VmRSS=.. VmHWM=.. RssAnon=.. RssFile=.. Threads=..") or idle_err.
idle_run() {
  local name=$1 extra=$2 dir=$bench_work/$1 port i running
  idle_mem="" idle_err=""
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$dir"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$dir/mosquitto.conf"
  mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
  mosq_pid=$!
  for ((i = 0; i < 50; i++)); do
    mosquitto_pub -h 127.0.0.1 -p "$port" -t probe -m x 2>/dev/null && break
    sleep 0.1
  done
  "$helper" device "$dir" crun "$idle_rt_bin" "mqtt://127.0.0.1:$port"
  printf '%s\n' "$extra" >>"$dir/agent.toml"
  if ! "$agent" apply --config "$dir/agent.toml" --content "$dir/layout" "$dir/desired.json" >"$dir/apply.out" 2>&1; then
    # Both apps share their layer blob; a failed first apply is reported and retried once.
    apply_failures+="- $name, first apply: $(grep -v '^ *$' "$dir/apply.out" | tr '\n' ' ' | cut -c1-400)"$'\n'
    if ! "$agent" apply --config "$dir/agent.toml" --content "$dir/layout" "$dir/desired.json" >"$dir/apply.out" 2>&1; then
      idle_err="apply failed twice: $(grep -v '^ *$' "$dir/apply.out" | tr '\n' ' ' | cut -c1-300)"
      return 1
    fi
  fi
  "$agent" run --config "$dir/agent.toml" >"$dir/run.log" 2>&1 &
  agent_pid=$!
  for ((i = 0; i < idle_secs; i++)); do
    kill -0 "$agent_pid" 2>/dev/null || { idle_err="fleet-agent run exited after ${i}s: $(tail -1 "$dir/run.log")"; agent_pid=""; return 1; }
    sleep 1
  done
  running=$(crun --root "$dir/runtime-root" list 2>/dev/null | awk 'NR > 1 && $3 == "running"' | wc -l)
  idle_mem=$(awk '/^(VmRSS|VmHWM|RssAnon|RssFile|Threads):/ { printf "%s=%s ", substr($1, 1, length($1) - 1), $2 } END { print "" }' "/proc/$agent_pid/status")
  idle_mem+="running=$running"
  kill -TERM "$agent_pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$agent_pid" 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true
  agent_pid=""
  for id in $(crun --root "$dir/runtime-root" list -q 2>/dev/null || true); do
    crun --root "$dir/runtime-root" delete --force "$id" >/dev/null 2>&1 || true
  done
  kill "$mosq_pid" 2>/dev/null || true
  wait "$mosq_pid" 2>/dev/null || true
  mosq_pid=""
}
kv() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'; }
mem_row() {
  local label=$1 mem=$2
  echo "| $label | $(kv "$mem" VmRSS) | $(kv "$mem" VmHWM) | $(kv "$mem" RssAnon) | $(kv "$mem" RssFile) | $(kv "$mem" Threads) | $(kv "$mem" running) |"
}

idle_rt_bin=$(command -v crun || true)
if [ -z "$idle_rt_bin" ] || ! command -v mosquitto >/dev/null; then
  idle_row="| not measured: crun or mosquitto missing | | | | | | |"
else
  echo "== idle: fleet-agent run with two apps, ${idle_secs} s (default config)" >&2
  if idle_run idle-default ""; then
    idle_row=$(mem_row "default config (sled cache_bytes 1 MiB)" "$idle_mem")
    default_rss=$(kv "$idle_mem" VmRSS)
  else
    idle_row="| default config | failed: $idle_err | | | | | |"
    default_rss=0
  fi
  echo "== idle: the same with [store] cache_bytes = 65536" >&2
  # agent.toml ends with its [store] table: the line lands there.
  idle_run idle-small-cache "cache_bytes = 65536" || true
  if [ -n "$idle_mem" ]; then
    idle_row+=$'\n'"$(mem_row "[store] cache_bytes = 65536" "$idle_mem")"
  else
    idle_row+=$'\n'"| [store] cache_bytes = 65536 | failed: $idle_err | | | | | |"
  fi
  if [ "$default_rss" -gt 0 ]; then
    idle_notes="Goal ≤ 10 MB (10240 kB) VmRSS with the default config: **$(awk -v r="$default_rss" 'BEGIN { print (r <= 10240) ? "met" : "missed" }')** ($default_rss kB)."
  fi
fi

# ------------------------------------------------------------ report ---

{
  echo "# Runtime benchmark"
  echo
  echo "Written by \`bench/runtime.sh $n\` on $(date -u '+%Y-%m-%d %H:%M UTC'); release build of this tree"
  echo "($(git rev-parse --short HEAD 2>/dev/null || echo '?'))."
  echo "Machine: $(uname -srm); $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo));"
  echo "$(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo); cgroup $(stat -fc %T /sys/fs/cgroup 2>/dev/null || echo '?')."
  echo "The machine is shared with other builds: figures are noisy, medians matter more than p90."
  echo
  echo "## Release staged → container process running ($n runs each, ms)"
  echo
  echo "Agent: \`ContainerRuntime::timed_start\` on a staged busybox release (\`sleep\`, a single"
  echo "snapshot dir, overlay rootfs): the supervisor's \`create\` (stdio pipes to the log"
  echo "collector) + \`start\`, until \`<runtime> state\` reports the process running. Staging is"
  echo "not timed. Baselines: the runtime binary itself on a bundle the agent staged, stdio on"
  echo "/dev/null, run from the same process (\`run -d\`, and \`create\` then \`start\`). The three are"
  echo "interleaved run by run."
  echo
  echo "| runtime | agent median / p90 | \`run -d\` median / p90 | \`create\`+\`start\` median / p90 | agent − baseline (medians: run -d / create+start) |"
  echo "|---|---|---|---|---|"
  printf '%s' "$start_rows"
  echo
  echo "$goal_line"
  echo
  echo "## Idle memory of \`fleet-agent run\` with two running apps"
  echo
  echo "Two apps (busybox \`sleep\`, restart always) applied with \`fleet-agent apply --content <OCI layout>\`"
  echo "from one signed desired state, then \`fleet-agent run\` (crun, connected to Mosquitto on loopback,"
  echo "supervising both) read from /proc/<pid>/status after ${idle_secs} s. kB."
  echo
  echo "| config | VmRSS | VmHWM | RssAnon | RssFile | threads | containers running |"
  echo "|---|---|---|---|---|---|---|"
  echo "$idle_row"
  echo
  echo "$idle_notes"
  if [ -n "$apply_failures" ]; then
    echo
    echo "\`fleet-agent apply\` failed on the first try (retried once, then measured):"
    echo
    printf '%s' "$apply_failures"
  fi
} >"$report"
echo "bench/runtime.sh: wrote $report" >&2
cat "$report"
