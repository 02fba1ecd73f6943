//! The schema's catalog: every measurement, tag and field coolantd writes, derived from
//! fully populated sample points (so it cannot drift from what is written), and what each
//! field means and its unit, read from `docs/metrics.md`. The tests, the Grafana dashboard
//! check, `/metrics` HELP lines and Sparkplug's metric definitions read it.

use super::*;
use std::collections::BTreeMap;

/// The type of a field, as line protocol writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Float,
    Int,
    Bool,
    Str,
}

/// The metric documentation, compiled in: the one place each field's meaning is written.
const METRICS_DOC: &str = include_str!("../../../docs/metrics.md");

/// What a field means, with its unit, from `docs/metrics.md` (the tables under each
/// `` ## `measurement` `` heading): the HELP text of `/metrics`. `None` for a field the
/// documentation does not list (a test keeps that from happening).
pub fn field_help(measurement: &str, field: &str) -> Option<String> {
    static TABLE: std::sync::OnceLock<BTreeMap<(String, String), String>> =
        std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| parse_field_docs(METRICS_DOC))
        .get(&(measurement.to_string(), field.to_string()))
        .cloned()
}

/// Reads `| `field` | type | unit | meaning |` rows, keyed by the measurement of the
/// enclosing `` ## `name` `` section.
fn parse_field_docs(doc: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let mut measurement: Option<String> = None;
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            measurement = h
                .strip_prefix('`')
                .and_then(|r| r.split_once('`'))
                .map(|(m, _)| m.to_string());
            continue;
        }
        let Some(m) = &measurement else { continue };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", field, type, unit, meaning, ""]
        if cells.len() != 6 || !cells[1].starts_with('`') {
            continue;
        }
        let field = cells[1].trim_matches('`');
        let unit = cells[3];
        let meaning = cells[4].replace('`', "");
        let help = if unit.is_empty() {
            meaning
        } else {
            format!("{} [{unit}]", meaning.trim_end_matches('.'))
        };
        out.insert((m.clone(), field.to_string()), help);
    }
    out
}

/// One measurement as written: its tag keys and fields.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasurementSchema {
    pub name: String,
    pub tags: Vec<String>,
    pub fields: BTreeMap<String, FieldKind>,
}

/// The unit of a field, read from its name's suffix (the convention above), as a short
/// symbol for consumers that show units (Sparkplug's `engUnit` property). `None` for
/// unitless fields (counts, flags, codes, words).
pub fn field_unit(field: &str) -> Option<&'static str> {
    const SUFFIXES: [(&str, &str); 9] = [
        ("_c", "°C"),
        ("_k", "K"),
        ("_w", "W"),
        ("_mhz", "MHz"),
        ("_pct", "%"),
        ("_lpm", "l/min"),
        ("_kpa", "kPa"),
        ("_j", "J"),
        ("_ns", "ns"),
    ];
    SUFFIXES
        .iter()
        .find(|(suffix, _)| field.ends_with(suffix))
        .map(|(_, unit)| *unit)
}

/// Fully populated sample points of every kind coolantd writes: the source of [`catalog`]
/// and of the metric definitions Sparkplug announces in its birth certificates.
pub fn sample_points() -> Vec<Point> {
    use crate::model::*;
    use crate::units::*;
    use std::time::Duration;

    let ctx = Ctx {
        site: "s",
        host: "h",
    };
    let key = GpuKey {
        host: "h".into(),
        index: 0,
    };
    let st = GpuStatic {
        key: key.clone(),
        uuid: "GPU-0".into(),
        name: "H200".into(),
        profile: "h200-sxm".into(),
        slowdown: Celsius(89.0),
        gpu_max: Celsius(87.0),
        hbm_max: Celsius(95.0),
        shutdown: Celsius(92.0),
        power_min: Watts(200.0),
        power_max: Watts(700.0),
        power_default: Watts(700.0),
    };
    let s = GpuSample {
        key: key.clone(),
        source: Source::Simulated,
        at: Duration::ZERO,
        core: Some(Celsius(60.0)),
        hbm: Some(Celsius(65.0)),
        power_instant: Some(Watts(500.0)),
        power_average: Some(Watts(490.0)),
        enforced_limit: Some(Watts(700.0)),
        sm_clock: Some(Megahertz(1980.0)),
        mem_clock: Some(Megahertz(2619.0)),
        utilization: Some(Percent(100.0)),
        throttle_reasons: Some(0x1ff),
        pstate: Some(0),
    };
    let slow = GpuSlowSample {
        key,
        at: Duration::ZERO,
        energy: Some(Joules(1.0)),
        violation_power_ns: Some(1),
        violation_thermal_ns: Some(1),
        ecc_corrected: Some(0),
    };
    let cdu = CduSample {
        cdu: "a".into(),
        at: Duration::ZERO,
        registers: Role::ALL
            .iter()
            .map(|r| RegisterReading {
                name: r.as_str().into(),
                role: Some(*r),
                value: Ok(1.0),
            })
            .chain(std::iter::once(RegisterReading {
                name: "x".into(),
                role: None,
                value: Err(SensorFault::Timeout),
            }))
            .collect(),
    };
    let alarm = Alarm {
        id: "leak:a".into(),
        severity: Severity::Critical,
        message: "m".into(),
        raised_at: Duration::ZERO,
        latched: true,
        acknowledged: false,
        cause_present: true,
        causes: Vec::new(),
    };
    let tick = TickOutput {
        actuations: vec![],
        state: ControlState::Running,
        mode: Mode::Auto,
        controlled: Some(Celsius(70.0)),
        setpoint: Celsius(70.0),
        loops: vec![LoopReport {
            name: "pump:a".into(),
            setpoint: 70.0,
            measured: Some(70.0),
            p: 0.0,
            i: 0.0,
            d: 0.0,
            ff: 0.0,
            output: 50.0,
            reason: String::new(),
        }],
        events: vec![],
        active_alarms: vec![alarm.clone()],
        ready: true,
        feed_forward: vec![crate::model::FeedForwardReport {
            cdu: "a".into(),
            engaged: false,
            reason: Some("power reading of node01/gpu0 is 3.0 s old".into()),
            heat_load_w: Some(5600.0),
            model_speed: Some(40.0),
            correction: 1.0,
            ff: 0.0,
        }],
    };
    let ev = AlarmEvent {
        alarm,
        transition: AlarmTransition::Raised,
        at: Duration::ZERO,
    };

    let mut points = vec![
        gpu_point(&ctx, &st, &s, 0),
        gpu_slow_point(&ctx, &st, &slow, 0),
        cdu_point(&ctx, &cdu, 0),
        alarm_point(&ctx, &ev, 0),
    ];
    points.extend(register_points(&ctx, &cdu, 0));
    points.extend(control_points(&ctx, &tick, 0));
    points.push(telemetry_point(
        &ctx,
        &crate::sink::influx::SinkStats::default(),
        0,
    ));
    let status = CduStatus {
        name: "a".into(),
        supply: None,
        return_: None,
        flow: None,
        differential_pressure: None,
        pump_command: None,
        pump_feedback: None,
        leak: None,
        remote_enable: None,
        faults: vec![],
        link: CduLinkStatus {
            sample_age_ms: Some(1.0),
            poll_ms: Some(1.0),
            ..CduLinkStatus::default()
        },
    };
    points.push(cdu_link_point(&ctx, &status, 0));
    points.push(rack_host_point(
        &ctx,
        &RemoteHostStatus {
            host: "node02".into(),
            online: true,
            last_seq: Some(1),
            age_s: Some(0.1),
            ..RemoteHostStatus::default()
        },
        0,
    ));
    points.push(tick_point(
        &ctx,
        &TickTiming {
            duration_ms: Some(1.0),
            ..TickTiming::default()
        },
        0,
    ));
    points.extend(super::agent::samples(&ctx));
    points
}

/// Every measurement, tag and field coolantd writes, derived by running the functions above on
/// fully populated samples (so it cannot drift from what is written).
pub fn catalog() -> Vec<MeasurementSchema> {
    let points = sample_points();
    let mut out: Vec<MeasurementSchema> = Vec::new();
    for p in points {
        let idx = match out.iter().position(|m| m.name == p.measurement) {
            Some(i) => i,
            None => {
                out.push(MeasurementSchema {
                    name: p.measurement.clone(),
                    tags: Vec::new(),
                    fields: BTreeMap::new(),
                });
                out.len() - 1
            }
        };
        let m = &mut out[idx];
        for (k, _) in &p.tags {
            if !m.tags.contains(k) {
                m.tags.push(k.clone());
            }
        }
        for (k, v) in &p.fields {
            let kind = match v {
                FieldValue::Float(_) => FieldKind::Float,
                FieldValue::Int(_) | FieldValue::UInt(_) => FieldKind::Int,
                FieldValue::Bool(_) => FieldKind::Bool,
                FieldValue::Str(_) => FieldKind::Str,
            };
            m.fields.insert(k.clone(), kind);
        }
    }
    out
}
