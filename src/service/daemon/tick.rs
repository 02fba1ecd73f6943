//! One control tick, as four named steps: **collect** (ask every CDU's poller for a poll,
//! read the GPUs, wait for the polls within the budget) → **decide** (operator commands,
//! the control core, the telemetry path's alarms) → **actuate** (`actuate.rs`, the only
//! place that writes to hardware) → **publish** (alarm lines, the loop's own alarms, metric
//! points, the snapshot to the sinks and `/status`).
//!
//! Time comes in as one [`Now`] value that the caller reads (the run loop, or a test that
//! steps simulated time); the steps read no clock. Only [`Daemon::tick`] around them measures
//! its own duration, from `Now::started`, for the overrun alarm.

use super::links::slow_cdu_message;
use super::{cdu_status, gpu_status, Daemon};
use crate::control::TickInput;
use crate::model::{
    CduLinkStatus, CduSample, CduStatus, GpuSample, GpuSlowSample, Mono, Point, Snapshot,
    TickOutput, TickTiming,
};
use crate::service::cdu_link::Polled;
use crate::sink::schema::{self, Ctx};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The time one tick runs at, read once by its caller and passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic (plant) time: what the control core steers and ages samples by. The service
    /// derives it from a monotonic clock × `simulator.time_scale`; tests step it.
    pub mono: Mono,
    /// Wall-clock time: only for metric timestamps and the snapshot.
    pub wall: SystemTime,
    /// The real instant the tick starts: the CDUs' budget and the tick's own duration
    /// (overrun alarm) are measured from it, because they are about real IO, not plant time.
    pub started: Instant,
}

impl Now {
    /// Wall time in nanoseconds since the Unix epoch, as metric points carry it.
    pub fn wall_ns(&self) -> i64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    }
}

impl From<Mono> for Now {
    /// Plant time from a caller that steps it itself (the closed-loop tests); the wall clock
    /// and the start instant are read here, at the call, not inside the tick.
    fn from(mono: Mono) -> Now {
        Now {
            mono,
            wall: SystemTime::now(),
            started: Instant::now(),
        }
    }
}

/// What the collect step gathered for one tick.
pub(super) struct Collected {
    /// One sample per GPU of the inventory (an empty one for a GPU that did not answer).
    pub(super) gpus: Vec<GpuSample>,
    /// The newest sample of each CDU; the core judges its age (`max_sample_age_ms`).
    pub(super) cdus: Vec<CduSample>,
    /// Polls completed since the last tick, each written once as a point.
    pub(super) fresh_polls: Vec<Polled>,
}

impl Daemon {
    /// One whole cycle at `now`: collect → decide → actuate → publish. It waits for the CDUs
    /// at most [`Daemon::cdu_budget`] from `now.started`; a poll or write that takes longer
    /// finishes in the background and a later tick uses its result.
    pub async fn tick(&mut self, now: impl Into<Now>) -> Arc<Snapshot> {
        let now = now.into();
        let deadline = tokio::time::Instant::from_std(now.started) + self.cdu_budget();
        let inputs = self.collect(now, deadline).await;
        let mut out = self.decide(now, &inputs);
        self.actuate(now, &out, &inputs.gpus, deadline).await;
        let snap = self.publish(now, &inputs, &mut out);
        self.account_duration(now.started.elapsed());
        snap
    }

    /// The collect step: asks every CDU for a poll first, so that it runs while the GPUs are
    /// read, then waits for the polls until `deadline`.
    async fn collect(&mut self, now: Now, deadline: tokio::time::Instant) -> Collected {
        let wall_ns = now.wall_ns();
        self.drain_reports();
        for (link, st) in self.links.iter().zip(self.link_state.iter_mut()) {
            match link.request_poll(now.mono, wall_ns) {
                Ok(()) => st.poll_pending = Some(now.mono),
                Err(e) => tracing::error!(error = %e, "CDU poll not requested"),
            }
        }
        let mut gpus: Vec<GpuSample> = match &self.gpus {
            Some(g) => g.read_fast(now.mono),
            None => Vec::new(),
        };
        // A GPU of the inventory that the backend did not return at all (fallen off the bus)
        // is a lost reading now, as an empty sample makes it; without this the core would keep
        // steering on its last reading until that went stale (max_sample_age_ms), well past
        // the 2 ticks in which a lost input must reach its safe state.
        for st in &self.inventory {
            if !gpus.iter().any(|s| s.key == st.key) {
                // The source only labels the sample; with no sample at all, guess from the backend.
                let source = gpus.first().map_or(self.default_source(), |s| s.source);
                gpus.push(GpuSample::empty(st.key.clone(), source, now.mono));
            }
        }
        // The GPUs of other hosts, as heard since the last tick; their facts, when new, join
        // the controller's inventory.
        // A rack controller waits at most its decision offset again for late readings, so a
        // decision comes no later than twice the offset after the agents' boundary.
        let rack_wait = self.rack_phase().unwrap_or_default();
        if let Some(rack) = self.rack.as_mut() {
            rack.wait_round(&now, rack_wait).await;
            let remote = rack.collect(now);
            if let Some((statics, originals)) = remote.statics_changed {
                let all: Vec<_> = self.inventory.iter().cloned().chain(statics).collect();
                super::set_plate_models(
                    &mut self.controller,
                    &self.cfg,
                    &self.host,
                    &self.gpu_profiles,
                    &all,
                );
                self.controller.set_gpus(all);
                for (gpu, limit) in originals {
                    self.controller.set_original_limit(&gpu, limit);
                }
            }
            gpus.extend(remote.samples);
            self.outcomes.extend(rack.take_outcomes());
        }
        self.wait_cdus(deadline, |st| st.poll_pending.is_none())
            .await;
        for st in &mut self.link_state {
            st.late = st.poll_pending.is_some();
            if st.late {
                st.late_polls += 1;
            }
        }
        let cdus: Vec<CduSample> = self
            .link_state
            .iter()
            .filter_map(|st| st.latest.as_ref().map(|p| p.sample.clone()))
            .collect();
        let fresh_polls: Vec<Polled> = self
            .link_state
            .iter_mut()
            .flat_map(|st| std::mem::take(&mut st.fresh))
            .collect();
        Collected {
            gpus,
            cdus,
            fresh_polls,
        }
    }

    /// The decide step: operator commands, then the control core on the collected samples and
    /// the actuation outcomes known so far; the telemetry path's own alarms travel with the
    /// core's.
    fn decide(&mut self, now: Now, inputs: &Collected) -> TickOutput {
        self.handle_commands(now.mono);
        let outcomes = std::mem::take(&mut self.outcomes);
        let mut out = self.controller.tick(&TickInput {
            now: now.mono,
            gpus: &inputs.gpus,
            cdus: &inputs.cdus,
            outcomes: &outcomes,
        });
        if let Some(influx) = &self.influx {
            out.events
                .extend(self.sink_alarms.update(now.mono, &influx.stats()));
            out.active_alarms.extend(self.sink_alarms.active().cloned());
        }
        out
    }

    /// The publish step: logs the alarm transitions, adds the loop's own alarms (overrun,
    /// slow CDUs), turns everything into metric points for InfluxDB and publishes the
    /// snapshot (MQTT, Sparkplug, `/status`).
    fn publish(&mut self, now: Now, inputs: &Collected, out: &mut TickOutput) -> Arc<Snapshot> {
        for e in &out.events {
            tracing::warn!(alarm = %e.alarm.id, transition = ?e.transition, severity = ?e.alarm.severity, "{}", e.alarm.message);
        }
        self.add_loop_alarms(now, out);
        let cdus = self.cdu_statuses(now);
        let points = self.points(now, inputs, out, &cdus);
        let wall_ns = now.wall_ns();
        self.tick += 1;
        let snap = Arc::new(Snapshot {
            site: self.cfg.site.name.clone(),
            host: self.host.clone(),
            time_ns: wall_ns,
            tick: self.tick,
            dry_run: self.dry_run,
            mode: out.mode,
            state: out.state,
            setpoint: out.setpoint.0,
            controlled: out.controlled.map(|c| c.0),
            ready: out.ready,
            cdus,
            gpus: inputs
                .gpus
                .iter()
                .filter_map(|s| {
                    gpu_status(&self.inventory, s)
                        .or_else(|| gpu_status(self.rack.as_ref()?.statics(), s))
                })
                .collect(),
            alarms: out.active_alarms.clone(),
            decisions: out.actuations.clone(),
            points,
            rack: self.rack.as_ref().map(|r| r.status(now.mono)),
        });
        if let Some(m) = &self.mqtt {
            for e in &out.events {
                m.publish_event(e);
            }
            m.publish_snapshot(&snap);
        }
        if let Some(s) = &self.sparkplug {
            s.publish_snapshot(&snap);
        }
        self.snapshot_tx.send_replace(snap.clone());
        self.last = Some(snap.clone());
        snap
    }

    /// The loop's own alarms: the previous tick against the period, each CDU against the
    /// tick's budget.
    fn add_loop_alarms(&mut self, now: Now, out: &mut TickOutput) {
        let wall_period = self.wall_period();
        let budget = self.cdu_budget();
        let overrun = self.last_tick_took.filter(|d| *d > wall_period).map(|d| {
            format!(
                "a control tick took {} ms, longer than its {} ms period ({} overruns since start)",
                d.as_millis(),
                wall_period.as_millis(),
                self.overruns
            )
        });
        let max_age_ms = self.cfg.control.max_sample_age_ms;
        let slow: Vec<(String, Option<String>)> = self
            .links
            .iter()
            .zip(&self.link_state)
            .map(|(l, st)| {
                // A CDU that has never answered is not slow but unreachable, which the core
                // reports (and a first poll that includes the connection may run late).
                let why = match (&st.latest, st.late) {
                    (Some(p), true) => Some(slow_cdu_message(l, p, now.mono, budget, max_age_ms)),
                    _ => None,
                };
                (l.name().to_string(), why)
            })
            .collect();
        let loop_events = self.loop_alarms.update(now.mono, overrun, slow);
        for e in &loop_events {
            tracing::warn!(alarm = %e.alarm.id, transition = ?e.transition, severity = ?e.alarm.severity, "{}", e.alarm.message);
        }
        out.events.extend(loop_events);
        out.active_alarms.extend(self.loop_alarms.active().cloned());
        if let Some(rack) = self.rack.as_mut() {
            let events = rack.alarms(now.mono);
            for e in &events {
                tracing::warn!(alarm = %e.alarm.id, transition = ?e.transition, severity = ?e.alarm.severity, "{}", e.alarm.message);
            }
            out.events.extend(events);
            out.active_alarms.extend(rack.active().cloned());
        }
    }

    /// Each CDU's status with its link's health, for the snapshot and the link points.
    fn cdu_statuses(&self, now: Now) -> Vec<CduStatus> {
        self.link_state
            .iter()
            .filter_map(|st| {
                let p = st.latest.as_ref()?;
                let mut c = cdu_status(&p.sample);
                c.link = CduLinkStatus {
                    sample_age_ms: Some(now.mono.saturating_sub(p.sample.at).as_secs_f64() * 1e3),
                    poll_ms: Some(p.took.as_secs_f64() * 1e3),
                    late: st.late,
                    late_polls: st.late_polls,
                    superseded_writes: st.superseded,
                    requests: p.requests,
                    timeouts: p.timeouts,
                };
                Some(c)
            })
            .collect()
    }

    /// Everything of this tick as metric points, handed to InfluxDB (which spools them).
    fn points(
        &self,
        now: Now,
        inputs: &Collected,
        out: &TickOutput,
        cdus: &[CduStatus],
    ) -> Vec<Point> {
        let wall_ns = now.wall_ns();
        let ctx = Ctx {
            site: &self.cfg.site.name,
            host: &self.host,
        };
        let mut points = Vec::with_capacity(inputs.gpus.len() + inputs.cdus.len() + 6);
        for s in &inputs.gpus {
            if let Some(st) = self.inventory.iter().find(|st| st.key == s.key) {
                points.push(schema::gpu_point(&ctx, st, s, wall_ns));
            }
        }
        let slow: Vec<GpuSlowSample> = self
            .slow
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for s in &slow {
            if let Some(st) = self.inventory.iter().find(|st| st.key == s.key) {
                points.push(schema::gpu_slow_point(&ctx, st, s, wall_ns));
            }
        }
        // Each poll is written once, stamped with the wall time it started.
        for p in &inputs.fresh_polls {
            points.push(schema::cdu_point(&ctx, &p.sample, p.wall_ns));
        }
        for c in cdus {
            points.push(schema::cdu_link_point(&ctx, c, wall_ns));
        }
        let wall_period = self.wall_period();
        let budget = self.cdu_budget();
        points.push(schema::tick_point(
            &ctx,
            &TickTiming {
                duration_ms: self.last_tick_took.map(|d| d.as_secs_f64() * 1e3),
                period_ms: wall_period.as_secs_f64() * 1e3,
                cdu_budget_ms: budget.as_secs_f64() * 1e3,
                overruns: self.overruns,
            },
            wall_ns,
        ));
        points.extend(schema::control_points(&ctx, out, wall_ns));
        if let Some(rack) = &self.rack {
            for h in &rack.status(now.mono).hosts {
                points.push(schema::rack_host_point(&ctx, h, wall_ns));
            }
        }
        for e in &out.events {
            points.push(schema::alarm_point(&ctx, e, wall_ns));
        }
        if let Some(influx) = &self.influx {
            points.push(schema::telemetry_point(&ctx, &influx.stats(), wall_ns));
            influx.submit(&points);
        }

        points
    }

    /// Counts an overrun when the tick took longer than its period; the next tick's
    /// `tick_overrun` alarm and timing point report it.
    fn account_duration(&mut self, took: Duration) {
        let wall_period = self.wall_period();
        if took > wall_period {
            self.overruns += 1;
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                period_ms = wall_period.as_millis() as u64,
                "control tick overran its period"
            );
        }
        self.last_tick_took = Some(took);
    }

    /// Operator commands (MQTT, Sparkplug NCMD) that arrived since the last tick, judged by
    /// the core at `now`.
    fn handle_commands(&mut self, now: Mono) {
        if let Some(rx) = self.commands.as_mut() {
            while let Ok(req) = rx.try_recv() {
                let outcome = self.controller.command(now, &req.command);
                tracing::info!(command = ?req.command, correlation_id = ?req.correlation_id, outcome = ?outcome, "operator command");
                if let Some(m) = &self.mqtt {
                    m.reply(req.correlation_id.as_deref(), &outcome);
                }
            }
        }
        // Sparkplug NCMDs go to the same core method, so they are judged by the same rules.
        if let Some(rx) = self.sparkplug_commands.as_mut() {
            while let Ok(req) = rx.try_recv() {
                let outcome = self.controller.command(now, &req.command);
                tracing::info!(command = ?req.command, metric = ?req.correlation_id, outcome = ?outcome, "operator command (Sparkplug NCMD)");
                if let Some(s) = &self.sparkplug {
                    s.reply(&req, &outcome);
                }
            }
        }
    }
}
