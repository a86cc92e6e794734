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

# NEXT CHECK (not implemented yet: needs `fleet-agent verify`):
#   check_verify: `fleet-agent verify --trust trust.json desired.json` against
#   the protocol's fixtures (a good signed desired state must pass; a tampered,
#   expired and replayed one must each fail with its distinct exit code).
#   Fixtures: create them with the native fleetctl (keys, trust.json, signed
#   desired state) in a temp dir, then run the cross binary on them.

# NEXT CHECK (not implemented yet: needs `fleet-agent pull`):
#   check_pull: start `docker-registry serve cfg.yml` on 127.0.0.1:<free port>,
#   push an arm64 busybox image with umoci+skopeo (see notes/machine.md),
#   run `fleet-agent pull` under qemu against it into a temp store, and check
#   the unpacked rootfs (bin/busybox present, digests verified).

# NEXT CHECK (not implemented yet: needs the agent's MQTT link):
#   check_broker: start mosquitto on 127.0.0.1:<free port>, run the agent under
#   qemu with a config pointing at it, and wait (generous timeout) for the
#   retained `fleet/v1/d/<device>/online` message with mosquitto_sub.

checks=(version help) # add new checks here, e.g. verify pull broker

# ------------------------------------------------------------------ main ---

for tool in qemu-aarch64-static qemu-arm-static timeout file readelf; do
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
