//! `[agent]`: the section of an agent configuration that tunes the agent itself (its tick and
//! its local guard). It lives beside the core it configures; `service::config::agent`
//! assembles the whole agent file.

use super::guard::GuardParams;
use crate::units::Kelvin;
use crate::validate::Issues;
use serde::Deserialize;
use std::time::Duration;

/// `[agent]`: tick period and the local thermal guard's tuning. Every key has a default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// How often the agent reads its GPUs, publishes readings and runs the guard, ms.
    #[serde(default = "default_period_ms")]
    pub period_ms: u64,
    /// The margin to slowdown the guard regulates to, K.
    #[serde(default = "default_target_margin_k")]
    pub guard_target_margin_k: f64,
    /// At or under this margin the guard cuts the cap in the same tick, K.
    #[serde(default = "default_critical_margin_k")]
    pub guard_critical_margin_k: f64,
    /// Fastest rise of a guard cap, W/s.
    #[serde(default = "default_raise_w_per_s")]
    pub guard_raise_w_per_s: f64,
    /// Share of power cut per critical tick.
    #[serde(default = "default_critical_cut")]
    pub guard_critical_cut: f64,
}

fn default_period_ms() -> u64 {
    1_000
}
fn default_target_margin_k() -> f64 {
    GuardParams::default().target_margin.0
}
fn default_critical_margin_k() -> f64 {
    GuardParams::default().critical_margin.0
}
fn default_raise_w_per_s() -> f64 {
    GuardParams::default().raise_w_per_s
}
fn default_critical_cut() -> f64 {
    GuardParams::default().critical_cut
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            period_ms: default_period_ms(),
            guard_target_margin_k: default_target_margin_k(),
            guard_critical_margin_k: default_critical_margin_k(),
            guard_raise_w_per_s: default_raise_w_per_s(),
            guard_critical_cut: default_critical_cut(),
        }
    }
}

impl AgentSection {
    pub fn validate(&self, key: &str, issues: &mut Issues) {
        let k = |name: &str| format!("{key}.{name}");
        issues.check(
            (100..=60_000).contains(&self.period_ms),
            k("period_ms"),
            format!(
                "a tick period between 100 and 60000 ms, got {}",
                self.period_ms
            ),
        );
        issues.check(
            self.guard_critical_margin_k.is_finite() && self.guard_critical_margin_k >= 0.0,
            k("guard_critical_margin_k"),
            format!(
                "a margin of 0 K or more, got {}",
                self.guard_critical_margin_k
            ),
        );
        issues.check(
            self.guard_target_margin_k.is_finite()
                && self.guard_target_margin_k > self.guard_critical_margin_k
                && self.guard_target_margin_k <= 30.0,
            k("guard_target_margin_k"),
            format!(
                "a margin above guard_critical_margin_k ({}) and at most 30 K, got {}",
                self.guard_critical_margin_k, self.guard_target_margin_k
            ),
        );
        issues.check(
            self.guard_raise_w_per_s.is_finite()
                && self.guard_raise_w_per_s > 0.0
                && self.guard_raise_w_per_s <= 1_000.0,
            k("guard_raise_w_per_s"),
            format!(
                "a rate above 0 and at most 1000 W/s, got {}",
                self.guard_raise_w_per_s
            ),
        );
        issues.check(
            self.guard_critical_cut.is_finite()
                && self.guard_critical_cut > 0.0
                && self.guard_critical_cut < 1.0,
            k("guard_critical_cut"),
            format!(
                "a share between 0 and 1 (0.25 cuts to 75 %), got {}",
                self.guard_critical_cut
            ),
        );
    }

    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    /// The guard's parameters: the configured ones, the PID gains of the defaults.
    pub fn guard(&self) -> GuardParams {
        GuardParams {
            target_margin: Kelvin(self.guard_target_margin_k),
            critical_margin: Kelvin(self.guard_critical_margin_k),
            raise_w_per_s: self.guard_raise_w_per_s,
            critical_cut: self.guard_critical_cut,
            period: self.period(),
            ..GuardParams::default()
        }
    }
}
