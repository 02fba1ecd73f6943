use super::*;

fn gpu(index: u32) -> GpuReading {
    GpuReading {
        index,
        core_c: Some(61.0 + index as f32),
        hbm_c: Some(70.5),
        power_w: Some(512.25),
        limit_w: Some(700.0),
        throttle: Some(4),
        energy_mj: Some(123_456_789_012),
    }
}

fn readings(n: u32) -> Readings {
    Readings {
        v: None,
        host: "node01".into(),
        session: 7,
        seq: 1,
        sent_unix_ms: 1_764_000_000_000,
        facts_hash: 9,
        gpus: (0..n).map(gpu).collect(),
    }
}

fn facts_gpu(index: u32, text: usize) -> GpuFacts {
    GpuFacts {
        index,
        uuid: "u".repeat(text),
        board: "b".repeat(text),
        profile: "p".repeat(text),
        slowdown_c: 89.0,
        shutdown_c: 92.0,
        gpu_max_c: 87.0,
        hbm_max_c: 95.0,
        power_min_w: 200.0,
        power_max_w: 700.0,
        power_default_w: 700.0,
        original_limit_w: 700.0,
    }
}

#[test]
fn readings_round_trip_and_carry_this_version() {
    let r = readings(8);
    let bytes = encode(&r).expect("valid readings encode");
    let back: Readings = decode(&bytes).expect("own encoding decodes");
    assert_eq!(back.v, Some(VERSION));
    assert_eq!(back.gpus, r.gpus);
    assert_eq!(back.host, "node01");
}

#[test]
fn other_major_is_refused_naming_the_version() {
    let mut r = readings(1);
    r.v = Some(Version { major: 2, minor: 3 });
    let bytes = r.encode_to_vec();
    let err = decode::<Readings>(&bytes).unwrap_err();
    assert_eq!(
        err,
        WireError::UnsupportedVersion {
            kind: Kind::Readings,
            major: 2,
            minor: 3
        }
    );
    let text = err.to_string();
    assert!(text.contains("v2.3") && text.contains("v1.0"), "{text}");
}

#[test]
fn missing_version_is_refused() {
    let bytes = readings(1).encode_to_vec();
    assert_eq!(
        decode::<Readings>(&bytes).unwrap_err(),
        WireError::MissingVersion {
            kind: Kind::Readings
        }
    );
}

#[test]
fn implausible_values_are_refused_with_the_field() {
    let mut r = readings(2);
    r.gpus[1].core_c = Some(f32::NAN);
    match encode(&r).unwrap_err() {
        WireError::Implausible { field, .. } => assert_eq!(field, "gpus[1].core_c"),
        e => panic!("unexpected {e}"),
    }
    let mut r = readings(2);
    r.gpus[0].power_w = Some(-3.0);
    assert_eq!(encode(&r).unwrap_err().kind(), "implausible");
    let mut r = readings(2);
    r.gpus[1].hbm_c = Some(400.0);
    assert_eq!(encode(&r).unwrap_err().kind(), "implausible");
    // Refused on receipt too, not only on sending.
    let mut r = readings(1);
    r.v = Some(VERSION);
    r.gpus[0].limit_w = Some(f32::INFINITY);
    assert_eq!(
        decode::<Readings>(&r.encode_to_vec()).unwrap_err().kind(),
        "implausible"
    );
}

#[test]
fn duplicate_gpu_index_is_refused() {
    let mut r = readings(3);
    r.gpus[2].index = 0;
    assert_eq!(
        encode(&r).unwrap_err(),
        WireError::DuplicateGpu {
            kind: Kind::Readings,
            index: 0
        }
    );
}

#[test]
fn too_many_gpus_and_bad_host_are_refused() {
    let r = readings(MAX_GPUS as u32 + 1);
    assert_eq!(encode(&r).unwrap_err().kind(), "too_many_gpus");
    for host in ["", "a/b", "a+", "#", &"h".repeat(MAX_TEXT + 1)] {
        let mut r = readings(1);
        r.host = host.to_string();
        assert_eq!(encode(&r).unwrap_err().kind(), "bad_text", "{host:?}");
    }
}

#[test]
fn oversize_bytes_are_refused_before_parsing() {
    let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        decode::<Facts>(&bytes).unwrap_err(),
        WireError::TooLarge {
            kind: Kind::Facts,
            bytes: MAX_MESSAGE_BYTES + 1,
            max: MAX_MESSAGE_BYTES
        }
    );
}

/// The largest message the bounds allow must fit the size limit, or a host within the
/// bounds could not publish at all.
#[test]
fn largest_possible_messages_fit_the_size_limit() {
    let gpus: Vec<GpuFacts> = (0..MAX_GPUS as u32)
        .map(|i| facts_gpu(i + MAX_INDEX - MAX_GPUS as u32 + 1, MAX_TEXT))
        .collect();
    let mut f = Facts::new(&"h".repeat(MAX_TEXT), u64::MAX, gpus);
    f.hash = u64::MAX;
    let bytes = encode(&f).expect("largest facts encode");
    assert!(bytes.len() <= MAX_MESSAGE_BYTES, "{}", bytes.len());

    let mut r = readings(MAX_GPUS as u32);
    r.host = "h".repeat(MAX_TEXT);
    r.session = u64::MAX;
    r.seq = u64::MAX;
    r.sent_unix_ms = u64::MAX;
    r.facts_hash = u64::MAX;
    for g in &mut r.gpus {
        g.index += MAX_INDEX - MAX_GPUS as u32 + 1;
        g.throttle = Some(u64::MAX);
        g.energy_mj = Some(u64::MAX);
    }
    assert!(encode(&r).expect("largest readings encode").len() <= MAX_MESSAGE_BYTES);

    let ack = CapAck {
        v: None,
        host: "h".repeat(MAX_TEXT),
        session: u64::MAX,
        id: u64::MAX,
        dry_run: true,
        results: (0..MAX_GPUS as u32)
            .map(|i| CapResult {
                index: i + MAX_INDEX - MAX_GPUS as u32 + 1,
                enforced_w: Some(700.0),
                refusal: Some(Refusal::Failed as i32),
                detail: Some("d".repeat(MAX_TEXT)),
            })
            .collect(),
    };
    assert!(encode(&ack).expect("largest ack encodes").len() <= MAX_MESSAGE_BYTES);
}

#[test]
fn facts_hash_changes_with_any_fact() {
    let a = Facts::new("n", 1, vec![facts_gpu(0, 8)]);
    let mut g = facts_gpu(0, 8);
    g.slowdown_c = 88.0;
    let b = Facts::new("n", 2, vec![g]);
    assert_ne!(a.hash, b.hash);
    // The session is not a fact about the GPUs: a restart with the same GPUs keeps the hash.
    assert_eq!(a.hash, Facts::new("n", 99, vec![facts_gpu(0, 8)]).hash);
}

#[test]
fn facts_with_an_upside_down_power_range_are_refused() {
    let mut g = facts_gpu(0, 8);
    g.power_min_w = 800.0;
    let f = Facts::new("n", 1, vec![g]);
    match encode(&f).unwrap_err() {
        WireError::Implausible { field, .. } => assert_eq!(field, "gpus[0].power_min_w"),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn lease_bounds() {
    let mut l = CapLease {
        v: None,
        host: "n".into(),
        id: 1,
        lease_ms: 0,
        caps: vec![Cap {
            index: 0,
            limit_w: 400.0,
        }],
    };
    assert_eq!(encode(&l).unwrap_err().kind(), "implausible");
    l.lease_ms = MAX_LEASE_MS + 1;
    assert_eq!(encode(&l).unwrap_err().kind(), "implausible");
    l.lease_ms = 5000;
    l.caps[0].limit_w = 0.0;
    assert_eq!(encode(&l).unwrap_err().kind(), "implausible");
    l.caps[0].limit_w = 400.0;
    assert!(encode(&l).is_ok());
}

#[test]
fn unknown_refusal_number_reads_as_unspecified() {
    let r = CapResult {
        index: 0,
        enforced_w: None,
        refusal: Some(77),
        detail: None,
    };
    assert_eq!(r.refusal_kind(), Some(Refusal::Unspecified));
}

#[test]
fn topics_format_and_parse() {
    let t = Topic::format("coolantd", "node07", Kind::Readings);
    assert_eq!(t, "coolantd/v1/host/node07/readings");
    assert_eq!(
        Topic::parse("coolantd", &t),
        Some(Topic {
            host: "node07".into(),
            kind: Kind::Readings
        })
    );
    assert_eq!(
        Topic::parse("coolantd", "coolantd/v2/host/n/readings"),
        None
    );
    assert_eq!(Topic::parse("coolantd", "coolantd/v1/host/n/other"), None);
    assert_eq!(
        Topic::parse("coolantd", "coolantd/v1/host/a/b/readings"),
        None
    );
    assert_eq!(Topic::parse("coolantd", "coolantdx/v1/host/n/caps"), None);
    assert_eq!(Topic::host_filter("site/a", "n1"), "site/a/v1/host/n1/+");
    assert!(Kind::Status.retained() && Kind::Facts.retained() && !Kind::Caps.retained());
}
