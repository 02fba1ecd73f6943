//! The real `coolantd` binary, SIGKILLed mid-stream during a database outage and started
//! again on the same state folder: nothing it had streamed is lost.
//!
//! The daemon runs on the plant simulator (8 simulated H200s, 100 ms period) and streams to a
//! real VictoriaMetrics through the InfluxDB sink's disk spool. The test stops VictoriaMetrics
//! so points pile up in the spool, reads the last tick from `/status`, SIGKILLs the daemon,
//! brings VictoriaMetrics back and starts the daemon again. Every tick the first run reported
//! must arrive (the spool holds a point as soon as `submit` returns, and the restart replays
//! it), at most one batch may arrive twice, and the second run's own points arrive too.

use coolantd_testkit::sim_daemon;
use coolantd_testkit::victoria;

use serde_json::Value;
use sim_daemon::{free_port, sim_config_text, TempDir};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use victoria::{Series, Victoria};

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
/// Lines per write request: small, so that the backlog takes several requests to replay and
/// "at most one batch twice" is a tight bound.
const BATCH: usize = 20;
/// How long each phase streams: at a 100 ms period, about a dozen ticks.
const PHASE: Duration = Duration::from_millis(1200);
/// Generous for a loaded 2-core CI machine; the daemon normally starts in well under a second.
const START: Duration = Duration::from_secs(20);
/// The simulator's GPU count (`gpus_per_host` in config/sim.toml).
const GPUS: usize = 8;

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One run of the binary; killed on drop if the test fails before stopping it.
struct Run {
    child: Child,
    http: u16,
    log: std::path::PathBuf,
}

impl Run {
    fn start(config: &Path, http: u16, log: &Path) -> Run {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("daemon log file");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start coolantd run");
        Run {
            child,
            http,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The latest snapshot, once the endpoint answers and at least one tick is done.
    fn status(&mut self) -> Value {
        let t0 = Instant::now();
        loop {
            let (code, body) = sim_daemon::http_get(self.http, "/status");
            if code == 200 {
                let v: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"));
                if v["tick"].as_u64().is_some_and(|t| t > 0) {
                    return v;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("coolantd exited with {st}; log:\n{}", self.log());
            }
            assert!(
                t0.elapsed() < START,
                "/status has no tick after {START:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid this test spawned and has not reaped yet.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                t0.elapsed() < START,
                "coolantd did not exit within {START:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tick_of(status: &Value) -> u64 {
    status["tick"].as_u64().expect("/status has a tick count")
}

fn time_ms_of(status: &Value) -> i64 {
    // VictoriaMetrics keeps milliseconds; the snapshot's time is the tick's point timestamp.
    status["time_unix_ns"]
        .as_i64()
        .expect("/status has time_unix_ns")
        / 1_000_000
}

/// Per GPU series: its `gpu` label and its timestamps in the range `[from, to)`.
fn in_range(series: &[Series], from: i64, to: i64) -> BTreeMap<String, Vec<i64>> {
    series
        .iter()
        .map(|s| {
            let key = s.label("gpu").unwrap_or("?").to_string();
            let ts = s
                .timestamps
                .iter()
                .copied()
                .filter(|t| (from..to).contains(t))
                .collect();
            (key, ts)
        })
        .collect()
}

fn distinct(ts: &[i64]) -> usize {
    ts.iter().collect::<std::collections::BTreeSet<_>>().len()
}

#[test]
fn sigkill_during_outage_then_restart_loses_nothing() {
    let t_test = Instant::now();
    let mut vm = Victoria::start();
    let dir = TempDir::new("daemon-crash");
    let http = free_port();
    // `fsync = "never"`: a SIGKILL keeps the OS page cache, so the spool must survive it
    // without any fsync (fsync is only for power loss). Short retries, so the replay starts
    // promptly once VictoriaMetrics is back.
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{http}\"\n\n\
         [influx]\nurl = \"{}\"\norg = \"test\"\nbucket = \"coolantd\"\ntoken = \"t\"\n\
         batch_size = {BATCH}\nflush_interval_ms = 50\nretry_min_ms = 20\nretry_max_ms = 200\n\
         request_timeout_ms = 1000\nfsync = \"never\"\n",
        vm.url()
    );
    let text = sim_config_text(
        free_port(),
        &dir.0.join("state"),
        &[("period_ms = 1000", "period_ms = 100")],
        &extra,
    );
    let config = dir.0.join("coolantd.toml");
    std::fs::write(&config, text).expect("write config");
    let log = dir.0.join("coolantd.log");

    // First run: stream, then a database outage, then SIGKILL.
    let t_run1 = unix_ms();
    let mut run1 = Run::start(&config, http, &log);
    run1.status();
    std::thread::sleep(PHASE);
    let t_outage = unix_ms();
    vm.stop();
    std::thread::sleep(PHASE);
    let before_kill = run1.status();
    run1.signal(libc::SIGKILL);
    let st = run1.wait_exit();
    let t_kill = unix_ms();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "{st}"
    );
    let last_tick = tick_of(&before_kill);
    let last_ms = time_ms_of(&before_kill);
    drop(run1);

    // Second run: the database is back; the backlog replays and the new points follow.
    vm.restart();
    let t_run2 = unix_ms();
    let mut run2 = Run::start(&config, http, &log);
    run2.status();
    std::thread::sleep(PHASE);
    let run2_tick = tick_of(&run2.status());
    run2.signal(libc::SIGTERM);
    let st = run2.wait_exit();
    assert!(st.success(), "SIGTERM exit: {st}; log:\n{}", run2.log());

    let complete = |s: &[Series]| {
        s.len() == GPUS
            && in_range(s, t_run1, t_kill)
                .values()
                .all(|ts| distinct(ts) as u64 >= last_tick)
            && in_range(s, t_run2, i64::MAX)
                .values()
                .all(|ts| distinct(ts) as u64 >= run2_tick)
    };
    let series = vm.export_until("gpu_core_temp_c", complete);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        series.len(),
        GPUS,
        "one series per GPU: {series:?}\nlog:\n{log_text}"
    );

    let run1 = in_range(&series, t_run1, t_kill);
    let before = in_range(&series, t_run1, t_outage);
    let during = in_range(&series, t_outage, t_kill);
    let run2 = in_range(&series, t_run2, i64::MAX);
    let mut duplicates = 0;
    for s in &series {
        duplicates += s.timestamps.len() - distinct(&s.timestamps);
        assert!(
            s.timestamps.iter().all(|t| *t < t_kill || *t >= t_run2),
            "a point stamped between the kill and the restart: {:?}",
            s.timestamps
        );
    }
    for (gpu, ts) in &run1 {
        let (b, d, a) = (
            distinct(&before[gpu]),
            distinct(&during[gpu]),
            distinct(&run2[gpu]),
        );
        eprintln!(
            "daemon_crash gpu {gpu}: first run {} (before outage {b}, during outage {d}), \
             last tick before SIGKILL {last_tick}, after restart {a} (second run's /status tick {run2_tick})",
            distinct(ts)
        );
        assert!(
            distinct(ts) as u64 >= last_tick,
            "GPU {gpu}: {} points from the first run, but it reported tick {last_tick} before SIGKILL\nlog:\n{log_text}",
            distinct(ts)
        );
        assert!(
            ts.contains(&last_ms),
            "GPU {gpu}: the last reported tick ({last_ms} ms) is missing\nlog:\n{log_text}"
        );
        // The outage must really have left points only in the spool; otherwise the test
        // proved nothing about the replay.
        assert!(
            b > 0 && d > 0,
            "GPU {gpu}: {b} before, {d} during the outage"
        );
        assert!(
            a as u64 >= run2_tick,
            "GPU {gpu}: {a} points from the second run, which reported tick {run2_tick}\nlog:\n{log_text}"
        );
    }
    // A request that VictoriaMetrics stored but did not acknowledge as it stopped is sent
    // again: one batch of lines, spread over the GPU series. Nothing else may repeat.
    eprintln!(
        "daemon_crash: {duplicates} duplicate samples over {GPUS} GPU series (batch {BATCH}); test took {:.1} s",
        t_test.elapsed().as_secs_f64()
    );
    assert!(
        duplicates <= BATCH,
        "{duplicates} duplicates, more than one batch of {BATCH}"
    );
}

/// The spool's cursor file empty (a power loss after a rename that was never synced) or
/// garbled: the daemon still starts and controls, warns, counts it on `/metrics`, and replays
/// the spool from its segments, so the points of the previous run still arrive.
#[test]
fn empty_or_garbled_spool_cursor_does_not_stop_start_up() {
    let mut vm = Victoria::start();
    let dir = TempDir::new("daemon-cursor");
    let http = free_port();
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{http}\"\n\n\
         [influx]\nurl = \"{}\"\norg = \"test\"\nbucket = \"coolantd\"\ntoken = \"t\"\n\
         batch_size = {BATCH}\nflush_interval_ms = 50\nretry_min_ms = 20\nretry_max_ms = 200\n\
         request_timeout_ms = 1000\nfsync = \"never\"\n",
        vm.url()
    );
    let text = sim_config_text(
        free_port(),
        &dir.0.join("state"),
        &[("period_ms = 1000", "period_ms = 100")],
        &extra,
    );
    let config = dir.0.join("coolantd.toml");
    std::fs::write(&config, text).expect("write config");
    let log = dir.0.join("coolantd.log");
    let cursor = dir.0.join("state").join("spool").join("cursor");

    // A first run during a database outage leaves its points in the spool.
    vm.stop();
    let t_run1 = unix_ms();
    let mut run1 = Run::start(&config, http, &log);
    run1.status();
    std::thread::sleep(PHASE);
    let last_tick = tick_of(&run1.status());
    run1.signal(libc::SIGKILL);
    run1.wait_exit();
    let t_kill = unix_ms();
    drop(run1);
    assert!(cursor.exists(), "the spool has a cursor file");

    vm.restart();
    for (n, bad) in ["", "\u{1}garbage 7 x\n"].into_iter().enumerate() {
        std::fs::write(&cursor, bad).expect("damage the cursor");
        let mut run = Run::start(&config, http, &log);
        let st = run.status();
        assert!(tick_of(&st) > 0, "cursor {bad:?}: the daemon ticks");
        let (code, metrics) = sim_daemon::http_get(http, "/metrics");
        assert_eq!(code, 200);
        let resets = metrics
            .lines()
            .find(|l| l.starts_with("telemetry_cursor_resets"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok());
        assert_eq!(resets, Some(1.0), "cursor {bad:?}: counted on /metrics");
        run.signal(libc::SIGTERM);
        let exit = run.wait_exit();
        assert!(
            exit.success(),
            "cursor {bad:?}: exit {exit}; log:\n{}",
            run.log()
        );
        let warnings = run.log().matches("spool cursor is not").count();
        assert_eq!(
            warnings,
            n + 1,
            "cursor {bad:?} is warned about; log:\n{}",
            run.log()
        );
    }

    // Rebuilding the cursor replays from the oldest segment: the first run's points arrive.
    let complete = |s: &[Series]| {
        s.len() == GPUS
            && in_range(s, t_run1, t_kill)
                .values()
                .all(|ts| distinct(ts) as u64 >= last_tick)
    };
    let series = vm.export_until("gpu_core_temp_c", complete);
    for (gpu, ts) in in_range(&series, t_run1, t_kill) {
        eprintln!(
            "bad cursor: GPU {gpu}: {} of the first run's points arrived (last tick {last_tick})",
            distinct(&ts)
        );
        assert!(
            distinct(&ts) as u64 >= last_tick,
            "GPU {gpu}: {} points from the first run, which reported tick {last_tick}",
            distinct(&ts)
        );
    }
}
