#!/usr/bin/env bash
# Pull benchmark, in one run against a local docker-registry:
#  1. a 1 GiB blob (random bytes) fetched by curl (to /dev/null, and to a file
#     then sync) and by `fleet-agent pull` (verified, into the content store):
#     throughput ratio (goal: agent >= 0.9x curl) and the agent's peak RSS;
#  2. an image with one ~1 GiB (uncompressed) tar+gzip layer of real files,
#     `fleet-agent pull --unpack` into a fresh state directory: its peak RSS
#     (goal: <= 64 MB), and the unpack alone against `tar -xzf` of the same
#     layer.
# Writes bench/REPORT-pull.md. Never fails on timing.
#
# Usage: bench/pull.sh [size-in-MiB]   (default 1024, for both the blob and the layer)
# Environment: FLEET_AGENT_BIN (default: a release build of this tree),
#              BENCH_STATE_DIR (default: under a temp dir on /tmp's disk).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
size_mib=${1:-1024}

if [ -n "${FLEET_AGENT_BIN:-}" ]; then
  agent=$FLEET_AGENT_BIN
else
  cargo build --release --locked -p fleet-agent >&2
  agent="${CARGO_TARGET_DIR:-target}/release/fleet-agent"
fi

bench_work=$(mktemp -d)
trap bench_cleanup EXIT
bench_start_registry
addr=$bench_addr
state=${BENCH_STATE_DIR:-$bench_work/state}
state_parent=$(dirname "$state")
mkdir -p "$state_parent"

echo "== making a ${size_mib} MiB blob and a ${size_mib} MiB layer of files" >&2
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$bench_work/blob"
layer=$(bench_push_image bench/big:1 "$bench_work/blob" application/vnd.oci.image.layer.v1.tar \
  "sha256:$(sha256sum "$bench_work/blob" | cut -d' ' -f1)")
layer_size=$(stat -c %s "$bench_work/blob")
rm -f "$bench_work/blob"
bench_make_layer "$size_mib" "$bench_work/layer.tar.gz"
gz_size=$(stat -c %s "$bench_work/layer.tar.gz")
gz_layer=$(bench_push_image bench/files:1 "$bench_work/layer.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip "$bench_layer_diff_id")
rm -f "$bench_work/layer.tar.gz"

calc() { bench_calc "$@"; }
url="http://$addr/v2/bench/big/blobs/$layer"
echo "== curl (warm-up, then measured)" >&2
curl -fsS -o /dev/null "$url"
t0=$(bench_now); curl -fsS -o /dev/null "$url"; t1=$(bench_now)
curl_s=$(calc "$t1 - $t0" 3)
# The same bytes made durable on the state directory's disk: what persisting costs here.
t0=$(bench_now); curl -fsS -o "$state_parent/curl.out" "$url"; sync "$state_parent/curl.out"; t1=$(bench_now)
curl_disk_s=$(calc "$t1 - $t0" 3)
rm -f "$state_parent/curl.out"

echo "== fleet-agent pull (blob)" >&2
bench_run_peak "$agent" pull "$addr/bench/big:1" --state-dir "$state" --reserve 0 -o json
[ "$bench_rc" -eq 0 ] || exit 1
agent_s=$bench_secs hwm=$bench_hwm_kb
fetched=$(tail -n1 "$bench_work/run.out" | jq .bytes_fetched)
stored="$state/blobs/sha256/${layer#sha256:}"
[ "$(stat -c %s "$stored")" = "$layer_size" ] || { echo "pull.sh: stored blob has the wrong size" >&2; exit 1; }
rm -rf "$state"

echo "== fleet-agent pull --unpack (layer of files)" >&2
curl -fsS -o /dev/null "http://$addr/v2/bench/files/blobs/$gz_layer" # warm the registry's cache
bench_run_peak "$agent" pull "$addr/bench/files:1" --state-dir "$state" --reserve 0 --unpack -o json
[ "$bench_rc" -eq 0 ] || exit 1
unpack_all_s=$bench_secs unpack_hwm=$bench_hwm_kb
snap=$(jq -r 'select(.event == "unpacked") | .snapshots[0]' "$bench_work/run.out")
files=$(find "$snap" -type f | wc -l)
[ "$files" -eq "$bench_layer_files" ] || { echo "pull.sh: snapshot has $files files, expected $bench_layer_files" >&2; exit 1; }
unpacked_bytes=$(du -sb "$snap" | cut -f1)
# The unpack alone: the blobs are in the store now, only the snapshot is made again.
rm -rf "$state/snapshots"
bench_run_peak "$agent" pull "$addr/bench/files:1" --state-dir "$state" --reserve 0 --unpack -o json
[ "$bench_rc" -eq 0 ] || exit 1
unpack_s=$bench_secs unpack_only_hwm=$bench_hwm_kb
gz_blob="$state/blobs/sha256/${gz_layer#sha256:}"
rm -rf "$state/snapshots"
mkdir -p "$state_parent/tar-x"
t0=$(bench_now); tar -xzf "$gz_blob" -C "$state_parent/tar-x"; t1=$(bench_now)
tar_s=$(calc "$t1 - $t0" 3)
sync -f "$state_parent/tar-x"; t2=$(bench_now)
tar_sync_s=$(calc "$t2 - $t0" 3)
rm -rf "$state_parent/tar-x" "$state"

mib() { calc "$1 / 1048576" 1; }
mb() { calc "$1 / 1024" 1; }
curl_mibs=$(calc "$layer_size / 1048576 / $curl_s" 1)
agent_mibs=$(calc "$layer_size / 1048576 / $agent_s" 1)
ratio=$(calc "$curl_s / $agent_s" 2)
ratio_disk=$(calc "$curl_disk_s / $agent_s" 2)
curl_disk_mibs=$(calc "$layer_size / 1048576 / $curl_disk_s" 1)
bin_size=$(stat -c %s "$agent")

report=bench/REPORT-pull.md
cat >"$report" <<MD
# Pull benchmark

\`bench/pull.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),
$(uname -sr), $(basename "$agent") $(mib "$bin_size") MiB ($(file -b "$agent" | cut -d, -f1-2)). Debian's docker-registry
on loopback; every client runs one after the other in the same run, after a warm-up read of the blob so
the registry serves it from the page cache.

## Blob: $(mib "$layer_size") MiB of random bytes

| client | what it does | time | throughput |
|---|---|---|---|
| curl | GET to /dev/null | $curl_s s | $curl_mibs MiB/s |
| curl + sync | GET to a file on the same disk as the store, then fsync | $curl_disk_s s | $curl_disk_mibs MiB/s |
| fleet-agent pull | GET, SHA-256 while streaming, write + fsync into the content store, atomic rename | $agent_s s | $agent_mibs MiB/s |

- Throughput ratio agent/curl (to /dev/null): **$ratio** (goal >= 0.9).
- Throughput ratio agent/(curl + sync): **$ratio_disk**.
- Agent peak RSS (VmHWM) while pulling: **$(mb "$hwm") MB**.
- Bytes fetched by the agent (its own accounting, manifest included): $fetched.

## Layer: $bench_layer_files files, $(mib "$unpacked_bytes") MiB unpacked, $(mib "$gz_size") MiB as tar+gzip (gzip -1)

| what | time | peak RSS (VmHWM) |
|---|---|---|
| fleet-agent pull --unpack, fresh state directory (fetch, verify, unpack, diff_id check, sync) | $unpack_all_s s | **$(mb "$unpack_hwm") MB** (goal <= 64 MB) |
| fleet-agent pull --unpack, blob already stored (the unpack alone) | $unpack_s s | $(mb "$unpack_only_hwm") MB |
| tar -xzf of the same blob | $tar_s s | — |
| tar -xzf, then sync -f | $tar_sync_s s | — |

The machine is shared and noisy; figures vary from run to run. This report is written by the script and
never fails a build.
MD
cat "$report"
