//! The `coolantd` command line.

use clap::{CommandFactory, Parser, Subcommand};
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
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Decide and publish everything, write nothing to any GPU or CDU.
        #[arg(long)]
        dry_run: bool,
        /// Rehearse this exact configuration on the simulator: each CDU is simulated from its
        /// profile and unit id on a loopback port, the GPUs are simulated boards of the
        /// configured profile; pump speeds and power caps are written to the simulator only.
        /// No configured CDU address is contacted and NVML is not opened.
        #[arg(long, conflicts_with = "dry_run")]
        rehearse: bool,
    },
    /// Run the host agent of a rack: publish this host's GPU readings to the broker, apply
    /// the power caps its CDU's controller leases, guard the GPUs locally when the lease runs
    /// out (config/agent.toml).
    Agent {
        #[arg(long, short, default_value = DEFAULT_AGENT_CONFIG)]
        config: PathBuf,
        /// Decide and acknowledge caps as "would set", write no GPU power limit.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate a configuration file (the daemon's, or an agent's: one with an [agent] table), every firmware profile and secret file it names, and
    /// say whether it is a dry run or what it will write. Exit 78 when refused, 69 when
    /// --connect cannot reach a peer.
    CheckConfig {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Deprecated: the configuration file as a positional argument; use --config.
        #[arg(hide = true, conflicts_with = "config")]
        file: Option<PathBuf>,
        /// Also read every CDU once (Modbus, no write), connect to the MQTT broker, ask the
        /// database for its health and, with gpus.backend = "nvml", open NVML.
        #[arg(long)]
        connect: bool,
    },
    /// Read every GPU and every configured CDU sensor once and print them. Never writes.
    Probe {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the plant simulator alone: simulated GPUs and a simulated CDU on Modbus TCP.
    Sim {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Write the man pages (coolantd.1 and one per command) into DIR (packaging).
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
    /// Print a shell completion script for SHELL (packaging).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the running daemon's state, read from its HTTP endpoint (`[http] listen`).
    Status {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print the `/status` JSON document instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Restore the GPU power limits an earlier run recorded (used by ExecStopPost=). Does
    /// nothing when control.power_cap.on_shutdown = "hold", unless --force is given.
    Restore {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Restore even when the configuration says to hold the limits (for an operator).
        #[arg(long)]
        force: bool,
    },
    /// Print pump-loop PID gains fitted to a GPU profile's thermal model (SIMC), scheduled
    /// over pump speed, and the predicted response to a load step. Reads no configuration.
    Tune {
        /// GPU profile name (file stem in <profiles-dir>/gpu), for example h100-sxm.
        #[arg(long)]
        profile: String,
        /// Hottest-core set point, °C.
        #[arg(long)]
        setpoint: f64,
        /// Coolant supply temperature, °C.
        #[arg(long, default_value_t = 30.0)]
        supply: f64,
        /// Coolant flow through one GPU's cold plate with the pump at 100 %, l/min
        /// (default: the simulator's loop).
        #[arg(long)]
        flow_per_gpu: Option<f64>,
        /// Time constant with which the pump follows its command, s (default: the simulator's).
        #[arg(long)]
        pump_lag: Option<f64>,
        #[arg(long, default_value = "firmware-profiles")]
        profiles_dir: PathBuf,
    },
}

/// Where the package installs the configuration.
const DEFAULT_CONFIG: &str = "/etc/coolantd/config.toml";

/// Where the package installs a host agent's configuration.
const DEFAULT_AGENT_CONFIG: &str = "/etc/coolantd/agent.toml";

/// sysexits(3) EX_UNAVAILABLE: `check-config --connect` could not reach a peer.
const EX_UNAVAILABLE: u8 = 69;

/// sysexits(3) EX_CONFIG (`service::EX_CONFIG`).
const EX_CONFIG: u8 = service::EX_CONFIG;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::GenerateMan { dir } => return generate_man(dir),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "coolantd",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    if let Cmd::Restore { config, force } = &cli.cmd {
        return restore(config, *force);
    }
    if let Cmd::CheckConfig {
        config,
        file,
        connect,
    } = &cli.cmd
    {
        if file.is_some() {
            eprintln!(
                "coolantd: note: `check-config FILE` is deprecated; use `check-config --config FILE`"
            );
        }
        return check_config(file.as_ref().unwrap_or(config), *connect);
    }
    if let Cmd::Agent { config, dry_run } = &cli.cmd {
        return agent(config, *dry_run);
    }
    if let Cmd::Tune {
        profile,
        setpoint,
        supply,
        flow_per_gpu,
        pump_lag,
        profiles_dir,
    } = &cli.cmd
    {
        let (flow, lag) = service::tune::TuneRequest::defaults();
        let req = service::tune::TuneRequest {
            profiles_dir,
            profile,
            setpoint: *setpoint,
            supply: *supply,
            flow_per_gpu_lpm: flow_per_gpu.unwrap_or(flow),
            pump_lag_s: pump_lag.unwrap_or(lag),
        };
        return match service::tune::tune(&req) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("coolantd tune: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Configuration errors are printed before logging is set up: check-config must be
    // readable on a terminal and in ExecStartPre's journal output alike.
    let config_path = match &cli.cmd {
        Cmd::Run { config, .. }
        | Cmd::Probe { config, .. }
        | Cmd::Sim { config }
        | Cmd::Restore { config, .. }
        | Cmd::Status { config, .. }
        | Cmd::CheckConfig { config, .. } => config,
        Cmd::GenerateMan { .. } | Cmd::Completions { .. } => return ExitCode::SUCCESS,
        Cmd::Tune { .. } | Cmd::Agent { .. } => return ExitCode::SUCCESS,
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
            Cmd::Run {
                config,
                dry_run,
                rehearse,
            } => {
                service::daemon::serve::run(
                    &config,
                    service::daemon::RunOptions {
                        dry_run,
                        sim_autostep: true,
                        sinks: true,
                        rehearse,
                    },
                )
                .await
            }
            Cmd::Probe { json, .. } => service::probe::probe(cfg, json).await,
            Cmd::Sim { .. } => service::simulate::sim_only(cfg).await,
            Cmd::Status { json, .. } => service::status::status(&cfg, json).await,
            Cmd::Restore { .. }
            | Cmd::CheckConfig { .. }
            | Cmd::GenerateMan { .. }
            | Cmd::Completions { .. }
            | Cmd::Tune { .. }
            | Cmd::Agent { .. } => Ok(()),
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
    service::exit_code("coolantd", result)
}

/// `coolantd generate-man DIR`: coolantd.1 and coolantd-<command>.1 for each visible command.
fn generate_man(dir: &std::path::Path) -> ExitCode {
    let write = |name: String, cmd: clap::Command| -> std::io::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(without_hidden_positionals(cmd)).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)
    };
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let top = Cli::command();
        write("coolantd".into(), top.clone())?;
        for sub in top.get_subcommands().filter(|c| !c.is_hide_set()) {
            let name = format!("coolantd-{}", sub.get_name());
            let page = sub
                .clone()
                .display_name(name.clone())
                .bin_name(format!("coolantd {}", sub.get_name()));
            write(name, page)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coolantd: writing man pages to {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// clap_mangen leaves hidden options out of a page's synopsis but not hidden positionals
/// (check-config's deprecated `FILE`). Rendered as a hidden option, such an argument is left
/// out like the others; the command line itself still takes it positionally.
fn without_hidden_positionals(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        if a.is_hide_set() && a.is_positional() {
            a.long("hidden-positional")
        } else {
            a
        }
    })
}

/// `coolantd check-config`: everything `run` checks before it starts anything, the notes
/// worth a look, with `--connect` every peer tried once, and a last line saying DRY RUN or
/// what will be written.
fn check_config(path: &std::path::Path, connect: bool) -> ExitCode {
    use service::preflight;
    let refused = |e: &dyn std::fmt::Display| {
        eprintln!("coolantd: configuration refused:\n{e}");
        ExitCode::from(EX_CONFIG)
    };
    // An agent's file is told apart by its [agent] table; an unreadable file goes on to the
    // daemon's loader, which names the read error.
    if std::fs::read_to_string(path).is_ok_and(|t| coolantd::config::is_agent_config(&t)) {
        return check_agent_config(path, connect);
    }
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return refused(&e),
    };
    let profiles = match service::daemon::load_profiles(&cfg) {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    if let Some(sc) = cfg.simulator.as_ref().filter(|s| s.agents) {
        return check_sim_rack_config(&cfg, sc, &profiles);
    }
    if let Err(e) = preflight::check_startup(&cfg, true) {
        return refused(&e);
    }
    println!(
        "{}: OK ({} CDU(s), {} GPU profile(s), control period {} ms)",
        path.display(),
        cfg.cdus.len(),
        profiles.gpu.len(),
        cfg.control.period().as_millis()
    );
    for n in preflight::notes(&cfg) {
        println!("note: {n}");
    }
    let mut unreachable = false;
    let mut gpu_count = None;
    if connect {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("coolantd: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (reached, count) = rt.block_on(preflight::connect(&cfg, &profiles));
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        gpu_count = count;
        for r in reached {
            match r.result {
                Ok(what) => println!("connect: {}: OK, {what}", r.what),
                Err(why) => {
                    unreachable = true;
                    println!("connect: {}: FAILED, {why}", r.what);
                }
            }
        }
    }
    println!("{}", preflight::verdict(&cfg, &profiles, gpu_count));
    if unreachable {
        ExitCode::from(EX_UNAVAILABLE)
    } else {
        ExitCode::SUCCESS
    }
}

/// `coolantd restore`, which must work even when the configuration does not validate (see
/// [`service::restore::RestoreTarget::load`]).
fn restore(config: &std::path::Path, force: bool) -> ExitCode {
    let (target, refused) = service::restore::RestoreTarget::load(config);
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
    exit_code(service::restore::restore(target, force))
}

/// `coolantd check-config` for a simulated rack with agents (`coolantd sim`): it controls
/// nothing, so what is checked is its simulator, its profiles and its broker's secrets.
fn check_sim_rack_config(
    cfg: &Config,
    sc: &coolantd::sim::SimConfig,
    profiles: &service::daemon::LoadedProfiles,
) -> ExitCode {
    let mut issues = coolantd::config::Issues::default();
    service::preflight::check_secrets(cfg, &mut issues);
    issues.check(
        profiles.gpu.by_name(&sc.gpu_profile).is_some(),
        "simulator.gpu_profile",
        format!(
            "a GPU profile of the profiles folder, got `{}`",
            sc.gpu_profile
        ),
    );
    if let Err(e) = issues.into_result(&cfg.path) {
        eprintln!("coolantd: configuration refused:\n{e}");
        return ExitCode::from(EX_CONFIG);
    }
    let broker = cfg
        .mqtt
        .as_ref()
        .map(|m| format!("{}:{}", m.host, m.port()))
        .unwrap_or_default();
    println!(
        "{}: OK (simulated rack for `coolantd sim`: {} hosts × {} GPUs, one agent per host on \
         the broker {broker}, CDU on Modbus TCP {}, {} scheduled fault(s), time scale {})",
        cfg.path.display(),
        sc.hosts.len(),
        sc.gpus_per_host,
        sc.listen,
        sc.faults.len(),
        sc.time_scale
    );
    println!(
        "writes only to the simulated plant: the agents' caps and the controller's pump speed"
    );
    ExitCode::SUCCESS
}

/// `coolantd check-config` for a host agent's file: the file, its GPU profiles folder and,
/// with `--connect`, the broker.
fn check_agent_config(path: &std::path::Path, connect: bool) -> ExitCode {
    use coolantd::config::AgentFile;
    let refused = |e: &dyn std::fmt::Display| {
        eprintln!("coolantd: configuration refused:\n{e}");
        ExitCode::from(EX_CONFIG)
    };
    let cfg = match AgentFile::load(path) {
        Ok(c) => c,
        Err(e) => return refused(&e),
    };
    let gpu_dir = cfg.profiles_path().join("gpu");
    let profiles = match coolantd::profile::gpu::GpuProfiles::load_dir(&gpu_dir) {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    if let Some(sim) = &cfg.simulator {
        if profiles.by_name(&sim.gpu_profile).is_none() {
            return refused(&format!(
                "{}:\n  simulator.gpu_profile: expected a GPU profile in {}, but there is no `{}`",
                path.display(),
                gpu_dir.display(),
                sim.gpu_profile
            ));
        }
    }
    // The InfluxDB secrets are read when the agent starts its sink: a missing one is refused
    // here (the unit's ExecStartPre=, exit 78) rather than failing every restart.
    if let Some(ic) = &cfg.influx {
        if let Err(e) = ic.resolve_token().and_then(|_| ic.resolve_password()) {
            return refused(&format!("{}:\n  influx: {e}", path.display()));
        }
    }
    let mqtt = cfg.mqtt.resolved(cfg.base_dir());
    let host = cfg.site.host_name();
    println!(
        "{}: OK (host agent for `{host}`, GPUs: {:?}, tick period {} ms, broker {}:{}, topics {}/v1/host/{host}/..., InfluxDB {}, HTTP {})",
        path.display(),
        cfg.gpus.backend,
        cfg.agent.period_ms,
        mqtt.host,
        mqtt.port(),
        mqtt.topic_prefix,
        cfg.influx.as_ref().map_or("off", |i| i.url.as_str()),
        cfg.http
            .as_ref()
            .filter(|h| h.enabled)
            .map_or("off", |h| h.listen.as_str()),
    );
    let mut code = ExitCode::SUCCESS;
    if connect {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("coolantd: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let r = rt.block_on(coolantd::link::mqtt::check_connect(
            &mqtt,
            &cfg.site.name,
            &host,
            std::time::Duration::from_secs(5),
        ));
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        match r {
            Ok(()) => println!("connect: MQTT broker: OK"),
            Err(why) => {
                println!("connect: MQTT broker: FAILED, {why}");
                code = ExitCode::from(EX_UNAVAILABLE);
            }
        }
    }
    if cfg.site.dry_run {
        println!("DRY RUN: caps are decided and acknowledged as \"would set\"; no GPU power limit is written");
    } else {
        println!("will set GPU power limits on this host (caps leased by the controller, the local guard's)");
    }
    code
}

/// `coolantd agent`: the host agent (see `service::agent`).
fn agent(config: &std::path::Path, dry_run: bool) -> ExitCode {
    service::agent::main(config, dry_run, "coolantd")
}
