//! The configuration files we ship must stay valid as the code changes, together with the
//! firmware profiles they name.

use coolantd::config::Config;
use coolantd::service::run::load_profiles;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn sim_config_and_its_profiles_are_valid() {
    let cfg = Config::load(&root().join("config/sim.toml")).unwrap_or_else(|e| panic!("{e}"));
    let p = load_profiles(&cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.cdu.len(), 1);
    assert!(p.gpu.by_name("h200-sxm").is_some());
    assert!(cfg.simulator.is_some());
}

#[test]
fn sim_config_with_its_sinks_uncommented_is_valid() {
    // The README tells newcomers to uncomment [influx] and [mqtt] in config/sim.toml.
    let path = root().join("config/sim.toml");
    let text = std::fs::read_to_string(&path).expect("config/sim.toml is readable");
    let mut uncommented = String::new();
    let mut in_sink = false;
    for line in text.lines() {
        if line == "# [influx]" || line == "# [mqtt]" {
            in_sink = true;
        } else if !line.starts_with('#') {
            in_sink = false;
        }
        uncommented.push_str(if in_sink {
            line.trim_start_matches("# ")
        } else {
            line
        });
        uncommented.push('\n');
    }
    let cfg = Config::parse(&uncommented, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.influx.is_some(), "[influx] uncommented");
    assert!(cfg.mqtt.is_some(), "[mqtt] uncommented");
}

#[test]
fn example_config_is_valid_against_the_repository_profiles() {
    let path = root().join("config/example.toml");
    let text = std::fs::read_to_string(&path).expect("config/example.toml is readable");
    // Installed, profiles live under /usr/share/coolantd; here, in the repository.
    let text = text.replace(
        "profiles_dir = \"/usr/share/coolantd/firmware-profiles\"",
        &format!(
            "profiles_dir = {:?}",
            root().join("firmware-profiles").display().to_string()
        ),
    );
    let cfg = Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cfg.site.dry_run,
        "the shipped example must start in dry-run mode"
    );
    // Valid for a first dry run as shipped: the sinks, which need a database, a broker and
    // secret files, are commented out as optional.
    assert!(cfg.influx.is_none() && cfg.mqtt.is_none() && cfg.http.is_some());
    load_profiles(&cfg).unwrap_or_else(|e| panic!("{e}"));

    // Uncommented as the file says (`# ` settings, `## ` explanations stay), both sinks parse.
    let mut uncommented = String::new();
    let mut in_sink = false;
    for line in text.lines() {
        if line == "# [influx]" || line == "# [mqtt]" {
            in_sink = true;
        } else if !line.starts_with('#') {
            in_sink = false;
        }
        match line.strip_prefix("# ") {
            Some(setting) if in_sink => uncommented.push_str(setting),
            _ => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    let cfg = Config::parse(&uncommented, &path).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert!(cfg.influx.is_some() && cfg.mqtt.is_some());
}

#[test]
fn a_profile_missing_a_required_role_is_refused_naming_it() {
    let tmp = coolantd_testkit::TempDir::new("shipped");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("cdu")).expect("mkdir");
    std::fs::create_dir_all(dir.join("gpu")).expect("mkdir");
    for f in ["gpu/h200-sxm.toml", "gpu/h100-sxm.toml"] {
        std::fs::copy(root().join("firmware-profiles").join(f), dir.join(f)).expect("copy");
    }
    // The sim CDU without its leak sensor: the control loop requires `leak`.
    let cdu =
        std::fs::read_to_string(root().join("firmware-profiles/cdu/sim-cdu.toml")).expect("read");
    let without_leak = cdu.replace("role = \"leak\"", "");
    assert_ne!(cdu, without_leak);
    std::fs::write(dir.join("cdu/sim-cdu.toml"), without_leak).expect("write");
    let text = std::fs::read_to_string(root().join("config/sim.toml"))
        .expect("read")
        .replace(
            "profiles_dir = \"../firmware-profiles\"",
            &format!("profiles_dir = {:?}", dir.display().to_string()),
        );
    let cfg =
        Config::parse(&text, &root().join("config/sim.toml")).unwrap_or_else(|e| panic!("{e}"));
    let e = load_profiles(&cfg)
        .err()
        .expect("a profile without a required role is refused");
    let msg = e.to_string();
    assert!(msg.contains("sim-cdu.toml"), "{msg}");
    assert!(msg.contains("leak"), "{msg}");
}

#[test]
fn agent_config_is_valid_and_starts_as_a_dry_run() {
    let path = root().join("config/agent.toml");
    let text = std::fs::read_to_string(&path).expect("config/agent.toml is readable");
    assert!(
        coolantd::config::is_agent_config(&text),
        "check-config must tell config/agent.toml by its [agent] table"
    );
    let text = text.replace(
        "profiles_dir = \"/usr/share/coolantd/firmware-profiles\"",
        &format!(
            "profiles_dir = {:?}",
            root().join("firmware-profiles").display().to_string()
        ),
    );
    let cfg = coolantd::config::AgentFile::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cfg.site.dry_run,
        "the shipped agent configuration starts as a dry run"
    );
    coolantd::profile::gpu::GpuProfiles::load_dir(&cfg.profiles_path().join("gpu"))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn rack_controller_config_is_valid_and_hears_eight_hosts() {
    let path = root().join("config/rack-controller.toml");
    let text = std::fs::read_to_string(&path).expect("config/rack-controller.toml is readable");
    let text = text.replace(
        "profiles_dir = \"/usr/share/coolantd/firmware-profiles\"",
        &format!(
            "profiles_dir = {:?}",
            root().join("firmware-profiles").display().to_string()
        ),
    );
    let cfg = Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.site.dry_run, "shipped in dry-run mode");
    assert_eq!(cfg.cdus.len(), 1);
    assert_eq!(cfg.remote_hosts().len(), 8);
    assert!(cfg.rack.is_some() && cfg.mqtt.is_some());
    let profiles = load_profiles(&cfg).unwrap_or_else(|e| panic!("{e}"));
    // `run`'s own start-up checks accept a controller without GPUs of its own.
    coolantd::service::preflight::check_startup(&cfg, false).unwrap_or_else(|e| panic!("{e}"));
    // Live, check-config's last line names the leases among what the controller writes.
    let live = Config::parse(&text.replace("dry_run = true", "dry_run = false"), &path)
        .unwrap_or_else(|e| panic!("{e}"));
    let verdict = coolantd::service::preflight::verdict(&live, &profiles, None);
    assert!(
        verdict.contains("power cap leases to the agents of 8 host(s)"),
        "{verdict}"
    );
}

/// `coolantd check-config` on a file, with its exit code and output.
fn check_config(path: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coolantd"))
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .expect("run coolantd check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn simulated_rack_files_are_accepted_by_check_config_and_kept_apart() {
    let agents = root().join("config/sim-rack-agents.toml");
    let (code, out) = check_config(&agents);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("simulated rack for `coolantd sim`: 8 hosts × 8 GPUs"),
        "{out}"
    );
    let cfg = Config::load(&agents).unwrap_or_else(|e| panic!("{e}"));
    let sc = cfg.simulator.as_ref().expect("[simulator]");
    assert!(sc.agents && !sc.external && sc.hosts.len() == 8);

    let ctl = root().join("config/sim-rack-controller.toml");
    let (code, out) = check_config(&ctl);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("power cap leases to the agents of 8 host(s)"),
        "{out}"
    );
    let c = Config::load(&ctl).unwrap_or_else(|e| panic!("{e}"));
    let csc = c.simulator.as_ref().expect("[simulator]");
    assert!(csc.external, "the controller runs no plant of its own");
    assert_eq!(csc.time_scale, sc.time_scale, "both keep the plant's time");
    assert_eq!(
        c.cdus[0].hosts, sc.hosts,
        "the controller hears every simulated host"
    );
    assert_eq!(
        c.cdus[0].transport,
        coolantd::config::CduTransport::Tcp {
            address: sc.listen.clone()
        },
        "the controller drives the rack's simulated CDU"
    );

    // `run` refuses the rack's file, naming the key and the command that runs it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coolantd"))
        .args(["run", "--config"])
        .arg(&agents)
        .output()
        .expect("run coolantd run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("simulator.agents") && err.contains("coolantd sim --config"),
        "{err}"
    );
}

#[test]
fn a_bad_simulated_fault_is_refused_naming_its_key() {
    let tmp = coolantd_testkit::TempDir::new("sim-rack-fault");
    let path = tmp.path().join("rack.toml");
    let text = std::fs::read_to_string(root().join("config/sim-rack-agents.toml"))
        .expect("read")
        .replace(
            "profiles_dir = \"../firmware-profiles\"",
            &format!(
                "profiles_dir = {:?}",
                root().join("firmware-profiles").display().to_string()
            ),
        );
    let bad = format!(
        "{text}\n[[simulator.faults]]\nat_s = 10.0\nhost = \"node99\"\nkind = \"agent_dies\"\nduration_s = -5.0\n"
    );
    std::fs::write(&path, bad).expect("write");
    let (code, out) = check_config(&path);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("rack.toml"), "{out}");
    assert!(
        out.contains("simulator.faults[0].host") && out.contains("node99"),
        "{out}"
    );
    assert!(out.contains("simulator.faults[0].duration_s"), "{out}");
    let unknown_kind = format!(
        "{text}\n[[simulator.faults]]\nat_s = 10.0\nhost = \"node01\"\nkind = \"meteor\"\n"
    );
    std::fs::write(&path, unknown_kind).expect("write");
    let (code, out) = check_config(&path);
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains("agent_dies") && out.contains("partition"),
        "the refusal lists the kinds: {out}"
    );
    // Faults need the agents they act on.
    let no_agents = format!(
        "{}\n[[simulator.faults]]\nat_s = 10.0\nhost = \"node01\"\nkind = \"partition\"\n",
        text.replace("agents = true", "agents = false")
    );
    std::fs::write(&path, no_agents).expect("write");
    let (code, out) = check_config(&path);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("simulator.agents"), "{out}");
}
