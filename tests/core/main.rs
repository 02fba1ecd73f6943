//! The control core, the plant simulator and the file parsers, in process and without peers: the
//! fast, pure tests.
//!
//! One test binary: `cargo test --test core` runs it, `cargo test --test core MODULE::` one module.
//! Each module is one former test file of tests/; `control_support` is the small deterministic
//! plant that the control tests share.

mod closed_loop;
mod control_faults;
mod control_feedforward;
mod control_loop;
mod control_quality_readme;
mod control_support;
mod fuzz_parsers;
mod grafana_schema;
mod module_graph;
mod power_limits;
mod schema_names;
mod sim_plant;
mod sim_profile;
mod sim_spread;
mod sim_thermal_fit;
mod wire_agent;
mod wire_format;
mod wire_purity;
mod wire_remote;
