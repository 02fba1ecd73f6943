//! The daemon as operators run it: the real binary and the service under systemd's protocols, dry
//! runs, rehearsals, the command line, configuration checks, the shipped files and the install
//! walkthrough.
//!
//! One test binary: `cargo test --test daemon` runs it, `cargo test --test daemon MODULE::` one
//! module. Each module is one former test file of tests/.

mod check_config;
mod cli_tune;
mod daemon_sinks;
mod daemon_tick;
mod dry_run;
mod dry_run_boundary;
mod dry_run_explains;
mod host_agent;
mod host_agent_ops;
mod install_walkthrough;
mod rehearse;
mod service_daemon;
mod service_footprint;
mod service_http;
mod service_logging;
mod service_loop;
mod service_notify;
mod service_systemd;
mod service_systemd_agent;
mod shipped_configs;
mod sim_unit_id;
