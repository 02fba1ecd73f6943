//! The sections of the configuration that describe the site itself: identity and logging.
//! (`[gpus]` lives in `collect::config`, `[[cdu]]` in `collect::modbus::config`.)

use crate::files::check_name;
use crate::validate::Issues;
use serde::Deserialize;
use std::path::PathBuf;

/// `[site]`: who this daemon is and where it keeps its files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Site name, used in metric tags and MQTT topics.
    pub name: String,
    /// This host's name in metric tags and topics; defaults to the system host name.
    #[serde(default)]
    pub host: Option<String>,
    /// Where the spool, recorded power limits and dead letters live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Folder of firmware profiles, relative to the configuration file.
    #[serde(default = "default_profiles_dir")]
    pub profiles_dir: PathBuf,
    /// Log and publish every decision, write nothing to any GPU or CDU.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/coolantd")
}

fn default_profiles_dir() -> PathBuf {
    PathBuf::from("../firmware-profiles")
}

impl SiteConfig {
    pub(super) fn validate(&self, issues: &mut Issues) {
        check_name(&self.name, "site.name", issues);
        if let Some(h) = &self.host {
            check_name(h, "site.host", issues);
        }
    }

    /// The host name to use: configured, or the system's.
    pub fn host_name(&self) -> String {
        if let Some(h) = &self.host {
            return h.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".to_string())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable on a terminal, plain key=value lines (journald-friendly) otherwise.
    #[default]
    Auto,
    Text,
    Json,
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// A `tracing` filter such as `info` or `coolantd=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: default_level(),
            format: LogFormat::default(),
        }
    }
}

impl LoggingConfig {
    pub(super) fn validate(&self, issues: &mut Issues) {
        issues.check(
            tracing_subscriber::EnvFilter::try_new(&self.level).is_ok(),
            "logging.level",
            format!(
                "a tracing filter such as `info` or `coolantd=debug`, got `{}`",
                self.level
            ),
        );
    }
}
