#!/usr/bin/env bash
# The main job: a complete local fleet on the embedded defaults.
#
# What exists today: keys and trust metadata are created with fleetctl, a
# release is signed, and the signature is verified the way a device verifies
# it. The server, broker, agents and rollout steps join as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bins
bin=target/release
work=${FLEET_LOCAL_DIR:-target/fleet-local}
rm -rf "$work"; mkdir -p "$work"
echo "== fleet-local: working in $work"
"$bin/fleetctl" --version
"$bin/fleet-agent" --version
