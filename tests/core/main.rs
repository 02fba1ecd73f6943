//! The control core, the plant simulator and the file parsers, in process and without peers: the fast, pure tests.
//!
//! One test binary (`cargo test --test core`); each module is one former test file.

mod closed_loop;
mod control_faults;
mod control_feedforward;
mod control_loop;
mod control_quality_readme;
mod control_support;
mod fuzz_parsers;
mod grafana_schema;
mod power_limits;
mod sim_plant;
mod sim_profile;
mod sim_thermal_fit;
