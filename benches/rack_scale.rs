//! Rack scale through a real Mosquitto on loopback (issue 9, point 6):
//! `cargo bench --bench rack_scale`.
//!
//! Scenarios, each on a fresh broker:
//! - `1024`: the real `coolantd run` binary controlling one CDU (the simulator's, served by
//!   a separate `coolantd sim` process) for 128 hosts × 8 GPUs at 1 Hz;
//! - `64`: the same for 8 hosts × 8 GPUs at 10 Hz;
//! - `agent`: one real `coolantd agent` process with 8 simulated GPUs at 1 Hz.
//!
//! In the controller scenarios the hosts are emulated inside this process: one MQTT session
//! per host, publishing real `wire::Readings` (sequence numbers, `sent_unix_ms`) on the wall
//! clock's period boundaries as agents do (`remote::phase`), retained facts and status, and
//! answering every `CapLease` at once with a real `CapAck`. 128 agent processes on a 2-core
//! machine would measure the machine rather than the controller. So that cap → ack latency
//! has samples, a rotating quarter of the hosts reports GPU 0 at its slowdown threshold for
//! 3 s of every 10 s: the controller caps it in the tick that hears it and raises the caps
//! again afterwards, each change a new lease.
//!
//! Figures, over a steady window after every host is online:
//! - CPU: utime + stime from /proc/<pid>/stat, as % of one core;
//! - RSS: VmRSS at the end of the window, VmHWM (peak);
//! - latency: the controller's own histograms (`/status` `rack.latency`, the same counts as
//!   the `coolantd_rack_*_seconds` histograms on `/metrics`), differenced over the window.
//!   p50/p99 are bucket upper bounds: "at most this many ms". Reading → decision uses the
//!   agent's `sent_unix_ms` on the controller's wall clock (one machine, one clock here).
//!
//! Under `cargo test --benches` (no `--bench` argument) it runs as a smoke test: the
//! message sizes and the 64-GPU scenario with a 3 s window, checking that every host comes
//! online and that readings were decided on and caps acknowledged, without figures to keep.
//!
//! Environment: `RACK_SCALE_ONLY` (`1024`, `64` or `agent`; default all),
//! `RACK_SCALE_WINDOW_S` (the steady window, default 60 s), `RACK_SCALE_BROKER_NAGLE=1`
//! (the broker without `set_tcp_nodelay true`). The load average is printed
//! with the figures: the machine may be shared.

use coolantd::model::LatencyHistogram;
use coolantd::remote::phase::until_phase;
use coolantd::wire::{
    self, CapAck, CapLease, CapResult, Facts, GpuFacts, GpuReading, Kind, Readings, Status, Topic,
    VERSION,
};
use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::{free_port, repo_root};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PREFIX: &str = "coolantd";
const GPUS: u32 = 8;
const SLOWDOWN_C: f32 = 87.0;
const POWER_MIN_W: f32 = 200.0;
const POWER_MAX_W: f32 = 700.0;
/// Every `HOT_EVERY` of wall time, a quarter of the hosts runs hot for `HOT_FOR`.
const HOT_EVERY: Duration = Duration::from_secs(10);
const HOT_FOR: Duration = Duration::from_secs(3);

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let only = std::env::var("RACK_SCALE_ONLY")
        .ok()
        .or_else(|| (!bench).then(|| "64".to_string()));
    let window = Duration::from_secs(
        std::env::var("RACK_SCALE_WINDOW_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if bench { 60 } else { 3 }),
    );
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if !coolantd_testkit::modbus_common::have_peer("/usr/sbin/mosquitto", "mosquitto") {
        println!("rack_scale: skipped, it needs Mosquitto (/usr/sbin/mosquitto)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "rack_scale: window {} s, {}, broker extra configuration: {:?}",
        window.as_secs(),
        loadavg(),
        broker_conf()
    );
    limits();
    if run("1024") {
        rt.block_on(controller(
            "1024 GPUs (128 hosts × 8) at 1 Hz",
            128,
            1000,
            window,
        ));
    }
    if run("64") {
        rt.block_on(controller("64 GPUs (8 hosts × 8) at 10 Hz", 8, 100, window));
    }
    if run("agent") {
        agent(window);
    }
}

/// The largest message at any supported scale, and the limits it must stay under.
fn limits() {
    let host = "h".repeat(64);
    let gpus = wire::MAX_GPUS as u32;
    let readings = Readings {
        v: Some(VERSION),
        host: host.clone(),
        session: u64::MAX,
        seq: u64::MAX,
        sent_unix_ms: u64::MAX,
        facts_hash: u64::MAX,
        gpus: (0..gpus)
            .map(|index| GpuReading {
                index,
                core_c: Some(88.123),
                hbm_c: Some(95.123),
                power_w: Some(699.9),
                limit_w: Some(700.0),
                throttle: Some(u64::MAX),
                energy_mj: Some(u64::MAX),
            })
            .collect(),
    };
    let facts = Facts::new(
        &host,
        u64::MAX,
        (0..gpus)
            .map(|index| GpuFacts {
                index,
                uuid: "G".repeat(wire::MAX_TEXT),
                board: "B".repeat(wire::MAX_TEXT),
                profile: "p".repeat(wire::MAX_TEXT),
                slowdown_c: SLOWDOWN_C,
                shutdown_c: 92.0,
                gpu_max_c: 85.0,
                hbm_max_c: 95.0,
                power_min_w: POWER_MIN_W,
                power_max_w: POWER_MAX_W,
                power_default_w: POWER_MAX_W,
                original_limit_w: POWER_MAX_W,
            })
            .collect(),
    );
    let lease = CapLease {
        v: Some(VERSION),
        host: host.clone(),
        id: u64::MAX,
        lease_ms: wire::MAX_LEASE_MS,
        caps: (0..gpus)
            .map(|index| wire::Cap {
                index,
                limit_w: 699.9,
            })
            .collect(),
    };
    let ack = CapAck {
        v: Some(VERSION),
        host: host.clone(),
        session: u64::MAX,
        id: u64::MAX,
        dry_run: false,
        results: (0..gpus)
            .map(|index| CapResult::refused(index, wire::Refusal::Failed, &"d".repeat(200)))
            .collect(),
    };
    let sizes = [
        ("Readings", wire::encode(&readings).map(|b| b.len())),
        ("Facts", wire::encode(&facts).map(|b| b.len())),
        ("CapLease", wire::encode(&lease).map(|b| b.len())),
        ("CapAck", wire::encode(&ack).map(|b| b.len())),
    ];
    let topic = Topic::format(PREFIX, &host, Kind::Readings).len();
    println!(
        "largest messages ({} GPUs, 64-character host name, every text at its {}-byte limit):",
        wire::MAX_GPUS,
        wire::MAX_TEXT
    );
    for (name, size) in sizes {
        match size {
            // PUBLISH at QoS 1: fixed header 1 B, remaining length 2 B, topic length 2 B,
            // topic, packet id 2 B.
            Ok(n) => println!(
                "  {name:<9} payload {n:>5} B, PUBLISH packet {:>5} B",
                n + 1 + 2 + 2 + topic + 2
            ),
            Err(e) => println!("  {name:<9} refused by the encoder: {e}"),
        }
    }
    println!(
        "limits: wire format {} B per payload (encode and decode refuse more); rumqttc as \
         configured in src/link/mqtt/client.rs: outgoing 1 MiB, incoming 256 MiB (MQTT 3.1.1) \
         or 64 KiB (MQTT 5); Mosquitto's default message_size_limit: none (MQTT's 256 MiB)",
        wire::MAX_MESSAGE_BYTES
    );
}

/// One emulated agent's session.
struct Host {
    name: String,
    session: u64,
    seq: u64,
    client: AsyncClient,
}

/// What the emulated agents counted.
#[derive(Default)]
struct Counts {
    readings: AtomicU64,
    leases: AtomicU64,
    acks: AtomicU64,
}

fn facts(host: &str, session: u64) -> Facts {
    let gpus = (0..GPUS)
        .map(|index| GpuFacts {
            index,
            uuid: format!("GPU-{host}-{index}"),
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
    Facts::new(host, session, gpus)
}

fn status(host: &str, session: u64, online: bool) -> Status {
    Status {
        v: Some(VERSION),
        host: host.to_string(),
        session,
        online,
        sent_unix_ms: 0,
    }
}

fn encode<M: wire::WireMessage>(m: &M) -> Vec<u8> {
    wire::encode(m).expect("a bench message encodes")
}

impl Host {
    async fn start(port: u16, name: String, session: u64, counts: Arc<Counts>) -> Host {
        let mut o = MqttOptions::new(format!("bench-agent-{name}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10));
        // As the agent's own client does (src/link/mqtt/client.rs).
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        o.set_last_will(LastWill::new(
            Topic::format(PREFIX, &name, Kind::Status),
            encode(&status(&name, session, false)),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut el) = AsyncClient::new(o, 256);
        el.set_network_options(net);
        let caps = Topic::format(PREFIX, &name, Kind::Caps);
        let acks = Topic::format(PREFIX, &name, Kind::Acks);
        let (c, h) = (client.clone(), name.clone());
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == caps => {
                        counts.leases.fetch_add(1, Ordering::Relaxed);
                        let Ok(lease) = wire::decode::<CapLease>(&p.payload) else {
                            continue;
                        };
                        // Acknowledged at once with every cap enforced as asked. The poll
                        // loop must not wait on its own request queue, hence try_publish.
                        let ack = CapAck {
                            v: Some(VERSION),
                            host: h.clone(),
                            session,
                            id: lease.id,
                            dry_run: false,
                            results: lease
                                .caps
                                .iter()
                                .map(|c| {
                                    CapResult::enforced(
                                        c.index,
                                        coolantd::units::Watts(f64::from(c.limit_w)),
                                    )
                                })
                                .collect(),
                        };
                        if c.try_publish(&acks, QoS::AtLeastOnce, false, encode(&ack))
                            .is_ok()
                        {
                            counts.acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        client
            .subscribe(Topic::format(PREFIX, &name, Kind::Caps), QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        for (kind, payload) in [
            (Kind::Status, encode(&status(&name, session, true))),
            (Kind::Facts, encode(&facts(&name, session))),
        ] {
            client
                .publish(
                    Topic::format(PREFIX, &name, kind),
                    QoS::AtLeastOnce,
                    true,
                    payload,
                )
                .await
                .expect("queue publish");
        }
        Host {
            name,
            session,
            seq: 0,
            client,
        }
    }

    /// One reading of every GPU, stamped now; GPU 0 at its slowdown threshold when `hot`.
    async fn publish_readings(&mut self, hot: bool) {
        self.seq += 1;
        let wobble = (self.seq % 3) as f32 * 0.1;
        let r = Readings {
            v: Some(VERSION),
            host: self.name.clone(),
            session: self.session,
            seq: self.seq,
            sent_unix_ms: unix_ms(),
            gpus: (0..GPUS)
                .map(|index| GpuReading {
                    index,
                    core_c: Some(if hot && index == 0 {
                        SLOWDOWN_C
                    } else {
                        55.0 + wobble + index as f32 * 0.2
                    }),
                    hbm_c: Some(60.0 + wobble),
                    power_w: Some(650.0),
                    limit_w: Some(POWER_MAX_W),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let topic = Topic::format(PREFIX, &self.name, Kind::Readings);
        // Never waits on a slow broker: a full queue is a lost reading, as on an agent.
        let _ = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, encode(&r));
    }
}

/// Extra broker configuration: `set_tcp_nodelay true`, as config/mosquitto/coolantd.conf
/// recommends; with `RACK_SCALE_BROKER_NAGLE=1`, none (Mosquitto's default, Nagle's
/// algorithm on the broker's side of each socket).
fn broker_conf() -> String {
    match std::env::var("RACK_SCALE_BROKER_NAGLE").as_deref() {
        Ok("1") => String::new(),
        _ => "set_tcp_nodelay true\n".to_string(),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The controller's configuration: one CDU (the simulator's Modbus server at `sim_port`)
/// cooling `hosts`, no local GPUs.
fn controller_config(
    dir: &Path,
    hosts: &[String],
    period_ms: u64,
    sim_port: u16,
    broker: u16,
    http: u16,
) -> PathBuf {
    let list = hosts
        .iter()
        .map(|h| format!("{h:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"[site]
name = "bench"
host = "rack-ctl"
state_dir = {state:?}
profiles_dir = {profiles:?}

[gpus]
backend = "none"

[[cdu]]
name = "cdu-rack"
profile = "sim-cdu"
transport = "tcp"
address = "127.0.0.1:{sim_port}"
unit_id = 1
timeout_ms = 200
hosts = [{list}]

[control]
period_ms = {period_ms}
setpoint = 65.0

[mqtt]
host = "127.0.0.1"
port = {broker}
topic_prefix = "{PREFIX}"

[http]
listen = "127.0.0.1:{http}"

[logging]
level = "info"
"#,
        state = dir.join("ctl-state").display().to_string(),
        profiles = repo_root().join("firmware-profiles").display().to_string(),
    );
    let path = dir.join("controller.toml");
    std::fs::write(&path, text).expect("write controller.toml");
    path
}

/// The simulated CDU, served by `coolantd sim` in a process of its own.
fn sim_config(dir: &Path, sim_port: u16) -> PathBuf {
    let text = format!(
        r#"[site]
name = "bench"
host = "sim-cdu"
state_dir = {state:?}
profiles_dir = {profiles:?}

[gpus]
backend = "simulated"

[[cdu]]
name = "cdu-rack"
profile = "sim-cdu"
transport = "tcp"
address = "127.0.0.1:{sim_port}"
unit_id = 1

[control]
period_ms = 1000
setpoint = 65.0

[simulator]
gpus_per_host = 8
gpu_profile = "h200-sxm"
cdu_profile = "sim-cdu"
listen = "127.0.0.1:{sim_port}"
workload = {{ kind = "idle" }}

[logging]
level = "warn"
"#,
        state = dir.join("sim-state").display().to_string(),
        profiles = repo_root().join("firmware-profiles").display().to_string(),
    );
    let path = dir.join("sim.toml");
    std::fs::write(&path, text).expect("write sim.toml");
    path
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the command name, which ends at the last ')': state is field 3, utime 14,
    // stime 15.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// VmRSS and VmHWM of `pid`, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let f: Vec<&str> = l.split_whitespace().take(3).collect();
    format!("load average {}", f.join(" "))
}

fn histogram(status: &serde_json::Value, name: &str) -> LatencyHistogram {
    serde_json::from_value(status["rack"]["latency"][name].clone())
        .unwrap_or_else(|e| panic!("/status has no rack.latency.{name} ({e})"))
}

/// `after` less `before`: the observations of the window.
fn window_of(before: &LatencyHistogram, after: &LatencyHistogram) -> LatencyHistogram {
    LatencyHistogram {
        bounds_ms: after.bounds_ms.clone(),
        counts: after
            .counts
            .iter()
            .zip(&before.counts)
            .map(|(a, b)| a - b)
            .collect(),
        count: after.count - before.count,
        sum_ms: after.sum_ms - before.sum_ms,
    }
}

fn describe(h: &LatencyHistogram) -> String {
    let q = |q: f64| match h.quantile_bound_ms(q) {
        Some(ms) if ms.is_finite() => format!("≤ {ms} ms"),
        Some(_) => "> 30 s".to_string(),
        None => "-".to_string(),
    };
    let mean = if h.count > 0 {
        h.sum_ms / h.count as f64
    } else {
        0.0
    };
    format!(
        "p50 {}, p99 {}, mean {mean:.1} ms, n = {}",
        q(0.5),
        q(0.99),
        h.count
    )
}

fn tick_max_s(metrics: &str) -> String {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("coolantd_tick_duration_max_seconds "))
        .map_or("?".into(), |v| {
            v.parse::<f64>()
                .map_or(v.to_string(), |s| format!("{:.1} ms", s * 1e3))
        })
}

async fn controller(title: &str, hosts: usize, period_ms: u64, window: Duration) {
    println!("\n== controller, {title}: real `coolantd run`, emulated agents ==");
    let broker = Mosquitto::start_with(free_port(), &broker_conf());
    let dir = coolantd_testkit::temp_dir("rack-scale");
    let sim_port = free_port();
    let http = free_port();
    let bin = env!("CARGO_BIN_EXE_coolantd");
    let _sim = DaemonProcess::spawn(
        Command::new(bin)
            .arg("sim")
            .arg("--config")
            .arg(sim_config(dir.path(), sim_port)),
    );
    let names: Vec<String> = (1..=hosts).map(|i| format!("h1-r0001-n{i:03}")).collect();
    let cfg = controller_config(dir.path(), &names, period_ms, sim_port, broker.port(), http);
    let counts = Arc::new(Counts::default());
    let mut agents = Vec::new();
    for (i, n) in names.iter().enumerate() {
        agents.push(
            Host::start(
                broker.port(),
                n.clone(),
                0x5ca1e000 + i as u64,
                counts.clone(),
            )
            .await,
        );
    }
    let ctl = DaemonProcess::spawn(Command::new(bin).arg("run").arg("--config").arg(&cfg));
    let period = Duration::from_millis(period_ms);

    // The agents' ticks, on the wall clock's period boundaries, until the window is over.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let driver = {
        let stop = stop.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(until_phase(since_epoch(), period, Duration::ZERO)).await;
                let t = since_epoch();
                let phase = t.as_millis() % HOT_EVERY.as_millis();
                let quarter = (t.as_millis() / HOT_EVERY.as_millis()) % 4;
                let hot_now = phase < HOT_FOR.as_millis();
                for (i, a) in agents.iter_mut().enumerate() {
                    a.publish_readings(hot_now && i as u128 % 4 == quarter)
                        .await;
                    counts.readings.fetch_add(1, Ordering::Relaxed);
                }
                // Sleeping past the boundary just served, so that a fast loop cannot serve
                // it twice.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // Steady: every host online, then one more hot/cool cycle for the caps to settle.
    let t0 = Instant::now();
    let online = loop {
        let ctl_ref = &ctl;
        let st = tokio::task::block_in_place(|| ctl_ref.wait_status(http, Duration::from_secs(30)));
        let online = st["rack"]["hosts"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|h| h["online"] == true).count());
        if online == hosts || t0.elapsed() > Duration::from_secs(60) {
            break online;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        online,
        hosts,
        "hosts online after 60 s; log:\n{}",
        ctl.log()
    );
    tokio::time::sleep(HOT_EVERY).await;

    let pid = ctl.id();
    let load0 = loadavg();
    let ctl_ref = &ctl;
    let st0 = tokio::task::block_in_place(|| ctl_ref.wait_status(http, Duration::from_secs(10)));
    let cpu0 = cpu_seconds(pid);
    let w0 = Instant::now();
    let (r0, l0, a0) = (
        counts.readings.load(Ordering::Relaxed),
        counts.leases.load(Ordering::Relaxed),
        counts.acks.load(Ordering::Relaxed),
    );
    tokio::time::sleep(window).await;
    let cpu1 = cpu_seconds(pid);
    let secs = w0.elapsed().as_secs_f64();
    let st1 = tokio::task::block_in_place(|| ctl_ref.wait_status(http, Duration::from_secs(10)));
    let metrics = tokio::task::block_in_place(|| {
        ctl_ref.wait_http_ok(http, "/metrics", Duration::from_secs(10))
    });
    let (rss, hwm) = rss_kib(pid);
    let load1 = loadavg();
    stop.store(true, Ordering::Relaxed);
    let _ = driver.await;

    let age = window_of(
        &histogram(&st0, "reading_age"),
        &histogram(&st1, "reading_age"),
    );
    let delay = window_of(
        &histogram(&st0, "reading_delay"),
        &histogram(&st1, "reading_delay"),
    );
    let ack = window_of(&histogram(&st0, "cap_ack"), &histogram(&st1, "cap_ack"));
    // Since start, a hot phase has passed (the warm-up lasts one): the path was exercised.
    for name in ["reading_delay", "cap_ack"] {
        assert!(
            histogram(&st1, name).count > 0,
            "no {name} observed; log:\n{}",
            ctl.log()
        );
    }
    let refused = st1["rack"]["refused_messages"].as_u64().unwrap_or(0);
    let gaps: u64 = st1["rack"]["hosts"]
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|h| h["missed"].as_u64()).sum());
    println!("window: {secs:.1} s; before: {load0}; after: {load1}");
    println!(
        "controller CPU: {:.2} % of one core; RSS {:.1} MiB (peak {:.1} MiB); longest tick {}",
        100.0 * (cpu1 - cpu0) / secs,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        tick_max_s(&metrics)
    );
    println!(
        "reading → decision (agent's stamp → tick, one clock): {}",
        describe(&delay)
    );
    println!(
        "reading arrival → decision (controller clock):       {}",
        describe(&age)
    );
    println!(
        "cap decision → acknowledgement:                        {}",
        describe(&ack)
    );
    println!(
        "in the window: {} readings published, {} leases received and {} acknowledged by the \
         agents; since start: {} messages refused, {} readings missed in sequence gaps",
        counts.readings.load(Ordering::Relaxed) - r0,
        counts.leases.load(Ordering::Relaxed) - l0,
        counts.acks.load(Ordering::Relaxed) - a0,
        refused,
        gaps
    );
}

/// One real `coolantd agent` with 8 simulated GPUs at 1 Hz.
fn agent(window: Duration) {
    println!("\n== agent: real `coolantd agent`, 8 simulated GPUs at 1 Hz ==");
    let broker = Mosquitto::start();
    let dir = coolantd_testkit::temp_dir("rack-scale-agent");
    let text = format!(
        r#"[site]
name = "bench"
host = "h1-r0001-n001"
state_dir = {state:?}
profiles_dir = {profiles:?}

[gpus]
backend = "simulated"

[simulator]
gpus_per_host = 8
gpu_profile = "h200-sxm"
cdu_profile = "sim-cdu"
listen = "127.0.0.1:{sim_port}"
workload = {{ kind = "idle" }}

[mqtt]
host = "127.0.0.1"
port = {broker}
topic_prefix = "{PREFIX}"

[agent]
period_ms = 1000

[logging]
level = "info"
"#,
        state = dir.path().join("state").display().to_string(),
        profiles = repo_root().join("firmware-profiles").display().to_string(),
        sim_port = free_port(),
        broker = broker.port(),
    );
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("write agent.toml");
    let agent = DaemonProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_coolantd"))
            .arg("agent")
            .arg("--config")
            .arg(&cfg),
    );
    // Connected and publishing, then a few ticks for start-up work to pass.
    agent.wait_log("connected to the MQTT broker", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(5));
    let pid = agent.id();
    let load0 = loadavg();
    let cpu0 = cpu_seconds(pid);
    let w0 = Instant::now();
    std::thread::sleep(window);
    let cpu1 = cpu_seconds(pid);
    let secs = w0.elapsed().as_secs_f64();
    let (rss, hwm) = rss_kib(pid);
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    println!("window: {secs:.1} s; before: {load0}; after: {}", loadavg());
    println!(
        "agent CPU: {:.3} % of one core; RSS {:.1} MiB (peak {:.1} MiB); {threads} threads",
        100.0 * (cpu1 - cpu0) / secs,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
