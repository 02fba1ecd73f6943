//! The simulated rack's host agents (`coolantd sim` with `simulator.agents = true`): one
//! [`Agent`] per simulated host, each with its own broker session, host name and last will,
//! reading only its host's GPUs of the shared plant and applying its controller's caps to
//! it, as `coolantd agent` does on a real host. The faults of `[[simulator.faults]]` are
//! played on them at their plant times.

use crate::agent::AgentSection;
use crate::link::mqtt::MqttConfig;
use crate::service::agent::{Agent, AgentSetup, OpsSetup};
use crate::sim::{SimConfig, SimFault, SimFaultKind, SimGpus, SimRuntime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The running agents of a simulated rack.
pub struct RackAgents {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What one simulated host needs to (re)start its agent.
#[derive(Clone)]
struct HostPlan {
    host: String,
    site: String,
    gpus: SimGpus,
    mqtt: MqttConfig,
    section: AgentSection,
    state_dir: PathBuf,
    time_scale: f64,
    /// Fault transitions in wall time from the start: (when, kind, begins).
    events: Vec<(Duration, SimFaultKind, bool)>,
}

impl RackAgents {
    /// Starts one agent per host of `sc.hosts` on `sim`'s plant. `mqtt` is the resolved
    /// `[mqtt]` section; each agent's original limits are recorded under
    /// `state_dir/sim-agents/<host>`.
    pub fn start(
        sc: &SimConfig,
        sim: &SimRuntime,
        site: &str,
        mqtt: &MqttConfig,
        state_dir: &Path,
    ) -> Self {
        let (stop, _) = watch::channel(false);
        let start = Instant::now();
        let tasks = sc
            .hosts
            .iter()
            .map(|host| {
                let mut mqtt = mqtt.clone();
                mqtt.client_id = None;
                let plan = HostPlan {
                    host: host.clone(),
                    site: site.to_string(),
                    gpus: SimGpus::new(sim.plant().clone(), Some(host)),
                    mqtt,
                    section: sc.agent_section(),
                    state_dir: state_dir.join("sim-agents").join(host),
                    time_scale: sc.time_scale,
                    events: events_for(host, &sc.faults, sc.time_scale),
                };
                tokio::spawn(run_host(plan, start, stop.subscribe()))
            })
            .collect();
        tracing::info!(
            hosts = sc.hosts.len(),
            faults = sc.faults.len(),
            "simulated rack: one host agent per host"
        );
        RackAgents { stop, tasks }
    }

    /// Stops every agent the way SIGTERM stops `coolantd agent`: limits restored, offline
    /// status published, session closed.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The fault transitions of one host in wall time, in order.
fn events_for(
    host: &str,
    faults: &[SimFault],
    time_scale: f64,
) -> Vec<(Duration, SimFaultKind, bool)> {
    let mut ev: Vec<(Duration, SimFaultKind, bool)> = faults
        .iter()
        .filter(|f| f.host == host)
        .flat_map(|f| {
            let begin = Some((f.start().div_f64(time_scale), f.kind, true));
            let end = f.end().map(|e| (e.div_f64(time_scale), f.kind, false));
            begin.into_iter().chain(end)
        })
        .collect();
    ev.sort_by_key(|e| e.0);
    ev
}

async fn start_agent(plan: &HostPlan) -> Option<Agent> {
    let setup = AgentSetup {
        host: plan.host.clone(),
        dry_run: false,
        gpus: Arc::new(plan.gpus.clone()),
        mqtt: plan.mqtt.clone(),
        section: plan.section.clone(),
        state_dir: plan.state_dir.clone(),
        time_scale: plan.time_scale,
        // A simulated host writes no database and serves no endpoint of its own: the
        // controller's are the rack's.
        ops: OpsSetup {
            file: PathBuf::new(),
            site: plan.site.clone(),
            topic_prefix: plan.mqtt.topic_prefix.clone(),
            period: plan.section.period().div_f64(plan.time_scale),
            slow_period: Duration::from_secs(1),
            influx: None,
            http: None,
            state_dir: plan.state_dir.clone(),
        },
    };
    match Agent::start_with(setup).await {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::error!(host = %plan.host, error = format!("{e:#}"), "the simulated host's agent did not start");
            None
        }
    }
}

/// One host: its agent's loop, with the host's faults played at their times.
async fn run_host(plan: HostPlan, start: Instant, mut stop: watch::Receiver<bool>) {
    let mut agent = start_agent(&plan).await;
    let mut events = plan.events.iter().peekable();
    let mut timer = agent.as_ref().map(|a| ticker(a.period()));
    loop {
        let next_event = events.peek().map(|e| start + e.0);
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = sleep_until(next_event) => {
                let Some(&(_, kind, begins)) = events.next() else { continue };
                match (kind, begins) {
                    (SimFaultKind::AgentDies, true) => {
                        if let Some(a) = agent.take() {
                            tracing::warn!(host = %plan.host, fault = kind.name(), "simulated fault: the host's agent dies without a goodbye");
                            a.die();
                        }
                    }
                    (SimFaultKind::AgentDies, false) => {
                        if agent.is_none() {
                            tracing::warn!(host = %plan.host, fault = kind.name(), "simulated fault over: the host's agent starts again");
                            agent = start_agent(&plan).await;
                            timer = agent.as_ref().map(|a| ticker(a.period()));
                        }
                    }
                    (SimFaultKind::Partition, p) => {
                        if let Some(a) = agent.as_mut() {
                            if p {
                                tracing::warn!(host = %plan.host, fault = kind.name(), "simulated fault: the host is partitioned from the controller");
                            } else {
                                tracing::warn!(host = %plan.host, fault = kind.name(), "simulated fault over: the host is heard again");
                            }
                            a.set_partitioned(p);
                        }
                    }
                }
            }
            m = recv(agent.as_mut()) => match m {
                Some(m) => {
                    if let Some(a) = agent.as_mut() {
                        a.incoming(m);
                    }
                }
                None => {
                    tracing::error!(host = %plan.host, "the simulated agent's MQTT session ended");
                    agent = None;
                }
            },
            _ = tick(timer.as_mut()) => {
                if let Some(a) = agent.as_mut() {
                    a.tick();
                }
            }
        }
    }
    if let Some(a) = agent {
        a.leave().await;
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv(agent: Option<&mut Agent>) -> Option<crate::link::mqtt::WireIncoming> {
    match agent {
        Some(a) => a.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick(timer: Option<&mut tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_faults_are_played_in_wall_time_in_order() {
        let faults = vec![
            SimFault {
                at_s: 100.0,
                host: "node02".into(),
                kind: SimFaultKind::Partition,
                duration_s: Some(50.0),
            },
            SimFault {
                at_s: 20.0,
                host: "node02".into(),
                kind: SimFaultKind::AgentDies,
                duration_s: None,
            },
            SimFault {
                at_s: 10.0,
                host: "node01".into(),
                kind: SimFaultKind::AgentDies,
                duration_s: Some(5.0),
            },
        ];
        let ev = events_for("node02", &faults, 10.0);
        assert_eq!(
            ev,
            vec![
                (Duration::from_secs(2), SimFaultKind::AgentDies, true),
                (Duration::from_secs(10), SimFaultKind::Partition, true),
                (Duration::from_secs(15), SimFaultKind::Partition, false),
            ]
        );
    }
}
