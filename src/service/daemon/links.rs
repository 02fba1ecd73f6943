//! The tick's side of the CDU pollers: one poller task per CDU (`service::cdu_link`) owns
//! the Modbus client; here the daemon starts them, keeps each one's bookkeeping, and takes
//! their reports (polls, write outcomes) within the tick's budget.

use super::{Daemon, LoadedProfiles};
use crate::collect::modbus::ModbusCdu;
use crate::model::{Actuation, ActuationError, ActuationOutcome, Mono};
use crate::service::cdu_link::{CduLink, Polled, Report};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

impl Daemon {
    /// Takes every report the CDU pollers have sent so far.
    pub(super) fn drain_reports(&mut self) {
        while let Ok((i, g, r)) = self.reports_rx.try_recv() {
            self.on_report(i, g, r);
        }
    }

    /// Receives CDU reports until `done` holds for every CDU or `deadline` passes.
    pub(super) async fn wait_cdus(
        &mut self,
        deadline: tokio::time::Instant,
        done: fn(&LinkState) -> bool,
    ) {
        loop {
            self.drain_reports();
            if self.link_state.iter().all(done) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.reports_rx.recv()).await {
                Ok(Some((i, g, r))) => self.on_report(i, g, r),
                // Past the deadline (or, while the daemon is dropped, no sender left).
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn on_report(&mut self, index: usize, generation: u64, report: Report) {
        if generation != self.link_generation {
            // A poller replaced by a reload; its pending writes were already answered.
            return;
        }
        let Some(st) = self.link_state.get_mut(index) else {
            return;
        };
        match report {
            Report::Polled(p) => {
                if st.poll_pending.is_some_and(|at| p.sample.at >= at) {
                    st.poll_pending = None;
                }
                if st
                    .latest
                    .as_ref()
                    .is_none_or(|l| l.sample.at <= p.sample.at)
                {
                    st.latest = Some(p.clone());
                }
                st.fresh.push(p);
            }
            Report::Written { id, result } => {
                if let Some((actuation, at)) = st.writes.remove(&id) {
                    if let Err(e) = &result {
                        tracing::warn!(action = %actuation, error = %e, "actuation failed");
                    }
                    self.outcomes.push(ActuationOutcome {
                        actuation,
                        at,
                        result: result.map_err(ActuationError::Failed),
                        dry_run: false,
                    });
                }
            }
            Report::Superseded { id } => {
                if st.writes.remove(&id).is_some() {
                    st.superseded += 1;
                }
            }
        }
    }

    /// Answers every write still waiting for a CDU with `why` (its poller is being
    /// replaced), so the core retries it instead of waiting for an outcome that never comes.
    pub(super) fn fail_pending_writes(&mut self, why: &str) {
        for st in &mut self.link_state {
            for (_, (actuation, at)) in std::mem::take(&mut st.writes) {
                self.outcomes.push(ActuationOutcome {
                    actuation,
                    at,
                    result: Err(ActuationError::Failed(why.to_string())),
                    dry_run: false,
                });
            }
            st.poll_pending = None;
        }
    }
}

/// The tick's bookkeeping for one CDU's poller.
#[derive(Debug, Default)]
pub(super) struct LinkState {
    /// The newest completed poll.
    pub(super) latest: Option<Polled>,
    /// Polls completed since the last tick wrote them as points.
    pub(super) fresh: Vec<Polled>,
    /// The time of the poll this tick asked for, until it is reported.
    pub(super) poll_pending: Option<Mono>,
    /// Writes handed to the poller and not answered yet, by id: the actuation and its tick.
    pub(super) writes: BTreeMap<u64, (Actuation, Mono)>,
    /// This tick's poll missed the tick's budget.
    pub(super) late: bool,
    pub(super) late_polls: u64,
    pub(super) superseded: u64,
}

/// Starts one poller task per CDU of `cdus` (the configured ones, or a rehearsal's).
pub(super) fn spawn_links(
    cdus: &[crate::config::CduConfig],
    profiles: &LoadedProfiles,
    generation: u64,
    reports: &mpsc::UnboundedSender<(usize, u64, Report)>,
) -> Vec<CduLink> {
    cdus.iter()
        .enumerate()
        .map(|(i, c)| {
            let client = ModbusCdu::new(c, profiles.cdu[&c.name].clone());
            CduLink::spawn(client, i, generation, reports.clone())
        })
        .collect()
}

/// Why `cdu_slow:<cdu>` is raised: what the tick waited, how long the newest poll took, and
/// how old the sample the loop steers on is.
pub(super) fn slow_cdu_message(
    link: &CduLink,
    newest: &Polled,
    now: Mono,
    budget: Duration,
    max_age_ms: u64,
) -> String {
    format!(
        "{}: its poll did not finish within the tick's {} ms budget for CDUs (the newest took \
         {} ms, timeout_ms {} per request); steering on a sample {} ms old, lost once older \
         than control.max_sample_age_ms = {max_age_ms}",
        link.name(),
        budget.as_millis(),
        newest.took.as_millis(),
        link.timeout().as_millis(),
        now.saturating_sub(newest.sample.at).as_millis()
    )
}

/// Runs the futures concurrently and returns their outputs in input order: all CDUs are
/// polled at once, so a slow CDU delays the others by no more than its own timeout.
pub(super) async fn join_all_in_order<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::Poll;
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => out[i] = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future completed before poll_fn returned Ready"))
        .collect()
}
