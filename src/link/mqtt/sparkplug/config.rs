//! `[mqtt.sparkplug]`: the Sparkplug B 3.0 edge node beside the native topics.

use crate::validate::Issues;
use serde::Deserialize;

/// `[mqtt.sparkplug]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    /// False keeps the section but publishes nothing in Sparkplug.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The Sparkplug group this edge node belongs to (`spBv1.0/<group_id>/...`).
    pub group_id: String,
    /// The edge node id; the host name (`site.host`) when absent.
    #[serde(default)]
    pub edge_node_id: Option<String>,
    /// The primary host application's id: when set, the node is born only while that host's
    /// `spBv1.0/STATE/<id>` says it is online, and born again when it comes back.
    #[serde(default)]
    pub primary_host_id: Option<String>,
}

fn default_true() -> bool {
    true
}

/// A Sparkplug id (group, edge node, device, host): UTF-8 without the MQTT separators and
/// wildcards (Sparkplug 3.0 §4.1.1).
pub fn id_ok(v: &str) -> bool {
    !v.is_empty()
        && !v
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '\0') || c.is_control())
}

impl SparkplugConfig {
    pub fn validate(&self, key: &str, issues: &mut Issues) {
        let expected = |v: &str| {
            format!(
                "a Sparkplug id: not empty, without `/`, `+`, `#` or control characters, got `{v}`"
            )
        };
        issues.check(
            id_ok(&self.group_id),
            format!("{key}.group_id"),
            expected(&self.group_id),
        );
        if let Some(n) = &self.edge_node_id {
            issues.check(id_ok(n), format!("{key}.edge_node_id"), expected(n));
        }
        if let Some(h) = &self.primary_host_id {
            issues.check(id_ok(h), format!("{key}.primary_host_id"), expected(h));
        }
    }

    /// The edge node id: the configured one, or the host name made into a valid id.
    pub fn edge_node(&self, host: &str) -> String {
        match &self.edge_node_id {
            Some(n) => n.clone(),
            None => device_id(host),
        }
    }
}

/// A name (a host, a CDU) made into a Sparkplug id: `/`, `+`, `#` and control characters
/// become `_`.
pub fn device_id(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_named_by_key() {
        let c: SparkplugConfig =
            toml::from_str("group_id = \"a/b\"\nprimary_host_id = \"h+\"").expect("parses");
        assert!(c.enabled);
        let mut i = Issues::default();
        c.validate("mqtt.sparkplug", &mut i);
        let keys: Vec<String> = i.into_vec().into_iter().map(|x| x.key).collect();
        assert_eq!(
            keys,
            ["mqtt.sparkplug.group_id", "mqtt.sparkplug.primary_host_id"]
        );
        assert!(toml::from_str::<SparkplugConfig>("group_id = \"g\"\nbdseq = 1").is_err());
        assert_eq!(c.edge_node("node/01"), "node_01");
    }
}
