//! The host agent's pure parts: the cap lease and the local thermal guard, combined into
//! the decisions the agent's shell applies to its GPUs.
//!
//! Like the control core this reads no clock and does no IO: the shell passes `now`, the
//! decoded leases and the GPU readings in, applies the [`CapDecision`]s it gets back (or only
//! logs them in dry-run), reads the enforced limits back and sends the [`CapAck`] built by
//! [`AgentCore::ack`].
//!
//! The cap a GPU gets is the lower of the controller's lease cap (while the lease runs) and
//! the guard's cap. So a GPU at its slowdown threshold is capped by the agent itself within
//! one tick whatever the controller says, and when the controller goes quiet its caps are
//! not dropped at once: the lease ends, the guard takes over from the lease's cap and raises
//! it back at its own bounded rate while the GPU is cool.

pub mod config;
pub mod guard;
pub mod lease;

pub use config::AgentSection;
pub use guard::{GpuLimits, Guard, GuardParams, GuardState, GuardStep};
pub use lease::{Lease, LeaseAnswer};

use crate::model::Mono;
use crate::units::{Celsius, Kelvin, Watts};
use crate::wire::{CapAck, CapLease, CapResult, GpuFacts, GpuReading, Refusal, VERSION};
use std::collections::{BTreeMap, VecDeque};

/// The agent's identity and mode.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub host: String,
    /// Random per start (see `wire::Readings::session`).
    pub session: u64,
    /// Decide and report "would set", write nothing.
    pub dry_run: bool,
    pub guard: GuardParams,
}

/// Why a cap is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The controller's lease `id` sets the lower cap.
    Lease { id: u64 },
    /// The local guard sets the lower cap.
    Guard,
    /// Neither caps the GPU: back at its original limit.
    Released,
}

/// A power limit the shell is to set (or, in dry-run, report as "would set").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapDecision {
    pub index: u32,
    pub limit: Watts,
    pub cause: Cause,
    pub dry_run: bool,
}

/// What the agent reports for logs and alarms.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    LeaseAccepted {
        id: u64,
        until: Mono,
    },
    /// The same caps again: the lease is extended.
    LeaseRenewed {
        id: u64,
        until: Mono,
    },
    /// Alarm: the lease ran out without renewal; the guard holds the caps from here.
    LeaseExpired {
        id: u64,
    },
    /// A lease whose id already ended on this agent (it expired or was replaced) arrived
    /// again, e.g. queued by a client or broker across an outage; refused, not re-applied.
    StaleLease {
        id: u64,
    },
    /// A lease arrived with fewer GPUs than the one it replaces (a release on the
    /// controller's clean stop or a host removed by a reload): those GPUs go to the guard.
    LeaseReleased {
        id: u64,
        released: Vec<u32>,
    },
    /// A lease for another host arrived on our topic; ignored.
    LeaseForOtherHost {
        host: String,
    },
    CapRefused {
        id: u64,
        index: u32,
        refusal: Refusal,
    },
    /// Alarm: a GPU at or near slowdown; its cap was cut this tick.
    GuardCritical {
        index: u32,
        margin: Kelvin,
        cap: Watts,
    },
    /// The guard started capping a GPU (below its original limit).
    GuardCapping {
        index: u32,
        cap: Watts,
    },
    /// The guard is back at the original limit.
    GuardReleased {
        index: u32,
    },
}

/// One GPU's guard as [`AgentCore::guards`] shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardView {
    pub index: u32,
    /// The last state seen with temperatures (a blind step keeps the previous one).
    pub state: GuardState,
    /// The cap the guard alone would set.
    pub cap: Watts,
    /// The cap decided: the lower of the lease's and the guard's.
    pub decided: Watts,
    /// The guard holds the cap under the GPU's original limit.
    pub engaged: bool,
}

#[derive(Debug)]
struct GpuCtl {
    guard: Guard,
    /// The limit last decided (set, or in dry-run "would set").
    decided: Watts,
    last_state: GuardState,
}

/// One GPU's readings for the agent's tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalReading {
    pub index: u32,
    pub core: Option<Celsius>,
    pub hbm: Option<Celsius>,
    pub power: Option<Watts>,
}

impl From<&GpuReading> for LocalReading {
    fn from(r: &GpuReading) -> Self {
        LocalReading {
            index: r.index,
            core: r.core_c.map(|c| Celsius(f64::from(c))),
            hbm: r.hbm_c.map(|c| Celsius(f64::from(c))),
            power: r.power_w.map(|w| Watts(f64::from(w))),
        }
    }
}

impl GpuLimits {
    /// The guard's limits from the facts the agent publishes.
    pub fn from_facts(f: &GpuFacts) -> GpuLimits {
        GpuLimits {
            index: f.index,
            power_min: Watts(f64::from(f.power_min_w)),
            power_max: Watts(f64::from(f.power_max_w)),
            original: f.original_limit(),
            slowdown: Celsius(f64::from(f.slowdown_c)),
            hbm_max: Celsius(f64::from(f.hbm_max_c)),
        }
    }
}

/// The agent's decision core.
#[derive(Debug)]
pub struct AgentCore {
    cfg: AgentConfig,
    gpus: BTreeMap<u32, GpuCtl>,
    lease: Option<Lease>,
    /// Ids of leases that expired or were replaced, newest last: a copy that arrives again
    /// later (a client's or broker's queue replaying it after an outage) must not restart a
    /// cap its controller has stopped renewing.
    ended: VecDeque<u64>,
    events: VecDeque<AgentEvent>,
}

/// How many ended lease ids are remembered; a controller sends a few per lease period, so
/// this covers far more than any outage a queued copy can survive.
const ENDED_IDS: usize = 64;

impl AgentCore {
    /// An agent for these GPUs; each starts at its original limit (what it has now).
    pub fn new(cfg: AgentConfig, gpus: impl IntoIterator<Item = GpuLimits>) -> AgentCore {
        let gpus = gpus
            .into_iter()
            .map(|l| {
                (
                    l.index,
                    GpuCtl {
                        decided: l.ceiling(),
                        guard: Guard::new(l, cfg.guard.clone()),
                        last_state: GuardState::Watching,
                    },
                )
            })
            .collect();
        AgentCore {
            cfg,
            gpus,
            lease: None,
            ended: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// The lease in force, if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Each GPU's guard after the last step, for the agent's metrics and alarms.
    pub fn guards(&self) -> impl Iterator<Item = GuardView> + '_ {
        self.gpus.iter().map(|(&index, g)| GuardView {
            index,
            state: g.last_state,
            cap: g.guard.cap(),
            decided: g.decided,
            engaged: g.guard.cap().get() < g.guard.limits().ceiling().get() - 0.5,
        })
    }

    /// The limit last decided for a GPU.
    pub fn decided(&self, index: u32) -> Option<Watts> {
        self.gpus.get(&index).map(|g| g.decided)
    }

    /// Takes a lease (decoded and validated) received at `now`. Returns the caps to apply
    /// now and the refusals for the acknowledgement.
    pub fn handle_lease(&mut self, now: Mono, msg: &CapLease) -> LeaseAnswer {
        if msg.host != self.cfg.host {
            self.events.push_back(AgentEvent::LeaseForOtherHost {
                host: msg.host.clone(),
            });
            return LeaseAnswer::default();
        }
        let mut answer = LeaseAnswer::default();
        if self.ended.contains(&msg.id) {
            self.events.push_back(AgentEvent::StaleLease { id: msg.id });
            // Refused as a failed write: the controller then sends its current caps under a
            // new id, which is what a controller still alive wants.
            answer.refusals = msg
                .caps
                .iter()
                .map(|c| {
                    CapResult::refused(
                        c.index,
                        Refusal::Failed,
                        &format!(
                            "lease {} already ended on this host; not applied again",
                            msg.id
                        ),
                    )
                })
                .collect();
            return answer;
        }
        if self.lease.as_ref().is_some_and(|l| l.id == msg.id) {
            // A retry of the lease in force (its acknowledgement was lost): acknowledged
            // again with the same answers, not extended, so the lease still ends when its
            // controller expects.
            let _ = Lease::accept(
                now,
                msg,
                |index| self.gpus.get(&index).map(|g| *g.guard.limits()),
                &mut answer,
            );
            return answer;
        }
        let lease = Lease::accept(
            now,
            msg,
            |index| self.gpus.get(&index).map(|g| *g.guard.limits()),
            &mut answer,
        );
        for r in &answer.refusals {
            if let Some(refusal) = r.refusal_kind() {
                self.events.push_back(AgentEvent::CapRefused {
                    id: msg.id,
                    index: r.index,
                    refusal,
                });
            }
        }
        let renewal = self.lease.as_ref().is_some_and(|l| l.caps == lease.caps);
        self.events.push_back(if renewal {
            AgentEvent::LeaseRenewed {
                id: lease.id,
                until: lease.until,
            }
        } else {
            AgentEvent::LeaseAccepted {
                id: lease.id,
                until: lease.until,
            }
        });
        if let Some(old) = self.lease.replace(lease) {
            if old.id != msg.id {
                self.remember_ended(old.id);
            }
            // A GPU the new lease no longer names is handed to the guard from the old cap,
            // as at expiry: a release lifts caps at the guard's rate, never at once.
            let kept = self.lease.as_ref().map(|l| &l.caps);
            let released: Vec<u32> = old
                .caps
                .iter()
                .filter(|(i, _)| kept.is_none_or(|k| !k.contains_key(i)))
                .filter_map(|(i, cap)| {
                    let g = self.gpus.get_mut(i)?;
                    let from = cap.min(g.guard.cap());
                    g.guard.hand_over(from);
                    Some(*i)
                })
                .collect();
            if !released.is_empty() {
                self.events.push_back(AgentEvent::LeaseReleased {
                    id: msg.id,
                    released,
                });
            }
        }
        answer.decisions = self.decide();
        answer
    }

    /// One tick: lease expiry, the guard on every GPU with readings, and the caps that change.
    pub fn tick(&mut self, now: Mono, readings: &[LocalReading]) -> Vec<CapDecision> {
        if let Some(l) = self.lease.take_if(|l| now >= l.until) {
            self.remember_ended(l.id);
            self.events.push_back(AgentEvent::LeaseExpired { id: l.id });
            for (index, cap) in &l.caps {
                if let Some(g) = self.gpus.get_mut(index) {
                    // The guard starts from what the lease held, never from the ceiling.
                    let from = cap.min(g.guard.cap());
                    g.guard.hand_over(from);
                }
            }
        }
        for r in readings {
            let Some(g) = self.gpus.get_mut(&r.index) else {
                continue;
            };
            let step = g.guard.step(now, r.core, r.hbm, r.power);
            match step.state {
                GuardState::Critical => self.events.push_back(AgentEvent::GuardCritical {
                    index: r.index,
                    margin: step.margin.unwrap_or_default(),
                    cap: step.cap,
                }),
                GuardState::Regulating if g.last_state == GuardState::Watching => {
                    self.events.push_back(AgentEvent::GuardCapping {
                        index: r.index,
                        cap: step.cap,
                    })
                }
                GuardState::Watching if g.last_state != GuardState::Watching => self
                    .events
                    .push_back(AgentEvent::GuardReleased { index: r.index }),
                _ => {}
            }
            if step.state != GuardState::Blind {
                g.last_state = step.state;
            }
        }
        self.decide()
    }

    fn remember_ended(&mut self, id: u64) {
        self.ended.push_back(id);
        if self.ended.len() > ENDED_IDS {
            self.ended.pop_front();
        }
    }

    /// The caps that differ from what was last decided.
    fn decide(&mut self) -> Vec<CapDecision> {
        let mut out = Vec::new();
        for (&index, g) in &mut self.gpus {
            let guard = g.guard.cap();
            let lease = self
                .lease
                .as_ref()
                .and_then(|l| l.caps.get(&index).map(|c| (l.id, *c)));
            let (limit, cause) = match lease {
                Some((id, c)) if c.get() < guard.get() => (c, Cause::Lease { id }),
                _ if guard.get() < g.guard.limits().ceiling().get() - 0.5 => (guard, Cause::Guard),
                _ => (guard, Cause::Released),
            };
            // Half a watt: NVML limits are whole milliwatts, and a PID output drifts by less.
            if (limit.get() - g.decided.get()).abs() >= 0.5 {
                g.decided = limit;
                out.push(CapDecision {
                    index,
                    limit,
                    cause,
                    dry_run: self.cfg.dry_run,
                });
            }
        }
        out
    }

    /// The acknowledgement of lease `id`: the refusals from [`AgentCore::handle_lease`] and,
    /// per applied GPU, the enforced limit the shell read back (`Err`: the write failed).
    pub fn ack(
        &self,
        id: u64,
        refusals: &[CapResult],
        read_back: &[(u32, Result<Watts, crate::model::ActuationError>)],
    ) -> CapAck {
        let mut results = refusals.to_vec();
        for (index, r) in read_back {
            results.push(match r {
                Ok(w) => CapResult::enforced(*index, *w),
                Err(e) => CapResult::refused(
                    *index,
                    if e.is_permanent() {
                        Refusal::NotSupported
                    } else {
                        Refusal::Failed
                    },
                    &e.to_string(),
                ),
            });
        }
        CapAck {
            v: Some(VERSION),
            host: self.cfg.host.clone(),
            session: self.cfg.session,
            id,
            dry_run: self.cfg.dry_run,
            results,
        }
    }
}
