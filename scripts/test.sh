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
if [ -x cross/smoke.sh ]; then
  cross/smoke.sh
fi
