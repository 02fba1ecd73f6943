//! Fitting the GPU thermal model to a real NVML capture (`tests/fixtures/*/trace.csv`).
//!
//! The measured instantaneous power drives the model; the coolant temperature (not recorded in
//! the captures) is fitted as a constant. A plain Nelder–Mead simplex minimises the combined
//! RMSE of core temperature, then of HBM temperature, deterministically (fixed start, fixed restarts), so a test
//! can refit and compare with the parameters stored in the GPU profile.

use super::thermal::{GpuThermal, ThermalParams, THERMAL_STEP};
use crate::units::{Celsius, Watts};
use std::path::Path;

/// One row of a capture: what the model needs from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRow {
    pub t_s: f64,
    pub core_c: f64,
    pub hbm_c: f64,
    pub power_instant_w: f64,
}

/// Errors reading a capture.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{file}: cannot read the trace: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: line {line}: {what}")]
    Format {
        file: String,
        line: usize,
        what: String,
    },
}

/// Reads a capture in the fixtures' CSV format (header naming `t_s`, `temp_gpu_c`,
/// `temp_mem_c` and `power_instant_mw`), keeping the rows of GPU 0.
pub fn read_trace(path: &Path) -> Result<Vec<TraceRow>, TraceError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        file: file.clone(),
        source,
    })?;
    parse_trace(&text, &file)
}

/// Parses capture text; `file` names it in errors.
pub fn parse_trace(text: &str, file: &str) -> Result<Vec<TraceRow>, TraceError> {
    let fmt_err = |line: usize, what: String| TraceError::Format {
        file: file.to_string(),
        line,
        what,
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| fmt_err(1, "empty file, expected a CSV header".into()))?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| fmt_err(1, format!("no `{name}` column in the header")))
    };
    let (ct, cg, cc, cm, cp) = (
        col("t_s")?,
        col("gpu")?,
        col("temp_gpu_c")?,
        col("temp_mem_c")?,
        col("power_instant_mw")?,
    );
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let num = |c: usize| -> Result<f64, TraceError> {
            f.get(c)
                .and_then(|s| s.trim().parse::<f64>().ok())
                .ok_or_else(|| fmt_err(n, format!("column {} is not a number", header[c])))
        };
        if num(cg)? != 0.0 {
            continue;
        }
        rows.push(TraceRow {
            t_s: num(ct)?,
            core_c: num(cc)?,
            hbm_c: num(cm)?,
            power_instant_w: num(cp)? / 1000.0,
        });
    }
    if rows.len() < 2 {
        return Err(fmt_err(
            n_lines(text),
            "fewer than two rows for GPU 0".into(),
        ));
    }
    Ok(rows)
}

fn n_lines(text: &str) -> usize {
    text.lines().count()
}

/// How well a parameter set reproduces a capture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitQuality {
    /// Root-mean-square error of the core temperature, K.
    pub core_rmse: f64,
    /// Root-mean-square error of the HBM temperature, K.
    pub hbm_rmse: f64,
}

/// Replays a capture's measured power through the model at the fitted coolant temperature and
/// reference flow; returns the model's (core, HBM) temperature at every row.
pub fn replay(p: &ThermalParams, trace: &[TraceRow]) -> Vec<(f64, f64)> {
    let coolant = Celsius(p.fitted_coolant_c);
    let r_pc = p.plate_to_coolant_k_per_w;
    let h_max = THERMAL_STEP.as_secs_f64();
    let mut state = GpuThermal::steady(p, Watts(trace[0].power_instant_w), coolant, r_pc);
    let mut out = Vec::with_capacity(trace.len());
    for (i, row) in trace.iter().enumerate() {
        out.push((state.die.0, state.hbm.0));
        if let Some(next) = trace.get(i + 1) {
            let dt = (next.t_s - row.t_s).max(0.0);
            let n = (dt / h_max).ceil().max(1.0);
            let h = dt / n;
            for _ in 0..n as usize {
                state.step(p, h, Watts(row.power_instant_w), coolant, r_pc);
            }
        }
    }
    out
}

/// Core and HBM RMSE of a parameter set over a capture.
pub fn quality(p: &ThermalParams, trace: &[TraceRow]) -> FitQuality {
    let model = replay(p, trace);
    let n = trace.len() as f64;
    let (mut sc, mut sh) = (0.0, 0.0);
    for (row, (c, h)) in trace.iter().zip(&model) {
        sc += (c - row.core_c).powi(2);
        sh += (h - row.hbm_c).powi(2);
    }
    FitQuality {
        core_rmse: (sc / n).sqrt(),
        hbm_rmse: (sh / n).sqrt(),
    }
}

/// The core parameters as a vector: positive quantities in log space so the simplex cannot
/// make them negative; the coolant temperature as is.
fn encode_core(p: &ThermalParams) -> Vec<f64> {
    vec![
        p.die_capacity_j_per_k.ln(),
        p.die_to_plate_k_per_w.ln(),
        p.plate_capacity_j_per_k.ln(),
        p.plate_to_coolant_k_per_w.ln(),
        p.fitted_coolant_c,
    ]
}

fn decode_core(x: &[f64], template: &ThermalParams) -> ThermalParams {
    ThermalParams {
        die_capacity_j_per_k: x[0].exp(),
        die_to_plate_k_per_w: x[1].exp(),
        plate_capacity_j_per_k: x[2].exp(),
        plate_to_coolant_k_per_w: x[3].exp(),
        fitted_coolant_c: x[4],
        ..*template
    }
}

fn encode_hbm(p: &ThermalParams) -> Vec<f64> {
    vec![p.hbm_time_constant_s.ln(), p.hbm_rise_k_per_w]
}

fn decode_hbm(x: &[f64], template: &ThermalParams) -> ThermalParams {
    ThermalParams {
        hbm_time_constant_s: x[0].exp(),
        hbm_rise_k_per_w: x[1],
        ..*template
    }
}

/// Result of a fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitResult {
    pub params: ThermalParams,
    pub quality: FitQuality,
    /// Objective evaluations spent.
    pub evaluations: usize,
}

/// Fits the thermal parameters to a capture, starting from `start` (whose reference flow and
/// flow exponent are kept: the capture says nothing about flow). The core parameters are fitted
/// on the core RMSE first (HBM does not feed back into them), then the HBM parameters on the
/// HBM RMSE. `restarts` re-runs each simplex from its best point, which frees it from a
/// collapsed simplex.
pub fn fit(trace: &[TraceRow], start: &ThermalParams, restarts: usize) -> FitResult {
    let mut evaluations = 0;
    let mut core = |x: &[f64]| {
        evaluations += 1;
        finite_or_max(quality(&decode_core(x, start), trace).core_rmse)
    };
    let mut x = encode_core(start);
    for _ in 0..=restarts {
        x = nelder_mead(&mut core, &x, 0.3, 1e-10, 2000);
    }
    let after_core = decode_core(&x, start);
    let mut hbm = |x: &[f64]| {
        evaluations += 1;
        finite_or_max(quality(&decode_hbm(x, &after_core), trace).hbm_rmse)
    };
    let mut y = encode_hbm(&after_core);
    for _ in 0..=restarts {
        y = nelder_mead(&mut hbm, &y, 0.3, 1e-10, 1000);
    }
    let params = decode_hbm(&y, &after_core);
    FitResult {
        params,
        quality: quality(&params, trace),
        evaluations,
    }
}

fn finite_or_max(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        f64::MAX
    }
}

/// Minimises `f` from `x0` with the Nelder–Mead simplex (standard coefficients: reflection 1,
/// expansion 2, contraction 0.5, shrink 0.5). `step` is the initial simplex edge in every
/// coordinate; stops when the spread of values falls below `ftol` or after `max_iter`.
pub fn nelder_mead(
    f: &mut impl FnMut(&[f64]) -> f64,
    x0: &[f64],
    step: f64,
    ftol: f64,
    max_iter: usize,
) -> Vec<f64> {
    let n = x0.len();
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    simplex.push((x0.to_vec(), f(x0)));
    for i in 0..n {
        let mut x = x0.to_vec();
        x[i] += step;
        let v = f(&x);
        simplex.push((x, v));
    }
    for _ in 0..max_iter {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (best, worst) = (simplex[0].1, simplex[n].1);
        if (worst - best).abs() <= ftol * (best.abs() + ftol) {
            break;
        }
        let mut centroid = vec![0.0; n];
        for (x, _) in &simplex[..n] {
            for (c, xi) in centroid.iter_mut().zip(x) {
                *c += xi / n as f64;
            }
        }
        let along = |t: f64, worst: &[f64]| -> Vec<f64> {
            centroid
                .iter()
                .zip(worst)
                .map(|(c, w)| c + t * (c - w))
                .collect()
        };
        let xw = simplex[n].0.clone();
        let xr = along(1.0, &xw);
        let fr = f(&xr);
        if fr < simplex[0].1 {
            let xe = along(2.0, &xw);
            let fe = f(&xe);
            simplex[n] = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < simplex[n - 1].1 {
            simplex[n] = (xr, fr);
        } else {
            let (xc, fc) = if fr < simplex[n].1 {
                let xc = along(0.5, &xw);
                let fc = f(&xc);
                (xc, fc)
            } else {
                let xc = along(-0.5, &xw);
                let fc = f(&xc);
                (xc, fc)
            };
            if fc < fr.min(simplex[n].1) {
                simplex[n] = (xc, fc);
            } else {
                let x0 = simplex[0].0.clone();
                for (x, v) in simplex.iter_mut().skip(1) {
                    for (xi, bi) in x.iter_mut().zip(&x0) {
                        *xi = bi + 0.5 * (*xi - bi);
                    }
                    *v = f(x);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex.swap_remove(0).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nelder_mead_finds_a_quadratic_minimum() {
        let mut f = |x: &[f64]| (x[0] - 3.0).powi(2) + 10.0 * (x[1] + 1.0).powi(2) + 2.0;
        let x = nelder_mead(&mut f, &[0.0, 0.0], 1.0, 1e-14, 2000);
        assert!(
            (x[0] - 3.0).abs() < 1e-4 && (x[1] + 1.0).abs() < 1e-4,
            "{x:?}"
        );
    }

    #[test]
    fn nelder_mead_handles_rosenbrock() {
        let mut f = |x: &[f64]| (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2);
        let x = nelder_mead(&mut f, &[-1.2, 1.0], 0.5, 1e-16, 5000);
        assert!(
            (x[0] - 1.0).abs() < 1e-3 && (x[1] - 1.0).abs() < 1e-3,
            "{x:?}"
        );
    }

    #[test]
    fn fit_recovers_known_parameters_from_a_synthetic_trace() {
        let truth = ThermalParams {
            die_capacity_j_per_k: 4.0,
            die_to_plate_k_per_w: 0.025,
            plate_capacity_j_per_k: 150.0,
            plate_to_coolant_k_per_w: 0.01,
            hbm_time_constant_s: 4.0,
            hbm_rise_k_per_w: 0.012,
            fitted_coolant_c: 31.0,
            reference_flow_lpm: 2.0,
            flow_exponent: 0.8,
        };
        // Idle 10 s, 700 W for 20 s, idle 10 s, at 10 Hz.
        let mut trace: Vec<TraceRow> = (0..400)
            .map(|i| {
                let t = f64::from(i) * 0.1;
                let p = if (10.0..30.0).contains(&t) {
                    700.0
                } else {
                    80.0
                };
                TraceRow {
                    t_s: t,
                    core_c: 0.0,
                    hbm_c: 0.0,
                    power_instant_w: p,
                }
            })
            .collect();
        let model = replay(&truth, &trace);
        for (row, (c, h)) in trace.iter_mut().zip(model) {
            row.core_c = c;
            row.hbm_c = h;
        }
        let start = ThermalParams {
            die_capacity_j_per_k: 8.0,
            die_to_plate_k_per_w: 0.02,
            plate_capacity_j_per_k: 100.0,
            plate_to_coolant_k_per_w: 0.02,
            hbm_time_constant_s: 2.0,
            hbm_rise_k_per_w: 0.005,
            fitted_coolant_c: 28.0,
            ..truth
        };
        let r = fit(&trace, &start, 1);
        assert!(r.quality.core_rmse < 0.05, "{r:?}");
        assert!(r.quality.hbm_rmse < 0.05, "{r:?}");
        assert!((r.params.fitted_coolant_c - 31.0).abs() < 0.2, "{r:?}");
    }

    #[test]
    fn parse_rejects_a_trace_without_power() {
        let e = parse_trace("t_s,gpu,temp_gpu_c,temp_mem_c\n0,0,30,30\n", "x.csv")
            .expect_err("no power column");
        assert!(e.to_string().contains("power_instant_mw"), "{e}");
    }
}
