//! The service shell: the daemon's run loop, signals, systemd notification, HTTP endpoint.

pub mod agent;
pub mod cdu_link;
pub mod config;
pub mod daemon;
pub mod http;
pub mod limits;
pub mod logging;
pub mod loop_alarms;
pub mod notify;
pub mod preflight;
pub mod probe;
pub mod restore;
pub mod sim_rack;
pub mod simulate;
pub mod sink_alarms;
pub mod status;
pub mod tune;

// The paths before the daemon and its run loop moved together into `daemon/`.
pub use daemon as run;
pub use daemon::serve;

/// sysexits(3) EX_CONFIG: the units' `RestartPreventExitStatus=78` stops systemd from
/// restarting a program whose configuration is broken.
pub const EX_CONFIG: u8 = 78;

/// The exit status of a command's outcome: EX_CONFIG when a configuration error is anywhere in
/// the chain (a broken firmware profile found after the file was accepted counts too), 1 for
/// any other failure. The error is printed once, on stderr, which the journal records too:
/// logging it as well showed every start-up failure twice.
pub fn exit_code(prog: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.chain().any(|c| c.is::<crate::config::ConfigError>()) => {
            eprintln!("{prog}: configuration refused:\n{e:#}");
            std::process::ExitCode::from(EX_CONFIG)
        }
        Err(e) => {
            eprintln!("{prog}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
