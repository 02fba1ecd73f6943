//! The first deployment as `docs/install.md` walks it: every documented command is run here
//! against the built binary and the repository's files (the installed paths mapped into a
//! temporary prefix), with its exit status and what it prints checked; each trap of the
//! check-config table is sprung and must be refused naming its key.

use coolantd_testkit::sim_daemon;

use sim_daemon::{free_port, http_get, sim_config_text, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");
const ETC: &str = "/etc/coolantd/config.toml";
const SIM: &str = "/usr/share/doc/coolantd/examples/sim.toml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn install_md() -> String {
    std::fs::read_to_string(root().join("docs/install.md")).expect("docs/install.md")
}

/// The temporary prefix: the shipped config at etc/coolantd/config.toml and the simulator
/// config, both with paths that exist here and the HTTP endpoint on `http`.
struct Prefix {
    dir: TempDir,
    etc: PathBuf,
    sim: PathBuf,
    http: u16,
}

impl Prefix {
    fn new() -> Prefix {
        let dir = TempDir::new("install");
        let http = free_port();
        let etc = dir.0.join("etc/coolantd/config.toml");
        std::fs::create_dir_all(etc.parent().expect("parent")).expect("mkdir etc");
        let shipped =
            std::fs::read_to_string(root().join("config/example.toml")).expect("example.toml");
        let text = replace_all(
            &shipped,
            &[
                (
                    "profiles_dir = \"/usr/share/coolantd/firmware-profiles\"",
                    &format!(
                        "profiles_dir = {:?}",
                        root().join("firmware-profiles").display().to_string()
                    ),
                ),
                (
                    "state_dir = \"/var/lib/coolantd\"",
                    &format!(
                        "state_dir = {:?}",
                        dir.0.join("state").display().to_string()
                    ),
                ),
                (
                    "listen = \"127.0.0.1:9105\"",
                    &format!("listen = \"127.0.0.1:{http}\""),
                ),
            ],
        );
        std::fs::write(&etc, text).expect("write etc config");
        let sim = dir.0.join("sim.toml");
        std::fs::write(
            &sim,
            sim_config_text(
                free_port(),
                &dir.0.join("sim-state"),
                &[],
                &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n"),
            ),
        )
        .expect("write sim config");
        Prefix {
            dir,
            etc,
            sim,
            http,
        }
    }

    /// Runs a command line from the docs: `sudo` dropped, installed paths mapped.
    fn command(&self, line: &str) -> Command {
        assert!(
            install_md().contains(line),
            "docs/install.md no longer shows `{line}`"
        );
        let mut words = line.split_whitespace().peekable();
        if words.peek() == Some(&"sudo") {
            words.next();
        }
        assert_eq!(words.next(), Some("coolantd"), "{line}");
        let mut c = Command::new(BIN);
        for w in words {
            match w {
                ETC => c.arg(&self.etc),
                SIM => c.arg(&self.sim),
                other => c.arg(other),
            };
        }
        c.env_remove("RUST_LOG").env_remove("JOURNAL_STREAM");
        c
    }

    fn run(&self, line: &str) -> Output {
        self.command(line)
            .output()
            .expect("run a documented command")
    }

    /// The shipped config with `edit` applied, at etc/coolantd/config.toml.
    fn edit(&self, edit: impl Fn(&str) -> String) {
        let t = std::fs::read_to_string(&self.etc).expect("read etc config");
        std::fs::write(&self.etc, edit(&t)).expect("write etc config");
    }
}

fn replace_all(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut t = text.to_string();
    for (old, new) in pairs {
        assert!(t.contains(old), "the text lacks {old:?}");
        t = t.replacen(old, new, 1);
    }
    t
}

/// Uncomments one optional section of the shipped config as its comment says: `# ` lines
/// become settings, `## ` lines stay explanations.
fn uncomment(text: &str, header: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line == format!("# [{header}]") {
            inside = true;
        } else if !line.starts_with('#') {
            inside = false;
        }
        match line.strip_prefix("# ") {
            Some(setting) if inside => out.push_str(setting),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[track_caller]
fn assert_trap(o: &Output, key: &str) {
    assert_eq!(o.status.code(), Some(78), "{}", text(o));
    assert!(text(o).contains(key), "must name {key}: {}", text(o));
    assert!(
        install_md().contains(&format!("`{key}`")),
        "docs/install.md's trap table must list `{key}`"
    );
}

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
fn documented_first_deployment() {
    let p = Prefix::new();
    let check = "sudo coolantd check-config --config /etc/coolantd/config.toml";

    // 3. The shipped configuration is valid for a dry run as shipped, and says so last.
    let o = p.run(check);
    assert!(o.status.success(), "{}", text(&o));
    assert!(last_line(&o).starts_with("DRY RUN:"), "{}", text(&o));

    // --connect tries the peers; here nothing answers at the example's CDU address: 69.
    let o = p.run("sudo coolantd check-config --config /etc/coolantd/config.toml --connect");
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
    assert!(
        text(&o).contains("connect: cdu[0] cdu-r12 (10.20.0.12:502, unit 1): FAILED"),
        "{}",
        text(&o)
    );

    // The traps of the table, each refused with exit 78 and its key.
    let shipped = std::fs::read_to_string(&p.etc).expect("read");
    p.edit(|t| uncomment(t, "influx"));
    assert_trap(&p.run(check), "influx.token_file");
    std::fs::write(&p.etc, &shipped).expect("restore");
    p.edit(|t| uncomment(t, "mqtt"));
    assert_trap(&p.run(check), "mqtt.password_file");
    std::fs::write(&p.etc, &shipped).expect("restore");
    p.edit(|t| t.replacen("backend = \"nvml\"", "backend = \"none\"", 1));
    assert_trap(&p.run(check), "control.plausibility.gpu_required");
    std::fs::write(&p.etc, &shipped).expect("restore");
    p.edit(|t| {
        t.replacen("setpoint = 68.0", "setpoint = 95.0", 1)
            .replacen("setpoint_max = 82.0", "setpoint_max = 100.0", 1)
    });
    assert_trap(&p.run(check), "control.setpoint");
    std::fs::write(&p.etc, &shipped).expect("restore");

    // 4. Probe: on a host without the NVIDIA driver the shipped (NVML) configuration is a
    // configuration failure with the next step, exit 78, said once.
    if !have_nvidia_driver() {
        let o = p.run("sudo coolantd probe --config /etc/coolantd/config.toml");
        assert_trap(&o, "gpus.backend");
        assert!(text(&o).contains("sim.toml"), "{}", text(&o));
        assert_eq!(
            text(&o).matches("NVML is not available").count(),
            1,
            "{}",
            text(&o)
        );
    }
    // The rehearsal: probe on the simulator reads every GPU and register.
    let o = p.run("coolantd probe --config /usr/share/doc/coolantd/examples/sim.toml");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("GPUs on sim-node01 (8)"), "{}", text(&o));

    // 5. The dry run (on the simulator), and `coolantd status` through the shipped config,
    // whose [http] listen is the same address.
    let mut run = p
        .command("coolantd run --dry-run --config /usr/share/doc/coolantd/examples/sim.toml")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the dry run");
    let t0 = Instant::now();
    while http_get(p.http, "/readyz").0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(30), "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = p.run("coolantd status --config /etc/coolantd/config.toml");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("DRY RUN"), "{}", text(&o));
    assert!(text(&o).contains("ready: ready"), "{}", text(&o));
    let killed = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = run.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "a SIGTERM leaves the dry run cleanly"
    );

    // 5b. Rehearse before going live: the shipped config on the simulator. Without a board
    // it is refused naming the key the docs tell the operator to set; with it, it runs live
    // on the simulator (no DRY RUN) and leaves cleanly.
    let rehearse = "sudo coolantd run --config /etc/coolantd/config.toml --rehearse";
    let o = p.run(rehearse);
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("gpus.default_profile"), "{}", text(&o));
    assert!(install_md().contains("`default_profile` in `[gpus]`"));
    p.edit(|t| {
        t.replacen(
            "backend = \"nvml\"",
            "backend = \"nvml\"\ndefault_profile = \"h200-sxm\"",
            1,
        )
    });
    let mut run = p
        .command(rehearse)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the rehearsal");
    let t0 = Instant::now();
    while http_get(p.http, "/readyz").0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "rehearsal never ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = p.run("coolantd status --config /etc/coolantd/config.toml");
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("DRY RUN"), "{}", text(&o));
    assert!(text(&o).contains("cdu-r12"), "{}", text(&o));
    let killed = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert_eq!(run.wait().expect("wait").code(), Some(0));
    std::fs::write(&p.etc, &shipped).expect("restore");

    // 6. Going live: the last line names what will be written, as documented.
    p.edit(|t| t.replacen("\ndry_run = true", "\ndry_run = false", 1));
    let o = p.run(check);
    assert!(o.status.success(), "{}", text(&o));
    let live = last_line(&o);
    let documented = install_md()
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("LIVE: will write"))
        .expect("docs/install.md shows a LIVE line")
        .trim_end_matches("(…)")
        .trim_end()
        .to_string();
    assert!(
        live.starts_with(&documented),
        "{live}\nvs the docs: {documented}"
    );
    drop(p.dir);
}

#[test]
fn man_pages_and_completions_come_from_the_command_line() {
    let dir = TempDir::new("man");
    let o = Command::new(BIN)
        .arg("generate-man")
        .arg(&dir.0)
        .output()
        .expect("generate-man");
    assert!(o.status.success(), "{}", text(&o));
    for cmd in ["run", "check-config", "probe", "status", "sim", "restore"] {
        let page = std::fs::read_to_string(dir.0.join(format!("coolantd-{cmd}.1")))
            .unwrap_or_else(|e| panic!("coolantd-{cmd}.1: {e}"));
        assert!(page.contains(".TH coolantd-"), "{cmd}: not a man page");
        assert!(page.contains("config"), "{cmd}: --config missing");
    }
    // The deprecated positional FILE of check-config is hidden from its synopsis too.
    let page = std::fs::read_to_string(dir.0.join("coolantd-check-config.1")).expect("page");
    assert!(
        !page.contains("FILE"),
        "a hidden argument in the page:\n{page}"
    );
    assert!(dir.0.join("coolantd.1").exists());
    assert!(
        !dir.0.join("coolantd-generate-man.1").exists(),
        "hidden packaging commands get no page"
    );
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("completions");
        assert!(o.status.success(), "{shell}: {}", text(&o));
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(
            script.contains("check-config") && script.contains("--connect"),
            "{shell} completion lacks the commands"
        );
    }
}
