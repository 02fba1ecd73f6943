//! Faults and abuse end to end: the daemon-level fault matrix, crashes of the daemon and of the
//! database writer, log floods, and hostile MQTT and HTTP clients.
//!
//! One test binary: `cargo test --test faults` runs it, `cargo test --test faults MODULE::` one
//! module. Each module is one former test file of tests/.

mod daemon_crash;
mod fault_matrix;
mod http_abuse;
mod influx_crash;
mod log_flood;
mod mqtt_abuse;
