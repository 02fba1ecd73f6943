//! The control core: pure, deterministic, no IO, no clock reads.
//!
//! Time comes in as `now: Mono`, samples come in as values, actuations go out as values.
//! The shell builds a [`Controller`] from `[control]`, the CDUs and the GPU inventory, calls
//! [`Controller::tick`] once per period, applies the returned actuations and feeds their
//! outcomes into the next tick. See `supervisor.rs` for the state machine.

pub mod alarms;
pub mod config;
pub mod controller;
pub mod feedforward;
pub mod pid;
pub mod plausibility;
pub mod supervisor;
pub mod tuning;

pub use config::ControlConfig;
pub use controller::Controller;

use crate::model::{ActuationOutcome, CduSample, GpuSample, Mono, Role};
use crate::units::Percent;

/// What the core needs to know about one CDU it drives; built by the shell from the site
/// configuration and the CDU's firmware profile.
#[derive(Debug, Clone, PartialEq)]
pub struct CduSetup {
    pub name: String,
    /// Hosts whose GPUs this CDU cools.
    pub hosts: Vec<String>,
    /// The pump speed command's writable range from the firmware profile.
    pub pump_min: Percent,
    pub pump_max: Percent,
    /// The roles the CDU's profile maps.
    pub roles: Vec<Role>,
}

/// The inputs of one control tick.
#[derive(Debug, Clone, Copy)]
pub struct TickInput<'a> {
    pub now: Mono,
    pub gpus: &'a [GpuSample],
    pub cdus: &'a [CduSample],
    /// What happened to the previous tick's actuations.
    pub outcomes: &'a [ActuationOutcome],
}
