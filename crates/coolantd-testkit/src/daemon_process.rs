//! The real `coolantd` binary as a child process: its stderr collected line by line (what the
//! journal or a log file would get), signals, bounded waits, and the process killed on drop
//! if a test fails before stopping it. The test builds the command, because only a test of
//! the coolantd package knows the binary's path (`env!("CARGO_BIN_EXE_coolantd")`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct DaemonProcess {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl DaemonProcess {
    /// Starts `cmd` with stdin and stdout closed and stderr collected. `JOURNAL_STREAM` and
    /// `RUST_LOG` are removed, so the log has its default format and level whatever the
    /// test runner's environment holds.
    pub fn spawn(cmd: &mut Command) -> DaemonProcess {
        let mut child = cmd
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start coolantd run");
        let log = Arc::new(Mutex::new(String::new()));
        let l = log.clone();
        let stderr = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = l.lock().expect("log lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
        DaemonProcess { child, log }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits up to `bound` until a log line satisfies `pred` and returns it; fails the test
    /// with the log, naming `what`, if none does.
    pub fn wait_line(&self, what: &str, bound: Duration, pred: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| pred(l)) {
                return line.to_string();
            }
            assert!(
                t0.elapsed() < bound,
                "no {what} within {bound:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `bound` for a log line containing `needle` and returns it.
    pub fn wait_log(&self, needle: &str, bound: Duration) -> String {
        self.wait_line(&format!("log line with {needle:?}"), bound, |l| {
            l.contains(needle)
        })
    }

    /// Waits up to `bound` until `path` on the daemon's HTTP port answers 200 and returns the
    /// body; fails the test with the last answer and the log otherwise.
    pub fn wait_http_ok(&self, http: u16, path: &str, bound: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let (code, body) = crate::sim_daemon::http_get(http, path);
            if code == 200 {
                return body;
            }
            assert!(
                t0.elapsed() < bound,
                "{path} still answers {code} after {bound:?}: {body}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/status` as JSON, once the endpoint answers (within `bound`).
    pub fn wait_status(&self, http: u16, bound: Duration) -> serde_json::Value {
        let body = self.wait_http_ok(http, "/status", bound);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid this test spawned and has not reaped yet.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `bound` for the process to exit; returns its status and when it was seen.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<(ExitStatus, Instant)> {
        let t0 = Instant::now();
        while t0.elapsed() < bound {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some((st, Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
