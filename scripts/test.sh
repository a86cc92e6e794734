#!/usr/bin/env bash
# Runs every test: installs what the tests need, then the whole workspace's
# tests (unit, property, fixture and integration tests on real parts), every
# fuzz target for 10 s (instrumented, on stable) and the cross-build smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
# A short fuzzing run: each target must survive 10 s of libFuzzer.
scripts/fuzz-run.sh 10
# End to end: server, embedded broker, three agents, real containers, two rollouts.
FLEET_LOCAL_PROFILE=debug scripts/fleet-local.sh --once --check
FLEET_LOCAL_PROFILE=debug scripts/fleet-local.sh --once --check --broker mosquitto
if [ -x cross/smoke.sh ]; then
  cross/smoke.sh
fi
