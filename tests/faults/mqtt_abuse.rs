//! The MQTT sink under hostile or broken input from a real Mosquitto (Debian packages
//! `mosquitto`, `mosquitto-clients`): a retained command larger than any command, a large
//! non-retained one, and a broker that drops the connection right after accepting it.

use coolantd_testkit::mosquitto;
use coolantd_testkit::mqtt_client;

use coolantd::link::mqtt::{MqttConfig, MqttSink};
use coolantd::model::{Command, ControlState, FieldValue, Mode, Point, Snapshot};
use mosquitto::Mosquitto;
use mqtt_client::{Received, TestClient};
use std::path::Path;
use std::process::Command as Process;
use std::time::Duration;

const SITE: &str = "lab";
const HOST: &str = "node01";
const BASE: &str = "coolantd/lab/node01";
const WAIT: Duration = Duration::from_secs(10);

fn cfg(port: u16) -> MqttConfig {
    let mut c = MqttConfig::new("127.0.0.1", port);
    c.keep_alive_s = 2;
    c.reconnect_min_ms = 50;
    c.reconnect_max_ms = 400;
    c.telemetry_period_ms = 100;
    c
}

fn snapshot(tick: u64) -> Snapshot {
    Snapshot {
        site: SITE.into(),
        host: HOST.into(),
        time_ns: 1_700_000_000_000_000_000 + tick as i64,
        tick,
        dry_run: false,
        mode: Mode::Auto,
        state: ControlState::Running,
        setpoint: 65.0,
        controlled: Some(60.0),
        ready: true,
        cdus: vec![],
        gpus: vec![],
        alarms: vec![],
        decisions: Vec::new(),
        points: vec![Point::new("gpu", 1)
            .tag("host", HOST)
            .tag("index", "0")
            .field("core_temperature", FieldValue::Float(60.0))],
        rack: None,
    }
}

/// Publishes the file `payload` with the real `mosquitto_pub`, retained when asked.
fn mosquitto_pub(port: u16, topic: &str, payload: &Path, retain: bool) {
    let mut cmd = Process::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-f"])
        .arg(payload);
    if retain {
        cmd.arg("-r");
    }
    let out = cmd
        .output()
        .expect("run mosquitto_pub (Debian package `mosquitto-clients`)");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn big_file(dir: &Path, name: &str, bytes: usize) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![b'x'; bytes]).expect("write the large payload");
    p
}

fn count(msgs: &[Received], topic: &str, payload: &str) -> usize {
    msgs.iter()
        .filter(|m| m.topic == topic && m.payload == payload)
        .count()
}

/// Issue 12, D5: a retained 100,000-byte message on the command topic used to exceed the
/// client's incoming packet limit on every connect, so the daemon dropped the session right
/// after each CONNACK and reconnected (availability flapped dozens of times in 10 s) until
/// someone cleared the message. Now the message is read, refused with a reply, and the
/// session stays up; a large non-retained message does not cost the session either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_command_is_refused_without_dropping_the_session() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let command = format!("{BASE}/command");
    let availability = format!("{BASE}/availability");
    let reply = format!("{BASE}/command/reply");
    mosquitto_pub(
        broker.port(),
        &command,
        &big_file(dir.path(), "big", 100_000),
        true,
    );

    let mut op = TestClient::connect(
        broker.port(),
        "operator",
        &[&availability, &reply, &format!("{BASE}/telemetry")],
    )
    .await;
    let (sink, mut rx) = MqttSink::start(&cfg(broker.port()), SITE, HOST).expect("sink starts");
    // Watch for 6 s while the control loop offers a snapshot every 100 ms.
    let mut seen = Vec::new();
    for tick in 0..60 {
        sink.publish_snapshot(&snapshot(tick));
        seen.extend(op.collect(Duration::from_millis(100)).await);
    }
    let online = count(&seen, &availability, "online");
    let offline = count(&seen, &availability, "offline");
    let telemetry = seen
        .iter()
        .filter(|m| m.topic.ends_with("/telemetry"))
        .count();
    println!(
        "oversize retained command: availability online {online}, offline {offline} in 6 s; \
         {telemetry} telemetry messages for 60 snapshots"
    );
    assert_eq!(
        (online, offline),
        (1, 0),
        "the session must come up once and stay up"
    );
    assert!(sink.is_connected());
    let refusals: Vec<&Received> = seen.iter().filter(|m| m.topic == reply).collect();
    assert_eq!(refusals.len(), 1, "one refusal for the retained message");
    let r: serde_json::Value = serde_json::from_str(&refusals[0].payload).expect("JSON reply");
    assert_eq!(r["result"], "rejected", "{r}");
    assert_eq!(r["kind"], "too_large", "{r}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("100000 bytes") && reason.contains("too large"),
        "{r}"
    );

    // A 180 KB non-retained message: refused, and the next command still arrives.
    mosquitto_pub(
        broker.port(),
        &command,
        &big_file(dir.path(), "bigger", 180_000),
        false,
    );
    op.wait_for("the refusal of the 180 KB message", WAIT, |m| {
        m.topic == reply && m.payload.contains("180000 bytes")
    })
    .await;
    op.publish(
        &command,
        r#"{"id":"after","command":"set_mode","mode":"manual"}"#,
    )
    .await;
    let req = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the next command arrives in time")
        .expect("receiver open");
    assert_eq!(req.correlation_id.as_deref(), Some("after"));
    assert!(matches!(req.command, Command::SetMode { .. }));
    let after = op.collect(Duration::from_millis(300)).await;
    assert_eq!(count(&after, &availability, "offline"), 0);
    assert!(sink.is_connected());
    sink.shutdown().await;
}

/// Issue 12, D5: the reconnect backoff used to reset on every CONNACK, so a session that
/// the broker closes right after accepting it was retried at the minimum delay forever.
/// Mosquitto with `max_packet_size 120` accepts the daemon's CONNECT and then disconnects
/// it as soon as it republishes its (larger) state. With backoff 100 ms doubling to
/// 3.2 s, at most 1 + log2(3200/100) + the rest of the window at 3.2 s attempts fit in 8 s
/// (about 8); a backoff that resets makes dozens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_does_not_reset_on_a_session_that_dies_at_once() {
    let broker = Mosquitto::start_with(mosquitto::free_port(), "max_packet_size 120");
    let mut c = cfg(broker.port());
    c.reconnect_min_ms = 100;
    c.reconnect_max_ms = 3_200;
    let (sink, _rx) = MqttSink::start(&c, SITE, HOST).expect("sink starts");
    sink.publish_snapshot(&snapshot(1));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = broker.log();
    let connects = log
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains("coolantd-node01"))
        .count();
    println!("session closed at once by the broker: {connects} connections in 8 s");
    assert!(connects >= 2, "the sink retries: {connects}\n{log}");
    assert!(
        connects <= 10,
        "the backoff must keep growing while sessions die at once: {connects} connections"
    );
    sink.shutdown().await;
}

/// Issue 12, D5, over MQTT 5: the sink announces its 64 KiB limit in CONNECT, so the broker
/// discards the retained 100,000-byte command for it instead of sending it; the session
/// stays up and commands still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt5_the_broker_keeps_an_oversize_command_away() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let command = format!("{BASE}/command");
    let availability = format!("{BASE}/availability");
    mosquitto_pub(
        broker.port(),
        &command,
        &big_file(dir.path(), "big", 100_000),
        true,
    );
    let mut op = TestClient::connect(broker.port(), "operator", &[&availability]).await;
    let mut c = cfg(broker.port());
    c.protocol = coolantd::link::mqtt::MqttProtocol::V5;
    c.keep_alive_s = 5;
    let (sink, mut rx) = MqttSink::start(&c, SITE, HOST).expect("sink starts");
    let seen = op.collect(Duration::from_secs(4)).await;
    let (online, offline) = (
        count(&seen, &availability, "online"),
        count(&seen, &availability, "offline"),
    );
    println!("oversize retained command over MQTT 5: availability online {online}, offline {offline} in 4 s");
    assert_eq!((online, offline), (1, 0));
    op.publish(
        &command,
        r#"{"id":"v5","command":"set_mode","mode":"manual"}"#,
    )
    .await;
    let req = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the command arrives in time")
        .expect("receiver open");
    assert_eq!(req.correlation_id.as_deref(), Some("v5"));
    sink.shutdown().await;
}
