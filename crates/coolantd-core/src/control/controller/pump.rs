//! The pump loop of one CDU: the PID on the hottest GPU with the heat-load feed-forward,
//! the overrides of the supervisor's states, pump-following supervision and the writes.

use super::write::{WritePolicy, WriteTracker};
use crate::control::config::{ControlConfig, ControlledVariable};
use crate::control::feedforward::{FeedForward, FfInput, PowerReading};
use crate::control::pid::{Action, Pid, PidParams};
use crate::control::tuning::{simc, LoopModel};
use crate::control::CduSetup;
use crate::model::{Actuation, ControlState, FeedForwardReport, LoopReport, Mono};
use crate::units::Percent;

/// The pump speeds this loop may command on `s`: the configured range within the profile's.
pub(super) fn pump_range(cfg: &ControlConfig, s: &CduSetup) -> (f64, f64) {
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

pub(super) fn pump_params(cfg: &ControlConfig, s: &CduSetup) -> PidParams {
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

/// Whether the pump follows its acknowledged command; the time it went off is only kept
/// while it is off.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Following {
    /// Following, or nothing to compare (no feedback, nothing acknowledged, a dry run, local
    /// mode).
    Yes,
    /// The feedback has been off the command since `since`; `fault` once that lasted
    /// `pump.follow_timeout_s`.
    Off { since: Mono, fault: bool },
}

/// One CDU's pump loop.
#[derive(Debug, Clone)]
pub(super) struct PumpLoop {
    pub pid: Pid,
    /// The speed this loop commands now, %.
    pub command: f64,
    pub write: WriteTracker,
    following: Following,
    watchdog: u16,
    ff: FeedForward,
    pub ff_report: Option<FeedForwardReport>,
    /// The pump has nothing more to give (or cannot be moved): the cap loop takes over.
    pub saturated: bool,
    /// The controlled value's recent samples (for its envelope), its envelope last tick and
    /// the envelope's filtered rate of change, K/s.
    recent_pv: std::collections::VecDeque<(Mono, f64)>,
    recent_env: std::collections::VecDeque<(Mono, f64)>,
    rate: f64,
    /// The anticipation raised the command above the PID's this tick.
    pub anticipating: bool,
    /// The command was held (not raised) this tick: the core turned back down within the
    /// feed-forward's aim after a load step.
    pub holding: bool,
    /// The command's rise was paced this tick: the core approaches the set point from below
    /// slowly enough that the pump reaches the feed-forward's speed in time anyway.
    pub pacing: bool,
    /// When the feed-forward last rose (a load step seen in the GPUs' power).
    ff_rose_at: Option<Mono>,
    /// The feed-forward rose last tick too (one load step spans several ticks of its slew).
    ff_rising: bool,
    /// The integrator's share when the feed-forward began its latest rise, %.
    i_at_rise: f64,
    /// The loop model for gain scheduling (`[control.pid] gain_schedule`).
    loop_model: Option<LoopModel>,
    /// The scheduled gains in force, (kp, ki).
    pub scheduled: Option<(f64, f64)>,
    /// This tick's supply temperature, loop flow and number of GPUs, for the cap loop's
    /// feed-forward.
    last_supply: Option<f64>,
    last_flow: Option<f64>,
    gpus: usize,
}

/// How long after a rise of the feed-forward the anticipation may act, s: a load step's
/// approach to the set point, not a periodic load's ripple around it.
const ANTICIPATE_WINDOW_S: f64 = 60.0;
/// A rise of the feed-forward by more than this in one tick is a load step, %; smaller ones
/// are the model following the supply temperature and the learnt flow.
const LOAD_STEP_PCT: f64 = 0.5;
/// The anticipation acts only where feedback alone would overshoot by more than this, K
/// (the H100's target in `cargo bench --bench control_quality`). Below it, raising the pump
/// early only cools the approach: at 0.5 K the H200 (benchmark trace) paid 5 % more pump
/// energy and 17 % more IAE for 0.06 K less overshoot.
const ANTICIPATE_MIN_OVERSHOOT_K: f64 = 1.0;

/// The approach's ceiling lets the pump reach the feed-forward's speed this long before the
/// core reaches the set point, s. Measured with `cargo bench --bench control_quality`: 5, 10
/// and 20 s give the same figures on the H200 and H100 but for the cold start's IAE (42–43
/// K·s); 2 s (the anticipation's lead) lets the H200's training workload run to 0.51 K and
/// settle in 119 s instead of 20. Several plate time constants of the H200, a fraction of the
/// H100's (where the anticipation acts first).
const APPROACH_LEAD_S: f64 = 10.0;

/// The controlled value's rate is its envelope's slope over this window, s: longer than the
/// die's own jump after a load step (a few seconds), which says nothing about when the plate
/// and coolant bring the core to the set point; long enough for whole-°C NVML readings.
const RATE_WINDOW_S: f64 = 10.0;
/// No slope is taken from fewer seconds than this (after a load step the window restarts).
const RATE_MIN_SPAN_S: f64 = 5.0;

/// What the pump loop needs to know this tick.
#[derive(Debug, Clone, Copy)]
pub(super) struct PumpInput<'a> {
    pub now: Mono,
    pub dt: f64,
    pub setpoint: f64,
    pub state: ControlState,
    pub local: bool,
    /// The operator's speed in manual mode.
    pub manual: Option<f64>,
    pub controlled: Option<f64>,
    pub feedback: Option<f64>,
    pub supply: Option<f64>,
    pub flow: Option<f64>,
    pub powers: &'a [PowerReading],
    pub hosts: usize,
}

impl PumpLoop {
    pub fn new(cfg: &ControlConfig, setup: &CduSetup) -> PumpLoop {
        let params = pump_params(cfg, setup);
        let start = cfg.pump.start_speed.clamp(params.out_min, params.out_max);
        PumpLoop {
            pid: Pid::new(params, start),
            command: start,
            write: WriteTracker::default(),
            following: Following::Yes,
            watchdog: 0,
            ff: FeedForward::default(),
            ff_report: None,
            saturated: false,
            recent_pv: std::collections::VecDeque::new(),
            recent_env: std::collections::VecDeque::new(),
            rate: 0.0,
            anticipating: false,
            holding: false,
            pacing: false,
            ff_rose_at: None,
            ff_rising: false,
            i_at_rise: 0.0,
            loop_model: None,
            scheduled: None,
            last_supply: None,
            last_flow: None,
            gpus: 0,
        }
    }

    pub fn set_plate_model(&mut self, model: Option<crate::control::feedforward::PlateModel>) {
        self.ff.set_model(model);
    }

    pub fn set_loop_model(&mut self, model: Option<LoopModel>) {
        self.loop_model = model;
    }

    /// SIMC gains at the operating point: the present command and the load it holds at the set
    /// point with this supply temperature; moved in bumplessly (`Pid::retune`).
    fn schedule_gains(&mut self, cfg: &ControlConfig, setup: &CduSetup, inp: &PumpInput<'_>) {
        let model = self.loop_model.filter(|_| cfg.pid.gain_schedule);
        let (Some(m), Some(supply)) = (model, inp.supply) else {
            if self.scheduled.take().is_some() {
                self.pid.set_params(pump_params(cfg, setup));
            }
            return;
        };
        let (lo, _) = pump_range(cfg, setup);
        let u = self.command.max(lo).max(1.0);
        let g = simc(&m.fopdt(m.power_held(u, supply, inp.setpoint), u));
        // Outside the model's range (no load held, a set point below the supply) keep what is
        // in force.
        if !(g.kp.is_finite() && g.ki.is_finite() && g.kp > 0.0 && g.ki > 0.0) {
            return;
        }
        let (kp, ki) = (g.kp.min(1000.0), g.ki.min(1000.0));
        self.pid.retune(kp, ki);
        self.scheduled = Some((kp, ki));
    }

    /// For the cap loop's feed-forward, within a minute of a load step: the per-GPU power
    /// that holds a core at `target` °C with the pump as it is (the plate model at this tick's
    /// supply temperature and flow per GPU); `None` without a model or readings, or outside
    /// that window.
    pub fn power_held(&self, now: Mono, target: f64) -> Option<f64> {
        let recent = self
            .ff_rose_at
            .is_some_and(|at| now.saturating_sub(at).as_secs_f64() <= ANTICIPATE_WINDOW_S);
        let m = self.ff.model().filter(|_| recent)?;
        let (supply, flow) = (self.last_supply?, self.last_flow?);
        if self.gpus == 0 || !flow.is_finite() || flow <= 0.0 {
            return None;
        }
        let per_gpu = flow / self.gpus as f64;
        let r_pc =
            m.plate_to_coolant_k_per_w * (m.reference_flow_lpm / per_gpu).powf(m.flow_exponent);
        let p = (target - supply) / (m.die_to_plate_k_per_w + r_pc);
        (p.is_finite() && p > 0.0).then_some(p)
    }

    /// Pump following: the acknowledged command against the feedback.
    pub fn supervise_following(
        &mut self,
        now: Mono,
        cfg: &ControlConfig,
        feedback: Option<f64>,
        local: bool,
    ) {
        match (feedback, self.write.acked()) {
            (Some(fb), Some(cmd))
                if !self.write.dry_run()
                    && !local
                    && (fb - cmd).abs() > cfg.pump.follow_tolerance =>
            {
                let since = match self.following {
                    Following::Off { since, .. } => since,
                    Following::Yes => now,
                };
                let fault = now.saturating_sub(since).as_secs_f64() >= cfg.pump.follow_timeout_s;
                self.following = Following::Off { since, fault };
            }
            _ => self.following = Following::Yes,
        }
    }

    /// The feedback has been off the command for longer than `pump.follow_timeout_s`.
    pub fn fault(&self) -> bool {
        matches!(self.following, Following::Off { fault: true, .. })
    }

    /// The speed the supervisor's state imposes, if any (otherwise the PID decides).
    fn override_speed(
        &self,
        cfg: &ControlConfig,
        inp: &PumpInput<'_>,
        lo: f64,
        hi: f64,
    ) -> Option<f64> {
        match inp.state {
            ControlState::Emergency => Some(hi),
            ControlState::Boot => Some(cfg.pump.start_speed.clamp(lo, hi)),
            ControlState::Failsafe => {
                Some(self.pid.output().max(cfg.pump.failsafe_speed.clamp(lo, hi)))
            }
            ControlState::Running | ControlState::Degraded => {
                if inp.local {
                    // The CDU runs itself; track what it does so that remote mode resumes
                    // from there.
                    Some(inp.feedback.unwrap_or(self.pid.output()).clamp(lo, hi))
                } else {
                    inp.manual
                }
            }
        }
    }

    // The feed-forward's hand-over and adaptation belong with the PID update they adjust;
    // apart they would need half of this loop's state passed around.
    /// Decides this tick's command; `write_failed` says the pump's writes are failing.
    pub fn step(
        &mut self,
        cfg: &ControlConfig,
        setup: &CduSetup,
        inp: &PumpInput<'_>,
        write_failed: bool,
    ) -> f64 {
        let (lo, hi) = pump_range(cfg, setup);
        let sp = inp.setpoint;
        let dt = inp.dt;
        (self.last_supply, self.last_flow, self.gpus) = (inp.supply, inp.flow, inp.powers.len());
        let override_speed = self.override_speed(cfg, inp, lo, hi);
        // The heat-load feed-forward; engaging and disengaging hand its share to and from
        // the integrator, so neither moves the pump.
        let (ff_before, ff_was_on) = (
            self.ff.output(),
            self.ff_report.as_ref().is_some_and(|r| r.engaged),
        );
        let ff = self.ff.step(
            &cfg.feed_forward,
            &FfInput {
                now: inp.now,
                dt: dt.max(1e-3),
                setpoint: sp,
                powers: inp.powers,
                hosts: inp.hosts,
                supply: inp.supply,
                flow: inp.flow,
                pump_feedback: inp.feedback,
                out_min: lo,
                out_max: hi,
            },
        );
        if ff.engaged != ff_was_on {
            self.pid.shift_feed_forward(ff_before, ff.ff);
        }
        let rising = ff.engaged && ff_was_on && ff.ff > ff_before + LOAD_STEP_PCT;
        if !ff.engaged {
            self.ff_rose_at = None;
        } else if rising {
            self.ff_rose_at = Some(inp.now);
            if !self.ff_rising {
                self.i_at_rise = self.pid.terms().i;
            }
        }
        self.ff_rising = rising;
        let step_seen = self
            .ff_rose_at
            .is_some_and(|at| inp.now.saturating_sub(at).as_secs_f64() <= ANTICIPATE_WINDOW_S);
        if self.ff_rose_at == Some(inp.now) {
            // The load rose: the die's own jump follows within seconds and says nothing about
            // when the plate and coolant bring the core to the set point; measure the slope
            // from here.
            self.recent_env.clear();
        }
        let envelope = self.track_rate(inp.now, inp.controlled, cfg.feed_forward.hold_down_s);
        if override_speed.is_none() {
            self.schedule_gains(cfg, setup, inp);
        }
        let prev_cmd = self.command;
        self.anticipating = false;
        self.holding = false;
        self.pacing = false;
        let cmd = match (override_speed, inp.controlled) {
            (Some(u), Some(pv)) => {
                let _ = self.pid.track(sp, pv, ff.ff, dt.max(1e-3), u);
                u.clamp(lo, hi)
            }
            (Some(u), None) => {
                self.pid.force(u);
                u.clamp(lo, hi)
            }
            (None, Some(pv)) => {
                let u = match self.pid.update(sp, pv, ff.ff, dt) {
                    Ok(t) => t.output,
                    Err(_) => self.pid.output(),
                };
                match self.anticipation(
                    cfg,
                    sp,
                    envelope.unwrap_or(pv),
                    prev_cmd,
                    // Aimed at what the loop has been needing: where the integrator held
                    // the pump below the model's speed before this rise (a periodic load:
                    // the plate is still warm, and the pump, falling at its slew, cannot
                    // come back down within the next off-phase), the anticipation aims
                    // that much lower. It never aims above the model's speed.
                    (ff.engaged && step_seen).then_some(ff.ff + self.i_at_rise.min(0.0)),
                ) {
                    Some(floor) if floor > u => {
                        // At the pump's own slew, from where it is; the integrator takes
                        // the floor, so the PID resumes from here at the set point.
                        let applied = floor
                            .min(prev_cmd + cfg.pump.slew_up_per_s * dt)
                            .clamp(lo, hi);
                        if applied > u {
                            self.pid.preload(applied, ff.ff);
                            self.anticipating = true;
                            applied
                        } else {
                            u
                        }
                    }
                    _ if u > prev_cmd
                        && self.turned_back_within_aim(
                            cfg,
                            sp,
                            pv,
                            envelope.unwrap_or(pv),
                            ff.engaged && step_seen,
                        ) =>
                    {
                        // The integrator takes the hold, so the PID resumes from here.
                        self.pid.hold_below(prev_cmd);
                        self.holding = true;
                        prev_cmd
                    }
                    _ => match self.approach_ceiling(
                        cfg,
                        sp,
                        envelope.unwrap_or(pv),
                        (ff.engaged && step_seen).then_some(ff.ff),
                    ) {
                        Some(ceiling) if u > ceiling.max(prev_cmd) => {
                            let applied = ceiling.max(prev_cmd);
                            self.pid.hold_below(applied);
                            self.pacing = true;
                            applied
                        }
                        _ => u,
                    },
                }
            }
            (None, None) => self.pid.output(),
        };
        // Learn what the loop needed while it sits at its set point, unsaturated.
        let margin = cfg.power_cap.saturation_margin.max(0.5);
        if override_speed.is_none()
            && ff.engaged
            && inp
                .controlled
                .is_some_and(|pv| (pv - sp).abs() <= cfg.feed_forward.adapt_band_k)
            && cmd > lo + margin
            && cmd < hi - margin
        {
            let before = self.ff.output();
            let delta = self.ff.adapt(&cfg.feed_forward, dt, cmd);
            self.pid.shift_feed_forward(before, before + delta);
        }
        self.ff_report = Some(FeedForwardReport {
            cdu: setup.name.clone(),
            engaged: ff.engaged,
            reason: ff.reason.clone(),
            heat_load_w: ff.heat_load_w,
            model_speed: ff.model_speed,
            correction: self.ff.correction(),
            ff: self.ff.output(),
        });
        self.command = cmd;
        self.saturated = inp.local
            || self.fault()
            || write_failed
            || inp.state == ControlState::Failsafe
            || cmd >= hi - cfg.power_cap.saturation_margin;
        cmd
    }

    /// Follows the controlled value's upper envelope (its highest sample within `window_s`,
    /// so that a periodic load's dips do not read as a falling and then steeply rising
    /// temperature) and the envelope's slope over `RATE_WINDOW_S`; forgets both when the value
    /// is unknown. Returns the envelope.
    fn track_rate(&mut self, now: Mono, pv: Option<f64>, window_s: f64) -> Option<f64> {
        let Some(pv) = pv.filter(|v| v.is_finite()) else {
            self.recent_pv.clear();
            self.recent_env.clear();
            self.rate = 0.0;
            return None;
        };
        self.recent_pv.push_back((now, pv));
        while self
            .recent_pv
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at).as_secs_f64() > window_s)
        {
            self.recent_pv.pop_front();
        }
        let env = self.recent_pv.iter().map(|(_, v)| *v).fold(pv, f64::max);
        self.recent_env.push_back((now, env));
        while self
            .recent_env
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at).as_secs_f64() > RATE_WINDOW_S)
        {
            self.recent_env.pop_front();
        }
        self.rate = match self.recent_env.front() {
            Some((at, first)) if now.saturating_sub(*at).as_secs_f64() >= RATE_MIN_SPAN_S => {
                (env - first) / now.saturating_sub(*at).as_secs_f64()
            }
            _ => 0.0,
        };
        Some(env)
    }

    /// The feed-forward's speed as a floor for the command, when the controlled value rises
    /// towards the set point faster than the pump could reach that speed: below the set point
    /// the feedback terms hold the pump at its minimum, and the feed-forward alone (added to a
    /// large negative P term) would not move it before the overshoot had begun.
    fn anticipation(
        &self,
        cfg: &ControlConfig,
        sp: f64,
        pv: f64,
        cmd: f64,
        ff: Option<f64>,
    ) -> Option<f64> {
        let lead = cfg.feed_forward.anticipate_lead_s;
        let ff = ff?;
        if lead <= 0.0 || pv >= sp || self.rate <= 0.0 || ff <= cmd {
            return None;
        }
        // Just in time: the speed from which the pump, at its slew limit, reaches the
        // feed-forward's speed `lead` seconds before the set point is reached.
        let time_to_sp = (sp - pv) / self.rate;
        // Feedback alone would let the core run on for the pump's ramp and lead at this
        // slope; where that stays small the anticipation would only cool the approach.
        let ramp_s = (ff - cmd) / cfg.pump.slew_up_per_s.max(1e-3) + lead;
        if self.rate * ramp_s <= ANTICIPATE_MIN_OVERSHOOT_K {
            return None;
        }
        let floor = ff - cfg.pump.slew_up_per_s * (time_to_sp - lead).max(0.0);
        (floor > cmd).then_some(floor)
    }

    /// Whether the feedback should not raise the pump further this tick: within a minute of a
    /// load step (`step_seen`), the core is above the set point but within the feed-forward's
    /// aim (`aim_above_k`), and it has turned back down (below its recent peak, or its
    /// envelope falling). The term was sized for a core that far above the set point, so the
    /// core is where the feed-forward meant it to be and is already coming down; raising the
    /// pump further only buys tenths of a kelvin sooner at the cube of the speed. On the H200
    /// (benchmark trace) the feedback otherwise ran the pump from 63 to 78 % while the core
    /// fell from 0.46 to 0.30 K above the set point, and then back down to 55 % (see
    /// `hold_after_peak`'s default for the figures). Outside that window and band the PID
    /// acts as before.
    fn turned_back_within_aim(
        &self,
        cfg: &ControlConfig,
        sp: f64,
        pv: f64,
        envelope: f64,
        step_seen: bool,
    ) -> bool {
        let aim = cfg.feed_forward.aim_above_k;
        cfg.feed_forward.hold_after_peak
            && step_seen
            && aim > 0.0
            && pv > sp
            && pv <= sp + aim
            && (self.rate < 0.0 || pv < envelope)
    }

    /// The highest command the approach needs, while the core (its envelope `pv`) still rises
    /// towards the set point from below within a minute of a load step (`ff`: the
    /// feed-forward's speed then): the speed from which the pump, at its slew limit, reaches
    /// `ff` `APPROACH_LEAD_S` before the core reaches the set point. The mirror of
    /// [`PumpLoop::anticipation`]'s floor: the feed-forward's speed is the steady state's, but
    /// while the plate and the loop are still warming (a job on a cold loop) the core needs
    /// less, and the pump spent at the cube of its speed before the core gets there buys
    /// nothing. `None`: no ceiling this tick.
    fn approach_ceiling(
        &self,
        cfg: &ControlConfig,
        sp: f64,
        pv: f64,
        ff: Option<f64>,
    ) -> Option<f64> {
        let ff = ff.filter(|_| cfg.feed_forward.pace_approach)?;
        if pv >= sp || self.rate <= 0.0 {
            return None;
        }
        let time_to_sp = (sp - pv) / self.rate;
        Some(ff - cfg.pump.slew_up_per_s * (time_to_sp - APPROACH_LEAD_S).max(0.0))
    }

    /// The writes of this tick: the command when due, and the watchdog heartbeat. A CDU in
    /// local mode gets neither.
    pub fn writes(
        &mut self,
        now: Mono,
        cfg: &ControlConfig,
        setup: &CduSetup,
        local: bool,
        acts: &mut Vec<Actuation>,
    ) {
        if local {
            return;
        }
        let policy = WritePolicy {
            deadband: cfg.pump.write_deadband.max(1e-9),
            device_default: None,
            refresh_s: Some(cfg.pump.refresh_s),
        };
        if self.write.due(now, self.command, &policy) {
            acts.push(Actuation::SetPumpSpeed {
                cdu: setup.name.clone(),
                speed: Percent(self.command),
            });
            self.write.sent(now, self.command);
        }
        if setup.roles.contains(&crate::model::Role::Watchdog) {
            self.watchdog = self.watchdog.wrapping_add(1);
            acts.push(Actuation::FeedWatchdog {
                cdu: setup.name.clone(),
                value: self.watchdog,
            });
        }
    }

    /// This tick's loop report: the terms and why the pump runs at this speed.
    #[allow(clippy::too_many_arguments)] // One call site; the arguments are this tick's facts.
    pub fn report(
        &self,
        cfg: &ControlConfig,
        setup: &CduSetup,
        inp: &PumpInput<'_>,
        output: f64,
        hot: &[String],
        causes: &str,
        driver: Option<&str>,
    ) -> LoopReport {
        let t = self.pid.terms();
        LoopReport {
            name: format!("pump:{}", setup.name),
            setpoint: inp.setpoint,
            measured: inp.controlled,
            p: t.p,
            i: t.i,
            d: t.d,
            ff: t.ff,
            output,
            reason: self.reason(cfg, inp, hot, causes, driver),
        }
    }

    /// Why the pump runs at this speed.
    fn reason(
        &self,
        cfg: &ControlConfig,
        inp: &PumpInput<'_>,
        hot: &[String],
        causes: &str,
        driver: Option<&str>,
    ) -> String {
        let sp = inp.setpoint;
        let t = self.pid.terms();
        match inp.state {
            ControlState::Emergency => format!(
                "emergency: pump at its maximum{}",
                if hot.is_empty() {
                    " (leak)".to_string()
                } else {
                    format!(" ({} at the slowdown threshold)", hot.join(", "))
                }
            ),
            ControlState::Boot => "booting: start speed until every required input is valid".into(),
            ControlState::Failsafe => format!("failsafe ({causes}): at least the failsafe speed"),
            _ if inp.local => "the CDU is in local mode: following its own speed".into(),
            _ if inp.manual.is_some() => "manual mode: the operator's speed".into(),
            _ => match (inp.controlled, driver) {
                (Some(pv), Some(gpu)) => format!(
                    "PID: hottest GPU {gpu} at {pv:.1} °C ({}), set point {sp:.1} °C, error {:+.1} K; \
                     P {:+.1} I {:+.1} D {:+.1} FF {:+.1}{}{}",
                    match cfg.controlled_variable {
                        ControlledVariable::Core => "core",
                        ControlledVariable::HbmMargin => "HBM as core-equivalent",
                        ControlledVariable::Max => "core or HBM-equivalent, the higher",
                    },
                    pv - sp,
                    t.p,
                    t.i,
                    t.d,
                    t.ff,
                    match self.scheduled {
                        Some((kp, ki)) => format!(" (scheduled kp {kp:.1} ki {ki:.2})"),
                        None => String::new(),
                    },
                    if self.anticipating {
                        "; anticipating a load step: raised ahead of the set point"
                    } else if self.holding {
                        "; holding: the core turned back down within the feed-forward's aim"
                    } else if self.pacing {
                        "; pacing the approach: the pump reaches the feed-forward's speed in time"
                    } else {
                        ""
                    }
                ),
                _ => "no GPU temperature: holding the last output".into(),
            },
        }
    }
}
