#!/usr/bin/env bash
# Smoke test of the static device binaries: builds them with cross/build.sh,
# then runs them the way a device would — the ARM ones under qemu-user, the
# x86_64 one natively — each with an empty environment and a timeout.
#
#   cross/smoke.sh                   # all targets
#   FLEET_SMOKE_TARGETS="aarch64" cross/smoke.sh
#
# Ends with "smoke: N passed, N failed" and exits non-zero if anything failed.
# To add a check: write a `check_<name> <target> <bin>` function that returns
# non-zero on failure and add it to `checks` below (see the marked places).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

# shellcheck source=cross/targets.sh
. "$repo/cross/targets.sh"

targets=()
for a in ${FLEET_SMOKE_TARGETS:-${all_targets[*]}}; do
  t=$(canonical_target "$a") || exit 1
  targets+=("$t")
done
out=${FLEET_CROSS_OUT:-$repo/target/cross}
export FLEET_CROSS_OUT=$out
# Generous: qemu-user on a busy 2-core machine is slow, but nothing may hang.
run_timeout=${FLEET_SMOKE_TIMEOUT:-120}

passed=0
failed=0
failures=()

pass() { passed=$((passed + 1)); echo "ok   - $1"; }
fail() {
  failed=$((failed + 1)); failures+=("$1"); echo "FAIL - $1" >&2
  [ -n "${2:-}" ] && sed 's/^/       /' <<<"$2" >&2
  return 0
}
finish() {
  echo
  for f in "${failures[@]}"; do echo "failed: $f" >&2; done
  echo "smoke: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
}

# Runs the target's binary with args: empty environment (no QEMU_LD_PREFIX,
# no host library path: the binary must need nothing), bounded in time.
run_bin() {
  local t=$1 bin=$2; shift 2
  local r; r=$(target_runner "$t")
  # shellcheck disable=SC2086 # $r is empty for native runs
  timeout --kill-after=10 "$run_timeout" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin $r "$bin" "$@"
}

crate_version() {
  local id
  id=$(cargo pkgid --locked -p fleet-agent) || return 1
  echo "${id##*[#@]}"
}

# ---------------------------------------------------------------- checks ---

# `fleet-agent --version` prints "fleet-agent <crate version>".
check_version() {
  local t=$1 bin=$2 got want
  want="fleet-agent $version"
  got=$(run_bin "$t" "$bin" --version 2>&1) || { echo "exit status $?: $got"; return 1; }
  [ "$got" = "$want" ] || { echo "expected '$want', got '$got'"; return 1; }
}

# `fleet-agent --help` runs and names the program (clap, stdout, terminal-free).
check_help() {
  local t=$1 bin=$2 got
  got=$(run_bin "$t" "$bin" --help 2>&1) || { echo "exit status $?: $got"; return 1; }
  grep -q 'fleet-agent' <<<"$got" || { echo "help does not name fleet-agent: $got"; return 1; }
}

# `fleet-agent verify` on the protocol's signed fixtures (checked at their
# fixed time for device cam-01, last generation 5): the good desired state
# verifies; a tampered, an expired and a replayed one are each rejected with
# exit status 1 and their own error code.
fixtures=$repo/protocol/tests/fixtures
check_verify() {
  local t=$1 bin=$2 got rc f code
  local common=(verify --trust "$fixtures/trust.json" --device cam-01 --last-generation 5 --now 1767225600)
  got=$(run_bin "$t" "$bin" "${common[@]}" "$fixtures/desired.json" 2>&1) \
    || { echo "good desired state rejected: $got"; return 1; }
  grep -q 'generation 6' <<<"$got" || { echo "unexpected output: $got"; return 1; }
  for f in tampered_payload:bad_signature expired:expired replayed_generation:stale_generation; do
    code=${f#*:}; f=${f%%:*}
    got=$(run_bin "$t" "$bin" "${common[@]}" "$fixtures/$f.json" 2>&1); rc=$?
    [ "$rc" -eq 1 ] || { echo "$f.json: exit status $rc, want 1: $got"; return 1; }
    grep -q "$code" <<<"$got" || { echo "$f.json: no '$code' in: $got"; return 1; }
  done
}

# `fleet-agent pull --unpack` of an image for the target's architecture from
# Debian's docker-registry on loopback (image made by umoci, pushed by
# skopeo): the layers land in the store and unpack into a snapshot holding
# bin/busybox.
registry_port=
start_registry() {
  local dir; dir=$(mktemp -d -p "$smoke_tmp")
  registry_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$dir/config.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$registry_port
YML
  docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  registry_pid=$!
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$registry_port/v2/" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$registry_port/v2/" >/dev/null || { cat "$dir/registry.log"; return 1; }
  # One image per architecture, made by outside tools.
  (
    set -e
    cd "$dir"
    umoci init --layout img
    umoci new --image img:base
    umoci unpack --rootless --image img:base ub >/dev/null
    mkdir -p ub/rootfs/bin
    cp /bin/busybox ub/rootfs/bin/
    umoci repack --image img:base ub
    for arch in arm64 arm amd64; do
      umoci tag --image img:base "$arch"
      umoci config --image "img:$arch" --architecture "$arch" --os linux --config.cmd /bin/sh
      skopeo copy -q --dest-tls-verify=false "oci:img:$arch" "docker://127.0.0.1:$registry_port/edge/busybox:$arch"
    done
  ) >"$dir/push.log" 2>&1 || { cat "$dir/push.log"; return 1; }
}

check_pull() {
  local t=$1 bin=$2 got state arch
  case $t in
    aarch64-*) arch=arm64 ;;
    armv7-*) arch=arm ;;
    *) arch=amd64 ;;
  esac
  state=$(mktemp -d -p "$smoke_tmp")
  got=$(run_bin "$t" "$bin" pull --state-dir "$state" --unpack -o json \
    "127.0.0.1:$registry_port/edge/busybox:$arch" 2>&1) || { echo "pull failed: $got"; return 1; }
  grep -q '"event":"unpacked"' <<<"$got" || { echo "no unpacked event: $got"; return 1; }
  ls "$state"/snapshots/sha256/*/fs/bin/busybox >/dev/null 2>&1 \
    || { echo "no bin/busybox in the unpacked snapshot: $(find "$state/snapshots" -maxdepth 4)"; return 1; }
  cmp -s "$(ls "$state"/snapshots/sha256/*/fs/bin/busybox | head -1)" /bin/busybox \
    || { echo "unpacked busybox differs from the one pushed"; return 1; }
}

# `fleet-agent run` under qemu connects to Mosquitto on loopback and reports
# its status: the retained status message names the device and the target's
# architecture. (The daemon needs root for its container runtime.)
broker_port=
check_broker() {
  local t=$1 bin=$2 dev got pid arch
  arch=$(target_oci_arch "$t")
  dev=smoke-${arch}
  run_bin "$t" "$bin" run --config "$smoke_tmp/agent/agent.toml" \
    --state-dir "$smoke_tmp/agent/state-$arch" --device "$dev" >"$smoke_tmp/agent/$dev.log" 2>&1 &
  pid=$!
  got=$(timeout 90 mosquitto_sub -h 127.0.0.1 -p "$broker_port" -C 1 -W 80 \
    -t "fleet/v1/d/$dev/status" 2>&1) || true
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  jq -e --arg d "$dev" --arg a "$arch" '.device == $d and .info.architecture == $a' >/dev/null 2>&1 <<<"$got" \
    || { echo "no status with device $dev and architecture $arch: '$got'"; tail -5 "$smoke_tmp/agent/$dev.log"; return 1; }
}

checks=(version help verify pull broker) # add new checks here

# ------------------------------------------------------------------ main ---

smoke_tmp=$(mktemp -d)
registry_pid=
agent_env_pid=
cleanup() {
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null; fi
  if [ -n "$agent_env_pid" ]; then kill "$agent_env_pid" 2>/dev/null; fi
  rm -rf "$smoke_tmp"
}
trap cleanup EXIT

for tool in qemu-aarch64-static qemu-arm-static timeout file readelf docker-registry umoci skopeo curl python3 mosquitto mosquitto_sub jq; do
  command -v "$tool" >/dev/null || { fail "tool $tool present (run scripts/setup.sh)"; }
done
[ "$failed" -eq 0 ] || finish

echo "== smoke: building ${targets[*]}"
if cross/build.sh "${targets[@]}"; then
  pass "build.sh: static, stripped binaries for ${targets[*]}"
else
  fail "build.sh: static, stripped binaries for ${targets[*]}"
  finish
fi

version=$(crate_version) || { fail "read the fleet-agent crate version"; finish; }
if start_registry >"$smoke_tmp/registry-setup.log" 2>&1; then
  pass "docker-registry on 127.0.0.1:$registry_port with busybox images for arm64, arm, amd64"
else
  fail "docker-registry with test images" "$(cat "$smoke_tmp/registry-setup.log")"
  finish
fi
broker_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
if agent_env "$smoke_tmp/agent" "$broker_port" >"$smoke_tmp/agent-setup.log" 2>&1; then
  pass "mosquitto on 127.0.0.1:$broker_port, trust root and agent config"
else
  fail "mosquitto, trust root and agent config" "$(cat "$smoke_tmp/agent-setup.log")"
  finish
fi

for t in "${targets[@]}"; do
  bin=$out/$t/fleet-agent
  for c in "${checks[@]}"; do
    if msg=$("check_$c" "$t" "$bin" 2>&1); then
      pass "$t: $c${msg:+ ($msg)}"
    else
      fail "$t: $c" "$msg"
    fi
  done
done
finish
