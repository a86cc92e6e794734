# shellcheck shell=bash
# Measuring code shared by bench/pull.sh and cross/report.sh (sourced, not run):
# a docker-registry on loopback, pushing blobs and one-layer images to it, a
# 1 GiB layer made of real files, and running a command while sampling its
# peak RSS. Callers set `bench_work` (a scratch directory) first and call
# `bench_cleanup` on exit.

bench_reg_pid=""
bench_addr=""

bench_now() { date +%s.%N; }
bench_calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }

# Starts `docker-registry serve` on a free loopback port; sets bench_addr.
bench_start_registry() {
  command -v docker-registry >/dev/null || { echo "bench: docker-registry is not installed" >&2; return 1; }
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  bench_addr=127.0.0.1:$port
  cat >"$bench_work/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $bench_work/registry
http:
  addr: $bench_addr
YML
  docker-registry serve "$bench_work/config.yml" >"$bench_work/registry.log" 2>&1 &
  bench_reg_pid=$!
  local _
  for _ in $(seq 100); do curl -fs "http://$bench_addr/v2/" >/dev/null && return 0; sleep 0.1; done
  echo "bench: the registry did not come up" >&2
  return 1
}

bench_cleanup() {
  [ -n "$bench_reg_pid" ] && kill "$bench_reg_pid" 2>/dev/null
  wait 2>/dev/null
  [ -n "${bench_work:-}" ] && rm -rf "$bench_work"
}

# bench_push_blob REPO FILE: uploads FILE, prints its digest.
bench_push_blob() {
  local repo=$1 file=$2 digest loc
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  loc=$(curl -fsS -D - -o /dev/null -X POST "http://$bench_addr/v2/$repo/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case $loc in /*) loc="http://$bench_addr$loc" ;; esac
  case $loc in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
  curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$file" "$loc"
  echo "$digest"
}

# bench_push_image REPO:TAG LAYER MEDIA_TYPE DIFF_ID: pushes a one-layer image;
# prints the layer's digest. DIFF_ID is the uncompressed tar's digest.
bench_push_image() {
  local ref=$1 file=$2 media=$3 diff_id=$4 repo tag layer size config config_size
  repo=${ref%:*} tag=${ref##*:}
  layer=$(bench_push_blob "$repo" "$file")
  size=$(stat -c %s "$file")
  echo "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"$diff_id\"]}}" >"$bench_work/config.json"
  config=$(bench_push_blob "$repo" "$bench_work/config.json")
  config_size=$(stat -c %s "$bench_work/config.json")
  cat >"$bench_work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$config","size":$config_size},
 "layers":[{"mediaType":"$media","digest":"$layer","size":$size}]}
JSON
  curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary @"$bench_work/manifest.json" "http://$bench_addr/v2/$repo/manifests/$tag"
  echo "$layer"
}

# bench_make_layer MIB OUT: writes OUT (a gzip layer, OCI tar+gzip) holding
# about MIB MiB of real files: 256 files, a third random bytes, a third
# base64 text, a third highly repetitive text, in 16 directories. Sets
# bench_layer_diff_id (sha256 of the tar) and bench_layer_files.
bench_make_layer() {
  local mib=$1 out=$2 root=$bench_work/layer-root n=256 i per
  per=$((mib * 1024 * 1024 / n))
  rm -rf "$root"
  mkdir -p "$root"
  for ((i = 0; i < n; i++)); do
    local d=$root/usr/share/d$((i % 16))
    mkdir -p "$d"
    case $((i % 3)) in
      0) head -c "$per" /dev/urandom >"$d/f$i.bin" ;;
      1) head -c "$((per * 3 / 4))" /dev/urandom | base64 -w 76 >"$d/f$i.txt" ;;
      2) { seq 1 100000000 || true; } | head -c "$per" >"$d/f$i.log" ;;
    esac
  done
  bench_layer_files=$n
  tar -C "$root" -cf "$bench_work/layer.tar" .
  rm -rf "$root"
  bench_layer_diff_id="sha256:$(sha256sum "$bench_work/layer.tar" | cut -d' ' -f1)"
  gzip -1 -c "$bench_work/layer.tar" >"$out"
  rm -f "$bench_work/layer.tar"
}

# bench_run_peak CMD...: runs CMD (its stdout to $bench_work/run.out), sampling
# /proc/<pid>/status every 0.05 s. Sets bench_secs (wall time), bench_hwm_kb
# (the last VmHWM seen: VmHWM only grows, so that is the peak up to 0.05 s
# before exit) and bench_rc (CMD's exit status).
bench_run_peak() {
  local t0 t1 pid v
  bench_hwm_kb=0
  t0=$(bench_now)
  "$@" >"$bench_work/run.out" 2>"$bench_work/run.err" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    v=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$v" ] && bench_hwm_kb=$v
    sleep 0.05
  done
  bench_rc=0
  wait "$pid" || bench_rc=$?
  t1=$(bench_now)
  bench_secs=$(bench_calc "$t1 - $t0" 3)
  [ "$bench_rc" -eq 0 ] || { echo "bench: '$*' failed ($bench_rc):" >&2; tail -5 "$bench_work/run.err" >&2; }
  return 0
}
