#!/usr/bin/env bash
# The release profile of the server against the agent's, in one run on this
# machine. The workspace builds for size (opt-level "z": the device agent's
# static binary); the server's own crate (and the crates only the server
# uses) build at opt-level 3 ([profile.release.package.*] in Cargo.toml).
# This script builds each variant once and measures:
#
#  1. the agent: `cargo build --release -p fleet-agent` for
#     x86_64-unknown-linux-musl (as cross/build.sh does), stripped size with
#     the server packages at "z" (baseline) and as Cargo.toml says (now);
#  2. the server, three builds of fleet-server: everything at "z" (baseline),
#     as Cargo.toml says (now), and "wider": now plus the crates only the
#     server links raised too (BENCH_WIDER, the candidates); each ingests
#     through Mosquitto (control-plane/examples/ingest_load.rs) N devices'
#     status reports (registration: decode, sled writes) and N x R telemetry
#     messages, REPEAT times in turn (A B C A B C ...), and its CPU time per
#     message is read from /proc/<pid>/stat (this VM exposes no hardware
#     counters to perf, and CPU time is less disturbed by other load than
#     wall time).
#
# The baseline variants are Cargo.toml's profile with `--config` setting the
# raised packages back to "z" (a config profile overrides the manifest's),
# so every variant builds from the same tree in the same target dir (shared
# dependencies are compiled once). Writes bench/REPORT-profile.md. Never
# fails on timing.
#
# Usage: bench/profile.sh [DEVICES] [ROUNDS] [REPEAT]   (default 2000 40 5)
# Environment: BENCH_NICE (default 15): the builds run under `nice -n`;
#   BENCH_WIDER (default "rumqttd axum matchit metrics metrics-util
#   metrics-exporter-prometheus"): server-only crates tried at opt-level 3.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
# shellcheck source=cross/targets.sh
. cross/targets.sh
devices=${1:-2000}
rounds=${2:-40}
repeat=${3:-5}
nice_level=${BENCH_NICE:-15}
report=bench/REPORT-profile.md
agent_target=x86_64-unknown-linux-musl
target=${CARGO_TARGET_DIR:-target}

# The packages Cargo.toml raises to opt-level 3 for the server: its own crate
# first, then any dependencies the agent does not link (so its size cannot
# move); the wider variant's candidates must not be linked by the agent either.
mapfile -t raised < <(awk '
  /^\[profile\.release\.package\./ { name = $0; sub(/^\[profile\.release\.package\./, "", name); sub(/\].*$/, "", name); next }
  /^\[/ { name = ""; next }
  name != "" && /^opt-level *= *3/ { print name; name = "" }' Cargo.toml | grep -vx sha2)
[ "${raised[0]:-}" = fleet-control-plane ] || { echo "bench/profile.sh: Cargo.toml raises no [profile.release.package.fleet-control-plane] opt-level = 3 first" >&2; exit 1; }
read -r -a wider <<<"${BENCH_WIDER:-rumqttd axum matchit metrics metrics-util metrics-exporter-prometheus}"
for p in "${raised[@]:1}" "${wider[@]}"; do
  if cargo tree -p fleet-agent -e normal --prefix none --target "$agent_target" 2>/dev/null | awk '{ print $1 }' | grep -qx "$p"; then
    echo "bench/profile.sh: $p is raised for the server but the agent links it too" >&2
    exit 1
  fi
done
# --config arguments that put PACKAGES back to "z".
at_z() { local p; for p in "$@"; do printf -- '--config\nprofile.release.package.%s.opt-level="z"\n' "$p"; done; }
mapfile -t cfg_base < <(at_z "${raised[@]}")
mapfile -t cfg_wider < <(for p in "${wider[@]}"; do printf -- '--config\nprofile.release.package.%s.opt-level=3\n' "$p"; done)

for tool in mosquitto curl python3 file; do
  command -v "$tool" >/dev/null || { echo "bench/profile.sh: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

bench_work=$(mktemp -d)
mosq_pid=""
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  [ -n "$mosq_pid" ] && kill "$mosq_pid" 2>/dev/null
  bench_cleanup
}
trap cleanup EXIT
mkdir -p "$bench_work/bin"

# build NAME SECONDS_VAR CARGO_ARGS...: one timed, niced release build.
build() {
  local name=$1 t0
  shift
  echo "== build: $name" >&2
  t0=$(bench_now)
  nice -n "$nice_level" cargo build --release --locked "$@" >&2
  build_secs[$name]=$(bench_calc "$(bench_now) - $t0" 0)
}
declare -A build_secs

# ------------------------------------------------------------- builds ---

(
  target_env "$agent_target"
  build_agent() {
    local name=$1
    shift
    build "$name" "$@" -p fleet-agent --target "$agent_target"
    cp "$target/$agent_target/release/fleet-agent" "$bench_work/bin/$name"
    echo "${build_secs[$name]}" >"$bench_work/bin/$name.secs"
  }
  build_agent agent-base "${cfg_base[@]}"
  build_agent agent-now
)
server_build() {
  local name=$1
  shift
  build "$name" "$@" -p fleet-control-plane --bin fleet-server
  cp "$target/release/fleet-server" "$bench_work/bin/$name"
}
server_build server-base "${cfg_base[@]}"
# The load generator and fleetctl are the same for every variant.
build tools "${cfg_base[@]}" -p fleet-control-plane --bin fleetctl --example ingest_load
cp "$target/release/fleetctl" "$target/release/examples/ingest_load" "$bench_work/bin/"
server_build server-now
server_build server-wider "${cfg_wider[@]}"
fleetctl=$bench_work/bin/fleetctl
load=$bench_work/bin/ingest_load
for b in agent-base agent-now; do file -b "$bench_work/bin/$b" | grep -q 'stripped' || strip "$bench_work/bin/$b"; done
agent_base=$(stat -c %s "$bench_work/bin/agent-base")
agent_now=$(stat -c %s "$bench_work/bin/agent-now")

# ------------------------------------------------------------ ingest ---

tck=$(getconf CLK_TCK)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
ingested() {
  curl -fs "$1/metrics" 2>/dev/null | awk -v k="fleet_ingest_messages_total{kind=\"$2\"}" '$1 == k { printf "%d", $2; f = 1 } END { if (!f) print 0 }'
}

# A fresh Mosquitto per run (no persistence): no retained status of an
# earlier run reaches the next server.
start_mosquitto() {
  local i
  mosq_port=$(free_port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000000\n' \
    "$mosq_port" >"$bench_work/mosquitto.conf"
  mosquitto -c "$bench_work/mosquitto.conf" >"$bench_work/mosquitto.log" 2>&1 &
  mosq_pid=$!
  for ((i = 0; i < 50; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$mosq_port") 2>/dev/null && return 0; sleep 0.1; done
  echo "bench/profile.sh: mosquitto did not come up" >&2
  return 1
}
stop_mosquitto() {
  kill "$mosq_pid" 2>/dev/null || true
  wait "$mosq_pid" 2>/dev/null || true
  mosq_pid=""
}
"$fleetctl" keys init --dir "$bench_work/keys" >/dev/null

# start_server BIN DIR: sets server_pid and server_url.
start_server() {
  local bin=$1 dir=$2 http_port i
  http_port=$(free_port)
  server_url=http://127.0.0.1:$http_port
  mkdir -p "$dir"
  cat >"$dir/server.toml" <<TOML
data_dir = "$dir/data"
[http]
listen = "127.0.0.1:$http_port"
[broker]
embedded = false
url = "mqtt://127.0.0.1:$mosq_port"
password = "bench"
[director]
key = "$bench_work/keys/director.key"
trust = "$bench_work/keys/trust.json"
# Plain TCP and device tokens: this measures ingest; bench/tls.sh measures
# what TLS and device certificates add.
[tls]
insecure = true
TOML
  "$bin" --config "$dir/server.toml" >"$dir/server.log" 2>&1 &
  server_pid=$!
  for ((i = 0; i < 100; i++)); do
    curl -fs "$server_url/metrics" >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench/profile.sh: fleet-server did not come up:" >&2
  tail -5 "$dir/server.log" >&2
  return 1
}
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
# wait_idle PUB_PID: until the publisher has exited and the server's next
# 0.25 s sample is quiet (under a quarter of a core); sets busy_ticks (the
# server's CPU ticks at the end of its last busy sample). Reads only /proc.
wait_idle() {
  local pub=$1 prev cur
  prev=$(cpu_ticks "$server_pid")
  while :; do
    sleep 0.25
    cur=$(cpu_ticks "$server_pid")
    if ! kill -0 "$pub" 2>/dev/null && [ $((cur - prev)) -lt $((tck / 16 + 1)) ]; then
      busy_ticks=$prev
      return 0
    fi
    prev=$cur
  done
}

# measure VARIANT RUN: one server start, N status reports, N x R telemetry.
declare -A status_us telemetry_us
measure() {
  local v=$1 run=$2 dir=$bench_work/srv-$1-$2 c0 s_count t_count base
  start_mosquitto
  start_server "$bench_work/bin/server-$v" "$dir"
  sleep 2
  c0=$(cpu_ticks "$server_pid")
  "$load" publish --broker "mqtt://127.0.0.1:$mosq_port" --devices "$devices" --rounds 0 --status \
    >/dev/null 2>"$dir/pub-s.err" &
  wait_idle $!
  s_count=$(ingested "$server_url" status)
  status_us[$v]+="$(bench_calc "($busy_ticks - $c0) / $tck * 1000000 / ($s_count + 0.000001)" 1) "
  base=$(ingested "$server_url" telemetry)
  c0=$(cpu_ticks "$server_pid")
  "$load" publish --broker "mqtt://127.0.0.1:$mosq_port" --devices "$devices" --rounds "$rounds" \
    >/dev/null 2>"$dir/pub-t.err" &
  wait_idle $!
  t_count=$(($(ingested "$server_url" telemetry) - base))
  telemetry_us[$v]+="$(bench_calc "($busy_ticks - $c0) / $tck * 1000000 / ($t_count + 0.000001)" 2) "
  echo "   $v run $run: $s_count status, $t_count telemetry; CPU us/msg so far: status ${status_us[$v]% }; telemetry ${telemetry_us[$v]% }" >&2
  stop_server
  stop_mosquitto
}

variants=(base now wider)
for ((run = 1; run <= repeat; run++)); do
  for v in "${variants[@]}"; do
    echo "== ingest: $v, run $run of $repeat" >&2
    measure "$v" "$run"
  done
done

# median of the numbers in "$1"
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
declare -A st_med te_med
for v in "${variants[@]}"; do
  st_med[$v]=$(median "${status_us[$v]}")
  te_med[$v]=$(median "${telemetry_us[$v]}")
done
ratio() { bench_calc "$1 / ($2 + 0.000001)" 2; }
size_mb() { bench_calc "$1 / 1000000" 2; }

machine="$(uname -srm); $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)); $(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
{
  echo "# Release profile: the server at opt-level 3, the agent for size"
  echo
  echo "Written by \`bench/profile.sh $devices $rounds $repeat\` on $(date -u '+%Y-%m-%d %H:%M UTC') from this tree"
  echo "($(git rev-parse --short HEAD 2>/dev/null || echo '?')). Machine: $machine; $(rustc --version)."
  echo "Other builds and tests shared the machine: CPU-time figures are noisy (medians of $repeat runs)."
  echo
  echo "The workspace's release profile is \`opt-level = \"z\"\`, fat LTO, one codegen unit, \`panic = \"abort\"\`"
  echo "(the device agent's static binary). Cargo.toml raises to opt-level 3: $(printf '`%s` ' "${raised[@]}")(and \`sha2\`, for"
  echo "the agent's hashing, in both variants). Baseline: the same tree with \`--config\` putting those packages back to \"z\"."
  echo
  echo "## Agent: \`cargo build --release -p fleet-agent --target $agent_target\` (stripped)"
  echo
  echo "| variant | bytes | size | build |"
  echo "|---|---|---|---|"
  echo "| baseline (server packages at \"z\") | $agent_base | $(size_mb "$agent_base") MB | $(cat "$bench_work/bin/agent-base.secs") s |"
  echo "| now (Cargo.toml) | $agent_now | $(size_mb "$agent_now") MB | $(cat "$bench_work/bin/agent-now.secs") s |"
  echo
  if [ "$agent_base" = "$agent_now" ]; then
    echo "Identical: none of the raised packages is in the agent's dependency graph (the script checks), so"
    echo "cargo reuses every agent artifact. cross/REPORT.md's x86_64 figure stands."
  else
    echo "**The agent's size changed by $((agent_now - agent_base)) bytes**: look at which raised package it links."
  fi
  echo
  echo "## Server: CPU time of fleet-server per ingested message"
  echo
  echo "fleet-server subscribed through Mosquitto on loopback; \`ingest_load\` publishes $devices devices'"
  echo "status reports (registration: decode, verify, sled writes) then $devices x $rounds telemetry messages"
  echo "(QoS 0). CPU = utime + stime of the server process from the publish until it is idle; microseconds"
  echo "per message, median of $repeat runs (variants in turn: A B C A B C ...)."
  echo
  echo "| variant | status us/msg | telemetry us/msg | telemetry vs baseline | fleet-server bytes | build |"
  echo "|---|---|---|---|---|---|"
  for v in "${variants[@]}"; do
    case $v in
      base) label='baseline: all "z"' ;;
      now) label="now (Cargo.toml: ${raised[*]} at 3)" ;;
      wider) label="wider: also ${wider[*]} at 3" ;;
    esac
    echo "| $label | ${st_med[$v]} | ${te_med[$v]} | $(ratio "${te_med[base]}" "${te_med[$v]}")x faster | $(stat -c %s "$bench_work/bin/server-$v") | ${build_secs[server-$v]} s |"
  done
  echo
  echo "Per run (us/msg, in run order):"
  echo
  for v in "${variants[@]}"; do
    echo "- $v: status ${status_us[$v]% }; telemetry ${telemetry_us[$v]% }"
  done
  echo
  echo "## Reproduce"
  echo
  echo '```'
  echo "bench/profile.sh $devices $rounds $repeat"
  echo '```'
} >"$report"
echo "wrote $report" >&2
