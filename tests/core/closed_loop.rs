//! The closed loop end to end: the real daemon (Modbus TCP client, control core, actuation)
//! against the plant simulator's real Modbus TCP server, stepped in lockstep with the plant.
//! Eight simulated H200s step from idle to full load; the pump loop must bring the hottest
//! GPU back to the set point with bounded overshoot and settling time, and save pump energy
//! while the GPUs idle.

use coolantd_testkit::sim_daemon;

use coolantd::model::ControlState;
use std::time::Duration;

struct Trace {
    t: Vec<f64>,
    hottest: Vec<f64>,
    pump: Vec<f64>,
}

async fn run_step_response(period: Duration, seconds: u64) -> (Trace, f64) {
    let dir = sim_daemon::TempDir::new("closed-loop");
    let port = sim_daemon::free_port();
    let period_line = format!("period_ms = {}", period.as_millis());
    let text = sim_daemon::sim_config_text(port, &dir.0, &[("period_ms = 1000", &period_line)], "");
    let mut d = sim_daemon::build(&text, &dir.0, false).await;
    let setpoint = d.config().control.setpoint;
    let steps = (Duration::from_secs(seconds).as_secs_f64() / period.as_secs_f64()).round() as u64;
    let mut tr = Trace {
        t: Vec::new(),
        hottest: Vec::new(),
        pump: Vec::new(),
    };
    for k in 1..=steps {
        let now = period * k as u32;
        d.sim().expect("simulator runs in-process").step(period);
        let s = d.tick(now).await;
        assert!(
            s.state <= ControlState::Degraded,
            "t={:?}: state {} (alarms {:?})",
            now,
            s.state,
            s.alarms
        );
        tr.t.push(now.as_secs_f64());
        tr.hottest
            .push(s.controlled.expect("the hottest GPU is known every tick"));
        tr.pump.push(
            s.cdus[0]
                .pump_feedback
                .expect("pump feedback is read every tick"),
        );
    }
    (tr, setpoint)
}

fn window(tr: &Trace, from: f64, to: f64) -> impl Iterator<Item = (f64, f64)> + '_ {
    tr.t.iter()
        .zip(tr.hottest.iter().zip(&tr.pump))
        .filter(move |(t, _)| **t >= from && **t < to)
        .map(|(_, (h, p))| (*h, *p))
}

fn check_step_response(tr: &Trace, setpoint: f64) {
    // Idle (the step comes at 60 s): the GPUs are far below the set point, so the pump
    // must sit at its minimum speed instead of wasting energy.
    for (h, p) in window(tr, 40.0, 60.0) {
        assert!(h < setpoint - 10.0, "idle GPUs should be cool, got {h}");
        assert!(
            p <= 21.0,
            "idle pump should be at its 20 % minimum, got {p}"
        );
    }
    // Full load: bounded overshoot…
    let peak = window(tr, 60.0, f64::INFINITY)
        .map(|(h, _)| h)
        .fold(f64::MIN, f64::max);
    assert!(
        peak <= setpoint + 2.5,
        "overshoot: peak {peak:.2} °C over set point {setpoint}"
    );
    // …and settled within ±0.5 K of the set point from 4 minutes after the step on.
    let settle_from = 60.0 + 240.0;
    for (h, _) in window(tr, settle_from, f64::INFINITY) {
        assert!(
            (h - setpoint).abs() <= 0.5,
            "not settled: {h:.2} °C vs set point {setpoint}"
        );
    }
    // The pump does real work at full load: neither at its minimum nor pinned at maximum.
    let (_, p_end) = window(tr, settle_from, f64::INFINITY)
        .last()
        .expect("samples after settling");
    assert!(
        p_end > 25.0 && p_end < 99.0,
        "pump should modulate at full load, got {p_end}"
    );
}

fn print(tr: &Trace, every: usize) {
    for i in (0..tr.t.len()).step_by(every) {
        eprintln!(
            "t={:6.1}s hottest={:6.2}°C pump={:5.1}%",
            tr.t[i], tr.hottest[i], tr.pump[i]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_step_settles_at_setpoint_over_modbus_tcp() {
    let (tr, setpoint) = run_step_response(Duration::from_secs(1), 600).await;
    print(&tr, 10);
    check_step_response(&tr, setpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_step_settles_at_10_hz_too() {
    let (tr, setpoint) = run_step_response(Duration::from_millis(100), 600).await;
    print(&tr, 100);
    check_step_response(&tr, setpoint);
}
