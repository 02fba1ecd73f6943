//! The supervisor: one state machine per CDU decides who drives the outputs.
//!
//! ```text
//!                 every required input valid
//!     ┌──────┐   (GPU temperature + required CDU roles)   ┌─────────┐  optional input lost  ┌──────────┐
//!     │ Boot │ ─────────────────────────────────────────► │ Running │ ────────────────────► │ Degraded │
//!     └──────┘                                            └─────────┘ ◄──────────────────── └──────────┘
//!        │ boot_timeout_s                                   │  ▲            input back          │
//!        │ without valid inputs                             │  │ inputs valid for              │
//!        ▼                                                  │  │ recovery_hold_s (bumpless)    │
//!     ┌──────────┐ ◄────────────────────────────────────────┘  │                               │
//!     │ Failsafe │   required input lost (after hold_ticks),   │                               │
//!     └──────────┘   CDU unreachable, pump writes failing  ────┘ ◄──────────────────────────────┘
//!
//!     any state ──► Emergency: leak (latched until acknowledged and dry), a GPU core at
//!                   slowdown − emergency_margin_k, HBM at its max − emergency_margin_k, or NVML reporting a
//!                   hardware thermal slowdown. Leaves once the cause is gone (GPUs
//!                   emergency_clear_k below the threshold) to Running/Degraded/Failsafe.
//! ```
//!
//! Outputs per state (pump speed; power caps):
//!
//! | state     | pump                                 | caps                                              |
//! |-----------|--------------------------------------|---------------------------------------------------|
//! | Boot      | `pump.start_speed`                   | untouched                                         |
//! | Running   | PID (or the manual speed)            | split range: cap loop only when the pump is spent |
//! | Degraded  | as Running, on what remains          | as Running                                        |
//! | Failsafe  | at least `pump.failsafe_speed`       | graded by cause, see below                        |
//! | Emergency | pump maximum, this tick              | hot GPU (leak: every GPU of the CDU) to its minimum, this tick |
//!
//! Failsafe is graded by cause: with the GPU temperatures unknown the caps fall to
//! `power_cap.failsafe_percent` of the original limit (nothing else protects the GPUs); with
//! a CDU sensor lost, the CDU unreachable or its pump writes failing, the pump goes to its
//! failsafe speed (where writes still land) and the cap loop keeps holding the GPUs, treating
//! the pump as spent. Every override is tracked by the PIDs, so leaving it is bumpless.

use crate::control::config::SupervisorConfig;
use crate::model::{ControlState, Mono, Role};

/// Why a CDU is in failsafe.
#[derive(Debug, Clone, PartialEq)]
pub enum FailsafeCause {
    /// No valid GPU temperature for the CDU's hosts.
    GpuTemperaturesUnknown,
    /// A required CDU role has no valid value.
    RequiredInput(Role),
    /// No valid register from the CDU within the sample age.
    Unreachable,
    /// The pump command could not be written several times in a row.
    PumpWrite,
}

impl std::fmt::Display for FailsafeCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailsafeCause::GpuTemperaturesUnknown => f.write_str("GPU temperatures unknown"),
            FailsafeCause::RequiredInput(r) => write!(f, "required input {r} lost"),
            FailsafeCause::Unreachable => f.write_str("CDU unreachable"),
            FailsafeCause::PumpWrite => f.write_str("pump speed writes failing"),
        }
    }
}

impl FailsafeCause {
    /// The cause as a stable snake_case word, for JSON (`/status`, MQTT): `gpu_temperatures_unknown`,
    /// `required_input_<role>`, `unreachable` or `pump_write_failing`.
    pub fn code(&self) -> String {
        match self {
            FailsafeCause::GpuTemperaturesUnknown => "gpu_temperatures_unknown".into(),
            FailsafeCause::RequiredInput(r) => format!("required_input_{r}"),
            FailsafeCause::Unreachable => "unreachable".into(),
            FailsafeCause::PumpWrite => "pump_write_failing".into(),
        }
    }
}

/// What the controller saw this tick, condensed for the state machine.
#[derive(Debug, Clone, Default)]
pub struct Causes {
    pub emergency: bool,
    pub failsafe: Vec<FailsafeCause>,
    pub degraded: bool,
}

/// One CDU's state machine. Each state carries the data that only means something in it
/// (the Hubris `ThermalControlState` pattern): the boot start time only while booting, the
/// recovery hold only in failsafe.
#[derive(Debug, Clone)]
enum Phase {
    /// Waiting for the required inputs; `started` is the first tick, unknown before it.
    Boot {
        started: Option<Mono>,
    },
    Running,
    Degraded,
    /// `valid_since`: every cause gone since then (the recovery hold runs);
    /// `boot_timed_out`: entered because boot gave up waiting for the inputs.
    Failsafe {
        valid_since: Option<Mono>,
        boot_timed_out: bool,
    },
    /// `boot_timed_out` is kept so that a failsafe after the emergency still says that the
    /// inputs never became valid after start.
    Emergency {
        boot_timed_out: bool,
    },
}

/// One CDU's state machine.
#[derive(Debug, Clone)]
pub struct Supervisor {
    phase: Phase,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            phase: Phase::Boot { started: None },
        }
    }
}

impl Supervisor {
    pub fn state(&self) -> ControlState {
        match self.phase {
            Phase::Boot { .. } => ControlState::Boot,
            Phase::Running => ControlState::Running,
            Phase::Degraded => ControlState::Degraded,
            Phase::Failsafe { .. } => ControlState::Failsafe,
            Phase::Emergency { .. } => ControlState::Emergency,
        }
    }

    /// True once boot gave up waiting for the required inputs (until the CDU recovers).
    pub fn boot_timed_out(&self) -> bool {
        matches!(
            self.phase,
            Phase::Failsafe {
                boot_timed_out: true,
                ..
            } | Phase::Emergency {
                boot_timed_out: true
            }
        )
    }

    /// Advances the state machine by one tick.
    pub fn step(&mut self, now: Mono, c: &Causes, cfg: &SupervisorConfig) -> ControlState {
        let healthy = if c.degraded {
            Phase::Degraded
        } else {
            Phase::Running
        };
        let boot_timed_out = self.boot_timed_out();
        self.phase = match self.phase {
            // Boot ends here too: after an emergency the outputs are known, not undefined.
            _ if c.emergency => Phase::Emergency { boot_timed_out },
            Phase::Boot { started } => {
                let started = started.unwrap_or(now);
                if c.failsafe.is_empty() {
                    healthy
                } else if now.saturating_sub(started).as_secs_f64() >= cfg.boot_timeout_s {
                    Phase::Failsafe {
                        valid_since: None,
                        boot_timed_out: true,
                    }
                } else {
                    Phase::Boot {
                        started: Some(started),
                    }
                }
            }
            _ if !c.failsafe.is_empty() => Phase::Failsafe {
                valid_since: None,
                boot_timed_out,
            },
            Phase::Failsafe {
                valid_since,
                boot_timed_out,
            } => {
                let since = valid_since.unwrap_or(now);
                if now.saturating_sub(since).as_secs_f64() >= cfg.recovery_hold_s {
                    healthy
                } else {
                    Phase::Failsafe {
                        valid_since: Some(since),
                        boot_timed_out,
                    }
                }
            }
            Phase::Running | Phase::Degraded | Phase::Emergency { .. } => healthy,
        };
        self.state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn s(n: u64) -> Mono {
        Duration::from_secs(n)
    }

    #[test]
    fn failsafe_causes_have_stable_snake_case_codes() {
        assert_eq!(FailsafeCause::Unreachable.code(), "unreachable");
        assert_eq!(
            FailsafeCause::RequiredInput(Role::SupplyTemperature).code(),
            "required_input_supply_temperature"
        );
        assert_eq!(
            FailsafeCause::GpuTemperaturesUnknown.code(),
            "gpu_temperatures_unknown"
        );
        assert_eq!(FailsafeCause::PumpWrite.code(), "pump_write_failing");
    }

    #[test]
    fn boot_waits_then_times_out_to_failsafe() {
        let cfg = SupervisorConfig::default();
        let mut sv = Supervisor::default();
        let lost = Causes {
            failsafe: vec![FailsafeCause::Unreachable],
            ..Causes::default()
        };
        assert_eq!(sv.step(s(0), &lost, &cfg), ControlState::Boot);
        assert_eq!(sv.step(s(29), &lost, &cfg), ControlState::Boot);
        assert_eq!(sv.step(s(30), &lost, &cfg), ControlState::Failsafe);
        assert!(sv.boot_timed_out());
    }

    #[test]
    fn failsafe_recovers_only_after_hold() {
        let cfg = SupervisorConfig::default();
        let mut sv = Supervisor::default();
        let ok = Causes::default();
        let lost = Causes {
            failsafe: vec![FailsafeCause::RequiredInput(Role::SupplyTemperature)],
            ..Causes::default()
        };
        assert_eq!(sv.step(s(0), &ok, &cfg), ControlState::Running);
        assert_eq!(sv.step(s(1), &lost, &cfg), ControlState::Failsafe);
        assert_eq!(sv.step(s(2), &ok, &cfg), ControlState::Failsafe);
        assert_eq!(sv.step(s(6), &ok, &cfg), ControlState::Failsafe);
        assert_eq!(sv.step(s(7), &ok, &cfg), ControlState::Running);
        let emergency = Causes {
            emergency: true,
            ..Causes::default()
        };
        assert_eq!(sv.step(s(8), &emergency, &cfg), ControlState::Emergency);
        assert_eq!(sv.step(s(9), &ok, &cfg), ControlState::Running);
    }
}
