#!/usr/bin/env bash
# coolantd's footprint on the plant simulator with both sinks on: 8 simulated H200s, one
# simulated CDU over Modbus TCP, InfluxDB line protocol to a local VictoriaMetrics and MQTT to
# a local Mosquitto. Runs scripts/footprint.sh at 1 Hz (period_ms = 1000) and at 10 Hz
# (period_ms = 100) and prints one table. Everything listens on free loopback ports and is
# stopped and removed at the end.
#
# Usage: scripts/footprint-sim.sh [SECONDS]
#   SECONDS   measured time per rate (default 180; footprint.sh excludes a warm-up of
#             min(SECONDS/10, 10) s from the steady-state CPU figure)
#   COOLANTD  environment variable: the binary (default target/release/coolantd)
#
# Needs the Debian packages victoria-metrics, mosquitto, mosquitto-clients and curl, and
# python3 (to find free ports).
set -euo pipefail

duration=${1:-180}
here=$(cd "$(dirname "$0")/.." && pwd)
export COOLANTD=${COOLANTD:-$here/target/release/coolantd}
[ -x "$COOLANTD" ] || { echo "error: $COOLANTD is missing; run cargo build --release first" >&2; exit 2; }
vm_bin=${VICTORIA_METRICS:-/usr/bin/victoria-metrics}
mosq_bin=${MOSQUITTO:-/usr/sbin/mosquitto}
for b in "$vm_bin" "$mosq_bin"; do
    [ -x "$b" ] || { echo "error: $b is missing (apt-get install victoria-metrics mosquitto)" >&2; exit 2; }
done

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports: bound, read and released by the kernel's choice.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "error: nothing listens on 127.0.0.1:$1 after 10 s" >&2
    return 1
}

vm_port=$(free_port)
mkdir -p "$work/vm"
"$vm_bin" -httpListenAddr "127.0.0.1:$vm_port" -storageDataPath "$work/vm" >"$work/vm.log" 2>&1 &
pids+=($!)

mqtt_port=$(free_port)
cat >"$work/mosquitto.conf" <<EOF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
sys_interval 1
EOF
"$mosq_bin" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
wait_port "$vm_port"
wait_port "$mqtt_port"

# config/sim.toml with free ports, a private state folder, no HTTP endpoint conflict, the
# period under test and both sinks.
write_config() { # $1 = period_ms, $2 = file
    local cdu_port http_port
    cdu_port=$(free_port)
    http_port=$(free_port)
    mkdir -p "$work/state-$1"
    sed -e "s#127.0.0.1:5020#127.0.0.1:$cdu_port#" \
        -e "s#^state_dir = .*#state_dir = \"$work/state-$1\"#" \
        -e "s#^profiles_dir = .*#profiles_dir = \"$here/firmware-profiles\"#" \
        -e "s#^period_ms = .*#period_ms = $1#" \
        -e "s#127.0.0.1:9105#127.0.0.1:$http_port#" \
        -e 's#^level = .*#level = "warn"#' \
        "$here/config/sim.toml" >"$2"
    cat >>"$2" <<EOF

[influx]
url = "http://127.0.0.1:$vm_port"
org = "sim"
bucket = "coolantd"
token = "unused-by-victoriametrics"

[mqtt]
host = "127.0.0.1"
port = $mqtt_port
EOF
    "$COOLANTD" check-config "$2" >/dev/null
}

declare -A results
for period in 1000 100; do
    cfg=$work/sim-$period.toml
    write_config "$period" "$cfg"
    echo "== period_ms = $period ($(( 1000 / period )) Hz), ${duration} s ==" >&2
    out=$("$here/scripts/footprint.sh" "$cfg" "$duration")
    echo "$out" >&2
    rss_max=$(awk -F': *' '/resident memory, max/ { print $2 }' <<<"$out" | cut -d' ' -f1)
    hwm=$(awk -F': *' '/resident memory, peak/ { print $2 }' <<<"$out" | cut -d' ' -f1)
    rss_final=$(awk -F': *' '/resident memory, final/ { print $2 }' <<<"$out" | cut -d' ' -f1)
    # The steady-state figure; runs too short for a warm-up only have the whole-run one.
    cpu=$(awk -F': *' '/CPU, after/ { print $2 }' <<<"$out" | cut -d' ' -f1)
    [ -n "$cpu" ] || cpu=$(awk -F': *' '/CPU, whole run/ { print $2 }' <<<"$out" | cut -d' ' -f1)
    threads=$(awk -F': *' '/threads, final/ { print $2 }' <<<"$out")
    results[$period]="$rss_max $hwm $rss_final $cpu $threads"
done

# Did the sinks actually carry data? A footprint measured with dead sinks would flatter.
# Mosquitto's retained $SYS counters (republished every second, sys_interval above) count
# what the daemon published.
mqtt_msgs=$(mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -t '$SYS/broker/publish/messages/received' -C 1 -W 15 2>/dev/null || echo "?")
points=$(curl -s "http://127.0.0.1:$vm_port/api/v1/export" --data-urlencode 'match[]={__name__="gpu_core_temp_c"}' | wc -l)

printf '\n%-8s %-12s %-12s %-14s %-16s %-8s\n' rate "RSS max MiB" "VmHWM MiB" "RSS final MiB" "CPU % one core" threads
for period in 1000 100; do
    read -r a b c d e <<<"${results[$period]}"
    printf '%-8s %-12s %-12s %-14s %-16s %-8s\n' "$(( 1000 / period )) Hz" "$a" "$b" "$c" "$d" "$e"
done
echo "(8 simulated H200s, 1 simulated CDU, InfluxDB -> VictoriaMetrics and MQTT -> Mosquitto on, MQTT telemetry at its default 5 s; $points gpu_core_temp_c series exported by VictoriaMetrics, $mqtt_msgs messages published to Mosquitto)"
