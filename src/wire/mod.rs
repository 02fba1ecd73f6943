//! The rack wire format (v1): what host agents and a CDU's controller send each other over
//! MQTT. See docs/mqtt.md, "Rack wire format (v1)".
//!
//! Design constraints:
//! - Separate from the internal model ([`crate::model`]): own structs ([`msg`]), explicit
//!   conversions ([`convert`]), so agents and controllers of different versions can run side
//!   by side during a rolling upgrade.
//! - Versioned: every message carries `v` (major, minor). The same major decodes; unknown
//!   fields are ignored, so a newer minor is accepted; another major is refused with an error
//!   that names both versions.
//! - Bounded: [`MAX_MESSAGE_BYTES`] per message, [`MAX_GPUS`] per host, [`MAX_TEXT`] per string;
//!   the largest message possible under these bounds fits (a test checks it).
//! - Refuses implausible values (not a number, outside physical range, a GPU index twice) with
//!   a typed [`WireError`]; decoding never panics on any input.
//! - Pure: bytes in, values out. No clock, no IO.
//!
//! The encoding is protobuf (prost), picked by measurement against JSON and CBOR
//! (`cargo bench --bench wire`; figures in docs/mqtt.md).

pub mod convert;
pub mod msg;
pub mod topic;

pub use msg::{
    Cap, CapAck, CapLease, CapResult, Facts, GpuFacts, GpuReading, Readings, Refusal, Status,
    Version,
};
pub use topic::{Kind, Topic};

use prost::Message as _;
use std::fmt;

/// The version this build speaks.
pub const VERSION: Version = Version { major: 1, minor: 0 };

/// Largest encoded message, bytes. Below rumqttc's default packet limit (10 KiB, topic and
/// header included) so any MQTT client with default settings carries every message, and far
/// below Mosquitto's (`message_size_limit`, 0 = MQTT's 256 MiB) and the daemon's MQTT 5
/// receive limit (64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// Most GPUs one host may report. HGX boards carry 8; 16-GPU systems exist; 32 leaves room.
pub const MAX_GPUS: usize = 32;

/// Longest host name, UUID, board or profile name, bytes. An NVML UUID is 40.
pub const MAX_TEXT: usize = 64;

/// Plausible temperatures, °C: below −40 °C or above 150 °C no GPU sensor reads true.
pub const TEMP_RANGE_C: (f32, f32) = (-40.0, 150.0);

/// Plausible power and limits, W: no GPU board draws or accepts more than this.
pub const POWER_RANGE_W: (f32, f32) = (0.0, 3000.0);

/// Longest lease a controller may grant, ms: a cap must not outlive its controller for long.
pub const MAX_LEASE_MS: u32 = 10 * 60 * 1000;

/// Highest NVML index accepted.
pub const MAX_INDEX: u32 = 255;

/// Why a message was refused. Each variant names the field or value at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("{kind} message is {bytes} bytes, over the limit of {max} bytes")]
    TooLarge {
        kind: Kind,
        bytes: usize,
        max: usize,
    },
    #[error("{kind} message is not valid protobuf: {reason}")]
    Malformed { kind: Kind, reason: String },
    #[error("{kind} message has no version field `v` (expected major {})", VERSION.major)]
    MissingVersion { kind: Kind },
    #[error(
        "{kind} message is wire format v{major}.{minor}; this build speaks v{}.{} and \
         decodes major {} only",
        VERSION.major, VERSION.minor, VERSION.major
    )]
    UnsupportedVersion { kind: Kind, major: u32, minor: u32 },
    #[error("{kind} message: `{field}` is {value}, expected {expected}")]
    Implausible {
        kind: Kind,
        field: String,
        value: f64,
        expected: &'static str,
    },
    #[error("{kind} message: GPU index {index} appears twice")]
    DuplicateGpu { kind: Kind, index: u32 },
    #[error("{kind} message lists {count} GPUs, more than the limit of {max}")]
    TooManyGpus {
        kind: Kind,
        count: usize,
        max: usize,
    },
    #[error("{kind} message: `{field}` {problem}")]
    BadText {
        kind: Kind,
        field: &'static str,
        problem: String,
    },
}

impl WireError {
    /// The stable snake_case word for the error, for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::TooLarge { .. } => "too_large",
            WireError::Malformed { .. } => "malformed",
            WireError::MissingVersion { .. } => "missing_version",
            WireError::UnsupportedVersion { .. } => "unsupported_version",
            WireError::Implausible { .. } => "implausible",
            WireError::DuplicateGpu { .. } => "duplicate_gpu",
            WireError::TooManyGpus { .. } => "too_many_gpus",
            WireError::BadText { .. } => "bad_text",
        }
    }
}

/// What every message of the format can do: say its kind and version and check its values.
pub trait WireMessage: prost::Message + Default + Clone + Sized {
    const KIND: Kind;
    fn version(&self) -> Option<Version>;
    fn set_version(&mut self, v: Version);
    /// Checks every value against its plausible range.
    fn validate(&self) -> Result<(), WireError>;
}

/// Encodes a message with this build's version, after the same checks a receiver makes, so
/// nothing leaves that a peer would refuse.
pub fn encode<M: WireMessage>(msg: &M) -> Result<Vec<u8>, WireError> {
    msg.validate()?;
    let bytes = if msg.version() == Some(VERSION) {
        msg.encode_to_vec()
    } else {
        let mut m = msg.clone();
        m.set_version(VERSION);
        m.encode_to_vec()
    };
    check_size(M::KIND, bytes.len())?;
    Ok(bytes)
}

/// Decodes and checks a message: size, protobuf, version, values.
pub fn decode<M: WireMessage>(bytes: &[u8]) -> Result<M, WireError> {
    check_size(M::KIND, bytes.len())?;
    let m = M::decode(bytes).map_err(|e| WireError::Malformed {
        kind: M::KIND,
        reason: e.to_string(),
    })?;
    check_version(M::KIND, m.version())?;
    m.validate()?;
    Ok(m)
}

fn check_size(kind: Kind, bytes: usize) -> Result<(), WireError> {
    if bytes > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge {
            kind,
            bytes,
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(())
}

/// The version rule: same major decodes (older and newer minors alike), any other refused.
pub fn check_version(kind: Kind, v: Option<Version>) -> Result<(), WireError> {
    match v {
        None => Err(WireError::MissingVersion { kind }),
        Some(v) if v.major == VERSION.major => Ok(()),
        Some(v) => Err(WireError::UnsupportedVersion {
            kind,
            major: v.major,
            minor: v.minor,
        }),
    }
}

/// Range checks shared by the messages.
struct Check {
    kind: Kind,
}

impl Check {
    /// `field` is a closure so the name is only formatted for an error: the checks run on
    /// every message, and formatting every name tripled the cost of decoding.
    fn range(
        &self,
        field: impl FnOnce() -> String,
        value: f32,
        (lo, hi): (f32, f32),
        expected: &'static str,
    ) -> Result<(), WireError> {
        if value.is_finite() && value >= lo && value <= hi {
            Ok(())
        } else {
            Err(WireError::Implausible {
                kind: self.kind,
                field: field(),
                value: f64::from(value),
                expected,
            })
        }
    }

    fn temp(&self, field: impl FnOnce() -> String, value: f32) -> Result<(), WireError> {
        self.range(field, value, TEMP_RANGE_C, "a temperature in -40..=150 °C")
    }

    fn power(&self, field: impl FnOnce() -> String, value: f32) -> Result<(), WireError> {
        self.range(field, value, POWER_RANGE_W, "a power in 0..=3000 W")
    }

    /// A host name: it is a topic level, so no MQTT separators or wildcards.
    fn host(&self, host: &str) -> Result<(), WireError> {
        if host.is_empty() {
            return Err(self.bad_text("host", "is empty".into()));
        }
        if host.len() > MAX_TEXT {
            return Err(self.bad_text(
                "host",
                format!("is {} bytes, longer than {MAX_TEXT}", host.len()),
            ));
        }
        if host
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
        {
            return Err(self.bad_text(
                "host",
                format!("{host:?} contains '/', '+', '#' or a control character"),
            ));
        }
        Ok(())
    }

    fn text(&self, field: &'static str, value: &str) -> Result<(), WireError> {
        if value.len() > MAX_TEXT {
            return Err(self.bad_text(
                field,
                format!("is {} bytes, longer than {MAX_TEXT}", value.len()),
            ));
        }
        Ok(())
    }

    fn bad_text(&self, field: &'static str, problem: String) -> WireError {
        WireError::BadText {
            kind: self.kind,
            field,
            problem,
        }
    }

    /// GPU indices: at most [`MAX_GPUS`], each at most [`MAX_INDEX`], none twice.
    fn indices(&self, indices: impl ExactSizeIterator<Item = u32>) -> Result<(), WireError> {
        let count = indices.len();
        if count > MAX_GPUS {
            return Err(WireError::TooManyGpus {
                kind: self.kind,
                count,
                max: MAX_GPUS,
            });
        }
        // Indices are at most 255: a 256-bit set, no allocation.
        let mut seen = [0u64; 4];
        for index in indices {
            if index > MAX_INDEX {
                return Err(WireError::Implausible {
                    kind: self.kind,
                    field: "index".into(),
                    value: f64::from(index),
                    expected: "an NVML index in 0..=255",
                });
            }
            let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
            if seen[word] & bit != 0 {
                return Err(WireError::DuplicateGpu {
                    kind: self.kind,
                    index,
                });
            }
            seen[word] |= bit;
        }
        Ok(())
    }
}

impl WireMessage for Readings {
    const KIND: Kind = Kind::Readings;
    fn version(&self) -> Option<Version> {
        self.v
    }
    fn set_version(&mut self, v: Version) {
        self.v = Some(v);
    }
    fn validate(&self) -> Result<(), WireError> {
        let c = Check { kind: Self::KIND };
        c.host(&self.host)?;
        c.indices(self.gpus.iter().map(|g| g.index))?;
        for g in &self.gpus {
            let i = g.index;
            if let Some(t) = g.core_c {
                c.temp(|| format!("gpus[{i}].core_c"), t)?;
            }
            if let Some(t) = g.hbm_c {
                c.temp(|| format!("gpus[{i}].hbm_c"), t)?;
            }
            if let Some(p) = g.power_w {
                c.power(|| format!("gpus[{i}].power_w"), p)?;
            }
            if let Some(p) = g.limit_w {
                c.power(|| format!("gpus[{i}].limit_w"), p)?;
            }
        }
        Ok(())
    }
}

impl WireMessage for Facts {
    const KIND: Kind = Kind::Facts;
    fn version(&self) -> Option<Version> {
        self.v
    }
    fn set_version(&mut self, v: Version) {
        self.v = Some(v);
    }
    fn validate(&self) -> Result<(), WireError> {
        let c = Check { kind: Self::KIND };
        c.host(&self.host)?;
        c.indices(self.gpus.iter().map(|g| g.index))?;
        for g in &self.gpus {
            let i = g.index;
            c.text("uuid", &g.uuid)?;
            c.text("board", &g.board)?;
            c.text("profile", &g.profile)?;
            c.temp(|| format!("gpus[{i}].slowdown_c"), g.slowdown_c)?;
            c.temp(|| format!("gpus[{i}].shutdown_c"), g.shutdown_c)?;
            c.temp(|| format!("gpus[{i}].gpu_max_c"), g.gpu_max_c)?;
            c.temp(|| format!("gpus[{i}].hbm_max_c"), g.hbm_max_c)?;
            c.power(|| format!("gpus[{i}].power_min_w"), g.power_min_w)?;
            c.power(|| format!("gpus[{i}].power_max_w"), g.power_max_w)?;
            c.power(|| format!("gpus[{i}].power_default_w"), g.power_default_w)?;
            c.power(|| format!("gpus[{i}].original_limit_w"), g.original_limit_w)?;
            // A board whose range is empty or upside down cannot be capped safely.
            if !(g.power_min_w > 0.0 && g.power_min_w <= g.power_max_w) {
                return Err(WireError::Implausible {
                    kind: Self::KIND,
                    field: format!("gpus[{i}].power_min_w"),
                    value: f64::from(g.power_min_w),
                    expected: "above 0 W and at most power_max_w",
                });
            }
        }
        Ok(())
    }
}

impl WireMessage for CapLease {
    const KIND: Kind = Kind::Caps;
    fn version(&self) -> Option<Version> {
        self.v
    }
    fn set_version(&mut self, v: Version) {
        self.v = Some(v);
    }
    fn validate(&self) -> Result<(), WireError> {
        let c = Check { kind: Self::KIND };
        c.host(&self.host)?;
        if self.lease_ms == 0 || self.lease_ms > MAX_LEASE_MS {
            return Err(WireError::Implausible {
                kind: Self::KIND,
                field: "lease_ms".into(),
                value: f64::from(self.lease_ms),
                expected: "a lease of 1..=600000 ms",
            });
        }
        c.indices(self.caps.iter().map(|g| g.index))?;
        for cap in &self.caps {
            c.range(
                || format!("caps[{}].limit_w", cap.index),
                cap.limit_w,
                (1.0, POWER_RANGE_W.1),
                "a power limit in 1..=3000 W",
            )?;
        }
        Ok(())
    }
}

impl WireMessage for CapAck {
    const KIND: Kind = Kind::Acks;
    fn version(&self) -> Option<Version> {
        self.v
    }
    fn set_version(&mut self, v: Version) {
        self.v = Some(v);
    }
    fn validate(&self) -> Result<(), WireError> {
        let c = Check { kind: Self::KIND };
        c.host(&self.host)?;
        c.indices(self.results.iter().map(|g| g.index))?;
        for r in &self.results {
            if let Some(p) = r.enforced_w {
                c.power(|| format!("results[{}].enforced_w", r.index), p)?;
            }
            if let Some(d) = &r.detail {
                c.text("detail", d)?;
            }
        }
        Ok(())
    }
}

impl WireMessage for Status {
    const KIND: Kind = Kind::Status;
    fn version(&self) -> Option<Version> {
        self.v
    }
    fn set_version(&mut self, v: Version) {
        self.v = Some(v);
    }
    fn validate(&self) -> Result<(), WireError> {
        Check { kind: Self::KIND }.host(&self.host)
    }
}

impl Facts {
    /// FNV-1a (64 bit) over the protobuf encoding of `gpus`: deterministic for one build, so
    /// "publish on change" and the controller's "facts changed" compare one number. A
    /// receiver treats it as an opaque token and does not recompute it (a newer minor may
    /// hash fields this build does not know).
    pub fn content_hash(gpus: &[GpuFacts]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for g in gpus {
            for b in g.encode_to_vec() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// Facts for a host with their hash filled in.
    pub fn new(host: &str, session: u64, gpus: Vec<GpuFacts>) -> Facts {
        Facts {
            v: Some(VERSION),
            host: host.to_string(),
            session,
            hash: Facts::content_hash(&gpus),
            gpus,
        }
    }
}

impl CapResult {
    /// A GPU's enforced limit, read back after writing.
    pub fn enforced(index: u32, limit: crate::units::Watts) -> CapResult {
        CapResult {
            index,
            enforced_w: Some(limit.get() as f32),
            refusal: None,
            detail: None,
        }
    }

    /// A refused cap; `detail` is cut to [`MAX_TEXT`] bytes so the ack stays valid.
    pub fn refused(index: u32, refusal: Refusal, detail: &str) -> CapResult {
        let mut end = detail.len().min(MAX_TEXT);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        CapResult {
            index,
            enforced_w: None,
            refusal: Some(refusal as i32),
            detail: Some(detail[..end].to_string()),
        }
    }

    /// The typed refusal, if any. An unknown number from a newer minor reads as
    /// [`Refusal::Unspecified`].
    pub fn refusal_kind(&self) -> Option<Refusal> {
        self.refusal
            .map(|r| Refusal::try_from(r).unwrap_or(Refusal::Unspecified))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Unspecified => "unspecified",
            Refusal::UnknownGpu => "unknown_gpu",
            Refusal::OutOfRange => "out_of_range",
            Refusal::NotSupported => "not_supported",
            Refusal::Failed => "failed",
        })
    }
}

#[cfg(test)]
mod tests;
