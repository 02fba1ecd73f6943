//! scripts/footprint.sh against stand-in daemons (the real one is measured by the lead with
//! a real configuration): one that holds a known amount of memory, one that dies at start.

use coolantd_testkit::TempDir;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write stand-in");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

fn footprint(bin: &Path, config: &Path) -> (i32, String) {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/footprint.sh"))
        .arg(config)
        .arg("5")
        .env("COOLANTD", bin)
        .output()
        .expect("bash runs the script");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn field(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{key}` in:\n{text}"))
}

#[test]
fn reports_memory_and_cpu_of_a_running_daemon_and_stops_it() {
    let dir = TempDir::new("ok");
    let config = dir.0.join("config.toml");
    std::fs::write(&config, "").expect("config");
    let pidfile = dir.0.join("pid");
    // Holds 60 MiB of written (so resident) memory and records its pid.
    let fake = script(
        &dir.0,
        "fake-coolantd",
        &format!(
            "#!/bin/sh\necho $$ > {}\nexec /usr/bin/python3 -c 'import time\nb = b\"x\" * (60 << 20)\nwhile True: time.sleep(0.05)'\n",
            pidfile.display()
        ),
    );
    let (code, text) = footprint(&fake, &config);
    assert_eq!(code, 0, "{text}");
    let max = field(&text, "resident memory, max:");
    let peak = field(&text, "resident memory, peak:");
    assert!((60.0..200.0).contains(&max), "{text}");
    assert!(peak >= max, "{text}");
    let cpu = field(&text, "CPU, whole run:");
    assert!((0.0..100.0).contains(&cpu), "{text}");
    // The stand-in is gone afterwards.
    let pid = std::fs::read_to_string(&pidfile).expect("pid recorded");
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "daemon {pid} still running"
    );
}

#[test]
fn fails_clearly_when_the_daemon_exits_early() {
    let dir = TempDir::new("early");
    let config = dir.0.join("config.toml");
    std::fs::write(&config, "").expect("config");
    let bad = script(
        &dir.0,
        "bad-coolantd",
        "#!/bin/sh\necho 'config.toml: control.setpoint: expected a number' >&2\nexit 78\n",
    );
    let (code, text) = footprint(&bad, &config);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("exit status 78"), "{text}");
    assert!(text.contains("control.setpoint"), "{text}");
}
