//! Dry-run mode, the only mode allowed on shared GPUs and how every site deploys first:
//! everything runs and every decision is published as "would set …", but nothing reaches a
//! GPU or a CDU — not even in an emergency that would lower every power cap.

use coolantd_testkit::sim_daemon;

use coolantd::model::{Actuation, ControlState};
use coolantd::sim::CduState;
use coolantd::units::Watts;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_decides_everything_and_writes_nothing() {
    let dir = sim_daemon::TempDir::new("dry-run");
    let text = sim_daemon::sim_config_text(
        sim_daemon::free_port(),
        &dir.0,
        &[(
            "host = \"sim-node01\"",
            "host = \"sim-node01\"\ndry_run = true",
        )],
        "",
    );
    let mut d = sim_daemon::build(&text, &dir.0, false).await;
    let sim_step = Duration::from_secs(1);
    let (pump_before, limits_before) = {
        let p = d.sim().expect("simulator").plant().lock().expect("plant");
        (
            p.read(coolantd::model::Role::PumpSpeedCommand),
            p.gpus().iter().map(|g| g.limit).collect::<Vec<_>>(),
        )
    };
    assert!(limits_before.iter().all(|l| *l == Watts(700.0)));

    let mut decided_pump = false;
    let mut decided_caps = false;
    for k in 1..=120u32 {
        let sim = d.sim().expect("simulator");
        sim.step(sim_step);
        if k == 90 {
            // A leak: an emergency that would put every GPU at its minimum cap at once.
            sim.plant().lock().expect("plant").set_leak(true);
        }
        let s = d.tick(sim_step * k).await;
        assert!(s.dry_run);
        for a in &s.decisions {
            match a {
                Actuation::SetPumpSpeed { .. } => decided_pump = true,
                Actuation::SetPowerCap { .. } => decided_caps = true,
                Actuation::FeedWatchdog { .. } => {}
            }
        }
        if k > 90 {
            assert_eq!(
                s.state,
                ControlState::Emergency,
                "the leak is seen in dry-run too"
            );
        }
    }
    assert!(decided_pump, "the pump loop decided speeds");
    assert!(decided_caps, "the emergency decided power caps");

    let p = d.sim().expect("simulator").plant().lock().expect("plant");
    assert_eq!(
        p.read(coolantd::model::Role::PumpSpeedCommand),
        pump_before,
        "no Modbus write reached the CDU"
    );
    assert_eq!(
        p.watchdog_writes(),
        0,
        "no watchdog heartbeat reached the CDU (tests/dry_run_boundary.rs counts every write \
         function code on the wire)"
    );
    let limits_after: Vec<_> = p.gpus().iter().map(|g| g.limit).collect();
    assert_eq!(limits_after, limits_before, "no power limit reached a GPU");
    assert!(
        !dir.0.join("power-limits.json").exists(),
        "dry-run records nothing to restore"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_switch_dry_run_off_or_change_the_cdus() {
    let dir = sim_daemon::TempDir::new("dry-run-reload");
    let port = sim_daemon::free_port();
    let dry = [(
        "host = \"sim-node01\"",
        "host = \"sim-node01\"\ndry_run = true",
    )];
    let text = sim_daemon::sim_config_text(port, &dir.0, &dry, "");
    let mut d = sim_daemon::build(&text, &dir.0, false).await;
    let load = |t: &str| {
        let p = dir.0.join("new.toml");
        std::fs::write(&p, t).expect("write");
        coolantd::config::Config::load(&p).expect("the new file itself is valid")
    };

    let live = sim_daemon::sim_config_text(port, &dir.0, &[], "");
    let e = d
        .reload(load(&live))
        .expect_err("switching dry-run off by reload is refused");
    assert!(format!("{e:#}").contains("site.dry_run"), "{e:#}");
    assert!(d.config().site.dry_run, "the running configuration stays");

    let renamed = text.replace("name = \"cdu-sim\"", "name = \"cdu-other\"");
    let e = d
        .reload(load(&renamed))
        .expect_err("a different CDU set needs a restart");
    assert!(format!("{e:#}").contains("restart"), "{e:#}");

    let setpoint = text.replace("setpoint = 55.0", "setpoint = 56.0");
    d.reload(load(&setpoint))
        .expect("a set-point change reloads live");
    assert_eq!(d.config().control.setpoint, 56.0);
}
