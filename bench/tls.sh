#!/usr/bin/env bash
# TLS benchmark: what security costs the embedded broker, in one run on this
# machine (release builds, loopback). fleet-server runs twice in turn with
# its embedded broker: plain TCP (`[tls] insecure = true`, device tokens, the
# baseline) and TLS (the default: every device presents its own certificate
# from the fleet CA). For each, control-plane/examples/ingest_load `connect`
# is the devices (one connection each):
#  a. N devices connect as fast as 64 concurrent attempts allow (TCP, the
#     TLS handshake, CONNECT → CONNACK): connections per second, and the
#     server's CPU time over the same span (/proc/<pid>/stat utime+stime) →
#     connections (handshakes) per server CPU-second;
#  b. the server's VmRSS before and with all N connected and idle → KiB per
#     connection (and file descriptors per connection);
#  c. R telemetry reports from every device (QoS 0, R rounds one after the
#     other): the server's CPU for them, per message.
# Writes bench/REPORT-tls.md. Never fails on timing; exits 1 when a mode did
# not connect every device. A quick check (under a minute once built):
#   BENCH_TLS_DEVICES=200 BENCH_TLS_REPORT=/tmp/REPORT-tls-quick.md bench/tls.sh
#
# Usage: bench/tls.sh
# Environment: BENCH_TLS_DEVICES (default 10000), BENCH_TLS_CONNECTING
#              (attempts at once, default 64), BENCH_TLS_ROUNDS (telemetry
#              rounds, default 5), BENCH_TLS_REPORT (default
#              bench/REPORT-tls.md), BENCH_TLS_FORCE=1 (try N even when the
#              file descriptor limit cannot hold it; see fd_capacity below).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
asked=${BENCH_TLS_DEVICES:-10000}
connecting=${BENCH_TLS_CONNECTING:-64}
rounds=${BENCH_TLS_ROUNDS:-5}
report=${BENCH_TLS_REPORT:-bench/REPORT-tls.md}
settle=5

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/tls.sh: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

# Every device connection holds three descriptors in the server's process
# (the device's socket, the front's loopback socket to rumqttd, rumqttd's end
# of it) and one in the load generator: raise the limit to what N needs, or
# else to the hard limit.
fd_soft_before=$(ulimit -Sn)
fd_hard=$(ulimit -Hn)
[ "$fd_hard" = unlimited ] && fd_hard=1048576
fd_need=$((3 * asked + 256))
fd_refused=""
if [ "$fd_hard" -lt "$fd_need" ]; then
  if (ulimit -n "$fd_need") 2>/dev/null; then
    fd_hard=$fd_need
  else
    fd_refused="\`ulimit -n $fd_need\` was refused: raising a hard limit needs CAP_SYS_RESOURCE"
  fi
fi
ulimit -n "$fd_hard"
fd_capacity=$(((fd_hard - 256) / 3))
devices=$asked
fd_note=""
if [ "$asked" -gt "$fd_capacity" ] && [ "${BENCH_TLS_FORCE:-0}" != 1 ]; then
  devices=$fd_capacity
  fd_note="$asked devices were asked for, but the hard open-file limit here is $fd_hard ($fd_refused) and the server's process holds three descriptors per device connection: at most $fd_capacity devices fit (256 kept for the rest of the process). Measured at $devices."
  echo "bench/tls.sh: $fd_note" >&2
fi

probe_n=$((devices < 500 ? devices : 500))

cargo build --release --locked -p fleet-control-plane --bins --example ingest_load >&2
target=${CARGO_TARGET_DIR:-target}
server_bin=$target/release/fleet-server
fleetctl=$target/release/fleetctl
load=$target/release/examples/ingest_load
tck=$(getconf CLK_TCK)

bench_work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "${COPROC_PID:-}" ] && kill "$COPROC_PID" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  bench_cleanup
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
mem_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
kv() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'; }

# metrics: the server's /metrics (https with the fleet CA unless plain).
metrics() {
  if [ "$tls" = 1 ]; then
    curl -fs --cacert "$srv_dir/data/pki/ca.crt" "$server_url/metrics"
  else
    curl -fs "$server_url/metrics"
  fi
}
ingested() { metrics 2>/dev/null | awk '$1 == "fleet_ingest_messages_total{kind=\"telemetry\"}" { printf "%d", $2; f = 1 } END { if (!f) print 0 }'; }

# start_server DIR TLS_TOML: fleet-server with the embedded broker on a free
# port; sets server_pid, server_url, broker_port.
start_server() {
  local tls_toml=$2 http_port i scheme=http
  srv_dir=$1
  http_port=$(free_port)
  broker_port=$(free_port)
  [ "$tls" = 1 ] && scheme=https
  server_url=$scheme://127.0.0.1:$http_port
  mkdir -p "$srv_dir"
  [ -f "$bench_work/keys/director.key" ] || "$fleetctl" keys init --dir "$bench_work/keys" >/dev/null
  cat >"$srv_dir/server.toml" <<TOML
data_dir = "$srv_dir/data"
[http]
listen = "127.0.0.1:$http_port"
[broker]
embedded = true
listen = "127.0.0.1:$broker_port"
[director]
key = "$bench_work/keys/director.key"
trust = "$bench_work/keys/trust.json"
$tls_toml
TOML
  "$server_bin" --config "$srv_dir/server.toml" >"$srv_dir/server.log" 2>&1 &
  server_pid=$!
  for ((i = 0; i < 200; i++)); do
    metrics >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench/tls.sh: fleet-server did not come up:" >&2
  tail -5 "$srv_dir/server.log" >&2
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

# load_cmd LINE: sends LINE to the load generator (unless empty) and reads
# its answer into `answer` (empty when it exited or said nothing in time).
load_cmd() {
  answer=""
  [ -n "$1" ] && echo "$1" >&"${COPROC[1]}"
  read -r -t 900 -u "${COPROC[0]}" answer || true
  [ -n "$answer" ] || { echo "bench/tls.sh: the load generator did not answer '$1':" >&2; tail -5 "$srv_dir/load.err" >&2; }
}

# wait_ingested BASE WANT: polls the server's telemetry counter every 0.25 s
# (a /metrics render costs it about half a millisecond of CPU here) until it
# has grown by WANT from BASE or has not moved for 5 s. Sets ing_got, and
# ing_ticks and ing_t (the server's CPU ticks and the time when it last moved).
wait_ingested() {
  local base=$1 want=$2 c prev=-1 still=0
  ing_got=0 ing_ticks=$(cpu_ticks "$server_pid") ing_t=$(bench_now)
  while [ "$still" -lt 20 ]; do
    c=$(($(ingested) - base))
    if [ "$c" != "$prev" ]; then
      prev=$c still=0 ing_got=$c ing_ticks=$(cpu_ticks "$server_pid") ing_t=$(bench_now)
    else
      still=$((still + 1))
    fi
    [ "$c" -ge "$want" ] && return 0
    sleep 0.25
  done
}

# run_mode NAME: one server, N devices connected, idle, then R telemetry
# rounds. Sets NAME_* variables for the report.
run_mode() {
  local name=$1 tls_toml creds ready conn tel load_c0 load_c1 base
  if [ "$name" = tls ]; then
    tls=1 tls_toml=""
  else
    tls=0 tls_toml=$'[tls]\ninsecure = true'
  fi
  echo "== $name: fleet-server with the embedded broker, $devices devices" >&2
  start_server "$bench_work/srv-$name" "$tls_toml"
  if [ "$tls" = 1 ]; then
    creds=(--broker "mqtts://127.0.0.1:$broker_port" --ca-dir "$srv_dir/data/pki")
  else
    creds=(--broker "mqtt://127.0.0.1:$broker_port" --tokens "$srv_dir/data")
  fi
  coproc "$load" connect "${creds[@]}" --devices "$devices" --connecting "$connecting" 2>"$srv_dir/load.err"
  load_pid=$COPROC_PID
  load_cmd ""
  ready=$answer
  echo "   load generator: $ready" >&2
  sleep 2
  local rss0 fds0 c0 c1
  rss0=$(mem_kb "$server_pid" VmRSS) fds0=$(fds "$server_pid")
  c0=$(cpu_ticks "$server_pid") load_c0=$(cpu_ticks "$load_pid")
  load_cmd connect
  conn=$answer
  c1=$(cpu_ticks "$server_pid") load_c1=$(cpu_ticks "$load_pid")
  echo "   $conn" >&2
  sleep "$settle"
  local rss1 hwm1 anon1 fds1 threads1
  rss1=$(mem_kb "$server_pid" VmRSS) hwm1=$(mem_kb "$server_pid" VmHWM)
  anon1=$(mem_kb "$server_pid" RssAnon) threads1=$(mem_kb "$server_pid" Threads)
  fds1=$(fds "$server_pid")

  base=$(ingested)
  local t_c0 t_c1 t_t0
  t_c0=$(cpu_ticks "$server_pid") t_t0=$(bench_now)
  # Each round once the previous one is ingested: back to back they overflow
  # rumqttd's commit log for the server's wildcard subscription (see the report).
  local r k sent=0
  for ((r = 0; r < rounds; r++)); do
    load_cmd telemetry
    tel=$answer k=$(kv "$tel" sent)
    sent=$((sent + ${k:-0}))
    wait_ingested "$base" "$sent"
  done
  t_c1=$ing_ticks
  local got=$ing_got
  echo "   telemetry: $rounds rounds, $sent written (the last: $tel); ingested $got" >&2
  local rss2
  rss2=$(mem_kb "$server_pid" VmRSS)
  echo quit >&"${COPROC[1]}" 2>/dev/null || true
  wait "$load_pid" 2>/dev/null || true

  # One connection at a time (other device ids, the N above closed): the
  # latency of a connection without queueing, and the rate one at a time.
  sleep 1
  local probe p0 p1
  p0=$(cpu_ticks "$server_pid")
  probe=$("$load" connect "${creds[@]}" --devices "$probe_n" --connecting 1 --prefix seq \
    2>>"$srv_dir/load.err" <<<$'connect\nquit' | tail -1) || true
  p1=$(cpu_ticks "$server_pid")
  echo "   one at a time: $probe" >&2

  local n secs cpu
  n=$(kv "$conn" connected) secs=$(kv "$conn" secs)
  [ -n "$n" ] || n=0
  cpu=$(bench_calc "($c1 - $c0) / $tck" 2)
  printf -v "${name}_issue" '%s' "$(kv "$ready" issue_secs)"
  printf -v "${name}_connected" '%s' "$n"
  printf -v "${name}_failed" '%s' "$(kv "$conn" failed)"
  printf -v "${name}_first_error" '%s' "$(kv "$conn" first_error)"
  printf -v "${name}_secs" '%s' "$secs"
  printf -v "${name}_rate" '%s' "$(kv "$conn" rate)"
  printf -v "${name}_p50" '%s' "$(kv "$conn" p50_ms)"
  printf -v "${name}_p99" '%s' "$(kv "$conn" p99_ms)"
  printf -v "${name}_max" '%s' "$(kv "$conn" max_ms)"
  printf -v "${name}_cpu" '%s' "$cpu"
  printf -v "${name}_load_cpu" '%s' "$(bench_calc "($load_c1 - $load_c0) / $tck" 2)"
  printf -v "${name}_per_cpu" '%s' "$(bench_calc "$n / ($cpu + 0.000001)" 0)"
  printf -v "${name}_cpu_ms" '%s' "$(bench_calc "1000 * $cpu / ($n + 0.000001)" 3)"
  printf -v "${name}_rss0" '%s' "$rss0"
  printf -v "${name}_rss1" '%s' "$rss1"
  printf -v "${name}_rss2" '%s' "$rss2"
  printf -v "${name}_hwm1" '%s' "$hwm1"
  printf -v "${name}_anon1" '%s' "$anon1"
  printf -v "${name}_threads" '%s' "$threads1"
  printf -v "${name}_kib" '%s' "$(bench_calc "($rss1 - $rss0) / ($n + 0.000001)" 1)"
  printf -v "${name}_fds" '%s' "$(bench_calc "($fds1 - $fds0) / ($n + 0.000001)" 2)"
  printf -v "${name}_seq_n" '%s' "$(kv "$probe" connected)"
  printf -v "${name}_seq_rate" '%s' "$(kv "$probe" rate)"
  printf -v "${name}_seq_p50" '%s' "$(kv "$probe" p50_ms)"
  printf -v "${name}_seq_p99" '%s' "$(kv "$probe" p99_ms)"
  printf -v "${name}_seq_cpu_ms" '%s' "$(bench_calc "1000 * ($p1 - $p0) / $tck / ($(kv "$probe" connected) + 0.000001)" 3)"
  printf -v "${name}_fds0" '%s' "$fds0"
  printf -v "${name}_sent" '%s' "$sent"
  printf -v "${name}_ingested" '%s' "$got"
  printf -v "${name}_tel_secs" '%s' "$(bench_calc "$ing_t - $t_t0" 2)"
  printf -v "${name}_tel_cpu" '%s' "$(bench_calc "($t_c1 - $t_c0) / $tck" 2)"
  printf -v "${name}_tel_us" '%s' "$(bench_calc "1000000 * ($t_c1 - $t_c0) / $tck / ($got + 0.000001)" 0)"
  stop_server
}

machine="$(uname -srm); $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)); $(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
rustc_version=$(rustc --version)
load_avg=$(cut -d' ' -f1-3 /proc/loadavg)

run_mode plain
run_mode tls

# ------------------------------------------------------------ report ---

ratio() { bench_calc "$1 / ($2 + 0.000001)" "${3:-2}"; }
# What bounds the wall-clock rate: the cores the server and the devices used
# over the span, and the rate one connection at a time got.
limit=$(awk -v ps="$plain_secs" -v pc="$plain_cpu" -v pl="$plain_load_cpu" -v ts="$tls_secs" -v tc="$tls_cpu" \
  -v tl="$tls_load_cpu" -v pr="$plain_rate" -v sr="$plain_seq_rate" -v tms="$tls_cpu_ms" -v n="$(nproc)" 'BEGIN {
  pu = (pc + pl) / (ps + 1e-9); tu = (tc + tl) / (ts + 1e-9)
  printf "the server and the devices together used %.2f of %d cores (other processes on the machine not counted) while connecting in plain TCP (the server %.2f), %.2f with TLS (the server %.2f)", pu, n, pc / (ps + 1e-9), tu, tc / (ts + 1e-9)
  if (pu < 0.8 * n && tu < 0.8 * n) {
    printf ": **not CPU-bound**. One connection at a time got %.0f/s in plain TCP, %.0f%% of the %.0f/s with %s at once: something serial paces every connection at about a millisecond. It is rumqttd'"'"'s accept loop (0.20, src/server/broker.rs): after each accepted connection it awaits `time::sleep(next_connection_delay_ms)`, and tokio rounds even a zero sleep up to the next millisecond tick (an strace of its thread shows `epoll_wait(..., 1)` between `accept4` calls), so the embedded broker accepts at most about 1,000 connections per second, plain or TLS. The wall-clock rates above are that ceiling more than the cost of TLS; the server CPU per connection is the cost", sr, 100 * sr / (pr + 1e-9), pr, "'"$connecting"'"
  } else {
    printf ": the machine'"'"'s cores bounded this run"
  }
  printf ". Given a core to itself, the server'"'"'s TLS handshakes (with CONNECT, at %.3f ms each) would allow about %.0f connections per second", tms, 1000 / (tms + 1e-9)
}')
all_ok=1
for m in plain tls; do
  c=${m}_connected f=${m}_failed
  [ "${!c}" = "$devices" ] && [ "${!f}" = 0 ] || all_ok=0
done
{
  echo "# TLS benchmark: the embedded broker, plain TCP beside TLS"
  echo
  echo "Written by \`BENCH_TLS_DEVICES=$asked bench/tls.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'); release build of this tree"
  echo "($(git rev-parse --short HEAD 2>/dev/null || echo '?')). Machine: $machine; $rustc_version."
  echo "Load average at the start: $load_avg; at the end: $(cut -d' ' -f1-3 /proc/loadavg). The load generator and the server share the"
  echo "machine's cores (and other builds may run): figures are noisy; the per-CPU-second"
  echo "figures are the steadier ones."
  echo
  echo "Quick check (under a minute once built; not part of CI): \`BENCH_TLS_DEVICES=200"
  echo "BENCH_TLS_REPORT=/tmp/REPORT-tls-quick.md bench/tls.sh\` exits 0 when both modes"
  echo "connected every device (1 otherwise), whatever the timings."
  echo
  echo "## What ran"
  echo
  echo "Two fleet-servers in turn, each with its embedded broker (the ACL front and rumqttd"
  echo "in the server's process) on loopback: **plain** (\`[tls] insecure = true\`: plain TCP,"
  echo "each device logs in with its device token) and **TLS** (the default: TLS 1.3 with"
  echo "rustls/ring; each device presents its own certificate, the broker checks it against"
  echo "the fleet CA and that the client id is its device id). The devices are"
  echo "\`control-plane/examples/ingest_load connect\`: $devices devices, one connection each,"
  echo "set up at most $connecting at a time (clean session, keep-alive 60 s, no last will,"
  echo "no subscriptions). For TLS it issues every device a certificate from the server's"
  echo "fleet CA (\`<data>/pki\`) for a P-256 key of that device's own, before the"
  echo "measurement: $(bench_calc "${tls_issue:-0}" 1) s for $devices keys, CSRs and certificates on all cores (not counted"
  echo "below). Each device has its own rustls client configuration: no session is resumed,"
  echo "every handshake is a full one (ECDHE X25519, the server's ECDSA P-256 signature,"
  echo "the client chain and CertificateVerify checked)."
  echo
  echo "File descriptors: the limit was raised from $fd_soft_before to $fd_hard."
  if [ -n "$fd_note" ]; then
    echo "**$fd_note**"
    echo "Past the limit the front's accept fails (EMFILE; it logs and retries every 50 ms)"
    echo "and the devices wait in the listen backlog until their connect timeout: in a trial"
    echo "with \`ulimit -n 700\` and \`BENCH_TLS_FORCE=1 BENCH_TLS_DEVICES=400\`, 225 devices (= (700 − 23) / 3)"
    echo "connected and 175 timed out after 60 s. A server for 10,000 devices needs at least"
    echo "30,000 descriptors (\`LimitNOFILE\`), and the broker's own cap of 20,000 connections, 60,000."
  fi
  echo
  echo "## a. Connection setup (CONNECT → CONNACK, $connecting at a time)"
  echo
  echo "| | plain TCP (tokens) | TLS (certificates) | TLS / plain |"
  echo "|---|---|---|---|"
  echo "| devices connected (failed) | $plain_connected ($plain_failed) | $tls_connected ($tls_failed) | |"
  echo "| seconds for all | $plain_secs | $tls_secs | $(ratio "$tls_secs" "$plain_secs") |"
  echo "| connections per second (wall clock) | $plain_rate | **$tls_rate** | $(ratio "$tls_rate" "$plain_rate") |"
  echo "| one connection, from its turn to CONNACK: p50 / p99 / max ms | $plain_p50 / $plain_p99 / $plain_max | $tls_p50 / $tls_p99 / $tls_max | |"
  echo "| server CPU seconds (utime+stime) | $plain_cpu | $tls_cpu | $(ratio "$tls_cpu" "$plain_cpu") |"
  echo "| connections per server CPU-second | $plain_per_cpu | **$tls_per_cpu** | $(ratio "$tls_per_cpu" "$plain_per_cpu") |"
  echo "| server CPU ms per connection | $plain_cpu_ms | $tls_cpu_ms | +$(bench_calc "$tls_cpu_ms - $plain_cpu_ms" 3) ms |"
  echo "| load generator CPU seconds (the devices' side) | $plain_load_cpu | $tls_load_cpu | $(ratio "$tls_load_cpu" "$plain_load_cpu") |"
  echo
  echo "Seconds: from the \`connect\` command to the last attempt's end, measured by the load"
  echo "generator; the server's CPU is read from /proc just before and just after."
  echo
  echo "What limits the rate: $limit."
  echo
  echo "The same, one connection at a time ($probe_n other devices, after the $devices above closed):"
  echo
  echo "| one at a time | plain TCP | TLS | TLS / plain |"
  echo "|---|---|---|---|"
  echo "| connected | $plain_seq_n | $tls_seq_n | |"
  echo "| connections per second | $plain_seq_rate | $tls_seq_rate | $(ratio "$tls_seq_rate" "$plain_seq_rate") |"
  echo "| one connection: p50 / p99 ms | $plain_seq_p50 / $plain_seq_p99 | $tls_seq_p50 / $tls_seq_p99 | |"
  echo "| server CPU ms per connection | $plain_seq_cpu_ms | $tls_seq_cpu_ms | +$(bench_calc "$tls_seq_cpu_ms - $plain_seq_cpu_ms" 3) ms |"
  if [ "${plain_failed:-0}" != 0 ] || [ "${tls_failed:-0}" != 0 ]; then
    echo "First errors: plain \`$plain_first_error\`, TLS \`$tls_first_error\`."
  fi
  echo
  echo "## b. Server memory, all $devices devices connected and idle"
  echo
  echo "| | plain TCP | TLS | TLS − plain |"
  echo "|---|---|---|---|"
  echo "| VmRSS before (server up, its own link connected) kB | $plain_rss0 | $tls_rss0 | |"
  echo "| VmRSS with every device connected, ${settle} s idle, kB | $plain_rss1 | $tls_rss1 | |"
  echo "| **KiB per connection** | **$plain_kib** | **$tls_kib** | +$(bench_calc "$tls_kib - $plain_kib" 1) KiB |"
  echo "| VmHWM / RssAnon kB | $plain_hwm1 / $plain_anon1 | $tls_hwm1 / $tls_anon1 | |"
  echo "| file descriptors per connection (server; $plain_fds0 / $tls_fds0 before) | $plain_fds | $tls_fds | |"
  echo "| threads | $plain_threads | $tls_threads | |"
  echo
  echo "RSS counts the process's memory only: the sockets' kernel buffers are not in it."
  echo "TLS adds $(bench_calc "$tls_kib - $plain_kib" 1) KiB to each connection ($(bench_calc "100 * ($tls_kib - $plain_kib) / ($plain_kib + 0.000001)" 0)%): what the TLS stream keeps (the"
  echo "rustls connection's state and record buffers). The rest is a connection however it"
  echo "is made: the front's two 4 KiB frame buffers and task, and rumqttd's side of the internal connection (its link"
  echo "task, network buffers and per-connection queues in the router, sized by its"
  echo "constant \`MAX_CHANNEL_CAPACITY\` = 200 packets; which of these weighs most was not"
  echo "measured). At 10,000 devices that is $(bench_calc "10000 * $plain_kib / 1024" 0) MiB plain, $(bench_calc "10000 * $tls_kib / 1024" 0) MiB with TLS, before any"
  echo "device state."
  echo
  echo "## c. $rounds telemetry reports from every device (QoS 0, $rounds rounds, each once the last is ingested)"
  echo
  echo "| | plain TCP | TLS | TLS / plain |"
  echo "|---|---|---|---|"
  echo "| reports written / ingested by the server | $plain_sent / $plain_ingested | $tls_sent / $tls_ingested | |"
  echo "| seconds until the server had ingested them (polled every 0.25 s) | $plain_tel_secs | $tls_tel_secs | |"
  echo "| server CPU seconds for the rounds | $plain_tel_cpu | $tls_tel_cpu | $(ratio "$tls_tel_cpu" "$plain_tel_cpu") |"
  echo "| server CPU µs per report | $plain_tel_us | $tls_tel_us | |"
  echo "| VmRSS after the rounds kB | $plain_rss2 | $tls_rss2 | |"
  echo
  echo "Seconds and server CPU from the first \`telemetry\` command until the server's"
  echo "\`fleet_ingest_messages_total{kind=\"telemetry\"}\` had grown by the number written (read"
  echo "every 0.25 s; a render costs the server about half a millisecond of CPU); the next"
  echo "round starts once the last one is ingested. The devices write a round in a fraction"
  echo "of a second; the server takes longer, without using a core."
  echo
  echo "Why one round at a time: sent back to back, 5 rounds from 6,581 devices overflowed"
  echo "rumqttd's commit log for the server's one wildcard subscription"
  echo "(\`fleet/v1/d/+/telemetry\`; two segments, \`max_segment_count = 2\` in"
  echo "broker/internal.rs): rumqttd warns \`Read cursor start jumped\` and skips to the head, and"
  echo "those reports never reach the server. In trial runs 40-45% of a plain-TCP burst of"
  echo "32,905 reports was lost that way, and 4 reports over TLS (whose slower devices spread"
  echo "the burst). That is the embedded broker under a burst, plain or TLS, not a cost of TLS."
  echo
  echo "CPU time is counted in 10 ms ticks and the server's batched store flush (every 5 s)"
  echo "may or may not fall inside the span: a difference of a tenth of a second or less is"
  echo "within noise. What TLS adds per report is the symmetric encryption of one record each"
  echo "way."
  echo
  if [ "$all_ok" = 1 ]; then
    echo "Both modes connected every one of the $devices devices."
  else
    echo "**Not every device connected** (see the table above)."
  fi
} >"$report"
echo "bench/tls.sh: wrote $report" >&2
cat "$report"
if [ "$all_ok" != 1 ]; then
  echo "bench/tls.sh: a mode did not connect all $devices devices" >&2
  exit 1
fi
echo "bench/tls.sh: both modes connected all $devices devices" >&2
