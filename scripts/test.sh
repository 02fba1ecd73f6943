#!/usr/bin/env bash
# The one command that passes the tests on a fresh Debian machine:
#   installs the real peers the tests talk to (Mosquitto, VictoriaMetrics, InfluxDB 1.x, pymodbus with
#   serial support, socat for a virtual RS-485 line, mbpoll,
#   the Prometheus text parser, systemd-analyze) when they are missing, then runs format,
#   lint and the whole test suite. The tests start their servers themselves on free
#   loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto mosquitto-clients victoria-metrics influxdb python3-jsonschema mbpoll python3-pymodbus python3-serial python3-serial-asyncio socat python3-prometheus-client systemd)
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
cargo test --workspace --all-targets --no-fail-fast
