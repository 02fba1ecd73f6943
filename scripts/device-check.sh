#!/usr/bin/env bash
# The device run, for a host with real NVIDIA GPUs. READ-ONLY: nothing here can reach an NVML
# setter. The daemon runs with site.dry_run = true AND `run --dry-run` on the real GPUs and the
# built-in simulated CDU (config/sim.toml with gpus.backend = "nvml"), its state in a temporary
# folder, so no power limit is recorded, changed or restored.
#
#   bash scripts/device-check.sh            # the real GPUs (the driver's libnvidia-ml.so.1)
#   bash scripts/device-check.sh --replay   # the replay library (crates/nvml-replay), no GPU
#
# Steps, each printing its figures: build (release); `probe --json` (names, temperatures,
# power, limits); the NVML backend test; a dry run of DRY_RUN_S seconds (default 60), with the
# enforced power limits compared before and after (and, with --replay, every recorded NVML call
# counted by function); the fast-path cost bench (coolantd's per-GPU sample vs the raw
# nvml-wrapper calls, same process).
set -euo pipefail
cd "$(dirname "$0")/.."

replay=false
[ "${1:-}" = "--replay" ] && replay=true
dry_run_s="${DRY_RUN_S:-60}"
work="$(mktemp -d /tmp/coolantd-device-check.XXXXXX)"
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== build (release)"
cargo build --release --quiet --bin coolantd
cargo build --release --quiet -p nvml-replay
bin="$PWD/target/release/coolantd"

bench_lib=()
if $replay; then
  # The replay library under the driver's name, found through the library search path as the
  # driver's is; every call is appended to calls.log.
  mkdir -p "$work/nvml"
  cp target/release/libnvml_replay.so "$work/nvml/libnvidia-ml.so.1"
  export LD_LIBRARY_PATH="$work/nvml${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export NVML_REPLAY_GPUS="${NVML_REPLAY_GPUS:-8}"
  export NVML_REPLAY_FIXTURE="${NVML_REPLAY_FIXTURE:-$PWD/tests/fixtures/h200/info.json}"
  export NVML_REPLAY_LOG="$work/calls.log"
  bench_lib=(env COOLANTD_BENCH_NVML_LIB="$work/nvml/libnvidia-ml.so.1")
  echo "NVML: the replay library ($NVML_REPLAY_GPUS GPUs of $NVML_REPLAY_FIXTURE)"
else
  echo "NVML: the driver's libnvidia-ml.so.1"
  nvidia-smi --query-gpu=index,name,driver_version,power.limit --format=csv 2>/dev/null || true
fi

# config/sim.toml on the real GPUs, read-only: dry run, private state, free loopback ports.
cdu_port="$(free_port)"; http_port="$(free_port)"
config="$work/device-check.toml"
sed -e 's/^backend = "simulated"/backend = "nvml"/' \
    -e 's/^host = "sim-node01"/host = "sim-node01"\ndry_run = true/' \
    -e "s#127.0.0.1:5020#127.0.0.1:$cdu_port#g" \
    -e "s#127.0.0.1:9105#127.0.0.1:$http_port#" \
    -e "s#^state_dir = .*#state_dir = \"$work/state\"#" \
    -e "s#^profiles_dir = .*#profiles_dir = \"$PWD/firmware-profiles\"#" \
    config/sim.toml > "$config"
grep -q '^dry_run = true' "$config" || { echo "device-check: could not set site.dry_run in $config" >&2; exit 1; }
grep -q '^backend = "nvml"' "$config" || { echo "device-check: could not set gpus.backend in $config" >&2; exit 1; }

limits() {
  python3 -c 'import json,sys; r=json.load(sys.stdin); print(" ".join("%s=%s" % (g["index"], g["power_limit"].get("value")) for g in r["gpus"]))'
}

echo "== probe --json"
"$bin" probe --json --config "$config" > "$work/probe-before.json"
python3 - "$work/probe-before.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for g in r["gpus"]:
    v = lambda k: g[k].get("value", g[k].get("error"))
    print(f'GPU {g["index"]} {g["name"]} {g["uuid"]}: core {v("core_temp")} °C, HBM {v("hbm_temp")} °C, '
          f'power {v("power")} W (1 s avg {v("power_average")} W), limit {v("power_limit")} W '
          f'(range {v("power_limit_min")}..{v("power_limit_max")} W), SM {v("sm_clock")} MHz, P{g["pstate"]}, '
          f'energy {v("energy")} J')
EOF
before="$(limits < "$work/probe-before.json")"

echo "== the NVML backend test"
cargo test --release --test peers nvml_backend:: -- --nocapture > "$work/nvml_backend.log" 2>&1 && rc=0 || rc=$?
grep -E "^test |test result|^read [0-9]+ GPU" "$work/nvml_backend.log" || true
[ "$rc" = 0 ] || { echo "device-check: the NVML backend test failed (log: $work/nvml_backend.log)" >&2; exit 1; }

echo "== dry run, ${dry_run_s} s (site.dry_run = true and --dry-run)"
[ -n "${NVML_REPLAY_LOG:-}" ] && : > "$NVML_REPLAY_LOG"
"$bin" run --dry-run --config "$config" 2> "$work/run.log" &
daemon_pid=$!
sleep "$dry_run_s"
status="$(curl -s "http://127.0.0.1:$http_port/status" || true)"
kill -TERM "$daemon_pid"
wait "$daemon_pid" && rc=0 || rc=$?
daemon_pid=""
echo "exit status after SIGTERM: $rc"
echo "$status" | python3 -c 'import json,sys
try:
    s = json.load(sys.stdin)
    print("ticks: %s, state: %s, dry_run: %s, GPUs: %d" % (s["tick"], s["state"], s["dry_run"], len(s["gpus"])))
except Exception as e:
    print("no /status: %s" % e)'
echo "decisions logged as \"would ...\": $(grep -c 'would ' "$work/run.log" || true)"
grep -q 'DRY RUN' "$work/run.log" || { echo "device-check: the daemon did not announce the dry run" >&2; exit 1; }
"$bin" probe --json --config "$config" > "$work/probe-after.json"
after="$(limits < "$work/probe-after.json")"
echo "enforced limits before: $before"
echo "enforced limits after:  $after"
[ "$before" = "$after" ] || { echo "device-check: a power limit changed during the dry run" >&2; exit 1; }
if [ -n "${NVML_REPLAY_LOG:-}" ]; then
  echo "recorded NVML calls during the dry run, by function:"
  awk '{print $1}' "$NVML_REPLAY_LOG" | sort | uniq -c | sort -rn
  setters="$(grep -c '^nvmlDeviceSet' "$NVML_REPLAY_LOG" || true)"
  echo "NVML setter calls: $setters"
  [ "$setters" = 0 ] || { echo "device-check: the dry run called an NVML setter" >&2; exit 1; }
fi

echo "== fast-path cost"
# The replay records nothing here: the figures are the call paths, not the log writes.
env -u NVML_REPLAY_LOG "${bench_lib[@]}" cargo bench --quiet --bench nvml_fast_path 2>&1 | grep nvml_fast_path
echo "device-check: done ($work)"
