//! The simulator's rack of GPUs that differ: per-GPU spread of plate resistance and power
//! demand and a hot spot high in the rack, seeded (`[simulator]` `plate_spread_pct`,
//! `power_spread_pct`, `hot_spot_pct`, `spread_seed`).

use coolantd::profile::gpu::GpuProfile;
use coolantd::sim::{build_plant, Plant, SimConfig, Workload};
use coolantd::validate::Issues;
use std::collections::BTreeSet;
use std::time::Duration;

fn profile() -> GpuProfile {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("firmware-profiles/gpu/h200-sxm.toml");
    GpuProfile::load(&p).unwrap_or_else(|e| panic!("{e}"))
}

/// 8 hosts × 8 GPUs (listed bottom to top), 3 % plate and 5 % power spread, a 6 % hot spot.
fn rack(seed: u64, workload: Workload) -> SimConfig {
    SimConfig {
        hosts: (1..=8).map(|i| format!("node{i:02}")).collect(),
        gpus_per_host: 8,
        workload,
        plate_spread_pct: 3.0,
        power_spread_pct: 5.0,
        hot_spot_pct: 6.0,
        spread_seed: seed,
        ..SimConfig::default()
    }
}

fn factors(p: &Plant) -> Vec<(f64, f64)> {
    p.gpus()
        .iter()
        .map(|g| (g.plate_factor, g.power_factor))
        .collect()
}

/// The index (in plant order) of the GPU with the hottest die.
fn hottest(p: &Plant) -> usize {
    p.gpus()
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.thermal.die.0.total_cmp(&b.1.thermal.die.0))
        .map(|(i, _)| i)
        .expect("the plant has GPUs")
}

#[test]
fn the_spread_is_the_same_for_the_same_seed_and_differs_for_another() {
    let prof = profile();
    let a = factors(&build_plant(&rack(7, Workload::Idle), &prof, "x"));
    let b = factors(&build_plant(&rack(7, Workload::Idle), &prof, "x"));
    let c = factors(&build_plant(&rack(8, Workload::Idle), &prof, "x"));
    assert_eq!(a.len(), 64);
    assert_eq!(a, b, "the same seed gave different factors");
    assert_ne!(a, c, "another seed gave the same factors");
    // A GPU keeps its factors when the rack changes around it.
    let mut fewer = rack(7, Workload::Idle);
    fewer.hosts.truncate(1);
    let one = factors(&build_plant(&fewer, &prof, "x"));
    assert_eq!(one[3].1, a[3].1, "node01 GPU 3's power factor moved");
}

#[test]
fn every_factor_is_within_its_bounds_and_the_top_of_the_rack_runs_warmer() {
    let p = build_plant(&rack(1, Workload::Idle), &profile(), "x");
    let (mut lo_plate, mut hi_plate) = (f64::MAX, f64::MIN);
    for (i, g) in p.gpus().iter().enumerate() {
        let height = (i / 8) as f64 / 7.0;
        let hot = 1.0 + 0.06 * height;
        let plate = g.plate_factor / hot;
        assert!(
            (0.97..=1.03).contains(&plate),
            "{:?}: plate factor {} (without the hot spot {plate})",
            g.key,
            g.plate_factor
        );
        assert!(
            (0.95..=1.05).contains(&g.power_factor),
            "{:?}: power factor {}",
            g.key,
            g.power_factor
        );
        lo_plate = lo_plate.min(plate);
        hi_plate = hi_plate.max(plate);
    }
    // 64 uniform draws over ±3 % cover most of the range, not a constant.
    assert!(hi_plate - lo_plate > 0.04, "{lo_plate}..{hi_plate}");
    let mean = |host: usize| {
        p.gpus()[host * 8..host * 8 + 8]
            .iter()
            .map(|g| g.plate_factor)
            .sum::<f64>()
            / 8.0
    };
    assert!(
        mean(7) > mean(0) + 0.03,
        "top host {} vs bottom host {}",
        mean(7),
        mean(0)
    );
}

#[test]
fn the_hottest_gpu_moves_when_the_load_changes() {
    // Full load (every GPU on its 700 W cap: the plate decides) for 10 minutes, then half load
    // (below the cap: the power spread counts too) for 10 minutes.
    let mut p = build_plant(
        &rack(
            1,
            Workload::Step {
                at_s: 600.0,
                from: 1.0,
                to: 0.5,
            },
        ),
        &profile(),
        "x",
    );
    let mut seen = BTreeSet::new();
    let mut at_full = None;
    for s in 0..1200 {
        p.step(Duration::from_secs(1));
        if s == 599 {
            at_full = Some(hottest(&p));
        }
        if s >= 300 {
            seen.insert(hottest(&p));
        }
    }
    let at_full = at_full.expect("sampled at full load");
    let at_half = hottest(&p);
    assert_ne!(
        at_full, at_half,
        "GPU {at_full} is the hottest at full and at half load"
    );
    assert!(seen.len() >= 2, "hottest GPUs seen: {seen:?}");
    // And the temperatures differ by kelvins, not by rounding.
    let dies: Vec<f64> = p.gpus().iter().map(|g| g.thermal.die.0).collect();
    let spread = dies.iter().cloned().fold(f64::MIN, f64::max)
        - dies.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 1.0, "die temperatures within {spread} K");
}

#[test]
fn without_spread_keys_every_gpu_is_the_same_as_before() {
    let mut cfg = rack(1, Workload::Full);
    cfg.plate_spread_pct = 0.0;
    cfg.power_spread_pct = 0.0;
    cfg.hot_spot_pct = 0.0;
    assert_eq!(
        (cfg.plate_spread_pct, cfg.power_spread_pct, cfg.hot_spot_pct),
        {
            let d = SimConfig::default();
            (d.plate_spread_pct, d.power_spread_pct, d.hot_spot_pct)
        },
        "the defaults are no spread"
    );
    let mut p = build_plant(&cfg, &profile(), "x");
    p.step(Duration::from_secs(120));
    assert!(p
        .gpus()
        .iter()
        .all(|g| g.plate_factor == 1.0 && g.power_factor == 1.0));
    let first = p.gpus()[0].thermal;
    assert!(
        p.gpus().iter().all(|g| g.thermal == first),
        "identical GPUs drifted apart"
    );
}

#[test]
fn spread_keys_out_of_range_are_refused_by_name() {
    let mut cfg = SimConfig {
        plate_spread_pct: 25.0,
        power_spread_pct: -1.0,
        hot_spot_pct: f64::NAN,
        ..SimConfig::default()
    };
    let mut issues = Issues::default();
    cfg.validate("simulator", &mut issues);
    let keys: Vec<String> = issues.into_vec().into_iter().map(|i| i.key).collect();
    assert_eq!(
        keys,
        [
            "simulator.plate_spread_pct",
            "simulator.power_spread_pct",
            "simulator.hot_spot_pct"
        ]
    );
    cfg.plate_spread_pct = 20.0;
    cfg.power_spread_pct = 0.0;
    cfg.hot_spot_pct = 50.0;
    let mut issues = Issues::default();
    cfg.validate("simulator", &mut issues);
    assert!(issues.is_empty());
}

#[test]
fn the_shipped_rack_config_builds_64_gpus_with_a_warm_top() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/sim-rack.toml");
    let cfg = coolantd::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let sim = cfg
        .simulator
        .as_ref()
        .expect("[simulator] in sim-rack.toml");
    let p = build_plant(sim, &profile(), "unused: hosts are listed");
    assert_eq!(p.gpus().len(), 64);
    assert_eq!(p.gpus()[63].key.host, "node08");
    assert!(sim.plate_spread_pct > 0.0 && sim.power_spread_pct > 0.0 && sim.hot_spot_pct > 0.0);
    let distinct: BTreeSet<u64> = p.gpus().iter().map(|g| g.plate_factor.to_bits()).collect();
    assert_eq!(distinct.len(), 64, "every GPU has its own plate");
}
