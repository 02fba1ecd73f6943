//! The InfluxDB sink: points go to a disk spool first, and a shipping task sends the spool to
//! InfluxDB's v2 write API (`/api/v2/write`) in batches, in order, acknowledging each batch only
//! after the server answered 204.
//!
//! What it promises:
//! - `submit` never waits on the network; it appends to the spool (and fsyncs per policy).
//! - Nothing is dropped silently: a point leaves the spool only when the server accepted it,
//!   when the server rejected it (then it is appended to the dead-letter file and counted), or
//!   when the spool's size bound was reached (then it is counted as dropped).
//! - When the spool's disk fails (full, IO error), points wait in a memory buffer bounded to
//!   [`MEMORY_BUFFER_BYTES`]; the shipping task sends them straight to the database and moves
//!   them back to disk once it accepts writes again. Only points that find the buffer full are
//!   dropped (counted apart from the size-bound drops), and at shutdown what is still in memory
//!   is written to the spool or, failing that, counted and logged as lost.
//! - `submit` does bounded work whatever the disk does: once the disk has failed it only
//!   queues in memory, and retrying the disk is the shipping task's job.
//! - After a crash the backlog is replayed from the committed cursor, so at most the batch that
//!   was in flight is written twice (InfluxDB overwrites a point with the same series and
//!   timestamp, so even that leaves no duplicate there).
//!
//! Two write paths ([`Transport`]). By default the `influxdb2` 0.5 crate writes. That crate's
//! `write_line_protocol` cannot compress the body and hides the response headers, so it cannot
//! honour `Retry-After`; there the retry delay is exponential back-off with jitter. When the
//! configuration asks for `gzip` or `honor_retry_after`, a direct `reqwest` POST to the same
//! `/api/v2/write` endpoint is used instead: it gzips the body on request and, on 429 and 503,
//! waits for the server's `Retry-After` (clamped to `retry_min_ms..=retry_max_ms`) in place of
//! the back-off. Both paths accept HTTP 204 only and classify errors the same way. The crate's
//! `Client::new` panics on an invalid URL, so the URL is validated here first.

use crate::model::Point;
use crate::sink::lineproto;
use crate::sink::spool::{FsyncPolicy, Spool, SpoolError, SpoolOptions, RECORD_OVERHEAD};
use crate::validate::Issues;
use serde::Deserialize;
use std::collections::VecDeque;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// A secret string: shown as `<redacted>` in `Debug`, so a configuration dump or log line can
/// never carry the token.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// When the spool is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// After every `submit`: survives a power loss, costs one fdatasync per tick.
    Always,
    /// At most every `fsync_interval_ms`.
    #[default]
    Interval,
    /// Left to the OS: survives a daemon crash, not a power loss.
    Never,
}

/// Which InfluxDB write API the sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InfluxApi {
    /// `/api/v2/write?org=&bucket=` with a token: InfluxDB 2.x, InfluxDB 3, VictoriaMetrics.
    #[default]
    V2,
    /// `/write?db=&rp=` with user/password or a token: InfluxDB 1.x, and InfluxDB 2.x and 3
    /// through their v1 compatibility endpoint.
    V1,
}

/// `[influx]`: where metrics go and how hard the sink tries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL of the InfluxDB (or compatible) server, for example `http://influx:8086`.
    pub url: String,
    /// The write API: `v2` (default) or `v1`.
    #[serde(default)]
    pub api: InfluxApi,
    #[serde(default)]
    pub org: String,
    /// The v2 bucket (required with `api = "v2"`).
    #[serde(default)]
    pub bucket: String,
    /// The v1 database (required with `api = "v1"`).
    #[serde(default)]
    pub database: String,
    /// The v1 retention policy; empty means the database's default one.
    #[serde(default)]
    pub retention_policy: String,
    /// The v1 user name (with one of `password`, `password_file`, `password_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// The v1 password inline. Prefer `password_file` or `password_env`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the v1 password (surrounding whitespace is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the v1 password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The API token inline. Prefer `token_file` or `token_env`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file holding the token (surrounding whitespace is ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Most points per write request.
    #[serde(default = "d_batch_size")]
    pub batch_size: usize,
    /// A partial batch is sent at the latest this long after the previous write.
    #[serde(default = "d_flush_interval_ms")]
    pub flush_interval_ms: u64,
    #[serde(default = "d_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Gzip request bodies (`Content-Encoding: gzip`). Selects the direct HTTP write path,
    /// because influxdb2 0.5's line-protocol writer cannot compress.
    #[serde(default)]
    pub gzip: bool,
    /// On 429 and 503, wait for the server's `Retry-After` instead of the back-off. Selects
    /// the direct HTTP write path, because influxdb2 0.5 does not expose response headers.
    #[serde(default)]
    pub honor_retry_after: bool,
    #[serde(default = "d_retry_min_ms")]
    pub retry_min_ms: u64,
    #[serde(default = "d_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Bound on the disk spool. When reached, the oldest points are dropped (and counted).
    #[serde(default = "d_spool_max_bytes")]
    pub spool_max_bytes: u64,
    #[serde(default)]
    pub fsync: FsyncMode,
    #[serde(default = "d_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Where rejected batches go, relative to the state folder unless absolute.
    #[serde(default = "d_dead_letter")]
    pub dead_letter: PathBuf,
}

// InfluxData recommends batches of 5,000 lines ("Optimize writes" in the v2 documentation).
fn d_batch_size() -> usize {
    5000
}
fn d_flush_interval_ms() -> u64 {
    1000
}
fn d_request_timeout_ms() -> u64 {
    10_000
}
fn d_retry_min_ms() -> u64 {
    500
}
fn d_retry_max_ms() -> u64 {
    60_000
}
// 1 GiB holds about 4 million coolantd lines: days of one host's telemetry at 1 Hz.
fn d_spool_max_bytes() -> u64 {
    1 << 30
}
fn d_fsync_interval_ms() -> u64 {
    1000
}
fn d_dead_letter() -> PathBuf {
    PathBuf::from("influx-dead-letter.lp")
}

impl InfluxConfig {
    /// A configuration with defaults for everything but the address.
    pub fn new(url: impl Into<String>, bucket: impl Into<String>) -> Self {
        InfluxConfig {
            url: url.into(),
            api: InfluxApi::V2,
            org: String::new(),
            bucket: bucket.into(),
            database: String::new(),
            retention_policy: String::new(),
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            token: None,
            token_file: None,
            token_env: None,
            batch_size: d_batch_size(),
            flush_interval_ms: d_flush_interval_ms(),
            request_timeout_ms: d_request_timeout_ms(),
            gzip: false,
            honor_retry_after: false,
            retry_min_ms: d_retry_min_ms(),
            retry_max_ms: d_retry_max_ms(),
            spool_max_bytes: d_spool_max_bytes(),
            fsync: FsyncMode::default(),
            fsync_interval_ms: d_fsync_interval_ms(),
            dead_letter: d_dead_letter(),
        }
    }

    pub fn validate(&self, key: &str, issues: &mut Issues) {
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(u) => issues.push(
                format!("{key}.url"),
                format!(
                    "an http:// or https:// URL with a host, got scheme `{}`",
                    u.scheme()
                ),
            ),
            Err(e) => issues.push(
                format!("{key}.url"),
                format!("a URL like http://influx:8086, got `{}` ({e})", self.url),
            ),
        }
        let sources = [
            self.token.is_some(),
            self.token_file.is_some(),
            self.token_env.is_some(),
        ];
        let tokens = sources.iter().filter(|s| **s).count();
        let passwords = [
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        match self.api {
            InfluxApi::V2 => {
                issues.check(
                    !self.bucket.trim().is_empty(),
                    format!("{key}.bucket"),
                    "a bucket name (api = \"v2\")",
                );
                // v1-only keys under v2 are a mistake the operator should hear about, not
                // settings silently ignored.
                for (set, name) in [
                    (!self.database.is_empty(), "database"),
                    (!self.retention_policy.is_empty(), "retention_policy"),
                    (self.username.is_some(), "username"),
                    (passwords > 0, "password"),
                ] {
                    issues.check(
                        !set,
                        format!("{key}.{name}"),
                        "no v1 key with api = \"v2\" (set api = \"v1\" for InfluxDB 1.x)",
                    );
                }
            }
            InfluxApi::V1 => {
                issues.check(
                    !self.database.trim().is_empty(),
                    format!("{key}.database"),
                    "a database name (api = \"v1\")",
                );
                issues.check(
                    self.bucket.is_empty() && self.org.is_empty(),
                    format!("{key}.bucket"),
                    "no bucket or org with api = \"v1\" (use database and retention_policy)",
                );
                issues.check(
                    passwords <= 1,
                    format!("{key}.password"),
                    "at most one of password, password_file, password_env",
                );
                issues.check(
                    self.username.is_some() == (passwords > 0),
                    format!("{key}.username"),
                    "username and a password together (or neither)",
                );
                issues.check(
                    !(self.username.is_some() && tokens > 0),
                    format!("{key}.token"),
                    "either username/password or a token, not both",
                );
            }
        }
        issues.check(
            tokens <= 1,
            format!("{key}.token"),
            "at most one of token, token_file, token_env",
        );
        issues.check(
            (1..=100_000).contains(&self.batch_size),
            format!("{key}.batch_size"),
            format!("between 1 and 100000 points, got {}", self.batch_size),
        );
        issues.check(
            (10..=3_600_000).contains(&self.flush_interval_ms),
            format!("{key}.flush_interval_ms"),
            format!("between 10 and 3600000 ms, got {}", self.flush_interval_ms),
        );
        issues.check(
            (100..=600_000).contains(&self.request_timeout_ms),
            format!("{key}.request_timeout_ms"),
            format!("between 100 and 600000 ms, got {}", self.request_timeout_ms),
        );
        issues.check(
            self.retry_min_ms >= 1 && self.retry_min_ms <= self.retry_max_ms,
            format!("{key}.retry_min_ms"),
            format!(
                "at least 1 ms and not above retry_max_ms ({}), got {}",
                self.retry_max_ms, self.retry_min_ms
            ),
        );
        issues.check(
            self.spool_max_bytes >= 1 << 20,
            format!("{key}.spool_max_bytes"),
            format!("at least 1048576 (1 MiB), got {}", self.spool_max_bytes),
        );
        issues.check(
            self.fsync_interval_ms >= 1,
            format!("{key}.fsync_interval_ms"),
            "at least 1 ms",
        );
    }

    /// Which path writes. The influxdb2 crate is the default; the direct HTTP path is taken
    /// only for what the crate cannot do (gzip, reading `Retry-After`). The direct path always
    /// honours `Retry-After`, whichever of the two keys selected it: it is the only path that
    /// can see the header, and ignoring a server's explicit pacing there would gain nothing.
    pub fn transport(&self) -> Transport {
        // The influxdb2 crate speaks only /api/v2/write.
        if self.gzip || self.honor_retry_after || self.api == InfluxApi::V1 {
            Transport::Http
        } else {
            Transport::Influxdb2
        }
    }

    fn fsync_policy(&self) -> FsyncPolicy {
        match self.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => {
                FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms))
            }
            FsyncMode::Never => FsyncPolicy::Never,
        }
    }

    /// Reads the token from wherever the configuration says. Empty when none is configured
    /// (fine for VictoriaMetrics, refused by InfluxDB with 401).
    pub fn resolve_token(&self) -> Result<Secret, SinkError> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| SinkError::Token {
                what: format!("reading token_file {}: {e}", path.display()),
            })?;
            return Ok(Secret(text.trim().to_string()));
        }
        if let Some(var) = &self.token_env {
            return std::env::var(var)
                .map(|t| Secret(t.trim().to_string()))
                .map_err(|_| SinkError::Token {
                    what: format!("environment variable {var} (token_env) is not set"),
                });
        }
        Ok(Secret(String::new()))
    }

    /// Reads the v1 password from wherever the configuration says; None when none is set.
    pub fn resolve_password(&self) -> Result<Option<Secret>, SinkError> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| SinkError::Token {
                what: format!("reading password_file {}: {e}", path.display()),
            })?;
            return Ok(Some(Secret(text.trim().to_string())));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(|t| Some(Secret(t.trim().to_string())))
                .map_err(|_| SinkError::Token {
                    what: format!("environment variable {var} (password_env) is not set"),
                });
        }
        Ok(None)
    }

    /// The write endpoint and its query parameters for the configured API.
    fn endpoint(&self) -> (String, Vec<(String, String)>) {
        let base = self.url.trim_end_matches('/');
        match self.api {
            // The same URL the influxdb2 crate builds: base URL + fixed path.
            InfluxApi::V2 => (
                format!("{base}/api/v2/write"),
                vec![
                    ("org".into(), self.org.clone()),
                    ("bucket".into(), self.bucket.clone()),
                    ("precision".into(), "ns".into()),
                ],
            ),
            InfluxApi::V1 => {
                let mut q = vec![("db".into(), self.database.clone())];
                if !self.retention_policy.is_empty() {
                    q.push(("rp".into(), self.retention_policy.clone()));
                }
                // 1.x reads "n" and "ns" alike; InfluxDB 3 needs it spelled out, since it
                // otherwise guesses the precision from the timestamp's magnitude.
                q.push(("precision".into(), "ns".into()));
                (format!("{base}/write"), q)
            }
        }
    }
}

/// The code path that sends write requests; see [`InfluxConfig::transport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `influxdb2::Client::write_line_protocol`: uncompressed, `Retry-After` not visible.
    Influxdb2,
    /// A direct `reqwest` POST: optional gzip, `Retry-After` honoured on 429 and 503.
    Http,
}

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("InfluxDB token: {what}")]
    Token { what: String },
    #[error("InfluxDB url `{url}`: {why}")]
    Url { url: String, why: String },
    #[error("InfluxDB HTTP client: {0}")]
    Client(String),
    #[error("the InfluxDB sink needs a tokio runtime: {0}")]
    NoRuntime(String),
}

/// What the sink has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Points the server acknowledged.
    pub written: u64,
    /// Points waiting in the spool (and in memory if the disk failed).
    pub backlog: u64,
    /// Bytes the spool holds on disk.
    pub spool_bytes: u64,
    /// Points dropped, all causes: `dropped_bound + dropped_memory` (raise an alarm on growth).
    pub dropped: u64,
    /// Points dropped because the spool's size bound (`spool_max_bytes`) was reached.
    pub dropped_bound: u64,
    /// Points dropped because the spool's disk failed and the memory buffer was full (or,
    /// at shutdown, could be written neither to the disk nor to the database).
    pub dropped_memory: u64,
    /// Points held in memory because the spool's disk failed (part of `backlog`).
    pub memory_backlog: u64,
    /// The spool's disk error while appends fail; `None` when the disk takes writes.
    pub disk_error: Option<String>,
    /// The last write attempt failed in a way that is retried (server down, 5xx, timeout).
    pub db_unreachable: bool,
    /// Points the server rejected (HTTP 4xx), now in the dead-letter file.
    pub rejected: u64,
    /// Records found corrupt in the spool (torn tail after a crash, bad checksum).
    pub corrupt: u64,
    /// Times the spool's cursor file was unusable and was rebuilt from the segments.
    pub cursor_resets: u64,
    /// Write requests that failed and were retried.
    pub retries: u64,
    /// The latest write error, cleared by the next successful write.
    pub last_error: Option<String>,
}

/// Bytes of lines kept in memory while the spool cannot be written (disk full, IO error);
/// points that find it full are dropped and counted. About 30,000 coolantd lines: minutes of
/// a large host, and a bound on what a failing disk can cost the daemon's memory.
pub const MEMORY_BUFFER_BYTES: usize = 8 << 20;
/// What one buffered line is charged beyond its text: the `String` and its allocation.
const LINE_OVERHEAD: usize = 32;
/// How often the shipping task tries the disk again while points wait in memory.
const DISK_RETRY: Duration = Duration::from_secs(1);
/// Lines per append when memory is moved back to the spool.
const DRAIN_CHUNK: usize = 1000;
/// A disk that keeps filling up again after each recovery is logged at most this often; the
/// stats and the alarm carry the state in between.
const DISK_LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Inner {
    spool: Spool,
    /// Lines that could not be appended to the spool, oldest first; all newer than anything
    /// in the spool, so they are shipped (or moved back to disk) after the spool's backlog.
    memory: VecDeque<String>,
    memory_bytes: usize,
    memory_dropped: u64,
    /// Set while appends fail; cleared once the memory buffer is back on disk.
    disk_error: Option<String>,
    next_disk_try: Instant,
    /// When a disk failure was last logged, and the failures since.
    disk_logged: Option<Instant>,
    disk_failures: u64,
}

impl Inner {
    /// Records a failed append: logged when the disk starts failing, at most every
    /// [`DISK_LOG_EVERY`] however often it recovers and fails again.
    fn disk_failed(&mut self, e: &SpoolError, points: usize) {
        self.disk_failures += 1;
        let quiet = self
            .disk_logged
            .is_some_and(|t| t.elapsed() < DISK_LOG_EVERY);
        if self.disk_error.is_none() && !quiet {
            tracing::error!(error = %e, points, failures = self.disk_failures, memory_bound_bytes = MEMORY_BUFFER_BYTES,
                "cannot append to the InfluxDB spool; holding points in memory until the disk accepts them again");
            self.disk_logged = Some(Instant::now());
            self.disk_failures = 0;
        }
        self.disk_error = Some(e.to_string());
        self.next_disk_try = Instant::now() + DISK_RETRY;
    }

    /// Records that the disk takes writes again (logged unless failures are being kept
    /// quiet).
    fn disk_recovered(&mut self, what: &str) {
        if let Some(e) = self.disk_error.take() {
            if self
                .disk_logged
                .is_some_and(|t| t.elapsed() < DISK_LOG_EVERY)
            {
                tracing::debug!(previous_error = %e, "{what}");
            } else {
                tracing::info!(previous_error = %e, "{what}");
            }
        }
    }

    /// Queues lines in the memory buffer; those that find it full are dropped and counted.
    fn hold(&mut self, lines: Vec<String>) {
        let mut refused = 0u64;
        for l in lines {
            let cost = l.len() + LINE_OVERHEAD;
            if self.memory_bytes + cost > MEMORY_BUFFER_BYTES {
                refused += 1;
                continue;
            }
            self.memory_bytes += cost;
            self.memory.push_back(l);
        }
        if refused > 0 {
            let (before, after) = (self.memory_dropped, self.memory_dropped + refused);
            if before == 0 || after.ilog2() > before.ilog2() {
                // Logged when the total passes a power of two; the counter and the alarm
                // carry the exact figure.
                tracing::error!(dropped_total = self.memory_dropped + refused, memory_bytes = self.memory_bytes,
                    disk_error = self.disk_error.as_deref().unwrap_or(""),
                    "InfluxDB spool disk failing and the memory buffer is full; dropping new points");
            }
            self.memory_dropped += refused;
        }
    }

    /// Removes the first `n` lines of the memory buffer (shipped or moved to disk).
    fn release(&mut self, n: usize) {
        for l in self.memory.drain(..n.min(self.memory.len())) {
            self.memory_bytes -= l.len() + LINE_OVERHEAD;
        }
    }

    /// Moves memory back to the spool in chunks, if the disk retry is due, as far as the
    /// spool's size bound has room: moving more would delete older spooled points to make
    /// room for newer ones while both could still reach the database. `all`: no limit on the
    /// amount (shutdown); otherwise at most a bounded amount per call, so `submit` never
    /// waits long on the lock.
    fn drain_to_disk(&mut self, all: bool) {
        if !all && Instant::now() < self.next_disk_try {
            return;
        }
        if self.memory.is_empty() {
            // The memory buffer went to the database directly: see whether the disk is
            // back, so that the error (and its alarm) does not outlive it.
            if self.disk_error.is_some() {
                match self.spool.probe() {
                    Ok(()) => self.disk_recovered("InfluxDB spool disk accepts writes again"),
                    Err(e) => self.disk_failed(&e, 0),
                }
            }
            return;
        }
        let mut moved = 0usize;
        while !self.memory.is_empty() && (all || moved < 20 * DRAIN_CHUNK) {
            let room = self.spool.room();
            let (mut n, mut size) = (0usize, 0u64);
            for l in self.memory.iter().take(DRAIN_CHUNK) {
                let cost = l.len() as u64 + RECORD_OVERHEAD;
                if size + cost > room {
                    break;
                }
                size += cost;
                n += 1;
            }
            if n == 0 {
                break;
            }
            match self
                .spool
                .append(self.memory.iter().take(n).map(String::as_str))
            {
                Ok(()) => {
                    self.release(n);
                    moved += n;
                    self.disk_recovered("InfluxDB spool disk accepts writes again; moving points held in memory back to it");
                }
                Err(e) => {
                    self.disk_failed(&e, n);
                    return;
                }
            }
        }
        if moved > 0 {
            tracing::debug!(
                moved_points = moved,
                left_in_memory = self.memory.len(),
                "moved points from memory to the InfluxDB spool"
            );
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    written: u64,
    rejected: u64,
    retries: u64,
    last_error: Option<String>,
    db_unreachable: bool,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    counters: Mutex<Counters>,
    wake: Notify,
}

/// The InfluxDB sink. Dropping it without [`InfluxSink::shutdown`] stops shipping at once and
/// leaves the backlog in the spool for the next start.
#[derive(Debug)]
pub struct InfluxSink {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InfluxSink {
    /// Opens the spool in `<state_dir>/spool` and spawns the shipping task on the current
    /// tokio runtime.
    pub fn start(cfg: &InfluxConfig, state_dir: &Path) -> Result<InfluxSink, SinkError> {
        let mut issues = Issues::default();
        cfg.validate("influx", &mut issues);
        if let Some(i) = issues.into_vec().into_iter().next() {
            return Err(SinkError::Url {
                url: cfg.url.clone(),
                why: format!("{}: {}", i.key, i.expected),
            });
        }
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| SinkError::NoRuntime(e.to_string()))?;
        let token = cfg.resolve_token()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.request_timeout_ms.min(5000)));
        let transport = cfg.transport();
        let writer = match transport {
            Transport::Influxdb2 => Writer::Crate {
                client: influxdb2::ClientBuilder::with_builder(
                    http,
                    cfg.url.clone(),
                    cfg.org.clone(),
                    token.expose(),
                )
                .build()
                .map_err(|e| SinkError::Client(e.to_string()))?,
                org: cfg.org.clone(),
                bucket: cfg.bucket.clone(),
            },
            Transport::Http => {
                let (url, query) = cfg.endpoint();
                let auth = match (&cfg.username, cfg.resolve_password()?) {
                    (Some(user), Some(password)) => Auth::Basic {
                        user: user.clone(),
                        password,
                    },
                    _ if token.expose().is_empty() => Auth::None,
                    _ => Auth::Token(token),
                };
                Writer::Http(HttpWriter {
                    client: http.build().map_err(|e| SinkError::Client(e.to_string()))?,
                    url,
                    query,
                    auth,
                    gzip: cfg.gzip,
                })
            }
        };
        tracing::info!(api = ?cfg.api, transport = ?transport, gzip = cfg.gzip, "InfluxDB write path");

        let spool = Spool::open(
            &state_dir.join("spool"),
            SpoolOptions::new(cfg.spool_max_bytes, cfg.fsync_policy()),
        )?;
        let backlog = spool.stats().backlog;
        if backlog > 0 {
            tracing::info!(
                backlog,
                "replaying InfluxDB spool backlog from the last run"
            );
        }
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                spool,
                memory: VecDeque::new(),
                memory_bytes: 0,
                memory_dropped: 0,
                disk_error: None,
                next_disk_try: Instant::now(),
                disk_logged: None,
                disk_failures: 0,
            }),
            counters: Mutex::new(Counters::default()),
            wake: Notify::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let dead_letter = if cfg.dead_letter.is_absolute() {
            cfg.dead_letter.clone()
        } else {
            state_dir.join(&cfg.dead_letter)
        };
        let shipper = Shipper {
            shared: shared.clone(),
            writer,
            batch_size: cfg.batch_size,
            flush_interval: Duration::from_millis(cfg.flush_interval_ms),
            fsync_tick: match cfg.fsync {
                FsyncMode::Interval => Duration::from_millis(cfg.fsync_interval_ms),
                _ => Duration::from_secs(3600),
            },
            retry_min: Duration::from_millis(cfg.retry_min_ms),
            retry_max: Duration::from_millis(cfg.retry_max_ms),
            dead_letter,
            stop: stop_rx,
        };
        let task = handle.spawn(async move {
            let span = tracing::info_span!("influx_sink");
            let _ = tracing::Instrument::instrument(shipper.run(), span).await;
        });
        Ok(InfluxSink {
            shared,
            stop,
            task: Some(task),
        })
    }

    /// Appends the points to the spool and wakes the shipping task. Never waits on the
    /// network; waits on the disk only as long as the fsync policy says. While the disk
    /// fails, queues in the bounded memory buffer instead, without touching the disk.
    pub fn submit(&self, points: &[Point]) {
        let mut lines = Vec::with_capacity(points.len());
        for p in points {
            if let Some(l) = lineproto::encode_line(p) {
                lines.push(l);
            }
        }
        if lines.is_empty() {
            return;
        }
        {
            let mut g = lock(&self.shared.inner);
            let inner = &mut *g;
            let disk_resting = inner.disk_error.is_some() && Instant::now() < inner.next_disk_try;
            if !inner.memory.is_empty() || disk_resting {
                // Earlier lines wait in memory: these go behind them, to keep the order. The
                // shipping task retries the disk, at most every DISK_RETRY.
                inner.hold(lines);
            } else if let Err(e) = inner.spool.append(lines.iter().map(String::as_str)) {
                inner.disk_failed(&e, lines.len());
                inner.hold(lines);
            } else {
                inner.disk_recovered("InfluxDB spool disk accepts writes again");
            }
        }
        self.shared.wake.notify_one();
    }

    pub fn stats(&self) -> SinkStats {
        let (sp, mem, mem_dropped, disk_error) = {
            let g = lock(&self.shared.inner);
            (
                g.spool.stats(),
                g.memory.len() as u64,
                g.memory_dropped,
                g.disk_error.clone(),
            )
        };
        let c = lock(&self.shared.counters);
        SinkStats {
            written: c.written,
            backlog: sp.backlog + mem,
            spool_bytes: sp.bytes,
            dropped: sp.dropped + mem_dropped,
            dropped_bound: sp.dropped,
            dropped_memory: mem_dropped,
            memory_backlog: mem,
            disk_error,
            db_unreachable: c.db_unreachable,
            rejected: c.rejected,
            corrupt: sp.corrupt,
            cursor_resets: sp.cursor_resets,
            retries: c.retries,
            last_error: c.last_error.clone(),
        }
    }

    /// Sends what it can before `deadline`, then stops; the rest stays in the spool. Points
    /// still in memory (the disk failed) are written to the spool if it takes them now, or
    /// else counted as dropped and logged. Returns the final counters.
    pub async fn shutdown(mut self, deadline: Duration) -> SinkStats {
        let _ = self.stop.send(true);
        self.shared.wake.notify_one();
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(deadline, &mut task).await.is_err() {
                tracing::warn!(
                    backlog = self.stats().backlog,
                    "InfluxDB sink did not finish before the shutdown deadline; the backlog stays in the spool"
                );
                task.abort();
            }
        }
        {
            let mut g = lock(&self.shared.inner);
            g.drain_to_disk(true);
            let left = g.memory.len();
            if left > 0 {
                tracing::error!(lost_points = left, disk_error = g.disk_error.as_deref().unwrap_or(""),
                    "InfluxDB sink stopping with points in memory that neither the spool (disk failing or at its size bound) nor the database took; they are lost");
                g.memory_dropped += left as u64;
                g.release(left);
            }
            if let Err(e) = g.spool.sync() {
                tracing::error!(error = %e, "syncing the InfluxDB spool at shutdown");
            }
        }
        self.stats()
    }
}

impl Drop for InfluxSink {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// How a failed write is handled.
#[derive(Debug)]
enum Failure {
    /// Try the same batch again after the server's `Retry-After` if it gave one (direct path,
    /// 429 and 503 only), else after a back-off.
    Retry {
        msg: String,
        retry_after: Option<Duration>,
    },
    /// The request is too large: split the batch.
    TooLarge(String),
    /// The server refused the data itself: dead-letter the batch.
    Reject(String),
}

fn retry(msg: String) -> Failure {
    Failure::Retry {
        msg,
        retry_after: None,
    }
}

fn classify(e: influxdb2::RequestError) -> Failure {
    match e {
        influxdb2::RequestError::Http { status, text } => {
            classify_status(status.as_u16(), &text, None)
        }
        other => retry(other.to_string()),
    }
}

/// Classifies a non-204 answer. `retry_after` is kept only where the server asks the client to
/// come back later (429 Too Many Requests, 503 Service Unavailable; RFC 9110 §10.2.3).
fn classify_status(code: u16, text: &str, retry_after: Option<Duration>) -> Failure {
    let msg = format!("HTTP {code}: {}", text.trim());
    match code {
        413 => Failure::TooLarge(msg),
        429 | 503 => Failure::Retry { msg, retry_after },
        // 408 is a timeout. 401, 403 and 404 are about the token, org or bucket, not the
        // points: dead-lettering everything until an operator fixes the configuration would
        // empty the spool for nothing.
        408 | 401 | 403 | 404 => retry(msg),
        400..=499 => Failure::Reject(msg),
        _ => retry(msg),
    }
}

/// The delay a `Retry-After` value asks for (RFC 9110 §10.2.3): delta-seconds or an
/// HTTP-date, which counts from `now` and is zero once past. None when it is neither.
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still "a very long time"; the caller caps it.
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Gzips a write body. Level 1: line protocol is so repetitive that the fastest level already
/// removes most of it (see `benches/sink.rs`), and the shipper should not spend its time here.
pub fn gzip_body(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use flate2::write::GzEncoder;
    let mut enc = GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body)?;
    enc.finish()
}

/// Sends one batch.
enum Writer {
    Crate {
        client: influxdb2::Client,
        org: String,
        bucket: String,
    },
    Http(HttpWriter),
}

impl Writer {
    async fn write(&self, body: &str) -> Result<(), Failure> {
        match self {
            Writer::Crate {
                client,
                org,
                bucket,
            } => client
                .write_line_protocol(org, bucket, body.to_owned())
                .await
                .map_err(classify),
            Writer::Http(w) => w.write(body).await,
        }
    }
}

/// How the direct write path authenticates.
enum Auth {
    None,
    /// `Authorization: Token …` (v2; also InfluxDB 2.x and 3 on the v1 endpoint).
    Token(Secret),
    /// HTTP Basic with the v1 user and password (InfluxDB 1.x), kept out of the URL so the
    /// password never lands in a proxy's access log.
    Basic {
        user: String,
        password: Secret,
    },
}

/// The direct write path: what `influxdb2` 0.5 sends, plus gzip, access to response headers,
/// and the v1 endpoint.
struct HttpWriter {
    client: reqwest::Client,
    /// `<url>/api/v2/write` or `<url>/write`.
    url: String,
    /// `org`, `bucket`, `precision` (v2) or `db`, `rp`, `precision` (v1).
    query: Vec<(String, String)>,
    auth: Auth,
    gzip: bool,
}

impl HttpWriter {
    async fn write(&self, body: &str) -> Result<(), Failure> {
        use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
        let payload = if self.gzip {
            // A full batch is megabytes; compress off the async workers.
            let raw = body.as_bytes().to_vec();
            tokio::task::spawn_blocking(move || gzip_body(&raw))
                .await
                .map_err(|e| retry(format!("gzip task failed: {e}")))?
                .map_err(|e| retry(format!("gzip of the write body failed: {e}")))?
        } else {
            body.as_bytes().to_vec()
        };
        let mut req = self
            .client
            .post(&self.url)
            .query(&self.query)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8");
        match &self.auth {
            Auth::None => {}
            Auth::Token(t) => {
                req = req.header(AUTHORIZATION, format!("Token {}", t.expose()));
            }
            Auth::Basic { user, password } => {
                req = req.basic_auth(user, Some(password.expose()));
            }
        }
        if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let resp = req
            .body(payload)
            .send()
            .await
            .map_err(|e| retry(describe(&e)))?;
        let status = resp.status().as_u16();
        if status == 204 {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let text = resp.text().await.unwrap_or_default();
        Err(classify_status(status, &text, retry_after))
    }
}

/// A reqwest error with its causes ("error sending request" alone does not say connection
/// refused or timed out).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

struct Shipper {
    shared: Arc<Shared>,
    writer: Writer,
    batch_size: usize,
    flush_interval: Duration,
    fsync_tick: Duration,
    retry_min: Duration,
    retry_max: Duration,
    dead_letter: PathBuf,
    stop: watch::Receiver<bool>,
}

impl Shipper {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps up to `d`, waking early on new points or shutdown. Returns true on shutdown.
    async fn wait(&mut self, d: Duration, on_data: bool) -> bool {
        if self.stopping() {
            return true;
        }
        let shared = self.shared.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = shared.wake.notified(), if on_data => {}
            _ = self.stop.changed() => {}
        }
        self.stopping()
    }

    /// Sleeps up to `d` like [`Shipper::wait`], trying the disk again every [`DISK_RETRY`]
    /// while points wait in memory. Returns true on shutdown.
    async fn pause(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let waiting = !lock(&self.shared.inner).memory.is_empty();
            let step = if waiting { left.min(DISK_RETRY) } else { left };
            if self.wait(step, false).await {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            lock(&self.shared.inner).drain_to_disk(false);
        }
    }

    async fn run(mut self) {
        let mut backoff = self.retry_min;
        let mut limit = self.batch_size;
        let mut last_flush = Instant::now();
        let mut rng = seed();
        loop {
            let (on_disk, in_memory) = {
                let mut g = lock(&self.shared.inner);
                if let Err(e) = g.spool.sync_if_due() {
                    tracing::error!(error = %e, "syncing the InfluxDB spool");
                }
                g.drain_to_disk(false);
                (g.spool.stats().backlog, g.memory.len() as u64)
            };
            let backlog = on_disk + in_memory;
            let stopping = self.stopping();
            if backlog == 0 {
                if stopping {
                    return;
                }
                let tick = self.flush_interval.min(self.fsync_tick);
                self.wait(tick, true).await;
                continue;
            }
            let due = last_flush + self.flush_interval;
            if !stopping && backlog < self.batch_size as u64 && Instant::now() < due {
                let d = due
                    .saturating_duration_since(Instant::now())
                    .min(self.fsync_tick);
                self.wait(d, true).await;
                continue;
            }
            // The spool holds the older points; memory only what came after the disk failed.
            let (body, count, source) = if on_disk > 0 {
                let batch = {
                    let mut g = lock(&self.shared.inner);
                    g.spool.read_batch(limit)
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "reading the InfluxDB spool");
                        if self.pause(self.retry_max).await {
                            return;
                        }
                        continue;
                    }
                };
                let Some(end) = batch.end else {
                    // Nothing readable although the backlog says otherwise: should not happen;
                    // do not spin.
                    if self.wait(self.flush_interval, true).await {
                        return;
                    }
                    continue;
                };
                if batch.count == 0 {
                    self.ack(Source::Spool(end));
                    continue;
                }
                (batch.body, batch.count, Source::Spool(end))
            } else {
                let g = lock(&self.shared.inner);
                let n = g.memory.len().min(limit);
                let body: String = g.memory.iter().take(n).map(String::as_str).collect();
                (body, n as u64, Source::Memory(n))
            };
            let result = self.writer.write(&body).await;
            last_flush = Instant::now();
            let failure = match result {
                Ok(()) => {
                    // Counted before the backlog shrinks, so that no reader of the stats sees
                    // a batch gone from the backlog but not yet written.
                    {
                        let mut c = lock(&self.shared.counters);
                        c.written += count;
                        c.last_error = None;
                        c.db_unreachable = false;
                    }
                    self.ack(source);
                    backoff = self.retry_min;
                    limit = self.batch_size;
                    continue;
                }
                Err(f) => f,
            };
            match failure {
                Failure::TooLarge(msg) if count > 1 => {
                    limit = (count as usize / 2).max(1);
                    tracing::warn!(error = %msg, points = count, new_batch = limit,
                        "InfluxDB refused the request size; splitting the batch");
                }
                Failure::TooLarge(msg) | Failure::Reject(msg) => {
                    tracing::error!(error = %msg, points = count, file = %self.dead_letter.display(),
                        "InfluxDB rejected a batch; writing it to the dead-letter file");
                    match append_dead_letter(&self.dead_letter, &msg, &body) {
                        Ok(()) => {
                            {
                                let mut c = lock(&self.shared.counters);
                                c.rejected += count;
                                c.last_error = Some(msg);
                                c.db_unreachable = false;
                            }
                            self.ack(source);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, file = %self.dead_letter.display(),
                                "cannot write the dead-letter file; keeping the batch in the spool");
                            if self.pause(backoff).await {
                                return;
                            }
                            backoff = (backoff * 2).min(self.retry_max);
                        }
                    }
                }
                Failure::Retry { msg, retry_after } => {
                    {
                        let mut c = lock(&self.shared.counters);
                        c.retries += 1;
                        c.last_error = Some(msg.clone());
                        c.db_unreachable = true;
                    }
                    if stopping {
                        tracing::warn!(error = %msg, backlog, "InfluxDB write failed during shutdown; backlog stays in the spool");
                        return;
                    }
                    let sleep = match retry_after {
                        // The server said when to come back: no jitter (it spreads clients
                        // itself) and no growth of the back-off. The floor keeps a
                        // `Retry-After: 0` or a past date from becoming a busy loop.
                        Some(d) => d.clamp(self.retry_min, self.retry_max),
                        None => {
                            // Full jitter in [backoff/2, backoff], so many hosts recovering
                            // from one outage do not hit the server in lockstep.
                            let half = backoff / 2;
                            let jitter = half.mul_f64(next_unit(&mut rng));
                            backoff = (backoff * 2).min(self.retry_max);
                            half + jitter
                        }
                    };
                    crate::log_limited!(warn, "InfluxDB write failed; will retry",
                        error = %msg, backlog, retry_in_ms = sleep.as_millis() as u64,
                        retry_after_s = retry_after.map(|d| d.as_secs()));
                    if self.pause(sleep).await {
                        // Shutdown: one last attempt happens in the next loop pass.
                    }
                }
            }
        }
    }

    /// Removes an acknowledged (or dead-lettered) batch from where it came from.
    fn ack(&self, source: Source) {
        let mut g = lock(&self.shared.inner);
        match source {
            Source::Spool(end) => {
                if let Err(e) = g.spool.commit(end) {
                    tracing::error!(error = %e, "committing the InfluxDB spool cursor (points may be sent twice after a restart)");
                }
            }
            // Only this task removes lines from the front, so they are still the ones sent.
            Source::Memory(n) => g.release(n),
        }
    }
}

/// Where a batch in flight came from.
enum Source {
    Spool(crate::sink::spool::Position),
    Memory(usize),
}

fn append_dead_letter(path: &Path, msg: &str, body: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let msg = msg.replace(['\n', '\r'], " ");
    writeln!(f, "# rejected at unix {now}: {msg}")?;
    f.write_all(body.as_bytes())?;
    f.sync_data()
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

/// A uniform number in [0, 1) from a splitmix64 step; jitter needs no better randomness.
fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> InfluxConfig {
        toml::from_str(text).expect("valid toml")
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let c = parse("url = \"http://x:8086\"\nbucket = \"b\"\ntoken = \"s3cr3t\"\n");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn validate_catches_bad_url_and_settings() {
        let mut c = InfluxConfig::new("not a url", "");
        c.token = Some(Secret::new("a"));
        c.token_env = Some("X".into());
        c.batch_size = 0;
        let mut issues = Issues::default();
        c.validate("influx", &mut issues);
        let keys: Vec<_> = issues.into_vec().into_iter().map(|i| i.key).collect();
        assert_eq!(
            keys,
            [
                "influx.url",
                "influx.bucket",
                "influx.token",
                "influx.batch_size"
            ]
        );
        let mut issues = Issues::default();
        InfluxConfig::new("unix:/var/run/x", "b").validate("influx", &mut issues);
        assert!(!issues.is_empty(), "scheme without host is refused");
        let mut issues = Issues::default();
        InfluxConfig::new("https://influx.example:8086/", "b").validate("influx", &mut issues);
        assert!(issues.is_empty());
    }

    #[test]
    fn v1_keys_are_validated_with_the_key_named() {
        let keys = |text: &str| -> Vec<String> {
            let mut issues = Issues::default();
            parse(text).validate("influx", &mut issues);
            issues.into_vec().into_iter().map(|i| i.key).collect()
        };
        let url = "url = \"http://x:8086\"\n";
        // v1 needs a database and takes no bucket or org.
        assert_eq!(
            keys(&format!("{url}api = \"v1\"\nbucket = \"b\"\n")),
            ["influx.database", "influx.bucket"]
        );
        // A user without a password, or both a password and a token.
        assert_eq!(
            keys(&format!(
                "{url}api = \"v1\"\ndatabase = \"d\"\nusername = \"u\"\n"
            )),
            ["influx.username"]
        );
        assert_eq!(
            keys(&format!(
                "{url}api = \"v1\"\ndatabase = \"d\"\nusername = \"u\"\npassword = \"p\"\npassword_env = \"P\"\ntoken = \"t\"\n"
            )),
            ["influx.password", "influx.token"]
        );
        // v1 keys under v2 are refused rather than ignored.
        assert_eq!(
            keys(&format!(
                "{url}bucket = \"b\"\ndatabase = \"d\"\nretention_policy = \"r\"\n"
            )),
            ["influx.database", "influx.retention_policy"]
        );
        assert!(keys(&format!(
            "{url}api = \"v1\"\ndatabase = \"d\"\nretention_policy = \"autogen\"\nusername = \"u\"\npassword_file = \"/etc/p\"\n"
        ))
        .is_empty());
        assert!(keys(&format!(
            "{url}api = \"v1\"\ndatabase = \"d\"\ntoken_env = \"T\"\n"
        ))
        .is_empty());
        let bad = toml::from_str::<InfluxConfig>(&format!("{url}api = \"v3\"\n"))
            .expect_err("unknown api");
        assert!(bad.to_string().contains("v1"), "{bad}");
        // v1 always takes the direct HTTP path, which knows the /write endpoint.
        let c = parse(&format!(
            "{url}api = \"v1\"\ndatabase = \"d\"\nretention_policy = \"rp\"\n"
        ));
        assert_eq!(c.transport(), Transport::Http);
        let (u, q) = c.endpoint();
        assert_eq!(u, "http://x:8086/write");
        assert_eq!(
            q,
            [("db", "d"), ("rp", "rp"), ("precision", "ns")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<InfluxConfig, _> =
            toml::from_str("url = \"http://x\"\nbucket = \"b\"\nbatchsize = 1\n");
        assert!(r.is_err());
    }

    #[test]
    fn token_from_file_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("tok");
        std::fs::write(&f, "abc\n").expect("write");
        let mut c = InfluxConfig::new("http://x", "b");
        c.token_file = Some(f);
        assert_eq!(c.resolve_token().expect("token").expose(), "abc");
        c.token_file = Some(dir.path().join("missing"));
        let e = c.resolve_token().expect_err("missing file");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn http_status_classification() {
        use reqwest::StatusCode;
        let http = |s: u16| influxdb2::RequestError::Http {
            status: StatusCode::from_u16(s).expect("status"),
            text: "msg".into(),
        };
        assert!(matches!(classify(http(400)), Failure::Reject(_)));
        assert!(matches!(classify(http(422)), Failure::Reject(_)));
        assert!(matches!(classify(http(413)), Failure::TooLarge(_)));
        for s in [429, 503, 500, 401, 404] {
            assert!(matches!(classify(http(s)), Failure::Retry { .. }), "{s}");
        }
        let later = Some(Duration::from_secs(3));
        for (s, kept) in [(429, later), (503, later), (500, None), (401, None)] {
            match classify_status(s, "x", later) {
                Failure::Retry { retry_after, .. } => assert_eq!(retry_after, kept, "{s}"),
                other => panic!("{s}: {other:?}"),
            }
        }
    }

    #[test]
    fn retry_after_forms() {
        use std::time::SystemTime;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // RFC 9110's example date is 784111777; each of its three forms, 10 s after `now`.
        for date in [
            "Sun, 06 Nov 1994 08:49:47 GMT",
            "Sunday, 06-Nov-94 08:49:47 GMT",
            "Sun Nov  6 08:49:47 1994",
        ] {
            assert_eq!(
                parse_retry_after(date, now),
                Some(Duration::from_secs(10)),
                "{date}"
            );
        }
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:27 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-1", "1.5", "soon"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn transport_follows_gzip_and_retry_after() {
        let mut c = InfluxConfig::new("http://x:8086", "b");
        assert_eq!(c.transport(), Transport::Influxdb2);
        c.gzip = true;
        assert_eq!(c.transport(), Transport::Http);
        c.gzip = false;
        c.honor_retry_after = true;
        assert_eq!(c.transport(), Transport::Http);
        let c = parse("url = \"http://x:8086\"\nbucket = \"b\"\ngzip = true\n");
        let mut issues = Issues::default();
        c.validate("influx", &mut issues);
        assert!(issues.is_empty(), "gzip = true is accepted");
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let body = "gpu,host=a v=1i 1\n".repeat(100);
        let gz = gzip_body(body.as_bytes()).expect("gzip");
        assert!(gz.len() < body.len() / 5, "{} bytes", gz.len());
        let mut out = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut out)
            .expect("gunzip");
        assert_eq!(out, body);
    }

    #[test]
    fn jitter_is_in_unit_interval() {
        let mut s = 1;
        for _ in 0..1000 {
            let u = next_unit(&mut s);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
