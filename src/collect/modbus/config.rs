//! `[[cdu]]`: how to reach one CDU over Modbus (TCP or RTU), its unit id, profile and
//! timeout. It lives beside the client it configures; `service::config` only assembles it.

use crate::files::check_name;
use crate::validate::Issues;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Serial parity for Modbus RTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// How to reach a CDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CduTransport {
    /// Modbus TCP: `address` is `host:port`.
    Tcp { address: String },
    /// Modbus RTU over a serial line.
    Rtu {
        device: PathBuf,
        baud: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TransportKind {
    Tcp,
    Rtu,
}

/// The `[[cdu]]` table as written. serde cannot combine `deny_unknown_fields` with a
/// flattened enum, so the table is flat here and the transport is assembled after parsing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCdu {
    name: String,
    profile: String,
    transport: TransportKind,
    address: Option<String>,
    device: Option<PathBuf>,
    baud: Option<u32>,
    parity: Option<Parity>,
    data_bits: Option<u8>,
    stop_bits: Option<u8>,
    #[serde(default = "default_unit_id")]
    unit_id: u8,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    hosts: Vec<String>,
}

impl TryFrom<RawCdu> for CduConfig {
    type Error = String;

    fn try_from(r: RawCdu) -> Result<Self, String> {
        let transport = match r.transport {
            TransportKind::Tcp => {
                if r.device.is_some()
                    || r.baud.is_some()
                    || r.parity.is_some()
                    || r.data_bits.is_some()
                    || r.stop_bits.is_some()
                {
                    return Err("transport = \"tcp\" takes `address`, not serial settings (device, baud, parity, data_bits, stop_bits)".into());
                }
                CduTransport::Tcp {
                    address: r
                        .address
                        .ok_or("transport = \"tcp\" needs `address = \"host:port\"`")?,
                }
            }
            TransportKind::Rtu => {
                if r.address.is_some() {
                    return Err("transport = \"rtu\" takes `device`, not `address`".into());
                }
                CduTransport::Rtu {
                    device: r.device.ok_or(
                        "transport = \"rtu\" needs `device`, for example \"/dev/ttyUSB0\"",
                    )?,
                    baud: r.baud.unwrap_or_else(default_baud),
                    parity: r.parity.unwrap_or_else(default_parity),
                    data_bits: r.data_bits.unwrap_or_else(default_data_bits),
                    stop_bits: r.stop_bits.unwrap_or_else(default_stop_bits),
                }
            }
        };
        Ok(CduConfig {
            name: r.name,
            profile: r.profile,
            transport,
            unit_id: r.unit_id,
            timeout_ms: r.timeout_ms,
            hosts: r.hosts,
        })
    }
}

fn default_baud() -> u32 {
    19_200
}
fn default_parity() -> Parity {
    // The Modbus over serial line specification (V1.02, §2.5.1) makes even parity the default.
    Parity::Even
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

/// `[[cdu]]`: one coolant distribution unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawCdu")]
pub struct CduConfig {
    pub name: String,
    /// Firmware profile name: `firmware-profiles/cdu/<profile>.toml`.
    pub profile: String,
    pub transport: CduTransport,
    /// Modbus unit (slave) id.
    pub unit_id: u8,
    /// Per-request timeout in milliseconds; the Modbus client has none of its own.
    pub timeout_ms: u64,
    /// Hosts whose GPUs this CDU cools (this host when empty).
    pub hosts: Vec<String>,
}

/// The longest per-request Modbus timeout; see [`CduConfig::validate`].
pub const MAX_TIMEOUT_MS: u64 = 4_000;

fn default_unit_id() -> u8 {
    1
}
fn default_timeout_ms() -> u64 {
    500
}

impl CduConfig {
    pub fn validate(&self, key: &str, issues: &mut Issues) {
        check_name(&self.name, &format!("{key}.name"), issues);
        // A host name is a topic level of the rack wire format: no '/', '+' or '#'.
        for (j, h) in self.hosts.iter().enumerate() {
            check_name(h, &format!("{key}.hosts[{j}]"), issues);
            if self.hosts[..j].contains(h) {
                issues.push(
                    format!("{key}.hosts[{j}]"),
                    format!("each host once, but `{h}` is listed twice"),
                );
            }
        }
        match &self.transport {
            CduTransport::Tcp { address } => {
                let ok = address
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                issues.check(
                    ok,
                    format!("{key}.address"),
                    format!("`host:port`, got `{address}`"),
                );
            }
            CduTransport::Rtu {
                baud,
                data_bits,
                stop_bits,
                ..
            } => {
                issues.check(
                    [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200].contains(baud),
                    format!("{key}.baud"),
                    format!("a standard baud rate (1200 to 115200), got {baud}"),
                );
                issues.check(
                    (5..=8).contains(data_bits),
                    format!("{key}.data_bits"),
                    format!("5 to 8, got {data_bits}"),
                );
                issues.check(
                    (1..=2).contains(stop_bits),
                    format!("{key}.stop_bits"),
                    format!("1 or 2, got {stop_bits}"),
                );
            }
        }
        issues.check(
            (1..=247).contains(&self.unit_id),
            format!("{key}.unit_id"),
            format!("a Modbus unit id between 1 and 247, got {}", self.unit_id),
        );
        // On SIGTERM the safe pump speed costs up to 4 requests of timeout_ms (resolve,
        // connect, write, read-back), after at most half a period (≤ 2.5 s) of the tick in
        // progress and before the sinks get their 5 s to flush; the shipped unit's
        // TimeoutStopSec=30s must cover all of it, or systemd's SIGKILL lands before the
        // safe output: 2.5 + 4 × 4 + 5 = 23.5 s, leaving room for the runtime's own exit.
        issues.check(
            (10..=MAX_TIMEOUT_MS).contains(&self.timeout_ms),
            format!("{key}.timeout_ms"),
            format!(
                "a timeout between 10 and {MAX_TIMEOUT_MS} ms (the safe output on SIGTERM must \
                 fit the systemd unit's TimeoutStopSec=30s), got {}",
                self.timeout_ms
            ),
        );
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
