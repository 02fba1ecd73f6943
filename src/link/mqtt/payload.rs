//! The topic tree and the JSON on it. Everything here is pure: no IO, no clock.

use crate::model::{
    Alarm, AlarmEvent, AlarmTransition, CduStatus, Command, CommandOutcome, ControlState,
    FieldValue, GpuStatus, Mode, Point, RejectKind, Severity, Snapshot,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// The topics of one daemon: `<prefix>/<site>/<host>/...`.
#[derive(Debug, Clone)]
pub struct Topics {
    pub base: String,
    pub availability: String,
    pub telemetry: String,
    pub state: String,
    pub events: String,
    pub command: String,
    pub reply: String,
}

impl Topics {
    pub fn new(prefix: &str, site: &str, host: &str) -> Topics {
        let base = format!("{prefix}/{site}/{host}");
        Topics {
            availability: format!("{base}/availability"),
            telemetry: format!("{base}/telemetry"),
            state: format!("{base}/state"),
            events: format!("{base}/alarms/events"),
            command: format!("{base}/command"),
            reply: format!("{base}/command/reply"),
            base,
        }
    }
}

/// Availability payloads (retained; the last will carries `offline`).
pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// One metric point as JSON: tags and fields as objects, names as in InfluxDB.
#[derive(Serialize)]
struct MetricOut<'a> {
    measurement: &'a str,
    tags: BTreeMap<&'a str, &'a str>,
    fields: BTreeMap<&'a str, &'a FieldValue>,
    time_unix_ns: i64,
}

fn metric(p: &Point) -> MetricOut<'_> {
    MetricOut {
        measurement: &p.measurement,
        tags: p
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        fields: p.fields.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        time_unix_ns: p.time_ns,
    }
}

/// The hottest valid GPU core temperature, the headline number of a host.
pub fn hottest_gpu(snap: &Snapshot) -> Option<f64> {
    snap.gpus
        .iter()
        .filter_map(|g| g.core)
        .filter(|c| c.is_finite())
        .reduce(f64::max)
}

/// Keys as in `/status`: a number's unit is the suffix of its key (docs/json.md).
#[derive(Serialize)]
struct Telemetry<'a> {
    time_unix_ns: i64,
    tick: u64,
    mode: Mode,
    state: ControlState,
    setpoint_c: f64,
    controlled_c: Option<f64>,
    ready: bool,
    dry_run: bool,
    hottest_gpu_core_temp_c: Option<f64>,
    /// The tick's decisions; in dry-run mode nothing was written ("would set").
    decisions: Vec<String>,
    /// Keyed by CDU name, so that a template can say
    /// `value_json.cdus['cdu-a'].supply_temp_c`.
    cdus: BTreeMap<&'a str, &'a CduStatus>,
    /// Keyed by `host/gpuN`.
    gpus: BTreeMap<String, &'a GpuStatus>,
    /// The tick's metric points, named as in InfluxDB.
    metrics: Vec<MetricOut<'a>>,
}

/// The telemetry message: the snapshot without site/host (they are in the topic) and without
/// the alarm list (it is in the retained state).
pub fn telemetry_json(snap: &Snapshot) -> Vec<u8> {
    let t = Telemetry {
        time_unix_ns: snap.time_ns,
        tick: snap.tick,
        mode: snap.mode,
        state: snap.state,
        setpoint_c: snap.setpoint,
        controlled_c: snap.controlled,
        ready: snap.ready,
        dry_run: snap.dry_run,
        hottest_gpu_core_temp_c: hottest_gpu(snap),
        decisions: snap
            .decisions
            .iter()
            .map(|a| {
                if snap.dry_run {
                    format!("would {a}")
                } else {
                    a.to_string()
                }
            })
            .collect(),
        cdus: snap.cdus.iter().map(|c| (c.name.as_str(), c)).collect(),
        gpus: snap.gpus.iter().map(|g| (g.key.to_string(), g)).collect(),
        metrics: snap.points.iter().map(metric).collect(),
    };
    to_vec(&t)
}

/// An alarm for the outside world: `raised_at` is monotonic daemon time, so it goes out as
/// seconds since the daemon started.
#[derive(Serialize, PartialEq)]
struct AlarmOut<'a> {
    id: &'a str,
    /// The stable snake_case kind (the id before its `:`) and causes, beside the message.
    kind: &'a str,
    severity: Severity,
    message: &'a str,
    causes: &'a [String],
    raised_at_uptime_s: f64,
    latched: bool,
    acknowledged: bool,
    cause_present: bool,
}

fn alarm(a: &Alarm) -> AlarmOut<'_> {
    AlarmOut {
        id: &a.id,
        kind: a.kind(),
        severity: a.severity,
        message: &a.message,
        causes: &a.causes,
        raised_at_uptime_s: a.raised_at.as_secs_f64(),
        latched: a.latched,
        acknowledged: a.acknowledged,
        cause_present: a.cause_present,
    }
}

/// The part of the state that changes in steps; a change publishes the state at once.
#[derive(Serialize, PartialEq)]
struct StateKey<'a> {
    mode: Mode,
    state: ControlState,
    setpoint_c: f64,
    ready: bool,
    dry_run: bool,
    alarms: Vec<AlarmOut<'a>>,
}

#[derive(Serialize)]
struct StateOut<'a> {
    #[serde(flatten)]
    key: StateKey<'a>,
    /// Moves every tick; published at the telemetry rate, not on every change.
    controlled_c: Option<f64>,
    time_unix_ns: i64,
}

/// The retained state message, and the stepwise part of it (for change detection).
pub fn state_json(snap: &Snapshot) -> (Vec<u8>, Vec<u8>) {
    let key = StateKey {
        mode: snap.mode,
        state: snap.state,
        setpoint_c: snap.setpoint,
        ready: snap.ready,
        dry_run: snap.dry_run,
        alarms: snap.alarms.iter().map(alarm).collect(),
    };
    let key_bytes = to_vec(&key);
    let full = StateOut {
        key,
        controlled_c: snap.controlled,
        time_unix_ns: snap.time_ns,
    };
    (to_vec(&full), key_bytes)
}

#[derive(Serialize)]
struct EventOut<'a> {
    transition: AlarmTransition,
    alarm: AlarmOut<'a>,
    at_uptime_s: f64,
    time_unix_ns: i64,
}

/// An alarm event; `time_unix_ns` is the wall-clock time it was handed to the sink.
pub fn event_json(ev: &AlarmEvent, time_unix_ns: i64) -> Vec<u8> {
    to_vec(&EventOut {
        transition: ev.transition,
        alarm: alarm(&ev.alarm),
        at_uptime_s: ev.at.as_secs_f64(),
        time_unix_ns,
    })
}

#[derive(Serialize)]
struct ReplyOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(flatten)]
    outcome: &'a CommandOutcome,
}

/// A command reply: `{"id":"abc","result":"accepted"}` or
/// `{"id":"abc","result":"rejected","kind":"out_of_range","reason":"..."}`; no `id` when the
/// command had none.
pub fn reply_json(id: Option<&str>, outcome: &CommandOutcome) -> Vec<u8> {
    to_vec(&ReplyOut { id, outcome })
}

/// A command that did not make it past the MQTT layer: the reply to send, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadCommand {
    /// The correlation id, when one could be read.
    pub id: Option<String>,
    pub kind: RejectKind,
    pub reason: String,
}

impl BadCommand {
    /// The reply's outcome.
    pub fn outcome(self) -> CommandOutcome {
        CommandOutcome::Rejected {
            kind: self.kind,
            reason: self.reason,
        }
    }
}

/// The command names [`Command`] knows, in its serde spelling.
const COMMANDS: [&str; 4] = ["set_setpoint", "set_mode", "set_pump_speed", "ack_alarm"];

/// Parses a command message: a JSON object with an optional `id` (string or number) and the
/// fields of [`Command`]. Structural checks only; limits and state are the core's business.
pub fn parse_command(payload: &[u8]) -> Result<(Option<String>, Command), BadCommand> {
    use RejectKind::{BadField, BadJson, UnknownCommand};
    let bad =
        |id: Option<String>, kind: RejectKind, reason: String| BadCommand { id, kind, reason };
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| bad(None, BadJson, format!("not valid JSON: {e}")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(bad(None, BadJson, "expected a JSON object".into()));
    };
    let id = match map.remove("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(bad(
                None,
                BadJson,
                format!("`id` must be a string or a number, got {other}"),
            ))
        }
    };
    let known = COMMANDS.join(", ");
    match map.get("command") {
        None => {
            return Err(bad(
                id,
                UnknownCommand,
                format!("missing field `command` (one of {known})"),
            ))
        }
        Some(serde_json::Value::String(c)) if COMMANDS.contains(&c.as_str()) => {}
        // Worded like serde's own message, which the replies carried before kinds existed.
        Some(other) => {
            let name = other
                .as_str()
                .map_or_else(|| other.to_string(), |s| format!("`{s}`"));
            return Err(bad(
                id,
                UnknownCommand,
                format!("unknown variant {name} for `command`, expected one of {known}"),
            ));
        }
    }
    // `Command::AckAlarm` names the alarm `id`, which on MQTT is the correlation id; so
    // here the alarm goes in `alarm`, and the command is built by hand.
    if map.get("command").and_then(|c| c.as_str()) == Some("ack_alarm") {
        if let Some(extra) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "command" | "alarm"))
        {
            return Err(bad(
                id,
                BadField,
                format!("unknown field `{extra}`, expected `alarm` (the alarm id)"),
            ));
        }
        return match map.remove("alarm") {
            Some(serde_json::Value::String(alarm)) => Ok((id, Command::AckAlarm { id: alarm })),
            Some(other) => Err(bad(
                id,
                BadField,
                format!("invalid type: `alarm` must be a string (the alarm id), got {other}"),
            )),
            None => Err(bad(
                id,
                BadField,
                "missing field `alarm` (the alarm id)".into(),
            )),
        };
    }
    // The command is known, so what serde refuses is one of its fields.
    match serde_json::from_value::<Command>(serde_json::Value::Object(map)) {
        Ok(cmd) => Ok((id, cmd)),
        Err(e) => Err(bad(id, BadField, e.to_string())),
    }
}

fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these types cannot fail: every map key is a string and no type has a
    // fallible Serialize impl; a non-finite float becomes `null`.
    serde_json::to_vec(v).expect("MQTT payload types always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GpuKey, Mode};
    use std::time::Duration;

    fn snap() -> Snapshot {
        Snapshot {
            site: "s".into(),
            host: "h".into(),
            time_ns: 1_700_000_000_000_000_000,
            tick: 3,
            dry_run: true,
            mode: Mode::Auto,
            state: ControlState::Running,
            setpoint: 65.0,
            controlled: Some(61.5),
            ready: true,
            cdus: vec![CduStatus {
                name: "cdu-a".into(),
                supply: Some(30.0),
                return_: Some(40.0),
                flow: Some(120.0),
                differential_pressure: None,
                pump_command: Some(55.0),
                pump_feedback: Some(54.0),
                leak: Some(false),
                remote_enable: Some(true),
                faults: vec![],
                link: Default::default(),
            }],
            gpus: vec![
                GpuStatus {
                    key: GpuKey {
                        host: "h".into(),
                        index: 0,
                    },
                    uuid: "GPU-0".into(),
                    name: "NVIDIA H200".into(),
                    core: Some(61.5),
                    hbm: Some(70.0),
                    power: Some(500.0),
                    limit: Some(700.0),
                    margin_to_slowdown: Some(27.5),
                },
                GpuStatus {
                    key: GpuKey {
                        host: "h".into(),
                        index: 1,
                    },
                    uuid: "GPU-1".into(),
                    name: "NVIDIA H200".into(),
                    core: Some(58.0),
                    hbm: None,
                    power: None,
                    limit: None,
                    margin_to_slowdown: None,
                },
            ],
            alarms: vec![],
            decisions: Vec::new(),
            points: vec![Point::new("gpu", 5)
                .tag("index", "0")
                .tag("host", "h")
                .field("core_temperature", FieldValue::Float(61.5))
                .field("pstate", FieldValue::UInt(0))],
            rack: None,
        }
    }

    #[test]
    fn topic_tree() {
        let t = Topics::new("coolantd", "site1", "node01");
        assert_eq!(t.availability, "coolantd/site1/node01/availability");
        assert_eq!(t.telemetry, "coolantd/site1/node01/telemetry");
        assert_eq!(t.state, "coolantd/site1/node01/state");
        assert_eq!(t.events, "coolantd/site1/node01/alarms/events");
        assert_eq!(t.command, "coolantd/site1/node01/command");
        assert_eq!(t.reply, "coolantd/site1/node01/command/reply");
    }

    #[test]
    fn telemetry_uses_metric_names_and_keys_cdus_by_name() {
        let v: serde_json::Value =
            serde_json::from_slice(&telemetry_json(&snap())).expect("telemetry is JSON");
        assert_eq!(v["hottest_gpu_core_temp_c"], 61.5);
        assert_eq!(v["setpoint_c"], 65.0);
        assert_eq!(v["controlled_c"], 61.5);
        assert_eq!(v["time_unix_ns"], 1_700_000_000_000_000_000_i64);
        assert_eq!(v["cdus"]["cdu-a"]["supply_temp_c"], 30.0);
        assert_eq!(v["cdus"]["cdu-a"]["return_temp_c"], 40.0);
        assert_eq!(v["cdus"]["cdu-a"]["flow_lpm"], 120.0);
        assert_eq!(v["cdus"]["cdu-a"]["pump_feedback_pct"], 54.0);
        assert_eq!(v["gpus"]["h/gpu0"]["power_limit_w"], 700.0);
        assert_eq!(v["gpus"]["h/gpu0"]["margin_to_slowdown_k"], 27.5);
        assert_eq!(v["gpus"]["h/gpu1"]["core_temp_c"], 58.0);
        assert_eq!(v["metrics"][0]["time_unix_ns"], 5);
        assert_eq!(v["metrics"][0]["measurement"], "gpu");
        assert_eq!(v["metrics"][0]["tags"]["index"], "0");
        assert_eq!(v["metrics"][0]["fields"]["core_temperature"], 61.5);
        assert_eq!(v["metrics"][0]["fields"]["pstate"], 0);
        assert_eq!(v["state"], "running");
        assert!(v.get("alarms").is_none());
    }

    /// The link's times are milliseconds in the model and seconds in JSON, both ways.
    #[test]
    fn link_times_go_out_in_seconds() {
        let mut s = snap();
        s.cdus[0].link.sample_age_ms = Some(250.0);
        s.cdus[0].link.poll_ms = Some(4.0);
        let v: serde_json::Value = serde_json::from_slice(&telemetry_json(&s)).expect("JSON");
        let link = &v["cdus"]["cdu-a"]["link"];
        assert_eq!(link["sample_age_s"], 0.25, "{link}");
        assert_eq!(link["poll_duration_s"], 0.004, "{link}");
        assert!(link.get("sample_age_ms").is_none(), "{link}");
        // `coolantd status` decodes `/status` back into the model.
        let back: CduStatus = serde_json::from_value(v["cdus"]["cdu-a"].clone()).expect("decodes");
        assert_eq!(back.link.sample_age_ms, Some(250.0));
        assert_eq!(back.link.poll_ms, Some(4.0));
    }

    #[test]
    fn state_key_ignores_the_controlled_value_but_not_alarms() {
        let a = snap();
        let mut b = snap();
        b.controlled = Some(62.0);
        b.time_ns += 1;
        assert_eq!(state_json(&a).1, state_json(&b).1);
        assert_ne!(state_json(&a).0, state_json(&b).0);
        b.alarms.push(Alarm {
            id: "leak:cdu-a".into(),
            severity: Severity::Critical,
            message: "leak".into(),
            raised_at: Duration::from_secs(2),
            latched: true,
            acknowledged: false,
            cause_present: true,
            causes: Vec::new(),
        });
        assert_ne!(state_json(&a).1, state_json(&b).1);
        let v: serde_json::Value = serde_json::from_slice(&state_json(&b).0).expect("JSON");
        assert_eq!(v["alarms"][0]["id"], "leak:cdu-a");
        assert_eq!(v["alarms"][0]["severity"], "critical");
        assert_eq!(v["dry_run"], true);
        assert_eq!(v["controlled_c"], 62.0);
        assert_eq!(v["setpoint_c"], 65.0);
        assert!(v.get("time_unix_ns").is_some(), "{v}");
    }

    #[test]
    fn replies_carry_id_and_outcome() {
        let r = reply_json(Some("abc"), &CommandOutcome::Accepted);
        assert_eq!(r, br#"{"id":"abc","result":"accepted"}"#);
        let r = reply_json(
            None,
            &CommandOutcome::Rejected {
                kind: RejectKind::OutOfRange,
                reason: "no".into(),
            },
        );
        assert_eq!(
            r,
            br#"{"result":"rejected","kind":"out_of_range","reason":"no"}"#
        );
    }

    #[test]
    fn commands_parse_with_id() {
        let (id, c) =
            parse_command(br#"{"id":"abc","command":"set_setpoint","celsius":65}"#).expect("ok");
        assert_eq!(id.as_deref(), Some("abc"));
        assert_eq!(c, Command::SetSetpoint { celsius: 65.0 });
        let (id, c) =
            parse_command(br#"{"id":7,"command":"set_mode","mode":"manual"}"#).expect("ok");
        assert_eq!(id.as_deref(), Some("7"));
        assert_eq!(c, Command::SetMode { mode: Mode::Manual });
        let (id, _) = parse_command(br#"{"command":"ack_alarm","id2":"x"}"#)
            .map(|(i, c)| (i, Some(c)))
            .unwrap_or_else(|e| (e.id, None));
        assert_eq!(id, None);
    }

    #[test]
    fn ack_alarm_names_the_alarm_in_alarm() {
        let (id, c) = parse_command(br#"{"id":"c1","command":"ack_alarm","alarm":"leak:cdu-a"}"#)
            .expect("ok");
        assert_eq!(id.as_deref(), Some("c1"));
        assert_eq!(
            c,
            Command::AckAlarm {
                id: "leak:cdu-a".into()
            }
        );
        let e = parse_command(br#"{"id":"c2","command":"ack_alarm"}"#).expect_err("missing");
        assert!(e.reason.contains("missing field `alarm`"), "{}", e.reason);
        let e = parse_command(br#"{"command":"ack_alarm","alarm":3}"#).expect_err("type");
        assert!(e.reason.contains("invalid type"), "{}", e.reason);
        let e = parse_command(br#"{"command":"ack_alarm","alarm":"a","x":1}"#).expect_err("extra");
        assert!(e.reason.contains("unknown field `x`"), "{}", e.reason);
    }

    /// Each structural rejection carries its kind; a tool must not parse `reason`.
    #[test]
    fn bad_commands_carry_a_kind() {
        use RejectKind::*;
        for (payload, kind) in [
            (&b"{not json"[..], BadJson),
            (b"[1,2]", BadJson),
            (br#"{"id":[1],"command":"set_mode","mode":"auto"}"#, BadJson),
            (br#"{"id":"a","celsius":3}"#, UnknownCommand),
            (br#"{"id":"a","command":"explode"}"#, UnknownCommand),
            (br#"{"id":"a","command":7}"#, UnknownCommand),
            (
                br#"{"id":"a","command":"set_setpoint","celsius":"hot"}"#,
                BadField,
            ),
            (br#"{"id":"a","command":"set_setpoint"}"#, BadField),
            (
                br#"{"id":"a","command":"set_mode","mode":"auto","x":1}"#,
                BadField,
            ),
            (
                br#"{"id":"a","command":"set_mode","mode":"turbo"}"#,
                BadField,
            ),
            (br#"{"id":"a","command":"ack_alarm"}"#, BadField),
        ] {
            let e = parse_command(payload).expect_err("rejected");
            assert_eq!(
                e.kind,
                kind,
                "{}: {}",
                String::from_utf8_lossy(payload),
                e.reason
            );
            let v: serde_json::Value =
                serde_json::from_slice(&reply_json(e.id.as_deref(), &e.clone().outcome()))
                    .expect("JSON");
            let word = serde_json::to_value(kind).expect("kind");
            assert_eq!(v["kind"], word, "{v}");
            assert_eq!(v["reason"], e.reason.as_str(), "{v}");
        }
    }

    #[test]
    fn bad_commands_say_why() {
        let e = parse_command(b"{not json").expect_err("malformed");
        assert!(e.reason.contains("not valid JSON"), "{}", e.reason);
        let e = parse_command(b"[1,2]").expect_err("array");
        assert!(e.reason.contains("JSON object"), "{}", e.reason);
        let e = parse_command(br#"{"id":"x","command":"explode"}"#).expect_err("unknown");
        assert_eq!(e.id.as_deref(), Some("x"));
        assert!(
            e.reason.contains("unknown variant `explode`"),
            "{}",
            e.reason
        );
        let e = parse_command(br#"{"id":"y","command":"set_setpoint","celsius":"hot"}"#)
            .expect_err("type");
        assert!(e.reason.contains("invalid type"), "{}", e.reason);
        let e = parse_command(br#"{"id":"z","command":"set_pump_speed"}"#).expect_err("missing");
        assert!(e.reason.contains("missing field `percent`"), "{}", e.reason);
        let e = parse_command(br#"{"id":"w","celsius":3}"#).expect_err("no command");
        assert!(e.reason.contains("missing field `command`"), "{}", e.reason);
        let e = parse_command(br#"{"id":{"a":1},"command":"set_mode","mode":"auto"}"#)
            .expect_err("bad id");
        assert!(e.reason.contains("`id`"), "{}", e.reason);
    }
}
