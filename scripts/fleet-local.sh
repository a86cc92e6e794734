#!/usr/bin/env bash
# The main job: a complete local fleet on the embedded defaults.
#
#   sudo scripts/fleet-local.sh          # runs until Ctrl-C, then stops everything
#   sudo scripts/fleet-local.sh --once   # stops everything after the rollouts
#   scripts/fleet-local.sh --once --check  # also asserts the outcome (the test suite's end-to-end test)
#   scripts/fleet-local.sh --broker mosquitto  # Mosquitto (TLS, device certificates, ACL) instead of the embedded broker
#
# Everything speaks TLS with the fleet CA the server makes on its first
# start (protocol/SECURITY.md): the API, the content endpoint and MQTT.
# It builds the three programs, creates the signing keys and trust root,
# starts fleet-server (REST API, embedded MQTT broker, OCI content endpoint),
# three fleet-agent devices with their own state directories that enroll
# with a bootstrap token (their keys made on the device, their certificates
# from the fleet CA) and run real containers with crun, imports a sample
# image (v1 and v2, made with umoci),
# rolls out v1 and then v2 to the group `cameras` with fleetctl, and shows
# the devices, their versions and what the runtime reports. Prometheus scrapes
# the server's /metrics (the Grafana dashboards in grafana/ read from it);
# cam-03 reads its sensors from a Jetson Orin fixture tree, so the Jetson
# dashboard has data too. --check also runs every dashboard query against it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
once=false
check=false
broker=embedded
while [ $# -gt 0 ]; do
  case $1 in
    --once) once=true ;;
    --check) check=true ;;
    --broker) broker=${2:-}; shift ;;
    *) echo "usage: $0 [--once] [--check] [--broker embedded|mosquitto]" >&2; exit 2 ;;
  esac
  shift
done
case $broker in embedded | mosquitto) ;; *) echo "--broker embedded|mosquitto" >&2; exit 2 ;; esac

if [ "$(id -u)" -ne 0 ]; then
  echo "fleet-local: the devices run real containers (crun, overlayfs, cgroups): run as root (sudo $0)" >&2
  exit 1
fi
scripts/setup.sh
for tool in crun umoci busybox curl jq mosquitto mosquitto_passwd prometheus ss; do
  command -v "$tool" >/dev/null || { echo "fleet-local: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

# FLEET_LOCAL_PROFILE=debug reuses the test suite's debug build.
profile=${FLEET_LOCAL_PROFILE:-release}
echo "== building fleet-server, fleetctl, fleet-agent ($profile)"
if [ "$profile" = release ]; then
  cargo build --release --locked --bins -q
else
  cargo build --locked --bins -q
fi
bin=${CARGO_TARGET_DIR:-$repo/target}/$profile
work=${FLEET_LOCAL_DIR:-$repo/target/fleet-local}
http_port=${FLEET_LOCAL_HTTP_PORT:-8080}
mqtt_port=${FLEET_LOCAL_MQTT_PORT:-8883}
server=https://127.0.0.1:$http_port
ca=$work/server-data/pki/ca.crt
# Prometheus takes the first free loopback port from 9090 (or the one given).
free_port() {
  local p=$1
  while [ -n "$(ss -Htln "sport = :$p")" ]; do p=$((p + 1)); done
  echo "$p"
}
prom_port=${FLEET_LOCAL_PROMETHEUS_PORT:-$(free_port 9090)}
prom=http://127.0.0.1:$prom_port
jetson_fixture=$repo/agent/tests/fixtures/tegra/orin-r36

pids=()
cleanup() {
  echo "== stopping the local fleet"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The agents leave containers running on purpose (an agent restart must not
  # stop apps); the local fleet removes them.
  for d in "$work"/devices/*/; do
    [ -d "$d/runtime" ] || continue
    for id in $(crun --root "$d/runtime" list -q 2>/dev/null); do
      crun --root "$d/runtime" delete --force "$id" >/dev/null 2>&1 || true
    done
  done
  grep " $work/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$work"; mkdir -p "$work"/devices
cd "$work"
echo "== working in $work"

echo "== fleetctl keys init (root, release and director keys; trust.json)"
"$bin/fleetctl" keys init --dir keys >/dev/null

if [ "$broker" = mosquitto ]; then
  broker_section="embedded = false
url = \"mqtts://127.0.0.1:$mqtt_port\""
else
  broker_section="embedded = true
listen = \"127.0.0.1:$mqtt_port\""
fi
# --check renews the device certificates every 20 s (30 s lifetime) to check
# that rotation keeps the devices' apps and links.
tls_section=""
$check && tls_section="[tls]
device_cert_secs = 30"
cat >server.toml <<TOML
data_dir = "$work/server-data"
[http]
listen = "127.0.0.1:$http_port"
[broker]
$broker_section
[director]
key = "$work/keys/director.key"
trust = "$work/keys/trust.json"
$tls_section
TOML
if [ "$broker" = mosquitto ]; then
  echo "== starting Mosquitto on 127.0.0.1:$mqtt_port: TLS, device certificates, per-device ACL (fleet-server mosquitto-config)"
  "$bin/fleet-server" --config server.toml mosquitto-config --out "$work/mosquitto" \
    --port "$mqtt_port" --address 127.0.0.1 >/dev/null
  id -u mosquitto >/dev/null 2>&1 && chown -R mosquitto: "$work/mosquitto"
  printf 'persistence false\ninclude_dir %s\n' "$work/mosquitto" >mosquitto.conf
  mosquitto -c mosquitto.conf >mosquitto.log 2>&1 &
  pids+=($!)
fi
echo "== starting fleet-server (API $server, MQTT 127.0.0.1:$mqtt_port [$broker], content at $server/v2/)"
"$bin/fleet-server" --config server.toml >server.out 2>server.log &
pids+=($!)
for _ in $(seq 100); do
  grep -q 'admin token' server.out 2>/dev/null && break
  sleep 0.1
done
token=$(grep -o 'fleet_[0-9a-f]*' server.out | head -1)
[ -n "$token" ] || { echo "fleet-server did not start:"; cat server.log; exit 1; }

echo "== starting Prometheus on $prom, scraping $server/metrics every 2 s"
cat >prometheus.yml <<YAML
global:
  scrape_interval: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: fleet-server
    scheme: https
    tls_config:
      ca_file: $ca
    static_configs:
      - targets: ["127.0.0.1:$http_port"]
YAML
prometheus --config.file=prometheus.yml --storage.tsdb.path="$work/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" >prometheus.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "$prom/-/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf "$prom/-/ready" >/dev/null || { echo "Prometheus did not start:"; cat prometheus.log; exit 1; }
export FLEET_CONFIG_DIR=$work/fleetctl
"$bin/fleetctl" login --server "$server" --token "$token" --ca "$ca"

echo "== building the sample image edge/demo (v1, v2) with umoci and importing it"
make_image() { # tag version
  umoci new --image "img:$1" >/dev/null 2>&1 || true
  rm -rf ub; umoci unpack --rootless --image "img:$1" ub >/dev/null
  mkdir -p ub/rootfs/bin ub/rootfs/etc
  cp "$(command -v busybox)" ub/rootfs/bin/busybox
  for a in sh sleep cat echo; do ln -sf busybox "ub/rootfs/bin/$a"; done
  echo "$2" >ub/rootfs/etc/demo-version
  umoci repack --image "img:$1" ub >/dev/null
  umoci config --image "img:$1" --os linux --architecture amd64 \
    --config.cmd /bin/sh --config.cmd -c \
    --config.cmd 'echo "demo $(cat /etc/demo-version) started"; exec sleep 2147483647' >/dev/null
}
umoci init --layout img >/dev/null
make_image v1 "v1"
make_image v2 "v2"
"$bin/fleetctl" image import img --repository edge/demo

"$bin/fleetctl" groups add cameras --selector role=camera
echo "== fleetctl enroll create --group cameras --uses 3: the devices' bootstrap token"
enroll_token=$("$bin/fleetctl" enroll create --group cameras --uses 3 --expires 1h)
echo "== starting three devices (cam-01..cam-03), each with its own state dir and crun root,"
echo "   enrolling on first start; cam-03 reads its sensors from the Jetson Orin fixture $jetson_fixture"
for i in 1 2 3; do
  dev=cam-0$i
  d=$work/devices/$dev
  mkdir -p "$d"
  host_root=""
  [ "$i" -eq 3 ] && host_root="host_root = \"$jetson_fixture\""
  cat >"$d/agent.toml" <<TOML
device_id = "$dev"
state_dir = "$d/state"
trust = "$work/keys/trust.json"
server = "$server"
broker = "mqtts://127.0.0.1:$mqtt_port"
enroll_token = "$enroll_token"
status_interval_secs = 5
telemetry_interval_secs = 2
$host_root
[labels]
role = "camera"
site = "lab"
[runtime]
kind = "crun"
root = "$d/runtime"
TOML
  chmod 600 "$d/agent.toml"
  "$bin/fleet-agent" run --config "$d/agent.toml" >"$d/agent.log" 2>&1 &
  pids+=($!)
done

echo "== waiting for the devices to register"
for _ in $(seq 120); do
  n=$("$bin/fleetctl" devices ls -o json | grep -c '"id"' || true)
  [ "$n" -ge 3 ] && break
  sleep 0.5
done
"$bin/fleetctl" devices ls

for v in v1 v2; do
  echo "== fleetctl rollout 127.0.0.1:$http_port/edge/demo:$v --group cameras"
  "$bin/fleetctl" rollout "127.0.0.1:$http_port/edge/demo:$v" --group cameras \
    --release-key keys/release.key --watch
done

echo "== devices and versions"
"$bin/fleetctl" devices ls
echo "== what crun reports on each device"
for i in 1 2 3; do
  d=$work/devices/cam-0$i
  echo "-- cam-0$i"
  crun --root "$d/runtime" list
  "$bin/fleet-agent" status --config "$d/agent.toml" || true
done

if $check; then
  # End-to-end check: what the server says, what each agent says and what the
  # runtime says agree — every device runs exactly one container, v2's.
  echo "== checking the outcome"
  passed=0; failed=0
  ok() { passed=$((passed + 1)); echo "ok   - $1"; }
  bad() { failed=$((failed + 1)); echo "FAIL - $1" >&2; }
  devices_json=$("$bin/fleetctl" devices ls -o json)
  for i in 1 2 3; do
    dev=cam-0$i; d=$work/devices/$dev
    want=""
    for _ in $(seq 60); do
      want=$(jq -r --arg d "$dev" '.[] | select(.id==$d) | .last_status.apps[]? | select(.app=="demo") | "\(.phase.phase) \(.running.version)"' <<<"$devices_json")
      [ "$want" = "committed v2" ] && break
      sleep 1; devices_json=$("$bin/fleetctl" devices ls -o json)
    done
    [ "$want" = "committed v2" ] && ok "$dev: the server reports demo committed on v2" || bad "$dev: the server reports '$want'"
    running=$(crun --root "$d/runtime" list -q 2>/dev/null | while read -r id; do
      crun --root "$d/runtime" state "$id" 2>/dev/null | jq -r 'select(.status=="running") | .id'; done)
    n=$(grep -c . <<<"$running" || true)
    [ "$n" -eq 1 ] && ok "$dev: crun runs exactly one container ($running)" || bad "$dev: crun runs $n containers: $running"
    digest=$(jq -r --arg d "$dev" '.[] | select(.id==$d) | .last_status.apps[]? | select(.app=="demo") | .running.release_digest' <<<"$devices_json")
    hex=${digest#sha256:}
    [ "$running" = "fleet-demo-${hex:0:12}" ] && ok "$dev: the running container is the release the server reports" \
      || bad "$dev: crun runs '$running', the server reports release $digest"
    mine=""
    for _ in $(seq 30); do
      mine=$("$bin/fleet-agent" status --config "$d/agent.toml" -o json 2>/dev/null \
        | jq -r '.apps[]? | select(.app=="demo") | "\(.phase.phase) \(.running.release_digest)"' || true)
      [ "$mine" = "committed $digest" ] && break
      sleep 1
    done
    [ "$mine" = "committed $digest" ] && ok "$dev: fleet-agent status (beside the running agent) agrees" \
      || bad "$dev: fleet-agent status says '$mine', the server reports committed $digest"
    out=$(grep -h "demo v2 started" "$d"/state/containers/*/logs/stdout* 2>/dev/null | head -1 || true)
    [ -n "$out" ] && ok "$dev: the v2 container's own output says it started" || bad "$dev: no 'demo v2 started' in the container logs"
  done

  # Certificate rotation: with 30-second certificates each agent renews
  # every 20 s; three renewals later every device still runs the same
  # container process and its MQTT link never dropped.
  echo "== checking certificate rotation (30 s device certificates)"
  declare -A pid_before renewed_before
  renewals() { grep -c "device certificate renewed" "$1/agent.log" || true; }
  for i in 1 2 3; do
    d=$work/devices/cam-0$i
    pid_before[$i]=$(crun --root "$d/runtime" list -q | head -1 | xargs -r crun --root "$d/runtime" state | jq -r .pid)
    renewed_before[$i]=$(renewals "$d")
  done
  for _ in $(seq 90); do
    done_all=true
    for i in 1 2 3; do
      [ "$(renewals "$work/devices/cam-0$i")" -ge $((renewed_before[$i] + 3)) ] || done_all=false
    done
    $done_all && break
    sleep 1
  done
  for i in 1 2 3; do
    d=$work/devices/cam-0$i
    n=$(($(renewals "$d") - renewed_before[$i]))
    [ "$n" -ge 3 ] && ok "cam-0$i: renewed its certificate $n more times during the check" \
      || bad "cam-0$i: renewed $n times in 90 s (want 3)"
    enrolled=$(grep -o 'enrolled: device certificate stored.*serial=[0-9a-f]*' "$d/agent.log" | grep -o 'serial=[0-9a-f]*' | head -1)
    now_serial="serial=$(jq -r .serial "$d/state/identity/identity.json")"
    [ -n "$enrolled" ] && [ "$enrolled" != "$now_serial" ] && ok "cam-0$i: identity.json holds a renewed certificate ($now_serial)" \
      || bad "cam-0$i: identity.json holds $now_serial, enrolled with $enrolled"
    pid=$(crun --root "$d/runtime" list -q | head -1 | xargs -r crun --root "$d/runtime" state | jq -r .pid)
    [ "$pid" = "${pid_before[$i]}" ] && ok "cam-0$i: the app kept running through the renewals (pid $pid)" \
      || bad "cam-0$i: the app's pid went from ${pid_before[$i]} to $pid"
    lost=$(grep -c "MQTT connection lost" "$d/agent.log" || true)
    [ "$lost" -eq 0 ] && ok "cam-0$i: its MQTT link never dropped" || bad "cam-0$i: its MQTT link dropped $lost times"
  done

  # The Grafana dashboards: every panel query must return data from the
  # Prometheus scraping this fleet, after at least two scrapes of the final state.
  since=$(date +%s)
  scrapes=0
  for _ in $(seq 120); do
    window=$(($(date +%s) - since + 1))
    scrapes=$(curl -sf "$prom/api/v1/query" --data-urlencode \
      "query=sum_over_time(up{job=\"fleet-server\"}[${window}s])" | jq -r '.data.result[0].value[1] // 0')
    [ "$scrapes" -ge 2 ] && break
    sleep 1
  done
  [ "$scrapes" -ge 2 ] && ok "Prometheus scraped fleet-server $scrapes times after the rollouts" \
    || bad "Prometheus scraped fleet-server $scrapes times after the rollouts (see $work/prometheus.log)"
  echo "== checking every Grafana dashboard query against $prom"
  if (cd "$repo" && FLEET_PROMETHEUS_URL=$prom RUST_BACKTRACE=0 cargo test --locked -q --workspace \
    --test dashboards every_panel_query_returns_data -- --nocapture); then
    ok "every Grafana dashboard query returns data from Prometheus"
  else
    bad "Grafana dashboard queries without data (listed above)"
  fi
  echo "fleet-local: $passed passed, $failed failed"
  [ "$failed" -eq 0 ] || exit 1
fi
if $once; then
  exit 0
fi
echo "== the fleet runs; logs in $work (server.log, devices/*/agent.log). Ctrl-C stops it."
echo "   Prometheus: $prom (metrics at $server/metrics). Grafana: add a Prometheus data source"
echo "   with uid fleet-prometheus and URL $prom, then import grafana/dashboards/*.json"
echo "   (or provision grafana/provisioning; README: \"See your fleet in Grafana\")."
wait
