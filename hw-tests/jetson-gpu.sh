#!/usr/bin/env bash
# hw-tests/jetson-gpu.sh — GPU access in a container on a REAL Jetson.
#
# NEEDS A JETSON (JetPack 5/6/7: /etc/nv_tegra_release, a CDI spec or the
# L4T CSV files), root, crun or runc, curl and jq. Anywhere else it prints
# "SKIPPED: <why>" and exits 0.
#
# One command, from the repository root:
#   sudo FLEET_GPU_IMAGE=/path/to/devicequery.tar hw-tests/jetson-gpu.sh
#
# FLEET_GPU_IMAGE: an OCI layout directory, an OCI archive or a `docker save`
# tar of an image whose command runs CUDA's deviceQuery and then sleeps
# (build it on the Jetson from hw-tests/devicequery.Dockerfile, see
# hw-tests/README.md). What it does:
#   1. builds fleet-server, fleetctl and fleet-agent (or uses FLEET_BIN),
#   2. starts a local fleet-server and one agent (host_root = /),
#   3. rolls the image out with --gpu all and --requires-l4t matching this
#      device, and checks the container log prints "Result = PASS",
#   4. plans and starts a rollout of a deliberately mismatched
#      --requires-l4t: the plan leaves this Jetson out as incompatible (with
#      the requirement it does not meet), the rollout is refused (fleetctl
#      exit 3), and the first release keeps running.
set -euo pipefail

skip() { echo "SKIPPED: jetson-gpu: $*"; exit 0; }
fail() { echo "FAIL: jetson-gpu: $*" >&2; exit 1; }

[ "$(uname -m)" = aarch64 ] || skip "needs a Jetson (aarch64), this is $(uname -m)"
[ -r /etc/nv_tegra_release ] || skip "needs a Jetson: /etc/nv_tegra_release is missing"
[ "$(id -u)" -eq 0 ] || skip "needs root (crun with device nodes, overlay mounts)"
runtime=""
for r in crun runc; do command -v "$r" >/dev/null && { runtime=$r; break; }; done
[ -n "$runtime" ] || skip "neither crun nor runc is installed"
for tool in curl jq; do command -v "$tool" >/dev/null || skip "$tool is missing"; done
[ -n "${FLEET_GPU_IMAGE:-}" ] || skip "FLEET_GPU_IMAGE is not set (a deviceQuery image, see hw-tests/README.md)"
[ -e "$FLEET_GPU_IMAGE" ] || fail "FLEET_GPU_IMAGE=$FLEET_GPU_IMAGE does not exist"

repo=$(cd "$(dirname "$0")/.." && pwd)
# L4T major.minor from "# R36 (release), REVISION: 4.3, ...".
l4t_major=$(sed -n 's/^# R\([0-9]*\) (release).*/\1/p' /etc/nv_tegra_release)
l4t_rev=$(sed -n 's/.*REVISION: \([0-9]*\)\..*/\1/p' /etc/nv_tegra_release)
[ -n "$l4t_major" ] && [ -n "$l4t_rev" ] || fail "cannot read the L4T release from /etc/nv_tegra_release"
echo "== Jetson with L4T R$l4t_major.$l4t_rev, runtime $runtime"

if [ -n "${FLEET_BIN:-}" ]; then
  bin=$FLEET_BIN
else
  echo "== building fleet-server, fleetctl, fleet-agent (release)"
  (cd "$repo" && cargo build --release --locked --bins -q)
  bin=${CARGO_TARGET_DIR:-$repo/target}/release
fi
work=${FLEET_GPU_DIR:-$repo/target/jetson-gpu}
port=${FLEET_GPU_HTTP_PORT:-18080}
mqtt=${FLEET_GPU_MQTT_PORT:-11883}
server=http://127.0.0.1:$port
dev=jetson-01
d=$work/devices/$dev

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for id in $("$runtime" --root "$d/runtime" list -q 2>/dev/null); do
    "$runtime" --root "$d/runtime" delete --force "$id" >/dev/null 2>&1 || true
  done
  grep " $work/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$work"; mkdir -p "$d"
cd "$work"
"$bin/fleetctl" keys init --dir keys >/dev/null
cat >server.toml <<TOML
data_dir = "$work/server-data"
[http]
listen = "127.0.0.1:$port"
[broker]
embedded = true
listen = "127.0.0.1:$mqtt"
[director]
key = "$work/keys/director.key"
trust = "$work/keys/trust.json"
TOML
"$bin/fleet-server" --config server.toml >server.out 2>server.log &
pids+=($!)
for _ in $(seq 100); do grep -q 'admin token' server.out 2>/dev/null && break; sleep 0.1; done
token=$(grep -o 'fleet_[0-9a-f]*' server.out | head -1)
[ -n "$token" ] || fail "fleet-server did not start: $(cat server.log)"
export FLEET_CONFIG_DIR=$work/fleetctl
"$bin/fleetctl" login --server "$server" --token "$token" >/dev/null
"$bin/fleetctl" image import "$FLEET_GPU_IMAGE" --repository edge/devicequery --tag v1

cat >"$d/agent.toml" <<TOML
device_id = "$dev"
state_dir = "$d/state"
trust = "$work/keys/trust.json"
server = "$server"
broker = "mqtt://127.0.0.1:$mqtt"
token = "$("$bin/fleet-server" --config server.toml device-token "$dev")"
status_interval_secs = 2
[labels]
role = "jetson"
[runtime]
kind = "$runtime"
root = "$d/runtime"
TOML
"$bin/fleet-agent" run --config "$d/agent.toml" >"$d/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
  "$bin/fleetctl" devices ls -o json | grep -q "\"$dev\"" && break
  sleep 0.5
done
"$bin/fleetctl" groups add jetsons --selector role=jetson >/dev/null

echo "== rollout with --gpu all --requires-l4t '>=$l4t_major.$l4t_rev, <$((l4t_major + 1))'"
"$bin/fleetctl" rollout "127.0.0.1:$port/edge/devicequery:v1" --group jetsons \
  --release-key keys/release.key --gpu all \
  --requires-l4t ">=$l4t_major.$l4t_rev, <$((l4t_major + 1))" --watch \
  || fail "the GPU rollout did not complete (see $d/agent.log)"
pass=""
for _ in $(seq 120); do
  pass=$(find "$d/state/containers" -name stdout.log -exec grep -l 'Result = PASS' {} + 2>/dev/null || true)
  [ -n "$pass" ] && break
  sleep 0.5
done
[ -n "$pass" ] || fail "deviceQuery did not print 'Result = PASS'; its logs: $(find "$d/state/containers" -name 'std*.log' -exec tail -n 20 {} +)"
echo "ok: deviceQuery in the container printed 'Result = PASS' ($pass)"

wrong=">=$((l4t_major + 10)), <$((l4t_major + 11))"
"$bin/fleetctl" image import "$FLEET_GPU_IMAGE" --repository edge/devicequery --tag v2 >/dev/null
echo "== plan v2 with a mismatched --requires-l4t '$wrong': the device must be left out"
plan=$("$bin/fleetctl" rollout "127.0.0.1:$port/edge/devicequery:v2" --group jetsons \
  --release-key keys/release.key --gpu all --requires-l4t "$wrong" --plan 2>&1) \
  || fail "fleetctl rollout --plan failed: $plan"
echo "$plan" | sed 's/^/   /'
grep -q "excluded $dev: incompatible: requires l4t" <<<"$plan" \
  || fail "the plan does not leave $dev out as incompatible"
echo "== rollout v2 anyway: the server must refuse it (exit 3, rejected)"
set +e
out=$("$bin/fleetctl" rollout "127.0.0.1:$port/edge/devicequery:v2" --group jetsons \
  --release-key keys/release.key --gpu all --requires-l4t "$wrong" 2>&1)
rc=$?
set -e
echo "$out" | sed 's/^/   /'
[ "$rc" -eq 3 ] || fail "fleetctl rollout of the mismatched release exited $rc, not 3"
grep -q "meets the release's requirements" <<<"$out" || fail "the refusal does not name the requirements"
# The device's own check (it refuses such a release before downloading,
# should a desired state reach it) is covered on any machine by
# agent/tests/gpu_lifecycle.rs.
"$runtime" --root "$d/runtime" list | grep -q running || fail "the first release stopped running"
echo "ok: the mismatched release was refused as incompatible; the first release keeps running"
echo "PASS: jetson-gpu"
