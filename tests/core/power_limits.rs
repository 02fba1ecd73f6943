//! The GPUs' original power limits: recorded before the first cap, restored when a crashed
//! run left caps behind, and never a reason to hold back an emergency cap.

use coolantd_testkit::sim_daemon;

use coolantd::model::ControlState;
use coolantd::units::Watts;
use std::time::Duration;

fn limits(d: &coolantd::service::run::Daemon) -> Vec<Watts> {
    let p = d.sim().expect("simulator").plant().lock().expect("plant");
    p.gpus().iter().map(|g| g.limit).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_left_by_a_crashed_run_are_restored_before_control_starts() {
    let dir = sim_daemon::TempDir::new("limits-restart");
    let text = sim_daemon::sim_config_text(sim_daemon::free_port(), &dir.0, &[], "");
    // A first daemon learns the simulated GPUs' identities.
    let uuid = {
        let d = sim_daemon::build(&text, &dir.0, false).await;
        let p = d.sim().expect("simulator").plant().lock().expect("plant");
        p.gpus()[3].uuid.clone()
    };
    // What a run that crashed while capping GPU 3 leaves behind: its original was 650 W.
    let record = serde_json::json!({ uuid.clone(): { "host": "sim-node01", "index": 3, "uuid": uuid, "original": 650.0 } });
    std::fs::write(dir.0.join("power-limits.json"), record.to_string()).expect("write record");

    // A fresh port: the first daemon's server lets go of its port asynchronously.
    let text = sim_daemon::sim_config_text(sim_daemon::free_port(), &dir.0, &[], "");
    let d = sim_daemon::build(&text, &dir.0, false).await;
    let l = limits(&d);
    assert_eq!(
        l[3],
        Watts(650.0),
        "the recorded original is back before the first tick: {l:?}"
    );
    assert!(
        !dir.0.join("power-limits.json").exists(),
        "a restored limit is no longer on record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_record_does_not_hold_back_emergency_caps() {
    let dir = sim_daemon::TempDir::new("limits-unwritable");
    let text = sim_daemon::sim_config_text(sim_daemon::free_port(), &dir.0, &[], "");
    let mut d = sim_daemon::build(&text, &dir.0, false).await;
    let step = Duration::from_secs(1);
    for k in 1..=5u32 {
        d.sim().expect("simulator").step(step);
        d.tick(step * k).await;
    }
    // The record cannot be written: a folder stands where the file would be renamed to.
    std::fs::create_dir(dir.0.join("power-limits.json")).expect("block the record");
    d.sim()
        .expect("simulator")
        .plant()
        .lock()
        .expect("plant")
        .set_leak(true);
    d.sim().expect("simulator").step(step);
    let s = d.tick(step * 6).await;
    assert_eq!(s.state, ControlState::Emergency);
    let l = limits(&d);
    assert!(
        l.iter().all(|w| *w == Watts(200.0)),
        "every GPU at its minimum in the same tick: {l:?}"
    );
}
