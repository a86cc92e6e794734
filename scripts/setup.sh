#!/usr/bin/env bash
# Installs everything the tests and the local fleet need on a fresh Debian 12
# machine (run as root). Idempotent: safe to run again.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: not root; skipping package installation (tests that need root will say so and skip)" >&2
  exit 0
fi

pkgs=(qemu-user-static crun runc mosquitto mosquitto-clients docker-registry skopeo umoci
      prometheus busybox-static iproute2 iptables curl jq zstd file
      gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
      musl-tools)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null; then
  installed=$(rustup target list --installed)
  for t in aarch64-unknown-linux-musl x86_64-unknown-linux-musl armv7-unknown-linux-gnueabihf; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
  done
fi

# crun 1.8 refuses cgroup v1 hybrid hosts where hugetlb sits on the v2
# hierarchy; giving hugetlb its own v1 mount fixes it.
if [ -d /sys/fs/cgroup ] && ! mountpoint -q /sys/fs/cgroup/hugetlb 2>/dev/null; then
  mkdir -p /sys/fs/cgroup/hugetlb 2>/dev/null || true
  mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb 2>/dev/null \
    || echo "setup.sh: could not mount the hugetlb cgroup; crun may refuse to start" >&2
fi

# Run foreign-architecture binaries (the cross-built agent, arm64 images) via qemu.
if [ -d /proc/sys/fs/binfmt_misc ]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  for arch in aarch64 arm; do
    if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$arch" ] && [ -f "/usr/lib/binfmt.d/qemu-$arch.conf" ]; then
      cat "/usr/lib/binfmt.d/qemu-$arch.conf" > /proc/sys/fs/binfmt_misc/register 2>/dev/null || true
    fi
  done
fi
echo "setup.sh: ready"
