//! Re-runs the thermal fit of the GPU profiles against the real captures and prints the
//! parameters (ready to paste into the profile's `[thermal]` table) and the RMSE.
//!
//! `cargo run --release --example fit_thermal [h200|h100 ...]`

use coolantd::profile::gpu::GpuProfile;
use coolantd::sim::fit::{fit, quality, read_trace};
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let boards = if which.is_empty() {
        vec!["h200".to_string(), "h100".to_string()]
    } else {
        which
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for b in boards {
        let profile = GpuProfile::load(&root.join(format!("firmware-profiles/gpu/{b}-sxm.toml")))?;
        let trace = read_trace(&root.join(format!("tests/fixtures/{b}/trace.csv")))?;
        let stored = quality(&profile.thermal, &trace);
        let r = fit(&trace, &profile.thermal, 3);
        let p = r.params;
        println!(
            "# {b}: stored core RMSE {:.3} K, HBM RMSE {:.3} K",
            stored.core_rmse, stored.hbm_rmse
        );
        println!(
            "# {b}: refit  core RMSE {:.3} K, HBM RMSE {:.3} K ({} evaluations)",
            r.quality.core_rmse, r.quality.hbm_rmse, r.evaluations
        );
        println!("die_capacity_j_per_k = {:.4}", p.die_capacity_j_per_k);
        println!("die_to_plate_k_per_w = {:.6}", p.die_to_plate_k_per_w);
        println!("plate_capacity_j_per_k = {:.3}", p.plate_capacity_j_per_k);
        println!(
            "plate_to_coolant_k_per_w = {:.6}",
            p.plate_to_coolant_k_per_w
        );
        println!("hbm_time_constant_s = {:.4}", p.hbm_time_constant_s);
        println!("hbm_rise_k_per_w = {:.6}", p.hbm_rise_k_per_w);
        println!("fitted_coolant_c = {:.3}", p.fitted_coolant_c);
    }
    Ok(())
}
