//! `coolantd sim`: the plant simulator alone, serving its CDU over Modbus TCP, and with
//! `simulator.agents = true` a whole rack: one host agent per simulated host on the broker.

use super::daemon::load_profiles;
use super::sim_rack::RackAgents;
use crate::config::Config;
use crate::sim::SimRuntime;
use anyhow::Context as _;

/// Runs the simulator alone until SIGINT/SIGTERM, for pointing other tools (mbpoll, a
/// second coolantd, a SCADA) at the simulated CDU, or a controller at the simulated rack.
pub async fn sim_only(cfg: Config) -> anyhow::Result<()> {
    let host = cfg.site.host_name();
    let profiles = load_profiles(&cfg)?;
    let sc = cfg
        .simulator
        .as_ref()
        .context("`coolantd sim` needs a [simulator] section")?;
    if sc.external {
        return Err(crate::config::ConfigError {
            file: cfg.path.clone(),
            issues: vec![crate::config::ConfigIssue {
                key: "simulator.external".into(),
                expected: "false for `coolantd sim`: it is the process that runs the plant".into(),
            }],
        }
        .into());
    }
    let sim = SimRuntime::start(
        sc,
        &cfg.path,
        &cfg.profiles_path(),
        &host,
        &profiles.gpu,
        true,
    )
    .await?;
    tracing::info!(modbus = %sim.modbus_addr(), "simulated CDU serving Modbus TCP; Ctrl-C to stop");
    // Validation makes [mqtt] present whenever the agents are asked for.
    let agents = match (&cfg.mqtt, sc.agents) {
        (Some(m), true) => Some(RackAgents::start(
            sc,
            &sim,
            &cfg.site.name,
            &m.resolved(cfg.base_dir()),
            &cfg.state_dir(),
        )),
        _ => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if let Some(a) = agents {
        a.stop().await;
    }
    sim.stop();
    Ok(())
}
