//! `coolantd agent`: the host agent's shell around [`crate::agent::AgentCore`].
//!
//! Each tick it reads this host's GPUs (the fast path of the configured [`GpuBackend`]),
//! publishes one `Readings` message, runs the lease and the local guard, and applies the caps
//! they decide. Caps arrive as `CapLease` messages on `<prefix>/v1/host/<host>/caps`; each is
//! applied at once, the enforced limits are read back and a `CapAck` with the lease's id goes
//! to `.../acks`. `Status` (online; offline as the last will) and `Facts` are retained.
//!
//! Power limits are written only through [`crate::service::daemon::actuate`], after the
//! GPUs' original limits are recorded in the state directory; they are restored on SIGTERM
//! and SIGINT, and on the next start after a crash. In dry run nothing is written: the acks
//! carry `dry_run` and say what would have been set.
//!
//! Beside the wire protocol the agent is a service like the daemon (`ops.rs`): its points go
//! to InfluxDB (`sink.rs`), it serves `/healthz` and `/metrics` (`http.rs`), publishes its
//! alarms (`alarms.rs`) and feeds systemd's watchdog.

mod alarms;
mod http;
mod ops;
pub use ops::OpsSetup;
mod sink;

use crate::agent::{
    AgentConfig, AgentCore, AgentEvent, AgentSection, CapDecision, Cause, GpuLimits, LocalReading,
};
use crate::collect::GpuBackend;
use crate::config::AgentFile;
use crate::link::mqtt::{MqttConfig, WireIncoming, WireLink, WireLinkOptions};
use crate::model::{ActuationError, GpuKey, GpuSample, GpuStatic, Mono};
use crate::profile::gpu::GpuProfiles;
use crate::service::daemon::actuate::{restore_recorded, set_gpu_power_limit};
use crate::service::daemon::serve::{first_tick, period_timer};
use crate::service::limits::LimitStore;
use crate::sim::runtime::SimRuntime;
use crate::units::Watts;
use crate::wire::{
    self, CapAck, CapLease, Facts, GpuFacts, GpuReading, Kind, Readings, Status, Topic, VERSION,
};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{signal, SignalKind};

/// How long the session may take to say goodbye on exit.
const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// The whole of `coolantd agent` and of the `coolantd-agent` binary: load the file (refused:
/// exit 78), start logging and the runtime, run, and turn the outcome into an exit status;
/// `prog` names the program in what it prints.
pub fn main(config: &Path, dry_run: bool, prog: &str) -> ExitCode {
    let cfg = match AgentFile::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{prog}: configuration refused:\n{e}");
            return ExitCode::from(crate::service::EX_CONFIG);
        }
    };
    crate::service::logging::init(&cfg.logging);
    // Two workers: a current-thread runtime saved 80 KiB of thread stacks and nothing
    // measurable in resident code (docs/scale.md), and with it a slow NVML call in the tick
    // would also hold up the MQTT session and the HTTP endpoint.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{prog}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cfg, dry_run));
    // A blocking NVML call or DNS lookup still running must not hold the exit past what
    // systemd's TimeoutStopSec allows.
    rt.shutdown_timeout(Duration::from_secs(2));
    crate::service::exit_code(prog, result)
}

/// Runs the agent until SIGTERM or SIGINT; restores the recorded limits before returning.
pub async fn run(cfg: AgentFile, dry_run_flag: bool) -> anyhow::Result<()> {
    let mut agent = Agent::start(cfg, dry_run_flag).await?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Readings leave on the wall clock's period boundaries (phase 0), where the rack
    // controllers expect them (`remote::phase`); the daemon's period timer keeps that grid
    // after a late tick.
    let mut timer = period_timer(agent.period, first_tick(agent.period, Some(Duration::ZERO)));
    loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => { tracing::info!("SIGTERM: restoring the power limits and leaving"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: restoring the power limits and leaving"); break; }
            m = agent.inbox.recv() => match m {
                Some(m) => agent.incoming(m),
                None => anyhow::bail!("the MQTT session ended unexpectedly"),
            },
            _ = timer.tick() => agent.tick(),
        }
    }
    agent.leave().await;
    Ok(())
}

/// What an agent runs on, however it was configured: `coolantd agent` builds it from its
/// file, `coolantd sim` once per simulated host from the rack's plant.
pub struct AgentSetup {
    pub host: String,
    pub dry_run: bool,
    /// This host's GPUs only.
    pub gpus: Arc<dyn GpuBackend>,
    /// The `[mqtt]` section, its paths resolved.
    pub mqtt: MqttConfig,
    pub section: AgentSection,
    /// Where the original power limits are recorded.
    pub state_dir: PathBuf,
    /// Plant seconds per wall second: 1 on real GPUs; a sped-up simulator's `time_scale`,
    /// so the tick and the leases keep the plant's time.
    pub time_scale: f64,
    /// InfluxDB, HTTP and systemd: what the file configures, or nothing for a simulated host.
    pub ops: OpsSetup,
}

pub struct Agent {
    host: String,
    prefix: String,
    session: u64,
    dry_run: bool,
    period: Duration,
    started: Instant,
    gpus: Arc<dyn GpuBackend>,
    inventory: Vec<GpuStatic>,
    facts: Facts,
    core: AgentCore,
    /// `None` in dry run: nothing is written, so nothing needs restoring.
    limits: Option<LimitStore>,
    link: WireLink,
    inbox: tokio::sync::mpsc::Receiver<WireIncoming>,
    seq: u64,
    /// Counters, InfluxDB, HTTP, alarms, systemd (`ops.rs`).
    ops: ops::Ops,
    time_scale: f64,
    /// A partitioned host (a simulated fault): nothing is published, what arrives is dropped.
    partitioned: bool,
    /// Kept alive for the simulated GPUs; `None` on NVML.
    _sim: Option<SimRuntime>,
}

impl Agent {
    async fn start(cfg: AgentFile, dry_run_flag: bool) -> anyhow::Result<Agent> {
        let host = cfg.site.host_name();
        let dry_run = dry_run_flag || cfg.site.dry_run;
        let gpu_dir = cfg.profiles_path().join("gpu");
        let profiles = GpuProfiles::load_dir(&gpu_dir)?;
        let sim = match &cfg.simulator {
            Some(sc) => Some(
                SimRuntime::start(sc, &cfg.path, &cfg.profiles_path(), &host, &profiles, true)
                    .await
                    .context("starting the simulated GPUs")?,
            ),
            None => None,
        };
        let gpus = crate::service::daemon::open_gpu_backend(
            &cfg.gpus,
            &cfg.path,
            &host,
            &profiles,
            sim.as_ref(),
        )?
        .context("gpus.backend: the agent needs GPUs")?;
        // `coolantd agent` ticks in wall time even on simulated GPUs, as its tests expect;
        // only the simulated rack's agents (`coolantd sim`) keep a sped-up plant's time.
        let time_scale = 1.0;
        let setup = AgentSetup {
            host,
            dry_run,
            gpus,
            mqtt: cfg.mqtt.resolved(cfg.base_dir()),
            section: cfg.agent.clone(),
            state_dir: cfg.state_dir(),
            time_scale,
            ops: OpsSetup::from_file(&cfg),
        };
        let mut agent = Agent::start_with(setup).await?;
        agent._sim = sim;
        Ok(agent)
    }

    /// Starts an agent on the given GPUs and broker.
    pub async fn start_with(setup: AgentSetup) -> anyhow::Result<Agent> {
        let AgentSetup {
            host,
            dry_run,
            gpus,
            mqtt,
            section,
            state_dir,
            time_scale,
            ops,
        } = setup;
        let inventory = gpus.inventory();
        anyhow::ensure!(!inventory.is_empty(), "no GPU found on host {host}");
        let mut limits = if dry_run {
            None
        } else {
            Some(LimitStore::open(&state_dir).context("opening the recorded power limits")?)
        };
        // Limits an earlier run recorded but never restored are caps of a run that crashed:
        // put the originals back first, or they would be taken for the GPUs' own limits.
        if let Some(store) = limits.as_mut().filter(|s| !s.is_empty()) {
            tracing::warn!(
                recorded = store.recorded().count(),
                "power limits left by an earlier run; restoring them before the agent starts"
            );
            restore_recorded(store, gpus.as_ref(), &inventory);
        }
        let session = random_session();
        let first = gpus.read_fast(Duration::ZERO);
        let facts = Facts::new(
            &host,
            session,
            inventory
                .iter()
                .map(|st| {
                    let now = first
                        .iter()
                        .find(|s| s.key == st.key)
                        .and_then(|s| s.enforced_limit)
                        .unwrap_or(st.power_default);
                    GpuFacts::from_static(st, now)
                })
                .collect(),
        );
        let core = AgentCore::new(
            AgentConfig {
                host: host.clone(),
                session,
                dry_run,
                guard: section.guard(),
            },
            facts.gpus.iter().map(GpuLimits::from_facts),
        );
        let prefix = mqtt.topic_prefix.clone();
        let status_topic = Topic::format(&prefix, &host, Kind::Status);
        let will =
            wire::encode(&status(&host, session, false)).context("encoding the offline status")?;
        let (link, inbox) = WireLink::start(WireLinkOptions {
            cfg: &mqtt,
            client_id: mqtt
                .client_id
                .clone()
                .unwrap_or_else(|| format!("coolantd-agent-{host}")),
            will_topic: status_topic.clone(),
            will_payload: will,
            subscriptions: vec![Topic::format(&prefix, &host, Kind::Caps)],
        })
        .context("starting the MQTT session")?;
        let ops = ops::Ops::start(&ops, &host, dry_run, gpus.clone()).await?;
        let agent = Agent {
            host,
            prefix,
            session,
            dry_run,
            period: section.period().div_f64(time_scale),
            started: Instant::now(),
            gpus,
            inventory,
            facts,
            core,
            limits,
            link,
            inbox,
            seq: 0,
            ops,
            time_scale,
            partitioned: false,
            _sim: None,
        };
        agent.publish_retained(
            Kind::Status,
            wire::encode(&status(&agent.host, session, true)),
        );
        agent.publish_retained(Kind::Facts, wire::encode(&agent.facts));
        if dry_run {
            tracing::warn!("DRY RUN: caps are decided and acknowledged as \"would set\"; no GPU power limit is written");
        }
        tracing::info!(
            host = %agent.host,
            gpus = agent.inventory.len(),
            session = agent.session,
            broker = %format!("{}:{}", mqtt.host, mqtt.port()),
            "agent started"
        );
        Ok(agent)
    }

    fn now(&self) -> Mono {
        self.started.elapsed().mul_f64(self.time_scale)
    }

    /// The tick period in wall time.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The next incoming message; `None` when the session's task has ended.
    pub async fn recv(&mut self) -> Option<WireIncoming> {
        self.inbox.recv().await
    }

    /// Cuts the host off (a simulated partition) or heals it.
    pub fn set_partitioned(&mut self, partitioned: bool) {
        self.partitioned = partitioned;
    }

    /// Dies as a killed process would: no restore, no goodbye; the broker publishes the
    /// last will when it sees the connection drop.
    pub fn die(self) {
        self.link.abort();
    }

    fn topic(&self, kind: Kind) -> String {
        Topic::format(&self.prefix, &self.host, kind)
    }

    fn publish_retained(&self, kind: Kind, bytes: Result<Vec<u8>, wire::WireError>) {
        if self.partitioned {
            return;
        }
        match bytes {
            Ok(b) => {
                self.link.publish(&self.topic(kind), b, true);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode the {kind} message"),
        }
    }

    /// One tick: read, guard, apply, publish.
    pub fn tick(&mut self) {
        let t0 = Instant::now();
        let now = self.now();
        let samples = self.gpus.read_fast(now);
        let locals: Vec<LocalReading> = samples.iter().map(local).collect();
        let decisions = self.core.tick(now, &locals);
        let failed = self.apply(&decisions, &samples);
        self.ops.applied(decisions.len(), failed.len());
        self.log_events();
        if self.partitioned {
            return;
        }
        self.seq += 1;
        let readings = Readings {
            v: Some(VERSION),
            host: self.host.clone(),
            session: self.session,
            seq: self.seq,
            sent_unix_ms: unix_ms(),
            facts_hash: self.facts.hash,
            gpus: samples
                .iter()
                .map(|s| GpuReading::from_sample(s, self.ops.energy(s.key.index)))
                .collect(),
        };
        match wire::encode(&readings) {
            Ok(b) => {
                let sent = self.link.publish(&self.topic(Kind::Readings), b, false);
                self.ops.readings(sent);
            }
            Err(e) => crate::log_limited!(error, "cannot encode the readings", error = %e),
        }
        self.ops.after_tick(ops::TickReport {
            now,
            wall: SystemTime::now(),
            took: t0.elapsed(),
            samples: &samples,
            inventory: &self.inventory,
            core: &self.core,
            link: &self.link,
            seq: self.seq,
        });
    }

    /// An incoming message: only leases are expected.
    pub fn incoming(&mut self, m: WireIncoming) {
        if self.partitioned {
            return;
        }
        let arrived = Instant::now();
        let kind = Topic::parse(&self.prefix, &m.topic).map(|t| t.kind);
        if kind != Some(Kind::Caps) {
            crate::log_limited!(warn, "unexpected MQTT message ignored", topic = %m.topic);
            return;
        }
        // A retained lease would replay an old cap at every connect; the format forbids it.
        if m.retain {
            crate::log_limited!(warn, "retained cap lease refused: leases must not be retained", topic = %m.topic);
            return;
        }
        let lease: CapLease = match wire::decode(&m.payload) {
            Ok(l) => l,
            Err(e) => {
                crate::log_limited!(warn, "cap lease refused", topic = %m.topic, error = %e);
                return;
            }
        };
        let now = self.now();
        let answer = self.core.handle_lease(now, &lease);
        self.log_events();
        if lease.host != self.host {
            return;
        }
        let samples = self.gpus.read_fast(now);
        let failed = self.apply(&answer.decisions, &samples);
        self.ops.applied(answer.decisions.len(), failed.len());
        let after = if self.dry_run || answer.decisions.is_empty() {
            samples
        } else {
            self.gpus.read_fast(self.now())
        };
        let read_back: Vec<(u32, Result<Watts, ActuationError>)> = answer
            .accepted
            .iter()
            .map(|&index| {
                if let Some((_, e)) = failed.iter().find(|(i, _)| *i == index) {
                    return (index, Err(e.clone()));
                }
                let enforced = after
                    .iter()
                    .find(|s| s.key.index == index)
                    .and_then(|s| s.enforced_limit)
                    .ok_or_else(|| {
                        ActuationError::Failed("the enforced limit could not be read back".into())
                    });
                (index, enforced)
            })
            .collect();
        let mut ack = self.core.ack(lease.id, &answer.refusals, &read_back);
        if self.dry_run {
            mark_would_set(&mut ack, &self.core);
        }
        tracing::info!(
            id = lease.id,
            results = ack.results.len(),
            dry_run = self.dry_run,
            "cap lease acknowledged"
        );
        match wire::encode(&ack) {
            Ok(b) => {
                self.link.publish(&self.topic(Kind::Acks), b, false);
                self.ops.acked(arrived.elapsed());
            }
            Err(e) => {
                tracing::error!(error = %e, id = lease.id, "cannot encode the acknowledgement")
            }
        }
    }

    /// Applies decided caps (in dry run: logs them). Records the original limits first.
    /// Returns the GPUs whose write failed.
    fn apply(
        &mut self,
        decisions: &[CapDecision],
        samples: &[GpuSample],
    ) -> Vec<(u32, ActuationError)> {
        let mut failed = Vec::new();
        if decisions.is_empty() {
            return failed;
        }
        if self.dry_run {
            for d in decisions {
                tracing::info!(gpu = d.index, cause = %cause(d.cause), "would set the power limit to {:.0} W", d.limit.get());
            }
            return failed;
        }
        if let Some(store) = self.limits.as_mut() {
            let fresh = decisions.iter().filter_map(|d| {
                let st = self.inventory.iter().find(|s| s.key.index == d.index)?;
                let original = samples
                    .iter()
                    .find(|s| s.key == st.key)
                    .and_then(|s| s.enforced_limit)
                    .unwrap_or(st.power_default);
                Some((st.key.clone(), st.uuid.clone(), original))
            });
            if let Err(e) = store.record_all(fresh) {
                tracing::error!(error = %e, "cannot record the GPUs' original power limits; caps are applied anyway, restore them by hand if the agent stops");
            }
        }
        for d in decisions {
            let key = GpuKey {
                host: self.host.clone(),
                index: d.index,
            };
            match set_gpu_power_limit(self.gpus.as_ref(), &key, d.limit) {
                // The guard's PID moves a cap a little every tick: its changes go to the
                // debug log; the guard's state changes and the leases' caps to the info log.
                Ok(()) if d.cause == Cause::Guard => {
                    tracing::debug!(
                        gpu = d.index,
                        limit_w = d.limit.get(),
                        "power limit set by the local guard"
                    )
                }
                Ok(()) => {
                    tracing::info!(gpu = d.index, cause = %cause(d.cause), limit_w = d.limit.get(), "power limit set")
                }
                Err(e) => {
                    tracing::warn!(gpu = d.index, error = %e, "could not set the power limit");
                    failed.push((d.index, e));
                }
            }
        }
        failed
    }

    fn log_events(&mut self) {
        let now = self.now();
        while let Some(ev) = self.core.poll_event() {
            // Lease expiry and a GPU at slowdown are alarms: `ops` logs each once, publishes
            // and writes it.
            self.ops.on_event(now, &ev);
            match ev {
                AgentEvent::LeaseAccepted { id, .. } => tracing::info!(id, "cap lease accepted"),
                AgentEvent::LeaseRenewed { id, .. } => tracing::debug!(id, "cap lease renewed"),
                AgentEvent::LeaseExpired { .. } => {}
                AgentEvent::StaleLease { id } => tracing::warn!(
                    id,
                    "a cap lease that already ended here arrived again; refused, not re-applied"
                ),
                AgentEvent::LeaseReleased { id, released } => tracing::info!(
                    id,
                    gpus = ?released,
                    "the controller released caps; the local guard takes them over and raises them gradually"
                ),
                AgentEvent::LeaseForOtherHost { host } => {
                    crate::log_limited!(warn, "a cap lease for another host arrived on this host's topic; ignored", lease_host = %host)
                }
                AgentEvent::CapRefused { id, index, refusal } => {
                    tracing::warn!(id, gpu = index, refusal = %refusal, "cap refused")
                }
                AgentEvent::GuardCritical { index, margin, cap } => tracing::debug!(
                    gpu = index,
                    margin_k = margin.0,
                    cap_w = cap.get(),
                    "GPU at its slowdown margin; the guard cut its cap this tick"
                ),
                AgentEvent::GuardCapping { index, cap } => {
                    tracing::warn!(gpu = index, cap_w = cap.get(), "the local guard is capping")
                }
                AgentEvent::GuardReleased { index } => {
                    tracing::info!(gpu = index, "the local guard is back at the original limit")
                }
            }
        }
    }

    /// Restores the recorded limits, publishes the readings that show them and the offline
    /// status, and closes the session.
    pub async fn leave(mut self) {
        self.ops.stopping();
        if let Some(store) = self.limits.as_mut() {
            let n = restore_recorded(store, self.gpus.as_ref(), &self.inventory);
            tracing::info!(restored = n, "power limits restored");
        }
        // The last readings show the limits the agent leaves the GPUs at.
        self.tick_readings_only();
        let offline = wire::encode(&status(&self.host, self.session, false)).ok();
        let topic = self.topic(Kind::Status);
        self.ops.shutdown(&self.link).await;
        self.link
            .shutdown(offline.map(|b| (topic, b)), CLOSE_BOUND)
            .await;
    }

    fn tick_readings_only(&mut self) {
        let samples = self.gpus.read_fast(self.now());
        self.seq += 1;
        let readings = Readings {
            v: Some(VERSION),
            host: self.host.clone(),
            session: self.session,
            seq: self.seq,
            sent_unix_ms: unix_ms(),
            facts_hash: self.facts.hash,
            gpus: samples
                .iter()
                .map(|s| GpuReading::from_sample(s, None))
                .collect(),
        };
        if let Ok(b) = wire::encode(&readings) {
            self.link.publish(&self.topic(Kind::Readings), b, false);
        }
    }
}

fn local(s: &GpuSample) -> LocalReading {
    LocalReading {
        index: s.key.index,
        core: s.core,
        hbm: s.hbm,
        power: s.power_instant,
    }
}

fn cause(c: Cause) -> String {
    match c {
        Cause::Lease { id } => format!("lease {id}"),
        Cause::Guard => "local guard".into(),
        Cause::Released => "released".into(),
    }
}

/// In dry run the enforced limits read back are the unchanged ones: each result also says
/// what would have been set.
fn mark_would_set(ack: &mut CapAck, core: &AgentCore) {
    for r in &mut ack.results {
        if r.refusal.is_some() {
            continue;
        }
        if let Some(w) = core.decided(r.index) {
            r.detail = Some(format!("would set {:.0} W", w.get()));
        }
    }
}

fn status(host: &str, session: u64, online: bool) -> Status {
    Status {
        v: Some(VERSION),
        host: host.to_string(),
        session,
        online,
        sent_unix_ms: unix_ms(),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random session id: std's per-process random hash keys, no extra dependency.
fn random_session() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}
