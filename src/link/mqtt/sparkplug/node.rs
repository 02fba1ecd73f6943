//! The Sparkplug B edge node as a state machine: snapshots, connections and received
//! messages go in, the messages to publish and the commands for the core come out. No IO,
//! no clock (`now` is an argument), so every rule is tested directly.
//!
//! What it keeps (Sparkplug 3.0):
//! - `bdSeq` is chosen per MQTT session (the poller sets it in the will before connecting);
//!   NBIRTH carries the same value as the NDEATH registered as that session's will.
//! - `seq` is 0 in NBIRTH and counts every later DBIRTH, NDATA, DDATA and DDEATH, wrapping
//!   from 255 to 0.
//! - A birth lists every metric the node or device will ever publish, with its name, alias,
//!   datatype and unit (property `engUnit`), null when there is no value yet; data messages
//!   carry only the aliases of metrics that changed.
//!
//! Why one file of over 700 lines: it is one state machine. About 520 lines are `EdgeNode`'s
//! handlers, which share its fields (seq, bdSeq, the alias tables, the primary host's state)
//! and its rules above; about 200 are the metric-table helpers only they use; the last 285
//! are unit tests that drive it through its public handlers. Moving the helpers out would
//! spread those rules over two files without making either readable alone.

use super::config::device_id;
use super::proto::{self, datatype, Payload, PropertyScalar, PropertySet, PropertyValue};
use crate::model::{Command, CommandOutcome, FieldValue, Mode, Point, Snapshot};
use crate::sink::schema;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::info;

/// The topic namespace of Sparkplug B 3.0.
pub const NAMESPACE: &str = "spBv1.0";

/// Node metrics that are Sparkplug's own or carry commands, not telemetry.
pub const BD_SEQ: &str = "bdSeq";
pub const REBIRTH: &str = "Node Control/Rebirth";
pub const PUMP_SPEED: &str = "Node Control/Pump Speed";
pub const ACK_ALARM: &str = "Node Control/Ack Alarm";
pub const LAST_COMMAND: &str = "Node Control/Last Command";
pub const ACTIVE_ALARMS: &str = "Node Info/Active Alarms";
/// Telemetry metrics that are also written by NCMD: the set point and the mode.
pub const SETPOINT: &str = "control/setpoint_c";
pub const MODE: &str = "control/mode";

/// The metrics an NCMD may write, for messages that list them.
const WRITABLE: [&str; 5] = [SETPOINT, MODE, PUMP_SPEED, ACK_ALARM, REBIRTH];

/// A message for the broker. Sparkplug sends births and data at QoS 0 without retain.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What the node asks of its IO shell.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Publish(Publish),
    /// A command for the control core; `label` names it in the reply
    /// ([`EdgeNode::on_outcome`]), e.g. `control/setpoint_c = 50`.
    Command {
        label: String,
        command: Command,
    },
}

/// The Sparkplug topics of one edge node.
#[derive(Debug, Clone)]
pub struct Topics {
    pub group: String,
    pub node: String,
    pub ncmd: String,
    /// `spBv1.0/<group>/DCMD/<node>/+`.
    pub dcmd_filter: String,
    /// `spBv1.0/STATE/<primary host>`, when a primary host is configured.
    pub state: Option<String>,
}

impl Topics {
    pub fn new(group: &str, node: &str, primary: Option<&str>) -> Topics {
        Topics {
            group: group.into(),
            node: node.into(),
            ncmd: format!("{NAMESPACE}/{group}/NCMD/{node}"),
            dcmd_filter: format!("{NAMESPACE}/{group}/DCMD/{node}/+"),
            state: primary.map(|h| format!("{NAMESPACE}/STATE/{h}")),
        }
    }

    pub fn node_topic(&self, kind: &str) -> String {
        format!("{NAMESPACE}/{}/{kind}/{}", self.group, self.node)
    }

    pub fn device_topic(&self, kind: &str, device: &str) -> String {
        format!("{NAMESPACE}/{}/{kind}/{}/{device}", self.group, self.node)
    }
}

/// The NDEATH payload for a session: the bdSeq metric alone (Sparkplug 3.0 §7.1).
pub fn death_payload(bd_seq: u8, time_ms: u64) -> Vec<u8> {
    let p = Payload {
        timestamp: Some(time_ms),
        metrics: vec![proto::Metric {
            name: Some(BD_SEQ.into()),
            datatype: Some(datatype::INT64),
            value: Some(proto::Value::Long(u64::from(bd_seq))),
            ..Default::default()
        }],
        ..Default::default()
    };
    prost::Message::encode_to_vec(&p)
}

/// The bdSeq of successive MQTT sessions: 0 for the first, then one more per connection
/// attempt, wrapping from 255 to 0.
#[derive(Debug, Default)]
pub struct BdSeq(u8);

impl BdSeq {
    /// The value registered in the will of the coming connection attempt.
    pub fn current(&self) -> u8 {
        self.0
    }

    /// The previous session is over (or the attempt failed): the next attempt gets a new value.
    pub fn advance(&mut self) -> u8 {
        self.0 = self.0.wrapping_add(1);
        self.0
    }
}

/// One metric as announced in a birth.
#[derive(Debug, Clone)]
struct Def {
    name: String,
    alias: u64,
    datatype: u32,
    unit: Option<&'static str>,
}

/// A node's or a device's metrics: their definitions, current values and the values last
/// published.
#[derive(Debug, Clone, Default)]
struct Table {
    defs: Vec<Def>,
    now: BTreeMap<String, FieldValue>,
    sent: BTreeMap<String, FieldValue>,
}

fn kind_of(v: &FieldValue) -> u32 {
    match v {
        FieldValue::Float(_) => datatype::DOUBLE,
        FieldValue::Int(_) => datatype::INT64,
        FieldValue::UInt(_) => datatype::UINT64,
        FieldValue::Bool(_) => datatype::BOOLEAN,
        FieldValue::Str(_) => datatype::STRING,
    }
}

/// The metric value in its Sparkplug form; non-finite floats are sent as null.
fn value_of(v: &FieldValue) -> Option<proto::Value> {
    Some(match v {
        FieldValue::Float(f) if f.is_finite() => proto::Value::Double(*f),
        FieldValue::Float(_) => return None,
        // Sparkplug carries signed integers in the unsigned fields, two's complement.
        FieldValue::Int(i) => proto::Value::Long(*i as u64),
        FieldValue::UInt(u) => proto::Value::Long(*u),
        FieldValue::Bool(b) => proto::Value::Boolean(*b),
        FieldValue::Str(s) => proto::Value::String(s.clone()),
    })
}

/// Which kind of device a point belongs to, and the metric name of each field: the
/// measurement and the field as named in `sink/schema/`, `<measurement>/<field>`.
fn metric_name(measurement: &str, field: &str) -> String {
    format!("{measurement}/{field}")
}

/// The device a point describes, if any: GPUs by host and index, CDUs by name. Control
/// summary and sink health points belong to the node; per-loop and per-register points are
/// left to InfluxDB (they would multiply the metric count without helping a SCADA screen).
fn owner(p: &Point, host: &str) -> Option<Owner> {
    let tag = |k: &str| p.tags.iter().find(|(t, _)| t == k).map(|(_, v)| v.as_str());
    match p.measurement.as_str() {
        schema::GPU => {
            let index = tag("gpu")?;
            let gpu_host = tag("host").unwrap_or(host);
            let id = if gpu_host == host {
                format!("gpu{index}")
            } else {
                device_id(&format!("{gpu_host}-gpu{index}"))
            };
            Some(Owner::Device(id, Kind::Gpu))
        }
        schema::COOLANT => Some(Owner::Device(device_id(tag("cdu")?), Kind::Cdu)),
        schema::CONTROL if tag("loop").is_none() => Some(Owner::Node),
        schema::TELEMETRY => Some(Owner::Node),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gpu,
    Cdu,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Node,
    Device(String, Kind),
}

/// Every telemetry metric of a kind (`gpu`, `coolant`, node), from the schema's fully
/// populated sample points, in a stable order.
fn template(measurements: &[&str], node: bool) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for p in schema::sample_points() {
        if !measurements.contains(&p.measurement.as_str()) {
            continue;
        }
        if node && owner(&p, "h") != Some(Owner::Node) {
            continue;
        }
        for (field, v) in &p.fields {
            let name = metric_name(&p.measurement, field);
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, kind_of(v)));
            }
        }
    }
    out
}

/// Whether a metric's change publishes at once rather than at the telemetry rate: the node's
/// stepwise values (what commands change, the state, alarms).
fn is_step(name: &str) -> bool {
    name.starts_with("Node ")
        || matches!(
            name,
            "control/setpoint_c"
                | "control/mode"
                | "control/manual"
                | "control/state"
                | "control/state_code"
                | "control/ready"
                | "control/active_alarms"
        )
}

/// The Sparkplug edge node of one daemon.
pub struct EdgeNode {
    topics: Topics,
    telemetry_period: Duration,
    /// The session's bdSeq while connected.
    session: Option<u8>,
    /// True until a configured primary host says it is online.
    waiting_for_host: bool,
    /// The newest STATE timestamp seen; older (stale retained) STATE messages are ignored.
    host_state_ts: Option<u64>,
    born: bool,
    seq: u8,
    next_alias: u64,
    /// Aliases stay fixed for the life of the process, across rebirths.
    aliases: BTreeMap<(Option<String>, String), u64>,
    node: Table,
    devices: BTreeMap<String, Table>,
    /// Devices announced (DBIRTH) in the current birth.
    born_devices: Vec<String>,
    gpu_template: Vec<(String, u32)>,
    cdu_template: Vec<(String, u32)>,
    node_template: Vec<(String, u32)>,
    last_data: Option<Instant>,
    time_ms: u64,
    have_snapshot: bool,
}

impl EdgeNode {
    pub fn new(topics: Topics, telemetry_period: Duration) -> EdgeNode {
        let waiting_for_host = topics.state.is_some();
        let mut node_template = template(&[schema::CONTROL, schema::TELEMETRY], true);
        node_template.extend(
            [
                (BD_SEQ, datatype::INT64),
                (REBIRTH, datatype::BOOLEAN),
                (PUMP_SPEED, datatype::DOUBLE),
                (ACK_ALARM, datatype::STRING),
                (LAST_COMMAND, datatype::STRING),
                (ACTIVE_ALARMS, datatype::STRING),
            ]
            .map(|(n, t)| (n.to_string(), t)),
        );
        let mut n = EdgeNode {
            topics,
            telemetry_period,
            session: None,
            waiting_for_host,
            host_state_ts: None,
            born: false,
            seq: 0,
            next_alias: 1,
            aliases: BTreeMap::new(),
            node: Table::default(),
            devices: BTreeMap::new(),
            born_devices: Vec::new(),
            gpu_template: template(&[schema::GPU], false),
            cdu_template: template(&[schema::COOLANT], false),
            node_template,
            last_data: None,
            time_ms: 0,
            have_snapshot: false,
        };
        n.node.defs = n.defs(None);
        n.node.now.insert(REBIRTH.into(), FieldValue::Bool(false));
        n.node
            .now
            .insert(LAST_COMMAND.into(), FieldValue::Str(String::new()));
        n.node
            .now
            .insert(ACK_ALARM.into(), FieldValue::Str(String::new()));
        n
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// True once the node's birth certificate went out in this session.
    pub fn is_born(&self) -> bool {
        self.born
    }

    fn alias(&mut self, device: Option<&str>, name: &str) -> u64 {
        let key = (device.map(str::to_string), name.to_string());
        if let Some(a) = self.aliases.get(&key) {
            return *a;
        }
        let a = self.next_alias;
        self.next_alias += 1;
        self.aliases.insert(key, a);
        a
    }

    fn defs(&mut self, device: Option<(&str, Kind)>) -> Vec<Def> {
        let template = match device {
            None => self.node_template.clone(),
            Some((_, Kind::Gpu)) => self.gpu_template.clone(),
            Some((_, Kind::Cdu)) => self.cdu_template.clone(),
        };
        let device = device.map(|(d, _)| d);
        template
            .into_iter()
            .map(|(name, dt)| {
                let field = name.rsplit('/').next().unwrap_or(&name).to_string();
                Def {
                    alias: self.alias(device, &name),
                    unit: if name.starts_with("Node ") || name == BD_SEQ {
                        (name == PUMP_SPEED).then_some("%")
                    } else {
                        schema::field_unit(&field)
                    },
                    name,
                    datatype: dt,
                }
            })
            .collect()
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    /// The broker accepted a session whose will carries `bd_seq`. Subscriptions are the
    /// shell's business; the birth goes out now if nothing else is awaited.
    pub fn on_connected(&mut self, bd_seq: u8) -> Vec<Out> {
        self.session = Some(bd_seq);
        self.born = false;
        // Every session waits for the primary host's STATE again (the broker sends the
        // retained one on subscription): it may have gone while the session was down.
        self.waiting_for_host = self.topics.state.is_some();
        self.try_birth()
    }

    pub fn on_disconnected(&mut self) {
        self.session = None;
        self.born = false;
    }

    fn try_birth(&mut self) -> Vec<Out> {
        if self.session.is_none() || self.waiting_for_host || !self.have_snapshot {
            return Vec::new();
        }
        self.births()
    }

    /// NBIRTH (seq 0, with bdSeq) and one DBIRTH per device, with every metric.
    fn births(&mut self) -> Vec<Out> {
        let Some(bd_seq) = self.session else {
            return Vec::new();
        };
        self.seq = 0;
        self.node
            .now
            .insert(BD_SEQ.into(), FieldValue::Int(i64::from(bd_seq)));
        self.node
            .now
            .insert(REBIRTH.into(), FieldValue::Bool(false));
        let mut out = Vec::new();
        let seq = self.next_seq();
        let p = birth_payload(&mut self.node, self.time_ms, seq);
        out.push(Out::Publish(Publish {
            topic: self.topics.node_topic("NBIRTH"),
            payload: p,
        }));
        self.born_devices.clear();
        let names: Vec<String> = self.devices.keys().cloned().collect();
        for d in names {
            out.push(self.dbirth(&d));
        }
        self.born = true;
        self.last_data = None;
        out
    }

    fn dbirth(&mut self, device: &str) -> Out {
        let seq = self.next_seq();
        let time_ms = self.time_ms;
        let topic = self.topics.device_topic("DBIRTH", device);
        let table = self.devices.entry(device.to_string()).or_default();
        let payload = birth_payload(table, time_ms, seq);
        self.born_devices.push(device.to_string());
        Out::Publish(Publish { topic, payload })
    }

    /// A tick's snapshot: updates every metric; while born, publishes what changed (stepwise
    /// node values at once, the rest at most once per telemetry period), DBIRTH for a new
    /// device and DDEATH for one that is gone.
    pub fn on_snapshot(&mut self, snap: &Snapshot, now: Instant) -> Vec<Out> {
        self.time_ms = u64::try_from(snap.time_ns / 1_000_000).unwrap_or(0);
        let mut seen: BTreeMap<String, (Kind, BTreeMap<String, FieldValue>)> = BTreeMap::new();
        let mut node_now: BTreeMap<String, FieldValue> = BTreeMap::new();
        for p in &snap.points {
            let Some(owner) = owner(p, &snap.host) else {
                continue;
            };
            let target = match owner {
                Owner::Node => &mut node_now,
                Owner::Device(d, kind) => &mut seen.entry(d).or_insert((kind, BTreeMap::new())).1,
            };
            for (field, v) in &p.fields {
                target.insert(metric_name(&p.measurement, field), v.clone());
            }
        }
        // Keep the Sparkplug node metrics; replace the telemetry ones (a value missing this
        // tick becomes null).
        let keep: Vec<(String, FieldValue)> = self
            .node
            .now
            .iter()
            .filter(|(k, _)| k.starts_with("Node ") || *k == BD_SEQ)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        node_now.extend(keep);
        // The manual pump speed means nothing in automatic mode, however that was entered.
        if snap.mode == Mode::Auto {
            node_now.remove(PUMP_SPEED);
        }
        let ids: Vec<&str> = snap.alarms.iter().map(|a| a.id.as_str()).collect();
        node_now.insert(ACTIVE_ALARMS.into(), FieldValue::Str(ids.join(",")));
        self.node.now = node_now;
        for (d, (kind, values)) in &seen {
            if !self.devices.contains_key(d) {
                let defs = self.defs(Some((d, *kind)));
                self.devices.insert(
                    d.clone(),
                    Table {
                        defs,
                        ..Default::default()
                    },
                );
            }
            if let Some(t) = self.devices.get_mut(d) {
                let mut values = values.clone();
                // The slow GPU counters come every few ticks: hold their last values.
                for field in schema::GPU_SLOW_FIELDS {
                    let name = metric_name(schema::GPU, field);
                    if let (Some(v), std::collections::btree_map::Entry::Vacant(e)) =
                        (t.now.get(&name), values.entry(name.clone()))
                    {
                        e.insert(v.clone());
                    }
                }
                t.now = values;
            }
        }
        let gone: Vec<String> = self
            .devices
            .keys()
            .filter(|d| !seen.contains_key(*d))
            .cloned()
            .collect();
        let first = !self.have_snapshot;
        self.have_snapshot = true;
        if !self.born {
            for d in &gone {
                self.devices.remove(d);
            }
            return if first { self.try_birth() } else { Vec::new() };
        }
        let mut out = Vec::new();
        for d in gone {
            self.devices.remove(&d);
            self.born_devices.retain(|b| *b != d);
            let seq = self.next_seq();
            let p = Payload {
                timestamp: Some(self.time_ms),
                seq: Some(seq),
                ..Default::default()
            };
            out.push(Out::Publish(Publish {
                topic: self.topics.device_topic("DDEATH", &d),
                payload: prost::Message::encode_to_vec(&p),
            }));
        }
        let new: Vec<String> = self
            .devices
            .keys()
            .filter(|d| !self.born_devices.contains(d))
            .cloned()
            .collect();
        for d in new {
            out.push(self.dbirth(&d));
        }
        out.extend(self.data(now, false));
        out
    }

    /// NDATA and DDATA with the metrics that changed since they were last published.
    fn data(&mut self, now: Instant, force: bool) -> Vec<Out> {
        let due = force
            || self
                .last_data
                .is_none_or(|t| now.duration_since(t) >= self.telemetry_period);
        let step = changed(&self.node)
            .iter()
            .any(|d| is_step(&self.node.defs[*d].name));
        if !due && !step {
            return Vec::new();
        }
        if due {
            self.last_data = Some(now);
        }
        let mut out = Vec::new();
        if let Some(p) = self.data_payload(None) {
            out.push(Out::Publish(Publish {
                topic: self.topics.node_topic("NDATA"),
                payload: p,
            }));
        }
        if due {
            let names: Vec<String> = self.devices.keys().cloned().collect();
            for d in names {
                if let Some(p) = self.data_payload(Some(&d)) {
                    out.push(Out::Publish(Publish {
                        topic: self.topics.device_topic("DDATA", &d),
                        payload: p,
                    }));
                }
            }
        }
        out
    }

    fn data_payload(&mut self, device: Option<&str>) -> Option<Vec<u8>> {
        let table = match device {
            None => &self.node,
            Some(d) => self.devices.get(d)?,
        };
        let idx = changed(table);
        if idx.is_empty() {
            return None;
        }
        let time_ms = self.time_ms;
        let metrics: Vec<proto::Metric> = idx
            .iter()
            .map(|i| {
                let d = &table.defs[*i];
                let v = table.now.get(&d.name);
                let value = v.and_then(value_of);
                proto::Metric {
                    alias: Some(d.alias),
                    timestamp: Some(time_ms),
                    datatype: Some(d.datatype),
                    is_null: value.is_none().then_some(true),
                    value,
                    ..Default::default()
                }
            })
            .collect();
        let table = match device {
            None => &mut self.node,
            Some(d) => self.devices.get_mut(d)?,
        };
        table.sent = table.now.clone();
        let seq = self.next_seq();
        Some(prost::Message::encode_to_vec(&Payload {
            timestamp: Some(time_ms),
            metrics,
            seq: Some(seq),
            ..Default::default()
        }))
    }

    /// A message on a subscribed topic: the primary host's STATE, an NCMD or a DCMD.
    pub fn on_message(&mut self, topic: &str, payload: &[u8], now: Instant) -> Vec<Out> {
        if self.topics.state.as_deref() == Some(topic) {
            return self.on_host_state(payload);
        }
        if topic == self.topics.ncmd {
            return self.on_ncmd(payload, now);
        }
        let dcmd_prefix = format!(
            "{NAMESPACE}/{}/DCMD/{}/",
            self.topics.group, self.topics.node
        );
        if let Some(device) = topic.strip_prefix(&dcmd_prefix) {
            let reason = format!(
                "DCMD to device `{device}` refused: coolantd takes commands as NCMD metrics ({})",
                WRITABLE.join(", ")
            );
            return self.record_result(format!("rejected: {reason}"), now);
        }
        Vec::new()
    }

    fn on_host_state(&mut self, payload: &[u8]) -> Vec<Out> {
        #[derive(serde::Deserialize)]
        struct State {
            online: bool,
            timestamp: u64,
        }
        let Ok(s) = serde_json::from_slice::<State>(payload) else {
            crate::log_limited!(
                warn,
                "Sparkplug STATE message is not JSON with `online` and `timestamp`, ignored",
                bytes = payload.len()
            );
            return Vec::new();
        };
        if self.host_state_ts.is_some_and(|t| s.timestamp < t) {
            return Vec::new();
        }
        self.host_state_ts = Some(s.timestamp);
        if s.online {
            let was_waiting = self.waiting_for_host;
            self.waiting_for_host = false;
            if was_waiting || !self.born {
                info!(host = ?self.topics.state, "Sparkplug primary host online: birth");
                return self.try_birth();
            }
            Vec::new()
        } else {
            info!(host = ?self.topics.state, "Sparkplug primary host offline: holding data until it returns");
            self.waiting_for_host = true;
            self.born = false;
            Vec::new()
        }
    }

    fn on_ncmd(&mut self, payload: &[u8], now: Instant) -> Vec<Out> {
        let p: Payload = match prost::Message::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                return self.record_result(
                    format!("rejected: NCMD is not a Sparkplug B payload: {e}"),
                    now,
                )
            }
        };
        let mut out = Vec::new();
        for m in p.metrics {
            let name = match (&m.name, m.alias) {
                (Some(n), _) => n.clone(),
                (None, Some(a)) => match self.node.defs.iter().find(|d| d.alias == a) {
                    Some(d) => d.name.clone(),
                    None => {
                        out.extend(self.record_result(format!("rejected: unknown alias {a}"), now));
                        continue;
                    }
                },
                (None, None) => {
                    out.extend(self.record_result(
                        "rejected: an NCMD metric needs a name or an alias".into(),
                        now,
                    ));
                    continue;
                }
            };
            let value = json_value(&m);
            let label = format!("{name} = {value}");
            if name == REBIRTH {
                if value == serde_json::Value::Bool(true) {
                    info!("Sparkplug rebirth requested");
                    out.extend(self.try_birth());
                } else {
                    out.extend(self.record_result(
                        format!("rejected: {label}: {REBIRTH} takes the Boolean true"),
                        now,
                    ));
                }
                continue;
            }
            let json = match name.as_str() {
                SETPOINT => serde_json::json!({"command": "set_setpoint", "celsius": value}),
                MODE => serde_json::json!({"command": "set_mode", "mode": value}),
                PUMP_SPEED => serde_json::json!({"command": "set_pump_speed", "percent": value}),
                ACK_ALARM => serde_json::json!({"command": "ack_alarm", "alarm": value}),
                _ => {
                    out.extend(self.record_result(
                        format!(
                            "rejected: {label}: `{name}` is not writable; writable: {}",
                            WRITABLE.join(", ")
                        ),
                        now,
                    ));
                    continue;
                }
            };
            // The JSON command path's parser: the same structural checks and messages.
            match super::super::parse_command(json.to_string().as_bytes()) {
                Ok((_, command)) => out.push(Out::Command { label, command }),
                Err(bad) => out
                    .extend(self.record_result(format!("rejected: {label}: {}", bad.reason), now)),
            }
        }
        out
    }

    /// The core's answer to a command: shown in `Node Control/Last Command`, published at
    /// once together with what the command changed, with the next snapshot.
    pub fn on_outcome(&mut self, label: &str, command: &Command, outcome: &CommandOutcome) {
        let text = match outcome {
            CommandOutcome::Accepted => format!("accepted: {label}"),
            CommandOutcome::Rejected { reason, .. } => format!("rejected: {label}: {reason}"),
        };
        if let (CommandOutcome::Accepted, Command::SetPumpSpeed { percent }) = (outcome, command) {
            self.node
                .now
                .insert(PUMP_SPEED.into(), FieldValue::Float(*percent));
        }
        self.set_result(text);
    }

    fn set_result(&mut self, text: String) {
        crate::log_limited!(info, "Sparkplug command", result = %text);
        self.node
            .now
            .insert(LAST_COMMAND.into(), FieldValue::Str(text));
    }

    /// A command refused before it reached the core: reported now.
    fn record_result(&mut self, text: String, now: Instant) -> Vec<Out> {
        self.set_result(text);
        if self.born {
            self.data(now, false)
        } else {
            Vec::new()
        }
    }
}

/// Indexes of the metrics whose current value differs from the one last published.
fn changed(t: &Table) -> Vec<usize> {
    t.defs
        .iter()
        .enumerate()
        .filter(|(_, d)| t.now.get(&d.name) != t.sent.get(&d.name))
        .map(|(i, _)| i)
        .collect()
}

fn birth_payload(t: &mut Table, time_ms: u64, seq: u64) -> Vec<u8> {
    let metrics = t
        .defs
        .iter()
        .map(|d| {
            let value = t.now.get(&d.name).and_then(value_of);
            proto::Metric {
                name: Some(d.name.clone()),
                alias: Some(d.alias),
                timestamp: Some(time_ms),
                datatype: Some(d.datatype),
                is_null: value.is_none().then_some(true),
                properties: d.unit.map(|u| PropertySet {
                    keys: vec!["engUnit".into()],
                    values: vec![PropertyValue {
                        r#type: Some(datatype::STRING),
                        is_null: None,
                        value: Some(PropertyScalar::String(u.into())),
                    }],
                }),
                value,
                ..Default::default()
            }
        })
        .collect();
    t.sent = t.now.clone();
    prost::Message::encode_to_vec(&Payload {
        timestamp: Some(time_ms),
        metrics,
        seq: Some(seq),
        ..Default::default()
    })
}

/// A command metric's value as JSON, for the JSON command parser: numbers, booleans and
/// strings as themselves, anything else (null, bytes) as null.
fn json_value(m: &proto::Metric) -> serde_json::Value {
    use serde_json::Value as J;
    if m.is_null == Some(true) {
        return J::Null;
    }
    let signed = matches!(
        m.datatype,
        Some(1..=4) // Int8..Int64 travel as two's complement in the unsigned fields.
    );
    match &m.value {
        Some(proto::Value::Double(d)) => serde_json::json!(d),
        Some(proto::Value::Float(f)) => serde_json::json!(f64::from(*f)),
        Some(proto::Value::Int(i)) if signed => serde_json::json!(*i as i32),
        Some(proto::Value::Int(i)) => serde_json::json!(i),
        Some(proto::Value::Long(l)) if signed => serde_json::json!(*l as i64),
        Some(proto::Value::Long(l)) => serde_json::json!(l),
        Some(proto::Value::Boolean(b)) => J::Bool(*b),
        Some(proto::Value::String(s)) => J::String(s.clone()),
        Some(proto::Value::Bytes(_)) | None => J::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ControlState;

    fn snap(setpoint: f64) -> Snapshot {
        let tick = crate::model::TickOutput {
            actuations: vec![],
            state: ControlState::Running,
            mode: Mode::Auto,
            controlled: Some(crate::units::Celsius(50.0)),
            setpoint: crate::units::Celsius(setpoint),
            loops: vec![],
            events: vec![],
            active_alarms: vec![],
            ready: true,
            feed_forward: vec![],
        };
        let ctx = schema::Ctx {
            site: "s",
            host: "h",
        };
        let mut points = schema::control_points(&ctx, &tick, 1_000_000_000);
        points.push(
            Point::new(schema::COOLANT, 0)
                .tag("cdu", "cdu-a")
                .field("supply_temp_c", FieldValue::Float(30.0)),
        );
        Snapshot {
            site: "s".into(),
            host: "h".into(),
            time_ns: 1_000_000_000,
            tick: 1,
            dry_run: false,
            mode: Mode::Auto,
            state: ControlState::Running,
            setpoint,
            controlled: Some(50.0),
            ready: true,
            cdus: vec![],
            gpus: vec![],
            alarms: vec![],
            decisions: vec![],
            points,
            rack: None,
        }
    }

    fn decode(o: &Out) -> (String, Payload) {
        match o {
            Out::Publish(p) => (
                p.topic.clone(),
                prost::Message::decode(p.payload.as_slice()).expect("valid payload"),
            ),
            Out::Command { .. } => panic!("expected a publish, got {o:?}"),
        }
    }

    fn node() -> EdgeNode {
        EdgeNode::new(Topics::new("g", "n", None), Duration::from_millis(0))
    }

    #[test]
    fn seq_starts_at_zero_in_nbirth_and_wraps_after_255() {
        let mut n = node();
        let t0 = Instant::now();
        assert!(
            n.on_snapshot(&snap(50.0), t0).is_empty(),
            "not connected yet"
        );
        let births = n.on_connected(7);
        let seqs: Vec<u64> = births
            .iter()
            .map(|o| decode(o).1.seq.unwrap_or(99))
            .collect();
        assert_eq!(seqs, [0, 1], "NBIRTH then the CDU's DBIRTH");
        let mut all = Vec::new();
        for i in 0..600u32 {
            for o in n.on_snapshot(&snap(50.0 + f64::from(i % 2)), t0) {
                all.push(decode(&o).1.seq.expect("data carries seq"));
            }
        }
        assert!(all.len() >= 300, "{}", all.len());
        // Each message's seq is the previous one plus one, modulo 256.
        let mut prev = 1u64;
        for s in &all {
            assert_eq!(*s, (prev + 1) % 256);
            prev = *s;
        }
        assert!(all.contains(&255) && all.iter().filter(|s| **s == 0).count() >= 1);
        // A rebirth restarts at 0.
        let births = n.on_connected(8);
        assert_eq!(decode(&births[0]).1.seq, Some(0));
    }

    #[test]
    fn bdseq_advances_per_session_and_matches_nbirth_and_ndeath() {
        let mut b = BdSeq::default();
        let mut seen = vec![b.current()];
        for _ in 0..300 {
            seen.push(b.advance());
        }
        assert_eq!(&seen[..3], &[0, 1, 2]);
        assert_eq!(seen[255], 255);
        assert_eq!(seen[256], 0, "wraps from 255 to 0");
        let mut n = node();
        let t0 = Instant::now();
        n.on_snapshot(&snap(50.0), t0);
        for bd in [41u8, 42] {
            let births = n.on_connected(bd);
            let (topic, p) = decode(&births[0]);
            assert_eq!(topic, "spBv1.0/g/NBIRTH/n");
            let m = p
                .metrics
                .iter()
                .find(|m| m.name.as_deref() == Some(BD_SEQ))
                .expect("NBIRTH has bdSeq");
            assert_eq!(m.value, Some(proto::Value::Long(u64::from(bd))));
            let death: Payload =
                prost::Message::decode(death_payload(bd, 5).as_slice()).expect("NDEATH decodes");
            assert_eq!(death.metrics[0].value, m.value);
            n.on_disconnected();
        }
    }

    #[test]
    fn birth_names_types_units_and_data_uses_aliases() {
        let mut n = node();
        let t0 = Instant::now();
        n.on_snapshot(&snap(50.0), t0);
        let births = n.on_connected(0);
        let (_, nb) = decode(&births[0]);
        let sp = nb
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(SETPOINT))
            .expect("set point in NBIRTH");
        assert_eq!(sp.datatype, Some(datatype::DOUBLE));
        assert_eq!(sp.value, Some(proto::Value::Double(50.0)));
        let unit = sp.properties.as_ref().expect("unit property");
        assert_eq!(unit.keys, ["engUnit"]);
        let (topic, db) = decode(&births[1]);
        assert_eq!(topic, "spBv1.0/g/DBIRTH/n/cdu-a");
        let flow = db
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some("coolant/flow_lpm"))
            .expect("every coolant metric is born");
        assert_eq!(flow.is_null, Some(true));
        let out = n.on_snapshot(&snap(52.0), t0);
        let (topic, nd) = decode(&out[0]);
        assert_eq!(topic, "spBv1.0/g/NDATA/n");
        assert_eq!(nd.metrics.len(), 1, "{nd:?}");
        assert_eq!(nd.metrics[0].alias, sp.alias);
        assert_eq!(nd.metrics[0].name, None);
    }

    #[test]
    fn ncmd_goes_through_the_json_command_parser() {
        let mut n = node();
        let t0 = Instant::now();
        n.on_snapshot(&snap(50.0), t0);
        n.on_connected(0);
        let cmd = |name: &str, v: proto::Value, dt: u32| {
            prost::Message::encode_to_vec(&Payload {
                metrics: vec![proto::Metric {
                    name: Some(name.into()),
                    datatype: Some(dt),
                    value: Some(v),
                    ..Default::default()
                }],
                ..Default::default()
            })
        };
        let out = n.on_message(
            "spBv1.0/g/NCMD/n",
            &cmd(SETPOINT, proto::Value::Double(48.0), datatype::DOUBLE),
            t0,
        );
        assert_eq!(
            out,
            [Out::Command {
                label: "control/setpoint_c = 48.0".into(),
                command: Command::SetSetpoint { celsius: 48.0 }
            }]
        );
        // A string where a number belongs: refused with the JSON parser's words, at once.
        let out = n.on_message(
            "spBv1.0/g/NCMD/n",
            &cmd(
                SETPOINT,
                proto::Value::String("hot".into()),
                datatype::STRING,
            ),
            t0,
        );
        let (_, nd) = decode(&out[0]);
        let Some(proto::Value::String(text)) = &nd.metrics[0].value else {
            panic!("{nd:?}")
        };
        assert!(
            text.starts_with("rejected:") && text.contains("invalid type"),
            "{text}"
        );
        let out = n.on_message(
            "spBv1.0/g/NCMD/n",
            &cmd(MODE, proto::Value::String("turbo".into()), datatype::STRING),
            t0,
        );
        let (_, nd) = decode(&out[0]);
        assert!(format!("{nd:?}").contains("unknown variant"), "{nd:?}");
        // Rebirth: a fresh NBIRTH with seq 0.
        let out = n.on_message(
            "spBv1.0/g/NCMD/n",
            &cmd(REBIRTH, proto::Value::Boolean(true), datatype::BOOLEAN),
            t0,
        );
        let (topic, nb) = decode(&out[0]);
        assert_eq!((topic.as_str(), nb.seq), ("spBv1.0/g/NBIRTH/n", Some(0)));
    }

    #[test]
    fn slow_gpu_counters_hold_their_last_value_between_slow_reads() {
        let gpu = |core: f64, energy: Option<f64>| {
            let mut s = snap(50.0);
            let mut p = Point::new(schema::GPU, 0)
                .tag("host", "h")
                .tag("gpu", "0")
                .field("core_temp_c", FieldValue::Float(core));
            if let Some(e) = energy {
                p = p.field("energy_j", FieldValue::Float(e));
            }
            s.points.push(p);
            s
        };
        let mut n = node();
        let t0 = Instant::now();
        n.on_snapshot(&gpu(60.0, Some(1.0)), t0);
        n.on_connected(0);
        let out = n.on_snapshot(&gpu(61.0, None), t0);
        let ddata: Vec<Payload> = out
            .iter()
            .map(decode)
            .filter(|(t, _)| t == "spBv1.0/g/DDATA/n/gpu0")
            .map(|(_, p)| p)
            .collect();
        assert_eq!(ddata.len(), 1, "{out:?}");
        assert_eq!(
            ddata[0].metrics.len(),
            1,
            "only the core temperature changed"
        );
        assert_eq!(ddata[0].metrics[0].value, Some(proto::Value::Double(61.0)));
    }

    #[test]
    fn waits_for_the_primary_host_and_is_reborn_when_it_returns() {
        let mut n = EdgeNode::new(Topics::new("g", "n", Some("scada")), Duration::ZERO);
        let t0 = Instant::now();
        n.on_snapshot(&snap(50.0), t0);
        assert!(n.on_connected(0).is_empty(), "no birth before the host");
        let st = |online: bool, ts: u64| format!(r#"{{"online":{online},"timestamp":{ts}}}"#);
        let out = n.on_message("spBv1.0/STATE/scada", st(true, 10).as_bytes(), t0);
        assert_eq!(decode(&out[0]).0, "spBv1.0/g/NBIRTH/n");
        assert!(n
            .on_message("spBv1.0/STATE/scada", st(false, 20).as_bytes(), t0)
            .is_empty());
        assert!(
            n.on_snapshot(&snap(51.0), t0).is_empty(),
            "no data while the host is away"
        );
        // A stale retained STATE changes nothing.
        assert!(n
            .on_message("spBv1.0/STATE/scada", st(true, 5).as_bytes(), t0)
            .is_empty());
        let out = n.on_message("spBv1.0/STATE/scada", st(true, 30).as_bytes(), t0);
        assert_eq!(decode(&out[0]).0, "spBv1.0/g/NBIRTH/n");
        // A new session waits for the host's (retained) STATE again.
        n.on_disconnected();
        assert!(
            n.on_connected(1).is_empty(),
            "no birth before STATE in a new session"
        );
        let out = n.on_message("spBv1.0/STATE/scada", st(true, 30).as_bytes(), t0);
        assert_eq!(decode(&out[0]).0, "spBv1.0/g/NBIRTH/n");
    }
}
