//! `coolantd probe`: read everything once, write nothing. (`sim` is in `service::simulate`,
//! `restore` in `service::restore`; their old paths here are kept.)

use super::daemon::{load_profiles, open_gpus};
pub use super::restore::{restore, RestoreTarget};
pub use super::simulate::sim_only;
use crate::collect::modbus::ModbusCdu;
use crate::config::Config;
use crate::model::{CduSample, GpuSample, GpuSlowSample, GpuStatic};
use crate::sim::SimRuntime;
use anyhow::Context as _;
use serde::Serialize;
use std::fmt::Write as _;

use std::time::Duration;

#[derive(Serialize)]
struct ProbeGpu {
    #[serde(rename = "static")]
    facts: GpuStatic,
    sample: GpuSample,
    slow: Option<GpuSlowSample>,
}

#[derive(Serialize)]
struct ProbeReport {
    host: String,
    gpus: Vec<ProbeGpu>,
    cdus: Vec<CduSample>,
}

/// Reads every GPU and every configured CDU register once and prints them. It holds no
/// write path: no Modbus write and no NVML setter is reachable from here.
pub async fn probe(cfg: Config, json: bool) -> anyhow::Result<()> {
    let host = cfg.site.host_name();
    let profiles = load_profiles(&cfg)?;
    let sim = match &cfg.simulator {
        Some(sc) => Some(
            SimRuntime::start(
                sc,
                &cfg.path,
                &cfg.profiles_path(),
                &host,
                &profiles.gpu,
                false,
            )
            .await?,
        ),
        None => None,
    };
    let gpus = open_gpus(&cfg, &host, &profiles.gpu, sim.as_ref())?;
    let mut report = ProbeReport {
        host: host.clone(),
        gpus: Vec::new(),
        cdus: Vec::new(),
    };
    if let Some(g) = &gpus {
        let now = Duration::ZERO;
        let fast = g.read_fast(now);
        let slow = g.read_slow(now);
        for st in g.inventory() {
            let sample = fast.iter().find(|s| s.key == st.key).cloned();
            let slow = slow.iter().find(|s| s.key == st.key).cloned();
            if let Some(sample) = sample {
                report.gpus.push(ProbeGpu {
                    facts: st,
                    sample,
                    slow,
                });
            }
        }
    }
    for c in &cfg.cdus {
        let mut client = ModbusCdu::new(c, profiles.cdu[&c.name].clone());
        report.cdus.push(client.poll(Duration::ZERO).await);
    }
    if let Some(s) = sim {
        s.stop();
    }
    let units: Vec<Vec<RegisterFacts>> = cfg
        .cdus
        .iter()
        .map(|c| {
            profiles.cdu[&c.name]
                .registers
                .iter()
                .map(|r| RegisterFacts {
                    unit: r.unit.clone(),
                    plausible: r.plausible,
                    address: r.address,
                })
                .collect()
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&probe_json(&report, &units, unix_ns()))
                .context("encoding the probe report")?
        );
    } else {
        print!("{}", table(&report, &units));
    }
    Ok(())
}

/// What the profile says about a register, beside its reading.
struct RegisterFacts {
    unit: String,
    plausible: Option<[f64; 2]>,
    address: u16,
}

fn unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A value in the documented JSON shape (docs/json.md): `{"value": 24.75, "unit": "°C"}`.
fn value_json(v: f64, unit: &str) -> serde_json::Value {
    serde_json::json!({ "value": v, "unit": unit })
}

/// A missing value in the documented JSON shape: a human message and a stable snake_case kind.
fn error_json(message: &str, kind: &str) -> serde_json::Value {
    serde_json::json!({ "error": message, "kind": kind })
}

fn opt_json(v: Option<f64>, unit: &str) -> serde_json::Value {
    match v {
        Some(v) => value_json(v, unit),
        None => error_json("not reported by this GPU", "not_supported"),
    }
}

/// The stable snake_case word for a sensor fault (the `kind` of the error shape).
fn fault_kind(e: &crate::model::SensorFault) -> &'static str {
    e.kind()
}

/// Plausibility verdict of one reading: a stable word and a human message.
fn verdict(
    value: &Result<f64, crate::model::SensorFault>,
    facts: Option<&RegisterFacts>,
) -> (&'static str, String) {
    match (value, facts.and_then(|f| f.plausible)) {
        (Err(crate::model::SensorFault::Implausible { value, min, max }), _) => (
            "implausible",
            format!("{value} is outside the plausible range {min}..={max}"),
        ),
        (Err(e), _) => ("unreadable", e.to_string()),
        (Ok(v), Some([lo, hi])) => ("plausible", format!("{v} is within {lo}..={hi}")),
        (Ok(_), None) => (
            "no_range",
            "the profile gives no plausible range for this register".to_string(),
        ),
    }
}

/// `probe --json`: the shape of docs/schemas/probe.schema.json. Values carry their unit,
/// missing values say why, timestamps are Unix ns, enums are snake_case words.
fn probe_json(r: &ProbeReport, units: &[Vec<RegisterFacts>], now_ns: i64) -> serde_json::Value {
    let gpus: Vec<serde_json::Value> = r
        .gpus
        .iter()
        .map(|g| {
            let s = &g.sample;
            serde_json::json!({
                "gpu": s.key.to_string(),
                "index": s.key.index,
                "name": g.facts.name,
                "uuid": g.facts.uuid,
                "core_temp": opt_json(s.core.map(|v| v.0), "°C"),
                "hbm_temp": opt_json(s.hbm.map(|v| v.0), "°C"),
                "power": opt_json(s.power_instant.map(|v| v.0), "W"),
                "power_average": opt_json(s.power_average.map(|v| v.0), "W"),
                "power_limit": opt_json(s.enforced_limit.map(|v| v.0), "W"),
                "sm_clock": opt_json(s.sm_clock.map(|v| v.0), "MHz"),
                "mem_clock": opt_json(s.mem_clock.map(|v| v.0), "MHz"),
                "utilization": opt_json(s.utilization.map(|v| v.0), "%"),
                "slowdown_temp": value_json(g.facts.slowdown.0, "°C"),
                "gpu_max_temp": value_json(g.facts.gpu_max.0, "°C"),
                "hbm_max_temp": value_json(g.facts.hbm_max.0, "°C"),
                "power_limit_min": value_json(g.facts.power_min.0, "W"),
                "power_limit_max": value_json(g.facts.power_max.0, "W"),
                "throttle_reasons": s.throttle_reasons,
                "pstate": s.pstate,
                "source": s.source,
                "energy": opt_json(g.slow.as_ref().and_then(|x| x.energy).map(|e| e.0), "J"),
                // Durations in seconds, like every duration in coolantd's JSON.
                "power_violation_time": opt_json(
                    g.slow.as_ref().and_then(|x| x.violation_power_ns).map(|n| n as f64 / 1e9),
                    "s"
                ),
                "thermal_violation_time": opt_json(
                    g.slow.as_ref().and_then(|x| x.violation_thermal_ns).map(|n| n as f64 / 1e9),
                    "s"
                ),
                "ecc_corrected": g.slow.as_ref().and_then(|x| x.ecc_corrected),
            })
        })
        .collect();
    let cdus: Vec<serde_json::Value> = r
        .cdus
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let regs: Vec<serde_json::Value> = c
                .registers
                .iter()
                .enumerate()
                .map(|(j, reg)| {
                    let facts = units.get(i).and_then(|u| u.get(j));
                    let unit = facts.map_or("", |f| f.unit.as_str());
                    let (word, message) = verdict(&reg.value, facts);
                    serde_json::json!({
                        "name": reg.name,
                        "role": reg.role,
                        "address": facts.map(|f| f.address),
                        "reading": match &reg.value {
                            Ok(v) => value_json(*v, unit),
                            Err(e) => error_json(&e.to_string(), fault_kind(e)),
                        },
                        "plausible": facts.and_then(|f| f.plausible),
                        "verdict": word,
                        "verdict_message": message,
                    })
                })
                .collect();
            serde_json::json!({ "cdu": c.cdu, "registers": regs })
        })
        .collect();
    serde_json::json!({
        "schema": "coolantd.probe/1",
        "host": r.host,
        "probed_at_unix_ns": now_ns,
        "gpus": gpus,
        "cdus": cdus,
    })
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn table(r: &ProbeReport, units: &[Vec<RegisterFacts>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "GPUs on {} ({}):", r.host, r.gpus.len());
    let _ = writeln!(
        out,
        "  {:<14} {:<24} {:>7} {:>7} {:>8} {:>8} {:>8} {:>6} {:>5} {:>8} {:>10} {:>3}  uuid",
        "gpu",
        "name",
        "core°C",
        "hbm°C",
        "power W",
        "avg W",
        "limit W",
        "SM MHz",
        "util",
        "slowdown",
        "throttle",
        "P"
    );
    for g in &r.gpus {
        let s = &g.sample;
        let _ = writeln!(
            out,
            "  {:<14} {:<24} {:>7} {:>7} {:>8} {:>8} {:>8} {:>6} {:>5} {:>8} {:>10} {:>3}  {}",
            s.key.to_string(),
            g.facts.name,
            opt(s.core.map(|v| format!("{:.0}", v.0))),
            opt(s.hbm.map(|v| format!("{:.0}", v.0))),
            opt(s.power_instant.map(|v| format!("{:.1}", v.0))),
            opt(s.power_average.map(|v| format!("{:.1}", v.0))),
            opt(s.enforced_limit.map(|v| format!("{:.0}", v.0))),
            opt(s.sm_clock.map(|v| format!("{:.0}", v.0))),
            opt(s.utilization.map(|v| format!("{:.0}%", v.0))),
            format!("{:.0}", g.facts.slowdown.0),
            opt(s.throttle_reasons.map(|b| format!("{b:#x}"))),
            opt(s.pstate),
            g.facts.uuid
        );
        if let Some(slow) = &g.slow {
            let _ = writeln!(
                out,
                "  {:<14} energy {} J, power-violation {} ns, thermal-violation {} ns, corrected ECC {}",
                "",
                opt(slow.energy.map(|e| format!("{:.0}", e.0))),
                opt(slow.violation_power_ns),
                opt(slow.violation_thermal_ns),
                opt(slow.ecc_corrected)
            );
        }
    }
    for (i, c) in r.cdus.iter().enumerate() {
        let _ = writeln!(out, "CDU {} ({} registers):", c.cdu, c.registers.len());
        let _ = writeln!(
            out,
            "  {:<24} {:<28} {:>7} {:>12} {:<6} {:<12} message",
            "register", "role", "address", "value", "unit", "verdict"
        );
        for (j, reg) in c.registers.iter().enumerate() {
            let facts = units.get(i).and_then(|u| u.get(j));
            let role = reg.role.map_or_else(|| "-".to_string(), |r| r.to_string());
            let value = match &reg.value {
                Ok(v) => format!("{:.3}", v)
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string(),
                Err(_) => "-".to_string(),
            };
            let (word, message) = verdict(&reg.value, facts);
            let _ = writeln!(
                out,
                "  {:<24} {:<28} {:>7} {:>12} {:<6} {:<12} {}",
                reg.name,
                role,
                opt(facts.map(|f| f.address)),
                value,
                facts.map_or("", |f| f.unit.as_str()),
                word,
                message
            );
        }
    }
    out
}
