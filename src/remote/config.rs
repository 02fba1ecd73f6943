//! `[rack]`: how the controller judges the hosts its CDUs cool over the network, and how it
//! sends them power caps. Optional; every key has a default. Only used when a `[[cdu]]`
//! lists `hosts` other than this host.

use super::{CapSenderConfig, RemoteConfig};
use crate::validate::Issues;
use serde::Deserialize;
use std::time::Duration;

/// The most remote hosts one controller hears (over all its CDUs). The rack session's inbox
/// (`link::mqtt::rack`) holds 8 messages per host between two ticks: a reading, an
/// acknowledgement, facts and status with room for a late tick. Messages do not grow with
/// the host count, so this is the only limit the host count meets.
pub const MAX_HOSTS: usize = 1024;

/// The `[rack]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RackConfig {
    /// Readings older than this (by arrival) make a host's GPUs lost inputs.
    #[serde(default = "default_stale_after_ms")]
    pub stale_after_ms: u64,
    /// How long to wait for an agent's acknowledgement of a cap before sending it again.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long a cap holds on the agent without renewal.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Sends of one cap without an acknowledgement after which the alarm is raised.
    #[serde(default = "default_retries_before_alarm")]
    pub retries_before_alarm: u32,
    /// How long only one agent must be heard before a duplicate-host alarm clears.
    #[serde(default = "default_conflict_clear_after_ms")]
    pub conflict_clear_after_ms: u64,
    /// How long after each wall-clock period boundary (when the agents publish) the
    /// controller decides (`remote::phase`). Default: 25 ms, or a quarter of a shorter
    /// period.
    #[serde(default)]
    pub decide_offset_ms: Option<u64>,
}

fn default_stale_after_ms() -> u64 {
    3_000
}
fn default_ack_timeout_ms() -> u64 {
    2_000
}
fn default_lease_ms() -> u64 {
    30_000
}
fn default_retries_before_alarm() -> u32 {
    3
}
fn default_conflict_clear_after_ms() -> u64 {
    30_000
}

impl Default for RackConfig {
    fn default() -> Self {
        RackConfig {
            stale_after_ms: default_stale_after_ms(),
            ack_timeout_ms: default_ack_timeout_ms(),
            lease_ms: default_lease_ms(),
            retries_before_alarm: default_retries_before_alarm(),
            conflict_clear_after_ms: default_conflict_clear_after_ms(),
            decide_offset_ms: None,
        }
    }
}

impl RackConfig {
    /// Checks the section against itself and the control period (`period_ms`).
    pub fn validate(&self, key: &str, period_ms: u64, issues: &mut Issues) {
        // A host is stale only after at least one missed period, or every late message
        // would make it a lost input.
        issues.check(
            (period_ms.max(100)..=60_000).contains(&self.stale_after_ms),
            format!("{key}.stale_after_ms"),
            format!(
                "between the control period ({period_ms} ms) and 60000 ms, got {}",
                self.stale_after_ms
            ),
        );
        issues.check(
            (50..=60_000).contains(&self.ack_timeout_ms),
            format!("{key}.ack_timeout_ms"),
            format!("between 50 and 60000 ms, got {}", self.ack_timeout_ms),
        );
        // The wire format caps a lease at 10 minutes; a lease must outlast a few
        // acknowledgement rounds, or it ends before its renewal can be acknowledged.
        let min_lease = 3 * self.ack_timeout_ms;
        issues.check(
            (min_lease..=u64::from(crate::wire::MAX_LEASE_MS)).contains(&self.lease_ms),
            format!("{key}.lease_ms"),
            format!(
                "between 3 × ack_timeout_ms ({min_lease} ms) and {} ms, got {}",
                crate::wire::MAX_LEASE_MS,
                self.lease_ms
            ),
        );
        issues.check(
            (1..=100).contains(&self.retries_before_alarm),
            format!("{key}.retries_before_alarm"),
            format!("between 1 and 100, got {}", self.retries_before_alarm),
        );
        issues.check(
            (1_000..=3_600_000).contains(&self.conflict_clear_after_ms),
            format!("{key}.conflict_clear_after_ms"),
            format!(
                "between 1000 and 3600000 ms, got {}",
                self.conflict_clear_after_ms
            ),
        );
        // Past half the period the decision would come nearer the next boundary than this
        // one, and the readings would wait longer, not less.
        if let Some(ms) = self.decide_offset_ms {
            issues.check(
                ms <= period_ms / 2,
                format!("{key}.decide_offset_ms"),
                format!(
                    "between 0 and half the control period ({} ms), got {ms}",
                    period_ms / 2
                ),
            );
        }
    }

    /// How long after each period boundary of the wall clock the controller ticks.
    pub fn decide_offset(&self, period: Duration) -> Duration {
        match self.decide_offset_ms {
            Some(ms) => Duration::from_millis(ms),
            None => super::phase::DEFAULT_DECIDE_OFFSET.min(period / 4),
        }
    }

    /// The remote source's settings for `hosts`.
    pub fn remote(&self, hosts: Vec<String>) -> RemoteConfig {
        RemoteConfig {
            hosts,
            stale_after: Duration::from_millis(self.stale_after_ms),
            conflict_clear_after: Duration::from_millis(self.conflict_clear_after_ms),
        }
    }

    /// The cap sender's settings. Leases are renewed a third of their length before they end,
    /// which leaves room for two acknowledgement rounds at the shortest lease allowed.
    pub fn caps(&self) -> CapSenderConfig {
        CapSenderConfig {
            lease: Duration::from_millis(self.lease_ms),
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            alarm_after: self.retries_before_alarm,
            renew_before: Duration::from_millis(self.lease_ms / 3),
        }
    }
}
