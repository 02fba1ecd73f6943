//! `coolantd check-config` (and `run`, and reload) against configurations that used to pass
//! and then failed later or misbehaved: each case runs the real binary and checks the exit
//! status (78, EX_CONFIG) and that the message names the file and the key.

use coolantd_testkit::mosquitto;
use coolantd_testkit::sim_daemon;
use coolantd_testkit::victoria;

use sim_daemon::{free_port, sim_config_text, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
/// sysexits(3) EX_CONFIG.
const EX_CONFIG: i32 = 78;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn check_config(file: &Path) -> Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(file)
        .env_remove("RUST_LOG")
        .output()
        .expect("run coolantd check-config")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn assert_refused(out: &Output, file: &Path, needles: &[&str]) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "output:\n{all}");
    assert!(
        all.contains(&file.display().to_string()),
        "must name {}: {all}",
        file.display()
    );
    for n in needles {
        assert!(all.contains(n), "must mention {n:?}: {all}");
    }
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(out.status.success(), "output:\n{}", text(out));
}

/// A temporary folder with a private copy of `firmware-profiles/` and a simulator
/// configuration that points at it.
struct Site {
    dir: TempDir,
    base: String,
}

impl Site {
    fn new(tag: &str) -> Site {
        let dir = TempDir::new(tag);
        let profiles = dir.0.join("profiles");
        for sub in ["cdu", "gpu"] {
            std::fs::create_dir_all(profiles.join(sub)).expect("mkdir");
            for e in std::fs::read_dir(root().join("firmware-profiles").join(sub))
                .expect("read profiles")
            {
                let e = e.expect("dir entry");
                std::fs::copy(e.path(), profiles.join(sub).join(e.file_name()))
                    .expect("copy profile");
            }
        }
        let base = sim_config_text(free_port(), &dir.0.join("state"), &[], "").replace(
            &format!(
                "{:?}",
                root().join("firmware-profiles").display().to_string()
            ),
            &format!("{:?}", profiles.display().to_string()),
        );
        Site { dir, base }
    }

    fn profiles(&self) -> PathBuf {
        self.dir.0.join("profiles")
    }

    /// Writes `text` as the configuration file and returns its path.
    fn write(&self, text: &str) -> PathBuf {
        let p = self.dir.0.join("site.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }

    /// The base configuration with each `(old, new)` replaced; panics when `old` is absent,
    /// so a changed `config/sim.toml` cannot turn a case into a no-op.
    fn with(&self, replace: &[(&str, &str)]) -> PathBuf {
        let mut t = self.base.clone();
        for (old, new) in replace {
            assert!(t.contains(old), "the base configuration lacks {old:?}");
            t = t.replacen(old, new, 1);
        }
        self.write(&t)
    }
}

// ---- issue 12 D7: a set point above the GPUs' slowdown threshold ---------------------------

#[test]
fn setpoint_above_slowdown_is_refused_by_check_config_and_run() {
    let site = Site::new("d7");
    assert_ok(&check_config(&site.write(&site.base)));
    // H200 slowdown 89 °C, margin 5 K: 84 °C is the highest set point the command path takes.
    let high = [("setpoint = 55.0", "setpoint = 95.0\nsetpoint_max = 100.0")];
    let cfg = site.with(&high);
    assert_refused(&check_config(&cfg), &cfg, &["control.setpoint", "89", "84"]);
    // `run` refuses it the same way, before the simulator or any output starts.
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .output()
        .expect("run coolantd run");
    assert_refused(&out, &cfg, &["control.setpoint"]);

    // At the ceiling itself it is accepted.
    let at = site.with(&[("setpoint = 55.0", "setpoint = 84.0\nsetpoint_max = 100.0")]);
    assert_ok(&check_config(&at));

    // With NVML the boards are unknown before start-up: the strictest profile decides, and
    // the message says so. A profile with a lower slowdown threshold makes 84 °C too high.
    let h100 = site.profiles().join("gpu/h100-sxm.toml");
    let p = std::fs::read_to_string(&h100).expect("read h100 profile");
    assert!(p.contains("slowdown_c = 89"), "h100 profile changed");
    std::fs::write(&h100, p.replacen("slowdown_c = 89", "slowdown_c = 87", 1)).expect("write");
    let nvml = site.with(&[
        ("setpoint = 55.0", "setpoint = 84.0\nsetpoint_max = 100.0"),
        ("backend = \"simulated\"", "backend = \"nvml\""),
    ]);
    assert_refused(
        &check_config(&nvml),
        &nvml,
        &["control.setpoint", "strictest GPU profile, h100-sxm", "82"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setpoint_above_slowdown_is_refused_by_reload() {
    let site = Site::new("d7-reload");
    let mut daemon = sim_daemon::build(&site.base, &site.dir.0, false).await;
    let path = site.with(&[("setpoint = 55.0", "setpoint = 95.0\nsetpoint_max = 100.0")]);
    let cfg = coolantd::config::Config::load(&path).expect("the file itself parses");
    let err = daemon
        .reload(cfg)
        .expect_err("a set point above slowdown - margin must be refused");
    assert!(format!("{err:#}").contains("control.setpoint"), "{err:#}");
    assert_eq!(
        daemon.controller().setpoint().get(),
        55.0,
        "the running set point stays"
    );
    daemon.shutdown(std::time::Duration::from_secs(1)).await;
}

// ---- issue 12 D11: validation and wording gaps ---------------------------------------------

#[test]
fn writable_limits_must_fit_the_register_type() {
    let site = Site::new("d11-scale");
    let cdu = site.profiles().join("cdu/sim-cdu.toml");
    let p = std::fs::read_to_string(&cdu).expect("read sim-cdu");
    let needle = "name = \"pump_speed_cmd\"\nrole = \"pump_speed_command\"\nkind = \"holding\"\n\
                  address = 0\ntype = \"UINT16\"\n# Tenths of a percent of full speed.\nscale = 0.1";
    assert!(p.contains(needle), "sim-cdu.toml's pump register changed");
    std::fs::write(&cdu, p.replacen(needle, &needle.replace("0.1", "-0.1"), 1)).expect("write");
    let cfg = site.write(&site.base);
    let out = check_config(&cfg);
    assert_refused(&out, &cdu, &["pump_speed_cmd", "limits", "UINT16"]);
}

#[test]
fn missing_profiles_dir_names_the_file_and_key() {
    let site = Site::new("d11-dir");
    let gone = site.dir.0.join("no-such-profiles");
    let cfg = site.write(&site.base.replace(
        &format!("{:?}", site.profiles().display().to_string()),
        &format!("{:?}", gone.display().to_string()),
    ));
    assert_refused(
        &check_config(&cfg),
        &cfg,
        &["site.profiles_dir", &gone.display().to_string()],
    );
}

#[test]
fn control_characters_in_topic_prefix_are_shown_escaped() {
    let site = Site::new("d11-nul");
    let cfg = site.write(&format!(
        "{}\n[mqtt]\nhost = \"127.0.0.1\"\ntopic_prefix = \"a\\u0000b\"\n",
        site.base
    ));
    let out = check_config(&cfg);
    assert_refused(&out, &cfg, &["mqtt.topic_prefix", r#""a\0b""#]);
}

// ---- issue 14: check-config finds what run would fail on -----------------------------------

fn run_binary(args: &[&str], cfg: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("RUST_LOG")
        .output()
        .expect("run coolantd")
}

#[test]
fn missing_secret_files_are_refused_by_check_config_and_run() {
    let site = Site::new("secrets");
    let token = site.dir.0.join("influx-token");
    let cfg = site.write(&format!(
        "{}\n[influx]\nurl = \"http://127.0.0.1:1\"\nbucket = \"b\"\ntoken_file = {:?}\n",
        site.base,
        token.display().to_string()
    ));
    assert_refused(
        &check_config(&cfg),
        &cfg,
        &["influx.token_file", &token.display().to_string()],
    );
    // `run` refuses it the same way and exits 78, before any output is driven.
    assert_refused(
        &run_binary(&["run", "--dry-run"], &cfg),
        &cfg,
        &["influx.token_file"],
    );
    std::fs::write(&token, "secret\n").expect("write token");
    assert_ok(&check_config(&cfg));

    let pw = site.dir.0.join("mqtt-password");
    let cfg = site.write(&format!(
        "{}\n[mqtt]\nhost = \"127.0.0.1\"\nusername = \"u\"\npassword_file = {:?}\n",
        site.base,
        pw.display().to_string()
    ));
    assert_refused(&check_config(&cfg), &cfg, &["mqtt.password_file"]);
}

#[test]
fn cdu_only_mode_without_gpu_input_is_refused() {
    let site = Site::new("cdu-only");
    // The shipped default requires GPU input: failsafe 30 s after start, pump at 100 %.
    let cfg = site.with(&[("backend = \"simulated\"", "backend = \"none\"")]);
    assert_refused(
        &check_config(&cfg),
        &cfg,
        &["control.plausibility.gpu_required", "failsafe"],
    );
    assert_refused(
        &run_binary(&["run", "--dry-run"], &cfg),
        &cfg,
        &["gpu_required"],
    );
    // Without it, nothing is controlled: the pump would hold its start speed forever.
    let cfg = site.write(&format!(
        "{}\n[control.plausibility]\ngpu_required = false\n",
        site.base
            .replacen("backend = \"simulated\"", "backend = \"none\"", 1)
    ));
    assert_refused(
        &check_config(&cfg),
        &cfg,
        &["gpus.backend", "nothing is controlled"],
    );
}

#[test]
fn check_config_says_dry_run_or_what_it_will_write() {
    let site = Site::new("verdict");
    let live = check_config(&site.write(&site.base));
    assert_ok(&live);
    let out = String::from_utf8_lossy(&live.stdout).to_string();
    let last = out.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "LIVE: will write cdu-sim pump_speed_cmd (holding 0), cdu-sim watchdog (holding 1) \
         and the power limits of 8 GPUs",
        "{out}"
    );
    let dry = check_config(&site.with(&[("[site]\n", "[site]\ndry_run = true\n")]));
    assert_ok(&dry);
    let out = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(
        out.lines()
            .last()
            .unwrap_or_default()
            .starts_with("DRY RUN:"),
        "{out}"
    );
}

#[test]
fn config_option_is_accepted_everywhere_and_the_positional_form_still_works() {
    let site = Site::new("cli");
    let cfg = site.write(&site.base);
    let new = run_binary(&["check-config"], &cfg);
    assert_ok(&new);
    assert!(new.stderr.is_empty(), "{}", text(&new));
    let old = check_config(&cfg);
    assert_ok(&old);
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("deprecated"),
        "{}",
        text(&old)
    );
    // Every command takes --config (and -c); help succeeds for each with it.
    for cmd in ["run", "check-config", "probe", "sim", "restore"] {
        let out = Command::new(BIN)
            .args([cmd, "--help"])
            .output()
            .expect("help");
        assert_ok(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("--config"),
            "{cmd}: {}",
            text(&out)
        );
    }
}

/// True when this machine has an NVIDIA driver: then `backend = "nvml"` would open real
/// GPUs, which this test must not do.
fn have_nvidia_driver() -> bool {
    Path::new("/dev/nvidiactl").exists()
        || [
            "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
            "/usr/lib64/libnvidia-ml.so.1",
        ]
        .iter()
        .any(|p| Path::new(p).exists())
}

#[test]
fn run_without_nvml_exits_78_with_one_clear_message() {
    if have_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let site = Site::new("no-nvml");
    let cfg = site.with(&[("backend = \"simulated\"", "backend = \"nvml\"")]);
    let out = run_binary(&["run", "--dry-run"], &cfg);
    assert_refused(&out, &cfg, &["gpus.backend", "NVIDIA driver", "sim.toml"]);
    let all = text(&out);
    assert_eq!(
        all.matches("NVML is not available").count(),
        1,
        "printed once: {all}"
    );
    assert_eq!(
        all.matches("configuration refused").count(),
        1,
        "printed once: {all}"
    );
}

/// The first line of `text` that starts with `prefix`.
fn line_starting<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
}

/// Waits until something accepts TCP connections on `port`.
fn wait_listening(port: u16) {
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "nothing listens on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn connect_reports_each_cdu_broker_and_database() {
    let site = Site::new("connect");
    let broker = mosquitto::Mosquitto::start();
    let vm = victoria::Victoria::start();
    let cdu_port = free_port();
    let text_for = |cdu: u16, mqtt: u16, db: &str| {
        let t = site.base.replace(
            line_starting(&site.base, "address = "),
            &format!("address = \"127.0.0.1:{cdu}\""),
        );
        format!(
            "{t}\n[influx]\nurl = \"{db}\"\nbucket = \"b\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt}\n"
        )
    };
    // Everything down: each peer is reported, and the exit status is 69 (EX_UNAVAILABLE).
    let dead = free_port();
    let cfg = site.write(&text_for(
        dead,
        free_port(),
        &format!("http://127.0.0.1:{}", free_port()),
    ));
    let out = run_binary(&["check-config", "--connect"], &cfg);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(69), "{all}");
    for what in [
        "connect: cdu[0] cdu-sim",
        "connect: influx",
        "connect: mqtt",
    ] {
        assert!(
            all.lines()
                .any(|l| l.starts_with(what) && l.contains("FAILED")),
            "{what} FAILED expected: {all}"
        );
    }

    // A simulated CDU served by `coolantd sim` (the real binary), the real broker and database.
    let sim_cfg = site.dir.0.join("sim.toml");
    std::fs::write(
        &sim_cfg,
        site.base.replace(
            line_starting(&site.base, "listen = "),
            &format!("listen = \"127.0.0.1:{cdu_port}\""),
        ),
    )
    .expect("write sim config");
    let _sim = Kill(
        Command::new(BIN)
            .args(["sim", "--config"])
            .arg(&sim_cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start coolantd sim"),
    );
    wait_listening(cdu_port);
    let cfg = site.write(&text_for(cdu_port, broker.port(), &vm.url()));
    let out = run_binary(&["check-config", "--connect"], &cfg);
    let all = text(&out);
    assert_ok(&out);
    for what in [
        "connect: cdu[0] cdu-sim",
        "connect: influx",
        "connect: mqtt",
    ] {
        assert!(
            all.lines()
                .any(|l| l.starts_with(what) && l.contains(": OK")),
            "{what} OK expected: {all}"
        );
    }
}
