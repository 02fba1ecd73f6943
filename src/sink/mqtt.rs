//! Stub.

use crate::config::Issues;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {}

impl MqttConfig {
    pub fn validate(&self, _key: &str, _issues: &mut Issues) {}
}
