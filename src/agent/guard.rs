//! The local thermal guard: one GPU's own power-cap loop on its margin to slowdown, with no
//! network in the path.
//!
//! ```text
//!            margin ≤ critical_margin                 margin > critical_margin
//!   ┌──────────┐ ─────────────────────────► ┌──────────┐ ──────────────────► ┌───────────┐
//!   │ Watching │                            │ Critical │                     │ Regulating│
//!   │ cap=max  │ ◄───── cap back at max ─── │ cut/tick │ ◄── critical again  │ PID, ≤W/s │
//!   └──────────┘                            └──────────┘                     └───────────┘
//! ```
//!
//! - The margin is the smaller of (slowdown − core) and (HBM max − HBM).
//! - Critical (margin at or under `critical_margin`): the cap is cut in the same tick, to
//!   `1 − critical_cut` of the lower of the current cap and the measured power (the board
//!   minimum when power is unknown), and again every tick while critical.
//! - Otherwise a PID ([`crate::control::pid`]) on the margin, set point `target_margin`:
//!   it lowers the cap as fast as it likes and raises it by at most `raise_w_per_s`, so a
//!   cooled GPU gets its power back gradually, never in one step.
//! - The cap never leaves the board's `[power_min, original limit]`.
//! - No temperature (the read failed): the cap holds; a blind guard never raises.

use crate::control::pid::{Action, Pid, PidParams};
use crate::model::Mono;
use crate::units::{Celsius, Kelvin, Watts};
use std::time::Duration;

/// Tuning of the guard; the defaults suit H100/H200 boards (slowdown 89 °C, 200–700 W).
#[derive(Debug, Clone, PartialEq)]
pub struct GuardParams {
    /// The margin to slowdown the guard regulates to.
    pub target_margin: Kelvin,
    /// At or under this margin the cap is cut in the same tick.
    pub critical_margin: Kelvin,
    /// Proportional gain, W per K of margin error.
    pub kp: f64,
    /// Integral gain, W per (K · s).
    pub ki: f64,
    /// Fastest rise of the cap, W/s.
    pub raise_w_per_s: f64,
    /// Share of power cut per critical tick (0.25: to 75 %).
    pub critical_cut: f64,
    /// The tick period, used as the step of the first tick.
    pub period: Duration,
}

impl Default for GuardParams {
    fn default() -> Self {
        GuardParams {
            target_margin: Kelvin(5.0),
            critical_margin: Kelvin(1.0),
            kp: 25.0,
            ki: 5.0,
            raise_w_per_s: 10.0,
            critical_cut: 0.25,
            period: Duration::from_secs(1),
        }
    }
}

/// One GPU's limits as the guard needs them (from the agent's facts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuLimits {
    pub index: u32,
    pub power_min: Watts,
    pub power_max: Watts,
    /// The limit before any cap; the guard never raises above it.
    pub original: Watts,
    pub slowdown: Celsius,
    pub hbm_max: Celsius,
}

impl GpuLimits {
    /// The highest cap the guard allows: the original limit, inside the board's range.
    pub fn ceiling(&self) -> Watts {
        self.original.clamp(self.power_min, self.power_max)
    }
}

/// What the guard did this tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GuardState {
    /// No temperature: the cap holds.
    Blind,
    /// The cap is at the ceiling; nothing to do.
    Watching,
    /// The PID holds the cap under the ceiling.
    Regulating,
    /// At or near slowdown: the cap was cut this tick.
    Critical,
}

/// One guard step's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardStep {
    pub cap: Watts,
    pub state: GuardState,
    pub margin: Option<Kelvin>,
}

/// One GPU's guard.
#[derive(Debug, Clone)]
pub struct Guard {
    limits: GpuLimits,
    params: GuardParams,
    pid: Pid,
    last: Option<Mono>,
}

impl Guard {
    pub fn new(limits: GpuLimits, params: GuardParams) -> Guard {
        let pid = Pid::new(
            PidParams {
                kp: params.kp,
                ki: params.ki,
                kd: 0.0,
                derivative_filter_s: 0.0,
                tracking_time_s: None,
                out_min: limits.power_min.get(),
                out_max: limits.ceiling().get(),
                slew_up_per_s: params.raise_w_per_s,
                // Lowering a cap is the safe direction: no limit.
                slew_down_per_s: f64::INFINITY,
                action: Action::Reverse,
            },
            limits.ceiling().get(),
        );
        Guard {
            limits,
            params,
            pid,
            last: None,
        }
    }

    pub fn limits(&self) -> &GpuLimits {
        &self.limits
    }

    /// The guard's current cap.
    pub fn cap(&self) -> Watts {
        Watts(self.pid.output())
    }

    /// Takes over from a cap set by someone else (an expired lease): the guard starts there
    /// and raises it only at its own bounded rate.
    pub fn hand_over(&mut self, cap: Watts) {
        self.pid.force(cap.get());
    }

    /// One tick with the GPU's latest readings.
    pub fn step(
        &mut self,
        now: Mono,
        core: Option<Celsius>,
        hbm: Option<Celsius>,
        power: Option<Watts>,
    ) -> GuardStep {
        let dt = match self.last {
            Some(last) if now > last => (now - last).as_secs_f64(),
            Some(_) => {
                // Same instant (or time going backwards): nothing new to integrate.
                return self.result(GuardState::Watching, self.margin(core, hbm));
            }
            None => self.params.period.as_secs_f64(),
        };
        self.last = Some(now);
        let Some(margin) = self.margin(core, hbm) else {
            return self.result(GuardState::Blind, None);
        };
        let sp = self.params.target_margin.get();
        if margin.get() <= self.params.critical_margin.get() {
            let from = match power {
                Some(p) if p.is_finite() => p.min(self.cap()),
                _ => self.limits.power_min,
            };
            let cut = Watts(from.get() * (1.0 - self.params.critical_cut.clamp(0.0, 1.0)));
            let cap = cut.clamp(self.limits.power_min, self.limits.ceiling());
            // Tracking keeps the integrator consistent, so regulation resumes from here.
            let _ = self.pid.track(sp, margin.get(), 0.0, dt, cap.get());
            return self.result(GuardState::Critical, Some(margin));
        }
        if self.pid.update(sp, margin.get(), 0.0, dt).is_err() {
            return self.result(GuardState::Blind, Some(margin));
        }
        let state = if self.cap().get() >= self.limits.ceiling().get() - 0.5 {
            GuardState::Watching
        } else {
            GuardState::Regulating
        };
        self.result(state, Some(margin))
    }

    fn margin(&self, core: Option<Celsius>, hbm: Option<Celsius>) -> Option<Kelvin> {
        let core = core
            .filter(|c| c.is_finite())
            .map(|c| c.margin_to(self.limits.slowdown));
        let hbm = hbm
            .filter(|c| c.is_finite())
            .map(|c| c.margin_to(self.limits.hbm_max));
        match (core, hbm) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn result(&self, state: GuardState, margin: Option<Kelvin>) -> GuardStep {
        GuardStep {
            cap: self.cap(),
            state,
            margin,
        }
    }
}
