//! The control core: pure, deterministic, no IO, no clock reads.

use crate::config::Issues;
use serde::Deserialize;

/// `[control]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {}

impl ControlConfig {
    pub fn validate(&self, _key: &str, _issues: &mut Issues) {}
}

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
