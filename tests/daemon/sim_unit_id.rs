//! The simulated CDU answers only its configured unit id (`simulator.unit_id`), so a wrong
//! `[[cdu]] unit_id` is caught in a rehearsal: checked with mbpoll (an independent client)
//! against the real `coolantd sim`, and through `check-config --connect`.

use coolantd_testkit::sim_daemon;

use sim_daemon::{free_port, sim_config_text, TempDir};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
const MBPOLL: &str = "/usr/bin/mbpoll";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the supply temperature (input registers 0..1, big-endian float) as unit `unit`.
fn mbpoll_supply(port: u16, unit: u8) -> (bool, String) {
    let out = Command::new(MBPOLL)
        .args([
            "-m",
            "tcp",
            "-p",
            &port.to_string(),
            "-a",
            &unit.to_string(),
        ])
        .args([
            "-0", "-1", "-o", "2", "-t", "3:float", "-B", "-r", "0", "-c", "1",
        ])
        .arg("127.0.0.1")
        .output()
        .expect("mbpoll runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A simulator configuration whose CDU answers as unit 3 on `port`, its [[cdu]] asking for
/// `cdu_unit`.
fn config(dir: &Path, port: u16, cdu_unit: u8) -> std::path::PathBuf {
    let text = sim_config_text(
        port,
        &dir.join("state"),
        &[
            ("unit_id = 1", &format!("unit_id = {cdu_unit}")),
            ("gpus_per_host = 8", "gpus_per_host = 8\nunit_id = 3"),
        ],
        "",
    );
    let p = dir.join(format!("unit{cdu_unit}.toml"));
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn simulated_cdu_answers_only_its_unit_id() {
    assert!(
        Path::new(MBPOLL).exists(),
        "{MBPOLL} missing: apt-get install mbpoll"
    );
    let dir = TempDir::new("unit-id");
    let port = free_port();
    let right = config(&dir.0, port, 3);
    let _sim = Kill(
        Command::new(BIN)
            .args(["sim", "--config"])
            .arg(&right)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start coolantd sim"),
    );
    wait_listening(port);

    let (ok, out) = mbpoll_supply(port, 3);
    assert!(ok && out.contains("[0]:"), "unit 3 must answer: {out}");
    let (ok, out) = mbpoll_supply(port, 1);
    assert!(
        !ok || !out.contains("[0]:"),
        "unit 1 must not be served: {out}"
    );
    assert!(
        out.contains("Target device failed to respond"),
        "the refusal should be the gateway exception: {out}"
    );

    // The rehearsal catches a configuration that asks for the wrong unit id.
    let connect = |cfg: &Path| {
        Command::new(BIN)
            .args(["check-config", "--connect", "--config"])
            .arg(cfg)
            .output()
            .expect("check-config")
    };
    let good = connect(&right);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    let wrong = config(&dir.0, port, 1);
    let bad = connect(&wrong);
    let text = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(69), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("connect: cdu[0] cdu-sim (127.0.0.1:")
                && l.contains("unit 1): FAILED")),
        "{text}"
    );
}
