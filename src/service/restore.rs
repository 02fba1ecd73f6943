//! `coolantd restore`: put back the power limits an earlier run recorded (the unit's
//! `ExecStopPost=` runs it after every stop). The NVML setter itself is called in
//! `daemon::actuate::restore_recorded`, the one module that writes to hardware.

use super::daemon::{load_profiles, restore_recorded};
use super::limits::LimitStore;
use crate::config::Config;
use std::path::{Path, PathBuf};

/// Where `restore` finds the recorded limits, and what it knows about the site.
pub struct RestoreTarget {
    pub state_dir: PathBuf,
    pub host: String,
    /// The full configuration when it is valid: it names the GPU profiles.
    pub config: Option<Config>,
}

impl RestoreTarget {
    /// Reads `file` for `restore`. The unit's `ExecStopPost=` runs `restore` after every stop,
    /// including a start that `check-config` refused, and power limits an earlier run left
    /// lowered must come back even then. So a configuration that fails validation is read
    /// leniently for `site.state_dir` and `site.host` alone (the only keys restore needs);
    /// an unreadable file or a missing key falls back to the packaged default state folder.
    /// The second value is the reason the full configuration was not used, for the log.
    pub fn load(file: &Path) -> (RestoreTarget, Option<String>) {
        // A host agent's file (`coolantd agent`, its unit's `ExecStopPost=`) is not a daemon
        // configuration, but names the same state folder and host: restore from those.
        let agent = std::fs::read_to_string(file)
            .is_ok_and(|t| crate::config::is_agent_config(&t))
            .then(|| crate::config::AgentFile::load(file).ok())
            .flatten();
        if let Some(a) = agent {
            return (
                RestoreTarget {
                    state_dir: a.state_dir(),
                    host: a.site.host_name(),
                    config: None,
                },
                None,
            );
        }
        match Config::load(file) {
            Ok(cfg) => (
                RestoreTarget {
                    state_dir: cfg.state_dir(),
                    host: cfg.site.host_name(),
                    config: Some(cfg),
                },
                None,
            ),
            Err(e) => {
                let table = std::fs::read_to_string(file)
                    .ok()
                    .and_then(|t| t.parse::<toml::Table>().ok());
                let site = table.as_ref().and_then(|t| t.get("site"));
                let get = |k: &str| site.and_then(|s| s.get(k)).and_then(|v| v.as_str());
                let dir = Path::new(get("state_dir").unwrap_or(DEFAULT_STATE_DIR));
                // Relative paths resolve against the file's folder, as in `Config::resolve`.
                let state_dir = if dir.is_absolute() {
                    dir.to_path_buf()
                } else {
                    file.parent().unwrap_or_else(|| Path::new(".")).join(dir)
                };
                let site = crate::config::SiteConfig {
                    name: String::new(),
                    host: get("host").map(str::to_string),
                    state_dir: state_dir.clone(),
                    profiles_dir: PathBuf::new(),
                    dry_run: false,
                };
                (
                    RestoreTarget {
                        state_dir,
                        host: site.host_name(),
                        config: None,
                    },
                    Some(e.to_string()),
                )
            }
        }
    }
}

/// The state folder of the packaged unit (`StateDirectory=coolantd`), also the default of
/// `site.state_dir`.
const DEFAULT_STATE_DIR: &str = "/var/lib/coolantd";

/// Restores the power limits an earlier run recorded. Exits with an error when some could
/// not be restored, so that `ExecStopPost=` failures are visible. A valid configuration with
/// `control.power_cap.on_shutdown = "hold"` leaves them as they are unless `force` is set:
/// `ExecStopPost=` runs this after every stop and would otherwise undo the hold. An invalid
/// configuration cannot say hold reliably, so it restores (the lenient path of
/// [`RestoreTarget::load`]).
pub fn restore(target: RestoreTarget, force: bool) -> anyhow::Result<()> {
    let mut store = LimitStore::open(&target.state_dir)?;
    if store.is_empty() {
        println!(
            "no recorded power limits in {}: nothing to restore",
            target.state_dir.display()
        );
        return Ok(());
    }
    let hold = target
        .config
        .as_ref()
        .is_some_and(|cfg| !cfg.control.restore_limits_on_exit());
    if hold && !force {
        println!(
            "control.power_cap.on_shutdown = \"hold\": {} recorded power limit(s) in {} are held, not restored; run `coolantd restore --force` to put them back",
            store.recorded().count(),
            target.state_dir.display()
        );
        return Ok(());
    }
    // GPU profiles only add board facts that restoring does not need (it matches GPUs by
    // UUID): a broken profile must not keep a GPU capped.
    let profiles = target
        .config
        .as_ref()
        .and_then(|cfg| match load_profiles(cfg) {
            Ok(p) => Some((p, cfg.gpus.default_profile.clone())),
            Err(e) => {
                tracing::warn!(error = %e, "restoring without the GPU profiles");
                None
            }
        });
    let nvml = crate::collect::nvml::init()?;
    let facts_for = |board: &str| {
        let (p, default) = profiles.as_ref()?;
        p.gpu.board_facts_for(board, default.as_deref())
    };
    let gpus = crate::collect::nvml::NvmlBackend::open(nvml, &target.host, &[], &facts_for)?;
    let inventory = crate::collect::GpuBackend::inventory(&gpus);
    let total = store.recorded().count();
    let restored = restore_recorded(&mut store, &gpus, &inventory);
    println!("restored {restored} of {total} recorded power limit(s)");
    anyhow::ensure!(
        restored == total,
        "{} power limit(s) could not be restored; they stay recorded in {}",
        total - restored,
        target.state_dir.display()
    );
    Ok(())
}
