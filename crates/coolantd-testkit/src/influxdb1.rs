//! Test harness: a real InfluxDB 1.x (Debian package `influxdb`, 1.6) on free loopback ports
//! with its own temporary configuration and data, written through `/write` and read back
//! through InfluxQL on `/query`.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::Duration;

const BINARY: &str = "/usr/bin/influxd";

pub struct Influx1 {
    child: Option<Child>,
    /// The HTTP API port.
    pub port: u16,
    /// The RPC (backup/restore) port; it must not collide with another test's server.
    rpc_port: u16,
    dir: tempfile::TempDir,
    /// `user:password` sent as HTTP Basic on queries once authentication is on.
    admin: Option<(String, String)>,
}

use crate::{free_port, server};

impl Influx1 {
    /// Starts influxd without authentication.
    pub fn start() -> Influx1 {
        Self::start_with(false)
    }

    /// Starts influxd; with `auth`, HTTP authentication is on and an admin user
    /// `admin`/`admin-pw` exists (InfluxDB lets the first admin be created without credentials).
    pub fn start_with(auth: bool) -> Influx1 {
        assert!(
            std::path::Path::new(BINARY).exists(),
            "{BINARY} missing: apt-get install influxdb"
        );
        let mut db = Influx1 {
            child: None,
            port: free_port(),
            rpc_port: free_port(),
            dir: tempfile::tempdir().expect("temp dir for influxd"),
            admin: None,
        };
        let d = db.dir.path();
        // Every listener that defaults to a fixed port is either moved to loopback ports of
        // our own or switched off, so parallel tests cannot collide.
        let conf = format!(
            r#"reporting-enabled = false
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[ifql]
  enabled = false
[continuous_queries]
  enabled = false
[logging]
  level = "error"
[http]
  bind-address = "127.0.0.1:{http}"
  auth-enabled = {auth}
  log-enabled = false
"#,
            rpc = db.rpc_port,
            http = db.port,
            d = d.display(),
        );
        std::fs::write(d.join("influxdb.conf"), conf).expect("writing influxd config");
        db.spawn();
        if auth {
            db.query("CREATE USER admin WITH PASSWORD 'admin-pw' WITH ALL PRIVILEGES")
                .expect("creating the admin user");
            db.admin = Some(("admin".into(), "admin-pw".into()));
        }
        db
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("influxd.log");
        let mut child = server::spawn_logged(
            Command::new(BINARY)
                .arg("-config")
                .arg(self.dir.path().join("influxdb.conf")),
            &log,
            "influxd",
        );
        server::wait_ready(&mut child, &log, "influxd", Duration::from_secs(30), || {
            self.request("GET", "/ping")
                .is_ok_and(|(code, _)| code == 204)
        });
        self.child = Some(child);
    }

    /// Stops the server gracefully (SIGTERM), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            server::stop_gracefully(&mut c, Duration::from_secs(15));
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A blocking HTTP/1.0 request on loopback: the status code and body.
    pub fn request(&self, method: &str, path_and_query: &str) -> Result<(u16, String), String> {
        self.request_with(method, path_and_query, "")
    }

    /// Writes line protocol to `db` (ns timestamps) through `/write`.
    pub fn write(&self, db: &str, lines: &str) -> Result<(), String> {
        let path = format!("/write?db={}&precision=ns", urlencode(db));
        match self.request_with("POST", &path, lines)? {
            (204, _) => Ok(()),
            (code, body) => Err(format!("HTTP {code}: {body}")),
        }
    }

    fn request_with(
        &self,
        method: &str,
        path_and_query: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let auth = match &self.admin {
            Some((u, p)) => format!("Authorization: Basic {}\r\n", base64(&format!("{u}:{p}"))),
            None => String::new(),
        };
        write!(
            s,
            "{method} {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header")?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line: {head}"))?;
        Ok((code, body.to_string()))
    }

    /// Runs InfluxQL through `/query` (POST, so statements that change state are allowed) and
    /// returns the JSON answer; an HTTP error or a statement error is an `Err` with its text.
    pub fn query(&self, q: &str) -> Result<serde_json::Value, String> {
        self.query_db("", q)
    }

    /// Like [`Influx1::query`] against database `db`, timestamps in ns.
    pub fn query_db(&self, db: &str, q: &str) -> Result<serde_json::Value, String> {
        let path = format!("/query?epoch=ns&db={}&q={}", urlencode(db), urlencode(q));
        let (code, body) = self.request("POST", &path)?;
        if code != 200 {
            return Err(format!("HTTP {code}: {body}"));
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        for r in v["results"].as_array().into_iter().flatten() {
            if let Some(e) = r.get("error") {
                return Err(format!("InfluxQL error: {e} (query: {q})"));
            }
        }
        if let Some(e) = v.get("error") {
            return Err(format!("InfluxQL error: {e} (query: {q})"));
        }
        Ok(v)
    }

    /// The rows of the first statement's series: each row's values, per series.
    pub fn rows(&self, db: &str, q: &str) -> Result<Vec<Vec<serde_json::Value>>, String> {
        let v = self.query_db(db, q)?;
        Ok(v["results"][0]["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
            .map(|row| row.as_array().cloned().unwrap_or_default())
            .collect())
    }
}

pub fn urlencode(s: &str) -> String {
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

fn base64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

impl Drop for Influx1 {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
