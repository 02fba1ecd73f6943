//! `coolantd tune`: the pump-loop gains that fit a GPU profile's fitted plate model (SIMC, see
//! `control/tuning.rs`), scheduled over pump speed, and the predicted response to a load step.

use crate::control::tuning::{step_response, LoopModel, PumpLimits};
use crate::control::ControlConfig;
use crate::profile::gpu::GpuProfiles;
use crate::sim::SimConfig;
use anyhow::Context;
use std::fmt::Write as _;
use std::path::Path;

/// What `coolantd tune` was asked.
#[derive(Debug, Clone)]
pub struct TuneRequest<'a> {
    pub profiles_dir: &'a Path,
    pub profile: &'a str,
    pub setpoint: f64,
    pub supply: f64,
    /// Per-GPU flow at 100 % pump speed, l/min.
    pub flow_per_gpu_lpm: f64,
    pub pump_lag_s: f64,
}

impl TuneRequest<'_> {
    /// The simulator's loop where the site does not say otherwise.
    pub fn defaults() -> (f64, f64) {
        let s = SimConfig::default();
        (s.rated_flow_lpm_per_gpu, s.pump_time_constant_s)
    }
}

/// The report `coolantd tune` prints.
pub fn tune(req: &TuneRequest<'_>) -> anyhow::Result<String> {
    let dir = req.profiles_dir.join("gpu");
    let profiles = GpuProfiles::load_dir(&dir)
        .with_context(|| format!("loading GPU profiles from {}", dir.display()))?;
    let p = profiles.by_name(req.profile).with_context(|| {
        format!(
            "no GPU profile {:?} in {} (expected one of the file stems there)",
            req.profile,
            dir.display()
        )
    })?;
    anyhow::ensure!(
        req.setpoint > req.supply,
        "--setpoint ({} °C) must be above --supply ({} °C)",
        req.setpoint,
        req.supply
    );
    anyhow::ensure!(
        req.flow_per_gpu_lpm > 0.0 && req.pump_lag_s >= 0.0,
        "--flow-per-gpu must be positive and --pump-lag not negative"
    );
    let cfg = ControlConfig::default();
    let th = &p.thermal;
    let m = LoopModel {
        plate: th.plate_model(),
        plate_capacity_j_per_k: th.plate_capacity_j_per_k,
        die_capacity_j_per_k: th.die_capacity_j_per_k,
        flow_per_gpu_at_full_lpm: req.flow_per_gpu_lpm,
        pump_lag_s: req.pump_lag_s,
        period_s: cfg.period_ms as f64 / 1000.0,
    };
    let full = p.power.default_w.get();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "profile {} ({}), set point {:.1} °C, supply {:.1} °C, {:.2} l/min per GPU at 100 %, pump lag {:.1} s",
        p.name, p.description, req.setpoint, req.supply, req.flow_per_gpu_lpm, req.pump_lag_s
    );
    let _ = writeln!(
        out,
        "rule: SIMC, tau_c = theta: kp = tau / (k (tau_c + theta)), Ti = min(tau, 4 (tau_c + theta)), ki = kp / Ti\n"
    );
    let _ = writeln!(
        out,
        "gain schedule (each speed at the load it holds at the set point):"
    );
    let _ = writeln!(
        out,
        "{:>9} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "speed_%", "load_W", "k_K/%", "tau_s", "theta_s", "kp_%/K", "ki_%/Ks", "Ti_s"
    );
    let speeds = [20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0];
    for r in m.schedule(&speeds, req.supply, req.setpoint) {
        let _ = writeln!(
            out,
            "{:>9.0} {:>10.0} {:>10.4} {:>8.1} {:>8.2} {:>10.2} {:>10.3} {:>8.1}",
            r.speed_pct,
            r.power_w,
            r.model.gain_k_per_pct,
            r.model.lag_s,
            r.model.delay_s,
            r.gains.kp,
            r.gains.ki,
            r.gains.ti
        );
    }
    // The recommendation: the design point, full load at the default power limit.
    let lim = PumpLimits {
        min_pct: cfg.pump.min_speed,
        max_pct: cfg.pump.max_speed,
        slew_up_per_s: cfg.pump.slew_up_per_s,
        slew_down_per_s: cfg.pump.slew_down_per_s,
    };
    let Some((u0, g)) = m.design_point(full, req.supply, req.setpoint, lim.min_pct, lim.max_pct)
    else {
        let _ = writeln!(
            out,
            "\nat {full:.0} W per GPU even 100 % pump leaves the core at {:.1} °C, above the set point: \
             the loop cannot hold it; the power caps will (raise the set point or lower the supply)",
            m.steady_core(full, lim.max_pct, req.supply)
        );
        return Ok(out);
    };
    let _ = writeln!(
        out,
        "\nrecommended [control.pid] for full load ({full:.0} W per GPU, pump {u0:.1} %):\nkp = {:.2}\nki = {:.3}\nkd = 0.0",
        g.kp, g.ki
    );
    let from = 0.5 * full;
    let resp = step_response(&m, g, lim, req.supply, req.setpoint, from, full, 180.0);
    let _ = writeln!(
        out,
        "\npredicted response to a load step {from:.0} → {full:.0} W per GPU at t = 0 (feedback only):"
    );
    let _ = writeln!(out, "{:>6} {:>9} {:>8}", "t_s", "core_C", "pump_%");
    for p in resp.iter().filter(|p| {
        [0, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180].contains(&(p.t_s.round() as i64))
    }) {
        let _ = writeln!(out, "{:>6.0} {:>9.2} {:>8.1}", p.t_s, p.core_c, p.pump_pct);
    }
    let peak = resp.iter().map(|p| p.core_c).fold(f64::MIN, f64::max);
    let settle = resp
        .iter()
        .rev()
        .find(|p| (p.core_c - req.setpoint).abs() > 0.5)
        .map_or(0.0, |p| p.t_s + m.period_s);
    let _ = writeln!(
        out,
        "\npeak overshoot {:.2} K, settled within ±0.5 K after {settle:.0} s",
        peak - req.setpoint
    );
    Ok(out)
}
