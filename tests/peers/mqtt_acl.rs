//! The shipped broker access rules (`config/mosquitto/coolantd.acl`) on a real Mosquitto with a
//! password file written by `mosquitto_passwd`: agents and controllers that keep to their hosts
//! pass, and the broker drops or refuses everything else.
//!
//! How "dropped" is proved: Mosquitto accepts a denied QoS 1 PUBLISH with a PUBACK (MQTT 3.1.1
//! has no way to say no) and delivers it to nobody. After that PUBACK the broker has handled the
//! message; a permitted message published afterwards reaches the same subscriber after it. So
//! the subscriber's first message being the permitted one shows the denied one was never
//! delivered, without waiting for a silence of some length.

use coolantd::wire::{self, Cap, CapLease, GpuReading, Kind, Readings, Status, Topic};
use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::sim_daemon::sim_config_text;
use coolantd_testkit::wire_client::{ConnectFailure, WireClient, ANSWER};
use coolantd_testkit::{free_port, repo_root, TempDir};
use rumqttc::{ConnectReturnCode, SubscribeReasonCode};
use std::time::Duration;

/// The prefix the shipped ACL is written for.
const PREFIX: &str = "coolantd";
const BIN: &str = env!("CARGO_BIN_EXE_coolantd");

/// Users of the shipped ACL: agents are named as their hosts; ctrl-rack01 cools node01..08,
/// ctrl-rack02 node09..16.
const USERS: [(&str, &str); 6] = [
    ("node01", "pw-node01"),
    ("node02", "pw-node02"),
    ("node09", "pw-node09"),
    ("ctrl-rack01", "pw-ctrl-rack01"),
    ("ctrl-rack02", "pw-ctrl-rack02"),
    ("monitor", "pw-monitor"),
];

fn broker() -> Mosquitto {
    Mosquitto::start_with_auth(
        &USERS,
        &repo_root().join("config/mosquitto/coolantd.acl"),
        "",
    )
}

async fn login(broker: &Mosquitto, user: &str) -> WireClient {
    let password = USERS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no test user {user}"));
    WireClient::connect(broker.port(), user, Some((user, password)))
        .await
        .unwrap_or_else(|e| panic!("{user} was refused: {e:?}; broker log:\n{}", broker.log()))
}

fn topic(host: &str, kind: Kind) -> String {
    Topic::format(PREFIX, host, kind)
}

fn readings(host: &str, seq: u64) -> Vec<u8> {
    wire::encode(&Readings {
        v: None,
        host: host.into(),
        session: 1,
        seq,
        sent_unix_ms: 1_764_000_000_000,
        facts_hash: 1,
        gpus: (0..8)
            .map(|index| GpuReading {
                index,
                core_c: Some(60.0),
                hbm_c: Some(65.0),
                power_w: Some(500.0),
                limit_w: Some(700.0),
                throttle: Some(0),
                energy_mj: Some(1),
            })
            .collect(),
    })
    .expect("valid readings")
}

fn lease(host: &str, id: u64) -> Vec<u8> {
    wire::encode(&CapLease {
        v: None,
        host: host.into(),
        id,
        lease_ms: 5000,
        caps: vec![Cap {
            index: 0,
            limit_w: 450.0,
        }],
    })
    .expect("valid lease")
}

/// The first message `c` receives; fails the test if none comes.
async fn first(c: &mut WireClient, who: &str) -> (String, Vec<u8>) {
    c.next(ANSWER)
        .await
        .unwrap_or_else(|| panic!("{who} received nothing within {ANSWER:?}"))
}

#[tokio::test]
async fn agents_and_their_controller_exchange_every_wire_topic() {
    let b = broker();
    let mut ctrl = login(&b, "ctrl-rack01").await;
    let mut agent = login(&b, "node01").await;
    assert_eq!(
        ctrl.subscribe(&Topic::host_filter(PREFIX, "node01")).await,
        vec![SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)]
    );
    agent.subscribe(&topic("node01", Kind::Caps)).await;

    agent
        .publish_acked(&topic("node01", Kind::Readings), readings("node01", 1))
        .await;
    let (t, payload) = first(&mut ctrl, "the controller").await;
    assert_eq!(t, topic("node01", Kind::Readings));
    let r: Readings = wire::decode(&payload).expect("decodes");
    assert_eq!((r.host.as_str(), r.seq, r.gpus.len()), ("node01", 1, 8));

    // The agent's other topics pass too (facts and acks are checked by kind only: the broker
    // routes by topic, not payload).
    let status = wire::encode(&Status {
        v: None,
        host: "node01".into(),
        session: 1,
        online: true,
        sent_unix_ms: 1,
    })
    .expect("valid status");
    for kind in [Kind::Status, Kind::Facts, Kind::Acks] {
        agent
            .publish_acked(&topic("node01", kind), status.clone())
            .await;
        let (t, _) = first(&mut ctrl, "the controller").await;
        assert_eq!(t, topic("node01", kind));
    }

    ctrl.publish_acked(&topic("node01", Kind::Caps), lease("node01", 7))
        .await;
    let (t, payload) = first(&mut agent, "agent node01").await;
    assert_eq!(t, topic("node01", Kind::Caps));
    let l: CapLease = wire::decode(&payload).expect("decodes");
    assert_eq!((l.host.as_str(), l.id), ("node01", 7));
}

#[tokio::test]
async fn an_agent_publishing_another_hosts_readings_is_dropped() {
    let b = broker();
    let mut ctrl = login(&b, "ctrl-rack01").await;
    let mut intruder = login(&b, "node01").await;
    let mut owner = login(&b, "node02").await;
    ctrl.subscribe(&Topic::host_filter(PREFIX, "node02")).await;

    // node01 forges node02's readings (seq 1) and retained status; then node02 publishes its
    // own readings (seq 2).
    intruder
        .publish_acked(&topic("node02", Kind::Readings), readings("node02", 1))
        .await;
    intruder
        .publish_acked(&topic("node02", Kind::Status), readings("node02", 1))
        .await;
    owner
        .publish_acked(&topic("node02", Kind::Readings), readings("node02", 2))
        .await;

    let (t, payload) = first(&mut ctrl, "the controller").await;
    assert_eq!(t, topic("node02", Kind::Readings));
    let r: Readings = wire::decode(&payload).expect("decodes");
    assert_eq!(
        r.seq, 2,
        "the controller received node01's forged readings for node02 first"
    );
    let log = b.log();
    assert!(
        log.contains("Denied PUBLISH from node01"),
        "the broker did not log the denied publish:\n{log}"
    );
}

#[tokio::test]
async fn an_agent_publishes_its_own_alarm_events_only() {
    let b = broker();
    let mut monitor = login(&b, "monitor").await;
    let mut agent = login(&b, "node01").await;
    monitor.subscribe("coolantd/+/+/alarms/events").await;
    // node01 forges node02's alarm, then publishes its own.
    agent
        .publish_acked("coolantd/rack1/node02/alarms/events", b"forged".to_vec())
        .await;
    agent
        .publish_acked("coolantd/rack1/node01/alarms/events", b"own".to_vec())
        .await;
    let (t, payload) = first(&mut monitor, "the monitor").await;
    assert_eq!(
        (t.as_str(), payload.as_slice()),
        ("coolantd/rack1/node01/alarms/events", b"own".as_slice()),
        "the monitor received node01's forged alarm for node02 first"
    );
}

#[tokio::test]
async fn an_agent_subscribing_to_another_hosts_caps_gets_nothing() {
    let b = broker();
    let ctrl = login(&b, "ctrl-rack01").await;
    let mut ctrl = ctrl;
    let mut snoop = login(&b, "node01").await;
    let mut owner = login(&b, "node02").await;
    owner.subscribe(&topic("node02", Kind::Caps)).await;
    // Mosquitto 2.0 grants this SUBACK (a failure code 0x80 would be as good) and checks the
    // read rule for each message it would deliver; what matters is that nothing arrives.
    let codes = snoop.subscribe(&topic("node02", Kind::Caps)).await;
    assert_eq!(codes.len(), 1);
    snoop.subscribe(&topic("node01", Kind::Caps)).await;

    ctrl.publish_acked(&topic("node02", Kind::Caps), lease("node02", 1))
        .await;
    ctrl.publish_acked(&topic("node01", Kind::Caps), lease("node01", 2))
        .await;

    let (t, _) = first(&mut owner, "agent node02").await;
    assert_eq!(t, topic("node02", Kind::Caps), "node02 gets its own caps");
    let (t, payload) = first(&mut snoop, "agent node01").await;
    assert_eq!(
        t,
        topic("node01", Kind::Caps),
        "node01 received node02's caps (SUBACK {codes:?})"
    );
    let l: CapLease = wire::decode(&payload).expect("decodes");
    assert_eq!(l.id, 2);
}

#[tokio::test]
async fn a_controller_sending_caps_to_a_host_not_its_own_is_dropped() {
    let b = broker();
    let mut wrong = login(&b, "ctrl-rack01").await;
    let mut right = login(&b, "ctrl-rack02").await;
    let mut agent = login(&b, "node09").await;
    agent.subscribe(&topic("node09", Kind::Caps)).await;

    wrong
        .publish_acked(&topic("node09", Kind::Caps), lease("node09", 1))
        .await;
    right
        .publish_acked(&topic("node09", Kind::Caps), lease("node09", 2))
        .await;
    let (_, payload) = first(&mut agent, "agent node09").await;
    let l: CapLease = wire::decode(&payload).expect("decodes");
    assert_eq!(
        l.id, 2,
        "node09 applied a lease from ctrl-rack01, which does not cool it"
    );

    // Nor does a controller read the readings of a host not its own.
    wrong.subscribe(&Topic::host_filter(PREFIX, "node09")).await;
    wrong.subscribe(&Topic::host_filter(PREFIX, "node01")).await;
    right.subscribe(&Topic::host_filter(PREFIX, "node09")).await;
    agent
        .publish_acked(&topic("node09", Kind::Readings), readings("node09", 5))
        .await;
    let mut node01 = login(&b, "node01").await;
    node01
        .publish_acked(&topic("node01", Kind::Readings), readings("node01", 6))
        .await;
    let (t, _) = first(&mut right, "ctrl-rack02").await;
    assert_eq!(t, topic("node09", Kind::Readings));
    let (t, _) = first(&mut wrong, "ctrl-rack01").await;
    assert_eq!(
        t,
        topic("node01", Kind::Readings),
        "ctrl-rack01 read node09's readings"
    );
}

#[tokio::test]
async fn a_wrong_password_an_unknown_user_and_no_login_are_refused() {
    let b = broker();
    for (id, credentials) in [
        ("bad-password", Some(("node01", "wrong"))),
        ("unknown-user", Some(("node99", "pw-node99"))),
        ("anonymous", None),
    ] {
        match WireClient::connect(b.port(), id, credentials).await {
            // MQTT 3.1.1 CONNACK code 5, what Mosquitto answers for all three.
            Err(ConnectFailure::Refused(ConnectReturnCode::NotAuthorized)) => {}
            Err(other) => panic!("{id}: expected CONNACK 5 (not authorised), got {other:?}"),
            Ok(_) => panic!("{id}: the broker let the client in"),
        }
    }
}

/// The daemon with a wrong MQTT password says so in its log: the broker's refusal, by name,
/// and that it keeps retrying.
#[test]
fn the_daemon_logs_a_refused_connect_by_its_reason() {
    let b = broker();
    let dir = TempDir::new("mqtt-acl-daemon");
    let config = dir.path().join("coolantd.toml");
    let text = sim_config_text(
        free_port(),
        &dir.path().join("state"),
        &[("period_ms = 1000", "period_ms = 100")],
        &format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"ctrl-rack01\"\npassword = \"wrong\"\n",
            b.port()
        ),
    );
    std::fs::write(&config, text).expect("write config");
    let d = DaemonProcess::spawn(
        std::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config),
    );
    let line = d.wait_line(
        "a log line about the refused MQTT connection",
        Duration::from_secs(30),
        |l| l.contains("MQTT") && l.contains("NotAuthorized"),
    );
    assert!(
        line.contains("refused"),
        "the line does not say the broker refused: {line}"
    );
    assert!(
        b.log().contains("not authorised"),
        "the broker did not refuse the daemon:\n{}",
        b.log()
    );
}

/// Over MQTT 5 the broker says no: a controller's denied publish gets PUBACK reason 0x87
/// (not authorised), so a controller on MQTT 5 can tell a refused cap from a lost one.
#[tokio::test]
async fn over_mqtt5_a_denied_cap_is_answered_not_authorised() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let b = broker();
    let mut o = MqttOptions::new("ctrl-rack01-v5", "127.0.0.1", b.port());
    o.set_credentials("ctrl-rack01", "pw-ctrl-rack01");
    let (client, mut el) = AsyncClient::new(o, 16);
    let mut acks = Vec::new();
    // Its own host first, then a host of rack 2; the broker answers in order.
    for host in ["node01", "node09"] {
        client
            .publish(
                Topic::format(PREFIX, host, Kind::Caps),
                QoS::AtLeastOnce,
                false,
                lease(host, 1),
            )
            .await
            .expect("queue publish");
    }
    let deadline = tokio::time::Instant::now() + ANSWER;
    while acks.len() < 2 {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => acks.push(a.reason),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("MQTT 5 connection failed: {e}\n{}", b.log()),
            Err(_) => panic!("PUBACKs within {ANSWER:?}: got {acks:?}"),
        }
    }
    assert!(
        matches!(
            acks[0],
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ),
        "caps for its own host: {:?}",
        acks[0]
    );
    assert_eq!(
        acks[1],
        PubAckReason::NotAuthorized,
        "caps for node09, not its host"
    );
}
