//! The controller's remote GPU source and cap sender driven through simulated time with real
//! encoded wire messages: agents with clocks off, lost and replayed messages, last wills,
//! restarts, two agents claiming one host, unacknowledged caps, lease renewal, and one round
//! trip through the agent's lease handling.

use coolantd::agent::{AgentConfig, AgentCore, GpuLimits, GuardParams};
use coolantd::model::Mono;
use coolantd::remote::caps::{CapEvent, CapSender, CapSenderConfig};
use coolantd::remote::{LostReason, RemoteConfig, RemoteEvent, RemoteSource};
use coolantd::units::{Celsius, Watts};
use coolantd::wire::{
    self, CapAck, CapLease, Facts, GpuFacts, GpuReading, Kind, Readings, Refusal, Status, Version,
};
use std::collections::BTreeMap;
use std::time::Duration;

fn ms(v: u64) -> Mono {
    Duration::from_millis(v)
}

const STALE: Duration = Duration::from_millis(3000);
const CLEAR: Duration = Duration::from_millis(10_000);

fn source(hosts: &[&str]) -> RemoteSource {
    RemoteSource::new(RemoteConfig {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        stale_after: STALE,
        conflict_clear_after: CLEAR,
    })
}

/// A stand-in for one agent's publishing side: real wire encodings of its messages.
struct FakeAgent {
    host: String,
    session: u64,
    seq: u64,
    /// The agent's wall clock, ms since the epoch: only ever data on the wire.
    wall_ms: u64,
}

impl FakeAgent {
    fn new(host: &str, session: u64, wall_ms: u64) -> FakeAgent {
        FakeAgent {
            host: host.into(),
            session,
            seq: 0,
            wall_ms,
        }
    }

    fn readings(&mut self, core: f32) -> Vec<u8> {
        self.seq += 1;
        self.readings_seq(self.seq, core)
    }

    fn readings_seq(&self, seq: u64, core: f32) -> Vec<u8> {
        let r = Readings {
            v: None,
            host: self.host.clone(),
            session: self.session,
            seq,
            sent_unix_ms: self.wall_ms + seq * 1000,
            facts_hash: 1,
            gpus: (0..8)
                .map(|i| GpuReading {
                    index: i,
                    core_c: Some(core),
                    hbm_c: Some(core + 5.0),
                    power_w: Some(600.0),
                    limit_w: Some(700.0),
                    throttle: Some(0),
                    energy_mj: Some(1000),
                })
                .collect(),
        };
        wire::encode(&r).expect("valid readings")
    }

    fn status(&self, online: bool) -> Vec<u8> {
        wire::encode(&Status {
            v: None,
            host: self.host.clone(),
            session: self.session,
            online,
            sent_unix_ms: self.wall_ms,
        })
        .expect("valid status")
    }

    fn facts(&self, slowdown: f32) -> Vec<u8> {
        let gpus = (0..8)
            .map(|i| GpuFacts {
                index: i,
                uuid: format!("GPU-{i:08x}"),
                board: "NVIDIA H200".into(),
                profile: "h200-sxm".into(),
                slowdown_c: slowdown,
                shutdown_c: 92.0,
                gpu_max_c: 87.0,
                hbm_max_c: 95.0,
                power_min_w: 200.0,
                power_max_w: 700.0,
                power_default_w: 700.0,
                original_limit_w: 700.0,
            })
            .collect();
        wire::encode(&Facts::new(&self.host, self.session, gpus)).expect("valid facts")
    }
}

fn events(src: &mut RemoteSource) -> Vec<RemoteEvent> {
    std::iter::from_fn(|| src.poll_event()).collect()
}

fn lost_reason(src: &mut RemoteSource, now: Mono, host: &str) -> Option<LostReason> {
    src.view(now)
        .lost
        .into_iter()
        .find(|(h, _)| h == host)
        .map(|(_, r)| r)
}

#[test]
fn an_agent_clock_ten_minutes_off_changes_nothing() {
    let mut src = source(&["ahead", "behind", "true"]);
    let now_wall = 1_764_000_000_000;
    let mut ahead = FakeAgent::new("ahead", 1, now_wall + 600_000);
    let mut behind = FakeAgent::new("behind", 2, now_wall - 600_000);
    let mut exact = FakeAgent::new("true", 3, now_wall);
    for tick in 0..5u64 {
        let t = ms(tick * 1000);
        src.handle(t, "ahead", Kind::Readings, &ahead.readings(60.0));
        src.handle(t, "behind", Kind::Readings, &behind.readings(60.0));
        src.handle(t, "true", Kind::Readings, &exact.readings(60.0));
        let view = src.view(t);
        assert!(view.lost.is_empty(), "tick {tick}: {:?}", view.lost);
        assert_eq!(view.samples.len(), 24);
        // Every sample carries the arrival time, whatever the sender's clock said.
        assert!(view.samples.iter().all(|s| s.at == t));
    }
    // Silence: all three go stale at the same tick, by arrival time alone.
    let last = ms(4000);
    for tick in 5..10u64 {
        let t = ms(tick * 1000);
        let lost = src.view(t).lost;
        let expect = if t.saturating_sub(last) > STALE { 3 } else { 0 };
        assert_eq!(lost.len(), expect, "tick {tick}");
    }
}

#[test]
fn sequence_gaps_and_replays_are_counted_and_replays_ignored() {
    let mut src = source(&["n1"]);
    let a = FakeAgent::new("n1", 7, 0);
    src.handle(ms(0), "n1", Kind::Readings, &a.readings_seq(1, 60.0));
    src.handle(ms(1000), "n1", Kind::Readings, &a.readings_seq(2, 61.0));
    src.handle(ms(2000), "n1", Kind::Readings, &a.readings_seq(5, 62.0));
    src.handle(ms(2100), "n1", Kind::Readings, &a.readings_seq(5, 99.0));
    src.handle(ms(2200), "n1", Kind::Readings, &a.readings_seq(3, 99.0));
    let c = src.counters().clone();
    assert_eq!((c.gaps, c.missed, c.replays), (1, 2, 2));
    let ev = events(&mut src);
    assert!(ev.contains(&RemoteEvent::SequenceGap {
        host: "n1".into(),
        missed: 2
    }));
    assert!(ev.contains(&RemoteEvent::Replay {
        host: "n1".into(),
        seq: 3
    }));
    // The replayed readings did not replace the latest ones.
    let view = src.view(ms(2300));
    assert_eq!(view.samples[0].core, Some(Celsius(62.0)));
    assert_eq!(view.samples[0].at, ms(2000));
}

#[test]
fn a_last_will_makes_the_hosts_gpus_lost_inputs_until_readings_return() {
    let mut src = source(&["n1"]);
    let mut a = FakeAgent::new("n1", 7, 0);
    src.handle(ms(0), "n1", Kind::Status, &a.status(true));
    src.handle(ms(0), "n1", Kind::Readings, &a.readings(60.0));
    assert!(src.view(ms(100)).lost.is_empty());
    let _ = events(&mut src);
    // The broker publishes the agent's last will.
    src.handle(ms(500), "n1", Kind::Status, &a.status(false));
    let view = src.view(ms(500));
    assert!(view.samples.is_empty(), "no sample from an offline host");
    assert_eq!(view.lost, vec![("n1".to_string(), LostReason::Offline)]);
    assert_eq!(
        events(&mut src),
        vec![RemoteEvent::HostLost {
            host: "n1".into(),
            reason: LostReason::Offline
        }]
    );
    // The agent is back (same session: a reconnect) and publishes again.
    src.handle(ms(2000), "n1", Kind::Readings, &a.readings(60.0));
    assert!(src.view(ms(2000)).lost.is_empty());
    assert!(events(&mut src).contains(&RemoteEvent::HostRecovered { host: "n1".into() }));
}

#[test]
fn a_restart_is_recognised_and_the_old_sessions_late_will_is_ignored() {
    let mut src = source(&["n1"]);
    let mut old = FakeAgent::new("n1", 100, 0);
    for t in 0..3 {
        src.handle(ms(t * 1000), "n1", Kind::Readings, &old.readings(60.0));
    }
    // The agent crashed and restarted: a new session counting from 1 again.
    let mut new = FakeAgent::new("n1", 200, 0);
    src.handle(ms(3000), "n1", Kind::Status, &new.status(true));
    // Between its status and its first readings, the old session's fresh readings still
    // count: a restart alone makes no lost input.
    assert!(src.view(ms(3000)).lost.is_empty());
    src.handle(ms(3000), "n1", Kind::Readings, &new.readings(61.0));
    assert_eq!(src.counters().restarts, 1);
    assert_eq!(
        src.counters().replays,
        0,
        "seq 1 of a new session is no replay"
    );
    assert!(events(&mut src).contains(&RemoteEvent::HostRestarted {
        host: "n1".into(),
        old_session: 100,
        new_session: 200
    }));
    // The broker fires the crashed session's last will only after its keep-alive ran out.
    src.handle(ms(3500), "n1", Kind::Status, &old.status(false));
    assert!(
        src.view(ms(3500)).lost.is_empty(),
        "the old session's will is not ours"
    );
    src.handle(ms(4000), "n1", Kind::Readings, &new.readings(61.0));
    let view = src.view(ms(4000));
    assert!(view.lost.is_empty(), "{:?}", view.lost);
    assert_eq!(view.samples.len(), 8);
}

#[test]
fn two_agents_claiming_one_host_raise_an_alarm_and_neither_is_trusted() {
    let mut src = source(&["n1"]);
    let mut a = FakeAgent::new("n1", 1, 0);
    let mut b = FakeAgent::new("n1", 2, 0);
    src.handle(ms(0), "n1", Kind::Readings, &a.readings(60.0));
    // b looks like a restart at first ...
    src.handle(ms(500), "n1", Kind::Readings, &b.readings(60.0));
    // ... until a speaks again.
    src.handle(ms(1000), "n1", Kind::Readings, &a.readings(60.0));
    assert!(events(&mut src).contains(&RemoteEvent::DuplicateHost {
        host: "n1".into(),
        sessions: [2, 1]
    }));
    assert_eq!(src.counters().duplicate_host_alarms, 1);
    // Interleaving goes on: the host stays lost whatever either says.
    for t in 1..8u64 {
        src.handle(ms(t * 1000), "n1", Kind::Readings, &a.readings(60.0));
        src.handle(ms(t * 1000 + 500), "n1", Kind::Readings, &b.readings(60.0));
        let view = src.view(ms(t * 1000 + 500));
        assert!(view.samples.is_empty());
        assert!(matches!(view.lost[0].1, LostReason::DuplicateAgents { .. }));
    }
    // a is stopped; b alone for `conflict_clear_after` clears the alarm.
    let mut cleared_at = None;
    for t in 8..30u64 {
        let now = ms(t * 1000 + 500);
        src.handle(now, "n1", Kind::Readings, &b.readings(60.0));
        if events(&mut src).contains(&RemoteEvent::DuplicateHostCleared { host: "n1".into() }) {
            cleared_at = Some(now);
            break;
        }
    }
    // The last switch to b was at 7.5 s; cleared at the first reading 10 s after.
    assert_eq!(cleared_at, Some(ms(17_500)));
    src.handle(ms(18_500), "n1", Kind::Readings, &b.readings(60.0));
    assert_eq!(src.view(ms(18_500)).samples.len(), 8);
    // a comes back: the alarm returns.
    src.handle(ms(19_000), "n1", Kind::Readings, &a.readings(60.0));
    assert_eq!(src.counters().duplicate_host_alarms, 2);
}

#[test]
fn silence_beyond_the_staleness_bound_makes_gpus_lost_once() {
    let mut src = source(&["n1"]);
    let mut a = FakeAgent::new("n1", 1, 0);
    src.handle(ms(0), "n1", Kind::Readings, &a.readings(60.0));
    let _ = src.view(ms(0));
    let _ = events(&mut src);
    let mut lost_ticks = Vec::new();
    for t in 1..=6u64 {
        let now = ms(t * 1000);
        if lost_reason(&mut src, now, "n1").is_some() {
            lost_ticks.push(t);
        }
    }
    // Stale strictly after 3 s: ticks 4, 5, 6.
    assert_eq!(lost_ticks, vec![4, 5, 6]);
    let lost_events: Vec<_> = events(&mut src)
        .into_iter()
        .filter(|e| matches!(e, RemoteEvent::HostLost { .. }))
        .collect();
    assert_eq!(
        lost_events.len(),
        1,
        "one alarm per transition, not per tick"
    );
}

#[test]
fn unknown_hosts_are_ignored_and_counted_and_bad_messages_refused() {
    let mut src = source(&["n1"]);
    let mut x = FakeAgent::new("intruder", 1, 0);
    src.handle(ms(0), "intruder", Kind::Readings, &x.readings(60.0));
    assert_eq!(src.counters().unknown_host, 1);
    assert!(src.view(ms(0)).samples.is_empty());

    // Readings for n1 that claim another host inside.
    src.handle(ms(0), "n1", Kind::Readings, &x.readings(60.0));
    // Another major.
    let mut r: Readings = wire::decode(&x.readings(60.0)).expect("decodes");
    r.host = "n1".into();
    r.v = Some(Version { major: 2, minor: 0 });
    src.handle(
        ms(0),
        "n1",
        Kind::Readings,
        &prost::Message::encode_to_vec(&r),
    );
    // Garbage.
    src.handle(ms(0), "n1", Kind::Facts, &[0xff, 0xff, 0xff]);
    assert_eq!(src.counters().refused, 3);
    let refused: Vec<String> = events(&mut src)
        .into_iter()
        .filter_map(|e| match e {
            RemoteEvent::Refused { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert!(refused[0].contains("topic names \"n1\""), "{}", refused[0]);
    assert!(refused[1].contains("v2.0"), "{}", refused[1]);
}

#[test]
fn facts_become_statics_and_changes_are_reported_once() {
    let mut src = source(&["n1"]);
    let a = FakeAgent::new("n1", 1, 0);
    src.handle(ms(0), "n1", Kind::Facts, &a.facts(89.0));
    src.handle(ms(10), "n1", Kind::Facts, &a.facts(89.0));
    src.handle(ms(20), "n1", Kind::Facts, &a.facts(88.0));
    let changes = events(&mut src)
        .into_iter()
        .filter(|e| matches!(e, RemoteEvent::FactsChanged { .. }))
        .count();
    assert_eq!(changes, 2);
    let view = src.view(ms(30));
    assert_eq!(view.statics.len(), 8);
    assert_eq!(view.statics[0].slowdown, Celsius(88.0));
    assert_eq!(view.statics[0].key.host, "n1");
    // Facts alone make no sample: the host is still lost until readings come.
    assert_eq!(view.lost, vec![("n1".to_string(), LostReason::NeverHeard)]);
}

fn sender() -> CapSender {
    CapSender::new(
        CapSenderConfig {
            lease: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(2),
            alarm_after: 3,
            renew_before: Duration::from_secs(3),
        },
        1000,
    )
}

fn caps(v: f64) -> BTreeMap<u32, Watts> {
    (0..8).map(|i| (i, Watts(v))).collect()
}

fn ack_of(lease: &CapLease) -> CapAck {
    CapAck {
        v: None,
        host: lease.host.clone(),
        session: 5,
        id: lease.id,
        dry_run: false,
        results: lease
            .caps
            .iter()
            .map(|c| wire::CapResult::enforced(c.index, Watts(f64::from(c.limit_w))))
            .collect(),
    }
}

#[test]
fn an_unacknowledged_cap_is_retried_then_alarmed_and_the_alarm_clears_on_ack() {
    let mut s = sender();
    s.set_caps("n1", caps(400.0));
    let mut sends = Vec::new();
    let mut alarm_tick = None;
    for t in 0..=8u64 {
        let now = ms(t * 1000);
        for l in s.poll_transmit(now) {
            sends.push((t, l.id));
        }
        while let Some(e) = s.poll_event() {
            if matches!(e, CapEvent::Unacknowledged { attempts: 3, .. }) {
                alarm_tick.get_or_insert(t);
            }
        }
    }
    // Sent at 0, then every 2 s without ack, always the same id.
    assert_eq!(
        sends,
        vec![(0, 1000), (2, 1000), (4, 1000), (6, 1000), (8, 1000)]
    );
    // Three sends unacknowledged at t = 6 s: alarm, once.
    assert_eq!(alarm_tick, Some(6));
    assert_eq!(s.counters().retries, 4);
    // A late ack of an earlier copy (same id) counts.
    let lease = CapLease {
        v: None,
        host: "n1".into(),
        id: 1000,
        lease_ms: 10_000,
        caps: vec![],
    };
    s.handle_ack(ms(8500), &ack_of(&lease));
    let ev: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert_eq!(ev[0], CapEvent::AcknowledgedAgain { host: "n1".into() });
    assert!(matches!(ev[1], CapEvent::Acknowledged { id: 1000, .. }));
    assert_eq!(s.held("n1"), Some(&caps(400.0)));
    // The agent may have started the lease with the first copy at 0 s, so it ends at 10 s
    // at the earliest: the renewal (a new id) is due 3 s before, already at 9 s.
    let renewal = s.poll_transmit(ms(9000));
    assert_eq!(renewal.len(), 1);
    assert_eq!(renewal[0].id, 1001);
}

#[test]
fn held_caps_are_renewed_before_the_lease_ends() {
    let mut s = sender();
    s.set_caps("n1", caps(400.0));
    let first = s.poll_transmit(ms(0)).remove(0);
    s.handle_ack(ms(100), &ack_of(&first));
    let mut renewals = Vec::new();
    for t in 1..=20u64 {
        let now = ms(t * 1000);
        for l in s.poll_transmit(now) {
            renewals.push((t, l.id));
            s.handle_ack(now + ms(50), &ack_of(&l));
        }
    }
    // Lease 10 s from the first send, renewed 3 s before: at 7 s, then 14 s (7 s after 7).
    assert_eq!(renewals, vec![(7, 1001), (14, 1002)]);
}

#[test]
fn acks_for_unknown_or_superseded_ids_are_ignored_and_counted() {
    let mut s = sender();
    s.set_caps("n1", caps(400.0));
    let first = s.poll_transmit(ms(0)).remove(0);
    // The controller changes its mind before the ack: a new id supersedes the first.
    s.set_caps("n1", caps(350.0));
    let second = s.poll_transmit(ms(100)).remove(0);
    assert_ne!(first.id, second.id);
    s.handle_ack(ms(200), &ack_of(&first));
    assert_eq!(s.counters().stale_acks, 1);
    assert_eq!(s.held("n1"), None);
    let mut bogus = ack_of(&second);
    bogus.id = 77;
    s.handle_ack(ms(200), &bogus);
    bogus.host = "stranger".into();
    s.handle_ack(ms(200), &bogus);
    assert_eq!(s.counters().unknown_acks, 2);
    s.handle_ack(ms(300), &ack_of(&second));
    assert_eq!(s.held("n1"), Some(&caps(350.0)));
}

/// One cap from the controller's sender to the agent's lease and back, every message through
/// its real encoding: a cap for a GPU that vanished comes back as a typed refusal.
#[test]
fn a_lease_round_trip_through_the_agent_with_a_vanished_gpu() {
    let mut s = sender();
    let mut want = caps(400.0);
    want.insert(9, Watts(400.0));
    s.set_caps("n1", want);
    let lease = s.poll_transmit(ms(0)).remove(0);
    let on_wire = wire::encode(&lease).expect("lease encodes");

    let limits = (0..8).map(|i| GpuLimits {
        index: i,
        power_min: Watts(200.0),
        power_max: Watts(700.0),
        original: Watts(700.0),
        slowdown: Celsius(89.0),
        hbm_max: Celsius(95.0),
    });
    let mut agent = AgentCore::new(
        AgentConfig {
            host: "n1".into(),
            session: 5,
            dry_run: false,
            guard: GuardParams::default(),
        },
        limits,
    );
    let received: CapLease = wire::decode(&on_wire).expect("lease decodes");
    let answer = agent.handle_lease(ms(40), &received);
    assert_eq!(answer.decisions.len(), 8);
    let read_back: Vec<_> = answer
        .decisions
        .iter()
        .map(|d| (d.index, Ok(d.limit)))
        .collect();
    let ack = agent.ack(received.id, &answer.refusals, &read_back);
    let ack: CapAck = wire::decode(&wire::encode(&ack).expect("ack encodes")).expect("decodes");

    s.handle_ack(ms(80), &ack);
    let ev: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(ev.contains(&CapEvent::Refused {
        host: "n1".into(),
        id: lease.id,
        index: 9,
        refusal: Refusal::UnknownGpu,
        detail: "this host has no GPU 9".into(),
    }));
    let enforced = ev
        .iter()
        .find_map(|e| match e {
            CapEvent::Acknowledged { enforced, .. } => Some(enforced.clone()),
            _ => None,
        })
        .expect("acknowledged");
    assert_eq!(enforced.len(), 8);
    assert!(enforced.iter().all(|(_, w)| *w == Watts(400.0)));
    // The vanished GPU is dropped: the held caps and the renewal name only the other eight.
    assert_eq!(s.held("n1").map(BTreeMap::len), Some(8));
    let renewal = s.poll_transmit(ms(8_000));
    assert_eq!(renewal.len(), 1, "{renewal:?}");
    assert!(renewal[0].caps.iter().all(|c| c.index < 8), "{renewal:?}");
}

#[test]
fn a_host_back_gets_its_caps_again_at_once_under_a_new_id() {
    let mut s = sender();
    s.set_caps("n1", caps(300.0));
    let first = s.poll_transmit(ms(0)).remove(0);
    s.handle_ack(ms(50), &ack_of(&first));
    assert!(s.poll_transmit(ms(1_000)).is_empty(), "held, not due");
    // The agent restarted (or came back after being lost): what it holds is unknown.
    s.resend("n1");
    let again = s.poll_transmit(ms(1_000));
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0].id, first.id, "a new id, not a replay");
    assert_eq!(again[0].caps, first.caps);
}

#[test]
fn a_clean_stop_releases_held_and_pending_caps_with_empty_leases() {
    let mut s = sender();
    s.set_caps("n1", caps(300.0));
    s.set_caps("n2", caps(250.0));
    s.set_caps("n3", BTreeMap::new());
    let sent = s.poll_transmit(ms(0));
    let n1 = sent.iter().find(|l| l.host == "n1").expect("n1 lease");
    s.handle_ack(ms(50), &ack_of(n1));
    // n1 holds caps, n2's wait for their ack, n3 has none: two releases.
    let releases = s.release_all();
    let hosts: Vec<&str> = releases.iter().map(|l| l.host.as_str()).collect();
    assert_eq!(hosts, ["n1", "n2"]);
    assert!(releases.iter().all(|l| l.caps.is_empty()));
    assert!(releases.iter().all(|l| sent.iter().all(|s| s.id != l.id)));
    assert!(
        s.poll_transmit(ms(60_000)).is_empty(),
        "nothing after a release"
    );
}

#[test]
fn hosts_are_added_and_removed_by_reload_and_others_keep_their_state() {
    let mut src = source(&["n1", "n2"]);
    let mut a = FakeAgent::new("n1", 1, 0);
    let mut b = FakeAgent::new("n2", 2, 0);
    let mut c = FakeAgent::new("n3", 3, 0);
    src.handle(ms(0), "n1", Kind::Readings, &a.readings(60.0));
    src.handle(ms(0), "n2", Kind::Readings, &b.readings(60.0));
    assert_eq!(src.view(ms(0)).samples.len(), 16);
    src.set_hosts(&["n1".to_string(), "n3".to_string()]);
    // n1 keeps its readings and sequence; n2 is now unknown; n3 is expected but unheard.
    let view = src.view(ms(100));
    assert_eq!(view.samples.len(), 8);
    assert_eq!(view.lost, vec![("n3".to_string(), LostReason::NeverHeard)]);
    src.handle(ms(1000), "n2", Kind::Readings, &b.readings(60.0));
    assert_eq!(src.counters().unknown_host, 1);
    src.handle(ms(1000), "n1", Kind::Readings, &a.readings(60.0));
    src.handle(ms(1000), "n3", Kind::Readings, &c.readings(60.0));
    assert_eq!(src.counters().gaps, 0);
    assert!(src.view(ms(1000)).lost.is_empty());
}

#[test]
fn a_failed_write_on_the_agent_is_sent_again_and_a_permanent_refusal_is_not() {
    let mut s = sender();
    s.set_caps("n1", caps(400.0));
    let first = s.poll_transmit(ms(0)).remove(0);
    let mut ack = ack_of(&first);
    ack.results[3] = wire::CapResult::refused(3, Refusal::Failed, "NVML timed out");
    ack.results[5] = wire::CapResult::refused(5, Refusal::NotSupported, "no setter");
    s.handle_ack(ms(100), &ack);
    assert!(
        s.poll_transmit(ms(1000)).is_empty(),
        "not before ack_timeout"
    );
    let again = s.poll_transmit(ms(2100));
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].id, first.id);
    assert_eq!(s.counters().retries, 1);
    // This time only the permanent refusal comes back: nothing more is sent.
    let mut ack = ack_of(&again[0]);
    ack.results[5] = wire::CapResult::refused(5, Refusal::NotSupported, "no setter");
    s.handle_ack(ms(2200), &ack);
    assert!(s.poll_transmit(ms(4500)).is_empty());
    assert_eq!(s.counters().refusals, 3);
}
