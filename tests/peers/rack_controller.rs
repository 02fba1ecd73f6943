//! The controller hears its rack (issue 9, item 2): the daemon on the simulated CDU takes the
//! GPUs of two remote hosts × 8 GPUs from a real Mosquitto, published by test-side agents with
//! the wire format (`coolantd::wire`), and sends them power caps as leases. The daemon is
//! stepped in lockstep, so every reaction is counted in ticks.
//!
//! Figures (period 1 s, `[rack] stale_after_ms = 2000`, `hold_ticks` 1):
//! - a GPU at its slowdown threshold: its cap lease leaves in the tick that hears it (1 tick);
//! - a leak: every remote GPU capped to its minimum in the leak's tick (1 tick);
//! - a host gone silent: lost input (`rack_host_lost`, Degraded) 3 ticks after its last reading
//!   (2 s of staleness, then the core's hold);
//! - a last will: lost in the tick that hears it, Failsafe with every GPU unknown within 2;
//! - a lease nobody acknowledges (`ack_timeout_ms = 1000`, `retries_before_alarm = 2`): sent
//!   again the next tick with the same id, alarmed at the third send (3 ticks);
//! - a reload adding and removing a host: in effect from the next tick.

use coolantd::model::{Actuation, ControlState, Snapshot};
use coolantd::service::run::Daemon;
use coolantd::wire::{
    self, CapAck, CapLease, CapResult, Facts, GpuFacts, GpuReading, Kind, Readings, Status, Topic,
    VERSION,
};
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::sim_daemon::{self, free_port, TempDir};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const PREFIX: &str = "coolantd";
const HOSTS: [&str; 2] = ["node01", "node02"];
const GPUS: u32 = 8;
const SLOWDOWN_C: f32 = 87.0;
const POWER_MIN_W: f32 = 200.0;
const POWER_MAX_W: f32 = 700.0;

/// A test-side agent: one MQTT session per host, with the wire format's last will.
struct Agent {
    host: String,
    session: u64,
    seq: u64,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    async fn start(port: u16, host: &str, session: u64) -> Agent {
        let mut o = MqttOptions::new(format!("test-agent-{host}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let will = Status {
            v: Some(VERSION),
            host: host.to_string(),
            session,
            online: false,
            sent_unix_ms: 0,
        };
        o.set_last_will(LastWill::new(
            Topic::format(PREFIX, host, Kind::Status),
            wire::encode(&will).expect("encode will"),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut el) = AsyncClient::new(o, 64);
        let task = tokio::spawn(async move {
            loop {
                if el.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        let a = Agent {
            host: host.to_string(),
            session,
            seq: 0,
            client,
            task,
        };
        a.publish(Kind::Status, &a.status(true), true).await;
        a.publish(Kind::Facts, &a.facts(), true).await;
        a
    }

    fn status(&self, online: bool) -> Status {
        Status {
            v: Some(VERSION),
            host: self.host.clone(),
            session: self.session,
            online,
            sent_unix_ms: 0,
        }
    }

    fn facts(&self) -> Facts {
        let gpus = (0..GPUS)
            .map(|index| GpuFacts {
                index,
                uuid: format!("GPU-{}-{index}", self.host),
                board: "NVIDIA H200".into(),
                profile: "h200-sxm".into(),
                slowdown_c: SLOWDOWN_C,
                shutdown_c: 92.0,
                gpu_max_c: 85.0,
                hbm_max_c: 95.0,
                power_min_w: POWER_MIN_W,
                power_max_w: POWER_MAX_W,
                power_default_w: POWER_MAX_W,
                original_limit_w: POWER_MAX_W,
            })
            .collect();
        Facts::new(&self.host, self.session, gpus)
    }

    async fn publish<M: wire::WireMessage>(&self, kind: Kind, m: &M, retain: bool) {
        self.client
            .publish(
                Topic::format(PREFIX, &self.host, kind),
                QoS::AtLeastOnce,
                retain,
                wire::encode(m).expect("encode"),
            )
            .await
            .expect("queue publish");
    }

    /// One reading of every GPU; `hot` GPUs at the slowdown threshold.
    async fn readings(&mut self, hot: &[u32]) {
        self.seq += 1;
        // A small wobble, so no reading looks stuck to the plausibility gate.
        let wobble = (self.seq % 3) as f32 * 0.1;
        let gpus = (0..GPUS)
            .map(|index| GpuReading {
                index,
                core_c: Some(if hot.contains(&index) {
                    SLOWDOWN_C
                } else {
                    55.0 + wobble + index as f32 * 0.2
                }),
                hbm_c: Some(60.0 + wobble),
                power_w: Some(650.0),
                limit_w: Some(POWER_MAX_W),
                ..Default::default()
            })
            .collect();
        let r = Readings {
            v: Some(VERSION),
            host: self.host.clone(),
            session: self.session,
            seq: self.seq,
            gpus,
            ..Default::default()
        };
        self.publish(Kind::Readings, &r, false).await;
    }

    async fn ack(&self, lease: &CapLease) {
        let ack = CapAck {
            v: Some(VERSION),
            host: self.host.clone(),
            session: self.session,
            id: lease.id,
            dry_run: false,
            results: lease
                .caps
                .iter()
                .map(|c| CapResult::enforced(c.index, coolantd::units::Watts(f64::from(c.limit_w))))
                .collect(),
        };
        self.publish(Kind::Acks, &ack, false).await;
    }

    /// Dies without a goodbye: the socket closes, the broker fires the last will.
    fn kill(self) {
        self.task.abort();
    }
}

/// Receives the leases the controller publishes.
struct Leases {
    rx: mpsc::UnboundedReceiver<CapLease>,
    _client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Leases {
    async fn listen(port: u16) -> Leases {
        let o = MqttOptions::new("test-lease-listener", "127.0.0.1", port);
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let lease = wire::decode::<CapLease>(&p.payload)
                            .unwrap_or_else(|e| panic!("a lease that does not decode: {e}"));
                        let _ = tx.send(lease);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        client
            .subscribe(format!("{PREFIX}/v1/host/+/caps"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(Duration::from_secs(5), sub_rx.recv())
            .await
            .expect("SUBACK within 5 s");
        Leases {
            rx,
            _client: client,
            task,
        }
    }

    /// Every lease that arrives within `window`.
    async fn collect(&mut self, window: Duration) -> Vec<CapLease> {
        let deadline = tokio::time::Instant::now() + window;
        let mut v = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            v.push(m);
        }
        v
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Rig {
    _broker: Mosquitto,
    dir: TempDir,
    text: String,
    port: u16,
    d: Daemon,
    t: u64,
}

impl Rig {
    async fn new() -> Rig {
        Rig::with(&[]).await
    }

    /// A rig with more text replaced in the configuration.
    async fn with(more: &[(&str, &str)]) -> Rig {
        Rig::with_rack(more, "").await
    }

    /// [`Rig::with`], with `rack` added to the `[rack]` section.
    async fn with_rack(more: &[(&str, &str)], rack: &str) -> Rig {
        let broker = Mosquitto::start();
        let port = broker.port();
        let dir = TempDir::new("rack-controller");
        let mut replace = vec![
            // The controller has no GPUs of its own: all of them are remote.
            ("backend = \"simulated\"", "backend = \"none\""),
            (
                "timeout_ms = 200",
                "timeout_ms = 200\nhosts = [\"node01\", \"node02\"]",
            ),
        ];
        replace.extend_from_slice(more);
        let text = sim_daemon::sim_config_text(
            free_port(),
            dir.path(),
            &replace,
            &format!(
                "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\n\
                 [rack]\nstale_after_ms = 2000\nack_timeout_ms = 1000\nlease_ms = 30000\n\
                 retries_before_alarm = 2\n{rack}"
            ),
        );
        let d = sim_daemon::build(&text, dir.path(), true).await;
        Rig {
            _broker: broker,
            dir,
            text,
            port,
            d,
            t: 0,
        }
    }

    /// One tick, one second of plant time later. The sleep before it lets what the agents
    /// published reach the controller's session through the broker (loopback).
    async fn tick(&mut self) -> Arc<Snapshot> {
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.t += 1;
        if let Some(sim) = self.d.sim() {
            sim.step(Duration::from_secs(1));
        }
        self.d.tick(Duration::from_secs(self.t)).await
    }
}

impl Rig {
    /// Reloads the configuration with `hosts` for the CDU, as SIGHUP does.
    fn reload_hosts(&mut self, hosts: &str) -> anyhow::Result<()> {
        let text = self.text.replace(
            "hosts = [\"node01\", \"node02\"]",
            &format!("hosts = {hosts}"),
        );
        let path = self.dir.path().join("site.toml");
        std::fs::write(&path, text).expect("write config");
        let cfg = coolantd::config::Config::load(&path).map_err(anyhow::Error::from)?;
        self.d.reload(cfg)
    }
}

fn remote_gpus(s: &Snapshot) -> usize {
    s.gpus
        .iter()
        .filter(|g| HOSTS.contains(&g.key.host.as_str()))
        .count()
}

fn host_online(s: &Snapshot, host: &str) -> bool {
    s.rack
        .as_ref()
        .and_then(|r| r.hosts.iter().find(|h| h.host == host))
        .is_some_and(|h| h.online)
}

fn has_alarm(s: &Snapshot, id: &str) -> bool {
    s.alarms.iter().any(|a| a.id == id)
}

fn caps_in(s: &Snapshot, host: &str) -> BTreeMap<u32, f64> {
    s.decisions
        .iter()
        .filter_map(|a| match a {
            Actuation::SetPowerCap { gpu, limit } if gpu.host == host => {
                Some((gpu.index, limit.get()))
            }
            _ => None,
        })
        .collect()
}

/// Acknowledges every lease received so far, as a healthy agent does.
async fn ack_all(leases: &mut Leases, agents: &[Agent]) {
    for l in leases.collect(Duration::from_millis(20)).await {
        if let Some(a) = agents.iter().find(|a| a.host == l.host) {
            a.ack(&l).await;
        }
    }
}

/// Brings both agents up and ticks until the controller sees their 16 GPUs and runs; the
/// agents acknowledge every lease meanwhile.
async fn rack_up(rig: &mut Rig, leases: &mut Leases) -> Vec<Agent> {
    let mut agents = Vec::new();
    for (i, h) in HOSTS.iter().enumerate() {
        agents.push(Agent::start(rig.port, h, 0x1000 + i as u64).await);
    }
    for n in 1..=30 {
        for a in &mut agents {
            a.readings(&[]).await;
        }
        ack_all(leases, &agents).await;
        let s = rig.tick().await;
        if remote_gpus(&s) == 16 && HOSTS.iter().all(|h| host_online(&s, h)) {
            break;
        }
        assert!(n < 30, "the remote GPUs never showed: {:?}", s.rack);
    }
    // Past the start-up alarm suppression (30 s of plant time), so that every alarm shows.
    for n in 1..=40 {
        for a in &mut agents {
            a.readings(&[]).await;
        }
        ack_all(leases, &agents).await;
        let s = rig.tick().await;
        if rig.t > 31 && s.state == ControlState::Running {
            break;
        }
        assert!(
            n < 40,
            "the controller never ran on its remote GPUs: {:?} {:?}",
            s.state,
            s.alarms
        );
    }
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_gpus_hot_gpu_silence_and_last_will() {
    if !coolantd_testkit::modbus_common::have_peer("/usr/sbin/mosquitto", "mosquitto") {
        return;
    }
    let mut rig = Rig::new().await;
    let mut leases = Leases::listen(rig.port).await;
    let mut agents = rack_up(&mut rig, &mut leases).await;

    // The status shows every remote GPU with its temperature.
    let s = rig.tick().await;
    let rack = s.rack.as_ref().expect("a rack in /status");
    assert_eq!(rack.hosts.len(), 2);
    for h in &rack.hosts {
        assert_eq!(h.gpus, 8, "{h:?}");
        assert!(h.last_seq.is_some(), "{h:?}");
    }
    assert!(s.gpus.iter().all(|g| g.core.is_some()), "{:?}", s.gpus);

    // An unknown host is ignored and counted.
    let mut stranger = Agent::start(rig.port, "node99", 0x99).await;
    stranger.readings(&[]).await;
    for a in &mut agents {
        a.readings(&[]).await;
    }
    let s = rig.tick().await;
    let rack = s.rack.as_ref().expect("rack");
    assert!(rack.unknown_host_messages >= 1, "{rack:?}");
    assert!(!s.gpus.iter().any(|g| g.key.host == "node99"));
    assert_eq!(remote_gpus(&s), 16);

    // A remote GPU at its slowdown threshold: its cap leaves in the tick that hears it.
    let _ = leases.collect(Duration::from_millis(100)).await;
    agents[0].readings(&[3]).await;
    agents[1].readings(&[]).await;
    let s = rig.tick().await;
    let caps = caps_in(&s, "node01");
    assert_eq!(
        caps.get(&3).copied(),
        Some(f64::from(POWER_MIN_W)),
        "node01/gpu3 capped to its minimum in the tick that heard it: {:?}",
        s.decisions
    );
    let got = leases.collect(Duration::from_millis(500)).await;
    let lease = got
        .iter()
        .rev()
        .find(|l| l.host == "node01")
        .unwrap_or_else(|| panic!("no lease for node01: {got:?}"));
    assert!(
        lease
            .caps
            .iter()
            .any(|c| c.index == 3 && (c.limit_w - POWER_MIN_W).abs() < 0.5),
        "{lease:?}"
    );
    let acks_before = s.rack.as_ref().expect("rack").caps_acks;
    let pending = s.rack.as_ref().expect("rack").hosts[0].caps_pending;
    assert!(pending, "a sent lease waits for its acknowledgement");
    // The agent acknowledges; the controller takes it.
    agents[0].ack(lease).await;
    for a in &mut agents {
        a.readings(&[]).await;
    }
    let s = rig.tick().await;
    let rack = s.rack.as_ref().expect("rack");
    assert_eq!(rack.caps_acks, acks_before + 1, "{rack:?}");
    // (A new lease may already be pending: gpu3 is cool again, and its cap rises back.)
    let h = &rack.hosts[0];
    assert!(
        h.caps_acked_w
            .iter()
            .any(|(i, w)| *i == 3 && (*w - f64::from(POWER_MIN_W)).abs() < 0.5),
        "{h:?}"
    );

    // node02 goes silent: its GPUs become lost inputs once stale (2 s), then the core's hold.
    let mut ticks = 0;
    loop {
        agents[0].readings(&[]).await;
        let s = rig.tick().await;
        ticks += 1;
        if has_alarm(&s, "rack_host_lost:node02")
            && s.alarms
                .iter()
                .any(|a| a.id.starts_with("gpu_input:node02"))
        {
            assert!(!host_online(&s, "node02"));
            assert_eq!(s.state, ControlState::Degraded, "{:?}", s.alarms);
            break;
        }
        assert!(
            ticks < 4,
            "node02 silent for {ticks} ticks and not lost: {:?}",
            s.alarms
        );
    }
    eprintln!("silent host → lost input, Degraded: {ticks} ticks");
    assert_eq!(ticks, 3, "stale after 2 s, lost in the third tick");

    // node01's agent dies without a goodbye: its last will makes it lost at once, and with
    // every GPU temperature unknown the CDU goes to Failsafe.
    let a0 = agents.remove(0);
    a0.kill();
    let mut ticks = 0;
    loop {
        let s = rig.tick().await;
        ticks += 1;
        if s.state == ControlState::Failsafe {
            let rack = s.rack.as_ref().expect("rack");
            assert!(rack.hosts.iter().all(|h| !h.online), "{rack:?}");
            assert!(
                rack.hosts[0]
                    .lost
                    .as_deref()
                    .is_some_and(|l| l.contains("last will")),
                "{rack:?}"
            );
            break;
        }
        assert!(
            ticks < 3,
            "no failsafe {ticks} ticks after the last will: {:?}",
            s.state
        );
    }
    eprintln!("last will → Failsafe: {ticks} ticks");
    drop(stranger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_caps_every_remote_gpu_in_the_same_tick() {
    if !coolantd_testkit::modbus_common::have_peer("/usr/sbin/mosquitto", "mosquitto") {
        return;
    }
    let mut rig = Rig::new().await;
    let mut leases = Leases::listen(rig.port).await;
    let mut agents = rack_up(&mut rig, &mut leases).await;
    for _ in 0..3 {
        for a in &mut agents {
            a.readings(&[]).await;
        }
        rig.tick().await;
    }
    let _ = leases.collect(Duration::from_millis(100)).await;
    rig.d
        .sim()
        .expect("simulator")
        .plant()
        .lock()
        .expect("plant")
        .set_leak(true);
    for a in &mut agents {
        a.readings(&[]).await;
    }
    let s = rig.tick().await;
    assert_eq!(s.state, ControlState::Emergency, "{:?}", s.alarms);
    // In this one tick: a minimum cap for all 16 remote GPUs, and a lease to each host.
    for h in HOSTS {
        let caps = caps_in(&s, h);
        assert_eq!(caps.len(), 8, "{h}: {:?}", s.decisions);
        assert!(caps
            .values()
            .all(|w| (*w - f64::from(POWER_MIN_W)).abs() < 0.5));
    }
    let got = leases.collect(Duration::from_millis(500)).await;
    for h in HOSTS {
        let l = got
            .iter()
            .find(|l| l.host == h)
            .unwrap_or_else(|| panic!("no lease for {h}: {got:?}"));
        assert_eq!(l.caps.len(), 8, "{l:?}");
        assert!(l.caps.iter().all(|c| (c.limit_w - POWER_MIN_W).abs() < 0.5));
    }
    eprintln!("leak → every remote GPU capped: 1 tick (the leak's own)");
}

/// The real `coolantd run` binary (the service loop, in real time, 4× plant speed) hears the
/// test's agents: `/status` shows the 16 remote GPUs and both hosts, a hot remote GPU gets a
/// cap lease that the test acknowledges and `/status` then shows, and an unknown host is
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coolantd_binary_hears_its_rack_and_caps_a_hot_remote_gpu() {
    use coolantd_testkit::daemon_process::DaemonProcess;
    if !coolantd_testkit::modbus_common::have_peer("/usr/sbin/mosquitto", "mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let port = broker.port();
    let dir = TempDir::new("rack-binary");
    let http = free_port();
    let text = sim_daemon::sim_config_text(
        free_port(),
        dir.path(),
        &[
            ("backend = \"simulated\"", "backend = \"none\""),
            (
                "timeout_ms = 200",
                "timeout_ms = 200\nhosts = [\"node01\", \"node02\"]",
            ),
            ("time_scale = 1.0", "time_scale = 4.0"),
        ],
        &format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n\n\
             [rack]\nstale_after_ms = 3000\n"
        ),
    );
    let config = dir.path().join("site.toml");
    std::fs::write(&config, text).expect("write config");
    let _proc = DaemonProcess::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_coolantd"))
            .args(["run", "--config"])
            .arg(&config),
    );
    let mut leases = Leases::listen(port).await;
    let mut agents = Vec::new();
    for (i, h) in HOSTS.iter().enumerate() {
        agents.push(Agent::start(port, h, 0x2000 + i as u64).await);
    }
    let mut stranger = Agent::start(port, "node99", 0x99).await;
    let status = |what: &str| -> serde_json::Value {
        let (code, body) = sim_daemon::http_get(http, "/status");
        assert_eq!(code, 200, "{what}: /status answered {code}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"))
    };
    let ready = |s: &serde_json::Value| -> bool {
        let gpus = s["gpus"].as_array().map_or(0, |g| {
            g.iter()
                .filter(|g| {
                    g["host"]
                        .as_str()
                        .or(g["key"]["host"].as_str())
                        .is_some_and(|h| HOSTS.contains(&h))
                })
                .count()
        });
        let online = s["rack"]["hosts"]
            .as_array()
            .is_some_and(|h| h.len() == 2 && h.iter().all(|h| h["online"] == true));
        gpus == 16 && online
    };
    // Agents publish every 100 ms (a period is 250 ms of wall time).
    let mut seen = None;
    for _ in 0..300 {
        for a in &mut agents {
            a.readings(&[]).await;
        }
        stranger.readings(&[]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (code, body) = sim_daemon::http_get(http, "/status");
        if code == 200 {
            let s: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
            if ready(&s) {
                seen = Some(s);
                break;
            }
        }
    }
    // The rack's part of /status follows docs/schemas/status.schema.json.
    if let Some(s) = &seen {
        crate::json_schemas::validate("status.schema.json", s.to_string().as_bytes());
    }
    let s = seen.unwrap_or_else(|| {
        panic!(
            "/status never showed both hosts' 16 GPUs: {}",
            status("last")
        )
    });
    assert!(
        s["rack"]["unknown_host_messages"].as_u64().unwrap_or(0) >= 1,
        "{}",
        s["rack"]
    );
    for h in s["rack"]["hosts"].as_array().expect("hosts") {
        assert!(h["last_seq"].as_u64().is_some(), "{h}");
        assert_eq!(h["gpus"], 8, "{h}");
    }

    // The same per host on /metrics (measurement `rack_host`).
    let (code, metrics) = sim_daemon::http_get(http, "/metrics");
    assert_eq!(code, 200);
    for h in HOSTS {
        assert!(
            metrics.lines().any(|l| l.starts_with("rack_host_online")
                && l.contains(&format!("remote_host=\"{h}\""))),
            "no rack_host_online for {h} on /metrics:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("rack"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // node02's gpu5 at its slowdown threshold: a lease capping it to its minimum.
    let t0 = status("before the hot GPU")["tick"].as_u64().expect("tick");
    let _ = leases.collect(Duration::from_millis(50)).await;
    let mut lease = None;
    for _ in 0..50 {
        agents[0].readings(&[]).await;
        agents[1].readings(&[5]).await;
        let got = leases.collect(Duration::from_millis(100)).await;
        lease = got.into_iter().find(|l| {
            l.host == "node02"
                && l.caps
                    .iter()
                    .any(|c| c.index == 5 && (c.limit_w - POWER_MIN_W).abs() < 0.5)
        });
        if lease.is_some() {
            break;
        }
    }
    let lease = lease.expect("a lease capping node02/gpu5 to its minimum");
    let t1 = status("after the lease")["tick"].as_u64().expect("tick");
    eprintln!(
        "binary: hot remote GPU → lease within {} ticks as seen on /status",
        t1 - t0
    );
    assert!(t1 - t0 <= 3, "lease took {} ticks", t1 - t0);
    agents[1].ack(&lease).await;
    let mut acked = false;
    for _ in 0..50 {
        for a in &mut agents {
            a.readings(&[]).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = status("after the ack");
        if s["rack"]["caps_acks"].as_u64().unwrap_or(0) >= 1 {
            let h = &s["rack"]["hosts"][1];
            assert_eq!(h["host"], "node02");
            assert!(
                h["caps_acked_w"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c[0] == 5)),
                "{h}"
            );
            acked = true;
            break;
        }
    }
    assert!(
        acked,
        "/status never showed the acknowledgement: {}",
        status("last")["rack"]
    );
    drop(broker);
}

/// A reload adds and removes hosts: node03 joins and is heard; node02 leaves, its GPUs leave
/// the controller's inputs and the caps held on it are lifted with an empty lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_hosts() {
    if !coolantd_testkit::modbus_common::have_peer("/usr/sbin/mosquitto", "mosquitto") {
        return;
    }
    let mut rig = Rig::new().await;
    let mut leases = Leases::listen(rig.port).await;
    let mut agents = rack_up(&mut rig, &mut leases).await;
    // A cap held on node02, acknowledged.
    agents[0].readings(&[]).await;
    agents[1].readings(&[2]).await;
    rig.tick().await;
    let got = leases.collect(Duration::from_millis(500)).await;
    let lease = got
        .iter()
        .rev()
        .find(|l| l.host == "node02")
        .unwrap_or_else(|| panic!("no lease for node02: {got:?}"));
    agents[1].ack(lease).await;
    rig.tick().await;

    rig.reload_hosts("[\"node01\", \"node03\"]")
        .unwrap_or_else(|e| panic!("reload refused: {e:#}"));
    agents.push(Agent::start(rig.port, "node03", 0x3000).await);
    let _ = leases.collect(Duration::from_millis(50)).await;
    let mut lifted = false;
    for n in 1..=10 {
        for a in &mut agents {
            a.readings(&[]).await;
        }
        let s = rig.tick().await;
        lifted |= leases
            .collect(Duration::from_millis(100))
            .await
            .iter()
            .any(|l| l.host == "node02" && l.caps.is_empty());
        let hosts: Vec<&str> = s
            .rack
            .as_ref()
            .expect("rack")
            .hosts
            .iter()
            .map(|h| h.host.as_str())
            .collect();
        assert_eq!(hosts, ["node01", "node03"]);
        let on_node02 = s.gpus.iter().filter(|g| g.key.host == "node02").count();
        let on_node03 = s.gpus.iter().filter(|g| g.key.host == "node03").count();
        if host_online(&s, "node03") && on_node03 == 8 && on_node02 == 0 && lifted {
            eprintln!("reload: node03 heard and node02 gone in {n} ticks");
            break;
        }
        assert!(
            n < 10,
            "after the reload: node03 online {}, {on_node03} node03 GPUs, {on_node02} node02 GPUs, caps lifted {lifted}",
            host_online(&s, "node03")
        );
    }
    // The rack's own settings are not changed by a reload.
    rig.text = rig
        .text
        .replace("ack_timeout_ms = 1000", "ack_timeout_ms = 1500");
    let e = rig
        .reload_hosts("[\"node01\", \"node03\"]")
        .expect_err("a changed [rack] needs a restart");
    assert!(e.to_string().contains("[rack]"), "{e}");
}

/// A lease nobody acknowledges is sent again after `ack_timeout_ms` (1 tick here) under the
/// same correlation id, and after `retries_before_alarm` sends the alarm
/// `rack_cap_unacknowledged:<host>` is raised; the acknowledgement clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_cap_is_retried_then_alarmed() {
    if !coolantd_testkit::modbus_common::have_peer("/usr/sbin/mosquitto", "mosquitto") {
        return;
    }
    let mut rig = Rig::new().await;
    let mut leases = Leases::listen(rig.port).await;
    let mut agents = rack_up(&mut rig, &mut leases).await;
    let _ = leases.collect(Duration::from_millis(50)).await;
    let id = "rack_cap_unacknowledged:node01";
    let mut sent = Vec::new();
    let mut alarmed_after = None;
    for n in 1..=6 {
        agents[0].readings(&[4]).await;
        agents[1].readings(&[]).await;
        let s = rig.tick().await;
        sent.extend(
            leases
                .collect(Duration::from_millis(100))
                .await
                .into_iter()
                .filter(|l| l.host == "node01"),
        );
        if has_alarm(&s, id) {
            alarmed_after = Some(n);
            break;
        }
    }
    let n = alarmed_after.unwrap_or_else(|| panic!("no {id} alarm; leases sent: {sent:?}"));
    eprintln!(
        "unacknowledged cap → alarm: {n} ticks, {} sends",
        sent.len()
    );
    // Sent at ticks 1 and 2 (the retry), alarmed at the third send: retries_before_alarm = 2.
    assert_eq!(n, 3, "{sent:?}");
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(
        sent.windows(2).all(|w| w[0].id == w[1].id),
        "a retry repeats the same id: {sent:?}"
    );
    // The agent answers the lease in flight: the alarm clears.
    let last = sent.last().expect("a lease").clone();
    agents[0].ack(&last).await;
    agents[0].readings(&[4]).await;
    agents[1].readings(&[]).await;
    let s = rig.tick().await;
    assert!(!has_alarm(&s, id), "{:?}", s.alarms);
}

/// In dry run the controller decides the remote caps and publishes them as "would set", and
/// sends no lease: an agent must not cap a GPU for a controller that writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_controller_sends_no_lease() {
    if !coolantd_testkit::modbus_common::have_peer("/usr/sbin/mosquitto", "mosquitto") {
        return;
    }
    let mut rig = Rig::with(&[("name = \"sim\"", "name = \"sim\"\ndry_run = true")]).await;
    let mut leases = Leases::listen(rig.port).await;
    let mut agents = rack_up(&mut rig, &mut leases).await;
    let mut decided = 0;
    for _ in 0..3 {
        agents[0].readings(&[1]).await;
        agents[1].readings(&[]).await;
        let s = rig.tick().await;
        assert!(s.dry_run);
        // Not one lease since start (warm-up included).
        assert_eq!(s.rack.as_ref().expect("rack").caps_sent, 0);
        decided += caps_in(&s, "node01").len();
    }
    assert!(decided >= 1, "the hot GPU's cap was decided (would set)");
    let got = leases.collect(Duration::from_millis(500)).await;
    assert!(got.is_empty(), "a dry run sent leases: {got:?}");
}

/// A tick waits, up to its decision offset, for the readings of online hosts that are still
/// on their way (`Rack::wait_round`), decides on them in that tick, and counts their age at
/// the decision in `rack.latency`. The offset is long here (400 ms) so that the readings'
/// 50 ms lateness is well inside it on a busy machine: the test is about what the tick
/// uses, not how fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_waits_for_readings_still_on_their_way_and_counts_their_age() {
    if !coolantd_testkit::modbus_common::have_peer("/usr/sbin/mosquitto", "mosquitto") {
        return;
    }
    let mut rig = Rig::with_rack(&[], "decide_offset_ms = 400\n").await;
    let mut leases = Leases::listen(rig.port).await;
    let mut agents = rack_up(&mut rig, &mut leases).await;
    let before = rig.tick().await;
    let was = before
        .rack
        .as_ref()
        .expect("rack")
        .latency
        .reading_age
        .clone();

    // The readings leave 50 ms after the tick began.
    tokio::time::sleep(Duration::from_millis(150)).await;
    rig.t += 1;
    if let Some(sim) = rig.d.sim() {
        sim.step(Duration::from_secs(1));
    }
    let late = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for a in &mut agents {
            a.readings(&[]).await;
        }
    };
    let (s, ()) = tokio::join!(rig.d.tick(Duration::from_secs(rig.t)), late);
    let rack = s.rack.as_ref().expect("rack");
    for (h, a) in rack.hosts.iter().zip(&agents) {
        assert_eq!(h.host, a.host);
        assert_eq!(
            h.last_seq,
            Some(a.seq),
            "the tick decided without the reading on its way: {rack:?}"
        );
    }
    let age = &rack.latency.reading_age;
    assert_eq!(age.count, was.count + 2, "{age:?}");
    // Both came off the socket after the tick began, the later one completing the round:
    // their ages at the decision are the few ms between them, far under the 50 ms they
    // were late and the 400 ms the tick would have waited.
    let added_ms = age.sum_ms - was.sum_ms;
    assert!(added_ms < 100.0, "{added_ms} ms for two readings: {age:?}");
}
