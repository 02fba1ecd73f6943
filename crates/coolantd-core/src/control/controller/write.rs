//! One actuator's write bookkeeping, shared by the pump loop and the power-cap loop: what was
//! sent and not yet answered, what the device acknowledged, failures in a row, forced
//! re-writes (after a failure or a read-back that shows our value was overridden), periodic
//! re-assertion, and whether the last acknowledgement was only a dry run.
//!
//! The rule for permanent errors: an outcome whose [`ActuationError::is_permanent`] is true
//! (NVML `NotSupported`, a GPU this host does not have) cannot succeed on a retry, so the
//! tracker remembers it and asks for no further write of that actuator; the loop alarms it
//! once (the alarm stays raised while it lasts). Only a reconfiguration (SIGHUP reload) clears
//! it, because only a changed configuration or inventory can make the write possible again.

use crate::model::{ActuationError, Mono};

#[derive(Debug, Clone, Default)]
pub(super) struct WriteTracker {
    /// The last value the device acknowledged, and the time of that acknowledgement.
    acked: Option<f64>,
    acked_at: Mono,
    /// Sent, outcome not known yet.
    in_flight: Option<f64>,
    last_sent_at: Option<Mono>,
    /// Write on the next chance even if the value did not move.
    force: bool,
    /// Failed writes in a row.
    failures: u32,
    /// The last acknowledgement was a dry run: nothing reached the device.
    dry_run: bool,
    /// Why the device can never take this write (a permanent error), until reconfigured.
    unsupported: Option<String>,
}

/// When a write is due.
#[derive(Debug, Clone, Copy)]
pub(super) struct WritePolicy {
    /// A change smaller than this is not written.
    pub deadband: f64,
    /// What the device holds before our first acknowledged write (`None`: unknown, write).
    pub device_default: Option<f64>,
    /// Re-send the value at least this often, seconds (`None`: only on change).
    pub refresh_s: Option<f64>,
}

impl WriteTracker {
    pub fn acked(&self) -> Option<f64> {
        self.acked
    }

    pub fn acked_at(&self) -> Mono {
        self.acked_at
    }

    pub fn in_flight(&self) -> Option<f64> {
        self.in_flight
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Why the device cannot take this write at all, if it said so.
    pub fn unsupported(&self) -> Option<&str> {
        self.unsupported.as_deref()
    }

    /// Nothing of ours was ever sent or acknowledged.
    pub fn untouched(&self) -> bool {
        self.acked.is_none() && self.in_flight.is_none()
    }

    /// The value the device holds or is about to hold because of us.
    pub fn ours(&self) -> Option<f64> {
        self.acked.or(self.in_flight)
    }

    /// True when writes fail `threshold` times in a row or cannot succeed at all.
    pub fn failing(&self, threshold: u32) -> bool {
        self.failures >= threshold || self.unsupported.is_some()
    }

    /// Records the outcome of a write of `value` finished at `at`.
    pub fn on_outcome(
        &mut self,
        value: f64,
        at: Mono,
        result: &Result<(), ActuationError>,
        dry_run: bool,
    ) {
        self.in_flight = None;
        match result {
            Ok(()) => {
                self.acked = Some(value);
                self.acked_at = at;
                self.failures = 0;
                self.dry_run = dry_run;
                self.unsupported = None;
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                if e.is_permanent() {
                    self.unsupported = Some(e.to_string());
                } else {
                    self.force = true;
                }
            }
        }
    }

    /// Asks for a write on the next chance, e.g. after a read-back showed our value overridden.
    pub fn force(&mut self) {
        self.force = true;
    }

    /// Forgets a permanent error: the next `due` may write again (reconfiguration only).
    pub fn retry_unsupported(&mut self) {
        if self.unsupported.take().is_some() {
            self.failures = 0;
        }
    }

    /// Whether `desired` should be written now.
    pub fn due(&self, now: Mono, desired: f64, policy: &WritePolicy) -> bool {
        if self.unsupported.is_some() {
            return false;
        }
        let far = match self.in_flight.or(self.acked).or(policy.device_default) {
            None => true,
            Some(base) => (desired - base).abs() >= policy.deadband,
        };
        let stale = policy.refresh_s.is_some_and(|r| {
            let due_at = now.saturating_sub(Mono::from_secs_f64(r));
            self.last_sent_at.is_none_or(|t| t <= due_at)
        });
        self.force || far || stale
    }

    /// Records that `value` was handed to the shell at `now`.
    pub fn sent(&mut self, now: Mono, value: f64) {
        self.in_flight = Some(value);
        self.last_sent_at = Some(now);
        self.force = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const POLICY: WritePolicy = WritePolicy {
        deadband: 1.0,
        device_default: None,
        refresh_s: None,
    };

    fn s(n: u64) -> Mono {
        Duration::from_secs(n)
    }

    #[test]
    fn transient_failure_is_retried_at_once() {
        let mut w = WriteTracker::default();
        assert!(w.due(s(0), 50.0, &POLICY));
        w.sent(s(0), 50.0);
        assert!(!w.due(s(0), 50.0, &POLICY));
        w.on_outcome(
            50.0,
            s(1),
            &Err(ActuationError::Failed("timeout".into())),
            false,
        );
        assert!(w.due(s(1), 50.0, &POLICY), "a failed write is forced again");
        assert_eq!(w.failures(), 1);
        w.sent(s(1), 50.0);
        w.on_outcome(50.0, s(2), &Ok(()), false);
        assert_eq!((w.failures(), w.acked()), (0, Some(50.0)));
        assert!(!w.due(s(2), 50.5, &POLICY), "inside the deadband");
        assert!(w.due(s(2), 51.0, &POLICY));
    }

    #[test]
    fn permanent_failure_stops_writes_until_reconfigured() {
        let mut w = WriteTracker::default();
        w.sent(s(0), 300.0);
        let not_supported = Err(ActuationError::NotSupported("power limit".into()));
        w.on_outcome(300.0, s(1), &not_supported, false);
        assert!(
            w.failing(3),
            "an actuator that cannot be written counts as failing"
        );
        assert!(w.unsupported().is_some_and(|m| m.contains("power limit")));
        for t in 1..100 {
            assert!(!w.due(s(t), 250.0 + t as f64, &POLICY), "tick {t}");
        }
        let refresh = WritePolicy {
            refresh_s: Some(1.0),
            ..POLICY
        };
        assert!(!w.due(s(200), 250.0, &refresh), "not even re-asserted");
        w.retry_unsupported();
        assert!(w.unsupported().is_none());
        assert!(w.due(s(201), 250.0, &POLICY), "a reload tries once more");
    }

    #[test]
    fn refresh_re_sends_an_unchanged_value() {
        let mut w = WriteTracker::default();
        let p = WritePolicy {
            refresh_s: Some(10.0),
            ..POLICY
        };
        w.sent(s(100), 40.0);
        w.on_outcome(40.0, s(100), &Ok(()), false);
        assert!(!w.due(s(109), 40.0, &p));
        assert!(w.due(s(110), 40.0, &p));
    }
}
