//! `coolantd-agent`: the host agent of a rack on its own, the same as `coolantd agent`
//! (same flags, same exit statuses) in a binary that links only what the agent runs.
//!
//! Why a second binary: an agent's resident memory is mostly the executable's code pages
//! that the kernel maps in (with fault-around) as the agent runs, not its heap. Linked
//! without the daemon's commands (Modbus, the control loop, Sparkplug, the rehearsal and
//! tuning tools, man pages and completions), the code the agent does run is packed into
//! fewer pages (docs/scale.md, "Host agent footprint").

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run the host agent of a rack: publish this host's GPU readings to the broker, apply the
/// power caps its CDU's controller leases, guard the GPUs locally when the lease runs out
/// (config/agent.toml). The same as `coolantd agent`.
#[derive(Parser)]
#[command(name = "coolantd-agent", version)]
struct Cli {
    #[arg(long, short, default_value = "/etc/coolantd/agent.toml")]
    config: PathBuf,
    /// Decide and acknowledge caps as "would set", write no GPU power limit.
    #[arg(long)]
    dry_run: bool,
}

/// sysexits(3) EX_CONFIG, as `coolantd agent` exits on a refused configuration: the unit's
/// `RestartPreventExitStatus=78` stops systemd from restarting it.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match coolantd::config::AgentFile::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coolantd-agent: configuration refused:\n{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    coolantd::service::logging::init(&cfg.logging);
    // Two workers as in `coolantd agent`: a current-thread runtime saved 80 KiB of thread
    // stacks and nothing measurable in resident code (docs/scale.md), and with it a slow NVML
    // call in the tick would also hold up the MQTT session and the HTTP endpoint.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coolantd-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(coolantd::service::agent::run(cfg, cli.dry_run));
    // A blocking NVML call or DNS lookup still running must not hold the exit past what
    // systemd's TimeoutStopSec allows.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A configuration error found after the file was accepted (a broken firmware
            // profile) is EX_CONFIG too, as in `coolantd agent`.
            if e.chain().any(|c| c.is::<coolantd::config::ConfigError>()) {
                eprintln!("coolantd-agent: configuration refused:\n{e:#}");
                ExitCode::from(EX_CONFIG)
            } else {
                eprintln!("coolantd-agent: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}
