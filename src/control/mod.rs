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
