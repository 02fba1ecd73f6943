//! The systemd unit, checked with systemd's own tools (Debian package `systemd`, which
//! provides `systemd-analyze`; no running systemd is needed).
//!
//! What is checked, honestly:
//! - `systemd-analyze verify` parses the unit and reports nothing: no unknown or misspelt
//!   directive, no bad value, every referenced executable exists. `/usr/bin/coolantd` is not
//!   installed on a build machine, so a temporary copy of the unit points at an existing
//!   executable (this test binary) instead; whether the real binary accepts the arguments is
//!   the daemon's own tests' business.
//! - `systemd-analyze security --offline` rates the sandbox, and the rating must stay at or
//!   below the level it has today, so loosening the hardening fails this test.
//! - The settings the daemon relies on are present (notify type, watchdog, commands).
//!
//! Not checked here: that the sandbox lets NVML and the serial ports work on a real host.

use std::path::PathBuf;
use std::process::Command;

const UNIT: &str = include_str!("../../systemd/coolantd.service");

/// Exposure `systemd-analyze security` gives the unit today (2.2 with systemd 252), plus a
/// little slack for scoring changes between systemd versions.
pub(super) const MAX_EXPOSURE: f64 = 2.5;

/// Runs `systemd-analyze ARGS`: whether it succeeded, and what it printed on both streams.
pub(super) fn analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze runs (Debian package `systemd`)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Writes the unit with `/usr/bin/coolantd` replaced by an existing executable into a fresh
/// folder, as `coolantd.service` (verify checks the file name against the unit type).
fn unit_copy(tag: &str) -> (coolantd_testkit::TempDir, PathBuf) {
    let exe = std::env::current_exe().expect("path of the test binary");
    let exe = exe.to_str().expect("UTF-8 path").to_string();
    let dir = coolantd_testkit::TempDir::new(&format!("unit-{tag}"));
    let path = dir.path().join("coolantd.service");
    std::fs::write(&path, UNIT.replace("/usr/bin/coolantd", &exe)).expect("write unit copy");
    (dir, path)
}

#[test]
fn unit_verifies_without_any_complaint() {
    let (dir, path) = unit_copy("verify");
    let (ok, text) = analyze(&["verify", path.to_str().expect("UTF-8 path")]);
    drop(dir);
    assert!(ok, "systemd-analyze verify failed:\n{text}");
    // verify exits 0 on unknown directives and only prints a warning, so any output fails.
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify complained:\n{text}"
    );
}

#[test]
fn verify_does_catch_a_broken_unit() {
    // Guards the test above: the same check must notice a misspelt directive.
    let (dir, path) = unit_copy("broken");
    let broken = std::fs::read_to_string(&path)
        .expect("read unit copy")
        .replace("ProtectHome=yes", "ProtectHomes=yes");
    std::fs::write(&path, broken).expect("write broken copy");
    let (_, text) = analyze(&["verify", path.to_str().expect("UTF-8 path")]);
    drop(dir);
    assert!(text.contains("ProtectHomes"), "{text}");
}

#[test]
fn sandbox_exposure_stays_low() {
    let (dir, path) = unit_copy("security");
    let (_, text) = analyze(&[
        "security",
        "--offline=yes",
        "--no-pager",
        path.to_str().expect("UTF-8 path"),
    ]);
    drop(dir);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for coolantd.service:")
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

/// The value of `key=` in the [Service] section (the last one, as systemd reads it, for
/// single-valued settings).
fn service_values(key: &str) -> Vec<String> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service {
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                out.push(v.to_string());
            }
        }
    }
    out
}

#[test]
fn unit_has_the_settings_the_daemon_relies_on() {
    let one = |k: &str| -> String {
        service_values(k)
            .pop()
            .unwrap_or_else(|| panic!("{k}= missing in [Service]"))
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("WatchdogSec"), "10s");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/coolantd run --config /etc/coolantd/config.toml"
    );
    assert_eq!(
        one("ExecStartPre"),
        "/usr/bin/coolantd check-config --config /etc/coolantd/config.toml"
    );
    assert_eq!(
        one("ExecStopPost"),
        "/usr/bin/coolantd restore --config /etc/coolantd/config.toml"
    );
    let reload = one("ExecReload");
    assert!(
        reload.contains("check-config --config /etc/coolantd/config.toml && /bin/kill -HUP"),
        "{reload}"
    );
    assert_eq!(one("StateDirectory"), "coolantd");
    assert_eq!(one("DevicePolicy"), "closed");
    assert!(
        service_values("PrivateDevices").is_empty(),
        "would hide /dev/nvidia*"
    );
    assert!(
        service_values("PrivateUsers").is_empty(),
        "breaks CAP_SYS_ADMIN for NVML"
    );
    assert!(
        service_values("ProcSubset").is_empty(),
        "hides /proc/driver/nvidia"
    );
    let devices = service_values("DeviceAllow").join(" ");
    for d in ["char-nvidia-frontend", "char-ttyS", "char-ttyUSB"] {
        assert!(devices.contains(d), "DeviceAllow= lacks {d}: {devices}");
    }
}
