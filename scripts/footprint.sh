#!/usr/bin/env bash
# Measures coolantd's resource footprint: runs `coolantd run --config FILE` for a while,
# samples /proc/<pid>/status (VmRSS, VmHWM, Threads) and /proc/<pid>/stat (utime + stime)
# once a second, and prints peak and final resident memory and the CPU share of one core.
#
# Usage: scripts/footprint.sh CONFIG [SECONDS]
#   SECONDS   how long to run (default 180)
#   COOLANTD  environment variable: the binary (default target/release/coolantd if built,
#             else coolantd on PATH)
#
# The daemon is stopped (SIGTERM, then SIGKILL after 10 s) whatever happens. If it exits on
# its own before the time is up, the script prints the end of its log and fails.
set -euo pipefail

usage() { echo "usage: $0 CONFIG [SECONDS]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
config=$1
duration=${2:-180}
[[ $duration =~ ^[0-9]+$ ]] && [ "$duration" -ge 5 ] || { echo "error: SECONDS must be a whole number >= 5, got '$duration'" >&2; exit 2; }
[ -r "$config" ] || { echo "error: cannot read config file '$config'" >&2; exit 2; }

here=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${COOLANTD:-}" ]; then
    bin=$COOLANTD
elif [ -x "$here/target/release/coolantd" ]; then
    bin=$here/target/release/coolantd
else
    bin=$(command -v coolantd || true)
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "error: no coolantd binary (build with cargo build --release, or set COOLANTD)" >&2; exit 2; }

clk_tck=$(getconf CLK_TCK)
workdir=$(mktemp -d)
log=$workdir/coolantd.log
pid=

stop_daemon() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "warning: coolantd ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
}
cleanup() { stop_daemon; rm -rf "$workdir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# CPU ticks (utime + stime) of the process. Fields are counted after the last ')' because
# the command name in field 2 may itself contain spaces or parentheses.
cpu_ticks() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) }
    # rest starts at field 3 (state); utime and stime are fields 14 and 15.
    awk '{ print $12 + $13 }' <<<"$rest"
}

# An exited child that bash has not reaped yet still answers kill -0; its state is Z.
is_zombie() { [ "$(awk '$1 == "State:" { print $2 }' "/proc/$1/status" 2>/dev/null)" = Z ]; }

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }

echo "starting: $bin run --config $config  (for ${duration} s, log in $log)"
"$bin" run --config "$config" >"$log" 2>&1 &
pid=$!

# Start-up (NVML init, first connections) is excluded from the steady-state CPU figure.
warmup=$(( duration / 10 < 10 ? duration / 10 : 10 ))
t0=$(date +%s.%N)
ticks0=
t_warm=
ticks_warm=
rss_max=0
hwm=0
threads=0
rss=0
samples=0

for (( i = 0; i < duration; i++ )); do
    if ! kill -0 "$pid" 2>/dev/null || [ ! -r "/proc/$pid/status" ] || is_zombie "$pid"; then
        rc=0; wait "$pid" 2>/dev/null || rc=$?
        pid=
        echo "error: coolantd exited after about ${i} s (exit status $rc); last log lines:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    t=$(cpu_ticks "$pid") || continue
    [ -n "$ticks0" ] || ticks0=$t
    if [ "$i" -eq "$warmup" ]; then t_warm=$(date +%s.%N); ticks_warm=$t; fi
    rss=$(status_kb "$pid" VmRSS); rss=${rss:-0}
    hwm=$(status_kb "$pid" VmHWM); hwm=${hwm:-0}
    threads=$(status_kb "$pid" Threads); threads=${threads:-0}
    (( rss > rss_max )) && rss_max=$rss
    samples=$((samples + 1))
    sleep 1
done

t_end=$(date +%s.%N)
ticks_end=$(cpu_ticks "$pid") || { echo "error: coolantd exited at the very end" >&2; tail -n 30 "$log" >&2; exit 1; }
fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
stop_daemon
pid=

awk -v t0="$t0" -v tw="$t_warm" -v te="$t_end" -v k0="$ticks0" -v kw="$ticks_warm" -v ke="$ticks_end" \
    -v hz="$clk_tck" -v rss="$rss" -v rmax="$rss_max" -v hwm="$hwm" -v thr="$threads" \
    -v fds="$fds" -v n="$samples" -v warm="$warmup" 'BEGIN {
    printf "samples:                 %d (1 s apart)\n", n
    printf "resident memory, max:    %.1f MiB (sampled VmRSS)\n", rmax / 1024
    printf "resident memory, peak:   %.1f MiB (VmHWM, kernel high-water mark)\n", hwm / 1024
    printf "resident memory, final:  %.1f MiB\n", rss / 1024
    printf "threads, final:          %d\n", thr
    printf "open files, final:       %d\n", fds
    printf "CPU, whole run:          %.2f %% of one core (%.2f s CPU in %.1f s)\n", \
        100 * (ke - k0) / hz / (te - t0), (ke - k0) / hz, te - t0
    if (warm > 0 && tw != "" && te > tw)
        printf "CPU, after %d s warm-up:  %.2f %% of one core\n", warm, 100 * (ke - kw) / hz / (te - tw)
}'
