//! The shipped Grafana dashboard and alert rules, run against a real InfluxQL engine
//! (InfluxDB 1.6 from Debian) fed by the real `coolantd` binary on the plant simulator through
//! the sink's v1 write API.
//!
//! Every InfluxQL query of `config/grafana/` is executed with Grafana's macros replaced the way
//! Grafana expands them (`$timeFilter` → an absolute `time >= …ms and time <= …ms` range,
//! `$__interval` → `1s`, `$host` → the simulated host). Each must parse in every phase; the
//! value queries must return data in normal operation, the event queries (leak, alarm) in the
//! fault phase. Each alert rule is evaluated as Grafana does (reduce each series with the
//! rule's reducer, then its threshold; no rows means the rule's `noDataState`) and must stay
//! silent in normal operation and fire in its fault:
//! - failsafe and coolant telemetry stale: the CDU answers every read with a Modbus exception;
//! - leak, supply/return temperature out of band, low flow: the CDU's Modbus answers are
//!   rewritten on the wire by the test proxy (the daemon reads a wet leak cable, 50 °C supply,
//!   65 °C return, 2 l/min);
//! - telemetry stale: the daemon is stopped and a later window holds no GPU points;
//! - GPU near slowdown and HBM near max: the simulated GPUs of the binary cannot be driven to
//!   their slowdown threshold in a short run, so crafted `gpu` points (2 K and 1 K of margin)
//!   are written for one GPU; the test says so in its output.

use coolantd_testkit::influxdb1;
use coolantd_testkit::modbus_proxy;
use coolantd_testkit::server;
use coolantd_testkit::sim_daemon;

use influxdb1::Influx1;
use modbus_proxy::{cdu_fault_patch, exception_patch, Proxy};
use serde_json::Value;
use sim_daemon::{free_port, sim_config_text, TempDir};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
const DB: &str = "coolantd";
const HOST: &str = "sim-node01";
/// How long each phase streams at the test's 200 ms control period.
const PHASE: Duration = Duration::from_secs(4);

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `"query"` string of a dashboard JSON (panels, targets and template variables).
fn json_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("query", Value::String(q)) => out.push(q.clone()),
                    _ => json_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| json_queries(x, out)),
        _ => {}
    }
}

/// One Grafana alert rule, as far as the test evaluates it.
#[derive(Debug, Default, Clone)]
struct Rule {
    title: String,
    query: String,
    reducer: String,
    evaluator: String,
    params: Vec<f64>,
    no_data: String,
}

/// Reads the provisioning file line by line: the file is Grafana's fixed layout (one query,
/// one reduce and one threshold per rule), so a full YAML parser would add a dependency and
/// nothing else. A rule missing a part fails the test.
fn rules(text: &str) -> Vec<Rule> {
    let unquote = |s: &str| s.trim().trim_matches('\'').to_string();
    let mut out: Vec<Rule> = Vec::new();
    let mut in_evaluator = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("title:") {
            out.push(Rule {
                title: unquote(v),
                ..Rule::default()
            });
            continue;
        }
        let Some(r) = out.last_mut() else { continue };
        if let Some(v) = t.strip_prefix("query:") {
            r.query = unquote(v);
        } else if let Some(v) = t.strip_prefix("reducer:") {
            r.reducer = v.trim().to_string();
        } else if t.starts_with("- evaluator:") {
            in_evaluator = true;
        } else if let (true, Some(v)) = (in_evaluator, t.strip_prefix("type:")) {
            r.evaluator = v.trim().to_string();
        } else if let (true, Some(v)) = (in_evaluator, t.strip_prefix("params:")) {
            r.params = v
                .trim()
                .trim_matches(['[', ']'])
                .split(',')
                .map(|p| p.trim().parse().expect("numeric threshold parameter"))
                .collect();
            in_evaluator = false;
        } else if let Some(v) = t.strip_prefix("noDataState:") {
            r.no_data = v.trim().to_string();
        }
    }
    for r in &out {
        assert!(
            !r.query.is_empty()
                && !r.reducer.is_empty()
                && !r.evaluator.is_empty()
                && !r.params.is_empty()
                && !r.no_data.is_empty(),
            "alert rule not understood by the test: {r:?}"
        );
    }
    out
}

/// Grafana's macro expansion for the window `[from_ms, to_ms]`.
fn expand(q: &str, from_ms: i64, to_ms: i64) -> String {
    q.replace(
        "$timeFilter",
        &format!("time >= {from_ms}ms and time <= {to_ms}ms"),
    )
    .replace("$__interval", "1s")
    .replace("$host", HOST)
}

/// The numeric values of every series of the first statement, per series (nulls left out).
fn series_values(v: &Value) -> Vec<Vec<f64>> {
    v["results"][0]["series"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            s["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|row| row.get(1).and_then(|x| x.as_f64()))
                .collect()
        })
        .collect()
}

fn has_rows(v: &Value) -> bool {
    v["results"][0]["series"].as_array().is_some_and(|s| {
        s.iter()
            .any(|s| s["values"].as_array().is_some_and(|r| !r.is_empty()))
    })
}

/// Grafana's verdict for a rule over a window: `Some(true)` firing, `Some(false)` normal,
/// with "no data" mapped through the rule's `noDataState`.
fn evaluate(db: &Influx1, rule: &Rule, from_ms: i64, to_ms: i64) -> bool {
    let q = expand(&rule.query, from_ms, to_ms);
    let v = db
        .query_db(DB, &q)
        .unwrap_or_else(|e| panic!("alert rule `{}` does not run: {e}", rule.title));
    let series: Vec<f64> = series_values(&v)
        .into_iter()
        .filter_map(|vals| match rule.reducer.as_str() {
            "min" => vals.iter().copied().reduce(f64::min),
            "max" => vals.iter().copied().reduce(f64::max),
            "last" => vals.last().copied(),
            other => panic!("reducer {other} not handled by the test"),
        })
        .collect();
    if series.is_empty() {
        return match rule.no_data.as_str() {
            "Alerting" => true,
            "OK" | "NoData" => false,
            other => panic!("noDataState {other} not handled by the test"),
        };
    }
    let p = &rule.params;
    series.iter().any(|&x| match rule.evaluator.as_str() {
        "lt" => x < p[0],
        "gt" => x > p[0],
        "outside_range" => x < p[0] || x > p[1],
        "within_range" => x > p[0] && x < p[1],
        other => panic!("evaluator {other} not handled by the test"),
    })
}

struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn stop(&mut self) {
        server::stop_gracefully(&mut self.child, Duration::from_secs(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(db: &Influx1, q: &str) -> i64 {
    db.rows(DB, q)
        .ok()
        .and_then(|r| r.first().and_then(|r| r.get(1)).and_then(|v| v.as_i64()))
        .unwrap_or(0)
}

/// Waits until each query's count exceeds `min`, or panics with the daemon's log.
fn wait_counts(db: &Influx1, d: &Daemon, what: &str, queries: &[(&str, i64)]) {
    let t0 = Instant::now();
    loop {
        if queries.iter().all(|(q, min)| count(db, q) > *min) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}; daemon log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dashboard_and_alert_rules_run_against_influxdb_1() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime for the Modbus proxy");
    let db = Influx1::start();
    db.query(&format!("CREATE DATABASE {DB}"))
        .expect("create database");

    let sim_port = free_port();
    let proxy = rt.block_on(Proxy::start(SocketAddr::from(([127, 0, 0, 1], sim_port))));
    let dir = TempDir::new("influxql");
    let sim_addr = format!("address = \"127.0.0.1:{sim_port}\"");
    let proxy_addr = format!("address = \"{}\"", proxy.addr);
    let extra = format!(
        "[influx]\napi = \"v1\"\nurl = \"{}\"\ndatabase = \"{DB}\"\nbatch_size = 500\nflush_interval_ms = 100\nretry_min_ms = 50\nretry_max_ms = 500\n",
        db.url()
    );
    let text = sim_config_text(
        sim_port,
        &dir.0.join("state"),
        &[
            ("period_ms = 1000", "period_ms = 200"),
            (sim_addr.as_str(), proxy_addr.as_str()),
        ],
        &extra,
    );
    let config = dir.0.join("coolantd.toml");
    std::fs::write(&config, text).expect("write config");
    let log = dir.0.join("coolantd.log");
    let err = std::fs::File::create(&log).expect("daemon log file");
    let mut daemon = Daemon {
        child: Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start coolantd run"),
        log,
    };

    // Normal operation: wait for the first points, then stream a phase.
    wait_counts(
        &db,
        &daemon,
        "the first points",
        &[
            (r#"SELECT count("core_temp_c") FROM "gpu""#, 0),
            (r#"SELECT count("supply_temp_c") FROM "coolant""#, 0),
            (r#"SELECT count("state_code") FROM "control""#, 0),
        ],
    );
    let normal_from = unix_ms();
    std::thread::sleep(PHASE);
    let normal_to = unix_ms();

    // Fault A: the CDU answers every read with an exception: failsafe, no coolant data.
    proxy.set_patch(Some(exception_patch()));
    std::thread::sleep(Duration::from_secs(1));
    let fs_from = unix_ms();
    std::thread::sleep(PHASE);
    let fs_to = unix_ms();

    // Fault B: the CDU reports a leak and out-of-band temperatures and flow.
    proxy.set_patch(Some(cdu_fault_patch()));
    let cdu_from = unix_ms();
    std::thread::sleep(PHASE);
    let cdu_to = unix_ms();
    proxy.set_patch(None);

    // Telemetry stale: the daemon stops; after it, a window without points.
    daemon.stop();
    let log_text = daemon.log();
    std::thread::sleep(Duration::from_millis(500));
    let stale_from = unix_ms();
    std::thread::sleep(Duration::from_secs(1));
    let stale_to = unix_ms();

    // GPU near slowdown and HBM near max: crafted points (see the module comment).
    let crafted_from = stale_to + 1;
    let t_ns = (crafted_from + 10) * 1_000_000;
    db.write(
        DB,
        &format!(
            "gpu,host=crafted-node,gpu=0 margin_to_slowdown_k=2.0,hbm_margin_k=1.0,core_temp_c=87.0 {t_ns}\n"
        ),
    )
    .expect("crafted points written");
    let crafted_to = crafted_from + 100;
    eprintln!("GPU near slowdown / HBM near max: fault phase uses crafted gpu points (margin 2 K, HBM margin 1 K), not the simulator");

    // Dashboard: every query parses in every phase; data in normal operation, and the event
    // queries (leak, alarm transitions) in the CDU fault phase.
    let mut dash = Vec::new();
    let text =
        std::fs::read_to_string(root().join("config/grafana/dashboards/coolantd-overview.json"))
            .expect("dashboard readable");
    json_queries(
        &serde_json::from_str(&text).expect("dashboard JSON"),
        &mut dash,
    );
    // Event queries: they count or list things that happen only in a fault.
    let is_event = |q: &str| q.contains("= true") || q.contains("FROM \"alarm\"");
    let mut ran = 0;
    let mut empty_normal = Vec::new();
    let mut empty_fault = Vec::new();
    for q in &dash {
        let normal = db
            .query_db(DB, &expand(q, normal_from, normal_to))
            .unwrap_or_else(|e| panic!("dashboard query fails: {e}"));
        let fault = db
            .query_db(DB, &expand(q, normal_from, cdu_to))
            .unwrap_or_else(|e| panic!("dashboard query fails: {e}"));
        ran += 2;
        if !has_rows(&normal) {
            empty_normal.push(q.clone());
        }
        if !has_rows(&fault) {
            empty_fault.push(q.clone());
        }
    }
    eprintln!(
        "dashboard: {} queries, {ran} runs; empty in normal operation: {empty_normal:#?}; empty over the whole run: {empty_fault:#?}",
        dash.len()
    );
    // Throttle reasons are events the simulator at idle does not produce; they must parse,
    // and they are listed above when empty.
    let throttle = |q: &str| q.contains("\"throttle_");
    assert!(
        empty_normal.iter().all(|q| is_event(q)),
        "value queries without data in normal operation: {empty_normal:#?}"
    );
    assert!(
        empty_fault.iter().all(|q| throttle(q)),
        "queries without data over the fault phases: {empty_fault:#?}"
    );

    // Alert rules.
    let rules = rules(
        &std::fs::read_to_string(
            root().join("config/grafana/provisioning/alerting/coolantd-rules.yaml"),
        )
        .expect("alert rules readable"),
    );
    assert_eq!(
        rules.len(),
        9,
        "the test knows every rule's fault: {rules:#?}"
    );
    let phases = [
        ("normal", normal_from, normal_to),
        ("failsafe", fs_from, fs_to),
        ("cdu_fault", cdu_from, cdu_to),
        ("stopped", stale_from, stale_to),
        ("crafted_gpu", crafted_from, crafted_to),
    ];
    // Where each rule must fire.
    let must_fire = |title: &str| -> &[&str] {
        match title {
            "GPU near slowdown" | "HBM near max" => &["crafted_gpu"],
            "Coolant supply temperature out of band"
            | "Coolant return temperature out of band"
            | "Low coolant flow"
            | "Coolant leak" => &["cdu_fault"],
            "Control in failsafe or emergency" => &["failsafe"],
            "Telemetry stale" => &["stopped"],
            "Coolant telemetry stale" => &["failsafe", "stopped"],
            other => panic!("no fault scenario for alert rule `{other}`"),
        }
    };
    let mut report = Vec::new();
    let mut wrong = Vec::new();
    for r in &rules {
        let fired: Vec<&str> = phases
            .iter()
            .filter(|(_, a, b)| evaluate(&db, r, *a, *b))
            .map(|(n, _, _)| *n)
            .collect();
        ran += phases.len();
        report.push(format!("{}: fires in {fired:?}", r.title));
        if fired.contains(&"normal") {
            wrong.push(format!("`{}` fires in normal operation", r.title));
        }
        for p in must_fire(&r.title) {
            if !fired.contains(p) {
                wrong.push(format!("`{}` silent in its fault `{p}`", r.title));
            }
        }
    }
    eprintln!(
        "alert rules ({} rules x {} windows):\n{}\nqueries run in all: {ran}",
        rules.len(),
        phases.len(),
        report.join("\n")
    );
    assert!(wrong.is_empty(), "{wrong:#?}\ndaemon log:\n{log_text}");
    assert!(
        proxy.requests() > 0,
        "the daemon read its CDU through the proxy"
    );
}
