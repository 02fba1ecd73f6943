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

pub use crate::profile::thermal::ThermalParams;
use crate::units::{Celsius, Watts};
use std::time::Duration;

/// The step the thermal network is integrated with, in the fit and in the plant. Short enough
/// against the fastest fitted time constant (about 0.1 s on the H200) that backward Euler's
/// damping does not distort the die's rise.
pub const THERMAL_STEP: Duration = Duration::from_millis(20);

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
    use crate::units::LitresPerMinute;

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
