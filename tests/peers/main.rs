//! The collectors and sinks against real peers: Modbus (the simulator's server, pymodbus over TCP
//! and RTU, mbpoll), MQTT and Sparkplug B (Mosquitto, pysparkplug), InfluxDB (VictoriaMetrics,
//! InfluxDB 1.6), the shipped alert rules on real engines, the replay NVML library and the JSON
//! schemas.
//!
//! One test binary: `cargo test --test peers` runs it, `cargo test --test peers MODULE::` one
//! module. Each module is one former test file of tests/.

mod influx_reject;
mod influx_spool;
mod influx_v1;
mod influx_vm;
mod influxql_rules;
mod json_schemas;
mod modbus_mbpoll;
mod modbus_pymodbus;
mod modbus_rtu;
mod modbus_sim;
mod mqtt_acl;
mod mqtt_bridge;
mod mqtt_sink;
mod nvml_backend;
mod prometheus_rules;
mod rack_controller;
mod sim_rack;
mod sparkplug_host;
