//! The messages of the rack wire format (v1), as protobuf messages with hand-written field
//! numbers (no protoc, no build script, like `sink::mqtt::sparkplug::proto`).
//!
//! The same structs also derive serde, so the benchmark can compare JSON and CBOR on exactly
//! the same content; only protobuf goes on the wire (docs/mqtt.md says why).
//!
//! Field numbers are the compatibility contract: a minor version may only add optional
//! fields under new numbers; a field is never renumbered or given another type within a
//! major version. Numbers are plain (°C, W, ms) because this is an encoding; the explicit
//! conversions in `convert.rs` turn them into the unit types of `crate::units`.

use serde::{Deserialize, Serialize};

/// The format version every message carries as `v`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
pub struct Version {
    #[prost(uint32, tag = "1")]
    pub major: u32,
    #[prost(uint32, tag = "2")]
    pub minor: u32,
}

/// Agent → controller, once per tick: the fast-path readings of all the host's GPUs.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Readings {
    #[prost(message, optional, tag = "1")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<Version>,
    /// The host name the agent publishes for (also in the topic; both must agree).
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub host: String,
    /// Chosen at random when the agent starts: a new session with a reset `seq` is a
    /// restart, two sessions interleaving are two agents claiming one host.
    #[prost(uint64, tag = "3")]
    #[serde(default)]
    pub session: u64,
    /// Counts up by one per message within a session.
    #[prost(uint64, tag = "4")]
    #[serde(default)]
    pub seq: u64,
    /// The sender's wall clock, ms since the Unix epoch. Data only: the receiver stamps
    /// readings with its own arrival time, because hosts' clocks differ.
    #[prost(uint64, tag = "5")]
    #[serde(default)]
    pub sent_unix_ms: u64,
    /// The `hash` of the facts these readings belong to.
    #[prost(uint64, tag = "6")]
    #[serde(default)]
    pub facts_hash: u64,
    #[prost(message, repeated, tag = "7")]
    #[serde(default)]
    pub gpus: Vec<GpuReading>,
}

/// One GPU's readings; a value the agent could not read is absent.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct GpuReading {
    /// NVML index on the host.
    #[prost(uint32, tag = "1")]
    #[serde(default)]
    pub index: u32,
    /// Core temperature, °C.
    #[prost(float, optional, tag = "2")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_c: Option<f32>,
    /// HBM temperature, °C.
    #[prost(float, optional, tag = "3")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hbm_c: Option<f32>,
    /// Instantaneous power, W.
    #[prost(float, optional, tag = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f32>,
    /// Enforced power limit, W.
    #[prost(float, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_w: Option<f32>,
    /// Raw NVML clocks-event (throttle) reason bits.
    #[prost(uint64, optional, tag = "6")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<u64>,
    /// Energy since the driver loaded, mJ (NVML's own unit; f32 would lose it).
    #[prost(uint64, optional, tag = "7")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
}

/// Agent → controller, retained, published at start and whenever it changes: what the
/// controller needs to know once per GPU.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Facts {
    #[prost(message, optional, tag = "1")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<Version>,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub host: String,
    #[prost(uint64, tag = "3")]
    #[serde(default)]
    pub session: u64,
    /// A content hash of `gpus` (see `Facts::content_hash`): changes when any fact does.
    #[prost(uint64, tag = "4")]
    #[serde(default)]
    pub hash: u64,
    #[prost(message, repeated, tag = "5")]
    #[serde(default)]
    pub gpus: Vec<GpuFacts>,
}

/// One GPU's static facts.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct GpuFacts {
    #[prost(uint32, tag = "1")]
    #[serde(default)]
    pub index: u32,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub uuid: String,
    /// The board name NVML reports (for example `NVIDIA H200`).
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub board: String,
    /// The GPU profile that matched (for example `h200-sxm`).
    #[prost(string, tag = "4")]
    #[serde(default)]
    pub profile: String,
    #[prost(float, tag = "5")]
    #[serde(default)]
    pub slowdown_c: f32,
    #[prost(float, tag = "6")]
    #[serde(default)]
    pub shutdown_c: f32,
    #[prost(float, tag = "7")]
    #[serde(default)]
    pub gpu_max_c: f32,
    #[prost(float, tag = "8")]
    #[serde(default)]
    pub hbm_max_c: f32,
    #[prost(float, tag = "9")]
    #[serde(default)]
    pub power_min_w: f32,
    #[prost(float, tag = "10")]
    #[serde(default)]
    pub power_max_w: f32,
    #[prost(float, tag = "11")]
    #[serde(default)]
    pub power_default_w: f32,
    /// The limit the GPU had before any cap: what the agent restores on exit.
    #[prost(float, tag = "12")]
    #[serde(default)]
    pub original_limit_w: f32,
}

/// Controller → agent: power caps that hold for `lease_ms` from receipt unless renewed.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct CapLease {
    #[prost(message, optional, tag = "1")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<Version>,
    /// The host the caps are for.
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub host: String,
    /// Correlation id, echoed by the agent's `CapAck`.
    #[prost(uint64, tag = "3")]
    #[serde(default)]
    pub id: u64,
    #[prost(uint32, tag = "4")]
    #[serde(default)]
    pub lease_ms: u32,
    /// Caps per GPU; a GPU not listed is not capped by the controller.
    #[prost(message, repeated, tag = "5")]
    #[serde(default)]
    pub caps: Vec<Cap>,
}

/// One GPU's cap in a lease.
#[derive(Clone, Copy, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Cap {
    #[prost(uint32, tag = "1")]
    #[serde(default)]
    pub index: u32,
    #[prost(float, tag = "2")]
    #[serde(default)]
    pub limit_w: f32,
}

/// Agent → controller: the outcome of one `CapLease`, per GPU.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct CapAck {
    #[prost(message, optional, tag = "1")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<Version>,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub host: String,
    #[prost(uint64, tag = "3")]
    #[serde(default)]
    pub session: u64,
    /// The `id` of the lease this answers.
    #[prost(uint64, tag = "4")]
    #[serde(default)]
    pub id: u64,
    /// True when the agent runs in dry-run mode: the caps were decided, not written.
    #[prost(bool, tag = "5")]
    #[serde(default)]
    pub dry_run: bool,
    #[prost(message, repeated, tag = "6")]
    #[serde(default)]
    pub results: Vec<CapResult>,
}

/// One GPU's outcome: the enforced limit read back, or why the cap was refused.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct CapResult {
    #[prost(uint32, tag = "1")]
    #[serde(default)]
    pub index: u32,
    /// The enforced limit read back after writing, W.
    #[prost(float, optional, tag = "2")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_w: Option<f32>,
    /// Set when the cap was not applied.
    #[prost(enumeration = "Refusal", optional, tag = "3")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<i32>,
    /// What went wrong, for people.
    #[prost(string, optional, tag = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why an agent did not apply a cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Refusal {
    /// A refusal from a newer minor version this decoder does not know.
    Unspecified = 0,
    /// The host has no GPU with this index (it vanished, or the controller is wrong).
    UnknownGpu = 1,
    /// The limit is outside the board's [min, max] power range.
    OutOfRange = 2,
    /// The driver cannot set power limits on this GPU; retrying cannot help.
    NotSupported = 3,
    /// Writing the limit failed this time; a retry may succeed.
    Failed = 4,
}

/// Agent → controller, retained; also the agent's MQTT last will (`online: false`).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Status {
    #[prost(message, optional, tag = "1")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<Version>,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub host: String,
    #[prost(uint64, tag = "3")]
    #[serde(default)]
    pub session: u64,
    #[prost(bool, tag = "4")]
    #[serde(default)]
    pub online: bool,
    #[prost(uint64, tag = "5")]
    #[serde(default)]
    pub sent_unix_ms: u64,
}
