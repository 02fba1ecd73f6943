//! The rack wire format's encoding, picked by measurement: one `Readings` message with 8 GPUs
//! (one HGX host) and with 64 GPUs (a whole rack in one message, for comparison) encoded and
//! decoded as JSON (serde_json), CBOR (ciborium, serde field names as map keys) and protobuf
//! (prost), the same structs and values for all three. Prints the bytes per GPU of each.
//!
//! `cargo bench --bench wire -- --warm-up-time 1 --measurement-time 3`

use coolantd::wire::{self, GpuReading, Readings, Version};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use prost::Message;
use std::hint::black_box;

/// Readings as an agent sends them: every field present, realistic values (temperatures with
/// a fraction, power with a fraction, an energy counter of a GPU running for weeks).
fn readings(n: u32) -> Readings {
    Readings {
        v: Some(Version { major: 1, minor: 0 }),
        host: "gpu-r12-n07".into(),
        session: 0x9e37_79b9_7f4a_7c15,
        seq: 1_234_567,
        sent_unix_ms: 1_764_663_000_123,
        facts_hash: 0x1234_5678_9abc_def0,
        gpus: (0..n)
            .map(|i| GpuReading {
                index: i,
                core_c: Some(61.0 + (i % 17) as f32 * 0.5),
                hbm_c: Some(68.25 + (i % 5) as f32),
                power_w: Some(612.375 - i as f32),
                limit_w: Some(700.0),
                throttle: Some(if i % 3 == 0 { 0x4 } else { 0 }),
                energy_mj: Some(1_892_345_678_901 + u64::from(i) * 7919),
            })
            .collect(),
    }
}

fn cbor(r: &Readings) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(r, &mut out).expect("cbor encode");
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    for n in [8u32, 64] {
        let r = readings(n);
        let json = serde_json::to_vec(&r).expect("json encode");
        let cb = cbor(&r);
        let pb = r.encode_to_vec();
        // The three decoders must agree on what they carry, or the comparison is unfair.
        let from_json: Readings = serde_json::from_slice(&json).expect("json decode");
        let from_cbor: Readings = ciborium::from_reader(cb.as_slice()).expect("cbor decode");
        let from_pb = Readings::decode(pb.as_slice()).expect("protobuf decode");
        assert!(from_json == r && from_cbor == r && from_pb == r);
        eprintln!(
            "{n} GPUs: json {} B ({:.1} B/GPU), cbor {} B ({:.1} B/GPU), protobuf {} B ({:.1} B/GPU)",
            json.len(),
            json.len() as f64 / f64::from(n),
            cb.len(),
            cb.len() as f64 / f64::from(n),
            pb.len(),
            pb.len() as f64 / f64::from(n),
        );

        g.bench_with_input(BenchmarkId::new("json_encode", n), &r, |b, r| {
            b.iter(|| serde_json::to_vec(black_box(r)).expect("encode"))
        });
        g.bench_with_input(BenchmarkId::new("json_decode", n), &json, |b, bytes| {
            b.iter(|| serde_json::from_slice::<Readings>(black_box(bytes)).expect("decode"))
        });
        g.bench_with_input(BenchmarkId::new("cbor_encode", n), &r, |b, r| {
            b.iter(|| cbor(black_box(r)))
        });
        g.bench_with_input(BenchmarkId::new("cbor_decode", n), &cb, |b, bytes| {
            b.iter(|| {
                ciborium::from_reader::<Readings, _>(black_box(bytes.as_slice())).expect("decode")
            })
        });
        g.bench_with_input(BenchmarkId::new("protobuf_encode", n), &r, |b, r| {
            b.iter(|| black_box(r).encode_to_vec())
        });
        g.bench_with_input(BenchmarkId::new("protobuf_decode", n), &pb, |b, bytes| {
            b.iter(|| Readings::decode(black_box(bytes.as_slice())).expect("decode"))
        });
    }
    // What the agent and the controller actually call: protobuf plus the version rule, the
    // size limit and the plausibility checks (8 GPUs; 64 exceeds the per-host limit of 32).
    let r = readings(8);
    let pb = wire::encode(&r).expect("valid readings");
    g.bench_function("wire_encode_checked/8", |b| {
        b.iter(|| wire::encode(black_box(&r)).expect("encode"))
    });
    g.bench_function("wire_decode_checked/8", |b| {
        b.iter(|| wire::decode::<Readings>(black_box(&pb)).expect("decode"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
