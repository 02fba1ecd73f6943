//! The shipped Prometheus-format alert rules (`config/prometheus/coolantd-alerts.yml`) proven
//! with real engines: the real `vmagent` scrapes the real `coolantd` binary's `/metrics` (on
//! the plant simulator) into a real VictoriaMetrics, the real `vmalert` evaluates the rules
//! and notifies a small HTTP receiver this test runs, which records every POSTed alert.
//!
//! The rules file is used as shipped except that every `for:` becomes `0s` and the group
//! interval 1 s, so that a rule fires within seconds instead of minutes (the same
//! substitution Grafana's macros get in tests/influxql_rules.rs). Phases, each checked for
//! the alerts received while it lasts:
//! - normal operation: no alert at all;
//! - CDU exceptions: failsafe and coolant telemetry stale;
//! - CDU fault on the Modbus wire (leak, 50 °C supply, 65 °C return, 2 l/min, through the
//!   test proxy): leak, both temperatures, low flow, and failsafe-or-emergency (a leak puts
//!   the daemon in emergency);
//! - the InfluxDB sink's database (a second VictoriaMetrics) stopped: sink backlog, and, once
//!   the spool passes its bound (`spool_max_bytes` at its 1 MiB minimum, filled in seconds
//!   at a 100 ms period), sink dropping;
//! - crafted samples pushed into VictoriaMetrics for GPU near slowdown and HBM near max
//!   (the binary's simulated GPUs cannot reach their slowdown threshold in a short run);
//! - the daemon stopped: telemetry stale (`up == 0`).

use coolantd_testkit::modbus_proxy;
use coolantd_testkit::server;
use coolantd_testkit::sim_daemon;
use coolantd_testkit::victoria;

use modbus_proxy::{cdu_fault_patch, exception_patch, Proxy};
use serde_json::Value;
use sim_daemon::{free_port, sim_config_text, TempDir};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use victoria::Victoria;

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
/// Generous for a loaded 2-core machine: scrape 2 s, remote write ~1 s, evaluation 1 s.
const FIRE_WITHIN: Duration = Duration::from_secs(40);

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix ms of an RFC 3339 UTC timestamp as vmalert writes it (`2026-12-02T05:51:04.03Z`).
fn rfc3339_ms(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z');
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60) as f64 * 1000.0 + sec * 1000.0) as i64)
}

/// One alert as POSTed by vmalert: name, when received, and whether it was firing.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    at_ms: i64,
    firing: bool,
    raw: String,
}

/// A loopback HTTP server recording the alerts vmalert POSTs to `/api/v2/alerts`.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = l.local_addr().expect("receiver address").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(match s.try_clone() {
                    Ok(c) => c,
                    Err(_) => continue,
                });
                let mut len = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let t = line.trim();
                    if t.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = t.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0u8; len];
                let _ = r.read_exact(&mut body);
                let now = unix_ms();
                if let Ok(Value::Array(alerts)) = serde_json::from_slice::<Value>(&body) {
                    let mut g = g.lock().expect("receiver lock");
                    for a in alerts {
                        let ends = a["endsAt"].as_str().and_then(rfc3339_ms);
                        g.push(Received {
                            name: a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                            at_ms: now,
                            firing: ends.is_none_or(|e| e > now),
                            raw: a.to_string(),
                        });
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Receiver { port, got }
    }

    /// Names of the alerts received firing at or after `from_ms`.
    fn firing_since(&self, from_ms: i64) -> BTreeSet<String> {
        self.got
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|r| r.firing && r.at_ms >= from_ms)
            .map(|r| r.name.clone())
            .collect()
    }

    /// Waits until every name in `want` was received firing since `from_ms`; returns all
    /// names received firing since then.
    fn wait_firing(&self, from_ms: i64, want: &[&str], what: &str) -> BTreeSet<String> {
        let t0 = Instant::now();
        loop {
            let got = self.firing_since(from_ms);
            if want.iter().all(|w| got.contains(*w)) {
                return got;
            }
            if t0.elapsed() > FIRE_WITHIN {
                let raw: Vec<String> = self
                    .got
                    .lock()
                    .expect("receiver lock")
                    .iter()
                    .filter(|r| r.at_ms >= from_ms)
                    .map(|r| format!("{} {} {}", r.at_ms, r.firing, r.raw))
                    .collect();
                panic!(
                    "{what}: expected {want:?} firing, received {got:?}:\n{}",
                    raw.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

struct Proc {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { child, name, log }
    }
    fn log(&self) -> String {
        format!(
            "--- {} log:\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
    fn stop(&mut self) {
        server::stop_gracefully(&mut self.child, Duration::from_secs(20));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped rules with `for:` set to 0 s and the group interval to 1 s.
fn fast_rules(dir: &Path) -> PathBuf {
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/coolantd-alerts.yml");
    let text = std::fs::read_to_string(&shipped).expect("rules readable");
    let fast: String = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            let indent = &l[..l.len() - t.len()];
            if t.starts_with("for:") {
                format!("{indent}for: 0s")
            } else if t.starts_with("interval:") {
                format!("{indent}interval: 1s")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let p = dir.join("rules.yml");
    std::fs::write(&p, fast).expect("write rules");
    p
}

fn alert_names() -> Vec<String> {
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/coolantd-alerts.yml");
    std::fs::read_to_string(shipped)
        .expect("rules readable")
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- alert:")
                .map(|n| n.trim().to_string())
        })
        .collect()
}

#[test]
fn prometheus_rules_fire_in_vmalert_on_faults_and_stay_silent_otherwise() {
    for b in ["/usr/bin/vmagent", "/usr/bin/vmalert"] {
        assert!(
            Path::new(b).exists(),
            "{b} missing: apt-get install victoria-metrics"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime for the Modbus proxy");
    let dir = TempDir::new("promrules");
    // Fresh samples must be visible to vmalert at once, not after the default 30 s offset.
    let vm = Victoria::start_with(&["-search.latencyOffset=0s", "-search.disableCache"]);
    let mut sink_db = Victoria::start();
    let receiver = Receiver::start();

    let sim_port = free_port();
    let http_port = free_port();
    let proxy = rt.block_on(Proxy::start(SocketAddr::from(([127, 0, 0, 1], sim_port))));
    let sim_addr = format!("address = \"127.0.0.1:{sim_port}\"");
    let proxy_addr = format!("address = \"{}\"", proxy.addr);
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{http_port}\"\n[influx]\nurl = \"{}\"\norg = \"sim\"\nbucket = \"coolantd\"\nbatch_size = 500\nflush_interval_ms = 100\nretry_min_ms = 50\nretry_max_ms = 200\nrequest_timeout_ms = 500\nspool_max_bytes = 1048576\n",
        sink_db.url()
    );
    let text = sim_config_text(
        sim_port,
        &dir.0.join("state"),
        &[
            ("period_ms = 1000", "period_ms = 100"),
            (sim_addr.as_str(), proxy_addr.as_str()),
        ],
        &extra,
    );
    let config = dir.0.join("coolantd.toml");
    std::fs::write(&config, text).expect("write config");
    let mut daemon = Proc::spawn(
        "coolantd",
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG"),
        dir.0.join("coolantd.log"),
    );

    let scrape = dir.0.join("scrape.yml");
    std::fs::write(
        &scrape,
        format!(
            "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\nscrape_configs:\n  - job_name: coolantd\n    static_configs:\n      - targets: ['127.0.0.1:{http_port}']\n"
        ),
    )
    .expect("write scrape config");
    let agent = Proc::spawn(
        "vmagent",
        Command::new("/usr/bin/vmagent")
            .arg(format!("-promscrape.config={}", scrape.display()))
            .arg(format!("-remoteWrite.url={}/api/v1/write", vm.url()))
            .arg(format!(
                "-remoteWrite.tmpDataPath={}",
                dir.0.join("vmagent").display()
            ))
            .arg("-remoteWrite.flushInterval=200ms")
            .arg(format!("-httpListenAddr=127.0.0.1:{}", free_port()))
            .arg("-loggerLevel=ERROR"),
        dir.0.join("vmagent.log"),
    );
    let rules = fast_rules(&dir.0);
    let alert = Proc::spawn(
        "vmalert",
        Command::new("/usr/bin/vmalert")
            .arg(format!("-rule={}", rules.display()))
            .arg(format!("-datasource.url={}", vm.url()))
            .arg(format!("-notifier.url=http://127.0.0.1:{}", receiver.port))
            .arg("-evaluationInterval=1s")
            .arg(format!("-httpListenAddr=127.0.0.1:{}", free_port()))
            .arg("-loggerLevel=ERROR"),
        dir.0.join("vmalert.log"),
    );
    let logs = |extra: &str| {
        format!(
            "{extra}\n{}\n{}\n{}",
            daemon_log(&dir.0),
            agent.log(),
            alert.log()
        )
    };

    // Normal operation: wait until the scraped series are queryable, then a quiet window.
    let t0 = Instant::now();
    while vm.export(r#"coolant_flow_lpm"#).is_empty() || vm.export("gpu_core_temp_c").is_empty() {
        assert!(
            t0.elapsed() < FIRE_WITHIN,
            "{}",
            logs("no scraped series in VictoriaMetrics")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The first evaluations can see a half-scraped target; start the window after a few.
    std::thread::sleep(Duration::from_secs(3));
    let normal_from = unix_ms();
    std::thread::sleep(Duration::from_secs(8));
    let normal = receiver.firing_since(normal_from);
    eprintln!("normal operation: firing {normal:?}");
    assert!(
        normal.is_empty(),
        "{}",
        logs(&format!("alerts in normal operation: {normal:?}"))
    );

    let mut report = Vec::new();
    // CDU exceptions: failsafe, no coolant data.
    proxy.set_patch(Some(exception_patch()));
    std::thread::sleep(Duration::from_secs(2));
    let from = unix_ms();
    let got = receiver.wait_firing(
        from,
        &[
            "CoolantdFailsafeOrEmergency",
            "CoolantdCoolantTelemetryStale",
        ],
        "CDU exceptions",
    );
    report.push(format!("cdu_exceptions: {got:?}"));

    // CDU fault on the wire.
    proxy.set_patch(Some(cdu_fault_patch()));
    let from = unix_ms();
    let got = receiver.wait_firing(
        from,
        &[
            "CoolantdLeak",
            "CoolantdSupplyTemperatureOutOfBand",
            "CoolantdReturnTemperatureOutOfBand",
            "CoolantdLowFlow",
            "CoolantdFailsafeOrEmergency",
        ],
        "CDU fault",
    );
    report.push(format!("cdu_fault: {got:?}"));
    eprintln!("cdu_fault: {got:?}");

    proxy.set_patch(None);

    // The sink's database goes away: the backlog grows past 1000 points, then the spool
    // reaches its 1 MiB bound and drops its oldest segment. Before that, nothing dropped.
    assert!(
        !receiver
            .firing_since(normal_from)
            .contains("CoolantdSinkDropping"),
        "{}",
        logs("sink dropping with the database up")
    );
    sink_db.stop();
    let from = unix_ms();
    let got = receiver.wait_firing(
        from,
        &["CoolantdSinkBacklog", "CoolantdSinkDropping"],
        "sink outage",
    );
    report.push(format!(
        "sink_outage ({} ms after the stop): {got:?}",
        unix_ms() - from
    ));
    assert!(
        daemon_log(&dir.0).contains("spool size bound reached"),
        "{}",
        logs("dropping fired without the spool's bound")
    );

    // Crafted GPU samples (see the module comment).
    let body = "gpu_margin_to_slowdown_k{host=\"crafted-node\",gpu=\"0\"} 2\ngpu_hbm_margin_k{host=\"crafted-node\",gpu=\"0\"} 1\n";
    let from = unix_ms();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let stop = stop.clone();
        let url = format!("127.0.0.1:{}", vm.port);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(mut s) = std::net::TcpStream::connect(&url) {
                    let _ = write!(
                        s,
                        "POST /api/v1/import/prometheus HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let got = receiver.wait_firing(
        from,
        &["CoolantdGpuNearSlowdown", "CoolantdHbmNearMax"],
        "crafted GPU samples",
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = pusher.join();
    report.push(format!("crafted_gpu: {got:?}"));
    eprintln!("GPU near slowdown / HBM near max: crafted samples, not the simulator");

    // The daemon stops: its scrape target is down.
    daemon.stop();
    let from = unix_ms();
    let got = receiver.wait_firing(from, &["CoolantdTelemetryStale"], "daemon stopped");
    report.push(format!("daemon_stopped: {got:?}"));

    let all = receiver.firing_since(normal_from);
    let names = alert_names();
    let never: Vec<&String> = names.iter().filter(|n| !all.contains(*n)).collect();
    eprintln!(
        "vmalert: {} rules; fired per phase:\n{}\nnever fired: {never:?}",
        names.len(),
        report.join("\n")
    );
    assert!(never.is_empty(), "rules never proven: {never:?}");
    assert!(proxy.requests() > 0);
}

fn daemon_log(dir: &Path) -> String {
    format!(
        "--- coolantd log:\n{}",
        std::fs::read_to_string(dir.join("coolantd.log")).unwrap_or_default()
    )
}
