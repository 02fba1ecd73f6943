//! The InfluxDB sink against a real VictoriaMetrics on loopback: names, tags and values arrive;
//! an outage loses nothing and duplicates nothing; a crash (sink dropped mid-stream) loses
//! nothing and duplicates at most one batch.

use coolantd_testkit::victoria;

use coolantd::model::{FieldValue, GpuKey, GpuSample, GpuStatic, Point, Source};
use coolantd::sink::influx::{InfluxConfig, InfluxSink, SinkStats};
use coolantd::sink::schema::{self, Ctx};
use coolantd::units::{Celsius, Watts};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use victoria::Victoria;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn cfg(vm: &Victoria, batch: usize) -> InfluxConfig {
    let mut c = InfluxConfig::new(vm.url(), "coolantd");
    c.org = "site".into();
    c.batch_size = batch;
    c.flush_interval_ms = 20;
    c.retry_min_ms = 20;
    c.retry_max_ms = 200;
    c.request_timeout_ms = 2000;
    c
}

async fn wait_for(sink: &InfluxSink, what: &str, pred: impl Fn(&SinkStats) -> bool) -> SinkStats {
    let t0 = Instant::now();
    loop {
        let s = sink.stats();
        if pred(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Points `seq_v` with value i at base + i ms, tagged by run.
fn seq_points(base_ms: i64, range: std::ops::Range<i64>, run: &str) -> Vec<Point> {
    range
        .map(|i| {
            Point::new("seq", (base_ms + i) * 1_000_000)
                .tag("run", run)
                .field("v", FieldValue::Int(i))
        })
        .collect()
}

/// Timestamp (ms) → how many samples were stored, once all `expect` samples are visible.
fn counts(vm: &Victoria, selector: &str, expect: usize) -> BTreeMap<i64, usize> {
    let series = vm.export_until(selector, |got| {
        let mut ts: Vec<i64> = got
            .iter()
            .flat_map(|s| s.timestamps.iter().copied())
            .collect();
        ts.sort_unstable();
        ts.dedup();
        ts.len() >= expect
    });
    let mut m = BTreeMap::new();
    for s in series {
        for t in s.timestamps {
            *m.entry(t).or_insert(0) += 1;
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_points_arrive_with_names_tags_and_values() {
    let vm = Victoria::start();
    let state = tempfile::tempdir().expect("state dir");
    let sink = InfluxSink::start(&cfg(&vm, 100), state.path()).expect("sink starts");
    let ctx = Ctx {
        site: "dc 1,hall=a",
        host: "node01",
    };
    let key = GpuKey {
        host: "node01".into(),
        index: 3,
    };
    let st = GpuStatic {
        key: key.clone(),
        uuid: "GPU-1234".into(),
        name: "NVIDIA H200".into(),
        profile: "h200-sxm".into(),
        slowdown: Celsius(89.0),
        gpu_max: Celsius(87.0),
        hbm_max: Celsius(95.0),
        shutdown: Celsius(92.0),
        power_min: Watts(200.0),
        power_max: Watts(700.0),
        power_default: Watts(700.0),
    };
    let mut s = GpuSample::empty(key, Source::Nvml, Duration::ZERO);
    s.core = Some(Celsius(71.25));
    s.power_instant = Some(Watts(612.5));
    s.throttle_reasons = Some(0x4);
    let t = now_ms();
    sink.submit(&[schema::gpu_point(&ctx, &st, &s, t * 1_000_000)]);
    wait_for(&sink, "the point to be written", |s| s.written == 1).await;

    let got = vm.export_until(r#"{__name__=~"gpu_.*"}"#, |got| {
        got.iter().any(|s| s.name() == "gpu_core_temp_c")
    });
    let by_name: BTreeMap<&str, &victoria::Series> = got.iter().map(|s| (s.name(), s)).collect();
    let core = by_name
        .get("gpu_core_temp_c")
        .expect("gpu_core_temp_c exported");
    assert_eq!(core.values, [71.25]);
    assert_eq!(core.timestamps, [t]);
    assert_eq!(
        core.label("site"),
        Some("dc 1,hall=a"),
        "escaped tag survives"
    );
    assert_eq!(core.label("gpu"), Some("3"));
    assert_eq!(core.label("model"), Some("NVIDIA H200"));
    assert_eq!(core.label("uuid"), Some("GPU-1234"));
    assert_eq!(by_name["gpu_margin_to_slowdown_k"].values, [17.75]);
    assert_eq!(by_name["gpu_power_w"].values, [612.5]);
    assert_eq!(by_name["gpu_throttle_sw_power_cap"].values, [1.0]);
    assert_eq!(by_name["gpu_throttle_hw_slowdown"].values, [0.0]);
    assert_eq!(by_name["gpu_throttle_reasons"].values, [4.0]);
    assert!(
        !by_name.contains_key("gpu_hbm_temp_c"),
        "unknown values are not written"
    );
    sink.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_loses_nothing_and_duplicates_nothing() {
    let mut vm = Victoria::start();
    let state = tempfile::tempdir().expect("state dir");
    let sink = InfluxSink::start(&cfg(&vm, 50), state.path()).expect("sink starts");
    let base = now_ms() - 10_000;
    const BEFORE: i64 = 200;
    const DURING: i64 = 1000;
    const AFTER: i64 = 300;

    for chunk in seq_points(base, 0..BEFORE, "outage").chunks(20) {
        sink.submit(chunk);
    }
    wait_for(&sink, "pre-outage points", |s| s.written == BEFORE as u64).await;

    vm.stop();
    for chunk in seq_points(base, BEFORE..BEFORE + DURING, "outage").chunks(20) {
        sink.submit(chunk);
    }
    let st = wait_for(&sink, "failed retries during the outage", |s| {
        s.retries >= 2
    })
    .await;
    assert_eq!(
        st.written, BEFORE as u64,
        "nothing is written while the server is down"
    );
    assert_eq!(
        st.backlog, DURING as u64,
        "the outage's points wait in the spool"
    );
    assert!(st.last_error.is_some());

    vm.restart();
    // New points keep flowing while the backlog drains.
    for chunk in seq_points(base, BEFORE + DURING..BEFORE + DURING + AFTER, "outage").chunks(20) {
        sink.submit(chunk);
    }
    let total = (BEFORE + DURING + AFTER) as u64;
    let st = wait_for(&sink, "the backlog to drain", |s| {
        s.backlog == 0 && s.written == total
    })
    .await;
    assert_eq!((st.dropped, st.rejected), (0, 0));

    let got = counts(
        &vm,
        r#"seq_v{run="outage"}"#,
        (BEFORE + DURING + AFTER) as usize,
    );
    let want: BTreeMap<i64, usize> = (0..BEFORE + DURING + AFTER)
        .map(|i| (base + i, 1))
        .collect();
    eprintln!(
        "outage: {} before, {} during, {} after; {} distinct samples stored, {} retries",
        BEFORE,
        DURING,
        AFTER,
        got.len(),
        st.retries
    );
    assert_eq!(got.len(), want.len(), "every point is present");
    assert_eq!(got, want, "each exactly once");
    sink.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_stream_loses_nothing_and_duplicates_at_most_one_batch() {
    let vm = Victoria::start();
    let state = tempfile::tempdir().expect("state dir");
    const BATCH: usize = 40;
    const FIRST: i64 = 3000;
    const SECOND: i64 = 200;
    let base = now_ms() - 20_000;
    let first_written;
    {
        let sink = InfluxSink::start(&cfg(&vm, BATCH), state.path()).expect("sink starts");
        for chunk in seq_points(base, 0..FIRST, "crash").chunks(25) {
            sink.submit(chunk);
        }
        let st = wait_for(&sink, "shipping to be under way", |s| s.written >= 200).await;
        first_written = st.written;
        // Dropped without shutdown: the shipping task is aborted wherever it is, like a crash.
    }
    let sink = InfluxSink::start(&cfg(&vm, BATCH), state.path()).expect("sink restarts");
    let st = sink.stats();
    assert!(st.backlog > 0, "the crash left a backlog: {st:?}");
    assert!(
        st.backlog as i64 <= FIRST - first_written as i64 + BATCH as i64,
        "replay starts at the committed cursor (at most one batch before what was written): {st:?}"
    );
    for chunk in seq_points(base, FIRST..FIRST + SECOND, "crash").chunks(25) {
        sink.submit(chunk);
    }
    wait_for(&sink, "the backlog to drain", |s| s.backlog == 0).await;

    let got = counts(&vm, r#"seq_v{run="crash"}"#, (FIRST + SECOND) as usize);
    for i in 0..FIRST + SECOND {
        assert!(got.contains_key(&(base + i)), "point {i} is missing");
    }
    assert_eq!(got.len() as i64, FIRST + SECOND, "no unexpected points");
    let extra: usize = got.values().map(|c| c - 1).sum();
    eprintln!(
        "crash: dropped after {first_written} of {FIRST} written; {} distinct stored, {extra} duplicates (batch {BATCH})",
        got.len()
    );
    assert!(
        extra <= BATCH,
        "{extra} duplicates, more than one batch of {BATCH}"
    );
    sink.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_unsent_points_in_the_spool_for_the_next_start() {
    let mut vm = Victoria::start();
    let state = tempfile::tempdir().expect("state dir");
    vm.stop();
    let base = now_ms() - 30_000;
    let sink = InfluxSink::start(&cfg(&vm, 50), state.path()).expect("sink starts");
    sink.submit(&seq_points(base, 0..120, "shutdown"));
    // The server is down, so only the 300 ms deadline ends the shutdown; the guard only turns
    // a shutdown that ignored it into a failure instead of a hung test.
    tokio::time::timeout(
        Duration::from_secs(60),
        sink.shutdown(Duration::from_millis(300)),
    )
    .await
    .expect("shutdown returns while the server is down");

    vm.restart();
    let sink = InfluxSink::start(&cfg(&vm, 50), state.path()).expect("sink restarts");
    assert_eq!(sink.stats().backlog, 120);
    wait_for(&sink, "the replay", |s| s.written == 120 && s.backlog == 0).await;
    let got = counts(&vm, r#"seq_v{run="shutdown"}"#, 120);
    assert_eq!(got.len(), 120);
    assert!(got.values().all(|c| *c == 1));
    sink.shutdown(Duration::from_secs(2)).await;
}

/// End-to-end figure, not a pass/fail speed target: points per second from `submit` into
/// VictoriaMetrics on loopback. Run with `cargo test --release --test influx_vm -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn e2e_throughput_into_victoria_metrics() {
    let vm = Victoria::start();
    let state = tempfile::tempdir().expect("state dir");
    let mut c = cfg(&vm, 5000);
    c.flush_interval_ms = 100;
    let sink = InfluxSink::start(&c, state.path()).expect("sink starts");
    const N: i64 = 200_000;
    let base = now_ms() - 3_600_000;
    let points = seq_points(base, 0..N, "e2e");
    let t0 = Instant::now();
    for chunk in points.chunks(1000) {
        sink.submit(chunk);
    }
    let submitted = t0.elapsed();
    wait_for(&sink, "all points written", |s| s.written == N as u64).await;
    let total = t0.elapsed();
    eprintln!(
        "e2e: {N} points; submit {:.0} points/s; into VictoriaMetrics {:.0} points/s",
        N as f64 / submitted.as_secs_f64(),
        N as f64 / total.as_secs_f64()
    );
    sink.shutdown(Duration::from_secs(2)).await;
}

/// `gzip = true` takes the direct HTTP path with `Content-Encoding: gzip`; VictoriaMetrics
/// decompresses it like InfluxDB does. Every point arrives once, with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_writes_arrive_exactly_once_with_their_values() {
    let vm = Victoria::start();
    let state = tempfile::tempdir().expect("state dir");
    let mut c = cfg(&vm, 100);
    c.gzip = true;
    let sink = InfluxSink::start(&c, state.path()).expect("sink starts");
    const N: i64 = 450;
    let base = now_ms() - 40_000;
    for chunk in seq_points(base, 0..N, "gzip").chunks(30) {
        sink.submit(chunk);
    }
    let st = wait_for(&sink, "all points written", |s| {
        s.written == N as u64 && s.backlog == 0
    })
    .await;
    assert_eq!((st.rejected, st.dropped), (0, 0), "{st:?}");

    let series = vm.export_until(r#"seq_v{run="gzip"}"#, |got| {
        got.iter().map(|s| s.timestamps.len()).sum::<usize>() >= N as usize
    });
    assert_eq!(series.len(), 1, "one series, named <measurement>_<field>");
    assert_eq!(series[0].name(), "seq_v");
    let got: Vec<(i64, f64)> = series[0]
        .timestamps
        .iter()
        .copied()
        .zip(series[0].values.iter().copied())
        .collect();
    let want: Vec<(i64, f64)> = (0..N).map(|i| (base + i, i as f64)).collect();
    assert_eq!(got, want, "each point once, with its value, in time order");
    sink.shutdown(Duration::from_secs(2)).await;
}
