//! `coolantd run --rehearse` with the real binary: the shipped production configuration runs
//! end to end on the simulator, writes land on the simulator, and the configured CDU address
//! is never contacted; and the simulator's port clash is a configuration error naming the key
//! and the process that holds the port.

use coolantd_testkit::sim_daemon;

use sim_daemon::{free_port, http_get, sim_config_text, TempDir};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped `config/example.toml` with its paths mapped into `dir`, its HTTP endpoint on
/// `http`, its CDU at `cdu_addr`, and `gpus.default_profile` set when `board` is given.
fn production_config(dir: &Path, http: u16, cdu_addr: &str, board: Option<&str>) -> PathBuf {
    let shipped =
        std::fs::read_to_string(root().join("config/example.toml")).expect("example.toml");
    let mut text = shipped
        .replacen(
            "profiles_dir = \"/usr/share/coolantd/firmware-profiles\"",
            &format!(
                "profiles_dir = {:?}",
                root().join("firmware-profiles").display().to_string()
            ),
            1,
        )
        .replacen(
            "state_dir = \"/var/lib/coolantd\"",
            &format!("state_dir = {:?}", dir.join("state").display().to_string()),
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:9105\"",
            &format!("listen = \"127.0.0.1:{http}\""),
            1,
        )
        .replacen("10.20.0.12:502", cdu_addr, 1);
    if let Some(b) = board {
        text = text.replacen(
            "backend = \"nvml\"",
            &format!("backend = \"nvml\"\ndefault_profile = \"{b}\""),
            1,
        );
    }
    assert!(text.contains(cdu_addr), "example.toml lost its CDU address");
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A listening socket on loopback that counts the connections made to it.
struct CountingListener {
    addr: String,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingListener {
    fn start() -> CountingListener {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr").to_string();
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || loop {
            match l.accept() {
                Ok(_) => {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Checked only once the backlog is drained, so a connection made before
                    // `stop` is still counted.
                    if s.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {}
            }
        });
        CountingListener {
            addr,
            count,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting and returns how many connections were made.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("counting thread");
        }
        self.count.load(Ordering::SeqCst)
    }
}

fn status_json(http: u16) -> Option<serde_json::Value> {
    let (code, body) = http_get(http, "/status");
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

#[test]
fn rehearsal_writes_to_the_simulator_and_never_contacts_the_configured_cdu() {
    let dir = TempDir::new("rehearse");
    let real_cdu = CountingListener::start();
    let http = free_port();
    let config = production_config(&dir.0, http, &real_cdu.addr, Some("h200-sxm"));
    let log = dir.0.join("log");
    let mut run = Command::new(BIN)
        .args(["run", "--rehearse", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start the rehearsal");

    // The shipped config keeps dry_run = true; a rehearsal writes anyway, to the simulator.
    // The simulated pump starts at 60 % and the GPUs idle far below the set point, so the
    // pump loop lowers the speed: a command below 60 % read back from the simulated CDU can
    // only be a write of this daemon that landed there.
    let t0 = Instant::now();
    let mut last = None;
    let lowered = loop {
        if let Some(s) = status_json(http) {
            let pump = s["cdus"][0]["pump_command_pct"].as_f64();
            assert_eq!(s["dry_run"], serde_json::json!(false), "{s}");
            if pump.is_some_and(|p| p < 58.0) {
                break true;
            }
            last = Some(s);
        }
        if real_cdu.count.load(Ordering::SeqCst) > 0 || t0.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let killed = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = run.wait().expect("wait");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let configured = real_cdu.addr.clone();
    assert_eq!(
        real_cdu.finish(),
        0,
        "a rehearsal connected to the configured CDU address"
    );
    assert!(
        lowered,
        "no pump write reached the simulator: {last:?}\n{text}"
    );
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(
        text.contains("REHEARSAL") && text.contains(&configured),
        "the rehearsal says loudly what it simulates in place of what:\n{text}"
    );
    assert!(
        text.contains("REHEARSAL (simulated CDUs and GPUs)"),
        "the status line marks the rehearsal:\n{text}"
    );
    assert!(
        !dir.0.join("state").join("limits.json").exists(),
        "a rehearsal records no power limits in the production state folder"
    );
}

#[test]
fn rehearsal_without_a_board_names_gpus_default_profile() {
    let dir = TempDir::new("rehearse-board");
    let real_cdu = CountingListener::start();
    let config = production_config(&dir.0, free_port(), &real_cdu.addr, None);
    let o = Command::new(BIN)
        .args(["run", "--rehearse", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(78), "{text}");
    assert!(text.contains("gpus.default_profile"), "{text}");
    assert!(
        text.contains("h100-sxm") && text.contains("h200-sxm"),
        "{text}"
    );
    assert_eq!(real_cdu.finish(), 0);
}

#[test]
fn simulator_port_in_use_is_a_configuration_error_naming_key_and_holder() {
    let dir = TempDir::new("sim-clash");
    // This test process holds the port, as `coolantd sim` would.
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let path = dir.0.join("sim.toml");
    std::fs::write(&path, sim_config_text(port, &dir.0.join("state"), &[], "")).expect("write");
    let o = Command::new(BIN)
        .args(["run", "--dry-run", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(78), "{text}");
    assert!(text.contains("simulator.listen"), "{text}");
    assert!(
        text.contains(&format!("in use by process {} (", std::process::id())),
        "names the process holding the port: {text}"
    );
    drop(holder);
}
