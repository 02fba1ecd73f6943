#!/usr/bin/env bash
# The InfluxDB spool on a full disk, with the real binary: the daemon runs on the plant
# simulator at 100 Hz (period_ms = 10) with its state_dir on a 2 MiB tmpfs, the default
# spool_max_bytes (1 GiB, far beyond the disk) and a healthy local VictoriaMetrics. Three
# phases of SECONDS each: as is; with a filler file taking every free byte of the tmpfs; with
# the filler removed. Prints ticks per second, RSS, the sink's counters from /metrics and the
# tmpfs use per phase, then the log's error and warning lines.
#
# Usage: sudo scripts/spool-full-disk.sh [SECONDS]   (root: it mounts a tmpfs)
#   SECONDS   per phase (default 10)
#   COOLANTD  environment variable: the binary (default target/debug/coolantd)
#
# Needs victoria-metrics, curl and python3.
set -euo pipefail

secs=${1:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${COOLANTD:-$here/target/debug/coolantd}
[ -x "$bin" ] || { echo "error: $bin is missing; run cargo build first" >&2; exit 2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
w=$(mktemp -d)
mkdir -p "$w/state" "$w/vm"
mount -t tmpfs -o size=2M tmpfs "$w/state"
vm_pid=; d_pid=
cleanup() {
    [ -n "$d_pid" ] && kill "$d_pid" 2>/dev/null || true
    [ -n "$vm_pid" ] && kill "$vm_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    umount "$w/state" 2>/dev/null || umount -l "$w/state" || true
    rm -rf "$w"
}
trap cleanup EXIT
vmp=$(port); hp=$(port); mp=$(port)
/usr/bin/victoria-metrics -storageDataPath="$w/vm" -httpListenAddr=127.0.0.1:"$vmp" -loggerLevel=ERROR >/dev/null 2>&1 &
vm_pid=$!
sed -e "s#127.0.0.1:5020#127.0.0.1:$mp#g" \
    -e "s#state_dir = \"../target/sim-state\"#state_dir = \"$w/state\"#" \
    -e "s#profiles_dir = \"../firmware-profiles\"#profiles_dir = \"$here/firmware-profiles\"#" \
    -e "s#period_ms = 1000#period_ms = 10#" \
    -e "s#listen = \"127.0.0.1:9105\"#listen = \"127.0.0.1:$hp\"#" \
    "$here/config/sim.toml" > "$w/coolantd.toml"
printf '\n[influx]\nurl = "http://127.0.0.1:%s"\nbucket = "coolantd"\n' "$vmp" >> "$w/coolantd.toml"
until curl -sf "127.0.0.1:$vmp/health" >/dev/null; do sleep 0.2; done
"$bin" run --config "$w/coolantd.toml" 2>"$w/log" &
d_pid=$!
sleep 2
tick() { curl -s "127.0.0.1:$hp/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tick"])'; }
counters() {
    curl -s "127.0.0.1:$hp/metrics" \
        | grep -E '^telemetry_(written|backlog|memory_backlog|spool_bytes|dropped|dropped_bound|dropped_memory)[ {]' \
        | sed -e 's/{[^}]*}//' -e 's/^telemetry_//' | tr '\n' ' '
}
for phase in "as is" "disk full" "space back"; do
    case $phase in
        "disk full") head -c 64M /dev/zero > "$w/state/filler" 2>/dev/null || true ;;
        "space back") rm -f "$w/state/filler" ;;
    esac
    a=$(tick); sleep "$secs"; b=$(tick)
    echo "$phase: $(( (b - a) / secs )) ticks/s, rss $(awk '/VmRSS/ {print $2}' /proc/$d_pid/status) kB, $(counters)tmpfs used $(df --output=used -k "$w/state" | tail -1 | tr -d ' ') kB"
done
kill -TERM "$d_pid"; wait "$d_pid" || true; d_pid=
echo "log: $(wc -l < "$w/log") lines, $(grep -c ERROR "$w/log" || true) errors"
grep -E "ERROR|WARN" "$w/log" | grep -v "tick overran" | cut -c1-240 | head -20 || true
