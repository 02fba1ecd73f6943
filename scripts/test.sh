#!/usr/bin/env bash
# The one command that passes the tests on a fresh Debian machine:
#   installs the real peers the tests talk to (Mosquitto, VictoriaMetrics, InfluxDB 1.x, pymodbus with
#   serial support, socat for a virtual RS-485 line, mbpoll,
#   the Prometheus text parser, systemd-analyze, and pysparkplug from PyPI in a virtual
#   environment under target/) when they are missing, then runs format,
#   lint and the whole test suite. The tests start their servers themselves on free
#   loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto mosquitto-clients victoria-metrics influxdb python3-jsonschema mbpoll python3-pymodbus python3-serial python3-serial-asyncio socat python3-prometheus-client systemd python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or install them: apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# pysparkplug (an independent Sparkplug B implementation) plays the primary host application
# in tests/peers/sparkplug_host.rs; PyPI only, so it lives in a venv of Debian's python3. Pinned,
# with its dependencies, so that a clean machine tests against the same host.
spb_venv=target/spb-venv
if ! "$spb_venv/bin/python" -c 'import pysparkplug' >/dev/null 2>&1; then
  echo "creating $spb_venv (pysparkplug)"
  rm -rf "$spb_venv"
  /usr/bin/python3 -m venv "$spb_venv"
  "$spb_venv/bin/pip" install --quiet --disable-pip-version-check \
    pysparkplug==0.6.1 paho-mqtt==1.6.1 protobuf==7.36.2
fi
# Debian's packaged services must not hold the ports or data the tests use.
systemctl disable --now mosquitto victoria-metrics influxdb >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The NVML tests load the replay library (crates/nvml-replay) in place of the driver's; cargo
# does not build a cdylib for another package's tests, so build it first.
echo "== cargo build -p nvml-replay"
cargo build -p nvml-replay --quiet
echo "== cargo test"
# The NVML fast-path bench runs once as a smoke test here; without a GPU it reads the replay
# library (a GPU host runs it against the driver through scripts/device-check.sh).
if [ -z "${COOLANTD_BENCH_NVML_LIB:-}" ] && ! ldconfig -p 2>/dev/null | grep -q libnvidia-ml.so.1; then
  export COOLANTD_BENCH_NVML_LIB="$PWD/target/debug/libnvml_replay.so"
fi
cargo test --workspace --all-targets --no-fail-fast
