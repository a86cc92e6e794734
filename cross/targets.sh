# Shared by cross/build.sh, cross/smoke.sh and cross/report.sh (sourced, not run).
# The device targets, their short names, and how to run each on x86_64.

all_targets=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf x86_64-unknown-linux-musl)

# Full target triple for a short name (aarch64, armv7, x86_64) or a triple.
canonical_target() {
  case "$1" in
    aarch64 | arm64 | aarch64-unknown-linux-musl) echo aarch64-unknown-linux-musl ;;
    armv7 | armhf | arm | armv7-unknown-linux-gnueabihf) echo armv7-unknown-linux-gnueabihf ;;
    x86_64 | amd64 | x86_64-unknown-linux-musl) echo x86_64-unknown-linux-musl ;;
    *) echo "unknown target '$1' (known: ${all_targets[*]})" >&2; return 1 ;;
  esac
}

# The command that executes a binary of the target on this x86_64 machine
# (empty: natively).
target_runner() {
  case "$1" in
    aarch64-*) echo qemu-aarch64-static ;;
    armv7-*) echo qemu-arm-static ;;
    x86_64-*) echo "" ;;
  esac
}

# What file(1) says about the target's machine.
target_file_machine() {
  case "$1" in
    aarch64-*) echo "ARM aarch64" ;;
    armv7-*) echo "ARM, EABI5" ;;
    x86_64-*) echo "x86-64" ;;
  esac
}

# Per-target toolchain. Sets CC_/AR_/CXX_ for the cc crate (build scripts of
# crates with C code), the linker and the target's rustflags. Target-keyed
# variables only: host build scripts and proc macros still use the host tools.
target_env() {
  local t=$1 u cc ar cxx linker rustflags
  u=$(tr 'a-z-' 'A-Z_' <<<"$t")
  case "$t" in
    aarch64-unknown-linux-musl)
      # Debian's glibc cross gcc drives the link; rustc passes musl's own
      # self-contained crt objects and libc.a, so the result is pure musl.
      cc=aarch64-linux-gnu-gcc ar=aarch64-linux-gnu-ar cxx=aarch64-linux-gnu-g++
      linker=aarch64-linux-gnu-gcc
      rustflags="-C target-feature=+crt-static"
      ;;
    armv7-unknown-linux-gnueabihf)
      # No musl rust-std for armv7 is served here: static glibc instead.
      cc=arm-linux-gnueabihf-gcc ar=arm-linux-gnueabihf-ar cxx=arm-linux-gnueabihf-g++
      linker=arm-linux-gnueabihf-gcc
      rustflags="-C target-feature=+crt-static"
      ;;
    x86_64-unknown-linux-musl)
      # musl-gcc (Debian musl-tools) compiles C code against musl's headers;
      # the link itself uses rustc's self-contained musl objects.
      if command -v musl-gcc >/dev/null; then
        cc=musl-gcc
      else
        echo "cross: musl-gcc not found (apt-get install musl-tools); C code for $t is compiled with gcc against glibc headers" >&2
        cc=gcc
      fi
      ar=ar cxx=g++ linker=gcc
      rustflags="-C target-feature=+crt-static"
      ;;
  esac
  command -v "$linker" >/dev/null || { echo "$linker not found: run scripts/setup.sh (Debian cross gcc packages)" >&2; return 1; }
  export "CC_${t//-/_}=$cc" "AR_${t//-/_}=$ar" "CXX_${t//-/_}=$cxx"
  export "CARGO_TARGET_${u}_LINKER=$linker"
  export "CARGO_TARGET_${u}_RUSTFLAGS=$rustflags"
}

# agent_env DIR PORT: what running the agent daemon on this machine needs (for
# cross/smoke.sh and cross/report.sh): a trust root made by the native
# fleetctl, Mosquitto on 127.0.0.1:PORT (anonymous, loopback only) started in
# the background (its pid in agent_env_pid), and DIR/agent.toml pointing at
# both. Callers give each run its own --state-dir and --device.
agent_env() {
  local dir=$1 port=$2 root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  mkdir -p "$dir"
  (cd "$root" && cargo build -q --locked --bins) || return 1
  "${CARGO_TARGET_DIR:-$root/target}/debug/fleetctl" keys init --dir "$dir/keys" >/dev/null || return 1
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$dir/mosquitto.conf"
  mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
  agent_env_pid=$!
  local i
  for ((i = 0; i < 50; i++)); do
    mosquitto_pub -h 127.0.0.1 -p "$port" -t probe -m x 2>/dev/null && break
    sleep 0.1
  done
  cat >"$dir/agent.toml" <<TOML
state_dir = "$dir/state"
trust = "$dir/keys/trust.json"
broker = "mqtt://127.0.0.1:$port"
token = "anonymous-broker"
status_interval_secs = 5
[labels]
role = "smoke"
TOML
}

# The OCI architecture name a target reports.
target_oci_arch() {
  case "$1" in
    aarch64-*) echo arm64 ;;
    armv7-*) echo arm ;;
    x86_64-*) echo amd64 ;;
  esac
}
