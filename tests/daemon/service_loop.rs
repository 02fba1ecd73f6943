//! The real `coolantd` binary's control loop against a slow CDU and a reloaded period.
//!
//! A slow CDU is the simulator's real Modbus TCP server behind a proxy that holds every reply
//! for just under the configured `timeout_ms`: the CDU answers, late. The daemon must keep
//! ticking at its period (counted in ticks per held reply, not in wall-clock durations),
//! raise `cdu_slow`, report how old the sample it steers on is, and on SIGTERM still write
//! the safe pump speed through the slow CDU before it exits. A reload of `control.period_ms`
//! must change the tick rate of the running daemon.

use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::sim_daemon;

use serde_json::Value;
use sim_daemon::{free_port, sim_config_text, TempDir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
/// sysexits(3) EX_CONFIG.
const EX_CONFIG: i32 = 78;
/// Generous for a loaded 2-core CI machine.
const START: Duration = Duration::from_secs(20);
/// The Modbus timeout of the slow-CDU runs, and how long the proxy holds each reply: just
/// under it, so the CDU is slow but never times out.
const TIMEOUT_MS: u64 = 500;
const HOLD_MS: u64 = 400;
/// The control period of the slow-CDU runs.
const PERIOD_MS: u64 = 100;

// ---- A Modbus TCP proxy that holds replies ----------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Reply,
}

/// One Modbus frame seen by the proxy: when, on which connection, which way, and its PDU.
#[derive(Debug, Clone)]
struct Frame {
    at: Instant,
    conn: u64,
    dir: Dir,
    pdu: Vec<u8>,
}

/// Sits between the daemon and the simulated CDU; while `hold_ms` is non-zero every reply is
/// held that long before it is forwarded. Every frame is recorded (a reply once forwarded).
struct Proxy {
    addr: SocketAddr,
    hold_ms: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
    frames: Arc<Mutex<Vec<Frame>>>,
}

fn read_frame(r: &mut impl Read) -> Option<([u8; 7], Vec<u8>)> {
    let mut hdr = [0u8; 7];
    r.read_exact(&mut hdr).ok()?;
    let len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
    let mut pdu = vec![0u8; len.saturating_sub(1)];
    r.read_exact(&mut pdu).ok()?;
    Some((hdr, pdu))
}

fn write_frame(w: &mut impl Write, hdr: [u8; 7], pdu: &[u8]) -> bool {
    // One write per frame: a header and a PDU in two segments would meet Nagle's delay.
    let mut frame = hdr.to_vec();
    frame.extend_from_slice(pdu);
    w.write_all(&frame).is_ok()
}

impl Proxy {
    /// Starts the proxy's threads; they live as long as the test process (each connection's
    /// threads end when either side closes).
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let hold_ms = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicU64::new(0));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (h, n, f) = (hold_ms.clone(), held.clone(), frames.clone());
        std::thread::spawn(move || {
            for (conn, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { continue };
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let conn = conn as u64;
                let (Ok(mut cr), Ok(mut uw)) = (client.try_clone(), up.try_clone()) else {
                    continue;
                };
                let (mut cw, mut ur) = (client, up);
                let f1 = f.clone();
                std::thread::spawn(move || {
                    while let Some((hdr, pdu)) = read_frame(&mut cr) {
                        f1.lock().expect("frames").push(Frame {
                            at: Instant::now(),
                            conn,
                            dir: Dir::Request,
                            pdu: pdu.clone(),
                        });
                        if !write_frame(&mut uw, hdr, &pdu) {
                            break;
                        }
                    }
                    let _ = uw.shutdown(std::net::Shutdown::Both);
                });
                let (h, n, f2) = (h.clone(), n.clone(), f.clone());
                std::thread::spawn(move || {
                    while let Some((hdr, pdu)) = read_frame(&mut ur) {
                        let hold = h.load(Ordering::SeqCst);
                        if hold > 0 {
                            std::thread::sleep(Duration::from_millis(hold));
                        }
                        if !write_frame(&mut cw, hdr, &pdu) {
                            break;
                        }
                        if hold > 0 {
                            n.fetch_add(1, Ordering::SeqCst);
                        }
                        f2.lock().expect("frames").push(Frame {
                            at: Instant::now(),
                            conn,
                            dir: Dir::Reply,
                            pdu,
                        });
                    }
                    let _ = cw.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy {
            addr,
            hold_ms,
            held,
            frames,
        }
    }

    fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    fn frames(&self) -> Vec<Frame> {
        self.frames.lock().expect("frames").clone()
    }
}

// ---- The real binary ------------------------------------------------------------------

/// A running daemon with its stderr collected; killed on drop if a test fails early.
struct Daemon {
    proc: DaemonProcess,
    _dir: TempDir,
    config: PathBuf,
    http: u16,
}

impl Daemon {
    fn start(dir: TempDir, text: &str, http: u16) -> Daemon {
        let config = dir.0.join("coolantd.toml");
        std::fs::write(&config, text).expect("write config");
        let proc = DaemonProcess::spawn(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&config)
                .env_remove("NOTIFY_SOCKET"),
        );
        Daemon {
            proc,
            _dir: dir,
            config,
            http,
        }
    }

    fn log(&self) -> String {
        self.proc.log()
    }

    fn wait_log(&self, needle: &str) -> String {
        self.proc.wait_log(needle, START)
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

    /// Waits up to `bound` for the process to exit; returns its status and when it was seen.
    fn wait_exit(&mut self, bound: Duration) -> Option<(ExitStatus, Instant)> {
        self.proc.wait_exit(bound)
    }
}

fn tick_of(status: &Value) -> u64 {
    status["tick"].as_u64().expect("/status has a tick count")
}

fn has_alarm(status: &Value, id: &str) -> bool {
    status["alarms"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["id"] == id))
}

/// The value of the first sample of a `/metrics` family whose line starts with `prefix`.
fn metric(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The simulator configuration with the CDU reached through `cdu_address`, the simulated
/// CDU serving on `sim_port`, and the HTTP endpoint on `http_port`.
fn config(
    dir: &Path,
    sim_port: u16,
    cdu_address: &str,
    http_port: u16,
    replace: &[(&str, &str)],
) -> String {
    let text = sim_config_text(
        sim_port,
        &dir.join("state"),
        replace,
        &format!("[http]\nlisten = \"127.0.0.1:{http_port}\"\n"),
    );
    let sim_addr = format!("address = \"127.0.0.1:{sim_port}\"");
    assert!(
        text.contains(&sim_addr),
        "the CDU address is not where expected"
    );
    text.replace(&sim_addr, &format!("address = \"{cdu_address}\""))
}

// ---- D1: a slow CDU -----------------------------------------------------------------------

#[test]
fn a_slow_cdu_neither_stalls_the_tick_nor_blocks_the_safe_output() {
    let dir = TempDir::new("slow-cdu");
    let (sim_port, http) = (free_port(), free_port());
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], sim_port)));
    let period = format!("period_ms = {PERIOD_MS}");
    let timeout = format!("timeout_ms = {TIMEOUT_MS}");
    let text = config(
        &dir.0,
        sim_port,
        &proxy.addr.to_string(),
        http,
        &[
            ("period_ms = 1000", &period),
            ("timeout_ms = 200", &timeout),
        ],
    );
    let mut d = Daemon::start(dir, &text, http);
    d.wait_ok("/readyz");

    // The CDU turns slow: every reply just under the timeout.
    proxy.hold_ms.store(HOLD_MS, Ordering::SeqCst);
    let t0 = Instant::now();
    let (held0, before) = loop {
        // Start counting once the first held reply went through.
        if proxy.held() >= 1 {
            break (proxy.held(), d.status());
        }
        assert!(t0.elapsed() < START, "the proxy never held a reply");
        std::thread::sleep(Duration::from_millis(5));
    };
    let replies = 6;
    while proxy.held() < held0 + replies {
        assert!(
            t0.elapsed() < START * 2,
            "the daemon stopped talking to the CDU"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = d.status();
    let ticks = tick_of(&after) - tick_of(&before);
    // The daemon's own timestamps of its ticks, for the figure.
    let span_ms = (after["time_unix_ns"].as_i64().unwrap_or(0)
        - before["time_unix_ns"].as_i64().unwrap_or(0)) as f64
        / 1e6;
    // Each held reply lasts HOLD_MS = 4 periods: a loop that keeps its period completes
    // about 4 ticks per held reply; one that waits for the CDU completes one tick per 3 to
    // 7 held replies (a poll of 3 requests, then the pump and heartbeat writes with their
    // read-backs).
    eprintln!(
        "slow CDU: {ticks} ticks completed while {replies} replies were held {HOLD_MS} ms each \
         (timeout {TIMEOUT_MS} ms, period {PERIOD_MS} ms); mean tick interval {:.0} ms",
        span_ms / ticks.max(1) as f64
    );
    assert!(
        ticks >= 2 * replies,
        "only {ticks} ticks while {replies} CDU replies were held {HOLD_MS} ms each; log:\n{}",
        d.log()
    );

    // The slow CDU is alarmed, and the age of the sample the loop steers on is reported.
    let t1 = Instant::now();
    let status = loop {
        let s = d.status();
        let age = s["cdus"][0]["link"]["sample_age_s"]
            .as_f64()
            .map(|s| s * 1e3)
            .unwrap_or(0.0);
        if has_alarm(&s, "cdu_slow:cdu-sim") && age > 3.0 * PERIOD_MS as f64 {
            break s;
        }
        assert!(
            t1.elapsed() < START,
            "no cdu_slow alarm with an old sample: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let link = &status["cdus"][0]["link"];
    assert!(link["late_polls"].as_u64().unwrap_or(0) > 0, "{link}");
    eprintln!("slow CDU: /status link {link}");
    let metrics = d.wait_ok("/metrics");
    let age = metric(&metrics, "cdu_link_sample_age_ms{");
    assert!(age.is_some_and(|a| a > 0.0), "{metrics}");
    assert!(
        metric(&metrics, "cdu_link_late_polls{").is_some_and(|n| n > 0.0),
        "{metrics}"
    );
    // Reported, not asserted: how long a tick takes on a loaded machine is for benches.
    let duration = metric(&metrics, "tick_duration_ms{").expect("tick_duration_ms");
    eprintln!("slow CDU: last tick took {duration:.1} ms, sample age {age:?} ms");

    // SIGTERM: the safe pump speed (failsafe_speed 100 % = raw 1000 in the sim-cdu profile's
    // tenths of a percent, holding register 0) is written through the slow CDU and
    // acknowledged before the process exits.
    let sent = Instant::now();
    d.signal(libc::SIGTERM);
    let (st, exited) = d
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running 30 s after SIGTERM; log:\n{}", d.log()));
    assert_eq!(st.code(), Some(0), "log:\n{}", d.log());
    d.wait_log("safe output applied");
    let frames = proxy.frames();
    let write = frames
        .iter()
        .rposition(|f| {
            f.dir == Dir::Request && f.at > sent && f.pdu.len() == 5 && f.pdu[..3] == [6, 0, 0]
        })
        .unwrap_or_else(|| panic!("no pump speed write after SIGTERM: {frames:?}"));
    let value = u16::from_be_bytes([frames[write].pdu[3], frames[write].pdu[4]]);
    assert_eq!(value, 1000, "the safe output is the failsafe speed");
    let ack = frames[write..]
        .iter()
        .find(|f| f.dir == Dir::Reply && f.conn == frames[write].conn && f.pdu.first() == Some(&6))
        .unwrap_or_else(|| panic!("the safe pump write was never acknowledged: {frames:?}"));
    assert!(
        ack.at <= exited,
        "the daemon exited before its safe output landed"
    );
    eprintln!(
        "slow CDU: SIGTERM → safe pump speed acknowledged {:?}, exit {:?}",
        ack.at - sent,
        exited - sent
    );
}

// ---- D9: a reloaded control period -------------------------------------------------------

#[test]
fn a_reloaded_control_period_changes_the_tick_rate() {
    let dir = TempDir::new("reload-period");
    let (sim_port, http) = (free_port(), free_port());
    let cdu = format!("127.0.0.1:{sim_port}");
    let text = config(&dir.0, sim_port, &cdu, http, &[]);
    assert!(text.contains("period_ms = 1000"));
    let d = Daemon::start(dir, &text, http);
    d.wait_ok("/readyz");

    std::fs::write(
        &d.config,
        text.replace("period_ms = 1000", "period_ms = 100"),
    )
    .expect("write the new config");
    d.signal(libc::SIGHUP);
    d.wait_log("configuration reloaded");
    let first = d.status();
    let t0 = Instant::now();
    let mut last = first.clone();
    // At the new period 20 ticks take 2 s; at the old one they would take 20 s.
    while tick_of(&last) < tick_of(&first) + 20 && t0.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(100));
        last = d.status();
    }
    let ticks = tick_of(&last) - tick_of(&first);
    assert!(ticks >= 2, "the loop stopped ticking: {ticks} ticks");
    // The daemon's own timestamps of its ticks, not the test's clock.
    let span_ns = last["time_unix_ns"].as_i64().expect("time_unix_ns")
        - first["time_unix_ns"].as_i64().expect("time_unix_ns");
    let mean_ms = span_ns as f64 / 1e6 / ticks as f64;
    eprintln!("after the reload: {ticks} ticks, mean interval {mean_ms:.0} ms");
    assert!(
        mean_ms < 500.0,
        "ticks still {mean_ms:.0} ms apart after reloading period_ms 1000 → 100; log:\n{}",
        d.log()
    );
    let metrics = d.wait_ok("/metrics");
    assert_eq!(
        metric(&metrics, "tick_period_ms{"),
        Some(100.0),
        "{metrics}"
    );
    assert!(d.log().contains("control period changed"), "{}", d.log());
}

// ---- D1: timeouts that cannot fit -----------------------------------------------------------

fn check_config(file: &Path) -> Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(file)
        .output()
        .expect("run coolantd check-config")
}

#[track_caller]
fn assert_refused(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "must mention {n:?}: {err}");
    }
}

#[test]
fn timeouts_and_periods_that_cannot_fit_are_refused_with_the_key() {
    let dir = TempDir::new("fit");
    let cfg = dir.0.join("coolantd.toml");
    let base = sim_config_text(free_port(), &dir.0.join("state"), &[], "");
    let with = |pairs: &[(&str, &str)]| {
        let mut t = base.clone();
        for (a, b) in pairs {
            assert!(t.contains(a), "{a}");
            t = t.replace(a, b);
        }
        std::fs::write(&cfg, t).expect("write");
    };
    // The case from the issue: a 10 s request timeout at a 100 ms period.
    with(&[
        ("timeout_ms = 200", "timeout_ms = 10000"),
        ("period_ms = 1000", "period_ms = 100"),
    ]);
    assert_refused(
        &check_config(&cfg),
        &["cdu[0].timeout_ms", "TimeoutStopSec"],
    );
    // Within the shutdown bound, but a poll of 3 requests plus a reconnect at 900 ms each
    // cannot deliver a sample younger than max_sample_age_ms (3000 ms).
    with(&[
        ("timeout_ms = 200", "timeout_ms = 900"),
        ("period_ms = 1000", "period_ms = 100"),
    ]);
    assert_refused(
        &check_config(&cfg),
        &["cdu[0].timeout_ms", "control.max_sample_age_ms", "<= 725"],
    );
    // `run` refuses the same file with the same exit code.
    let out = Command::new(BIN)
        .args(["run", "--dry-run", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .output()
        .expect("run coolantd run");
    assert_refused(&out, &["cdu[0].timeout_ms"]);
    // A period the unit's 10 s watchdog cannot tolerate.
    with(&[(
        "period_ms = 1000",
        "period_ms = 20000\nmax_sample_age_ms = 60000",
    )]);
    assert_refused(&check_config(&cfg), &["control.period_ms", "WatchdogSec"]);
    // Under a watchdog shorter than two periods (a unit whose WatchdogSec= was lowered),
    // `run` refuses the period, naming the key.
    with(&[]);
    let out = Command::new(BIN)
        .args(["run", "--dry-run", "--config"])
        .arg(&cfg)
        .env("WATCHDOG_USEC", "1500000")
        .env_remove("WATCHDOG_PID")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .output()
        .expect("run coolantd run");
    assert_refused(&out, &["control.period_ms", "WATCHDOG_USEC"]);
    // What fits is accepted.
    with(&[
        ("timeout_ms = 200", "timeout_ms = 700"),
        ("period_ms = 1000", "period_ms = 100"),
    ]);
    let ok = check_config(&cfg);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
