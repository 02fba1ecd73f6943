//! One task per CDU, so that a slow CDU never holds the control tick hostage.
//!
//! A Modbus CDU may answer every request just inside its timeout; polled inside the tick,
//! a poll of several requests plus the pump and watchdog writes (each with a read-back)
//! would stretch the tick to many periods, and GPU sensing and power caps would wait behind
//! it. Here each CDU's client lives in its own task. The tick asks for a poll and hands over
//! its writes, then waits for them only until its budget for CDUs runs out
//! ([`wait_until`]); whatever is not done by then finishes in the background and is picked
//! up by a later tick: the newest sample (stamped with the time of the tick that asked for
//! it, so its age is never understated) and the outcome of each write.
//!
//! A lockstep test steps the plant, then ticks; with a budget long enough for a healthy CDU
//! every poll and write completes inside its own tick, exactly as when the tick polled
//! itself, so such tests stay deterministic.

use crate::collect::modbus::ModbusCdu;
use crate::model::{CduSample, Mono, Role};
use crate::profile::cdu::CduProfile;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Work for a CDU's task.
#[derive(Debug)]
enum Job {
    /// Poll every register; the sample is stamped `at` (the asking tick's time).
    Poll { at: Mono, wall_ns: i64 },
    /// Write `value` to the writable register of `role`, then read it back.
    Write { id: u64, role: Role, value: f64 },
}

/// What a CDU's task reports back.
#[derive(Debug)]
pub enum Report {
    Polled(Polled),
    Written {
        id: u64,
        result: Result<(), String>,
    },
    /// A queued write was replaced by a newer one for the same register before the CDU was
    /// free to take it; only the newest pump speed (or heartbeat) matters.
    Superseded {
        id: u64,
    },
}

/// A completed poll.
#[derive(Debug, Clone)]
pub struct Polled {
    pub sample: CduSample,
    /// Wall-clock time the poll started, ns since the Unix epoch (for the metric points).
    pub wall_ns: i64,
    /// How long the poll took.
    pub took: Duration,
    /// The client's request counters after this poll.
    pub requests: u64,
    pub timeouts: u64,
}

/// The tick's handle on one CDU's task.
pub struct CduLink {
    name: String,
    profile: Arc<CduProfile>,
    timeout: Duration,
    jobs: mpsc::UnboundedSender<Job>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ModbusCdu>>,
}

impl CduLink {
    /// Starts the task that owns `cdu`. Its reports go to `reports`, tagged with `index`
    /// (the CDU's position in the configuration) and `generation` (so that reports of a
    /// task replaced by a reload are recognised as stale).
    pub fn spawn(
        cdu: ModbusCdu,
        index: usize,
        generation: u64,
        reports: mpsc::UnboundedSender<(usize, u64, Report)>,
    ) -> CduLink {
        let (jobs, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel();
        let name = cdu.name().to_string();
        let profile = cdu.profile().clone();
        let timeout = cdu.timeout();
        let task = tokio::spawn(run(cdu, rx, stop_rx, move |r| {
            // The receiver is gone only while the daemon is being dropped.
            let _ = reports.send((index, generation, r));
        }));
        CduLink {
            name,
            profile,
            timeout,
            jobs,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn profile(&self) -> &Arc<CduProfile> {
        &self.profile
    }

    /// The client's per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks for a poll stamped `at`. A poll still waiting for the CDU is replaced (the newer
    /// time is what the tick wants), one in progress finishes first.
    pub fn request_poll(&self, at: Mono, wall_ns: i64) -> Result<(), String> {
        self.jobs
            .send(Job::Poll { at, wall_ns })
            .map_err(|_| format!("CDU {}: its poller has stopped", self.name))
    }

    /// Queues a write; its outcome comes back as [`Report::Written`] (or
    /// [`Report::Superseded`]) with `id`.
    pub fn write(&self, id: u64, role: Role, value: f64) -> Result<(), String> {
        self.jobs
            .send(Job::Write { id, role, value })
            .map_err(|_| format!("CDU {}: its poller has stopped", self.name))
    }

    /// Stops the task, cutting short a request in progress (the connection is then
    /// dropped, so a late reply cannot confuse a later request), and returns the client.
    /// Queued jobs are discarded. Waits no longer than it takes the task to notice.
    pub async fn stop(mut self) -> Option<ModbusCdu> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await.ok(),
            None => None,
        }
    }
}

impl Drop for CduLink {
    fn drop(&mut self) {
        // Dropping the stop sender ends the task at its next step (a request in progress
        // is cut short); nothing waits for it.
        self.stop.take();
    }
}

/// The task: takes jobs, coalesces them (the newest poll request, the newest write per
/// register), runs writes before the poll (they were decided earlier and may be the safe
/// output), and reports each result.
async fn run(
    mut cdu: ModbusCdu,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut stop: oneshot::Receiver<()>,
    report: impl Fn(Report) + Send + Sync,
) -> ModbusCdu {
    let mut poll: Option<(Mono, i64)> = None;
    let mut writes: Vec<(u64, Role, f64)> = Vec::new();
    let take =
        |job: Job, poll: &mut Option<(Mono, i64)>, writes: &mut Vec<(u64, Role, f64)>| match job {
            Job::Poll { at, wall_ns } => *poll = Some((at, wall_ns)),
            Job::Write { id, role, value } => {
                if let Some(w) = writes.iter_mut().find(|w| w.1 == role) {
                    report(Report::Superseded { id: w.0 });
                    *w = (id, role, value);
                } else {
                    writes.push((id, role, value));
                }
            }
        };
    loop {
        if poll.is_none() && writes.is_empty() {
            tokio::select! {
                biased;
                _ = &mut stop => return cdu,
                job = jobs.recv() => match job {
                    Some(j) => take(j, &mut poll, &mut writes),
                    None => return cdu,
                },
            }
        }
        while let Ok(j) = jobs.try_recv() {
            take(j, &mut poll, &mut writes);
        }
        if !writes.is_empty() {
            let (id, role, value) = writes.remove(0);
            let done = tokio::select! {
                biased;
                _ = &mut stop => None,
                r = crate::service::daemon::actuate::write_register(&mut cdu, role, value) => Some(r),
            };
            match done {
                Some(r) => report(Report::Written {
                    id,
                    result: r.map_err(|e| e.to_string()),
                }),
                None => {
                    cdu.abandon();
                    return cdu;
                }
            }
        } else if let Some((at, wall_ns)) = poll.take() {
            let t0 = Instant::now();
            let done = tokio::select! {
                biased;
                _ = &mut stop => None,
                s = cdu.poll(at) => Some(s),
            };
            match done {
                Some(sample) => {
                    let stats = cdu.stats();
                    report(Report::Polled(Polled {
                        sample,
                        wall_ns,
                        took: t0.elapsed(),
                        requests: stats.requests,
                        timeouts: stats.timeouts,
                    }));
                }
                None => {
                    cdu.abandon();
                    return cdu;
                }
            }
        }
    }
}
