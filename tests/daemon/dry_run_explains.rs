//! The first dry run explains itself (issue 14): the real binary on the simulator, its log
//! read from stderr as the journal or a file would get it, its state through `coolantd
//! status` and `/readyz`.

use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::sim_daemon;

use sim_daemon::{free_port, http_get, sim_config_text, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
/// Generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(30);

/// A `coolantd run` child with its stderr collected; killed on drop.
struct Run {
    proc: DaemonProcess,
    _dir: TempDir,
    config: PathBuf,
    http: u16,
}

impl Run {
    /// The simulator configuration at `period_ms`, the plant `time_scale` times faster than
    /// real time, HTTP on a free port, `replace` applied and `extra` appended.
    fn start(tag: &str, args: &[&str], replace: &[(&str, &str)], extra: &str) -> Run {
        let dir = TempDir::new(tag);
        let http = free_port();
        let mut r = vec![("period_ms = 1000", "period_ms = 100")];
        r.extend_from_slice(replace);
        let text = sim_config_text(
            free_port(),
            &dir.0.join("state"),
            &r,
            &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n{extra}"),
        );
        let config = dir.0.join("coolantd.toml");
        std::fs::write(&config, text).expect("write config");
        let proc = DaemonProcess::spawn(
            Command::new(BIN)
                .arg("run")
                .args(args)
                .arg("--config")
                .arg(&config),
        );
        Run {
            proc,
            _dir: dir,
            config,
            http,
        }
    }

    fn log(&self) -> String {
        self.proc.log()
    }

    /// Waits until a log line satisfies `pred`; returns it.
    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.proc.wait_line(what, WAIT, pred)
    }

    /// Waits until `path` answers with a body satisfying `pred`; returns (code, body).
    fn wait_http(&self, path: &str, pred: impl Fn(u16, &str) -> bool) -> (u16, String) {
        let t0 = Instant::now();
        loop {
            let (code, body) = http_get(self.http, path);
            if pred(code, &body) {
                return (code, body);
            }
            assert!(
                t0.elapsed() < WAIT,
                "{path} never matched; last {code} {body}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.proc.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }
}

fn status(config: &Path, json: bool) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(["status", "--config"]).arg(config);
    if json {
        c.arg("--json");
    }
    c.env_remove("RUST_LOG").output().expect("coolantd status")
}

#[test]
fn each_dry_run_decision_is_logged_once_with_its_reason() {
    let d = Run::start("explain", &["--dry-run"], &[], "");
    let line = d.wait_line("a pump decision driven by the PID", |l| {
        l.contains("would set pump speed of cdu-sim") && l.contains("PID: hottest GPU")
    });
    // The reason names the GPU, its temperature, the set point and the terms.
    for part in [
        "sim-node01/gpu",
        "°C",
        "set point 55.0 °C",
        "error",
        "P ",
        "I ",
    ] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    // The action is said once, in the message; no `action=` field repeats it.
    assert!(!line.contains("action="), "{line}");
    // Watchdog feeds are routine: not at info.
    let log = d.log();
    assert!(
        !log.contains("would feed watchdog"),
        "watchdog feeds logged at info:\n{log}"
    );
}

#[test]
fn status_command_prints_the_running_daemons_state() {
    let d = Run::start("status", &["--dry-run"], &[], "");
    d.wait_http("/readyz", |c, _| c == 200);
    let out = status(&d.config, false);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("coolantd on sim/sim-node01: ") && first.contains("DRY RUN"),
        "{text}"
    );
    assert!(text.contains("ready: ready"), "{text}");
    assert!(text.contains("cdu cdu-sim: supply"), "{text}");
    assert_eq!(text.matches("\ngpu sim-node01/gpu").count(), 8, "{text}");
    let json = status(&d.config, true);
    let v: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("status --json prints the /status JSON");
    assert_eq!(v["host"], "sim-node01");

    // With no daemon behind the address, it says so and fails.
    drop(d);
    let site = TempDir::new("status-none");
    let cfg = site.0.join("c.toml");
    std::fs::write(
        &cfg,
        sim_config_text(
            free_port(),
            &site.0,
            &[],
            &format!("[http]\nlisten = \"127.0.0.1:{}\"\n", free_port()),
        ),
    )
    .expect("write");
    let out = status(&cfg, false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is it running?"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn readyz_gives_the_failsafe_and_its_cause() {
    // The CDU address points at a port nobody serves: the CDU is unreachable, and after the
    // boot timeout the supervisor goes to failsafe.
    let dead = free_port();
    let d = Run::start(
        "readyz",
        &["--dry-run"],
        &[(
            "address = \"127.0.0.1:",
            &format!("address = \"127.0.0.1:{dead}\"\n# was: address = \"127.0.0.1:"),
        )],
        "[control.supervisor]\nboot_timeout_s = 1.0\n",
    );
    let (code, body) = d.wait_http("/readyz", |_, b| b.starts_with("failsafe:"));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("CDU unreachable"), "{body}");
}

#[test]
fn reload_logs_exactly_what_changed() {
    let d = Run::start("reload", &["--dry-run"], &[], "");
    d.wait_http("/readyz", |c, _| c == 200);
    let text = std::fs::read_to_string(&d.config).expect("read config");
    std::fs::write(
        &d.config,
        text.replacen("setpoint = 55.0", "setpoint = 56.5", 1),
    )
    .expect("write config");
    d.signal("HUP");
    let line = d.wait_line("the reload line", |l| l.contains("configuration reloaded"));
    assert!(line.contains("1 change(s)"), "{line}");
    assert!(line.contains("control.setpoint: 55.0 → 56.5"), "{line}");
}

// ---- /metrics and / as a Prometheus user expects them ----------------------------------------

/// Parses exposition text with the reference parser (Debian's python3-prometheus-client) and
/// returns (name, type, help) per family.
fn prometheus_families(text: &str) -> Vec<(String, String, String)> {
    use std::io::Write;
    const SCRIPT: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    print(f.name + "\t" + f.type + "\t" + f.documentation)
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, '\t');
            Some((
                it.next()?.to_string(),
                it.next()?.to_string(),
                it.next()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn metrics_have_documented_help_counter_types_and_build_info() {
    // An InfluxDB sink towards a port nobody serves, so the sink's own counters exist.
    let d = Run::start(
        "metrics",
        &["--dry-run"],
        &[],
        &format!(
            "[influx]\nurl = \"http://127.0.0.1:{}\"\nbucket = \"b\"\n",
            free_port()
        ),
    );
    let (_, body) = d.wait_http("/metrics", |c, b| {
        c == 200 && b.contains("telemetry_written")
    });
    let fams = prometheus_families(&body);
    let get = |name: &str| {
        fams.iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no family {name} in:\n{body}"))
            .clone()
    };
    // HELP is the documented meaning with its unit, not boilerplate.
    assert_eq!(get("gpu_core_temp_c").2, "GPU core temperature [°C]");
    assert_eq!(get("gpu_core_temp_c").1, "gauge");
    assert!(
        get("control_d_term").2.starts_with("Derivative term"),
        "{:?}",
        get("control_d_term")
    );
    for (n, _, help) in &fams {
        assert!(!help.starts_with("coolantd measurement"), "{n}: {help}");
    }
    // Counters are typed as counters (the parser strips no suffix: names stay as written).
    for name in ["telemetry_written", "telemetry_dropped", "coolantd_ticks"] {
        assert_eq!(get(name).1, "counter", "{name}");
    }
    assert_eq!(get("telemetry_backlog").1, "gauge");
    assert!(
        body.contains(&format!(
            "coolantd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    // `/` lists the endpoints; an unknown path answers 404 with the same list.
    let (code, root) = http_get(d.http, "/");
    assert_eq!(code, 200, "{root}");
    for e in ["/healthz", "/readyz", "/metrics", "/status"] {
        assert!(root.contains(e), "{e} missing: {root}");
    }
    let (code, nf) = http_get(d.http, "/nope");
    assert_eq!(code, 404);
    assert!(nf.contains("/metrics"), "{nf}");
}
