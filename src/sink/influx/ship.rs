//! The shipping task: sends the spool (and, while the spool's disk fails, the memory buffer)
//! to the server in batches, in order, and carries out what [`Policy::decide`] says about
//! each attempt: acknowledge, retry after a delay, split, dead-letter, or stop.

use super::policy::{Attempt, Decision, Pacing, Policy};
use super::write::Writer;
use super::{lock, Shared, DISK_RETRY};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub(super) struct Shipper {
    pub(super) shared: Arc<Shared>,
    pub(super) writer: Writer,
    pub(super) batch_size: usize,
    pub(super) flush_interval: Duration,
    pub(super) fsync_tick: Duration,
    pub(super) policy: Policy,
    pub(super) dead_letter: PathBuf,
    pub(super) stop: watch::Receiver<bool>,
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

    pub(super) async fn run(mut self) {
        // Back-off retries since the last accepted write (see `Attempt::failures`).
        let mut failures = 0u32;
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
                        if self.pause(self.policy.retry_max).await {
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
            let attempt = Attempt {
                failures,
                points: count,
                stopping,
            };
            match self.policy.decide(&result, attempt, next_unit(&mut rng)) {
                Decision::Done => {
                    // Counted before the backlog shrinks, so that no reader of the stats sees
                    // a batch gone from the backlog but not yet written.
                    {
                        let mut c = lock(&self.shared.counters);
                        c.written += count;
                        c.last_error = None;
                        c.db_unreachable = false;
                    }
                    self.ack(source);
                    failures = 0;
                    limit = self.batch_size;
                }
                Decision::Split { limit: l, reason } => {
                    limit = l;
                    tracing::warn!(error = %reason, points = count, new_batch = limit,
                        "InfluxDB refused the request size; splitting the batch");
                }
                Decision::DeadLetter { reason } => {
                    tracing::error!(error = %reason, points = count, file = %self.dead_letter.display(),
                        "InfluxDB rejected a batch; writing it to the dead-letter file");
                    match append_dead_letter(&self.dead_letter, &reason, &body) {
                        Ok(()) => {
                            {
                                let mut c = lock(&self.shared.counters);
                                c.rejected += count;
                                c.last_error = Some(reason);
                                c.db_unreachable = false;
                            }
                            self.ack(source);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, file = %self.dead_letter.display(),
                                "cannot write the dead-letter file; keeping the batch in the spool");
                            if self.pause(self.policy.backoff(failures)).await {
                                return;
                            }
                            failures = failures.saturating_add(1);
                        }
                    }
                }
                Decision::Keep { reason } => {
                    self.count_retry(&reason);
                    tracing::warn!(error = %reason, backlog, "InfluxDB write failed during shutdown; backlog stays in the spool");
                    return;
                }
                Decision::Retry {
                    after,
                    reason,
                    pacing,
                } => {
                    self.count_retry(&reason);
                    let retry_after = match pacing {
                        Pacing::Server(d) => Some(d),
                        Pacing::Backoff => {
                            failures = failures.saturating_add(1);
                            None
                        }
                    };
                    crate::log_limited!(warn, "InfluxDB write failed; will retry",
                        error = %reason, backlog, retry_in_ms = after.as_millis() as u64,
                        retry_after_s = retry_after.map(|d| d.as_secs()));
                    if self.pause(after).await {
                        // Shutdown: one last attempt happens in the next loop pass.
                    }
                }
            }
        }
    }

    /// Counts a failed write that will be tried again (now or at the next start).
    fn count_retry(&self, reason: &str) {
        let mut c = lock(&self.shared.counters);
        c.retries += 1;
        c.last_error = Some(reason.to_string());
        c.db_unreachable = true;
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

    #[test]
    fn jitter_is_in_unit_interval() {
        let mut s = 1;
        for _ in 0..1000 {
            let u = next_unit(&mut s);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
