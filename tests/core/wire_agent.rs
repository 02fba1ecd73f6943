//! The agent's lease and local thermal guard driven through simulated time: a GPU at
//! slowdown capped in the same tick with no network, caps raised back at a bounded rate,
//! lease expiry handing over to the guard without dropping the cap, renewals, refusals,
//! dry-run, and the board's range never left.

use coolantd::agent::{
    AgentConfig, AgentCore, AgentEvent, Cause, GpuLimits, GuardParams, LocalReading,
};
use coolantd::model::{ActuationError, Mono};
use coolantd::units::{Celsius, Watts};
use coolantd::wire::{Cap, CapLease, Refusal};
use proptest::prelude::*;
use std::time::Duration;

const MIN: f64 = 200.0;
const MAX: f64 = 700.0;
const ORIGINAL: f64 = 700.0;
const SLOWDOWN: f64 = 89.0;

fn s(v: u64) -> Mono {
    Duration::from_secs(v)
}

fn agent(dry_run: bool, gpus: u32) -> AgentCore {
    AgentCore::new(
        AgentConfig {
            host: "n1".into(),
            session: 1,
            dry_run,
            guard: GuardParams::default(),
        },
        (0..gpus).map(|i| GpuLimits {
            index: i,
            power_min: Watts(MIN),
            power_max: Watts(MAX),
            original: Watts(ORIGINAL),
            slowdown: Celsius(SLOWDOWN),
            hbm_max: Celsius(95.0),
        }),
    )
}

fn reading(index: u32, core: f64, power: f64) -> LocalReading {
    LocalReading {
        index,
        core: Some(Celsius(core)),
        hbm: Some(Celsius(core - 5.0)),
        power: Some(Watts(power)),
    }
}

fn lease(id: u64, lease_ms: u32, caps: &[(u32, f32)]) -> CapLease {
    CapLease {
        v: None,
        host: "n1".into(),
        id,
        lease_ms,
        caps: caps
            .iter()
            .map(|&(index, limit_w)| Cap { index, limit_w })
            .collect(),
    }
}

fn events(a: &mut AgentCore) -> Vec<AgentEvent> {
    std::iter::from_fn(|| a.poll_event()).collect()
}

#[test]
fn a_gpu_at_slowdown_is_capped_in_the_same_tick() {
    let mut a = agent(false, 2);
    // Cool first: nothing to do.
    assert!(a
        .tick(s(0), &[reading(0, 70.0, 650.0), reading(1, 70.0, 650.0)])
        .is_empty());
    // GPU 1 reaches its slowdown threshold: capped in this very tick, GPU 0 untouched.
    let d = a.tick(
        s(1),
        &[reading(0, 70.0, 650.0), reading(1, SLOWDOWN, 650.0)],
    );
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].index, 1);
    assert_eq!(d[0].cause, Cause::Guard);
    assert!(
        d[0].limit.get() < 650.0,
        "cap below the power it draws: {d:?}"
    );
    assert!(d[0].limit.get() >= MIN);
    assert!(events(&mut a)
        .iter()
        .any(|e| matches!(e, AgentEvent::GuardCritical { index: 1, .. })));
}

#[test]
fn a_cooled_gpu_gets_its_power_back_gradually_and_never_above_its_original_limit() {
    let mut a = agent(false, 1);
    a.tick(s(0), &[reading(0, 70.0, 650.0)]);
    a.tick(s(1), &[reading(0, 90.0, 650.0)]);
    let capped = a.decided(0).expect("gpu 0").get();
    assert!(capped <= 0.75 * 650.0 + 1e-6, "{capped}");
    let raise = GuardParams::default().raise_w_per_s;
    let mut prev = capped;
    let mut back_at = None;
    for t in 2..200u64 {
        a.tick(s(t), &[reading(0, 60.0, prev)]);
        let now = a.decided(0).expect("gpu 0").get();
        assert!(now - prev <= raise + 1e-9, "tick {t}: {prev} → {now}");
        assert!(now <= ORIGINAL);
        if now >= ORIGINAL && back_at.is_none() {
            back_at = Some(t);
        }
        prev = now;
    }
    // (700 − 487.5) W at 10 W/s: 22 ticks after the cut.
    let back_at = back_at.expect("back at the original limit");
    assert!((22..=24).contains(&back_at), "{back_at}");
    assert!(events(&mut a).contains(&AgentEvent::GuardReleased { index: 0 }));
}

#[test]
fn lease_expiry_hands_over_to_the_guard_without_dropping_the_cap() {
    let mut a = agent(false, 2);
    let ans = a.handle_lease(s(0), &lease(9, 5000, &[(0, 300.0), (1, 400.0)]));
    assert_eq!(ans.decisions.len(), 2);
    assert!(ans
        .decisions
        .iter()
        .all(|d| d.cause == Cause::Lease { id: 9 }));
    for t in 1..5u64 {
        let d = a.tick(s(t), &[reading(0, 60.0, 300.0), reading(1, 60.0, 400.0)]);
        assert!(d.is_empty(), "tick {t}: the lease holds: {d:?}");
    }
    // The lease ends at 5 s without renewal: the guard takes over from 300 W and 400 W.
    let d = a.tick(s(5), &[reading(0, 60.0, 300.0), reading(1, 60.0, 400.0)]);
    assert!(events(&mut a).contains(&AgentEvent::LeaseExpired { id: 9 }));
    let raise = GuardParams::default().raise_w_per_s;
    for x in &d {
        let from = if x.index == 0 { 300.0 } else { 400.0 };
        assert_eq!(x.cause, Cause::Guard);
        assert!(
            x.limit.get() <= from + raise + 1e-9,
            "not dropped at once: {x:?}"
        );
    }
    assert!(a.lease().is_none());
    // The caps then rise at the guard's rate only.
    let mut prev = a.decided(0).expect("gpu 0").get();
    for t in 6..12u64 {
        a.tick(s(t), &[reading(0, 60.0, 300.0), reading(1, 60.0, 400.0)]);
        let now = a.decided(0).expect("gpu 0").get();
        assert!(now - prev <= raise + 1e-9 && now >= prev);
        prev = now;
    }
}

#[test]
fn a_renewal_extends_the_lease() {
    let mut a = agent(false, 1);
    a.handle_lease(s(0), &lease(1, 5000, &[(0, 300.0)]));
    a.tick(s(3), &[reading(0, 60.0, 300.0)]);
    a.handle_lease(s(4), &lease(2, 5000, &[(0, 300.0)]));
    assert!(events(&mut a).contains(&AgentEvent::LeaseRenewed { id: 2, until: s(9) }));
    for t in 5..9u64 {
        assert!(a.tick(s(t), &[reading(0, 60.0, 300.0)]).is_empty());
        assert!(a.lease().is_some(), "tick {t}");
    }
    a.tick(s(9), &[reading(0, 60.0, 300.0)]);
    assert!(a.lease().is_none());
}

#[test]
fn the_guard_overrides_a_lease_when_the_gpu_reaches_slowdown() {
    let mut a = agent(false, 1);
    a.handle_lease(s(0), &lease(1, 60_000, &[(0, 650.0)]));
    let d = a.tick(s(1), &[reading(0, 89.5, 640.0)]);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].cause, Cause::Guard);
    assert!(d[0].limit.get() < 640.0);
}

#[test]
fn caps_for_unknown_gpus_or_outside_the_board_range_are_refused_not_clamped() {
    let mut a = agent(false, 2);
    let ans = a.handle_lease(s(0), &lease(4, 5000, &[(0, 150.0), (1, 450.0), (5, 300.0)]));
    assert_eq!(ans.accepted, vec![1]);
    let kinds: Vec<_> = ans
        .refusals
        .iter()
        .map(|r| (r.index, r.refusal_kind()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, Some(Refusal::OutOfRange)),
            (5, Some(Refusal::UnknownGpu))
        ]
    );
    // GPU 0 keeps its limit: a refused cap is not applied in any form.
    assert_eq!(a.decided(0), Some(Watts(ORIGINAL)));
    let ack = a.ack(
        4,
        &ans.refusals,
        &[(1, Err(ActuationError::NotSupported("setter".into())))],
    );
    assert_eq!(ack.results.len(), 3);
    assert_eq!(ack.results[2].refusal_kind(), Some(Refusal::NotSupported));
    assert_eq!(ack.id, 4);
    // A lease for another host on our topic is ignored.
    let mut other = lease(5, 5000, &[(0, 300.0)]);
    other.host = "n2".into();
    assert_eq!(a.handle_lease(s(1), &other).decisions.len(), 0);
    assert_eq!(a.lease().map(|l| l.id), Some(4));
}

#[test]
fn dry_run_reports_would_set_and_says_so_in_the_ack() {
    let mut a = agent(true, 1);
    let ans = a.handle_lease(s(0), &lease(1, 5000, &[(0, 300.0)]));
    assert!(ans.decisions.iter().all(|d| d.dry_run));
    let d = a.tick(s(6), &[reading(0, 95.0, 650.0)]);
    assert!(!d.is_empty() && d.iter().all(|d| d.dry_run));
    assert!(a.ack(1, &[], &[]).dry_run);
}

#[test]
fn without_temperatures_the_guard_holds_and_never_raises() {
    let mut a = agent(false, 1);
    a.tick(s(0), &[reading(0, 90.0, 650.0)]);
    let capped = a.decided(0).expect("gpu 0");
    let blind = LocalReading {
        index: 0,
        core: None,
        hbm: None,
        power: Some(Watts(400.0)),
    };
    for t in 1..30u64 {
        assert!(a.tick(s(t), &[blind]).is_empty());
    }
    assert_eq!(a.decided(0), Some(capped));
}

proptest! {
    /// Whatever the temperatures, powers, leases and timing, no decision leaves
    /// [board minimum, original limit] and no rise is faster than the guard's rate.
    #[test]
    fn decisions_stay_inside_the_board_range(
        steps in prop::collection::vec(
            (20.0f64..120.0, 0.0f64..900.0, 1u64..3000, prop::option::of(100.0f32..800.0)),
            1..80,
        )
    ) {
        let mut a = agent(false, 1);
        let raise = GuardParams::default().raise_w_per_s;
        let mut now = Duration::ZERO;
        let mut prev = ORIGINAL;
        // When `prev` was decided: decisions have a 0.5 W dead band, so a rise is bounded
        // by the rate times the time since the last decision, not since the last tick.
        let mut prev_at = now;
        for (i, (core, power, dt_ms, cap)) in steps.into_iter().enumerate() {
            now += Duration::from_millis(dt_ms);
            let mut leased = false;
            if let Some(c) = cap {
                let ans = a.handle_lease(now, &lease(i as u64, 2000, &[(0, c)]));
                leased = !ans.decisions.is_empty();
            }
            for d in a.tick(now, &[reading(0, core, power)]) {
                prop_assert!(d.limit.get() >= MIN && d.limit.get() <= ORIGINAL, "{:?}", d);
                // Only a new lease may raise faster than the guard's rate.
                if !leased {
                    let bound = raise * (now - prev_at).as_secs_f64() + 0.5;
                    prop_assert!(d.limit.get() - prev <= bound, "{} → {:?}", prev, d);
                }
            }
            let decided = a.decided(0).expect("gpu 0").get();
            if decided != prev {
                prev = decided;
                prev_at = now;
            }
        }
    }
}

#[test]
fn a_lease_that_ended_is_refused_when_it_arrives_again_and_a_retry_does_not_extend() {
    let mut a = agent(false, 1);
    let l1 = lease(1, 2_000, &[(0, 300.0), (7, 300.0)]);
    assert_eq!(a.handle_lease(s(0), &l1).decisions.len(), 1);
    // The same id again (a retry whose ack was lost): the same answers, not extended.
    let again = a.handle_lease(s(1), &l1);
    assert_eq!(again.accepted, [0]);
    assert!(again.decisions.is_empty());
    assert_eq!(again.refusals.len(), 1, "GPU 7 refused again: {again:?}");
    assert_eq!(a.lease().map(|l| l.until), Some(s(2)));
    a.tick(s(2), &[reading(0, 60.0, 300.0)]);
    assert!(a.lease().is_none(), "expired at its first receipt + 2 s");
    let _ = events(&mut a);
    // A copy after expiry (a queue replaying it): refused, the guard keeps the cap.
    let late = a.handle_lease(s(3), &l1);
    assert!(late.decisions.is_empty() && late.accepted.is_empty());
    assert_eq!(late.refusals.len(), 2);
    assert!(late
        .refusals
        .iter()
        .all(|r| r.refusal_kind() == Some(Refusal::Failed)));
    assert!(a.lease().is_none());
    assert_eq!(events(&mut a), [AgentEvent::StaleLease { id: 1 }]);
    // A replaced lease's id is refused the same way.
    a.handle_lease(s(4), &lease(2, 2_000, &[(0, 300.0)]));
    a.handle_lease(s(4), &lease(3, 2_000, &[(0, 250.0)]));
    assert!(
        a.handle_lease(s(5), &lease(2, 2_000, &[(0, 300.0)]))
            .refusals
            .len()
            == 1
    );
    assert_eq!(a.lease().map(|l| l.id), Some(3));
}

#[test]
fn a_release_hands_the_caps_to_the_guard_not_back_at_once() {
    let mut a = agent(false, 2);
    a.handle_lease(s(0), &lease(1, 60_000, &[(0, 300.0), (1, 300.0)]));
    let _ = events(&mut a);
    // An empty lease (the controller's clean stop): both GPUs go to the guard from 300 W.
    let d = a.handle_lease(s(1), &lease(2, 60_000, &[]));
    assert!(d.decisions.iter().all(|d| d.limit.get() <= 300.5), "{d:?}");
    assert!(events(&mut a).contains(&AgentEvent::LeaseReleased {
        id: 2,
        released: vec![0, 1]
    }));
    let raise = GuardParams::default().raise_w_per_s;
    for t in 2..=5 {
        for d in a.tick(s(t), &[reading(0, 50.0, 250.0), reading(1, 50.0, 250.0)]) {
            assert!(
                d.limit.get() <= 300.0 + raise * (t - 1) as f64 + 0.5,
                "t {t}: {d:?}"
            );
            assert_eq!(d.cause, Cause::Guard);
        }
    }
}
