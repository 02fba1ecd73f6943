//! The load step of `config/sim.toml` (idle, then every GPU on full load from 60 s) on two
//! loops, each with its heat-load feed-forward (on by default) and without it
//! (`[control.feed_forward] enabled = false`), and the figures that compare them:
//!
//! - **single host**: `config/sim.toml`, 8 simulated H200s read by the daemon itself;
//! - **rack**: `config/sim-rack-agents.toml`, 64 GPUs with spread on 8 host agents, each
//!   with its own session on a real Mosquitto, and its controller
//!   `config/sim-rack-controller.toml` hearing them and leasing caps through the broker (its
//!   feed-forward takes the plate model of the boards the agents' facts name);
//! - **rack, no spread**: the same rack with identical GPUs, which separates what the
//!   network and the agents cost from what the GPUs' spread costs;
//! - **rack, no spread, 3.5 l of loop per GPU**: also the single host's coolant volume per
//!   GPU (the default volume is 20 l + 1 l per GPU), so the plant per GPU is the single
//!   host's and what remains is the agents and the broker.
//!
//! Every loop runs in real time at the same `time_scale`, the daemon's own tick on a timer
//! as `coolantd run` ticks (the simulator steps its plant on its own clock), and the plant
//! itself is sampled after every control tick. Printed per loop, over the 300 s after the
//! step: the hottest core's maximum overshoot over the set point (K), the settle time (the
//! step until the hottest core stays within ±0.5 K), IAE (∫|hottest − SP| dt, K·s), pump
//! energy (kJ, and J per GPU: the rack's pump moves 8× the flow), pump travel (Σ|Δ command|,
//! %), and how often the hottest GPU changed.
//!
//!     cargo run --release --example rack_step [-- --time-scale 5]
//!
//! Needs `mosquitto` on PATH (Debian: the mosquitto package).

use coolantd::config::Config;
use coolantd::service::run::{Daemon, RunOptions};
use coolantd::service::sim_rack::RackAgents;
use coolantd::sim::{Plant, SimRuntime};
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::sim_rack::{agents_config_text, controller_config_text, RackPorts};
use coolantd_testkit::{sim_daemon, TempDir};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The step of `workload = { kind = "step", at_s = 60.0, ... }`, plant seconds.
const STEP_AT_S: f64 = 60.0;
/// How long after the step each loop runs, plant seconds.
const AFTER_S: f64 = 300.0;
const BAND_K: f64 = 0.5;

struct Sample {
    t: f64,
    hottest: f64,
    hottest_gpu: String,
    pump_cmd: f64,
    energy_j: f64,
}

struct Figures {
    name: &'static str,
    gpus: usize,
    overshoot: f64,
    settle: Option<f64>,
    iae: f64,
    energy_kj: f64,
    travel: f64,
    switches: usize,
    max_core: f64,
    ticks: usize,
}

fn sample(plant: &Arc<Mutex<Plant>>) -> Sample {
    let p = plant.lock().unwrap_or_else(|e| e.into_inner());
    let hot = p
        .gpus()
        .iter()
        .max_by(|a, b| a.thermal.die.0.total_cmp(&b.thermal.die.0));
    Sample {
        t: p.now().as_secs_f64(),
        hottest: p.hottest_core().0,
        hottest_gpu: hot.map(|g| g.key.to_string()).unwrap_or_default(),
        pump_cmd: p.pump_command().0,
        energy_j: p.pump_energy().0,
    }
}

/// Ticks `d` in real time, as the service loop does, until the plant is `AFTER_S` past the
/// step; samples the plant after each tick.
async fn drive(d: &mut Daemon, plant: &Arc<Mutex<Plant>>, scale: f64) -> Vec<Sample> {
    let mut timer = tokio::time::interval(d.wall_period());
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let t0 = Instant::now();
    let mut out = Vec::new();
    loop {
        timer.tick().await;
        d.tick(t0.elapsed().mul_f64(scale)).await;
        let s = sample(plant);
        let done = s.t >= STEP_AT_S + AFTER_S;
        out.push(s);
        if done {
            return out;
        }
    }
}

fn figures(name: &'static str, gpus: usize, setpoint: f64, tr: &[Sample]) -> Figures {
    let after: Vec<&Sample> = tr
        .iter()
        .filter(|s| s.t >= STEP_AT_S && s.t <= STEP_AT_S + AFTER_S)
        .collect();
    let overshoot = after
        .iter()
        .map(|s| s.hottest - setpoint)
        .fold(0.0, f64::max);
    let last_out = after
        .iter()
        .rev()
        .find(|s| (s.hottest - setpoint).abs() > BAND_K);
    // Settled only if the last sample is inside the band (otherwise it never settled).
    let settle = match (last_out, after.last()) {
        (Some(o), Some(l)) if o.t < l.t => Some(o.t - STEP_AT_S),
        (None, Some(_)) => Some(0.0),
        _ => None,
    };
    let mut iae = 0.0;
    let mut travel = 0.0;
    let mut switches = 0;
    for w in after.windows(2) {
        iae += (w[1].hottest - setpoint).abs() * (w[1].t - w[0].t);
        travel += (w[1].pump_cmd - w[0].pump_cmd).abs();
        switches += usize::from(w[1].hottest_gpu != w[0].hottest_gpu);
    }
    let energy = match (after.first(), after.last()) {
        (Some(a), Some(b)) => (b.energy_j - a.energy_j) / 1000.0,
        _ => f64::NAN,
    };
    Figures {
        name,
        gpus,
        overshoot,
        settle,
        iae,
        energy_kj: energy,
        travel,
        switches,
        max_core: after.iter().map(|s| s.hottest).fold(f64::MIN, f64::max),
        ticks: after.len(),
    }
}

async fn single_host(scale: f64, name: &'static str, feed_forward: bool) -> Figures {
    let dir = TempDir::new("rack-step-single");
    let port = sim_daemon::free_port();
    let scale_line = format!("time_scale = {scale:?}");
    let extra = if feed_forward {
        ""
    } else {
        "[control.feed_forward]\nenabled = false\n"
    };
    let text =
        sim_daemon::sim_config_text(port, &dir.0, &[("time_scale = 1.0", &scale_line)], extra);
    let path = dir.0.join("sim.toml");
    std::fs::write(&path, text).expect("write the single host's file");
    let cfg = Config::load(&path).expect("config/sim.toml is valid");
    let setpoint = cfg.control.setpoint;
    let mut d = Daemon::build(cfg, &opts(false))
        .await
        .expect("the daemon starts");
    let plant = d
        .sim()
        .expect("the simulator runs in-process")
        .plant()
        .clone();
    let tr = drive(&mut d, &plant, scale).await;
    d.shutdown(Duration::from_secs(2)).await;
    figures(name, 8, setpoint, &tr)
}

/// The simulator's default loop volume is 20 l plus 1 l per GPU: 3.5 l per GPU for the
/// single host's 8, 1.3 l for the rack's 64. This gives the rack the single host's volume
/// per GPU, so that what remains between them is the agents and the network.
const SINGLE_HOST_VOLUME: &str = "spread_seed = 1\nloop_volume_l = 224.0";

async fn rack(
    scale: f64,
    name: &'static str,
    spread: bool,
    same_volume: bool,
    feed_forward: bool,
) -> Figures {
    let broker = Mosquitto::start();
    let ports = RackPorts {
        mqtt: broker.port(),
        ..RackPorts::free()
    };
    let dir = TempDir::new("rack-step");
    let no_spread: &[(&str, &str)] = &[
        ("plate_spread_pct = 3.0", "plate_spread_pct = 0.0"),
        ("power_spread_pct = 5.0", "power_spread_pct = 0.0"),
        ("hot_spot_pct = 6.0", "hot_spot_pct = 0.0"),
    ];
    let mut replace: Vec<(&str, &str)> = Vec::new();
    if !spread {
        replace.extend_from_slice(no_spread);
    }
    if same_volume {
        replace.push(("spread_seed = 1", SINGLE_HOST_VOLUME));
    }
    let agents_text = agents_config_text(&ports, &dir.0, scale, &replace);
    let agents_path = dir.0.join("sim-rack-agents.toml");
    std::fs::write(&agents_path, agents_text).expect("write the rack's file");
    let ctl_dir = dir.0.join("controller");
    let ctl_path = dir.0.join("sim-rack-controller.toml");
    let mut ctl_text = controller_config_text(&ports, &ctl_dir, scale, &[]);
    if !feed_forward {
        ctl_text.push_str("\n[control.feed_forward]\nenabled = false\n");
    }
    std::fs::write(&ctl_path, ctl_text).expect("write the controller's file");

    let rack_cfg = Config::load(&agents_path).expect("the rack's file is valid");
    let sc = rack_cfg.simulator.clone().expect("[simulator]");
    let profiles = coolantd::service::daemon::load_profiles(&rack_cfg).expect("profiles");
    let sim = SimRuntime::start(
        &sc,
        &agents_path,
        &rack_cfg.profiles_path(),
        "sim-rack01",
        &profiles.gpu,
        true,
    )
    .await
    .expect("the rack's plant starts");
    let mqtt = rack_cfg
        .mqtt
        .as_ref()
        .expect("[mqtt]")
        .resolved(rack_cfg.base_dir());
    let agents = RackAgents::start(&sc, &sim, &rack_cfg.site.name, &mqtt, &rack_cfg.state_dir());

    let cfg = Config::load(&ctl_path).expect("the controller's file is valid");
    let setpoint = cfg.control.setpoint;
    let mut d = Daemon::build(cfg, &opts(true))
        .await
        .expect("the controller starts");
    let tr = drive(&mut d, sim.plant(), scale).await;
    let offline: Vec<String> = d
        .last_snapshot()
        .and_then(|s| s.rack.clone())
        .map(|r| {
            r.hosts
                .iter()
                .filter(|h| !h.online)
                .map(|h| h.host.clone())
                .collect()
        })
        .unwrap_or_default();
    if !offline.is_empty() {
        eprintln!("warning: hosts offline at the end: {offline:?}");
    }
    d.shutdown(Duration::from_secs(2)).await;
    agents.stop().await;
    sim.stop();
    figures(name, 64, setpoint, &tr)
}

fn opts(sinks: bool) -> RunOptions {
    RunOptions {
        dry_run: false,
        sim_autostep: true,
        sinks,
        rehearse: false,
    }
}

fn main() {
    let mut scale = 5.0;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time-scale" => {
                scale = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v: &f64| (1.0..=20.0).contains(v))
                    .unwrap_or_else(|| {
                        eprintln!("--time-scale: expected a number from 1 to 20");
                        std::process::exit(2)
                    })
            }
            // `cargo bench`-style flags a harness would pass are not expected here.
            other => {
                eprintln!("unknown argument {other}; usage: rack_step [--time-scale N]");
                std::process::exit(2)
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rows = rt.block_on(async {
        vec![
            single_host(scale, "single host (config/sim.toml)", true).await,
            single_host(scale, "single host, feedback only", false).await,
            rack(scale, "rack, 8 agents via Mosquitto", true, false, true).await,
            rack(scale, "rack, feedback only", true, false, false).await,
            rack(scale, "rack, no spread", false, false, true).await,
            rack(
                scale,
                "rack, no spread, 3.5 l of loop per GPU",
                false,
                true,
                true,
            )
            .await,
            rack(
                scale,
                "rack, no spread, 3.5 l per GPU, feedback only",
                false,
                true,
                false,
            )
            .await,
        ]
    });
    println!(
        "load step idle → full at 60 s, set point 55 °C, time_scale {scale}, {AFTER_S} s after the step"
    );
    println!("| loop | GPUs | max overshoot | settle ±{BAND_K} K | IAE | pump energy | per GPU | pump travel | hottest GPU changes | hottest core max |");
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for f in &rows {
        println!(
            "| {} | {} | {:.2} K | {} | {:.0} K·s | {:.1} kJ | {:.0} J | {:.0} % | {} | {:.2} °C |",
            f.name,
            f.gpus,
            f.overshoot,
            f.settle
                .map_or("not settled".into(), |s| format!("{s:.0} s")),
            f.iae,
            f.energy_kj,
            f.energy_kj * 1000.0 / f.gpus as f64,
            f.travel,
            f.switches,
            f.max_core
        );
        eprintln!("{}: {} control ticks after the step", f.name, f.ticks);
    }
}
