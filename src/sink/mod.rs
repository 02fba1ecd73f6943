//! Sinks: where metrics only go out (InfluxDB through a disk spool), and the schema that names
//! them. MQTT, which also takes commands in, is a link: see [`crate::link`].

pub mod influx;
pub mod lineproto;
pub mod schema;
pub mod spool;
