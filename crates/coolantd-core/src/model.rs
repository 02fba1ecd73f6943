//! The values that cross module boundaries: samples in, actuations out, commands, alarms,
//! metric points and the status snapshot.
//!
//! These types are plain data. The control core consumes and produces them without knowing
//! where a sample came from (local NVML, the simulator, another host over MQTT) or where an
//! actuation goes; the IO shell does the translating.
//!
//! Why one file over the ~700-line guideline: about 260 of its lines are the unit tests that pin
//! the public JSON names these types serialise to (docs/json.md); the types themselves are one
//! vocabulary that every module reads, and splitting it would only scatter the contract.

use crate::units::{Celsius, Joules, Megahertz, Percent, Watts};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Monotonic time since the daemon (or a test) started. The core's only notion of "now":
/// it never reads a clock itself.
pub type Mono = Duration;

/// Identifies one GPU across the site: the host it sits in and its NVML index there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GpuKey {
    pub host: String,
    pub index: u32,
}

impl fmt::Display for GpuKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/gpu{}", self.host, self.index)
    }
}

/// Where a reading came from. The core treats all sources alike; only age matters to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Read from NVML on this host.
    Nvml,
    /// Produced by the built-in plant simulator.
    Simulated,
    /// Received from another host's coolantd (over MQTT).
    Remote,
}

/// What is known about a GPU once, at start-up: identity, thresholds and power-limit range.
/// Thresholds come from NVML where it answers, else from the GPU profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuStatic {
    pub key: GpuKey,
    pub uuid: String,
    pub name: String,
    /// The GPU profile that matched this board (for example `h200-sxm`).
    pub profile: String,
    /// The core temperature at which the GPU starts to slow itself down.
    pub slowdown: Celsius,
    /// The core temperature the GPU is designed to stay under ("GPU max operating").
    pub gpu_max: Celsius,
    /// The HBM temperature limit ("memory max operating").
    pub hbm_max: Celsius,
    /// The temperature at which the GPU shuts down.
    pub shutdown: Celsius,
    /// Lowest power limit the board accepts.
    pub power_min: Watts,
    /// Highest power limit the board accepts.
    pub power_max: Watts,
    /// The board's default power limit.
    pub power_default: Watts,
}

/// One fast-path GPU reading: everything that costs well under a millisecond in NVML.
/// A value the GPU does not support, or that failed this time, is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    pub key: GpuKey,
    pub source: Source,
    /// When the reading was taken.
    pub at: Mono,
    pub core: Option<Celsius>,
    pub hbm: Option<Celsius>,
    pub power_instant: Option<Watts>,
    /// NVML's one-second average; it lags the instantaneous value by about a second.
    pub power_average: Option<Watts>,
    pub enforced_limit: Option<Watts>,
    pub sm_clock: Option<Megahertz>,
    pub mem_clock: Option<Megahertz>,
    pub utilization: Option<Percent>,
    /// Raw NVML clocks-event (throttle) reason bits.
    pub throttle_reasons: Option<u64>,
    /// Performance state, 0 (P0, fastest) to 15.
    pub pstate: Option<u8>,
}

impl GpuSample {
    /// An empty sample: every value unknown. Collectors fill in what they can read.
    pub fn empty(key: GpuKey, source: Source, at: Mono) -> Self {
        GpuSample {
            key,
            source,
            at,
            core: None,
            hbm: None,
            power_instant: None,
            power_average: None,
            enforced_limit: None,
            sm_clock: None,
            mem_clock: None,
            utilization: None,
            throttle_reasons: None,
            pstate: None,
        }
    }
}

/// Slow-path GPU counters: each NVML call here costs milliseconds (energy ~3 ms, violation
/// counters ~0.6 ms on an H200), so they are read off the control path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSlowSample {
    pub key: GpuKey,
    pub at: Mono,
    /// Energy consumed since the driver loaded.
    pub energy: Option<Joules>,
    /// Accumulated time throttled by the power limit, nanoseconds.
    pub violation_power_ns: Option<u64>,
    /// Accumulated time throttled for thermal reasons, nanoseconds.
    pub violation_thermal_ns: Option<u64>,
    /// Volatile corrected ECC errors.
    pub ecc_corrected: Option<u64>,
}

/// What a CDU register means to the controller. A firmware profile maps its registers onto
/// these roles; the control core only ever speaks in roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Coolant temperature entering the cold plates, °C.
    SupplyTemperature,
    /// Coolant temperature leaving the cold plates, °C.
    ReturnTemperature,
    /// Secondary-loop coolant flow, l/min.
    Flow,
    /// Differential pressure across the secondary loop, kPa.
    DifferentialPressure,
    /// Pump speed set point written by the controller, %.
    PumpSpeedCommand,
    /// Pump speed the CDU reports back, %.
    PumpSpeedFeedback,
    /// Leak detected (true) or dry (false).
    Leak,
    /// The CDU accepts remote (BMS) commands: true in remote, false in local mode.
    RemoteEnable,
    /// Facility (primary) water supply temperature, °C.
    FacilityWaterTemperature,
    /// Primary-side control valve position, %.
    ValvePosition,
    /// Room air temperature near the CDU, °C (for the dew-point floor).
    RoomTemperature,
    /// Room relative humidity, % (for the dew-point floor).
    RoomHumidity,
    /// A heartbeat register the CDU watches; when it stops changing the CDU falls back to
    /// its own control.
    Watchdog,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 13] = [
        Role::SupplyTemperature,
        Role::ReturnTemperature,
        Role::Flow,
        Role::DifferentialPressure,
        Role::PumpSpeedCommand,
        Role::PumpSpeedFeedback,
        Role::Leak,
        Role::RemoteEnable,
        Role::FacilityWaterTemperature,
        Role::ValvePosition,
        Role::RoomTemperature,
        Role::RoomHumidity,
        Role::Watchdog,
    ];

    /// The name used in profiles, metrics and MQTT payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SupplyTemperature => "supply_temperature",
            Role::ReturnTemperature => "return_temperature",
            Role::Flow => "flow",
            Role::DifferentialPressure => "differential_pressure",
            Role::PumpSpeedCommand => "pump_speed_command",
            Role::PumpSpeedFeedback => "pump_speed_feedback",
            Role::Leak => "leak",
            Role::RemoteEnable => "remote_enable",
            Role::FacilityWaterTemperature => "facility_water_temperature",
            Role::ValvePosition => "valve_position",
            Role::RoomTemperature => "room_temperature",
            Role::RoomHumidity => "room_humidity",
            Role::Watchdog => "watchdog",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a sensor value is missing. Carried per register so a fault names its register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SensorFault {
    /// The request timed out.
    Timeout,
    /// The device answered with a Modbus exception code.
    Exception { code: u8, meaning: String },
    /// The transport failed (connection refused, reset, framing).
    Transport { message: String },
    /// The decoded value is outside the register's plausible range, or not a number.
    Implausible { value: f64, min: f64, max: f64 },
}

impl fmt::Display for SensorFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SensorFault::Timeout => f.write_str("timed out"),
            SensorFault::Exception { code, meaning } => {
                write!(f, "Modbus exception {code:#04x} ({meaning})")
            }
            SensorFault::Transport { message } => write!(f, "transport error: {message}"),
            SensorFault::Implausible { value, min, max } => {
                write!(f, "implausible value {value} (expected {min}..={max})")
            }
        }
    }
}

impl SensorFault {
    /// The stable snake_case word for the fault (the `kind` of the error shape, docs/json.md).
    pub fn kind(&self) -> &'static str {
        match self {
            SensorFault::Timeout => "timeout",
            SensorFault::Exception { .. } => "modbus_exception",
            SensorFault::Transport { .. } => "transport",
            SensorFault::Implausible { .. } => "implausible",
        }
    }
}

/// A register that failed a poll, in the error shape of docs/json.md: the message for people
/// and the fault's kind for tools. Displays as `<register>: <error>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterFault {
    /// The register's name in the firmware profile.
    pub register: String,
    pub error: String,
    pub kind: String,
}

impl RegisterFault {
    pub fn new(register: &str, fault: &SensorFault) -> RegisterFault {
        RegisterFault {
            register: register.to_string(),
            error: fault.to_string(),
            kind: fault.kind().to_string(),
        }
    }
}

impl fmt::Display for RegisterFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.register, self.error)
    }
}

/// One register's decoded value (in the profile's unit, scale and offset applied) or why
/// there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterReading {
    /// The register's name in the firmware profile.
    pub name: String,
    pub role: Option<Role>,
    pub value: Result<f64, SensorFault>,
}

/// One poll of a CDU: every mapped register, good or faulty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CduSample {
    /// The CDU's name in the site configuration.
    pub cdu: String,
    pub at: Mono,
    pub registers: Vec<RegisterReading>,
}

impl CduSample {
    /// All good values for a role (a profile may map redundant sensors to one role).
    pub fn values(&self, role: Role) -> impl Iterator<Item = f64> + '_ {
        self.registers
            .iter()
            .filter(move |r| r.role == Some(role))
            .filter_map(|r| r.value.as_ref().ok().copied())
    }

    /// The worst case of redundant sensors for a role: the highest for temperatures and leak,
    /// the lowest for flow, pressure and feedback. `None` when no sensor of the role is good.
    pub fn worst(&self, role: Role) -> Option<f64> {
        let higher_is_worse = matches!(
            role,
            Role::SupplyTemperature
                | Role::ReturnTemperature
                | Role::FacilityWaterTemperature
                | Role::Leak
                | Role::RoomTemperature
                | Role::RoomHumidity
        );
        self.values(role)
            .reduce(|a, b| if higher_is_worse { a.max(b) } else { a.min(b) })
    }

    /// True when at least one register of this role is mapped in the sample.
    pub fn has_role(&self, role: Role) -> bool {
        self.registers.iter().any(|r| r.role == Some(role))
    }
}

/// An output of the control core, applied by the IO shell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Actuation {
    /// Write the pump speed command of a CDU.
    SetPumpSpeed {
        cdu: String,
        #[serde(rename = "speed_pct")]
        speed: Percent,
    },
    /// Set one GPU's power limit.
    SetPowerCap {
        gpu: GpuKey,
        #[serde(rename = "limit_w")]
        limit: Watts,
    },
    /// Write the next heartbeat value to a CDU's watchdog register.
    FeedWatchdog { cdu: String, value: u16 },
}

impl fmt::Display for Actuation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actuation::SetPumpSpeed { cdu, speed } => {
                write!(f, "set pump speed of {cdu} to {speed:.1}")
            }
            Actuation::SetPowerCap { gpu, limit } => {
                write!(f, "set power limit of {gpu} to {limit:.0}")
            }
            Actuation::FeedWatchdog { cdu, value } => {
                write!(f, "feed watchdog of {cdu} with {value}")
            }
        }
    }
}

/// What happened when the shell applied an actuation; fed back into the core next tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActuationOutcome {
    pub actuation: Actuation,
    pub at: Mono,
    /// `Ok` when the device acknowledged the write; `Err` says why not and whether a retry
    /// can help.
    pub result: Result<(), ActuationError>,
    /// True when nothing was written because the daemon runs in dry-run mode.
    pub dry_run: bool,
}

/// Why an actuation did not take effect.
///
/// The kind decides what the core does next: a transient failure is retried, a write the
/// device can never take (NVML `NotSupported`, a GPU this host does not have) is remembered
/// and alarmed instead of being tried again every tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ActuationError {
    /// The device or this host cannot carry out this write at all; retrying cannot help.
    NotSupported(String),
    /// This attempt failed (timeout, exception, link down, refused value); a retry may succeed.
    Failed(String),
}

impl ActuationError {
    /// True when retrying the same write cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ActuationError::NotSupported(_))
    }
}

impl fmt::Display for ActuationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActuationError::NotSupported(m) => write!(f, "not supported: {m}"),
            ActuationError::Failed(m) => f.write_str(m),
        }
    }
}

/// Auto: the PID loops drive the outputs. Manual: an operator set the pump speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Auto,
    Manual,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Manual => "manual",
        })
    }
}

/// The supervisor's state. Ordered by severity: a later variant is more severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlState {
    /// Waiting for every required input to become valid; outputs held at their safe values.
    Boot,
    /// Normal closed-loop control.
    Running,
    /// An optional input is lost; control continues on what remains.
    Degraded,
    /// A required input is lost or the CDU is unreachable: failsafe outputs.
    Failsafe,
    /// Leak, or a GPU at a hard thermal limit: caps to minimum, pumps to maximum.
    Emergency,
}

impl ControlState {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlState::Boot => "boot",
            ControlState::Running => "running",
            ControlState::Degraded => "degraded",
            ControlState::Failsafe => "failsafe",
            ControlState::Emergency => "emergency",
        }
    }
}

impl fmt::Display for ControlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How bad an alarm is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

/// An alarm as the outside world sees it. On the wire (`/status`) it goes out as
/// [`AlarmJson`]: `raised_at` as seconds since start (`raised_at_uptime_s`, as on MQTT), with the alarm's kind and causes as
/// snake_case words beside the human message (docs/json.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "AlarmJson", from = "AlarmJson")]
pub struct Alarm {
    /// Stable identifier, for example `leak:cdu-a` or `gpu_slowdown:node01/gpu3`.
    pub id: String,
    pub severity: Severity,
    pub message: String,
    pub raised_at: Mono,
    /// A latched alarm stays active after its cause clears, until acknowledged.
    pub latched: bool,
    pub acknowledged: bool,
    /// False once the cause has cleared (a latched alarm may still be active).
    pub cause_present: bool,
    /// Why, as stable snake_case words (for example `unreachable` or
    /// `required_input_supply_temperature` for a failsafe); empty where the kind says it all.
    pub causes: Vec<String>,
}

impl Alarm {
    /// The alarm's kind: the stable snake_case word before the `:` of its id
    /// (`failsafe`, `leak`, `gpu_slowdown`, ...).
    pub fn kind(&self) -> &str {
        self.id.split(':').next().unwrap_or(&self.id)
    }
}

/// The JSON shape of an [`Alarm`]: no Rust `Duration` encoding, the kind spelt out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlarmJson {
    pub id: String,
    pub kind: String,
    pub severity: Severity,
    pub message: String,
    #[serde(default)]
    pub causes: Vec<String>,
    /// Seconds since the daemon started (monotonic time).
    pub raised_at_uptime_s: f64,
    pub latched: bool,
    pub acknowledged: bool,
    pub cause_present: bool,
}

impl From<Alarm> for AlarmJson {
    fn from(a: Alarm) -> AlarmJson {
        AlarmJson {
            kind: a.kind().to_string(),
            raised_at_uptime_s: a.raised_at.as_secs_f64(),
            id: a.id,
            severity: a.severity,
            message: a.message,
            causes: a.causes,
            latched: a.latched,
            acknowledged: a.acknowledged,
            cause_present: a.cause_present,
        }
    }
}

impl From<AlarmJson> for Alarm {
    fn from(a: AlarmJson) -> Alarm {
        Alarm {
            id: a.id,
            severity: a.severity,
            message: a.message,
            // A negative or non-finite time cannot come from the daemon; read it as start.
            raised_at: Duration::try_from_secs_f64(a.raised_at_uptime_s).unwrap_or_default(),
            latched: a.latched,
            acknowledged: a.acknowledged,
            cause_present: a.cause_present,
            causes: a.causes,
        }
    }
}

/// What happened to an alarm, for the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmTransition {
    Raised,
    Cleared,
    Acknowledged,
}

/// One alarm event, published on MQTT and written to InfluxDB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    pub alarm: Alarm,
    pub transition: AlarmTransition,
    pub at: Mono,
}

/// An operator command, from MQTT (or, later, other front ends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Change the temperature set point of the pump loop.
    SetSetpoint { celsius: f64 },
    /// Switch between automatic and manual control.
    SetMode { mode: Mode },
    /// In manual mode: the pump speed to hold.
    SetPumpSpeed { percent: f64 },
    /// Acknowledge an alarm by its id.
    AckAlarm { id: String },
}

/// The core's answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandOutcome {
    Accepted,
    /// `kind` is for tools, `reason` for people.
    Rejected {
        kind: RejectKind,
        reason: String,
    },
}

/// Why a command was refused, as a stable snake_case word (docs/mqtt.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// Not a JSON object, or an `id` that is neither a string nor a number.
    BadJson,
    /// Larger than the command size limit; not parsed.
    TooLarge,
    /// Published with the retain flag, which would run it again on every reconnect.
    Retained,
    /// No `command`, or one coolantd does not know.
    UnknownCommand,
    /// A known command with a field missing, unknown or of the wrong type.
    BadField,
    /// A value outside the configured limits.
    OutOfRange,
    /// Not allowed in the current mode (a pump speed outside manual mode).
    WrongMode,
    /// No active alarm has that id.
    UnknownAlarm,
    /// The command queue to the controller is full.
    Busy,
    /// The controller is shutting down.
    ShuttingDown,
}

/// A field value in a metric point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(String),
}

/// One metric point in InfluxDB's data model: the common currency of every sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub measurement: String,
    /// Tags, kept sorted by key (InfluxDB's preferred order).
    pub tags: Vec<(String, String)>,
    pub fields: Vec<(String, FieldValue)>,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    #[serde(rename = "time_unix_ns")]
    pub time_ns: i64,
}

impl Point {
    pub fn new(measurement: impl Into<String>, time_ns: i64) -> Self {
        Point {
            measurement: measurement.into(),
            tags: Vec::new(),
            fields: Vec::new(),
            time_ns,
        }
    }

    /// Adds a tag, keeping tags sorted by key.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        let pos = self
            .tags
            .partition_point(|(k, _)| k.as_str() < key.as_str());
        self.tags.insert(pos, (key, value.into()));
        self
    }

    /// Adds a field.
    pub fn field(mut self, key: impl Into<String>, value: FieldValue) -> Self {
        self.fields.push((key.into(), value));
        self
    }

    /// Adds a float field when the value is known and finite; skips it otherwise, because
    /// line protocol has no representation for NaN or a missing value.
    pub fn field_f64(self, key: &str, value: Option<f64>) -> Self {
        match value {
            Some(v) if v.is_finite() => self.field(key, FieldValue::Float(v)),
            _ => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_is_cumulative_and_bounds_its_quantiles() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_bound_ms(0.5), None);
        for ms in [0.4, 4.0, 4.0, 60.0, -3.0, 40_000.0] {
            h.observe_ms(ms);
        }
        assert_eq!(h.count, 6);
        // 0.4 and the negative one (counted as 0) are ≤ 1 ms; both 4 ms ≤ 5 ms.
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[3], 4);
        assert_eq!(*h.counts.last().unwrap(), 5, "40 s is past the last bound");
        assert_eq!(h.quantile_bound_ms(0.5), Some(5.0));
        assert_eq!(h.quantile_bound_ms(0.8), Some(75.0));
        assert_eq!(h.quantile_bound_ms(1.0), Some(f64::INFINITY));
        assert!((h.sum_ms - 40_068.4).abs() < 1e-6);
    }

    fn reading(role: Role, v: Result<f64, SensorFault>) -> RegisterReading {
        RegisterReading {
            name: role.as_str().into(),
            role: Some(role),
            value: v,
        }
    }

    #[test]
    fn redundant_sensors_combine_worst_case() {
        let s = CduSample {
            cdu: "a".into(),
            at: Duration::ZERO,
            registers: vec![
                reading(Role::SupplyTemperature, Ok(30.0)),
                reading(Role::SupplyTemperature, Ok(31.5)),
                reading(Role::SupplyTemperature, Err(SensorFault::Timeout)),
                reading(Role::Flow, Ok(120.0)),
                reading(Role::Flow, Ok(80.0)),
            ],
        };
        assert_eq!(s.worst(Role::SupplyTemperature), Some(31.5));
        assert_eq!(s.worst(Role::Flow), Some(80.0));
        assert_eq!(s.worst(Role::Leak), None);
        assert!(s.has_role(Role::Flow));
        assert!(!s.has_role(Role::Leak));
    }

    #[test]
    fn point_tags_stay_sorted() {
        let p = Point::new("gpu", 0)
            .tag("uuid", "u")
            .tag("host", "h")
            .tag("index", "1");
        let keys: Vec<_> = p.tags.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["host", "index", "uuid"]);
    }

    #[test]
    fn alarm_json_has_seconds_and_kind_and_reads_back() {
        let a = Alarm {
            id: "failsafe:cdu-a".into(),
            severity: Severity::Critical,
            message: "cdu-a in failsafe: CDU unreachable".into(),
            raised_at: Duration::from_millis(4_250),
            latched: false,
            acknowledged: false,
            cause_present: true,
            causes: vec!["unreachable".into()],
        };
        let v = serde_json::to_value(&a).expect("alarm encodes");
        assert_eq!(v["kind"], "failsafe");
        assert_eq!(v["raised_at_uptime_s"], 4.25);
        assert_eq!(v["causes"][0], "unreachable");
        assert!(v.get("raised_at").is_none(), "{v}");
        // `coolantd status` decodes `/status` back into a snapshot.
        let back: Alarm = serde_json::from_value(v).expect("alarm decodes");
        assert_eq!(back, a);
    }

    #[test]
    fn commands_parse_from_json_and_reject_unknown_fields() {
        let c: Command = serde_json::from_str(r#"{"command":"set_setpoint","celsius":65}"#)
            .expect("valid command");
        assert_eq!(c, Command::SetSetpoint { celsius: 65.0 });
        assert!(serde_json::from_str::<Command>(
            r#"{"command":"set_setpoint","celsius":65,"x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Command>(r#"{"command":"explode"}"#).is_err());
    }
}

/// One control loop's internals for one tick, for metrics and dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopReport {
    /// Loop name, for example `pump:cdu-a` or `power:node01/gpu3`.
    pub name: String,
    pub setpoint: f64,
    pub measured: Option<f64>,
    pub p: f64,
    pub i: f64,
    pub d: f64,
    pub ff: f64,
    pub output: f64,
    /// Why the output is what it is, in words: the state that overrides the PID, or the
    /// input that drove it (which GPU, its value, the set point and the terms). Logged
    /// with each decision a dry run would make.
    #[serde(default)]
    pub reason: String,
}

/// The heat-load feed-forward of one CDU's pump loop in one tick (see
/// `control/feedforward.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedForwardReport {
    pub cdu: String,
    /// Whether the feed-forward steers the pump now.
    pub engaged: bool,
    /// Why it does not (missing or stale power, no model, disabled).
    pub reason: Option<String>,
    /// Σ GPU power plus the non-GPU share, W.
    pub heat_load_w: Option<f64>,
    /// The model's pump speed for that load, before correction, %.
    pub model_speed: Option<f64>,
    /// The learnt multiplicative correction of the model.
    pub correction: f64,
    /// The term handed to the PID, %.
    pub ff: f64,
}

/// Everything the control core decided in one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickOutput {
    pub actuations: Vec<Actuation>,
    pub state: ControlState,
    pub mode: Mode,
    /// The controlled variable: the hottest GPU temperature the pump loop holds (core or
    /// HBM-equivalent, per configuration), when any GPU reading is valid.
    pub controlled: Option<crate::units::Celsius>,
    pub setpoint: crate::units::Celsius,
    pub loops: Vec<LoopReport>,
    /// Alarms raised, cleared or acknowledged this tick.
    pub events: Vec<AlarmEvent>,
    /// Every alarm active after this tick.
    pub active_alarms: Vec<Alarm>,
    /// True when every required input is valid (what `/readyz` reports).
    pub ready: bool,
    /// The feed-forward of each CDU's pump loop.
    #[serde(default)]
    pub feed_forward: Vec<FeedForwardReport>,
}

/// A CDU's latest values, for the status line, `/status` and MQTT state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CduStatus {
    pub name: String,
    // The JSON keys are the InfluxDB field names, unit suffix included (docs/json.md).
    #[serde(rename = "supply_temp_c")]
    pub supply: Option<f64>,
    #[serde(rename = "return_temp_c")]
    pub return_: Option<f64>,
    #[serde(rename = "flow_lpm")]
    pub flow: Option<f64>,
    #[serde(rename = "dp_kpa")]
    pub differential_pressure: Option<f64>,
    #[serde(rename = "pump_command_pct")]
    pub pump_command: Option<f64>,
    #[serde(rename = "pump_feedback_pct")]
    pub pump_feedback: Option<f64>,
    pub leak: Option<bool>,
    pub remote_enable: Option<bool>,
    /// Registers that failed this poll, with why.
    pub faults: Vec<RegisterFault>,
    /// How fresh the values above are and how the CDU keeps up with the control period.
    #[serde(default)]
    pub link: CduLinkStatus,
}

/// How a CDU's poller keeps up with the control tick: the tick never waits for a CDU longer
/// than its budget, so a slow CDU shows here (and in the `cdu_link` metrics) instead of
/// stretching the tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CduLinkStatus {
    /// Age of the newest completed poll at this tick, ms of control time (`None` before the
    /// first poll completes). Older than `control.max_sample_age_ms` is a lost input. JSON
    /// durations are seconds (docs/json.md).
    #[serde(rename = "sample_age_s", with = "ms_as_seconds")]
    pub sample_age_ms: Option<f64>,
    /// Wall time the newest completed poll took, ms.
    #[serde(rename = "poll_duration_s", with = "ms_as_seconds")]
    pub poll_ms: Option<f64>,
    /// True when this tick's poll had not finished within the tick's budget for CDUs, so
    /// the tick went on with an older sample.
    pub late: bool,
    /// Ticks that went on without their own poll, since start.
    pub late_polls: u64,
    /// Writes replaced by a newer value for the same register before the CDU was free to
    /// take them (only the newest pump speed or heartbeat matters), since start.
    pub superseded_writes: u64,
    /// Modbus requests and how many of them timed out, since start.
    pub requests: u64,
    pub timeouts: u64,
}

/// Milliseconds held in the model, seconds in JSON (`*_s`, docs/json.md).
mod ms_as_seconds {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        ms.map(|ms| ms / 1e3).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.map(|s| s * 1e3))
    }
}

/// The service loop's own timing, for the `tick` metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TickTiming {
    /// Wall time the previous tick took, ms (`None` on the first tick).
    pub duration_ms: Option<f64>,
    /// The control period in wall time, ms.
    pub period_ms: f64,
    /// The longest a tick waits for its CDUs (polls and writes together), ms.
    pub cdu_budget_ms: f64,
    /// Ticks that took longer than their period, since start.
    pub overruns: u64,
}

/// A GPU's latest values, for the status line, `/status` and MQTT state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuStatus {
    pub key: GpuKey,
    pub uuid: String,
    pub name: String,
    // The JSON keys are the InfluxDB field names, unit suffix included (docs/json.md).
    #[serde(rename = "core_temp_c")]
    pub core: Option<f64>,
    #[serde(rename = "hbm_temp_c")]
    pub hbm: Option<f64>,
    #[serde(rename = "power_w")]
    pub power: Option<f64>,
    #[serde(rename = "power_limit_w")]
    pub limit: Option<f64>,
    /// Kelvin left to the slowdown threshold.
    #[serde(rename = "margin_to_slowdown_k")]
    pub margin_to_slowdown: Option<f64>,
}

/// The daemon's whole state after a tick: what `/status`, MQTT state and the status line show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub site: String,
    pub host: String,
    /// Wall-clock time of the tick, nanoseconds since the Unix epoch.
    #[serde(rename = "time_unix_ns")]
    pub time_ns: i64,
    /// Ticks since start.
    pub tick: u64,
    pub dry_run: bool,
    pub mode: Mode,
    pub state: ControlState,
    #[serde(rename = "setpoint_c")]
    pub setpoint: f64,
    #[serde(rename = "controlled_c")]
    pub controlled: Option<f64>,
    pub ready: bool,
    pub cdus: Vec<CduStatus>,
    pub gpus: Vec<GpuStatus>,
    pub alarms: Vec<Alarm>,
    /// This tick's decisions: applied, or in dry-run mode only published as "would set".
    #[serde(default)]
    pub decisions: Vec<Actuation>,
    /// The latest metric points of this tick, named as in docs/metrics.md: the source of
    /// `/metrics`, so that Prometheus and InfluxDB see the same names.
    pub points: Vec<Point>,
    /// The hosts whose GPUs arrive over the network (a `[[cdu]]`'s `hosts`); absent on a
    /// controller of local GPUs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<RackStatus>,
}

impl Snapshot {
    /// What is served before the first tick: booting, nothing read yet, the configured set
    /// point (NaN, JSON null, where there is none, as on a host agent).
    pub fn before_first_tick(
        site: &str,
        host: &str,
        dry_run: bool,
        setpoint: f64,
        time_ns: i64,
    ) -> Snapshot {
        Snapshot {
            site: site.to_string(),
            host: host.to_string(),
            time_ns,
            tick: 0,
            dry_run,
            mode: Mode::Auto,
            state: ControlState::Boot,
            setpoint,
            controlled: None,
            ready: false,
            cdus: Vec::new(),
            gpus: Vec::new(),
            alarms: Vec::new(),
            decisions: Vec::new(),
            points: Vec::new(),
            rack: None,
        }
    }
}

/// The controller's view of its rack: every remote host and the wire's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RackStatus {
    /// Whether the rack's MQTT session is connected.
    pub connected: bool,
    pub hosts: Vec<RemoteHostStatus>,
    /// Messages from hosts no CDU lists: ignored, and counted here.
    pub unknown_host_messages: u64,
    /// Messages refused (malformed, another major version, implausible, wrong host).
    pub refused_messages: u64,
    /// Cap leases sent, retries among them, acknowledgements taken.
    pub caps_sent: u64,
    pub caps_retries: u64,
    pub caps_acks: u64,
    /// How fresh the remote readings were when the controller decided on them, and how long
    /// the agents took to acknowledge a cap, since start.
    #[serde(default)]
    pub latency: RackLatency,
}

/// The rack's latency histograms, since start (docs/metrics.md, "Rack latency").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RackLatency {
    /// Per decision, each remote reading used for the first time: its arrival at the
    /// controller → the tick that decided on it, on the controller's clock.
    pub reading_age: LatencyHistogram,
    /// The same readings: the agent's `sent_unix_ms` → the tick that decided on them, on the
    /// controller's wall clock. Meaningful only as far as the hosts' clocks agree (one
    /// machine in the scale benchmark; NTP on a site).
    pub reading_delay: LatencyHistogram,
    /// A cap lease's first send (the tick that decided it) → the arrival of the agent's
    /// acknowledgement, on the controller's clock, retries included.
    pub cap_ack: LatencyHistogram,
}

/// A cumulative latency histogram with fixed bounds ([`LatencyHistogram::BOUNDS_MS`]), the
/// shape of a Prometheus histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Upper bounds of the buckets, ms; `counts[i]` holds observations ≤ `bounds_ms[i]`
    /// (cumulative), and `count` all of them (the `+Inf` bucket).
    pub bounds_ms: Vec<f64>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_ms: f64,
}

impl LatencyHistogram {
    /// Fine around the rack's targets (50 ms from reading to decision, 100 ms from cap to
    /// acknowledgement), coarse beyond a period.
    pub const BOUNDS_MS: [f64; 22] = [
        1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0,
        250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
    ];

    /// Adds one observation, in ms (negative ones, from clocks that disagree, count as 0).
    pub fn observe_ms(&mut self, ms: f64) {
        let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
        for (bound, count) in self.bounds_ms.iter().zip(self.counts.iter_mut()) {
            if ms <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum_ms += ms;
    }

    /// The upper bound of the bucket that holds quantile `q` (0..=1): "at most this many ms";
    /// `None` without observations, `f64::INFINITY` past the last bound.
    pub fn quantile_bound_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        Some(
            self.bounds_ms
                .iter()
                .zip(&self.counts)
                .find(|(_, c)| **c >= rank)
                .map_or(f64::INFINITY, |(b, _)| *b),
        )
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            bounds_ms: Self::BOUNDS_MS.to_vec(),
            counts: vec![0; Self::BOUNDS_MS.len()],
            count: 0,
            sum_ms: 0.0,
        }
    }
}

/// One remote host, as the controller hears it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteHostStatus {
    pub host: String,
    /// Trusted and fresh: its GPUs are inputs of the controller.
    pub online: bool,
    /// Why its GPUs are lost inputs, when they are.
    pub lost: Option<String>,
    /// The sequence number of the last readings accepted.
    pub last_seq: Option<u64>,
    /// Seconds since those readings arrived.
    pub age_s: Option<f64>,
    /// Sequence gaps, messages missed in them, and replays, since start.
    pub gaps: u64,
    pub missed: u64,
    pub replays: u64,
    /// GPUs the agent published facts for.
    pub gpus: usize,
    /// A cap lease waits for its acknowledgement.
    pub caps_pending: bool,
    /// The caps the agent acknowledged last, by GPU index, in watts.
    pub caps_acked_w: Vec<(u32, f64)>,
}
