//! coolantd's pure control core: a deterministic state machine with no IO, no async runtime
//! and no clock. Time comes in as an argument (`now: Mono`), samples come in as values,
//! actuations go out as values; the daemon (the IO shell, crate `coolantd`) applies them and
//! feeds their outcomes back. See ARCHITECTURE.md for the map and `tests/invariants.rs` for
//! the rules this crate keeps.

pub mod control;
pub mod model;
pub mod units;
pub mod validate;
