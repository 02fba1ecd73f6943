//! The host agent's own points (`coolantd agent`): measurement `agent`, one point per tick
//! with the agent's link, lease and cap counters, and `agent_gpu`, one point per GPU per tick
//! with what its local guard does. The GPUs' readings themselves are the `gpu` measurement,
//! exactly as the daemon writes them, so fleet dashboards need no second schema.

use super::{counter, f, int, Ctx};
use crate::model::{FieldValue, Point};

/// Measurement names.
pub const AGENT: &str = "agent";
pub const AGENT_GPU: &str = "agent_gpu";

/// The agent's figures after a tick: counters since the agent started, gauges as of now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentHealth {
    /// Sequence number of the last `readings` message.
    pub seq: u64,
    pub readings_published: u64,
    /// Readings not handed to the broker (disconnected, or the client's queue full).
    pub readings_unsent: u64,
    pub broker_connected: bool,
    pub lease_active: bool,
    pub leases_accepted: u64,
    pub leases_expired: u64,
    pub caps_applied: u64,
    pub caps_refused: u64,
    pub cap_write_failures: u64,
    /// For the last lease: from taking it from the MQTT session to its ack handed back to it.
    pub ack_latency_ms: Option<f64>,
    pub tick_duration_ms: Option<f64>,
    /// GPU values NVML did not return (a core temperature or power missing from a read).
    pub read_failures: u64,
    pub guards_engaged: u64,
    pub alarms_active: u64,
    pub dry_run: bool,
}

/// One GPU's guard after a tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AgentGpuHealth {
    pub index: u32,
    /// The guard holds the cap under the GPU's original limit.
    pub guard_engaged: bool,
    /// The GPU is at its slowdown margin: the guard cut its cap this tick.
    pub guard_critical: bool,
    /// The cap the guard alone would set.
    pub guard_cap_w: f64,
    /// The cap the controller's lease holds, while one does.
    pub lease_cap_w: Option<f64>,
    /// The cap decided (the lower of lease and guard): what the GPU is set to.
    pub decided_cap_w: f64,
}

/// Measurement `agent`.
pub fn agent_point(ctx: &Ctx, h: &AgentHealth, time_ns: i64) -> Point {
    let mut p = Point::new(AGENT, time_ns)
        .tag("site", ctx.site)
        .tag("host", ctx.host)
        .field("broker_connected", FieldValue::Bool(h.broker_connected))
        .field("lease_active", FieldValue::Bool(h.lease_active))
        .field("dry_run", FieldValue::Bool(h.dry_run));
    for (key, v) in [
        ("seq", h.seq),
        ("readings_published", h.readings_published),
        ("readings_unsent", h.readings_unsent),
        ("leases_accepted", h.leases_accepted),
        ("leases_expired", h.leases_expired),
        ("caps_applied", h.caps_applied),
        ("caps_refused", h.caps_refused),
        ("cap_write_failures", h.cap_write_failures),
        ("read_failures", h.read_failures),
        ("guards_engaged", h.guards_engaged),
        ("alarms_active", h.alarms_active),
    ] {
        p = int(p, key, counter(Some(v)));
    }
    p = f(p, "ack_latency_ms", h.ack_latency_ms);
    f(p, "tick_duration_ms", h.tick_duration_ms)
}

/// Measurement `agent_gpu`.
pub fn agent_gpu_point(ctx: &Ctx, g: &AgentGpuHealth, time_ns: i64) -> Point {
    let p = Point::new(AGENT_GPU, time_ns)
        .tag("site", ctx.site)
        .tag("host", ctx.host)
        .tag("gpu", g.index.to_string())
        .field("guard_engaged", FieldValue::Bool(g.guard_engaged))
        .field("guard_critical", FieldValue::Bool(g.guard_critical));
    let p = f(p, "guard_cap_w", Some(g.guard_cap_w));
    let p = f(p, "lease_cap_w", g.lease_cap_w);
    f(p, "decided_cap_w", Some(g.decided_cap_w))
}

/// Fully populated sample points, for the catalog.
pub(super) fn samples(ctx: &Ctx) -> Vec<Point> {
    vec![
        agent_point(
            ctx,
            &AgentHealth {
                ack_latency_ms: Some(1.0),
                tick_duration_ms: Some(1.0),
                ..AgentHealth::default()
            },
            0,
        ),
        agent_gpu_point(
            ctx,
            &AgentGpuHealth {
                lease_cap_w: Some(500.0),
                ..AgentGpuHealth::default()
            },
            0,
        ),
    ]
}
