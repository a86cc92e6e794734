#!/usr/bin/env bash
# Ingest benchmark, in one run on this machine (release builds, loopback):
#  a. the broker's pass-through rate: control-plane/examples/ingest_load.rs
#     publishes N devices' telemetry (R rounds, QoS 0) as fast as Mosquitto
#     takes it, a plain subscriber counts it (the baseline);
#  b. the same load with fleet-server subscribed instead: its ingest rate from
#     its own counters (/metrics fleet_ingest_messages_total{kind="telemetry"}
#     deltas) and its CPU time (/proc/<pid>/stat utime+stime) → messages per
#     CPU-second, i.e. per core (goal: >= 50,000 msgs/s per core);
#  c. fleet-server's VmRSS/VmHWM with 0 devices and after N devices' status
#     (registration) and telemetry (goal: <= 300 MB with 10,000 devices);
#  d. the embedded broker (rumqttd behind the ACL front, in the server's
#     process) with one connection per device and device tokens, for
#     BENCH_EMBEDDED_DEVICES devices: ingest rate and CPU of the whole process.
# Writes bench/REPORT-ingest.md. Never fails on timing.
#
# Usage: bench/ingest.sh [DEVICES] [ROUNDS]   (default 10000 30)
# Environment: BENCH_CONNECTIONS (publisher connections on Mosquitto, default 8),
#              BENCH_EMBEDDED_DEVICES (default 2000; 0 skips d).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
devices=${1:-10000}
rounds=${2:-30}
connections=${BENCH_CONNECTIONS:-8}
emb_devices=${BENCH_EMBEDDED_DEVICES:-2000}
report=bench/REPORT-ingest.md
total=$((devices * rounds))

for tool in mosquitto curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/ingest.sh: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

cargo build --release --locked -p fleet-control-plane --bins --example ingest_load >&2
target=${CARGO_TARGET_DIR:-target}
server_bin=$target/release/fleet-server
fleetctl=$target/release/fleetctl
load=$target/release/examples/ingest_load
tck=$(getconf CLK_TCK)

bench_work=$(mktemp -d)
mosq_pid=""
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  [ -n "$mosq_pid" ] && kill "$mosq_pid" 2>/dev/null
  bench_cleanup
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# cpu_ticks PID: utime + stime (clock ticks).
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
mem_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
kv() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'; }
# ingested URL KIND: the server's counter (0 when /metrics does not answer).
ingested() {
  curl -fs "$1/metrics" 2>/dev/null | awk -v k="fleet_ingest_messages_total{kind=\"$2\"}" '$1 == k { printf "%d", $2; f = 1 } END { if (!f) print 0 }'
}

start_mosquitto() {
  mosq_port=$(free_port)
  # No ACL, a queue limit out of reach: QoS 0 messages to a slow subscriber
  # are queued instead of dropped, so every message is counted where it lands.
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000000\n' \
    "$mosq_port" >"$bench_work/mosquitto.conf"
  mosquitto -c "$bench_work/mosquitto.conf" >"$bench_work/mosquitto.log" 2>&1 &
  mosq_pid=$!
  local i
  for ((i = 0; i < 50; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$mosq_port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench/ingest.sh: mosquitto did not come up" >&2
  return 1
}
stop_mosquitto() {
  kill "$mosq_pid" 2>/dev/null || true
  wait "$mosq_pid" 2>/dev/null || true
  mosq_pid=""
}

# start_server DIR BROKER_TOML: fleet-server with its own data dir; sets
# server_pid and server_url.
start_server() {
  local dir=$1 broker_toml=$2 http_port i
  http_port=$(free_port)
  server_url=http://127.0.0.1:$http_port
  mkdir -p "$dir"
  [ -f "$bench_work/keys/director.key" ] || "$fleetctl" keys init --dir "$bench_work/keys" >/dev/null
  cat >"$dir/server.toml" <<TOML
data_dir = "$dir/data"
[http]
listen = "127.0.0.1:$http_port"
[broker]
$broker_toml
[director]
key = "$bench_work/keys/director.key"
trust = "$bench_work/keys/trust.json"
# Plain TCP and device tokens: this measures ingest; bench/tls.sh measures
# what TLS and device certificates add.
[tls]
insecure = true
TOML
  "$server_bin" --config "$dir/server.toml" >"$dir/server.log" 2>&1 &
  server_pid=$!
  for ((i = 0; i < 100; i++)); do
    curl -fs "$server_url/metrics" >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench/ingest.sh: fleet-server did not come up:" >&2
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

# wait_idle PUB_PID: waits until the publisher PUB_PID has exited and then
# the server's first quiet 0.25 s sample (under a quarter of a core), reading
# only /proc (a /metrics render with thousands of devices costs the server CPU
# itself, so it is not polled during the run). Sets busy_t (the end of the
# server's last busy sample), busy_ticks and busy_mosq_ticks (CPU ticks of the
# server and Mosquitto then).
wait_idle() {
  local pub=$1 t0 now prev cur mprev=0 mcur=0 dt then
  t0=$(bench_now)
  prev=$(cpu_ticks "$server_pid")
  [ -n "$mosq_pid" ] && mprev=$(cpu_ticks "$mosq_pid")
  then=$t0
  while :; do
    sleep 0.25
    now=$(bench_now)
    cur=$(cpu_ticks "$server_pid")
    [ -n "$mosq_pid" ] && mcur=$(cpu_ticks "$mosq_pid")
    dt=$(bench_calc "$now - $then" 3)
    if ! kill -0 "$pub" 2>/dev/null && awk -v d="$((cur - prev))" -v dt="$dt" -v h="$tck" 'BEGIN { exit !(d < 0.25 * dt * h) }'; then
      busy_t=$then busy_ticks=$prev busy_mosq_ticks=$mprev
      return 0
    fi
    prev=$cur mprev=$mcur then=$now
    kill -0 "$server_pid" 2>/dev/null || { busy_t=$now busy_ticks=$cur busy_mosq_ticks=$mcur; return 0; }
  done
}

# wait_count KIND WANT: polls the server's counter every second until it
# reaches WANT or has not moved for 5 s; sets ing_count and ing_t (when it
# last moved).
wait_count() {
  local c prev=-1 still=0
  while [ "$still" -lt 5 ]; do
    c=$(ingested "$server_url" "$1")
    if [ "$c" != "$prev" ]; then prev=$c still=0 ing_count=$c ing_t=$(bench_now); else still=$((still + 1)); fi
    [ "$c" -ge "$2" ] && return 0
    sleep 1
  done
}

machine="$(uname -srm); $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)); $(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
mosq_version=$({ mosquitto -h 2>/dev/null || true; } | awk 'NR == 1 { print $3 }')
rustc_version=$(rustc --version)

# ------------------------------------------------- a. broker baseline ---

start_mosquitto
echo "== a. Mosquitto pass-through: $devices devices x $rounds rounds over $connections connections to a counting subscriber" >&2
"$load" count --broker "mqtt://127.0.0.1:$mosq_port" --expect "$total" >"$bench_work/count.out" 2>"$bench_work/count.err" &
count_pid=$!
for ((i = 0; i < 100; i++)); do grep -q subscribed "$bench_work/count.out" 2>/dev/null && break; sleep 0.1; done
m0=$(cpu_ticks "$mosq_pid")
pub_a=$("$load" publish --broker "mqtt://127.0.0.1:$mosq_port" --devices "$devices" --rounds "$rounds" --connections "$connections" 2>"$bench_work/pub-a.err" | tail -1) || true
wait "$count_pid" || true
m1=$(cpu_ticks "$mosq_pid")
count_a=$(grep received= "$bench_work/count.out" | tail -1)
a_recv=$(kv "$count_a" received)
a_secs=$(kv "$count_a" secs)
a_rate=$(kv "$count_a" rate)
a_mosq_cpu=$(bench_calc "($m1 - $m0) / $tck" 2)
echo "   published: $pub_a" >&2
echo "   subscriber: $count_a; mosquitto CPU ${a_mosq_cpu} s" >&2
stop_mosquitto

# ----------------------------------------- b + c. fleet-server on Mosquitto ---

start_mosquitto
echo "== b. fleet-server subscribed through Mosquitto" >&2
start_server "$bench_work/srv-mosq" "embedded = false
url = \"mqtt://127.0.0.1:$mosq_port\"
password = \"bench\""
sleep 3
rss0=$(mem_kb "$server_pid" VmRSS)
hwm0=$(mem_kb "$server_pid" VmHWM)
echo "   0 devices: VmRSS ${rss0} kB, VmHWM ${hwm0} kB" >&2

echo "   $devices status reports (one per device: registration)" >&2
s_t0=$(bench_now)
"$load" publish --broker "mqtt://127.0.0.1:$mosq_port" --devices "$devices" --rounds 0 --status --connections "$connections" \
  >"$bench_work/pub-s.out" 2>"$bench_work/pub-s.err" &
wait_idle $!
wait_count status "$devices"
s_count=$ing_count
s_secs=$(bench_calc "$ing_t - $s_t0" 2)
s_rate=$(bench_calc "$s_count / ($s_secs + 0.000001)" 0)
echo "   status: $s_count ingested in $s_secs s ($s_rate/s)" >&2
sleep 6
rss_s=$(mem_kb "$server_pid" VmRSS)
hwm_s=$(mem_kb "$server_pid" VmHWM)

echo "   telemetry: $devices devices x $rounds rounds" >&2
base=$(ingested "$server_url" telemetry)
c0=$(cpu_ticks "$server_pid")
m0=$(cpu_ticks "$mosq_pid")
t0=$(bench_now)
"$load" publish --broker "mqtt://127.0.0.1:$mosq_port" --devices "$devices" --rounds "$rounds" --connections "$connections" \
  >"$bench_work/pub-b.out" 2>"$bench_work/pub-b.err" &
wait_idle $!
pub_b=$(tail -1 "$bench_work/pub-b.out")
sleep 1
b_count=$(($(ingested "$server_url" telemetry) - base))
b_secs=$(bench_calc "$busy_t - $t0" 3)
b_cpu=$(bench_calc "($busy_ticks - $c0) / $tck" 2)
b_mosq_cpu=$(bench_calc "($busy_mosq_ticks - $m0) / $tck" 2)
b_rate=$(bench_calc "$b_count / ($b_secs + 0.000001)" 0)
b_per_core=$(bench_calc "$b_count / ($b_cpu + 0.000001)" 0)
b_util=$(bench_calc "$b_cpu / ($b_secs + 0.000001)" 2)
echo "   published: $pub_b" >&2
echo "   ingested $b_count in $b_secs s = $b_rate msgs/s; server CPU $b_cpu s ($b_util cores) = $b_per_core msgs per CPU-second; mosquitto CPU $b_mosq_cpu s" >&2

# Let the batched flush run, then read memory.
sleep 7
rss1=$(mem_kb "$server_pid" VmRSS)
hwm1=$(mem_kb "$server_pid" VmHWM)
anon1=$(mem_kb "$server_pid" RssAnon)
threads1=$(mem_kb "$server_pid" Threads)
metrics_devices=$(curl -fs "$server_url/metrics" | awk '$1 == "fleet_devices" || $1 ~ /^fleet_devices_total/ { s += $2 } END { print s + 0 }')
data_du=$(du -sk "$bench_work/srv-mosq/data" | cut -f1)
echo "   $devices devices: VmRSS ${rss1} kB, VmHWM ${hwm1} kB, RssAnon ${anon1} kB; data dir ${data_du} kB" >&2
stop_server

echo "== c. the same with telemetry.flush_secs = 3600 (the store sees no telemetry flush)" >&2
start_server "$bench_work/srv-noflush" "embedded = false
url = \"mqtt://127.0.0.1:$mosq_port\"
password = \"bench\"
[telemetry]
flush_secs = 3600"
# Mosquitto still holds every device's retained status: the server gets them at once.
"$load" publish --broker "mqtt://127.0.0.1:$mosq_port" --devices "$devices" --rounds 0 --status --connections "$connections" >/dev/null 2>&1 &
wait_idle $!
wait_count status "$devices"
"$load" publish --broker "mqtt://127.0.0.1:$mosq_port" --devices "$devices" --rounds "$rounds" --connections "$connections" >/dev/null 2>&1 &
wait_idle $!
sleep 2
rss_nf=$(mem_kb "$server_pid" VmRSS)
hwm_nf=$(mem_kb "$server_pid" VmHWM)
echo "   no flush: VmRSS ${rss_nf} kB, VmHWM ${hwm_nf} kB" >&2
stop_server
stop_mosquitto

# -------------------------------------------- d. embedded broker ---

emb_row=""
if [ "$emb_devices" -gt 0 ]; then
  emb_port=$(free_port)
  echo "== d. embedded broker: $emb_devices devices, one connection each with its device token" >&2
  if start_server "$bench_work/srv-emb" "embedded = true
listen = \"127.0.0.1:$emb_port\""; then
    sleep 2
    "$load" publish --broker "mqtt://127.0.0.1:$emb_port" --devices "$emb_devices" --rounds 0 --status \
      --tokens "$bench_work/srv-emb/data" >/dev/null 2>"$bench_work/pub-es.err" &
    wait_idle $!
    wait_count status "$emb_devices"
    e_total=$((emb_devices * rounds))
    base=$(ingested "$server_url" telemetry)
    c0=$(cpu_ticks "$server_pid")
    t0=$(bench_now)
    "$load" publish --broker "mqtt://127.0.0.1:$emb_port" --devices "$emb_devices" --rounds "$rounds" \
      --tokens "$bench_work/srv-emb/data" >"$bench_work/pub-e.out" 2>"$bench_work/pub-e.err" &
    wait_idle $!
    pub_e=$(tail -1 "$bench_work/pub-e.out")
    sleep 1
    e_count=$(($(ingested "$server_url" telemetry) - base))
    e_secs=$(bench_calc "$busy_t - $t0" 3)
    e_cpu=$(bench_calc "($busy_ticks - $c0) / $tck" 2)
    e_rate=$(bench_calc "$e_count / ($e_secs + 0.000001)" 0)
    e_per_core=$(bench_calc "$e_count / ($e_cpu + 0.000001)" 0)
    e_rss=$(mem_kb "$server_pid" VmRSS)
    e_hwm=$(mem_kb "$server_pid" VmHWM)
    echo "   published: $pub_e" >&2
    echo "   ingested $e_count of $e_total in $e_secs s = $e_rate msgs/s; process CPU $e_cpu s = $e_per_core msgs per CPU-second; VmRSS $e_rss kB" >&2
    emb_row="| embedded (rumqttd + ACL front, in-process) | $emb_devices, one connection each (device tokens) | $(kv "$pub_e" sent) | $e_count | $e_secs | $e_rate | $e_cpu (broker + server) | $e_per_core |"
    [ -s "$bench_work/pub-e.err" ] && emb_row+=$'\n\n'"Publisher errors: $(head -3 "$bench_work/pub-e.err" | tr '\n' ' ')"
    stop_server
  else
    emb_row="| embedded | not measured: the server did not start | | | | | | |"
  fi
fi

# ------------------------------------------------------------ report ---

goal_rate=$(awk -v r="$b_per_core" 'BEGIN { print (r >= 50000) ? "met" : "missed" }')
goal_rss=$(awk -v r="$rss1" 'BEGIN { print (r <= 300 * 1024) ? "met" : "missed" }')
a_broker_per_core=$(bench_calc "$a_recv / ($a_mosq_cpu + 0.000001)" 0)
b_broker_per_core=$(bench_calc "$b_count / ($b_mosq_cpu + 0.000001)" 0)
# Which side limits: per CPU-second (robust on a shared machine), then what
# this run's wall-clock rates show.
limit=$(awk -v s="$b_per_core" -v m="$a_broker_per_core" -v a="$a_rate" -v b="$b_rate" -v u="$b_util" 'BEGIN {
  side = (s < m) ? "the server" : "the broker"
  printf "**%s**. Per CPU-second the server ingests %.0f messages where Mosquitto passes %.0f through (%.2fx): given one core each, %s saturates first", side, s, m, s / m, side
  if (s < m) printf " (its ingest is one serial pipeline: the MQTT link task decodes, one task applies, so one core is its ceiling)"
  printf ". Wall clock in this run: the server ingested %.0f msgs/s, %.0f%% of the plain subscriber'"'"'s %.0f msgs/s, using %.2f cores", b, 100 * b / a, a, u
  if (u < 0.9) printf " (not saturated: publisher, broker and server share the two cores, so the machine bounded this run)"
  else printf " (saturated)"
}')
{
  echo "# Ingest benchmark"
  echo
  echo "Written by \`bench/ingest.sh $devices $rounds\` on $(date -u '+%Y-%m-%d %H:%M UTC'); release build of this tree"
  echo "($(git rev-parse --short HEAD 2>/dev/null || echo '?'))."
  echo "Machine: $machine. Mosquitto $mosq_version; $rustc_version."
  echo "Publisher, broker and server share the machine's cores (and other builds may run):"
  echo "figures are noisy."
  echo
  echo "## Load"
  echo
  echo "\`control-plane/examples/ingest_load.rs\`: $devices simulated devices (\`dev-00000\`...), a quarter"
  echo "Jetson-like (six thermal zones, three power rails, GPU/EMC load; $(kv "$pub_b" jetson_bytes) bytes of JSON),"
  echo "the others plain ($(kv "$pub_b" plain_bytes) bytes); every report has one app's figures. Each device"
  echo "first sends one status report (QoS 1, retained, device info: it registers the device),"
  echo "then $rounds telemetry reports (QoS 0) = $total messages, published as fast as the"
  echo "broker takes them over $connections connections with one broker account (Mosquitto"
  echo "on loopback, anonymous, no ACL, \`max_queued_messages 100000000\`: a slow subscriber's"
  echo "QoS 0 messages are queued, not dropped). 10,000 connections with per-device"
  echo "credentials are measured on the embedded broker only, for fewer devices (below)."
  echo
  echo "## Telemetry rate (Mosquitto $mosq_version on loopback)"
  echo
  echo "| subscriber | published | received | seconds | msgs/s | subscriber CPU s | subscriber msgs per CPU-s | broker CPU s | broker msgs per CPU-s |"
  echo "|---|---|---|---|---|---|---|---|---|"
  echo "| a. plain counting subscriber (rumqttc, baseline) | $(kv "$pub_a" sent) | $a_recv | $a_secs | $a_rate | – | – | $a_mosq_cpu | $a_broker_per_core |"
  echo "| b. fleet-server (counter \`fleet_ingest_messages_total{kind=\"telemetry\"}\`) | $(kv "$pub_b" sent) | $b_count | $b_secs | $b_rate | $b_cpu | **$b_per_core** | $b_mosq_cpu | $b_broker_per_core |"
  echo
  echo "Seconds: (a) first to last message at the subscriber; (b) from the publisher's"
  echo "start to the end of the server's last busy 0.25 s sample (≥ a quarter of a core)"
  echo "once the publisher had finished; /metrics is read before and after only (a render"
  echo "with $devices devices costs CPU too). Server CPU is utime+stime of the fleet-server"
  echo "process over the same span, batched store flushes (every 5 s) included:"
  echo "$b_util cores on average."
  echo
  echo "Goal ≥ 50,000 msgs/s per core on the server side: **$goal_rate** ($b_per_core messages per CPU-second)."
  echo
  echo "What limits: $limit."
  echo
  echo "Status reports (registration of $devices new devices through the engine and the"
  echo "store): $s_count ingested in $s_secs s ($s_rate/s)."
  echo
  echo "## Server memory (fleet-server on Mosquitto)"
  echo
  echo "| state | VmRSS kB | VmHWM kB |"
  echo "|---|---|---|"
  echo "| started, 0 devices | $rss0 | $hwm0 |"
  echo "| $devices devices registered (one status each), after a flush | $rss_s | $hwm_s |"
  echo "| $devices devices: status + $rounds telemetry reports each, after a flush | **$rss1** | $hwm1 |"
  echo "| the same with \`telemetry.flush_secs = 3600\` (no store flush of telemetry; a fresh server) | $rss_nf | $hwm_nf |"
  echo
  echo "RssAnon $anon1 kB, $threads1 threads; the data directory (sled) holds $data_du kB."
  echo
  echo "Goal ≤ 300 MB with 10,000 devices: **$goal_rss** ($((rss1 / 1024)) MB VmRSS, $((hwm1 / 1024)) MB peak)."
  if [ -n "$emb_row" ]; then
    echo
    echo "## Embedded broker, one connection per device"
    echo
    echo "The same telemetry ($rounds rounds) from $emb_devices devices, each on its own connection"
    echo "with its device token (client id = user = device id), through the embedded"
    echo "broker's ACL front and rumqttd, in fleet-server's process: the CPU figure is"
    echo "broker and server together. The load generator opens at most 64 connections at"
    echo "once (with 2,000 at once, about 7% timed out at rumqttc's default 5 s connect"
    echo "timeout in a trial run)."
    echo
    echo "| broker | devices | published | ingested | seconds | msgs/s | process CPU s | msgs per CPU-s |"
    echo "|---|---|---|---|---|---|---|---|"
    echo "$emb_row"
  fi
} >"$report"
echo "bench/ingest.sh: wrote $report" >&2
cat "$report"
