//! `coolantd sim`: the plant simulator alone, serving its CDU over Modbus TCP.

use super::daemon::load_profiles;
use crate::config::Config;
use crate::sim::SimRuntime;
use anyhow::Context as _;

/// Runs the simulator alone until SIGINT/SIGTERM, for pointing other tools (mbpoll, a
/// second coolantd, a SCADA) at the simulated CDU.
pub async fn sim_only(cfg: Config) -> anyhow::Result<()> {
    let host = cfg.site.host_name();
    let profiles = load_profiles(&cfg)?;
    let sc = cfg
        .simulator
        .as_ref()
        .context("`coolantd sim` needs a [simulator] section")?;
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
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sim.stop();
    Ok(())
}
