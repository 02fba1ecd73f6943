//! Shared pieces of the Modbus tests: a simple simulated-CDU state and helpers to find free
//! loopback ports and peer binaries.

use coolantd::model::Role;
use coolantd::sim::CduState;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A CDU state that is a plain map of role → value. Writes to the pump speed command and
/// the watchdog are accepted (and recorded); the pump refuses anything below `min_pump`,
/// as a real CDU refuses a speed under its pumps' minimum.
#[derive(Debug, Clone)]
pub struct MapState {
    pub values: BTreeMap<Role, f64>,
    pub writes: Vec<(Role, f64)>,
    pub min_pump: f64,
}

impl MapState {
    /// Every role with a distinct, exactly representable value.
    pub fn full() -> MapState {
        let values = [
            (Role::SupplyTemperature, 31.25),
            (Role::ReturnTemperature, 41.5),
            (Role::Flow, 123.75),
            (Role::DifferentialPressure, 87.3),
            (Role::PumpSpeedCommand, 45.0),
            (Role::PumpSpeedFeedback, 44.8),
            (Role::Leak, 0.0),
            (Role::RemoteEnable, 1.0),
            (Role::FacilityWaterTemperature, -2.5),
            (Role::ValvePosition, 62.1),
            (Role::RoomTemperature, 24.6),
            (Role::RoomHumidity, 41.9),
            (Role::Watchdog, 7.0),
        ]
        .into_iter()
        .collect();
        MapState {
            values,
            writes: Vec::new(),
            min_pump: 20.0,
        }
    }
}

impl CduState for MapState {
    fn read(&self, role: Role) -> Option<f64> {
        self.values.get(&role).copied()
    }

    fn write(&mut self, role: Role, value: f64) -> Result<(), String> {
        match role {
            Role::PumpSpeedCommand if value < self.min_pump => {
                Err(format!("pump speed {value} % is under the minimum"))
            }
            Role::PumpSpeedCommand | Role::Watchdog => {
                self.values.insert(role, value);
                self.writes.push((role, value));
                Ok(())
            }
            other => Err(format!("{other} is not writable")),
        }
    }
}

pub use crate::repo_root as root;

pub fn sim_profile_path() -> PathBuf {
    root().join("firmware-profiles/cdu/sim-cdu.toml")
}

pub use crate::free_port;

/// True when `bin` exists. Otherwise see [`peer_missing`].
pub fn have_peer(bin: &str, package: &str) -> bool {
    if Path::new(bin).exists() {
        true
    } else {
        peer_missing(&format!("{bin} is missing"), package);
        false
    }
}

/// True when `/usr/bin/python3` can import every module in `modules` (Debian installs its
/// python3-* packages for that interpreter). Otherwise see [`peer_missing`].
pub fn have_python_modules(modules: &str, packages: &str) -> bool {
    if !have_peer("/usr/bin/python3", "python3") {
        return false;
    }
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &format!("import {modules}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        peer_missing(
            &format!("/usr/bin/python3 cannot import {modules}"),
            packages,
        );
    }
    ok
}

/// A peer the test needs is not installed. In CI (`CI=true`) that fails the test, naming the
/// Debian package(s) to install: a skipped peer test must not count as passed there. A local
/// run skips with a loud notice.
pub fn peer_missing(what: &str, packages: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{what}; install the Debian package(s) `{packages}` (scripts/test.sh does). \
         CI=true, so a missing peer fails the test instead of skipping it"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of a passing
    // test, and this notice must stay visible.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {what}; install the Debian package(s) `{packages}` to run this test \
         (with CI=true this fails) ***\n"
    );
}

/// A `[[cdu]]` configuration for a TCP CDU on loopback.
pub fn tcp_config(name: &str, port: u16, timeout_ms: u64) -> coolantd::config::CduConfig {
    coolantd::config::CduConfig {
        name: name.into(),
        profile: "test".into(),
        transport: coolantd::config::CduTransport::Tcp {
            address: format!("127.0.0.1:{port}"),
        },
        unit_id: 1,
        timeout_ms,
        hosts: Vec::new(),
    }
}
