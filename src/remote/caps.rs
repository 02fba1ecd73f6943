//! The controller's side of remote power caps: a sans-IO sender of [`CapLease`]s.
//!
//! The controller states what it wants per host ([`CapSender::set_cap`],
//! [`CapSender::set_caps`]); [`CapSender::poll_transmit`]`(now)` returns the leases to
//! publish, [`CapSender::handle_ack`]`(now, ack)` takes the agents' answers, and
//! [`CapSender::poll_event`] reports what the shell logs or alarms.
//!
//! Rules, and why:
//! - Each lease has a correlation id; an acknowledgement counts only for the id in flight.
//!   A retry repeats the same id (same content), so a late ack of an earlier copy still
//!   counts; changed caps get a new id and make older ids stale.
//! - An unacknowledged lease is sent again after `ack_timeout`; after `alarm_after` attempts
//!   an alarm is raised (once) and retrying goes on: a cap that matters must keep trying.
//! - A GPU whose write failed on the agent (`Refusal::Failed`) gets the held caps sent again
//!   under a new id after `ack_timeout`; permanent refusals (unknown GPU, out of range, not
//!   supported) are reported and not retried.
//! - Held caps are renewed `renew_before` their lease ends. The end is estimated from the
//!   first send of the acknowledged lease, the earliest the agent can have started it, so a
//!   renewal is never late because of network delay.

use crate::model::{GpuKey, Mono};
use crate::units::Watts;
use crate::wire::{Cap, CapAck, CapLease, Refusal, VERSION};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Timing of the cap side.
#[derive(Debug, Clone, PartialEq)]
pub struct CapSenderConfig {
    /// How long a cap holds on the agent without renewal.
    pub lease: Duration,
    /// How long to wait for an acknowledgement before sending again.
    pub ack_timeout: Duration,
    /// Attempts without acknowledgement after which the alarm is raised.
    pub alarm_after: u32,
    /// How long before the estimated end of a lease it is renewed.
    pub renew_before: Duration,
}

/// What the cap sender reports.
#[derive(Debug, Clone, PartialEq)]
pub enum CapEvent {
    /// The agent applied the lease; the enforced limits it read back.
    Acknowledged {
        host: String,
        id: u64,
        enforced: Vec<(u32, Watts)>,
        dry_run: bool,
    },
    /// The agent refused one GPU's cap.
    Refused {
        host: String,
        id: u64,
        index: u32,
        refusal: Refusal,
        detail: String,
    },
    /// A lease went unacknowledged past `ack_timeout` and is being sent again.
    Retry { host: String, id: u64, attempt: u32 },
    /// Alarm: `attempts` sends of a lease without an acknowledgement.
    Unacknowledged {
        host: String,
        id: u64,
        attempts: u32,
    },
    /// The alarm above clears: an acknowledgement arrived.
    AcknowledgedAgain { host: String },
    /// An acknowledgement for an id this sender never had in flight; ignored.
    UnknownAck { host: String, id: u64 },
}

/// Counts since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapCounters {
    pub sent: u64,
    pub retries: u64,
    pub acks: u64,
    pub refusals: u64,
    /// Acks of superseded ids or duplicates of an ack already taken.
    pub stale_acks: u64,
    pub unknown_acks: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    caps: BTreeMap<u32, Watts>,
    first_sent: Mono,
    last_sent: Mono,
    attempts: u32,
}

#[derive(Debug, Clone)]
struct Held {
    id: u64,
    caps: BTreeMap<u32, Watts>,
    until: Mono,
}

#[derive(Debug, Default)]
struct HostCaps {
    wanted: BTreeMap<u32, Watts>,
    pending: Option<Pending>,
    held: Option<Held>,
    alarmed: bool,
    /// When to send the held caps again because the agent's write failed on some GPU
    /// (`Refusal::Failed`: a retry may succeed; the other refusals are permanent).
    resend_failed_at: Option<Mono>,
    /// Recent ids of this host, to tell a stale ack from an unknown one.
    recent: VecDeque<u64>,
}

const RECENT_IDS: usize = 8;

/// The cap sender.
#[derive(Debug)]
pub struct CapSender {
    cfg: CapSenderConfig,
    hosts: BTreeMap<String, HostCaps>,
    next_id: u64,
    counters: CapCounters,
    events: VecDeque<CapEvent>,
}

impl CapSender {
    /// `first_id` seeds the correlation ids; the shell passes a random one so that a
    /// restarted controller does not reuse the ids of its previous run.
    pub fn new(cfg: CapSenderConfig, first_id: u64) -> CapSender {
        CapSender {
            cfg,
            hosts: BTreeMap::new(),
            next_id: first_id.max(1),
            counters: CapCounters::default(),
            events: VecDeque::new(),
        }
    }

    pub fn counters(&self) -> &CapCounters {
        &self.counters
    }

    pub fn poll_event(&mut self) -> Option<CapEvent> {
        self.events.pop_front()
    }

    /// Wants `limit` on one GPU (the controller's `Actuation::SetPowerCap`).
    pub fn set_cap(&mut self, gpu: &GpuKey, limit: Watts) {
        self.hosts
            .entry(gpu.host.clone())
            .or_default()
            .wanted
            .insert(gpu.index, limit);
    }

    /// Wants exactly these caps on a host; an empty map lifts the controller's caps.
    pub fn set_caps(&mut self, host: &str, caps: BTreeMap<u32, Watts>) {
        self.hosts.entry(host.to_string()).or_default().wanted = caps;
    }

    /// Whether a lease to `host` waits for its acknowledgement.
    pub fn pending(&self, host: &str) -> bool {
        self.hosts.get(host).is_some_and(|h| h.pending.is_some())
    }

    /// The caps the agent of `host` acknowledged last, if any.
    pub fn held(&self, host: &str) -> Option<&BTreeMap<u32, Watts>> {
        self.hosts.get(host)?.held.as_ref().map(|h| &h.caps)
    }

    /// The leases to publish at `now`: new or changed caps, retries, renewals.
    pub fn poll_transmit(&mut self, now: Mono) -> Vec<CapLease> {
        let mut out = Vec::new();
        for (host, hc) in &mut self.hosts {
            let want_new = match (&hc.pending, &hc.held) {
                (Some(p), _) => p.caps != hc.wanted,
                (None, Some(h)) => {
                    h.caps != hc.wanted
                        || (!hc.wanted.is_empty() && now + self.cfg.renew_before >= h.until)
                        || hc.resend_failed_at.is_some_and(|at| now >= at)
                }
                (None, None) => !hc.wanted.is_empty(),
            };
            if want_new {
                if hc.resend_failed_at.take().is_some_and(|at| now >= at) {
                    self.counters.retries += 1;
                }
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(1);
                hc.recent.push_back(id);
                if hc.recent.len() > RECENT_IDS {
                    hc.recent.pop_front();
                }
                hc.pending = Some(Pending {
                    id,
                    caps: hc.wanted.clone(),
                    first_sent: now,
                    last_sent: now,
                    attempts: 1,
                });
                self.counters.sent += 1;
                out.push(lease(host, id, &hc.wanted, self.cfg.lease));
                continue;
            }
            let Some(p) = &mut hc.pending else { continue };
            if now.saturating_sub(p.last_sent) < self.cfg.ack_timeout {
                continue;
            }
            if p.attempts >= self.cfg.alarm_after && !hc.alarmed {
                hc.alarmed = true;
                self.events.push_back(CapEvent::Unacknowledged {
                    host: host.clone(),
                    id: p.id,
                    attempts: p.attempts,
                });
            }
            p.attempts += 1;
            p.last_sent = now;
            self.counters.sent += 1;
            self.counters.retries += 1;
            self.events.push_back(CapEvent::Retry {
                host: host.clone(),
                id: p.id,
                attempt: p.attempts,
            });
            out.push(lease(host, p.id, &p.caps, self.cfg.lease));
        }
        out
    }

    /// Takes an agent's acknowledgement (already decoded and validated).
    pub fn handle_ack(&mut self, now: Mono, ack: &CapAck) {
        let Some(hc) = self.hosts.get_mut(&ack.host) else {
            self.counters.unknown_acks += 1;
            self.events.push_back(CapEvent::UnknownAck {
                host: ack.host.clone(),
                id: ack.id,
            });
            return;
        };
        let Some(p) = hc.pending.take_if(|p| p.id == ack.id) else {
            if hc.recent.contains(&ack.id) {
                self.counters.stale_acks += 1;
            } else {
                self.counters.unknown_acks += 1;
                self.events.push_back(CapEvent::UnknownAck {
                    host: ack.host.clone(),
                    id: ack.id,
                });
            }
            return;
        };
        self.counters.acks += 1;
        let mut enforced = Vec::new();
        let mut vanished = Vec::new();
        hc.resend_failed_at = None;
        for r in &ack.results {
            if let Some(refusal) = r.refusal_kind() {
                if refusal == Refusal::Failed {
                    hc.resend_failed_at = Some(now + self.cfg.ack_timeout);
                }
                if refusal == Refusal::UnknownGpu {
                    vanished.push(r.index);
                }
                self.counters.refusals += 1;
                self.events.push_back(CapEvent::Refused {
                    host: ack.host.clone(),
                    id: ack.id,
                    index: r.index,
                    refusal,
                    detail: r.detail.clone().unwrap_or_default(),
                });
            } else if let Some(w) = r.enforced_w {
                enforced.push((r.index, Watts(f64::from(w))));
            }
        }
        if std::mem::take(&mut hc.alarmed) {
            self.events.push_back(CapEvent::AcknowledgedAgain {
                host: ack.host.clone(),
            });
        }
        self.events.push_back(CapEvent::Acknowledged {
            host: ack.host.clone(),
            id: ack.id,
            enforced,
            dry_run: ack.dry_run,
        });
        let mut caps = p.caps;
        // A GPU the host no longer has (its agent restarted with fewer) is dropped from what
        // this controller wants there, or every renewal would carry a cap refused again.
        for index in vanished {
            caps.remove(&index);
            hc.wanted.remove(&index);
        }
        hc.held = Some(Held {
            id: p.id,
            until: p.first_sent + self.cfg.lease,
            caps,
        });
    }

    /// The agent of `host` restarted, or came back after being lost: what it holds is
    /// unknown (a restart restores the original limits, and a lease may have run out
    /// meanwhile), so the caps this controller wants there go out at once under a new id.
    pub fn resend(&mut self, host: &str) {
        if let Some(hc) = self.hosts.get_mut(host) {
            hc.pending = None;
            hc.held = None;
            hc.resend_failed_at = None;
        }
    }

    /// For a clean stop: an empty lease, under a new id, to every host that holds or is
    /// being sent caps of this controller, so its agent hands them to its local guard now
    /// instead of holding them until the lease ends.
    pub fn release_all(&mut self) -> Vec<CapLease> {
        let mut out = Vec::new();
        for (host, hc) in &mut self.hosts {
            let holds = hc.held.as_ref().is_some_and(|h| !h.caps.is_empty())
                || hc.pending.as_ref().is_some_and(|p| !p.caps.is_empty());
            if !holds {
                continue;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            hc.wanted.clear();
            hc.pending = None;
            hc.held = None;
            self.counters.sent += 1;
            out.push(lease(host, id, &BTreeMap::new(), self.cfg.lease));
        }
        out
    }

    /// The id of the lease the agent of `host` acknowledged last.
    pub fn held_id(&self, host: &str) -> Option<u64> {
        self.hosts.get(host)?.held.as_ref().map(|h| h.id)
    }
}

fn lease(host: &str, id: u64, caps: &BTreeMap<u32, Watts>, lease: Duration) -> CapLease {
    CapLease {
        v: Some(VERSION),
        host: host.to_string(),
        id,
        lease_ms: u32::try_from(lease.as_millis()).unwrap_or(u32::MAX),
        caps: caps
            .iter()
            .map(|(&index, &limit)| Cap {
                index,
                limit_w: limit.get() as f32,
            })
            .collect(),
    }
}
