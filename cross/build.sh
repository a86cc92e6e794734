#!/usr/bin/env bash
# Builds the fully static, stripped `fleet-agent` for the device targets and
# copies each binary to target/cross/<target>/fleet-agent.
#
#   cross/build.sh                      # all three targets
#   cross/build.sh aarch64 armv7        # short names work too
#   cross/build.sh aarch64-unknown-linux-musl
#
# Targets (see cross/README.md for why):
#   aarch64-unknown-linux-musl      Jetsons, 64-bit ARM boxes   (musl, static)
#   armv7-unknown-linux-gnueabihf   32-bit ARM hard-float boxes (glibc, +crt-static)
#   x86_64-unknown-linux-musl       x86 gateways                (musl, static)
#
# Every C compiler, archiver and linker is set per target here, so crates with
# C code (ring, zstd-sys, ...) cross-compile without further setup. Nothing is
# written to .cargo/config.toml: native builds stay untouched.
#
# Environment:
#   CARGO_TARGET_DIR   where cargo builds (default: <repo>/target)
#   FLEET_CROSS_OUT    where the binaries are copied (default: <repo>/target/cross)
#   FLEET_CROSS_TIMES  if set, a file that receives "<seconds>" of the cargo build
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

# shellcheck source=cross/targets.sh
. "$repo/cross/targets.sh"

die() { echo "cross/build.sh: $*" >&2; exit 1; }

# Fails unless the binary is a static, stripped executable for the target.
check_static() {
  local t=$1 bin=$2 desc
  desc=$(file -b "$bin")
  echo "  file: $desc"
  case "$desc" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) die "$t: file(1) does not report a statically linked binary: $desc" ;;
  esac
  [[ "$desc" == *"$(target_file_machine "$t")"* ]] || die "$t: wrong machine: $desc"
  [[ "$desc" == *", stripped"* ]] || die "$t: binary is not stripped: $desc"
  if readelf -d "$bin" | grep -q '(NEEDED)'; then
    readelf -d "$bin" | grep '(NEEDED)' >&2
    die "$t: binary needs shared libraries"
  fi
  if readelf -lW "$bin" | grep -q 'INTERP'; then
    die "$t: binary has an ELF interpreter (dynamic loader)"
  fi
  echo "  readelf: no NEEDED, no INTERP"
}

targets=()
if [ "$#" -eq 0 ]; then
  targets=("${all_targets[@]}")
else
  for a in "$@"; do t=$(canonical_target "$a") || exit 1; targets+=("$t"); done
fi

command -v file >/dev/null || die "file(1) not found: run scripts/setup.sh"
command -v readelf >/dev/null || die "readelf not found (binutils)"
if command -v rustup >/dev/null; then
  installed=$(rustup target list --installed)
  for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || die "rust target $t is not installed: run scripts/setup.sh (rustup target add $t)"
  done
fi

# A global RUSTFLAGS would replace the per-target rustflags (cargo uses only
# one source), losing +crt-static.
if [ -n "${RUSTFLAGS:-}" ] || [ -n "${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
  echo "cross/build.sh: ignoring RUSTFLAGS/CARGO_ENCODED_RUSTFLAGS (per-target flags are set here)" >&2
  unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
fi

target_args=()
for t in "${targets[@]}"; do
  target_env "$t" || exit 1
  target_args+=(--target "$t")
done

target_dir=${CARGO_TARGET_DIR:-$repo/target}
out=${FLEET_CROSS_OUT:-$repo/target/cross}

# One cargo invocation for all targets lets cargo overlap one target's
# compilation with another's (single-unit LTO) link on a small machine.
echo "== cross/build.sh: cargo build --release --locked -p fleet-agent ${target_args[*]}"
start=$(date +%s)
cargo build --release --locked -p fleet-agent --bin fleet-agent "${target_args[@]}"
secs=$(($(date +%s) - start))
echo "== cross/build.sh: cargo build took ${secs}s for ${#targets[@]} target(s)"
[ -n "${FLEET_CROSS_TIMES:-}" ] && echo "$secs" >"$FLEET_CROSS_TIMES"

for t in "${targets[@]}"; do
  src=$target_dir/$t/release/fleet-agent
  [ -f "$src" ] || die "$t: $src was not built"
  mkdir -p "$out/$t"
  cp "$src" "$out/$t/fleet-agent"
  echo "== $t: $out/$t/fleet-agent ($(stat -c %s "$out/$t/fleet-agent") bytes)"
  check_static "$t" "$out/$t/fleet-agent"
done
echo "== cross/build.sh: ${#targets[@]} static binaries in $out"
