//! The controller's remote GPU source: the GPUs of other hosts, heard over MQTT.
//!
//! A sans-IO state machine in the quinn-proto style: the shell feeds it every wire message
//! with [`RemoteSource::handle`]`(now, host, kind, bytes)` and asks it for the controller's
//! inputs with [`RemoteSource::view`]`(now)` and for events with
//! [`RemoteSource::poll_event`]. It never reads a clock and does no IO.
//!
//! Design constraints:
//! - Readings are stamped with their ARRIVAL time (`now` of `handle`), never the sender's
//!   clock: hosts' clocks differ, and an agent ten minutes off must change nothing.
//! - A host is trusted only while exactly one agent speaks for it, its readings are fresh
//!   (`stale_after`), and its last will has not fired. Otherwise its GPUs are lost inputs:
//!   the view carries no sample for them, and says why in `lost`.
//! - Nothing is dropped silently: refused messages, unknown hosts, sequence gaps and replays
//!   are counted ([`Counters`]) and reported as [`RemoteEvent`]s.
//!
//! Sessions: every agent start picks a random `session`. A new session on a host is a
//! restart; a message from a session the host already left behind means two agents claim
//! the host (a mis-deployed config, a cloned VM): an alarm, and neither is trusted until
//! only one has been heard for `conflict_clear_after`.
//!
//! The cap side (controller → agent leases and their acknowledgements) is [`caps`]; when in
//! the period agents publish and the controller decides is [`phase`].

pub mod caps;
pub mod config;
pub mod phase;

pub use caps::{CapEvent, CapSender, CapSenderConfig};
pub use config::RackConfig;

use crate::model::{GpuSample, GpuStatic, Mono};
use crate::wire::{self, Facts, Kind, Readings, Status, WireError};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// How the remote source judges its hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// The hosts whose GPUs this controller takes (a CDU's `hosts = [...]`).
    pub hosts: Vec<String>,
    /// Readings older than this (by arrival) make the host's GPUs lost inputs.
    pub stale_after: Duration,
    /// How long only one session must be heard before a duplicate-host alarm clears.
    pub conflict_clear_after: Duration,
}

/// Why a host's GPUs are lost inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// No readings received yet.
    NeverHeard,
    /// No readings for longer than `stale_after`.
    Stale { silent_for: Duration },
    /// The agent's last will (or a goodbye) said it is offline.
    Offline,
    /// Two agents claim this host.
    DuplicateAgents { sessions: [u64; 2] },
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::NeverHeard => f.write_str("no readings received yet"),
            LostReason::Stale { silent_for } => {
                write!(f, "no readings for {} ms", silent_for.as_millis())
            }
            LostReason::Offline => f.write_str("agent offline (last will)"),
            LostReason::DuplicateAgents { sessions } => write!(
                f,
                "two agents claim this host (sessions {:016x} and {:016x})",
                sessions[0], sessions[1]
            ),
        }
    }
}

/// What the source tells the shell (for logs, counters and alarms).
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteEvent {
    /// First readings of a session that is trusted.
    HostOnline { host: String, session: u64 },
    /// A new session replaced the one we knew: the agent restarted.
    HostRestarted {
        host: String,
        old_session: u64,
        new_session: u64,
    },
    /// Readings skipped sequence numbers (messages lost between agent and controller).
    SequenceGap { host: String, missed: u64 },
    /// A reading with a sequence number already seen (a replay or a duplicate); ignored.
    Replay { host: String, seq: u64 },
    /// The host became a lost input (alarm).
    HostLost { host: String, reason: LostReason },
    /// The host is trusted again.
    HostRecovered { host: String },
    /// Alarm: two agents claim one host; neither is trusted.
    DuplicateHost { host: String, sessions: [u64; 2] },
    /// Only one agent has been heard for `conflict_clear_after`.
    DuplicateHostCleared { host: String },
    /// New or changed facts.
    FactsChanged { host: String, hash: u64 },
    /// A message was refused (malformed, other major, implausible, wrong host).
    Refused {
        host: String,
        kind: Kind,
        error: String,
    },
}

/// What the source has counted since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub accepted: u64,
    pub refused: u64,
    pub unknown_host: u64,
    pub gaps: u64,
    pub missed: u64,
    pub replays: u64,
    pub restarts: u64,
    pub duplicate_host_alarms: u64,
    /// Messages of a kind the controller does not take (caps are its own output).
    pub ignored_kind: u64,
}

/// One expected host, as [`RemoteSource::hosts`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSummary<'a> {
    pub host: &'a str,
    pub last_arrival: Option<Mono>,
    pub last_seq: Option<u64>,
    /// The agent's wall clock when it sent those readings (`Readings::sent_unix_ms`).
    pub last_sent_unix_ms: Option<u64>,
    pub gpus: usize,
    /// Why its GPUs are lost inputs, as of the last [`RemoteSource::view`].
    pub lost: Option<&'a LostReason>,
}

/// The controller's inputs from the network at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteView {
    /// Latest samples of trusted hosts, stamped with their arrival time.
    pub samples: Vec<GpuSample>,
    /// Facts of every expected host that published them (trusted or not), so a lost host's
    /// GPUs are known to be missing.
    pub statics: Vec<GpuStatic>,
    /// Expected hosts whose GPUs are lost inputs, and why.
    pub lost: Vec<(String, LostReason)>,
}

#[derive(Debug, Default)]
struct HostState {
    /// The session we follow, and the last sequence number accepted from it.
    session: Option<u64>,
    last_seq: u64,
    /// Whether `last_seq` belongs to the current session (false until its first reading).
    seq_known: bool,
    /// Sessions this host has left behind (a restart); hearing one again is a conflict.
    retired: Vec<u64>,
    latest: Option<(Mono, Readings)>,
    facts: Option<Facts>,
    offline: bool,
    conflict: Option<Conflict>,
    /// Whether the last view reported this host lost (for transition events).
    lost: Option<LostReason>,
}

#[derive(Debug, Clone, Copy)]
struct Conflict {
    sessions: [u64; 2],
    /// When the speaking session last changed: the conflict clears once one session alone
    /// has spoken for `conflict_clear_after` since.
    last_switch: Mono,
    latest_session: u64,
}

/// Sessions remembered per host to recognise a second agent.
const RETIRED_KEPT: usize = 4;

/// The remote GPU source.
#[derive(Debug)]
pub struct RemoteSource {
    cfg: RemoteConfig,
    hosts: BTreeMap<String, HostState>,
    counters: Counters,
    events: VecDeque<RemoteEvent>,
}

impl RemoteSource {
    pub fn new(cfg: RemoteConfig) -> RemoteSource {
        let hosts = cfg
            .hosts
            .iter()
            .map(|h| (h.clone(), HostState::default()))
            .collect();
        RemoteSource {
            cfg,
            hosts,
            counters: Counters::default(),
            events: VecDeque::new(),
        }
    }

    /// Changes the expected hosts (a reload): new hosts start unheard, hosts no longer
    /// listed are forgotten, the others keep their state.
    pub fn set_hosts(&mut self, hosts: &[String]) {
        self.hosts.retain(|h, _| hosts.contains(h));
        for h in hosts {
            self.hosts.entry(h.clone()).or_default();
        }
        self.cfg.hosts = hosts.to_vec();
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The original power limit of every GPU whose facts arrived (the agent owns the record
    /// of what to restore), so the controller's cap loop returns to it, not to a cap.
    pub fn original_limits(&self) -> Vec<(crate::model::GpuKey, crate::units::Watts)> {
        self.hosts
            .iter()
            .filter_map(|(host, st)| Some((host, st.facts.as_ref()?)))
            .flat_map(|(host, f)| {
                f.gpus
                    .iter()
                    .map(move |g| (g.to_static(host).key, g.original_limit()))
            })
            .collect()
    }

    /// What the source knows of each expected host, for status pages: the arrival time and
    /// sequence number of the latest readings, and how many GPUs its facts list.
    pub fn hosts(&self) -> impl Iterator<Item = HostSummary<'_>> {
        self.hosts.iter().map(|(host, st)| HostSummary {
            host,
            last_arrival: st.latest.as_ref().map(|(at, _)| *at),
            last_seq: st.latest.as_ref().map(|(_, r)| r.seq),
            last_sent_unix_ms: st.latest.as_ref().map(|(_, r)| r.sent_unix_ms),
            gpus: st.facts.as_ref().map_or(0, |f| f.gpus.len()),
            lost: st.lost.as_ref(),
        })
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<RemoteEvent> {
        self.events.pop_front()
    }

    /// Takes one message received at `now` on the topic of `host` and `kind`.
    pub fn handle(&mut self, now: Mono, host: &str, kind: Kind, bytes: &[u8]) {
        if !self.hosts.contains_key(host) {
            self.counters.unknown_host += 1;
            return;
        }
        let result = match kind {
            Kind::Readings => wire::decode::<Readings>(bytes)
                .and_then(|m| same_host(kind, host, &m.host).map(|_| m))
                .map(|m| self.on_readings(now, host, m)),
            Kind::Facts => wire::decode::<Facts>(bytes)
                .and_then(|m| same_host(kind, host, &m.host).map(|_| m))
                .map(|m| self.on_facts(host, m)),
            Kind::Status => wire::decode::<Status>(bytes)
                .and_then(|m| same_host(kind, host, &m.host).map(|_| m))
                .map(|m| self.on_status(now, host, m)),
            Kind::Caps | Kind::Acks => {
                self.counters.ignored_kind += 1;
                return;
            }
        };
        match result {
            Ok(()) => self.counters.accepted += 1,
            Err(e) => {
                self.counters.refused += 1;
                self.events.push_back(RemoteEvent::Refused {
                    host: host.to_string(),
                    kind,
                    error: e.to_string(),
                });
            }
        }
    }

    fn on_readings(&mut self, now: Mono, host: &str, m: Readings) {
        if !self.track_session(now, host, m.session) {
            return;
        }
        let st = self.hosts.get_mut(host).expect("checked by handle");
        if st.seq_known && m.seq <= st.last_seq {
            self.counters.replays += 1;
            self.events.push_back(RemoteEvent::Replay {
                host: host.to_string(),
                seq: m.seq,
            });
            return;
        }
        if st.seq_known && m.seq > st.last_seq + 1 {
            let missed = m.seq - st.last_seq - 1;
            self.counters.gaps += 1;
            self.counters.missed += missed;
            self.events.push_back(RemoteEvent::SequenceGap {
                host: host.to_string(),
                missed,
            });
        }
        if !st.seq_known {
            self.events.push_back(RemoteEvent::HostOnline {
                host: host.to_string(),
                session: m.session,
            });
        }
        st.last_seq = m.seq;
        st.seq_known = true;
        // Readings are proof of life: a last will that fired before a reconnect is over.
        st.offline = false;
        st.latest = Some((now, m));
    }

    /// Follows the sessions of a host. Returns false when the message must be ignored
    /// (a conflict, or a session we left behind).
    fn track_session(&mut self, now: Mono, host: &str, session: u64) -> bool {
        let clear_after = self.cfg.conflict_clear_after;
        let st = self.hosts.get_mut(host).expect("checked by handle");
        if let Some(c) = &mut st.conflict {
            // During a conflict, note who speaks; it clears once only one has been heard
            // for `conflict_clear_after`.
            if session != c.latest_session {
                c.last_switch = now;
                c.latest_session = session;
            }
            if now.saturating_sub(c.last_switch) >= clear_after {
                let other = if c.sessions[0] == session {
                    c.sessions[1]
                } else {
                    c.sessions[0]
                };
                st.conflict = None;
                // The silent one stays remembered: if it speaks again, the alarm returns.
                st.retired.retain(|s| *s != session);
                st.retired.push(other);
                if st.retired.len() > RETIRED_KEPT {
                    st.retired.remove(0);
                }
                st.session = Some(session);
                // Readings heard during the conflict may be either agent's: start afresh.
                st.latest = None;
                st.seq_known = false;
                self.events.push_back(RemoteEvent::DuplicateHostCleared {
                    host: host.to_string(),
                });
                return true;
            }
            return false;
        }
        match st.session {
            None => {
                st.session = Some(session);
                true
            }
            Some(s) if s == session => true,
            Some(old) if st.retired.contains(&session) => {
                // A session we left behind speaks again: two agents for one host.
                let sessions = [old, session];
                st.conflict = Some(Conflict {
                    sessions,
                    last_switch: now,
                    latest_session: session,
                });
                self.counters.duplicate_host_alarms += 1;
                self.events.push_back(RemoteEvent::DuplicateHost {
                    host: host.to_string(),
                    sessions,
                });
                false
            }
            Some(old) => {
                st.retired.push(old);
                if st.retired.len() > RETIRED_KEPT {
                    st.retired.remove(0);
                }
                st.session = Some(session);
                // A restart resets the sequence: the next reading starts a new count. The
                // latest readings stay: they are real readings of the same GPUs, and the
                // staleness bound still applies to them.
                st.seq_known = false;
                self.counters.restarts += 1;
                self.events.push_back(RemoteEvent::HostRestarted {
                    host: host.to_string(),
                    old_session: old,
                    new_session: session,
                });
                true
            }
        }
    }

    fn on_facts(&mut self, host: &str, m: Facts) {
        let st = self.hosts.get_mut(host).expect("checked by handle");
        if st.facts.as_ref().map(|f| f.hash) != Some(m.hash) {
            self.events.push_back(RemoteEvent::FactsChanged {
                host: host.to_string(),
                hash: m.hash,
            });
        }
        st.facts = Some(m);
    }

    fn on_status(&mut self, now: Mono, host: &str, m: Status) {
        let st = self.hosts.get_mut(host).expect("checked by handle");
        if m.online {
            // An online status alone proves nothing about fresh readings; it only says which
            // session speaks. It is a session change like any other.
            let _ = self.track_session(now, host, m.session);
            return;
        }
        // A last will of a session we already left behind (the broker fires it late, after
        // the restarted agent connected) says nothing about the current agent.
        if st.session.is_none() || st.session == Some(m.session) {
            st.offline = true;
        }
    }

    /// The controller's inputs at `now`, and the transitions since the last call as events.
    pub fn view(&mut self, now: Mono) -> RemoteView {
        let mut view = RemoteView::default();
        for (host, st) in &mut self.hosts {
            if let Some(f) = &st.facts {
                view.statics
                    .extend(f.gpus.iter().map(|g| g.to_static(host)));
            }
            let lost = if let Some(c) = &st.conflict {
                Some(LostReason::DuplicateAgents {
                    sessions: c.sessions,
                })
            } else if st.offline {
                Some(LostReason::Offline)
            } else {
                match &st.latest {
                    None => Some(LostReason::NeverHeard),
                    Some((at, _)) if now.saturating_sub(*at) > self.cfg.stale_after => {
                        Some(LostReason::Stale {
                            silent_for: now.saturating_sub(*at),
                        })
                    }
                    Some((at, r)) => {
                        view.samples
                            .extend(r.gpus.iter().map(|g| g.to_sample(host, *at)));
                        None
                    }
                }
            };
            match (&st.lost, &lost) {
                (None, Some(reason)) => self.events.push_back(RemoteEvent::HostLost {
                    host: host.clone(),
                    reason: reason.clone(),
                }),
                (Some(_), None) => self
                    .events
                    .push_back(RemoteEvent::HostRecovered { host: host.clone() }),
                (Some(a), Some(b)) if std::mem::discriminant(a) != std::mem::discriminant(b) => {
                    self.events.push_back(RemoteEvent::HostLost {
                        host: host.clone(),
                        reason: b.clone(),
                    })
                }
                _ => {}
            }
            if let Some(reason) = &lost {
                view.lost.push((host.clone(), reason.clone()));
            }
            st.lost = lost;
        }
        view
    }
}

fn same_host(kind: Kind, topic_host: &str, payload_host: &str) -> Result<(), WireError> {
    if topic_host == payload_host {
        Ok(())
    } else {
        Err(WireError::BadText {
            kind,
            field: "host",
            problem: format!("is {payload_host:?} but the topic names {topic_host:?}"),
        })
    }
}
