//! The simulator as the daemon runs it: the plant, its stepping task, the simulated GPUs and
//! the simulated CDU's Modbus TCP server, started and stopped together.

use super::{build_plant, cdu_server, CduState, Plant, SimConfig, SimGpus};
use crate::collect::GpuBackend;
use crate::profile::cdu::CduProfile;
use crate::profile::gpu::GpuProfiles;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// A running simulator.
pub struct SimRuntime {
    plant: Arc<Mutex<Plant>>,
    gpus: Arc<SimGpus>,
    /// The CDU server task; `None` while stopped for fault injection.
    server: Mutex<Option<JoinHandle<()>>>,
    cdu_profile: Arc<CduProfile>,
    stepper: Option<JoinHandle<()>>,
    addr: SocketAddr,
    unit_id: u8,
    time_scale: f64,
}

impl SimRuntime {
    /// Builds the plant, serves its CDU on `simulator.listen` and, with `autostep`, advances
    /// it in real time (× `time_scale`) from a background task. Without `autostep` the
    /// caller steps it with [`SimRuntime::step`], as the closed-loop tests do.
    pub async fn start(
        sc: &SimConfig,
        file: &Path,
        profiles_dir: &Path,
        host: &str,
        gpu_profiles: &GpuProfiles,
        autostep: bool,
    ) -> anyhow::Result<SimRuntime> {
        let gp = gpu_profiles.by_name(&sc.gpu_profile).with_context(|| {
            format!(
                "simulator.gpu_profile: no GPU profile `{}` in the profiles folder",
                sc.gpu_profile
            )
        })?;
        let cdu_path = profiles_dir
            .join("cdu")
            .join(format!("{}.toml", sc.cdu_profile));
        let cdu_profile = Arc::new(CduProfile::load(&cdu_path)?);
        let plant = Arc::new(Mutex::new(build_plant(sc, gp, host)));
        let state: Arc<Mutex<dyn CduState>> = plant.clone();
        let (addr, server) = match cdu_server::spawn_unit(
            &sc.listen,
            sc.unit_id,
            cdu_profile.clone(),
            state,
        )
        .await
        {
            Ok(served) => served,
            // Another process holds the port (most often `coolantd sim` with the same
            // file): a restart cannot fix that, so it is a configuration error (exit 78)
            // that names the key and the holder.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let holder = sc
                    .listen
                    .parse::<SocketAddr>()
                    .ok()
                    .and_then(|a| port_holder(a.port()))
                    .map_or_else(
                        || "another process".to_string(),
                        |(pid, name)| format!("process {pid} ({name})"),
                    );
                return Err(crate::validate::ConfigError {
                    file: file.to_path_buf(),
                    issues: vec![crate::validate::ConfigIssue {
                        key: "simulator.listen".into(),
                        expected: format!(
                            "a free address for the simulated CDU, but {} is already in \
                                 use by {holder}. Stop it (a `coolantd sim` with this file \
                                 serves the same CDU), or give simulator.listen and the \
                                 [[cdu]] address another port",
                            sc.listen
                        ),
                    }],
                }
                .into());
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "simulator.listen: cannot serve the simulated CDU on {}",
                        sc.listen
                    )
                })
            }
        };
        tracing::info!(modbus = %addr, gpus = gp.name, time_scale = sc.time_scale, "plant simulator started");
        let stepper = autostep.then(|| spawn_stepper(plant.clone(), sc.step(), sc.time_scale));
        let gpus = Arc::new(SimGpus::new(plant.clone(), None));
        Ok(SimRuntime {
            plant,
            gpus,
            server: Mutex::new(Some(server)),
            cdu_profile,
            stepper,
            addr,
            unit_id: sc.unit_id,
            time_scale: sc.time_scale,
        })
    }

    /// The simulated GPUs as a GPU backend.
    pub fn gpus(&self) -> Arc<dyn GpuBackend> {
        self.gpus.clone()
    }

    /// The simulated GPUs, for fault injection.
    pub fn sim_gpus(&self) -> &SimGpus {
        &self.gpus
    }

    /// The plant, for tests and fault injection.
    pub fn plant(&self) -> &Arc<Mutex<Plant>> {
        &self.plant
    }

    /// Advances the plant by `dt` of plant time.
    pub fn step(&self, dt: Duration) {
        match self.plant.lock() {
            Ok(mut p) => p.step(dt),
            Err(e) => e.into_inner().step(dt),
        }
    }

    /// Where the simulated CDU serves Modbus TCP.
    pub fn modbus_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn time_scale(&self) -> f64 {
        self.time_scale
    }

    /// Fault injection: kills the simulated CDU's Modbus server as a crashed or powered-off
    /// CDU controller would. Aborting the serve task drops the listener and, through
    /// tokio-modbus's cancellation guard, every open connection; this waits until it has.
    pub async fn stop_server(&self) {
        let task = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    /// Fault injection: serves the simulated CDU again on the same address after
    /// [`SimRuntime::stop_server`]. Does nothing while the server runs.
    pub async fn restart_server(&self) -> std::io::Result<()> {
        if self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let state: Arc<Mutex<dyn CduState>> = self.plant.clone();
        let (_, task) = cdu_server::spawn_unit(
            &self.addr.to_string(),
            self.unit_id,
            self.cdu_profile.clone(),
            state,
        )
        .await?;
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }

    /// Stops the server and the stepping task.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for SimRuntime {
    /// A simulator that goes out of scope (a failed start-up, a finished probe) must not leave
    /// its Modbus server holding the port or its stepper running.
    fn drop(&mut self) {
        if let Some(t) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
        if let Some(s) = self.stepper.take() {
            s.abort();
        }
    }
}

pub(super) fn spawn_stepper(
    plant: Arc<Mutex<Plant>>,
    wall: Duration,
    time_scale: f64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(wall);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = tokio::time::Instant::now();
        loop {
            iv.tick().await;
            // Step by the wall time that really passed (× time_scale), so a late tick does not
            // let the plant fall behind the daemon's clock, which runs at the same scale.
            let now = tokio::time::Instant::now();
            let dt = now.duration_since(last).mul_f64(time_scale);
            last = now;
            match plant.lock() {
                Ok(mut p) => p.step(dt),
                Err(e) => e.into_inner().step(dt),
            }
        }
    })
}

/// The process listening on TCP `port`, as (pid, command name), found through /proc (Linux):
/// the socket's inode in /proc/net/tcp{,6}, then the process holding a descriptor for it.
/// `None` when it cannot be told (another OS, or a process this one may not inspect).
pub fn port_holder(port: u16) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is `ADDR:PORT` in hex; state 0A is LISTEN; field 9 is the inode.
            let listening = f.get(3) == Some(&"0A");
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if listening && local_port == Some(port) {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                let name = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "unknown".into());
                return Some((pid, name));
            }
        }
    }
    None
}
