//! The controller: plausibility → supervisor → pump loops → power-cap loops → actuations.

use super::alarms::AlarmBook;
use super::config::{ControlConfig, ControlledVariable, OnShutdown};
use super::feedforward::{FeedForward, FfInput, PlateModel, PowerReading};
use super::pid::{Action, Pid, PidParams};
use super::plausibility::{dew_point, InputTrack, Limits, Verdict};
use super::supervisor::{Causes, FailsafeCause, Supervisor};
use super::{CduSetup, TickInput};
use crate::model::{
    Actuation, ActuationOutcome, CduSample, Command, CommandOutcome, ControlState,
    FeedForwardReport, GpuKey, GpuSample, GpuStatic, LoopReport, Mode, Mono, RejectKind, Role,
    Severity, TickOutput,
};
use crate::units::{Celsius, Percent, Watts};
use std::collections::BTreeMap;

/// NVML's `nvmlClocksEventReasonHwThermalSlowdown` bit (nvml.h): the GPU is already slowing
/// itself down for heat, whatever its temperature reading says.
const HW_THERMAL_SLOWDOWN: u64 = 0x40;

/// One GPU as the controller sees it.
#[derive(Debug, Clone)]
struct GpuCtl {
    st: Option<GpuStatic>,
    latest: Option<GpuSample>,
    core: InputTrack,
    hbm: InputTrack,
    hbm_seen: bool,
    core_v: Option<f64>,
    /// This GPU's contribution to the controlled variable (core-equivalent °C).
    equiv: Option<f64>,
    lost: Option<String>,
    hot: bool,
    cap: Option<CapCtl>,
}

/// One GPU's power-cap loop and the bookkeeping of its writes.
#[derive(Debug, Clone)]
struct CapCtl {
    pid: Pid,
    /// The limit found before we wrote anything: what caps return to.
    original: f64,
    /// The cap this loop wants now.
    applied: f64,
    /// The last cap the GPU acknowledged.
    written: Option<f64>,
    written_at: Mono,
    in_flight: Option<f64>,
    force_write: bool,
    failures: u32,
    dry_run: bool,
    external: Option<f64>,
}

/// One CDU as the controller sees it.
#[derive(Debug, Clone)]
struct CduCtl {
    setup: CduSetup,
    latest: Option<CduSample>,
    inputs: BTreeMap<Role, InputTrack>,
    pid: Pid,
    sup: Supervisor,
    state: ControlState,
    causes: Vec<FailsafeCause>,
    command: f64,
    acked: Option<f64>,
    in_flight: Option<f64>,
    last_sent_at: Option<Mono>,
    force_write: bool,
    write_failures: u32,
    dry_run: bool,
    follow_since: Option<Mono>,
    pump_fault: bool,
    watchdog: u16,
    local: bool,
    controlled: Option<f64>,
    saturated: bool,
    ff: FeedForward,
    ff_report: Option<FeedForwardReport>,
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

fn pump_range(cfg: &ControlConfig, s: &CduSetup) -> (f64, f64) {
    let lo = cfg.pump.min_speed.max(s.pump_min.get());
    let hi = cfg.pump.max_speed.min(s.pump_max.get());
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (cfg.pump.min_speed, cfg.pump.max_speed)
    };
    // A profile that does not overlap the configured range: stay within the profile's top.
    (lo.min(hi), hi)
}

fn pump_params(cfg: &ControlConfig, s: &CduSetup) -> PidParams {
    let (lo, hi) = pump_range(cfg, s);
    PidParams {
        kp: cfg.pid.kp,
        ki: cfg.pid.ki,
        kd: cfg.pid.kd,
        derivative_filter_s: cfg.pid.derivative_filter_s,
        tracking_time_s: cfg.pid.tracking_time_s,
        out_min: lo,
        out_max: hi,
        slew_up_per_s: cfg.pump.slew_up_per_s,
        slew_down_per_s: cfg.pump.slew_down_per_s,
        action: Action::Reverse,
    }
}

fn cap_bounds(cfg: &ControlConfig, st: &GpuStatic, original: f64) -> (f64, f64) {
    let pmin = st.power_min.get();
    let pmax = st.power_max.get().max(pmin);
    let hi = original.clamp(pmin, pmax);
    let lo = pmin.max(cfg.power_cap.min_percent / 100.0 * pmax).min(hi);
    (lo, hi)
}

fn cap_params(cfg: &ControlConfig, st: &GpuStatic, original: f64) -> PidParams {
    let (lo, hi) = cap_bounds(cfg, st, original);
    PidParams {
        kp: cfg.power_cap.kp,
        ki: cfg.power_cap.ki,
        kd: 0.0,
        derivative_filter_s: 0.0,
        tracking_time_s: None,
        out_min: lo,
        out_max: hi,
        slew_up_per_s: cfg.power_cap.restore_w_per_s,
        slew_down_per_s: cfg.power_cap.lower_w_per_s,
        // More power, hotter GPU: a hot GPU needs a lower cap.
        action: Action::Direct,
    }
}

impl GpuCtl {
    fn new(cfg: &ControlConfig, st: Option<GpuStatic>) -> GpuCtl {
        let cap = st.as_ref().map(|s| CapCtl::new(cfg, s));
        GpuCtl {
            st,
            latest: None,
            core: InputTrack::default(),
            hbm: InputTrack::default(),
            hbm_seen: false,
            core_v: None,
            equiv: None,
            lost: None,
            hot: false,
            cap,
        }
    }
}

impl CapCtl {
    fn new(cfg: &ControlConfig, st: &GpuStatic) -> CapCtl {
        let original = if st.power_default.is_finite() && st.power_default.get() > 0.0 {
            st.power_default.get()
        } else {
            st.power_max.get()
        };
        let (_, hi) = cap_bounds(cfg, st, original);
        CapCtl {
            pid: Pid::new(cap_params(cfg, st, hi), hi),
            original: hi,
            applied: hi,
            written: None,
            written_at: Mono::ZERO,
            in_flight: None,
            force_write: false,
            failures: 0,
            dry_run: false,
            external: None,
        }
    }
}

impl CduCtl {
    fn new(cfg: &ControlConfig, setup: CduSetup) -> CduCtl {
        let params = pump_params(cfg, &setup);
        let start = cfg.pump.start_speed.clamp(params.out_min, params.out_max);
        CduCtl {
            pid: Pid::new(params, start),
            setup,
            latest: None,
            inputs: BTreeMap::new(),
            sup: Supervisor::default(),
            state: ControlState::Boot,
            causes: Vec::new(),
            command: start,
            acked: None,
            in_flight: None,
            last_sent_at: None,
            force_write: false,
            write_failures: 0,
            dry_run: false,
            follow_since: None,
            pump_fault: false,
            watchdog: 0,
            local: false,
            controlled: None,
            saturated: false,
            ff: FeedForward::default(),
            ff_report: None,
        }
    }

    fn value(&self, role: Role) -> Option<f64> {
        self.inputs
            .get(&role)
            .and_then(|t| t.verdict())
            .and_then(Verdict::value)
    }
}

/// Asserts a warning-level condition unless start-up suppression is on.
fn warn(book: &mut AlarmBook, suppress: bool, now: Mono, id: String, sev: Severity, msg: String) {
    if !suppress {
        book.assert(now, id, sev, false, msg);
    }
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
            c.ff.set_model(model);
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
                power: g.latest.as_ref().and_then(|s| {
                    // The instantaneous power: the averaged one lags a step by about a second.
                    s.power_instant.or(s.power_average).map(|w| (w.get(), s.at))
                }),
            })
            .collect()
    }

    pub fn setpoint(&self) -> Celsius {
        Celsius(self.setpoint)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The worst state over all CDUs (or of the GPUs alone on a host without CDUs).
    pub fn state(&self) -> ControlState {
        let gpu_only = if self.gpus.values().any(|g| g.hot) {
            ControlState::Emergency
        } else {
            ControlState::Running
        };
        self.cdus.iter().map(|c| c.state).max().unwrap_or(gpu_only)
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
            if let (Some(st), Some(cap)) = (&g.st, &mut g.cap) {
                if limit.is_finite() {
                    let (_, hi) = cap_bounds(cfg, st, limit.get());
                    cap.original = hi;
                    cap.pid.set_params(cap_params(cfg, st, hi));
                }
            }
        }
    }

    /// Inventory changed: GPUs gone are forgotten, new ones (local or remote) are added, and
    /// the state of GPUs that stay is kept.
    pub fn set_gpus(&mut self, gpus: Vec<GpuStatic>) {
        let mut next = BTreeMap::new();
        for st in gpus {
            let key = st.key.clone();
            let g = match self.gpus.remove(&key) {
                Some(mut g) if g.st.is_some() => {
                    g.st = Some(st);
                    g
                }
                Some(mut g) => {
                    g.cap = Some(CapCtl::new(&self.cfg, &st));
                    g.st = Some(st);
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
            .filter_map(|g| g.st.as_ref())
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
            c.pid.set_params(pump_params(cfg, &c.setup));
        }
        for g in self.gpus.values_mut() {
            if let (Some(st), Some(cap)) = (&g.st, &mut g.cap) {
                cap.pid.set_params(cap_params(cfg, st, cap.original));
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
                    let ours = cap.written.or(cap.in_flight);
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
                        self.manual_speed = self.cdus.first().map(|c| c.command);
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
                    let Some(c) = self.cdus.iter_mut().find(|c| &c.setup.name == cdu) else {
                        continue;
                    };
                    c.in_flight = None;
                    match &o.result {
                        Ok(()) => {
                            c.acked = Some(speed.get());
                            c.write_failures = 0;
                            c.dry_run = o.dry_run;
                        }
                        Err(_) => {
                            c.write_failures = c.write_failures.saturating_add(1);
                            c.force_write = true;
                        }
                    }
                }
                Actuation::SetPowerCap { gpu, limit } => {
                    let Some(cap) = self.gpus.get_mut(gpu).and_then(|g| g.cap.as_mut()) else {
                        continue;
                    };
                    cap.in_flight = None;
                    match &o.result {
                        Ok(()) => {
                            cap.written = Some(limit.get());
                            cap.written_at = o.at;
                            cap.failures = 0;
                            cap.dry_run = o.dry_run;
                        }
                        Err(_) => {
                            cap.failures = cap.failures.saturating_add(1);
                            cap.force_write = true;
                        }
                    }
                }
                // A missed heartbeat is caught by the CDU itself; the next tick writes again.
                Actuation::FeedWatchdog { .. } => {}
            }
        }
    }

    fn gpu_limits(&self) -> (Limits, Limits) {
        let q = &self.cfg.plausibility;
        let age = self.cfg.max_sample_age_ms as f64 / 1000.0;
        let core = Limits {
            min: q.gpu_min_c,
            max: q.gpu_max_c,
            max_rate: Some(q.gpu_max_rate_k_per_s),
            stuck: Some((q.stuck_after_s, q.stuck_power_change_w)),
            max_age_s: age,
            hold_ticks: q.hold_ticks,
        };
        let hbm = Limits {
            stuck: None,
            ..core
        };
        (core, hbm)
    }

    fn role_limits(&self, role: Role) -> Limits {
        let q = &self.cfg.plausibility;
        let base = Limits {
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
            max_rate: None,
            stuck: None,
            max_age_s: self.cfg.max_sample_age_ms as f64 / 1000.0,
            hold_ticks: q.hold_ticks,
        };
        let stuck = Some((q.stuck_after_s, q.stuck_pump_change));
        match role {
            Role::SupplyTemperature | Role::ReturnTemperature | Role::FacilityWaterTemperature => {
                Limits {
                    min: q.coolant_min_c,
                    max: q.coolant_max_c,
                    max_rate: Some(q.coolant_max_rate_k_per_s),
                    ..base
                }
            }
            Role::Flow | Role::DifferentialPressure => Limits {
                min: 0.0,
                stuck,
                ..base
            },
            // A few % over full scale is rounding in the CDU's feedback scaling.
            Role::PumpSpeedFeedback => Limits {
                min: 0.0,
                max: 105.0,
                stuck,
                ..base
            },
            Role::ValvePosition => Limits {
                min: 0.0,
                max: 105.0,
                ..base
            },
            Role::RoomHumidity => Limits {
                min: 0.0,
                max: 100.0,
                ..base
            },
            // Indoor air near a CDU; outside this range the sensor is broken, not the room.
            Role::RoomTemperature => Limits {
                min: -20.0,
                max: 60.0,
                ..base
            },
            Role::Leak | Role::RemoteEnable => Limits {
                min: 0.0,
                max: 1.0,
                ..base
            },
            Role::PumpSpeedCommand | Role::Watchdog => base,
        }
    }

    fn ingest_gpus(&mut self, now: Mono, samples: &[GpuSample]) {
        for s in samples {
            let g = self
                .gpus
                .entry(s.key.clone())
                .or_insert_with(|| GpuCtl::new(&self.cfg, None));
            if g.latest.as_ref().is_none_or_older(s.at) {
                g.latest = Some(s.clone());
            }
        }
        let age = self.cfg.max_sample_age_ms as f64 / 1000.0;
        // Readings of GPUs outside the inventory steer the loop while fresh and are forgotten
        // once stale: they are nobody's lost input.
        self.gpus.retain(|_, g| {
            g.st.is_some()
                || g.latest
                    .as_ref()
                    .is_some_and(|s| now.saturating_sub(s.at).as_secs_f64() <= age)
        });
        let (core_lim, hbm_lim) = self.gpu_limits();
        let cv = self.cfg.controlled_variable;
        let sup = &self.cfg.supervisor;
        for g in self.gpus.values_mut() {
            let s = g.latest.as_ref();
            let core_reading = match s {
                None => Err("no reading received".to_string()),
                Some(s) => s
                    .core
                    .map(|c| (c.get(), s.at))
                    .ok_or_else(|| "no core temperature in the reading".to_string()),
            };
            let power = s
                .and_then(|s| s.power_average.or(s.power_instant))
                .map(|w| w.get());
            let core = g.core.observe(now, core_reading, power, &core_lim);
            g.core_v = core.value();
            g.lost = match &core {
                Verdict::Lost(why) => Some(why.clone()),
                _ => None,
            };
            let hbm_now = s.and_then(|s| s.hbm.map(|h| (h.get(), s.at)));
            g.hbm_seen |= hbm_now.is_some();
            let hbm_v = if g.hbm_seen {
                g.hbm
                    .observe(
                        now,
                        hbm_now.ok_or_else(|| "no HBM temperature in the reading".to_string()),
                        None,
                        &hbm_lim,
                    )
                    .value()
            } else {
                None
            };
            let hbm_equiv = match (&g.st, hbm_v) {
                (Some(st), Some(h)) => Some(st.slowdown.get() - (st.hbm_max.get() - h)),
                _ => None,
            };
            g.equiv = match cv {
                ControlledVariable::Core => g.core_v,
                ControlledVariable::HbmMargin => hbm_equiv.or(g.core_v),
                ControlledVariable::Max => match (g.core_v, hbm_equiv) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                },
            };
            let hw = s
                .and_then(|s| s.throttle_reasons)
                .is_some_and(|r| r & HW_THERMAL_SLOWDOWN != 0)
                && s.is_some_and(|s| now.saturating_sub(s.at).as_secs_f64() <= age);
            let (core_thr, hbm_thr) = match &g.st {
                Some(st) => (
                    st.slowdown.get() - sup.emergency_margin_k,
                    st.hbm_max.get() - sup.emergency_margin_k,
                ),
                None => (f64::INFINITY, f64::INFINITY),
            };
            let clear = if g.hot { sup.emergency_clear_k } else { 0.0 };
            let over = |v: Option<f64>, thr: f64| v.is_some_and(|v| v >= thr - clear);
            g.hot = hw || over(g.core_v, core_thr) || over(hbm_v, hbm_thr);
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
        let suppress =
            now.saturating_sub(started).as_secs_f64() < self.cfg.supervisor.startup_suppress_s;

        self.apply_outcomes(input.outcomes);
        self.ingest_gpus(now, input.gpus);

        let mut acts = Vec::new();
        let mut loops = Vec::new();
        let sp = self.setpoint;

        for i in 0..self.cdus.len() {
            self.cdu_tick(i, now, dt, suppress, input.cdus, &mut acts, &mut loops);
        }
        self.caps_tick(now, dt, suppress, &mut acts, &mut loops);

        for (key, g) in &self.gpus {
            if g.st.is_none() {
                continue;
            }
            if let Some(why) = &g.lost {
                warn(
                    &mut self.alarms,
                    suppress,
                    now,
                    format!("gpu_input:{key}"),
                    Severity::Warning,
                    format!("{key}: no usable core temperature: {why}"),
                );
            }
            if g.hot {
                self.alarms.assert(
                    now,
                    format!("gpu_slowdown:{key}"),
                    Severity::Critical,
                    false,
                    format!(
                        "{key} at its thermal limit (core {:?} °C): power capped to minimum, pumps to maximum",
                        g.core_v
                    ),
                );
            }
        }

        let events = self.alarms.finish_tick(now);
        let controlled = self
            .gpus
            .values()
            .filter_map(|g| g.equiv)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        TickOutput {
            actuations: acts,
            state: self.state(),
            mode: self.mode,
            controlled: controlled.map(Celsius),
            setpoint: Celsius(sp),
            loops,
            events,
            active_alarms: self.alarms.active(),
            ready: self.cdus.iter().all(|c| c.causes.is_empty()),
            feed_forward: self
                .cdus
                .iter()
                .filter_map(|c| c.ff_report.clone())
                .collect(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn cdu_tick(
        &mut self,
        i: usize,
        now: Mono,
        dt: f64,
        suppress: bool,
        samples: &[CduSample],
        acts: &mut Vec<Actuation>,
        loops: &mut Vec<LoopReport>,
    ) {
        let cfg = self.cfg.clone();
        let limits: BTreeMap<Role, Limits> = Role::ALL
            .iter()
            .map(|r| (*r, self.role_limits(*r)))
            .collect();
        let sp = self.setpoint;
        let age = cfg.max_sample_age_ms as f64 / 1000.0;
        // The controlled variable from this CDU's GPUs, and the GPU it came from.
        let mut driver: Option<String> = None;
        let (controlled, gpus_lost, hot) = {
            let hosts = &self.cdus[i].setup.hosts;
            let mine = self.gpus.iter().filter(|(k, _)| hosts.contains(&k.host));
            let mut controlled: Option<f64> = None;
            let mut lost = Vec::new();
            let mut hot = Vec::new();
            for (k, g) in mine {
                if let Some(v) = g.equiv {
                    if controlled.is_none_or(|m| v > m) {
                        driver = Some(k.to_string());
                    }
                    controlled = Some(controlled.map_or(v, |m| m.max(v)));
                }
                if g.lost.is_some() && g.st.is_some() {
                    lost.push(k.to_string());
                }
                if g.hot {
                    hot.push(k.to_string());
                }
            }
            (controlled, lost, hot)
        };

        let powers = self.cdu_powers(i);
        let c = &mut self.cdus[i];
        let name = c.setup.name.clone();
        if let Some(s) = samples
            .iter()
            .filter(|s| s.cdu == name)
            .max_by_key(|s| s.at)
        {
            if c.latest.as_ref().is_none_or_older(s.at) {
                c.latest = Some(s.clone());
            }
        }
        let unreachable = match &c.latest {
            None => Some("no poll received".to_string()),
            Some(s) if now.saturating_sub(s.at).as_secs_f64() > age => Some(format!(
                "newest poll is {:.1} s old",
                now.saturating_sub(s.at).as_secs_f64()
            )),
            Some(s) if !s.registers.iter().any(|r| r.value.is_ok()) => {
                Some(match s.registers.first() {
                    Some(r) => match &r.value {
                        Err(e) => format!("every register failed, e.g. {}: {e}", r.name),
                        Ok(_) => "every register failed".to_string(),
                    },
                    None => "the poll returned no registers".to_string(),
                })
            }
            _ => None,
        };

        let mut roles: Vec<Role> = c.setup.roles.clone();
        roles.sort();
        roles.dedup();
        let mut lost_required = Vec::new();
        let mut lost_optional = Vec::new();
        for role in roles {
            if matches!(role, Role::PumpSpeedCommand | Role::Watchdog) {
                continue;
            }
            let reading = match &c.latest {
                None => Err("no poll received".to_string()),
                Some(s) => match s.worst(role) {
                    Some(v) => Ok((v, s.at)),
                    None => Err(s
                        .registers
                        .iter()
                        .find(|r| r.role == Some(role))
                        .and_then(|r| r.value.as_ref().err().map(|e| format!("{}: {e}", r.name)))
                        .unwrap_or_else(|| "not in the poll".to_string())),
                },
            };
            let related = matches!(
                role,
                Role::Flow | Role::DifferentialPressure | Role::PumpSpeedFeedback
            )
            .then_some(c.command);
            let lim = limits
                .get(&role)
                .copied()
                .unwrap_or(limits[&Role::Watchdog]);
            let v = c
                .inputs
                .entry(role)
                .or_default()
                .observe(now, reading, related, &lim);
            if let Verdict::Lost(why) = v {
                if cfg.plausibility.required.contains(&role) {
                    lost_required.push((role, why));
                } else {
                    lost_optional.push((role, why));
                }
            }
        }

        // A CDU whose profile maps the remote-enable flag but whose flag is unknown (register
        // faulted or missing for longer than the hold) is treated as local: it may be in local
        // mode, and writing to it would fight the operator at its panel, while the CDU keeps
        // its own control either way. Without the flag mapped, the CDU is always remote.
        let mode_unknown =
            c.setup.roles.contains(&Role::RemoteEnable) && c.value(Role::RemoteEnable).is_none();
        let local = mode_unknown || c.value(Role::RemoteEnable).is_some_and(|v| v < 0.5);
        c.local = local;
        let leak = c.value(Role::Leak).is_some_and(|v| v >= 0.5);
        let feedback = c.value(Role::PumpSpeedFeedback);
        let supply = c.value(Role::SupplyTemperature);

        // Alarms that decide the state come first: a leak is latched and never suppressed.
        let leak_id = format!("leak:{name}");
        if leak {
            self.alarms.assert(
                now,
                leak_id.clone(),
                Severity::Critical,
                true,
                format!("{name}: leak detected; acknowledge once the loop is dry"),
            );
        }
        let leak_active = self.alarms.is_active(&leak_id);

        // Pump following: the acknowledged command against the feedback.
        let c = &mut self.cdus[i];
        match (feedback, c.acked) {
            (Some(fb), Some(cmd))
                if !c.dry_run && !local && (fb - cmd).abs() > cfg.pump.follow_tolerance =>
            {
                let since = *c.follow_since.get_or_insert(now);
                c.pump_fault = now.saturating_sub(since).as_secs_f64() >= cfg.pump.follow_timeout_s;
            }
            _ => {
                c.follow_since = None;
                c.pump_fault = false;
            }
        }
        let write_failed = c.write_failures >= cfg.pump.write_failures_alarm;

        let mut causes = Vec::new();
        if unreachable.is_some() {
            causes.push(FailsafeCause::Unreachable);
        }
        for (r, _) in &lost_required {
            causes.push(FailsafeCause::RequiredInput(*r));
        }
        if cfg.plausibility.gpu_required && controlled.is_none() {
            causes.push(FailsafeCause::GpuTemperaturesUnknown);
        }
        if write_failed && !local {
            causes.push(FailsafeCause::PumpWrite);
        }
        let degraded = !lost_optional.is_empty() || !gpus_lost.is_empty() || local || c.pump_fault;
        let state = c.sup.step(
            now,
            &Causes {
                emergency: leak_active || !hot.is_empty(),
                failsafe: causes.clone(),
                degraded,
            },
            &cfg.supervisor,
        );
        c.state = state;
        c.causes = causes;
        c.controlled = controlled;

        // The pump command for this state.
        let (lo, hi) = pump_range(&cfg, &c.setup);
        let manual = self.manual_speed.map(|m| m.clamp(lo, hi));
        let override_speed = match state {
            ControlState::Emergency => Some(hi),
            ControlState::Boot => Some(cfg.pump.start_speed.clamp(lo, hi)),
            ControlState::Failsafe => {
                Some(c.pid.output().max(cfg.pump.failsafe_speed.clamp(lo, hi)))
            }
            ControlState::Running | ControlState::Degraded => {
                if local {
                    // The CDU runs itself; track what it does so that remote mode resumes
                    // from there.
                    Some(feedback.unwrap_or(c.pid.output()).clamp(lo, hi))
                } else {
                    manual
                }
            }
        };
        // The heat-load feed-forward; engaging and disengaging hand its share to and from
        // the integrator, so neither moves the pump.
        let (ff_before, ff_was_on) = (
            c.ff.output(),
            c.ff_report.as_ref().is_some_and(|r| r.engaged),
        );
        let ff = c.ff.step(
            &cfg.feed_forward,
            &FfInput {
                now,
                dt: dt.max(1e-3),
                setpoint: sp,
                powers: &powers,
                hosts: c.setup.hosts.len(),
                supply,
                flow: c.value(Role::Flow),
                pump_feedback: feedback,
                out_min: lo,
                out_max: hi,
            },
        );
        if ff.engaged != ff_was_on {
            c.pid.shift_feed_forward(ff_before, ff.ff);
        }
        let cmd = match (override_speed, controlled) {
            (Some(u), Some(pv)) => {
                let _ = c.pid.track(sp, pv, ff.ff, dt.max(1e-3), u);
                u.clamp(lo, hi)
            }
            (Some(u), None) => {
                c.pid.force(u);
                u.clamp(lo, hi)
            }
            (None, Some(pv)) => match c.pid.update(sp, pv, ff.ff, dt) {
                Ok(t) => t.output,
                Err(_) => c.pid.output(),
            },
            (None, None) => c.pid.output(),
        };
        // Learn what the loop needed while it sits at its set point, unsaturated.
        let margin = cfg.power_cap.saturation_margin.max(0.5);
        if override_speed.is_none()
            && ff.engaged
            && controlled.is_some_and(|pv| (pv - sp).abs() <= cfg.feed_forward.adapt_band_k)
            && cmd > lo + margin
            && cmd < hi - margin
        {
            let before = c.ff.output();
            let delta = c.ff.adapt(&cfg.feed_forward, dt, cmd);
            c.pid.shift_feed_forward(before, before + delta);
        }
        c.ff_report = Some(FeedForwardReport {
            cdu: name.clone(),
            engaged: ff.engaged,
            reason: ff.reason.clone(),
            heat_load_w: ff.heat_load_w,
            model_speed: ff.model_speed,
            correction: c.ff.correction(),
            ff: c.ff.output(),
        });
        c.command = cmd;
        c.saturated = local
            || c.pump_fault
            || write_failed
            || state == ControlState::Failsafe
            || cmd >= hi - cfg.power_cap.saturation_margin;

        if !local {
            let base = c.in_flight.or(c.acked);
            let due = c.force_write
                || base.is_none_or_far(cmd, cfg.pump.write_deadband)
                || c.last_sent_at
                    .is_none_or_older(now.saturating_sub(Mono::from_secs_f64(cfg.pump.refresh_s)));
            if due {
                acts.push(Actuation::SetPumpSpeed {
                    cdu: name.clone(),
                    speed: Percent(cmd),
                });
                c.in_flight = Some(cmd);
                c.last_sent_at = Some(now);
                c.force_write = false;
            }
            if c.setup.roles.contains(&Role::Watchdog) {
                c.watchdog = c.watchdog.wrapping_add(1);
                acts.push(Actuation::FeedWatchdog {
                    cdu: name.clone(),
                    value: c.watchdog,
                });
            }
        }
        let t = c.pid.terms();
        let reason = match state {
            ControlState::Emergency => format!(
                "emergency: pump at its maximum{}",
                if hot.is_empty() {
                    " (leak)".to_string()
                } else {
                    format!(" ({} at the slowdown threshold)", hot.join(", "))
                }
            ),
            ControlState::Boot => "booting: start speed until every required input is valid".into(),
            ControlState::Failsafe => format!(
                "failsafe ({}): at least the failsafe speed",
                c.causes
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ if local => "the CDU is in local mode: following its own speed".into(),
            _ if manual.is_some() => "manual mode: the operator's speed".into(),
            _ => match (controlled, &driver) {
                (Some(pv), Some(gpu)) => format!(
                    "PID: hottest GPU {gpu} at {pv:.1} °C ({}), set point {sp:.1} °C, error {:+.1} K; \
                     P {:+.1} I {:+.1} D {:+.1} FF {:+.1}",
                    match cfg.controlled_variable {
                        ControlledVariable::Core => "core",
                        ControlledVariable::HbmMargin => "HBM as core-equivalent",
                        ControlledVariable::Max => "core or HBM-equivalent, the higher",
                    },
                    pv - sp,
                    t.p,
                    t.i,
                    t.d,
                    t.ff
                ),
                _ => "no GPU temperature: holding the last output".into(),
            },
        };
        loops.push(LoopReport {
            name: format!("pump:{name}"),
            setpoint: sp,
            measured: controlled,
            p: t.p,
            i: t.i,
            d: t.d,
            ff: t.ff,
            output: cmd,
            reason,
        });

        // Dew point: the CDU owns its supply set point; we warn and report the floor.
        let room = (c.value(Role::RoomTemperature), c.value(Role::RoomHumidity));
        let mut dew_alarm = None;
        if let (Some(t), Some(rh)) = room {
            if let Some(td) = dew_point(t, rh) {
                let floor = td + cfg.supervisor.dew_point_margin_k;
                loops.push(LoopReport {
                    name: format!("dew_point:{name}"),
                    setpoint: floor,
                    measured: supply,
                    p: 0.0,
                    i: 0.0,
                    d: 0.0,
                    ff: 0.0,
                    output: td,
                    reason: format!(
                        "room dew point {td:.1} °C (Magnus) + {} K margin: the lowest safe supply temperature",
                        cfg.supervisor.dew_point_margin_k
                    ),
                });
                if supply.is_some_and(|s| s < floor) {
                    dew_alarm = Some(format!(
                        "{name}: supply {:.1} °C is within {} K of the room dew point {td:.1} °C (Magnus): condensation risk; raise the CDU's supply set point",
                        supply.unwrap_or(f64::NAN),
                        cfg.supervisor.dew_point_margin_k
                    ));
                }
            }
        }
        let pump_fault = c.pump_fault;
        let write_failures = c.write_failures;
        let boot_timed_out = c.sup.boot_timed_out();

        // The remaining alarms of this CDU.
        let book = &mut self.alarms;
        if let Some(why) = unreachable {
            warn(
                book,
                suppress,
                now,
                format!("cdu_unreachable:{name}"),
                Severity::Critical,
                format!("{name} unreachable: {why}"),
            );
        }
        for (r, why) in &lost_required {
            warn(
                book,
                suppress,
                now,
                format!("input_lost:{name}:{r}"),
                Severity::Critical,
                format!("{name}: required input {r} lost: {why}"),
            );
        }
        for (r, why) in &lost_optional {
            warn(
                book,
                suppress,
                now,
                format!("input_lost:{name}:{r}"),
                Severity::Warning,
                format!("{name}: optional input {r} lost: {why}"),
            );
        }
        if local {
            warn(
                book,
                suppress,
                now,
                format!("local_mode:{name}"),
                Severity::Warning,
                if mode_unknown {
                    format!("{name}: remote/local mode unknown (remote_enable lost); treated as local mode: coolantd does not write to it")
                } else {
                    format!("{name} is in local mode: coolantd does not write to it")
                },
            );
        }
        if pump_fault {
            warn(
                book,
                suppress,
                now,
                format!("pump_not_following:{name}"),
                Severity::Critical,
                format!(
                    "{name}: pump feedback {:.1} % does not follow the command {:.1} % within {} s",
                    feedback.unwrap_or(f64::NAN),
                    self.cdus[i].acked.unwrap_or(f64::NAN),
                    cfg.pump.follow_timeout_s
                ),
            );
        }
        if write_failed && !local {
            book.assert(
                now,
                format!("pump_write_failed:{name}"),
                Severity::Critical,
                false,
                format!(
                "{name}: {write_failures} pump speed writes in a row failed; retrying every tick"
            ),
            );
        }
        if state == ControlState::Failsafe {
            let why: Vec<String> = self.cdus[i].causes.iter().map(|c| c.to_string()).collect();
            let boot = if boot_timed_out {
                " (inputs never became valid after start)"
            } else {
                ""
            };
            let codes = self.cdus[i].causes.iter().map(|c| c.code()).collect();
            self.alarms.assert_with_causes(
                now,
                format!("failsafe:{name}"),
                Severity::Critical,
                false,
                format!("{name} in failsafe{boot}: {}", why.join(", ")),
                codes,
            );
        }
        if let Some(msg) = dew_alarm {
            warn(
                &mut self.alarms,
                suppress,
                now,
                format!("dew_point:{name}"),
                Severity::Warning,
                msg,
            );
        }
    }

    fn caps_tick(
        &mut self,
        now: Mono,
        dt: f64,
        suppress: bool,
        acts: &mut Vec<Actuation>,
        loops: &mut Vec<LoopReport>,
    ) {
        let cfg = &self.cfg;
        if !cfg.power_cap.enabled {
            return;
        }
        let pc = &cfg.power_cap;
        let sp_cap = self.setpoint + pc.band_k;
        for (key, g) in self.gpus.iter_mut() {
            let (Some(st), Some(cap)) = (&g.st, &mut g.cap) else {
                continue;
            };
            let cdu = self.cdus.iter().find(|c| c.setup.hosts.contains(&key.host));
            let (state, saturated, leak, temps_unknown) = match cdu {
                Some(c) => (
                    c.state,
                    c.saturated,
                    self.alarms.is_active(&format!("leak:{}", c.setup.name)),
                    c.causes.contains(&FailsafeCause::GpuTemperaturesUnknown),
                ),
                // No CDU cools this GPU as far as we know: the cap is the only actuator.
                None => (ControlState::Running, true, false, false),
            };
            // The enforced limit read back, when it is newer than our last write.
            let sample = g.latest.as_ref().filter(|s| s.at >= cap.written_at);
            let enforced = sample
                .and_then(|s| s.enforced_limit)
                .map(|w| w.get())
                .filter(|w| w.is_finite());
            if cap.written.is_none() && cap.in_flight.is_none() {
                // Until we write, the GPU's current limit is the one to return to.
                if let Some(e) = enforced {
                    let (_, hi) = cap_bounds(cfg, st, e);
                    if (hi - cap.original).abs() >= 0.5 && cap.applied >= cap.original - 0.5 {
                        cap.original = hi;
                        cap.applied = hi;
                        cap.pid.set_params(cap_params(cfg, st, hi));
                        cap.pid.force(hi);
                    }
                }
            }
            let (lo, hi) = cap_bounds(cfg, st, cap.original);
            let pmin = st.power_min.get();
            let pv = g.equiv;
            let desired = if g.hot || leak {
                // Emergency: the GPU's own minimum, this tick, bypassing every slew limit.
                cap.pid.force(lo);
                pmin
            } else {
                match state {
                    ControlState::Boot => {
                        cap.pid.force(cap.applied);
                        cap.applied
                    }
                    ControlState::Failsafe if temps_unknown || pv.is_none() => {
                        let safe = (pc.failsafe_percent / 100.0 * cap.original).max(pmin);
                        let u = cap.applied.min(safe);
                        cap.pid.force(u);
                        u
                    }
                    _ => match pv {
                        Some(pv) if saturated => match cap.pid.update(sp_cap, pv, 0.0, dt) {
                            Ok(t) => t.output,
                            Err(_) => cap.applied,
                        },
                        Some(pv) => {
                            let u = (cap.applied + pc.restore_w_per_s * dt).min(hi);
                            let _ = cap.pid.track(sp_cap, pv, 0.0, dt.max(1e-3), u);
                            u
                        }
                        None => cap.applied,
                    },
                }
            };
            cap.applied = desired;

            // Read-back: re-assert ours if something raised it, report (not fight) a lower one.
            let ours = cap.written.unwrap_or(cap.original);
            cap.external = None;
            if let (Some(e), false) = (enforced, cap.dry_run) {
                if e < ours - pc.readback_tolerance_w && cap.in_flight.is_none() {
                    cap.external = Some(e);
                } else if cap.written.is_some() && e > ours + pc.readback_tolerance_w {
                    cap.force_write = true;
                }
            }
            let base = cap.in_flight.or(cap.written).unwrap_or(cap.original);
            let mut due = cap.force_write || (desired - base).abs() >= pc.write_deadband_w;
            if let Some(e) = cap.external {
                // Never raise above a lower limit someone else set.
                if desired > e - pc.readback_tolerance_w {
                    due = false;
                }
            }
            if due {
                acts.push(Actuation::SetPowerCap {
                    gpu: key.clone(),
                    limit: Watts(desired),
                });
                cap.in_flight = Some(desired);
                cap.force_write = false;
            }
            let t = cap.pid.terms();
            let reason = if g.hot || leak {
                format!(
                    "emergency ({}): the GPU's minimum limit",
                    if leak {
                        "leak"
                    } else {
                        "at the slowdown threshold"
                    }
                )
            } else {
                match (state, pv) {
                    (ControlState::Boot, _) => "booting: limit held".to_string(),
                    (ControlState::Failsafe, None) => format!(
                        "failsafe with the GPU temperature unknown: {}% of the original limit",
                        pc.failsafe_percent
                    ),
                    (_, Some(pv)) if saturated => format!(
                        "pump spent: {key} at {pv:.1} °C, cap set point {sp_cap:.1} °C, error {:+.1} K; \
                         P {:+.1} I {:+.1}",
                        pv - sp_cap,
                        t.p,
                        t.i
                    ),
                    (_, Some(pv)) => format!(
                        "pump has headroom ({key} at {pv:.1} °C): limit returning towards the original"
                    ),
                    (_, None) => "no temperature for this GPU: limit held".to_string(),
                }
            };
            loops.push(LoopReport {
                name: format!("power:{key}"),
                setpoint: sp_cap,
                measured: pv,
                p: t.p,
                i: t.i,
                d: t.d,
                ff: t.ff,
                output: desired,
                reason,
            });
            if let Some(e) = cap.external {
                warn(&mut self.alarms, suppress, now, format!("power_limit_external:{key}"), Severity::Warning, format!(
                    "{key}: enforced power limit {e:.0} W is below ours ({ours:.0} W): another agent limits this GPU; coolantd leaves it alone"
                ));
            }
            if cap.failures >= pc.write_failures_alarm {
                warn(
                    &mut self.alarms,
                    suppress,
                    now,
                    format!("power_cap_write_failed:{key}"),
                    Severity::Warning,
                    format!(
                        "{key}: {} power limit writes in a row failed; retrying every tick",
                        cap.failures
                    ),
                );
            }
        }
    }
}

/// Small helpers on `Option` that read better at the call sites above.
trait OptExt<T> {
    fn is_none_or_older(&self, t: Mono) -> bool;
}

impl OptExt<GpuSample> for Option<&GpuSample> {
    fn is_none_or_older(&self, t: Mono) -> bool {
        self.is_none_or_at(|s| s.at < t)
    }
}

impl OptExt<CduSample> for Option<&CduSample> {
    fn is_none_or_older(&self, t: Mono) -> bool {
        self.is_none_or_at(|s| s.at < t)
    }
}

impl OptExt<Mono> for Option<Mono> {
    fn is_none_or_older(&self, t: Mono) -> bool {
        match self {
            None => true,
            Some(x) => *x <= t,
        }
    }
}

trait NoneOr<T> {
    fn is_none_or_at(&self, f: impl FnOnce(&T) -> bool) -> bool;
}

impl<T> NoneOr<T> for Option<&T> {
    fn is_none_or_at(&self, f: impl FnOnce(&T) -> bool) -> bool {
        match self {
            None => true,
            Some(x) => f(x),
        }
    }
}

trait FarFrom {
    fn is_none_or_far(&self, v: f64, deadband: f64) -> bool;
}

impl FarFrom for Option<f64> {
    fn is_none_or_far(&self, v: f64, deadband: f64) -> bool {
        match self {
            None => true,
            Some(b) => (v - b).abs() >= deadband.max(1e-9),
        }
    }
}
