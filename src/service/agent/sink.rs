//! The agent's points for InfluxDB: its GPUs' `gpu` points, made by the same schema functions
//! as the daemon's (so fleet telemetry has one schema whoever wrote it), its own `agent` and
//! `agent_gpu` points, its alarm transitions and the sink's own health. The sink itself is the
//! daemon's (`sink::influx`): spooled to disk before `submit` returns, nothing lost while the
//! database is away.

use crate::model::{AlarmEvent, GpuSample, GpuSlowSample, GpuStatic, Point};
use crate::sink::influx::SinkStats;
use crate::sink::schema::{self, AgentGpuHealth, AgentHealth, Ctx};

/// What one tick contributes.
pub(super) struct TickPoints<'a> {
    pub wall_ns: i64,
    pub samples: &'a [GpuSample],
    /// The slow counters (energy, violations), only in the tick after a slow read.
    pub slow: &'a [GpuSlowSample],
    pub inventory: &'a [GpuStatic],
    pub health: &'a AgentHealth,
    pub gpus: &'a [AgentGpuHealth],
    pub alarms: &'a [(AlarmEvent, i64)],
    /// The sink's own counters, when there is a sink.
    pub influx: Option<SinkStats>,
}

/// The tick's points, in the order they are written.
pub(super) fn points(ctx: &Ctx, t: &TickPoints<'_>) -> Vec<Point> {
    let static_of = |index: u32| t.inventory.iter().find(|st| st.key.index == index);
    let mut out = Vec::with_capacity(2 * t.samples.len() + 2);
    for s in t.samples {
        if let Some(st) = static_of(s.key.index) {
            out.push(schema::gpu_point(ctx, st, s, t.wall_ns));
        }
    }
    for s in t.slow {
        if let Some(st) = static_of(s.key.index) {
            out.push(schema::gpu_slow_point(ctx, st, s, t.wall_ns));
        }
    }
    out.push(schema::agent_point(ctx, t.health, t.wall_ns));
    for g in t.gpus {
        out.push(schema::agent_gpu_point(ctx, g, t.wall_ns));
    }
    for (ev, wall_ns) in t.alarms {
        out.push(schema::alarm_point(ctx, ev, *wall_ns));
    }
    if let Some(stats) = &t.influx {
        out.push(schema::telemetry_point(ctx, stats, t.wall_ns));
    }
    out
}
