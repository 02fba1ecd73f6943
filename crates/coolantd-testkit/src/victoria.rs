//! Test harness: a real VictoriaMetrics (Debian package `victoria-metrics`) on a free loopback
//! port, speaking InfluxDB's `/api/v2/write`, read back through `/api/v1/export`.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/bin/victoria-metrics";

pub struct Victoria {
    child: Option<Child>,
    pub port: u16,
    data: tempfile::TempDir,
    /// Extra command-line flags, kept for restarts.
    args: Vec<String>,
}

/// One exported series: its labels (with `__name__`) and samples (ms timestamps).
#[derive(Debug, Clone)]
pub struct Series {
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub values: Vec<f64>,
    pub timestamps: Vec<i64>,
}

impl Series {
    pub fn name(&self) -> &str {
        self.label("__name__").unwrap_or("")
    }
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).and_then(|v| v.as_str())
    }
}

use crate::{free_port, server};

impl Victoria {
    pub fn start() -> Victoria {
        Self::start_with(&[])
    }

    /// Starts it with extra command-line flags.
    pub fn start_with(args: &[&str]) -> Victoria {
        assert!(
            std::path::Path::new(BINARY).exists(),
            "{BINARY} missing: apt-get install victoria-metrics"
        );
        let mut vm = Victoria {
            child: None,
            port: free_port(),
            data: tempfile::tempdir().expect("temp dir for VictoriaMetrics"),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        vm.spawn();
        vm
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = self.data.path().join("vm.log");
        let mut child = server::spawn_logged(
            Command::new(BINARY)
                .arg(format!("-storageDataPath={}", self.storage().display()))
                .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
                .arg("-retentionPeriod=100y")
                .arg("-loggerLevel=ERROR")
                .args(&self.args),
            &log,
            "victoria-metrics",
        );
        server::wait_ready(
            &mut child,
            &log,
            "victoria-metrics",
            Duration::from_secs(20),
            || self.get("/health").is_ok_and(|b| b.trim() == "OK"),
        );
        self.child = Some(child);
    }

    fn storage(&self) -> PathBuf {
        self.data.path().join("storage")
    }

    /// Stops the server gracefully (SIGTERM, so it flushes what it ingested), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            server::stop_gracefully(&mut c, Duration::from_secs(10));
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A blocking HTTP/1.0 GET on loopback: returns the body of a 200 answer.
    pub fn get(&self, path_and_query: &str) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!("{head}\n{body}"));
        }
        Ok(body.to_string())
    }

    /// Polls [`Victoria::export`] until `done` holds or 20 s pass, and returns the last answer.
    /// Samples of a series VictoriaMetrics already knows show up within about a second (sooner
    /// after `/internal/force_flush`); a brand-new series takes about five seconds to become
    /// searchable, so a single immediate export is not enough.
    pub fn export_until(&self, selector: &str, done: impl Fn(&[Series]) -> bool) -> Vec<Series> {
        let t0 = Instant::now();
        loop {
            let _ = self.get("/internal/force_flush");
            let got = self.export(selector);
            if done(&got) || t0.elapsed() > Duration::from_secs(20) {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every series matching the selector, through `/api/v1/export` (no query lag).
    pub fn export(&self, selector: &str) -> Vec<Series> {
        let q = format!("/api/v1/export?match[]={}", urlencode(selector));
        let body = self.get(&q).expect("export answered");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("export JSON line");
                Series {
                    labels: v["metric"].as_object().cloned().unwrap_or_default(),
                    values: v["values"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                        .unwrap_or_default(),
                    timestamps: v["timestamps"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Drop for Victoria {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
