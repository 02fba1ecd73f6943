//! The GPU thermal model: a lumped RC network fitted to real NVML captures.
//!
//! Two nodes carry the heat:
//!
//! ```text
//!   P ──► die ──R_dc──► plate (cold plate + package) ──R_pc(flow)──► coolant
//! ```
//!
//! The die has a small heat capacity (the fast time constant, tenths of a second on the H200
//! capture), the cold plate and package a larger one (the slow time constant: seconds on the
//! H200, tens of seconds on the H100 capture).
//!
//! HBM is a third node that follows `T_plate + k_h·P` with its own time constant: on both
//! captures it rises more slowly than the die and settles below it. It is modelled one-way (it
//! takes no heat from the network) because a two-way HBM node made the fit degenerate: the
//! simplex used the HBM's capacity as the package's slow mass and dropped the plate's.
//!
//! The plate-to-coolant resistance depends on coolant flow through the cold plate:
//! `R_pc(flow) = R_pc_ref · (flow_ref / flow)^n`. The exponent follows from forced-convection
//! correlations of the Dittus–Boelter form `Nu ∝ Re^0.8`, where the heat transfer coefficient
//! (and so the conductance) scales with velocity to the 0.8th power; `n` is kept in the profile.
//!
//! Integration is backward Euler, solved exactly for this network, so any step size is stable;
//! the fit and the plant both step with [`THERMAL_STEP`] so the plant reproduces the fit.

use crate::units::{Celsius, LitresPerMinute, Watts};
use serde::Deserialize;
use std::time::Duration;

/// The step the thermal network is integrated with, in the fit and in the plant. Short enough
/// against the fastest fitted time constant (about 0.1 s on the H200) that backward Euler's
/// damping does not distort the die's rise.
pub const THERMAL_STEP: Duration = Duration::from_millis(20);

/// The lowest flow ratio the plate resistance is evaluated at: with no flow at all, conduction
/// and natural convection still carry some heat, and the power law would divide by zero.
const MIN_FLOW_RATIO: f64 = 0.02;

/// Fitted thermal parameters of one GPU model and the cooling behind it (the `[thermal]` table
/// of a GPU profile).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalParams {
    /// Heat capacity of the die node, J/K.
    pub die_capacity_j_per_k: f64,
    /// Thermal resistance from die to cold plate, K/W.
    pub die_to_plate_k_per_w: f64,
    /// Heat capacity of the cold plate and package, J/K.
    pub plate_capacity_j_per_k: f64,
    /// Thermal resistance from cold plate to coolant at the reference flow, K/W.
    pub plate_to_coolant_k_per_w: f64,
    /// Time constant with which HBM follows its target `T_plate + k_h·P`, s.
    pub hbm_time_constant_s: f64,
    /// `k_h`: HBM rise above the plate per watt of board power, K/W.
    pub hbm_rise_k_per_w: f64,
    /// The coolant temperature that best explains the capture (the capture does not record it).
    pub fitted_coolant_c: f64,
    /// Coolant flow through one GPU's cold plate at which the capture is assumed to be taken.
    pub reference_flow_lpm: f64,
    /// Exponent `n` of the flow dependence of the plate-to-coolant resistance.
    pub flow_exponent: f64,
}

impl ThermalParams {
    /// The plate-to-coolant resistance at a given per-GPU flow.
    pub fn plate_to_coolant_at(&self, flow: LitresPerMinute) -> f64 {
        let ratio = (flow.get() / self.reference_flow_lpm).max(MIN_FLOW_RATIO);
        self.plate_to_coolant_k_per_w * ratio.powf(-self.flow_exponent)
    }

    /// The part of the model the pump loop's feed-forward needs (steady state only).
    pub fn plate_model(&self) -> crate::control::feedforward::PlateModel {
        crate::control::feedforward::PlateModel {
            die_to_plate_k_per_w: self.die_to_plate_k_per_w,
            plate_to_coolant_k_per_w: self.plate_to_coolant_k_per_w,
            reference_flow_lpm: self.reference_flow_lpm,
            flow_exponent: self.flow_exponent,
        }
    }

    /// Checks that every parameter is physical; pushes issues under `key`.
    pub fn validate(&self, key: &str, issues: &mut crate::validate::Issues) {
        let positive = [
            ("die_capacity_j_per_k", self.die_capacity_j_per_k),
            ("die_to_plate_k_per_w", self.die_to_plate_k_per_w),
            ("plate_capacity_j_per_k", self.plate_capacity_j_per_k),
            ("plate_to_coolant_k_per_w", self.plate_to_coolant_k_per_w),
            ("hbm_time_constant_s", self.hbm_time_constant_s),
            ("reference_flow_lpm", self.reference_flow_lpm),
        ];
        for (name, v) in positive {
            issues.check(
                v.is_finite() && v > 0.0,
                format!("{key}.{name}"),
                format!("a positive number, got {v}"),
            );
        }
        issues.range(
            self.hbm_rise_k_per_w,
            -1.0,
            1.0,
            format!("{key}.hbm_rise_k_per_w"),
            "a rise per watt in K/W",
        );
        issues.range(
            self.fitted_coolant_c,
            0.0,
            80.0,
            format!("{key}.fitted_coolant_c"),
            "a coolant temperature in °C",
        );
        issues.range(
            self.flow_exponent,
            0.0,
            2.0,
            format!("{key}.flow_exponent"),
            "an exponent",
        );
    }
}

/// The temperatures of one GPU's thermal nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuThermal {
    pub die: Celsius,
    pub plate: Celsius,
    pub hbm: Celsius,
}

impl GpuThermal {
    /// The steady state for a constant power, coolant temperature and plate resistance.
    pub fn steady(p: &ThermalParams, power: Watts, coolant: Celsius, r_pc: f64) -> GpuThermal {
        let q = power.get();
        let plate = coolant.get() + q * r_pc;
        GpuThermal {
            die: Celsius(plate + q * p.die_to_plate_k_per_w),
            plate: Celsius(plate),
            hbm: Celsius(plate + q * p.hbm_rise_k_per_w),
        }
    }

    /// Advances by `h` seconds with constant power, coolant temperature and plate resistance
    /// `r_pc` (K/W), by backward Euler solved in closed form. Returns the heat that flowed from
    /// the plate into the coolant over the step, in watts (at the end of the step).
    pub fn step(
        &mut self,
        p: &ThermalParams,
        h: f64,
        power: Watts,
        coolant: Celsius,
        r_pc: f64,
    ) -> Watts {
        let q = power.get();
        let (gd, gc) = (1.0 / p.die_to_plate_k_per_w, 1.0 / r_pc);
        let (cd, cp) = (p.die_capacity_j_per_k / h, p.plate_capacity_j_per_k / h);
        // The new die temperature as an affine function of the new plate temperature.
        let (ad, bd) = ((cd * self.die.0 + q) / (cd + gd), gd / (cd + gd));
        let tp = (cp * self.plate.0 + gc * coolant.0 + gd * ad) / (cp + gd * (1.0 - bd) + gc);
        self.plate = Celsius(tp);
        self.die = Celsius(ad + bd * tp);
        let target = tp + q * p.hbm_rise_k_per_w;
        let k = 1.0 - (-h / p.hbm_time_constant_s).exp();
        self.hbm = Celsius(self.hbm.0 + (target - self.hbm.0) * k);
        Watts((tp - coolant.0) * gc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn params() -> ThermalParams {
        ThermalParams {
            die_capacity_j_per_k: 5.0,
            die_to_plate_k_per_w: 0.02,
            plate_capacity_j_per_k: 200.0,
            plate_to_coolant_k_per_w: 0.015,
            hbm_time_constant_s: 5.0,
            hbm_rise_k_per_w: 0.01,
            fitted_coolant_c: 30.0,
            reference_flow_lpm: 2.0,
            flow_exponent: 0.8,
        }
    }

    #[test]
    fn converges_to_the_steady_state() {
        let p = params();
        let mut t = GpuThermal::steady(&p, Watts(80.0), Celsius(30.0), 0.015);
        let mut out = Watts(0.0);
        for _ in 0..20_000 {
            out = t.step(&p, 0.02, Watts(700.0), Celsius(30.0), 0.015);
        }
        let s = GpuThermal::steady(&p, Watts(700.0), Celsius(30.0), 0.015);
        assert!((t.die.0 - s.die.0).abs() < 1e-6, "{t:?} vs {s:?}");
        assert!((t.hbm.0 - s.hbm.0).abs() < 1e-6);
        // At steady state all electrical power leaves through the plate.
        assert!((out.0 - 700.0).abs() < 1e-6);
    }

    #[test]
    fn less_flow_means_more_resistance() {
        let p = params();
        let r_ref = p.plate_to_coolant_at(LitresPerMinute(2.0));
        assert!((r_ref - 0.015).abs() < 1e-12);
        let r_half = p.plate_to_coolant_at(LitresPerMinute(1.0));
        assert!((r_half / r_ref - 2f64.powf(0.8)).abs() < 1e-9);
        assert!(p.plate_to_coolant_at(LitresPerMinute(0.0)).is_finite());
    }
}
