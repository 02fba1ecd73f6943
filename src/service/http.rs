//! Stub.

use crate::config::Issues;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {}

impl HttpConfig {
    pub fn validate(&self, _key: &str, _issues: &mut Issues) {}
}
