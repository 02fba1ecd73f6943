//! The whole daemon on the simulator, streaming to a real VictoriaMetrics (InfluxDB v2 write
//! API) and a real Mosquitto: points arrive with the schema's names, MQTT carries state and
//! telemetry, and an operator command round-trips through MQTT into the control core.

use coolantd_testkit::mosquitto;
use coolantd_testkit::mqtt_client;
use coolantd_testkit::sim_daemon;
use coolantd_testkit::victoria;

use std::time::Duration;

const TICKS: u32 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_streams_to_victoriametrics_and_mosquitto_and_takes_commands() {
    let vm = victoria::Victoria::start();
    let broker = mosquitto::Mosquitto::start();
    let dir = sim_daemon::TempDir::new("daemon-sinks");
    let extra = format!(
        "[influx]\nurl = \"{}\"\norg = \"test\"\nbucket = \"coolantd\"\ntoken = \"t\"\nbatch_size = 100\nflush_interval_ms = 50\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {}\nkeep_alive_s = 5\ntelemetry_period_ms = 100\n",
        vm.url(),
        broker.port()
    );
    let text = sim_daemon::sim_config_text(sim_daemon::free_port(), &dir.0, &[], &extra);
    let mut d = sim_daemon::build(&text, &dir.0, true).await;
    let base = "coolantd/sim/sim-node01";
    let mut client =
        mqtt_client::TestClient::connect(broker.port(), "integrator", &[&format!("{base}/#")])
            .await;

    // Tick in plant time 1 s apart; a few milliseconds of wall time between ticks keep the
    // points' millisecond timestamps distinct for VictoriaMetrics.
    let sim_step = Duration::from_secs(1);
    for k in 1..=TICKS {
        d.sim().expect("simulator").step(sim_step);
        d.tick(sim_step * k).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // MQTT: availability, retained state and telemetry arrive (in the order published).
    let availability = format!("{base}/availability");
    client
        .wait_for("availability online", Duration::from_secs(5), |r| {
            r.topic == availability && r.payload == "online"
        })
        .await;
    let state_topic = format!("{base}/state");
    let state = client
        .wait_for("retained state", Duration::from_secs(5), |r| {
            r.topic == state_topic
        })
        .await;
    let state: serde_json::Value = serde_json::from_str(&state.payload).expect("state is JSON");
    assert_eq!(state["state"], "running", "{state}");
    assert_eq!(state["setpoint_c"], 55.0, "{state}");
    let telemetry = format!("{base}/telemetry");
    client
        .wait_for("telemetry", Duration::from_secs(5), |r| {
            r.topic == telemetry
        })
        .await;

    // A valid and an invalid command, each answered with its correlation id.
    client
        .publish(
            &format!("{base}/command"),
            r#"{"id":"ok-1","command":"set_setpoint","celsius":54}"#,
        )
        .await;
    client
        .publish(
            &format!("{base}/command"),
            r#"{"id":"bad-1","command":"set_setpoint","celsius":120}"#,
        )
        .await;
    let mut replies = Vec::new();
    for k in 1..=50u32 {
        d.sim().expect("simulator").step(sim_step);
        d.tick(sim_step * (TICKS + k)).await;
        for r in client.collect(Duration::from_millis(20)).await {
            if r.topic == format!("{base}/command/reply") {
                replies.push(
                    serde_json::from_str::<serde_json::Value>(&r.payload).expect("reply is JSON"),
                );
            }
        }
        if replies.len() == 2 {
            break;
        }
    }
    let reply = |id: &str| {
        replies
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(reply("ok-1")["result"], "accepted", "{replies:?}");
    assert_eq!(reply("bad-1")["result"], "rejected", "{replies:?}");
    assert!(
        reply("bad-1")["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{replies:?}"
    );
    let snap = d.last_snapshot().expect("a snapshot exists");
    assert_eq!(
        snap.setpoint, 54.0,
        "the accepted command changed the set point"
    );

    d.shutdown(Duration::from_secs(5)).await;

    // InfluxDB path: every tick's point for every GPU, the CDU and the control summary.
    let ticks_written =
        |series: &[victoria::Series]| series.iter().map(|s| s.values.len()).min().unwrap_or(0);
    let gpus = vm.export_until("gpu_core_temp_c", |s| {
        s.len() == 8 && ticks_written(s) >= TICKS as usize
    });
    assert_eq!(gpus.len(), 8, "one series per GPU");
    for s in &gpus {
        assert_eq!(s.label("host"), Some("sim-node01"));
        assert_eq!(s.label("site"), Some("sim"));
        assert!(
            s.label("uuid").is_some_and(|u| u.starts_with("GPU-")),
            "{:?}",
            s.labels
        );
        assert!(
            s.values.len() >= TICKS as usize,
            "{} samples for {:?}",
            s.values.len(),
            s.labels
        );
        assert!(
            s.values.iter().all(|v| (20.0..90.0).contains(v)),
            "plausible temperatures"
        );
    }
    let supply = vm.export_until("coolant_supply_temp_c", |s| {
        ticks_written(s) >= TICKS as usize
    });
    assert_eq!(supply.len(), 1);
    assert_eq!(supply[0].label("cdu"), Some("cdu-sim"));
    let setpoints = vm.export_until("control_setpoint_c", |s| {
        s.iter().any(|s| s.values.contains(&54.0))
    });
    assert!(
        setpoints
            .iter()
            .any(|s| s.values.contains(&55.0) && s.values.contains(&54.0)),
        "{setpoints:?}"
    );
    // The sink reports on itself in the same stream: acknowledged points keep growing.
    let written = vm.export_until("telemetry_written", |s| {
        s.iter().any(|s| s.values.len() >= TICKS as usize)
    });
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].label("sink"), Some("influx"));
    let w = &written[0].values;
    assert!(
        w.windows(2).all(|p| p[1] >= p[0]) && w.last() > w.first(),
        "written only grows: {w:?}"
    );
}
