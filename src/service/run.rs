//! The daemon: collectors → control core → actuators and sinks, once per control period.
//!
//! [`Daemon::tick`] is one whole cycle and takes time as an argument, so the closed-loop
//! tests drive the real daemon (real Modbus TCP to the simulated CDU, real sinks) in lockstep
//! with the plant, as fast as the machine allows. [`Daemon::run`] is the service loop around
//! it: the period timer, signals, systemd notification and the live status line.

use crate::collect::modbus::ModbusCdu;
use crate::collect::{BoardFacts, GpuBackend, GpuError};
use crate::config::{Config, GpuBackendKind};
use crate::control::{CduSetup, Controller, TickInput};
use crate::model::{
    Actuation, ActuationError, ActuationOutcome, CduLinkStatus, CduSample, CduStatus, GpuSample,
    GpuSlowSample, GpuStatic, GpuStatus, Mono, RegisterFault, Role, Snapshot, TickTiming,
};
use crate::profile::cdu::CduProfile;
use crate::profile::gpu::GpuProfiles;
use crate::service::cdu_link::{CduLink, Polled, Report};
use crate::service::limits::LimitStore;
use crate::service::loop_alarms::LoopAlarms;
use crate::service::sink_alarms::SinkAlarms;
use crate::sim::{Rehearsal, SimRuntime};
use crate::sink::influx::InfluxSink;
use crate::sink::mqtt::sparkplug::SparkplugSink;
use crate::sink::mqtt::{CommandRequest, MqttSink};
use crate::sink::schema::{self, Ctx};
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

/// Loads every firmware profile the configuration names and checks that each CDU profile
/// maps the roles the control loop needs. Used by `check-config`, `run` and reload.
pub fn load_profiles(cfg: &Config) -> Result<LoadedProfiles, crate::config::ConfigError> {
    let dir = cfg.resolve(&cfg.site.profiles_dir);
    crate::service::preflight::check_profiles_dir(cfg, &dir)?;
    let gpu = GpuProfiles::load_dir(&dir.join("gpu"))?;
    let mut cdu = BTreeMap::new();
    for (i, c) in cfg.cdus.iter().enumerate() {
        let path = dir.join("cdu").join(format!("{}.toml", c.profile));
        if !path.exists() {
            return Err(crate::config::ConfigError {
                file: cfg.path.clone(),
                issues: vec![crate::config::ConfigIssue {
                    key: format!("cdu[{i}].profile"),
                    expected: format!(
                        "the name of a CDU profile in {}, but {} does not exist",
                        dir.join("cdu").display(),
                        path.display()
                    ),
                }],
            });
        }
        let p = CduProfile::load(&path)?;
        p.require_roles(&cfg.control.required_roles())?;
        check_poll_fits(cfg, i, &p)?;
        cdu.insert(c.name.clone(), Arc::new(p));
    }
    if let Some(name) = &cfg.gpus.default_profile {
        if gpu.by_name(name).is_none() {
            return Err(crate::config::ConfigError {
                file: cfg.path.clone(),
                issues: vec![crate::config::ConfigIssue {
                    key: "gpus.default_profile".into(),
                    expected: format!(
                        "the name of a GPU profile in {}, got `{name}`",
                        dir.join("gpu").display()
                    ),
                }],
            });
        }
    }
    crate::service::preflight::check_setpoint(cfg, &gpu)?;
    Ok(LoadedProfiles { gpu, cdu })
}

/// Refuses a CDU whose timeout cannot deliver a sample the control core accepts.
///
/// A poll is one request per block of the profile's read plan, each allowed `timeout_ms`,
/// after a reconnect (one more) when the last poll failed; no request is retried within a
/// poll (a failure drops the connection and the next poll retries after the backoff). The
/// sample is stamped when the poll starts and reaches the core at the tick after it
/// completes, up to one period later. So a CDU answering every request just inside its
/// timeout delivers samples up to `(requests + 1) × timeout_ms + period_ms` old; beyond
/// `control.max_sample_age_ms` such a CDU, slow but answering as configured, would read as
/// lost on every poll. The tick itself never waits for it longer than half a period.
fn check_poll_fits(
    cfg: &Config,
    index: usize,
    profile: &CduProfile,
) -> Result<(), crate::config::ConfigError> {
    let c = &cfg.cdus[index];
    let requests = crate::collect::modbus::plan::plan(profile).len() as u64;
    // In wall time: a simulator sped up by `time_scale` ages samples faster, but its CDU
    // answers on loopback in well under a millisecond, and refusing sim.toml whenever
    // time_scale is raised would take the documented speed-up away.
    let worst = (requests + 1) * c.timeout_ms + cfg.control.period_ms;
    if worst <= cfg.control.max_sample_age_ms {
        return Ok(());
    }
    let fits = cfg
        .control
        .max_sample_age_ms
        .saturating_sub(cfg.control.period_ms)
        / (requests + 1);
    Err(crate::config::ConfigError {
        file: cfg.path.clone(),
        issues: vec![crate::config::ConfigIssue {
            key: format!("cdu[{index}].timeout_ms"),
            expected: format!(
                "a timeout whose worst-case poll fits control.max_sample_age_ms: profile `{}` \
                 polls in {requests} request(s) plus a reconnect, each allowed {} ms, \
                 and the sample waits up to one control.period_ms ({} ms) for a tick: {worst} ms \
                 in all, more than control.max_sample_age_ms = {} ms; use timeout_ms <= {fits} \
                 or raise control.max_sample_age_ms",
                profile.name, c.timeout_ms, cfg.control.period_ms, cfg.control.max_sample_age_ms
            ),
        }],
    })
}

/// The firmware profiles one configuration uses.
pub struct LoadedProfiles {
    pub gpu: GpuProfiles,
    pub cdu: BTreeMap<String, Arc<CduProfile>>,
}

/// Opens the configured GPU backend; falls back to the simulator's GPUs only where the
/// configuration allows it, and says so loudly.
pub fn open_gpus(
    cfg: &Config,
    host: &str,
    profiles: &GpuProfiles,
    sim: Option<&SimRuntime>,
) -> anyhow::Result<Option<Arc<dyn GpuBackend>>> {
    match cfg.gpus.backend {
        GpuBackendKind::None => Ok(None),
        GpuBackendKind::Simulated => {
            let sim = sim.context("gpus.backend = \"simulated\" needs a [simulator] section")?;
            Ok(Some(sim.gpus()))
        }
        GpuBackendKind::Nvml => match crate::collect::nvml::init() {
            Ok(nvml) => {
                let facts_for = |board: &str| -> Option<BoardFacts> {
                    profiles.board_facts_for(board, cfg.gpus.default_profile.as_deref())
                };
                let backend = crate::collect::nvml::NvmlBackend::open(
                    nvml,
                    host,
                    &cfg.gpus.indices,
                    &facts_for,
                )?;
                Ok(Some(Arc::new(backend)))
            }
            Err(e) if cfg.gpus.fallback_to_simulated => {
                let sim = sim.context(
                    "gpus.fallback_to_simulated is set, but there is no [simulator] section to fall back to",
                )?;
                tracing::warn!(error = %e, "NVML is not available; running on SIMULATED GPUs as gpus.fallback_to_simulated allows");
                Ok(Some(sim.gpus()))
            }
            // A host without a working driver is a configuration to fix, not a fault a
            // restart cures: a ConfigError makes `run` exit 78 and systemd stop.
            Err(e) => Err(crate::config::ConfigError {
                file: cfg.path.clone(),
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
                        cfg.path.display()
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
}

fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
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
        set_plate_models(&mut controller, &cfg, &host, &profiles, &inventory);
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

    /// How long a tick waits for its CDUs: half the period leaves the other half for GPU
    /// reads, power caps and sinks, so a slow CDU cannot stretch the tick past its period.
    pub fn cdu_budget(&self) -> Duration {
        self.cdu_budget_override
            .unwrap_or_else(|| self.wall_period() / 2)
    }

    /// One whole cycle at monotonic time `now`. It waits for the CDUs at most
    /// [`Daemon::cdu_budget`]; a poll or write that takes longer finishes in the background
    /// and a later tick uses its result.
    pub async fn tick(&mut self, now: Mono) -> Arc<Snapshot> {
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::now() + self.cdu_budget();
        let wall_ns = unix_ns();
        // Ask every CDU for a poll first, so that it runs while the GPUs are read.
        self.drain_reports();
        for (link, st) in self.links.iter().zip(self.link_state.iter_mut()) {
            match link.request_poll(now, wall_ns) {
                Ok(()) => st.poll_pending = Some(now),
                Err(e) => tracing::error!(error = %e, "CDU poll not requested"),
            }
        }
        let mut gpu_samples: Vec<GpuSample> = match &self.gpus {
            Some(g) => g.read_fast(now),
            None => Vec::new(),
        };
        // A GPU of the inventory that the backend did not return at all (fallen off the bus)
        // is a lost reading now, as an empty sample makes it; without this the core would keep
        // steering on its last reading until that went stale (max_sample_age_ms), well past
        // the 2 ticks in which a lost input must reach its safe state.
        for st in &self.inventory {
            if !gpu_samples.iter().any(|s| s.key == st.key) {
                // The source only labels the sample; with no sample at all, guess from the backend.
                let source = gpu_samples
                    .first()
                    .map_or(self.default_source(), |s| s.source);
                gpu_samples.push(GpuSample::empty(st.key.clone(), source, now));
            }
        }
        self.wait_cdus(deadline, |st| st.poll_pending.is_none())
            .await;
        for st in &mut self.link_state {
            st.late = st.poll_pending.is_some();
            if st.late {
                st.late_polls += 1;
            }
        }
        // The newest sample of each CDU; the core judges its age (max_sample_age_ms).
        let cdu_samples: Vec<CduSample> = self
            .link_state
            .iter()
            .filter_map(|st| st.latest.as_ref().map(|p| p.sample.clone()))
            .collect();
        let fresh_polls: Vec<Polled> = self
            .link_state
            .iter_mut()
            .flat_map(|st| std::mem::take(&mut st.fresh))
            .collect();

        self.handle_commands(now);

        let outcomes = std::mem::take(&mut self.outcomes);
        let mut out = self.controller.tick(&TickInput {
            now,
            gpus: &gpu_samples,
            cdus: &cdu_samples,
            outcomes: &outcomes,
        });
        if let Some(influx) = &self.influx {
            // The telemetry path's own alarms travel with the core's.
            out.events
                .extend(self.sink_alarms.update(now, &influx.stats()));
            out.active_alarms.extend(self.sink_alarms.active().cloned());
        }

        if !self.dry_run {
            self.record_original_limits(&out.actuations, &gpu_samples);
        }
        // Power caps first: they are sub-millisecond NVML calls and, in an emergency, the
        // urgent ones. CDU writes go to the CDU's poller and are awaited only within the
        // tick's budget; their outcomes reach the core when they are known.
        let mut ordered: Vec<&Actuation> = out.actuations.iter().collect();
        ordered.sort_by_key(|a| !matches!(a, Actuation::SetPowerCap { .. }));
        for a in ordered {
            if self.dry_run {
                // Each decision once, with why; watchdog feeds are routine (one per tick).
                match a {
                    Actuation::FeedWatchdog { .. } => tracing::debug!("would {a}"),
                    _ => tracing::info!(reason = decision_reason(&out.loops, a), "would {a}"),
                }
                self.outcomes.push(ActuationOutcome {
                    actuation: a.clone(),
                    at: now,
                    result: Ok(()),
                    dry_run: true,
                });
                continue;
            }
            let result = match a {
                Actuation::SetPowerCap { .. } => self.apply_cap(a),
                Actuation::SetPumpSpeed { .. } | Actuation::FeedWatchdog { .. } => {
                    match self.send_write(a, now) {
                        Ok(()) => continue,
                        Err(e) => Err(ActuationError::Failed(e)),
                    }
                }
            };
            if let Err(e) = &result {
                tracing::warn!(action = %a, error = %e, "actuation failed");
            }
            self.outcomes.push(ActuationOutcome {
                actuation: a.clone(),
                at: now,
                result,
                dry_run: false,
            });
        }
        self.wait_cdus(deadline, |st| st.writes.is_empty()).await;
        for e in &out.events {
            tracing::warn!(alarm = %e.alarm.id, transition = ?e.transition, severity = ?e.alarm.severity, "{}", e.alarm.message);
        }

        // The loop's own timing: the previous tick against the period, each CDU against the
        // tick's budget.
        let wall_period = self.wall_period();
        let budget = self.cdu_budget();
        let overrun = self.last_tick_took.filter(|d| *d > wall_period).map(|d| {
            format!(
                "a control tick took {} ms, longer than its {} ms period ({} overruns since start)",
                d.as_millis(),
                wall_period.as_millis(),
                self.overruns
            )
        });
        let max_age_ms = self.cfg.control.max_sample_age_ms;
        let slow: Vec<(String, Option<String>)> = self
            .links
            .iter()
            .zip(&self.link_state)
            .map(|(l, st)| {
                // A CDU that has never answered is not slow but unreachable, which the core
                // reports (and a first poll that includes the connection may run late).
                let why = match (&st.latest, st.late) {
                    (Some(p), true) => Some(slow_cdu_message(l, p, now, budget, max_age_ms)),
                    _ => None,
                };
                (l.name().to_string(), why)
            })
            .collect();
        let loop_events = self.loop_alarms.update(now, overrun, slow);
        for e in &loop_events {
            tracing::warn!(alarm = %e.alarm.id, transition = ?e.transition, severity = ?e.alarm.severity, "{}", e.alarm.message);
        }
        out.events.extend(loop_events);
        out.active_alarms.extend(self.loop_alarms.active().cloned());

        let ctx = Ctx {
            site: &self.cfg.site.name,
            host: &self.host,
        };
        let mut points = Vec::with_capacity(gpu_samples.len() + cdu_samples.len() + 6);
        for s in &gpu_samples {
            if let Some(st) = self.inventory.iter().find(|st| st.key == s.key) {
                points.push(schema::gpu_point(&ctx, st, s, wall_ns));
            }
        }
        let slow: Vec<GpuSlowSample> = self
            .slow
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for s in &slow {
            if let Some(st) = self.inventory.iter().find(|st| st.key == s.key) {
                points.push(schema::gpu_slow_point(&ctx, st, s, wall_ns));
            }
        }
        // Each poll is written once, stamped with the wall time it started.
        for p in &fresh_polls {
            points.push(schema::cdu_point(&ctx, &p.sample, p.wall_ns));
        }
        let cdus: Vec<CduStatus> = self
            .link_state
            .iter()
            .filter_map(|st| {
                let p = st.latest.as_ref()?;
                let mut c = cdu_status(&p.sample);
                c.link = CduLinkStatus {
                    sample_age_ms: Some(now.saturating_sub(p.sample.at).as_secs_f64() * 1e3),
                    poll_ms: Some(p.took.as_secs_f64() * 1e3),
                    late: st.late,
                    late_polls: st.late_polls,
                    superseded_writes: st.superseded,
                    requests: p.requests,
                    timeouts: p.timeouts,
                };
                Some(c)
            })
            .collect();
        for c in &cdus {
            points.push(schema::cdu_link_point(&ctx, c, wall_ns));
        }
        points.push(schema::tick_point(
            &ctx,
            &TickTiming {
                duration_ms: self.last_tick_took.map(|d| d.as_secs_f64() * 1e3),
                period_ms: wall_period.as_secs_f64() * 1e3,
                cdu_budget_ms: budget.as_secs_f64() * 1e3,
                overruns: self.overruns,
            },
            wall_ns,
        ));
        points.extend(schema::control_points(&ctx, &out, wall_ns));
        for e in &out.events {
            points.push(schema::alarm_point(&ctx, e, wall_ns));
        }
        if let Some(influx) = &self.influx {
            points.push(schema::telemetry_point(&ctx, &influx.stats(), wall_ns));
            influx.submit(&points);
        }

        self.tick += 1;
        let snap = Arc::new(Snapshot {
            site: self.cfg.site.name.clone(),
            host: self.host.clone(),
            time_ns: wall_ns,
            tick: self.tick,
            dry_run: self.dry_run,
            mode: out.mode,
            state: out.state,
            setpoint: out.setpoint.0,
            controlled: out.controlled.map(|c| c.0),
            ready: out.ready,
            cdus,
            gpus: gpu_samples
                .iter()
                .filter_map(|s| gpu_status(&self.inventory, s))
                .collect(),
            alarms: out.active_alarms.clone(),
            decisions: out.actuations.clone(),
            points,
        });
        if let Some(m) = &self.mqtt {
            for e in &out.events {
                m.publish_event(e);
            }
            m.publish_snapshot(&snap);
        }
        if let Some(s) = &self.sparkplug {
            s.publish_snapshot(&snap);
        }
        self.snapshot_tx.send_replace(snap.clone());
        self.last = Some(snap.clone());
        let took = t0.elapsed();
        if took > wall_period {
            self.overruns += 1;
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                period_ms = wall_period.as_millis() as u64,
                "control tick overran its period"
            );
        }
        self.last_tick_took = Some(took);
        snap
    }

    /// Takes every report the CDU pollers have sent so far.
    fn drain_reports(&mut self) {
        while let Ok((i, g, r)) = self.reports_rx.try_recv() {
            self.on_report(i, g, r);
        }
    }

    /// Receives CDU reports until `done` holds for every CDU or `deadline` passes.
    async fn wait_cdus(&mut self, deadline: tokio::time::Instant, done: fn(&LinkState) -> bool) {
        loop {
            self.drain_reports();
            if self.link_state.iter().all(done) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.reports_rx.recv()).await {
                Ok(Some((i, g, r))) => self.on_report(i, g, r),
                // Past the deadline (or, while the daemon is dropped, no sender left).
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn on_report(&mut self, index: usize, generation: u64, report: Report) {
        if generation != self.link_generation {
            // A poller replaced by a reload; its pending writes were already answered.
            return;
        }
        let Some(st) = self.link_state.get_mut(index) else {
            return;
        };
        match report {
            Report::Polled(p) => {
                if st.poll_pending.is_some_and(|at| p.sample.at >= at) {
                    st.poll_pending = None;
                }
                if st
                    .latest
                    .as_ref()
                    .is_none_or(|l| l.sample.at <= p.sample.at)
                {
                    st.latest = Some(p.clone());
                }
                st.fresh.push(p);
            }
            Report::Written { id, result } => {
                if let Some((actuation, at)) = st.writes.remove(&id) {
                    if let Err(e) = &result {
                        tracing::warn!(action = %actuation, error = %e, "actuation failed");
                    }
                    self.outcomes.push(ActuationOutcome {
                        actuation,
                        at,
                        result: result.map_err(ActuationError::Failed),
                        dry_run: false,
                    });
                }
            }
            Report::Superseded { id } => {
                if st.writes.remove(&id).is_some() {
                    st.superseded += 1;
                }
            }
        }
    }

    /// Hands a CDU write to that CDU's poller.
    fn send_write(&mut self, a: &Actuation, now: Mono) -> Result<(), String> {
        let (cdu, role, value) = match a {
            Actuation::SetPumpSpeed { cdu, speed } => (cdu, Role::PumpSpeedCommand, speed.0),
            Actuation::FeedWatchdog { cdu, value } => (cdu, Role::Watchdog, f64::from(*value)),
            Actuation::SetPowerCap { .. } => return Err("not a CDU write".into()),
        };
        let i = self
            .links
            .iter()
            .position(|c| c.name() == cdu)
            .ok_or_else(|| format!("no CDU `{cdu}`"))?;
        self.next_write_id += 1;
        let id = self.next_write_id;
        self.links[i].write(id, role, value)?;
        self.link_state[i].writes.insert(id, (a.clone(), now));
        Ok(())
    }

    /// Answers every write still waiting for a CDU with `why` (its poller is being
    /// replaced), so the core retries it instead of waiting for an outcome that never comes.
    fn fail_pending_writes(&mut self, why: &str) {
        for st in &mut self.link_state {
            for (_, (actuation, at)) in std::mem::take(&mut st.writes) {
                self.outcomes.push(ActuationOutcome {
                    actuation,
                    at,
                    result: Err(ActuationError::Failed(why.to_string())),
                    dry_run: false,
                });
            }
            st.poll_pending = None;
        }
    }

    fn handle_commands(&mut self, now: Mono) {
        if let Some(rx) = self.commands.as_mut() {
            while let Ok(req) = rx.try_recv() {
                let outcome = self.controller.command(now, &req.command);
                tracing::info!(command = ?req.command, correlation_id = ?req.correlation_id, outcome = ?outcome, "operator command");
                if let Some(m) = &self.mqtt {
                    m.reply(req.correlation_id.as_deref(), &outcome);
                }
            }
        }
        // Sparkplug NCMDs go to the same core method, so they are judged by the same rules.
        if let Some(rx) = self.sparkplug_commands.as_mut() {
            while let Ok(req) = rx.try_recv() {
                let outcome = self.controller.command(now, &req.command);
                tracing::info!(command = ?req.command, metric = ?req.correlation_id, outcome = ?outcome, "operator command (Sparkplug NCMD)");
                if let Some(s) = &self.sparkplug {
                    s.reply(&req, &outcome);
                }
            }
        }
    }

    /// Applies one power cap (never called in dry-run mode).
    fn apply_cap(&self, a: &Actuation) -> Result<(), ActuationError> {
        let Actuation::SetPowerCap { gpu, limit } = a else {
            return Err(ActuationError::NotSupported("not a power cap".into()));
        };
        let backend = self
            .gpus
            .as_ref()
            .ok_or_else(|| ActuationError::NotSupported("no GPU backend".into()))?;
        // Another host's GPU (a remote reading) is capped by that host's daemon.
        if !self.inventory.iter().any(|s| &s.key == gpu) {
            return Err(ActuationError::NotSupported(format!(
                "no GPU {gpu} on this host"
            )));
        }
        backend.set_power_limit(gpu, *limit).map_err(|e| match e {
            GpuError::NotSupported { .. } | GpuError::UnknownGpu(_) => {
                ActuationError::NotSupported(e.to_string())
            }
            _ => ActuationError::Failed(e.to_string()),
        })
    }

    /// Records, in one durable write, the original limit of every GPU this tick caps for the
    /// first time, so it can be restored. A failure to record is logged loudly but never
    /// holds back a cap: in an emergency the GPU matters more than the bookkeeping.
    fn record_original_limits(&mut self, actuations: &[Actuation], samples: &[GpuSample]) {
        let Some(store) = self.limits.as_mut() else {
            return;
        };
        let mut fresh = Vec::new();
        for a in actuations {
            let Actuation::SetPowerCap { gpu, .. } = a else {
                continue;
            };
            let Some(st) = self.inventory.iter().find(|s| &s.key == gpu) else {
                continue;
            };
            let original = samples
                .iter()
                .find(|s| &s.key == gpu)
                .and_then(|s| s.enforced_limit)
                .unwrap_or(st.power_default);
            fresh.push((gpu.clone(), st.uuid.clone(), original));
        }
        if let Err(e) = store.record_all(fresh) {
            tracing::error!(error = %e, "cannot record the GPUs' original power limits; caps are applied anyway, restore them by hand if the daemon stops");
        }
    }

    /// Puts every output in its configured safe state and restores recorded power limits.
    ///
    /// Each CDU's poller is stopped first, cutting short a request in progress, and the safe
    /// pump speed is then written to every CDU at once, even one that is backing off after
    /// errors: this is the last chance to reach it. Per CDU that is at most 4 requests of
    /// `timeout_ms` each (resolve, connect, write, read-back); config validation keeps that
    /// inside systemd's `TimeoutStopSec=`. Afterwards the CDUs are no longer polled.
    pub async fn leave_safely(&mut self, restore_limits: bool) {
        let safe = self.controller.safe_outputs();
        let links = std::mem::take(&mut self.links);
        self.fail_pending_writes("not written: the daemon is shutting down");
        self.link_state.clear();
        let clients = join_all_in_order(links.into_iter().map(CduLink::stop)).await;
        let dry_run = self.dry_run;
        let writes = clients.into_iter().flatten().map(|mut c| {
            let mine: Vec<Actuation> = safe
                .iter()
                .filter(|a| matches!(a, Actuation::SetPumpSpeed { cdu, .. } if cdu == c.name()))
                .cloned()
                .collect();
            async move {
                c.clear_backoff();
                for a in mine {
                    let Actuation::SetPumpSpeed { speed, .. } = &a else {
                        continue;
                    };
                    if dry_run {
                        tracing::info!(action = %a, "would {a}");
                        continue;
                    }
                    match c.write(Role::PumpSpeedCommand, speed.0).await {
                        Ok(()) => tracing::info!(action = %a, "safe output applied"),
                        Err(e) => {
                            tracing::error!(action = %a, error = %e, "could not apply the safe output")
                        }
                    }
                }
            }
        });
        join_all_in_order(writes).await;
        for a in safe {
            if !matches!(a, Actuation::SetPowerCap { .. }) || restore_limits {
                continue;
            }
            if dry_run {
                tracing::info!(reason = "shutting down: the safe output", "would {a}");
            } else if let Err(e) = self.apply_cap(&a) {
                tracing::error!(action = %a, error = %e, "could not apply the safe output");
            }
        }
        if restore_limits && !self.dry_run {
            if let (Some(store), Some(g)) = (self.limits.as_mut(), self.gpus.as_ref()) {
                restore_recorded(store, g.as_ref(), &self.inventory);
            }
        }
    }

    /// Flushes and stops the sinks and background tasks.
    pub async fn shutdown(mut self, deadline: Duration) {
        if let Some(t) = self.slow_task.take() {
            t.abort();
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

    /// Applies a new configuration without dropping the control loop. The control section
    /// and the CDU profiles change live; sink and simulator changes need a restart, and the
    /// log says so.
    pub fn reload(&mut self, new: Config) -> anyhow::Result<()> {
        // A rehearsal's CDU clients point at its simulated servers; a reload would build
        // them from the file again, so it is refused as a whole.
        anyhow::ensure!(
            self.rehearsal.is_none(),
            "a rehearsal does not reload its configuration; stop it and start it again"
        );
        let profiles = load_profiles(&new)?;
        // Whether anything may be written at all, and what the control core was built for,
        // are not changed under a running loop: half-applying them would be worse than a
        // restart, so such a reload is refused as a whole.
        anyhow::ensure!(
            new.site.dry_run == self.cfg.site.dry_run,
            "site.dry_run changed; dry-run is switched by a restart (systemctl restart coolantd), \
             never by a reload"
        );
        anyhow::ensure!(
            cdu_setups(&new, &self.host, &profiles)
                == cdu_setups(&self.cfg, &self.host, &self.running_cdu_profiles()),
            "the CDUs, the hosts they cool, or their profiles' roles or pump limits changed; \
             restart to apply (a reload may change addresses, timeouts and [control])"
        );
        self.controller
            .check_reload(&new.control)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if new.site.host != self.cfg.site.host
            || new.site.state_dir != self.cfg.site.state_dir
            || format!("{:?}", new.gpus) != format!("{:?}", self.cfg.gpus)
            || new.simulator != self.cfg.simulator
        {
            tracing::warn!("site.host, site.state_dir, [gpus] or [simulator] changed: these take effect after a restart");
        }
        // A changed address, unit id or timeout needs a new client, like a changed profile.
        if new
            .cdus
            .iter()
            .map(|c| (&c.name, &c.transport, &c.profile, c.unit_id, c.timeout_ms))
            .ne(self
                .cfg
                .cdus
                .iter()
                .map(|c| (&c.name, &c.transport, &c.profile, c.unit_id, c.timeout_ms)))
            || profiles.cdu.iter().any(|(n, p)| {
                self.links
                    .iter()
                    .find(|c| c.name() == n)
                    .is_none_or(|c| **c.profile() != **p)
            })
        {
            // The old pollers end at their next step (a request in progress is cut short).
            self.fail_pending_writes("not written: the CDU connection was rebuilt by a reload");
            self.link_generation += 1;
            self.links = spawn_links(&new.cdus, &profiles, self.link_generation, &self.reports_tx);
            tracing::info!(
                cdus = self.links.len(),
                "CDU connections rebuilt from the new configuration"
            );
        }
        self.controller.reconfigure(&new.control);
        if format!("{:?}{:?}{:?}", new.influx, new.mqtt, new.http)
            != format!(
                "{:?}{:?}{:?}",
                self.cfg.influx, self.cfg.mqtt, self.cfg.http
            )
        {
            tracing::warn!("[influx], [mqtt] or [http] changed: these take effect after a restart");
        }
        self.cfg = new;
        Ok(())
    }

    /// The CDU profiles the running clients hold (the files may have changed on disk since
    /// start-up), to compare a reload against.
    fn running_cdu_profiles(&self) -> LoadedProfiles {
        LoadedProfiles {
            gpu: GpuProfiles::from_profiles(Vec::new()),
            cdu: self
                .links
                .iter()
                .map(|c| (c.name().to_string(), c.profile().clone()))
                .collect(),
        }
    }

    pub fn last_snapshot(&self) -> Option<Arc<Snapshot>> {
        self.last.clone()
    }

    pub fn host(&self) -> &str {
        &self.host
    }
}

/// The reason the control core gave for the loop behind an actuation.
fn decision_reason<'a>(loops: &'a [crate::model::LoopReport], a: &Actuation) -> &'a str {
    let name = match a {
        Actuation::SetPumpSpeed { cdu, .. } | Actuation::FeedWatchdog { cdu, .. } => {
            format!("pump:{cdu}")
        }
        Actuation::SetPowerCap { gpu, .. } => format!("power:{gpu}"),
    };
    loops
        .iter()
        .find(|l| l.name == name)
        .map_or("", |l| l.reason.as_str())
}

/// Restores every recorded limit it can, forgetting each one restored.
pub fn restore_recorded(
    store: &mut LimitStore,
    gpus: &dyn GpuBackend,
    inventory: &[GpuStatic],
) -> usize {
    let recorded: Vec<_> = store.recorded().cloned().collect();
    let mut restored = 0;
    for r in recorded {
        let Some(st) = inventory.iter().find(|s| s.uuid == r.uuid) else {
            tracing::warn!(uuid = %r.uuid, "a recorded GPU is not present; its limit stays recorded");
            continue;
        };
        match gpus.set_power_limit(&st.key, r.original) {
            Ok(()) => {
                tracing::info!(gpu = %st.key, limit_w = r.original.0, "restored the original power limit");
                if let Err(e) = store.forget(&r.uuid) {
                    tracing::error!(error = %e, "could not update the recorded limits");
                }
                restored += 1;
            }
            Err(e) => {
                tracing::error!(gpu = %st.key, error = %e, "could not restore the power limit")
            }
        }
    }
    restored
}

/// Runs the futures concurrently and returns their outputs in input order: all CDUs are
/// polled at once, so a slow CDU delays the others by no more than its own timeout.
async fn join_all_in_order<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::Poll;
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => out[i] = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future completed before poll_fn returned Ready"))
        .collect()
}

fn spawn_slow_reader(
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

/// Why `cdu_slow:<cdu>` is raised: what the tick waited, how long the newest poll took, and
/// how old the sample the loop steers on is.
fn slow_cdu_message(
    link: &CduLink,
    newest: &Polled,
    now: Mono,
    budget: Duration,
    max_age_ms: u64,
) -> String {
    format!(
        "{}: its poll did not finish within the tick's {} ms budget for CDUs (the newest took \
         {} ms, timeout_ms {} per request); steering on a sample {} ms old, lost once older \
         than control.max_sample_age_ms = {max_age_ms}",
        link.name(),
        budget.as_millis(),
        newest.took.as_millis(),
        link.timeout().as_millis(),
        now.saturating_sub(newest.sample.at).as_millis()
    )
}

/// The tick's bookkeeping for one CDU's poller.
#[derive(Debug, Default)]
struct LinkState {
    /// The newest completed poll.
    latest: Option<Polled>,
    /// Polls completed since the last tick wrote them as points.
    fresh: Vec<Polled>,
    /// The time of the poll this tick asked for, until it is reported.
    poll_pending: Option<Mono>,
    /// Writes handed to the poller and not answered yet, by id: the actuation and its tick.
    writes: BTreeMap<u64, (Actuation, Mono)>,
    /// This tick's poll missed the tick's budget.
    late: bool,
    late_polls: u64,
    superseded: u64,
}

/// Starts one poller task per CDU of `cdus` (the configured ones, or a rehearsal's).
fn spawn_links(
    cdus: &[crate::config::CduConfig],
    profiles: &LoadedProfiles,
    generation: u64,
    reports: &mpsc::UnboundedSender<(usize, u64, Report)>,
) -> Vec<CduLink> {
    cdus.iter()
        .enumerate()
        .map(|(i, c)| {
            let client = ModbusCdu::new(c, profiles.cdu[&c.name].clone());
            CduLink::spawn(client, i, generation, reports.clone())
        })
        .collect()
}

/// Gives each CDU's pump loop the plate model of the GPUs it cools, for the heat-load
/// feed-forward. A CDU whose GPUs use different profiles, or none this host knows, gets none:
/// its feed-forward stays off and says so.
pub fn set_plate_models(
    ctl: &mut Controller,
    cfg: &Config,
    host: &str,
    profiles: &LoadedProfiles,
    inventory: &[crate::model::GpuStatic],
) {
    for c in cdu_setups(cfg, host, profiles) {
        let mut names: Vec<&str> = inventory
            .iter()
            .filter(|g| c.hosts.contains(&g.key.host))
            .map(|g| g.profile.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        let model = match names.as_slice() {
            [one] => profiles.gpu.by_name(one).map(|p| p.thermal.plate_model()),
            _ => None,
        };
        if model.is_none() {
            tracing::warn!(cdu = %c.name, profiles = ?names, "no single GPU thermal model for this CDU: feed-forward off");
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
    Snapshot {
        site: cfg.site.name.clone(),
        host: host.to_string(),
        time_ns: unix_ns(),
        tick: 0,
        dry_run,
        mode: crate::model::Mode::Auto,
        state: crate::model::ControlState::Boot,
        setpoint: 0.0,
        controlled: None,
        ready: false,
        cdus: Vec::new(),
        gpus: Vec::new(),
        alarms: Vec::new(),
        decisions: Vec::new(),
        points: Vec::new(),
    }
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
