#!/usr/bin/env bash
# Layer delta benchmark (issue 13), on a corpus of real updates built here:
#  a. libzstd.so (zstd 1.5.7 sources from the cargo registry) compiled twice
#     with gcc, the second time with ZSTD_VERSION_RELEASE bumped by one;
#  b. a Python site-packages layer: pip, requests and urllib3 wheels from
#     PyPI unpacked, one minor version bump each;
#  c. a 1 GiB model-like file (AES-CTR keystream from a fixed key, so
#     deterministic and incompressible like quantised weights) with 1% of its
#     bytes rewritten in 2621 scattered 4 KiB blocks.
# For each, in one run: the v2 layer gzip'd (what a docker pull fetches),
# whole-layer `zstd -19 --long=31 --patch-from`, `xdelta3 -9 -B` and Fleet's
# delta (protocol/examples/delta_tool.rs); encode time and peak RSS of
# xdelta3 and Fleet; the time and peak RSS of computing the base's skeleton
# on its own (a device does it while unpacking, on a thread); Fleet's apply
# time, peak RSS and throughput.
# Writes bench/REPORT-delta.md. Never fails on timing; not run by CI.
#
# Usage: bench/delta.sh            (BENCH_CORPUS=dir keeps the corpus between runs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${CI:-}" ]; then
  echo "bench/delta.sh is a benchmark, not a test: not run in CI" >&2
  exit 0
fi
for tool in gcc zstd xdelta3 python3 pip openssl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is needed (apt-get install xdelta3 zstd time)" >&2; exit 1; }
done
repo=$(pwd)
nice -n 5 cargo build --release --locked --example delta_tool -p fleet-protocol >&2
tool="${CARGO_TARGET_DIR:-$repo/target}/release/examples/delta_tool"
corpus=${BENCH_CORPUS:-/tmp/fleet-delta-corpus}
mkdir -p "$corpus"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Deterministic tars: sorted names, fixed owner and mtime (as image builders do).
mktar() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C "$1" -cf "$2" .; }

build_c() {
  local d=$corpus/c
  [ -f "$d/v2.tar" ] && return 0
  local src
  src=$(ls -d "$HOME"/.cargo/registry/src/*/zstd-sys-2.1.3+zstd.1.5.7/zstd/lib | head -1)
  [ -d "$src" ] || { echo "bench: zstd-sys sources not in the cargo registry" >&2; return 1; }
  for v in 1 2; do
    rm -rf "$d/src$v" "$d/root$v"
    mkdir -p "$d/src$v" "$d/root$v/usr/lib" "$d/root$v/usr/include"
    cp -r "$src"/. "$d/src$v/"
    if [ $v = 2 ]; then
      sed -i 's/^#define ZSTD_VERSION_RELEASE  *7$/#define ZSTD_VERSION_RELEASE  8/' "$d/src$v/zstd.h"
      grep -q 'ZSTD_VERSION_RELEASE  8' "$d/src$v/zstd.h"
    fi
    (cd "$d/src$v" && nice -n 5 gcc -O2 -fPIC -shared -DZSTD_DISABLE_ASM -DXXH_NAMESPACE=ZSTD_ \
      -o "$d/root$v/usr/lib/libzstd.so.1" common/*.c compress/*.c decompress/*.c dictBuilder/*.c)
    cp "$d/src$v"/zstd.h "$d/src$v"/zdict.h "$d/src$v"/zstd_errors.h "$d/root$v/usr/include/"
    mktar "$d/root$v" "$d/v$v.tar"
  done
}

build_py() {
  local d=$corpus/py
  [ -f "$d/v2.tar" ] && return 0
  mkdir -p "$d"
  pip download -q --no-deps -d "$d/wheels1" pip==23.3.2 requests==2.31.0 urllib3==2.0.7
  pip download -q --no-deps -d "$d/wheels2" pip==24.0 requests==2.32.3 urllib3==2.2.1
  for v in 1 2; do
    rm -rf "$d/root$v"
    local site=$d/root$v/usr/lib/python3/site-packages
    mkdir -p "$site"
    for w in "$d/wheels$v"/*.whl; do
      python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$site"
    done
    mktar "$d/root$v" "$d/v$v.tar"
  done
}

build_model() {
  local d=$corpus/model
  [ -f "$d/v2.tar" ] && return 0
  mkdir -p "$d/root1/models" "$d/root2/models"
  # openssl ends on SIGPIPE when head has its 1 GiB.
  { openssl enc -aes-256-ctr -nosalt -pass pass:fleet-model-v1 -pbkdf2 -in /dev/zero 2>/dev/null || true; } |
    head -c $((1 << 30)) >"$d/root1/models/net.engine"
  [ "$(stat -c %s "$d/root1/models/net.engine")" = $((1 << 30)) ]
  cp "$d/root1/models/net.engine" "$d/root2/models/net.engine"
  # 1% of 1 GiB = 2621 blocks of 4 KiB at seeded offsets, rewritten.
  python3 - "$d/root2/models/net.engine" <<'PY'
import random, sys
r = random.Random(13)
size, block = 1 << 30, 4096
with open(sys.argv[1], "r+b") as f:
    for off in sorted(r.sample(range(size // block), 2621)):
        f.seek(off * block)
        f.write(r.randbytes(block))
PY
  echo 'input: images, 3x640x640, fp16' >"$d/root1/models/net.txt"
  echo 'input: images, 3x640x640, fp16 (retrained 2026-12)' >"$d/root2/models/net.txt"
  for v in 1 2; do mktar "$d/root$v" "$d/v$v.tar"; done
}

# measure OUT CMD...: runs CMD under /usr/bin/time -v; prints "seconds peak_kib".
measure() {
  local out=$1
  shift
  /usr/bin/time -v -o "$work/time" "$@" >"$out" 2>&1
  awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]} /Maximum resident set size/{k=$2} END{printf "%.2f %d\n", s, k}' "$work/time"
}

mib() { awk "BEGIN { printf \"%.2f\", $1 / 1048576 }"; }

rows=""
run_case() {
  local name=$1 d=$corpus/$2
  local v1=$d/v1.tar v2=$d/v2.tar
  echo "== $name" >&2
  local tar_bytes gz_bytes zp_bytes xd_bytes fl_bytes
  tar_bytes=$(stat -c %s "$v2")
  gz_bytes=$(gzip -6 -n -c "$v2" | wc -c)
  local zlevel=${BENCH_ZSTD_LEVEL:-19}
  read -r zp_s zp_kib < <(measure "$work/zp.log" zstd -q -f "-$zlevel" --long=31 -T1 --patch-from="$v1" "$v2" -o "$work/zp.zst")
  zp_bytes=$(stat -c %s "$work/zp.zst")
  read -r xd_s xd_kib < <(measure "$work/xd.log" xdelta3 -e -f -9 -B $((1 << 30)) -s "$v1" "$v2" "$work/xd.vcdiff")
  xd_bytes=$(stat -c %s "$work/xd.vcdiff")
  read -r en_s en_kib < <(measure "$work/en.log" "$tool" encode "$v1" "$v2" "$work/fleet.delta")
  fl_bytes=$(stat -c %s "$work/fleet.delta")
  rm -rf "$work/base" && mkdir -p "$work/base" && tar -xf "$v1" -C "$work/base"
  # The base's skeleton, as the device writes it while unpacking v1.
  read -r sk_s sk_kib < <(measure "$work/sk.log" "$tool" skeleton "$v1" "$work/base.skeleton")
  read -r ap_s ap_kib < <(measure "$work/ap.log" "$tool" apply "$work/fleet.delta" "$work/base" "$work/rebuilt.tar")
  cmp -s "$work/rebuilt.tar" "$v2" || { echo "bench: $name: rebuilt tar differs" >&2; exit 1; }
  local ratio mbs
  ratio=$(awk "BEGIN { printf \"%.2f\", $fl_bytes / $zp_bytes }")
  # /usr/bin/time counts in 10 ms steps: a faster apply has no rate.
  mbs=$(awk "BEGIN { if ($ap_s > 0) printf \"%.0f\", $tar_bytes / 1e6 / $ap_s; else print \"(< 10 ms)\" }")
  echo "$name: tar $tar_bytes gzip $gz_bytes zstd-patch $zp_bytes xdelta3 $xd_bytes fleet $fl_bytes ($ratio x zstd)" >&2
  echo "  zstd ${zp_s}s ${zp_kib}KiB; xdelta3 ${xd_s}s ${xd_kib}KiB; fleet encode ${en_s}s ${en_kib}KiB; apply ${ap_s}s ${ap_kib}KiB ${mbs} MB/s" >&2
  sed 's/^/    /' "$work/en.log" "$work/sk.log" "$work/ap.log" >&2
  rows+="| $name | $(mib "$tar_bytes") | $gz_bytes | $zp_bytes | $xd_bytes | **$fl_bytes** | $ratio | $(awk "BEGIN { printf \"%.2f\", 100 * $fl_bytes / $gz_bytes }")% |
"
  timing+="| $name | $zp_s / $((zp_kib / 1024)) | $xd_s / $((xd_kib / 1024)) | $en_s / $((en_kib / 1024)) | $sk_s / $((sk_kib / 1024)) | $ap_s / $((ap_kib / 1024)) | $mbs |
"
  rm -f "$work/zp.zst" "$work/xd.vcdiff" "$work/fleet.delta" "$work/rebuilt.tar"
}

timing=""
build_c
build_py
build_model
run_case "a. libzstd.so rebuilt (version constant +1)" c
run_case "b. site-packages: pip 23.3.2→24.0, requests 2.31.0→2.32.3, urllib3 2.0.7→2.2.1" py
run_case "c. 1 GiB model file, 1% of bytes rewritten in 4 KiB blocks" model

report=bench/REPORT-delta.md
{
  echo "# Layer deltas: Fleet against whole-layer zstd --patch-from and xdelta3"
  echo
  echo "Written by \`bench/delta.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m), shared machine;"
  echo "zstd $(zstd -V | grep -o 'v[0-9.]*'), xdelta3 $(xdelta3 -V 2>&1 | grep -o '[0-9][0-9.]*' | head -1))."
  echo "Each case is the uncompressed v2 layer tar; v1's tar (or, for Fleet's apply, v1 unpacked"
  echo "into a directory with v1's skeleton beside it, as a device's snapshot) is the base."
  echo "Fleet's delta is format v$(grep -o 'VERSION: u16 = [0-9]*' protocol/src/delta/format.rs | grep -o '[0-9]*$')."
  echo
  echo "## Bytes sent"
  echo
  echo "| case | v2 tar MiB | gzip -6 (docker pull) | zstd -${BENCH_ZSTD_LEVEL:-19} --long=31 --patch-from | xdelta3 -9 | Fleet delta | Fleet / zstd | Fleet / gzip |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s' "$rows"
  echo
  echo "## Time (s) / peak RSS (MiB)"
  echo
  echo "| case | zstd --patch-from encode | xdelta3 encode | Fleet encode (server) | Fleet base skeleton (device, alone) | Fleet apply (device) | apply MB/s of tar |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s' "$timing"
} >"$report.tmp"
mv "$report.tmp" "$report"
echo "wrote $report (the analysis section is added by hand)" >&2
