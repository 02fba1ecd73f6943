//! One sharded layout for real: two Mosquitto brokers joined by Mosquitto's own bridge, with
//! the bridge settings shipped in `config/mosquitto/bridge.conf`. Broker A holds the agents
//! (with the shipped ACL and a password file; the bridge logs in as `bridge-b`), broker B
//! makes the bridge connection and holds the controller. Wire `Readings` published on A
//! arrive decoded on B, once each; a `CapLease` published on B reaches the agent on A.

use coolantd::wire::{self, Cap, CapLease, GpuReading, Kind, Readings, Topic};
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::wire_client::{WireClient, ANSWER};
use coolantd_testkit::{free_port, repo_root};
use std::time::Duration;

const PREFIX: &str = "coolantd";
const HOST: &str = "node01";
const USERS: [(&str, &str); 2] = [("node01", "pw-node01"), ("bridge-b", "pw-bridge-b")];

/// The shipped bridge settings pointed at broker A on loopback, with the test's bridge
/// password and without TLS (the test brokers listen in plain text).
fn bridge_conf(port_a: u16) -> String {
    let shipped = std::fs::read_to_string(repo_root().join("config/mosquitto/bridge.conf"))
        .expect("config/mosquitto/bridge.conf is readable");
    for needed in [
        "address broker-a.example:8883",
        "remote_password change-me",
        "bridge_cafile ",
    ] {
        assert!(
            shipped.contains(needed),
            "bridge.conf no longer has {needed:?}"
        );
    }
    shipped
        .lines()
        .filter(|l| !l.starts_with("bridge_cafile "))
        .map(|l| match l {
            "address broker-a.example:8883" => format!("address 127.0.0.1:{port_a}"),
            "remote_password change-me" => "remote_password pw-bridge-b".to_string(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn readings(seq: u64) -> Vec<u8> {
    wire::encode(&Readings {
        v: None,
        host: HOST.into(),
        session: 42,
        seq,
        sent_unix_ms: 1_764_000_000_000,
        facts_hash: 3,
        gpus: (0..8)
            .map(|index| GpuReading {
                index,
                core_c: Some(55.0 + index as f32),
                hbm_c: Some(60.0),
                power_w: Some(650.5),
                limit_w: Some(700.0),
                throttle: Some(4),
                energy_mj: Some(9_000_000_000),
            })
            .collect(),
    })
    .expect("valid readings")
}

#[tokio::test]
async fn readings_cross_the_bridge_to_the_controller_and_caps_come_back() {
    let a = Mosquitto::start_with_auth(
        &USERS,
        &repo_root().join("config/mosquitto/coolantd.acl"),
        "",
    );
    let b = Mosquitto::start_with(free_port(), &bridge_conf(a.port()));

    let mut agent = WireClient::connect(a.port(), "agent-node01", Some(USERS[0]))
        .await
        .unwrap_or_else(|e| panic!("agent refused on A: {e:?}\n{}", a.log()));
    let mut ctrl = WireClient::connect(b.port(), "ctrl-rack01", None)
        .await
        .unwrap_or_else(|e| panic!("controller refused on B: {e:?}\n{}", b.log()));
    agent
        .subscribe(&Topic::format(PREFIX, HOST, Kind::Caps))
        .await;
    ctrl.subscribe(&Topic::host_filter(PREFIX, HOST)).await;
    let readings_topic = Topic::format(PREFIX, HOST, Kind::Readings);

    // The bridge connects and subscribes on A asynchronously: probe until one reading has
    // crossed (seq from 1 up), bounded, then test with fresh sequence numbers.
    let mut probe = 0;
    let crossed = loop {
        probe += 1;
        assert!(
            probe <= 50,
            "no reading crossed the bridge after {probe} probes;\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        agent.publish_acked(&readings_topic, readings(probe)).await;
        if let Some(m) = ctrl.next(Duration::from_millis(200)).await {
            break m;
        }
    };
    assert_eq!(crossed.0, readings_topic);
    // Later probes may still be on their way; skip them.
    let mut last_probe = wire::decode::<Readings>(&crossed.1).expect("decodes").seq;
    while last_probe < probe {
        let (_, p) = ctrl.next(ANSWER).await.expect("the remaining probes");
        last_probe = wire::decode::<Readings>(&p).expect("decodes").seq;
    }

    agent.publish_acked(&readings_topic, readings(1000)).await;
    agent.publish_acked(&readings_topic, readings(1001)).await;
    let (t, payload) = ctrl.next(ANSWER).await.expect("readings 1000 on B");
    assert_eq!(t, readings_topic);
    let r: Readings = wire::decode(&payload).expect("the bridged readings decode");
    assert_eq!((r.host.as_str(), r.session, r.seq), (HOST, 42, 1000));
    assert_eq!(r.gpus.len(), 8);
    assert_eq!(r.gpus[7].core_c, Some(62.0));
    assert_eq!(r.gpus[3].energy_mj, Some(9_000_000_000));
    // Once only: the next message is the next reading, not a copy looped back by the bridge.
    let (_, payload) = ctrl.next(ANSWER).await.expect("readings 1001 on B");
    assert_eq!(
        wire::decode::<Readings>(&payload).expect("decodes").seq,
        1001
    );

    let lease = CapLease {
        v: None,
        host: HOST.into(),
        id: 77,
        lease_ms: 3000,
        caps: vec![Cap {
            index: 2,
            limit_w: 480.0,
        }],
    };
    ctrl.publish_acked(
        &Topic::format(PREFIX, HOST, Kind::Caps),
        wire::encode(&lease).expect("valid lease"),
    )
    .await;
    let (t, payload) = agent
        .next(ANSWER)
        .await
        .unwrap_or_else(|| panic!("no cap lease reached A;\nB:\n{}", b.log()));
    assert_eq!(t, Topic::format(PREFIX, HOST, Kind::Caps));
    let got: CapLease = wire::decode(&payload).expect("the bridged lease decodes");
    assert_eq!((got.id, got.lease_ms), (77, 3000));
    assert_eq!((got.caps[0].index, got.caps[0].limit_w), (2, 480.0));
}
