//! The site configuration: one TOML file that describes this host's GPUs, its CDUs, the
//! control loop and the sinks.
//!
//! Every section rejects unknown keys, and every error names the file, the key and what was
//! expected, because the person reading it is a facility engineer at 3 a.m., not the author.
//! Each section's type lives beside the code it configures; this module only assembles them.

use serde::Deserialize;
use std::path::{Path, PathBuf};

mod agent;
mod site;
pub use crate::collect::config::{GpuBackendKind, GpusConfig};
pub use crate::collect::modbus::config::{CduConfig, CduTransport, Parity, MAX_TIMEOUT_MS};
pub use crate::files::{parse_toml, read_file};
pub use crate::validate::{ConfigError, ConfigIssue, Issues};
pub use agent::{is_agent_config, AgentFile};
pub use site::{LogFormat, LoggingConfig, SiteConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub site: SiteConfig,
    #[serde(default)]
    pub gpus: GpusConfig,
    /// The CDUs this host controls, as `[[cdu]]` tables.
    #[serde(default, rename = "cdu")]
    pub cdus: Vec<CduConfig>,
    /// Required for everything but `coolantd probe` (see [`Config::load_for_probe`]), which
    /// controls nothing; absent, the defaults fill it.
    #[serde(default)]
    pub control: crate::control::ControlConfig,
    /// Whether the file has a `[control]` table.
    #[serde(skip)]
    pub control_given: bool,
    /// The built-in plant simulator; absent on a real site.
    pub simulator: Option<crate::sim::SimConfig>,
    pub influx: Option<crate::sink::influx::InfluxConfig>,
    pub mqtt: Option<crate::link::mqtt::MqttConfig>,
    pub http: Option<crate::service::http::HttpConfig>,
    /// How the GPUs of other hosts (a `[[cdu]]`'s `hosts`) are heard and capped.
    pub rack: Option<crate::remote::RackConfig>,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The file this configuration was read from; relative paths inside it resolve against
    /// its folder.
    #[serde(skip)]
    pub path: PathBuf,
}

impl Config {
    /// Reads, parses and validates a configuration file (not yet the profiles it names;
    /// see [`crate::service::daemon::load_profiles`]).
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = read_file(file)?;
        Config::parse(&text, file)
    }

    /// Parses and validates configuration text; `file` is used for messages and relative paths.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Self::parse_with(text, file, true)
    }

    /// Like [`Config::load`], but a missing `[control]` table is fine: probing reads every
    /// sensor once and controls nothing, so a technician can commission a CDU before the
    /// control settings are chosen.
    pub fn load_for_probe(file: &Path) -> Result<Config, ConfigError> {
        let text = read_file(file)?;
        Self::parse_with(&text, file, false)
    }

    fn parse_with(text: &str, file: &Path, require_control: bool) -> Result<Config, ConfigError> {
        let mut cfg: Config = parse_toml(text, file)?;
        cfg.path = file.to_path_buf();
        // The typed parse above succeeded, so the text is valid TOML.
        cfg.control_given = text
            .parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("control"));
        let mut issues = Issues::default();
        // A file whose simulator runs the agents is `coolantd sim`'s: it controls nothing.
        let sim_agents = cfg.simulator.as_ref().is_some_and(|s| s.agents);
        if require_control && !cfg.control_given && !sim_agents {
            issues.push(
                "control",
                "a [control] table (its keys have defaults; only `coolantd probe` runs without it)",
            );
        }
        cfg.validate(&mut issues);
        issues.into_result(file)?;
        Ok(cfg)
    }

    fn validate(&self, issues: &mut Issues) {
        self.site.validate(issues);
        self.gpus.validate(issues);
        let mut names = std::collections::BTreeSet::new();
        for (i, cdu) in self.cdus.iter().enumerate() {
            cdu.validate(&format!("cdu[{i}]"), issues);
            if !names.insert(cdu.name.as_str()) {
                issues.push(
                    format!("cdu[{i}].name"),
                    format!("a unique CDU name, but `{}` is used twice", cdu.name),
                );
            }
        }
        // Each CDU client opens its serial port exclusively, so two CDUs on one RS-485 line
        // (different unit ids) would lock each other out; refuse that clearly until a shared
        // bus client exists.
        let mut devices = std::collections::BTreeMap::new();
        for (i, cdu) in self.cdus.iter().enumerate() {
            if let CduTransport::Rtu { device, .. } = &cdu.transport {
                if let Some(first) = devices.insert(device.clone(), i) {
                    issues.push(
                        format!("cdu[{i}].device"),
                        format!(
                            "a serial device not used by another CDU, but {} is already cdu[{first}]'s \
                             (several unit ids on one RS-485 line are not supported yet)",
                            device.display()
                        ),
                    );
                }
            }
        }
        self.validate_rack(issues);
        self.control.validate("control", issues);
        if let Some(sim) = &self.simulator {
            sim.validate("simulator", issues);
        }
        if let Some(sim) = self.simulator.as_ref() {
            if sim.agents {
                issues.check(
                    self.mqtt.is_some(),
                    "mqtt",
                    "an [mqtt] section: with simulator.agents = true the simulated agents \
                     publish through this broker",
                );
                issues.check(
                    self.mqtt.as_ref().is_none_or(|m| m.client_id.is_none()),
                    "mqtt.client_id",
                    "absent with simulator.agents = true: each simulated agent has its own \
                     session, coolantd-agent-<host>",
                );
                issues.check(
                    self.cdus.is_empty(),
                    "cdu",
                    "no [[cdu]] in a file with simulator.agents = true: it is for `coolantd sim`, \
                     which controls nothing; the controller has its own file",
                );
            }
            issues.check(
                !(sim.external && self.gpus.backend == GpuBackendKind::Simulated),
                "gpus.backend",
                "`none` or `nvml` with simulator.external = true: the simulated GPUs are read by \
                 the agents of the process that runs the plant",
            );
        }
        if self.gpus.backend == GpuBackendKind::Simulated && self.simulator.is_none() {
            issues.push(
                "gpus.backend",
                "a [simulator] section when the GPU backend is `simulated`",
            );
        }
        if let Some(x) = &self.influx {
            x.validate("influx", issues);
        }
        if let Some(x) = &self.mqtt {
            x.validate("mqtt", issues);
        }
        if let Some(x) = &self.http {
            x.validate("http", issues);
        }
        self.logging.validate(issues);
    }

    /// The hosts of `[[cdu]] hosts` that are not this host: their GPUs are heard over MQTT.
    pub fn remote_hosts(&self) -> Vec<String> {
        let me = self.site.host_name();
        let mut hosts: Vec<String> = self
            .cdus
            .iter()
            .flat_map(|c| c.hosts.iter())
            .filter(|h| **h != me)
            .cloned()
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// The rack settings, the defaults when there is no `[rack]` section.
    pub fn rack_or_default(&self) -> crate::remote::RackConfig {
        self.rack.clone().unwrap_or_default()
    }

    /// `[[cdu]] hosts` and `[rack]`: each host named once over all CDUs (a host's GPUs are
    /// cooled by one CDU), and an MQTT broker to hear the remote ones through.
    fn validate_rack(&self, issues: &mut Issues) {
        let mut owner = std::collections::BTreeMap::new();
        for (i, cdu) in self.cdus.iter().enumerate() {
            for (j, h) in cdu.hosts.iter().enumerate() {
                if let Some(first) = owner.insert(h.as_str(), i) {
                    issues.push(
                        format!("cdu[{i}].hosts[{j}]"),
                        format!(
                            "each host listed once over all CDUs (one CDU cools a host), but `{h}` \
                             is already in cdu[{first}].hosts"
                        ),
                    );
                }
            }
        }
        let remote = self.remote_hosts();
        if let Some(first) = remote.first() {
            if self.mqtt.is_none() {
                issues.push(
                    "mqtt",
                    format!(
                        "an [mqtt] section: the GPUs of other hosts ({first}{}) are heard through \
                         the MQTT broker",
                        if remote.len() > 1 { ", ..." } else { "" }
                    ),
                );
            }
        }
        // The rack session's inbox holds what a tick drains (`link::mqtt::rack`); it is
        // sized for this many hosts. Message sizes do not grow with the host count: every
        // message is one host's.
        issues.check(
            remote.len() <= crate::remote::config::MAX_HOSTS,
            "cdu.hosts",
            format!(
                "at most {} remote hosts over all CDUs, got {}",
                crate::remote::config::MAX_HOSTS,
                remote.len()
            ),
        );
        // A simulated rack's hosts publish the wire format, which carries at most
        // `wire::MAX_GPUS` GPUs per message.
        if let Some(sim) = self.simulator.as_ref().filter(|s| !s.hosts.is_empty()) {
            issues.check(
                sim.gpus_per_host as usize <= crate::wire::MAX_GPUS,
                "simulator.gpus_per_host",
                format!(
                    "at most {} GPUs per host in a simulated rack (the rack wire format's limit \
                     per message, docs/mqtt.md), got {}",
                    crate::wire::MAX_GPUS,
                    sim.gpus_per_host
                ),
            );
        }
        if let Some(r) = &self.rack {
            r.validate("rack", self.control.period_ms, issues);
        }
    }

    /// The folder relative paths in this file resolve against.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }

    /// The state directory (spool, recorded power limits), resolved like every other path.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.site.state_dir)
    }

    /// Resolves a path from the configuration against the configuration file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir().join(p)
        }
    }

    /// The firmware profiles folder, resolved.
    pub fn profiles_path(&self) -> PathBuf {
        self.resolve(&self.site.profiles_dir)
    }

    /// The sections a rehearsal simulates (`run --rehearse`).
    pub fn rehearsed(&self) -> crate::sim::rehearsal::Configured<'_> {
        crate::sim::rehearsal::Configured {
            file: &self.path,
            cdus: &self.cdus,
            gpus: &self.gpus,
            simulator: self.simulator.as_ref(),
        }
    }
}

/// What changed between two versions of a configuration file, one entry per dotted key
/// (`control.setpoint: 55.0 → 60.0`, `cdu[0].address: added …`), for the reload log line.
/// Secret values (`token`, `password`) are never shown. Text that does not parse gives an
/// empty list: a reload of such a file is refused before this is asked.
pub fn changed_keys(old: &str, new: &str) -> Vec<String> {
    fn flatten(
        prefix: &str,
        v: &toml::Value,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    flatten(&format!("{prefix}[{i}]"), v, out);
                }
            }
            other => {
                let last = prefix.rsplit('.').next().unwrap_or(prefix);
                let shown = if matches!(last, "token" | "password") {
                    "(secret)".to_string()
                } else {
                    other.to_string()
                };
                out.insert(prefix.to_string(), shown);
            }
        }
    }
    let parse = |t: &str| {
        let mut m = std::collections::BTreeMap::new();
        if let Ok(v) = t.parse::<toml::Table>() {
            flatten("", &toml::Value::Table(v), &mut m);
        }
        m
    };
    let (a, b) = (parse(old), parse(new));
    let mut out = Vec::new();
    for (k, va) in &a {
        match b.get(k) {
            Some(vb) if vb != va => out.push(format!("{k}: {va} → {vb}")),
            Some(_) => {}
            None => out.push(format!("{k}: {va} → (removed)")),
        }
    }
    for (k, vb) in &b {
        if !a.contains_key(k) {
            out.push(format!("{k}: (added) {vb}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
