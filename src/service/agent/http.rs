//! The agent's `/healthz`, `/readyz`, `/metrics` and `/status`: the daemon's endpoint
//! (`service::http`) serving a snapshot the agent fills. `/metrics` is rendered from the
//! snapshot's points, so Prometheus sees the names InfluxDB stores (`gpu_*`, `agent_*`,
//! `agent_gpu_*`) plus the process metrics (`coolantd_tick_duration_seconds`, ...).
//!
//! The agent has no control loop state of its own: it is `running` while its broker session
//! is up and `degraded` while it is not (the guard still protects the GPUs), and ready when
//! it is connected and read its GPUs; `/readyz` then names the active alarms.

use crate::model::{Alarm, ControlState, GpuSample, GpuStatic, GpuStatus, Point, Snapshot};
use crate::sink::schema::Ctx;

/// The snapshot served before the first tick. The agent controls no temperature: no set
/// point (JSON null).
pub(super) fn empty_snapshot(site: &str, host: &str, dry_run: bool) -> Snapshot {
    Snapshot::before_first_tick(site, host, dry_run, f64::NAN, 0)
}

/// What a tick shows.
pub(super) struct TickView<'a> {
    pub tick: u64,
    pub wall_ns: i64,
    pub dry_run: bool,
    pub connected: bool,
    pub samples: &'a [GpuSample],
    pub inventory: &'a [GpuStatic],
    pub alarms: Vec<Alarm>,
    pub points: Vec<Point>,
}

pub(super) fn snapshot(ctx: &Ctx, v: TickView<'_>) -> Snapshot {
    let gpus: Vec<GpuStatus> = v
        .samples
        .iter()
        .filter_map(|s| {
            let st = v.inventory.iter().find(|st| st.key == s.key)?;
            Some(GpuStatus {
                key: s.key.clone(),
                uuid: st.uuid.clone(),
                name: st.name.clone(),
                core: s.core.map(|c| c.get()),
                hbm: s.hbm.map(|c| c.get()),
                power: s.power_instant.map(|w| w.get()),
                limit: s.enforced_limit.map(|w| w.get()),
                margin_to_slowdown: s.core.map(|c| c.margin_to(st.slowdown).get()),
            })
        })
        .collect();
    let read = gpus.iter().any(|g| g.core.is_some());
    let mut snap = empty_snapshot(ctx.site, ctx.host, v.dry_run);
    snap.time_ns = v.wall_ns;
    snap.tick = v.tick;
    snap.state = if v.connected {
        ControlState::Running
    } else {
        ControlState::Degraded
    };
    snap.controlled = gpus
        .iter()
        .filter_map(|g| g.core)
        .filter(|c| c.is_finite())
        .reduce(f64::max);
    snap.ready = v.connected && read;
    snap.gpus = gpus;
    snap.alarms = v.alarms;
    snap.points = v.points;
    snap
}
