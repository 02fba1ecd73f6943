//! Alarms about the control loop's own timing, raised by the shell (the core never sees a
//! clock): a tick that took longer than its period, and a CDU whose poll did not finish
//! within the tick's budget for CDUs (the tick then steers on an older sample).

use crate::model::{Alarm, AlarmEvent, AlarmTransition, Mono, Severity};
use std::collections::BTreeMap;
use std::time::Duration;

/// An alarm clears once its cause has been absent this long (control time): a slow CDU that
/// is late every few ticks would otherwise flap with each poll.
pub const CLEAR_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Held {
    active: Option<Alarm>,
    last_seen: Option<Mono>,
}

impl Held {
    /// States this tick's condition (`Some(message)` when present); pushes any transition.
    fn step(&mut self, now: Mono, id: &str, present: Option<String>, events: &mut Vec<AlarmEvent>) {
        match present {
            Some(message) => {
                self.last_seen = Some(now);
                let alarm = Alarm {
                    id: id.to_string(),
                    severity: Severity::Warning,
                    message,
                    raised_at: self.active.as_ref().map_or(now, |a| a.raised_at),
                    latched: false,
                    acknowledged: false,
                    cause_present: true,
                    causes: Vec::new(),
                };
                if self.active.is_none() {
                    events.push(AlarmEvent {
                        alarm: alarm.clone(),
                        transition: AlarmTransition::Raised,
                        at: now,
                    });
                }
                self.active = Some(alarm);
            }
            None => {
                let quiet = self
                    .last_seen
                    .is_none_or(|t| now.saturating_sub(t) >= CLEAR_AFTER);
                if let (true, Some(a)) = (quiet, &mut self.active) {
                    a.cause_present = false;
                    events.push(AlarmEvent {
                        alarm: a.clone(),
                        transition: AlarmTransition::Cleared,
                        at: now,
                    });
                    self.active = None;
                } else if let Some(a) = &mut self.active {
                    a.cause_present = false;
                }
            }
        }
    }
}

/// The loop-timing alarms: `tick_overrun` and `cdu_slow:<cdu>`.
#[derive(Debug, Default)]
pub struct LoopAlarms {
    overrun: Held,
    slow: BTreeMap<String, Held>,
}

impl LoopAlarms {
    /// States this tick's conditions: `overrun` describes the previous tick when it took
    /// longer than its period; `slow` holds, per CDU, a description when its poll was late.
    /// Returns this tick's events.
    pub fn update(
        &mut self,
        now: Mono,
        overrun: Option<String>,
        slow: impl IntoIterator<Item = (String, Option<String>)>,
    ) -> Vec<AlarmEvent> {
        let mut events = Vec::new();
        self.overrun.step(now, "tick_overrun", overrun, &mut events);
        for (cdu, why) in slow {
            let id = format!("cdu_slow:{cdu}");
            self.slow
                .entry(cdu)
                .or_default()
                .step(now, &id, why, &mut events);
        }
        events
    }

    /// The alarms active now.
    pub fn active(&self) -> impl Iterator<Item = &Alarm> {
        self.overrun
            .active
            .iter()
            .chain(self.slow.values().filter_map(|h| h.active.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_poll_raises_once_and_clears_after_a_quiet_spell() {
        let mut a = LoopAlarms::default();
        let s = Duration::from_secs;
        let slow = |late: bool| [("cdu-a".to_string(), late.then(|| "late".to_string()))];
        assert!(a.update(s(1), None, slow(false)).is_empty());
        let ev = a.update(s(2), None, slow(true));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].alarm.id, "cdu_slow:cdu-a");
        assert_eq!(ev[0].transition, AlarmTransition::Raised);
        // Late again, then on time: still active (no flapping), no second Raised.
        assert!(a.update(s(3), None, slow(true)).is_empty());
        assert!(a.update(s(4), None, slow(false)).is_empty());
        assert_eq!(a.active().count(), 1);
        assert!(a
            .update(s(3) + CLEAR_AFTER - s(1), None, slow(false))
            .is_empty());
        let ev = a.update(s(3) + CLEAR_AFTER, None, slow(false));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].transition, AlarmTransition::Cleared);
        assert_eq!(a.active().count(), 0);
    }

    #[test]
    fn an_overrun_is_its_own_warning() {
        let mut a = LoopAlarms::default();
        let ev = a.update(Duration::from_secs(1), Some("took 2 s".into()), []);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].alarm.id, "tick_overrun");
        assert_eq!(ev[0].alarm.severity, Severity::Warning);
    }
}
