//! Alarms about the telemetry path itself. The control core knows nothing of sinks, so the
//! shell raises these: points dropped (data lost; the message says why: the spool's size
//! bound, or a failing spool disk with the memory buffer full, and whether the database was
//! reachable), the spool disk failing (points held in memory, nothing lost yet), spool records
//! found corrupt or a cursor rebuilt, and batches the database rejected (data set aside in the
//! dead-letter file).

use crate::model::{Alarm, AlarmEvent, AlarmTransition, Mono, Severity};
use crate::sink::influx::SinkStats;
use std::time::Duration;

/// An alarm clears once its counter has not grown for this long: long enough for an
/// operator to see it on a dashboard, short enough not to hide a new incident behind it.
const CLEAR_AFTER: Duration = Duration::from_secs(600);
/// The disk alarm clears once the disk has taken writes for this long, so that a disk that
/// fills up again right after each recovery shows as one alarm, not a flapping one.
const DISK_CLEAR_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Counter {
    seen: u64,
    last_growth: Option<Mono>,
    active: Option<Alarm>,
}

/// Tracks the InfluxDB sink's loss counters and turns their growth into alarm events.
#[derive(Debug, Default)]
pub struct SinkAlarms {
    dropped: Counter,
    rejected: Counter,
    damaged: Counter,
    disk: Option<Alarm>,
    disk_ok_since: Option<Mono>,
}

/// The drop alarm's text: the true causes, with their counts, and the database's state.
fn dropped_message(s: &SinkStats) -> String {
    let mut causes = Vec::new();
    if s.dropped_bound > 0 {
        causes.push(format!(
            "{} because the InfluxDB spool reached its size bound (influx.spool_max_bytes)",
            s.dropped_bound
        ));
    }
    if s.dropped_memory > 0 {
        causes.push(format!(
            "{} because the spool disk could not be written{} and the memory buffer was full",
            s.dropped_memory,
            s.disk_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    let db = if s.db_unreachable {
        "the database is unreachable"
    } else {
        "the database is reachable"
    };
    format!(
        "{} metric points dropped: {}; {db}",
        s.dropped,
        causes.join(", ")
    )
}

fn damaged_message(s: &SinkStats) -> String {
    let mut parts = Vec::new();
    if s.corrupt > 0 {
        parts.push(format!(
            "{} damaged spool records skipped (the valid records around them are kept)",
            s.corrupt
        ));
    }
    if s.cursor_resets > 0 {
        parts.push(format!(
            "the spool cursor was unusable and rebuilt from the segments {} time(s) (points may be sent twice)",
            s.cursor_resets
        ));
    }
    parts.join("; ")
}

impl SinkAlarms {
    /// Compares the sink's counters with the last tick's; returns this tick's events.
    pub fn update(&mut self, now: Mono, stats: &SinkStats) -> Vec<AlarmEvent> {
        let mut events = Vec::new();
        step(
            &mut self.dropped,
            stats.dropped,
            now,
            "telemetry_dropped:influx",
            Severity::Critical,
            || dropped_message(stats),
            &mut events,
        );
        step(
            &mut self.rejected,
            stats.rejected,
            now,
            "telemetry_rejected:influx",
            Severity::Warning,
            || {
                format!(
                    "{} metric points rejected by InfluxDB; they are kept in the dead-letter file",
                    stats.rejected
                )
            },
            &mut events,
        );
        step(
            &mut self.damaged,
            stats.corrupt + stats.cursor_resets,
            now,
            "telemetry_spool_damaged:influx",
            Severity::Warning,
            || damaged_message(stats),
            &mut events,
        );
        self.disk_state(now, stats, &mut events);
        events
    }

    /// Raised while the spool's disk fails, cleared when it takes writes again.
    fn disk_state(&mut self, now: Mono, stats: &SinkStats, events: &mut Vec<AlarmEvent>) {
        if stats.disk_error.is_some() {
            self.disk_ok_since = None;
        } else if self.disk_ok_since.is_none() {
            self.disk_ok_since = Some(now);
        }
        let settled = self
            .disk_ok_since
            .is_some_and(|t| now.saturating_sub(t) >= DISK_CLEAR_AFTER);
        match (&stats.disk_error, &mut self.disk) {
            (Some(e), active) => {
                let alarm = Alarm {
                    id: "telemetry_spool_disk:influx".to_string(),
                    severity: Severity::Warning,
                    message: format!(
                        "the InfluxDB spool disk cannot be written ({e}); {} points held in memory \
                         (bounded), sent to the database directly while it is reachable",
                        stats.memory_backlog
                    ),
                    raised_at: active.as_ref().map_or(now, |a| a.raised_at),
                    latched: false,
                    acknowledged: false,
                    cause_present: true,
                    causes: Vec::new(),
                };
                if active.is_none() {
                    events.push(AlarmEvent {
                        alarm: alarm.clone(),
                        transition: AlarmTransition::Raised,
                        at: now,
                    });
                }
                *active = Some(alarm);
            }
            (None, active) if settled => {
                if let Some(mut alarm) = active.take() {
                    alarm.cause_present = false;
                    events.push(AlarmEvent {
                        alarm,
                        transition: AlarmTransition::Cleared,
                        at: now,
                    });
                }
            }
            (None, _) => {}
        }
    }

    /// The alarms active now.
    pub fn active(&self) -> impl Iterator<Item = &Alarm> {
        self.dropped
            .active
            .iter()
            .chain(self.rejected.active.iter())
            .chain(self.damaged.active.iter())
            .chain(self.disk.iter())
    }
}

fn step(
    c: &mut Counter,
    value: u64,
    now: Mono,
    id: &str,
    severity: Severity,
    message: impl Fn() -> String,
    events: &mut Vec<AlarmEvent>,
) {
    if value > c.seen {
        c.last_growth = Some(now);
        let alarm = Alarm {
            id: id.to_string(),
            severity,
            message: message(),
            raised_at: c.active.as_ref().map_or(now, |a| a.raised_at),
            latched: false,
            acknowledged: false,
            cause_present: true,
            causes: Vec::new(),
        };
        if c.active.is_none() {
            events.push(AlarmEvent {
                alarm: alarm.clone(),
                transition: AlarmTransition::Raised,
                at: now,
            });
        }
        c.active = Some(alarm);
    } else if let (Some(a), Some(t)) = (&c.active, c.last_growth) {
        if now.saturating_sub(t) >= CLEAR_AFTER {
            let mut alarm = a.clone();
            alarm.cause_present = false;
            events.push(AlarmEvent {
                alarm,
                transition: AlarmTransition::Cleared,
                at: now,
            });
            c.active = None;
        }
    }
    c.seen = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(dropped: u64, rejected: u64) -> SinkStats {
        SinkStats {
            dropped,
            dropped_bound: dropped,
            rejected,
            ..SinkStats::default()
        }
    }

    #[test]
    fn growth_raises_once_and_clears_after_quiet_period() {
        let mut a = SinkAlarms::default();
        let s = Duration::from_secs;
        assert!(a.update(s(1), &stats(0, 0)).is_empty());
        let ev = a.update(s(2), &stats(5, 0));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].transition, AlarmTransition::Raised);
        assert_eq!(ev[0].alarm.id, "telemetry_dropped:influx");
        assert!(ev[0].alarm.message.contains("5 metric points dropped"));
        // More drops keep it active without a second Raised event.
        assert!(a.update(s(3), &stats(9, 0)).is_empty());
        assert_eq!(a.active().count(), 1);
        assert!(a.update(s(3) + CLEAR_AFTER - s(1), &stats(9, 0)).is_empty());
        let ev = a.update(s(3) + CLEAR_AFTER, &stats(9, 0));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].transition, AlarmTransition::Cleared);
        assert_eq!(a.active().count(), 0);
    }

    #[test]
    fn rejections_are_a_warning_of_their_own() {
        let mut a = SinkAlarms::default();
        let ev = a.update(Duration::from_secs(1), &stats(0, 3));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].alarm.id, "telemetry_rejected:influx");
        assert_eq!(ev[0].alarm.severity, Severity::Warning);
    }

    #[test]
    fn drop_message_names_the_true_cause_and_the_database_state() {
        let mut a = SinkAlarms::default();
        let disk = SinkStats {
            dropped: 7,
            dropped_memory: 7,
            disk_error: Some("No space left on device".into()),
            memory_backlog: 100,
            ..SinkStats::default()
        };
        let ev = a.update(Duration::from_secs(1), &disk);
        let msg = &ev
            .iter()
            .find(|e| e.alarm.id == "telemetry_dropped:influx")
            .expect("drop alarm")
            .alarm
            .message;
        assert!(
            msg.contains("spool disk could not be written (No space left on device)"),
            "{msg}"
        );
        assert!(msg.contains("memory buffer was full"), "{msg}");
        assert!(msg.contains("database is reachable"), "{msg}");
        assert!(!msg.contains("size bound"), "{msg}");
        assert!(
            ev.iter()
                .any(|e| e.alarm.id == "telemetry_spool_disk:influx"),
            "the failing disk is an alarm of its own"
        );
        let bound = SinkStats {
            dropped: 9,
            dropped_bound: 2,
            dropped_memory: 7,
            db_unreachable: true,
            ..SinkStats::default()
        };
        let ev = a.update(Duration::from_secs(2), &bound);
        assert!(ev.is_empty(), "the drop alarm stays active: {ev:?}");
        let later = Duration::from_secs(2) + DISK_CLEAR_AFTER;
        let ev = a.update(later, &bound);
        assert_eq!(
            ev.len(),
            1,
            "the disk alarm clears once the disk settled: {ev:?}"
        );
        assert_eq!(ev[0].alarm.id, "telemetry_spool_disk:influx");
        assert_eq!(ev[0].transition, AlarmTransition::Cleared);
        let msg = &a
            .active()
            .find(|a| a.id == "telemetry_dropped:influx")
            .expect("active")
            .message;
        assert!(
            msg.contains("2 because the InfluxDB spool reached its size bound"),
            "{msg}"
        );
        assert!(msg.contains("database is unreachable"), "{msg}");
    }

    #[test]
    fn damaged_spool_is_a_warning() {
        let mut a = SinkAlarms::default();
        let s = SinkStats {
            corrupt: 2,
            cursor_resets: 1,
            ..SinkStats::default()
        };
        let ev = a.update(Duration::from_secs(1), &s);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].alarm.id, "telemetry_spool_damaged:influx");
        assert!(
            ev[0].alarm.message.contains("2 damaged spool records"),
            "{}",
            ev[0].alarm.message
        );
        assert!(ev[0].alarm.message.contains("cursor"));
    }
}
