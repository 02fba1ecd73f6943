//! The per-host figures docs/scale.md builds on, measured with coolantd's own code:
//!
//! - the rack wire format's `Readings` for one 8-GPU host (`wire::encode`), and the MQTT 3.1.1
//!   PUBLISH packet that carries it (rumqttc's encoder, at QoS 0 and 1): payload plus framing;
//! - the InfluxDB line protocol the metric schema produces for one 8-GPU host tick
//!   (`sink::schema::gpu_point` × 8 and `tick_point`, `sink::lineproto::encode_batch`), and
//!   its size after the sink's own gzip (`sink::influx::gzip_body`), for one tick per write
//!   (1 Hz with the default 1 s flush) and ten ticks per write (10 Hz).
//!
//! Values move from tick to tick as real readings do (integer °C, mW power), so gzip is not
//! flattered by repeated lines. Run: `cargo run --example scale_figures`.

use coolantd::model::{GpuKey, GpuSample, GpuStatic, Source, TickTiming};
use coolantd::sink::influx::gzip_body;
use coolantd::sink::lineproto::encode_batch;
use coolantd::sink::schema::{gpu_point, tick_point, Ctx};
use coolantd::units::{Celsius, Megahertz, Percent, Watts};
use coolantd::wire::{self, Cap, CapAck, CapLease, CapResult, GpuReading, Kind, Readings, Topic};
use std::time::Duration;

/// A host name of a 12,500-host site: hall, rack, node.
const HOST: &str = "h1-r0781-n08";
const SITE: &str = "site1";
const GPUS: u32 = 8;
const T0_NS: i64 = 1_764_000_000_000_000_000;

/// A deterministic walk, so each tick's values differ as real readings do.
fn jitter(tick: u32, gpu: u32, span: u32) -> f64 {
    let x = (tick.wrapping_mul(2_654_435_761) ^ gpu.wrapping_mul(40_503)) % (span + 1);
    f64::from(x)
}

fn statics(gpu: u32) -> GpuStatic {
    GpuStatic {
        key: GpuKey {
            host: HOST.into(),
            index: gpu,
        },
        uuid: format!("GPU-3f2a9c1e-7b4d-{gpu:04x}-9e21-5c8d0a6f41b2"),
        name: "NVIDIA H100 80GB HBM3".into(),
        profile: "h100-sxm".into(),
        slowdown: Celsius(90.0),
        gpu_max: Celsius(87.0),
        hbm_max: Celsius(95.0),
        shutdown: Celsius(92.0),
        power_min: Watts(200.0),
        power_max: Watts(700.0),
        power_default: Watts(700.0),
    }
}

fn sample(tick: u32, gpu: u32) -> GpuSample {
    GpuSample {
        key: statics(gpu).key,
        source: Source::Nvml,
        at: Duration::from_secs(u64::from(tick)),
        core: Some(Celsius(58.0 + jitter(tick, gpu, 8))),
        hbm: Some(Celsius(63.0 + jitter(tick, gpu + 8, 6))),
        power_instant: Some(Watts(500.0 + jitter(tick, gpu, 199_999) / 1000.0)),
        power_average: Some(Watts(510.0 + jitter(tick, gpu + 3, 99_999) / 1000.0)),
        enforced_limit: Some(Watts(700.0)),
        sm_clock: Some(Megahertz(1755.0 + jitter(tick, gpu, 225))),
        mem_clock: Some(Megahertz(2619.0)),
        utilization: Some(Percent(90.0 + jitter(tick, gpu, 10))),
        throttle_reasons: Some(if jitter(tick, gpu, 3) == 0.0 { 4 } else { 0 }),
        pstate: Some(0),
    }
}

fn influx_points(ticks: u32) -> Vec<coolantd::model::Point> {
    let ctx = Ctx {
        site: SITE,
        host: HOST,
    };
    let mut points = Vec::new();
    for tick in 0..ticks {
        let t = T0_NS + i64::from(tick) * 100_000_000;
        for gpu in 0..GPUS {
            points.push(gpu_point(&ctx, &statics(gpu), &sample(tick, gpu), t));
        }
        let timing = TickTiming {
            duration_ms: Some(1.5 + jitter(tick, 0, 900) / 1000.0),
            period_ms: 1000.0,
            cdu_budget_ms: 500.0,
            overruns: 0,
        };
        points.push(tick_point(&ctx, &timing, t));
    }
    points
}

fn influx_lines(ticks: u32) -> String {
    encode_batch(&influx_points(ticks))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let readings = Readings {
        v: None,
        host: HOST.into(),
        session: 0x5eed_1234_abcd_ef01,
        seq: 1_234_567,
        sent_unix_ms: 1_764_000_000_123,
        facts_hash: 0x0123_4567_89ab_cdef,
        gpus: (0..GPUS)
            .map(|gpu| {
                let s = sample(7, gpu);
                GpuReading {
                    index: gpu,
                    core_c: s.core.map(|c| c.get() as f32),
                    hbm_c: s.hbm.map(|c| c.get() as f32),
                    power_w: s.power_instant.map(|w| w.get() as f32),
                    limit_w: s.enforced_limit.map(|w| w.get() as f32),
                    throttle: s.throttle_reasons,
                    energy_mj: Some(123_456_789_012),
                }
            })
            .collect(),
    };
    let payload = wire::encode(&readings)?;
    let topic = Topic::format("coolantd", HOST, Kind::Readings);
    let qos0 = rumqttc::Publish::new(topic.as_str(), rumqttc::QoS::AtMostOnce, payload.clone());
    let mut qos1 =
        rumqttc::Publish::new(topic.as_str(), rumqttc::QoS::AtLeastOnce, payload.clone());
    // A QoS 1 packet carries a packet id; rumqttc counts it only when it is set.
    qos1.pkid = 1;
    println!("## MQTT, one 8-GPU Readings (host `{HOST}`, topic `{topic}`)");
    println!("| what | bytes |");
    println!("|---|---|");
    println!("| protobuf payload | {} |", payload.len());
    println!("| topic | {} |", topic.len());
    println!("| PUBLISH packet, QoS 0 | {} |", qos0.size());
    println!(
        "| PUBLISH packet, QoS 1 (+ 4-byte PUBACK back) | {} |",
        qos1.size()
    );
    println!(
        "| framing over payload, QoS 0 | {} |",
        qos0.size() - payload.len()
    );
    // The caps a controller sends one host, and the agent's acknowledgement, all 8 GPUs.
    let lease = wire::encode(&CapLease {
        v: None,
        host: HOST.into(),
        id: 1_234_567,
        lease_ms: 5000,
        caps: (0..GPUS)
            .map(|index| Cap {
                index,
                limit_w: 612.5,
            })
            .collect(),
    })?;
    let ack = wire::encode(&CapAck {
        v: None,
        host: HOST.into(),
        session: 0x5eed_1234_abcd_ef01,
        id: 1_234_567,
        dry_run: false,
        results: (0..GPUS)
            .map(|index| CapResult {
                index,
                enforced_w: Some(612.5),
                refusal: None,
                detail: None,
            })
            .collect(),
    })?;
    for (kind, bytes) in [(Kind::Caps, lease), (Kind::Acks, ack)] {
        let mut p = rumqttc::Publish::new(
            Topic::format("coolantd", HOST, kind),
            rumqttc::QoS::AtLeastOnce,
            bytes.clone(),
        );
        p.pkid = 1;
        println!(
            "| {kind}: payload / PUBLISH QoS 1 | {} / {} |",
            bytes.len(),
            p.size()
        );
    }

    println!();
    println!("## InfluxDB line protocol, host `{HOST}`, {GPUS} GPUs + the tick point");
    println!("| write | lines | field values | bytes | gzip bytes | ratio |");
    println!("|---|---|---|---|---|---|");
    for ticks in [1, 10] {
        let body = influx_lines(ticks);
        let gz = gzip_body(body.as_bytes())?;
        println!(
            "| {ticks} tick(s) | {} | {} | {} | {} | {:.1} |",
            body.lines().count(),
            influx_points(ticks)
                .iter()
                .map(|p| p.fields.len())
                .sum::<usize>(),
            body.len(),
            gz.len(),
            body.len() as f64 / gz.len() as f64
        );
    }
    println!();
    println!(
        "One gpu line:\n\n```text\n{}\n```",
        influx_lines(1).lines().next().unwrap_or_default()
    );
    Ok(())
}
