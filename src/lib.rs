//! coolantd: keeps liquid-cooled GPU clusters cool with as little pump energy and as little
//! lost GPU performance as possible.
//!
//! The crate is an IO shell ([`collect`], [`sink`], [`link`], [`service`]) around a pure
//! control core, the crate `coolantd-core` ([`control`], [`model`], [`units`], [`validate`]),
//! re-exported here so that `crate::model::…` and `coolantd::control::…` paths stay what they
//! were. The rack-scale parts ([`wire`], [`remote`], [`agent`]) are sans-IO state machines;
//! `coolantd agent` (`service::agent`) runs the agent's side. See ARCHITECTURE.md for the map and the rules each part keeps.

pub mod agent;
pub mod collect;
pub mod files;
pub mod link;
pub mod log_limit;
pub mod profile;
pub mod remote;
pub mod service;
pub mod sim;
pub mod sink;
pub mod wire;

pub use coolantd_core::{control, model, units, validate};

/// The site configuration is assembled at the top, in the service; `crate::config` keeps its
/// short path.
pub use service::config;
