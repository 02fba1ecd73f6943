//! The configuration file of a host agent (`coolantd agent`): which host it is, its GPUs,
//! the broker it talks to and its own tuning. It shares the daemon's sections (`[site]`,
//! `[gpus]`, `[simulator]`, `[mqtt]`, `[influx]`, `[http]`, `[logging]`) and adds `[agent]`; it has no `[[cdu]]` or
//! `[control]`, because the agent controls no CDU: the controller on the broker does.

use super::{parse_toml, read_file, ConfigError, GpuBackendKind, GpusConfig, Issues};
use super::{LoggingConfig, SiteConfig};
use crate::agent::AgentSection;
use crate::link::mqtt::MqttConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole agent configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub site: SiteConfig,
    #[serde(default)]
    pub gpus: GpusConfig,
    /// Simulated GPUs for `gpus.backend = "simulated"` (tests, demos).
    pub simulator: Option<crate::sim::SimConfig>,
    /// The broker the agent publishes to and takes its caps from; required.
    pub mqtt: MqttConfig,
    /// The agent's own tuning; every key has a default, but the table must be there: it is
    /// what marks the file as an agent's.
    pub agent: AgentSection,
    /// Where the agent writes its GPUs' points and its own: the daemon's sink, spool and all.
    pub influx: Option<crate::sink::influx::InfluxConfig>,
    /// `/healthz`, `/readyz`, `/metrics` and `/status`, as the daemon serves them.
    pub http: Option<crate::service::http::HttpConfig>,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(skip)]
    pub path: PathBuf,
}

/// Whether configuration text is an agent's: it has an `[agent]` table. Text that is not
/// TOML is not an agent's (the daemon's parser then reports the syntax error).
pub fn is_agent_config(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("agent"))
}

impl AgentFile {
    /// Reads, parses and validates an agent configuration file.
    pub fn load(file: &Path) -> Result<AgentFile, ConfigError> {
        let text = read_file(file)?;
        AgentFile::parse(&text, file)
    }

    pub fn parse(text: &str, file: &Path) -> Result<AgentFile, ConfigError> {
        let mut cfg: AgentFile = parse_toml(text, file)?;
        cfg.path = file.to_path_buf();
        let mut issues = Issues::default();
        cfg.site.validate(&mut issues);
        cfg.gpus.validate(&mut issues);
        cfg.mqtt.validate("mqtt", &mut issues);
        cfg.agent.validate("agent", &mut issues);
        if let Some(x) = &cfg.influx {
            x.validate("influx", &mut issues);
        }
        if let Some(x) = &cfg.http {
            x.validate("http", &mut issues);
        }
        if let Some(sim) = &cfg.simulator {
            sim.validate("simulator", &mut issues);
        }
        // One readings message carries every GPU of the host, and the wire format caps a
        // message at `wire::MAX_GPUS` GPUs (and 8 KiB), far under the MQTT client's and
        // Mosquitto's packet limits; more GPUs could not be published at all.
        let max = crate::wire::MAX_GPUS;
        match cfg.gpus.backend {
            GpuBackendKind::Simulated => {
                if let Some(sim) = &cfg.simulator {
                    issues.check(
                        sim.gpus_per_host as usize <= max,
                        "simulator.gpus_per_host",
                        format!(
                            "at most {max} GPUs on an agent (the rack wire format's limit per \
                             message), got {}",
                            sim.gpus_per_host
                        ),
                    );
                }
            }
            _ => issues.check(
                cfg.gpus.indices.len() <= max,
                "gpus.indices",
                format!(
                    "at most {max} GPUs on an agent (the rack wire format's limit per message), \
                     got {}",
                    cfg.gpus.indices.len()
                ),
            ),
        }
        match cfg.gpus.backend {
            GpuBackendKind::Simulated if cfg.simulator.is_none() => issues.push(
                "gpus.backend",
                "a [simulator] section when the GPU backend is `simulated`",
            ),
            GpuBackendKind::None => issues.push(
                "gpus.backend",
                "`nvml` or `simulated` for an agent: an agent without GPUs has nothing to do",
            ),
            _ => {}
        }
        // These [mqtt] keys belong to the daemon's telemetry session; an agent reading them
        // would act on nothing, so a file that sets them is refused rather than ignored.
        let unused = [
            ("discovery", cfg.mqtt.discovery),
            ("sparkplug", cfg.mqtt.sparkplug.is_some()),
        ];
        for (key, set) in unused {
            issues.check(
                !set,
                format!("mqtt.{key}"),
                "no such key in an agent's file: the agent speaks only the rack wire format",
            );
        }
        cfg.logging.validate(&mut issues);
        issues.into_result(file)?;
        Ok(cfg)
    }

    /// The folder relative paths in this file resolve against.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir().join(p)
        }
    }

    /// Where the recorded original power limits live.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.site.state_dir)
    }

    /// The firmware profiles folder, resolved.
    pub fn profiles_path(&self) -> PathBuf {
        self.resolve(&self.site.profiles_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[site]
name = "rack1"
host = "node07"
[mqtt]
host = "127.0.0.1"
[agent]
"#;

    #[test]
    fn an_agent_file_is_recognised_and_takes_the_defaults() {
        assert!(is_agent_config(MINIMAL));
        assert!(!is_agent_config("[site]\nname = \"x\"\n[control]\n"));
        let cfg = AgentFile::parse(MINIMAL, Path::new("/etc/coolantd/agent.toml"))
            .expect("a minimal agent file is valid");
        assert_eq!(cfg.agent, AgentSection::default());
        assert_eq!(cfg.gpus.backend, GpuBackendKind::Nvml);
        assert_eq!(cfg.state_dir(), PathBuf::from("/var/lib/coolantd"));
    }

    #[test]
    fn bad_agent_keys_are_named_with_the_file() {
        let text = format!("{MINIMAL}period_ms = 5\nguard_critical_cut = 1.5\n");
        let e = AgentFile::parse(&text, Path::new("agent.toml"))
            .expect_err("a 5 ms tick and a 150 % cut are refused")
            .to_string();
        assert!(e.contains("agent.toml"), "{e}");
        assert!(e.contains("agent.period_ms"), "{e}");
        assert!(e.contains("agent.guard_critical_cut"), "{e}");
        let no_mqtt = "[site]\nname = \"r\"\n[agent]\n";
        let e = AgentFile::parse(no_mqtt, Path::new("agent.toml"))
            .expect_err("an agent needs a broker")
            .to_string();
        assert!(e.contains("mqtt"), "{e}");
        let discovery = MINIMAL.replace("[mqtt]\n", "[mqtt]\ndiscovery = true\n");
        let e = AgentFile::parse(&discovery, Path::new("agent.toml"))
            .expect_err("Home Assistant discovery is the daemon's")
            .to_string();
        assert!(e.contains("mqtt.discovery"), "{e}");
        let sim = format!("{MINIMAL}\n[gpus]\nbackend = \"simulated\"\n");
        let e = AgentFile::parse(&sim, Path::new("agent.toml"))
            .expect_err("simulated GPUs need a [simulator] section")
            .to_string();
        assert!(e.contains("gpus.backend"), "{e}");
    }

    #[test]
    fn more_gpus_than_one_wire_message_carries_are_refused() {
        let sim = format!(
            "{MINIMAL}\n[gpus]\nbackend = \"simulated\"\n[simulator]\ngpus_per_host = 33\n\
             gpu_profile = \"h200-sxm\"\ncdu_profile = \"sim-cdu\"\n"
        );
        let e = AgentFile::parse(&sim, Path::new("agent.toml"))
            .expect_err("33 GPUs do not fit one readings message")
            .to_string();
        assert!(e.contains("simulator.gpus_per_host"), "{e}");
        assert!(e.contains("at most 32"), "{e}");
        let indices = (0..33)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let nvml = format!("{MINIMAL}\n[gpus]\nbackend = \"nvml\"\nindices = [{indices}]\n");
        let e = AgentFile::parse(&nvml, Path::new("agent.toml"))
            .expect_err("33 NVML indices do not fit one readings message")
            .to_string();
        assert!(e.contains("gpus.indices"), "{e}");
    }
}
