#!/usr/bin/env bash
# Pull benchmark: a 1 GiB blob from a local docker-registry, pulled by
# `fleet-agent pull` (verified, into the content store) and by curl (to
# /dev/null) in the same run. Prints the throughput ratio (goal: agent >= 0.9x
# curl) and the agent's peak RSS while pulling (goal: <= 64 MB), and writes
# bench/REPORT-pull.md. Never fails on timing.
#
# Usage: bench/pull.sh [size-in-MiB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
command -v docker-registry >/dev/null || { echo "pull.sh: docker-registry is not installed" >&2; exit 1; }

cargo build --release --locked -p fleet-agent >&2
target=${CARGO_TARGET_DIR:-target}
agent="$target/release/fleet-agent"

work=$(mktemp -d)
reg_pid=""
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
cat >"$work/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $addr
YML
docker-registry serve "$work/config.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -fs "http://$addr/v2/" >/dev/null && break; sleep 0.1; done

echo "== making a ${size_mib} MiB blob" >&2
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/blob"
push_blob() { # file -> digest
  local file=$1 digest loc
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  loc=$(curl -fsS -D - -o /dev/null -X POST "http://$addr/v2/bench/big/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case $loc in /*) loc="http://$addr$loc" ;; esac
  case $loc in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
  curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$file" "$loc"
  echo "$digest"
}
layer=$(push_blob "$work/blob")
layer_size=$(stat -c %s "$work/blob")
echo '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$work/config.json"
config=$(push_blob "$work/config.json")
config_size=$(stat -c %s "$work/config.json")
cat >"$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$config","size":$config_size},
 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$layer","size":$layer_size}]}
JSON
curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
  --data-binary @"$work/manifest.json" "http://$addr/v2/bench/big/manifests/1"
rm -f "$work/blob"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
url="http://$addr/v2/bench/big/blobs/$layer"
echo "== curl (warm-up, then measured)" >&2
curl -fsS -o /dev/null "$url"
t0=$(now); curl -fsS -o /dev/null "$url"; t1=$(now)
curl_s=$(calc "$t1 - $t0" 3)
# The same bytes made durable on the state directory's disk: what persisting costs here.
state_parent=$(dirname "${BENCH_STATE_DIR:-$work/state}")
mkdir -p "$state_parent"
t0=$(now); curl -fsS -o "$state_parent/curl.out" "$url"; sync "$state_parent/curl.out"; t1=$(now)
curl_disk_s=$(calc "$t1 - $t0" 3)
rm -f "$state_parent/curl.out"

echo "== fleet-agent pull" >&2
t0=$(now)
"$agent" pull "$addr/bench/big:1" --state-dir "${BENCH_STATE_DIR:-$work/state}" --reserve 0 -o json >"$work/agent.jsonl" &
pid=$!
hwm=0
while kill -0 "$pid" 2>/dev/null; do
  v=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
  [ -n "$v" ] && hwm=$v
  sleep 0.05
done
wait "$pid"
t1=$(now)
agent_s=$(calc "$t1 - $t0" 3)
fetched=$(tail -n1 "$work/agent.jsonl" | jq .bytes_fetched)
stored="${BENCH_STATE_DIR:-$work/state}/blobs/sha256/${layer#sha256:}"
[ "$(stat -c %s "$stored")" = "$layer_size" ] || { echo "pull.sh: stored blob has the wrong size" >&2; exit 1; }

mib() { calc "$1 / 1048576" 1; }
curl_mibs=$(calc "$layer_size / 1048576 / $curl_s" 1)
agent_mibs=$(calc "$layer_size / 1048576 / $agent_s" 1)
ratio=$(calc "$curl_s / $agent_s" 2)
ratio_disk=$(calc "$curl_disk_s / $agent_s" 2)
curl_disk_mibs=$(calc "$layer_size / 1048576 / $curl_disk_s" 1)
hwm_mb=$(calc "$hwm / 1024" 1)
bin_size=$(stat -c %s "$agent")

report=bench/REPORT-pull.md
cat >"$report" <<MD
# Pull benchmark

\`bench/pull.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),
$(uname -sr), release build (x86_64, $(mib "$bin_size") MiB binary). A $(mib "$layer_size") MiB blob (random bytes) served by
Debian's docker-registry on loopback; both clients run one after the other in the same run, after a warm-up
read of the blob so the registry serves it from the page cache.

| client | what it does | time | throughput |
|---|---|---|---|
| curl | GET to /dev/null | $curl_s s | $curl_mibs MiB/s |
| curl + sync | GET to a file on the same disk as the store, then fsync | $curl_disk_s s | $curl_disk_mibs MiB/s |
| fleet-agent pull | GET, SHA-256 while streaming, write + fsync into the content store, atomic rename | $agent_s s | $agent_mibs MiB/s |

- Throughput ratio agent/curl (to /dev/null): **$ratio** (goal >= 0.9).
- Throughput ratio agent/(curl + sync): **$ratio_disk**.
- Agent peak RSS (VmHWM) while pulling: **$hwm_mb MB** (goal <= 64 MB).
- Bytes fetched by the agent (its own accounting, manifest included): $fetched.

The machine is shared and noisy; figures vary from run to run. This report is written by the script and
never fails a build.
MD
cat "$report"
