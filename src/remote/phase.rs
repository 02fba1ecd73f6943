//! Where in the control period agents publish and the controller decides.
//!
//! At 1 Hz a reading that arrives just after the controller's tick waits almost a whole
//! period for the next decision; with agents and controller ticking at unrelated phases the
//! age of a reading at its decision is spread evenly over the period (p99 ≈ 990 ms at 1 Hz),
//! whatever the network does. So both sides tick on the wall clock's period grid: agents
//! read and publish at each multiple of the period since the Unix epoch, and the controller
//! decides `rack.decide_offset_ms` after it, once the readings of that boundary have
//! crossed the broker. The age at decision is then about the offset, not up to a period.
//!
//! The grid is the hosts' wall clocks, so this assumes NTP (a few ms on a site). A host whose
//! clock is off by more than the offset delivers its readings one tick later: a latency
//! cost, never a safety one, since readings are judged by their arrival (`RemoteSource`)
//! and stay fresh for `rack.stale_after_ms`. Why not "decide once every host's reading is
//! in": the tick would then wait for the slowest or a silent host, and the readings of the
//! others would age just the same; a fixed phase keeps the tick's timing independent of
//! any agent.

use std::time::Duration;

/// The default offset after the boundary: broker transit on a rack's network is a few ms,
/// and the rack's target for reading → decision is 50 ms.
pub const DEFAULT_DECIDE_OFFSET: Duration = Duration::from_millis(25);

/// How long from `since_epoch` (wall clock) until the next instant that lies `offset` after
/// a multiple of `period`; zero when `since_epoch` is exactly on it. A zero period (never
/// valid in a configuration) gives zero rather than dividing by it.
pub fn until_phase(since_epoch: Duration, period: Duration, offset: Duration) -> Duration {
    let period_ns = period.as_nanos();
    if period_ns == 0 {
        return Duration::ZERO;
    }
    let offset_ns = offset.as_nanos() % period_ns;
    let into = (since_epoch.as_nanos() + period_ns - offset_ns) % period_ns;
    let wait = if into == 0 { 0 } else { period_ns - into };
    Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn agents_tick_on_period_boundaries() {
        // 12.3 s into the epoch at 1 Hz: 700 ms to the boundary at 13 s.
        assert_eq!(until_phase(MS(12_300), MS(1000), Duration::ZERO), MS(700));
        assert_eq!(until_phase(MS(13_000), MS(1000), Duration::ZERO), MS(0));
        // At 10 Hz the boundaries are every 100 ms.
        assert_eq!(until_phase(MS(12_345), MS(100), Duration::ZERO), MS(55));
    }

    #[test]
    fn the_controller_decides_the_offset_after_each_boundary() {
        let (p, off) = (MS(1000), MS(25));
        // Just after the boundary: wait for the offset's remainder.
        assert_eq!(until_phase(MS(13_010), p, off), MS(15));
        // Just after the decision: a whole period less what already passed.
        assert_eq!(until_phase(MS(13_030), p, off), MS(995));
        assert_eq!(until_phase(MS(13_025), p, off), MS(0));
        // Whatever the start, the first decision lands on the same phase.
        for start in [0, 1, 499, 999, 1_000, 123_456_789] {
            let at = MS(start) + until_phase(MS(start), p, off);
            assert_eq!(at.as_millis() % 1000, 25, "start {start} ms");
            assert!(until_phase(MS(start), p, off) < p);
        }
    }

    #[test]
    fn degenerate_periods_do_not_panic() {
        assert_eq!(until_phase(MS(5), Duration::ZERO, MS(1)), Duration::ZERO);
        // An offset of a period or more wraps around.
        assert_eq!(until_phase(MS(13_000), MS(1000), MS(1025)), MS(25));
    }
}
