//! The service shell: the daemon's run loop, signals, systemd notification, HTTP endpoint.

pub mod http;
pub mod logging;
pub mod notify;
