//! What makes the agent an operable service, beside its wire protocol: its counters, its
//! InfluxDB points ([`super::sink`]), its HTTP endpoint ([`super::http`]), its alarms
//! ([`super::alarms`]), systemd's notifications and the slow GPU counters (energy).
//!
//! The agent's loop calls in at a few points (`after_tick`, `on_event`, `applied`, `acked`,
//! `readings`) and never waits on any of these: InfluxDB ships from the spool in its own
//! task, the HTTP endpoint reads a snapshot through a `watch` channel, slow NVML reads run on
//! a blocking thread.

use super::alarms::AgentAlarms;
use crate::agent::{AgentCore, AgentEvent, GuardState};
use crate::collect::GpuBackend;
use crate::config::AgentFile;
use crate::link::mqtt::WireLink;
use crate::model::{GpuSample, GpuSlowSample, GpuStatic, Mono, Snapshot};
use crate::service::http::{self, Health};
use crate::service::notify::Notifier;
use crate::service::sink_alarms::SinkAlarms;
use crate::sink::influx::InfluxSink;
use crate::sink::schema::{AgentGpuHealth, AgentHealth, Ctx};
use crate::units::Joules;
use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the InfluxDB sink may take to ship its backlog on exit; what is left stays in
/// the spool for the next start.
const SINK_DEADLINE: Duration = Duration::from_secs(5);

/// What one tick hands over.
pub(super) struct TickReport<'a> {
    pub now: Mono,
    pub wall: SystemTime,
    pub took: Duration,
    pub samples: &'a [GpuSample],
    pub inventory: &'a [GpuStatic],
    pub core: &'a AgentCore,
    pub link: &'a WireLink,
    pub seq: u64,
}

/// The HTTP endpoint's liveness, the snapshot it serves and its task.
type Endpoint = (Arc<Health>, watch::Sender<Arc<Snapshot>>, JoinHandle<()>);

pub(super) struct Ops {
    site: String,
    host: String,
    health: AgentHealth,
    tick: u64,
    alarms: AgentAlarms,
    /// The InfluxDB sink's own alarms (points dropped or rejected, spool damaged or its
    /// disk failing), as the daemon raises them.
    sink_alarms: SinkAlarms,
    alarm_topic: String,
    influx: Option<InfluxSink>,
    http: Option<Endpoint>,
    notifier: Notifier,
    ready_sent: bool,
    slow: Arc<Mutex<Vec<GpuSlowSample>>>,
    /// The `at` of the slow samples last written, so each slow read is written once.
    slow_written: Option<Mono>,
    slow_task: JoinHandle<()>,
}

/// What the agent's service side needs from its configuration: the file's sections for
/// `coolantd agent`, or a bare setup (no database, no endpoint) for the simulated rack's
/// agents.
#[derive(Debug, Clone)]
pub struct OpsSetup {
    /// Named in a refusal (the period against systemd's watchdog).
    pub file: PathBuf,
    pub site: String,
    pub topic_prefix: String,
    /// The agent's tick period, in wall time.
    pub period: Duration,
    pub slow_period: Duration,
    pub influx: Option<crate::sink::influx::InfluxConfig>,
    pub http: Option<crate::service::http::HttpConfig>,
    /// The sink's spool lives here.
    pub state_dir: PathBuf,
}

impl OpsSetup {
    /// The service side as an agent's file configures it.
    pub fn from_file(cfg: &AgentFile) -> OpsSetup {
        OpsSetup {
            file: cfg.path.clone(),
            site: cfg.site.name.clone(),
            topic_prefix: cfg.mqtt.topic_prefix.clone(),
            period: cfg.agent.period(),
            slow_period: Duration::from_millis(cfg.gpus.slow_period_ms),
            influx: cfg.influx.clone(),
            http: cfg.http.clone(),
            state_dir: cfg.state_dir(),
        }
    }
}

impl Ops {
    /// Starts the sink, binds the HTTP port (before `READY=1`, so a port in use fails the
    /// start) and starts the slow reader. Refuses a tick period systemd's watchdog cannot
    /// tolerate.
    pub(super) async fn start(
        cfg: &OpsSetup,
        host: &str,
        dry_run: bool,
        gpus: Arc<dyn GpuBackend>,
    ) -> anyhow::Result<Ops> {
        // The watchdog is fed once per tick, and a late tick delays the next: two pings may
        // be two periods apart. Refused as a configuration error (exit 78: no restart loop).
        if let Some(wd) = crate::service::notify::watchdog_interval() {
            if cfg.period * 2 > wd {
                return Err(crate::config::ConfigError {
                    file: cfg.file.clone(),
                    issues: vec![crate::config::ConfigIssue {
                        key: "agent.period_ms".into(),
                        expected: format!(
                            "at most half of systemd's watchdog interval ({} ms, WatchdogSec=), got {}",
                            wd.as_millis(),
                            cfg.period.as_millis()
                        ),
                    }],
                }
                .into());
            }
        }
        let notifier = Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable; systemd will not hear from this agent");
            Notifier::disabled()
        });
        let influx = match &cfg.influx {
            Some(ic) => {
                Some(InfluxSink::start(ic, &cfg.state_dir).context("starting the InfluxDB sink")?)
            }
            None => None,
        };
        let http = match cfg.http.clone().filter(|h| h.enabled) {
            Some(h) => {
                let listener = h.bind().await?;
                let health = Arc::new(Health::new(cfg.period));
                let (tx, rx) = watch::channel(Arc::new(super::http::empty_snapshot(
                    &cfg.site, host, dry_run,
                )));
                let served = health.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = http::serve(listener, rx, served).await {
                        tracing::error!(error = %e, "HTTP endpoint stopped");
                    }
                });
                Some((health, tx, task))
            }
            None => None,
        };
        let slow = Arc::new(Mutex::new(Vec::new()));
        let slow_task =
            crate::service::daemon::spawn_slow_reader(gpus, cfg.slow_period, slow.clone());
        Ok(Ops {
            site: cfg.site.clone(),
            host: host.to_string(),
            health: AgentHealth {
                dry_run,
                ..AgentHealth::default()
            },
            tick: 0,
            alarms: AgentAlarms::new(host),
            sink_alarms: SinkAlarms::default(),
            alarm_topic: crate::link::mqtt::Topics::new(&cfg.topic_prefix, &cfg.site, host).events,
            influx,
            http,
            notifier,
            ready_sent: false,
            slow,
            slow_written: None,
            slow_task,
        })
    }

    /// The GPU's energy counter from the last slow read.
    pub(super) fn energy(&self, index: u32) -> Option<Joules> {
        let slow = self.slow.lock().unwrap_or_else(|e| e.into_inner());
        slow.iter()
            .find(|s| s.key.index == index)
            .and_then(|s| s.energy)
    }

    /// An event of the agent's core: counted, and an alarm when it is one.
    pub(super) fn on_event(&mut self, now: Mono, ev: &AgentEvent) {
        match ev {
            AgentEvent::LeaseAccepted { .. } | AgentEvent::LeaseRenewed { .. } => {
                self.health.leases_accepted += 1
            }
            AgentEvent::LeaseExpired { .. } => self.health.leases_expired += 1,
            AgentEvent::CapRefused { .. } => self.health.caps_refused += 1,
            _ => {}
        }
        self.alarms.on_event(now, unix_ns(SystemTime::now()), ev);
    }

    /// Caps written (in dry run: decided), and how many of the writes failed.
    pub(super) fn applied(&mut self, decided: usize, failed: usize) {
        self.health.caps_applied += decided.saturating_sub(failed) as u64;
        self.health.cap_write_failures += failed as u64;
    }

    /// A lease acknowledged `took` after it was taken from the inbox.
    pub(super) fn acked(&mut self, took: Duration) {
        self.health.ack_latency_ms = Some(took.as_secs_f64() * 1000.0);
    }

    /// A `readings` message handed to the broker, or not.
    pub(super) fn readings(&mut self, published: bool) {
        if published {
            self.health.readings_published += 1;
        } else {
            self.health.readings_unsent += 1;
        }
    }

    /// After each tick: alarms, points to InfluxDB, the snapshot for HTTP, the watchdog.
    pub(super) fn after_tick(&mut self, t: TickReport<'_>) {
        self.tick += 1;
        let wall_ns = unix_ns(t.wall);
        let connected = t.link.is_connected();
        self.alarms.broker(t.now, wall_ns, connected);
        self.alarms
            .guards(t.now, wall_ns, t.core.guards().map(|g| (g.index, g.state)));
        let lease = t.core.lease();
        let gpus: Vec<AgentGpuHealth> = t
            .core
            .guards()
            .map(|g| AgentGpuHealth {
                index: g.index,
                guard_engaged: g.engaged,
                guard_critical: g.state == GuardState::Critical,
                guard_cap_w: g.cap.get(),
                lease_cap_w: lease.and_then(|l| l.caps.get(&g.index)).map(|w| w.get()),
                decided_cap_w: g.decided.get(),
            })
            .collect();
        let stats = self.influx.as_ref().map(|s| s.stats());
        if let Some(stats) = &stats {
            for ev in self.sink_alarms.update(t.now, stats) {
                self.alarms.external(ev, wall_ns);
            }
        }
        let h = &mut self.health;
        h.seq = t.seq;
        h.broker_connected = connected;
        h.lease_active = lease.is_some();
        h.tick_duration_ms = Some(t.took.as_secs_f64() * 1000.0);
        h.guards_engaged = gpus.iter().filter(|g| g.guard_engaged).count() as u64;
        h.read_failures += read_failures(t.inventory, t.samples);
        let mut active = self.alarms.active();
        active.extend(self.sink_alarms.active().cloned());
        h.alarms_active = active.len() as u64;

        let ctx = Ctx {
            site: &self.site,
            host: &self.host,
        };
        let slow = {
            let s = self.slow.lock().unwrap_or_else(|e| e.into_inner());
            let at = s.first().map(|x| x.at);
            if at.is_some() && at != self.slow_written {
                self.slow_written = at;
                s.clone()
            } else {
                Vec::new()
            }
        };
        let events = self.alarms.take_new();
        let points = super::sink::points(
            &ctx,
            &super::sink::TickPoints {
                wall_ns,
                samples: t.samples,
                slow: &slow,
                inventory: t.inventory,
                health: &self.health,
                gpus: &gpus,
                alarms: &events,
                influx: stats,
            },
        );
        if let Some(sink) = &self.influx {
            sink.submit(&points);
        }
        if let Some((health, tx, _)) = &self.http {
            let snap = super::http::snapshot(
                &ctx,
                super::http::TickView {
                    tick: self.tick,
                    wall_ns,
                    dry_run: self.health.dry_run,
                    connected,
                    samples: t.samples,
                    inventory: t.inventory,
                    alarms: active,
                    points,
                },
            );
            tx.send_replace(Arc::new(snap));
            health.tick(t.took);
            health.set_ready(true);
        }
        if !self.ready_sent {
            tell(self.notifier.ready());
            self.ready_sent = true;
        }
        // A tick that completed is a live agent: only then is the watchdog fed.
        tell(self.notifier.watchdog());
        let topic = &self.alarm_topic;
        self.alarms
            .flush(|payload| t.link.publish(topic, payload, false));
    }

    /// Tells systemd and the HTTP endpoint that the agent is stopping.
    pub(super) fn stopping(&self) {
        if let Some((health, _, _)) = &self.http {
            health.set_stopping();
        }
        tell(self.notifier.stopping());
    }

    /// Hands the alarms still waiting to the broker (before the session closes), stops the
    /// HTTP endpoint and the slow reader, and ships the InfluxDB backlog within its deadline.
    pub(super) async fn shutdown(mut self, link: &WireLink) {
        let topic = self.alarm_topic.clone();
        self.alarms
            .flush(|payload| link.publish(&topic, payload, false));
        self.slow_task.abort();
        if let Some((_, _, task)) = self.http.take() {
            task.abort();
        }
        if let Some(sink) = self.influx.take() {
            let stats = sink.shutdown(SINK_DEADLINE).await;
            tracing::info!(
                written = stats.written,
                backlog = stats.backlog,
                "InfluxDB sink stopped"
            );
        }
    }
}

/// Values a read should have returned and did not: a GPU missing altogether counts its core
/// temperature and its power.
fn read_failures(inventory: &[GpuStatic], samples: &[GpuSample]) -> u64 {
    inventory
        .iter()
        .map(
            |st| match samples.iter().find(|s| s.key.index == st.key.index) {
                Some(s) => u64::from(s.core.is_none()) + u64::from(s.power_instant.is_none()),
                None => 2,
            },
        )
        .sum()
}

fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn tell(r: std::io::Result<()>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "sd_notify message not delivered");
    }
}
