//! A rehearsal of a production configuration on the simulator (`coolantd run --rehearse`).
//!
//! Every `[[cdu]]` keeps its profile, unit id, roles and control settings, but is served by a
//! simulated CDU of its own (its profile, its unit id) on a loopback port the operating system
//! picks; the GPUs are simulated boards of the configured profile and count. All of them sit
//! on one simulated plant. The daemon's Modbus clients are built only from
//! [`Rehearsal::cdu_targets`], which carries no configured address at all, so a rehearsal
//! cannot reach a real CDU whatever the configuration says.

use super::{build_plant, cdu_server, CduState, Plant, SimConfig, SimGpus};
use crate::collect::config::{GpuBackendKind, GpusConfig};
use crate::collect::modbus::config::{CduConfig, CduTransport};
use crate::collect::GpuBackend;
use crate::profile::cdu::CduProfile;
use crate::profile::gpu::GpuProfiles;
use crate::validate::{ConfigError, ConfigIssue};
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// GPUs per host when neither `gpus.indices` nor `[simulator]` says how many: an HGX board.
const DEFAULT_GPUS_PER_HOST: u32 = 8;

/// The sections of the site configuration a rehearsal simulates; the service fills it from its
/// assembled configuration.
#[derive(Debug, Clone, Copy)]
pub struct Configured<'a> {
    /// The configuration file, for error messages.
    pub file: &'a Path,
    pub cdus: &'a [CduConfig],
    pub gpus: &'a GpusConfig,
    pub simulator: Option<&'a SimConfig>,
}

/// A running rehearsal: the plant, one simulated CDU server per `[[cdu]]`, the simulated GPUs.
pub struct Rehearsal {
    plant: Arc<Mutex<Plant>>,
    gpus: Option<Arc<SimGpus>>,
    /// The simulated address of each configured CDU, in configuration order.
    addrs: Vec<SocketAddr>,
    servers: Vec<JoinHandle<()>>,
    stepper: Option<JoinHandle<()>>,
    time_scale: f64,
}

impl Rehearsal {
    /// Checks that every CDU profile can be simulated, builds the plant and serves each CDU.
    /// With `autostep` the plant advances in real time (× the `[simulator]` time scale, when
    /// the configuration has one).
    pub async fn start(
        cfg: Configured<'_>,
        host: &str,
        gpu_profiles: &GpuProfiles,
        cdu_profiles: &BTreeMap<String, Arc<CduProfile>>,
        autostep: bool,
    ) -> anyhow::Result<Rehearsal> {
        let mut sc = cfg.simulator.cloned().unwrap_or_default();
        let (board, count) = board_and_count(cfg, gpu_profiles, &sc)?;
        let mut hosts: Vec<String> = Vec::new();
        for c in cfg.cdus {
            let hs = if c.hosts.is_empty() {
                vec![host.to_string()]
            } else {
                c.hosts.clone()
            };
            for h in hs {
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
        }
        sc.hosts = hosts;
        sc.gpus_per_host = count;
        sc.gpu_profile = board.name.clone();
        let plant = Arc::new(Mutex::new(build_plant(&sc, board, host)));
        for (i, c) in cfg.cdus.iter().enumerate() {
            check_simulable(
                cfg,
                i,
                &cdu_profiles[&c.name],
                &*plant.lock().unwrap_or_else(|e| e.into_inner()),
            )?;
        }
        let mut addrs = Vec::new();
        let mut servers = Vec::new();
        for c in cfg.cdus {
            let state: Arc<Mutex<dyn CduState>> = plant.clone();
            // Port 0: the operating system picks a free loopback port, so a rehearsal never
            // clashes with `coolantd sim` or another rehearsal.
            let (addr, task) = cdu_server::spawn_unit(
                "127.0.0.1:0",
                c.unit_id,
                cdu_profiles[&c.name].clone(),
                state,
            )
            .await
            .with_context(|| format!("serving the simulated CDU {} on loopback", c.name))?;
            tracing::warn!(
                cdu = %c.name,
                simulated_at = %addr,
                configured = %transport_text(&c.transport),
                unit_id = c.unit_id,
                profile = %c.profile,
                "REHEARSAL: this CDU is simulated; the configured address is never contacted"
            );
            addrs.push(addr);
            servers.push(task);
        }
        let gpus = (cfg.gpus.backend != GpuBackendKind::None)
            .then(|| Arc::new(SimGpus::new(plant.clone(), None)));
        tracing::warn!(
            gpus = gpus.as_ref().map_or(0, |_| count as usize * sc.hosts.len()),
            board = %board.name,
            "REHEARSAL: the GPUs are simulated (NVML is not opened); pump speeds and power caps \
             are written to the simulator only"
        );
        let stepper = autostep
            .then(|| super::runtime::spawn_stepper(plant.clone(), sc.step(), sc.time_scale));
        Ok(Rehearsal {
            plant,
            gpus,
            addrs,
            servers,
            stepper,
            time_scale: sc.time_scale,
        })
    }

    /// The configured CDUs as the daemon's Modbus clients must reach them: each one's
    /// simulated server over Modbus TCP on loopback, with its own unit id and timeout. The
    /// configured transport is not copied, so no client can be built for it.
    pub fn cdu_targets(&self, cdus: &[CduConfig]) -> Vec<CduConfig> {
        cdus.iter()
            .zip(&self.addrs)
            .map(|(c, addr)| CduConfig {
                name: c.name.clone(),
                profile: c.profile.clone(),
                transport: CduTransport::Tcp {
                    address: addr.to_string(),
                },
                unit_id: c.unit_id,
                timeout_ms: c.timeout_ms,
                hosts: c.hosts.clone(),
            })
            .collect()
    }

    /// The simulated GPUs; `None` when the configuration has `gpus.backend = "none"`.
    pub fn gpus(&self) -> Option<Arc<dyn GpuBackend>> {
        self.gpus.clone().map(|g| g as Arc<dyn GpuBackend>)
    }

    /// The plant, for tests.
    pub fn plant(&self) -> &Arc<Mutex<Plant>> {
        &self.plant
    }

    /// The simulated address of each configured CDU, in configuration order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn time_scale(&self) -> f64 {
        self.time_scale
    }
}

impl Drop for Rehearsal {
    fn drop(&mut self) {
        for t in &self.servers {
            t.abort();
        }
        if let Some(s) = self.stepper.take() {
            s.abort();
        }
    }
}

fn transport_text(t: &CduTransport) -> String {
    match t {
        CduTransport::Tcp { address } => address.clone(),
        CduTransport::Rtu { device, .. } => device.display().to_string(),
    }
}

/// The board and the number of GPUs per host to simulate: `gpus.default_profile` (else the
/// `[simulator]` board, else the only GPU profile there is), `gpus.indices` (else the
/// `[simulator]` count, else 8).
fn board_and_count<'a>(
    cfg: Configured<'_>,
    gpu_profiles: &'a GpuProfiles,
    sc: &SimConfig,
) -> Result<(&'a crate::profile::gpu::GpuProfile, u32), ConfigError> {
    let name = cfg
        .gpus
        .default_profile
        .clone()
        .or_else(|| cfg.simulator.map(|s| s.gpu_profile.clone()))
        .or_else(|| {
            (gpu_profiles.len() == 1)
                .then(|| gpu_profiles.iter().next().map(|p| p.name.clone()))
                .flatten()
        });
    let board = name.as_deref().and_then(|n| gpu_profiles.by_name(n));
    let Some(board) = board else {
        let names: Vec<&str> = gpu_profiles.iter().map(|p| p.name.as_str()).collect();
        return Err(ConfigError {
            file: cfg.file.to_path_buf(),
            issues: vec![ConfigIssue {
                key: "gpus.default_profile".into(),
                expected: format!(
                    "the GPU board to rehearse on (a rehearsal does not open NVML, so it cannot \
                     detect the board): set gpus.default_profile to one of {}",
                    names.join(", ")
                ),
            }],
        });
    };
    let count = if !cfg.gpus.indices.is_empty() {
        cfg.gpus.indices.len() as u32
    } else if cfg.simulator.is_some() {
        sc.gpus_per_host
    } else {
        DEFAULT_GPUS_PER_HOST
    };
    Ok((board, count))
}

/// Refuses a CDU profile with a register whose role the simulated CDU cannot serve, naming
/// the register and the role. Registers without a role (status bits the controller only
/// records) are served as 0.
pub fn check_simulable(
    cfg: Configured<'_>,
    index: usize,
    profile: &CduProfile,
    state: &dyn CduState,
) -> Result<(), ConfigError> {
    let issues: Vec<ConfigIssue> = profile
        .registers
        .iter()
        .filter_map(|r| {
            let role = r.role?;
            state.read(role).is_none().then(|| ConfigIssue {
                key: format!("cdu[{index}].profile"),
                expected: format!(
                    "a CDU profile the simulator can serve for a rehearsal, but register `{}` \
                     of profile `{}` has role `{role}`, which the simulated CDU does not model",
                    r.name, profile.name
                ),
            })
        })
        .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ConfigError {
            file: cfg.file.to_path_buf(),
            issues,
        })
    }
}
