//! The InfluxDB sink's spool on a real, small file system (a size-limited tmpfs mounted by the
//! test; it needs root) against a real VictoriaMetrics: a full disk with a healthy database
//! loses nothing; a full disk with the database down keeps the on-disk backlog, counts what
//! the bounded memory buffer cannot hold, and recovers once space and the database return;
//! points in memory at shutdown are written or counted; damaged records in two segments cost
//! only themselves.

use coolantd_testkit::victoria;

use coolantd::model::{FieldValue, Point};
use coolantd::service::sink_alarms::SinkAlarms;
use coolantd::sink::influx::{InfluxConfig, InfluxSink, SinkStats};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use victoria::Victoria;

/// A tmpfs of a given size mounted on a fresh folder; unmounted (and the folder removed) on
/// drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("running mount(8)");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} (this test needs root to mount a small file system): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct it fills.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs {}", self.path().display());
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// Writes a filler file that leaves `leave` bytes free.
    fn fill(&self, leave: u64) -> PathBuf {
        self.fill_as("filler", leave)
    }

    fn fill_as(&self, name: &str, leave: u64) -> PathBuf {
        let path = self.path().join(name);
        let n = self.free().saturating_sub(leave);
        std::fs::write(&path, vec![0u8; n as usize]).expect("filler");
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn cfg(vm: &Victoria) -> InfluxConfig {
    let mut c = InfluxConfig::new(vm.url(), "coolantd");
    c.batch_size = 500;
    c.flush_interval_ms = 20;
    c.retry_min_ms = 20;
    c.retry_max_ms = 200;
    c.request_timeout_ms = 2000;
    c
}

/// A tag value that makes each line about 270 bytes, like a GPU point with its labels.
fn pad() -> String {
    "x".repeat(200)
}

/// Points `spool_v{run}` with value i at base + i ms.
fn points(base_ms: i64, range: std::ops::Range<i64>, run: &str) -> Vec<Point> {
    let pad = pad();
    range
        .map(|i| {
            Point::new("spool", (base_ms + i) * 1_000_000)
                .tag("pad", pad.as_str())
                .tag("run", run)
                .field("v", FieldValue::Int(i))
        })
        .collect()
}

async fn wait_for(sink: &InfluxSink, what: &str, pred: impl Fn(&SinkStats) -> bool) -> SinkStats {
    let t0 = Instant::now();
    loop {
        let s = sink.stats();
        if pred(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The values stored for a run, each with how often it is stored, once `expect` distinct
/// values are visible (or 20 s passed).
fn stored(vm: &Victoria, run: &str, expect: usize) -> BTreeMap<i64, usize> {
    let sel = format!(r#"spool_v{{run="{run}"}}"#);
    let series = vm.export_until(&sel, |got| {
        let d: BTreeSet<i64> = got
            .iter()
            .flat_map(|s| s.values.iter().map(|v| *v as i64))
            .collect();
        d.len() >= expect
    });
    let mut m = BTreeMap::new();
    for s in series {
        for v in s.values {
            *m.entry(v as i64).or_insert(0) += 1;
        }
    }
    m
}

/// (A) A 2 MiB disk, the default `spool_max_bytes` (1 GiB, far beyond the disk), the database
/// healthy: acknowledged data must not fill the disk, and when something else fills it the
/// points go to the database from memory. Nothing is lost, nothing is counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_with_a_healthy_database_loses_nothing() {
    let fs = SmallFs::mount("2M");
    let vm = Victoria::start();
    let sink = InfluxSink::start(&cfg(&vm), fs.path()).expect("sink starts");
    let base = now_ms() - 100_000;
    // About 5.4 MB of records, more than twice the disk: only freeing acknowledged segments
    // keeps the disk from filling.
    const N1: i64 = 20_000;
    let mut disk_failed_1 = false;
    for chunk in points(base, 0..N1, "a").chunks(50) {
        sink.submit(chunk);
        disk_failed_1 |= sink.stats().disk_error.is_some();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let st = wait_for(&sink, "phase 1 written", |s| s.written == N1 as u64).await;
    eprintln!("full disk A, phase 1: {st:?}; disk failed: {disk_failed_1}");
    assert_eq!(st.dropped, 0, "{st:?}");

    // Something else fills the disk: points wait in memory and go to the database from there.
    let filler = fs.fill(0);
    const N2: i64 = 5_000;
    // The spool frees what is acknowledged when an append fails, so the disk takes some
    // writes again in between: keep the first snapshot that saw it failing.
    let mut failing = None;
    for chunk in points(base, N1..N1 + N2, "a").chunks(50) {
        sink.submit(chunk);
        let s = sink.stats();
        if failing.is_none() && s.disk_error.is_some() {
            failing = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let st = wait_for(&sink, "phase 2 written", |s| s.written == (N1 + N2) as u64).await;
    eprintln!("full disk A, phase 2 (disk full): {st:?}");
    let failing = failing.expect("the disk really was full in phase 2");
    eprintln!("full disk A, phase 2, while failing: {failing:?}");
    assert_eq!(st.dropped, 0, "{st:?}");
    let mut alarms = SinkAlarms::default();
    let ev = alarms.update(Duration::from_secs(1), &failing);
    assert!(
        ev.iter()
            .any(|e| e.alarm.id == "telemetry_spool_disk:influx"),
        "{ev:?}"
    );
    assert!(
        !ev.iter().any(|e| e.alarm.id == "telemetry_dropped:influx"),
        "nothing dropped, no drop alarm: {ev:?}"
    );

    // Space returns: the disk is used again.
    std::fs::remove_file(&filler).expect("remove filler");
    const N3: i64 = 1_000;
    let total = (N1 + N2 + N3) as u64;
    let t0 = Instant::now();
    let mut i = N1 + N2;
    while i < N1 + N2 + N3 {
        sink.submit(&points(base, i..i + 50, "a"));
        i += 50;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = wait_for(&sink, "phase 3 written and the disk back", |s| {
        s.written == total && s.backlog == 0 && s.disk_error.is_none()
    })
    .await;
    eprintln!(
        "full disk A, phase 3 (space back after {:.1} s): {st:?}",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!((st.dropped, st.memory_backlog), (0, 0), "{st:?}");

    let got = stored(&vm, "a", total as usize);
    let dups: usize = got.values().map(|c| c - 1).sum();
    eprintln!(
        "full disk A: submitted {total}, written {}, dropped {}, stored {} distinct, {dups} duplicates",
        st.written,
        st.dropped,
        got.len()
    );
    assert_eq!(got.len() as u64, total, "every point is stored");
    assert_eq!(dups, 0, "and only once");
    sink.shutdown(Duration::from_secs(2)).await;
}

/// (B) `spool_max_bytes` = 1 MiB on a 2 MiB disk that something else has nearly filled, the
/// database down: the on-disk backlog stays, the memory buffer takes what it can, the rest is
/// counted with a true alarm. Then space and the database return and everything not counted
/// as dropped arrives. At shutdown, points in memory are written to disk if it has room, else
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_with_the_database_down_keeps_the_backlog_and_counts_every_point() {
    let fs = SmallFs::mount("2M");
    let mut vm = Victoria::start();
    vm.stop();
    let mut c = cfg(&vm);
    c.spool_max_bytes = 1 << 20;
    let filler = fs.fill(512 << 10);
    let sink = InfluxSink::start(&c, fs.path()).expect("sink starts");
    let base = now_ms() - 200_000;
    // About 11 MB: half a MiB fits on the disk, 8 MiB in memory, the rest is dropped.
    const P1: i64 = 40_000;
    for chunk in points(base, 0..P1, "b").chunks(50) {
        sink.submit(chunk);
    }
    let st = wait_for(&sink, "a failed write", |s| s.retries >= 1).await;
    let on_disk = st.backlog - st.memory_backlog;
    eprintln!("full disk B, database down: {st:?}; {on_disk} points on disk");
    assert!(st.disk_error.is_some(), "{st:?}");
    assert!(on_disk > 1000, "the disk took what fitted: {st:?}");
    assert!(st.spool_bytes > 0, "the on-disk backlog is kept: {st:?}");
    assert_eq!(st.dropped_bound, 0, "nothing on disk was evicted: {st:?}");
    assert!(
        st.dropped_memory > 0,
        "the memory buffer overflowed: {st:?}"
    );
    assert_eq!(
        st.backlog + st.dropped,
        P1 as u64,
        "every point is kept or counted: {st:?}"
    );
    let mut alarms = SinkAlarms::default();
    let ev = alarms.update(Duration::from_secs(1), &st);
    let msg = &ev
        .iter()
        .find(|e| e.alarm.id == "telemetry_dropped:influx")
        .expect("drop alarm raised")
        .alarm
        .message;
    eprintln!("full disk B alarm: {msg}");
    assert!(msg.contains("spool disk could not be written"), "{msg}");
    assert!(msg.contains("memory buffer was full"), "{msg}");
    assert!(msg.contains("database is unreachable"), "{msg}");
    assert!(!msg.contains("size bound"), "{msg}");

    // Space and the database return: everything kept arrives, in memory or on disk.
    std::fs::remove_file(&filler).expect("remove filler");
    vm.restart();
    let st = wait_for(&sink, "the backlog to drain", |s| {
        s.backlog == 0 && s.disk_error.is_none()
    })
    .await;
    eprintln!("full disk B, recovered: {st:?}");
    assert_eq!(st.written + st.dropped, P1 as u64, "{st:?}");
    let got = stored(&vm, "b", st.written as usize);
    let dups: usize = got.values().map(|c| c - 1).sum();
    eprintln!(
        "full disk B: submitted {P1}, written {}, dropped {} (bound {}, memory {}), stored {} distinct, {dups} duplicates",
        st.written,
        st.dropped,
        st.dropped_bound,
        st.dropped_memory,
        got.len()
    );
    assert_eq!(got.len() as u64, st.written, "what was written is stored");
    assert_eq!(
        P1 as u64 - got.len() as u64,
        st.dropped,
        "what is missing is counted"
    );
    assert_eq!(dups, 0);

    // Shutdown with points in memory. First the disk is full and the database down: they
    // are counted as lost.
    vm.stop();
    let filler = fs.fill(0);
    // The failed append frees what the spool holds acknowledged; fill that too.
    sink.submit(&points(base, P1..P1 + 1, "b"));
    let filler2 = fs.fill_as("filler2", 0);
    sink.submit(&points(base, P1 + 1..P1 + 301, "b"));
    let before = wait_for(&sink, "points in memory", |s| s.memory_backlog == 301).await;
    let fin = sink.shutdown(Duration::from_millis(300)).await;
    eprintln!("full disk B, shutdown with a full disk: {fin:?}");
    assert_eq!(fin.dropped_memory, before.dropped_memory + 301, "{fin:?}");
    std::fs::remove_file(&filler2).expect("remove filler");

    // Then the same with room on the disk at shutdown: they are written and replayed.
    std::fs::remove_file(&filler).expect("remove filler");
    let filler = fs.fill(0);
    let sink = InfluxSink::start(&c, fs.path()).expect("sink restarts");
    sink.submit(&points(base, P1 + 301..P1 + 501, "b"));
    wait_for(&sink, "points in memory", |s| s.memory_backlog == 200).await;
    std::fs::remove_file(&filler).expect("remove filler");
    let fin = sink.shutdown(Duration::from_millis(300)).await;
    assert_eq!(fin.dropped, 0, "{fin:?}");
    vm.restart();
    let sink = InfluxSink::start(&c, fs.path()).expect("sink restarts");
    let st = wait_for(&sink, "the replay", |s| s.backlog == 0).await;
    assert!(st.written >= 200, "{st:?}");
    let got = stored(&vm, "b", P1 as usize);
    for i in P1 + 301..P1 + 501 {
        assert!(
            got.contains_key(&i),
            "point {i} written to disk at shutdown is stored"
        );
    }
    sink.shutdown(Duration::from_secs(2)).await;
}

/// One flipped payload byte in each of two segments (the 2nd record of one, the 147th of the
/// next) costs those two records only: every other record is delivered, the damage is counted
/// and alarmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_records_in_two_segments_cost_only_themselves() {
    let mut vm = Victoria::start();
    vm.stop();
    let state = tempfile::tempdir().expect("state dir");
    let mut c = cfg(&vm);
    c.spool_max_bytes = 1 << 20;
    const N: i64 = 1000;
    let base = now_ms() - 300_000;
    let sink = InfluxSink::start(&c, state.path()).expect("sink starts");
    sink.submit(&points(base, 0..40, "d4"));
    for chunk in points(base, 40..N, "d4").chunks(10) {
        sink.submit(chunk);
    }
    sink.shutdown(Duration::from_millis(200)).await;

    let spool = state.path().join("spool");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&spool)
        .expect("spool folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .collect();
    segs.sort();
    assert!(segs.len() >= 2, "points span several segments: {segs:?}");
    // The values in a segment, in order.
    let values = |p: &Path| -> Vec<i64> {
        let b = std::fs::read(p).expect("segment");
        let t = String::from_utf8_lossy(&b).into_owned();
        t.split(" v=")
            .skip(1)
            .filter_map(|s| s.split('i').next()?.parse().ok())
            .collect()
    };
    let first = values(&segs[0]);
    let second = values(&segs[1]);
    let (a, b) = (first[1], second[146]);
    for (seg, v) in [(&segs[0], a), (&segs[1], b)] {
        let mut bytes = std::fs::read(seg).expect("segment");
        let needle = format!(" v={v}i ");
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .expect("record in segment");
        bytes[at + 3] ^= 0x01;
        std::fs::write(seg, &bytes).expect("write segment");
    }

    vm.restart();
    let sink = InfluxSink::start(&c, state.path()).expect("sink restarts");
    let st = sink.stats();
    assert_eq!(st.corrupt, 2, "{st:?}");
    let mut alarms = SinkAlarms::default();
    let ev = alarms.update(Duration::from_secs(1), &st);
    let alarm = ev
        .iter()
        .find(|e| e.alarm.id == "telemetry_spool_damaged:influx")
        .expect("damage alarm raised");
    eprintln!("D4 alarm: {}", alarm.alarm.message);
    let st = wait_for(&sink, "the replay", |s| s.backlog == 0).await;
    let got = stored(&vm, "d4", N as usize - 2);
    eprintln!(
        "D4: {N} records, damaged records {a} (segment 1, record 2) and {b} (segment 2, record 147); \
         {} delivered, corrupt {}",
        got.len(),
        st.corrupt
    );
    let want: BTreeSet<i64> = (0..N).filter(|i| *i != a && *i != b).collect();
    let have: BTreeSet<i64> = got.keys().copied().collect();
    let missing: Vec<&i64> = want.difference(&have).collect();
    let extra: Vec<&i64> = have.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "every valid record is delivered: {} missing (first {:?}), {} unexpected {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        extra.len(),
        extra
    );
    assert_eq!(st.written, N as u64 - 2);
    sink.shutdown(Duration::from_secs(2)).await;
}
