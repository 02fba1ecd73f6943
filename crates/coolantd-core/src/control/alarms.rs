//! The alarm book: which alarms are active, and the events of this tick.
//!
//! Each tick the controller states every condition it sees ([`AlarmBook::assert`]); at the
//! end of the tick ([`AlarmBook::finish_tick`]) conditions not stated again are cleared. A
//! latched alarm outlives its cause until acknowledged.

use crate::model::{Alarm, AlarmEvent, AlarmTransition, GpuKey, Mono, Role, Severity};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The alarms the control core raises. Their text form (`leak:<cdu>`, `input_lost:<cdu>:<role>`,
/// …) is the alarm id that `/status`, MQTT, Sparkplug and operators' acknowledgements use, so
/// [`fmt::Display`] must keep producing exactly these strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmId {
    /// `leak:<cdu>`: the CDU reports a leak (latched).
    Leak { cdu: String },
    /// `cdu_unreachable:<cdu>`: no usable poll within the sample age.
    CduUnreachable { cdu: String },
    /// `input_lost:<cdu>:<role>`: a CDU input failed its plausibility gate.
    InputLost { cdu: String, role: Role },
    /// `local_mode:<cdu>`: the CDU runs itself (or its mode is unknown).
    LocalMode { cdu: String },
    /// `pump_not_following:<cdu>`: the pump feedback does not follow the command.
    PumpNotFollowing { cdu: String },
    /// `pump_write_failed:<cdu>`: several pump speed writes in a row failed.
    PumpWriteFailed { cdu: String },
    /// `pump_write_unsupported:<cdu>`: the CDU can never take the pump speed write.
    PumpWriteUnsupported { cdu: String },
    /// `failsafe:<cdu>`: the CDU's supervisor is in failsafe.
    Failsafe { cdu: String },
    /// `dew_point:<cdu>`: the supply is too close to the room dew point.
    DewPoint { cdu: String },
    /// `gpu_input:<gpu>`: no usable core temperature for a GPU of the inventory.
    GpuInput { gpu: GpuKey },
    /// `gpu_slowdown:<gpu>`: the GPU is at its thermal limit.
    GpuSlowdown { gpu: GpuKey },
    /// `power_limit_external:<gpu>`: another agent holds a lower power limit.
    PowerLimitExternal { gpu: GpuKey },
    /// `power_cap_write_failed:<gpu>`: several power limit writes in a row failed.
    PowerCapWriteFailed { gpu: GpuKey },
    /// `power_cap_unsupported:<gpu>`: the GPU can never take a power limit write.
    PowerCapUnsupported { gpu: GpuKey },
}

impl fmt::Display for AlarmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlarmId::Leak { cdu } => write!(f, "leak:{cdu}"),
            AlarmId::CduUnreachable { cdu } => write!(f, "cdu_unreachable:{cdu}"),
            AlarmId::InputLost { cdu, role } => write!(f, "input_lost:{cdu}:{role}"),
            AlarmId::LocalMode { cdu } => write!(f, "local_mode:{cdu}"),
            AlarmId::PumpNotFollowing { cdu } => write!(f, "pump_not_following:{cdu}"),
            AlarmId::PumpWriteFailed { cdu } => write!(f, "pump_write_failed:{cdu}"),
            AlarmId::PumpWriteUnsupported { cdu } => write!(f, "pump_write_unsupported:{cdu}"),
            AlarmId::Failsafe { cdu } => write!(f, "failsafe:{cdu}"),
            AlarmId::DewPoint { cdu } => write!(f, "dew_point:{cdu}"),
            AlarmId::GpuInput { gpu } => write!(f, "gpu_input:{gpu}"),
            AlarmId::GpuSlowdown { gpu } => write!(f, "gpu_slowdown:{gpu}"),
            AlarmId::PowerLimitExternal { gpu } => write!(f, "power_limit_external:{gpu}"),
            AlarmId::PowerCapWriteFailed { gpu } => write!(f, "power_cap_write_failed:{gpu}"),
            AlarmId::PowerCapUnsupported { gpu } => write!(f, "power_cap_unsupported:{gpu}"),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct AlarmBook {
    active: BTreeMap<AlarmId, Alarm>,
    seen: BTreeSet<AlarmId>,
    events: Vec<AlarmEvent>,
}

impl AlarmBook {
    /// States that a condition is present this tick; raises the alarm when new.
    pub fn assert(
        &mut self,
        now: Mono,
        id: AlarmId,
        severity: Severity,
        latched: bool,
        message: String,
    ) {
        self.assert_with_causes(now, id, severity, latched, message, Vec::new());
    }

    /// [`AlarmBook::assert`] with the causes as stable snake_case words, for alarms whose
    /// kind alone does not say why (failsafe).
    pub fn assert_with_causes(
        &mut self,
        now: Mono,
        id: AlarmId,
        severity: Severity,
        latched: bool,
        message: String,
        causes: Vec<String>,
    ) {
        match self.active.get_mut(&id) {
            Some(a) => {
                a.message = message;
                a.causes = causes;
                a.severity = a.severity.max(severity);
                if !a.cause_present {
                    a.cause_present = true;
                    // A recurring cause re-arms an acknowledged latched alarm.
                    a.acknowledged = false;
                }
            }
            None => {
                let alarm = Alarm {
                    id: id.to_string(),
                    severity,
                    message,
                    raised_at: now,
                    latched,
                    acknowledged: false,
                    cause_present: true,
                    causes,
                };
                self.events.push(AlarmEvent {
                    alarm: alarm.clone(),
                    transition: AlarmTransition::Raised,
                    at: now,
                });
                self.active.insert(id.clone(), alarm);
            }
        }
        self.seen.insert(id);
    }

    /// Clears conditions not stated this tick; returns this tick's events.
    pub fn finish_tick(&mut self, now: Mono) -> Vec<AlarmEvent> {
        let mut gone: Vec<AlarmId> = self
            .active
            .keys()
            .filter(|id| !self.seen.contains(*id))
            .cloned()
            .collect();
        // Events come in the order of the ids' text, as they did when the book was keyed by it.
        gone.sort_by_cached_key(|id| id.to_string());
        for id in gone {
            let Some(a) = self.active.get_mut(&id) else {
                continue;
            };
            if a.latched && !a.acknowledged {
                a.cause_present = false;
            } else if let Some(mut a) = self.active.remove(&id) {
                a.cause_present = false;
                self.events.push(AlarmEvent {
                    alarm: a,
                    transition: AlarmTransition::Cleared,
                    at: now,
                });
            }
        }
        self.seen.clear();
        std::mem::take(&mut self.events)
    }

    /// Acknowledges an alarm. An acknowledged alarm whose cause is gone is cleared at once.
    /// Returns false when no such alarm is active.
    pub fn acknowledge(&mut self, now: Mono, id: &str) -> bool {
        // The operator names the alarm by its text id; active alarms carry it.
        let Some(key) = self
            .active
            .iter()
            .find(|(_, a)| a.id == id)
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        let Some(a) = self.active.get_mut(&key) else {
            return false;
        };
        a.acknowledged = true;
        let alarm = a.clone();
        self.events.push(AlarmEvent {
            alarm: alarm.clone(),
            transition: AlarmTransition::Acknowledged,
            at: now,
        });
        if !alarm.cause_present {
            self.active.remove(&key);
            self.events.push(AlarmEvent {
                alarm,
                transition: AlarmTransition::Cleared,
                at: now,
            });
        }
        true
    }

    pub fn is_active(&self, id: &AlarmId) -> bool {
        self.active.contains_key(id)
    }

    /// The active alarms, ordered by their text id (the order `/status` has always shown).
    pub fn active(&self) -> Vec<Alarm> {
        let mut v: Vec<Alarm> = self.active.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latched_alarm_needs_ack_and_plain_alarm_clears() {
        let mut b = AlarmBook::default();
        let t = Duration::ZERO;
        let leak = AlarmId::Leak { cdu: "a".into() };
        let warn = AlarmId::LocalMode { cdu: "a".into() };
        b.assert(t, leak.clone(), Severity::Critical, true, "leak".into());
        b.assert(t, warn, Severity::Warning, false, "w".into());
        assert_eq!(b.finish_tick(t).len(), 2);
        let ev = b.finish_tick(t);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].alarm.id, "local_mode:a");
        assert_eq!(ev[0].transition, AlarmTransition::Cleared);
        assert!(b.is_active(&leak));
        assert!(b.acknowledge(t, "leak:a"));
        assert!(!b.is_active(&leak));
        assert!(!b.acknowledge(t, "leak:a"));
    }

    #[test]
    fn alarm_ids_keep_their_text_form() {
        let gpu = GpuKey {
            host: "h1".into(),
            index: 3,
        };
        let cases = [
            (AlarmId::Leak { cdu: "c".into() }, "leak:c"),
            (
                AlarmId::CduUnreachable { cdu: "c".into() },
                "cdu_unreachable:c",
            ),
            (
                AlarmId::InputLost {
                    cdu: "c".into(),
                    role: Role::SupplyTemperature,
                },
                "input_lost:c:supply_temperature",
            ),
            (AlarmId::LocalMode { cdu: "c".into() }, "local_mode:c"),
            (
                AlarmId::PumpNotFollowing { cdu: "c".into() },
                "pump_not_following:c",
            ),
            (
                AlarmId::PumpWriteFailed { cdu: "c".into() },
                "pump_write_failed:c",
            ),
            (AlarmId::Failsafe { cdu: "c".into() }, "failsafe:c"),
            (AlarmId::DewPoint { cdu: "c".into() }, "dew_point:c"),
            (AlarmId::GpuInput { gpu: gpu.clone() }, "gpu_input:h1/gpu3"),
            (
                AlarmId::GpuSlowdown { gpu: gpu.clone() },
                "gpu_slowdown:h1/gpu3",
            ),
            (
                AlarmId::PowerLimitExternal { gpu: gpu.clone() },
                "power_limit_external:h1/gpu3",
            ),
            (
                AlarmId::PowerCapWriteFailed { gpu },
                "power_cap_write_failed:h1/gpu3",
            ),
        ];
        for (id, text) in cases {
            assert_eq!(id.to_string(), text);
        }
    }
}
