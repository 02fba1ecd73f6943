//! Sinks: where metrics, state and alarms go (InfluxDB through a disk spool, MQTT).

pub mod influx;
pub mod lineproto;
pub mod mqtt;
pub mod schema;
pub mod spool;
