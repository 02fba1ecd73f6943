//! The GPU thermal model against the real captures, with the parameters stored in the GPU
//! profiles: the replay must track the measured core temperature, and a refit from the stored
//! parameters must not find a clearly better optimum (so the profile is not stale).

use coolantd::profile::gpu::GpuProfile;
use coolantd::sim::fit::{fit, quality, read_trace, replay};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(board: &str) -> (GpuProfile, Vec<coolantd::sim::fit::TraceRow>) {
    let profile = GpuProfile::load(&root().join(format!("firmware-profiles/gpu/{board}-sxm.toml")))
        .unwrap_or_else(|e| panic!("profile: {e}"));
    let trace = read_trace(&root().join(Path::new(&format!("tests/fixtures/{board}/trace.csv"))))
        .unwrap_or_else(|e| panic!("trace: {e}"));
    (profile, trace)
}

#[test]
fn h200_stored_parameters_track_the_capture() {
    let (profile, trace) = load("h200");
    let q = quality(&profile.thermal, &trace);
    println!(
        "h200 stored: core RMSE {:.3} K, HBM RMSE {:.3} K",
        q.core_rmse, q.hbm_rmse
    );
    assert!(q.core_rmse < 1.5, "core RMSE {:.3} K", q.core_rmse);
    assert!(q.hbm_rmse < 2.0, "HBM RMSE {:.3} K", q.hbm_rmse);
    // The features the README describes: ~55 °C 5 s into the load, ~56 °C after a minute.
    let model = replay(&profile.thermal, &trace);
    let at = |t: f64| {
        let i = trace
            .iter()
            .position(|r| r.t_s >= t)
            .expect("time inside the trace");
        model[i].0
    };
    assert!(
        (at(25.6) - 55.0).abs() < 1.5,
        "core 5 s into the load {}",
        at(25.6)
    );
    assert!(
        (at(74.0) - 56.0).abs() < 1.5,
        "core after a minute {}",
        at(74.0)
    );
    assert!(at(10.0) < 36.0, "idle core {}", at(10.0));
}

#[test]
fn h100_stored_parameters_track_the_capture() {
    let (profile, trace) = load("h100");
    let q = quality(&profile.thermal, &trace);
    println!(
        "h100 stored: core RMSE {:.3} K, HBM RMSE {:.3} K",
        q.core_rmse, q.hbm_rmse
    );
    assert!(q.core_rmse < 1.0, "core RMSE {:.3} K", q.core_rmse);
    assert!(q.hbm_rmse < 2.5, "HBM RMSE {:.3} K", q.hbm_rmse);
    // The slow constant is much longer than the H200's: tens of seconds.
    let t = &profile.thermal;
    let slow = t.plate_capacity_j_per_k * t.plate_to_coolant_k_per_w;
    assert!(slow > 15.0, "H100 slow time constant {slow:.1} s");
}

#[test]
fn stored_parameters_sit_at_the_optimum() {
    for board in ["h200", "h100"] {
        let (profile, trace) = load(board);
        let stored = quality(&profile.thermal, &trace);
        let refit = fit(&trace, &profile.thermal, 0);
        println!(
            "{board}: stored core {:.4} K / HBM {:.4} K, refit core {:.4} K / HBM {:.4} K",
            stored.core_rmse, stored.hbm_rmse, refit.quality.core_rmse, refit.quality.hbm_rmse
        );
        assert!(
            stored.core_rmse - refit.quality.core_rmse < 0.02,
            "{board}: the stored core parameters are stale; rerun \
             `cargo run --release --example fit_thermal {board}`"
        );
        assert!(
            stored.hbm_rmse - refit.quality.hbm_rmse < 0.02,
            "{board}: the stored HBM parameters are stale"
        );
    }
}
