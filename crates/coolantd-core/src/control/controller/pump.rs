//! The pump loop of one CDU: the PID on the hottest GPU with the heat-load feed-forward,
//! the overrides of the supervisor's states, pump-following supervision and the writes.

use super::write::{WritePolicy, WriteTracker};
use crate::control::config::{ControlConfig, ControlledVariable};
use crate::control::feedforward::{FeedForward, FfInput, PowerReading};
use crate::control::pid::{Action, Pid, PidParams};
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
}

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
        }
    }

    pub fn set_plate_model(&mut self, model: Option<crate::control::feedforward::PlateModel>) {
        self.ff.set_model(model);
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
        let cmd = match (override_speed, inp.controlled) {
            (Some(u), Some(pv)) => {
                let _ = self.pid.track(sp, pv, ff.ff, dt.max(1e-3), u);
                u.clamp(lo, hi)
            }
            (Some(u), None) => {
                self.pid.force(u);
                u.clamp(lo, hi)
            }
            (None, Some(pv)) => match self.pid.update(sp, pv, ff.ff, dt) {
                Ok(t) => t.output,
                Err(_) => self.pid.output(),
            },
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
        }
    }
}
