//! The rig of the rack fault tests: agent and controller configurations and processes, the
//! controller's `/status` read as ticks, a subscriber to every wire topic, a sampler that
//! maps instants to controller ticks, and an emulated agent whose clock is off.

use coolantd::wire::{self, Facts, GpuFacts, GpuReading, Readings, Status};
use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::modbus_proxy::{self, Proxy};
use coolantd_testkit::sim_daemon::{http_get, sim_config_text};
use coolantd_testkit::{free_port, repo_root};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Controller and agent period, ms.
pub(super) const PERIOD_MS: u64 = 200;
pub(super) const STALE_MS: u64 = 600;
pub(super) const LEASE_MS: u64 = 2_000;
pub(super) const CONFLICT_MS: u64 = 1_000;
/// Bound on anything done once (a start, a connection), not a reaction under test.
pub(super) const BOUND: Duration = Duration::from_secs(30);
/// The simulated H200's power range, W (firmware-profiles/gpu/h200-sxm.toml).
pub(super) const H200_MIN_W: f32 = 200.0;
pub(super) const H200_DEFAULT_W: f32 = 700.0;

pub(super) fn have_mosquitto() -> bool {
    coolantd_testkit::modbus_common::have_peer("/usr/sbin/mosquitto", "mosquitto")
}

pub(super) fn topic(host: &str, kind: &str) -> String {
    format!("coolantd/v1/host/{host}/{kind}")
}

// ---------------------------------------------------------------------------------------
// Agents

/// A `coolantd agent` configuration for `host` on `gpus` simulated H200s, talking to the
/// broker on `broker`, with its own client id and state folder (two agents may claim one
/// host).
pub(super) fn agent_config(
    dir: &Path,
    host: &str,
    client: &str,
    broker: u16,
    gpus: u32,
) -> PathBuf {
    let root = repo_root();
    let text = format!(
        r#"
[site]
name = "rack1"
host = "{host}"
state_dir = {state:?}
profiles_dir = {profiles:?}
dry_run = false

[gpus]
backend = "simulated"

[simulator]
gpus_per_host = {gpus}
gpu_profile = "h200-sxm"
cdu_profile = "sim-cdu"
listen = "127.0.0.1:{sim_port}"
workload = {{ kind = "idle" }}

[mqtt]
host = "127.0.0.1"
port = {broker}
client_id = "{client}"
keep_alive_s = 5
reconnect_min_ms = 100
reconnect_max_ms = 400

[agent]
period_ms = {PERIOD_MS}
"#,
        state = dir.join(format!("state-{client}")).display().to_string(),
        profiles = root.join("firmware-profiles").display().to_string(),
        sim_port = free_port(),
    );
    let path = dir.join(format!("{client}.toml"));
    std::fs::write(&path, text).expect("write the agent's configuration");
    path
}

/// How a freshly spawned process ended its start.
enum Start {
    Up,
    /// A port picked by `free_port` was taken by another process before this one bound it
    /// (the race `free_port` accepts); worth another try on a fresh port.
    PortTaken,
}

/// Waits until `up` says the process started, or it exits; any other exit fails the test.
/// Blocks its runtime worker (a start takes well under a second), so the tests run on the
/// multi-threaded runtime and the other worker serves the proxies and subscribers meanwhile.
fn started(p: &mut DaemonProcess, what: &str, up: impl Fn(&DaemonProcess) -> bool) -> Start {
    tokio::task::block_in_place(|| wait_started(p, what, up))
}

fn wait_started(p: &mut DaemonProcess, what: &str, up: impl Fn(&DaemonProcess) -> bool) -> Start {
    let t0 = Instant::now();
    loop {
        if up(p) {
            return Start::Up;
        }
        if let Some(st) = p.try_wait() {
            let log = p.log();
            if log.contains("Address already in use") {
                return Start::PortTaken;
            }
            panic!("{what} exited with {st} while starting; log:\n{log}");
        }
        assert!(
            t0.elapsed() < BOUND,
            "{what} did not start within {BOUND:?}; log:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `coolantd agent --config config` and waits until it runs; a simulator port taken
/// meanwhile is replaced by a fresh one in the file and the start tried again.
pub(super) fn spawn_agent(config: &Path) -> DaemonProcess {
    for _ in 0..3 {
        let mut p = DaemonProcess::spawn(
            Command::new(env!("CARGO_BIN_EXE_coolantd"))
                .arg("agent")
                .arg("--config")
                .arg(config),
        );
        match started(&mut p, "the agent", |p| p.log().contains("agent started")) {
            Start::Up => return p,
            Start::PortTaken => {
                let text = std::fs::read_to_string(config).expect("read the agent's configuration");
                let listen = text
                    .lines()
                    .find(|l| l.starts_with("listen = "))
                    .expect("a simulator listen line")
                    .to_string();
                let fresh = format!("listen = \"127.0.0.1:{}\"", free_port());
                std::fs::write(config, text.replace(&listen, &fresh))
                    .expect("write the agent's configuration");
            }
        }
    }
    panic!("the agent found its ports taken three times");
}

/// Starts one agent per host (`host` is also its client id), `gpus` GPUs each.
pub(super) fn spawn_agents(
    dir: &Path,
    broker: u16,
    hosts: &[&str],
    gpus: u32,
) -> Vec<DaemonProcess> {
    hosts
        .iter()
        .map(|h| spawn_agent(&agent_config(dir, h, h, broker, gpus)))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The controller

pub(super) struct Controller {
    pub(super) proc: DaemonProcess,
    pub(super) http: u16,
    /// Between the controller and its simulated CDU: a leak is a rewritten answer.
    cdu: Proxy,
    /// When the proxy first answered a read with the leak input set.
    leak_read_at: Arc<Mutex<Option<Instant>>>,
}

impl Controller {
    /// `coolantd run` on the simulated CDU (no GPUs of its own) for `hosts`, once `/status`
    /// answers; ports taken meanwhile by another process are replaced and the start tried
    /// again.
    pub(super) async fn start(dir: &Path, broker: u16, hosts: &[&str]) -> Controller {
        for _ in 0..3 {
            let mut c = Controller::spawn(dir, broker, hosts).await;
            let what = "the controller";
            let http = c.http;
            let up = |_: &DaemonProcess| http_get(http, "/status").0 == 200;
            match started(&mut c.proc, what, up) {
                Start::Up => return c,
                Start::PortTaken => {}
            }
        }
        panic!("the controller found its ports taken three times");
    }

    /// One start, on ports picked now.
    async fn spawn(dir: &Path, broker: u16, hosts: &[&str]) -> Controller {
        let sim_port = free_port();
        let cdu = Proxy::start(([127, 0, 0, 1], sim_port).into()).await;
        let http = free_port();
        let hosts_toml = format!(
            "[{}]",
            hosts
                .iter()
                .map(|h| format!("{h:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let text = sim_config_text(
            sim_port,
            dir,
            &[
                ("backend = \"simulated\"", "backend = \"none\""),
                (
                    "timeout_ms = 200",
                    &format!("timeout_ms = 100\nhosts = {hosts_toml}"),
                ),
                ("period_ms = 1000", &format!("period_ms = {PERIOD_MS}")),
            ],
            &format!(
                "[mqtt]\nhost = \"127.0.0.1\"\nport = {broker}\nkeep_alive_s = 5\n\
                 reconnect_min_ms = 100\nreconnect_max_ms = 400\n\n\
                 [http]\nlisten = \"127.0.0.1:{http}\"\n\n\
                 [rack]\nstale_after_ms = {STALE_MS}\nack_timeout_ms = 300\nlease_ms = {LEASE_MS}\n\
                 retries_before_alarm = 3\nconflict_clear_after_ms = {CONFLICT_MS}\n\n\
                 [control.supervisor]\nstartup_suppress_s = 0.0\nrecovery_hold_s = 1.0\n"
            ),
        )
        .replace(
            &format!("address = \"127.0.0.1:{sim_port}\""),
            &format!("address = \"{}\"", cdu.addr),
        );
        let config = dir.join("site.toml");
        std::fs::write(&config, text).expect("write the controller's configuration");
        let proc = DaemonProcess::spawn(
            Command::new(env!("CARGO_BIN_EXE_coolantd"))
                .args(["run", "--config"])
                .arg(&config),
        );
        Controller {
            proc,
            http,
            cdu,
            leak_read_at: Arc::new(Mutex::new(None)),
        }
    }

    /// `/status`, or `None` while the endpoint does not answer.
    pub(super) fn try_status(&self) -> Option<Value> {
        let (code, body) = http_get(self.http, "/status");
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    pub(super) fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("/status does not answer; log:\n{}", self.proc.log()))
    }

    pub(super) fn tick(&self) -> u64 {
        tick(&self.status())
    }

    /// Polls `/status` until `pred` holds and returns it; fails after `bound` with the last
    /// status and the log.
    pub(super) async fn until(
        &self,
        what: &str,
        bound: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        let mut last = Value::Null;
        loop {
            if let Some(s) = self.try_status() {
                if pred(&s) {
                    return s;
                }
                last = s;
            }
            assert!(
                t0.elapsed() < bound,
                "the controller: no {what} within {bound:?}; last /status: state {} alarms {} rack {}\nlog:\n{}",
                last["state"],
                alarm_ids(&last).join(","),
                last["rack"],
                self.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every host is online and the controller runs.
    pub(super) async fn rack_up(&self, hosts: &[&str]) -> Value {
        self.until("rack up and running", BOUND, |s| {
            hosts.iter().all(|h| online(s, h)) && s["state"] == "running"
        })
        .await
    }

    /// The CDU reports a leak from now on; the instant of the first such answer is kept.
    pub(super) fn leak(&self) {
        let at = self.leak_read_at.clone();
        let inner = modbus_proxy::cdu_fault_patch();
        self.cdu.set_patch(Some(Box::new(move |pdu: &mut Vec<u8>| {
            let leak_bits = pdu.first() == Some(&2);
            let hit = inner(pdu);
            if hit && leak_bits {
                let mut a = at.lock().expect("leak instant lock");
                a.get_or_insert_with(Instant::now);
            }
            hit
        })));
    }

    pub(super) fn leak_read_at(&self) -> Option<Instant> {
        *self.leak_read_at.lock().expect("leak instant lock")
    }
}

/// Samples the controller's tick every 10 ms in a thread of its own, so that instants seen
/// elsewhere (a Modbus answer, an acknowledgement at the broker) map to controller ticks.
pub(super) struct TickSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TickSampler {
    pub(super) fn start(http: u16) -> TickSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                let (code, body) = http_get(http, "/status");
                if code == 200 {
                    if let Some(t) = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["tick"].as_u64())
                    {
                        s.lock().expect("samples lock").push((Instant::now(), t));
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        TickSampler { samples, stop }
    }

    /// The controller's tick at `at`: the last one seen at or before it.
    pub(super) fn tick_at(&self, at: Instant) -> u64 {
        let s = self.samples.lock().expect("samples lock");
        s.iter()
            .take_while(|(t, _)| *t <= at)
            .last()
            .map(|(_, tick)| *tick)
            .unwrap_or_else(|| panic!("no tick sampled before {at:?}"))
    }
}

impl Drop for TickSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

pub(super) fn tick(s: &Value) -> u64 {
    s["tick"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tick in {s}"))
}

pub(super) fn rack_host<'a>(s: &'a Value, host: &str) -> &'a Value {
    s["rack"]["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == host))
        .unwrap_or(&Value::Null)
}

pub(super) fn online(s: &Value, host: &str) -> bool {
    rack_host(s, host)["online"] == true
}

pub(super) fn lost_reason(s: &Value, host: &str) -> String {
    rack_host(s, host)["lost"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub(super) fn alarm_ids(s: &Value) -> Vec<String> {
    s["alarms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|a| a["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn has_alarm(s: &Value, id: &str) -> bool {
    alarm_ids(s).iter().any(|a| a == id)
}

/// Whether every GPU of `host` is held at `watts` by an acknowledged lease.
pub(super) fn acked_at(s: &Value, host: &str, gpus: usize, watts: f64) -> bool {
    rack_host(s, host)["caps_acked_w"]
        .as_array()
        .is_some_and(|c| {
            c.len() == gpus
                && c.iter()
                    .all(|c| c[1].as_f64().is_some_and(|w| (w - watts).abs() < 0.5))
        })
}

// ---------------------------------------------------------------------------------------
// A subscriber to every wire topic

#[derive(Debug, Clone)]
pub(super) struct Msg {
    pub(super) at: Instant,
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    pub(super) retain: bool,
}

impl Msg {
    pub(super) fn decode<M: wire::WireMessage>(&self) -> M {
        wire::decode::<M>(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not a valid message: {e}", self.topic))
    }
}

/// Sees every wire message through the broker, with its arrival instant; resubscribes after
/// a broker restart.
pub(super) struct Tap {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    pub(super) async fn connect(port: u16, id: &str) -> Tap {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(64 * 1024, 64 * 1024);
        let (client, mut el) = AsyncClient::new(o, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let c = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe("coolantd/v1/#", QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Msg {
                            at: Instant::now(),
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(BOUND, sub_rx.recv())
            .await
            .expect("the tap's SUBACK");
        Tap { client, rx, task }
    }

    /// The next message that satisfies `pred`, within `bound`.
    pub(super) async fn next_where(
        &mut self,
        what: &str,
        bound: Duration,
        mut pred: impl FnMut(&Msg) -> bool,
    ) -> Msg {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) if pred(&m) => return m,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the tap stopped"),
                Err(_) => panic!("no {what} within {bound:?}"),
            }
        }
    }

    /// Every message that arrives within `window`.
    pub(super) async fn collect(&mut self, window: Duration) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + window;
        let mut v = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            v.push(m);
        }
        v
    }

    /// The next readings of `host` satisfying `pred`.
    pub(super) async fn readings_where(
        &mut self,
        host: &str,
        what: &str,
        bound: Duration,
        pred: impl Fn(&Readings) -> bool,
    ) -> (Readings, Instant) {
        let t = topic(host, "readings");
        let m = self
            .next_where(what, bound, |m| {
                m.topic == t && pred(&m.decode::<Readings>())
            })
            .await;
        (m.decode(), m.at)
    }

    pub(super) fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    pub(super) async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .expect("queue a publish");
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) fn limits(r: &Readings) -> Vec<f32> {
    r.gpus.iter().filter_map(|g| g.limit_w).collect()
}

pub(super) fn all_at(r: &Readings, watts: f32) -> bool {
    !r.gpus.is_empty()
        && r.gpus
            .iter()
            .all(|g| g.limit_w.is_some_and(|w| (w - watts).abs() < 0.5))
}

/// Lease ids an agent's log says it accepted, in order.
pub(super) fn accepted_ids(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("cap lease accepted"))
        .filter_map(|l| {
            let rest = l.split("id=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Prints a measured reaction and checks it against its bound.
pub(super) fn report(fault: &str, reaction: &str, ticks: u64, bound: u64) {
    eprintln!("rack fault: {fault} → {reaction}: {ticks} ticks (bound {bound})");
    assert!(
        ticks <= bound,
        "{fault} → {reaction} took {ticks} ticks, bound {bound}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. A clock 10 minutes off

/// An emulated agent whose wall clock is `offset_ms` off: its readings' `sent_unix_ms`
/// are that far from the truth. (The real agent stamps with the system clock, which a test
/// cannot move.)
pub(super) struct SkewedAgent {
    host: String,
    session: u64,
    seq: u64,
    offset_ms: i64,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl SkewedAgent {
    pub(super) async fn start(port: u16, host: &str, session: u64, offset_ms: i64) -> SkewedAgent {
        let mut o = MqttOptions::new(format!("skewed-{host}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let will = Status {
            v: Some(wire::VERSION),
            host: host.into(),
            session,
            online: false,
            sent_unix_ms: 0,
        };
        o.set_last_will(LastWill::new(
            topic(host, "status"),
            wire::encode(&will).expect("encode the will"),
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
        let a = SkewedAgent {
            host: host.into(),
            session,
            seq: 0,
            offset_ms,
            client,
            task,
        };
        let status = Status {
            online: true,
            sent_unix_ms: a.clock(),
            ..will
        };
        a.publish("status", wire::encode(&status).expect("encode"), true)
            .await;
        let gpus = (0..2)
            .map(|index| GpuFacts {
                index,
                uuid: format!("GPU-{host}-{index}"),
                board: "NVIDIA H200".into(),
                profile: "h200-sxm".into(),
                slowdown_c: 87.0,
                shutdown_c: 92.0,
                gpu_max_c: 85.0,
                hbm_max_c: 95.0,
                power_min_w: H200_MIN_W,
                power_max_w: H200_DEFAULT_W,
                power_default_w: H200_DEFAULT_W,
                original_limit_w: H200_DEFAULT_W,
            })
            .collect();
        let facts = Facts::new(host, session, gpus);
        a.publish("facts", wire::encode(&facts).expect("encode"), true)
            .await;
        a
    }

    pub(super) fn clock(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as i64;
        (now + self.offset_ms) as u64
    }

    pub(super) async fn publish(&self, kind: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic(&self.host, kind), QoS::AtLeastOnce, retain, payload)
            .await
            .expect("queue a publish");
    }

    pub(super) async fn readings(&mut self) {
        self.seq += 1;
        let wobble = (self.seq % 3) as f32 * 0.1;
        let r = Readings {
            v: Some(wire::VERSION),
            host: self.host.clone(),
            session: self.session,
            seq: self.seq,
            sent_unix_ms: self.clock(),
            gpus: (0..2)
                .map(|index| GpuReading {
                    index,
                    core_c: Some(50.0 + wobble + index as f32),
                    hbm_c: Some(55.0 + wobble),
                    power_w: Some(300.0),
                    limit_w: Some(H200_DEFAULT_W),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        self.publish("readings", wire::encode(&r).expect("encode"), false)
            .await;
    }
}

impl Drop for SkewedAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}
