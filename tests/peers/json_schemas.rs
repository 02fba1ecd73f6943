//! Real JSON outputs validated against the schemas in `docs/schemas/` with an independent
//! validator (python3-jsonschema, Draft 2020-12): `coolantd probe --json` on the simulator,
//! once with every register read and once with the CDU unreachable (the error shape); and
//! `/status` and the MQTT state, telemetry, alarm events and command replies of the real
//! binary on the simulator through a real Mosquitto, in normal operation and in failsafe.

use coolantd_testkit::mosquitto;
use coolantd_testkit::mqtt_client;
use coolantd_testkit::sim_daemon;

use sim_daemon::{free_port, sim_config_text, TempDir};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");

/// Validates `doc` against `docs/schemas/<schema>` (the testkit's validator).
pub(crate) fn validate(schema: &str, doc: &[u8]) {
    coolantd_testkit::json_schema::validate(schema, doc)
}

fn probe(replace: &[(&str, &str)]) -> serde_json::Value {
    probe_text(|t| t, replace)
}

fn probe_text(edit: impl Fn(String) -> String, replace: &[(&str, &str)]) -> serde_json::Value {
    let dir = TempDir::new("probe-json");
    let port = free_port();
    let text = edit(sim_config_text(port, &dir.0.join("state"), replace, ""));
    let config = dir.0.join("coolantd.toml");
    std::fs::write(&config, text).expect("write config");
    let out = Command::new(BIN)
        .args(["probe", "--json", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    validate("probe.schema.json", &out.stdout);
    serde_json::from_slice(&out.stdout).expect("probe --json is JSON")
}

#[test]
fn probe_json_matches_its_schema_with_values() {
    let r = probe(&[]);
    let regs = r["cdus"][0]["registers"].as_array().expect("registers");
    let supply = regs
        .iter()
        .find(|x| x["role"] == "supply_temperature")
        .expect("supply register");
    assert_eq!(supply["reading"]["unit"], "°C", "{supply}");
    assert!(supply["reading"]["value"].is_number(), "{supply}");
    assert_eq!(supply["verdict"], "plausible");
    assert_eq!(r["gpus"][0]["core_temp"]["unit"], "°C");
    // Nothing of Rust's enum or Duration encodings leaks out, and no duration in ms.
    let text = r.to_string();
    for leak in [
        "\"Ok\"",
        "\"Err\"",
        "\"secs\"",
        "\"nanos\"",
        "_ms\":",
        "\"time_ns\"",
    ] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
}

#[test]
fn probe_json_matches_its_schema_with_an_unreachable_cdu() {
    // Port 1 on loopback: nothing listens, so every register is a transport error.
    let r = probe(&[("address = \"127.0.0.1:", "address = \"127.0.0.1:1\"\n#")]);
    let regs = r["cdus"][0]["registers"].as_array().expect("registers");
    assert!(!regs.is_empty());
    for reg in regs {
        assert_eq!(reg["reading"]["kind"], "transport", "{reg}");
        assert!(reg["reading"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()));
        assert_eq!(reg["verdict"], "unreadable");
    }
}

#[test]
fn probe_needs_no_control_table_but_run_does() {
    // config/sim.toml without its [control] and [control.pid] tables.
    let strip = |t: String| {
        let start = t.find("[control]").expect("sim.toml has [control]");
        let end = t.find("[simulator]").expect("sim.toml has [simulator]");
        format!("{}{}", &t[..start], &t[end..])
    };
    let r = probe_text(strip, &[]);
    assert_eq!(r["gpus"].as_array().map(Vec::len), Some(8));
    assert!(r["cdus"][0]["registers"][0]["reading"]["value"].is_number());

    let dir = TempDir::new("no-control");
    let text = strip(sim_config_text(free_port(), &dir.0.join("state"), &[], ""));
    let config = dir.0.join("coolantd.toml");
    std::fs::write(&config, text).expect("write config");
    let out = Command::new(BIN)
        .args(["check-config"])
        .arg(&config)
        .output()
        .expect("run check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "run configs still need [control]");
    assert!(err.contains("control") && err.contains("probe"), "{err}");
}

/// The keys of Rust's own encodings (`Duration`, `Result`), which no output may carry.
fn assert_no_rust_internals(what: &str, text: &str) {
    for leak in ["\"Ok\"", "\"Err\"", "\"secs\"", "\"nanos\""] {
        assert!(!text.contains(leak), "{what}: {leak} in {text}");
    }
    let doc: serde_json::Value = serde_json::from_str(text).expect("JSON");
    assert_units_in_keys(what, "", &doc);
}

/// The unit suffixes of docs/json.md: a number with a unit carries it in its key.
const UNIT_SUFFIXES: [&str; 9] = [
    "_c", "_k", "_lpm", "_kpa", "_pct", "_w", "_s", "_unix_ns", "_j",
];

/// Keys whose numbers are counts, indices or raw words, without a unit.
const UNITLESS: [&str; 7] = [
    "tick",
    "index",
    "late_polls",
    "superseded_writes",
    "requests",
    "timeouts",
    "value",
];

/// docs/json.md's rule, checked on a whole document: every number under an object key has
/// a unit suffix or is a count, no key holds milliseconds (`_ms`), and the wall clock is
/// `*_unix_ns`, never a bare `time_ns`. Metric points keep InfluxDB's field names, which
/// docs/metrics.md owns, so `fields` is not walked.
fn assert_units_in_keys(what: &str, path: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{path}/{k}");
                assert!(!k.ends_with("_ms"), "{what}: {here} is in milliseconds");
                assert_ne!(k, "time_ns", "{what}: {here} is not `*_unix_ns`");
                if v.is_number() {
                    assert!(
                        UNIT_SUFFIXES.iter().any(|s| k.ends_with(s))
                            || UNITLESS.contains(&k.as_str()),
                        "{what}: {here} = {v} has no unit suffix (docs/json.md)"
                    );
                }
                if k != "fields" {
                    assert_units_in_keys(what, &here, v);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                assert_units_in_keys(what, &format!("{path}/{i}"), v);
            }
        }
        _ => {}
    }
}

/// The rule checker itself refuses what the outputs used to carry.
#[test]
fn the_unit_rule_refuses_bare_numbers_milliseconds_and_time_ns() {
    let refused = |doc: &str| {
        let v: serde_json::Value = serde_json::from_str(doc).expect("JSON");
        std::panic::catch_unwind(|| assert_units_in_keys("doc", "", &v)).is_err()
    };
    assert!(refused(r#"{"cdus":[{"supply":30.0}]}"#));
    assert!(refused(r#"{"link":{"sample_age_ms":null}}"#));
    assert!(refused(r#"{"time_ns":1}"#));
    assert_units_in_keys(
        "doc",
        "",
        &serde_json::json!({"cdus": [{"supply_temp_c": 30.0, "link": {"requests": 3}}],
                            "time_unix_ns": 1, "metrics": [{"fields": {"pstate": 0}}]}),
    );
}

/// The real binary on the simulator with `/status` and MQTT on `broker`; killed on drop.
struct Daemon {
    child: Child,
    http: u16,
    _dir: TempDir,
}

impl Daemon {
    fn start(broker: u16, replace: &[(&str, &str)], extra: &str) -> Daemon {
        let dir = TempDir::new("json-daemon");
        let http = free_port();
        let extra = format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\n\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {broker}\nkeep_alive_s = 5\n\
             telemetry_period_ms = 100\n\n{extra}"
        );
        let mut replace = replace.to_vec();
        replace.push(("period_ms = 1000", "period_ms = 100"));
        let text = sim_config_text(free_port(), &dir.0.join("state"), &replace, &extra);
        let config = dir.0.join("coolantd.toml");
        std::fs::write(&config, text).expect("write config");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start coolantd run");
        Daemon {
            child,
            http,
            _dir: dir,
        }
    }

    /// The first `/status` that satisfies `pred`, polled once per control period at most
    /// 600 times (a minute of plant time at 100 ms).
    fn status_until(&mut self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..600 {
            let (code, body) = sim_daemon::http_get(self.http, "/status");
            if code == 200 {
                let v: serde_json::Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"));
                if pred(&v) {
                    return body;
                }
                last = body;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("coolantd exited with {st}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no /status with {what}; last: {last}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BASE: &str = "coolantd/sim/sim-node01";

/// Validates one MQTT message against `schema` and returns it parsed.
fn mqtt_doc(schema: &str, m: &mqtt_client::Received) -> serde_json::Value {
    validate(schema, m.payload.as_bytes());
    assert_no_rust_internals(&m.topic, &m.payload);
    serde_json::from_str(&m.payload).expect("MQTT payload is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_mqtt_match_their_schemas_in_normal_operation() {
    let broker = mosquitto::Mosquitto::start();
    let mut client =
        mqtt_client::TestClient::connect(broker.port(), "json-integrator", &[&format!("{BASE}/#")])
            .await;
    let mut d = Daemon::start(broker.port(), &[], "");
    let status = d.status_until("state running", |v| v["state"] == "running");
    validate("status.schema.json", status.as_bytes());
    assert_no_rust_internals("/status", &status);
    let v: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert!(v["cdus"][0]["link"]["sample_age_s"].is_number(), "{v}");
    assert!(
        v["cdus"][0]["flow_lpm"].as_f64().is_some_and(|f| f > 0.0),
        "{v}"
    );

    let state_topic = format!("{BASE}/state");
    let state = client
        .wait_for("state", Duration::from_secs(30), |r| r.topic == state_topic)
        .await;
    mqtt_doc("mqtt-state.schema.json", &state);
    let telemetry_topic = format!("{BASE}/telemetry");
    let telemetry = client
        .wait_for("telemetry", Duration::from_secs(30), |r| {
            r.topic == telemetry_topic
        })
        .await;
    let t = mqtt_doc("mqtt-telemetry.schema.json", &telemetry);
    assert!(t["cdus"]["cdu-sim"]["supply_temp_c"].is_number(), "{t}");

    // One command the core takes and one it refuses (a pump speed in auto mode).
    let reply_topic = format!("{BASE}/command/reply");
    client
        .publish(
            &format!("{BASE}/command"),
            r#"{"id":"ok-1","command":"set_setpoint","celsius":56}"#,
        )
        .await;
    let ok = client
        .wait_for("accepted reply", Duration::from_secs(30), |r| {
            r.topic == reply_topic && r.payload.contains("ok-1")
        })
        .await;
    let ok = mqtt_doc("mqtt-reply.schema.json", &ok);
    assert_eq!(ok["result"], "accepted", "{ok}");
    client
        .publish(
            &format!("{BASE}/command"),
            r#"{"id":"no-1","command":"set_pump_speed","percent":150}"#,
        )
        .await;
    let no = client
        .wait_for("rejected reply", Duration::from_secs(30), |r| {
            r.topic == reply_topic && r.payload.contains("no-1")
        })
        .await;
    let no = mqtt_doc("mqtt-reply.schema.json", &no);
    assert_eq!(no["result"], "rejected", "{no}");
    assert_eq!(no["kind"], "wrong_mode", "{no}");
    assert!(no["reason"].as_str().is_some_and(|r| !r.is_empty()), "{no}");

    // Each kind of refusal, from the MQTT layer and from the core, carries its word.
    for (id, command, kind) in [
        (
            "k-1",
            r#"{"id":"k-1","command":"set_setpoint","celsius":150}"#,
            "out_of_range",
        ),
        (
            "k-2",
            r#"{"id":"k-2","command":"ack_alarm","alarm":"leak:nope"}"#,
            "unknown_alarm",
        ),
        (
            "k-3",
            r#"{"id":"k-3","command":"explode"}"#,
            "unknown_command",
        ),
        (
            "k-4",
            r#"{"id":"k-4","command":"set_setpoint","celsius":"hot"}"#,
            "bad_field",
        ),
        (
            "k-5",
            r#"{"id":"k-5","command":"set_setpoint","#,
            "bad_json",
        ),
    ] {
        client.publish(&format!("{BASE}/command"), command).await;
        // A message that is not JSON has no readable id: its reply is the one without.
        let r = client
            .wait_for(kind, Duration::from_secs(30), |r| {
                r.topic == reply_topic
                    && (r.payload.contains(id)
                        || (kind == "bad_json" && !r.payload.contains("\"id\"")))
            })
            .await;
        let r = mqtt_doc("mqtt-reply.schema.json", &r);
        assert_eq!(r["result"], "rejected", "{command}: {r}");
        assert_eq!(r["kind"], kind, "{command}: {r}");
    }
    let dir = TempDir::new("mqtt-pub");
    let file = dir.0.join("command.json");
    std::fs::write(&file, vec![b' '; 70 * 1024]).expect("write the large command");
    mosquitto_pub(broker.port(), &format!("{BASE}/command"), &file, false);
    let r = client
        .wait_for("too large", Duration::from_secs(30), |r| {
            r.topic == reply_topic && r.payload.contains("too large")
        })
        .await;
    let r = mqtt_doc("mqtt-reply.schema.json", &r);
    assert_eq!(r["kind"], "too_large", "{r}");
}

/// Publishes the file `payload` with the real `mosquitto_pub`, retained when asked: the
/// test client cannot send a retained message or one over its own packet limit.
fn mosquitto_pub(port: u16, topic: &str, payload: &Path, retain: bool) {
    let mut cmd = Command::new("mosquitto_pub");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_mqtt_match_their_schemas_in_failsafe() {
    let broker = mosquitto::Mosquitto::start();
    let mut client =
        mqtt_client::TestClient::connect(broker.port(), "json-integrator", &[&format!("{BASE}/#")])
            .await;
    // A retained command waits on the broker: the daemon gets it flagged retained when it
    // subscribes, and refuses it (it would run again on every reconnect).
    let dir = TempDir::new("mqtt-pub");
    let file = dir.0.join("command.json");
    std::fs::write(
        &file,
        r#"{"id":"k-6","command":"set_mode","mode":"manual"}"#,
    )
    .expect("write the command");
    mosquitto_pub(broker.port(), &format!("{BASE}/command"), &file, true);
    let reply_topic = format!("{BASE}/command/reply");
    let mut replies =
        mqtt_client::TestClient::connect(broker.port(), "json-replies", &[&reply_topic]).await;
    // The CDU on port 1 of loopback, where nothing listens: unreachable from the start, so
    // boot gives up after a second of plant time and goes to failsafe.
    let mut d = Daemon::start(
        broker.port(),
        &[("address = \"127.0.0.1:", "address = \"127.0.0.1:1\"\n#")],
        "[control.supervisor]\nboot_timeout_s = 1.0\n",
    );
    let status = d.status_until("failsafe with its alarm", |v| {
        v["state"] == "failsafe" && v["alarms"].as_array().is_some_and(|a| !a.is_empty())
    });
    validate("status.schema.json", status.as_bytes());
    assert_no_rust_internals("/status", &status);
    let v: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(v["state"], "failsafe", "{v}");
    let alarm = v["alarms"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["kind"] == "failsafe"))
        .expect("failsafe alarm");
    assert_eq!(alarm["id"], "failsafe:cdu-sim", "{alarm}");
    let causes: Vec<&str> = alarm["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(causes.contains(&"unreachable"), "{alarm}");
    assert!(
        alarm["raised_at_uptime_s"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "{alarm}"
    );
    // Every register of the unreachable CDU in the error shape, its kind a stable word.
    let faults = v["cdus"][0]["faults"].as_array().expect("faults");
    assert!(!faults.is_empty(), "{v}");
    for f in faults {
        assert_eq!(f["kind"], "transport", "{f}");
        assert!(f["register"].is_string() && f["error"].is_string(), "{f}");
    }
    let message = alarm["message"].as_str().expect("message");
    assert!(
        message.contains("CDU unreachable") && !message.contains("Unreachable"),
        "a message for people, not Rust's Debug: {message}"
    );

    let events = format!("{BASE}/alarms/events");
    let ev = client
        .wait_for("failsafe raised", Duration::from_secs(30), |r| {
            r.topic == events && r.payload.contains("failsafe:cdu-sim")
        })
        .await;
    let ev = mqtt_doc("mqtt-alarm.schema.json", &ev);
    assert_eq!(ev["transition"], "raised", "{ev}");
    assert_eq!(ev["alarm"]["kind"], "failsafe", "{ev}");
    let state_topic = format!("{BASE}/state");
    let state = client
        .wait_for("failsafe state", Duration::from_secs(30), |r| {
            r.topic == state_topic && r.payload.contains("\"failsafe\"")
        })
        .await;
    let state = mqtt_doc("mqtt-state.schema.json", &state);
    assert!(state["alarms"][0]["causes"].is_array(), "{state}");

    let r = replies
        .wait_for("retained refused", Duration::from_secs(30), |r| {
            // Refused before it is parsed, so without the command's id.
            r.topic == reply_topic && r.payload.contains("retained")
        })
        .await;
    let r = mqtt_doc("mqtt-reply.schema.json", &r);
    assert_eq!(r["kind"], "retained", "{r}");
    assert_eq!(state["mode"], "auto", "{state}");
}
