//! The simulated rack's two shipped files (`config/sim-rack-agents.toml` for `coolantd sim`,
//! `config/sim-rack-controller.toml` for `coolantd run`) with free loopback ports, private
//! state folders, absolute profile paths and a chosen time scale, so a test or an example
//! runs the rack exactly as shipped, beside anything else on the machine.

use std::path::Path;

/// Where one simulated rack listens.
#[derive(Debug, Clone, Copy)]
pub struct RackPorts {
    pub mqtt: u16,
    pub modbus: u16,
    pub http: u16,
}

impl RackPorts {
    pub fn free() -> RackPorts {
        RackPorts {
            mqtt: crate::free_port(),
            modbus: crate::free_port(),
            http: crate::free_port(),
        }
    }
}

fn shipped(
    name: &str,
    ports: &RackPorts,
    state_dir: &Path,
    time_scale: f64,
    state_line: &str,
    replace: &[(&str, &str)],
) -> String {
    let root = crate::repo_root();
    let mut text = std::fs::read_to_string(root.join("config").join(name))
        .unwrap_or_else(|e| panic!("config/{name}: {e}"));
    let fixed = [
        ("127.0.0.1:5021", format!("127.0.0.1:{}", ports.modbus)),
        ("port = 1883", format!("port = {}", ports.mqtt)),
        ("time_scale = 1.0", format!("time_scale = {time_scale:?}")),
        (
            state_line,
            format!("state_dir = {:?}", state_dir.display().to_string()),
        ),
        (
            "profiles_dir = \"../firmware-profiles\"",
            format!(
                "profiles_dir = {:?}",
                root.join("firmware-profiles").display().to_string()
            ),
        ),
    ];
    let extra: Vec<(String, String)> = replace
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    for (old, new) in fixed
        .iter()
        .map(|(a, b)| (a.to_string(), b.clone()))
        .chain(extra)
    {
        assert!(
            text.contains(&old),
            "config/{name} no longer contains {old:?}"
        );
        text = text.replace(&old, &new);
    }
    text
}

/// `config/sim-rack-agents.toml` on `ports`, with `(old, new)` text pairs swapped.
pub fn agents_config_text(
    ports: &RackPorts,
    state_dir: &Path,
    time_scale: f64,
    replace: &[(&str, &str)],
) -> String {
    shipped(
        "sim-rack-agents.toml",
        ports,
        state_dir,
        time_scale,
        "state_dir = \"../target/sim-rack-agents-state\"",
        replace,
    )
}

/// `config/sim-rack-controller.toml` on `ports`, with `(old, new)` text pairs swapped.
pub fn controller_config_text(
    ports: &RackPorts,
    state_dir: &Path,
    time_scale: f64,
    replace: &[(&str, &str)],
) -> String {
    let mut replace = replace.to_vec();
    let http = format!("listen = \"127.0.0.1:{}\"", ports.http);
    replace.push(("listen = \"127.0.0.1:9107\"", &http));
    shipped(
        "sim-rack-controller.toml",
        ports,
        state_dir,
        time_scale,
        "state_dir = \"../target/sim-rack-controller-state\"",
        &replace,
    )
}
