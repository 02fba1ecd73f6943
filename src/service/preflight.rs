//! Checks of a configuration that need more than the file itself: the firmware profiles it
//! names, the secret files it points to, and what the daemon would do with it. Shared by
//! `check-config`, `run` and reload, so that whatever `run` would refuse, `check-config`
//! refuses first, with the same message.

use crate::config::{Config, ConfigError, ConfigIssue, GpuBackendKind};
use crate::profile::gpu::GpuProfiles;
use std::path::Path;

/// One issue in the configuration file itself.
fn refuse(cfg: &Config, key: impl Into<String>, expected: impl Into<String>) -> ConfigError {
    ConfigError {
        file: cfg.path.clone(),
        issues: vec![ConfigIssue {
            key: key.into(),
            expected: expected.into(),
        }],
    }
}

/// `site.profiles_dir` must be a folder; the error names the configuration file and the key
/// rather than only the folder, so the reader knows which line to fix.
pub fn check_profiles_dir(cfg: &Config, dir: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(refuse(
            cfg,
            "site.profiles_dir",
            format!(
                "a folder of firmware profiles (with gpu/ and cdu/ inside), but {} is not a folder",
                dir.display()
            ),
        )),
        Err(e) => Err(refuse(
            cfg,
            "site.profiles_dir",
            format!(
                "a folder of firmware profiles (with gpu/ and cdu/ inside; relative paths resolve \
                 against the configuration file's folder), but {}: {e}",
                dir.display()
            ),
        )),
    }
}

/// The GPU slowdown threshold `control.setpoint` is checked against before any GPU is open:
/// the simulator's profile when the GPUs are simulated, otherwise the strictest profile
/// known (the boards NVML will report are not known yet). Returns the threshold and a
/// phrase saying where it came from, or `None` when no profile is there to ask.
fn slowdown_for_config(cfg: &Config, gpu: &GpuProfiles) -> Option<(f64, String)> {
    if cfg.gpus.backend == GpuBackendKind::Simulated {
        if let Some(p) = cfg
            .simulator
            .as_ref()
            .and_then(|s| gpu.by_name(&s.gpu_profile))
        {
            return Some((
                p.thresholds.slowdown_c.get(),
                format!("the simulated GPUs' profile {}", p.name),
            ));
        }
    }
    let strictest = gpu.iter().min_by(|a, b| {
        a.thresholds
            .slowdown_c
            .get()
            .total_cmp(&b.thresholds.slowdown_c.get())
    })?;
    Some((
        strictest.thresholds.slowdown_c.get(),
        format!(
            "the strictest GPU profile, {} (the boards are known only once the GPUs are open)",
            strictest.name
        ),
    ))
}

/// `control.setpoint` obeys the same rule as a set point sent over MQTT
/// ([`crate::control::ControlConfig::check_setpoint`]), against the GPU profiles.
pub fn check_setpoint(cfg: &Config, gpu: &GpuProfiles) -> Result<(), ConfigError> {
    let Some((slowdown, source)) = slowdown_for_config(cfg, gpu) else {
        return Ok(());
    };
    cfg.control
        .check_setpoint(cfg.control.setpoint, Some(slowdown))
        .map_err(|e| {
            refuse(
                cfg,
                "control.setpoint",
                format!("a set point the GPUs allow, but {e}; the threshold is from {source}"),
            )
        })
}

/// `control.setpoint` against the GPUs actually opened (their slowdown thresholds as NVML or
/// the simulator reports them), once they are known at start-up.
pub fn check_setpoint_for_gpus(
    cfg: &Config,
    gpus: &[crate::model::GpuStatic],
) -> Result<(), ConfigError> {
    let Some(lowest) = gpus
        .iter()
        .min_by(|a, b| a.slowdown.get().total_cmp(&b.slowdown.get()))
    else {
        return Ok(());
    };
    cfg.control
        .check_setpoint(cfg.control.setpoint, Some(lowest.slowdown.get()))
        .map_err(|e| {
            refuse(
                cfg,
                "control.setpoint",
                format!(
                    "a set point the GPUs allow, but {e}; the threshold is GPU {}'s ({})",
                    lowest.key, lowest.name
                ),
            )
        })
}
