//! The rack wire format (v1) at its boundary: decoding never panics on arbitrary bytes, what is
//! encoded decodes to the same values, and the version rule holds against messages built by
//! other versions (a newer minor with fields this build does not know, an older minor
//! without the optional fields, another major).

use coolantd::wire::{
    self, Cap, CapAck, CapLease, CapResult, Facts, GpuFacts, GpuReading, Kind, Readings, Status,
    Version, WireError, MAX_GPUS, VERSION,
};
use proptest::prelude::*;
use prost::Message;

/// `Readings` as a v1.7 agent might send it: every v1.0 field plus fields v1.0 does not know.
#[derive(Clone, PartialEq, prost::Message)]
struct ReadingsV1_7 {
    #[prost(message, optional, tag = "1")]
    v: Option<Version>,
    #[prost(string, tag = "2")]
    host: String,
    #[prost(uint64, tag = "3")]
    session: u64,
    #[prost(uint64, tag = "4")]
    seq: u64,
    #[prost(uint64, tag = "5")]
    sent_unix_ms: u64,
    #[prost(uint64, tag = "6")]
    facts_hash: u64,
    #[prost(message, repeated, tag = "7")]
    gpus: Vec<GpuReadingV1_7>,
    /// New in "v1.7": the rack position.
    #[prost(string, optional, tag = "8")]
    rack_slot: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GpuReadingV1_7 {
    #[prost(uint32, tag = "1")]
    index: u32,
    #[prost(float, optional, tag = "2")]
    core_c: Option<f32>,
    #[prost(float, optional, tag = "3")]
    hbm_c: Option<f32>,
    #[prost(float, optional, tag = "4")]
    power_w: Option<f32>,
    #[prost(float, optional, tag = "5")]
    limit_w: Option<f32>,
    #[prost(uint64, optional, tag = "6")]
    throttle: Option<u64>,
    #[prost(uint64, optional, tag = "7")]
    energy_mj: Option<u64>,
    /// New in "v1.7": memory junction temperature.
    #[prost(float, optional, tag = "8")]
    junction_c: Option<f32>,
}

fn newer_minor(major: u32, minor: u32) -> Vec<u8> {
    ReadingsV1_7 {
        v: Some(Version { major, minor }),
        host: "node03".into(),
        session: 42,
        seq: 17,
        sent_unix_ms: 1,
        facts_hash: 5,
        gpus: (0..8)
            .map(|i| GpuReadingV1_7 {
                index: i,
                core_c: Some(60.0 + i as f32),
                hbm_c: Some(66.0),
                power_w: Some(650.0),
                limit_w: Some(700.0),
                throttle: Some(0),
                energy_mj: Some(9),
                junction_c: Some(71.0),
            })
            .collect(),
        rack_slot: Some("u12".into()),
    }
    .encode_to_vec()
}

#[test]
fn newer_minor_decodes_and_its_unknown_fields_are_ignored() {
    let r: Readings = wire::decode(&newer_minor(1, 7)).expect("a newer minor is accepted");
    assert_eq!(r.v, Some(Version { major: 1, minor: 7 }));
    assert_eq!(r.seq, 17);
    assert_eq!(r.gpus.len(), 8);
    assert_eq!(r.gpus[3].core_c, Some(63.0));
    assert_eq!(r.gpus[3].power_w, Some(650.0));
}

#[test]
fn older_minor_without_optional_fields_decodes() {
    // An older minor that had no HBM, energy or throttle fields yet sends only these.
    let r = Readings {
        v: Some(Version { major: 1, minor: 0 }),
        host: "node03".into(),
        session: 1,
        seq: 1,
        sent_unix_ms: 0,
        facts_hash: 0,
        gpus: vec![GpuReading {
            index: 0,
            core_c: Some(55.0),
            ..GpuReading::default()
        }],
    };
    let back: Readings = wire::decode(&r.encode_to_vec()).expect("older minor decodes");
    assert_eq!(back.gpus[0].hbm_c, None);
    assert_eq!(back.gpus[0].energy_mj, None);
}

/// `Readings` as a decoder that predates `energy_mj` (tag 7 of a GPU) reads it.
#[derive(Clone, PartialEq, prost::Message)]
struct ReadingsBeforeEnergy {
    #[prost(message, optional, tag = "1")]
    v: Option<Version>,
    #[prost(uint64, tag = "4")]
    seq: u64,
    #[prost(message, repeated, tag = "7")]
    gpus: Vec<GpuReadingBeforeEnergy>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GpuReadingBeforeEnergy {
    #[prost(uint32, tag = "1")]
    index: u32,
    #[prost(float, optional, tag = "2")]
    core_c: Option<f32>,
    #[prost(float, optional, tag = "5")]
    limit_w: Option<f32>,
}

#[test]
fn a_decoder_without_energy_reads_readings_that_carry_it() {
    // The agent fills `energy_mj` from NVML's total energy counter; a controller built before
    // the field existed must read the rest of the message unchanged.
    let r = Readings {
        v: Some(VERSION),
        host: "node03".into(),
        session: 1,
        seq: 9,
        sent_unix_ms: 0,
        facts_hash: 0,
        gpus: vec![GpuReading {
            index: 2,
            core_c: Some(55.0),
            limit_w: Some(700.0),
            energy_mj: Some(123_456_789_012),
            ..GpuReading::default()
        }],
    };
    let bytes = wire::encode(&r).expect("encodes");
    let old = ReadingsBeforeEnergy::decode(bytes.as_slice()).expect("an older decoder reads it");
    assert_eq!(old.seq, 9);
    assert_eq!(
        old.gpus,
        vec![GpuReadingBeforeEnergy {
            index: 2,
            core_c: Some(55.0),
            limit_w: Some(700.0),
        }]
    );
    let back: Readings = wire::decode(&bytes).expect("decodes");
    assert_eq!(back.gpus[0].energy_mj, Some(123_456_789_012));
}

#[test]
fn other_major_is_refused_with_both_versions_named() {
    for (major, minor) in [(2, 0), (0, 9)] {
        let err = wire::decode::<Readings>(&newer_minor(major, minor)).unwrap_err();
        assert_eq!(
            err,
            WireError::UnsupportedVersion {
                kind: Kind::Readings,
                major,
                minor
            }
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("v{major}.{minor}")) && text.contains("v1.0"),
            "{text}"
        );
    }
}

fn decode_all(bytes: &[u8]) {
    let _ = wire::decode::<Readings>(bytes);
    let _ = wire::decode::<Facts>(bytes);
    let _ = wire::decode::<CapLease>(bytes);
    let _ = wire::decode::<CapAck>(bytes);
    let _ = wire::decode::<Status>(bytes);
}

fn opt_temp() -> impl Strategy<Value = Option<f32>> {
    prop::option::of(-40.0f32..150.0)
}

fn opt_power() -> impl Strategy<Value = Option<f32>> {
    prop::option::of(0.0f32..3000.0)
}

fn readings_strategy() -> impl Strategy<Value = Readings> {
    let gpu = (
        opt_temp(),
        opt_temp(),
        opt_power(),
        opt_power(),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
    );
    (
        "[a-z0-9.-]{1,64}",
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(gpu, 0..=MAX_GPUS),
    )
        .prop_map(|(host, session, seq, sent, hash, gpus)| Readings {
            v: None,
            host,
            session,
            seq,
            sent_unix_ms: sent,
            facts_hash: hash,
            gpus: gpus
                .into_iter()
                .enumerate()
                .map(|(i, (core, hbm, p, l, t, e))| GpuReading {
                    index: i as u32,
                    core_c: core,
                    hbm_c: hbm,
                    power_w: p,
                    limit_w: l,
                    throttle: t,
                    energy_mj: e,
                })
                .collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Decoding any bytes as any message returns a value or an error, never a panic.
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }

    /// Valid protobuf with arbitrary field values (NaN, huge numbers, long strings) is refused
    /// cleanly or accepted, never a panic.
    #[test]
    fn decode_never_panics_on_arbitrary_field_values(
        major in 0u32..4, minor in any::<u32>(), host in ".{0,80}",
        core in any::<f32>(), lease_ms in any::<u32>(), index in any::<u32>(),
        limit in any::<f32>(),
    ) {
        let v = Some(Version { major, minor });
        let r = Readings { v, host: host.clone(), gpus: vec![GpuReading { index, core_c: Some(core), ..Default::default() }], ..Default::default() };
        decode_all(&r.encode_to_vec());
        let l = CapLease { v, host: host.clone(), id: 1, lease_ms, caps: vec![Cap { index, limit_w: limit }, Cap { index, limit_w: limit }] };
        decode_all(&l.encode_to_vec());
        let f = Facts { v, host, session: 1, hash: 2, gpus: vec![GpuFacts { index, slowdown_c: core, ..Default::default() }] };
        decode_all(&f.encode_to_vec());
    }

    /// Whatever valid readings are encoded decode to the same values, with this version.
    #[test]
    fn readings_round_trip(r in readings_strategy()) {
        let bytes = wire::encode(&r).expect("valid readings encode");
        let back: Readings = wire::decode(&bytes).expect("own encoding decodes");
        prop_assert_eq!(back.v, Some(VERSION));
        prop_assert_eq!(&back.gpus, &r.gpus);
        prop_assert_eq!((back.seq, back.session, back.sent_unix_ms), (r.seq, r.session, r.sent_unix_ms));
    }

    /// Acknowledgements with any mix of enforced limits and refusals round-trip.
    #[test]
    fn acks_round_trip(results in prop::collection::vec((opt_power(), prop::option::of(0i32..5)), 0..=MAX_GPUS)) {
        let ack = CapAck {
            v: None, host: "n".into(), session: 3, id: 9, dry_run: false,
            results: results.into_iter().enumerate().map(|(i, (e, r))| CapResult {
                index: i as u32, enforced_w: e, refusal: r, detail: r.map(|_| "why".into()),
            }).collect(),
        };
        let back: CapAck = wire::decode(&wire::encode(&ack).expect("encodes")).expect("decodes");
        prop_assert_eq!(back.results, ack.results);
    }
}
