//! `[gpus]`: the section of the site configuration that chooses and scopes the GPU backend.
//! It lives beside the collectors it configures; `service::config` only assembles it.

use crate::validate::Issues;
use serde::Deserialize;
use std::time::Duration;

/// Which GPU backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GpuBackendKind {
    /// The real GPUs through NVML.
    #[default]
    Nvml,
    /// The plant simulator's GPUs.
    Simulated,
    /// No GPUs on this host: its CDUs take the GPUs of the hosts they list in `hosts`, heard
    /// over MQTT (a rack controller).
    None,
}

/// `[gpus]`: where GPU readings come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpusConfig {
    #[serde(default)]
    pub backend: GpuBackendKind,
    /// With `backend = "nvml"`: when NVML cannot be loaded, run on the simulator's GPUs
    /// instead of refusing to start. Meant for demos, never for production.
    #[serde(default)]
    pub fallback_to_simulated: bool,
    /// Only these NVML indices; empty means all.
    #[serde(default)]
    pub indices: Vec<u32>,
    /// GPU profile to use when no profile's name pattern matches the board's name.
    #[serde(default)]
    pub default_profile: Option<String>,
    /// How often the slow counters (energy, violation time, ECC) are read, in milliseconds.
    #[serde(default = "default_slow_period_ms")]
    pub slow_period_ms: u64,
}

fn default_slow_period_ms() -> u64 {
    10_000
}

impl Default for GpusConfig {
    fn default() -> Self {
        GpusConfig {
            backend: GpuBackendKind::default(),
            fallback_to_simulated: false,
            indices: Vec::new(),
            default_profile: None,
            slow_period_ms: default_slow_period_ms(),
        }
    }
}

impl GpusConfig {
    pub fn validate(&self, issues: &mut Issues) {
        issues.check(
            (1_000..=3_600_000).contains(&self.slow_period_ms),
            "gpus.slow_period_ms",
            format!(
                "a period between 1000 and 3600000 ms, got {}",
                self.slow_period_ms
            ),
        );
    }

    pub fn slow_period(&self) -> Duration {
        Duration::from_millis(self.slow_period_ms)
    }
}
