//! The daemon: collectors → control core → actuators and sinks, once per control period.
//!
//! - this file: [`Daemon`], what it holds, how it is built from a configuration and reloaded;
//! - [`tick`]: one cycle as four steps, collect → decide → actuate → publish, at a [`Now`]
//!   passed in, so the closed-loop tests drive the real daemon (real Modbus TCP to the
//!   simulated CDU, real sinks) in lockstep with the plant, as fast as the machine allows;
//! - [`actuate`]: the only place that writes to hardware (power caps, CDU writes, safe
//!   outputs, restoring limits);
//! - `links`: the tick's side of the CDU pollers; `rack`: the tick's side of the hosts a CDU
//!   cools over MQTT; `reload`: a new configuration applied without stopping the loop;
//! - [`serve`]: the service loop around the tick: the period timer, signals, systemd
//!   notification and the live status line.

pub mod actuate;
mod links;
mod rack;
mod reload;
pub mod serve;
pub mod tick;

pub use crate::profile::LoadedProfiles;
pub use crate::service::preflight::load_profiles;
pub use actuate::restore_recorded;
pub use tick::Now;

use links::{spawn_links, LinkState};
use rack::Rack;

use crate::collect::{BoardFacts, GpuBackend};
use crate::config::{Config, GpuBackendKind};
use crate::control::{CduSetup, Controller};
use crate::link::mqtt::sparkplug::SparkplugSink;
use crate::link::mqtt::{CommandRequest, MqttSink};
use crate::model::{
    ActuationOutcome, CduLinkStatus, CduSample, CduStatus, GpuKey, GpuSample, GpuSlowSample,
    GpuStatic, GpuStatus, RegisterFault, Role, Snapshot,
};
use crate::profile::gpu::GpuProfiles;
use crate::service::cdu_link::{CduLink, Report};
use crate::service::limits::LimitStore;
use crate::service::loop_alarms::LoopAlarms;
use crate::service::sink_alarms::SinkAlarms;
use crate::sim::{Rehearsal, SimRuntime};
use crate::sink::influx::InfluxSink;
use crate::units::{Percent, Watts};
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// How the daemon was asked to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides `site.dry_run` to true (never to false).
    pub dry_run: bool,
    /// Steps the simulated plant from a background task in real time (the service); tests
    /// step it themselves.
    pub sim_autostep: bool,
    /// Starts the configured sinks (InfluxDB, MQTT) and the HTTP endpoint.
    pub sinks: bool,
    /// Rehearses the configuration on the simulator (`run --rehearse`): every CDU and GPU is
    /// simulated, and the outputs are written to the simulator (dry run off).
    pub rehearse: bool,
}

/// Opens the configured GPU backend; falls back to the simulator's GPUs only where the
/// configuration allows it, and says so loudly.
pub fn open_gpus(
    cfg: &Config,
    host: &str,
    profiles: &GpuProfiles,
    sim: Option<&SimRuntime>,
) -> anyhow::Result<Option<Arc<dyn GpuBackend>>> {
    open_gpu_backend(&cfg.gpus, &cfg.path, host, profiles, sim)
}

/// [`open_gpus`] for any file with a `[gpus]` section (the daemon's, the host agent's);
/// `file` is named in errors.
pub fn open_gpu_backend(
    gpus: &crate::config::GpusConfig,
    file: &std::path::Path,
    host: &str,
    profiles: &GpuProfiles,
    sim: Option<&SimRuntime>,
) -> anyhow::Result<Option<Arc<dyn GpuBackend>>> {
    match gpus.backend {
        GpuBackendKind::None => Ok(None),
        GpuBackendKind::Simulated => {
            let sim = sim.context("gpus.backend = \"simulated\" needs a [simulator] section")?;
            Ok(Some(sim.gpus()))
        }
        GpuBackendKind::Nvml => match crate::collect::nvml::init() {
            Ok(nvml) => {
                let facts_for = |board: &str| -> Option<BoardFacts> {
                    profiles.board_facts_for(board, gpus.default_profile.as_deref())
                };
                let backend =
                    crate::collect::nvml::NvmlBackend::open(nvml, host, &gpus.indices, &facts_for)?;
                Ok(Some(Arc::new(backend)))
            }
            Err(e) if gpus.fallback_to_simulated => {
                let sim = sim.context(
                    "gpus.fallback_to_simulated is set, but there is no [simulator] section to fall back to",
                )?;
                tracing::warn!(error = %e, "NVML is not available; running on SIMULATED GPUs as gpus.fallback_to_simulated allows");
                Ok(Some(sim.gpus()))
            }
            // A host without a working driver is a configuration to fix, not a fault a
            // restart cures: a ConfigError makes `run` exit 78 and systemd stop.
            Err(e) => Err(crate::config::ConfigError {
                file: file.to_path_buf(),
                issues: vec![crate::config::ConfigIssue {
                    key: "gpus.backend".into(),
                    expected: format!(
                        "NVML for backend = \"nvml\", but {e}. Install the NVIDIA driver \
                         (nvidia-smi must work); or rehearse this configuration on simulated \
                         GPUs and CDUs: coolantd run --config {} --rehearse; or try coolantd \
                         without GPUs: coolantd run --config \
                         /usr/share/doc/coolantd/examples/sim.toml (config/sim.toml in the \
                         source tree: gpus.backend = \"simulated\" with a [simulator] section; \
                         gpus.fallback_to_simulated = true falls back to it for demos)",
                        file.display()
                    ),
                }],
            }
            .into()),
        },
    }
}

/// The daemon's state between ticks.
pub struct Daemon {
    cfg: Config,
    host: String,
    dry_run: bool,
    sim: Option<SimRuntime>,
    /// The simulated CDUs and GPUs of a rehearsal; the only peers the daemon then reaches.
    rehearsal: Option<Rehearsal>,
    gpus: Option<Arc<dyn GpuBackend>>,
    inventory: Vec<GpuStatic>,
    /// One poller task per CDU, in configuration order, and the tick's bookkeeping for each.
    links: Vec<CduLink>,
    link_state: Vec<LinkState>,
    /// Bumped when a reload replaces the pollers; reports of older ones are ignored.
    link_generation: u64,
    reports_tx: mpsc::UnboundedSender<(usize, u64, Report)>,
    reports_rx: mpsc::UnboundedReceiver<(usize, u64, Report)>,
    next_write_id: u64,
    /// Overrides the tick's budget for CDUs (lockstep tests); otherwise half the period.
    cdu_budget_override: Option<Duration>,
    last_tick_took: Option<Duration>,
    overruns: u64,
    loop_alarms: LoopAlarms,
    controller: Controller,
    outcomes: Vec<ActuationOutcome>,
    limits: Option<LimitStore>,
    influx: Option<InfluxSink>,
    mqtt: Option<MqttSink>,
    commands: Option<mpsc::Receiver<CommandRequest>>,
    /// The Sparkplug B edge node (`[mqtt.sparkplug]`) and its commands (NCMD).
    sparkplug: Option<SparkplugSink>,
    sparkplug_commands: Option<mpsc::Receiver<CommandRequest>>,
    slow: Arc<Mutex<Vec<GpuSlowSample>>>,
    slow_task: Option<tokio::task::JoinHandle<()>>,
    snapshot_tx: watch::Sender<Arc<Snapshot>>,
    tick: u64,
    last: Option<Arc<Snapshot>>,
    sink_alarms: SinkAlarms,
    /// GPUs whose power cap NVML refused as not supported, with its words: not asked again.
    caps_not_supported: BTreeMap<GpuKey, String>,
    /// The GPUs of other hosts, heard over MQTT (a `[[cdu]]`'s `hosts`), and their caps.
    rack: Option<Rack>,
    /// The GPU profiles, for the plate model of GPUs the agents announce while running.
    gpu_profiles: GpuProfiles,
}

impl Daemon {
    /// Builds every part from a validated configuration. Starts the simulator (when
    /// configured), the slow GPU reader and, with `opts.sinks`, the sinks.
    pub async fn build(cfg: Config, opts: &RunOptions) -> anyhow::Result<Daemon> {
        let host = cfg.site.host_name();
        let profiles = load_profiles(&cfg)?;
        crate::service::preflight::check_startup(&cfg, opts.sinks)?;
        let rehearsal = if opts.rehearse {
            tracing::warn!(
                config = %cfg.path.display(),
                "REHEARSAL: running this configuration on the simulator; no real CDU or GPU is touched"
            );
            Some(
                Rehearsal::start(
                    cfg.rehearsed(),
                    &host,
                    &profiles.gpu,
                    &profiles.cdu,
                    opts.sim_autostep,
                )
                .await
                .context("starting the rehearsal")?,
            )
        } else {
            None
        };
        // A rehearsal writes, but only to the simulator: that is what it rehearses.
        let dry_run = rehearsal.is_none() && (cfg.site.dry_run || opts.dry_run);
        let sim = match &cfg.simulator {
            Some(_) if rehearsal.is_some() => None,
            // The plant runs in another process; only its time scale applies here.
            Some(sc) if sc.external => None,
            Some(sc) => Some(
                SimRuntime::start(
                    sc,
                    &cfg.path,
                    &cfg.profiles_path(),
                    &host,
                    &profiles.gpu,
                    opts.sim_autostep,
                )
                .await
                .context("starting the plant simulator")?,
            ),
            None => None,
        };
        let gpus = match &rehearsal {
            Some(r) => r.gpus(),
            None => open_gpus(&cfg, &host, &profiles.gpu, sim.as_ref())?,
        };
        let inventory = gpus.as_ref().map(|g| g.inventory()).unwrap_or_default();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let targets = match &rehearsal {
            Some(r) => r.cdu_targets(&cfg.cdus),
            None => cfg.cdus.clone(),
        };
        let links = spawn_links(&targets, &profiles, 0, &reports_tx);
        let link_state = links.iter().map(|_| LinkState::default()).collect();
        crate::service::preflight::check_setpoint_for_gpus(&cfg, &inventory)?;
        let mut controller = Controller::new(
            &cfg.control,
            cdu_setups(&cfg, &host, &profiles),
            inventory.clone(),
        );
        set_plate_models(&mut controller, &cfg, &host, &profiles.gpu, &inventory);
        // A rehearsal's GPUs are simulated: their limits need no record, and the production
        // state folder is not touched.
        let mut limits = if dry_run || rehearsal.is_some() {
            None
        } else {
            Some(
                LimitStore::open(&cfg.state_dir())
                    .with_context(|| "opening the recorded power limits")?,
            )
        };
        // Limits an earlier run recorded but never restored (it crashed, and no ExecStopPost
        // ran) are caps of that run: put the originals back before control starts, or the cap
        // loop would take a crash-time cap for the GPU's own limit.
        if let (Some(store), Some(g)) = (limits.as_mut(), gpus.as_ref()) {
            if !store.is_empty() {
                tracing::warn!(
                    recorded = store.recorded().count(),
                    "power limits left by an earlier run; restoring them before control starts"
                );
                restore_recorded(store, g.as_ref(), &inventory);
            }
        }
        let mut sparkplug = None;
        let mut sparkplug_commands = None;
        let (influx, mqtt, commands) = if opts.sinks {
            let influx = match &cfg.influx {
                Some(ic) => Some(
                    InfluxSink::start(ic, &cfg.state_dir())
                        .context("starting the InfluxDB sink")?,
                ),
                None => None,
            };
            let (mqtt, commands) = match &cfg.mqtt {
                Some(mc) => {
                    let (m, rx) =
                        MqttSink::start(&mc.resolved(cfg.base_dir()), &cfg.site.name, &host)
                            .context("starting the MQTT sink")?;
                    (Some(m), Some(rx))
                }
                None => (None, None),
            };
            if let Some((mc, spb)) = cfg
                .mqtt
                .as_ref()
                .and_then(|mc| Some((mc, mc.sparkplug.as_ref().filter(|s| s.enabled)?)))
            {
                let (s, rx) = SparkplugSink::start(&mc.resolved(cfg.base_dir()), spb, &host)
                    .context("starting the Sparkplug B edge node")?;
                sparkplug = Some(s);
                sparkplug_commands = Some(rx);
            }
            (influx, mqtt, commands)
        } else {
            (None, None, None)
        };
        let rack = build_rack(&cfg, &host, opts.sinks && rehearsal.is_none())?;
        let slow = Arc::new(Mutex::new(Vec::new()));
        let slow_task = gpus
            .as_ref()
            .map(|g| spawn_slow_reader(g.clone(), cfg.gpus.slow_period(), slow.clone()));
        let (snapshot_tx, _) = watch::channel(Arc::new(empty_snapshot(&cfg, &host, dry_run)));
        if dry_run {
            tracing::warn!("DRY RUN: decisions are logged and published as \"would set\"; nothing is written to any GPU or CDU");
        }
        Ok(Daemon {
            cfg,
            host,
            dry_run,
            sim,
            rehearsal,
            gpus,
            inventory,
            links,
            link_state,
            link_generation: 0,
            reports_tx,
            reports_rx,
            next_write_id: 0,
            cdu_budget_override: None,
            last_tick_took: None,
            overruns: 0,
            loop_alarms: LoopAlarms::default(),
            controller,
            outcomes: Vec::new(),
            limits,
            influx,
            mqtt,
            commands,
            sparkplug,
            sparkplug_commands,
            slow,
            slow_task,
            snapshot_tx,
            tick: 0,
            last: None,
            sink_alarms: SinkAlarms::default(),
            caps_not_supported: BTreeMap::new(),
            rack,
            gpu_profiles: profiles.gpu.clone(),
        })
    }

    fn default_source(&self) -> crate::model::Source {
        match self.cfg.gpus.backend {
            GpuBackendKind::Nvml if self.sim.is_none() && self.rehearsal.is_none() => {
                crate::model::Source::Nvml
            }
            _ => crate::model::Source::Simulated,
        }
    }

    /// The rehearsal's simulator, when the daemon rehearses (`run --rehearse`).
    pub fn rehearsal(&self) -> Option<&Rehearsal> {
        self.rehearsal.as_ref()
    }

    /// The simulator, when one runs in-process (tests use it to step the plant and inject faults).
    pub fn sim(&self) -> Option<&SimRuntime> {
        self.sim.as_ref()
    }

    /// Subscribes to the snapshot published after every tick.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot_tx.subscribe()
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn controller(&mut self) -> &mut Controller {
        &mut self.controller
    }

    /// Sets how long a tick waits for its CDUs (polls and writes together). The service
    /// uses half the control period; a test that steps the plant in lockstep sets a budget
    /// no healthy CDU misses, so that every poll reads the plant of its own tick.
    pub fn set_cdu_budget(&mut self, budget: Duration) {
        self.cdu_budget_override = Some(budget);
    }

    /// The control period in wall time (a sped-up simulator shrinks it).
    pub fn wall_period(&self) -> Duration {
        let scale = self.cfg.simulator.as_ref().map_or(1.0, |s| s.time_scale);
        self.cfg.control.period().div_f64(scale)
    }

    /// For a rack controller, how long after each wall-clock boundary of the period its ticks
    /// fall (`remote::phase`: the agents publish on the boundaries); `None` without remote
    /// hosts, whose ticks keep no particular phase.
    pub fn rack_phase(&self) -> Option<Duration> {
        self.rack.as_ref()?;
        Some(self.cfg.rack_or_default().decide_offset(self.wall_period()))
    }

    /// How long a tick waits for its CDUs: half the period leaves the other half for GPU
    /// reads, power caps and sinks, so a slow CDU cannot stretch the tick past its period.
    pub fn cdu_budget(&self) -> Duration {
        self.cdu_budget_override
            .unwrap_or_else(|| self.wall_period() / 2)
    }

    /// Flushes and stops the sinks and background tasks.
    pub async fn shutdown(mut self, deadline: Duration) {
        if let Some(t) = self.slow_task.take() {
            t.abort();
        }
        if let Some(r) = self.rack.as_mut() {
            r.shutdown().await;
        }
        if let Some(m) = self.mqtt.take() {
            m.shutdown().await;
        }
        if let Some(s) = self.sparkplug.take() {
            s.shutdown().await;
        }
        if let Some(i) = self.influx.take() {
            i.shutdown(deadline).await;
        }
        if let Some(s) = self.sim.take() {
            s.stop();
        }
        self.rehearsal.take();
    }

    pub fn last_snapshot(&self) -> Option<Arc<Snapshot>> {
        self.last.clone()
    }

    pub fn host(&self) -> &str {
        &self.host
    }
}

/// The rack side, when a CDU lists hosts other than this one; its MQTT session only with
/// the sinks (a daemon a test builds without sinks hears nothing, and its remote GPUs are
/// lost inputs).
fn build_rack(cfg: &Config, host: &str, sinks: bool) -> anyhow::Result<Option<Rack>> {
    let hosts = cfg.remote_hosts();
    if hosts.is_empty() {
        return Ok(None);
    }
    let link = match (&cfg.mqtt, sinks) {
        (Some(mc), true) => Some(
            crate::link::mqtt::rack::RackLink::start(&mc.resolved(cfg.base_dir()), host)
                .context("starting the rack's MQTT session")?,
        ),
        _ => None,
    };
    tracing::info!(hosts = ?hosts, "rack: hearing the GPUs of these hosts over MQTT");
    let scale = cfg.simulator.as_ref().map_or(1.0, |s| s.time_scale);
    Ok(Some(Rack::new(&cfg.rack_or_default(), hosts, link, scale)))
}

pub(crate) fn spawn_slow_reader(
    gpus: Arc<dyn GpuBackend>,
    period: Duration,
    out: Arc<Mutex<Vec<GpuSlowSample>>>,
) -> tokio::task::JoinHandle<()> {
    let start = Instant::now();
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(period);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            let g = gpus.clone();
            // Energy and violation counters cost milliseconds per GPU: a blocking thread keeps
            // them off the control task.
            match tokio::task::spawn_blocking(move || g.read_slow(start.elapsed())).await {
                Ok(samples) => {
                    if let Ok(mut v) = out.lock() {
                        *v = samples;
                    }
                }
                Err(e) => tracing::error!(error = %e, "slow GPU reader failed"),
            }
        }
    })
}

/// Gives each CDU's pump loop the plate model of the GPUs it cools, for the heat-load
/// feed-forward: its local GPUs and, on a rack, the GPUs its agents have announced (called
/// again whenever their facts change). A CDU whose GPUs use different profiles, or none this
/// host knows, gets none: its feed-forward stays off and says so.
pub fn set_plate_models(
    ctl: &mut Controller,
    cfg: &Config,
    host: &str,
    profiles: &GpuProfiles,
    inventory: &[crate::model::GpuStatic],
) {
    for c in &cfg.cdus {
        let hosts = if c.hosts.is_empty() {
            vec![host.to_string()]
        } else {
            c.hosts.clone()
        };
        let mut names: Vec<&str> = inventory
            .iter()
            .filter(|g| hosts.contains(&g.key.host))
            .map(|g| g.profile.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        let model = match names.as_slice() {
            [one] => profiles.by_name(one).map(|p| p.thermal.plate_model()),
            _ => None,
        };
        match (&model, names.is_empty()) {
            (Some(_), _) => {
                tracing::info!(cdu = %c.name, profile = names[0], gpus = inventory.iter().filter(|g| hosts.contains(&g.key.host)).count(), "feed-forward on the plate model of this CDU's GPUs")
            }
            // A rack controller hears its GPUs' boards only from the agents' facts: none yet.
            (None, true) if !c.hosts.is_empty() => tracing::info!(
                cdu = %c.name,
                "feed-forward off until the agents' facts name this CDU's GPU boards"
            ),
            (None, _) => {
                tracing::warn!(cdu = %c.name, profiles = ?names, "no single GPU thermal model for this CDU: feed-forward off")
            }
        }
        ctl.set_plate_model(&c.name, model);
    }
}

/// The control core's view of each configured CDU.
pub fn cdu_setups(cfg: &Config, host: &str, profiles: &LoadedProfiles) -> Vec<CduSetup> {
    cfg.cdus
        .iter()
        .map(|c| {
            let p = &profiles.cdu[&c.name];
            let (pump_min, pump_max) = p.pump_limits().unwrap_or((Percent(0.0), Percent(100.0)));
            CduSetup {
                name: c.name.clone(),
                hosts: if c.hosts.is_empty() {
                    vec![host.to_string()]
                } else {
                    c.hosts.clone()
                },
                pump_min,
                pump_max,
                roles: p.roles(),
            }
        })
        .collect()
}

fn cdu_status(c: &CduSample) -> CduStatus {
    CduStatus {
        name: c.cdu.clone(),
        supply: c.worst(Role::SupplyTemperature),
        return_: c.worst(Role::ReturnTemperature),
        flow: c.worst(Role::Flow),
        differential_pressure: c.worst(Role::DifferentialPressure),
        pump_command: c.values(Role::PumpSpeedCommand).next(),
        pump_feedback: c.worst(Role::PumpSpeedFeedback),
        leak: c.worst(Role::Leak).map(|v| v != 0.0),
        remote_enable: c.values(Role::RemoteEnable).next().map(|v| v != 0.0),
        faults: c
            .registers
            .iter()
            .filter_map(|r| {
                r.value
                    .as_ref()
                    .err()
                    .map(|e| RegisterFault::new(&r.name, e))
            })
            .collect(),
        link: CduLinkStatus::default(),
    }
}

fn gpu_status(inventory: &[GpuStatic], s: &GpuSample) -> Option<GpuStatus> {
    let st = inventory.iter().find(|st| st.key == s.key)?;
    Some(GpuStatus {
        key: s.key.clone(),
        uuid: st.uuid.clone(),
        name: st.name.clone(),
        core: s.core.map(|c| c.0),
        hbm: s.hbm.map(|c| c.0),
        power: s.power_instant.or(s.power_average).map(|w| w.0),
        limit: s.enforced_limit.map(|w: Watts| w.0),
        margin_to_slowdown: s.core.map(|c| c.margin_to(st.slowdown).0),
    })
}

fn empty_snapshot(cfg: &Config, host: &str, dry_run: bool) -> Snapshot {
    // Built once at start-up, before any tick: the only wall-clock read outside a `Now`.
    let time_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    Snapshot::before_first_tick(&cfg.site.name, host, dry_run, cfg.control.setpoint, time_ns)
}

/// A one-line summary of a snapshot: the terminal status line and systemd's STATUS=.
pub fn status_line(s: &Snapshot) -> String {
    let hottest = s
        .gpus
        .iter()
        .filter_map(|g| g.core.map(|c| (c, &g.key)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(c, k)| format!("hottest {k} {c:.1}°C"))
        .unwrap_or_else(|| "no GPU reading".into());
    let cdu = s
        .cdus
        .first()
        .map(|c| {
            let f =
                |v: Option<f64>, unit: &str| v.map_or("?".to_string(), |v| format!("{v:.1}{unit}"));
            format!(
                "{}: supply {} return {} flow {} pump {}",
                c.name,
                f(c.supply, "°C"),
                f(c.return_, "°C"),
                f(c.flow, "l/min"),
                f(c.pump_feedback.or(c.pump_command), "%")
            )
        })
        .unwrap_or_else(|| "no CDU".into());
    let alarms = if s.alarms.is_empty() {
        String::new()
    } else {
        format!(" | {} alarm(s)", s.alarms.len())
    };
    format!(
        "{hottest} (setpoint {:.1}°C) | {cdu} | {} {}{}{alarms}",
        s.setpoint,
        s.state,
        s.mode,
        if s.dry_run { " DRY-RUN" } else { "" }
    )
}
