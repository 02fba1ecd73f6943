//! Modbus TCP/RTU collector for CDUs, decoded through firmware profiles.
//!
//! - [`decode`]: words and bits to engineering values and back (pure).
//! - [`plan`]: the fewest read requests that cover a profile (pure).
//! - [`config`]: the `[[cdu]]` section that says how to reach a CDU.
//! - [`client`]: [`ModbusCdu`], which polls and writes a CDU with timeouts and a reconnection
//!   backoff.

pub mod client;
pub mod config;
pub mod decode;
pub mod plan;

pub use client::{CduError, CduStats, ModbusCdu};
pub use config::{CduConfig, CduTransport, Parity};
pub use decode::{DecodeError, EncodeError, Encoded};
pub use plan::ReadRequest;
