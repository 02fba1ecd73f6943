//! The plant simulator: simulated GPUs and a simulated CDU served over real Modbus TCP.

use crate::config::Issues;
use serde::Deserialize;

/// `[simulator]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {}

impl SimConfig {
    pub fn validate(&self, _key: &str, _issues: &mut Issues) {}
}

/// The simulated CDU's state as its Modbus server sees it: values by role, in the units of
/// the simulator's firmware profile. Implemented by the plant; served by the CDU server.
pub trait CduState: Send {
    /// The current value of a role, or `None` when the simulated CDU has no such sensor.
    fn read(&self, role: crate::model::Role) -> Option<f64>;

    /// Applies a write from a Modbus client (pump speed command, watchdog). `Err` carries
    /// the reason the CDU refuses it; the server answers with an exception code.
    fn write(&mut self, role: crate::model::Role, value: f64) -> Result<(), String>;
}
pub mod cdu_server;
