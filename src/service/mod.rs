//! The service shell: the daemon's run loop, signals, systemd notification, HTTP endpoint.

pub mod cdu_link;
pub mod config;
pub mod http;
pub mod limits;
pub mod logging;
pub mod loop_alarms;
pub mod notify;
pub mod preflight;
pub mod probe;
pub mod run;
pub mod serve;
pub mod sink_alarms;
pub mod status;
pub mod tune;
