//! The HTTP endpoint against a real HTTP client (reqwest), raw TCP for malformed requests, and
//! the reference parser of the Prometheus text format (Python's `prometheus_client`, Debian
//! package `python3-prometheus-client`, run with `/usr/bin/python3`).

use coolantd::model::{
    Alarm, CduStatus, ControlState, FieldValue, GpuKey, GpuStatus, Mode, Point, RegisterFault,
    SensorFault, Severity, Snapshot,
};
use coolantd::service::http::{serve, Health};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

fn snapshot(ready: bool) -> Snapshot {
    let t = 1_700_000_000_000_000_000;
    Snapshot {
        site: "hall-1".into(),
        host: "node01".into(),
        time_ns: t,
        tick: 42,
        dry_run: true,
        mode: Mode::Auto,
        state: if ready {
            ControlState::Running
        } else {
            ControlState::Boot
        },
        setpoint: 65.0,
        controlled: Some(61.5),
        ready,
        cdus: vec![CduStatus {
            name: "cdu-a".into(),
            supply: Some(30.0),
            return_: Some(40.0),
            flow: None,
            differential_pressure: None,
            pump_command: Some(55.0),
            pump_feedback: Some(54.0),
            leak: Some(false),
            remote_enable: Some(true),
            faults: if ready {
                vec![]
            } else {
                vec![RegisterFault::new("flow (40005)", &SensorFault::Timeout)]
            },
            link: Default::default(),
        }],
        gpus: vec![GpuStatus {
            key: GpuKey {
                host: "node01".into(),
                index: 0,
            },
            uuid: "GPU-1".into(),
            name: "NVIDIA H200".into(),
            core: Some(61.5),
            hbm: Some(70.0),
            power: Some(512.0),
            limit: Some(700.0),
            margin_to_slowdown: Some(27.5),
        }],
        alarms: vec![Alarm {
            id: "sensor:cdu-a/flow".into(),
            severity: Severity::Warning,
            message: "flow sensor silent".into(),
            raised_at: Duration::from_secs(3),
            latched: false,
            acknowledged: false,
            cause_present: !ready,
            causes: Vec::new(),
        }],
        decisions: Vec::new(),
        points: vec![
            Point::new("gpu", t)
                .tag("host", "node01")
                .tag("index", "0")
                .field("core", FieldValue::Float(61.5))
                .field("power", FieldValue::Float(512.25))
                .field("pstate", FieldValue::UInt(0))
                .field("throttled", FieldValue::Bool(true))
                .field("clock_event", FieldValue::Str("sw_power_cap".into())),
            Point::new("gpu", t)
                .tag("host", "node01")
                .tag("index", "1")
                .field("core", FieldValue::Float(-0.5))
                .field("throttled", FieldValue::Bool(false)),
            // A tag value with every character the format must escape.
            Point::new("cdu", t)
                .tag("cdu", "hall \"A\"\\loop\n2")
                .field("flow", FieldValue::Float(1.5e-3))
                .field("leak", FieldValue::Bool(false))
                .field("errors", FieldValue::Int(-3)),
            // An older duplicate of a series: the newer value (above) must win.
            Point::new("gpu", t - 1)
                .tag("host", "node01")
                .tag("index", "0")
                .field("core", FieldValue::Float(10.0)),
            // A measurement name with characters Prometheus does not allow.
            Point::new("loop.pump-a", t).field("output", FieldValue::Float(55.0)),
        ],
        rack: None,
    }
}

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    tx: watch::Sender<Arc<Snapshot>>,
    health: Arc<Health>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(snap: Snapshot, period: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let (tx, rx) = watch::channel(Arc::new(snap));
    let health = Arc::new(Health::new(period));
    let task = tokio::spawn(serve(listener, rx, health.clone()));
    Server {
        base: format!("http://{addr}"),
        addr,
        tx,
        health,
        task,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.expect("request succeeds");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_with_the_right_status_codes() {
    let s = start(snapshot(false), Duration::from_secs(1)).await;
    let c = client();

    // Before the first tick the loop is not alive and the daemon not ready.
    let (code, body) = get(&c, &format!("{}/healthz", s.base)).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not completed a tick"), "{body}");

    s.health.tick(Duration::from_millis(3));
    let (code, _) = get(&c, &format!("{}/healthz", s.base)).await;
    assert_eq!(code, 200);

    let (code, body) = get(&c, &format!("{}/readyz", s.base)).await;
    assert_eq!(code, 503);
    assert!(body.starts_with("booting:"), "{body}");

    s.health.set_ready(true);
    let (code, body) = get(&c, &format!("{}/readyz", s.base)).await;
    assert_eq!(code, 503, "snapshot is not ready: {body}");
    assert!(
        body.starts_with("booting: waiting for every required input"),
        "{body}"
    );
    assert!(body.contains("flow (40005): timed out"), "{body}");
    assert!(body.contains("sensor:cdu-a/flow"), "{body}");

    // In failsafe the reason is the failsafe and its cause, not "starting".
    let mut failsafe = snapshot(false);
    failsafe.state = ControlState::Failsafe;
    failsafe.alarms.push(Alarm {
        id: "failsafe:cdu-a".into(),
        severity: Severity::Critical,
        message: "cdu-a in failsafe: GPU temperatures unknown".into(),
        raised_at: Duration::from_secs(30),
        latched: false,
        acknowledged: false,
        cause_present: true,
        causes: Vec::new(),
    });
    s.tx.send_replace(Arc::new(failsafe));
    let (code, body) = get(&c, &format!("{}/readyz", s.base)).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("failsafe: cdu-a in failsafe: GPU temperatures unknown"),
        "{body}"
    );

    s.tx.send_replace(Arc::new(snapshot(true)));
    let (code, body) = get(&c, &format!("{}/readyz", s.base)).await;
    assert_eq!(code, 200, "{body}");

    // /status is the snapshot as JSON, and reads back into the same value.
    let r = c
        .get(format!("{}/status", s.base))
        .send()
        .await
        .expect("status request");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    // Compared as JSON values: `FieldValue` is untagged with `Float` first, so an integer
    // field reads back as a float and a typed round trip would not be exact.
    let back: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON");
    let expected = serde_json::to_value(snapshot(true)).expect("snapshot encodes");
    assert_eq!(back, expected);
    assert_eq!(back["gpus"][0]["margin_to_slowdown_k"], 27.5);

    let (code, _) = get(&c, &format!("{}/nope", s.base)).await;
    assert_eq!(code, 404);
    let (code, _) = get(&c, &format!("{}/metrics/extra", s.base)).await;
    assert_eq!(code, 404);

    let r = c
        .post(format!("{}/metrics", s.base))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, HEAD")
    );

    let r = c
        .head(format!("{}/metrics", s.base))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.expect("empty body").is_empty());

    let r = c
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .expect("metrics");
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_when_the_loop_stops_ticking() {
    // The last tick lies 10 s in the past with a 1 s period: three periods are long gone.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_tx, rx) = watch::channel(Arc::new(snapshot(true)));
    let now = Instant::now();
    let start = now.checked_sub(Duration::from_secs(20)).unwrap_or(now);
    let health = Arc::new(Health::with_start(Duration::from_secs(1), start));
    health.set_ready(true);
    health.tick_at(start, Duration::from_millis(1));
    tokio::spawn(serve(listener, rx, health.clone()));
    let c = client();
    let (code, body) = get(&c, &format!("http://{addr}/healthz")).await;
    if start < now {
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("stuck"), "{body}");
        let (code, body) = get(&c, &format!("http://{addr}/readyz")).await;
        assert_eq!(code, 503, "a stuck loop is not ready either: {body}");
    }
    health.tick(Duration::from_millis(1));
    let (code, _) = get(&c, &format!("http://{addr}/healthz")).await;
    assert_eq!(code, 200);
}

/// Parses exposition text with prometheus_client and returns its families as JSON.
pub(crate) fn parse_with_prometheus_client(text: &str) -> Value {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value}
                            for s in f.samples]})
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 runs (Debian package python3)");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("write metrics to the parser");
    let out = child.wait_with_output().expect("parser finishes");
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition (is python3-prometheus-client \
         installed?):\n{}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output is JSON")
}

pub(crate) fn family<'a>(families: &'a Value, name: &str) -> &'a Value {
    families
        .as_array()
        .expect("list of families")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("family {name} missing in {families:#}"))
}

pub(crate) fn sample_value(f: &Value, labels: &[(&str, &str)]) -> f64 {
    let samples = f["samples"].as_array().expect("samples");
    let matching: Vec<&Value> = samples
        .iter()
        .filter(|s| {
            let l = s["labels"].as_object().expect("labels");
            l.len() == labels.len() && labels.iter().all(|(k, v)| l.get(*k) == Some(&(*v).into()))
        })
        .collect();
    assert_eq!(matching.len(), 1, "labels {labels:?} in {f:#}");
    matching[0]["value"].as_f64().expect("numeric value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_round_trip_through_the_prometheus_parser() {
    let s = start(snapshot(true), Duration::from_secs(1)).await;
    s.health.tick(Duration::from_micros(2500));
    s.health.tick(Duration::from_micros(1500));
    let c = client();
    let (code, text) = get(&c, &format!("{}/metrics", s.base)).await;
    assert_eq!(code, 200);

    // Every family has exactly one HELP and one TYPE line, and its samples follow them
    // without interruption (the format requires families to be grouped).
    let mut seen = std::collections::HashSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().expect("name").to_string();
            assert!(seen.insert(name.clone()), "family {name} twice:\n{text}");
            current = name;
        } else if !line.starts_with('#') {
            assert!(
                line.starts_with(&current),
                "{line} outside its family:\n{text}"
            );
        }
    }

    let families = parse_with_prometheus_client(&text);
    let core = family(&families, "gpu_core");
    assert_eq!(core["type"], "gauge");
    assert_eq!(core["samples"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        sample_value(core, &[("host", "node01"), ("index", "0")]),
        61.5,
        "the newest point of a duplicated series wins"
    );
    assert_eq!(
        sample_value(core, &[("host", "node01"), ("index", "1")]),
        -0.5
    );
    let power = family(&families, "gpu_power");
    assert_eq!(
        sample_value(power, &[("host", "node01"), ("index", "0")]),
        512.25
    );
    let pstate = family(&families, "gpu_pstate");
    assert_eq!(
        sample_value(pstate, &[("host", "node01"), ("index", "0")]),
        0.0
    );
    let throttled = family(&families, "gpu_throttled");
    assert_eq!(
        sample_value(throttled, &[("host", "node01"), ("index", "0")]),
        1.0
    );
    assert_eq!(
        sample_value(throttled, &[("host", "node01"), ("index", "1")]),
        0.0
    );
    let info = family(&families, "gpu_clock_event_info");
    assert_eq!(
        sample_value(
            info,
            &[
                ("host", "node01"),
                ("index", "0"),
                ("value", "sw_power_cap")
            ]
        ),
        1.0
    );
    // The escaped tag value comes back exactly.
    let tricky = "hall \"A\"\\loop\n2";
    assert_eq!(
        sample_value(family(&families, "cdu_flow"), &[("cdu", tricky)]),
        1.5e-3
    );
    assert_eq!(
        sample_value(family(&families, "cdu_leak"), &[("cdu", tricky)]),
        0.0
    );
    assert_eq!(
        sample_value(family(&families, "cdu_errors"), &[("cdu", tricky)]),
        -3.0
    );
    assert_eq!(
        sample_value(family(&families, "loop_pump_a_output"), &[]),
        55.0
    );

    // The daemon's own metrics.
    let ticks = family(&families, "coolantd_ticks");
    assert_eq!(ticks["type"], "counter");
    let total = ticks["samples"][0].clone();
    assert_eq!(total["name"], "coolantd_ticks_total");
    assert_eq!(total["value"].as_f64(), Some(2.0));
    assert_eq!(
        sample_value(family(&families, "coolantd_tick_duration_seconds"), &[]),
        0.0015
    );
    assert_eq!(
        sample_value(family(&families, "coolantd_tick_duration_max_seconds"), &[]),
        0.0025
    );
    assert_eq!(
        sample_value(family(&families, "coolantd_snapshot_tick"), &[]),
        42.0
    );
    assert_eq!(
        sample_value(family(&families, "coolantd_dry_run"), &[]),
        1.0
    );
    let uptime = sample_value(family(&families, "coolantd_uptime_seconds"), &[]);
    assert!(uptime >= 0.0, "{uptime}");
    assert!(!family(&families, "gpu_core")["help"]
        .as_str()
        .unwrap_or_default()
        .is_empty());
}

/// Sends raw bytes and returns whatever the server answers before closing or a timeout.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_server_keeps_serving() {
    let s = start(snapshot(true), Duration::from_secs(1)).await;
    s.health.tick(Duration::from_millis(1));

    let garbage = raw(s.addr, b"\x00\x01 NOT HTTP AT ALL\r\n\r\n").await;
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage:?}"
    );

    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    let big = raw(s.addr, &huge).await;
    assert!(!big.starts_with("HTTP/1.1 200"), "{big:?}");

    // A valid request on a raw connection still gets its answer.
    let ok = raw(
        s.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok:?}");

    // A client that opens a connection and sends nothing does not hold up others, and
    // many clients at once are all served.
    let _idle = TcpStream::connect(s.addr).await.expect("idle connection");
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let c = c.clone();
        let url = format!("{}/metrics", s.base);
        tasks.push(tokio::spawn(async move { get(&c, &url).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_when_the_snapshot_sender_is_dropped() {
    let s = start(snapshot(true), Duration::from_secs(1)).await;
    let Server { tx, task, .. } = s;
    drop(tx);
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returns after the sender is gone")
        .expect("serve task does not panic");
    assert!(result.is_ok(), "{result:?}");
}
