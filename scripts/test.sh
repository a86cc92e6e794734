#!/usr/bin/env bash
# Runs every test: installs what the tests need, then the whole workspace's
# tests (unit, property, fixture and integration tests on real parts), builds
# the fuzz targets and runs the cross-build smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
scripts/fuzz-build.sh
# End to end: server, embedded broker, three agents, real containers, two rollouts.
FLEET_LOCAL_PROFILE=debug scripts/fleet-local.sh --once --check
FLEET_LOCAL_PROFILE=debug scripts/fleet-local.sh --once --check --broker mosquitto
if [ -x cross/smoke.sh ]; then
  cross/smoke.sh
fi
