//! Pump-loop PID gains from the fitted plate model, by Skogestad's SIMC rule.
//!
//! Why SIMC: it needs only a first-order-plus-dead-time (FOPDT) model, which the plate model
//! gives in closed form at any operating point; it has one tuning knob (the closed-loop time
//! constant τc, here τc = θ, Skogestad's "tight control" choice); and unlike IMC (τi = τ) its
//! integral time τi = min(τ, 4(τc+θ)) keeps load disturbances (a power step is one) from
//! lingering on lag-dominant plants such as a slow cold plate.
//!
//! The FOPDT model of hottest-core temperature against pump speed `u` at a load `P` that `u`
//! holds at the set point (see `feedforward.rs` for the plate model):
//!
//! ```text
//!   gain      k = ∂T/∂u = P · n · R_pc(u) / u            (K per %, falls as flow rises)
//!   lag       τ = C_plate · R_pc(u)                      (the plate's slow pole)
//!   delay     θ = pump lag + C_die · R_dc + period / 2   (SIMC's half rule: small lags → delay)
//!   SIMC      kc = τ / (k (τc + θ)),  τi = min(τ, 4 (τc + θ)),  kp = kc,  ki = kc / τi
//! ```

use super::feedforward::PlateModel;
use super::pid::{Action, Pid, PidParams};

/// What the tuning needs beyond the plate model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoopModel {
    pub plate: PlateModel,
    /// Heat capacity of the cold plate and package, J/K.
    pub plate_capacity_j_per_k: f64,
    /// Heat capacity of the die, J/K.
    pub die_capacity_j_per_k: f64,
    /// Per-GPU flow with the pump at 100 %, l/min.
    pub flow_per_gpu_at_full_lpm: f64,
    /// Time constant with which the pump follows its command, s.
    pub pump_lag_s: f64,
    /// Control period, s.
    pub period_s: f64,
}

/// The first-order-plus-dead-time model at one operating point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fopdt {
    /// |∂T/∂u|, K per % pump speed.
    pub gain_k_per_pct: f64,
    pub lag_s: f64,
    pub delay_s: f64,
}

/// PI gains for `[control.pid]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gains {
    /// % per K.
    pub kp: f64,
    /// % per K·s.
    pub ki: f64,
    /// Integral time, s.
    pub ti: f64,
}

/// One row of the gain schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleRow {
    pub speed_pct: f64,
    /// The per-GPU power this speed holds at the set point, W.
    pub power_w: f64,
    pub model: Fopdt,
    pub gains: Gains,
}

impl LoopModel {
    fn r_pc(&self, speed_pct: f64) -> f64 {
        let flow = (self.flow_per_gpu_at_full_lpm * speed_pct / 100.0).max(1e-6);
        self.plate.plate_to_coolant_k_per_w
            * (self.plate.reference_flow_lpm / flow).powf(self.plate.flow_exponent)
    }

    /// The per-GPU power that `speed_pct` holds at `sp` with coolant at `supply`.
    pub fn power_held(&self, speed_pct: f64, supply: f64, sp: f64) -> f64 {
        ((sp - supply) / (self.plate.die_to_plate_k_per_w + self.r_pc(speed_pct))).max(0.0)
    }

    /// The steady hottest-core temperature at `power` W per GPU and `speed_pct`.
    pub fn steady_core(&self, power: f64, speed_pct: f64, supply: f64) -> f64 {
        supply + power * (self.plate.die_to_plate_k_per_w + self.r_pc(speed_pct))
    }

    /// The FOPDT model at `speed_pct` with `power` W per GPU.
    pub fn fopdt(&self, power: f64, speed_pct: f64) -> Fopdt {
        let r = self.r_pc(speed_pct);
        Fopdt {
            gain_k_per_pct: power * self.plate.flow_exponent * r / speed_pct.max(1e-6),
            lag_s: self.plate_capacity_j_per_k * r,
            delay_s: self.pump_lag_s
                + self.die_capacity_j_per_k * self.plate.die_to_plate_k_per_w
                + self.period_s / 2.0,
        }
    }

    /// The gain schedule over pump speeds, each at the load it holds at the set point.
    pub fn schedule(&self, speeds: &[f64], supply: f64, sp: f64) -> Vec<ScheduleRow> {
        speeds
            .iter()
            .map(|&u| {
                let power_w = self.power_held(u, supply, sp);
                let model = self.fopdt(power_w, u);
                ScheduleRow {
                    speed_pct: u,
                    power_w,
                    model,
                    gains: simc(&model),
                }
            })
            .collect()
    }
}

impl LoopModel {
    /// The lowest speed (in 0.5 % steps within `min..=max`) that holds `power` W per GPU at
    /// `sp`, and the SIMC gains there; `None` when even `max` does not.
    pub fn design_point(
        &self,
        power: f64,
        supply: f64,
        sp: f64,
        min: f64,
        max: f64,
    ) -> Option<(f64, Gains)> {
        let n = ((max - min) / 0.5).floor().max(0.0) as usize;
        (0..=n)
            .map(|i| min + i as f64 * 0.5)
            .find(|u| self.steady_core(power, *u, supply) <= sp)
            .map(|u| (u, simc(&self.fopdt(power, u))))
    }
}

/// SIMC PI gains with τc = θ.
pub fn simc(m: &Fopdt) -> Gains {
    let tau_c = m.delay_s;
    let kc = m.lag_s / (m.gain_k_per_pct.max(1e-9) * (tau_c + m.delay_s));
    let ti = m.lag_s.min(4.0 * (tau_c + m.delay_s));
    Gains {
        kp: kc,
        ki: kc / ti.max(1e-9),
        ti,
    }
}

/// One sample of a predicted step response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResponsePoint {
    pub t_s: f64,
    pub core_c: f64,
    pub pump_pct: f64,
}

/// Pump limits and slew rates for [`step_response`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PumpLimits {
    pub min_pct: f64,
    pub max_pct: f64,
    pub slew_up_per_s: f64,
    pub slew_down_per_s: f64,
}

/// Predicts the hottest core after a per-GPU load step `from_w` → `to_w` at t = 0, starting
/// from the steady state the loop holds at `from_w`, with the PI `gains` (the core's own PID,
/// feedback only) on the plate model (die and plate nodes, pump lag). Samples every period for
/// `duration_s`.
#[allow(clippy::too_many_arguments)]
pub fn step_response(
    m: &LoopModel,
    gains: Gains,
    limits: PumpLimits,
    supply: f64,
    sp: f64,
    from_w: f64,
    to_w: f64,
    duration_s: f64,
) -> Vec<ResponsePoint> {
    // The speed that holds `from_w` at the set point (bisection: the core falls with speed).
    let (mut lo, mut hi) = (limits.min_pct, limits.max_pct);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if m.steady_core(from_w, mid, supply) > sp {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let u0 = hi;
    let mut pid = Pid::new(
        PidParams {
            kp: gains.kp,
            ki: gains.ki,
            kd: 0.0,
            derivative_filter_s: 0.0,
            tracking_time_s: None,
            out_min: limits.min_pct,
            out_max: limits.max_pct,
            slew_up_per_s: limits.slew_up_per_s,
            slew_down_per_s: limits.slew_down_per_s,
            action: Action::Reverse,
        },
        u0,
    );
    let r0 = m.r_pc(u0);
    let mut plate = supply + from_w * r0;
    let mut die = plate + from_w * m.plate.die_to_plate_k_per_w;
    let mut pump = u0;
    let mut cmd = u0;
    let h = 0.01;
    let steps_per_period = (m.period_s / h).round().max(1.0) as usize;
    let n = (duration_s / m.period_s).ceil() as usize;
    let mut out = vec![ResponsePoint {
        t_s: 0.0,
        core_c: die,
        pump_pct: pump,
    }];
    for k in 1..=n {
        for _ in 0..steps_per_period {
            pump += (cmd - pump) * (h / m.pump_lag_s.max(h));
            let r = m.r_pc(pump);
            let q_dp = (die - plate) / m.plate.die_to_plate_k_per_w;
            die += h * (to_w - q_dp) / m.die_capacity_j_per_k;
            plate += h * (q_dp - (plate - supply) / r) / m.plate_capacity_j_per_k;
        }
        if let Ok(t) = pid.update(sp, die, 0.0, m.period_s) {
            cmd = t.output;
        }
        out.push(ResponsePoint {
            t_s: k as f64 * m.period_s,
            core_c: die,
            pump_pct: pump,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> LoopModel {
        LoopModel {
            plate: PlateModel {
                die_to_plate_k_per_w: 0.030701,
                plate_to_coolant_k_per_w: 0.028948,
                reference_flow_lpm: 2.0,
                flow_exponent: 0.8,
            },
            plate_capacity_j_per_k: 869.753,
            die_capacity_j_per_k: 6.631,
            flow_per_gpu_at_full_lpm: 3.0,
            pump_lag_s: 2.0,
            period_s: 1.0,
        }
    }

    #[test]
    fn the_plant_gain_falls_with_flow_and_the_gains_rise() {
        let m = h100();
        let rows = m.schedule(&[30.0, 60.0, 100.0], 30.0, 72.0);
        assert!(rows[0].model.gain_k_per_pct > 2.0 * rows[2].model.gain_k_per_pct);
        assert!(rows[0].gains.kp < rows[2].gains.kp);
        // SIMC by hand at 60 %: the operating point's FOPDT gives these gains.
        let r = rows[1];
        let tc = r.model.delay_s;
        let kc = r.model.lag_s / (r.model.gain_k_per_pct * 2.0 * tc);
        assert!((r.gains.kp - kc).abs() < 1e-9);
        assert!((r.gains.ti - r.model.lag_s.min(8.0 * tc)).abs() < 1e-9);
    }

    #[test]
    fn the_predicted_step_response_returns_to_the_set_point() {
        let m = h100();
        let g = m.schedule(&[70.0], 30.0, 72.0)[0].gains;
        let lim = PumpLimits {
            min_pct: 20.0,
            max_pct: 100.0,
            slew_up_per_s: 10.0,
            slew_down_per_s: 2.0,
        };
        let r = step_response(&m, g, lim, 30.0, 72.0, 500.0, 700.0, 300.0);
        assert!((r[0].core_c - 72.0).abs() < 0.01, "{:?}", r[0]);
        let peak = r.iter().map(|p| p.core_c).fold(f64::MIN, f64::max);
        assert!(peak > 72.5, "a 200 W step must show: peak {peak}");
        let end = r.last().expect("samples");
        assert!((end.core_c - 72.0).abs() < 0.2, "{end:?}");
        assert!(end.pump_pct > r[0].pump_pct + 10.0);
    }
}
