//! `[mqtt]`: how to reach the broker and what to publish there.

use crate::validate::Issues;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which MQTT protocol version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum MqttProtocol {
    /// MQTT 3.1.1, understood by every broker.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5: adds response topics and correlation data for commands.
    #[serde(rename = "5")]
    V5,
}

/// `[mqtt.tls]`: TLS towards the broker. Paths are PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// The certificate authority (or authorities) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// Client certificate for mutual TLS; needs `client_key_file` too.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Private key of the client certificate (PKCS#8, PKCS#1 or SEC1 PEM).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

/// `[mqtt]`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port; 1883 without TLS and 8883 with it when absent (the IANA-registered ports).
    #[serde(default)]
    pub port: Option<u16>,
    /// Client id; `coolantd-<host>` when absent. Must be unique on the broker, because the
    /// broker disconnects the older of two clients with the same id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol: MqttProtocol,
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    #[serde(default)]
    pub username: Option<String>,
    /// Password in the configuration file itself; prefer `password_file` or `password_env`.
    #[serde(default)]
    pub password: Option<String>,
    /// A file whose content (trailing newline removed) is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// MQTT keep-alive in seconds. The broker publishes the last will (`offline`) after
    /// about 1.5 times this without a packet from us.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// First topic level: `<topic_prefix>/<site>/<host>/...`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// At most one telemetry message per this many milliseconds.
    #[serde(default = "default_telemetry_period_ms")]
    pub telemetry_period_ms: u64,
    /// False makes the integration read-only: no subscription to the command topic at all.
    #[serde(default = "default_true")]
    pub commands_enabled: bool,
    /// First wait after a failed connection attempt, in milliseconds; doubles up to the maximum.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest wait between connection attempts, in milliseconds.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Publish Home Assistant MQTT discovery messages (retained) for the main sensors.
    #[serde(default)]
    pub discovery: bool,
    /// Home Assistant's discovery prefix.
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// `[mqtt.sparkplug]`: a Sparkplug B edge node beside the native topics.
    #[serde(default)]
    pub sparkplug: Option<super::sparkplug::SparkplugConfig>,
}

fn default_keep_alive_s() -> u64 {
    // 30 s: a dead daemon shows as `offline` within ~45 s without pinging a broker every second.
    30
}
fn default_topic_prefix() -> String {
    "coolantd".into()
}
fn default_telemetry_period_ms() -> u64 {
    5_000
}
fn default_true() -> bool {
    true
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    60_000
}
fn default_discovery_prefix() -> String {
    // Home Assistant's default `discovery_prefix`.
    "homeassistant".into()
}

impl fmt::Debug for MqttConfig {
    // Written by hand so that the password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("keep_alive_s", &self.keep_alive_s)
            .field("topic_prefix", &self.topic_prefix)
            .field("telemetry_period_ms", &self.telemetry_period_ms)
            .field("commands_enabled", &self.commands_enabled)
            .field("reconnect_min_ms", &self.reconnect_min_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("discovery", &self.discovery)
            .field("discovery_prefix", &self.discovery_prefix)
            .field("sparkplug", &self.sparkplug)
            .finish()
    }
}

/// A topic level we generate must not contain wildcards or separators.
fn topic_path_ok(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with('/')
        && !v.ends_with('/')
        && !v.contains("//")
        && !v
            .chars()
            .any(|c| matches!(c, '+' | '#' | '\0') || c.is_control())
}

impl MqttConfig {
    /// A configuration with every default, for `host:port`. Meant for tests and tools.
    pub fn new(host: impl Into<String>, port: u16) -> MqttConfig {
        MqttConfig {
            host: host.into(),
            port: Some(port),
            client_id: None,
            protocol: MqttProtocol::default(),
            tls: None,
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            keep_alive_s: default_keep_alive_s(),
            topic_prefix: default_topic_prefix(),
            telemetry_period_ms: default_telemetry_period_ms(),
            commands_enabled: true,
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            discovery: false,
            discovery_prefix: default_discovery_prefix(),
            sparkplug: None,
        }
    }

    pub fn validate(&self, key: &str, issues: &mut Issues) {
        issues.check(
            !self.host.trim().is_empty() && !self.host.contains(char::is_whitespace),
            format!("{key}.host"),
            format!("a broker host name or address, got `{}`", self.host),
        );
        if let Some(p) = self.port {
            issues.check(
                p != 0,
                format!("{key}.port"),
                "a TCP port between 1 and 65535, got 0",
            );
        }
        if let Some(id) = &self.client_id {
            // MQTT 3.1.1 §3.1.3.1: servers must accept 1 to 23 bytes; most accept more, and
            // 65535 is the protocol's string limit.
            issues.check(
                !id.is_empty() && id.len() <= 65_535,
                format!("{key}.client_id"),
                "a non-empty client id",
            );
        }
        // MQTT keep-alive is a 16-bit number of seconds (MQTT 3.1.1 §3.1.2.10). rumqttc
        // refuses (panics on) anything under 1 s, and under 5 s for MQTT 5.
        let min_keep_alive = match self.protocol {
            MqttProtocol::V311 => 1,
            MqttProtocol::V5 => 5,
        };
        issues.check(
            (min_keep_alive..=65_535).contains(&self.keep_alive_s),
            format!("{key}.keep_alive_s"),
            format!(
                "a keep-alive between {min_keep_alive} and 65535 seconds, got {}",
                self.keep_alive_s
            ),
        );
        issues.check(
            topic_path_ok(&self.topic_prefix),
            format!("{key}.topic_prefix"),
            // Debug formatting escapes a NUL or other control character, which would
            // otherwise vanish from the message on a terminal.
            format!(
                "topic levels without `+`, `#`, control characters, empty levels or a \
                 leading/trailing `/`, got {:?}",
                self.topic_prefix
            ),
        );
        issues.check(
            (100..=3_600_000).contains(&self.telemetry_period_ms),
            format!("{key}.telemetry_period_ms"),
            format!(
                "a period between 100 and 3600000 ms, got {}",
                self.telemetry_period_ms
            ),
        );
        issues.check(
            (10..=600_000).contains(&self.reconnect_min_ms),
            format!("{key}.reconnect_min_ms"),
            format!(
                "a wait between 10 and 600000 ms, got {}",
                self.reconnect_min_ms
            ),
        );
        issues.check(
            self.reconnect_max_ms >= self.reconnect_min_ms && self.reconnect_max_ms <= 3_600_000,
            format!("{key}.reconnect_max_ms"),
            format!(
                "a wait between reconnect_min_ms ({}) and 3600000 ms, got {}",
                self.reconnect_min_ms, self.reconnect_max_ms
            ),
        );
        issues.check(
            topic_path_ok(&self.discovery_prefix),
            format!("{key}.discovery_prefix"),
            format!(
                "topic levels without `+`, `#`, control characters, empty levels or a \
                 leading/trailing `/`, got {:?}",
                self.discovery_prefix
            ),
        );
        let sources = [
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources > 1 {
            issues.push(
                format!("{key}.password"),
                "at most one of `password`, `password_file` and `password_env`",
            );
        }
        if sources > 0 && self.username.is_none() {
            issues.push(
                format!("{key}.username"),
                "a user name when a password is given (MQTT sends no password without one)",
            );
        }
        if let Some(var) = &self.password_env {
            issues.check(
                !var.is_empty() && !var.contains('='),
                format!("{key}.password_env"),
                format!("the name of an environment variable, got `{var}`"),
            );
        }
        if let Some(s) = &self.sparkplug {
            s.validate(&format!("{key}.sparkplug"), issues);
        }
        if let Some(tls) = &self.tls {
            issues.check(
                tls.client_cert_file.is_some() == tls.client_key_file.is_some(),
                format!("{key}.tls.client_key_file"),
                "both `client_cert_file` and `client_key_file`, or neither",
            );
        }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_s)
    }

    pub fn telemetry_period(&self) -> Duration {
        Duration::from_millis(self.telemetry_period_ms)
    }

    pub fn reconnect_min(&self) -> Duration {
        Duration::from_millis(self.reconnect_min_ms)
    }

    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    /// This configuration with its file paths resolved against `base` (the configuration
    /// file's folder), for `MqttSink::start`.
    pub fn resolved(&self, base: &Path) -> MqttConfig {
        let r = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        let mut c = self.clone();
        c.password_file = self.password_file.as_ref().map(r);
        if let Some(t) = &mut c.tls {
            t.ca_file = r(&t.ca_file);
            t.client_cert_file = t.client_cert_file.as_ref().map(r);
            t.client_key_file = t.client_key_file.as_ref().map(r);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> MqttConfig {
        toml::from_str(toml_text).expect("valid [mqtt] table")
    }

    fn issues(c: &MqttConfig) -> Vec<(String, String)> {
        let mut i = Issues::default();
        c.validate("mqtt", &mut i);
        i.into_vec()
            .into_iter()
            .map(|x| (x.key, x.expected))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = parse(r#"host = "broker.lan""#);
        assert_eq!(c.port(), 1883);
        assert_eq!(c.protocol, MqttProtocol::V311);
        assert_eq!(c.topic_prefix, "coolantd");
        assert!(c.commands_enabled);
        assert!(!c.discovery);
        assert_eq!(c.discovery_prefix, "homeassistant");
        assert!(issues(&c).is_empty(), "{:?}", issues(&c));
        let c = parse("host = \"b\"\nprotocol = \"5\"\n[tls]\nca_file = \"ca.pem\"");
        assert_eq!(c.port(), 8883);
        assert_eq!(c.protocol, MqttProtocol::V5);
    }

    #[test]
    fn problems_name_their_key() {
        let c = parse(
            r#"
            host = "b"
            port = 0
            keep_alive_s = 0
            topic_prefix = "a/+/b"
            telemetry_period_ms = 5
            reconnect_min_ms = 1000
            reconnect_max_ms = 10
            password = "x"
            password_env = "P"
            tls = { ca_file = "ca.pem", client_cert_file = "c.pem" }
            "#,
        );
        let keys: Vec<String> = issues(&c).into_iter().map(|(k, _)| k).collect();
        for k in [
            "mqtt.port",
            "mqtt.keep_alive_s",
            "mqtt.topic_prefix",
            "mqtt.telemetry_period_ms",
            "mqtt.reconnect_max_ms",
            "mqtt.password",
            "mqtt.username",
            "mqtt.tls.client_key_file",
        ] {
            assert!(keys.iter().any(|x| x == k), "no issue for {k}: {keys:?}");
        }
    }

    #[test]
    fn mqtt5_needs_five_seconds_of_keep_alive() {
        let c = parse("host = \"b\"\nprotocol = \"5\"\nkeep_alive_s = 2");
        assert_eq!(issues(&c)[0].0, "mqtt.keep_alive_s");
    }

    #[test]
    fn unknown_keys_and_protocols_are_refused() {
        assert!(toml::from_str::<MqttConfig>("host = \"b\"\nqos = 2").is_err());
        assert!(toml::from_str::<MqttConfig>("host = \"b\"\nprotocol = \"3.1\"").is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = parse("host = \"b\"\nusername = \"u\"\npassword = \"hunter2\"");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("<redacted>"));
    }

    #[test]
    fn paths_resolve_against_the_config_folder() {
        let c = parse("host = \"b\"\nusername = \"u\"\npassword_file = \"pw\"\n[tls]\nca_file = \"/etc/ca.pem\"");
        let r = c.resolved(Path::new("/etc/coolantd"));
        assert_eq!(
            r.password_file.as_deref(),
            Some(Path::new("/etc/coolantd/pw"))
        );
        assert_eq!(r.tls.map(|t| t.ca_file), Some(PathBuf::from("/etc/ca.pem")));
    }
}
