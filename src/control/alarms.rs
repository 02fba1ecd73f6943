//! The alarm book: which alarms are active, and the events of this tick.
//!
//! Each tick the controller states every condition it sees ([`AlarmBook::assert`]); at the
//! end of the tick ([`AlarmBook::finish_tick`]) conditions not stated again are cleared. A
//! latched alarm outlives its cause until acknowledged.

use crate::model::{Alarm, AlarmEvent, AlarmTransition, Mono, Severity};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default, Clone)]
pub struct AlarmBook {
    active: BTreeMap<String, Alarm>,
    seen: BTreeSet<String>,
    events: Vec<AlarmEvent>,
}

impl AlarmBook {
    /// States that a condition is present this tick; raises the alarm when new.
    pub fn assert(
        &mut self,
        now: Mono,
        id: String,
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
        id: String,
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
                    id: id.clone(),
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
        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|id| !self.seen.contains(*id))
            .cloned()
            .collect();
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
        let Some(a) = self.active.get_mut(id) else {
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
            self.active.remove(id);
            self.events.push(AlarmEvent {
                alarm,
                transition: AlarmTransition::Cleared,
                at: now,
            });
        }
        true
    }

    pub fn is_active(&self, id: &str) -> bool {
        self.active.contains_key(id)
    }

    pub fn active(&self) -> Vec<Alarm> {
        self.active.values().cloned().collect()
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
        b.assert(t, "leak:a".into(), Severity::Critical, true, "leak".into());
        b.assert(t, "warn:a".into(), Severity::Warning, false, "w".into());
        assert_eq!(b.finish_tick(t).len(), 2);
        let ev = b.finish_tick(t);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].alarm.id, "warn:a");
        assert_eq!(ev[0].transition, AlarmTransition::Cleared);
        assert!(b.is_active("leak:a"));
        assert!(b.acknowledge(t, "leak:a"));
        assert!(!b.is_active("leak:a"));
        assert!(!b.acknowledge(t, "leak:a"));
    }
}
