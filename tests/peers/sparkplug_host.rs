//! Sparkplug B against an independent implementation: pysparkplug (PyPI), acting as the
//! primary host application through a real Mosquitto, and the real `coolantd` binary on
//! the plant simulator as the edge node.
//!
//! The host (crates/coolantd-testkit/python/spb_host.py) decodes every message with pysparkplug and prints
//! it as a JSON line; this test asserts on those lines: births with every metric's name,
//! type and unit; data that decodes against the births' aliases; `seq` counting without a
//! gap; no birth before the primary host is online, a new birth when it returns and on a
//! rebirth request; an NCMD set point applied and reflected in the next NDATA; an invalid
//! one refused with the same reason the JSON command path gives; manual mode and a pump
//! speed applied (the CDU's DDATA follows); an acknowledgement of an inactive alarm refused;
//! a new bdSeq after the broker restarts; and the NDEATH with the birth's bdSeq when the
//! daemon is SIGKILLed.
//!
//! The virtual environment comes from scripts/test.sh (`target/spb-venv`, pysparkplug
//! pinned). Without it the test is skipped with a message, except under CI=true, where it
//! fails.

use coolantd_testkit::mosquitto;
use coolantd_testkit::sim_daemon;

use mosquitto::Mosquitto;
use serde_json::{json, Value};
use sim_daemon::{free_port, sim_config_text, TempDir};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
const GROUP: &str = "coolantd-test";
const HOST_ID: &str = "scada";
/// The simulator's host name (`site.host` in config/sim.toml): the edge node id.
const NODE: &str = "sim-node01";
/// Generous for a loaded 2-core machine; each wait normally ends within a few ticks.
const WAIT: Duration = Duration::from_secs(30);
/// The simulator's GPU count (`gpus_per_host` in config/sim.toml).
const GPUS: usize = 8;

fn venv_python() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spb-venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    let msg = format!(
        "{} is missing: run scripts/test.sh (it creates the venv with pysparkplug)",
        p.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// The pysparkplug host: its output lines arrive on a channel; killed on drop.
struct Host {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
    /// Every line seen, for failure messages and sequence checks.
    seen: Vec<Value>,
}

impl Host {
    fn start(python: &Path, port: u16, reply_topic: &str) -> Host {
        let script = coolantd_testkit::python_script("spb_host.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--port", &port.to_string(), "--group", GROUP])
            .args(["--host-id", HOST_ID, "--reply-topic", reply_topic])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the pysparkplug host");
        let stdin = child.stdin.take().expect("host stdin");
        let stdout = child.stdout.take().expect("host stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| json!({"type": "error", "error": format!("{e}: {line}")}));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Host {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, req: Value) {
        writeln!(self.stdin, "{req}").expect("write to the host");
        self.stdin.flush().expect("flush the host's stdin");
    }

    /// The next line that satisfies `pred`; fails on a decode error or after [`WAIT`].
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = match self.lines.recv_timeout(left) {
                Ok(v) => v,
                Err(_) => panic!(
                    "no {what} from the host within {WAIT:?}; last lines:\n{}",
                    self.tail()
                ),
            };
            self.seen.push(v.clone());
            assert_ne!(v["type"], "error", "pysparkplug could not decode: {v}");
            if pred(&v) {
                return v;
            }
        }
    }

    /// A line already seen that satisfies `pred`, or else the next one.
    fn seen_or_wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        self.wait_for(what, pred)
    }

    fn tail(&self) -> String {
        let n = self.seen.len().saturating_sub(15);
        self.seen[n..]
            .iter()
            .map(|v| {
                let s = v.to_string();
                s.chars().take(300).collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric<'a>(msg: &'a Value, name: &str) -> Option<&'a Value> {
    msg["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

fn is(msg: &Value, kind: &str) -> bool {
    msg["type"] == kind && msg["node"] == NODE
}

/// `Node Control/Last Command` in an NDATA, when it carries one.
fn last_command(msg: &Value) -> Option<String> {
    if !is(msg, "NDATA") {
        return None;
    }
    metric(msg, "Node Control/Last Command")?["value"]
        .as_str()
        .map(str::to_string)
}

fn ncmd(name: &str, datatype: &str, value: Value) -> Value {
    json!({"node": NODE, "ncmd": [{"name": name, "datatype": datatype, "value": value}]})
}

#[test]
fn pysparkplug_host_decodes_births_data_death_and_commands_apply() {
    let Some(python) = venv_python() else { return };
    let mut broker = Mosquitto::start();
    let reply_topic = format!("coolantd/sim/{NODE}/command/reply");
    let mut host = Host::start(&python, broker.port(), &reply_topic);
    host.wait_for("ready line", |v| v["type"] == "ready");

    let dir = TempDir::new("sparkplug");
    let text = sim_config_text(
        free_port(),
        &dir.0,
        &[("period_ms = 1000", "period_ms = 200")],
        &format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\ntelemetry_period_ms = 200\n\n\
             [mqtt.sparkplug]\ngroup_id = \"{GROUP}\"\nprimary_host_id = \"{HOST_ID}\"\n",
            broker.port()
        ),
    );
    let config = dir.0.join("site.toml");
    std::fs::write(&config, text).expect("write the configuration");
    let log = dir.0.join("daemon.log");
    let start = || {
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("daemon log"),
            )
            .spawn()
            .expect("start coolantd run")
    };
    let mut daemon = Daemon(start());
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Birth: NBIRTH with seq 0, bdSeq and every node metric typed; units in properties.
    let nbirth = host.wait_for("NBIRTH", |v| is(v, "NBIRTH"));
    assert_eq!(nbirth["seq"], 0, "{nbirth}");
    let bd_seq = metric(&nbirth, "bdSeq").expect("NBIRTH carries bdSeq")["value"].clone();
    assert!(bd_seq.is_u64(), "{nbirth}");
    for m in nbirth["metrics"].as_array().expect("metrics") {
        assert_ne!(m["datatype"], "UNKNOWN", "{m}");
        assert!(m["alias"].is_u64(), "{m}");
    }
    let sp = metric(&nbirth, "control/setpoint_c").expect("set point in NBIRTH");
    assert_eq!(
        (sp["datatype"].as_str(), sp["value"].as_f64()),
        (Some("DOUBLE"), Some(55.0))
    );
    for (name, datatype) in [
        ("control/mode", "STRING"),
        ("control/state_code", "INT64"),
        ("control/ready", "BOOLEAN"),
        ("Node Control/Rebirth", "BOOLEAN"),
        ("Node Control/Pump Speed", "DOUBLE"),
        ("Node Control/Ack Alarm", "STRING"),
    ] {
        let m = metric(&nbirth, name).unwrap_or_else(|| panic!("{name} missing: {nbirth}"));
        assert_eq!(m["datatype"], datatype, "{m}");
    }
    let node_units = host.seen_or_wait("NBIRTH units", |v| {
        v["type"] == "units" && v["topic"] == format!("spBv1.0/{GROUP}/NBIRTH/{NODE}")
    });
    assert_eq!(
        node_units["units"]["control/setpoint_c"], "°C",
        "{node_units}"
    );

    // One DBIRTH per device: the CDU and every GPU.
    let mut devices = Vec::new();
    while devices.len() < GPUS + 1 {
        let d = host.wait_for("DBIRTH", |v| is(v, "DBIRTH"));
        let id = d["device"].as_str().expect("device id").to_string();
        if id == "cdu-sim" {
            let flow = metric(&d, "coolant/flow_lpm").expect("flow in the CDU's DBIRTH");
            assert_eq!(flow["datatype"], "DOUBLE");
            assert!(metric(&d, "coolant/leak").is_some_and(|m| m["datatype"] == "BOOLEAN"));
        } else {
            let core = metric(&d, "gpu/core_temp_c").expect("core temperature in DBIRTH");
            assert_eq!(core["datatype"], "DOUBLE", "{d}");
        }
        devices.push(id);
    }
    devices.sort();
    let mut expected: Vec<String> = (0..GPUS).map(|i| format!("gpu{i}")).collect();
    expected.push("cdu-sim".into());
    expected.sort();
    assert_eq!(devices, expected);
    let units = host.seen_or_wait("CDU DBIRTH units", |v| {
        v["type"] == "units" && v["topic"] == format!("spBv1.0/{GROUP}/DBIRTH/{NODE}/cdu-sim")
    });
    assert_eq!(units["units"]["coolant/flow_lpm"], "l/min", "{units}");
    assert_eq!(units["units"]["coolant/dp_kpa"], "kPa", "{units}");

    // Data decodes against the births' aliases (a decode failure fails wait_for).
    let ddata = host.wait_for("DDATA", |v| is(v, "DDATA"));
    assert!(
        ddata["metrics"]
            .as_array()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|m| m["name"].is_string())),
        "{ddata}"
    );
    host.wait_for("NDATA", |v| is(v, "NDATA"));

    // A valid set point: applied and reflected in the next NDATA.
    host.send(ncmd("control/setpoint_c", "DOUBLE", json!(50.0)));
    let nd = host.wait_for("NDATA with the accepted set point", |v| {
        last_command(v).is_some_and(|t| t.starts_with("accepted: control/setpoint_c"))
    });
    let applied = match metric(&nd, "control/setpoint_c") {
        Some(m) => m["value"].clone(),
        None => host.wait_for("NDATA with set point 50", |v| {
            is(v, "NDATA") && metric(v, "control/setpoint_c").is_some()
        })["metrics"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == "control/setpoint_c"))
            .map(|m| m["value"].clone())
            .unwrap_or_default(),
    };
    assert_eq!(applied.as_f64(), Some(50.0), "{nd}");

    // An invalid set point: refused, with the reason the JSON command path gives.
    host.send(ncmd("control/setpoint_c", "DOUBLE", json!(95.0)));
    let refused = host.wait_for("NDATA with the refused set point", |v| {
        last_command(v).is_some_and(|t| t.starts_with("rejected: control/setpoint_c = 95"))
    });
    let text = last_command(&refused).unwrap_or_default();
    host.send(json!({
        "topic": format!("coolantd/sim/{NODE}/command"),
        "json": {"id": "j1", "command": "set_setpoint", "celsius": 95.0}
    }));
    let reply = host.wait_for("JSON command reply", |v| v["type"] == "reply");
    let reason = reply["payload"]["reason"]
        .as_str()
        .expect("a rejection reason");
    assert_eq!(reply["payload"]["result"], "rejected");
    assert!(
        text.ends_with(reason) && reason.contains("outside"),
        "Sparkplug said `{text}`, the JSON path `{reason}`"
    );
    assert!(
        metric(&refused, "control/setpoint_c").is_none(),
        "the refused set point changed the set point: {refused}"
    );

    // Manual mode and a pump speed: applied, and the CDU's pump follows in its DDATA.
    host.send(ncmd("control/mode", "STRING", json!("manual")));
    host.wait_for("NDATA with manual mode", |v| {
        is(v, "NDATA") && metric(v, "control/mode").is_some_and(|m| m["value"] == "manual")
    });
    host.send(ncmd("Node Control/Pump Speed", "DOUBLE", json!(70.0)));
    host.wait_for("NDATA with the pump speed", |v| {
        is(v, "NDATA") && metric(v, "Node Control/Pump Speed").is_some_and(|m| m["value"] == 70.0)
    });
    host.wait_for("the CDU's pump command at 70 %", |v| {
        is(v, "DDATA")
            && v["device"] == "cdu-sim"
            && metric(v, "coolant/pump_command_pct")
                .and_then(|m| m["value"].as_f64())
                .is_some_and(|p| (p - 70.0).abs() < 0.5)
    });
    // Acknowledging an alarm that is not active: refused by the core, as over JSON.
    host.send(ncmd("Node Control/Ack Alarm", "STRING", json!("leak:nope")));
    host.wait_for("the refused acknowledgement", |v| {
        last_command(v).is_some_and(|t| t.ends_with("no active alarm `leak:nope`"))
    });
    host.send(ncmd("control/mode", "STRING", json!("auto")));
    host.wait_for("NDATA with auto mode", |v| {
        is(v, "NDATA") && metric(v, "control/mode").is_some_and(|m| m["value"] == "auto")
    });

    // The primary host goes away and comes back: a new birth, same session (bdSeq).
    host.send(json!({"state": false}));
    host.wait_for("sent", |v| v["type"] == "sent");
    host.send(json!({"state": true}));
    let reborn = host.wait_for("NBIRTH after the host's return", |v| is(v, "NBIRTH"));
    assert_eq!(reborn["seq"], 0);
    assert_eq!(metric(&reborn, "bdSeq").map(|m| &m["value"]), Some(&bd_seq));
    assert_eq!(
        metric(&reborn, "control/setpoint_c").and_then(|m| m["value"].as_f64()),
        Some(50.0)
    );

    // Rebirth on request.
    host.send(ncmd("Node Control/Rebirth", "BOOLEAN", json!(true)));
    host.wait_for("NBIRTH after Rebirth", |v| is(v, "NBIRTH"));
    host.wait_for("NDATA after the rebirth", |v| is(v, "NDATA"));

    // The broker restarts (forgetting everything): a new session, a new bdSeq in its will
    // and in its NBIRTH, after the host's STATE (the host reconnects and republishes it).
    broker.restart();
    let reborn = host.wait_for("NBIRTH of the next session", |v| is(v, "NBIRTH"));
    let next_bd_seq = metric(&reborn, "bdSeq").expect("bdSeq")["value"].clone();
    assert_ne!(next_bd_seq, bd_seq, "a new session keeps bdSeq: {reborn}");
    host.wait_for("DDATA in the next session", |v| is(v, "DDATA"));

    // Killed without a goodbye: the broker delivers the will, the NDEATH with this bdSeq.
    daemon.0.kill().expect("SIGKILL the daemon");
    let _ = daemon.0.wait();
    let death = host.wait_for("NDEATH", |v| is(v, "NDEATH"));
    assert_eq!(
        death["bd_seq"],
        next_bd_seq,
        "{death}\ndaemon log:\n{}",
        daemon_log()
    );

    // Every message of the node counts seq up by one (mod 256), from 0 at each NBIRTH.
    let mut prev: Option<u64> = None;
    for v in &host.seen {
        let kind = v["type"].as_str().unwrap_or("");
        if !matches!(kind, "NBIRTH" | "DBIRTH" | "NDATA" | "DDATA") || v["node"] != NODE {
            continue;
        }
        let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {v}"));
        if kind == "NBIRTH" {
            assert_eq!(seq, 0);
        } else if let Some(p) = prev {
            assert_eq!(seq, (p + 1) % 256, "seq gap before {v}");
        }
        prev = Some(seq);
    }

    // A clean stop (SIGTERM) publishes the NDEATH itself: a clean DISCONNECT suppresses the
    // will. A new process starts bdSeq again at 0.
    let mut daemon = Daemon(start());
    let nbirth = host.wait_for("NBIRTH of the restarted daemon", |v| is(v, "NBIRTH"));
    let bd_seq = metric(&nbirth, "bdSeq").expect("bdSeq")["value"].clone();
    assert_eq!(bd_seq, 0, "{nbirth}");
    let status = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let death = host.wait_for("NDEATH on a clean stop", |v| is(v, "NDEATH"));
    assert_eq!(death["bd_seq"], bd_seq, "{death}");
    let code = daemon.0.wait().expect("the daemon exits");
    assert!(code.success(), "{code}\n{}", daemon_log());
}

/// The daemon's process; killed on drop if the test fails before stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
