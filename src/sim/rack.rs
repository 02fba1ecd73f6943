//! `[simulator]`'s rack keys: host agents over the broker (`coolantd sim`), a controller
//! whose plant runs in another process, and the faults scheduled on the simulated rack.
//! Only the configuration lives here; `service::sim_rack` runs the agents and the faults,
//! because agents are a service.

use crate::validate::Issues;
use serde::Deserialize;
use std::time::Duration;

/// What happens to a simulated host's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimFaultKind {
    /// The agent's process dies: its broker connection drops without a DISCONNECT, so the
    /// broker publishes its last will; the caps it set stay on the GPUs. After `duration_s`
    /// a new agent starts, restores the recorded limits and publishes again.
    AgentDies,
    /// The host is cut off from the controller: the agent publishes nothing and drops
    /// what it receives, but its session stays up, so no last will is published. Its local
    /// guard keeps running. After `duration_s` it is heard again.
    Partition,
}

impl SimFaultKind {
    pub fn name(self) -> &'static str {
        match self {
            SimFaultKind::AgentDies => "agent_dies",
            SimFaultKind::Partition => "partition",
        }
    }
}

/// `[[simulator.faults]]`: one fault on one simulated host.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimFault {
    /// When the fault starts, plant seconds after the simulator started.
    pub at_s: f64,
    /// The host (one of `simulator.hosts`).
    pub host: String,
    pub kind: SimFaultKind,
    /// How long it lasts, plant seconds; absent: until the simulator stops.
    pub duration_s: Option<f64>,
}

/// The longest schedule accepted: a week of plant time.
const MAX_AT_S: f64 = 7.0 * 86_400.0;

impl SimFault {
    pub fn validate(&self, key: &str, hosts: &[String], issues: &mut Issues) {
        issues.range(
            self.at_s,
            0.0,
            MAX_AT_S,
            format!("{key}.at_s"),
            "plant seconds after the start",
        );
        issues.check(
            hosts.iter().any(|h| h == &self.host),
            format!("{key}.host"),
            format!(
                "one of simulator.hosts ({}), got `{}`",
                hosts.join(", "),
                self.host
            ),
        );
        if let Some(d) = self.duration_s {
            issues.check(
                d.is_finite() && d > 0.0 && d <= MAX_AT_S,
                format!("{key}.duration_s"),
                format!("a duration in plant seconds above 0 and at most {MAX_AT_S}, got {d}"),
            );
        }
    }

    /// The plant time at which the fault starts.
    pub fn start(&self) -> Duration {
        Duration::from_secs_f64(self.at_s.clamp(0.0, MAX_AT_S))
    }

    /// The plant time at which it ends, if it does.
    pub fn end(&self) -> Option<Duration> {
        self.duration_s
            .map(|d| Duration::from_secs_f64((self.at_s + d).clamp(0.0, 2.0 * MAX_AT_S)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["node01".into(), "node02".into()]
    }

    #[test]
    fn a_fault_names_a_simulated_host_and_a_positive_duration() {
        let ok = SimFault {
            at_s: 30.0,
            host: "node02".into(),
            kind: SimFaultKind::AgentDies,
            duration_s: Some(20.0),
        };
        let mut issues = Issues::default();
        ok.validate("simulator.faults[0]", &hosts(), &mut issues);
        assert!(issues.into_result(std::path::Path::new("f")).is_ok());
        assert_eq!(ok.start(), Duration::from_secs(30));
        assert_eq!(ok.end(), Some(Duration::from_secs(50)));

        let bad = SimFault {
            at_s: -1.0,
            host: "node09".into(),
            kind: SimFaultKind::Partition,
            duration_s: Some(0.0),
        };
        let mut issues = Issues::default();
        bad.validate("simulator.faults[1]", &hosts(), &mut issues);
        let e = issues
            .into_result(std::path::Path::new("sim.toml"))
            .expect_err("a negative start, an unknown host and a zero duration are refused")
            .to_string();
        for key in [
            "faults[1].at_s",
            "faults[1].host",
            "faults[1].duration_s",
            "node09",
        ] {
            assert!(e.contains(key), "{key} missing in: {e}");
        }
    }
}
