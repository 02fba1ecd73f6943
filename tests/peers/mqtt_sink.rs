//! The MQTT sink against a real Mosquitto broker (Debian packages `mosquitto`).

use coolantd_testkit::mosquitto;
use coolantd_testkit::mqtt_client;

use coolantd::link::mqtt::{CommandRequest, MqttConfig, MqttProtocol, MqttSink};
use coolantd::model::{
    Alarm, AlarmEvent, AlarmTransition, CduStatus, Command, CommandOutcome, ControlState,
    FieldValue, GpuKey, GpuStatus, Mode, Point, Severity, Snapshot,
};
use mosquitto::Mosquitto;
use mqtt_client::TestClient;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

const SITE: &str = "lab";
const HOST: &str = "node01";
const BASE: &str = "coolantd/lab/node01";
/// Short keep-alive and backoffs keep the suite fast; 2 s is the shortest keep-alive that
/// leaves room for a busy 2-core CI machine.
const KEEP_ALIVE_S: u64 = 2;
const WAIT: Duration = Duration::from_secs(10);

fn cfg(port: u16) -> MqttConfig {
    let mut c = MqttConfig::new("127.0.0.1", port);
    c.keep_alive_s = KEEP_ALIVE_S;
    c.reconnect_min_ms = 50;
    c.reconnect_max_ms = 400;
    c.telemetry_period_ms = 100;
    c
}

fn snapshot(tick: u64, state: ControlState, controlled: f64) -> Snapshot {
    Snapshot {
        site: SITE.into(),
        host: HOST.into(),
        time_ns: 1_700_000_000_000_000_000 + tick as i64,
        tick,
        dry_run: false,
        mode: Mode::Auto,
        state,
        setpoint: 65.0,
        controlled: Some(controlled),
        ready: true,
        cdus: vec![CduStatus {
            name: "cdu-a".into(),
            supply: Some(30.5),
            return_: Some(41.0),
            flow: Some(118.0),
            differential_pressure: Some(90.0),
            pump_command: Some(55.0),
            pump_feedback: Some(54.5),
            leak: Some(false),
            remote_enable: Some(true),
            faults: vec![],
            link: Default::default(),
        }],
        gpus: vec![GpuStatus {
            key: GpuKey {
                host: HOST.into(),
                index: 0,
            },
            uuid: "GPU-0".into(),
            name: "NVIDIA H200".into(),
            core: Some(controlled),
            hbm: Some(70.0),
            power: Some(600.0),
            limit: Some(700.0),
            margin_to_slowdown: Some(89.0 - controlled),
        }],
        alarms: vec![],
        decisions: Vec::new(),
        points: vec![Point::new("gpu", 1)
            .tag("host", HOST)
            .tag("index", "0")
            .field("core_temperature", FieldValue::Float(controlled))],
        rack: None,
    }
}

async fn wait_connected(sink: &MqttSink) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !sink.is_connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sink did not connect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

async fn recv_command(rx: &mut Receiver<CommandRequest>) -> CommandRequest {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a command on the receiver in time")
        .expect("receiver open")
}

#[tokio::test]
async fn telemetry_state_and_events_arrive_and_state_is_retained() {
    let broker = Mosquitto::start();
    let mut c = cfg(broker.port());
    c.discovery = true;
    let (sink, _rx) = MqttSink::start(&c, SITE, HOST).expect("start");
    let mut live = TestClient::connect(broker.port(), "live", &[&format!("{BASE}/#")]).await;
    wait_connected(&sink).await;

    sink.publish_snapshot(&snapshot(1, ControlState::Running, 61.0));
    let t = live
        .wait_for("telemetry", WAIT, |m| {
            m.topic == format!("{BASE}/telemetry")
        })
        .await;
    let t = json(&t.payload);
    assert_eq!(t["hottest_gpu_core_temp_c"], 61.0);
    assert_eq!(t["cdus"]["cdu-a"]["supply_temp_c"], 30.5);
    assert_eq!(t["metrics"][0]["fields"]["core_temperature"], 61.0);

    let ev = AlarmEvent {
        alarm: Alarm {
            id: "leak:cdu-a".into(),
            severity: Severity::Critical,
            message: "leak detected at cdu-a".into(),
            raised_at: Duration::from_secs(12),
            latched: true,
            acknowledged: false,
            cause_present: true,
            causes: Vec::new(),
        },
        transition: AlarmTransition::Raised,
        at: Duration::from_secs(12),
    };
    sink.publish_event(&ev);
    let e = live
        .wait_for("alarm event", WAIT, |m| {
            m.topic == format!("{BASE}/alarms/events")
        })
        .await;
    let e = json(&e.payload);
    assert_eq!(e["transition"], "raised");
    assert_eq!(e["alarm"]["id"], "leak:cdu-a");

    // A state change goes out at once as a new retained state.
    sink.publish_snapshot(&snapshot(2, ControlState::Degraded, 61.0));
    live.wait_for("degraded state", WAIT, |m| {
        m.topic == format!("{BASE}/state") && json(&m.payload)["state"] == "degraded"
    })
    .await;

    // A subscriber that comes later still gets availability, state and discovery.
    let mut late = TestClient::connect(
        broker.port(),
        "late",
        &[
            &format!("{BASE}/state"),
            &format!("{BASE}/availability"),
            "homeassistant/#",
        ],
    )
    .await;
    let got = late.collect(Duration::from_millis(500)).await;
    let state = got
        .iter()
        .find(|m| m.topic == format!("{BASE}/state"))
        .expect("retained state for a late subscriber");
    assert!(state.retain);
    let s = json(&state.payload);
    assert_eq!(s["state"], "degraded");
    assert_eq!(s["setpoint_c"], 65.0);
    assert_eq!(s["dry_run"], false);
    let avail = got
        .iter()
        .find(|m| m.topic == format!("{BASE}/availability"))
        .expect("retained availability");
    assert_eq!(avail.payload, "online");
    let supply = got
        .iter()
        .find(|m| m.topic == "homeassistant/sensor/coolantd__lab__node01/cdu-a__supply/config")
        .expect("retained discovery config for the CDU supply sensor");
    assert_eq!(
        json(&supply.payload)["state_topic"],
        format!("{BASE}/telemetry")
    );

    // A clean shutdown leaves `offline` retained (and fires no will).
    sink.shutdown().await;
    late.wait_for("offline after shutdown", WAIT, |m| {
        m.topic == format!("{BASE}/availability") && m.payload == "offline"
    })
    .await;
}

/// Not a test on its own: the child process of `last_will_fires_when_the_daemon_is_killed`.
#[tokio::test]
#[ignore = "child process of last_will_fires_when_the_daemon_is_killed"]
async fn mqtt_probe_child() {
    let port: u16 = std::env::var("COOLANTD_MQTT_PROBE_PORT")
        .expect("run by last_will_fires_when_the_daemon_is_killed")
        .parse()
        .expect("a port number");
    let (sink, _rx) = MqttSink::start(&cfg(port), SITE, HOST).expect("start");
    wait_connected(&sink).await;
    sink.publish_snapshot(&snapshot(1, ControlState::Running, 60.0));
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn last_will_fires_when_the_daemon_is_killed() {
    let broker = Mosquitto::start();
    let mut sub =
        TestClient::connect(broker.port(), "watcher", &[&format!("{BASE}/availability")]).await;
    let probe_test = coolantd_testkit::test_name(module_path!(), "mqtt_probe_child");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", &probe_test, "--nocapture"])
        .env("COOLANTD_MQTT_PROBE_PORT", broker.port().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the probe child");
    sub.wait_for("online from the child", WAIT, |m| m.payload == "online")
        .await;
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    // The broker owes the will after 1.5 keep-alive periods (MQTT 3.1.1 §3.1.2.10); that is
    // the broker's clock, so the test only waits for it, with its ordinary patience.
    let m = sub
        .wait_for("offline (last will)", WAIT, |m| m.payload == "offline")
        .await;
    assert!(!m.retain, "a live will delivery is not flagged retained");
    // And it stays retained for whoever looks next.
    let mut late = TestClient::connect(
        broker.port(),
        "late-watcher",
        &[&format!("{BASE}/availability")],
    )
    .await;
    let m = late.wait_for("retained offline", WAIT, |m| m.retain).await;
    assert_eq!(m.payload, "offline");
}

#[tokio::test]
async fn command_round_trip_carries_the_correlation_id() {
    let broker = Mosquitto::start();
    let (sink, mut rx) = MqttSink::start(&cfg(broker.port()), SITE, HOST).expect("start");
    let mut op = TestClient::connect(
        broker.port(),
        "operator",
        &[&format!("{BASE}/command/reply")],
    )
    .await;
    wait_connected(&sink).await;
    // Give the sink's SUBSCRIBE a moment to land: it follows CONNACK asynchronously.
    await_subscribed(&op, &mut rx).await;

    op.publish(
        &format!("{BASE}/command"),
        r#"{"id":"abc","command":"set_setpoint","celsius":65}"#,
    )
    .await;
    let req = recv_command(&mut rx).await;
    assert_eq!(req.correlation_id.as_deref(), Some("abc"));
    assert_eq!(req.command, Command::SetSetpoint { celsius: 65.0 });
    sink.reply(req.correlation_id.as_deref(), &CommandOutcome::Accepted);
    let r = op
        .wait_for("reply", WAIT, |m| m.payload.contains("abc"))
        .await;
    assert_eq!(
        json(&r.payload),
        json(r#"{"id":"abc","result":"accepted"}"#)
    );

    // The core's rejection travels back the same way; no id means no id in the reply.
    op.publish(
        &format!("{BASE}/command"),
        r#"{"command":"set_pump_speed","percent":150}"#,
    )
    .await;
    let req = recv_command(&mut rx).await;
    assert_eq!(req.correlation_id, None);
    sink.reply(
        None,
        &CommandOutcome::Rejected {
            kind: coolantd::model::RejectKind::OutOfRange,
            reason: "percent must be 0..=100".into(),
        },
    );
    let r = op
        .wait_for("reply without id", WAIT, |m| m.payload.contains("0..=100"))
        .await;
    let r = json(&r.payload);
    assert_eq!(r["result"], "rejected");
    assert_eq!(r["kind"], "out_of_range", "{r}");
    assert!(r.get("id").is_none());
    sink.shutdown().await;
}

/// Sends a probe command until one arrives, so that later assertions do not race the
/// sink's subscription; answers the probe so nothing is left waiting.
async fn await_subscribed(op: &TestClient, rx: &mut Receiver<CommandRequest>) {
    for _ in 0..100 {
        op.publish(
            &format!("{BASE}/command"),
            r#"{"id":"probe","command":"set_mode","mode":"auto"}"#,
        )
        .await;
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            assert_eq!(r.correlation_id.as_deref(), Some("probe"));
            // Drain duplicates of the probe that were still in flight.
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(150), rx.recv()).await
            {}
            return;
        }
    }
    panic!("the sink never subscribed to its command topic");
}

#[tokio::test]
async fn bad_commands_are_rejected_with_a_reason_and_never_reach_the_core() {
    let broker = Mosquitto::start();
    let (sink, mut rx) = MqttSink::start(&cfg(broker.port()), SITE, HOST).expect("start");
    let mut op = TestClient::connect(
        broker.port(),
        "operator",
        &[&format!("{BASE}/command/reply")],
    )
    .await;
    wait_connected(&sink).await;
    await_subscribed(&op, &mut rx).await;
    let _ = op.collect(Duration::from_millis(100)).await;

    let cases = [
        ("{not json", None, "not valid JSON", "bad_json"),
        (
            r#"{"id":"u1","command":"explode"}"#,
            Some("u1"),
            "unknown variant",
            "unknown_command",
        ),
        (
            r#"{"id":"t1","command":"set_setpoint","celsius":"hot"}"#,
            Some("t1"),
            "invalid type",
            "bad_field",
        ),
        (
            r#"{"id":"m1","command":"set_pump_speed"}"#,
            Some("m1"),
            "missing field `percent`",
            "bad_field",
        ),
        (
            r#"{"id":"x1","command":"set_mode","mode":"auto","extra":1}"#,
            Some("x1"),
            "unknown field `extra`",
            "bad_field",
        ),
        (
            r#"{"id":"c1","mode":"auto"}"#,
            Some("c1"),
            "missing field `command`",
            "unknown_command",
        ),
    ];
    for (payload, id, reason, kind) in cases {
        op.publish(&format!("{BASE}/command"), payload).await;
        let r = op.wait_for("rejection", WAIT, |_| true).await;
        let r = json(&r.payload);
        assert_eq!(r["result"], "rejected", "{payload}");
        assert_eq!(r.get("id").and_then(|v| v.as_str()), id, "{payload}");
        assert_eq!(r["kind"], kind, "{payload}: {r}");
        let got = r["reason"].as_str().unwrap_or_default();
        assert!(got.contains(reason), "{payload}: reason `{got}`");
    }
    // Nothing structurally bad reached the core.
    assert!(
        rx.try_recv().is_err(),
        "a rejected command reached the receiver"
    );
    sink.shutdown().await;
}

/// The command queue to the controller holds 32 commands: the 33rd is answered `busy` at
/// once, and once the controller stops taking commands the answer is `shutting_down`.
#[tokio::test]
async fn a_full_command_queue_answers_busy_and_a_closed_one_shutting_down() {
    let broker = Mosquitto::start();
    let (sink, mut rx) = MqttSink::start(&cfg(broker.port()), SITE, HOST).expect("start");
    let mut op = TestClient::connect(
        broker.port(),
        "operator",
        &[&format!("{BASE}/command/reply")],
    )
    .await;
    wait_connected(&sink).await;
    await_subscribed(&op, &mut rx).await;
    let _ = op.collect(Duration::from_millis(100)).await;
    // Nothing drains the queue now, as when the controller is stuck in a long tick.
    for i in 0..33 {
        op.publish(
            &format!("{BASE}/command"),
            &format!(r#"{{"id":"q{i}","command":"set_setpoint","celsius":60}}"#),
        )
        .await;
    }
    let r = op
        .wait_for("busy", WAIT, |m| m.payload.contains("q32"))
        .await;
    let r = json(&r.payload);
    assert_eq!(r["result"], "rejected", "{r}");
    assert_eq!(r["kind"], "busy", "{r}");
    let queued = op.collect(Duration::from_millis(300)).await;
    assert!(
        queued.is_empty(),
        "queued commands were answered: {queued:?}"
    );
    for i in 0..32 {
        let req = recv_command(&mut rx).await;
        assert_eq!(req.correlation_id, Some(format!("q{i}")));
    }
    drop(rx);
    op.publish(
        &format!("{BASE}/command"),
        r#"{"id":"late","command":"set_setpoint","celsius":60}"#,
    )
    .await;
    let r = op
        .wait_for("closed", WAIT, |m| m.payload.contains("late"))
        .await;
    let r = json(&r.payload);
    assert_eq!(r["kind"], "shutting_down", "{r}");
    sink.shutdown().await;
}

#[tokio::test]
async fn commands_disabled_means_nothing_reaches_the_core() {
    let broker = Mosquitto::start();
    let mut c = cfg(broker.port());
    c.commands_enabled = false;
    let (sink, mut rx) = MqttSink::start(&c, SITE, HOST).expect("start");
    let mut op = TestClient::connect(
        broker.port(),
        "operator",
        &[
            &format!("{BASE}/command/reply"),
            &format!("{BASE}/availability"),
        ],
    )
    .await;
    wait_connected(&sink).await;
    op.wait_for("online", WAIT, |m| m.payload == "online").await;
    for i in 0..5 {
        op.publish(
            &format!("{BASE}/command"),
            &format!(r#"{{"id":"{i}","command":"set_setpoint","celsius":60}}"#),
        )
        .await;
    }
    // A malformed one would be answered by a sink that listens.
    op.publish(&format!("{BASE}/command"), "{oops").await;
    let replies = op.collect(Duration::from_millis(700)).await;
    assert!(
        replies.iter().all(|m| !m.topic.ends_with("/reply")),
        "a read-only sink answered a command: {replies:?}"
    );
    assert!(rx.try_recv().is_err(), "a command reached the core");
    let log = broker.log();
    assert!(log.contains("New client connected"), "{log}");
    assert!(
        !log.contains("Received SUBSCRIBE from coolantd-node01"),
        "the read-only sink subscribed: {log}"
    );
    sink.shutdown().await;
}

#[tokio::test]
async fn broker_restart_reconnects_republishes_and_resubscribes() {
    let mut broker = Mosquitto::start();
    let (sink, mut rx) = MqttSink::start(&cfg(broker.port()), SITE, HOST).expect("start");
    wait_connected(&sink).await;
    sink.publish_snapshot(&snapshot(1, ControlState::Running, 60.0));
    {
        let op = TestClient::connect(broker.port(), "op1", &[]).await;
        await_subscribed(&op, &mut rx).await;
    }

    broker.restart();
    // The broker forgot everything (no persistence); telemetry offered meanwhile is kept
    // as the newest snapshot only.
    for tick in 2..50 {
        sink.publish_snapshot(&snapshot(tick, ControlState::Failsafe, 60.0));
    }
    wait_connected(&sink).await;
    let mut watcher = TestClient::connect(
        broker.port(),
        "watcher",
        &[
            &format!("{BASE}/availability"),
            &format!("{BASE}/state"),
            &format!("{BASE}/command/reply"),
        ],
    )
    .await;
    let got = watcher.collect(Duration::from_millis(800)).await;
    let retained = |topic: &str| {
        got.iter()
            .find(|m| m.topic == format!("{BASE}/{topic}"))
            .unwrap_or_else(|| panic!("no {topic} after the restart: {got:?}"))
            .clone()
    };
    assert_eq!(retained("availability").payload, "online");
    assert_eq!(json(&retained("state").payload)["state"], "failsafe");

    // The subscription was renewed: a command round-trips.
    await_subscribed(&watcher, &mut rx).await;
    watcher
        .publish(
            &format!("{BASE}/command"),
            r#"{"id":"after-restart","command":"ack_alarm","id2":"x"}"#,
        )
        .await;
    let r = watcher
        .wait_for("rejection after restart", WAIT, |m| {
            m.topic.ends_with("/reply") && m.payload.contains("unknown field `id2`")
        })
        .await;
    assert_eq!(json(&r.payload)["id"], "after-restart");
    watcher
        .publish(
            &format!("{BASE}/command"),
            r#"{"id":"ack-1","command":"ack_alarm","alarm":"leak:cdu-a"}"#,
        )
        .await;
    let req = recv_command(&mut rx).await;
    assert_eq!(req.correlation_id.as_deref(), Some("ack-1"));
    assert_eq!(
        req.command,
        Command::AckAlarm {
            id: "leak:cdu-a".into()
        }
    );
    watcher
        .publish(
            &format!("{BASE}/command"),
            r#"{"id":"sp-1","command":"set_setpoint","celsius":64.5}"#,
        )
        .await;
    let req = recv_command(&mut rx).await;
    assert_eq!(req.correlation_id.as_deref(), Some("sp-1"));
    assert_eq!(req.command, Command::SetSetpoint { celsius: 64.5 });
    sink.reply(req.correlation_id.as_deref(), &CommandOutcome::Accepted);
    let r = watcher
        .wait_for("reply after restart", WAIT, |m| m.payload.contains("sp-1"))
        .await;
    assert_eq!(json(&r.payload)["result"], "accepted");
    sink.shutdown().await;
}

#[tokio::test]
async fn retained_commands_are_refused() {
    let broker = Mosquitto::start();
    let op = TestClient::connect(broker.port(), "operator", &[]).await;
    // Left on the broker before the daemon starts: it must not run on every (re)connect.
    op.client
        .publish(
            format!("{BASE}/command"),
            rumqttc::QoS::AtLeastOnce,
            true,
            br#"{"id":"r1","command":"set_mode","mode":"manual"}"#.to_vec(),
        )
        .await
        .expect("publish");
    let mut replies = TestClient::connect(
        broker.port(),
        "replies",
        &[&format!("{BASE}/command/reply")],
    )
    .await;
    let (sink, mut rx) = MqttSink::start(&cfg(broker.port()), SITE, HOST).expect("start");
    let r = replies
        .wait_for("refusal of the retained command", WAIT, |_| true)
        .await;
    let r = json(&r.payload);
    assert_eq!(r["result"], "rejected");
    assert_eq!(r["kind"], "retained", "{r}");
    assert!(r["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("retained"));
    // Clearing the retained message (an empty payload) is silently ignored.
    op.client
        .publish(
            format!("{BASE}/command"),
            rumqttc::QoS::AtLeastOnce,
            true,
            Vec::new(),
        )
        .await
        .expect("publish");
    let extra = replies.collect(Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "unexpected replies: {extra:?}");
    assert!(
        rx.try_recv().is_err(),
        "a retained command reached the core"
    );
    sink.shutdown().await;
}

#[tokio::test]
async fn backlog_stays_bounded_while_the_broker_is_away() {
    let port = mosquitto::free_port();
    let mut c = cfg(port);
    // A slow retry, so that the watcher below is subscribed before the sink gets in.
    c.reconnect_min_ms = 1_500;
    c.reconnect_max_ms = 1_500;
    let (sink, _rx) = MqttSink::start(&c, SITE, HOST).expect("start");
    let total = 2 * coolantd::link::mqtt::EVENT_QUEUE;
    for tick in 0..total as u64 {
        sink.publish_snapshot(&snapshot(tick, ControlState::Boot, 50.0));
        sink.publish_event(&AlarmEvent {
            alarm: Alarm {
                id: format!("a{tick}"),
                severity: Severity::Warning,
                message: "m".into(),
                raised_at: Duration::ZERO,
                latched: false,
                acknowledged: false,
                cause_present: true,
                causes: Vec::new(),
            },
            transition: AlarmTransition::Raised,
            at: Duration::ZERO,
        });
    }
    let b = sink.backlog();
    assert!(!sink.is_connected());
    assert_eq!(b.events, coolantd::link::mqtt::EVENT_QUEUE);
    assert_eq!(b.dropped_events, (total - b.events) as u64);
    assert!(b.telemetry);

    let broker = Mosquitto::start_on(port);
    let mut watcher = TestClient::connect(
        broker.port(),
        "watcher",
        &[
            &format!("{BASE}/alarms/events"),
            &format!("{BASE}/telemetry"),
        ],
    )
    .await;
    wait_connected(&sink).await;
    let last = format!("a{}", total - 1);
    let mut events: Vec<String> = Vec::new();
    let mut telemetry = Vec::new();
    while !events.contains(&last) {
        let m = watcher.wait_for("queued events", WAIT, |_| true).await;
        if m.topic.ends_with("/telemetry") {
            telemetry.push(json(&m.payload)["tick"].clone());
        } else {
            events.push(
                json(&m.payload)["alarm"]["id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
        }
    }
    // Oldest dropped, the rest in order; of the telemetry only the newest was kept. The
    // watcher may subscribe a moment after the sink reconnects and starts flushing (the
    // broker gives no way to order the two), so the head of the queue can be missed: what
    // arrives must be an in-order run of the kept events that ends with the newest.
    let first_kept = total - coolantd::link::mqtt::EVENT_QUEUE;
    let first_seen = total - events.len();
    assert!(
        first_seen >= first_kept,
        "an event older than the queue bound arrived: {events:?}"
    );
    let expected: Vec<String> = (first_seen..total).map(|i| format!("a{i}")).collect();
    assert_eq!(events, expected);
    telemetry.extend(
        watcher
            .collect(Duration::from_millis(200))
            .await
            .iter()
            .filter(|m| m.topic.ends_with("/telemetry"))
            .map(|m| json(&m.payload)["tick"].clone()),
    );
    // Only the newest telemetry was kept (the watcher may have missed it, see above).
    assert!(
        telemetry.len() <= 1 && telemetry.iter().all(|t| *t == serde_json::json!(total - 1)),
        "{telemetry:?}"
    );
    assert_eq!(sink.backlog().events, 0);
    sink.shutdown().await;
}

#[tokio::test]
async fn mqtt5_command_replies_go_to_the_response_topic_with_correlation_data() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let broker = Mosquitto::start();
    let mut c = cfg(broker.port());
    c.protocol = MqttProtocol::V5;
    c.keep_alive_s = 5;
    let (sink, mut rx) = MqttSink::start(&c, SITE, HOST).expect("start");
    wait_connected(&sink).await;

    let mut o = MqttOptions::new("v5-operator", "127.0.0.1", broker.port());
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(o, 16);
    let (tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let _ = tx.send(p);
            }
        }
    });
    client
        .subscribe("ops/replies/me", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let props = PublishProperties {
        response_topic: Some("ops/replies/me".into()),
        correlation_data: Some(b"corr-42".to_vec().into()),
        ..Default::default()
    };
    // Repeat until the sink's subscription is in place.
    let req = loop {
        client
            .publish_with_properties(
                format!("{BASE}/command"),
                QoS::AtLeastOnce,
                false,
                br#"{"command":"set_mode","mode":"manual"}"#.to_vec(),
                props.clone(),
            )
            .await
            .expect("publish");
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            break r;
        }
    };
    assert_eq!(req.correlation_id.as_deref(), Some("corr-42"));
    assert_eq!(req.command, Command::SetMode { mode: Mode::Manual });
    sink.reply(req.correlation_id.as_deref(), &CommandOutcome::Accepted);
    let p = tokio::time::timeout(WAIT, replies.recv())
        .await
        .expect("a reply in time")
        .expect("client running");
    assert_eq!(&p.topic[..], b"ops/replies/me");
    let corr = p
        .properties
        .and_then(|pr| pr.correlation_data)
        .expect("correlation data echoed");
    assert_eq!(&corr[..], b"corr-42");
    assert_eq!(
        json(&String::from_utf8_lossy(&p.payload)),
        json(r#"{"id":"corr-42","result":"accepted"}"#)
    );
    poller.abort();
    sink.shutdown().await;
}
