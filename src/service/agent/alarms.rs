//! The agent's alarms: the daemon's alarm model (`model::Alarm`, raised and cleared as
//! `AlarmEvent`s) and its MQTT payload (`alarms/events`, docs/mqtt.md), so one subscriber and
//! one dashboard serve daemons and agents alike.
//!
//! | id | severity | raised | cleared |
//! | --- | --- | --- | --- |
//! | `lease_expired:<host>` | warning | a cap lease ran out unrenewed; the guard holds the caps | the next lease |
//! | `gpu_at_slowdown:<host>/gpu<N>` | critical | the guard cut the GPU's cap at its slowdown margin | the guard is back at the original limit |
//! | `broker_lost:<host>` | warning | the MQTT session dropped | it is back |
//!
//! Each transition is logged once (a GPU at slowdown for minutes is one line, not one per
//! tick). Events wait in a bounded outbox while the broker is away and go out, in order and
//! with the time they happened, once it is back: that is how `broker_lost` itself is heard.

use crate::agent::{AgentEvent, GuardState};
use crate::link::mqtt::event_json;
use crate::model::{Alarm, AlarmEvent, AlarmTransition, Mono, Severity};
use std::collections::{BTreeMap, VecDeque};

/// Events kept while the broker is away, as the daemon's MQTT sink keeps (docs/mqtt.md); the
/// oldest are dropped beyond that, counted and logged.
const OUTBOX: usize = 1000;

pub(super) struct AgentAlarms {
    host: String,
    active: BTreeMap<String, Alarm>,
    /// Events with their wall time (Unix ns), not yet handed to the broker.
    outbox: VecDeque<(AlarmEvent, i64)>,
    /// Events since the last [`AgentAlarms::take_new`], for InfluxDB.
    new: Vec<(AlarmEvent, i64)>,
    /// The broker connection as last seen; `None` until the first connect.
    connected: Option<bool>,
    pub(super) dropped: u64,
}

impl AgentAlarms {
    pub(super) fn new(host: &str) -> AgentAlarms {
        AgentAlarms {
            host: host.to_string(),
            active: BTreeMap::new(),
            outbox: VecDeque::new(),
            new: Vec::new(),
            connected: None,
            dropped: 0,
        }
    }

    fn gpu_id(&self, index: u32) -> String {
        format!("gpu_at_slowdown:{}/gpu{index}", self.host)
    }

    fn raise(&mut self, now: Mono, wall_ns: i64, id: String, severity: Severity, message: String) {
        if self.active.contains_key(&id) {
            return;
        }
        tracing::error!(alarm = %id, severity = ?severity, "ALARM: {message}");
        let alarm = Alarm {
            id: id.clone(),
            severity,
            message,
            raised_at: now,
            latched: false,
            acknowledged: false,
            cause_present: true,
            causes: Vec::new(),
        };
        self.active.insert(id, alarm.clone());
        self.push(
            AlarmEvent {
                alarm,
                transition: AlarmTransition::Raised,
                at: now,
            },
            wall_ns,
        );
    }

    fn clear(&mut self, now: Mono, wall_ns: i64, id: &str) {
        let Some(mut alarm) = self.active.remove(id) else {
            return;
        };
        tracing::info!(alarm = %id, "alarm cleared: {}", alarm.message);
        alarm.cause_present = false;
        self.push(
            AlarmEvent {
                alarm,
                transition: AlarmTransition::Cleared,
                at: now,
            },
            wall_ns,
        );
    }

    fn push(&mut self, ev: AlarmEvent, wall_ns: i64) {
        if self.outbox.len() >= OUTBOX {
            self.outbox.pop_front();
            self.dropped += 1;
            crate::log_limited!(
                warn,
                "alarm outbox full while the broker is away; the oldest event was dropped"
            );
        }
        self.outbox.push_back((ev.clone(), wall_ns));
        self.new.push((ev, wall_ns));
    }

    /// Takes a transition raised elsewhere (the InfluxDB sink's `telemetry_*` alarms of
    /// `service::sink_alarms`, which raise and clear each alarm once themselves): logged
    /// and published like the agent's own.
    pub(super) fn external(&mut self, ev: AlarmEvent, wall_ns: i64) {
        match ev.transition {
            AlarmTransition::Raised => tracing::error!(
                alarm = %ev.alarm.id,
                severity = ?ev.alarm.severity,
                "ALARM: {}",
                ev.alarm.message
            ),
            _ => tracing::info!(alarm = %ev.alarm.id, "alarm cleared: {}", ev.alarm.message),
        }
        self.push(ev, wall_ns);
    }

    /// Takes the alarm transitions among the core's events; the others are not alarms.
    pub(super) fn on_event(&mut self, now: Mono, wall_ns: i64, ev: &AgentEvent) {
        let lease_id = format!("lease_expired:{}", self.host);
        match ev {
            AgentEvent::LeaseExpired { id } => self.raise(
                now,
                wall_ns,
                lease_id,
                Severity::Warning,
                format!(
                    "the controller's cap lease {id} ran out without renewal; the local guard holds the caps and raises them gradually"
                ),
            ),
            AgentEvent::LeaseAccepted { .. } | AgentEvent::LeaseRenewed { .. } => {
                self.clear(now, wall_ns, &lease_id)
            }
            AgentEvent::GuardCritical { index, margin, cap } => {
                let id = self.gpu_id(*index);
                self.raise(
                    now,
                    wall_ns,
                    id,
                    Severity::Critical,
                    format!(
                        "GPU {index} at its slowdown margin ({:.1} K left); the agent cut its cap to {:.0} W",
                        margin.0,
                        cap.get()
                    ),
                )
            }
            _ => {}
        }
    }

    /// Clears the slowdown alarm of each GPU whose guard let go.
    pub(super) fn guards(
        &mut self,
        now: Mono,
        wall_ns: i64,
        states: impl Iterator<Item = (u32, GuardState)>,
    ) {
        for (index, state) in states {
            if state == GuardState::Watching {
                let id = self.gpu_id(index);
                self.clear(now, wall_ns, &id);
            }
        }
    }

    /// Raises `broker_lost` when a session that was up drops, clears it when it is back.
    pub(super) fn broker(&mut self, now: Mono, wall_ns: i64, connected: bool) {
        let id = format!("broker_lost:{}", self.host);
        match (self.connected, connected) {
            (Some(true), false) => self.raise(
                now,
                wall_ns,
                id,
                Severity::Warning,
                "the MQTT broker connection is lost: readings are not published and no lease can arrive; the local guard protects the GPUs".into(),
            ),
            (Some(false), true) => self.clear(now, wall_ns, &id),
            _ => {}
        }
        if connected || self.connected.is_some() {
            self.connected = Some(connected);
        }
    }

    /// Hands waiting events to `publish` in order until it refuses one (not connected).
    pub(super) fn flush(&mut self, mut publish: impl FnMut(Vec<u8>) -> bool) {
        while let Some((ev, wall_ns)) = self.outbox.front() {
            if !publish(event_json(ev, *wall_ns)) {
                break;
            }
            self.outbox.pop_front();
        }
    }

    /// The transitions since the last call, for InfluxDB.
    pub(super) fn take_new(&mut self) -> Vec<(AlarmEvent, i64)> {
        std::mem::take(&mut self.new)
    }

    pub(super) fn active(&self) -> Vec<Alarm> {
        self.active.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{Kelvin, Watts};
    use std::time::Duration;

    fn critical(index: u32) -> AgentEvent {
        AgentEvent::GuardCritical {
            index,
            margin: Kelvin(0.5),
            cap: Watts(400.0),
        }
    }

    #[test]
    fn a_gpu_at_slowdown_for_many_ticks_is_one_alarm_until_the_guard_lets_go() {
        let mut a = AgentAlarms::new("node07");
        for t in 0..50 {
            a.on_event(Duration::from_secs(t), 0, &critical(3));
            a.guards(
                Duration::from_secs(t),
                0,
                [(3, GuardState::Critical)].into_iter(),
            );
        }
        let ev = a.take_new();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].0.alarm.id, "gpu_at_slowdown:node07/gpu3");
        assert_eq!(ev[0].0.alarm.severity, Severity::Critical);
        a.guards(
            Duration::from_secs(60),
            0,
            [(3, GuardState::Regulating)].into_iter(),
        );
        assert!(a.take_new().is_empty(), "still regulating: still active");
        a.guards(
            Duration::from_secs(90),
            0,
            [(3, GuardState::Watching)].into_iter(),
        );
        let ev = a.take_new();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0.transition, AlarmTransition::Cleared);
        assert!(a.active().is_empty());
    }

    #[test]
    fn broker_lost_waits_in_the_outbox_and_goes_out_in_order_once_back() {
        let mut a = AgentAlarms::new("h");
        a.broker(Duration::ZERO, 0, false);
        assert!(a.take_new().is_empty(), "never connected: nothing was lost");
        a.broker(Duration::from_secs(1), 1, true);
        a.broker(Duration::from_secs(2), 2, false);
        a.on_event(
            Duration::from_secs(3),
            3,
            &AgentEvent::LeaseExpired { id: 9 },
        );
        let mut sent = Vec::new();
        a.flush(|_| false);
        a.broker(Duration::from_secs(4), 4, true);
        a.flush(|b| {
            sent.push(String::from_utf8(b).expect("JSON"));
            true
        });
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert!(sent[0].contains("\"raised\"") && sent[0].contains("broker_lost:h"));
        assert!(sent[1].contains("lease_expired:h"));
        assert!(sent[2].contains("\"cleared\"") && sent[2].contains("broker_lost:h"));
        assert!(sent[0].contains("\"time_unix_ns\":2"), "{}", sent[0]);
    }
}
