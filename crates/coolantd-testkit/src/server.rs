//! What the database harnesses ([`crate::victoria`], [`crate::influxdb1`]) share: start a
//! server with its stderr in a log file, wait until it answers, stop it gracefully.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `cmd` with stdout discarded and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path, what: &str) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("{what} log file {}: {e}", log.display()));
    cmd.stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"))
}

/// Polls `ready` every 50 ms for up to `timeout`. A server that exits meanwhile, or never
/// becomes ready, is killed and the test fails with its log.
pub fn wait_ready(
    child: &mut Child,
    log: &Path,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} exited with {status}: {log}");
        }
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} did not become ready within {timeout:?}: {log}");
}

/// Stops a server with SIGTERM (so it flushes what it ingested), killing it if it has not
/// exited within `grace`.
pub fn stop_gracefully(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
