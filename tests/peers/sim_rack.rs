//! The simulated rack closes its loop through the network: the real `coolantd sim` runs the
//! plant of 64 GPUs (8 hosts × 8 H200 with spread) and one host agent per host on a real
//! Mosquitto, and the real `coolantd run` controls the rack's CDU over Modbus TCP from the
//! readings it hears and the caps it leases. Both run the shipped files
//! (`config/sim-rack-agents.toml`, `config/sim-rack-controller.toml`) ten times faster than
//! real time. Through a load step the hottest GPU must settle near the set point, no GPU may
//! reach slowdown, the pump must move, and every host must stay online until the scheduled
//! faults: an agent that dies without a goodbye (its last will) and a partitioned host (no
//! will, only silence), both heard again once they end.

use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::sim_daemon::http_get;
use coolantd_testkit::sim_rack::{agents_config_text, controller_config_text, RackPorts};
use coolantd_testkit::TempDir;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const TIME_SCALE: f64 = 10.0;
/// Plant seconds after the start at which the faults begin, and how long they last: well
/// after the step (60 s) has settled.
const FAULT_AT_S: f64 = 330.0;
const FAULT_FOR_S: f64 = 40.0;

/// One `/status` of the controller, reduced to what the test checks.
struct Seen {
    /// Plant seconds since the test started the rack (wall × time scale).
    t: f64,
    controlled: Option<f64>,
    pump_cmd: Option<f64>,
    max_power: f64,
    min_margin: f64,
    gpus: usize,
    /// (host, online, lost reason)
    hosts: Vec<(String, bool, String)>,
}

fn seen(t: f64, s: &Value) -> Seen {
    let gpus = s["gpus"].as_array().cloned().unwrap_or_default();
    let f = |g: &Value, k: &str| g[k].as_f64();
    Seen {
        t,
        controlled: s["controlled_c"].as_f64(),
        pump_cmd: s["cdus"][0]["pump_command_pct"].as_f64(),
        max_power: gpus
            .iter()
            .filter_map(|g| f(g, "power_w"))
            .fold(0.0, f64::max),
        min_margin: gpus
            .iter()
            .filter_map(|g| f(g, "margin_to_slowdown_k"))
            .fold(f64::INFINITY, f64::min),
        gpus: gpus.len(),
        hosts: s["rack"]["hosts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|h| {
                (
                    h["host"].as_str().unwrap_or("").to_string(),
                    h["online"].as_bool().unwrap_or(false),
                    h["lost"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    }
}

fn host<'a>(s: &'a Seen, name: &str) -> Option<&'a (String, bool, String)> {
    s.hosts.iter().find(|h| h.0 == name)
}

#[test]
fn rack_of_64_gpus_on_8_agents_holds_the_setpoint_through_a_load_step() {
    let broker = Mosquitto::start();
    let ports = RackPorts {
        mqtt: broker.port(),
        ..RackPorts::free()
    };
    let dir = TempDir::new("sim-rack");
    let faults = format!(
        "\n[[simulator.faults]]\nat_s = {FAULT_AT_S:?}\nhost = \"node03\"\nkind = \"agent_dies\"\nduration_s = {FAULT_FOR_S:?}\n\
         \n[[simulator.faults]]\nat_s = {FAULT_AT_S:?}\nhost = \"node06\"\nkind = \"partition\"\nduration_s = {FAULT_FOR_S:?}\n"
    );
    let mut agents = agents_config_text(&ports, &dir.0.join("rack"), TIME_SCALE, &[]);
    agents.push_str(&faults);
    let agents_path = dir.0.join("sim-rack-agents.toml");
    std::fs::write(&agents_path, agents).expect("write the rack's file");
    let ctl_path = dir.0.join("sim-rack-controller.toml");
    std::fs::write(
        &ctl_path,
        controller_config_text(&ports, &dir.0.join("controller"), TIME_SCALE, &[]),
    )
    .expect("write the controller's file");

    let t0 = Instant::now();
    let sim = DaemonProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_coolantd"))
            .args(["sim", "--config"])
            .arg(&agents_path),
    );
    sim.wait_log("simulated CDU serving Modbus TCP", Duration::from_secs(20));
    let ctl = DaemonProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_coolantd"))
            .args(["run", "--config"])
            .arg(&ctl_path),
    );
    // Before its first tick the endpoint serves an empty snapshot (set point 0); the first
    // tick may wait for the next period boundary, so wait for a ticked one.
    let until = Instant::now() + Duration::from_secs(20);
    let setpoint = loop {
        let s = ctl.wait_status(ports.http, Duration::from_secs(20));
        if s["tick"].as_u64().unwrap_or(0) >= 1 {
            break s["setpoint_c"].as_f64().expect("setpoint_c in /status");
        }
        assert!(
            Instant::now() < until,
            "the controller did not tick within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let plant_s = |at: Instant| at.duration_since(t0).as_secs_f64() * TIME_SCALE;

    // Watch until both faulted hosts are back, the faults are over, or it takes too long.
    let mut trace: Vec<Seen> = Vec::new();
    let end = FAULT_AT_S + FAULT_FOR_S + 60.0;
    while plant_s(Instant::now()) < end {
        let (code, body) = http_get(ports.http, "/status");
        if code == 200 {
            if let Ok(v) = serde_json::from_str::<Value>(&body) {
                trace.push(seen(plant_s(Instant::now()), &v));
            }
        }
        let back = trace.last().is_some_and(|s| {
            s.t > FAULT_AT_S + FAULT_FOR_S && s.hosts.iter().all(|h| h.1) && s.hosts.len() == 8
        });
        if back {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = || format!("controller log:\n{}\nsim log:\n{}", ctl.log(), sim.log());
    // A rack controller has no GPUs of its own: its feed-forward runs on the plate model of
    // the boards the agents' facts name.
    let (_, metrics) = http_get(ports.http, "/metrics");
    let engaged: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("ff_engaged") && l.contains("pump:"))
        .collect();
    assert!(
        !engaged.is_empty() && engaged.iter().all(|l| l.ends_with(" 1")),
        "the pump loop's feed-forward is not engaged: {engaged:?}\n{}",
        log()
    );
    eprintln!(
        "{} samples over {:.1} s of wall time",
        trace.len(),
        t0.elapsed().as_secs_f64()
    );
    for s in trace.iter().step_by(20) {
        eprintln!(
            "t={:6.1}s hottest={:?} pump={:?} max_power={:.0} W online={}",
            s.t,
            s.controlled,
            s.pump_cmd,
            s.max_power,
            s.hosts.iter().filter(|h| h.1).count()
        );
    }

    // The step, found where the GPUs' power jumps (the plant's clock and the controller's
    // start a moment apart).
    let step = trace
        .iter()
        .find(|s| s.max_power > 400.0)
        .map(|s| s.t)
        .unwrap_or_else(|| panic!("the load step never reached the controller\n{}", log()));
    let before_faults: Vec<&Seen> = trace.iter().filter(|s| s.t < FAULT_AT_S - 5.0).collect();

    // Idle: the loop brought the pump down to its minimum through the network.
    let idle_pump = before_faults
        .iter()
        .filter(|s| s.t > step - 15.0 && s.t < step)
        .filter_map(|s| s.pump_cmd)
        .fold(f64::NAN, f64::max);
    assert!(
        idle_pump <= 25.0,
        "idle pump should be near its 20 % minimum, got {idle_pump}\n{}",
        log()
    );
    // Loaded: every GPU heard, overshoot bounded, no GPU at slowdown.
    let loaded: Vec<&&Seen> = before_faults.iter().filter(|s| s.t >= step).collect();
    assert!(
        loaded.len() > 50,
        "too few samples under load: {}",
        loaded.len()
    );
    for s in &loaded {
        assert_eq!(s.gpus, 64, "t={:.0}: the controller hears all 64 GPUs", s.t);
        assert!(
            s.min_margin > 0.0,
            "t={:.0}: a GPU reached its slowdown threshold (margin {:.2} K)\n{}",
            s.t,
            s.min_margin,
            log()
        );
        let offline: Vec<&str> = s
            .hosts
            .iter()
            .filter(|h| !h.1)
            .map(|h| h.0.as_str())
            .collect();
        assert!(
            offline.is_empty() && s.hosts.len() == 8,
            "t={:.0}: hosts offline before any fault: {offline:?}\n{}",
            s.t,
            log()
        );
    }
    let peak = loaded
        .iter()
        .filter_map(|s| s.controlled)
        .fold(f64::MIN, f64::max);
    assert!(
        peak <= setpoint + 2.5,
        "overshoot: peak {peak:.2} °C over set point {setpoint}\n{}",
        log()
    );
    // Settled: within ±1 K of the set point from 150 s after the step until the faults.
    let settled: Vec<f64> = loaded
        .iter()
        .filter(|s| s.t >= step + 150.0)
        .filter_map(|s| s.controlled)
        .collect();
    assert!(
        settled.len() > 20,
        "too few samples after settling: {}",
        settled.len()
    );
    for h in &settled {
        assert!(
            (h - setpoint).abs() <= 1.0,
            "not settled: {h:.2} °C vs set point {setpoint}\n{}",
            log()
        );
    }
    // The pump works at full load, well above the idle minimum: the loop closed.
    let loaded_pump = loaded
        .iter()
        .filter(|s| s.t >= step + 150.0)
        .filter_map(|s| s.pump_cmd)
        .fold(f64::NAN, f64::min);
    assert!(
        loaded_pump > idle_pump + 10.0 && loaded_pump < 99.0,
        "the pump should modulate above its idle speed ({idle_pump}) at full load, got {loaded_pump}"
    );

    // The faults: node03's agent died (its last will), node06 went silent (no will).
    let during: Vec<&Seen> = trace
        .iter()
        .filter(|s| s.t >= FAULT_AT_S && s.t < FAULT_AT_S + FAULT_FOR_S)
        .collect();
    assert!(
        during
            .iter()
            .any(|s| host(s, "node03").is_some_and(|h| !h.1 && h.2.contains("last will"))),
        "node03's agent died, but the controller never saw its last will\n{}",
        log()
    );
    assert!(
        during
            .iter()
            .any(|s| host(s, "node06").is_some_and(|h| !h.1 && h.2.contains("no readings"))),
        "node06 was partitioned, but the controller never lost it\n{}",
        log()
    );
    assert!(
        !trace
            .iter()
            .any(|s| host(s, "node06").is_some_and(|h| h.2.contains("last will"))),
        "a partition leaves the session up: no last will for node06\n{}",
        log()
    );
    let last = trace.last().expect("samples");
    assert!(
        last.t > FAULT_AT_S + FAULT_FOR_S && last.hosts.iter().all(|h| h.1),
        "both faulted hosts should be online again after the faults end: {:?}\n{}",
        last.hosts,
        log()
    );
    assert!(
        sim.log().contains("the host's agent starts again"),
        "node03's agent should have started again\n{}",
        log()
    );
}
