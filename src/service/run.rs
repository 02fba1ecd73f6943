//! The daemon: collectors → control core → actuators and sinks, once per control period.
//!
//! [`Daemon::tick`] is one whole cycle and takes time as an argument, so the closed-loop
//! tests drive the real daemon (real Modbus TCP to the simulated CDU, real sinks) in lockstep
//! with the plant, as fast as the machine allows. [`Daemon::run`] is the service loop around
//! it: the period timer, signals, systemd notification and the live status line.

use crate::collect::modbus::ModbusCdu;
use crate::collect::{BoardFacts, GpuBackend};
use crate::config::{Config, GpuBackendKind};
use crate::control::{CduSetup, Controller, TickInput};
use crate::model::{
    Actuation, ActuationOutcome, CduSample, CduStatus, GpuSample, GpuSlowSample, GpuStatic,
    GpuStatus, Mono, Role, Snapshot,
};
use crate::profile::cdu::CduProfile;
use crate::profile::gpu::GpuProfiles;
use crate::service::limits::LimitStore;
use crate::service::sink_alarms::SinkAlarms;
use crate::sim::SimRuntime;
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
}

/// Loads every firmware profile the configuration names and checks that each CDU profile
/// maps the roles the control loop needs. Used by `check-config`, `run` and reload.
pub fn load_profiles(cfg: &Config) -> Result<LoadedProfiles, crate::config::ConfigError> {
    let dir = cfg.resolve(&cfg.site.profiles_dir);
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
    Ok(LoadedProfiles { gpu, cdu })
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
                let backend = crate::collect::nvml::NvmlBackend::open(nvml, host, &cfg.gpus.indices, &facts_for)?;
                Ok(Some(Arc::new(backend)))
            }
            Err(e) if cfg.gpus.fallback_to_simulated => {
                let sim = sim.context(
                    "gpus.fallback_to_simulated is set, but there is no [simulator] section to fall back to",
                )?;
                tracing::warn!(error = %e, "NVML is not available; running on SIMULATED GPUs as gpus.fallback_to_simulated allows");
                Ok(Some(sim.gpus()))
            }
            Err(e) => Err(anyhow::anyhow!(
                "{e}. To try coolantd without GPUs use config/sim.toml, or set gpus.fallback_to_simulated = true"
            )),
        },
    }
}

/// The daemon's state between ticks.
pub struct Daemon {
    cfg: Config,
    host: String,
    dry_run: bool,
    sim: Option<SimRuntime>,
    gpus: Option<Arc<dyn GpuBackend>>,
    inventory: Vec<GpuStatic>,
    cdus: Vec<ModbusCdu>,
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
        let dry_run = cfg.site.dry_run || opts.dry_run;
        let profiles = load_profiles(&cfg)?;
        let sim = match &cfg.simulator {
            Some(sc) => Some(
                SimRuntime::start(sc, &cfg, &host, &profiles.gpu, opts.sim_autostep)
                    .await
                    .context("starting the plant simulator")?,
            ),
            None => None,
        };
        let gpus = open_gpus(&cfg, &host, &profiles.gpu, sim.as_ref())?;
        let inventory = gpus.as_ref().map(|g| g.inventory()).unwrap_or_default();
        let cdus = cfg
            .cdus
            .iter()
            .map(|c| ModbusCdu::new(c, profiles.cdu[&c.name].clone()))
            .collect::<Vec<_>>();
        let controller = Controller::new(
            &cfg.control,
            cdu_setups(&cfg, &host, &profiles),
            inventory.clone(),
        );
        let mut limits = if dry_run {
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
            gpus,
            inventory,
            cdus,
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
            GpuBackendKind::Nvml if self.sim.is_none() => crate::model::Source::Nvml,
            _ => crate::model::Source::Simulated,
        }
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

    /// One whole cycle at monotonic time `now`.
    pub async fn tick(&mut self, now: Mono) -> Arc<Snapshot> {
        let wall_ns = unix_ns();
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
        let cdu_samples: Vec<CduSample> =
            join_all_in_order(self.cdus.iter_mut().map(|c| c.poll(now))).await;

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
        // urgent ones; CDU writes can each wait for a Modbus timeout.
        let mut ordered: Vec<&Actuation> = out.actuations.iter().collect();
        ordered.sort_by_key(|a| !matches!(a, Actuation::SetPowerCap { .. }));
        for a in ordered {
            let result = self.apply(a).await;
            if let Err(e) = &result {
                tracing::warn!(action = %a, error = %e, "actuation failed");
            }
            self.outcomes.push(ActuationOutcome {
                actuation: a.clone(),
                at: now,
                result,
                dry_run: self.dry_run,
            });
        }
        for e in &out.events {
            tracing::warn!(alarm = %e.alarm.id, transition = ?e.transition, severity = ?e.alarm.severity, "{}", e.alarm.message);
        }

        let ctx = Ctx {
            site: &self.cfg.site.name,
            host: &self.host,
        };
        let mut points = Vec::with_capacity(gpu_samples.len() + cdu_samples.len() + 4);
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
        for c in &cdu_samples {
            points.push(schema::cdu_point(&ctx, c, wall_ns));
        }
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
            cdus: cdu_samples.iter().map(cdu_status).collect(),
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
        snap
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

    /// Applies one actuation, or only logs it in dry-run mode.
    async fn apply(&mut self, a: &Actuation) -> Result<(), String> {
        if self.dry_run {
            tracing::info!(action = %a, "would {a}");
            return Ok(());
        }
        match a {
            Actuation::SetPumpSpeed { cdu, speed } => {
                let c = self
                    .cdus
                    .iter_mut()
                    .find(|c| c.name() == cdu)
                    .ok_or_else(|| format!("no CDU `{cdu}`"))?;
                c.write(Role::PumpSpeedCommand, speed.0)
                    .await
                    .map_err(|e| e.to_string())
            }
            Actuation::FeedWatchdog { cdu, value } => {
                let c = self
                    .cdus
                    .iter_mut()
                    .find(|c| c.name() == cdu)
                    .ok_or_else(|| format!("no CDU `{cdu}`"))?;
                c.write(Role::Watchdog, f64::from(*value))
                    .await
                    .map_err(|e| e.to_string())
            }
            Actuation::SetPowerCap { gpu, limit } => {
                let backend = self.gpus.as_ref().ok_or("no GPU backend")?;
                // Another host's GPU (a remote reading) is capped by that host's daemon.
                if !self.inventory.iter().any(|s| &s.key == gpu) {
                    return Err(format!("no GPU {gpu} on this host"));
                }
                backend
                    .set_power_limit(gpu, *limit)
                    .map_err(|e| e.to_string())
            }
        }
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
    pub async fn leave_safely(&mut self, restore_limits: bool) {
        let now_outputs = self.controller.safe_outputs();
        for a in now_outputs {
            if matches!(a, Actuation::SetPowerCap { .. }) && restore_limits {
                continue;
            }
            if let Err(e) = self.apply(&a).await {
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
    }

    /// Applies a new configuration without dropping the control loop. The control section
    /// and the CDU profiles change live; sink and simulator changes need a restart, and the
    /// log says so.
    pub fn reload(&mut self, new: Config) -> anyhow::Result<()> {
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
        if new.site.host != self.cfg.site.host
            || new.site.state_dir != self.cfg.site.state_dir
            || format!("{:?}", new.gpus) != format!("{:?}", self.cfg.gpus)
            || new.simulator != self.cfg.simulator
        {
            tracing::warn!("site.host, site.state_dir, [gpus] or [simulator] changed: these take effect after a restart");
        }
        if new
            .cdus
            .iter()
            .map(|c| (&c.name, &c.transport, &c.profile))
            .ne(self
                .cfg
                .cdus
                .iter()
                .map(|c| (&c.name, &c.transport, &c.profile)))
            || profiles.cdu.iter().any(|(n, p)| {
                self.cdus
                    .iter()
                    .find(|c| c.name() == n)
                    .is_none_or(|c| **c.profile() != **p)
            })
        {
            self.cdus = new
                .cdus
                .iter()
                .map(|c| ModbusCdu::new(c, profiles.cdu[&c.name].clone()))
                .collect();
            tracing::info!(
                cdus = self.cdus.len(),
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
                .cdus
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
            .filter_map(|r| r.value.as_ref().err().map(|e| format!("{}: {e}", r.name)))
            .collect(),
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
