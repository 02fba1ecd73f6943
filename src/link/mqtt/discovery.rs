//! Home Assistant MQTT discovery: retained config messages that make the main sensors of a
//! host appear in Home Assistant without any YAML.

use super::payload::{Topics, OFFLINE, ONLINE};
use crate::model::Snapshot;
use serde_json::json;

/// Home Assistant object and node ids allow `[a-zA-Z0-9_-]` only, and site, host and CDU
/// names may also hold `.`. Letters, digits and `-` pass unchanged; `_` becomes `_u` and `.`
/// becomes `_d`, so an encoded name never holds `__`, and [`SEP`] (`__`) can join names
/// without ambiguity: `cdu.a` and `cdu_a` stay apart (`cdu_da`, `cdu_ua`), and so do site
/// `a_b`/host `c` and site `a`/host `b_c`. The encoding is injective, so two different sets
/// of names never share a `unique_id` or a discovery topic.
fn ha_id(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '_' => out.push_str("_u"),
            '.' => out.push_str("_d"),
            c if c.is_ascii_alphanumeric() || c == '-' => out.push(c),
            // Config validation admits nothing else; should it ever, the code point in hex,
            // ended by `x` (not a hex digit), keeps the result unique.
            c => out.push_str(&format!("_x{:x}x", u32::from(c))),
        }
    }
    out
}

/// Joins encoded names (see [`ha_id`]).
const SEP: &str = "__";

struct Sensor {
    object: String,
    name: String,
    state_topic: String,
    template: String,
    unit: Option<&'static str>,
    device_class: Option<&'static str>,
}

/// The discovery config messages (topic, retained payload) for a snapshot's sensors: the
/// hottest GPU, the controlled value, the control state, and per CDU supply and return
/// temperature, flow and pump speed. The object ids predate the unit-suffixed JSON keys and
/// stay as they were, so that Home Assistant updates its entities in place (same
/// `unique_id`) when the retained configs are republished with the new templates.
pub fn messages(
    discovery_prefix: &str,
    topics: &Topics,
    site: &str,
    host: &str,
    snap: &Snapshot,
) -> Vec<(String, Vec<u8>)> {
    let node = format!("coolantd{SEP}{}{SEP}{}", ha_id(site), ha_id(host));
    let mut sensors = vec![
        Sensor {
            object: "hottest_gpu".into(),
            name: "Hottest GPU temperature".into(),
            state_topic: topics.telemetry.clone(),
            template: "{{ value_json.hottest_gpu_core_temp_c }}".into(),
            unit: Some("°C"),
            device_class: Some("temperature"),
        },
        Sensor {
            object: "controlled".into(),
            name: "Controlled temperature".into(),
            state_topic: topics.telemetry.clone(),
            template: "{{ value_json.controlled_c }}".into(),
            unit: Some("°C"),
            device_class: Some("temperature"),
        },
        Sensor {
            object: "control_state".into(),
            name: "Control state".into(),
            state_topic: topics.state.clone(),
            template: "{{ value_json.state }}".into(),
            unit: None,
            device_class: None,
        },
    ];
    for cdu in &snap.cdus {
        let n = &cdu.name;
        let id = ha_id(n);
        // Index by string: CDU names may hold `-` and `.`, which dotted access cannot take.
        let field = |f: &str| format!("{{{{ value_json.cdus['{n}']['{f}'] }}}}");
        sensors.extend([
            Sensor {
                object: format!("{id}{SEP}supply"),
                name: format!("{n} supply temperature"),
                state_topic: topics.telemetry.clone(),
                template: field("supply_temp_c"),
                unit: Some("°C"),
                device_class: Some("temperature"),
            },
            Sensor {
                object: format!("{id}{SEP}return"),
                name: format!("{n} return temperature"),
                state_topic: topics.telemetry.clone(),
                template: field("return_temp_c"),
                unit: Some("°C"),
                device_class: Some("temperature"),
            },
            Sensor {
                object: format!("{id}{SEP}flow"),
                name: format!("{n} flow"),
                state_topic: topics.telemetry.clone(),
                template: field("flow_lpm"),
                unit: Some("L/min"),
                device_class: Some("volume_flow_rate"),
            },
            Sensor {
                object: format!("{id}{SEP}pump_speed"),
                name: format!("{n} pump speed"),
                state_topic: topics.telemetry.clone(),
                template: field("pump_feedback_pct"),
                unit: Some("%"),
                device_class: None,
            },
        ]);
    }
    sensors
        .into_iter()
        .map(|s| {
            let mut cfg = json!({
                "name": s.name,
                "unique_id": format!("{node}{SEP}{}", s.object),
                "object_id": format!("{node}{SEP}{}", s.object),
                "state_topic": s.state_topic,
                "value_template": s.template,
                "availability_topic": topics.availability,
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
                "device": {
                    "identifiers": [node],
                    "name": format!("coolantd {site}/{host}"),
                    "manufacturer": "coolantd",
                    "model": "GPU liquid-cooling controller",
                    "sw_version": env!("CARGO_PKG_VERSION"),
                },
            });
            if let Some(u) = s.unit {
                cfg["unit_of_measurement"] = json!(u);
                cfg["state_class"] = json!("measurement");
            }
            if let Some(d) = s.device_class {
                cfg["device_class"] = json!(d);
            }
            let topic = format!("{discovery_prefix}/sensor/{node}/{}/config", s.object);
            (topic, cfg.to_string().into_bytes())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CduStatus, ControlState, Mode};

    #[test]
    fn one_config_per_sensor_with_sanitised_ids() {
        let snap = Snapshot {
            site: "s.1".into(),
            host: "n01".into(),
            time_ns: 0,
            tick: 0,
            dry_run: false,
            mode: Mode::Auto,
            state: ControlState::Boot,
            setpoint: 65.0,
            controlled: None,
            ready: false,
            cdus: vec![CduStatus {
                name: "cdu.a".into(),
                supply: None,
                return_: None,
                flow: None,
                differential_pressure: None,
                pump_command: None,
                pump_feedback: None,
                leak: None,
                remote_enable: None,
                faults: vec![],
                link: Default::default(),
            }],
            gpus: vec![],
            alarms: vec![],
            decisions: Vec::new(),
            points: vec![],
            rack: None,
        };
        let t = Topics::new("coolantd", "s.1", "n01");
        let m = messages("homeassistant", &t, "s.1", "n01", &snap);
        assert_eq!(m.len(), 7);
        assert_eq!(
            m[3].0,
            "homeassistant/sensor/coolantd__s_d1__n01/cdu_da__supply/config"
        );
        let v: serde_json::Value = serde_json::from_slice(&m[3].1).expect("JSON");
        assert_eq!(
            v["value_template"],
            "{{ value_json.cdus['cdu.a']['supply_temp_c'] }}"
        );
        assert_eq!(v["availability_topic"], "coolantd/s.1/n01/availability");
        assert_eq!(v["unit_of_measurement"], "°C");
    }

    /// Resolves a template `{{ value_json.a['b']['c'] }}` in a JSON document.
    fn resolve<'v>(template: &str, doc: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        let path = template
            .strip_prefix("{{ value_json.")?
            .strip_suffix(" }}")?;
        let (first, mut rest) = path.split_at(path.find('[').unwrap_or(path.len()));
        let mut v = doc.get(first)?;
        while let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            v = v.get(&r[..end])?;
            rest = &r[end + 2..];
        }
        rest.is_empty().then_some(v)
    }

    /// Every template reads a key the telemetry or state message really has: a key renamed
    /// in the payload without its template would show as "unknown" in Home Assistant.
    #[test]
    fn every_template_reads_a_value_the_messages_carry() {
        let mut snap = snap_with("s", "h", &["cdu-a", "cdu.b"]);
        for c in &mut snap.cdus {
            c.supply = Some(30.0);
            c.return_ = Some(40.0);
            c.flow = Some(120.0);
            c.pump_feedback = Some(55.0);
        }
        snap.controlled = Some(61.0);
        snap.gpus = vec![crate::model::GpuStatus {
            key: crate::model::GpuKey {
                host: "h".into(),
                index: 0,
            },
            uuid: "GPU-0".into(),
            name: "NVIDIA H200".into(),
            core: Some(61.0),
            hbm: None,
            power: None,
            limit: None,
            margin_to_slowdown: None,
        }];
        let t = Topics::new("coolantd", "s", "h");
        let telemetry: serde_json::Value =
            serde_json::from_slice(&super::super::payload::telemetry_json(&snap)).expect("JSON");
        let state: serde_json::Value =
            serde_json::from_slice(&super::super::payload::state_json(&snap).0).expect("JSON");
        let m = messages("homeassistant", &t, "s", "h", &snap);
        assert_eq!(m.len(), 3 + 4 * 2);
        for (topic, p) in &m {
            let cfg: serde_json::Value = serde_json::from_slice(p).expect("JSON");
            let template = cfg["value_template"].as_str().expect("template");
            let doc = if cfg["state_topic"] == t.state.as_str() {
                &state
            } else {
                &telemetry
            };
            let v = resolve(template, doc).unwrap_or_else(|| panic!("{topic}: {template}"));
            if cfg.get("unit_of_measurement").is_some() {
                assert!(v.is_number(), "{topic}: {template} = {v}");
            } else {
                assert!(v.is_string(), "{topic}: {template} = {v}");
            }
        }
    }

    fn snap_with(site: &str, host: &str, cdus: &[&str]) -> Snapshot {
        Snapshot {
            site: site.into(),
            host: host.into(),
            time_ns: 0,
            tick: 0,
            dry_run: false,
            mode: Mode::Auto,
            state: ControlState::Boot,
            setpoint: 65.0,
            controlled: None,
            ready: false,
            cdus: cdus
                .iter()
                .map(|n| CduStatus {
                    name: (*n).into(),
                    supply: None,
                    return_: None,
                    flow: None,
                    differential_pressure: None,
                    pump_command: None,
                    pump_feedback: None,
                    leak: None,
                    remote_enable: None,
                    faults: vec![],
                    link: Default::default(),
                })
                .collect(),
            gpus: vec![],
            alarms: vec![],
            decisions: Vec::new(),
            points: vec![],
            rack: None,
        }
    }

    /// The unique ids and topics of every discovery message of `site`/`host`/`cdus`.
    fn ids(site: &str, host: &str, cdus: &[&str]) -> Vec<String> {
        let t = Topics::new("coolantd", site, host);
        messages(
            "homeassistant",
            &t,
            site,
            host,
            &snap_with(site, host, cdus),
        )
        .into_iter()
        .flat_map(|(topic, p)| {
            let v: serde_json::Value = serde_json::from_slice(&p).expect("JSON");
            let id = v["unique_id"].as_str().unwrap_or_default().to_string();
            [topic, id]
        })
        .collect()
    }

    /// Issue 12, D8: `cdu.a` and `cdu_a` used to share a unique_id and topic, and so did
    /// site `a_b`/host `c` and site `a`/host `b_c`.
    #[test]
    fn names_that_used_to_collide_get_distinct_ids_and_topics() {
        let both = ids("s", "h", &["cdu.a", "cdu_a"]);
        let unique: std::collections::BTreeSet<&String> = both.iter().collect();
        assert_eq!(unique.len(), both.len(), "{both:#?}");
        let a = ids("a_b", "c", &[]);
        let b = ids("a", "b_c", &[]);
        assert!(a.iter().all(|x| !b.contains(x)), "{a:#?}\n{b:#?}");
    }

    /// Every pair of distinct (site, host, cdu) name triples over an alphabet dense in the
    /// separators gets disjoint ids and topics.
    #[test]
    fn the_encoding_is_injective_over_separator_heavy_names() {
        let alphabet = ["a", "d", "u", "_", ".", "-", "x"];
        let mut names = vec![];
        for p in alphabet {
            names.push(p.to_string());
            for q in alphabet {
                names.push(format!("{p}{q}"));
            }
        }
        let mut seen = std::collections::HashMap::new();
        for site in ["s", "s_", "s.", "s_u", "s_d"] {
            for host in ["h", "_h", ".h", "uh", "dh"] {
                for cdu in &names {
                    let node = format!("coolantd{SEP}{}{SEP}{}", ha_id(site), ha_id(host));
                    let id = format!("{node}{SEP}{}{SEP}supply", ha_id(cdu));
                    if let Some(prev) = seen.insert(id.clone(), (site, host, cdu.clone())) {
                        panic!("{prev:?} and {:?} share {id}", (site, host, cdu));
                    }
                }
            }
        }
        for n in &names {
            let id = ha_id(n);
            assert!(!id.contains(SEP), "{n} -> {id}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{id}"
            );
        }
    }
}
