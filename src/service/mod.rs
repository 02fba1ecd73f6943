//! The service shell: the daemon's run loop, signals, systemd notification, HTTP endpoint.

pub mod agent;
pub mod cdu_link;
pub mod config;
pub mod daemon;
pub mod http;
pub mod limits;
pub mod logging;
pub mod loop_alarms;
pub mod notify;
pub mod preflight;
pub mod probe;
pub mod restore;
pub mod sim_rack;
pub mod simulate;
pub mod sink_alarms;
pub mod status;
pub mod tune;

// The paths before the daemon and its run loop moved together into `daemon/`.
pub use daemon as run;
pub use daemon::serve;
