//! The tick takes its time from the `Now` it is given: the snapshot and every metric point
//! carry the wall time passed in (never the machine's clock), and the control core runs on
//! the monotonic time passed in. A tick that read a clock itself would stamp today's date.

use coolantd_testkit::sim_daemon;

use coolantd::service::daemon::Now;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_reads_no_clock_of_its_own() {
    let dir = sim_daemon::TempDir::new("tick-now");
    let text = sim_daemon::sim_config_text(sim_daemon::free_port(), &dir.0, &[], "");
    let mut d = sim_daemon::build(&text, &dir.0, false).await;
    let period = d.config().control.period();
    // 9 September 2001, 01:46:40 UTC: far from any clock this test runs under.
    let wall0 = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for k in 1..=3u32 {
        d.sim().expect("simulator runs in-process").step(period);
        let wall = wall0 + period * k;
        let wall_ns = i64::try_from(wall.duration_since(UNIX_EPOCH).expect("after").as_nanos())
            .expect("fits i64");
        let snap = d
            .tick(Now {
                mono: period * k,
                wall,
                started: Instant::now(),
            })
            .await;
        assert_eq!(
            snap.time_ns, wall_ns,
            "the snapshot's time is the wall time given"
        );
        assert!(!snap.points.is_empty(), "tick {k} made points");
        for p in &snap.points {
            assert_eq!(
                p.time_ns, wall_ns,
                "point {} is stamped with the wall time given",
                p.measurement
            );
        }
        // The CDU's sample age is measured in the monotonic time given: its poll was
        // stamped with this tick's `mono`, so in lockstep it is 0 ms old.
        for c in &snap.cdus {
            assert_eq!(c.link.sample_age_ms, Some(0.0), "{}", c.name);
        }
    }
    assert!(
        SystemTime::now() > wall0 + Duration::from_secs(365 * 86_400),
        "the machine's clock differs from the wall time given, so the test can tell them apart"
    );
}
