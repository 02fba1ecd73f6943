//! Links: peers the daemon talks with both ways. MQTT carries telemetry, state and alarms out
//! and operator commands in, so it lives here rather than among the write-only sinks.

pub mod mqtt;
