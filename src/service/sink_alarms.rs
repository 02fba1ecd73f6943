//! Alarms about the telemetry path itself. The control core knows nothing of sinks, so the
//! shell raises these: points dropped because the spool's bound was reached (data lost), and
//! batches the database rejected (data set aside in the dead-letter file).

use crate::model::{Alarm, AlarmEvent, AlarmTransition, Mono, Severity};
use crate::sink::influx::SinkStats;
use std::time::Duration;

/// An alarm clears once its counter has not grown for this long: long enough for an
/// operator to see it on a dashboard, short enough not to hide a new incident behind it.
const CLEAR_AFTER: Duration = Duration::from_secs(600);

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
            |n| {
                format!("{n} metric points dropped: the InfluxDB spool reached its size bound while the database was unreachable")
            },
            &mut events,
        );
        step(
            &mut self.rejected,
            stats.rejected,
            now,
            "telemetry_rejected:influx",
            Severity::Warning,
            |n| {
                format!(
                    "{n} metric points rejected by InfluxDB; they are kept in the dead-letter file"
                )
            },
            &mut events,
        );
        events
    }

    /// The alarms active now.
    pub fn active(&self) -> impl Iterator<Item = &Alarm> {
        self.dropped
            .active
            .iter()
            .chain(self.rejected.active.iter())
    }
}

fn step(
    c: &mut Counter,
    value: u64,
    now: Mono,
    id: &str,
    severity: Severity,
    message: impl Fn(u64) -> String,
    events: &mut Vec<AlarmEvent>,
) {
    if value > c.seen {
        c.last_growth = Some(now);
        let alarm = Alarm {
            id: id.to_string(),
            severity,
            message: message(value),
            raised_at: c.active.as_ref().map_or(now, |a| a.raised_at),
            latched: false,
            acknowledged: false,
            cause_present: true,
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
}
