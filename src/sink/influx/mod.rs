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
//!
//! The parts: this file holds the sink's handle (`submit`, `stats`, `shutdown`) and the
//! memory buffer for a failing disk; `config.rs` the `[influx]` section and its validation;
//! `write.rs` the two write paths; `policy.rs` the retry / split / dead-letter decision, a
//! pure function; `ship.rs` the shipping task that carries it out. The spool itself is
//! `sink::spool`.

mod config;
mod policy;
mod ship;
mod write;

pub use config::{FsyncMode, InfluxApi, InfluxConfig, Secret, Transport};
pub use policy::{
    parse_retry_after, Attempt, Decision, Pacing, Policy, TransportKind, WriteResult,
};
pub use write::gzip_body;

use crate::model::Point;
use crate::sink::lineproto;
use crate::sink::spool::{Spool, SpoolError, SpoolOptions, RECORD_OVERHEAD};
use crate::validate::Issues;
use ship::Shipper;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use write::{Auth, HttpWriter, Writer};

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
            policy: Policy {
                retry_min: Duration::from_millis(cfg.retry_min_ms),
                retry_max: Duration::from_millis(cfg.retry_max_ms),
            },
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
