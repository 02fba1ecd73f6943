//! coolantd: keeps liquid-cooled GPU clusters cool with as little pump energy and as little
//! lost GPU performance as possible.
//!
//! The crate is a pure control core ([`control`]) inside an IO shell ([`collect`], [`sink`],
//! [`service`]). See ARCHITECTURE.md for the map and the rules each module keeps.

pub mod agent;
pub mod collect;
pub mod config;
pub mod control;
pub mod model;
pub mod profile;
pub mod remote;
pub mod service;
pub mod sim;
pub mod sink;
pub mod units;
pub mod validate;
pub mod wire;
