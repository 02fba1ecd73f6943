//! `coolantd agent` as an operable service, the real binary on simulated GPUs against real
//! peers: its points in VictoriaMetrics (through the InfluxDB write API), its `/metrics` read
//! by the Prometheus client's own parser, its alarms on a real Mosquitto (lease run out, broker
//! lost and regained), each logged once, and the energy counter in its readings.

use super::host_agent::{agent_config, hot_agent_config, spawn_agent, Wire, BOUND, HOST};
use super::service_http::{family, parse_with_prometheus_client, sample_value};
use coolantd::wire::Readings;
use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::mqtt_client::TestClient;
use coolantd_testkit::nvml_replay::Replay;
use coolantd_testkit::victoria::Victoria;
use coolantd_testkit::{free_port, repo_root, TempDir};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The agent's alarm topic: the daemon's `alarms/events` under its site and host.
const ALARMS: &str = "coolantd/rack1/node07/alarms/events";

/// Adds `extra` to the agent's file and reads the slow counters every second.
fn with(path: &Path, extra: &str) {
    let text = std::fs::read_to_string(path)
        .expect("read agent.toml")
        .replace(
            "backend = \"simulated\"",
            "backend = \"simulated\"\nslow_period_ms = 1000",
        );
    std::fs::write(path, format!("{text}\n{extra}\n")).expect("write agent.toml");
}

fn get(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "{url}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn alarm_lines(log: &str, id: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("ALARM") && l.contains(id))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_points_reach_influxdb_and_its_metrics_parse_tagged_with_the_host() {
    let broker = Mosquitto::start();
    let mut vm = Victoria::start();
    let dir = TempDir::new("agent-ops-points");
    let http = free_port();
    let cfg = agent_config(&dir, broker.port(), false);
    with(
        &cfg,
        &format!(
            "[influx]\nurl = \"{}\"\norg = \"test\"\nbucket = \"coolantd\"\ntoken = \"t\"\nflush_interval_ms = 50\n\n[http]\nlisten = \"127.0.0.1:{http}\"",
            vm.url()
        ),
    );
    let agent = spawn_agent(&cfg, &[]);
    let mut sub = Wire::connect(broker.port(), "test-ops-points").await;

    // The energy counter of the slow path rides in the readings.
    let r: Readings = sub
        .readings_until(&agent, "energy on every GPU", |r| {
            r.gpus.len() == 2 && r.gpus.iter().all(|g| g.energy_mj.is_some())
        })
        .await;
    assert!(r.gpus.iter().all(|g| g.energy_mj.is_some()), "{r:?}");

    // /metrics through the Prometheus client's parser.
    agent.wait_http_ok(http, "/healthz", BOUND);
    let text = get(&format!("http://127.0.0.1:{http}/metrics"));
    let families = parse_with_prometheus_client(&text);
    let me = [("site", "rack1"), ("host", HOST)];
    assert!(sample_value(family(&families, "agent_seq"), &me) >= 1.0);
    assert_eq!(
        sample_value(family(&families, "agent_broker_connected"), &me),
        1.0
    );
    assert!(sample_value(family(&families, "agent_readings_published"), &me) >= 1.0);
    assert_eq!(
        family(&families, "agent_readings_published")["type"],
        "counter"
    );
    assert_eq!(
        sample_value(family(&families, "agent_lease_active"), &me),
        0.0
    );
    assert_eq!(
        sample_value(family(&families, "agent_read_failures"), &me),
        0.0
    );
    for gpu in ["0", "1"] {
        let labels = [("site", "rack1"), ("host", HOST), ("gpu", gpu)];
        assert_eq!(
            sample_value(family(&families, "agent_gpu_guard_engaged"), &labels),
            0.0
        );
        assert_eq!(
            sample_value(family(&families, "agent_gpu_decided_cap_w"), &labels),
            700.0
        );
    }
    let core = family(&families, "gpu_core_temp_c");
    assert_eq!(
        core["samples"].as_array().map(Vec::len),
        Some(2),
        "{core:#}"
    );
    assert!(
        family(&families, "coolantd_tick_duration_seconds")["samples"][0]["value"]
            .as_f64()
            .is_some_and(|v| v > 0.0)
    );
    let status = get(&format!("http://127.0.0.1:{http}/status"));
    let status: serde_json::Value = serde_json::from_str(&status).expect("/status is JSON");
    assert_eq!(status["host"], HOST);
    assert_eq!(status["gpus"].as_array().map(Vec::len), Some(2));

    // The points in the database, tagged with the agent's host: its GPUs (fast and slow
    // fields) and its own.
    let gpus = vm.export_until("gpu_core_temp_c", |s| s.len() == 2);
    assert_eq!(gpus.len(), 2, "one series per GPU");
    for s in &gpus {
        assert_eq!(s.label("host"), Some(HOST));
        assert_eq!(s.label("site"), Some("rack1"));
        assert_eq!(s.label("model"), Some("NVIDIA H200"));
    }
    let energy = vm.export_until("gpu_energy_j", |s| s.len() == 2);
    assert_eq!(energy.len(), 2, "the slow counters are written too");
    let seq = vm.export_until("agent_seq", |s| s.iter().any(|s| s.values.len() >= 3));
    assert_eq!(seq.len(), 1);
    assert_eq!(seq[0].label("host"), Some(HOST));
    assert!(
        seq[0].values.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        seq[0].values
    );
    let guard = vm.export_until("agent_gpu_guard_cap_w", |s| s.len() == 2);
    assert!(guard.iter().all(|s| s.label("host") == Some(HOST)));

    // The database goes away for a while: the agent's points wait in its spool and arrive
    // once it is back, every tick's `seq` without a gap.
    vm.stop();
    let before = agent_metric(http, "agent_seq");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let during = agent_metric(http, "agent_seq");
    assert!(
        during >= before + 5.0,
        "the agent kept ticking: {before} → {during}"
    );
    vm.restart();
    let seq = vm.export_until("agent_seq", |s| {
        s.first()
            .is_some_and(|s| s.values.iter().any(|&v| v >= during))
    });
    let mut values = seq[0].values.clone();
    values.sort_by(f64::total_cmp);
    values.dedup();
    assert!(
        values.windows(2).all(|w| w[1] == w[0] + 1.0),
        "a tick's point was lost across the outage: {values:?}"
    );
    assert_eq!(values.first(), Some(&1.0), "from the first tick on");
    assert!(values.contains(&during));
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_and_a_lost_broker_are_alarmed_once_over_mqtt() {
    let mut broker = Mosquitto::start();
    let dir = TempDir::new("agent-ops-alarms");
    let http = free_port();
    let cfg = agent_config(&dir, broker.port(), false);
    // A first reconnect 2 s after the drop: the test's subscriber is back on the restarted
    // broker before the agent, so it hears what the agent publishes on its return.
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("reconnect_min_ms = 100", "reconnect_min_ms = 2000");
    std::fs::write(&cfg, text).expect("write");
    with(&cfg, &format!("[http]\nlisten = \"127.0.0.1:{http}\""));
    let agent = spawn_agent(&cfg, &[]);
    let mut events = TestClient::connect(broker.port(), "test-alarms", &[ALARMS]).await;
    let sub = Wire::connect(broker.port(), "test-ops-alarms").await;
    agent.wait_http_ok(http, "/healthz", BOUND);
    agent.wait_line("the agent's first readings", BOUND, |l| {
        l.contains("agent started")
    });

    // A lease of 600 ms that nobody renews: the guard takes over and the alarm is raised.
    sub.lease(7, 600, &[(0, 500.0)]).await;
    let raised = events
        .wait_for("lease_expired raised", BOUND, |m| {
            m.payload.contains("\"raised\"") && m.payload.contains("lease_expired:node07")
        })
        .await;
    // The daemon's alarm payload, to the letter of its schema.
    coolantd_testkit::json_schema::validate("mqtt-alarm.schema.json", raised.payload.as_bytes());
    let v: serde_json::Value = serde_json::from_str(&raised.payload).expect("JSON");
    assert_eq!(v["alarm"]["kind"], "lease_expired");
    assert_eq!(v["alarm"]["severity"], "warning");
    assert!(!raised.retain, "alarm events are not retained");
    // A renewal clears it.
    sub.lease(8, 60_000, &[(0, 500.0)]).await;
    events
        .wait_for("lease_expired cleared", BOUND, |m| {
            m.payload.contains("\"cleared\"") && m.payload.contains("lease_expired:node07")
        })
        .await;
    assert_eq!(alarm_lines(&agent.log(), "lease_expired:node07"), 1);

    // The broker goes away: the agent keeps ticking (its HTTP endpoint says so) and raises
    // broker_lost; both transitions reach a subscriber once the broker is back.
    broker.stop();
    let t0 = std::time::Instant::now();
    loop {
        let status = get(&format!("http://127.0.0.1:{http}/status"));
        if status.contains("broker_lost:node07") {
            break;
        }
        assert!(t0.elapsed() < BOUND, "no broker_lost in /status: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(events);
    drop(sub);
    broker.restart();
    let mut events = TestClient::connect(broker.port(), "test-alarms-2", &[ALARMS]).await;
    let raised = events
        .wait_for("broker_lost raised", BOUND, |m| {
            m.payload.contains("broker_lost:node07")
        })
        .await;
    assert!(raised.payload.contains("\"raised\""), "{}", raised.payload);
    let cleared = events
        .wait_for("broker_lost cleared", BOUND, |m| {
            m.payload.contains("broker_lost:node07")
        })
        .await;
    assert!(
        cleared.payload.contains("\"cleared\""),
        "{}",
        cleared.payload
    );
    coolantd_testkit::json_schema::validate("mqtt-alarm.schema.json", cleared.payload.as_bytes());
    // The counters of the leases above, on /metrics.
    assert!(agent_metric(http, "agent_leases_accepted") >= 2.0);
    assert_eq!(agent_metric(http, "agent_leases_expired"), 1.0);
    assert!(agent_metric(http, "agent_caps_applied") >= 2.0);
    let ack = agent_metric(http, "agent_ack_latency_ms");
    assert!(ack > 0.0 && ack < 1000.0, "ack latency {ack} ms");
    let log = agent.log();
    assert_eq!(alarm_lines(&log, "broker_lost:node07"), 1, "{log}");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_held_at_slowdown_is_one_alarm_event_and_one_log_line() {
    let broker = Mosquitto::start();
    let dir = TempDir::new("agent-ops-hot");
    let cfg = hot_agent_config(&dir, broker.port());
    // The guard's cut of each critical tick is a debug line: it shows how many ticks the GPU
    // spent at its slowdown margin, against which the alarm lines are counted.
    // A cut of 0.1 % per critical tick keeps the GPU at its margin for many ticks in a row.
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        "guard_critical_margin_k = 29.9",
        "guard_critical_margin_k = 29.99\nguard_critical_cut = 0.001",
    );
    std::fs::write(&cfg, text).expect("write");
    with(&cfg, "[logging]\nlevel = \"info,coolantd=debug\"");
    let mut events = TestClient::connect(broker.port(), "test-hot-alarms", &[ALARMS]).await;
    let agent = spawn_agent(&cfg, &[]);
    let raised = events
        .wait_for("gpu_at_slowdown raised", BOUND, |m| {
            m.payload.contains("gpu_at_slowdown:node07/gpu0")
        })
        .await;
    let v: serde_json::Value = serde_json::from_str(&raised.payload).expect("JSON");
    assert_eq!(v["transition"], "raised");
    assert_eq!(v["alarm"]["severity"], "critical");
    // Full load, the plant 50 × real time, small cuts: the GPU stays at its margin.
    agent.wait_line("a few more critical ticks", BOUND, |_| {
        agent_cuts(&agent.log()) >= 3
    });
    let again = events.collect(Duration::from_millis(500)).await;
    assert!(
        !again
            .iter()
            .any(|m| m.payload.contains("gpu_at_slowdown:node07/gpu0")
                && m.payload.contains("\"raised\"")),
        "raised again while still active: {again:?}"
    );
    let log = agent.log();
    assert_eq!(alarm_lines(&log, "gpu_at_slowdown:node07/gpu0"), 1, "{log}");
}

fn agent_cuts(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("guard cut its cap this tick") && l.contains("gpu=0"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_agent_is_ready_feeds_the_watchdog_and_refuses_a_period_too_long() {
    let broker = Mosquitto::start();
    let dir = TempDir::new("agent-ops-notify");
    let cfg = agent_config(&dir, broker.port(), false);
    let sock_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(BOUND)).expect("read timeout");
    let mut agent = DaemonProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_coolantd"))
            .args(["agent", "--config"])
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "10000000"),
    );
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(
        recv(),
        "READY=1",
        "READY=1 comes first, after the first tick"
    );
    for _ in 0..3 {
        assert_eq!(recv(), "WATCHDOG=1", "one ping per tick");
    }
    agent.signal(libc::SIGTERM);
    let mut stopping = false;
    for _ in 0..20 {
        if recv() == "STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM; log:\n{}", agent.log());
    let (status, _) = agent.wait_exit(BOUND).expect("the agent exits");
    assert!(status.success(), "{status:?}; log:\n{}", agent.log());

    // A watchdog of 300 ms cannot be fed by a 200 ms tick that may run late: refused with
    // EX_CONFIG, so systemd's RestartPreventExitStatus=78 stops a restart loop.
    let out = Command::new(env!("CARGO_BIN_EXE_coolantd"))
        .args(["agent", "--config"])
        .arg(&cfg)
        .env("WATCHDOG_USEC", "300000")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("agent.period_ms") && stderr.contains("300 ms"),
        "{stderr}"
    );
}

/// The value of the agent's own metric `name` on `/metrics`.
fn agent_metric(http: u16, name: &str) -> f64 {
    let text = get(&format!("http://127.0.0.1:{http}/metrics"));
    let families = parse_with_prometheus_client(&text);
    sample_value(
        family(&families, name),
        &[("site", "rack1"), ("host", HOST)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_read_failures_are_counted_on_metrics() {
    // The real NVML backend on the replay library (an H200 capture, 2 GPUs), in dry run.
    let replay = Replay::new("agent-read-failures", "h200", 2);
    let broker = Mosquitto::start();
    let dir = TempDir::new("agent-ops-nvml");
    let http = free_port();
    let cfg = dir.0.join("agent.toml");
    let text = format!(
        "[site]\nname = \"rack1\"\nhost = \"{HOST}\"\nstate_dir = {state:?}\nprofiles_dir = {profiles:?}\ndry_run = true\n\n\
         [gpus]\nbackend = \"nvml\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\n\
         [agent]\nperiod_ms = 100\n\n\
         [http]\nlisten = \"127.0.0.1:{http}\"\n",
        state = dir.0.join("state").display().to_string(),
        profiles = repo_root().join("firmware-profiles").display().to_string(),
        port = broker.port(),
    );
    std::fs::write(&cfg, text).expect("write agent.toml");
    let agent = DaemonProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_coolantd"))
            .args(["agent", "--config"])
            .arg(&cfg)
            .env("LD_LIBRARY_PATH", &replay.dir)
            .env_remove("NOTIFY_SOCKET"),
    );
    agent.wait_http_ok(http, "/healthz", BOUND);
    assert!(agent_metric(http, "agent_seq") >= 1.0);
    assert_eq!(agent_metric(http, "agent_read_failures"), 0.0);

    // GPU 1's temperature read times out from now on: one missing value per tick.
    replay.set_faults("timeout 1 nvmlDeviceGetTemperature\n");
    let t0 = std::time::Instant::now();
    let failing = loop {
        let n = agent_metric(http, "agent_read_failures");
        if n >= 3.0 {
            break n;
        }
        assert!(
            t0.elapsed() < BOUND,
            "read failures stay at {n}; log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    replay.set_faults("");
    // Once the fault is gone the count stops growing (a tick or two may still be in flight).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = agent_metric(http, "agent_read_failures");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(agent_metric(http, "agent_read_failures"), settled);
    assert!(settled >= failing);
    drop(agent);
}

#[test]
fn check_config_names_the_agents_sink_and_endpoint_and_refuses_their_faults() {
    let dir = TempDir::new("agent-ops-check");
    let cfg = agent_config(&dir, free_port(), false);
    let base = std::fs::read_to_string(&cfg).expect("read");
    let check = |extra: &str| {
        std::fs::write(&cfg, format!("{base}\n{extra}\n")).expect("write");
        Command::new(env!("CARGO_BIN_EXE_coolantd"))
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .expect("run check-config")
    };
    let out = check(
        "[influx]\nurl = \"http://127.0.0.1:8428\"\norg = \"o\"\nbucket = \"b\"\n\n[http]\nlisten = \"127.0.0.1:9105\"",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{out:?}");
    assert!(
        stdout.contains("InfluxDB http://127.0.0.1:8428") && stdout.contains("HTTP 127.0.0.1:9105"),
        "{stdout}"
    );

    let missing = dir.0.join("no-such-token");
    let out = check(&format!(
        "[influx]\nurl = \"http://127.0.0.1:8428\"\norg = \"o\"\nbucket = \"b\"\ntoken_file = {:?}\n\n[http]\nlisten = \"localhost:9105\"",
        missing.display().to_string()
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("http.listen"),
        "the bad address is named: {stderr}"
    );

    let out = check(&format!(
        "[influx]\nurl = \"http://127.0.0.1:8428\"\norg = \"o\"\nbucket = \"b\"\ntoken_file = {:?}",
        missing.display().to_string()
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("influx") && stderr.contains("no-such-token"),
        "the missing token file is named: {stderr}"
    );
}
