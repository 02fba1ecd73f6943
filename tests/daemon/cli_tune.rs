//! `coolantd tune` on the real binary: the gains it recommends are SIMC on the profile's
//! fitted model, they grow with pump speed (the plant gain falls as flow rises), the predicted
//! response ends at the set point, and bad input is refused with the name of what is wrong.

use coolantd::control::tuning::{simc, LoopModel};
use coolantd::profile::gpu::GpuProfiles;
use std::path::Path;
use std::process::Command;

fn tune(args: &[&str]) -> (bool, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_coolantd"))
        .arg("tune")
        .args(args)
        .arg("--profiles-dir")
        .arg(root.join("firmware-profiles"))
        .output()
        .expect("coolantd runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn value(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{key} = …` line in:\n{text}"))
}

#[test]
fn tune_prints_simc_gains_of_the_fitted_model_and_a_settling_response() {
    let (ok, text, err) = tune(&[
        "--profile",
        "h100-sxm",
        "--setpoint",
        "72",
        "--supply",
        "32",
    ]);
    assert!(ok, "{err}");
    let kp = value(&text, "kp");
    let ki = value(&text, "ki");

    // The schedule: kp rises with speed.
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("speed_%"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_whitespace()
                .map(|c| c.parse().expect("a number"))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 9, "{text}");
    assert!(
        rows.windows(2).all(|w| w[1][5] > w[0][5]),
        "kp rises with speed:\n{text}"
    );

    // The recommendation is SIMC at the speed the profile's default power needs.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let profiles = GpuProfiles::load_dir(&root.join("firmware-profiles/gpu")).expect("profiles");
    let p = profiles.by_name("h100-sxm").expect("h100-sxm");
    let speed: f64 = text
        .lines()
        .find(|l| l.starts_with("recommended"))
        .and_then(|l| l.split("pump ").nth(1))
        .and_then(|s| s.split(" %").next())
        .and_then(|s| s.parse().ok())
        .expect("the design-point speed");
    let (flow, lag) = coolantd::service::tune::TuneRequest::defaults();
    let m = LoopModel {
        plate: p.thermal.plate_model(),
        plate_capacity_j_per_k: p.thermal.plate_capacity_j_per_k,
        die_capacity_j_per_k: p.thermal.die_capacity_j_per_k,
        flow_per_gpu_at_full_lpm: flow,
        pump_lag_s: lag,
        period_s: 1.0,
    };
    let g = simc(&m.fopdt(p.power.default_w.get(), speed));
    assert!((g.kp - kp).abs() < 0.01, "kp {kp} vs SIMC {}", g.kp);
    assert!((g.ki - ki).abs() < 0.001, "ki {ki} vs SIMC {}", g.ki);

    // The predicted response ends at the set point.
    let last: Vec<f64> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("t_s"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .last()
        .expect("a response table")
        .split_whitespace()
        .map(|c| c.parse().expect("a number"))
        .collect();
    assert_eq!(last[0], 180.0);
    assert!((last[1] - 72.0).abs() < 0.2, "{text}");
}

#[test]
fn tune_refuses_an_unknown_profile_and_a_set_point_below_the_supply() {
    let (ok, _, err) = tune(&["--profile", "h999", "--setpoint", "72"]);
    assert!(!ok);
    assert!(err.contains("\"h999\"") && err.contains("gpu"), "{err}");
    let (ok, _, err) = tune(&[
        "--profile",
        "h100-sxm",
        "--setpoint",
        "30",
        "--supply",
        "35",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--setpoint") && err.contains("--supply"),
        "{err}"
    );
}
