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

fn main() -> ExitCode {
    let cli = Cli::parse();
    coolantd::service::agent::main(&cli.config, cli.dry_run, "coolantd-agent")
}
