//! The `coolantd` command line.

use clap::{Parser, Subcommand};
use coolantd::config::Config;
use coolantd::service;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "coolantd",
    version,
    about = "Closed-loop liquid-cooling controller for GPU clusters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: collectors → control → pumps and power caps, metrics to the sinks.
    Run {
        #[arg(long, short, default_value = "/etc/coolantd/config.toml")]
        config: PathBuf,
        /// Decide and publish everything, write nothing to any GPU or CDU.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate a configuration file and every firmware profile it names.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Read every GPU and every configured CDU sensor once and print them. Never writes.
    Probe {
        #[arg(long, short, default_value = "/etc/coolantd/config.toml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the plant simulator alone: simulated GPUs and a simulated CDU on Modbus TCP.
    Sim {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Restore the GPU power limits an earlier run recorded (used by ExecStopPost=). Does
    /// nothing when control.power_cap.on_shutdown = "hold", unless --force is given.
    Restore {
        #[arg(long, short, default_value = "/etc/coolantd/config.toml")]
        config: PathBuf,
        /// Restore even when the configuration says to hold the limits (for an operator).
        #[arg(long)]
        force: bool,
    },
}

/// sysexits(3) EX_CONFIG: the unit's `RestartPreventExitStatus=78` stops systemd from
/// restarting a daemon whose configuration is broken.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Restore { config, force } = &cli.cmd {
        return restore(config, *force);
    }
    // Configuration errors are printed before logging is set up: check-config must be
    // readable on a terminal and in ExecStartPre's journal output alike.
    let config_path = match &cli.cmd {
        Cmd::Run { config, .. }
        | Cmd::Probe { config, .. }
        | Cmd::Sim { config }
        | Cmd::Restore { config, .. } => config,
        Cmd::CheckConfig { file } => file,
    };
    // probe controls nothing, so it needs no [control] table.
    let loaded = if matches!(cli.cmd, Cmd::Probe { .. }) {
        Config::load_for_probe(config_path)
    } else {
        Config::load(config_path)
    };
    let cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coolantd: configuration refused:\n{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if let Cmd::CheckConfig { .. } = cli.cmd {
        return match service::run::load_profiles(&cfg) {
            Ok(p) => {
                println!(
                    "{}: OK ({} CDU(s), {} GPU profile(s), control period {} ms)",
                    config_path.display(),
                    cfg.cdus.len(),
                    p.gpu.len(),
                    cfg.control.period().as_millis()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("coolantd: configuration refused:\n{e}");
                ExitCode::from(EX_CONFIG)
            }
        };
    }
    service::logging::init(&cfg.logging);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coolantd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Run { config, dry_run } => {
                service::serve::run(
                    &config,
                    service::run::RunOptions {
                        dry_run,
                        sim_autostep: true,
                        sinks: true,
                    },
                )
                .await
            }
            Cmd::Probe { json, .. } => service::probe::probe(cfg, json).await,
            Cmd::Sim { .. } => service::probe::sim_only(cfg).await,
            Cmd::Restore { .. } | Cmd::CheckConfig { .. } => Ok(()),
        }
    });
    // A blocking NVML call or DNS lookup still running must not hold the exit past what
    // systemd's TimeoutStopSec allows.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    exit_code(result)
}

/// Maps a command's result to the exit status. A configuration error found after the file
/// itself was accepted (a broken firmware profile, found when `run` loads the profiles) is
/// EX_CONFIG too: a restart cannot fix it, and `RestartPreventExitStatus=78` relies on it.
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            if e.chain().any(|c| c.is::<coolantd::config::ConfigError>()) {
                eprintln!("coolantd: configuration refused:\n{e:#}");
                ExitCode::from(EX_CONFIG)
            } else {
                eprintln!("coolantd: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// `coolantd restore`, which must work even when the configuration does not validate (see
/// [`service::probe::RestoreTarget::load`]).
fn restore(config: &std::path::Path, force: bool) -> ExitCode {
    let (target, refused) = service::probe::RestoreTarget::load(config);
    match &target.config {
        Some(cfg) => service::logging::init(&cfg.logging),
        None => service::logging::init(&Default::default()),
    }
    if let Some(why) = refused {
        eprintln!(
            "coolantd: the configuration is invalid ({why}); restoring from {} anyway",
            target.state_dir.display()
        );
    }
    exit_code(service::probe::restore(target, force))
}
