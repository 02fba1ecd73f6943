//! The metric schema: how the contract types of [`crate::model`] become [`Point`]s.
//!
//! These names are the public interface of coolantd's telemetry. InfluxDB stores them as
//! measurement + field, MQTT telemetry uses the same keys, and Prometheus `/metrics` shows
//! them as `<measurement>_<field>`. `docs/metrics.md` documents every one of them; the tests
//! check that the documentation, the Grafana dashboards and this module agree, using
//! [`catalog`], which is produced by these same functions.
//!
//! Every metric and measurement name is made in this module: the point builders here,
//! `catalog.rs` (the catalog and the field documentation), `process.rs` (the daemon's own
//! `coolantd_*` metrics on `/metrics`). `tests/schema_names.rs` fails when a name literal
//! appears anywhere else in `src/`.
//!
//! Field names carry their unit (`_c` °C, `_k` kelvin, `_w` watts, `_mhz`, `_pct` percent,
//! `_lpm` l/min, `_kpa`, `_j` joules, `_ns` nanoseconds). A value that is unknown is left out of
//! the point rather than written as a placeholder.

use crate::model::{
    AlarmEvent, AlarmTransition, CduSample, CduStatus, ControlState, FieldValue, GpuSample,
    GpuSlowSample, GpuStatic, Mode, Point, Role, Severity, TickTiming,
};
pub mod agent;
mod catalog;
pub mod process;

pub use agent::{agent_gpu_point, agent_point, AgentGpuHealth, AgentHealth, AGENT, AGENT_GPU};
pub use catalog::{catalog, field_help, field_unit, sample_points, FieldKind, MeasurementSchema};

/// Where the points come from: the site and this daemon's host.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub site: &'a str,
    pub host: &'a str,
}

/// Measurement names.
pub const GPU: &str = "gpu";
pub const COOLANT: &str = "coolant";
pub const COOLANT_REGISTER: &str = "coolant_register";
pub const CONTROL: &str = "control";
pub const ALARM: &str = "alarm";
pub const TELEMETRY: &str = "telemetry";
pub const CDU_LINK: &str = "cdu_link";
pub const TICK: &str = "tick";
pub const RACK_HOST: &str = "rack_host";

/// NVML clocks-event ("throttle") reason bits and the boolean field each becomes.
/// Values from `nvml.h` (`nvmlClocksEventReason*`, formerly `nvmlClocksThrottleReason*`).
pub const THROTTLE_REASONS: [(u64, &str); 9] = [
    (0x0000_0001, "throttle_gpu_idle"),
    (0x0000_0002, "throttle_applications_clocks"),
    (0x0000_0004, "throttle_sw_power_cap"),
    (0x0000_0008, "throttle_hw_slowdown"),
    (0x0000_0010, "throttle_sync_boost"),
    (0x0000_0020, "throttle_sw_thermal"),
    (0x0000_0040, "throttle_hw_thermal"),
    (0x0000_0080, "throttle_hw_power_brake"),
    (0x0000_0100, "throttle_display_clocks"),
];

fn f(p: Point, key: &str, v: Option<f64>) -> Point {
    p.field_f64(key, v)
}

fn int(p: Point, key: &str, v: Option<i64>) -> Point {
    match v {
        Some(v) => p.field(key, FieldValue::Int(v)),
        None => p,
    }
}

/// Counters are written as signed integers (saturating at `i64::MAX`, centuries away for
/// nanosecond counters) because InfluxQL and Flux handle `int` in every function, `uint` not.
fn counter(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn gpu_tags(ctx: &Ctx, st: &GpuStatic, time_ns: i64) -> Point {
    // The GPU's own host, which differs from this daemon's for samples received over MQTT.
    let host = if st.key.host.is_empty() {
        ctx.host
    } else {
        st.key.host.as_str()
    };
    Point::new(GPU, time_ns)
        .tag("site", ctx.site)
        .tag("host", host)
        .tag("gpu", st.key.index.to_string())
        .tag("uuid", st.uuid.as_str())
        .tag("model", st.name.as_str())
}

/// The fast GPU reading (measurement `gpu`).
pub fn gpu_point(ctx: &Ctx, st: &GpuStatic, s: &GpuSample, time_ns: i64) -> Point {
    let mut p = gpu_tags(ctx, st, time_ns);
    let core = s.core.map(|c| c.get());
    let hbm = s.hbm.map(|c| c.get());
    p = f(p, "core_temp_c", core);
    p = f(p, "hbm_temp_c", hbm);
    p = f(
        p,
        "margin_to_slowdown_k",
        s.core.map(|c| c.margin_to(st.slowdown).get()),
    );
    p = f(
        p,
        "margin_to_gpu_max_k",
        s.core.map(|c| c.margin_to(st.gpu_max).get()),
    );
    p = f(
        p,
        "hbm_margin_k",
        s.hbm.map(|c| c.margin_to(st.hbm_max).get()),
    );
    p = f(p, "slowdown_temp_c", Some(st.slowdown.get()));
    p = f(p, "hbm_max_temp_c", Some(st.hbm_max.get()));
    p = f(p, "power_w", s.power_instant.map(|w| w.get()));
    p = f(p, "power_avg_w", s.power_average.map(|w| w.get()));
    p = f(p, "power_limit_w", s.enforced_limit.map(|w| w.get()));
    p = f(p, "power_limit_max_w", Some(st.power_max.get()));
    p = f(p, "sm_clock_mhz", s.sm_clock.map(|m| m.get()));
    p = f(p, "mem_clock_mhz", s.mem_clock.map(|m| m.get()));
    p = f(p, "utilization_pct", s.utilization.map(|u| u.get()));
    if let Some(bits) = s.throttle_reasons {
        p = p.field(
            "throttle_reasons",
            FieldValue::Int(counter(Some(bits)).unwrap_or(i64::MAX)),
        );
        for (bit, name) in THROTTLE_REASONS {
            p = p.field(name, FieldValue::Bool(bits & bit != 0));
        }
    }
    int(p, "pstate", s.pstate.map(i64::from))
}

/// The fields of [`gpu_slow_point`]. They arrive at the slow cadence, so a tick without them
/// says nothing about their values (consumers that keep a current value, like Sparkplug,
/// hold the last one).
pub const GPU_SLOW_FIELDS: [&str; 4] = [
    "energy_j",
    "violation_power_ns",
    "violation_thermal_ns",
    "ecc_corrected",
];

/// The slow GPU counters (measurement `gpu`, written at the slow cadence).
pub fn gpu_slow_point(ctx: &Ctx, st: &GpuStatic, s: &GpuSlowSample, time_ns: i64) -> Point {
    let mut p = gpu_tags(ctx, st, time_ns);
    let [energy, power_ns, thermal_ns, ecc] = GPU_SLOW_FIELDS;
    p = f(p, energy, s.energy.map(|j| j.get()));
    p = int(p, power_ns, counter(s.violation_power_ns));
    p = int(p, thermal_ns, counter(s.violation_thermal_ns));
    int(p, ecc, counter(s.ecc_corrected))
}

/// Role → field name in measurement `coolant`.
pub fn coolant_field(role: Role) -> Option<&'static str> {
    Some(match role {
        Role::SupplyTemperature => "supply_temp_c",
        Role::ReturnTemperature => "return_temp_c",
        Role::Flow => "flow_lpm",
        Role::DifferentialPressure => "dp_kpa",
        Role::PumpSpeedCommand => "pump_command_pct",
        Role::PumpSpeedFeedback => "pump_feedback_pct",
        Role::FacilityWaterTemperature => "facility_water_temp_c",
        Role::ValvePosition => "valve_pct",
        Role::RoomTemperature => "room_temp_c",
        Role::RoomHumidity => "room_humidity_pct",
        Role::Leak => "leak",
        Role::RemoteEnable => "remote_enable",
        // The heartbeat is a counter the controller writes; plotting it tells nobody anything.
        Role::Watchdog => return None,
    })
}

/// One CDU poll (measurement `coolant`). Redundant sensors of a role are combined worst-case
/// ([`CduSample::worst`]), the value the controller acts on.
pub fn cdu_point(ctx: &Ctx, s: &CduSample, time_ns: i64) -> Point {
    let mut p = Point::new(COOLANT, time_ns)
        .tag("site", ctx.site)
        .tag("host", ctx.host)
        .tag("cdu", s.cdu.as_str());
    for role in Role::ALL {
        let Some(name) = coolant_field(role) else {
            continue;
        };
        let v = s.worst(role);
        p = match role {
            // Digital inputs arrive as 0/1 registers; anything above one half is "on".
            Role::Leak | Role::RemoteEnable => match v {
                Some(v) => p.field(name, FieldValue::Bool(v > 0.5)),
                None => p,
            },
            _ => f(p, name, v),
        };
    }
    let dt = s
        .worst(Role::ReturnTemperature)
        .zip(s.worst(Role::SupplyTemperature))
        .map(|(r, su)| r - su);
    p = f(p, "delta_t_k", dt);
    let faults = s.registers.iter().filter(|r| r.value.is_err()).count();
    p = p.field("fault_count", FieldValue::Int(faults as i64));
    p.field("register_count", FieldValue::Int(s.registers.len() as i64))
}

/// One point per register of a CDU poll (measurement `coolant_register`): its value when good,
/// and whether it faulted, so a dashboard can count faults per register over time.
pub fn register_points(ctx: &Ctx, s: &CduSample, time_ns: i64) -> Vec<Point> {
    s.registers
        .iter()
        .map(|r| {
            let mut p = Point::new(COOLANT_REGISTER, time_ns)
                .tag("site", ctx.site)
                .tag("host", ctx.host)
                .tag("cdu", s.cdu.as_str())
                .tag("register", r.name.as_str())
                .tag("role", r.role.map(Role::as_str).unwrap_or("none"));
            p = f(p, "value", r.value.as_ref().ok().copied());
            p.field("fault", FieldValue::Int(i64::from(r.value.is_err())))
        })
        .collect()
}

/// How a CDU's poller keeps up with the tick (measurement `cdu_link`, every tick): the age
/// of the sample the tick steered on, the last poll's duration and the counters of late
/// polls and superseded writes. A slow CDU shows here rather than in a stretched tick.
pub fn cdu_link_point(ctx: &Ctx, c: &CduStatus, time_ns: i64) -> Point {
    let l = &c.link;
    let mut p = Point::new(CDU_LINK, time_ns)
        .tag("site", ctx.site)
        .tag("host", ctx.host)
        .tag("cdu", c.name.as_str());
    p = f(p, "sample_age_ms", l.sample_age_ms);
    p = f(p, "poll_duration_ms", l.poll_ms);
    p = int(p, "late_polls", counter(Some(l.late_polls)));
    p = int(p, "superseded_writes", counter(Some(l.superseded_writes)));
    p = int(p, "requests", counter(Some(l.requests)));
    p = int(p, "timeouts", counter(Some(l.timeouts)));
    p.field("late", FieldValue::Bool(l.late))
}

/// The service loop's timing (measurement `tick`, every tick): the previous tick's duration
/// against the period, the budget a tick gives its CDUs, and the overrun counter.
pub fn tick_point(ctx: &Ctx, t: &TickTiming, time_ns: i64) -> Point {
    let mut p = Point::new(TICK, time_ns)
        .tag("site", ctx.site)
        .tag("host", ctx.host);
    p = f(p, "duration_ms", t.duration_ms);
    p = f(p, "period_ms", Some(t.period_ms));
    p = f(p, "cdu_budget_ms", Some(t.cdu_budget_ms));
    int(p, "overruns", counter(Some(t.overruns)))
}

/// Numeric code of a control state, for alert rules and `/metrics` (strings do not graph).
pub fn state_code(s: ControlState) -> i64 {
    match s {
        ControlState::Boot => 0,
        ControlState::Running => 1,
        ControlState::Degraded => 2,
        ControlState::Failsafe => 3,
        ControlState::Emergency => 4,
    }
}

/// The supervisor's summary plus one point per control loop (measurement `control`; loop
/// points carry a `loop` tag, the summary does not).
pub fn control_points(ctx: &Ctx, out: &crate::model::TickOutput, time_ns: i64) -> Vec<Point> {
    let mut v = Vec::with_capacity(out.loops.len() + 1);
    let mut p = Point::new(CONTROL, time_ns)
        .tag("site", ctx.site)
        .tag("host", ctx.host)
        .field("setpoint_c", FieldValue::Float(out.setpoint.get()));
    p = f(p, "controlled_c", out.controlled.map(|c| c.get()));
    p = p
        .field("state", FieldValue::Str(out.state.as_str().into()))
        .field("state_code", FieldValue::Int(state_code(out.state)))
        .field("mode", FieldValue::Str(out.mode.to_string()))
        .field("manual", FieldValue::Bool(out.mode == Mode::Manual))
        .field("ready", FieldValue::Bool(out.ready))
        .field(
            "active_alarms",
            FieldValue::Int(out.active_alarms.len() as i64),
        )
        .field("actuations", FieldValue::Int(out.actuations.len() as i64));
    v.push(p);
    for l in &out.loops {
        let mut p = Point::new(CONTROL, time_ns)
            .tag("site", ctx.site)
            .tag("host", ctx.host)
            .tag("loop", l.name.as_str());
        p = f(p, "loop_setpoint", Some(l.setpoint));
        p = f(p, "loop_measured", l.measured);
        p = f(p, "p_term", Some(l.p));
        p = f(p, "i_term", Some(l.i));
        p = f(p, "d_term", Some(l.d));
        p = f(p, "ff_term", Some(l.ff));
        p = f(p, "loop_output", Some(l.output));
        // The pump loop's feed-forward: whether it steers, and why not.
        if let Some(r) = out
            .feed_forward
            .iter()
            .find(|r| l.name.strip_prefix("pump:") == Some(r.cdu.as_str()))
        {
            p = p.field("ff_engaged", FieldValue::Bool(r.engaged));
            p = f(p, "ff_heat_load_w", r.heat_load_w);
            p = f(p, "ff_model_speed_pct", r.model_speed);
            p = f(p, "ff_correction", Some(r.correction));
            if let Some(why) = &r.reason {
                p = p.field("ff_off_reason", FieldValue::Str(why.clone()));
            }
        }
        v.push(p);
    }
    v
}

/// One alarm transition (measurement `alarm`).
pub fn alarm_point(ctx: &Ctx, e: &AlarmEvent, time_ns: i64) -> Point {
    let a = &e.alarm;
    let (transition, code) = match e.transition {
        AlarmTransition::Cleared => ("cleared", 0),
        AlarmTransition::Raised => ("raised", 1),
        AlarmTransition::Acknowledged => ("acknowledged", 2),
    };
    let severity = match a.severity {
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    };
    Point::new(ALARM, time_ns)
        .tag("site", ctx.site)
        .tag("host", ctx.host)
        .tag("alarm", a.id.as_str())
        .tag("severity", severity)
        .field("transition", FieldValue::Str(transition.into()))
        .field("transition_code", FieldValue::Int(code))
        .field(
            "active",
            FieldValue::Bool(e.transition != AlarmTransition::Cleared),
        )
        .field("latched", FieldValue::Bool(a.latched))
        .field("acknowledged", FieldValue::Bool(a.acknowledged))
        .field("cause_present", FieldValue::Bool(a.cause_present))
        .field(
            "severity_code",
            FieldValue::Int(match a.severity {
                Severity::Warning => 1,
                Severity::Critical => 2,
            }),
        )
        .field("message", FieldValue::Str(a.message.clone()))
}

/// The InfluxDB sink's own health, measurement `telemetry`: written every tick beside the
/// data it describes, so that `/metrics` and dashboards show a growing spool backlog (the
/// database is unreachable) or drops before anyone asks.
pub fn telemetry_point(ctx: &Ctx, stats: &crate::sink::influx::SinkStats, time_ns: i64) -> Point {
    let int = |v: u64| FieldValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
    Point::new(TELEMETRY, time_ns)
        .tag("site", ctx.site)
        .tag("host", ctx.host)
        .tag("sink", "influx")
        .field("written", int(stats.written))
        .field("backlog", int(stats.backlog))
        .field("spool_bytes", int(stats.spool_bytes))
        .field("dropped", int(stats.dropped))
        .field("dropped_bound", int(stats.dropped_bound))
        .field("dropped_memory", int(stats.dropped_memory))
        .field("memory_backlog", int(stats.memory_backlog))
        .field("rejected", int(stats.rejected))
        .field("corrupt", int(stats.corrupt))
        .field("cursor_resets", int(stats.cursor_resets))
        .field("retries", int(stats.retries))
}

/// One remote host of the rack as the controller hears it (measurement `rack_host`, every
/// tick): the same figures as `/status` under `rack.hosts`.
pub fn rack_host_point(ctx: &Ctx, h: &crate::model::RemoteHostStatus, time_ns: i64) -> Point {
    let mut p = Point::new(RACK_HOST, time_ns)
        .tag("site", ctx.site)
        .tag("host", ctx.host)
        .tag("remote_host", h.host.as_str())
        .field("online", FieldValue::Bool(h.online));
    p = int(
        p,
        "last_seq",
        h.last_seq.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
    );
    p = f(p, "age_s", h.age_s);
    p = int(p, "gaps", counter(Some(h.gaps)));
    p = int(p, "missed", counter(Some(h.missed)));
    p = int(p, "replays", counter(Some(h.replays)));
    p = int(p, "gpus", Some(h.gpus as i64));
    p.field("caps_pending", FieldValue::Bool(h.caps_pending))
}

/// Fields that only grow while the daemon (or the GPU driver) runs: Prometheus counters.
/// Everything else is a gauge.
pub const COUNTERS: [(&str, &str); 20] = [
    (GPU, "energy_j"),
    (GPU, "violation_power_ns"),
    (GPU, "violation_thermal_ns"),
    (GPU, "ecc_corrected"),
    (TELEMETRY, "written"),
    (TELEMETRY, "dropped"),
    (TELEMETRY, "rejected"),
    (TELEMETRY, "corrupt"),
    (TELEMETRY, "retries"),
    (RACK_HOST, "gaps"),
    (RACK_HOST, "missed"),
    (RACK_HOST, "replays"),
    (AGENT, "readings_published"),
    (AGENT, "readings_unsent"),
    (AGENT, "leases_accepted"),
    (AGENT, "leases_expired"),
    (AGENT, "caps_applied"),
    (AGENT, "caps_refused"),
    (AGENT, "cap_write_failures"),
    (AGENT, "read_failures"),
];

/// Whether `measurement`'s `field` is a counter (see [`COUNTERS`]).
pub fn is_counter(measurement: &str, field: &str) -> bool {
    COUNTERS
        .iter()
        .any(|(m, f)| *m == measurement && *f == field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::units::*;
    use std::time::Duration;

    fn st() -> GpuStatic {
        GpuStatic {
            key: GpuKey {
                host: "node01".into(),
                index: 3,
            },
            uuid: "GPU-abc".into(),
            name: "NVIDIA H200".into(),
            profile: "h200-sxm".into(),
            slowdown: Celsius(89.0),
            gpu_max: Celsius(87.0),
            hbm_max: Celsius(95.0),
            shutdown: Celsius(92.0),
            power_min: Watts(200.0),
            power_max: Watts(700.0),
            power_default: Watts(700.0),
        }
    }

    const CTX: Ctx = Ctx {
        site: "dc1",
        host: "mgmt",
    };

    #[test]
    fn gpu_point_tags_margin_and_throttle_bits() {
        let mut s = GpuSample::empty(st().key.clone(), Source::Nvml, Duration::ZERO);
        s.core = Some(Celsius(80.5));
        s.hbm = Some(Celsius(f64::NAN));
        s.throttle_reasons = Some(0x4 | 0x40);
        let p = gpu_point(&CTX, &st(), &s, 7);
        let tags: Vec<_> = p.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            tags,
            [
                "gpu=3",
                "host=node01",
                "model=NVIDIA H200",
                "site=dc1",
                "uuid=GPU-abc"
            ]
        );
        let get = |k: &str| {
            p.fields
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("margin_to_slowdown_k"), Some(FieldValue::Float(8.5)));
        assert_eq!(get("hbm_temp_c"), None, "NaN is left out");
        assert_eq!(get("hbm_margin_k"), None);
        assert_eq!(get("throttle_sw_power_cap"), Some(FieldValue::Bool(true)));
        assert_eq!(get("throttle_hw_thermal"), Some(FieldValue::Bool(true)));
        assert_eq!(get("throttle_hw_slowdown"), Some(FieldValue::Bool(false)));
        assert_eq!(get("throttle_reasons"), Some(FieldValue::Int(0x44)));
        assert_eq!(get("power_w"), None);
    }

    #[test]
    fn cdu_point_worst_case_delta_t_and_faults() {
        let r = |name: &str, role, v| RegisterReading {
            name: name.into(),
            role: Some(role),
            value: v,
        };
        let s = CduSample {
            cdu: "cdu-a".into(),
            at: Duration::ZERO,
            registers: vec![
                r("t_sup1", Role::SupplyTemperature, Ok(30.0)),
                r("t_sup2", Role::SupplyTemperature, Ok(31.0)),
                r("t_ret", Role::ReturnTemperature, Ok(40.0)),
                r("leak", Role::Leak, Ok(1.0)),
                r("flow", Role::Flow, Err(SensorFault::Timeout)),
            ],
        };
        let p = cdu_point(&CTX, &s, 1);
        let get = |k: &str| {
            p.fields
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("supply_temp_c"), Some(FieldValue::Float(31.0)));
        assert_eq!(get("delta_t_k"), Some(FieldValue::Float(9.0)));
        assert_eq!(get("leak"), Some(FieldValue::Bool(true)));
        assert_eq!(get("flow_lpm"), None);
        assert_eq!(get("fault_count"), Some(FieldValue::Int(1)));
        let regs = register_points(&CTX, &s, 1);
        assert_eq!(regs.len(), 5);
        assert_eq!(regs[4].fields, vec![("fault".into(), FieldValue::Int(1))]);
    }

    #[test]
    fn catalog_lists_every_measurement_with_units_in_names() {
        let c = catalog();
        let names: Vec<_> = c.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                GPU,
                COOLANT,
                ALARM,
                COOLANT_REGISTER,
                CONTROL,
                TELEMETRY,
                CDU_LINK,
                RACK_HOST,
                TICK,
                AGENT,
                AGENT_GPU
            ]
        );
        let gpu = &c[0];
        for f in [
            "core_temp_c",
            "energy_j",
            "throttle_hw_power_brake",
            "pstate",
        ] {
            assert!(gpu.fields.contains_key(f), "{f}");
        }
        let control = &c[4];
        assert!(control.tags.contains(&"loop".to_string()));
        assert_eq!(control.fields.get("state"), Some(&FieldKind::Str));
    }

    #[test]
    fn every_field_has_help_text_from_the_docs() {
        for m in catalog() {
            for f in m.fields.keys() {
                let help = field_help(&m.name, f);
                assert!(
                    help.as_deref().is_some_and(|h| !h.is_empty()),
                    "{}.{f} has no row in docs/metrics.md",
                    m.name
                );
            }
        }
        assert_eq!(
            field_help(GPU, "core_temp_c").as_deref(),
            Some("GPU core temperature [°C]")
        );
        for (m, f) in COUNTERS {
            assert!(
                catalog()
                    .iter()
                    .any(|x| x.name == m && x.fields.contains_key(f)),
                "{m}.{f} is not written"
            );
        }
    }
}
