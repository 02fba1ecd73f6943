//! The real daemon binary flooded with malformed MQTT commands through a real Mosquitto
//! (Debian packages `mosquitto`, `mosquitto-clients`) while its CDU goes away: the log stays
//! bounded, the suppressed lines are counted, and the alarm lines are all there.

use coolantd_testkit::mosquitto;
use coolantd_testkit::sim_daemon;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FLOOD: usize = 5_000;
const BATCHES: usize = 10;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], config: &Path, log: &Path) -> Proc {
    let stderr = std::fs::File::create(log).expect("create the log file");
    let child = Command::new(env!("CARGO_BIN_EXE_coolantd"))
        .args(args)
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("start coolantd");
    Proc(child)
}

fn wait_for_line(log: &Path, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{what}` in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// "… and 4,999 more in the last 10 s" → 4999.
fn suppressed(line: &str) -> u64 {
    line.split("… and ")
        .nth(1)
        .and_then(|r| r.split(" more").next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Issue 12, D10: 5,000 malformed commands used to write one WARN line each (11 MB of log
/// for a 6 s flood), enough for journald's rate limit to swallow the alarm lines that
/// matter. Now each repeated warning is logged a few times per 10 s and then summarised with
/// a count, and alarm lines are never among the suppressed ones.
#[test]
fn a_command_flood_leaves_a_bounded_log_with_counts_and_every_alarm() {
    let broker = mosquitto::Mosquitto::start();
    let dir = sim_daemon::TempDir::new("log-flood");
    let cdu_port = sim_daemon::free_port();
    let unused_port = sim_daemon::free_port();
    // The simulated CDU runs in a process of its own (`coolantd sim`), so that the test can
    // take it away in the middle of the flood and make the daemon raise alarms.
    std::fs::create_dir_all(dir.0.join("sim")).expect("sim state dir");
    let sim_text = sim_daemon::sim_config_text(cdu_port, &dir.0.join("sim"), &[], "");
    let sim_cfg = dir.0.join("sim.toml");
    std::fs::write(&sim_cfg, sim_text).expect("write sim.toml");
    let sim_log = dir.0.join("sim.log");
    let mut sim = spawn(&["sim", "-c"], &sim_cfg, &sim_log);
    wait_for_line(&sim_log, "simulated CDU serving", Duration::from_secs(30));

    std::fs::create_dir_all(dir.0.join("run")).expect("run state dir");
    let listen_cdu = format!("listen = \"127.0.0.1:{cdu_port}\"");
    let listen_unused = format!("listen = \"127.0.0.1:{unused_port}\"");
    let run_text = sim_daemon::sim_config_text(
        cdu_port,
        &dir.0.join("run"),
        &[
            (listen_cdu.as_str(), listen_unused.as_str()),
            ("period_ms = 1000", "period_ms = 500"),
        ],
        &format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nkeep_alive_s = 5\n",
            broker.port()
        ),
    );
    let run_cfg = dir.0.join("run.toml");
    std::fs::write(&run_cfg, run_text).expect("write run.toml");
    let log = dir.0.join("run.log");
    let _daemon = spawn(&["run", "-c"], &run_cfg, &log);
    wait_for_line(
        &log,
        "connected to the MQTT broker",
        Duration::from_secs(30),
    );
    // The subscription follows the CONNACK; give it a moment, and a few ticks on the CDU.
    std::thread::sleep(Duration::from_secs(2));
    let before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();

    let topic = "coolantd/sim/sim-node01/command";
    let started = Instant::now();
    for batch in 0..BATCHES {
        let lines: String = (0..FLOOD / BATCHES)
            .map(|i| format!("{{not json {batch}/{i}\n"))
            .collect();
        let mut publ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
            .args(["-q", "1", "-t", topic, "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run mosquitto_pub (Debian package `mosquitto-clients`)");
        publ.stdin
            .take()
            .expect("stdin")
            .write_all(lines.as_bytes())
            .expect("feed mosquitto_pub");
        assert!(publ.wait().expect("mosquitto_pub ends").success());
        if batch == 2 {
            // The CDU goes away mid-flood: its alarms must reach the log.
            let _ = sim.0.kill();
            let _ = sim.0.wait();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let flood_s = started.elapsed().as_secs_f64();
    // Long enough for the rate limiter's 10 s window to close and report its count.
    std::thread::sleep(Duration::from_secs(12));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let during: Vec<&str> = text.lines().skip(before).collect();

    let rejected: Vec<&&str> = during
        .iter()
        .filter(|l| l.contains("MQTT command rejected"))
        .collect();
    let summaries: u64 = rejected.iter().map(|l| suppressed(l)).sum();
    let logged_one_by_one = rejected.iter().filter(|l| !l.contains("… and ")).count();
    let alarms = during
        .iter()
        .filter(|l| l.contains("transition=Raised"))
        .count();
    println!(
        "{FLOOD} malformed commands in {flood_s:.1} s: {} log lines in {:.0} s after the flood \
         started ({logged_one_by_one} rejections logged one by one, {summaries} counted in \
         summaries), {alarms} alarm lines",
        during.len(),
        started.elapsed().as_secs_f64()
    );
    for l in during.iter().take(40) {
        println!("  {l}");
    }
    assert!(
        alarms >= 1,
        "the CDU's alarms must be logged during the flood:\n{}",
        during.join("\n")
    );
    assert!(
        logged_one_by_one <= 10,
        "{logged_one_by_one} rejection lines: the flood is not rate-limited"
    );
    let accounted = logged_one_by_one as u64 + summaries;
    assert!(
        (FLOOD as u64 * 9 / 10..=FLOOD as u64).contains(&accounted),
        "{accounted} rejections accounted for in the log, {FLOOD} sent"
    );
    assert!(
        during.len() <= 100,
        "{} log lines during the flood:\n{}",
        during.len(),
        during
            .iter()
            .take(200)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
