//! The real `coolantd` binary run as systemd runs it: a notification socket bound by the test
//! stands in for systemd's (`NOTIFY_SOCKET`), signals come from the test, and the daemon runs
//! on the plant simulator (8 simulated H200s, a simulated CDU on real Modbus TCP) with free
//! loopback ports, a private state folder and a 100 ms control period.

use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::sim_daemon;

use serde_json::Value;
use sim_daemon::{free_port, sim_config_text, TempDir};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
/// sysexits(3) EX_CONFIG, what `check-config` and `run` return for a broken configuration.
const EX_CONFIG: i32 = 78;
/// Generous for a loaded 2-core CI machine; the daemon normally starts in well under a second.
const START: Duration = Duration::from_secs(20);

/// The simulator configuration with a 100 ms period, `setpoint`, and the HTTP endpoint on
/// `http_port`; `extra` is appended.
fn config(dir: &Path, cdu_port: u16, http_port: u16, setpoint: f64, extra: &str) -> String {
    sim_config_text(
        cdu_port,
        &dir.join("state"),
        &[
            ("period_ms = 1000", "period_ms = 100"),
            ("setpoint = 55.0", &format!("setpoint = {setpoint:.1}")),
        ],
        &format!("[http]\nlisten = \"127.0.0.1:{http_port}\"\n{extra}"),
    )
}

/// A running daemon: its stderr collected line by line, every notification it sent, and the
/// process killed on drop if a test fails before stopping it.
struct Daemon {
    proc: DaemonProcess,
    dir: TempDir,
    config: PathBuf,
    http: u16,
    cdu: u16,
    notes: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(tag: &str) -> Daemon {
        Daemon::start_with(tag, |_| {})
    }

    /// Starts the daemon after `prepare` has seen its (empty) folder.
    fn start_with(tag: &str, prepare: impl FnOnce(&Path)) -> Daemon {
        let dir = TempDir::new(tag);
        prepare(&dir.0);
        let (cdu, http) = (free_port(), free_port());
        let config = dir.0.join("coolantd.toml");
        std::fs::write(&config, self::config(&dir.0, cdu, http, 55.0, "")).expect("write config");

        let sock_path = dir.0.join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).expect("bind the notification socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set a read timeout");
        let notes = Arc::new(Mutex::new(Vec::new()));
        let n = notes.clone();
        // Ends when the socket file is removed with the temp folder and reads keep timing
        // out after the daemon is gone; it only holds an Arc, so leaking it is harmless.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut idle = 0;
            while idle < 600 {
                match sock.recv(&mut buf) {
                    Ok(len) => {
                        idle = 0;
                        let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
                        n.lock().expect("notes lock").push(msg);
                    }
                    Err(_) => idle += 1,
                }
            }
        });

        let proc = DaemonProcess::spawn(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&config)
                .env("NOTIFY_SOCKET", &sock_path),
        );
        Daemon {
            proc,
            dir,
            config,
            http,
            cdu,
            notes,
        }
    }

    fn log(&self) -> String {
        self.proc.log()
    }

    fn notes(&self) -> Vec<String> {
        self.notes.lock().expect("notes lock").clone()
    }

    /// Waits until a notification equal to `msg` arrives at index `from` or later; returns its index.
    fn wait_note(&self, from: usize, pred: impl Fn(&str) -> bool, what: &str) -> usize {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self.notes().iter().skip(from).position(|m| pred(m)) {
                return from + i;
            }
            assert!(
                t0.elapsed() < START,
                "no {what} notification within {START:?}; got {:?}\nlog:\n{}",
                self.notes(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_log(&self, needle: &str) -> String {
        self.proc.wait_log(needle, START)
    }

    fn get(&self, path: &str) -> (u16, String) {
        sim_daemon::http_get(self.http, path)
    }

    /// Waits until `path` answers 200 and returns the body.
    fn wait_ok(&self, path: &str) -> String {
        self.proc.wait_http_ok(self.http, path, START)
    }

    fn status(&self) -> Value {
        self.proc.wait_status(self.http, START)
    }

    fn signal(&self, sig: libc::c_int) {
        self.proc.signal(sig);
    }

    /// Waits up to `bound` for the process to exit; returns its status and how long it took.
    fn wait_exit(&mut self, bound: Duration) -> Option<(ExitStatus, Duration)> {
        let t0 = Instant::now();
        self.proc.wait_exit(bound).map(|(st, at)| (st, at - t0))
    }
}

fn tick_of(status: &Value) -> u64 {
    status["tick"].as_u64().expect("/status has a tick count")
}

#[test]
fn ready_and_watchdog_over_notify_socket() {
    let d = Daemon::start("notify");
    let ready = d.wait_note(0, |m| m == "READY=1", "READY=1");
    // READY=1 comes after the first control tick, whose WATCHDOG=1 precedes it.
    let notes = d.notes();
    assert!(
        notes[..ready].iter().any(|m| m == "WATCHDOG=1"),
        "READY=1 before any completed tick: {notes:?}"
    );
    assert!(
        d.log().contains("first control tick done; ready"),
        "{}",
        d.log()
    );
    // The watchdog keeps being fed, once per healthy tick: counted against the daemon's own
    // tick count, not the wall clock.
    let pings = || d.notes().iter().filter(|m| *m == "WATCHDOG=1").count();
    let before = pings();
    let t0 = tick_of(&d.status());
    let t1 = loop {
        let t = tick_of(&d.status());
        if t >= t0 + 10 {
            break t;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The notification of tick t1 may still be in flight; give the reader its moment.
    std::thread::sleep(Duration::from_millis(200));
    let after = pings();
    assert!(
        after - before + 1 >= usize::try_from(t1 - t0).expect("small"),
        "only {} watchdog pings over {} ticks",
        after - before,
        t1 - t0
    );
    // STATUS= is the one-line summary: hottest GPU, set point, CDU readings, control state.
    let i = d.wait_note(0, |m| m.starts_with("STATUS="), "STATUS=");
    let status = d.notes()[i].clone();
    assert!(!status.contains('\n'), "{status:?}");
    for part in [
        "hottest sim-node01",
        "(setpoint 55.0°C)",
        "cdu-sim: supply ",
        "flow ",
        "pump ",
    ] {
        assert!(status.contains(part), "{part:?} missing in {status:?}");
    }
    assert!(
        !status.contains("no GPU reading") && !status.contains("supply ?"),
        "{status:?}"
    );
}

#[test]
fn http_endpoints_on_the_running_daemon() {
    let d = Daemon::start("http");
    assert!(!d.wait_ok("/healthz").is_empty());
    // Ready once the control core has every required CDU input valid.
    d.wait_ok("/readyz");
    let metrics = d.wait_ok("/metrics");
    let mut gpus: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("gpu_core_temp_c{"))
        .filter_map(|l| l.split("gpu=\"").nth(1)?.split('"').next())
        .collect();
    gpus.sort_unstable();
    gpus.dedup();
    assert_eq!(
        gpus,
        ["0", "1", "2", "3", "4", "5", "6", "7"],
        "metrics:\n{metrics}"
    );
    let status = d.status();
    let list = status["gpus"].as_array().expect("/status has gpus");
    assert_eq!(list.len(), 8, "{status}");
    for g in list {
        let core = g["core_temp_c"]
            .as_f64()
            .expect("every GPU has a core temperature");
        assert!((15.0..90.0).contains(&core), "{g}");
    }
    assert_eq!(status["ready"], Value::Bool(true), "{status}");
    assert_eq!(status["cdus"][0]["name"], "cdu-sim", "{status}");
    assert_eq!(d.get("/nope").0, 404);
}

#[test]
fn sighup_with_invalid_config_keeps_running_and_logs() {
    let d = Daemon::start("sighup");
    d.wait_note(0, |m| m == "READY=1", "READY=1");
    let valid = std::fs::read_to_string(&d.config).expect("read config");

    // A typo'd key: the reload is refused and the running configuration stays.
    std::fs::write(
        &d.config,
        valid.replace("setpoint = 55.0", "setpoint = 50.0\nsetpiont = 48.0"),
    )
    .expect("write broken config");
    let from = d.notes().len();
    d.signal(libc::SIGHUP);
    let line = d.wait_log("reload refused");
    assert!(
        line.contains(&d.config.display().to_string()) && line.contains("control.setpiont"),
        "the refusal must name the file and the key: {line}"
    );
    let r = d.wait_note(
        from,
        |m| m.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "RELOADING=1",
    );
    d.wait_note(r, |m| m == "READY=1", "READY=1 after a refused reload");
    assert_eq!(d.get("/healthz").0, 200);
    let t1 = tick_of(&d.status());
    std::thread::sleep(Duration::from_millis(500));
    let s = d.status();
    assert!(tick_of(&s) > t1, "ticks stopped after a refused reload");
    assert_eq!(s["setpoint_c"].as_f64(), Some(55.0), "{s}");

    // A valid change is taken live.
    std::fs::write(&d.config, config(&d.dir.0, d.cdu, d.http, 52.0, "")).expect("write new config");
    let from = d.notes().len();
    d.signal(libc::SIGHUP);
    let r = d.wait_note(from, |m| m.starts_with("RELOADING=1\n"), "RELOADING=1");
    d.wait_note(r, |m| m == "READY=1", "READY=1 after the reload");
    d.wait_log("configuration reloaded");
    let t0 = Instant::now();
    loop {
        let s = d.status();
        if s["setpoint_c"].as_f64() == Some(52.0) {
            break;
        }
        assert!(t0.elapsed() < START, "set point not taken: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_leaves_safely_in_bounded_time() {
    // An earlier run "crashed" with GPU 3 capped: its original limit is on record.
    let probe = run_cmd(
        &probe_config_dir("term-probe"),
        &["probe", "--json", "--config"],
    );
    let report: Value = serde_json::from_slice(&probe.stdout).expect("probe JSON");
    let uuid = report["gpus"][3]["uuid"]
        .as_str()
        .expect("GPU 3 has a UUID")
        .to_string();

    let mut d = Daemon::start_with("term", |dir| {
        let state = dir.join("state");
        std::fs::create_dir_all(&state).expect("mkdir state");
        let record = serde_json::json!({ uuid.clone(): {
            "host": "sim-node01", "index": 3, "uuid": uuid, "original": 650.0 } });
        std::fs::write(state.join("power-limits.json"), record.to_string()).expect("write record");
    });
    let state = d.dir.0.join("state");
    d.wait_note(0, |m| m == "READY=1", "READY=1");
    d.wait_ok("/readyz");

    let from = d.notes().len();
    d.signal(libc::SIGTERM);
    // A guard against a hang, not a speed target: the shutdown path's own bound is its
    // runtime shutdown timeout; the exit time is printed as a figure below.
    let (st, took) = d
        .wait_exit(START)
        .unwrap_or_else(|| panic!("still running {START:?} after SIGTERM; log:\n{}", d.log()));
    assert_eq!(st.code(), Some(0), "log:\n{}", d.log());
    // The stderr reader may trail the exit by a moment.
    d.wait_log("restored the original power limit");
    let log = d.log();
    assert!(log.contains("SIGTERM: leaving safely"), "{log}");
    assert!(
        d.notes()[from..].iter().any(|m| m == "STOPPING=1"),
        "no STOPPING=1: {:?}",
        d.notes()
    );
    assert!(
        !state.join("power-limits.json").exists(),
        "the restored limit is still on record after a clean exit"
    );
    eprintln!("exit after SIGTERM took {took:?}");
}

/// A folder holding a valid simulator configuration as `coolantd.toml` (no HTTP endpoint).
fn probe_config_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    let text = sim_config_text(free_port(), &dir.0.join("state"), &[], "");
    std::fs::write(dir.0.join("coolantd.toml"), text).expect("write config");
    dir
}

/// Runs the binary with `args` followed by the folder's `coolantd.toml`.
fn run_cmd(dir: &TempDir, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg(dir.0.join("coolantd.toml"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run coolantd")
}

fn check_config(file: &Path) -> Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(file)
        .output()
        .expect("run coolantd check-config")
}

#[track_caller]
fn assert_refused(out: &Output, file: &Path, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "stderr:\n{err}");
    assert!(
        err.contains(&file.display().to_string()),
        "must name {}: {err}",
        file.display()
    );
    for n in needles {
        assert!(err.contains(n), "must mention {n:?}: {err}");
    }
}

#[test]
fn check_config_rejects_broken_config_and_profile() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = check_config(&root.join("config/sim.toml"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(": OK"));

    let dir = TempDir::new("check");
    let cfg = dir.0.join("broken.toml");
    let base = sim_config_text(free_port(), &dir.0.join("state"), &[], "");

    // An unknown key.
    std::fs::write(
        &cfg,
        base.replace("setpoint = 55.0", "setpoint = 55.0\nsetpiont = 50.0"),
    )
    .expect("write");
    assert_refused(&check_config(&cfg), &cfg, &["control.setpiont"]);
    // A value of the wrong type.
    std::fs::write(
        &cfg,
        base.replace("period_ms = 1000", "period_ms = \"fast\""),
    )
    .expect("write");
    assert_refused(&check_config(&cfg), &cfg, &["control.period_ms"]);

    // A broken CDU profile in a private copy of the profiles folder.
    let profiles = dir.0.join("profiles");
    for sub in ["cdu", "gpu"] {
        std::fs::create_dir_all(profiles.join(sub)).expect("mkdir");
        for e in std::fs::read_dir(root.join("firmware-profiles").join(sub)).expect("read profiles")
        {
            let e = e.expect("dir entry");
            std::fs::copy(e.path(), profiles.join(sub).join(e.file_name())).expect("copy profile");
        }
    }
    let with_profiles = base.replace(
        &format!("{:?}", root.join("firmware-profiles").display().to_string()),
        &format!("{:?}", profiles.display().to_string()),
    );
    assert_ne!(with_profiles, base, "profiles_dir was not rewritten");
    std::fs::write(&cfg, &with_profiles).expect("write");
    assert!(
        check_config(&cfg).status.success(),
        "the copied profiles are valid"
    );

    let sim_cdu = profiles.join("cdu/sim-cdu.toml");
    let original = std::fs::read_to_string(&sim_cdu).expect("read sim-cdu.toml");
    let cases: [(&str, &str, &[&str]); 3] = [
        // return_temp (FLOAT32 at 2..=3) moved onto flow's first word: overlap.
        (
            "name = \"return_temp\"\nrole = \"return_temperature\"\nkind = \"input\"\naddress = 2",
            "name = \"return_temp\"\nrole = \"return_temperature\"\nkind = \"input\"\naddress = 3",
            &["overlaps", "return_temp"],
        ),
        // A misspelt role.
        (
            "role = \"return_temperature\"",
            "role = \"return_temprature\"",
            &["role", "return_temprature"],
        ),
        // The pump feedback the control loop requires is no longer mapped.
        (
            "role = \"pump_speed_feedback\"\n",
            "",
            &["pump_speed_feedback"],
        ),
    ];
    for (from, to, needles) in cases {
        assert!(
            original.contains(from),
            "sim-cdu.toml no longer has {from:?}"
        );
        std::fs::write(&sim_cdu, original.replace(from, to)).expect("write profile");
        assert_refused(&check_config(&cfg), &sim_cdu, needles);
    }
    std::fs::write(&sim_cdu, &original).expect("restore profile");

    // `run` refuses the same broken profile with the same exit code, so systemd's
    // RestartPreventExitStatus=78 stops it from looping.
    std::fs::write(
        &sim_cdu,
        original.replace("role = \"pump_speed_feedback\"\n", ""),
    )
    .expect("write profile");
    let out = Command::new(BIN)
        .args(["run", "--dry-run", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .output()
        .expect("run coolantd run");
    assert_refused(&out, &sim_cdu, &["pump_speed_feedback"]);
}

#[test]
fn probe_reads_the_simulator_and_never_writes() {
    let dir = probe_config_dir("probe");
    let out = run_cmd(&dir, &["probe", "--json", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("probe --json prints JSON");
    let gpus = report["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 8, "{report}");
    assert!(
        gpus.iter().all(|g| g["core_temp"]["value"].is_number()),
        "{report}"
    );
    let regs = report["cdus"][0]["registers"]
        .as_array()
        .expect("CDU registers");
    let names: Vec<&str> = regs.iter().filter_map(|r| r["name"].as_str()).collect();
    for n in [
        "supply_temp",
        "return_temp",
        "flow",
        "pump_feedback",
        "pump_speed_cmd",
    ] {
        assert!(names.contains(&n), "{n} missing: {names:?}");
    }
    // Every register read succeeded (an error would be {"error": ..., "kind": ...}).
    assert!(
        regs.iter()
            .all(|r| r["reading"]["value"].is_number() && r["reading"].get("error").is_none()),
        "{report}"
    );
    // Probing never records or changes a power limit.
    assert!(!dir.0.join("state/power-limits.json").exists());

    let out = run_cmd(&dir, &["probe", "--config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("GPUs on sim-node01 (8):"), "{table}");
    assert!(table.contains("CDU cdu-sim ("), "{table}");
    assert!(!table.contains("FAULT"), "{table}");
}

#[test]
fn restore_works_with_an_invalid_config() {
    // ExecStopPost= runs `restore` even after ExecStartPre= refused the configuration; it
    // needs only site.state_dir from the file.
    let dir = TempDir::new("restore");
    let state = dir.0.join("state");
    let cfg = dir.0.join("coolantd.toml");
    let broken = sim_config_text(free_port(), &state, &[], "")
        .replace("setpoint = 55.0", "setpoint = 55.0\nsetpiont = 50.0");
    std::fs::write(&cfg, &broken).expect("write");
    let out = Command::new(BIN)
        .args(["restore", "--config"])
        .arg(&cfg)
        .output()
        .expect("run restore");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("nothing to restore") && stdout.contains(&state.display().to_string()),
        "{stdout}"
    );
    assert!(
        stderr.contains("control.setpiont"),
        "the warning names the bad key: {stderr}"
    );

    // With a record present it must try rather than give up on the configuration: the
    // recorded GPU does not exist (no NVML here; on a GPU machine no such UUID), so it fails
    // loudly, not with EX_CONFIG, and keeps the record for the next attempt.
    std::fs::create_dir_all(&state).expect("mkdir");
    let record = r#"{"GPU-x":{"host":"h","index":0,"uuid":"GPU-x","original":700.0}}"#;
    std::fs::write(state.join("power-limits.json"), record).expect("write record");
    let out = Command::new(BIN)
        .args(["restore", "--config"])
        .arg(&cfg)
        .output()
        .expect("run restore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(state.join("power-limits.json").exists(), "{stderr}");
}

#[test]
fn restore_honours_on_shutdown_hold_unless_forced() {
    // ExecStopPost= runs `restore` after every stop; with on_shutdown = "hold" it must leave
    // the caps (and their record) in place, and only --force puts them back.
    let dir = TempDir::new("restore-hold");
    let state = dir.0.join("state");
    let cfg = dir.0.join("coolantd.toml");
    let text = sim_config_text(
        free_port(),
        &state,
        &[],
        "[control.power_cap]\non_shutdown = \"hold\"\n",
    );
    std::fs::write(&cfg, &text).expect("write");
    std::fs::create_dir_all(&state).expect("mkdir");
    let record = r#"{"GPU-x":{"host":"h","index":0,"uuid":"GPU-x","original":700.0}}"#;
    let record_path = state.join("power-limits.json");
    std::fs::write(&record_path, record).expect("write record");

    let out = Command::new(BIN)
        .args(["restore", "--config"])
        .arg(&cfg)
        .output()
        .expect("run restore");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("held") && stdout.contains("--force"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&record_path).expect("record kept"),
        record
    );

    // --force tries to restore; without NVML here it fails naming NVML (on a GPU machine: no
    // such UUID, so the limit cannot be restored) and keeps the record.
    let out = Command::new(BIN)
        .args(["restore", "--force", "--config"])
        .arg(&cfg)
        .output()
        .expect("run restore --force");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stdout.contains("held"), "{stdout}");
    assert!(
        stderr.contains("NVML is not available") || stderr.contains("could not be restored"),
        "{stderr}"
    );
    assert!(record_path.exists(), "{stderr}");
}
