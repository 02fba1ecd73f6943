//! CDU firmware profiles: a CDU's Modbus register map, in TOML, in the spirit of Telegraf's
//! modbus `request` style that facility engineers already know.
//!
//! A profile names each register, says where it lives (kind and 0-based address), how its
//! words are laid out (data type, byte/word order, bit), how to turn the raw number into an
//! engineering value (`value = raw * scale + offset`), which [`Role`] it plays for the
//! controller, and for writable registers the range a write must respect. The format is
//! documented in `firmware-profiles/README.md` and in the header of
//! `firmware-profiles/cdu/generic-cdu.toml`.
//!
//! Why one file over the ~700-line guideline: about 640 lines are the format and its
//! validation, the rest are the unit tests of those rules, kept beside the rules they check.

use crate::files::{parse_toml, read_file};
use crate::model::Role;
use crate::units::Percent;
use crate::validate::{ConfigError, ConfigIssue, Issues};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest number of registers one read request may ask for (Modbus Application Protocol
/// V1.1b3, §6.3/§6.4: quantity of registers 1 to 125).
pub const PROTOCOL_MAX_READ_REGISTERS: u16 = 125;
/// Largest number of coils or discrete inputs one read request may ask for (same
/// specification, §6.1/§6.2: quantity of bits 1 to 2000).
pub const PROTOCOL_MAX_READ_BITS: u16 = 2000;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// Read/write single bits (function codes 1, 5, 15).
    Coil,
    /// Read-only single bits (function code 2).
    Discrete,
    /// Read-only 16-bit words (function code 4).
    Input,
    /// Read/write 16-bit words (function codes 3, 6, 16).
    Holding,
}

impl RegisterKind {
    /// True for coils and discrete inputs, which hold bits rather than words.
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
            RegisterKind::Input => "input",
            RegisterKind::Holding => "holding",
        }
    }
}

impl fmt::Display for RegisterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the raw number is stored in the register's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    Int16,
    Uint16,
    Int32,
    Uint32,
    Float32,
    Float64,
    /// A single bit: a coil, a discrete input, or bit `bit` of a register.
    Bit,
}

impl DataType {
    /// Words the type occupies in a register table (a bit of a register occupies one).
    pub fn words(self) -> u16 {
        match self {
            DataType::Int16 | DataType::Uint16 | DataType::Bit => 1,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 2,
            DataType::Float64 => 4,
        }
    }

    /// True for the types whose raw value is an integer (they round when encoded).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::Int16 | DataType::Uint16 | DataType::Int32 | DataType::Uint32
        )
    }

    /// The raw values the type can hold (what `encode` accepts after rounding integers).
    pub fn raw_range(self) -> (f64, f64) {
        match self {
            DataType::Int16 => (-32768.0, 32767.0),
            DataType::Uint16 => (0.0, 65535.0),
            DataType::Int32 => (-2_147_483_648.0, 2_147_483_647.0),
            DataType::Uint32 => (0.0, 4_294_967_295.0),
            DataType::Float32 => (-f64::from(f32::MAX), f64::from(f32::MAX)),
            DataType::Float64 => (f64::MIN, f64::MAX),
            DataType::Bit => (0.0, 1.0),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Int16 => "INT16",
            DataType::Uint16 => "UINT16",
            DataType::Int32 => "INT32",
            DataType::Uint32 => "UINT32",
            DataType::Float32 => "FLOAT32",
            DataType::Float64 => "FLOAT64",
            DataType::Bit => "BIT",
        }
    }
}

/// Byte and word order of a multi-byte value, named like Telegraf does: the letters are the
/// bytes of the big-endian value as they arrive on the wire. For 64-bit values the pattern
/// extends naturally (ABCD = ABCDEFGH, DCBA = HGFEDCBA, BADC = BADCFEHG, CDAB = GHEFCDAB);
/// for 16-bit values only the byte swap matters (DCBA and BADC swap, ABCD and CDAB do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ByteOrder {
    /// Big-endian: the Modbus default.
    #[default]
    Abcd,
    /// Little-endian: bytes and words reversed.
    Dcba,
    /// Big-endian words, bytes swapped inside each word.
    Badc,
    /// Little-endian word order, big-endian bytes in each word ("word swap").
    Cdab,
}

impl ByteOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            ByteOrder::Abcd => "ABCD",
            ByteOrder::Dcba => "DCBA",
            ByteOrder::Badc => "BADC",
            ByteOrder::Cdab => "CDAB",
        }
    }
}

/// `[profile]`: the header of a CDU profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    vendor: String,
    #[serde(default = "default_max_read_registers")]
    max_read_registers: u16,
    #[serde(default = "default_max_read_bits")]
    max_read_bits: u16,
    #[serde(default)]
    max_gap: u16,
}

fn default_max_read_registers() -> u16 {
    PROTOCOL_MAX_READ_REGISTERS
}
fn default_max_read_bits() -> u16 {
    PROTOCOL_MAX_READ_BITS
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    profile: Header,
    #[serde(default, rename = "register")]
    registers: Vec<Register>,
}

/// One `[[register]]` of a profile.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// Unique name in the profile; used in metrics and fault messages.
    pub name: String,
    /// What the register means to the controller, when it means anything.
    #[serde(default)]
    pub role: Option<Role>,
    pub kind: RegisterKind,
    /// 0-based protocol address (what goes on the wire, not the 30001/40001 notation).
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub order: ByteOrder,
    /// For `type = "BIT"` on an input or holding register: which bit, 0 = least significant.
    #[serde(default)]
    pub bit: Option<u8>,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub description: String,
    /// `[min, max]` in engineering units; values outside are reported as implausible.
    #[serde(default)]
    pub plausible: Option<[f64; 2]>,
    #[serde(default)]
    pub writable: bool,
    /// `[min, max]` in engineering units a write must respect.
    #[serde(default)]
    pub limits: Option<[f64; 2]>,
}

impl Register {
    /// The multiplier from raw to engineering value (1 unless given).
    pub fn scale(&self) -> f64 {
        self.scale.unwrap_or(1.0)
    }

    /// The offset added after scaling (0 unless given).
    pub fn offset(&self) -> f64 {
        self.offset.unwrap_or(0.0)
    }

    /// Number of coils/inputs (bit kinds) or words (register kinds) the register spans.
    pub fn width(&self) -> u16 {
        if self.kind.is_bit() {
            1
        } else {
            self.data_type.words()
        }
    }

    /// Last address the register occupies.
    pub fn last_address(&self) -> u32 {
        u32::from(self.address) + u32::from(self.width()) - 1
    }

    /// The write range: `limits`, or 0..=1 for a bit.
    pub fn write_limits(&self) -> Option<(f64, f64)> {
        match (self.limits, self.data_type) {
            (Some([lo, hi]), _) => Some((lo, hi)),
            (None, DataType::Bit) => Some((0.0, 1.0)),
            (None, _) => None,
        }
    }

    /// The smallest step a value of this register can change by, in engineering units.
    pub fn resolution(&self) -> f64 {
        match self.data_type {
            DataType::Float32 => f64::from(f32::EPSILON),
            DataType::Float64 => f64::EPSILON,
            _ => 1.0,
        }
    }

    /// `register[3] (supply_temp)`: how messages point at a register.
    pub fn label(&self, index: usize) -> String {
        format!("register[{index}] ({})", self.name)
    }
}

/// A validated CDU firmware profile.
#[derive(Debug, Clone, PartialEq)]
pub struct CduProfile {
    pub name: String,
    pub description: String,
    pub vendor: String,
    /// Most registers one read request asks for (1 to 125).
    pub max_read_registers: u16,
    /// Most coils/discrete inputs one read request asks for (1 to 2000).
    pub max_read_bits: u16,
    /// Unmapped addresses a read request may span to join two registers (default 0: many
    /// CDUs answer a read over an unmapped address with an exception).
    pub max_gap: u16,
    pub registers: Vec<Register>,
    /// The file the profile was read from, for messages.
    pub path: PathBuf,
}

impl CduProfile {
    /// Reads, parses and validates a profile file.
    pub fn load(path: &Path) -> Result<CduProfile, ConfigError> {
        let text = read_file(path)?;
        CduProfile::parse(&text, path)
    }

    /// Parses and validates profile text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<CduProfile, ConfigError> {
        let raw: RawProfile = parse_toml(text, path).map_err(|e| name_registers(e, text))?;
        let profile = CduProfile {
            name: raw.profile.name,
            description: raw.profile.description,
            vendor: raw.profile.vendor,
            max_read_registers: raw.profile.max_read_registers,
            max_read_bits: raw.profile.max_read_bits,
            max_gap: raw.profile.max_gap,
            registers: raw.registers,
            path: path.to_path_buf(),
        };
        let mut issues = Issues::default();
        profile.validate(&mut issues);
        issues.into_result(path)?;
        Ok(profile)
    }

    fn validate(&self, issues: &mut Issues) {
        issues.check(
            !self.name.trim().is_empty(),
            "profile.name",
            "a non-empty profile name",
        );
        issues.check(
            (1..=PROTOCOL_MAX_READ_REGISTERS).contains(&self.max_read_registers),
            "profile.max_read_registers",
            format!(
                "1 to {PROTOCOL_MAX_READ_REGISTERS} (the Modbus limit per read), got {}",
                self.max_read_registers
            ),
        );
        issues.check(
            (1..=PROTOCOL_MAX_READ_BITS).contains(&self.max_read_bits),
            "profile.max_read_bits",
            format!(
                "1 to {PROTOCOL_MAX_READ_BITS} (the Modbus limit per read), got {}",
                self.max_read_bits
            ),
        );
        issues.check(
            self.max_gap < self.max_read_registers.max(1),
            "profile.max_gap",
            format!(
                "a gap smaller than max_read_registers ({}), got {}",
                self.max_read_registers, self.max_gap
            ),
        );
        issues.check(
            !self.registers.is_empty(),
            "register",
            "at least one [[register]]",
        );

        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut writable_roles: BTreeMap<Role, usize> = BTreeMap::new();
        for (i, r) in self.registers.iter().enumerate() {
            let at = |key: &str| format!("{}.{key}", r.label(i));
            if r.name.trim().is_empty() {
                issues.push(format!("register[{i}].name"), "a non-empty register name");
            } else if let Some(first) = names.insert(&r.name, i) {
                issues.push(
                    at("name"),
                    format!(
                        "a unique name, but register[{first}] is also called `{}`",
                        r.name
                    ),
                );
            }
            validate_register(r, &at, issues);
            if r.writable {
                if let Some(role) = r.role {
                    if let Some(first) = writable_roles.insert(role, i) {
                        issues.push(
                            at("role"),
                            format!(
                                "one writable register per role, but register[{first}] is \
                                 also a writable `{role}`"
                            ),
                        );
                    }
                }
            }
            if matches!(r.role, Some(Role::PumpSpeedCommand | Role::Watchdog)) && !r.writable {
                issues.push(
                    at("writable"),
                    format!(
                        "`writable = true`: the controller writes the `{}` role",
                        r.role.map(Role::as_str).unwrap_or_default()
                    ),
                );
            }
        }

        // Overlaps: sort by (kind, address) and compare neighbours' ranges.
        let mut order: Vec<usize> = (0..self.registers.len()).collect();
        order.sort_by_key(|&i| (self.registers[i].kind, self.registers[i].address));
        for (pos, &i) in order.iter().enumerate() {
            let a = &self.registers[i];
            for &j in &order[pos + 1..] {
                let b = &self.registers[j];
                if b.kind != a.kind || u32::from(b.address) > a.last_address() {
                    break;
                }
                let shared_word_bits = !a.kind.is_bit()
                    && a.data_type == DataType::Bit
                    && b.data_type == DataType::Bit
                    && a.bit.is_some()
                    && b.bit.is_some()
                    && a.bit != b.bit
                    && a.address == b.address;
                if !shared_word_bits {
                    let (first, second) = if i < j { (i, a) } else { (j, b) };
                    let other = if i < j { (j, b) } else { (i, a) };
                    issues.push(
                        format!("{}.address", other.1.label(other.0)),
                        format!(
                            "a {} address range of its own, but {}..={} overlaps `{}` \
                             (register[{first}], {}..={})",
                            other.1.kind,
                            other.1.address,
                            other.1.last_address(),
                            second.name,
                            second.address,
                            second.last_address()
                        ),
                    );
                }
            }
        }
    }

    /// Refuses a profile that lacks a register for any of `roles`.
    pub fn require_roles(&self, roles: &[Role]) -> Result<(), ConfigError> {
        let missing: Vec<ConfigIssue> = roles
            .iter()
            .filter(|r| self.register_for(**r).is_none())
            .map(|r| ConfigIssue {
                key: "register".into(),
                expected: format!(
                    "a register with `role = \"{r}\"`: the control loop needs it (profile `{}`)",
                    self.name
                ),
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                file: self.path.clone(),
                issues: missing,
            })
        }
    }

    /// The register that plays `role`: the writable one where there is one (what writes
    /// go to), else the first in the profile.
    pub fn register_for(&self, role: Role) -> Option<&Register> {
        self.registers
            .iter()
            .find(|r| r.role == Some(role) && r.writable)
            .or_else(|| self.registers.iter().find(|r| r.role == Some(role)))
    }

    /// Every role the profile maps, sorted, without duplicates.
    pub fn roles(&self) -> Vec<Role> {
        let mut roles: Vec<Role> = self.registers.iter().filter_map(|r| r.role).collect();
        roles.sort();
        roles.dedup();
        roles
    }

    /// The pump speed command's write range, from its register's `limits`.
    pub fn pump_limits(&self) -> Option<(Percent, Percent)> {
        self.register_for(Role::PumpSpeedCommand)
            .and_then(|r| r.limits)
            .map(|[lo, hi]| (Percent(lo), Percent(hi)))
    }
}

fn validate_register(r: &Register, at: &dyn Fn(&str) -> String, issues: &mut Issues) {
    let words = r.data_type.words();
    match (r.kind.is_bit(), r.data_type, r.bit) {
        (true, DataType::Bit, None) => {}
        (true, DataType::Bit, Some(_)) => issues.push(
            at("bit"),
            format!("no `bit` on a {} (it is a single bit already)", r.kind),
        ),
        (true, t, _) => issues.push(
            at("type"),
            format!("\"BIT\" for a {} register, got \"{}\"", r.kind, t.as_str()),
        ),
        (false, DataType::Bit, None) => issues.push(
            at("bit"),
            format!(
                "`bit = 0..15` to pick a bit of the {} register (type \"BIT\")",
                r.kind
            ),
        ),
        (false, DataType::Bit, Some(b)) => {
            issues.check(b < 16, at("bit"), format!("a bit number 0 to 15, got {b}"))
        }
        (false, _, Some(_)) => issues.push(
            at("bit"),
            format!(
                "`bit` only with type \"BIT\", got type \"{}\"",
                r.data_type.as_str()
            ),
        ),
        (false, _, None) => {}
    }
    if !r.kind.is_bit() && u32::from(r.address) + u32::from(words) - 1 > u32::from(u16::MAX) {
        issues.push(
            at("address"),
            format!(
                "an address whose {words} words end by 65535, got {}",
                r.address
            ),
        );
    }
    if r.data_type == DataType::Bit {
        issues.check(
            r.scale.is_none() && r.offset.is_none(),
            at("scale"),
            "no `scale` or `offset` on a BIT (its value is 0 or 1)",
        );
    }
    if let Some(s) = r.scale {
        issues.check(
            s.is_finite() && s != 0.0,
            at("scale"),
            format!("a finite, non-zero scale, got {s}"),
        );
    }
    if let Some(o) = r.offset {
        issues.check(
            o.is_finite(),
            at("offset"),
            format!("a finite offset, got {o}"),
        );
    }
    if let Some([lo, hi]) = r.plausible {
        issues.check(
            lo.is_finite() && hi.is_finite() && lo < hi,
            at("plausible"),
            format!("[min, max] with finite min < max, got [{lo}, {hi}]"),
        );
    }
    if r.writable {
        match r.kind {
            RegisterKind::Coil => {}
            RegisterKind::Holding if r.data_type == DataType::Bit => issues.push(
                at("writable"),
                "no writes to one bit of a holding register (that needs a read-modify-write \
                 that races the CDU's own logic); map the coil instead",
            ),
            RegisterKind::Holding => issues.check(
                r.limits.is_some(),
                at("limits"),
                "`limits = [min, max]` in engineering units for a writable register",
            ),
            RegisterKind::Input | RegisterKind::Discrete => issues.push(
                at("writable"),
                format!(
                    "`writable` only on coil or holding registers; a {} register is read-only",
                    r.kind
                ),
            ),
        }
    } else if r.limits.is_some() {
        issues.push(
            at("limits"),
            "`limits` only together with `writable = true`",
        );
    }
    if let Some([lo, hi]) = r.limits {
        issues.check(
            lo.is_finite() && hi.is_finite() && lo <= hi,
            at("limits"),
            format!("[min, max] with finite min <= max, got [{lo}, {hi}]"),
        );
        if let Some([plo, phi]) = r.plausible {
            issues.check(
                lo >= plo && hi <= phi,
                at("limits"),
                format!("limits inside the plausible range [{plo}, {phi}], got [{lo}, {hi}]"),
            );
        }
        // Every value a write may carry must fit the register once scaled, or the write
        // fails at run time on every tick; raw = (value - offset) / scale is monotonic, so
        // the two ends decide.
        let scale = r.scale();
        if r.data_type != DataType::Bit && scale.is_finite() && scale != 0.0 {
            let (rlo, rhi) = r.data_type.raw_range();
            let raw = |v: f64| {
                let x = (v - r.offset()) / scale;
                if r.data_type.is_integer() {
                    x.round()
                } else {
                    x
                }
            };
            let (a, b) = (raw(lo), raw(hi));
            issues.check(
                !(lo.is_finite() && hi.is_finite())
                    || (a >= rlo && a <= rhi && b >= rlo && b <= rhi),
                at("limits"),
                format!(
                    "limits whose raw values (value - offset) / scale fit a {} ({rlo}..={rhi}), \
                     but [{lo}, {hi}] with scale {scale} and offset {} gives [{a}, {b}]",
                    r.data_type.as_str(),
                    r.offset()
                ),
            );
        }
    }
}

/// Adds the register's name to a parse error at `register[N]...`, so the engineer does not
/// have to count tables.
fn name_registers(mut e: ConfigError, text: &str) -> ConfigError {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return e;
    };
    for issue in &mut e.issues {
        let Some(rest) = issue.key.strip_prefix("register[") else {
            continue;
        };
        let Some((idx, tail)) = rest.split_once(']') else {
            continue;
        };
        let Ok(i) = idx.parse::<usize>() else {
            continue;
        };
        let name = doc
            .get("register")
            .and_then(|v| v.as_array())
            .and_then(|a| a.get(i))
            .and_then(|t| t.get("name"))
            .and_then(|n| n.as_str());
        if let Some(name) = name {
            issue.key = format!("register[{i}] ({name}){tail}");
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CduProfile, ConfigError> {
        CduProfile::parse(text, Path::new("test.toml"))
    }

    const HEAD: &str = "[profile]\nname = \"t\"\n";

    fn with(regs: &str) -> String {
        format!("{HEAD}{regs}")
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("profile should have been refused:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn shipped_profiles_load_and_cover_what_they_promise() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-profiles/cdu");
        let sim = CduProfile::load(&dir.join("sim-cdu.toml")).expect("sim-cdu.toml is valid");
        assert_eq!(sim.roles(), {
            let mut all = Role::ALL.to_vec();
            all.sort();
            all
        });
        sim.require_roles(&Role::ALL)
            .expect("sim-cdu maps every role");
        assert_eq!(sim.pump_limits(), Some((Percent(20.0), Percent(100.0))));
        let generic =
            CduProfile::load(&dir.join("generic-cdu.toml")).expect("generic-cdu.toml is valid");
        generic
            .require_roles(&[
                Role::SupplyTemperature,
                Role::ReturnTemperature,
                Role::PumpSpeedCommand,
                Role::Leak,
            ])
            .expect("generic CDU maps the control loop's roles");
    }

    #[test]
    fn a_minimal_profile_parses_with_defaults() {
        let p = parse(&with(
            "[[register]]\nname = \"s\"\nrole = \"supply_temperature\"\nkind = \"input\"\n\
             address = 3\ntype = \"FLOAT32\"\n",
        ))
        .expect("valid");
        let r = &p.registers[0];
        assert_eq!(r.order, ByteOrder::Abcd);
        assert_eq!(r.scale(), 1.0);
        assert_eq!(r.width(), 2);
        assert_eq!(p.max_read_registers, 125);
        assert_eq!(p.register_for(Role::SupplyTemperature), Some(r));
        assert!(p.register_for(Role::Flow).is_none());
    }

    #[test]
    fn unknown_keys_name_file_register_and_key() {
        let e = err(&with(
            "[[register]]\nname = \"supply\"\nkind = \"input\"\naddress = 0\ntype = \"INT16\"\n\
             scael = 0.1\n",
        ));
        assert!(e.starts_with("test.toml"), "{e}");
        assert!(e.contains("register[0] (supply)"), "{e}");
        assert!(e.contains("scael"), "{e}");
    }

    #[test]
    fn types_must_fit_the_kind() {
        let e = err(&with(
            "[[register]]\nname = \"leak\"\nkind = \"discrete\"\naddress = 0\ntype = \"FLOAT32\"\n",
        ));
        assert!(
            e.contains("register[0] (leak).type") && e.contains("\"BIT\""),
            "{e}"
        );
        let e = err(&with(
            "[[register]]\nname = \"b\"\nkind = \"input\"\naddress = 0\ntype = \"BIT\"\n",
        ));
        assert!(e.contains("register[0] (b).bit"), "{e}");
        let e = err(&with(
            "[[register]]\nname = \"b\"\nkind = \"input\"\naddress = 0\ntype = \"INT16\"\nbit = 3\n",
        ));
        assert!(e.contains("register[0] (b).bit"), "{e}");
        let e = err(&with(
            "[[register]]\nname = \"x\"\nkind = \"input\"\naddress = 65534\ntype = \"FLOAT64\"\n",
        ));
        assert!(e.contains("register[0] (x).address"), "{e}");
    }

    #[test]
    fn overlaps_are_refused_but_bits_of_one_word_are_fine() {
        let e = err(&with(
            "[[register]]\nname = \"a\"\nkind = \"input\"\naddress = 0\ntype = \"FLOAT32\"\n\
             [[register]]\nname = \"b\"\nkind = \"input\"\naddress = 1\ntype = \"INT16\"\n",
        ));
        assert!(
            e.contains("register[1] (b).address") && e.contains("overlaps `a`"),
            "{e}"
        );
        // The same address in another table is no overlap.
        parse(&with(
            "[[register]]\nname = \"a\"\nkind = \"input\"\naddress = 0\ntype = \"FLOAT32\"\n\
             [[register]]\nname = \"b\"\nkind = \"holding\"\naddress = 1\ntype = \"INT16\"\n",
        ))
        .expect("different tables");
        parse(&with(
            "[[register]]\nname = \"a\"\nkind = \"input\"\naddress = 7\ntype = \"BIT\"\nbit = 0\n\
             [[register]]\nname = \"b\"\nkind = \"input\"\naddress = 7\ntype = \"BIT\"\nbit = 1\n",
        ))
        .expect("two bits of one word");
        let e = err(&with(
            "[[register]]\nname = \"a\"\nkind = \"input\"\naddress = 7\ntype = \"BIT\"\nbit = 1\n\
             [[register]]\nname = \"b\"\nkind = \"input\"\naddress = 7\ntype = \"BIT\"\nbit = 1\n",
        ));
        assert!(e.contains("overlaps"), "{e}");
    }

    #[test]
    fn writables_need_a_writable_kind_and_limits() {
        let e = err(&with(
            "[[register]]\nname = \"p\"\nkind = \"input\"\naddress = 0\ntype = \"INT16\"\n\
             writable = true\nlimits = [0, 1]\n",
        ));
        assert!(e.contains("register[0] (p).writable"), "{e}");
        let e = err(&with(
            "[[register]]\nname = \"p\"\nrole = \"pump_speed_command\"\nkind = \"holding\"\n\
             address = 0\ntype = \"UINT16\"\nwritable = true\n",
        ));
        assert!(e.contains("register[0] (p).limits"), "{e}");
        let e = err(&with(
            "[[register]]\nname = \"p\"\nrole = \"pump_speed_command\"\nkind = \"holding\"\n\
             address = 0\ntype = \"UINT16\"\n",
        ));
        assert!(e.contains("register[0] (p).writable"), "{e}");
        let p = parse(&with(
            "[[register]]\nname = \"p\"\nrole = \"pump_speed_command\"\nkind = \"holding\"\n\
             address = 0\ntype = \"UINT16\"\nscale = 0.1\nwritable = true\nlimits = [25, 95]\n",
        ))
        .expect("valid writable");
        assert_eq!(p.pump_limits(), Some((Percent(25.0), Percent(95.0))));
    }

    #[test]
    fn names_must_be_unique_and_roles_can_be_required() {
        let e = err(&with(
            "[[register]]\nname = \"t\"\nkind = \"input\"\naddress = 0\ntype = \"INT16\"\n\
             [[register]]\nname = \"t\"\nkind = \"input\"\naddress = 1\ntype = \"INT16\"\n",
        ));
        assert!(e.contains("register[1] (t).name"), "{e}");
        let p = parse(&with(
            "[[register]]\nname = \"t\"\nrole = \"supply_temperature\"\nkind = \"input\"\n\
             address = 0\ntype = \"INT16\"\n",
        ))
        .expect("valid");
        let e = p
            .require_roles(&[Role::SupplyTemperature, Role::Flow])
            .expect_err("flow is missing")
            .to_string();
        assert!(e.contains("role = \"flow\""), "{e}");
        assert!(!e.contains("supply_temperature"), "{e}");
    }

    #[test]
    fn unknown_role_is_refused() {
        let e = err(&with(
            "[[register]]\nname = \"t\"\nrole = \"suply\"\nkind = \"input\"\naddress = 0\n\
             type = \"INT16\"\n",
        ));
        assert!(e.contains("register[0] (t).role"), "{e}");
    }
}
