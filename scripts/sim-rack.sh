#!/usr/bin/env bash
# A simulated rack on this machine, in one command: Mosquitto on a free loopback port, the
# rack's plant with one host agent per host (`coolantd sim`, config/sim-rack-agents.toml:
# 8 hosts × 8 simulated H200s, one CDU on Modbus TCP) and its controller (`coolantd run`,
# config/sim-rack-controller.toml), all three stopped by Ctrl-C. The shipped files are
# copied with free ports and a private state folder; the copies are printed, so
# `coolantd status --config <controller copy>` works beside it.
#
# Usage: scripts/sim-rack.sh [TIME_SCALE]
#   TIME_SCALE  plant seconds per wall second for the plant, the agents and the controller
#               alike (default 1: real time; 10 shows the load step at 60 s after 6 s)
#   COOLANTD    environment variable: the binary (default target/release/coolantd, built
#               with `cargo build --release` when missing)
#   HTTP_PORT   environment variable: the controller's /status port (default 9107)
#
# Needs mosquitto (Debian: apt-get install mosquitto) and python3 (to find free ports).
set -euo pipefail

scale=${1:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
coolantd=${COOLANTD:-$here/target/release/coolantd}
if [ ! -x "$coolantd" ]; then
    echo "building $coolantd (cargo build --release) ..." >&2
    (cd "$here" && cargo build --release --bin coolantd)
fi
mosq_bin=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
[ -x "$mosq_bin" ] || { echo "error: mosquitto is missing (apt-get install mosquitto)" >&2; exit 2; }
python3 -c "import sys; f = float(sys.argv[1]); sys.exit(0 if 0.01 <= f <= 10000 else 1)" "$scale" 2>/dev/null \
    || { echo "error: TIME_SCALE must be a number from 0.01 to 10000, got '$scale'" >&2; exit 2; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mqtt=$(free_port)
modbus=$(free_port)
http=${HTTP_PORT:-9107}

work=$(mktemp -d)
pids=()
cleanup() {
    trap - INT TERM EXIT
    # The controller first (it writes the safe pump speed), then the agents (they restore
    # the caps and say goodbye), then the broker.
    for p in $(printf '%s\n' "${pids[@]}" | tac); do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup INT TERM EXIT

printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$mqtt" > "$work/mosquitto.conf"
copy() {
    # $1: shipped file, $2: copy, $3: its state folder
    sed -e "s/127\.0\.0\.1:5021/127.0.0.1:$modbus/" \
        -e "s/^port = 1883$/port = $mqtt/" \
        -e "s/^time_scale = 1\.0$/time_scale = $scale/" \
        -e "s|^state_dir = .*|state_dir = \"$work/$3\"|" \
        -e "s|^profiles_dir = .*|profiles_dir = \"$here/firmware-profiles\"|" \
        -e "s/127\.0\.0\.1:9107/127.0.0.1:$http/" \
        "$here/config/$1" > "$work/$2"
}
copy sim-rack-agents.toml rack.toml rack-state
copy sim-rack-controller.toml controller.toml controller-state

wait_port() {
    for _ in $(seq 100); do
        (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "error: nothing listens on 127.0.0.1:$1 after 10 s ($2)" >&2
    exit 1
}
"$mosq_bin" -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
pids+=($!)
wait_port "$mqtt" "mosquitto, log in $work/mosquitto.log"
"$coolantd" sim --config "$work/rack.toml" &
pids+=($!)
# The controller's CDU must be served before it starts, or its first polls fail.
wait_port "$modbus" "coolantd sim"
"$coolantd" run --config "$work/controller.toml" &
pids+=($!)

cat >&2 <<MSG

simulated rack: broker 127.0.0.1:$mqtt, CDU Modbus TCP 127.0.0.1:$modbus, time scale $scale
  controller /status:  http://127.0.0.1:$http/status
  summary:             $coolantd status --config $work/controller.toml
  files:               $work/rack.toml, $work/controller.toml
Ctrl-C stops all three.

MSG
# Whichever stops first (or Ctrl-C) ends the rack.
wait -n "${pids[@]}" || true
