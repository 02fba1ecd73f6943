//! The fitted thermal model of a GPU board and its cold plate (the `[thermal]` table of a GPU
//! profile). The profile owns this data; the simulator (`sim::thermal`) integrates it and
//! the pump loop's feed-forward uses its steady-state part.

use crate::units::LitresPerMinute;
use serde::Deserialize;

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
