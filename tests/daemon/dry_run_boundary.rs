//! Dry run proven where writes would leave the process. The real `coolantd` binary runs with
//! real NVML calls into the replay library (8 replayed H200s, every call recorded) and real
//! Modbus TCP to the simulated CDU through a proxy that counts write function codes on the
//! wire. Through start-up, manual commands over MQTT (real Mosquitto), a leak emergency (the
//! proxy sets the leak bit in the CDU's answers), a reload (SIGHUP), SIGTERM and `probe`, a dry
//! run must make no NVML setter call and send no Modbus write, watchdog writes included. The
//! same run without dry-run shows that both counters do count.

use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::modbus_proxy;
use coolantd_testkit::mosquitto;
use coolantd_testkit::mqtt_client;
use coolantd_testkit::nvml_replay;
use coolantd_testkit::sim_daemon;

use modbus_proxy::Proxy;
use nvml_replay::Replay;
use serde_json::Value;
use sim_daemon::{free_port, sim_config_text, TempDir};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
const BASE: &str = "coolantd/sim/sim-node01";
/// A guard against a hung test only; behaviour is bounded in control ticks below.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `site.dry_run = true` in the configuration.
    ConfigKey,
    /// `run --dry-run` with a configuration that does not ask for it.
    Flag,
    /// No dry run: the control experiment that shows the counters count.
    Live,
}

struct Rig {
    replay: Replay,
    proxy: Proxy,
    broker: mosquitto::Mosquitto,
    dir: TempDir,
    config: PathBuf,
    http: u16,
    proc: DaemonProcess,
}

fn config_text(
    dir: &Path,
    sim: u16,
    proxy: SocketAddr,
    http: u16,
    mqtt: u16,
    mode: Mode,
    setpoint: f64,
) -> String {
    let mut replace = vec![
        ("backend = \"simulated\"", "backend = \"nvml\""),
        ("period_ms = 1000", "period_ms = 100"),
    ];
    let setpoint_line = format!("setpoint = {setpoint:.1}");
    replace.push(("setpoint = 55.0", &setpoint_line));
    if mode == Mode::ConfigKey {
        replace.push((
            "host = \"sim-node01\"",
            "host = \"sim-node01\"\ndry_run = true",
        ));
    }
    let text = sim_config_text(
        sim,
        &dir.join("state"),
        &replace,
        &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt}\n"),
    );
    // The simulator listens on `sim`; the daemon reaches it only through the proxy.
    let cdu = format!("address = \"127.0.0.1:{sim}\"");
    assert!(
        text.contains(&cdu),
        "the CDU address moved in config/sim.toml"
    );
    text.replace(&cdu, &format!("address = \"{proxy}\""))
}

impl Rig {
    async fn start(tag: &str, mode: Mode) -> Rig {
        let replay = Replay::new(tag, "h200", 8);
        let broker = mosquitto::Mosquitto::start();
        let sim = free_port();
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], sim))).await;
        let dir = TempDir::new(tag);
        let http = free_port();
        let config = dir.0.join("coolantd.toml");
        let text = config_text(&dir.0, sim, proxy.addr, http, broker.port(), mode, 55.0);
        std::fs::write(&config, text).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"]).arg(&config);
        if mode == Mode::Flag {
            cmd.arg("--dry-run");
        }
        let proc = DaemonProcess::spawn(
            cmd
                // NVML is found the way the driver's library is: by its name on the search path.
                .env("LD_LIBRARY_PATH", &replay.dir)
                .env_remove("NOTIFY_SOCKET"),
        );
        Rig {
            replay,
            proxy,
            broker,
            dir,
            config,
            http,
            proc,
        }
    }

    fn log(&self) -> String {
        self.proc.log()
    }

    fn status(&self) -> Option<Value> {
        let (code, body) = sim_daemon::http_get(self.http, "/status");
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// Waits until `/status` satisfies `pred`; returns it.
    async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return s;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not reached; last status {:?}\nlog:\n{}",
                self.status(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` more control ticks have run.
    async fn ticks(&self, n: u64) -> Value {
        let t0 = self
            .wait_status("a first tick", |s| s["tick"].as_u64().is_some())
            .await["tick"]
            .as_u64()
            .unwrap_or(0);
        self.wait_status(&format!("{n} more ticks"), |s| {
            s["tick"].as_u64().is_some_and(|t| t >= t0 + n)
        })
        .await
    }

    fn signal(&self, sig: libc::c_int) {
        self.proc.signal(sig);
    }

    async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !self.log().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {needle:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.proc.try_wait() {
                return st;
            }
            if tokio::time::Instant::now() >= deadline {
                self.proc.kill();
                panic!("still running after SIGTERM; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sets the leak bit (discrete input 0 of the sim-cdu profile) in every function-code-2
/// answer: the CDU reports a wet leak cable.
fn leak_patch() -> modbus_proxy::Patch {
    Box::new(|pdu: &mut Vec<u8>| {
        if pdu.len() >= 3 && pdu[0] == 2 {
            pdu[2] |= 1;
            true
        } else {
            false
        }
    })
}

/// What crossed the two write boundaries during one whole run.
struct Crossed {
    setter_calls: Vec<String>,
    modbus_writes: u64,
    modbus_requests: u64,
    nvml_calls: usize,
}

/// Start-up, manual commands, a leak emergency, a reload, SIGTERM, then `probe`.
async fn whole_run(tag: &str, mode: Mode) -> Crossed {
    let mut rig = Rig::start(tag, mode).await;
    let s = rig.ticks(5).await;
    assert_eq!(s["dry_run"].as_bool(), Some(mode != Mode::Live), "{s}");
    assert!(
        rig.replay.count("nvmlDeviceGetTemperature", Some(7)) > 0,
        "the daemon reads the replayed GPUs through NVML; log:\n{}",
        rig.log()
    );

    // Manual commands from an integrator over MQTT.
    let mut client = mqtt_client::TestClient::connect(
        rig.broker.port(),
        &format!("{tag}-integrator"),
        &[&format!("{BASE}/command/reply")],
    )
    .await;
    for (id, cmd) in [
        ("m1", r#""command":"set_mode","mode":"manual""#),
        ("p1", r#""command":"set_pump_speed","percent":85"#),
    ] {
        let reply = loop {
            // Resent until the daemon's subscription is in place (it connects in the background).
            client
                .publish(
                    &format!("{BASE}/command"),
                    &format!(r#"{{"id":"{id}",{cmd}}}"#),
                )
                .await;
            let got = tokio::time::timeout(
                Duration::from_secs(2),
                client.wait_for("a command reply", PATIENCE, |m| m.payload.contains(id)),
            )
            .await;
            if let Ok(m) = got {
                break m;
            }
        };
        assert!(
            reply.payload.contains("accepted"),
            "{id}: {}",
            reply.payload
        );
    }
    rig.wait_status("manual mode", |s| s["mode"] == "manual")
        .await;
    rig.ticks(5).await;

    // A leak: the emergency would put every GPU at its minimum cap and the pump at maximum.
    rig.proxy.set_patch(Some(leak_patch()));
    let s = rig
        .wait_status("the leak emergency", |s| s["state"] == "emergency")
        .await;
    assert!(
        s["decisions"].to_string().contains("200"),
        "the emergency decided minimum caps: {s}"
    );
    rig.ticks(5).await;

    // A reload with a new set point, taken live.
    let text = std::fs::read_to_string(&rig.config).expect("read config");
    std::fs::write(
        &rig.config,
        text.replace("setpoint = 55.0", "setpoint = 53.0"),
    )
    .expect("write");
    rig.signal(libc::SIGHUP);
    rig.wait_log("configuration reloaded").await;
    rig.ticks(3).await;

    // SIGTERM: the shutdown path (which restores caps in a live run).
    rig.signal(libc::SIGTERM);
    let st = rig.wait_exit().await;
    assert!(st.success(), "exit {st:?}; log:\n{}", rig.log());

    // `probe` through the same boundaries, with the same configuration.
    let mut probe = Command::new(BIN);
    probe.args(["probe", "--json", "--config"]).arg(&rig.config);
    // probe has no dry-run flag: it never writes, whatever the configuration says.
    let out = probe
        .env("LD_LIBRARY_PATH", &rig.replay.dir)
        .output()
        .expect("run probe");
    assert!(
        out.status.success(),
        "probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("probe --json is JSON");
    assert_eq!(report["gpus"].as_array().map(Vec::len), Some(8));
    assert!(!report["cdus"].as_array().expect("cdus").is_empty());

    if mode != Mode::Live {
        assert!(
            !rig.dir.0.join("state/power-limits.json").exists(),
            "a dry run records no limits to restore"
        );
    }
    Crossed {
        setter_calls: rig.replay.setter_calls(),
        modbus_writes: rig.proxy.writes(),
        modbus_requests: rig.proxy.requests(),
        nvml_calls: rig.replay.calls().len(),
    }
}

fn report(mode: &str, c: &Crossed) {
    eprintln!(
        "{mode}: {} NVML calls recorded, {} NVML setter calls; {} Modbus requests, {} writes",
        c.nvml_calls,
        c.setter_calls.len(),
        c.modbus_requests,
        c.modbus_writes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_dry_run_writes_nothing_at_either_boundary() {
    let c = whole_run("dry-key", Mode::ConfigKey).await;
    report("site.dry_run = true", &c);
    assert!(
        c.modbus_requests > 50,
        "the CDU was polled through the proxy"
    );
    assert_eq!(
        c.setter_calls,
        Vec::<String>::new(),
        "NVML setter calls in a dry run"
    );
    assert_eq!(
        c.modbus_writes, 0,
        "Modbus writes (watchdog included) in a dry run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_dry_run_flag_writes_nothing_at_either_boundary() {
    let c = whole_run("dry-flag", Mode::Flag).await;
    report("run --dry-run", &c);
    assert!(
        c.modbus_requests > 50,
        "the CDU was polled through the proxy"
    );
    assert_eq!(
        c.setter_calls,
        Vec::<String>::new(),
        "NVML setter calls in a dry run"
    );
    assert_eq!(
        c.modbus_writes, 0,
        "Modbus writes (watchdog included) in a dry run"
    );
}

/// The same run live: the counters see the caps, their restoration and the Modbus writes,
/// so the zeros above are measurements, not a counter that never counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_crosses_both_boundaries() {
    let c = whole_run("live", Mode::Live).await;
    report("live", &c);
    assert!(
        c.setter_calls.iter().any(|l| l.contains("limit=200000")),
        "the leak emergency capped GPUs at 200 W: {:?}",
        c.setter_calls
    );
    assert!(
        c.setter_calls.iter().any(|l| l.contains("limit=700000")),
        "SIGTERM restored the original limits: {:?}",
        c.setter_calls
    );
    assert!(
        c.modbus_writes > 10,
        "pump and watchdog writes: {}",
        c.modbus_writes
    );
}

/// A GPU whose power cap NVML refuses as not supported is asked once, then remembered: the
/// leak emergency asks for the minimum cap on every GPU for as long as it lasts, and the
/// refusing GPU must not cost an NVML call (and a log line) on each of those ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_nvml_does_not_support_is_asked_once() {
    let rig = Rig::start("cap-unsupported", Mode::Live).await;
    rig.replay
        .set_faults("unsupported 3 nvmlDeviceSetPowerManagementLimit\n");
    rig.ticks(3).await;
    rig.proxy.set_patch(Some(leak_patch()));
    rig.wait_status("the leak emergency", |s| s["state"] == "emergency")
        .await;
    rig.ticks(10).await;
    let set = "nvmlDeviceSetPowerManagementLimit";
    assert!(
        rig.replay.count(set, Some(2)) >= 1,
        "the other GPUs were capped: {:?}",
        rig.replay.setter_calls()
    );
    assert_eq!(
        rig.replay.count(set, Some(3)),
        1,
        "GPU 3 refused its cap as not supported; it must be asked once in 10 emergency \
         ticks: {:?}",
        rig.replay.setter_calls()
    );
    assert_eq!(
        rig.log()
            .matches("power caps are not supported for this GPU")
            .count(),
        1,
        "logged once:\n{}",
        rig.log()
    );
}
