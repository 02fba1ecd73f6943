//! Sink throughput: line-protocol encoding, gzip of a write body, spool append (per fsync
//! policy) and spool replay. Prints the gzip compression figures for a 1,000-point batch.
//!
//! `cargo bench --bench sink -- --warm-up-time 1 --measurement-time 3`

use coolantd::model::{GpuKey, GpuSample, GpuStatic, Point, Source};
use coolantd::sink::influx::gzip_body;
use coolantd::sink::lineproto;
use coolantd::sink::schema::{self, Ctx};
use coolantd::sink::spool::{FsyncPolicy, Spool, SpoolOptions};
use coolantd::units::{Celsius, Megahertz, Percent, Watts};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::time::Duration;

/// 1,000 fully populated GPU points: the widest point coolantd writes (~30 fields).
fn gpu_points(n: usize) -> Vec<Point> {
    let ctx = Ctx {
        site: "dc1",
        host: "node01",
    };
    (0..n)
        .map(|i| {
            let key = GpuKey {
                host: "node01".into(),
                index: (i % 8) as u32,
            };
            let st = GpuStatic {
                key: key.clone(),
                uuid: format!("GPU-{i:08x}-0000-0000-0000-000000000000"),
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
            s.core = Some(Celsius(60.0 + i as f64 * 0.01));
            s.hbm = Some(Celsius(65.3));
            s.power_instant = Some(Watts(512.25));
            s.power_average = Some(Watts(498.0));
            s.enforced_limit = Some(Watts(700.0));
            s.sm_clock = Some(Megahertz(1980.0));
            s.mem_clock = Some(Megahertz(2619.0));
            s.utilization = Some(Percent(100.0));
            s.throttle_reasons = Some(0x4);
            s.pstate = Some(0);
            schema::gpu_point(
                &ctx,
                &st,
                &s,
                1_700_000_000_000_000_000 + i as i64 * 1_000_000,
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    const N: usize = 1000;
    let points = gpu_points(N);
    let lines: Vec<String> = points.iter().filter_map(lineproto::encode_line).collect();
    let bytes: usize = lines.iter().map(String::len).sum();
    eprintln!(
        "sample line ({} bytes avg): {}",
        bytes / N,
        lines[0].trim_end()
    );

    let mut g = c.benchmark_group("sink");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("encode_1000_gpu_points", |b| {
        b.iter(|| lineproto::encode_batch(&points))
    });

    // What `gzip = true` saves per batch, at the level the sink uses (1) and at zlib's
    // default (6) for comparison.
    let body = lines.concat();
    let fast = gzip_body(body.as_bytes()).expect("gzip");
    let best = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body.as_bytes()).expect("gzip");
        e.finish().expect("gzip")
    };
    eprintln!(
        "gzip of a {N}-point batch: {} -> {} bytes at level 1 (ratio {:.1}, {} bytes saved), {} bytes at level 6 (ratio {:.1})",
        body.len(),
        fast.len(),
        body.len() as f64 / fast.len() as f64,
        body.len() - fast.len(),
        best.len(),
        body.len() as f64 / best.len() as f64,
    );
    g.bench_function("gzip_1000_gpu_points", |b| {
        b.iter(|| gzip_body(body.as_bytes()).expect("gzip"))
    });

    for (name, policy) in [
        ("spool_append_1000_fsync_never", FsyncPolicy::Never),
        ("spool_append_1000_fsync_always", FsyncPolicy::Always),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), SpoolOptions::new(1 << 30, policy)).expect("spool");
        // One append call per 1,000 points: the shape of one submit of a large host's tick.
        g.bench_function(name, |b| {
            b.iter(|| {
                spool
                    .append(lines.iter().map(String::as_str))
                    .expect("append")
            })
        });
    }

    g.bench_function("spool_replay_1000_batch_5000", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let mut spool =
                    Spool::open(dir.path(), SpoolOptions::new(1 << 30, FsyncPolicy::Never))
                        .expect("spool");
                spool
                    .append(lines.iter().map(String::as_str))
                    .expect("append");
                (dir, spool)
            },
            |(dir, mut spool)| {
                let batch = spool.read_batch(5000).expect("read");
                assert_eq!(batch.count, N as u64);
                spool.commit(batch.end.expect("end")).expect("commit");
                // Returned so that deleting the folder is not timed.
                (dir, spool)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
