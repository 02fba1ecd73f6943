//! Builds a daemon on the plant simulator for integration tests: `config/sim.toml` with a
//! free loopback port for the simulated CDU, a private state directory, and extra TOML
//! appended (sinks, overrides).

use coolantd::config::Config;
use coolantd::service::run::{Daemon, RunOptions};
use std::path::Path;

pub use crate::free_port;

/// A configuration text for the simulator: `config/sim.toml` with the CDU on `port`, state
/// in `state_dir`, sections named in `replace` swapped (`(old, new)` text pairs) and `extra`
/// appended.
pub fn sim_config_text(
    port: u16,
    state_dir: &Path,
    replace: &[(&str, &str)],
    extra: &str,
) -> String {
    let root = crate::repo_root();
    let mut text =
        std::fs::read_to_string(root.join("config/sim.toml")).expect("config/sim.toml is readable");
    text = text
        .replace("127.0.0.1:5020", &format!("127.0.0.1:{port}"))
        .replace(
            "state_dir = \"../target/sim-state\"",
            &format!("state_dir = {:?}", state_dir.display().to_string()),
        )
        .replace(
            "profiles_dir = \"../firmware-profiles\"",
            &format!(
                "profiles_dir = {:?}",
                root.join("firmware-profiles").display().to_string()
            ),
        )
        // Tests that want the HTTP endpoint add their own section.
        .replace("[http]\nlisten = \"127.0.0.1:9105\"", "");
    for (old, new) in replace {
        assert!(
            text.contains(old),
            "config/sim.toml no longer contains {old:?}"
        );
        text = text.replace(old, new);
    }
    text.push('\n');
    text.push_str(extra);
    text
}

pub use crate::TempDir;

/// How long a lockstep tick waits for its CDUs. The service waits half a period; a test
/// that steps the plant itself wants every poll to read the plant of its own tick however
/// loaded the machine is, and a CDU fault still ends a poll within its Modbus timeout.
pub const LOCKSTEP_CDU_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// Parses `text` as `dir/site.toml` and builds a daemon that the test steps itself.
pub async fn build(text: &str, dir: &Path, sinks: bool) -> Daemon {
    let path = dir.join("site.toml");
    std::fs::write(&path, text).expect("write config");
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("test configuration invalid: {e}"));
    let mut d = Daemon::build(
        cfg,
        &RunOptions {
            dry_run: false,
            sim_autostep: false,
            sinks,
            rehearse: false,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("daemon did not start: {e:#}"));
    d.set_cdu_budget(LOCKSTEP_CDU_BUDGET);
    d
}

/// A minimal HTTP/1.0 GET (HTTP/1.0, so the body is never chunked) to a daemon's endpoint on
/// loopback: status code and body. Connection failures read as status 0, so callers can poll.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    if s.read_to_string(&mut raw).is_err() {
        return (0, String::new());
    }
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
