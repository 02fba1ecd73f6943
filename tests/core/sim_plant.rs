//! The coolant-loop plant and the simulated GPUs: physics (energy balance, pump affinity laws,
//! flow vs. GPU temperature), the CDU's register behaviour, and fault injection.

use coolantd::collect::{GpuBackend, GpuError};
use coolantd::model::{GpuKey, Role};
use coolantd::profile::gpu::GpuProfile;
use coolantd::sim::plant::throttle;
use coolantd::sim::{build_plant, CduState, GpuFault, Plant, SimConfig, SimGpus, Workload};
use coolantd::units::Watts;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn profile(name: &str) -> GpuProfile {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("firmware-profiles/gpu/{name}.toml"));
    GpuProfile::load(&p).unwrap_or_else(|e| panic!("{e}"))
}

fn plant_with(cfg: SimConfig, gpu: &str) -> Plant {
    build_plant(&cfg, &profile(gpu), "node01")
}

fn full_load() -> SimConfig {
    SimConfig {
        workload: Workload::Full,
        gpus_per_host: 4,
        ..SimConfig::default()
    }
}

fn run(p: &mut Plant, seconds: u64) {
    for _ in 0..seconds {
        p.step(Duration::from_secs(1));
    }
}

fn set_pump(p: &mut Plant, pct: f64) {
    p.write(Role::PumpSpeedCommand, pct)
        .expect("remote pump command accepted");
}

#[test]
fn energy_balances_at_steady_state() {
    let mut p = plant_with(full_load(), "h200-sxm");
    run(&mut p, 2400);
    let gpu = p.gpu_power().0;
    let pump = p.pump_power().0;
    // Four H200s on their 700 W cap.
    assert!((gpu - 2800.0).abs() < 1.0, "GPU power {gpu}");
    assert!(
        (p.heat_to_coolant().0 - gpu).abs() < 0.01 * gpu,
        "{:?}",
        p.heat_to_coolant()
    );
    let out = p.heat_to_facility().0;
    assert!(
        (out - (gpu + pump)).abs() < 0.01 * gpu,
        "HX {out} W vs in {} W",
        gpu + pump
    );
    // The CDU's valve loop holds the supply at its set point.
    assert!((p.supply().0 - 30.0).abs() < 0.2, "supply {}", p.supply());
    // Return = supply + Q / (ṁ·cp) with PG25.
    let m_dot = p.flow().0 / 60.0 * 1.02;
    let rise = p.heat_to_coolant().0 / (m_dot * 3930.0);
    let measured = p.return_temperature().0 - p.supply().0;
    assert!(
        (measured - rise).abs() < 1e-6,
        "return rise {measured} vs {rise}"
    );
    assert_eq!(p.read(Role::Flow), Some(p.flow().0));
}

#[test]
fn more_pump_speed_means_cooler_gpus() {
    let core_at = |gpu: &str, pct: f64| {
        let mut p = plant_with(full_load(), gpu);
        set_pump(&mut p, pct);
        run(&mut p, 600);
        p.hottest_core().0
    };
    for gpu in ["h200-sxm", "h100-sxm"] {
        let (slow, fast) = (core_at(gpu, 30.0), core_at(gpu, 100.0));
        println!("{gpu}: full load, pump 30 % → core {slow:.1} °C, 100 % → {fast:.1} °C");
        assert!(
            slow > fast + 1.0,
            "{gpu}: 30 % → {slow:.1} °C, 100 % → {fast:.1} °C"
        );
    }
}

#[test]
fn pump_follows_affinity_laws() {
    let mut p = plant_with(
        SimConfig {
            workload: Workload::Idle,
            ..SimConfig::default()
        },
        "h200-sxm",
    );
    set_pump(&mut p, 100.0);
    run(&mut p, 30);
    let s1 = p.pump_speed().0 / 100.0;
    let (q1, dp1, w1) = (
        p.flow().0 / s1,
        p.differential_pressure().0 / s1.powi(2),
        p.pump_power().0 / s1.powi(3),
    );
    assert!((s1 - 1.0).abs() < 1e-3);
    // Rated point: 8 GPUs × 3 l/min, 150 kPa, η 0.5 → 24 l/min, 120 W.
    assert!((q1 - 24.0).abs() < 0.01 && (dp1 - 150.0).abs() < 0.1 && (w1 - 120.0).abs() < 0.1);
    set_pump(&mut p, 50.0);
    run(&mut p, 30);
    let s = p.pump_speed().0 / 100.0;
    assert!((s - 0.5).abs() < 1e-3, "speed {s}");
    assert!((p.flow().0 / q1 - s).abs() < 1e-9);
    assert!((p.differential_pressure().0 / dp1 - s * s).abs() < 1e-9);
    assert!((p.pump_power().0 / w1 - s.powi(3)).abs() < 1e-9);
    // The pump runs no slower than its minimum speed.
    set_pump(&mut p, 0.0);
    run(&mut p, 30);
    assert!(
        (p.pump_speed().0 - 20.0).abs() < 0.01,
        "{:?}",
        p.pump_speed()
    );
    // Energy integrates power: at least the 20 % floor's power over the last 30 s.
    assert!(p.pump_energy().0 > 30.0 * 120.0 * 0.2f64.powi(3));
}

#[test]
fn cdu_registers_through_the_shared_handle() {
    let mut shared = Arc::new(Mutex::new(plant_with(SimConfig::default(), "h200-sxm")));
    assert_eq!(shared.read(Role::Leak), Some(0.0));
    shared.lock().expect("lock").set_leak(true);
    assert_eq!(shared.read(Role::Leak), Some(1.0));
    assert_eq!(shared.read(Role::RemoteEnable), Some(1.0));
    assert_eq!(shared.read(Role::FacilityWaterTemperature), Some(25.0));

    assert!(shared.write(Role::PumpSpeedCommand, 101.0).is_err());
    assert!(shared.write(Role::PumpSpeedCommand, -1.0).is_err());
    shared
        .write(Role::PumpSpeedCommand, 75.0)
        .expect("in range");
    assert_eq!(shared.read(Role::PumpSpeedCommand), Some(75.0));
    shared.lock().expect("lock").set_remote_enable(false);
    let e = shared
        .write(Role::PumpSpeedCommand, 80.0)
        .expect_err("local mode");
    assert!(e.contains("local"), "{e}");
    assert_eq!(shared.read(Role::PumpSpeedCommand), Some(75.0));
    assert!(shared.write(Role::SupplyTemperature, 20.0).is_err());

    shared.write(Role::Watchdog, 7.0).expect("watchdog");
    assert_eq!(shared.read(Role::Watchdog), Some(7.0));
    assert_eq!(shared.lock().expect("lock").watchdog_writes(), 1);
}

#[test]
fn watchdog_timeout_falls_back_to_the_cdu_speed() {
    let cfg = SimConfig {
        watchdog_timeout_s: Some(5.0),
        fallback_pump_pct: 90.0,
        ..SimConfig::default()
    };
    let mut p = plant_with(cfg, "h200-sxm");
    set_pump(&mut p, 40.0);
    for i in 0..20 {
        p.write(Role::Watchdog, f64::from(i)).expect("watchdog");
        p.step(Duration::from_secs(1));
    }
    assert!(!p.in_watchdog_fallback());
    assert!((p.pump_speed().0 - 40.0).abs() < 1.0);
    // The same value again is no heartbeat.
    for _ in 0..20 {
        p.write(Role::Watchdog, 19.0).expect("watchdog");
        p.step(Duration::from_secs(1));
    }
    assert!(p.in_watchdog_fallback());
    assert!(
        (p.pump_speed().0 - 90.0).abs() < 1.0,
        "{:?}",
        p.pump_speed()
    );
}

#[test]
fn failed_pump_stops_flow_and_the_gpus_slow_down() {
    let mut p = plant_with(full_load(), "h100-sxm");
    set_pump(&mut p, 80.0);
    run(&mut p, 60);
    p.fail_pump(true);
    run(&mut p, 600);
    assert_eq!(p.read(Role::PumpSpeedCommand), Some(80.0));
    assert!(p.read(Role::PumpSpeedFeedback).unwrap_or(100.0) < 1.0);
    assert!(p.flow().0 < 0.1);
    let g = &p.gpus()[0];
    assert!(
        g.throttle & throttle::HW_THERMAL_SLOWDOWN != 0 || g.shut_down,
        "{g:?}"
    );
    assert!(g.power.0 <= 200.0 + 1e-9, "power {:?}", g.power);
}

#[test]
fn simulated_gpus_read_like_nvml() {
    let plant = Arc::new(Mutex::new(plant_with(
        SimConfig {
            hosts: vec!["n1".into(), "n2".into()],
            gpus_per_host: 2,
            workload: Workload::Step {
                at_s: 10.0,
                from: 0.0,
                to: 1.0,
            },
            ..SimConfig::default()
        },
        "h200-sxm",
    )));
    let gpus = SimGpus::new(plant.clone(), Some("n2"));
    let inv = gpus.inventory();
    assert_eq!(inv.len(), 2);
    assert!(inv
        .iter()
        .all(|g| g.key.host == "n2" && g.name == "NVIDIA H200"));
    assert_ne!(inv[0].uuid, inv[1].uuid);
    assert_eq!(
        inv[0].uuid,
        SimGpus::new(plant.clone(), None).inventory()[2].uuid
    );
    assert!(
        inv[0].uuid.starts_with("GPU-") && inv[0].uuid.len() == 40,
        "{}",
        inv[0].uuid
    );

    let idle = gpus.read_fast(Duration::ZERO);
    assert_eq!(idle[0].throttle_reasons, Some(throttle::GPU_IDLE));
    plant.lock().expect("lock").step(Duration::from_secs(40));
    let busy = gpus.read_fast(Duration::from_secs(40));
    let s = &busy[0];
    assert_eq!(s.throttle_reasons, Some(throttle::SW_POWER_CAP));
    assert_eq!(s.power_instant, Some(Watts(700.0)));
    let clock = s.sm_clock.expect("clock").0;
    assert!((1440.0..=1520.0).contains(&clock), "capped clock {clock}");
    let core = s.core.expect("core").0;
    assert!(core > 45.0 && core < 70.0, "core {core}");

    // Lowering the cap lowers power and, after a while, temperature.
    let key = GpuKey {
        host: "n2".into(),
        index: 0,
    };
    gpus.set_power_limit(&key, Watts(400.0)).expect("in range");
    assert!(matches!(
        gpus.set_power_limit(&key, Watts(800.0)),
        Err(GpuError::LimitOutOfRange { .. })
    ));
    let other_host = GpuKey {
        host: "n1".into(),
        index: 0,
    };
    assert!(matches!(
        gpus.set_power_limit(&other_host, Watts(400.0)),
        Err(GpuError::UnknownGpu(_))
    ));
    plant.lock().expect("lock").step(Duration::from_secs(30));
    let s = &gpus.read_fast(Duration::from_secs(70))[0];
    assert_eq!(s.power_instant, Some(Watts(400.0)));
    assert_eq!(s.enforced_limit, Some(Watts(400.0)));
    assert!(s.core.expect("core").0 < core - 5.0);
    let slow = gpus.read_slow(Duration::from_secs(70));
    assert!(slow[0].energy.expect("energy").0 > 400.0 * 30.0);
    assert!(slow[0].violation_power_ns.expect("violation") > 0);

    // Fault injection: unresponsive reads unknown values; gone disappears.
    assert!(gpus.inject_fault(&key, GpuFault::Unresponsive));
    let s = &gpus.read_fast(Duration::ZERO)[0];
    assert_eq!((s.core, s.power_instant), (None, None));
    assert!(gpus.set_power_limit(&key, Watts(500.0)).is_err());
    gpus.inject_fault(&key, GpuFault::Gone);
    assert_eq!(gpus.read_fast(Duration::ZERO).len(), 1);
    assert!(matches!(
        gpus.set_power_limit(&key, Watts(500.0)),
        Err(GpuError::UnknownGpu(_))
    ));
    gpus.inject_fault(&key, GpuFault::None);
    assert_eq!(gpus.read_fast(Duration::ZERO).len(), 2);
}

#[test]
fn stepping_is_deterministic_and_independent_of_the_step_size() {
    let cfg = SimConfig {
        gpus_per_host: 2,
        ..SimConfig::default()
    };
    let mut a = plant_with(cfg.clone(), "h200-sxm");
    let mut b = plant_with(cfg, "h200-sxm");
    for _ in 0..1000 {
        a.step(Duration::from_millis(100));
    }
    for _ in 0..100 {
        b.step(Duration::from_secs(1));
    }
    assert_eq!(a.now(), b.now());
    assert!((a.hottest_core().0 - b.hottest_core().0).abs() < 1e-6);
    assert!((a.supply().0 - b.supply().0).abs() < 1e-6);
}
