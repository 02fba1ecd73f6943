#!/usr/bin/env bash
# The host agent's footprint with and without its service parts: the agent on 8
# simulated H200s at 1 Hz against a local Mosquitto, first bare (MQTT only), then with
# [influx] (to a local VictoriaMetrics) and [http] (scraped once a second, as a busy
# Prometheus would). Samples /proc/<pid>/status (VmRSS) and /proc/<pid>/stat (utime + stime)
# and prints one table. The simulated plant runs inside the agent in both runs, so the
# absolute figures are upper bounds for an agent on real GPUs and the difference between the
# rows is what InfluxDB and HTTP cost.
#
# Usage: scripts/footprint-agent.sh [SECONDS]
#   SECONDS   measured time per run after a 10 s warm-up (default 120)
#   COOLANTD  environment variable: the binary that checks the files (default
#             target/release/coolantd)
#   AGENT     environment variable: the agent's command, split on spaces (default
#             target/agent/coolantd-agent, from `cargo build --profile agent --bin
#             coolantd-agent`; "target/release/coolantd agent" measures the same agent
#             inside the daemon's binary)
#   BREAKDOWN environment variable: when set, each run ends with scripts/rss-breakdown.py
#             on the agent (where its RSS is, and what it touched in 10 s), on stderr
#
# Needs the Debian packages victoria-metrics, mosquitto and curl, and python3 (free ports).
set -euo pipefail

duration=${1:-120}
[[ $duration =~ ^[0-9]+$ ]] && [ "$duration" -ge 5 ] || { echo "error: SECONDS must be a whole number >= 5, got '$duration'" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${COOLANTD:-$here/target/release/coolantd}
[ -x "$bin" ] || { echo "error: $bin is missing; run cargo build --release first" >&2; exit 2; }
read -r -a agent_cmd <<<"${AGENT:-$here/target/agent/coolantd-agent}"
[ -x "${agent_cmd[0]}" ] || { echo "error: ${agent_cmd[0]} is missing; run cargo build --profile agent --bin coolantd-agent first" >&2; exit 2; }
vm_bin=${VICTORIA_METRICS:-/usr/bin/victoria-metrics}
mosq_bin=${MOSQUITTO:-/usr/sbin/mosquitto}
for b in "$vm_bin" "$mosq_bin"; do
    [ -x "$b" ] || { echo "error: $b is missing (apt-get install victoria-metrics mosquitto)" >&2; exit 2; }
done
clk_tck=$(getconf CLK_TCK)

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$mqtt_port" >"$work/mosquitto.conf"
"$mosq_bin" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
wait_port "$vm_port"
wait_port "$mqtt_port"

write_config() { # $1 = name, $2 = "service" or "bare"; prints the HTTP port (0: none)
    local http_port=0
    mkdir -p "$work/state-$1"
    cat >"$work/$1.toml" <<EOF
[site]
name = "rack1"
host = "node01"
state_dir = "$work/state-$1"
profiles_dir = "$here/firmware-profiles"
dry_run = true

[gpus]
backend = "simulated"

[simulator]
gpus_per_host = 8
gpu_profile = "h200-sxm"
cdu_profile = "sim-cdu"
listen = "127.0.0.1:$(free_port)"
workload = { kind = "full" }

[mqtt]
host = "127.0.0.1"
port = $mqtt_port

[agent]
period_ms = 1000

[logging]
level = "warn"
EOF
    if [ "$2" = service ]; then
        http_port=$(free_port)
        cat >>"$work/$1.toml" <<EOF

[influx]
url = "http://127.0.0.1:$vm_port"
org = "rack1"
bucket = "coolantd"
token = "unused-by-victoriametrics"

[http]
listen = "127.0.0.1:$http_port"
EOF
    fi
    "$bin" check-config --config "$work/$1.toml" >/dev/null
    echo "$http_port"
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

declare -A results
for variant in bare service; do
    http_port=$(write_config "$variant" "$variant")
    "${agent_cmd[@]}" --config "$work/$variant.toml" >"$work/$variant.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    sleep 10
    kill -0 "$pid" 2>/dev/null || { echo "error: the agent exited; its log:" >&2; tail -20 "$work/$variant.log" >&2; exit 1; }
    t0=$(cpu_ticks "$pid")
    rss_max=0
    for _ in $(seq "$duration"); do
        if [ "$http_port" != 0 ]; then
            curl -s -o /dev/null "http://127.0.0.1:$http_port/metrics"
        fi
        r=$(rss_kib "$pid")
        [ "$r" -gt "$rss_max" ] && rss_max=$r
        sleep 1
    done
    t1=$(cpu_ticks "$pid")
    tick_ms="-"
    if [ "$http_port" != 0 ]; then
        tick_ms=$(curl -s "http://127.0.0.1:$http_port/metrics" | awk '/^agent_tick_duration_ms/ { printf "%.3f", $2 }')
    fi
    rss_final=$(rss_kib "$pid")
    if [ -n "${BREAKDOWN:-}" ]; then
        echo "== $variant: where the RSS is (scripts/rss-breakdown.py) ==" >&2
        python3 "$here/scripts/rss-breakdown.py" "$pid" --referenced 10 >&2
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    cpu=$(awk -v d="$((t1 - t0))" -v hz="$clk_tck" -v s="$duration" 'BEGIN { printf "%.3f", 100 * d / hz / s }')
    results[$variant]="$(awk -v k="$rss_max" 'BEGIN { printf "%.1f", k / 1024 }') $(awk -v k="$rss_final" 'BEGIN { printf "%.1f", k / 1024 }') $cpu $tick_ms"
done

# The service run's points must be in the database, or the figure would flatter.
series=$(curl -s "http://127.0.0.1:$vm_port/api/v1/export" --data-urlencode 'match[]={__name__="gpu_core_temp_c",host="node01"}' | wc -l)
agent_points=$(curl -s "http://127.0.0.1:$vm_port/api/v1/export" --data-urlencode 'match[]={__name__="agent_seq"}' | python3 -c 'import json,sys; print(sum(len(json.loads(l)["values"]) for l in sys.stdin if l.strip()))')

echo
echo "agent: ${agent_cmd[*]}"
printf '%-36s %-12s %-14s %-16s %-14s\n' "agent, 8 GPUs at 1 Hz, ${duration} s" "RSS max MiB" "RSS final MiB" "CPU % one core" "tick ms (last)"
read -r a b c d <<<"${results[bare]}"
printf '%-36s %-12s %-14s %-16s %-14s\n' "MQTT only" "$a" "$b" "$c" "$d"
read -r a b c d <<<"${results[service]}"
printf '%-36s %-12s %-14s %-16s %-14s\n' "+ [influx] + [http] scraped at 1 Hz" "$a" "$b" "$c" "$d"
echo "(simulated plant inside the agent in both runs; $series gpu_core_temp_c series and $agent_points agent_seq points in VictoriaMetrics)"
