//! The daemon's own metrics on `/metrics`: the process and its loop rather than the plant,
//! so they are not points (InfluxDB and MQTT never carry them). Their names, kinds and HELP
//! texts are made here, beside the point names; `service::http` only formats them.

/// How Prometheus treats a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    /// Cumulative buckets (`_bucket{le}`), `_sum` and `_count`.
    Histogram,
}

impl MetricKind {
    /// The word of the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One of the daemon's own metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMetric {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
}

const fn gauge(name: &'static str, help: &'static str) -> ProcessMetric {
    ProcessMetric {
        name,
        kind: MetricKind::Gauge,
        help,
    }
}

const fn histogram(name: &'static str, help: &'static str) -> ProcessMetric {
    ProcessMetric {
        name,
        kind: MetricKind::Histogram,
        help,
    }
}

const fn counter(name: &'static str, help: &'static str) -> ProcessMetric {
    ProcessMetric {
        name,
        kind: MetricKind::Counter,
        help,
    }
}

pub const SNAPSHOT_TICK: ProcessMetric = gauge(
    "coolantd_snapshot_tick",
    "Tick number of the snapshot served",
);
pub const SNAPSHOT_READY: ProcessMetric = gauge(
    "coolantd_snapshot_ready",
    "1 when every required input is valid",
);
pub const DRY_RUN: ProcessMetric = gauge(
    "coolantd_dry_run",
    "1 when actuations are computed but not written",
);
pub const TICKS_TOTAL: ProcessMetric =
    counter("coolantd_ticks_total", "Healthy control ticks since start");
pub const TICK_DURATION_SECONDS: ProcessMetric = gauge(
    "coolantd_tick_duration_seconds",
    "Duration of the last control tick",
);
pub const TICK_DURATION_MAX_SECONDS: ProcessMetric = gauge(
    "coolantd_tick_duration_max_seconds",
    "Longest control tick since start",
);
pub const UPTIME_SECONDS: ProcessMetric = gauge(
    "coolantd_uptime_seconds",
    "Seconds since the daemon started",
);
/// Connections closed to make room for a new one when every slot was taken.
pub const HTTP_CONNECTIONS_SHED_TOTAL: ProcessMetric = counter(
    "coolantd_http_connections_shed_total",
    "HTTP connections closed to make room for a new one (every slot was taken)",
);
/// Connections closed because they sent no complete request head in time or stayed silent
/// between requests.
pub const HTTP_CONNECTIONS_TIMED_OUT_TOTAL: ProcessMetric = counter(
    "coolantd_http_connections_timed_out_total",
    "HTTP connections closed for a request head not sent in time or for silence",
);
pub const LAST_TICK_AGE_SECONDS: ProcessMetric = gauge(
    "coolantd_last_tick_age_seconds",
    "Seconds since the last healthy control tick",
);
/// Rack controllers only (`RackLatency` in `/status`): each remote reading, arrival → the
/// tick that first decided on it, on the controller's clock.
pub const RACK_READING_AGE_SECONDS: ProcessMetric = histogram(
    "coolantd_rack_reading_age_seconds",
    "Remote readings: arrival at the controller to the tick that first decided on them",
);
/// The same readings from the agent's send stamp, on the controller's wall clock.
pub const RACK_READING_DELAY_SECONDS: ProcessMetric = histogram(
    "coolantd_rack_reading_delay_seconds",
    "Remote readings: the agent's send stamp to the tick that first decided on them (wall clocks)",
);
/// A cap lease's first send → its acknowledgement's arrival.
pub const RACK_CAP_ACK_SECONDS: ProcessMetric = histogram(
    "coolantd_rack_cap_ack_seconds",
    "Cap leases: the tick that decided and first sent one to the arrival of its acknowledgement",
);
/// The running version, as the usual `*_build_info` gauge: label `version`, value 1.
pub const BUILD_INFO: ProcessMetric = gauge("coolantd_build_info", "coolantd version, always 1");

/// Every one of the daemon's own metrics.
pub const ALL: [ProcessMetric; 14] = [
    SNAPSHOT_TICK,
    SNAPSHOT_READY,
    DRY_RUN,
    TICKS_TOTAL,
    TICK_DURATION_SECONDS,
    TICK_DURATION_MAX_SECONDS,
    UPTIME_SECONDS,
    HTTP_CONNECTIONS_SHED_TOTAL,
    HTTP_CONNECTIONS_TIMED_OUT_TOTAL,
    LAST_TICK_AGE_SECONDS,
    BUILD_INFO,
    RACK_READING_AGE_SECONDS,
    RACK_READING_DELAY_SECONDS,
    RACK_CAP_ACK_SECONDS,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_unique_and_counters_end_in_total() {
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "duplicate name");
        for m in ALL {
            assert!(m.name.starts_with("coolantd_"), "{}", m.name);
            assert_eq!(
                m.kind == MetricKind::Counter,
                m.name.ends_with("_total"),
                "{}: Prometheus counters and only they end in _total",
                m.name
            );
            assert!(!m.help.is_empty(), "{}", m.name);
        }
    }

    #[test]
    fn docs_list_exactly_these_metrics() {
        let doc = include_str!("../../../docs/metrics.md");
        let mut documented: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter(|l| l.starts_with("coolantd_"))
            .filter_map(|l| l.split(['`', '{']).next())
            .collect();
        documented.sort_unstable();
        let mut ours: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        ours.sort_unstable();
        assert_eq!(
            documented, ours,
            "docs/metrics.md vs sink/schema/process.rs"
        );
    }
}
