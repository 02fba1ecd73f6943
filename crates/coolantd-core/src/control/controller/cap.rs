//! The power-cap loop of one GPU: split range behind the pump (it lowers the cap only when
//! the pump is spent), the overrides of emergency and failsafe, and the writes with their
//! read-back (re-assert ours if something raised it, report and respect a lower one).

use super::inputs::GpuInput;
use super::write::{WritePolicy, WriteTracker};
use crate::control::config::ControlConfig;
use crate::control::pid::{Action, Pid, PidParams};
use crate::model::{Actuation, ControlState, GpuKey, GpuStatic, Mono};
use crate::units::Watts;

/// The caps this loop may set: from the configured share of the maximum (at least the GPU's
/// minimum) up to the original limit.
pub(super) fn cap_bounds(cfg: &ControlConfig, st: &GpuStatic, original: f64) -> (f64, f64) {
    let pmin = st.power_min.get();
    let pmax = st.power_max.get().max(pmin);
    let hi = original.clamp(pmin, pmax);
    let lo = pmin.max(cfg.power_cap.min_percent / 100.0 * pmax).min(hi);
    (lo, hi)
}

pub(super) fn cap_params(cfg: &ControlConfig, st: &GpuStatic, original: f64) -> PidParams {
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

/// One GPU's power-cap loop.
#[derive(Debug, Clone)]
pub(super) struct CapLoop {
    pub pid: Pid,
    /// The limit found before we wrote anything: what caps return to.
    pub original: f64,
    /// The cap this loop wants now.
    pub applied: f64,
    pub write: WriteTracker,
    /// A lower limit someone else enforces, which we leave alone.
    pub external: Option<f64>,
}

/// What the GPU's CDU says this tick, as far as the cap loop cares.
#[derive(Debug, Clone, Copy)]
pub(super) struct CduView {
    pub state: ControlState,
    /// The pump has nothing more to give.
    pub saturated: bool,
    pub leak: bool,
    pub temps_unknown: bool,
    /// The per-GPU power that holds the cap's set point with the pump as it is, shortly after
    /// a load step (`[control.power_cap] feed_forward`).
    pub power_held: Option<f64>,
}

impl CduView {
    /// No CDU cools this GPU as far as we know: the cap is the only actuator.
    pub const NONE: CduView = CduView {
        state: ControlState::Running,
        saturated: true,
        leak: false,
        temps_unknown: false,
        power_held: None,
    };
}

/// One tick's decision of a cap loop.
#[derive(Debug, Clone)]
pub(super) struct CapStep {
    pub desired: f64,
    /// The cap the GPU holds because of us (the original limit before our first write).
    pub ours: f64,
    pub sp_cap: f64,
    pub reason: String,
}

impl CapLoop {
    pub fn new(cfg: &ControlConfig, st: &GpuStatic) -> CapLoop {
        let original = if st.power_default.is_finite() && st.power_default.get() > 0.0 {
            st.power_default.get()
        } else {
            st.power_max.get()
        };
        let (_, hi) = cap_bounds(cfg, st, original);
        CapLoop {
            pid: Pid::new(cap_params(cfg, st, hi), hi),
            original: hi,
            applied: hi,
            write: WriteTracker::default(),
            external: None,
        }
    }

    /// Sets the limit caps return to, e.g. one the shell recorded before a restart.
    pub fn set_original(&mut self, cfg: &ControlConfig, st: &GpuStatic, limit: f64) {
        let (_, hi) = cap_bounds(cfg, st, limit);
        self.original = hi;
        self.pid.set_params(cap_params(cfg, st, hi));
    }

    /// Until we write, the GPU's current (enforced) limit is the one to return to.
    fn adopt_found_limit(&mut self, cfg: &ControlConfig, st: &GpuStatic, enforced: Option<f64>) {
        if !self.write.untouched() {
            return;
        }
        if let Some(e) = enforced {
            let (_, hi) = cap_bounds(cfg, st, e);
            if (hi - self.original).abs() >= 0.5 && self.applied >= self.original - 0.5 {
                self.original = hi;
                self.applied = hi;
                self.pid.set_params(cap_params(cfg, st, hi));
                self.pid.force(hi);
            }
        }
    }

    /// The cap this loop wants for the CDU's state.
    fn desired(
        &mut self,
        cfg: &ControlConfig,
        st: &GpuStatic,
        g: &GpuInput,
        cdu: &CduView,
        sp_cap: f64,
        dt: f64,
    ) -> f64 {
        let pc = &cfg.power_cap;
        let (lo, hi) = cap_bounds(cfg, st, self.original);
        let pmin = st.power_min.get();
        if g.hot || cdu.leak {
            // Emergency: the GPU's own minimum, this tick, bypassing every slew limit.
            self.pid.force(lo);
            return pmin;
        }
        match (cdu.state, g.equiv) {
            (ControlState::Boot, _) => {
                self.pid.force(self.applied);
                self.applied
            }
            (ControlState::Failsafe, pv) if cdu.temps_unknown || pv.is_none() => {
                let safe = (pc.failsafe_percent / 100.0 * self.original).max(pmin);
                let u = self.applied.min(safe);
                self.pid.force(u);
                u
            }
            (_, Some(pv)) if cdu.saturated => {
                let u = match self.pid.update(sp_cap, pv, 0.0, dt) {
                    Ok(t) => t.output,
                    Err(_) => self.applied,
                };
                // Feed-forward: below the cap's set point the feedback keeps the cap up while
                // the plate warms towards a temperature the pump cannot hold; the model says
                // which power holds it. At the loop's own fall rate; the PID follows.
                match cdu.power_held.filter(|_| pc.feed_forward && pv < sp_cap) {
                    Some(held) if held.clamp(lo, hi) < u => {
                        let cap = held.clamp(lo, hi).max(self.applied - pc.lower_w_per_s * dt);
                        if cap < u {
                            let _ = self.pid.track(sp_cap, pv, 0.0, dt.max(1e-3), cap);
                            cap
                        } else {
                            u
                        }
                    }
                    _ => u,
                }
            }
            (_, Some(pv)) => {
                let u = (self.applied + pc.restore_w_per_s * dt).min(hi);
                let _ = self.pid.track(sp_cap, pv, 0.0, dt.max(1e-3), u);
                u
            }
            (_, None) => self.applied,
        }
    }

    /// One tick: decides the cap, checks the read-back and pushes the write when it is due.
    #[allow(clippy::too_many_arguments)] // One call site; the arguments are this tick's inputs.
    pub fn step(
        &mut self,
        now: Mono,
        dt: f64,
        setpoint: f64,
        cfg: &ControlConfig,
        key: &GpuKey,
        g: &GpuInput,
        cdu: &CduView,
        acts: &mut Vec<Actuation>,
    ) -> Option<CapStep> {
        let st = g.st.as_ref()?;
        let pc = &cfg.power_cap;
        let sp_cap = setpoint + pc.band_k;
        // The enforced limit read back, when it is newer than our last write.
        let enforced = g
            .latest
            .as_ref()
            .filter(|s| s.at >= self.write.acked_at())
            .and_then(|s| s.enforced_limit)
            .map(|w| w.get())
            .filter(|w| w.is_finite());
        self.adopt_found_limit(cfg, st, enforced);
        let desired = self.desired(cfg, st, g, cdu, sp_cap, dt);
        self.applied = desired;

        // Read-back: re-assert ours if something raised it, report (not fight) a lower one.
        let ours = self.write.acked().unwrap_or(self.original);
        self.external = None;
        if let (Some(e), false) = (enforced, self.write.dry_run()) {
            if e < ours - pc.readback_tolerance_w && self.write.in_flight().is_none() {
                self.external = Some(e);
            } else if self.write.acked().is_some() && e > ours + pc.readback_tolerance_w {
                self.write.force();
            }
        }
        let policy = WritePolicy {
            deadband: pc.write_deadband_w,
            device_default: Some(self.original),
            refresh_s: None,
        };
        // Never raise above a lower limit someone else set.
        let vetoed = self
            .external
            .is_some_and(|e| desired > e - pc.readback_tolerance_w);
        if self.write.due(now, desired, &policy) && !vetoed {
            acts.push(Actuation::SetPowerCap {
                gpu: key.clone(),
                limit: Watts(desired),
            });
            self.write.sent(now, desired);
        }
        Some(CapStep {
            desired,
            ours,
            sp_cap,
            reason: self.reason(cfg, key, g, cdu, sp_cap),
        })
    }

    /// Why the cap is where it is, for the loop report.
    fn reason(
        &self,
        cfg: &ControlConfig,
        key: &GpuKey,
        g: &GpuInput,
        cdu: &CduView,
        sp_cap: f64,
    ) -> String {
        let t = self.pid.terms();
        if g.hot || cdu.leak {
            return format!(
                "emergency ({}): the GPU's minimum limit",
                if cdu.leak {
                    "leak"
                } else {
                    "at the slowdown threshold"
                }
            );
        }
        match (cdu.state, g.equiv) {
            (ControlState::Boot, _) => "booting: limit held".to_string(),
            (ControlState::Failsafe, None) => format!(
                "failsafe with the GPU temperature unknown: {}% of the original limit",
                cfg.power_cap.failsafe_percent
            ),
            (_, Some(pv)) if cdu.saturated => format!(
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
    }
}
