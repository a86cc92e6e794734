#!/usr/bin/env bash
# Rollout orchestration benchmark, in one run on this machine (release build):
# a simulated fleet of N devices (control-plane/tests/fleet_sim.rs: every
# desired state the real server publishes is verified and answered after a
# simulated apply time of 2 s) takes
#  a. a release to all devices in one wave (the devices' own apply time),
#  b. the next release in five waves (10, 10%, 25%, 50%, rest) with no bake
#     time,
# and the report gives (b) against 5 x (a): the orchestration overhead of
# waves (goal <= 10%). The same run also executes the behaviour tests of the
# simulated fleet at N devices (five waves, 2% failing: complete when
# tolerated, halt exactly where the total threshold is crossed).
# Writes bench/REPORT-rollout.md. Never fails on timing.
#
# Usage: bench/rollout.sh [DEVICES]   (default 1000)
#        bench/rollout.sh --report-from LOG   (the report from a saved run's output)
set -euo pipefail
cd "$(dirname "$0")/.."
report=bench/REPORT-rollout.md
if [ "${1:-}" = --report-from ]; then
  log=$2
else
  devices=${1:-1000}
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  export FLEET_SIM_DEVICES=$devices
  cargo test --release --locked -p fleet-control-plane --test fleet_sim -- \
    --include-ignored --nocapture --test-threads 1 2>&1 | tee "$log" >&2
fi
line=$(grep -o 'rollout_overhead devices=.*' "$log" | tail -1)
[ -n "$line" ] || { echo "bench/rollout.sh: no measurement in the output" >&2; exit 1; }
val() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
behaviour=$(grep -E '^test a_fleet_in_five_waves' "$log" | sed 's/^test /- /')

cat >"$report" <<MD
# Rollout orchestration: five waves against one

Written by \`bench/rollout.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m),
shared machine; release build). A simulated fleet of $(val devices) devices
(\`control-plane/tests/fleet_sim.rs\`): the real server (sled store, director
signing every desired state) publishes to simulated devices that verify
each desired state as an agent does and report it committed $(val apply_s) s later.

| | seconds |
|---|---|
| a. one wave: publish → last device committed | $(val one_wave_s) |
| b. five waves (10, 10%, 25%, 50%, rest), no bake: publish → last device committed | $(val five_waves_s) |
| the devices' own apply time over five waves in a row (5 × $(val apply_s) s) | $(echo "$(val apply_s) * 5" | bc) |

Orchestration overhead of the waves, b against the devices' own apply time
over five waves: **$(val overhead_vs_apply_floor)** (goal ≤ 10%). For
reference, b against 5 × a (each wave as slow as the one-wave run):
$(val overhead_vs_five_x_one_wave).

What the figures say: in (a) the devices apply for $(val apply_s) s, so
$(echo "$(val one_wave_s) - $(val apply_s)" | bc) s are the server's own time to take $(val devices) devices
through one wave: signing and storing each desired state, publishing it
(one publication per device), marking it published, and stepping the
rollout on the devices' reports. Reports that queue up are taken through
the engine as one batch (one rollout step and one store commit per batch),
and published states are marked 256 per commit; before those two changes
the same benchmark gave 66% (one wave 10.0 s, five waves 16.6 s). What is
left is per-device work in the server that the waves repeat five times;
it is where the server goes next on the way to 100,000 devices.

Behaviour at $(val devices) devices in the same run (five waves, 2% of the
devices failing):

$behaviour
MD
echo >>"$report"
echo "wrote $report" >&2
