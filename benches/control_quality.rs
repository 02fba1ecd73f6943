//! Control quality on the plant simulator: coolantd's controller against the strategies
//! common fan controllers use, for 8 H200s, 8 H100s (on 30 °C and on 50 °C water) and a rack
//! of 64 H200s that differ (config/sim-rack.toml: plate and power spread, a hot spot at the
//! top, so the hottest GPU moves) on one simulated CDU.
//!
//! Every strategy drives the same deterministic plant (`coolantd::sim`) in closed loop, in
//! process, at a 1 s control period with the plant stepped 1 s per tick:
//!
//! - `coolantd`: the pure control core (`Controller`) with the `[control]` section of
//!   `config/sim.toml` (PID with back-calculation anti-windup, derivative on measurement,
//!   derivative filter, slew limits; power caps as the last resort). It sees the CDU as the
//!   Modbus collector would (every role of the `sim-cdu` profile, integer registers rounded to
//!   their scale) and the GPUs through `SimGpus::read_fast`; its actuations go back to the plant.
//! - `coolantd, [control] default gains`: the same with `ControlConfig::default()`'s PID gains,
//!   to show whether the built-in defaults suit this plant.
//! - `coolantd + feed-forward`: the same gains plus the heat-load feed-forward
//!   (`control/feedforward.rs`) with the GPU profile's plate model; the `coolantd` rows above run
//!   without it (feedback only).
//! - `coolantd + feed-forward, SIMC gains`: SIMC gains at the design point (`coolantd tune`);
//!   `…, scheduled SIMC gains`: SIMC gains scheduled at run time (`Controller::set_loop_model`).
//! - `pump fixed 100 %`: no control at all, power limits untouched.
//! - `naive PID (integrator clamped)`: `NaivePid` with the same gains, the integral term clamped
//!   to the output range (phosphor-pid-control's `integralLimit` set to the output range, the
//!   usual configuration), derivative on the error, no filter, no slew limit; caps untouched.
//! - `naive PID (integrator unbounded)`: the same without any integral clamp (only the output
//!   is clamped), as many hand-written fan loops do.
//!
//! Workloads (see `workloads()`): the benchmark trace, training iterations (2.55 s compute,
//! 0.45 s communication dips, every 3 s), a synchronized 30 s checkpoint drop, a job start on a
//! cold loop, facility water warming 12 K over 10 minutes at full load, and full load then half
//! load (where the rack's hottest GPU changes). README.md's table and the baseline cover the
//! benchmark trace; the others go to the Markdown report (which ends with every plant and
//! workload side by side, docs/control.md's table) and the JSON.
//!
//! Run: `cargo bench --bench control_quality`. Prints Markdown tables and writes them to
//! `target/control_quality.md`. `-- --plant h200,rack --workload training` runs a part only
//! (plants h200, h100, h100-warm, rack), writes nothing and skips the baseline. Under `cargo test --benches` (no `--bench` argument) it runs
//! the same comparison on a shortened trace as a smoke test and writes nothing.

use coolantd::collect::GpuBackend;
use coolantd::config::Config;
use coolantd::control::pid::{Action, NaivePid};
use coolantd::control::{CduSetup, ControlConfig, Controller, TickInput};
use coolantd::model::{
    Actuation, ActuationOutcome, CduSample, ControlState, GpuSample, RegisterReading, Role,
};
use coolantd::profile::cdu::CduProfile;
use coolantd::profile::gpu::{GpuProfile, GpuProfiles};
use coolantd::sim::thermal::THERMAL_STEP;
use coolantd::sim::{build_plant, CduState, Plant, SimConfig, SimGpus, Workload};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The control period and plant step of every run, s.
const PERIOD_S: f64 = 1.0;
/// The benchmark workload (`Workload::Benchmark`): idle 60 s, full 300 s, bursts 300 s,
/// idle 120 s.
const TRACE_S: u64 = 780;
/// Under `cargo test`: idle 60 s, the full-load step and the first bursts. Enough to exercise
/// every path in a debug build within the CI's few seconds.
const SMOKE_TRACE_S: u64 = 420;

/// H100 set point, °C. With 30 °C supply the simulated H100 (its fitted plate-to-coolant
/// resistance is ~8× the H200's) settles its hottest core at full load (700 W) at 66.1 °C with
/// the pump at 100 %, 73.5 °C at 60 % and 88.8 °C, a hair under its 89 °C slowdown, at the
/// 20 % minimum (the "steady" lines the bench prints). 72 °C is a value the pump holds at full
/// load at about 70 % speed, with ~6 K of authority left for transients, so the pump loop
/// rather than the power caps does the work; and it is well inside the 84 °C ceiling (slowdown
/// minus the 5 K `slowdown_margin_k`).
const H100_SETPOINT_C: f64 = 72.0;

/// Stress case: supply water at 50 °C, beyond ASHRAE's W45 class (facility supply up to
/// 45 °C) as in a facility-water excursion, where even the pump at 100 % leaves the H100's
/// hottest core above any allowed set point and only the power caps keep it off slowdown.
const WARM_SUPPLY_C: f64 = 50.0;
/// The highest set point allowed below the H100's 89 °C slowdown (5 K `slowdown_margin_k`)
/// minus 2 K, so that the caps' band (`band_k` = 2 K) ends at that ceiling.
const WARM_SETPOINT_C: f64 = 82.0;

fn lock(p: &Arc<Mutex<Plant>>) -> MutexGuard<'_, Plant> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
enum Strategy {
    /// The control core; with `true`, the heat-load feed-forward gets the GPU profile's plate
    /// model (without it the feed-forward stays off).
    Coolantd(Box<ControlConfig>, bool),
    /// Feed-forward with SIMC gains at the design point (`coolantd tune`) instead of the
    /// configured ones.
    CoolantdTuned(Box<ControlConfig>),
    /// Feed-forward with the SIMC gains scheduled at run time (`[control.pid] gain_schedule`).
    CoolantdScheduled(Box<ControlConfig>),
    Fixed(f64),
    Naive {
        kp: f64,
        ki: f64,
        kd: f64,
        clamp: bool,
    },
}

#[derive(Debug, Default, Clone)]
struct Metrics {
    above_s: f64,
    above_1k_s: f64,
    above_ks: f64,
    overshoot_k: f64,
    iae_loaded: f64,
    /// The part of `iae_loaded` below the set point: Σ max(SP − CV, 0)·dt while loaded.
    below_loaded: f64,
    /// Seconds from the idle → full-load step until the controlled value first comes within
    /// 0.5 K below the set point (`None`: never).
    band_entry_s: Option<f64>,
    pump_kj: f64,
    pump_travel: f64,
    perf_lost_pct: f64,
    slowdown_s: f64,
    not_running_s: f64,
    /// Seconds from the idle → full-load step until the controlled value stays within ±0.5 K
    /// of the set point for the rest of the full-load segment (the segment's length when it
    /// never does).
    settle_s: f64,
    /// How many different GPUs were the hottest (by the controlled value) in some tick, and
    /// how often the hottest GPU changed: on a rack whose GPUs differ the pump loop's
    /// controlled value moves between GPUs.
    hottest_gpus: usize,
    hottest_moves: u32,
}

/// The controlled variable as `controlled_variable = "max"` defines it, from the plant's truth:
/// the hottest of each GPU's core and its HBM expressed as an equivalent core temperature
/// (slowdown threshold minus the HBM's margin to its own limit).
/// Returns the GPU that sets it (index in plant order) and the value.
fn hottest_truth(plant: &Plant) -> (usize, f64) {
    let th = &plant.profile().thresholds;
    plant
        .gpus()
        .iter()
        .map(|g| {
            let hbm_equiv = th.slowdown_c.0 - (th.hbm_max_c.0 - g.thermal.hbm.0);
            g.thermal.die.0.max(hbm_equiv)
        })
        .enumerate()
        .fold(
            (0, f64::MIN),
            |best, (i, v)| if v > best.1 { (i, v) } else { best },
        )
}

/// The same from GPU samples, as a controller that only sees NVML readings computes it.
fn controlled_from_samples(samples: &[GpuSample], prof: &GpuProfile) -> Option<f64> {
    let th = &prof.thresholds;
    samples
        .iter()
        .filter_map(|s| {
            let core = s.core.map(|c| c.0);
            let hbm = s.hbm.map(|h| th.slowdown_c.0 - (th.hbm_max_c.0 - h.0));
            match (core, hbm) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        })
        .reduce(f64::max)
}

/// One poll of the simulated CDU as the Modbus collector would decode it.
fn cdu_sample(plant: &Plant, profile: &CduProfile, name: &str, now: Duration) -> CduSample {
    let registers = profile
        .registers
        .iter()
        .filter_map(|r| {
            let role = r.role?;
            let value = plant.read(role).map(|v| {
                if r.data_type.is_integer() {
                    // An integer register carries the value in steps of its scale.
                    let s = r.scale();
                    (v / s).round() * s
                } else {
                    v
                }
            });
            Some(RegisterReading {
                name: r.name.clone(),
                role: Some(role),
                value: value.ok_or(coolantd::model::SensorFault::Timeout),
            })
        })
        .collect();
    CduSample {
        cdu: name.to_string(),
        at: now,
        registers,
    }
}

struct Setup<'a> {
    gpu: &'a GpuProfile,
    cdu: &'a CduProfile,
    sim: SimConfig,
    setpoint: f64,
    trace_s: u64,
    /// The workload's idle → full-load step and the end of the loaded segment after it, s.
    step: (f64, f64),
    /// Facility water warms by this much per second over the run, K/s.
    drift_k_per_s: f64,
    /// A periodic load's period, s: `settle_s` is then measured on the upper envelope of the
    /// controlled value (its highest sample over the last period), since each iteration swings
    /// the die far more than ±0.5 K in a fraction of a second, faster than any pump.
    envelope_s: Option<f64>,
}

/// The training workload's iteration period, s.
const TRAINING_PERIOD_S: f64 = 3.0;

/// The workloads every plant runs: id, workload, seconds, the load step `settle_s` is measured
/// from and the end of the loaded segment after it.
#[allow(clippy::type_complexity)]
fn workloads() -> Vec<(&'static str, Workload, u64, (f64, f64), f64)> {
    use coolantd::sim::workload::Segment;
    let seg = |duration_s: f64, load: f64, period_s: Option<f64>, duty: Option<f64>| Segment {
        duration_s,
        load,
        period_s,
        duty,
    };
    vec![
        (
            "benchmark",
            Workload::Benchmark,
            TRACE_S,
            (60.0, 360.0),
            0.0,
        ),
        // Training iterations: 2.55 s of compute, 0.45 s of communication (all-reduce) at idle
        // power, every 3 s, all GPUs in step.
        (
            "training",
            Workload::Trace {
                segments: vec![
                    seg(30.0, 0.0, None, None),
                    seg(270.0, 1.0, Some(TRAINING_PERIOD_S), Some(0.85)),
                ],
                repeat: false,
            },
            300,
            (30.0, 300.0),
            0.0,
        ),
        // A synchronized checkpoint: every GPU from full load to near idle for 30 s and back.
        (
            "checkpoint",
            Workload::Trace {
                segments: vec![
                    seg(30.0, 0.0, None, None),
                    seg(150.0, 1.0, None, None),
                    seg(30.0, 0.05, None, None),
                    seg(120.0, 1.0, None, None),
                ],
                repeat: false,
            },
            330,
            (30.0, 180.0),
            0.0,
        ),
        // A job starts on a cold (idle, pump at its start speed) loop after 5 s.
        (
            "cold-start",
            Workload::Trace {
                segments: vec![seg(5.0, 0.0, None, None), seg(295.0, 1.0, None, None)],
                repeat: false,
            },
            300,
            (5.0, 300.0),
            0.0,
        ),
        // Full load while the facility water warms 12 K over 10 minutes (a chiller failing
        // over, a hot afternoon): the CDU's valve opens until it cannot hold the supply.
        (
            "facility-drift",
            Workload::Trace {
                segments: vec![seg(5.0, 0.0, None, None), seg(595.0, 1.0, None, None)],
                repeat: false,
            },
            600,
            (5.0, 600.0),
            0.02,
        ),
        // Full load, then every GPU at half load (config/sim-rack.toml's trace, shortened):
        // at full load every GPU sits on its power cap and the worst plate is the hottest;
        // at half load the power spread counts too, so on a rack whose GPUs differ another GPU
        // becomes the hottest.
        (
            "half-load",
            Workload::Trace {
                segments: vec![
                    seg(30.0, 0.0, None, None),
                    seg(240.0, 1.0, None, None),
                    seg(240.0, 0.5, None, None),
                ],
                repeat: false,
            },
            510,
            (30.0, 270.0),
            0.0,
        ),
    ]
}

/// The id of a workload from [`workloads`].
fn workload_id(w: &Workload) -> &'static str {
    workloads()
        .into_iter()
        .find(|(_, x, ..)| x == w)
        .map_or("?", |(id, ..)| id)
}

/// Runs one strategy over the trace and measures it.
fn run(s: &Setup<'_>, strategy: &Strategy) -> Metrics {
    const HOST: &str = "bench-node";
    const CDU: &str = "cdu-sim";
    let plant = Arc::new(Mutex::new(build_plant(&s.sim, s.gpu, HOST)));
    let gpus = SimGpus::new(plant.clone(), None);
    let (pump_lo, pump_hi) = s
        .cdu
        .pump_limits()
        .map_or((20.0, 100.0), |(a, b)| (a.0, b.0));

    let mut ctl = match strategy {
        Strategy::Coolantd(cfg, _)
        | Strategy::CoolantdTuned(cfg)
        | Strategy::CoolantdScheduled(cfg) => {
            let tuned = matches!(strategy, Strategy::CoolantdTuned(_));
            let scheduled = matches!(strategy, Strategy::CoolantdScheduled(_));
            let ff = &(tuned || scheduled || matches!(strategy, Strategy::Coolantd(_, true)));
            let mut cfg = (**cfg).clone();
            cfg.setpoint = s.setpoint;
            cfg.feed_forward.enabled = *ff;
            cfg.pid.gain_schedule = scheduled;
            let th = &s.gpu.thermal;
            let m = coolantd::control::tuning::LoopModel {
                plate: th.plate_model(),
                plate_capacity_j_per_k: th.plate_capacity_j_per_k,
                die_capacity_j_per_k: th.die_capacity_j_per_k,
                flow_per_gpu_at_full_lpm: s.sim.rated_flow_lpm_per_gpu,
                pump_lag_s: s.sim.pump_time_constant_s,
                period_s: PERIOD_S,
            };
            if tuned {
                // Model-based gains: SIMC at the design point (coolantd tune).
                if let Some((_, g)) = m.design_point(
                    s.gpu.power.default_w.get(),
                    s.sim.supply_setpoint_c,
                    s.setpoint,
                    pump_lo,
                    pump_hi,
                ) {
                    cfg.pid.kp = g.kp;
                    cfg.pid.ki = g.ki;
                }
            }
            let setup = CduSetup {
                name: CDU.into(),
                hosts: s.sim.hosts_or(HOST),
                pump_min: coolantd::units::Percent(pump_lo),
                pump_max: coolantd::units::Percent(pump_hi),
                roles: s.cdu.roles(),
            };
            let mut c = Controller::new(&cfg, vec![setup], gpus.inventory());
            if *ff {
                c.set_plate_model(CDU, Some(s.gpu.thermal.plate_model()));
            }
            if scheduled {
                c.set_loop_model(CDU, Some(m));
            }
            Some(c)
        }
        _ => None,
    };
    let mut naive = match strategy {
        Strategy::Naive { kp, ki, kd, clamp } => {
            let mut n = NaivePid::new(*kp, *ki, *kd, pump_lo, pump_hi, Action::Reverse);
            if *clamp {
                n.integral_limit = Some((pump_lo, pump_hi));
            }
            Some(n)
        }
        _ => None,
    };
    if let Strategy::Fixed(v) = strategy {
        // A write to the simulated CDU fails only for out-of-range values: a broken harness.
        lock(&plant)
            .write(Role::PumpSpeedCommand, *v)
            .expect("fixed pump speed within 0..=100 %");
    }

    let prof = s.gpu;
    let (idle_w, full_w, ref_limit) = (
        prof.power.idle_w.0,
        prof.power.full_load_w.0,
        prof.power.default_w.0,
    );
    let slowdown = prof.thresholds.slowdown_c.0;
    let sp = s.setpoint;
    let mut m = Metrics::default();
    let mut outcomes: Vec<ActuationOutcome> = Vec::new();
    let mut energy_before: Vec<f64> = lock(&plant).gpus().iter().map(|g| g.energy.0).collect();
    let (mut ref_j, mut lost_j) = (0.0, 0.0);
    let mut last_cmd = lock(&plant).pump_command().0;
    let dt = Duration::from_secs_f64(PERIOD_S);
    let substeps = (PERIOD_S / THERMAL_STEP.as_secs_f64()).ceil().max(1.0) as u32;
    let sub = dt / substeps;
    let (step_at, full_end) = s.step;
    let mut last_outside = step_at - PERIOD_S;
    let mut recent: std::collections::VecDeque<(f64, f64)> = std::collections::VecDeque::new();
    let mut hottest_seen = std::collections::BTreeSet::new();
    let mut last_hottest = None;

    for k in 1..=s.trace_s {
        let now = dt * k as u32;
        let t = now.as_secs_f64();
        if s.drift_k_per_s != 0.0 {
            lock(&plant).set_facility_water(coolantd::units::Celsius(
                s.sim.facility_water_c + s.drift_k_per_s * t,
            ));
        }
        lock(&plant).step(dt);

        // Measure the plant's truth over the step just made.
        {
            let p = lock(&plant);
            let (hot, cv) = hottest_truth(&p);
            hottest_seen.insert(hot);
            if last_hottest.is_some_and(|h| h != hot) {
                m.hottest_moves += 1;
            }
            last_hottest = Some(hot);
            let e = cv - sp;
            if e > 0.0 {
                m.above_s += PERIOD_S;
            }
            if e > 1.0 {
                m.above_1k_s += PERIOD_S;
            }
            m.above_ks += e.max(0.0) * PERIOD_S;
            m.overshoot_k = m.overshoot_k.max(e);
            // The value settle_s judges: the sample, or a periodic load's upper envelope.
            let judged = match s.envelope_s {
                Some(window) => {
                    recent.push_back((t, e));
                    while recent.front().is_some_and(|(at, _)| t - at >= window) {
                        recent.pop_front();
                    }
                    recent.iter().map(|(_, v)| *v).fold(e, f64::max)
                }
                None => e,
            };
            if t > step_at && t < full_end && judged.abs() > 0.5 {
                last_outside = t;
            }
            if t > step_at && t < full_end && e >= -0.5 && m.band_entry_s.is_none() {
                m.band_entry_s = Some(t - step_at);
            }
            if p.workload().load(0, t - PERIOD_S / 2.0) > 0.0 {
                m.iae_loaded += e.abs() * PERIOD_S;
                m.below_loaded += (-e).max(0.0) * PERIOD_S;
            }
            if p.gpus().iter().any(|g| g.thermal.die.0 >= slowdown) {
                m.slowdown_s += PERIOD_S;
            }
            for (i, g) in p.gpus().iter().enumerate() {
                // The plant evaluates the load at the end of each substep of THERMAL_STEP;
                // so does the reference, so that a load switch costs nothing by itself.
                let mut reference = 0.0;
                for j in 1..=substeps {
                    let ts = (now - dt + sub * j).as_secs_f64();
                    let load = p.workload().load(i, ts);
                    // A GPU of a rack that differs draws its own share above idle.
                    let demand = idle_w + load * g.power_factor * (full_w - idle_w);
                    reference += demand.min(ref_limit) * sub.as_secs_f64();
                }
                let delivered = g.energy.0 - energy_before[i];
                energy_before[i] = g.energy.0;
                ref_j += reference;
                lost_j += (reference - delivered).max(0.0);
            }
        }

        let cmd = if let Some(c) = ctl.as_mut() {
            let gpu_samples = gpus.read_fast(now);
            let cdu = cdu_sample(&lock(&plant), s.cdu, CDU, now);
            let out = c.tick(&TickInput {
                now,
                gpus: &gpu_samples,
                cdus: std::slice::from_ref(&cdu),
                outcomes: &outcomes,
            });
            if out.state != ControlState::Running {
                m.not_running_s += PERIOD_S;
            }
            outcomes = out
                .actuations
                .into_iter()
                .map(|a| {
                    let result = match &a {
                        Actuation::SetPumpSpeed { speed, .. } => {
                            lock(&plant).write(Role::PumpSpeedCommand, speed.0)
                        }
                        Actuation::SetPowerCap { gpu, limit } => {
                            gpus.set_power_limit(gpu, *limit).map_err(|e| e.to_string())
                        }
                        Actuation::FeedWatchdog { value, .. } => {
                            lock(&plant).write(Role::Watchdog, f64::from(*value))
                        }
                    };
                    ActuationOutcome {
                        actuation: a,
                        at: now,
                        result: result.map_err(coolantd::model::ActuationError::Failed),
                        dry_run: false,
                    }
                })
                .collect();
            lock(&plant).pump_command().0
        } else if let Some(n) = naive.as_mut() {
            let samples = gpus.read_fast(now);
            let u = match controlled_from_samples(&samples, prof) {
                Some(pv) => n.update(sp, pv, PERIOD_S),
                None => n.output(),
            };
            // NaivePid clamps to the profile's write range: the write cannot be refused.
            lock(&plant)
                .write(Role::PumpSpeedCommand, u)
                .expect("naive PID output within the pump's write range");
            u
        } else {
            lock(&plant).pump_command().0
        };
        m.pump_travel += (cmd - last_cmd).abs();
        last_cmd = cmd;
    }
    // Settled once inside the band: the sample after the last one outside it.
    m.settle_s = (last_outside + PERIOD_S - step_at).min(full_end - step_at);
    m.pump_kj = lock(&plant).pump_energy().0 / 1000.0;
    m.hottest_gpus = hottest_seen.len();
    m.perf_lost_pct = if ref_j > 0.0 {
        100.0 * lost_j / ref_j
    } else {
        0.0
    };
    m
}

/// Steady state of the hottest core at full load with the pump held at `pump` %.
fn steady_core(s: &Setup<'_>, pump: f64) -> f64 {
    let mut sim = s.sim.clone();
    sim.workload = Workload::Full;
    sim.initial_pump_pct = pump;
    let mut p = build_plant(&sim, s.gpu, "steady");
    p.step(Duration::from_secs(1200));
    p.hottest_core().0
}

fn table(title: &str, s: &Setup<'_>, rows: &[(&str, Metrics)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {title}: set point {:.1} °C, supply {:.0} °C, {} GPUs, {} s of workload `{}`\n",
        s.setpoint,
        s.sim.supply_setpoint_c,
        s.sim.hosts.len().max(1) * s.sim.gpus_per_host as usize,
        s.trace_s,
        workload_id(&s.sim.workload)
    );
    let _ = writeln!(
        out,
        "| strategy | t > SP (s) | t > SP+1 K (s) | ∫(CV−SP)⁺ (K·s) | max overshoot (K) | settle ±0.5 K (s) | IAE loaded (K·s) | pump energy (kJ) | pump travel (%) | GPU perf lost (%) | t at slowdown (s) | t not Running (s) |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (name, m) in rows {
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} | {:.0} | {:.0} |",
            m.above_s,
            m.above_1k_s,
            m.above_ks,
            m.overshoot_k,
            m.settle_s,
            m.iae_loaded,
            m.pump_kj,
            m.pump_travel,
            m.perf_lost_pct,
            m.slowdown_s,
            m.not_running_s
        );
    }
    out
}

const DEFINITIONS: &str = "\
Definitions. The controlled variable (CV) is the plant's true hottest GPU temperature as \
`controlled_variable = \"max\"` defines it: max over GPUs of max(core, slowdown − (HBM max − HBM)). \
Sampled once per 1 s tick. *t > SP*: seconds with CV above the set point (and above it by more \
than 1 K). *∫(CV−SP)⁺*: Σ max(CV − SP, 0)·dt, how much heat above the set point the GPUs saw. \
*Max overshoot*: largest CV − SP over the run (negative: never reached). *Settle*: seconds from \
the idle → full-load step (t = 60 s) until CV stays within ±0.5 K of the set point for the rest of \
the full-load segment (300: never); under the training workload the upper envelope of CV (its \
highest sample over the last 3 s iteration) must stay within the band. *IAE loaded*: \
Σ|CV − SP|·dt over the ticks with the GPUs under load (the full-load segment and the on-halves \
of the bursts; overcooling counts too, the idle-time undershoot does not). \
*Pump energy*: `Plant::pump_energy()` (affinity-law pump power integrated). *Pump travel*: Σ|Δ \
pump command| per tick, a proxy for actuator wear and Modbus writes. *GPU perf lost*: energy \
withheld from the GPUs as a share of what they would have drawn at their default power limit: \
Σ_GPU Σ_t (min(demand, default limit) − delivered)·dt / Σ min(demand, default limit)·dt, where \
demand = idle + load·(full-load − idle) from the GPU profile; it counts both our power caps and \
the GPU's own thermal slowdown (which pulls power to the board minimum). In the simulator the SM \
clock falls as (power/demand)^0.82, so lost work is of the same order. *t at slowdown*: seconds \
with any GPU core at or above its slowdown threshold (89 °C). *t not Running*: seconds the \
coolantd controller spent outside Running (boot, emergency, failsafe); — for the others.\n";

/// The values of `--<name> a,b` on the command line (empty: no filter).
fn filter_arg(name: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .filter(|w| w[0] == format!("--{name}"))
        .flat_map(|w| w[1].split(',').map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    // `--plant h200,rack --workload training`: a part of the run, for quick measurements;
    // such a run writes no files and skips the baseline (which needs every row).
    let (plant_filter, workload_filter) = (filter_arg("plant"), filter_arg("workload"));
    let filtered = !plant_filter.is_empty() || !workload_filter.is_empty();
    let trace_s = if bench { TRACE_S } else { SMOKE_TRACE_S };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();

    // Both are files of this repository: a failure here is a broken checkout.
    let gpu_profiles = GpuProfiles::load_dir(&root.join("firmware-profiles/gpu"))
        .expect("GPU profiles in firmware-profiles/gpu load");
    let cdu_profile = CduProfile::load(&root.join("firmware-profiles/cdu/sim-cdu.toml"))
        .expect("firmware-profiles/cdu/sim-cdu.toml loads");
    let sim_toml = Config::load(&root.join("config/sim.toml")).expect("config/sim.toml loads");
    let control = sim_toml.control.clone();
    // The rack: 64 H200s that differ (config/sim-rack.toml's [simulator]: plate and power
    // spread, a hot spot at the top), with its set point.
    let rack_toml =
        Config::load(&root.join("config/sim-rack.toml")).expect("config/sim-rack.toml loads");
    let rack_sim = rack_toml
        .simulator
        .clone()
        .expect("config/sim-rack.toml has a [simulator] section");

    let mut report = String::new();
    let _ = writeln!(
        report,
        "## coolantd control quality on the plant simulator\n\nCommand: `cargo bench --bench control_quality`. Control gains from `config/sim.toml` [control] (kp {}, ki {}, kd {}), pump slew +{}/−{} %/s, power caps band {} K (kp {} W/K, ki {} W/(K·s)). Naive PIDs use the same kp/ki/kd.\n",
        control.pid.kp,
        control.pid.ki,
        control.pid.kd,
        control.pump.slew_up_per_s,
        control.pump.slew_down_per_s,
        control.power_cap.band_k,
        control.power_cap.kp,
        control.power_cap.ki
    );

    let defaults = ControlConfig::default();
    let mut default_gains = control.clone();
    default_gains.pid = defaults.pid.clone();

    let cases = [
        (
            "H200 (h200-sxm)",
            "h200",
            "h200-sxm",
            control.setpoint,
            30.0,
            SimConfig::default(),
        ),
        (
            "H100 (h100-sxm)",
            "h100",
            "h100-sxm",
            H100_SETPOINT_C,
            30.0,
            SimConfig::default(),
        ),
        (
            "Stress: H100 (h100-sxm) on warm water",
            "h100-warm",
            "h100-sxm",
            WARM_SETPOINT_C,
            WARM_SUPPLY_C,
            SimConfig::default(),
        ),
        (
            "Rack: 64 H200s that differ (config/sim-rack.toml)",
            "rack",
            "h200-sxm",
            rack_toml.control.setpoint,
            rack_sim.supply_setpoint_c,
            rack_sim.clone(),
        ),
    ];
    let mut all = Vec::new();
    let mut case_ids = Vec::new();
    // Under `cargo test` only the benchmark workload, shortened.
    let wls: Vec<_> = workloads()
        .into_iter()
        .filter(|w| bench || w.0 == "benchmark")
        .filter(|w| workload_filter.is_empty() || workload_filter.iter().any(|f| f == w.0))
        .collect();
    for (title, id, name, setpoint, supply, base) in cases {
        if !plant_filter.is_empty() && !plant_filter.iter().any(|f| f == id) {
            continue;
        }
        for (wl_id, workload, wl_s, step, drift_k_per_s) in wls.clone() {
            case_ids.push((id, wl_id));
            let gpu = gpu_profiles
                .by_name(name)
                .unwrap_or_else(|| panic!("GPU profile {name} in firmware-profiles/gpu"));
            let sim = SimConfig {
                workload,
                supply_setpoint_c: supply,
                ..base.clone()
            };
            let setup = Setup {
                gpu,
                cdu: &cdu_profile,
                sim,
                setpoint,
                trace_s: if wl_id == "benchmark" { trace_s } else { wl_s },
                step,
                drift_k_per_s,
                envelope_s: (wl_id == "training").then_some(TRAINING_PERIOD_S),
            };
            let mut strategies: Vec<(&str, Strategy)> = vec![
                (
                    "coolantd",
                    Strategy::Coolantd(Box::new(control.clone()), false),
                ),
                (
                    "coolantd, [control] default gains",
                    Strategy::Coolantd(Box::new(default_gains.clone()), false),
                ),
                ("(a) pump fixed 100 %", Strategy::Fixed(100.0)),
                (
                    "(b) naive PID, integrator clamped",
                    Strategy::Naive {
                        kp: control.pid.kp,
                        ki: control.pid.ki,
                        kd: control.pid.kd,
                        clamp: true,
                    },
                ),
                (
                    "(b) naive PID, integrator unbounded",
                    Strategy::Naive {
                        kp: control.pid.kp,
                        ki: control.pid.ki,
                        kd: control.pid.kd,
                        clamp: false,
                    },
                ),
            ];
            strategies.push((
                "coolantd + feed-forward",
                Strategy::Coolantd(Box::new(control.clone()), true),
            ));
            strategies.push((
                "coolantd + feed-forward, SIMC gains",
                Strategy::CoolantdTuned(Box::new(control.clone())),
            ));
            strategies.push((
                "coolantd + feed-forward, scheduled SIMC gains",
                Strategy::CoolantdScheduled(Box::new(control.clone())),
            ));
            let rows: Vec<(&str, Metrics)> = strategies
                .iter()
                .map(|(n, st)| (*n, run(&setup, st)))
                .collect();
            let mut t = table(title, &setup, &rows);
            if bench && wl_id == "benchmark" {
                let _ = writeln!(
                t,
                "\nSteady hottest core at full load (700 W cap): {:.1} °C with the pump at 100 %, {:.1} °C at 60 %, {:.1} °C at 20 %.\n",
                steady_core(&setup, 100.0),
                steady_core(&setup, 60.0),
                steady_core(&setup, 20.0)
            );
                // With the pumps at their minimum the cores are as hot as any pump speed
                // leaves them: the time they still spend below the set point under load is
                // the approach from below that no strategy can shorten.
                let pump_lo = setup.cdu.pump_limits().map_or(20.0, |(lo, _)| lo.0);
                let floor = run(&setup, &Strategy::Fixed(pump_lo));
                let lowest = rows
                    .iter()
                    .map(|(_, m)| m.below_loaded)
                    .fold(f64::INFINITY, f64::min);
                let _ = writeln!(
                    t,
                    "IAE and settle floor: with the pumps held at {pump_lo:.0} % the hottest core still spends {:.0} K·s below the set point while loaded (the approach from below at the least flow; every strategy above: ≥ {:.0} K·s below), and comes within 0.5 K of the set point {} after the load step. No strategy's IAE loaded or settle can be lower.\n",
                    floor.below_loaded,
                    lowest,
                    floor
                        .band_entry_s
                        .map_or("never".to_string(), |s| format!("{s:.0} s"))
                );
            }
            if setup.sim.hosts.len() > 1 {
                let fb = &rows[0].1;
                let ff = &rows[5].1;
                let _ = writeln!(
                    t,
                    "\nThe hottest GPU moves: GPUs that were the hottest at some tick (of {1}) and changes of the hottest, feedback only {0} and {2}, with feed-forward {3} and {4}.\n",
                    fb.hottest_gpus,
                    setup.sim.hosts.len() * setup.sim.gpus_per_host as usize,
                    fb.hottest_moves,
                    ff.hottest_gpus,
                    ff.hottest_moves
                );
            }
            report.push_str(&t);
            report.push('\n');
            all.push((name, rows));
        }
    }
    report.push_str(DEFINITIONS);
    report.push_str(&side_by_side(&case_ids, &all));
    print!("{report}");

    // Invariants of the harness itself, checked in both modes: a run that breaks them
    // measured nothing meaningful.
    for (name, rows) in &all {
        for (s, m) in rows {
            assert!(
                m.pump_kj.is_finite() && m.iae_loaded.is_finite() && m.perf_lost_pct.is_finite(),
                "{name} / {s}: non-finite metrics {m:?}"
            );
        }
        let fixed = &rows[2].1;
        for (s, m) in rows {
            // Pump power grows with speed³ and no strategy runs above 100 %.
            assert!(
                m.pump_kj <= fixed.pump_kj + 1e-6,
                "{name} / {s}: more pump energy than the pump at 100 % ({m:?})"
            );
        }
    }
    // The controller must keep the well-cooled H200s (alone or in the rack) out of slowdown
    // at their working set point.
    for ((case, workload), (_, rows)) in case_ids.iter().zip(&all) {
        if *case == "h200" || *case == "rack" {
            assert_eq!(
                rows[0].1.slowdown_s, 0.0,
                "coolantd let an H200 reach slowdown ({case}, {workload})"
            );
        }
    }

    let mut regressions = Vec::new();
    if bench && filtered {
        eprintln!("control_quality: a filtered run: no files written, no baseline compared");
    } else if bench {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let file = target.join("control_quality.md");
        match std::fs::create_dir_all(&target).and_then(|_| std::fs::write(&file, &report)) {
            Ok(()) => eprintln!("wrote {}", file.display()),
            Err(e) => eprintln!("could not write {}: {e}", file.display()),
        }
        let figures = figures_json(&case_ids, &all);
        let file = target.join("control_quality.json");
        match serde_json::to_string_pretty(&figures)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&file, text))
        {
            Ok(()) => eprintln!("wrote {}", file.display()),
            Err(e) => eprintln!("could not write {}: {e}", file.display()),
        }
        regressions = compare_with_baseline(
            &root.join("benches/control_quality_baseline.json"),
            &figures,
        );
    }
    eprintln!(
        "control_quality: {} runs in {:.2} s",
        all.iter().map(|(_, r)| r.len()).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    if !regressions.is_empty() {
        eprintln!(
            "control_quality: {} figure(s) of README.md's table moved beyond the tolerance of \
             benches/control_quality_baseline.json:",
            regressions.len()
        );
        for r in &regressions {
            eprintln!("  {r}");
        }
        std::process::exit(1);
    }
    if bench && !filtered {
        eprintln!("control_quality: every figure of README.md's table within its tolerance");
    }
}

/// The short names of the side-by-side table, in its order (the other rows are left out).
const SIDE_BY_SIDE: [(&str, &str); 6] = [
    ("(b) naive PID, integrator clamped", "naive clamped"),
    ("coolantd", "fb only"),
    ("coolantd + feed-forward", "FF"),
    ("coolantd + feed-forward, SIMC gains", "FF+SIMC"),
    (
        "coolantd + feed-forward, scheduled SIMC gains",
        "FF+scheduled",
    ),
    ("(a) pump fixed 100 %", "fixed 100%"),
];

/// Every plant, workload and strategy in one Markdown table (docs/control.md's).
fn side_by_side(case_ids: &[(&str, &str)], all: &[(&str, Vec<(&str, Metrics)>)]) -> String {
    let mut out = String::from(
        "\n### Every plant and workload\n\n| plant | workload | strategy | overshoot K | settle s | IAE loaded K·s | >SP+1K s | pump kJ | travel % | perf lost % | slowdown s |\n|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for ((case, workload), (_, rows)) in case_ids.iter().zip(all) {
        for (bench_name, short) in SIDE_BY_SIDE {
            let Some((_, m)) = rows.iter().find(|(n, _)| *n == bench_name) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {case} | {workload} | {short} | {:.2} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} | {:.0} |",
                m.overshoot_k,
                m.settle_s,
                m.iae_loaded,
                m.above_1k_s,
                m.pump_kj,
                m.pump_travel,
                m.perf_lost_pct,
                m.slowdown_s
            );
        }
    }
    out
}

/// The README table's strategy names for the bench's rows.
fn readme_strategy(case: &str, strategy: &str) -> Option<&'static str> {
    Some(match strategy {
        "coolantd" if case == "h100-warm" => "coolantd (caps engage)",
        "coolantd" => "coolantd",
        "(a) pump fixed 100 %" => "pumps at 100 %",
        "(b) naive PID, integrator unbounded" => "naive PID, unbounded integrator",
        "(b) naive PID, integrator clamped" => "naive PID, integrator clamped",
        "coolantd, [control] default gains" => "coolantd, default gains",
        "coolantd + feed-forward" => "coolantd + feed-forward",
        _ => return None,
    })
}

/// Every measured figure, keyed by case and the README's strategy name.
fn figures_json(
    case_ids: &[(&str, &str)],
    all: &[(&str, Vec<(&str, Metrics)>)],
) -> serde_json::Value {
    let mut rows = Vec::new();
    for ((case, workload), (_, strategies)) in case_ids.iter().zip(all) {
        for (name, m) in strategies {
            // Rows outside README.md's table keep the bench's own name.
            let strategy = readme_strategy(case, name).unwrap_or(name);
            rows.push(serde_json::json!({
                "case": case,
                "strategy": strategy,
                "above_s": m.above_s,
                "above_1k_s": m.above_1k_s,
                "above_ks": m.above_ks,
                "overshoot_k": m.overshoot_k,
                "iae_loaded": m.iae_loaded,
                "pump_kj": m.pump_kj,
                "pump_travel": m.pump_travel,
                "perf_lost_pct": m.perf_lost_pct,
                "slowdown_s": m.slowdown_s,
                "not_running_s": m.not_running_s,
                // The same figures under the names of issue 10's record.
                "plant": case,
                "workload": workload,
                "settle_s": m.settle_s,
                "iae_loaded_ks": m.iae_loaded,
                "above_sp_plus1_s": m.above_1k_s,
                "pump_energy_kj": m.pump_kj,
                "pump_travel_pct": m.pump_travel,
                "hottest_gpus": m.hottest_gpus,
                "hottest_moves": m.hottest_moves,
            }));
        }
    }
    serde_json::json!({ "rows": rows })
}

/// Compares the measured figures with the checked-in baseline; returns one line per figure
/// outside its tolerance. `guard = "regression"` rows (coolantd's own) fail only when the
/// figure grows; `guard = "both"` rows (the references) fail when it moves either way.
fn compare_with_baseline(path: &Path, figures: &serde_json::Value) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let base: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let tolerance = &base["tolerance"];
    let measured = figures["rows"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for row in base["rows"].as_array().into_iter().flatten() {
        let (case, strategy) = (row["case"].as_str(), row["strategy"].as_str());
        // The README's table (and so the baseline) shows the benchmark workload.
        let workload = row["workload"].as_str().unwrap_or("benchmark");
        let Some(got) = measured.iter().find(|m| {
            m["case"].as_str() == case
                && m["strategy"].as_str() == strategy
                && m["workload"].as_str() == Some(workload)
        }) else {
            out.push(format!("{case:?} / {strategy:?}: no such row measured"));
            continue;
        };
        let both = row["guard"].as_str() == Some("both");
        for (metric, tol) in tolerance.as_object().into_iter().flatten() {
            let Some(want) = row[metric.as_str()].as_f64() else {
                continue;
            };
            let value = got[metric.as_str()].as_f64().unwrap_or(f64::NAN);
            let allowed = tol["abs"].as_f64().unwrap_or(0.0)
                + tol["rel"].as_f64().unwrap_or(0.0) * want.abs();
            // The README rounds; compare at its precision plus the tolerance.
            let over = value - want > allowed + 0.005;
            let under = both && want - value > allowed + 0.005;
            if over || under || !value.is_finite() {
                out.push(format!(
                    "{} / {}: {metric} {value:.2}, baseline {want} ± {allowed:.2}{}",
                    case.unwrap_or("?"),
                    strategy.unwrap_or("?"),
                    if both {
                        " (either way)"
                    } else {
                        " (regression)"
                    }
                ));
            }
        }
    }
    out
}
