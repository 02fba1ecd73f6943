//! Shared pieces of the Modbus tests: a simple simulated-CDU state and helpers to find free
//! loopback ports and peer binaries.

#![allow(dead_code)]

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

/// The repository's root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn sim_profile_path() -> PathBuf {
    root().join("firmware-profiles/cdu/sim-cdu.toml")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work on a test machine")
}

/// True when `bin` exists; prints a loud skip message otherwise.
pub fn have_peer(bin: &str, package: &str) -> bool {
    if Path::new(bin).exists() {
        true
    } else {
        eprintln!(
            "\n*** SKIPPED: {bin} is missing; install the Debian package `{package}` to run this test ***\n"
        );
        false
    }
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
