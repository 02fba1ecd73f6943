//! The controller: plausibility → supervisor → pump loops → power-cap loops → actuations.
//!
//! Its parts: `inputs` (the newest samples and their gates), `pump` (one loop per CDU), `cap`
//! (one loop per GPU), `write` (the write bookkeeping both loops share), `raise` (which
//! conditions raise which alarms). This module holds the public [`Controller`] and the order
//! of one tick.

mod cap;
mod inputs;
mod pump;
mod raise;
mod write;

use super::alarms::{AlarmBook, AlarmId};
use super::config::{ControlConfig, OnShutdown};
use super::feedforward::{PlateModel, PowerReading};
use super::plausibility::dew_point;
use super::supervisor::{Causes, FailsafeCause, Supervisor};
use super::{CduSetup, TickInput};
use crate::model::{
    Actuation, ActuationOutcome, CduSample, Command, CommandOutcome, ControlState, GpuKey,
    GpuSample, GpuStatic, LoopReport, Mode, Mono, RejectKind, Severity, TickOutput,
};
use crate::units::{Celsius, Percent, Watts};
use cap::{CapLoop, CduView};
use inputs::{fresh, CduInputs, CduReadings, GpuInput};
use pump::{pump_params, pump_range, PumpInput, PumpLoop};
use std::collections::BTreeMap;

/// One GPU as the controller sees it: its inputs, and its cap loop once its limits are known.
#[derive(Debug, Clone)]
struct GpuCtl {
    input: GpuInput,
    cap: Option<CapLoop>,
}

impl GpuCtl {
    fn new(cfg: &ControlConfig, st: Option<GpuStatic>) -> GpuCtl {
        GpuCtl {
            cap: st.as_ref().map(|s| CapLoop::new(cfg, s)),
            input: GpuInput::new(st),
        }
    }
}

/// One CDU as the controller sees it.
#[derive(Debug, Clone)]
struct CduCtl {
    setup: CduSetup,
    inputs: CduInputs,
    sup: Supervisor,
    /// Why the CDU is (or would be) in failsafe this tick.
    causes: Vec<FailsafeCause>,
    /// The CDU runs itself: nothing is written to it.
    local: bool,
    pump: PumpLoop,
}

impl CduCtl {
    fn new(cfg: &ControlConfig, setup: CduSetup) -> CduCtl {
        CduCtl {
            pump: PumpLoop::new(cfg, &setup),
            setup,
            inputs: CduInputs::default(),
            sup: Supervisor::default(),
            causes: Vec::new(),
            local: false,
        }
    }
}

/// The GPUs of one CDU, condensed for its pump loop.
#[derive(Debug, Default)]
struct CduGpus {
    /// The controlled variable: the hottest GPU's core-equivalent temperature.
    controlled: Option<f64>,
    /// The GPU it came from.
    driver: Option<String>,
    /// GPUs of the inventory without a usable core temperature.
    lost: Vec<String>,
    /// GPUs at their thermal limit.
    hot: Vec<String>,
}

/// What every part of one tick shares.
#[derive(Debug, Clone, Copy)]
struct TickCtx {
    now: Mono,
    /// Seconds since the previous tick (bounded), the period on the first.
    dt: f64,
    /// Start-up alarm suppression is on.
    suppress: bool,
    setpoint: f64,
}

/// The pure control core. See the module documentation of `supervisor` for the states.
#[derive(Debug, Clone)]
pub struct Controller {
    cfg: ControlConfig,
    setpoint: f64,
    mode: Mode,
    manual_speed: Option<f64>,
    cdus: Vec<CduCtl>,
    gpus: BTreeMap<GpuKey, GpuCtl>,
    alarms: AlarmBook,
    started: Option<Mono>,
    last_tick: Option<Mono>,
}

impl Controller {
    pub fn new(cfg: &ControlConfig, cdus: Vec<CduSetup>, gpus: Vec<GpuStatic>) -> Controller {
        let mut c = Controller {
            cfg: cfg.clone(),
            setpoint: cfg.setpoint,
            mode: Mode::Auto,
            manual_speed: None,
            cdus: cdus.into_iter().map(|s| CduCtl::new(cfg, s)).collect(),
            gpus: BTreeMap::new(),
            alarms: AlarmBook::default(),
            started: None,
            last_tick: None,
        };
        c.set_gpus(gpus);
        c
    }

    /// Gives a CDU's pump loop the plate model of its GPUs (from their profile's `[thermal]`),
    /// which the heat-load feed-forward needs; `None` switches the feed-forward off.
    pub fn set_plate_model(&mut self, cdu: &str, model: Option<PlateModel>) {
        for c in self.cdus.iter_mut().filter(|c| c.setup.name == cdu) {
            c.pump.set_plate_model(model);
        }
    }

    /// Gives a CDU's pump loop the loop model of its GPUs for gain scheduling
    /// (`[control.pid] gain_schedule`); `None`: the configured gains.
    pub fn set_loop_model(&mut self, cdu: &str, model: Option<crate::control::tuning::LoopModel>) {
        for c in self.cdus.iter_mut().filter(|c| c.setup.name == cdu) {
            c.pump.set_loop_model(model);
        }
    }

    /// The newest power reading of each GPU on CDU `i`, for the feed-forward: this host's
    /// inventory, and other hosts' GPUs while their readings arrive (they are forgotten once
    /// stale, see `ingest_gpus`).
    fn cdu_powers(&self, i: usize) -> Vec<PowerReading> {
        let hosts = &self.cdus[i].setup.hosts;
        self.gpus
            .iter()
            .filter(|(k, _)| hosts.contains(&k.host))
            .map(|(k, g)| PowerReading {
                gpu: k.to_string(),
                power: g.input.latest.as_ref().and_then(|s| {
                    // The instantaneous power: the averaged one lags a step by about a second.
                    s.power_instant.or(s.power_average).map(|w| (w.get(), s.at))
                }),
            })
            .collect()
    }

    /// The controlled variable of CDU `i` from its GPUs, and which GPUs are lost or hot.
    fn cdu_gpus(&self, i: usize) -> CduGpus {
        let hosts = &self.cdus[i].setup.hosts;
        let mut out = CduGpus::default();
        for (k, g) in self.gpus.iter().filter(|(k, _)| hosts.contains(&k.host)) {
            let g = &g.input;
            if let Some(v) = g.equiv {
                if out.controlled.is_none_or(|m| v > m) {
                    out.driver = Some(k.to_string());
                }
                out.controlled = Some(out.controlled.map_or(v, |m| m.max(v)));
            }
            if g.lost.is_some() && g.st.is_some() {
                out.lost.push(k.to_string());
            }
            if g.hot {
                out.hot.push(k.to_string());
            }
        }
        out
    }

    pub fn setpoint(&self) -> Celsius {
        Celsius(self.setpoint)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The worst state over all CDUs (or of the GPUs alone on a host without CDUs).
    pub fn state(&self) -> ControlState {
        let gpu_only = if self.gpus.values().any(|g| g.input.hot) {
            ControlState::Emergency
        } else {
            ControlState::Running
        };
        self.cdus
            .iter()
            .map(|c| c.sup.state())
            .max()
            .unwrap_or(gpu_only)
    }

    /// The limit a GPU's cap returns to (found at start-up), for the shell to record.
    pub fn original_limit(&self, gpu: &GpuKey) -> Option<Watts> {
        self.gpus
            .get(gpu)
            .and_then(|g| g.cap.as_ref())
            .map(|c| Watts(c.original))
    }

    /// Restores an original limit the shell recorded before a restart, so that caps left by
    /// a previous run are not mistaken for the GPU's own limit.
    pub fn set_original_limit(&mut self, gpu: &GpuKey, limit: Watts) {
        let cfg = &self.cfg;
        if let Some(g) = self.gpus.get_mut(gpu) {
            if let (Some(st), Some(cap)) = (&g.input.st, &mut g.cap) {
                if limit.is_finite() {
                    cap.set_original(cfg, st, limit.get());
                }
            }
        }
    }

    /// A reload changed the hosts a CDU cools (a rack's hosts added or removed): the CDU's
    /// loops keep their state; GPUs of hosts no CDU cools any more leave with the next
    /// [`Controller::set_gpus`].
    pub fn set_cdu_hosts(&mut self, cdu: &str, hosts: Vec<String>) {
        for c in self.cdus.iter_mut().filter(|c| c.setup.name == cdu) {
            c.setup.hosts = hosts.clone();
        }
    }

    /// Inventory changed: GPUs gone are forgotten, new ones (local or remote) are added, and
    /// the state of GPUs that stay is kept.
    pub fn set_gpus(&mut self, gpus: Vec<GpuStatic>) {
        let mut next = BTreeMap::new();
        for st in gpus {
            let key = st.key.clone();
            let g = match self.gpus.remove(&key) {
                Some(mut g) if g.input.st.is_some() => {
                    g.input.st = Some(st);
                    g
                }
                Some(mut g) => {
                    g.cap = Some(CapLoop::new(&self.cfg, &st));
                    g.input.st = Some(st);
                    g
                }
                None => GpuCtl::new(&self.cfg, Some(st)),
            };
            next.insert(key, g);
        }
        self.gpus = next;
    }

    /// The lowest slowdown threshold of the GPUs this controller drives, if it knows any.
    pub fn lowest_slowdown(&self) -> Option<f64> {
        self.gpus
            .values()
            .filter_map(|g| g.input.st.as_ref())
            .map(|s| s.slowdown.get())
            .reduce(f64::min)
    }

    /// Checks a reloaded `[control]` against the GPUs this controller drives, with the same
    /// rule as the MQTT command path; the error names the key. Called before
    /// [`Controller::reconfigure`], which then cannot raise the set point past it.
    pub fn check_reload(&self, cfg: &ControlConfig) -> Result<(), String> {
        cfg.check_setpoint(cfg.setpoint, self.lowest_slowdown())
            .map_err(|e| format!("control.setpoint: {e}"))
    }

    /// SIGHUP reload without a bump: loops keep their outputs, the set point follows the file
    /// only where the file changed it (an operator's set point survives an unrelated reload).
    /// Actuators that answered with a permanent error are tried once more: the reload is the
    /// only event that can make such a write possible.
    pub fn reconfigure(&mut self, cfg: &ControlConfig) {
        if cfg.setpoint != self.cfg.setpoint {
            self.setpoint = cfg.setpoint;
        }
        self.setpoint = self.setpoint.clamp(cfg.setpoint_min, cfg.setpoint_max);
        // An operator's set point kept across the reload obeys the new margin too.
        if let Some(slowdown) = self.lowest_slowdown() {
            let ceiling = slowdown - cfg.slowdown_margin_k;
            if self.setpoint > ceiling {
                self.setpoint = ceiling.max(cfg.setpoint_min);
            }
        }
        self.cfg = cfg.clone();
        for c in &mut self.cdus {
            c.pump.pid.set_params(pump_params(cfg, &c.setup));
            c.pump.write.retry_unsupported();
        }
        for g in self.gpus.values_mut() {
            if let (Some(st), Some(cap)) = (&g.input.st, &mut g.cap) {
                cap.pid.set_params(cap::cap_params(cfg, st, cap.original));
                cap.write.retry_unsupported();
            }
        }
    }

    /// The outputs to apply on shutdown: pumps at the failsafe speed (where the CDU is in
    /// remote mode) and, unless configured to hold them, the original power limits back.
    pub fn safe_outputs(&self) -> Vec<Actuation> {
        let mut out = Vec::new();
        for c in &self.cdus {
            if c.local {
                continue;
            }
            let (lo, hi) = pump_range(&self.cfg, &c.setup);
            out.push(Actuation::SetPumpSpeed {
                cdu: c.setup.name.clone(),
                speed: Percent(self.cfg.pump.failsafe_speed.clamp(lo, hi)),
            });
        }
        if self.cfg.power_cap.on_shutdown == OnShutdown::Restore {
            for (key, g) in &self.gpus {
                if let Some(cap) = &g.cap {
                    let ours = cap.write.ours();
                    if ours.is_some_and(|w| (w - cap.original).abs() >= 0.5) {
                        out.push(Actuation::SetPowerCap {
                            gpu: key.clone(),
                            limit: Watts(cap.original),
                        });
                    }
                }
            }
        }
        out
    }

    /// An operator command, validated against the limits and the current state. Nothing
    /// changes when it is rejected.
    pub fn command(&mut self, now: Mono, cmd: &Command) -> CommandOutcome {
        let reject = |kind, reason: String| CommandOutcome::Rejected { kind, reason };
        match cmd {
            Command::SetSetpoint { celsius } => {
                let c = *celsius;
                if let Err(reason) = self.cfg.check_setpoint(c, self.lowest_slowdown()) {
                    return reject(RejectKind::OutOfRange, reason);
                }
                self.setpoint = c;
                CommandOutcome::Accepted
            }
            Command::SetMode { mode } => {
                match mode {
                    Mode::Manual if self.mode != Mode::Manual => {
                        // Hold the speed the pumps run at now: the switch itself changes nothing.
                        self.manual_speed = self.cdus.first().map(|c| c.pump.command);
                    }
                    Mode::Manual => {}
                    Mode::Auto => self.manual_speed = None,
                }
                self.mode = *mode;
                CommandOutcome::Accepted
            }
            Command::SetPumpSpeed { percent } => {
                if self.mode != Mode::Manual {
                    return reject(
                        RejectKind::WrongMode,
                        "pump speed can only be set in manual mode".into(),
                    );
                }
                let p = *percent;
                let (lo, hi) = (self.cfg.pump.min_speed, self.cfg.pump.max_speed);
                if !(p.is_finite() && p >= lo && p <= hi) {
                    return reject(
                        RejectKind::OutOfRange,
                        format!("pump speed {p} % is outside {lo}..={hi} %"),
                    );
                }
                self.manual_speed = Some(p);
                CommandOutcome::Accepted
            }
            Command::AckAlarm { id } => {
                if self.alarms.acknowledge(now, id) {
                    CommandOutcome::Accepted
                } else {
                    reject(RejectKind::UnknownAlarm, format!("no active alarm `{id}`"))
                }
            }
        }
    }

    fn apply_outcomes(&mut self, outcomes: &[ActuationOutcome]) {
        for o in outcomes {
            match &o.actuation {
                Actuation::SetPumpSpeed { cdu, speed } => {
                    if let Some(c) = self.cdus.iter_mut().find(|c| &c.setup.name == cdu) {
                        c.pump
                            .write
                            .on_outcome(speed.get(), o.at, &o.result, o.dry_run);
                    }
                }
                Actuation::SetPowerCap { gpu, limit } => {
                    if let Some(cap) = self.gpus.get_mut(gpu).and_then(|g| g.cap.as_mut()) {
                        cap.write
                            .on_outcome(limit.get(), o.at, &o.result, o.dry_run);
                    }
                }
                // A missed heartbeat is caught by the CDU itself; the next tick writes again.
                Actuation::FeedWatchdog { .. } => {}
            }
        }
    }

    fn ingest_gpus(&mut self, now: Mono, samples: &[GpuSample]) {
        let cfg = &self.cfg;
        for s in samples {
            self.gpus
                .entry(s.key.clone())
                .or_insert_with(|| GpuCtl::new(cfg, None))
                .input
                .offer(s);
        }
        // Readings of GPUs outside the inventory steer the loop while fresh and are forgotten
        // once stale: they are nobody's lost input.
        self.gpus.retain(|_, g| {
            g.input.st.is_some()
                || g.input
                    .latest
                    .as_ref()
                    .is_some_and(|s| fresh(cfg, now, s.at))
        });
        for g in self.gpus.values_mut() {
            g.input.observe(now, cfg);
        }
    }

    /// One control tick.
    pub fn tick(&mut self, input: &TickInput<'_>) -> TickOutput {
        let now = input.now;
        let started = *self.started.get_or_insert(now);
        let period = self.cfg.period_ms as f64 / 1000.0;
        let dt = match self.last_tick {
            Some(t) if now > t => (now - t).as_secs_f64().min(10.0 * period),
            Some(_) => 0.0,
            None => period,
        };
        self.last_tick = Some(self.last_tick.map_or(now, |t| t.max(now)));
        let ctx = TickCtx {
            now,
            dt,
            suppress: now.saturating_sub(started).as_secs_f64()
                < self.cfg.supervisor.startup_suppress_s,
            setpoint: self.setpoint,
        };

        self.apply_outcomes(input.outcomes);
        self.ingest_gpus(now, input.gpus);

        let mut acts = Vec::new();
        let mut loops = Vec::new();
        for i in 0..self.cdus.len() {
            self.cdu_tick(i, &ctx, input.cdus, &mut acts, &mut loops);
        }
        self.caps_tick(&ctx, &mut acts, &mut loops);
        self.gpu_alarms(&ctx);

        let events = self.alarms.finish_tick(now);
        let controlled = self
            .gpus
            .values()
            .filter_map(|g| g.input.equiv)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        TickOutput {
            actuations: acts,
            state: self.state(),
            mode: self.mode,
            controlled: controlled.map(Celsius),
            setpoint: Celsius(ctx.setpoint),
            loops,
            events,
            active_alarms: self.alarms.active(),
            ready: self.cdus.iter().all(|c| c.causes.is_empty()),
            feed_forward: self
                .cdus
                .iter()
                .filter_map(|c| c.pump.ff_report.clone())
                .collect(),
        }
    }

    /// One CDU's part of the tick: its inputs, its supervisor, its pump loop, its alarms.
    fn cdu_tick(
        &mut self,
        i: usize,
        ctx: &TickCtx,
        samples: &[CduSample],
        acts: &mut Vec<Actuation>,
        loops: &mut Vec<LoopReport>,
    ) {
        let gpus = self.cdu_gpus(i);
        let powers = self.cdu_powers(i);
        let now = ctx.now;
        let cfg = &self.cfg;
        let c = &mut self.cdus[i];
        let name = c.setup.name.clone();
        let r = c.inputs.ingest(now, cfg, &c.setup, samples, c.pump.command);
        c.local = r.local;

        // Alarms that decide the state come first: a leak is latched and never suppressed.
        let leak_id = AlarmId::Leak { cdu: name.clone() };
        if r.leak {
            self.alarms.assert(
                now,
                leak_id.clone(),
                Severity::Critical,
                true,
                format!("{name}: leak detected; acknowledge once the loop is dry"),
            );
        }
        let leak_active = self.alarms.is_active(&leak_id);

        c.pump.supervise_following(now, cfg, r.feedback, r.local);
        let write_failed = c.pump.write.failing(cfg.pump.write_failures_alarm);
        let causes = failsafe_causes(cfg, &r, &gpus, write_failed);
        let degraded =
            !r.lost_optional.is_empty() || !gpus.lost.is_empty() || r.local || c.pump.fault();
        let state = c.sup.step(
            now,
            &Causes {
                emergency: leak_active || !gpus.hot.is_empty(),
                failsafe: causes.clone(),
                degraded,
            },
            &cfg.supervisor,
        );
        c.causes = causes;

        // The pump command for this state.
        let (lo, hi) = pump_range(cfg, &c.setup);
        let inp = PumpInput {
            now,
            dt: ctx.dt,
            setpoint: ctx.setpoint,
            state,
            local: r.local,
            manual: self.manual_speed.map(|m| m.clamp(lo, hi)),
            controlled: gpus.controlled,
            feedback: r.feedback,
            supply: r.supply,
            flow: r.flow,
            powers: &powers,
            hosts: c.setup.hosts.len(),
        };
        let cmd = c.pump.step(cfg, &c.setup, &inp, write_failed);
        c.pump.writes(now, cfg, &c.setup, r.local, acts);
        let causes_text = c
            .causes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        loops.push(c.pump.report(
            cfg,
            &c.setup,
            &inp,
            cmd,
            &gpus.hot,
            &causes_text,
            gpus.driver.as_deref(),
        ));
        let dew_alarm = dew_point_report(cfg, &name, &r, loops);
        raise::cdu_alarms(&mut self.alarms, ctx, cfg, c, &r, dew_alarm);
    }

    /// The power-cap loop of every GPU with known limits.
    fn caps_tick(&mut self, ctx: &TickCtx, acts: &mut Vec<Actuation>, loops: &mut Vec<LoopReport>) {
        let cfg = &self.cfg;
        if !cfg.power_cap.enabled {
            return;
        }
        for (key, g) in self.gpus.iter_mut() {
            let Some(cap) = &mut g.cap else {
                continue;
            };
            let view = match self.cdus.iter().find(|c| c.setup.hosts.contains(&key.host)) {
                Some(c) => CduView {
                    state: c.sup.state(),
                    saturated: c.pump.saturated,
                    leak: self.alarms.is_active(&AlarmId::Leak {
                        cdu: c.setup.name.clone(),
                    }),
                    temps_unknown: c.causes.contains(&FailsafeCause::GpuTemperaturesUnknown),
                    power_held: c
                        .pump
                        .power_held(ctx.now, ctx.setpoint + cfg.power_cap.band_k),
                },
                None => CduView::NONE,
            };
            let Some(step) = cap.step(
                ctx.now,
                ctx.dt,
                ctx.setpoint,
                cfg,
                key,
                &g.input,
                &view,
                acts,
            ) else {
                continue;
            };
            let t = cap.pid.terms();
            loops.push(LoopReport {
                name: format!("power:{key}"),
                setpoint: step.sp_cap,
                measured: g.input.equiv,
                p: t.p,
                i: t.i,
                d: t.d,
                ff: t.ff,
                output: step.desired,
                reason: step.reason,
            });
            raise::cap_alarms(&mut self.alarms, ctx, cfg, key, cap, step.ours);
        }
    }

    /// The alarms of the GPUs of the inventory: no usable input, at the thermal limit.
    fn gpu_alarms(&mut self, ctx: &TickCtx) {
        raise::gpu_alarms(&mut self.alarms, ctx, &self.gpus);
    }
}

/// Why a CDU is (or would be) in failsafe this tick.
fn failsafe_causes(
    cfg: &ControlConfig,
    r: &CduReadings,
    gpus: &CduGpus,
    write_failed: bool,
) -> Vec<FailsafeCause> {
    let mut causes = Vec::new();
    if r.unreachable.is_some() {
        causes.push(FailsafeCause::Unreachable);
    }
    for (role, _) in &r.lost_required {
        causes.push(FailsafeCause::RequiredInput(*role));
    }
    if cfg.plausibility.gpu_required && gpus.controlled.is_none() {
        causes.push(FailsafeCause::GpuTemperaturesUnknown);
    }
    if write_failed && !r.local {
        causes.push(FailsafeCause::PumpWrite);
    }
    causes
}

/// Dew point: the CDU owns its supply set point; we report the floor and return the warning
/// when the supply is below it.
fn dew_point_report(
    cfg: &ControlConfig,
    name: &str,
    r: &CduReadings,
    loops: &mut Vec<LoopReport>,
) -> Option<String> {
    let (t, rh) = (r.room_temperature?, r.room_humidity?);
    let td = dew_point(t, rh)?;
    let margin = cfg.supervisor.dew_point_margin_k;
    let floor = td + margin;
    loops.push(LoopReport {
        name: format!("dew_point:{name}"),
        setpoint: floor,
        measured: r.supply,
        p: 0.0,
        i: 0.0,
        d: 0.0,
        ff: 0.0,
        output: td,
        reason: format!(
            "room dew point {td:.1} °C (Magnus) + {margin} K margin: the lowest safe supply temperature"
        ),
    });
    let supply = r.supply.filter(|s| *s < floor)?;
    Some(format!(
        "{name}: supply {supply:.1} °C is within {margin} K of the room dew point {td:.1} °C (Magnus): condensation risk; raise the CDU's supply set point"
    ))
}
