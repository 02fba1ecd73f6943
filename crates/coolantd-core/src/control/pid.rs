//! A PID controller for plants that punish the usual shortcuts.
//!
//! What it does differently from a textbook or fan-controller PID, and why:
//! - The derivative acts on the measurement, not on the error, so a set-point change does not
//!   kick the output; it is low-pass filtered because GPU temperatures arrive quantised to 1 °C.
//! - Anti-windup by back-calculation: the integrator is pulled towards the value that makes the
//!   unsaturated output equal the applied one (after limits *and* slew), with tracking time
//!   constant `Tt`. After a long saturation the output leaves the limit as soon as the error
//!   reverses, instead of waiting for a wound-up integrator to unwind.
//! - Output limits are asymmetric and slew rates are separate up and down (a pump may speed up
//!   quickly for safety and slow down gently for stability).
//! - Manual and override modes *track*: the integrator is set so that the unsaturated output
//!   equals the applied value, hence the return to automatic is bumpless.
//! - Bad inputs (NaN, ±inf, `dt <= 0`) are rejected: the previous output holds, no state is
//!   touched, and the caller learns why.
//!
//! Direction: with [`Action::Reverse`] (cooling), a measurement above the set point raises the
//! output. The error is always defined so that a positive error asks for more output.
//!
//! Why one file over the ~700-line guideline: about 280 of its lines are unit tests (from
//! `mod tests` on); the controller itself is one small state machine best read whole.

use std::fmt;

/// Inputs beyond this magnitude are rejected as not finite: no physical quantity the core
/// controls comes near it, and products of such values with gains could overflow.
const MAX_INPUT: f64 = 1e9;

/// Which way the output acts on the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// More output raises the measurement (heating): error = set point − measurement.
    Direct,
    /// More output lowers the measurement (cooling, power capping): error = measurement − set point.
    Reverse,
}

impl Action {
    fn sign(self) -> f64 {
        match self {
            Action::Direct => 1.0,
            Action::Reverse => -1.0,
        }
    }
}

/// Tuning and limits of one PID loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PidParams {
    /// Proportional gain, output units per measurement unit.
    pub kp: f64,
    /// Integral gain, output units per (measurement unit · second).
    pub ki: f64,
    /// Derivative gain, output units · second per measurement unit.
    pub kd: f64,
    /// Time constant of the first-order filter on the derivative, seconds (0: unfiltered).
    pub derivative_filter_s: f64,
    /// Back-calculation tracking time constant, seconds; `None` picks Åström's rule of
    /// thumb: √(Ti·Td) with a derivative, Ti without one.
    pub tracking_time_s: Option<f64>,
    pub out_min: f64,
    pub out_max: f64,
    /// Largest rise of the output per second (`f64::INFINITY`: unlimited).
    pub slew_up_per_s: f64,
    /// Largest fall of the output per second (`f64::INFINITY`: unlimited).
    pub slew_down_per_s: f64,
    pub action: Action,
}

impl PidParams {
    /// Sanitises parameters so that no configuration can make the state non-finite.
    fn sanitised(mut self) -> PidParams {
        let fin = |v: f64, d: f64| {
            if v.is_finite() {
                v.clamp(-MAX_INPUT, MAX_INPUT)
            } else {
                d
            }
        };
        self.kp = fin(self.kp, 0.0);
        self.ki = fin(self.ki, 0.0).max(0.0);
        self.kd = fin(self.kd, 0.0);
        self.derivative_filter_s = fin(self.derivative_filter_s, 0.0).max(0.0);
        self.tracking_time_s = self.tracking_time_s.filter(|t| t.is_finite() && *t > 0.0);
        self.out_min = fin(self.out_min, 0.0);
        self.out_max = fin(self.out_max, self.out_min);
        if self.out_max < self.out_min {
            std::mem::swap(&mut self.out_min, &mut self.out_max);
        }
        let rate = |v: f64| {
            if v.is_nan() || v <= 0.0 {
                f64::INFINITY
            } else {
                v
            }
        };
        self.slew_up_per_s = rate(self.slew_up_per_s);
        self.slew_down_per_s = rate(self.slew_down_per_s);
        self
    }

    fn tracking_time(&self) -> f64 {
        if let Some(t) = self.tracking_time_s {
            return t;
        }
        if self.ki > 0.0 && self.kp.abs() > 0.0 {
            let ti = self.kp.abs() / self.ki;
            let td = self.kd.abs() / self.kp.abs();
            if td > 0.0 {
                (ti * td).sqrt()
            } else {
                ti
            }
        } else {
            // Pure integral or P/PD: track within a few seconds.
            1.0
        }
    }
}

/// Why an update was rejected. The previous output still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidReject {
    Measurement,
    Setpoint,
    FeedForward,
    TimeStep,
}

impl fmt::Display for PidReject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PidReject::Measurement => "measurement is not a finite number of sane size",
            PidReject::Setpoint => "set point is not a finite number of sane size",
            PidReject::FeedForward => "feed-forward is not a finite number of sane size",
            PidReject::TimeStep => "time step is not a positive finite number",
        })
    }
}

/// The terms of the latest step, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PidTerms {
    pub error: f64,
    pub p: f64,
    pub i: f64,
    pub d: f64,
    pub ff: f64,
    pub output: f64,
}

/// The PID state. Every field stays finite whatever the inputs.
#[derive(Debug, Clone)]
pub struct Pid {
    params: PidParams,
    integral: f64,
    output: f64,
    prev_pv: Option<f64>,
    dpv_filtered: f64,
    terms: PidTerms,
    manual: bool,
}

impl Pid {
    /// A controller whose output starts at `initial` (clamped to the limits), in automatic.
    pub fn new(params: PidParams, initial: f64) -> Pid {
        let params = params.sanitised();
        let output = if initial.is_finite() {
            initial.clamp(params.out_min, params.out_max)
        } else {
            params.out_min
        };
        Pid {
            params,
            integral: output,
            output,
            prev_pv: None,
            dpv_filtered: 0.0,
            terms: PidTerms {
                output,
                i: output,
                ..PidTerms::default()
            },
            manual: false,
        }
    }

    pub fn params(&self) -> &PidParams {
        &self.params
    }

    /// The output currently applied.
    pub fn output(&self) -> f64 {
        self.output
    }

    /// The terms of the latest accepted step.
    pub fn terms(&self) -> PidTerms {
        self.terms
    }

    pub fn is_manual(&self) -> bool {
        self.manual
    }

    /// Changes tuning or limits without a bump: the output is kept (clamped into new limits)
    /// and the integrator is re-initialised around it.
    pub fn set_params(&mut self, params: PidParams) {
        let params = params.sanitised();
        let p = params.kp * self.terms.error;
        let d = -params.action.sign() * params.kd * self.dpv_filtered;
        self.params = params;
        self.output = self.output.clamp(params.out_min, params.out_max);
        self.integral = self.bounded_integral(self.output - p - d - self.terms.ff);
        self.terms.p = p;
        self.terms.d = d;
        self.terms.i = self.integral;
        self.terms.output = self.output;
    }

    /// Changes kp and ki on the fly (gain scheduling) without a bump and without forgetting
    /// the loop's state: the integrator takes the change of the proportional term at the last
    /// error, so the unsaturated output stays where it was. `set_params` instead anchors on the
    /// applied output, which, called every tick, would forget each fall the slew limit cut
    /// short and ratchet the output up.
    pub fn retune(&mut self, kp: f64, ki: f64) {
        if !(kp.is_finite() && ki.is_finite() && kp >= 0.0 && ki >= 0.0) {
            return;
        }
        let error = self.terms.error;
        self.integral = self.bounded_integral(self.integral + (self.params.kp - kp) * error);
        self.params.kp = kp;
        self.params.ki = ki;
        self.terms.p = kp * error;
        self.terms.i = self.integral;
    }

    /// Hands output between the feed-forward and the integrator without a bump: when the
    /// feed-forward term changes from `from` to `to` for a reason other than the disturbance it
    /// measures (it engages, disengages, or its model is corrected), the integrator takes the
    /// difference, so the next output is where it would have been.
    pub fn shift_feed_forward(&mut self, from: f64, to: f64) {
        if from.is_finite() && to.is_finite() {
            self.integral = self.bounded_integral(self.integral + from - to);
            self.terms.i = self.integral;
            self.terms.ff = to;
        }
    }

    /// Switches to manual: the output is `value` (clamped) from now on until [`Pid::set_auto`].
    pub fn set_manual(&mut self, value: f64) {
        self.manual = true;
        if value.is_finite() {
            self.output = value.clamp(self.params.out_min, self.params.out_max);
            self.terms.output = self.output;
        }
    }

    /// Back to automatic. The integrator was tracking, so the next output continues from the
    /// manual value.
    pub fn set_auto(&mut self) {
        self.manual = false;
    }

    /// Keeps the integrator bounded to a band around the output range, so no input sequence
    /// can grow it without limit.
    fn bounded_integral(&self, v: f64) -> f64 {
        let span = (self.params.out_max - self.params.out_min).abs().max(1.0);
        let lo = self.params.out_min - 10.0 * span;
        let hi = self.params.out_max + 10.0 * span;
        if v.is_finite() {
            v.clamp(lo, hi)
        } else {
            self.integral
        }
    }

    fn check(sp: f64, pv: f64, ff: f64, dt: f64) -> Result<(), PidReject> {
        let ok = |v: f64| v.is_finite() && v.abs() <= MAX_INPUT;
        if !ok(pv) {
            return Err(PidReject::Measurement);
        }
        if !ok(sp) {
            return Err(PidReject::Setpoint);
        }
        if !ok(ff) {
            return Err(PidReject::FeedForward);
        }
        if !(dt.is_finite() && dt > 0.0 && dt <= MAX_INPUT) {
            return Err(PidReject::TimeStep);
        }
        Ok(())
    }

    /// Advances the filtered measurement derivative; returns the D term.
    fn derivative(&mut self, pv: f64, dt: f64) -> f64 {
        let raw = match self.prev_pv {
            Some(prev) => (pv - prev) / dt,
            None => 0.0,
        };
        let tf = self.params.derivative_filter_s;
        let alpha = if tf > 0.0 { dt / (tf + dt) } else { 1.0 };
        let next = self.dpv_filtered + alpha * (raw - self.dpv_filtered);
        if next.is_finite() {
            self.dpv_filtered = next;
        }
        self.prev_pv = Some(pv);
        // Derivative on the measurement: −s·kd·dpv/dt, s = +1 direct, −1 reverse.
        let d = -self.params.action.sign() * self.params.kd * self.dpv_filtered;
        if d.is_finite() {
            d
        } else {
            0.0
        }
    }

    /// One control step. In manual mode this tracks (see [`Pid::track`]) the manual value.
    pub fn update(&mut self, sp: f64, pv: f64, ff: f64, dt: f64) -> Result<PidTerms, PidReject> {
        if self.manual {
            let m = self.output;
            return self.track(sp, pv, ff, dt, m);
        }
        Self::check(sp, pv, ff, dt)?;
        let s = self.params.action.sign();
        let error = s * (sp - pv);
        let p = self.params.kp * error;
        let d = self.derivative(pv, dt);
        let v = p + self.integral + d + ff;
        let limited = if v.is_finite() {
            v.clamp(self.params.out_min, self.params.out_max)
        } else {
            self.output
        };
        let u = limited.clamp(
            self.output - self.params.slew_down_per_s * dt,
            self.output + self.params.slew_up_per_s * dt,
        );
        let i_before = self.integral;
        if self.params.ki > 0.0 {
            // Back-calculation: the gain on (u − v) is capped at 1 so that a tracking time
            // shorter than the step cannot overshoot.
            let k = (dt / self.params.tracking_time()).min(1.0);
            self.integral =
                self.bounded_integral(self.integral + self.params.ki * error * dt + k * (u - v));
        }
        self.output = u;
        self.terms = PidTerms {
            error,
            p,
            i: i_before,
            d,
            ff,
            output: u,
        };
        Ok(self.terms)
    }

    /// Follows an output imposed from outside (manual, boot, failsafe, a supervisor override):
    /// the output becomes `applied` (clamped to the limits, no slew) and the integrator is set
    /// so that the next automatic step starts from it without a bump. The measurement still
    /// feeds the derivative filter. With a bad measurement the output is still applied.
    pub fn track(
        &mut self,
        sp: f64,
        pv: f64,
        ff: f64,
        dt: f64,
        applied: f64,
    ) -> Result<PidTerms, PidReject> {
        if applied.is_finite() {
            self.output = applied.clamp(self.params.out_min, self.params.out_max);
        }
        Self::check(sp, pv, ff, dt)?;
        let error = self.params.action.sign() * (sp - pv);
        let p = self.params.kp * error;
        let d = self.derivative(pv, dt);
        self.integral = self.bounded_integral(self.output - p - d - ff);
        self.terms = PidTerms {
            error,
            p,
            i: self.integral,
            d,
            ff,
            output: self.output,
        };
        Ok(self.terms)
    }

    /// Applies an output imposed from outside as if the error were zero: the integrator takes
    /// all of it (less the feed-forward and the last derivative term), so that the PID resumes
    /// from `applied` without a bump when the measurement reaches the set point. `track` would
    /// instead fold the present proportional term into the integrator, which comes back as a
    /// kick of kp·|error| once the error closes.
    pub fn preload(&mut self, applied: f64, ff: f64) {
        if !(applied.is_finite() && ff.is_finite()) {
            return;
        }
        self.output = applied.clamp(self.params.out_min, self.params.out_max);
        self.integral = self.bounded_integral(self.output - ff - self.terms.d);
        self.terms.i = self.integral;
        self.terms.ff = ff;
        self.terms.output = self.output;
    }

    /// Holds this tick's output at `applied` where the step just made asked for more: the
    /// output becomes `applied` and the integrator is set so that, with the same error, the
    /// next step starts from it without a bump (this step's integral action is dropped, as
    /// in [`Pid::track`]). An `applied` at or above the output changes nothing.
    pub fn hold_below(&mut self, applied: f64) {
        if !applied.is_finite() || applied >= self.output {
            return;
        }
        let applied = applied.clamp(self.params.out_min, self.params.out_max);
        let t = self.terms;
        self.integral = self.bounded_integral(applied - t.p - t.d - t.ff);
        self.output = applied;
        self.terms.i = self.integral;
        self.terms.output = applied;
    }

    /// Applies an output without any measurement (it is unknown). The integrator is set to
    /// the output minus the last feed-forward, and the derivative history is forgotten, so that
    /// the first automatic step after the measurement returns starts from here.
    pub fn force(&mut self, applied: f64) {
        if applied.is_finite() {
            self.output = applied.clamp(self.params.out_min, self.params.out_max);
        }
        self.prev_pv = None;
        self.dpv_filtered = 0.0;
        self.integral = self.bounded_integral(self.output - self.terms.ff);
        self.terms = PidTerms {
            i: self.integral,
            output: self.output,
            ff: self.terms.ff,
            ..PidTerms::default()
        };
    }
}

/// The PID most fan controllers ship, kept for comparison benchmarks: derivative on the error
/// (kicks on set-point changes), no derivative filter, no slew limit, and anti-windup by
/// clamping only (the output always, the integrator only when `integral_limit` is given).
#[derive(Debug, Clone)]
pub struct NaivePid {
    pub kp: f64,
    pub ki: f64,
    pub kd: f64,
    pub out_min: f64,
    pub out_max: f64,
    pub action: Action,
    /// Clamp of the integral term, as phosphor-pid-control's `integralLimit`; `None`: unbounded.
    pub integral_limit: Option<(f64, f64)>,
    integral: f64,
    prev_error: Option<f64>,
    output: f64,
}

impl NaivePid {
    pub fn new(kp: f64, ki: f64, kd: f64, out_min: f64, out_max: f64, action: Action) -> NaivePid {
        NaivePid {
            kp,
            ki,
            kd,
            out_min,
            out_max,
            action,
            integral_limit: None,
            integral: 0.0,
            prev_error: None,
            output: out_min,
        }
    }

    pub fn output(&self) -> f64 {
        self.output
    }

    /// One step; a bad input keeps the previous output (the only concession to robustness).
    pub fn update(&mut self, sp: f64, pv: f64, dt: f64) -> f64 {
        if !(sp.is_finite() && pv.is_finite() && dt.is_finite() && dt > 0.0) {
            return self.output;
        }
        let e = self.action.sign() * (sp - pv);
        self.integral += self.ki * e * dt;
        if let Some((lo, hi)) = self.integral_limit {
            self.integral = self.integral.clamp(lo, hi);
        }
        let d = match self.prev_error {
            Some(pe) => self.kd * (e - pe) / dt,
            None => 0.0,
        };
        self.prev_error = Some(e);
        let v = self.kp * e + self.integral + d;
        self.output = if v.is_finite() {
            v.clamp(self.out_min, self.out_max)
        } else {
            self.output
        };
        self.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params() -> PidParams {
        PidParams {
            kp: 5.0,
            ki: 0.25,
            kd: 4.0,
            derivative_filter_s: 2.0,
            tracking_time_s: None,
            out_min: 20.0,
            out_max: 100.0,
            slew_up_per_s: 10.0,
            slew_down_per_s: 2.0,
            action: Action::Reverse,
        }
    }

    #[test]
    fn reverse_action_raises_output_when_too_hot() {
        let mut pid = Pid::new(params(), 50.0);
        let t = pid.update(65.0, 70.0, 0.0, 1.0).expect("valid input");
        assert!(t.output > 50.0, "hot plant must speed the pump up: {t:?}");
        let mut pid = Pid::new(params(), 50.0);
        let t = pid.update(65.0, 60.0, 0.0, 1.0).expect("valid input");
        assert!(t.output < 50.0, "cold plant must slow the pump down: {t:?}");
    }

    #[test]
    fn a_held_output_resumes_without_a_bump() {
        let mut pid = Pid::new(
            PidParams {
                kd: 0.0,
                ..params()
            },
            50.0,
        );
        let asked = pid
            .update(65.0, 66.0, 10.0, 1.0)
            .expect("valid input")
            .output;
        assert!(asked > 50.0, "{asked}");
        pid.hold_below(50.0);
        assert_eq!(pid.output(), 50.0);
        // A hold above the output changes nothing.
        pid.hold_below(60.0);
        assert_eq!(pid.output(), 50.0);
        // With the same error the next step starts from the held output.
        let next = pid
            .update(65.0, 66.0, 10.0, 1.0)
            .expect("valid input")
            .output;
        assert!((next - 50.0).abs() < 1e-9, "{next}");
    }

    #[test]
    fn nan_measurement_is_rejected_and_output_holds() {
        let mut pid = Pid::new(params(), 50.0);
        pid.update(65.0, 66.0, 0.0, 1.0).expect("valid input");
        let before = pid.output();
        assert_eq!(
            pid.update(65.0, f64::NAN, 0.0, 1.0),
            Err(PidReject::Measurement)
        );
        assert_eq!(
            pid.update(f64::INFINITY, 60.0, 0.0, 1.0),
            Err(PidReject::Setpoint)
        );
        assert_eq!(pid.update(65.0, 60.0, 0.0, 0.0), Err(PidReject::TimeStep));
        assert_eq!(pid.update(65.0, 60.0, 0.0, -1.0), Err(PidReject::TimeStep));
        assert_eq!(pid.output(), before);
    }

    #[test]
    fn feed_forward_adds_to_output() {
        let mut p = params();
        p.slew_up_per_s = f64::INFINITY;
        let mut a = Pid::new(p, 50.0);
        let mut b = Pid::new(p, 50.0);
        let ta = a.update(65.0, 65.0, 0.0, 1.0).expect("valid");
        let tb = b.update(65.0, 65.0, 10.0, 1.0).expect("valid");
        assert!((tb.output - ta.output - 10.0).abs() < 1e-9);
    }

    /// Ticks until the output leaves the upper limit after a long saturation, when the error
    /// reverses: ours by back-calculation, and a naive PID with an unbounded integrator.
    #[test]
    fn anti_windup_leaves_saturation_promptly_unlike_clamp_only() {
        let mut p = params();
        p.kd = 0.0;
        let mut pid = Pid::new(p, 60.0);
        let mut naive = NaivePid::new(p.kp, p.ki, 0.0, p.out_min, p.out_max, Action::Reverse);
        // 10 minutes 10 K too hot: the pump is at its maximum and cannot do more.
        for _ in 0..600 {
            pid.update(65.0, 75.0, 0.0, 1.0).expect("valid");
            naive.update(65.0, 75.0, 1.0);
        }
        assert_eq!(pid.output(), 100.0);
        assert_eq!(naive.output(), 100.0);
        // The load drops: 2 K below the set point from now on.
        let leave = |f: &mut dyn FnMut() -> f64| (1..=2000).find(|_| f() < 99.0);
        let ours = leave(&mut || pid.update(65.0, 63.0, 0.0, 1.0).expect("valid").output);
        let theirs = leave(&mut || naive.update(65.0, 63.0, 1.0));
        assert_eq!(
            ours,
            Some(1),
            "back-calculation must leave saturation at once"
        );
        let theirs = theirs.unwrap_or(usize::MAX);
        assert!(
            theirs > 100,
            "the clamp-only integrator unwinds slowly: {theirs} ticks"
        );
    }

    #[test]
    fn manual_to_auto_is_bumpless() {
        let mut pid = Pid::new(params(), 50.0);
        pid.set_manual(73.0);
        for _ in 0..20 {
            pid.update(65.0, 68.0, 0.0, 1.0).expect("valid");
        }
        assert_eq!(pid.output(), 73.0);
        pid.set_auto();
        let t = pid.update(65.0, 68.0, 0.0, 1.0).expect("valid");
        // Only the integral of one step may move it.
        assert!((t.output - 73.0).abs() <= 0.25 * 3.0 + 1e-9, "{t:?}");
    }

    #[test]
    fn set_params_is_bumpless() {
        let mut pid = Pid::new(params(), 50.0);
        for _ in 0..30 {
            pid.update(65.0, 67.0, 0.0, 1.0).expect("valid");
        }
        let before = pid.output();
        let mut p = params();
        p.kp = 12.0;
        p.ki = 1.0;
        pid.set_params(p);
        assert_eq!(pid.output(), before);
        let t = pid.update(65.0, 67.0, 0.0, 1.0).expect("valid");
        assert!((t.output - before).abs() <= 2.0 + 1e-9, "{before} -> {t:?}");
    }

    #[test]
    fn retune_is_bumpless_and_keeps_the_integrators_share() {
        let mut p = params();
        p.kd = 0.0;
        let mut fixed = Pid::new(p, 50.0);
        for _ in 0..30 {
            fixed.update(65.0, 66.0, 0.0, 1.0).expect("valid");
        }
        let mut tuned = fixed.clone();
        tuned.retune(15.0, 0.0);
        assert_eq!(tuned.output(), fixed.output(), "retune moved the output");
        // The same measurement next tick: the proportional term's change went into the
        // integrator, and without integral action on this step the output is unchanged.
        fixed.params.ki = 0.0;
        let a = fixed.update(65.0, 66.0, 0.0, 1.0).expect("valid").output;
        let b = tuned.update(65.0, 66.0, 0.0, 1.0).expect("valid").output;
        assert!((a - b).abs() < 1e-9, "fixed {a}, retuned {b}");
        // Bad gains are refused.
        tuned.retune(f64::NAN, 1.0);
        assert_eq!(tuned.params().kp, 15.0);
    }

    #[test]
    fn naive_pid_kicks_on_setpoint_change() {
        let mut n = NaivePid::new(5.0, 0.0, 20.0, 0.0, 100.0, Action::Reverse);
        n.update(55.0, 60.0, 1.0);
        let a = n.update(55.0, 60.0, 1.0);
        let b = n.update(53.0, 60.0, 1.0);
        // P moves by 10, and the error derivative adds a kick of 40 on top.
        assert!((b - a).abs() > 40.0, "{a} -> {b}");
    }

    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            8 => -200.0f64..200.0,
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
            1 => Just(0.0),
            1 => any::<f64>(),
        ]
    }

    fn any_dt() -> impl Strategy<Value = f64> {
        prop_oneof![
            8 => 0.01f64..5.0,
            1 => Just(0.0),
            1 => Just(-1.0),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Update(f64, f64, f64, f64),
        Manual(f64),
        Auto,
        Track(f64, f64, f64),
        Force(f64),
    }

    fn any_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => (any_f64(), any_f64(), prop_oneof![4 => Just(0.0), 1 => any_f64()], any_dt())
                .prop_map(|(a, b, c, d)| Op::Update(a, b, c, d)),
            1 => any_f64().prop_map(Op::Manual),
            1 => Just(Op::Auto),
            1 => (any_f64(), any_f64(), any_f64()).prop_map(|(a, b, c)| Op::Track(a, b, c)),
            1 => any_f64().prop_map(Op::Force),
        ]
    }

    proptest! {
        #[test]
        fn output_in_limits_slew_respected_state_finite(
            ops in proptest::collection::vec(any_op(), 1..200),
            kd in 0.0f64..50.0,
        ) {
            let mut p = params();
            p.kd = kd;
            let mut pid = Pid::new(p, 50.0);
            for op in ops {
                let before = pid.output();
                match op {
                    Op::Update(sp, pv, ff, dt) => {
                        let r = pid.update(sp, pv, ff, dt);
                        match r {
                            Ok(t) if !pid.is_manual() => {
                                prop_assert!(t.output - before <= p.slew_up_per_s * dt + 1e-9);
                                prop_assert!(before - t.output <= p.slew_down_per_s * dt + 1e-9);
                            }
                            Ok(_) => prop_assert_eq!(pid.output(), before),
                            Err(_) => prop_assert_eq!(pid.output(), before),
                        }
                    }
                    Op::Manual(v) => pid.set_manual(v),
                    Op::Auto => pid.set_auto(),
                    Op::Track(sp, pv, v) => { let _ = pid.track(sp, pv, 0.0, 1.0, v); }
                    Op::Force(v) => pid.force(v),
                }
                let o = pid.output();
                prop_assert!(o.is_finite());
                prop_assert!((p.out_min..=p.out_max).contains(&o));
                prop_assert!(pid.integral.is_finite());
                prop_assert!(pid.dpv_filtered.is_finite());
                let t = pid.terms();
                prop_assert!(t.p.is_finite() && t.i.is_finite() && t.d.is_finite());
            }
        }

        #[test]
        fn no_derivative_kick_on_setpoint_change(
            pv in 30.0f64..90.0,
            sp1 in 30.0f64..90.0,
            sp2 in 30.0f64..90.0,
            kd in 0.0f64..100.0,
        ) {
            let mut p = params();
            p.kd = kd;
            p.slew_up_per_s = f64::INFINITY;
            p.slew_down_per_s = f64::INFINITY;
            p.out_min = -1e6;
            p.out_max = 1e6;
            let mut pid = Pid::new(p, 50.0);
            for _ in 0..5 {
                pid.update(sp1, pv, 0.0, 1.0).expect("valid");
            }
            let a = pid.terms();
            let b = pid.update(sp2, pv, 0.0, 1.0).expect("valid");
            prop_assert!(b.d.abs() < 1e-9, "derivative moved: {}", b.d);
            // The output moves by the P change and one step of integral, nothing more.
            let expected = p.kp * (pv - sp1 - (pv - sp2)).abs() + p.ki * (pv - sp1).abs() + 1e-6;
            prop_assert!((b.output - a.output).abs() <= expected);
        }

        #[test]
        fn bumpless_manual_to_auto(
            manual in 20.0f64..100.0,
            pv in 40.0f64..90.0,
            sp in 50.0f64..80.0,
            steps in 1usize..50,
        ) {
            let mut pid = Pid::new(params(), 50.0);
            pid.set_manual(manual);
            for _ in 0..steps {
                pid.update(sp, pv, 0.0, 1.0).expect("valid");
            }
            pid.set_auto();
            let t = pid.update(sp, pv, 0.0, 1.0).expect("valid");
            let one_step = params().ki * (pv - sp).abs() + 1e-6;
            // Continuity: only one step of integral action (and the slew limit) may move it.
            prop_assert!((t.output - manual).abs() <= one_step.min(10.0), "{manual} -> {}", t.output);
        }
    }
}
