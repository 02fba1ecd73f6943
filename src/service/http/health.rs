//! What `/healthz` and `/readyz` decide: liveness from the tick's heartbeat (atomics the run
//! loop writes every tick and the endpoint reads), and readiness from the latest snapshot.

use super::*;

/// Liveness and self-metrics, shared between the run loop (writer) and the endpoint (reader).
/// Every update is a few relaxed atomic stores, cheap enough to do on every tick.
#[derive(Debug)]
pub struct Health {
    pub(super) started: Instant,
    /// The control period in ns; a reload may change it.
    pub(super) period_ns: AtomicU64,
    /// Microseconds after `started` of the last healthy tick, plus one; 0 means never.
    pub(super) last_tick_us: AtomicU64,
    pub(super) ticks: AtomicU64,
    pub(super) last_tick_duration_ns: AtomicU64,
    pub(super) max_tick_duration_ns: AtomicU64,
    pub(super) ready: AtomicBool,
    /// HTTP connections closed to make room for a new one.
    pub(super) http_shed: AtomicU64,
    /// HTTP connections closed for a slow request head or silence.
    pub(super) http_timed_out: AtomicU64,
    pub(super) stopping: AtomicBool,
}

/// What `/healthz` decides, with the reason for a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    NoTickYet,
    Stale { age: Duration, limit: Duration },
}

impl Health {
    /// `period` is the control loop's tick period; the loop counts as stuck after three
    /// periods without a healthy tick.
    pub fn new(period: Duration) -> Self {
        Self::with_start(period, Instant::now())
    }

    /// Like [`Health::new`], with an explicit start instant (for tests).
    pub fn with_start(period: Duration, started: Instant) -> Self {
        Health {
            started,
            period_ns: AtomicU64::new(u64::try_from(period.as_nanos()).unwrap_or(u64::MAX)),
            last_tick_us: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            last_tick_duration_ns: AtomicU64::new(0),
            max_tick_duration_ns: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            http_shed: AtomicU64::new(0),
            http_timed_out: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// The control period in effect.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period_ns.load(Ordering::Relaxed))
    }

    /// Takes a new control period (a reload changed `control.period_ms`).
    pub fn set_period(&self, period: Duration) {
        let ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        self.period_ns.store(ns, Ordering::Relaxed);
    }

    /// Records a healthy control tick that ended now and took `duration`.
    pub fn tick(&self, duration: Duration) {
        self.tick_at(Instant::now(), duration);
    }

    /// Records a healthy control tick that ended at `at`.
    pub fn tick_at(&self, at: Instant, duration: Duration) {
        let us = at.saturating_duration_since(self.started).as_micros();
        let us = u64::try_from(us).unwrap_or(u64::MAX - 1) + 1;
        self.last_tick_us.store(us, Ordering::Relaxed);
        self.ticks.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.last_tick_duration_ns.store(ns, Ordering::Relaxed);
        self.max_tick_duration_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Marks the daemon as started (endpoint bound, inputs opened) or as shutting down.
    /// `/readyz` also needs `Snapshot.ready`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks the daemon as leaving: `/readyz` says so instead of reporting the last state.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.ready.store(false, Ordering::Relaxed);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Healthy ticks recorded so far.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Whether the loop ticked within the last three periods, as of `now`.
    pub fn liveness(&self, now: Instant) -> Liveness {
        match self.last_tick_us.load(Ordering::Relaxed) {
            0 => Liveness::NoTickYet,
            us => {
                let last = self.started + Duration::from_micros(us - 1);
                let age = now.saturating_duration_since(last);
                let stale_after = self.period() * DEFAULT_STALE_PERIODS;
                if age <= stale_after {
                    Liveness::Alive
                } else {
                    Liveness::Stale {
                        age,
                        limit: stale_after,
                    }
                }
            }
        }
    }

    pub(super) fn last_tick_age(&self, now: Instant) -> Option<Duration> {
        match self.last_tick_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(now.saturating_duration_since(self.started + Duration::from_micros(us - 1))),
        }
    }
}

/// Why the daemon is not ready, or `None` when it is. The first words name the situation
/// (`booting`, `failsafe`, `emergency`, `no inputs`, `stopping`), then the causes.
pub(super) fn not_ready_reason(snap: &Snapshot, health: &Health, now: Instant) -> Option<String> {
    if health.is_stopping() {
        return Some("stopping: outputs are going to their safe state".into());
    }
    if !health.is_ready() {
        return Some("booting: the first control tick has not completed".into());
    }
    match health.liveness(now) {
        Liveness::Alive => {}
        Liveness::NoTickYet => {
            return Some("booting: the control loop has not completed a tick yet".into())
        }
        Liveness::Stale { age, .. } => {
            return Some(format!(
                "control loop stuck: last healthy tick {:.1} s ago",
                age.as_secs_f64()
            ))
        }
    }
    if snap.ready {
        return None;
    }
    if snap.cdus.is_empty() && snap.gpus.is_empty() {
        return Some("no inputs: no GPU and no CDU reading".into());
    }
    let headline_alarm = |prefix: &str| {
        snap.alarms
            .iter()
            .filter(|a| a.cause_present && a.id.starts_with(prefix))
            .map(|a| a.message.clone())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut reason = match snap.state {
        ControlState::Boot => "booting: waiting for every required input to be valid".to_string(),
        ControlState::Failsafe => format!("failsafe: {}", headline_alarm("failsafe:")),
        ControlState::Emergency => "emergency".to_string(),
        other => format!("not every required input is valid (control state: {other})"),
    };
    for cdu in &snap.cdus {
        for fault in summarize_faults(&fault_lines(&cdu.faults)) {
            let _ = write!(reason, "; cdu {}: {fault}", cdu.name);
        }
    }
    for alarm in snap.alarms.iter().filter(|a| {
        a.cause_present && !(snap.state == ControlState::Failsafe && a.id.starts_with("failsafe:"))
    }) {
        let _ = write!(reason, "; alarm {}: {}", alarm.id, alarm.message);
    }
    Some(reason)
}
