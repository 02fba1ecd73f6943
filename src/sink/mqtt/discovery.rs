//! Home Assistant MQTT discovery: retained config messages that make the main sensors of a
//! host appear in Home Assistant without any YAML.

use super::payload::{Topics, OFFLINE, ONLINE};
use crate::model::Snapshot;
use serde_json::json;

/// Home Assistant object and node ids allow `[a-zA-Z0-9_-]` only.
fn ha_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

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
/// temperature, flow and pump speed.
pub fn messages(
    discovery_prefix: &str,
    topics: &Topics,
    site: &str,
    host: &str,
    snap: &Snapshot,
) -> Vec<(String, Vec<u8>)> {
    let node = ha_id(&format!("coolantd_{site}_{host}"));
    let mut sensors = vec![
        Sensor {
            object: "hottest_gpu".into(),
            name: "Hottest GPU temperature".into(),
            state_topic: topics.telemetry.clone(),
            template: "{{ value_json.hottest_gpu_core }}".into(),
            unit: Some("°C"),
            device_class: Some("temperature"),
        },
        Sensor {
            object: "controlled".into(),
            name: "Controlled temperature".into(),
            state_topic: topics.telemetry.clone(),
            template: "{{ value_json.controlled }}".into(),
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
        // `return` is a Jinja keyword-free identifier but reads badly; index by string.
        let field = |f: &str| format!("{{{{ value_json.cdus['{n}']['{f}'] }}}}");
        sensors.extend([
            Sensor {
                object: format!("{id}_supply"),
                name: format!("{n} supply temperature"),
                state_topic: topics.telemetry.clone(),
                template: field("supply"),
                unit: Some("°C"),
                device_class: Some("temperature"),
            },
            Sensor {
                object: format!("{id}_return"),
                name: format!("{n} return temperature"),
                state_topic: topics.telemetry.clone(),
                template: field("return"),
                unit: Some("°C"),
                device_class: Some("temperature"),
            },
            Sensor {
                object: format!("{id}_flow"),
                name: format!("{n} flow"),
                state_topic: topics.telemetry.clone(),
                template: field("flow"),
                unit: Some("L/min"),
                device_class: Some("volume_flow_rate"),
            },
            Sensor {
                object: format!("{id}_pump_speed"),
                name: format!("{n} pump speed"),
                state_topic: topics.telemetry.clone(),
                template: field("pump_feedback"),
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
                "unique_id": format!("{node}_{}", s.object),
                "object_id": format!("{node}_{}", s.object),
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
        };
        let t = Topics::new("coolantd", "s.1", "n01");
        let m = messages("homeassistant", &t, "s.1", "n01", &snap);
        assert_eq!(m.len(), 7);
        assert_eq!(
            m[3].0,
            "homeassistant/sensor/coolantd_s_1_n01/cdu_a_supply/config"
        );
        let v: serde_json::Value = serde_json::from_slice(&m[3].1).expect("JSON");
        assert_eq!(
            v["value_template"],
            "{{ value_json.cdus['cdu.a']['supply'] }}"
        );
        assert_eq!(v["availability_topic"], "coolantd/s.1/n01/availability");
        assert_eq!(v["unit_of_measurement"], "°C");
    }
}
