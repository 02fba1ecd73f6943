//! Sinks: where metrics, state and alarms go (InfluxDB through a disk spool, MQTT).

pub mod influx;
pub mod mqtt;
