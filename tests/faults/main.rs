//! Faults and abuse end to end: the daemon-level fault matrix, crashes of the daemon and of the
//! database writer, log floods, hostile MQTT and HTTP clients, and the faults of a rack
//! (agents, controller and broker) through a real Mosquitto.
//!
//! One test binary: `cargo test --test faults` runs it, `cargo test --test faults MODULE::` one
//! module. Each module is one former test file of tests/.

mod daemon_crash;
mod fault_matrix;
mod http_abuse;
mod influx_crash;
mod log_flood;
mod mqtt_abuse;
mod rack_faults;
