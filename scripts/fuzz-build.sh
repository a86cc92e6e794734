#!/usr/bin/env bash
# Builds the cargo-fuzz targets (CI builds them; running them long is manual:
# `cargo +nightly fuzz run <target>` in protocol/).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d protocol/fuzz ] || { echo "fuzz-build: no fuzz targets yet"; exit 0; }
cargo build --manifest-path protocol/fuzz/Cargo.toml --locked --bins
echo "fuzz-build: fuzz targets build"
