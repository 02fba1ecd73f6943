//! The InfluxDB sink's v1 write API (`/write?db=&rp=`, user/password) against a real InfluxDB
//! 1.6 on loopback, through the same spool, batching and retry logic as the v2 path: an outage
//! loses nothing and duplicates nothing, and a wrong password keeps the points in the spool
//! instead of dead-lettering them.

use coolantd_testkit::influxdb1;

use coolantd::model::{FieldValue, Point};
use coolantd::sink::influx::{InfluxApi, InfluxConfig, InfluxSink, Secret, SinkStats};
use influxdb1::Influx1;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64
}

fn cfg(db: &Influx1, password: &str) -> InfluxConfig {
    let mut c = InfluxConfig::new(db.url(), "");
    c.api = InfluxApi::V1;
    c.database = "coolantd".into();
    c.retention_policy = "week".into();
    c.username = Some("admin".into());
    c.password = Some(Secret::new(password));
    c.batch_size = 50;
    c.flush_interval_ms = 20;
    c.retry_min_ms = 20;
    c.retry_max_ms = 200;
    c.request_timeout_ms = 2000;
    c
}

/// A database with a retention policy that is not the default one, so that a point landing
/// in `week` proves the sink sent `rp=week`.
fn prepare(db: &Influx1) {
    db.query("CREATE DATABASE coolantd")
        .expect("create database");
    db.query("CREATE RETENTION POLICY week ON coolantd DURATION 7d REPLICATION 1")
        .expect("create retention policy");
}

async fn wait_for(sink: &InfluxSink, what: &str, pred: impl Fn(&SinkStats) -> bool) -> SinkStats {
    let t0 = Instant::now();
    loop {
        let s = sink.stats();
        if pred(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Points `seq v=i` at base + i µs, tagged by run.
fn seq_points(base_ns: i64, range: std::ops::Range<i64>, run: &str) -> Vec<Point> {
    range
        .map(|i| {
            Point::new("seq", base_ns + i * 1000)
                .tag("run", run)
                .field("v", FieldValue::Int(i))
        })
        .collect()
}

/// InfluxQL `count(v)` of a run in the `week` retention policy.
fn count(db: &Influx1, run: &str) -> i64 {
    let rows = db
        .rows(
            "coolantd",
            &format!(r#"SELECT count(v) FROM "coolantd"."week"."seq" WHERE run = '{run}'"#),
        )
        .expect("count query");
    rows.first()
        .and_then(|r| r.get(1))
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

/// Timestamp → value of every stored point of a run.
fn stored(db: &Influx1, run: &str) -> BTreeMap<i64, i64> {
    db.rows(
        "coolantd",
        &format!(r#"SELECT v FROM "coolantd"."week"."seq" WHERE run = '{run}'"#),
    )
    .expect("select query")
    .into_iter()
    .map(|r| {
        (
            r[0].as_i64().expect("ns timestamp"),
            r[1].as_i64().expect("integer v"),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_outage_loses_nothing_and_duplicates_nothing() {
    let mut db = Influx1::start_with(true);
    prepare(&db);
    let state = tempfile::tempdir().expect("state dir");
    let sink = InfluxSink::start(&cfg(&db, "admin-pw"), state.path()).expect("sink starts");
    let base = now_ns() - 10_000_000_000;
    const BEFORE: i64 = 200;
    const DURING: i64 = 1000;
    const AFTER: i64 = 300;

    for chunk in seq_points(base, 0..BEFORE, "outage").chunks(20) {
        sink.submit(chunk);
    }
    wait_for(&sink, "pre-outage points", |s| s.written == BEFORE as u64).await;
    assert_eq!(count(&db, "outage"), BEFORE, "written means stored");

    db.stop();
    for chunk in seq_points(base, BEFORE..BEFORE + DURING, "outage").chunks(20) {
        sink.submit(chunk);
    }
    let st = wait_for(&sink, "failed retries during the outage", |s| {
        s.retries >= 2
    })
    .await;
    assert_eq!(st.written, BEFORE as u64, "nothing is written while down");
    assert_eq!(
        st.backlog, DURING as u64,
        "the outage's points wait in the spool"
    );
    assert!(st.last_error.is_some());

    db.restart();
    for chunk in seq_points(base, BEFORE + DURING..BEFORE + DURING + AFTER, "outage").chunks(20) {
        sink.submit(chunk);
    }
    let total = BEFORE + DURING + AFTER;
    let st = wait_for(&sink, "the backlog to drain", |s| {
        s.backlog == 0 && s.written == total as u64
    })
    .await;
    assert_eq!((st.dropped, st.rejected), (0, 0));

    // InfluxDB keeps one point per series and timestamp, so a duplicate write could not show
    // as a second row; `written == total` above is what proves no batch went twice, and the
    // stored set proves every point arrived with its own value.
    let got = stored(&db, "outage");
    let want: BTreeMap<i64, i64> = (0..total).map(|i| (base + i * 1000, i)).collect();
    eprintln!(
        "v1 outage: {BEFORE} before, {DURING} during, {AFTER} after; {} stored, count(v) = {}, {} retries",
        got.len(),
        count(&db, "outage"),
        st.retries
    );
    assert_eq!(count(&db, "outage"), total, "InfluxQL count(v)");
    assert_eq!(got, want, "every point exactly once, with its value");
    sink.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_wrong_password_keeps_points_until_the_right_one_comes() {
    let db = Influx1::start_with(true);
    prepare(&db);
    let state = tempfile::tempdir().expect("state dir");
    let base = now_ns() - 10_000_000_000;
    const N: i64 = 120;
    {
        let sink = InfluxSink::start(&cfg(&db, "wrong"), state.path()).expect("sink starts");
        sink.submit(&seq_points(base, 0..N, "auth"));
        let st = wait_for(&sink, "refused writes", |s| s.retries >= 2).await;
        let err = st.last_error.clone().unwrap_or_default();
        assert!(
            err.contains("401"),
            "the server's refusal is reported: {err}"
        );
        assert_eq!(
            (st.written, st.rejected),
            (0, 0),
            "nothing written or dead-lettered"
        );
        assert_eq!(st.backlog, N as u64);
        sink.shutdown(Duration::from_secs(2)).await;
    }
    assert_eq!(count(&db, "auth"), 0);
    // The operator fixes the password; the next start ships what the spool kept.
    let sink = InfluxSink::start(&cfg(&db, "admin-pw"), state.path()).expect("sink restarts");
    let st = wait_for(&sink, "the spool to drain", |s| {
        s.backlog == 0 && s.written == N as u64
    })
    .await;
    assert_eq!((st.dropped, st.rejected), (0, 0));
    assert_eq!(count(&db, "auth"), N);
    sink.shutdown(Duration::from_secs(2)).await;
}
