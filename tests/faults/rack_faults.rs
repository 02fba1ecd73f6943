//! Rack faults through a real Mosquitto (issue 9, point 8): the real `coolantd run` binary as
//! the controller of a simulated CDU, real `coolantd agent` processes on simulated GPUs, and
//! each fault's reaction counted in ticks (the controller's `/status` tick, or an agent's
//! readings `seq`). Emulated wire clients stand in for an agent only where a real one cannot
//! produce the fault (a clock 10 minutes off), or to replay an old lease as a client's queue
//! would.
//!
//! Every test uses 200 ms periods and `[rack] stale_after_ms = 600`, `ack_timeout_ms = 300`,
//! `lease_ms = 2000`, `conflict_clear_after_ms = 1000`. A leak (the CDU's leak input, rewritten
//! by a Modbus proxy between the controller and its simulated CDU) makes the controller cap
//! every remote GPU to its minimum, which is how a test gets leases onto real agents. The
//! bounds are generous for a loaded 2-core machine, in ticks of the process that reacts, so a
//! slow machine slows the clock they are counted in too; each reaction is printed with its
//! bound.

use coolantd::wire::{self, CapAck, CapLease, Facts, GpuFacts, GpuReading, Readings, Status};
use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::modbus_proxy::{self, Proxy};
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::sim_daemon::{http_get, sim_config_text};
use coolantd_testkit::tcp_proxy::TcpProxy;
use coolantd_testkit::{free_port, repo_root, TempDir};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Controller and agent period, ms.
const PERIOD_MS: u64 = 200;
const STALE_MS: u64 = 600;
const LEASE_MS: u64 = 2_000;
const CONFLICT_MS: u64 = 1_000;
/// Bound on anything done once (a start, a connection), not a reaction under test.
const BOUND: Duration = Duration::from_secs(30);
/// The simulated H200's power range, W (firmware-profiles/gpu/h200-sxm.toml).
const H200_MIN_W: f32 = 200.0;
const H200_DEFAULT_W: f32 = 700.0;

fn have_mosquitto() -> bool {
    coolantd_testkit::modbus_common::have_peer("/usr/sbin/mosquitto", "mosquitto")
}

fn topic(host: &str, kind: &str) -> String {
    format!("coolantd/v1/host/{host}/{kind}")
}

// ---------------------------------------------------------------------------------------
// Agents

/// A `coolantd agent` configuration for `host` on `gpus` simulated H200s, talking to the
/// broker on `broker`, with its own client id and state folder (two agents may claim one
/// host).
fn agent_config(dir: &Path, host: &str, client: &str, broker: u16, gpus: u32) -> PathBuf {
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

fn spawn_agent(config: &Path) -> DaemonProcess {
    DaemonProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_coolantd"))
            .arg("agent")
            .arg("--config")
            .arg(config),
    )
}

/// Starts one agent per host (`host` is also its client id), `gpus` GPUs each.
fn spawn_agents(dir: &Path, broker: u16, hosts: &[&str], gpus: u32) -> Vec<DaemonProcess> {
    hosts
        .iter()
        .map(|h| spawn_agent(&agent_config(dir, h, h, broker, gpus)))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The controller

struct Controller {
    proc: DaemonProcess,
    http: u16,
    /// Between the controller and its simulated CDU: a leak is a rewritten answer.
    cdu: Proxy,
    /// When the proxy first answered a read with the leak input set.
    leak_read_at: Arc<Mutex<Option<Instant>>>,
}

impl Controller {
    /// `coolantd run` on the simulated CDU (no GPUs of its own) for `hosts`.
    async fn start(dir: &Path, broker: u16, hosts: &[&str]) -> Controller {
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
    fn try_status(&self) -> Option<Value> {
        let (code, body) = http_get(self.http, "/status");
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("/status does not answer; log:\n{}", self.proc.log()))
    }

    fn tick(&self) -> u64 {
        tick(&self.status())
    }

    /// Polls `/status` until `pred` holds and returns it; fails after `bound` with the last
    /// status and the log.
    async fn until(&self, what: &str, bound: Duration, pred: impl Fn(&Value) -> bool) -> Value {
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
    async fn rack_up(&self, hosts: &[&str]) -> Value {
        self.until("rack up and running", BOUND, |s| {
            hosts.iter().all(|h| online(s, h)) && s["state"] == "running"
        })
        .await
    }

    /// The CDU reports a leak from now on; the instant of the first such answer is kept.
    fn leak(&self) {
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

    fn leak_read_at(&self) -> Option<Instant> {
        *self.leak_read_at.lock().expect("leak instant lock")
    }
}

/// Samples the controller's tick every 10 ms in a thread of its own, so that instants seen
/// elsewhere (a Modbus answer, an acknowledgement at the broker) map to controller ticks.
struct TickSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TickSampler {
    fn start(http: u16) -> TickSampler {
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
    fn tick_at(&self, at: Instant) -> u64 {
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

fn tick(s: &Value) -> u64 {
    s["tick"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tick in {s}"))
}

fn rack_host<'a>(s: &'a Value, host: &str) -> &'a Value {
    s["rack"]["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == host))
        .unwrap_or(&Value::Null)
}

fn online(s: &Value, host: &str) -> bool {
    rack_host(s, host)["online"] == true
}

fn lost_reason(s: &Value, host: &str) -> String {
    rack_host(s, host)["lost"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn alarm_ids(s: &Value) -> Vec<String> {
    s["alarms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|a| a["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn has_alarm(s: &Value, id: &str) -> bool {
    alarm_ids(s).iter().any(|a| a == id)
}

/// Whether every GPU of `host` is held at `watts` by an acknowledged lease.
fn acked_at(s: &Value, host: &str, gpus: usize, watts: f64) -> bool {
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
struct Msg {
    at: Instant,
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

impl Msg {
    fn decode<M: wire::WireMessage>(&self) -> M {
        wire::decode::<M>(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not a valid message: {e}", self.topic))
    }
}

/// Sees every wire message through the broker, with its arrival instant; resubscribes after
/// a broker restart.
struct Tap {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    async fn connect(port: u16, id: &str) -> Tap {
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
    async fn next_where(
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
    async fn collect(&mut self, window: Duration) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + window;
        let mut v = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            v.push(m);
        }
        v
    }

    /// The next readings of `host` satisfying `pred`.
    async fn readings_where(
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

    fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
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

fn limits(r: &Readings) -> Vec<f32> {
    r.gpus.iter().filter_map(|g| g.limit_w).collect()
}

fn all_at(r: &Readings, watts: f32) -> bool {
    !r.gpus.is_empty()
        && r.gpus
            .iter()
            .all(|g| g.limit_w.is_some_and(|w| (w - watts).abs() < 0.5))
}

/// Lease ids an agent's log says it accepted, in order.
fn accepted_ids(log: &str) -> Vec<u64> {
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
fn report(fault: &str, reaction: &str, ticks: u64, bound: u64) {
    eprintln!("rack fault: {fault} → {reaction}: {ticks} ticks (bound {bound})");
    assert!(
        ticks <= bound,
        "{fault} → {reaction} took {ticks} ticks, bound {bound}"
    );
}

// ---------------------------------------------------------------------------------------
// 1. An agent killed: its last will

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_agent_killed_its_last_will_makes_its_gpus_lost_inputs() {
    if !have_mosquitto() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = TempDir::new("rack-killed");
    let hosts = ["node01", "node02"];
    let mut agents = spawn_agents(dir.path(), broker.port(), &hosts, 2);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;

    // SIGKILL: no goodbye; the broker publishes node02's last will at once (the socket
    // closed). Its GPUs are lost inputs: Degraded on what remains.
    let t0 = ctl.tick();
    agents[1].kill();
    let s = ctl
        .until("node02 lost by its last will", BOUND, |s| {
            !online(s, "node02")
                && lost_reason(s, "node02").contains("last will")
                && has_alarm(s, "rack_host_lost:node02")
        })
        .await;
    report("agent killed", "host lost (last will)", tick(&s) - t0, 3);
    let s = ctl
        .until("Degraded on node01's GPUs", BOUND, |s| {
            s["state"] == "degraded"
        })
        .await;
    report("agent killed", "Degraded", tick(&s) - t0, 5);
    assert!(online(&s, "node01"), "{}", s["rack"]);

    // The last agent killed: no GPU temperature is known, Failsafe.
    let t0 = ctl.tick();
    agents[0].kill();
    let s = ctl
        .until("Failsafe with every remote GPU lost", BOUND, |s| {
            s["state"] == "failsafe"
        })
        .await;
    report("every agent killed", "Failsafe", tick(&s) - t0, 5);
    assert!(
        lost_reason(&s, "node01").contains("last will"),
        "{}",
        s["rack"]
    );
}

// ---------------------------------------------------------------------------------------
// 2. An agent partitioned: no FIN, no will

/// What one partition of node01 (through the proxy) showed.
struct Partition {
    /// Everything the broker passed on from the partition's start to after the heal.
    since: Vec<Msg>,
    /// node01 on `/status` after the heal.
    host: Value,
}

/// Two agents, node01 behind a proxy that blackholes for `partition_ms`; node01's agent
/// has `keep_alive_s`. Checks and reports the reactions common to short and long
/// partitions: stale (not a will) first, Degraded, back without a restart, Running again,
/// and what the controller counts as missed is what the broker never saw.
async fn partition(tag: &str, keep_alive_s: u64, partition_ms: u64) -> Partition {
    let broker = Mosquitto::start();
    let dir = TempDir::new(tag);
    let hosts = ["node01", "node02"];
    let proxy = TcpProxy::start(([127, 0, 0, 1], broker.port()).into()).await;
    let mut tap = Tap::connect(broker.port(), &format!("tap-{tag}")).await;
    // node01 reaches the broker through the proxy, node02 directly.
    let cfg = agent_config(dir.path(), "node01", "node01", proxy.addr.port(), 2);
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        "keep_alive_s = 5",
        &format!("keep_alive_s = {keep_alive_s}"),
    );
    std::fs::write(&cfg, text).expect("write");
    let mut a1 = spawn_agent(&cfg);
    let _a2 = spawn_agent(&agent_config(
        dir.path(),
        "node02",
        "node02",
        broker.port(),
        2,
    ));
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    let s = ctl.rack_up(&hosts).await;
    assert!(proxy.bytes() > 0, "node01's traffic goes through the proxy");
    assert_eq!(rack_host(&s, "node01")["gaps"], 0, "{}", s["rack"]);

    tap.drain();
    let (before, _) = tap
        .readings_where("node01", "node01's readings", BOUND, |_| true)
        .await;
    let t0 = ctl.tick();
    proxy.set_blackhole(true);
    // From here the tap is left alone until the heal: it keeps every message for the
    // sequence count at the end.
    let s = ctl
        .until("node01 stale", BOUND, |s| {
            !online(s, "node01") && !lost_reason(s, "node01").is_empty()
        })
        .await;
    // Staleness, never the will first: 600 ms is 3 ticks, one more for the tick that sees
    // it, one for the readings in flight when the partition began and one of slack.
    assert!(
        lost_reason(&s, "node01").contains("no readings for"),
        "{}",
        s["rack"]
    );
    report(
        &format!("agent partitioned (keep_alive_s {keep_alive_s})"),
        "host stale, lost inputs",
        tick(&s) - t0,
        STALE_MS / PERIOD_MS + 3,
    );
    assert!(
        has_alarm(&s, "rack_host_lost:node01"),
        "{:?}",
        alarm_ids(&s)
    );
    assert!(online(&s, "node02"), "{}", s["rack"]);
    let s = ctl
        .until("Degraded", BOUND, |s| s["state"] == "degraded")
        .await;
    report(
        &format!("agent partitioned (keep_alive_s {keep_alive_s})"),
        "Degraded",
        tick(&s) - t0,
        STALE_MS / PERIOD_MS + 4,
    );

    tokio::time::sleep(Duration::from_millis(partition_ms)).await;
    let t1 = ctl.tick();
    proxy.set_blackhole(false);
    let s = ctl
        .until("node01 back", BOUND, |s| online(s, "node01"))
        .await;
    report("partition healed", "host back online", tick(&s) - t1, 10);
    let s = ctl
        .until("running again", BOUND, |s| s["state"] == "running")
        .await;
    report(
        "partition healed",
        "Running again",
        tick(&s) - t1,
        1_000 / PERIOD_MS + 12,
    );
    // Everything node01 published since `before`, as the broker passed it on.
    let since = tap.collect(Duration::from_millis(500)).await;
    let readings: Vec<Readings> = since
        .iter()
        .filter(|m| m.topic == topic("node01", "readings"))
        .map(|m| m.decode::<Readings>())
        .collect();
    // The same agent, never restarted: the same session before and after.
    assert!(
        readings.iter().all(|r| r.session == before.session),
        "the agent did not restart"
    );
    assert!(a1.try_wait().is_none(), "node01's agent still runs");
    let mut seqs: Vec<u64> = std::iter::once(before.seq)
        .chain(readings.iter().map(|r| r.seq))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "in order, no replay: {seqs:?}"
    );
    seqs.dedup();
    let span = seqs.last().copied().unwrap_or(before.seq) - before.seq + 1;
    let missing = span - seqs.len() as u64;
    let s = ctl.status();
    let host = rack_host(&s, "node01").clone();
    eprintln!(
        "rack fault: partition of {partition_ms} ms (keep_alive_s {keep_alive_s}) healed: gaps {}, missed {} (the broker missed {missing} of {span} readings), replays {}",
        host["gaps"], host["missed"], host["replays"]
    );
    // The controller counts as missed exactly what never reached the broker.
    assert_eq!(host["missed"].as_u64(), Some(missing), "{host}");
    assert_eq!(host["replays"], 0, "{host}");
    Partition { since, host }
}

fn offline_status(m: &Msg, host: &str) -> bool {
    m.topic == topic(host, "status") && !m.decode::<Status>().online
}

/// A partition shorter than the broker's keep-alive (1.5 × 5 s): no FIN, no will; the
/// controller judges by staleness alone, and TCP delivers the held readings late but whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_partitioned_agent_goes_stale_and_comes_back_without_a_restart() {
    if !have_mosquitto() {
        return;
    }
    let p = partition("rack-partition", 5, 2_500).await;
    assert!(
        !p.since.iter().any(|m| offline_status(m, "node01")),
        "a short partition publishes no offline status (no will)"
    );
    assert_eq!(p.host["missed"], 0, "{}", p.host);
}

/// A partition longer than the broker's keep-alive (1.5 × 1 s): the broker gives up on
/// the session and publishes the will, well after staleness made the host lost; the agent
/// reconnects by itself once the network heals, and the readings it could not send while
/// disconnected are counted as gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_long_partition_fires_the_will_and_the_agent_reconnects_by_itself() {
    if !have_mosquitto() {
        return;
    }
    let p = partition("rack-long-partition", 1, 4_000).await;
    assert!(
        p.since.iter().any(|m| offline_status(m, "node01")),
        "the broker's keep-alive fired node01's will"
    );
    assert!(
        p.host["gaps"].as_u64().is_some_and(|g| g >= 1),
        "readings lost while disconnected are counted: {}",
        p.host
    );
}

// ---------------------------------------------------------------------------------------
// 3. The broker restarted

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_broker_restart_is_failsafe_until_both_sides_reconnect() {
    if !have_mosquitto() {
        return;
    }
    let mut broker = Mosquitto::start();
    let dir = TempDir::new("rack-broker");
    let hosts = ["node01"];
    let _agents = spawn_agents(dir.path(), broker.port(), &hosts, 2);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;

    let t0 = ctl.tick();
    broker.stop();
    let s = ctl
        .until("Failsafe while the broker is down", BOUND, |s| {
            s["state"] == "failsafe" && !online(s, "node01")
        })
        .await;
    report(
        "broker down",
        "remote inputs lost, Failsafe",
        tick(&s) - t0,
        STALE_MS / PERIOD_MS + 4,
    );
    assert!(
        lost_reason(&s, "node01").contains("no readings for"),
        "{}",
        s["rack"]
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let t1 = ctl.tick();
    broker.restart();
    // Both sides reconnect by themselves (backoff 100..400 ms): the agent's readings reach
    // the controller again.
    let s = ctl
        .until("node01 back after the broker restart", BOUND, |s| {
            online(s, "node01") && s["rack"]["connected"] == true
        })
        .await;
    report(
        "broker restarted",
        "both reconnected, host online",
        tick(&s) - t1,
        10,
    );
    let s = ctl
        .until("running again", BOUND, |s| s["state"] == "running")
        .await;
    report(
        "broker restarted",
        "Running (after recovery_hold_s 1 s)",
        tick(&s) - t1,
        1_000 / PERIOD_MS + 12,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_after_a_broker_restart_no_expired_lease_is_applied_again() {
    if !have_mosquitto() {
        return;
    }
    let mut broker = Mosquitto::start();
    let dir = TempDir::new("rack-stale-lease");
    let hosts = ["node01"];
    let agents = spawn_agents(dir.path(), broker.port(), &hosts, 2);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;
    let mut tap = Tap::connect(broker.port(), "tap-stale").await;

    // A leak: every GPU capped to its minimum under a lease the agent acknowledges.
    ctl.leak();
    let caps = topic("node01", "caps");
    let first = tap
        .next_where("a lease capping node01", BOUND, |m| {
            m.topic == caps
                && m.decode::<CapLease>()
                    .caps
                    .iter()
                    .all(|c| (c.limit_w - H200_MIN_W).abs() < 0.5)
        })
        .await;
    assert!(!first.retain, "a lease is never retained");
    let old: CapLease = first.decode();
    tap.readings_where("node01", "node01 at its minimum", BOUND, |r| {
        all_at(r, H200_MIN_W)
    })
    .await;

    // The broker away for longer than the lease: the agent's lease runs out and its guard
    // takes the caps over.
    broker.stop();
    agents[0].wait_line("the lease expiry on the agent", BOUND, |l| {
        l.contains("lease_expired")
    });
    broker.restart();
    let s = ctl
        .until("node01 back after the broker restart", BOUND, |s| {
            online(s, "node01")
        })
        .await;
    assert_eq!(s["state"], "emergency", "the leak still holds");

    // The controller's own client may have sent leases queued during the outage again
    // after the reconnect; those already ended on the agent are refused.
    let replayed = agents[0]
        .log()
        .matches("already ended here arrived again")
        .count();
    // An old copy of the expired lease, as a client's queue would send it after the
    // reconnect: refused in its acknowledgement, never applied again.
    let mut tap = Tap::connect(broker.port(), "tap-stale-2").await;
    tap.publish(&caps, wire::encode(&old).expect("encode"), false)
        .await;
    let acks = topic("node01", "acks");
    let ack = tap
        .next_where("the refusal of the old lease", BOUND, |m| {
            m.topic == acks && m.decode::<CapAck>().id == old.id
        })
        .await
        .decode::<CapAck>();
    assert!(
        !ack.results.is_empty()
            && ack.results.iter().all(|r| {
                r.refusal_kind() == Some(wire::Refusal::Failed)
                    && r.detail
                        .as_deref()
                        .is_some_and(|d| d.contains("already ended"))
            }),
        "{ack:?}"
    );
    // The controller's leases after the restart are new ones; the agent accepted each id
    // once only.
    let ids = accepted_ids(&agents[0].log());
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a lease id applied twice: {ids:?}");
    assert!(
        ids.iter().filter(|&&i| i == old.id).count() <= 1,
        "the expired lease {} was applied again: {ids:?}",
        old.id
    );
    assert!(
        agents[0].log().contains("already ended here arrived again"),
        "{}",
        agents[0].log()
    );
    eprintln!(
        "rack fault: broker restarted past a lease → the expired lease {} refused on replay ({replayed} copies replayed by the controller's own client before the test's); leases applied: {ids:?}",
        old.id
    );
}

// ---------------------------------------------------------------------------------------
// 4. The controller killed, and stopped cleanly

/// Brings up a controller and one agent (2 GPUs), leaks, and waits until the agent holds
/// both GPUs at their minimum under an acknowledged lease. Returns the broker, the folder, the
/// agent, the controller and a tap that has seen the capped readings.
async fn capped_rig(tag: &str) -> (Mosquitto, TempDir, Vec<DaemonProcess>, Controller, Tap) {
    let broker = Mosquitto::start();
    let dir = TempDir::new(tag);
    let hosts = ["node01"];
    let agents = spawn_agents(dir.path(), broker.port(), &hosts, 2);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;
    let mut tap = Tap::connect(broker.port(), &format!("tap-{tag}")).await;
    ctl.leak();
    tap.readings_where("node01", "node01 at its minimum", BOUND, |r| {
        all_at(r, H200_MIN_W)
    })
    .await;
    ctl.until("the caps acknowledged", BOUND, |s| {
        acked_at(s, "node01", 2, f64::from(H200_MIN_W))
    })
    .await;
    (broker, dir, agents, ctl, tap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_killed_controller_leaves_its_caps_until_the_lease_ends_then_the_guard() {
    if !have_mosquitto() {
        return;
    }
    let (_broker, _dir, agents, mut ctl, mut tap) = capped_rig("rack-ctl-killed").await;
    tap.drain();
    let (last, _) = tap
        .readings_where("node01", "readings before the kill", BOUND, |_| true)
        .await;
    ctl.proc.kill();
    let will = tap
        .next_where("the controller's last will", BOUND, |m| {
            m.topic.starts_with("coolantd/v1/controller/")
        })
        .await;
    assert_eq!(will.payload, b"offline", "{will:?}");
    // The caps hold while the lease runs: at least the renewal margin (a third of 2 s),
    // at most the whole lease, then the guard raises them gradually.
    let (raised, _) = tap
        .readings_where("node01", "a cap raised by the guard", BOUND, |r| {
            !all_at(r, H200_MIN_W)
        })
        .await;
    let held = raised.seq - last.seq;
    eprintln!(
        "rack fault: controller killed → caps held {held} agent ticks, then the guard ({:?})",
        limits(&raised)
    );
    let lease_ticks = LEASE_MS / PERIOD_MS;
    assert!(
        held >= lease_ticks / 3 - 1,
        "the caps were dropped before the lease ended: {held} ticks"
    );
    report(
        "controller killed",
        "lease ends, guard takes over",
        held,
        lease_ticks + 3,
    );
    agents[0].wait_line("the lease-expiry alarm", BOUND, |l| {
        l.contains("ALARM") && l.contains("lease_expired")
    });
    // Gradually: 10 W/s is 2 W a tick, never the original limit at once.
    assert!(
        limits(&raised).iter().all(|&w| w < H200_MIN_W + 10.0),
        "{raised:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_clean_controller_stop_releases_the_caps_to_the_guard_at_once() {
    if !have_mosquitto() {
        return;
    }
    let (_broker, _dir, agents, mut ctl, mut tap) = capped_rig("rack-ctl-stop").await;
    tap.drain();
    let (last, _) = tap
        .readings_where("node01", "readings before the stop", BOUND, |_| true)
        .await;
    ctl.proc.signal(libc::SIGTERM);
    let caps = topic("node01", "caps");
    let release = tap
        .next_where("the release lease", BOUND, |m| m.topic == caps)
        .await
        .decode::<CapLease>();
    assert!(
        release.caps.is_empty(),
        "a release names no GPU: {release:?}"
    );
    let (raised, _) = tap
        .readings_where("node01", "a cap raised by the guard", BOUND, |r| {
            !all_at(r, H200_MIN_W)
        })
        .await;
    let ticks = raised.seq - last.seq;
    report(
        "controller stopped cleanly",
        "caps released to the guard",
        ticks,
        3,
    );
    assert!(
        limits(&raised).iter().all(|&w| w < H200_MIN_W + 10.0),
        "released gradually, not at once: {raised:?}"
    );
    agents[0].wait_line("the release", BOUND, |l| {
        l.contains("the controller released caps")
    });
    let (st, _) = ctl
        .proc
        .wait_exit(BOUND)
        .unwrap_or_else(|| panic!("the controller did not stop; log:\n{}", ctl.proc.log()));
    assert_eq!(st.code(), Some(0), "log:\n{}", ctl.proc.log());
    assert!(
        !agents[0].log().contains("lease_expired"),
        "released, not expired: {}",
        agents[0].log()
    );
}

// ---------------------------------------------------------------------------------------
// 5. Two agents claiming one host

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_two_agents_claiming_one_host_are_both_distrusted_until_one_leaves() {
    if !have_mosquitto() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = TempDir::new("rack-duplicate");
    let hosts = ["node01", "node02"];
    let _a1 = spawn_agent(&agent_config(
        dir.path(),
        "node01",
        "node01-a",
        broker.port(),
        2,
    ));
    let _a2 = spawn_agent(&agent_config(
        dir.path(),
        "node02",
        "node02",
        broker.port(),
        2,
    ));
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;

    // A second agent calls itself node01 (another client id, another session).
    let t0 = ctl.tick();
    let mut twin = spawn_agent(&agent_config(
        dir.path(),
        "node01",
        "node01-b",
        broker.port(),
        2,
    ));
    let s = ctl
        .until("the duplicate alarm", BOUND, |s| {
            has_alarm(s, "rack_host_duplicate:node01") && !online(s, "node01")
        })
        .await;
    // From the twin's spawn: its process start and first readings count too.
    report(
        "two agents claim node01",
        "rack_host_duplicate, GPUs lost (from the second agent's spawn)",
        tick(&s) - t0,
        10,
    );
    let s = ctl
        .until("Degraded", BOUND, |s| s["state"] == "degraded")
        .await;
    assert!(online(&s, "node02"), "{}", s["rack"]);
    let dup = s["alarms"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == "rack_host_duplicate:node01"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(dup["severity"], "critical", "{dup}");

    // One leaves: after conflict_clear_after_ms (1 s) of one agent alone, node01 is
    // trusted again.
    let t1 = ctl.tick();
    twin.signal(libc::SIGTERM);
    assert!(twin.wait_exit(BOUND).is_some(), "log:\n{}", twin.log());
    let s = ctl
        .until("node01 trusted again", BOUND, |s| {
            online(s, "node01") && !has_alarm(s, "rack_host_duplicate:node01")
        })
        .await;
    report(
        "duplicate host, one left",
        "host trusted again",
        tick(&s) - t1,
        CONFLICT_MS / PERIOD_MS + 6,
    );
}

// ---------------------------------------------------------------------------------------
// 6. A clock 10 minutes off

/// An emulated agent whose wall clock is `offset_ms` off: its readings' `sent_unix_ms`
/// are that far from the truth. (The real agent stamps with the system clock, which a test
/// cannot move.)
struct SkewedAgent {
    host: String,
    session: u64,
    seq: u64,
    offset_ms: i64,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl SkewedAgent {
    async fn start(port: u16, host: &str, session: u64, offset_ms: i64) -> SkewedAgent {
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

    fn clock(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as i64;
        (now + self.offset_ms) as u64
    }

    async fn publish(&self, kind: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic(&self.host, kind), QoS::AtLeastOnce, retain, payload)
            .await
            .expect("queue a publish");
    }

    async fn readings(&mut self) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_an_agent_clock_ten_minutes_off_changes_nothing() {
    if !have_mosquitto() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = TempDir::new("rack-clock");
    let hosts = ["slow", "fast"];
    let ten_min = 10 * 60 * 1000;
    let mut agents = vec![
        SkewedAgent::start(broker.port(), "slow", 0x51, -ten_min).await,
        SkewedAgent::start(broker.port(), "fast", 0xfa, ten_min).await,
    ];
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    // Readings every period until the rack runs, then for 2 s more: both hosts stay
    // trusted throughout, their readings as fresh as they arrive.
    let t0 = Instant::now();
    let mut up_at = None;
    while up_at.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(2)) {
        for a in &mut agents {
            a.readings().await;
        }
        tokio::time::sleep(Duration::from_millis(PERIOD_MS)).await;
        let Some(s) = ctl.try_status() else { continue };
        let up = hosts.iter().all(|h| online(&s, h)) && s["state"] == "running";
        match up_at {
            None if up => up_at = Some(Instant::now()),
            Some(_) => {
                assert!(up, "a skewed clock made a host lost: {}", s["rack"]);
                for h in hosts {
                    let age = rack_host(&s, h)["age_s"].as_f64().unwrap_or(f64::MAX);
                    assert!(age < 1.0, "{h}: age {age} s by arrival: {}", s["rack"]);
                }
            }
            None => {}
        }
        assert!(
            t0.elapsed() < BOUND,
            "the skewed hosts never ran: {}\nlog:\n{}",
            ctl.status()["rack"],
            ctl.proc.log()
        );
    }
    // Both fall silent at once: both are stale after the same 600 ms by arrival, whatever
    // their clocks said.
    let t1 = ctl.tick();
    let s = ctl
        .until("both hosts stale", BOUND, |s| {
            hosts
                .iter()
                .all(|h| lost_reason(s, h).contains("no readings for"))
        })
        .await;
    report(
        "agent clock ±10 min, then silent",
        "both stale together",
        tick(&s) - t1,
        STALE_MS / PERIOD_MS + 2,
    );
}

// ---------------------------------------------------------------------------------------
// 7. A cap for a GPU that vanished

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_cap_for_a_vanished_gpu_is_refused_and_dropped() {
    if !have_mosquitto() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = TempDir::new("rack-vanished");
    let hosts = ["node01", "node02"];
    let mut agents = spawn_agents(dir.path(), broker.port(), &hosts, 4);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;
    let mut tap = Tap::connect(broker.port(), "tap-vanished").await;
    ctl.leak();
    ctl.until("both hosts capped", BOUND, |s| {
        hosts
            .iter()
            .all(|h| acked_at(s, h, 4, f64::from(H200_MIN_W)))
    })
    .await;

    // node01 restarts with two GPUs fewer (a board fell off the bus).
    agents[0].signal(libc::SIGTERM);
    assert!(agents[0].wait_exit(BOUND).is_some(), "{}", agents[0].log());
    tap.drain();
    agents[0] = spawn_agent(&agent_config(
        dir.path(),
        "node01",
        "node01",
        broker.port(),
        2,
    ));
    let acks = topic("node01", "acks");
    let refused = tap
        .next_where("an ack refusing GPUs 2 and 3", BOUND, |m| {
            m.topic == acks
                && m.decode::<CapAck>()
                    .results
                    .iter()
                    .any(|r| r.refusal_kind() == Some(wire::Refusal::UnknownGpu))
        })
        .await
        .decode::<CapAck>();
    let unknown: Vec<u32> = refused
        .results
        .iter()
        .filter(|r| r.refusal_kind() == Some(wire::Refusal::UnknownGpu))
        .map(|r| r.index)
        .collect();
    assert_eq!(unknown, [2, 3], "{refused:?}");
    assert!(
        refused.results.iter().any(|r| r
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("this host has no GPU 2"))),
        "a clear reason: {refused:?}"
    );
    // The controller drops them: its next lease names GPUs 0 and 1 only, and is applied.
    let caps = topic("node01", "caps");
    let next = tap
        .next_where("a lease without the vanished GPUs", BOUND, |m| {
            m.topic == caps && m.decode::<CapLease>().id != refused.id
        })
        .await
        .decode::<CapLease>();
    let named: Vec<u32> = next.caps.iter().map(|c| c.index).collect();
    assert_eq!(named, [0, 1], "{next:?}");
    let s = ctl
        .until("node01's two GPUs capped, node02 untouched", BOUND, |s| {
            acked_at(s, "node01", 2, f64::from(H200_MIN_W))
                && acked_at(s, "node02", 4, f64::from(H200_MIN_W))
                && online(s, "node01")
                && online(s, "node02")
        })
        .await;
    assert_eq!(s["state"], "emergency", "the leak still rules");
    assert!(
        ctl.proc.log().contains("unknown_gpu") || ctl.proc.log().contains("no GPU 2"),
        "the controller logs the refusal: {}",
        ctl.proc.log()
    );
    eprintln!("rack fault: cap for a vanished GPU → refused (unknown_gpu), dropped from the next lease {:?}", named);
}

// ---------------------------------------------------------------------------------------
// 8. An agent restarting in the middle of a lease

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_an_agent_restarted_mid_lease_restores_and_takes_only_a_new_lease() {
    if !have_mosquitto() {
        return;
    }
    let (broker, dir, mut agents, ctl, mut tap) = capped_rig("rack-restart").await;
    let caps = topic("node01", "caps");
    let held = tap
        .next_where("a lease (renewal) to node01", BOUND, |m| m.topic == caps)
        .await
        .decode::<CapLease>();
    let before_ids = accepted_ids(&agents[0].log());
    tap.drain();
    let (old, _) = tap
        .readings_where("node01", "readings before the kill", BOUND, |_| true)
        .await;
    agents[0].kill();
    assert!(
        dir.path().join("state-node01/power-limits.json").exists(),
        "the crash leaves the original limits on record"
    );
    // A retained copy of its lease waits on the broker, as a misconfigured client could
    // leave it: the restarted agent gets it at subscription and refuses it.
    let bytes = wire::encode(&held).expect("encode");
    tap.drain();
    tap.publish(&caps, bytes.clone(), true).await;
    // Back through the broker: stored before the agent subscribes, so the agent gets it as
    // a retained message.
    tap.next_where("the retained copy at the broker", BOUND, |m| {
        m.topic == caps && m.payload == bytes
    })
    .await;
    let config = dir.path().join("node01.toml");
    agents[0] = spawn_agent(&config);
    agents[0].wait_line("the restore at start", BOUND, |l| {
        l.contains("restored the original power limit")
    });
    agents[0].wait_line("the retained lease refused", BOUND, |l| {
        l.contains("retained cap lease refused")
    });
    tap.publish(&caps, Vec::new(), true).await;
    // The new session's presence, then the controller's current caps under a new lease
    // (it sends them as soon as it hears the new session), acknowledged.
    let status = topic("node01", "status");
    let online_at = tap
        .next_where("the new session's online status", BOUND, |m| {
            m.topic == status && {
                let st = m.decode::<Status>();
                st.online && st.session != old.session
            }
        })
        .await
        .at;
    let acks = topic("node01", "acks");
    let ack_msg = tap
        .next_where("the ack of a new lease", BOUND, |m| {
            m.topic == acks && m.decode::<CapAck>().session != old.session
        })
        .await;
    let ack: CapAck = ack_msg.decode();
    assert!(
        !before_ids.contains(&ack.id),
        "the restarted agent acknowledged an old lease {}: {before_ids:?}",
        ack.id
    );
    assert!(
        ack.results
            .iter()
            .all(|r| r.enforced_w.is_some_and(|w| (w - H200_MIN_W).abs() < 0.5)),
        "{ack:?}"
    );
    // Every lease the new session applied is one the controller sent it after the restart.
    let after_ids = accepted_ids(&agents[0].log());
    assert!(
        !after_ids.is_empty() && after_ids.iter().all(|i| !before_ids.contains(i)),
        "an old lease re-applied after the restart: before {before_ids:?}, after {after_ids:?}"
    );
    let ms = ack_msg.at.duration_since(online_at).as_millis() as u64;
    // The session's readings count from 1: the tick of its first capped readings.
    let (capped, _) = tap
        .readings_where("node01", "capped again", BOUND, |r| {
            r.session != old.session && all_at(r, H200_MIN_W)
        })
        .await;
    eprintln!(
        "rack fault: agent restarted mid-lease → new lease {} acked {ms} ms after the new session said online",
        ack.id
    );
    report(
        "agent restarted mid-lease",
        "capped again under a new lease (agent ticks of the new session)",
        capped.seq,
        6,
    );
    let s = ctl
        .until("the new lease acknowledged", BOUND, |s| {
            acked_at(s, "node01", 2, f64::from(H200_MIN_W)) && online(s, "node01")
        })
        .await;
    assert_eq!(s["state"], "emergency");
    drop(broker);
}

// ---------------------------------------------------------------------------------------
// 9. A leak with 64 remote GPUs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_leak_caps_all_64_remote_gpus() {
    if !have_mosquitto() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = TempDir::new("rack-leak64");
    let hosts = [
        "node01", "node02", "node03", "node04", "node05", "node06", "node07", "node08",
    ];
    let _agents = spawn_agents(dir.path(), broker.port(), &hosts, 8);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    let s = ctl.rack_up(&hosts).await;
    let remote = s["gpus"].as_array().map_or(0, Vec::len);
    assert_eq!(remote, 64, "64 remote GPUs on /status");
    let mut tap = Tap::connect(broker.port(), "tap-leak64").await;
    tap.drain();
    let sampler = TickSampler::start(ctl.http);
    tokio::time::sleep(Duration::from_millis(100)).await;

    ctl.leak();
    // Every host's first ack whose caps are all at the minimum.
    let acks: Vec<String> = hosts.iter().map(|h| topic(h, "acks")).collect();
    let mut capped = std::collections::BTreeMap::new();
    while capped.len() < hosts.len() {
        let m = tap
            .next_where("the acks of every host", BOUND, |m| acks.contains(&m.topic))
            .await;
        let ack: CapAck = m.decode();
        let all_min = ack.results.len() == 8
            && ack
                .results
                .iter()
                .all(|r| r.enforced_w.is_some_and(|w| (w - H200_MIN_W).abs() < 0.5));
        if all_min {
            capped.entry(ack.host.clone()).or_insert(m.at);
        }
    }
    let leak_at = ctl.leak_read_at().expect("the leak was read");
    let last = capped.values().max().copied().expect("acks");
    let ms = last.duration_since(leak_at).as_millis() as u64;
    let s = ctl
        .until("every remote GPU held at its minimum", BOUND, |s| {
            hosts
                .iter()
                .all(|h| acked_at(s, h, 8, f64::from(H200_MIN_W)))
        })
        .await;
    assert_eq!(s["state"], "emergency");
    // Controller ticks from the one that polled the leak to the one during which the last
    // acknowledgement reached the broker.
    let ticks = sampler.tick_at(last) - sampler.tick_at(leak_at);
    eprintln!(
        "rack fault: leak with 64 remote GPUs → last agent's ack at the broker {ms} ms after the leak's Modbus reading"
    );
    report(
        "leak, 64 remote GPUs (8 agents × 8)",
        "every GPU capped and acknowledged",
        ticks,
        5,
    );
}
