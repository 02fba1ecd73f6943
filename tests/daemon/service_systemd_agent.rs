//! The host agent's unit (`systemd/coolantd-agent.service`), checked like the daemon's with
//! systemd's own tools (`systemd-analyze verify` and `security --offline`), and the
//! `ExecStopPost=` it relies on: `coolantd restore` with the agent's file.

// The agent's sandbox is the daemon's or tighter (no serial ports): the same bound.
use super::service_systemd::{analyze, MAX_EXPOSURE};
use coolantd_testkit::TempDir;
use std::path::PathBuf;
use std::process::Command;

const UNIT: &str = include_str!("../../systemd/coolantd-agent.service");
const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
const AGENT_BIN: &str = env!("CARGO_BIN_EXE_coolantd-agent");

/// The unit with `/usr/bin/coolantd-agent` and `/usr/bin/coolantd` replaced by the built
/// executables, under its own name.
fn unit_copy(tag: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(&format!("agent-unit-{tag}"));
    let path = dir.path().join("coolantd-agent.service");
    std::fs::write(
        &path,
        UNIT.replace("/usr/bin/coolantd-agent ", &format!("{AGENT_BIN} "))
            .replace("/usr/bin/coolantd ", &format!("{BIN} ")),
    )
    .expect("write unit copy");
    (dir, path)
}

fn service_value(key: &str) -> String {
    let mut in_service = false;
    let mut out = None;
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service {
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                out = Some(v.to_string());
            }
        }
    }
    out.unwrap_or_else(|| panic!("{key}= missing in [Service]"))
}

#[test]
fn agent_unit_verifies_and_its_sandbox_rates_low() {
    let (dir, path) = unit_copy("verify");
    let p = path.to_str().expect("UTF-8 path");
    let (ok, text) = analyze(&["verify", p]);
    assert!(ok, "systemd-analyze verify failed:\n{text}");
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify complained:\n{text}"
    );
    let (_, text) = analyze(&["security", "--offline=yes", "--no-pager", p]);
    drop(dir);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for coolantd-agent.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        level <= MAX_EXPOSURE,
        "exposure {level} > {MAX_EXPOSURE}:\n{text}"
    );
}

#[test]
fn agent_unit_has_the_settings_the_agent_relies_on() {
    assert_eq!(service_value("Type"), "notify");
    assert_eq!(service_value("WatchdogSec"), "10s");
    assert_eq!(service_value("Restart"), "on-failure");
    assert_eq!(service_value("RestartPreventExitStatus"), "78");
    assert_eq!(
        service_value("ExecStart"),
        "/usr/bin/coolantd-agent --config /etc/coolantd/agent.toml"
    );
    assert_eq!(
        service_value("ExecStartPre"),
        "/usr/bin/coolantd check-config --config /etc/coolantd/agent.toml"
    );
    assert_eq!(
        service_value("ExecStopPost"),
        "/usr/bin/coolantd restore --config /etc/coolantd/agent.toml"
    );
    // The agent does not reload on SIGHUP (it would die of it): no ExecReload=.
    assert!(!UNIT.lines().any(|l| l.starts_with("ExecReload=")));
    // Packaged: the .deb ships the unit and the agent's file.
    let cargo = include_str!("../../Cargo.toml");
    assert!(
        cargo.contains("\"systemd/coolantd-agent.service\""),
        "Cargo.toml [package.metadata.deb] ships the agent's unit"
    );
    assert!(
        cargo.contains("[\"target/agent/coolantd-agent\", \"usr/bin/\", \"755\"]"),
        "Cargo.toml [package.metadata.deb] ships the agent's binary the unit runs"
    );
}

#[test]
fn restore_reads_the_state_folder_from_an_agent_file() {
    // ExecStopPost= runs `coolantd restore --config /etc/coolantd/agent.toml`: the agent's file
    // is not a daemon configuration, yet restore must find its record without complaint.
    let dir = TempDir::new("agent-restore");
    let state = dir.path().join("agent-state");
    let cfg = dir.path().join("agent.toml");
    let text = format!(
        "[site]\nname = \"rack1\"\nhost = \"node07\"\nstate_dir = {:?}\n\n[gpus]\nbackend = \"nvml\"\n\n[mqtt]\nhost = \"127.0.0.1\"\n\n[agent]\n",
        state.display().to_string()
    );
    std::fs::write(&cfg, text).expect("write");
    let out = Command::new(BIN)
        .args(["restore", "--config"])
        .arg(&cfg)
        .output()
        .expect("run restore");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("nothing to restore") && stdout.contains(&state.display().to_string()),
        "{stdout}"
    );
    assert!(
        !stderr.contains("invalid"),
        "an agent's file is not refused: {stderr}"
    );

    // With a record it tries (no NVML here, or no such UUID on a GPU machine), fails loudly
    // and keeps the record for the next attempt.
    std::fs::create_dir_all(&state).expect("mkdir");
    let record = r#"{"GPU-x":{"host":"node07","index":0,"uuid":"GPU-x","original":700.0}}"#;
    std::fs::write(state.join("power-limits.json"), record).expect("write record");
    let out = Command::new(BIN)
        .args(["restore", "--config"])
        .arg(&cfg)
        .output()
        .expect("run restore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(state.join("power-limits.json").exists(), "{stderr}");
}
