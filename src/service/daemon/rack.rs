//! The tick's side of the rack: the GPUs of other hosts, heard over MQTT
//! (`link::mqtt::rack`), judged by the sans-IO remote source, and their power caps sent as
//! leases by the cap sender (`crate::remote`).
//!
//! - collect: the tick first waits, briefly, for the period's readings of every host that is
//!   online (`wait_round`); then every message received since the last tick goes to the
//!   remote source with its arrival time; its view gives the samples of trusted hosts, and an empty sample for each
//!   GPU of a lost host, so the core treats it as a lost input (the graded failsafe), exactly
//!   as a local GPU that fell off the bus;
//! - actuate: a power cap for a remote GPU goes to the cap sender; its outcome reaches the
//!   core when the agent's acknowledgement arrives (or as a failure once the cap went
//!   unacknowledged `retries_before_alarm` times);
//! - publish: the hosts' state for `/status`, and the rack's alarms;
//! - latency: how old each remote reading was when a tick first decided on it, and how long
//!   each cap lease waited for its acknowledgement (`RackLatency`, on `/status` and as
//!   Prometheus histograms on `/metrics`), so the rack's figures can be read from outside.

use super::tick::Now;
use crate::link::mqtt::rack::{RackLink, RackMessage};
use crate::model::{
    Actuation, ActuationError, ActuationOutcome, Alarm, AlarmEvent, AlarmTransition, GpuKey,
    GpuSample, GpuStatic, Mono, RackLatency, RackStatus, RemoteHostStatus, Severity, Source,
};
use crate::remote::{
    CapEvent, CapSender, LostReason, RackConfig, RemoteEvent, RemoteSource, RemoteView,
};
use crate::units::Watts;
use crate::wire::{self, CapAck, Kind, Refusal};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Counts the remote source keeps only in total, per host.
#[derive(Debug, Default, Clone, Copy)]
struct HostCounts {
    gaps: u64,
    missed: u64,
    replays: u64,
}

/// What the rack adds to one tick's inputs.
pub(super) struct RemoteInputs {
    /// Samples of trusted hosts (stamped with their arrival), and empty samples for the GPUs
    /// of lost hosts.
    pub(super) samples: Vec<GpuSample>,
    /// The remote GPUs' facts, when they changed since the last tick, with each GPU's
    /// original power limit as its agent recorded it.
    pub(super) statics_changed: Option<(Vec<GpuStatic>, Originals)>,
}

/// Each remote GPU's original power limit, from its agent's facts.
pub(super) type Originals = Vec<(GpuKey, Watts)>;

pub(super) struct Rack {
    source: RemoteSource,
    caps: CapSender,
    link: Option<RackLink>,
    /// Plant seconds per real second (`simulator.time_scale`), to turn a message's arrival
    /// instant into plant time.
    time_scale: f64,
    statics: Vec<GpuStatic>,
    per_host: BTreeMap<String, HostCounts>,
    /// Cap actuations handed to the cap sender and not yet answered.
    awaiting: BTreeMap<GpuKey, Actuation>,
    /// Hosts whose lease went unacknowledged past the alarm threshold.
    unacked: BTreeSet<String>,
    alarms: BTreeMap<String, Alarm>,
    outcomes: Vec<ActuationOutcome>,
    lost: Vec<(String, LostReason)>,
    latency: RackLatency,
    /// Messages `wait_round` took from the link, for `collect`.
    received: Vec<RackMessage>,
    /// When this tick's round of readings was complete, if that was after the tick began:
    /// the decision cannot come earlier.
    round_done: Option<Instant>,
    /// Per host, the instant its latest readings message came off the socket.
    arrived: BTreeMap<String, Instant>,
    /// Per host, the arrival of the last reading counted in `latency`, so that a reading a
    /// later tick decides on again (nothing newer arrived) is counted once.
    counted: BTreeMap<String, Mono>,
    /// Per host, the newest lease id and the tick that first sent it; an acknowledgement of
    /// that id measures decision → acknowledgement.
    lease_sent: BTreeMap<String, (u64, Mono)>,
}

impl Rack {
    /// A rack for `hosts` (never empty), talking through `link` when the sinks run.
    pub(super) fn new(
        cfg: &RackConfig,
        hosts: Vec<String>,
        link: Option<RackLink>,
        time_scale: f64,
    ) -> Rack {
        // Correlation ids start somewhere new each run, so that a restarted controller does
        // not take an acknowledgement meant for its previous run as its own.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (u64::from(std::process::id()) << 32);
        let per_host = hosts
            .iter()
            .map(|h| (h.clone(), HostCounts::default()))
            .collect();
        Rack {
            source: RemoteSource::new(cfg.remote(hosts)),
            caps: CapSender::new(cfg.caps(), seed),
            link,
            time_scale,
            statics: Vec::new(),
            per_host,
            awaiting: BTreeMap::new(),
            unacked: BTreeSet::new(),
            alarms: BTreeMap::new(),
            outcomes: Vec::new(),
            lost: Vec::new(),
            latency: RackLatency::default(),
            received: Vec::new(),
            round_done: None,
            arrived: BTreeMap::new(),
            counted: BTreeMap::new(),
            lease_sent: BTreeMap::new(),
        }
    }

    /// Whether `gpu` belongs to a host this rack hears.
    pub(super) fn owns(&self, gpu: &GpuKey) -> bool {
        self.per_host.contains_key(&gpu.host)
    }

    /// The remote GPUs' facts.
    pub(super) fn statics(&self) -> &[GpuStatic] {
        &self.statics
    }

    /// A reload changed the hosts: new ones start unheard; removed ones are forgotten, and
    /// the caps this controller holds on them are lifted (an empty lease), so that no cap of
    /// ours outlives our interest in a host until its lease runs out.
    pub(super) fn set_hosts(&mut self, hosts: Vec<String>) {
        let removed: Vec<String> = self
            .per_host
            .keys()
            .filter(|h| !hosts.contains(h))
            .cloned()
            .collect();
        for h in &removed {
            self.caps.set_caps(h, BTreeMap::new());
            tracing::info!(host = %h, "rack: host removed by a reload; its caps are lifted");
        }
        self.source.set_hosts(&hosts);
        self.per_host.retain(|h, _| hosts.contains(h));
        for h in &hosts {
            self.per_host.entry(h.clone()).or_default();
        }
        self.awaiting.retain(|k, _| hosts.contains(&k.host));
        self.unacked.retain(|h| hosts.contains(h));
        self.counted.retain(|h, _| hosts.contains(h));
        self.arrived.retain(|h, _| hosts.contains(h));
        self.lease_sent.retain(|h, _| hosts.contains(h));
    }

    /// Waits until every online host's readings arrived since the last tick, or `bound`
    /// past the tick's start, whichever comes first. The tick falls `rack.decide_offset_ms`
    /// after the boundary the agents publish on (`remote::phase`); a reading that the broker
    /// or a busy machine delays past it would otherwise wait a whole period. Hosts already
    /// lost are not waited for, and the bound keeps a host that just fell silent from
    /// holding the tick longer than that.
    pub(super) async fn wait_round(&mut self, now: &Now, bound: Duration) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        self.received.extend(link.drain());
        let mut missing: BTreeSet<&str> = self
            .source
            .hosts()
            .filter(|h| h.lost.is_none() && h.last_arrival.is_some())
            .map(|h| h.host)
            .collect();
        for m in &self.received {
            if m.kind == Kind::Readings {
                missing.remove(m.host.as_str());
            }
        }
        let deadline = tokio::time::Instant::from_std(now.started + bound);
        let mut last = None;
        while !missing.is_empty() {
            let Some(m) = link.recv_until(deadline).await else {
                break;
            };
            if m.kind == Kind::Readings {
                missing.remove(m.host.as_str());
            }
            last = Some(m.at);
            self.received.push(m);
        }
        self.round_done = last.filter(|at| *at > now.started);
    }

    /// The collect step's part: feeds every message received since the last tick to the
    /// remote source and the cap sender, then takes the source's view at `now`.
    pub(super) fn collect(&mut self, now: Now) -> RemoteInputs {
        let mut messages = std::mem::take(&mut self.received);
        messages.extend(self.link.as_mut().map(|l| l.drain()).unwrap_or_default());
        for m in messages {
            if m.kind == Kind::Readings {
                self.arrived.insert(m.host.clone(), m.at);
            }
            let at = self.arrival(&now, m.at);
            match m.kind {
                Kind::Acks => self.on_ack(at, &m.host, &m.payload),
                kind => self.source.handle(at, &m.host, kind, &m.payload),
            }
        }
        let view = self.source.view(now.mono);
        self.count_reading_ages(&now);
        self.drain_remote_events();
        self.drain_cap_events(now.mono);
        self.inputs(now.mono, view)
    }

    /// Records, for each host whose latest reading this tick decides on for the first time,
    /// its age since arrival (controller clock) and since the agent sent it (wall clocks).
    /// The decision is taken to be the tick's start, or the arrival that completed the round
    /// when the tick waited for it: the steps read no clock, and the decision follows within
    /// the tick's own duration (`coolantd_tick_duration_seconds`).
    fn count_reading_ages(&mut self, now: &Now) {
        let decided = self.round_done.take().unwrap_or(now.started);
        let waited = decided.saturating_duration_since(now.started);
        let wall_ms = (now.wall + waited)
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        for h in self.source.hosts() {
            let Some(arrival) = h.last_arrival else {
                continue;
            };
            if self.counted.get(h.host) == Some(&arrival) {
                continue;
            }
            self.counted.insert(h.host.to_string(), arrival);
            // From the instant the message came off the socket where it is known (the plant
            // time of a late one is clamped to the tick's), on the real clock.
            let age = match self.arrived.get(h.host) {
                Some(at) => decided.saturating_duration_since(*at).as_secs_f64(),
                None => now.mono.saturating_sub(arrival).as_secs_f64() / self.time_scale,
            };
            self.latency.reading_age.observe_ms(age * 1e3);
            // An agent that does not stamp its readings (0) says nothing about the delay.
            if let Some(sent) = h.last_sent_unix_ms.filter(|&ms| ms > 0) {
                self.latency.reading_delay.observe_ms(wall_ms - sent as f64);
            }
        }
    }

    /// The plant time a message arrived at: the tick's plant time less the real time since,
    /// scaled like the plant.
    fn arrival(&self, now: &Now, at: Instant) -> Mono {
        let ago = now.started.saturating_duration_since(at);
        now.mono.saturating_sub(ago.mul_f64(self.time_scale))
    }

    fn on_ack(&mut self, at: Mono, host: &str, payload: &[u8]) {
        if !self.per_host.contains_key(host) {
            // Counted with the unknown hosts' other messages.
            self.source.handle(at, host, Kind::Acks, payload);
            return;
        }
        match wire::decode::<CapAck>(payload) {
            Ok(ack) if ack.host == host => {
                // Only the first acknowledgement of the newest lease counts; a stale or
                // repeated one leaves the figure alone.
                if self
                    .lease_sent
                    .get(host)
                    .is_some_and(|(id, _)| *id == ack.id)
                {
                    if let Some((_, sent)) = self.lease_sent.remove(host) {
                        let waited = at.saturating_sub(sent).as_secs_f64() / self.time_scale;
                        self.latency.cap_ack.observe_ms(waited * 1e3);
                    }
                }
                self.caps.handle_ack(at, &ack)
            }
            Ok(ack) => crate::log_limited!(
                warn,
                "rack: a cap acknowledgement names another host than its topic; refused",
                topic_host = host,
                payload_host = %ack.host
            ),
            Err(e) => crate::log_limited!(
                warn,
                "rack: a cap acknowledgement was refused",
                host = host,
                error = %e
            ),
        }
    }

    fn inputs(&mut self, now: Mono, view: RemoteView) -> RemoteInputs {
        let statics_changed = (view.statics != self.statics).then(|| {
            tracing::info!(
                gpus = view.statics.len(),
                "rack: the remote GPUs' facts changed"
            );
            self.statics = view.statics.clone();
            (view.statics.clone(), self.source.original_limits())
        });
        let mut samples = view.samples;
        // A lost host's GPUs get an empty sample: the core's lost-input path, the same one a
        // local GPU that stopped answering takes, and within the same number of ticks.
        for (host, _) in &view.lost {
            for st in self.statics.iter().filter(|s| &s.key.host == host) {
                samples.push(GpuSample::empty(st.key.clone(), Source::Remote, now));
            }
        }
        self.lost = view.lost;
        RemoteInputs {
            samples,
            statics_changed,
        }
    }

    fn drain_remote_events(&mut self) {
        while let Some(e) = self.source.poll_event() {
            match &e {
                RemoteEvent::SequenceGap { host, missed } => {
                    if let Some(c) = self.per_host.get_mut(host) {
                        c.gaps += 1;
                        c.missed += missed;
                    }
                    crate::log_limited!(warn, "rack: readings were lost on the way", host = %host, missed = missed);
                }
                RemoteEvent::Replay { host, seq } => {
                    if let Some(c) = self.per_host.get_mut(host) {
                        c.replays += 1;
                    }
                    crate::log_limited!(warn, "rack: a replayed reading was ignored", host = %host, seq = seq);
                }
                RemoteEvent::Refused { host, kind, error } => {
                    crate::log_limited!(warn, "rack: a message was refused", host = %host, kind = %kind, error = %error);
                }
                RemoteEvent::HostLost { host, reason } => {
                    tracing::warn!(host = %host, reason = %reason, "rack: host's GPUs are lost inputs")
                }
                RemoteEvent::HostRestarted { host, .. } | RemoteEvent::HostRecovered { host } => {
                    tracing::info!(host = %host, event = ?e, "rack: host back; its caps are sent again under a new lease");
                    self.caps.resend(host);
                }
                RemoteEvent::DuplicateHost { host, sessions } => {
                    tracing::error!(host = %host, sessions = ?sessions, "rack: two agents claim one host; neither is trusted")
                }
                other => tracing::info!(event = ?other, "rack"),
            }
        }
    }

    fn drain_cap_events(&mut self, now: Mono) {
        while let Some(e) = self.caps.poll_event() {
            match e {
                CapEvent::Acknowledged {
                    host,
                    id,
                    enforced,
                    dry_run,
                } => {
                    tracing::debug!(host = %host, id, "rack: cap lease acknowledged");
                    for (index, _) in enforced {
                        let key = GpuKey {
                            host: host.clone(),
                            index,
                        };
                        if let Some(a) = self.awaiting.remove(&key) {
                            self.outcomes.push(ActuationOutcome {
                                actuation: a,
                                at: now,
                                result: Ok(()),
                                dry_run,
                            });
                        }
                    }
                }
                CapEvent::Refused {
                    host,
                    id,
                    index,
                    refusal,
                    detail,
                } => {
                    let key = GpuKey { host, index };
                    let why = format!("the agent refused cap lease {id}: {refusal}: {detail}");
                    tracing::warn!(gpu = %key, "{why}");
                    if let Some(a) = self.awaiting.remove(&key) {
                        let result = if refusal == Refusal::Failed {
                            Err(ActuationError::Failed(why))
                        } else {
                            Err(ActuationError::NotSupported(why))
                        };
                        self.outcomes.push(ActuationOutcome {
                            actuation: a,
                            at: now,
                            result,
                            dry_run: false,
                        });
                    }
                }
                CapEvent::Retry { host, id, attempt } => {
                    tracing::info!(host = %host, id, attempt, "rack: cap lease unacknowledged, sent again")
                }
                CapEvent::Unacknowledged { host, id, attempts } => {
                    tracing::error!(host = %host, id, attempts, "rack: cap lease unacknowledged; still retrying");
                    let why = format!(
                        "no acknowledgement from {host} after {attempts} sends of cap lease {id}"
                    );
                    let keys: Vec<GpuKey> = self
                        .awaiting
                        .keys()
                        .filter(|k| k.host == host)
                        .cloned()
                        .collect();
                    for k in keys {
                        if let Some(a) = self.awaiting.remove(&k) {
                            self.outcomes.push(ActuationOutcome {
                                actuation: a,
                                at: now,
                                result: Err(ActuationError::Failed(why.clone())),
                                dry_run: false,
                            });
                        }
                    }
                    self.unacked.insert(host);
                }
                CapEvent::AcknowledgedAgain { host } => {
                    tracing::info!(host = %host, "rack: cap leases acknowledged again");
                    self.unacked.remove(&host);
                }
                CapEvent::UnknownAck { host, id } => crate::log_limited!(
                    warn,
                    "rack: an acknowledgement of a lease this controller never sent",
                    host = %host,
                    id = id
                ),
            }
        }
    }

    /// The actuate step's part: a cap for a remote GPU, to its agent. Its outcome comes
    /// with the acknowledgement.
    pub(super) fn set_cap(&mut self, a: &Actuation) {
        if let Actuation::SetPowerCap { gpu, limit } = a {
            self.caps.set_cap(gpu, *limit);
            self.awaiting.insert(gpu.clone(), a.clone());
        }
    }

    /// Publishes the leases due at `now`: new or changed caps, retries, renewals.
    pub(super) fn transmit(&mut self, now: Mono) {
        for lease in self.caps.poll_transmit(now) {
            // A retry keeps its id and so its first send: the figure includes retries.
            if self.lease_sent.get(&lease.host).map(|(id, _)| *id) != Some(lease.id) {
                self.lease_sent.insert(lease.host.clone(), (lease.id, now));
            }
            match wire::encode(&lease) {
                Ok(bytes) => match &self.link {
                    Some(l) => l.send_caps(&lease.host, bytes),
                    None => crate::log_limited!(
                        warn,
                        "rack: no MQTT session to send a cap lease through",
                        host = %lease.host
                    ),
                },
                Err(e) => {
                    tracing::error!(host = %lease.host, error = %e, "rack: cannot encode a cap lease")
                }
            }
        }
    }

    /// Outcomes of remote caps that became known this tick.
    pub(super) fn take_outcomes(&mut self) -> Vec<ActuationOutcome> {
        std::mem::take(&mut self.outcomes)
    }

    /// The rack's alarms at `now`: a lost host, two agents for one host, a cap lease
    /// unacknowledged. Returns this tick's transitions; [`Rack::active`] the alarms.
    pub(super) fn alarms(&mut self, now: Mono) -> Vec<AlarmEvent> {
        // What this tick's transmit found (a lease past its last retry) alarms in this tick.
        self.drain_cap_events(now);
        let mut present: BTreeMap<String, (Severity, String)> = BTreeMap::new();
        for (host, reason) in &self.lost {
            let (id, severity) = match reason {
                LostReason::DuplicateAgents { .. } => {
                    (format!("rack_host_duplicate:{host}"), Severity::Critical)
                }
                _ => (format!("rack_host_lost:{host}"), Severity::Warning),
            };
            present.insert(
                id,
                (
                    severity,
                    format!("{host}: its GPUs are lost inputs: {reason}"),
                ),
            );
        }
        for host in &self.unacked {
            present.insert(
                format!("rack_cap_unacknowledged:{host}"),
                (
                    Severity::Warning,
                    format!("{host}: its agent does not acknowledge power caps; still retrying"),
                ),
            );
        }
        let mut events = Vec::new();
        let gone: Vec<String> = self
            .alarms
            .keys()
            .filter(|id| !present.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(mut a) = self.alarms.remove(&id) {
                a.cause_present = false;
                events.push(AlarmEvent {
                    alarm: a,
                    transition: AlarmTransition::Cleared,
                    at: now,
                });
            }
        }
        for (id, (severity, message)) in present {
            let raised_at = self.alarms.get(&id).map(|a| a.raised_at);
            let alarm = Alarm {
                id: id.clone(),
                severity,
                message,
                raised_at: raised_at.unwrap_or(now),
                latched: false,
                acknowledged: false,
                cause_present: true,
                causes: Vec::new(),
            };
            if raised_at.is_none() {
                events.push(AlarmEvent {
                    alarm: alarm.clone(),
                    transition: AlarmTransition::Raised,
                    at: now,
                });
            }
            self.alarms.insert(id, alarm);
        }
        events
    }

    pub(super) fn active(&self) -> impl Iterator<Item = &Alarm> {
        self.alarms.values()
    }

    /// Every remote host's state, for `/status`.
    pub(super) fn status(&self, now: Mono) -> RackStatus {
        let c = self.source.counters();
        let k = self.caps.counters();
        RackStatus {
            connected: self.link.as_ref().is_some_and(|l| l.stats().connected),
            hosts: self
                .source
                .hosts()
                .map(|h| {
                    let counts = self.per_host.get(h.host).copied().unwrap_or_default();
                    RemoteHostStatus {
                        host: h.host.to_string(),
                        online: h.lost.is_none(),
                        lost: h.lost.map(|r| r.to_string()),
                        last_seq: h.last_seq,
                        age_s: h
                            .last_arrival
                            .map(|at| now.saturating_sub(at).as_secs_f64()),
                        gaps: counts.gaps,
                        missed: counts.missed,
                        replays: counts.replays,
                        gpus: h.gpus,
                        caps_pending: self.caps.pending(h.host),
                        caps_acked_w: self
                            .caps
                            .held(h.host)
                            .map(|m| m.iter().map(|(i, w)| (*i, w.get())).collect())
                            .unwrap_or_default(),
                    }
                })
                .collect(),
            unknown_host_messages: c.unknown_host,
            refused_messages: c.refused,
            caps_sent: k.sent,
            caps_retries: k.retries,
            caps_acks: k.acks,
            latency: self.latency.clone(),
        }
    }

    /// A clean stop releases this controller's caps (an empty lease to each host holding
    /// some), so the agents' guards take over now rather than when the leases run out.
    pub(super) async fn shutdown(&mut self) {
        let releases: Vec<(String, Vec<u8>)> = self
            .caps
            .release_all()
            .into_iter()
            .filter_map(|l| wire::encode(&l).ok().map(|b| (l.host, b)))
            .collect();
        if !releases.is_empty() {
            tracing::info!(
                hosts = releases.len(),
                "rack: releasing the caps held on the agents"
            );
        }
        if let Some(l) = self.link.take() {
            l.shutdown(releases).await;
        }
    }
}
