//! Checks of a configuration that need more than the file itself: the firmware profiles it
//! names, the secret files it points to, and what the daemon would do with it. Shared by
//! `check-config`, `run` and reload, so that whatever `run` would refuse, `check-config`
//! refuses first, with the same message.

use crate::config::{Config, ConfigError, ConfigIssue, GpuBackendKind, Issues};
use crate::profile::cdu::CduProfile;
use crate::profile::gpu::GpuProfiles;
use crate::profile::LoadedProfiles;
use std::path::Path;

/// One issue in the configuration file itself.
fn refuse(cfg: &Config, key: impl Into<String>, expected: impl Into<String>) -> ConfigError {
    ConfigError {
        file: cfg.path.clone(),
        issues: vec![ConfigIssue {
            key: key.into(),
            expected: expected.into(),
        }],
    }
}

/// `site.profiles_dir` must be a folder; the error names the configuration file and the key
/// rather than only the folder, so the reader knows which line to fix.
pub fn check_profiles_dir(cfg: &Config, dir: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(refuse(
            cfg,
            "site.profiles_dir",
            format!(
                "a folder of firmware profiles (with gpu/ and cdu/ inside), but {} is not a folder",
                dir.display()
            ),
        )),
        Err(e) => Err(refuse(
            cfg,
            "site.profiles_dir",
            format!(
                "a folder of firmware profiles (with gpu/ and cdu/ inside; relative paths resolve \
                 against the configuration file's folder), but {}: {e}",
                dir.display()
            ),
        )),
    }
}

/// The GPU slowdown threshold `control.setpoint` is checked against before any GPU is open:
/// the simulator's profile when the GPUs are simulated, otherwise the strictest profile
/// known (the boards NVML will report are not known yet). Returns the threshold and a
/// phrase saying where it came from, or `None` when no profile is there to ask.
fn slowdown_for_config(cfg: &Config, gpu: &GpuProfiles) -> Option<(f64, String)> {
    if cfg.gpus.backend == GpuBackendKind::Simulated {
        if let Some(p) = cfg
            .simulator
            .as_ref()
            .and_then(|s| gpu.by_name(&s.gpu_profile))
        {
            return Some((
                p.thresholds.slowdown_c.get(),
                format!("the simulated GPUs' profile {}", p.name),
            ));
        }
    }
    let strictest = gpu.iter().min_by(|a, b| {
        a.thresholds
            .slowdown_c
            .get()
            .total_cmp(&b.thresholds.slowdown_c.get())
    })?;
    Some((
        strictest.thresholds.slowdown_c.get(),
        format!(
            "the strictest GPU profile, {} (the boards are known only once the GPUs are open)",
            strictest.name
        ),
    ))
}

/// `control.setpoint` obeys the same rule as a set point sent over MQTT
/// ([`crate::control::ControlConfig::check_setpoint`]), against the GPU profiles.
pub fn check_setpoint(cfg: &Config, gpu: &GpuProfiles) -> Result<(), ConfigError> {
    let Some((slowdown, source)) = slowdown_for_config(cfg, gpu) else {
        return Ok(());
    };
    cfg.control
        .check_setpoint(cfg.control.setpoint, Some(slowdown))
        .map_err(|e| {
            refuse(
                cfg,
                "control.setpoint",
                format!("a set point the GPUs allow, but {e}; the threshold is from {source}"),
            )
        })
}

/// `control.setpoint` against the GPUs actually opened (their slowdown thresholds as NVML or
/// the simulator reports them), once they are known at start-up.
pub fn check_setpoint_for_gpus(
    cfg: &Config,
    gpus: &[crate::model::GpuStatic],
) -> Result<(), ConfigError> {
    let Some(lowest) = gpus
        .iter()
        .min_by(|a, b| a.slowdown.get().total_cmp(&b.slowdown.get()))
    else {
        return Ok(());
    };
    cfg.control
        .check_setpoint(cfg.control.setpoint, Some(lowest.slowdown.get()))
        .map_err(|e| {
            refuse(
                cfg,
                "control.setpoint",
                format!(
                    "a set point the GPUs allow, but {e}; the threshold is GPU {}'s ({})",
                    lowest.key, lowest.name
                ),
            )
        })
}

/// Checks that a secret the daemon reads at start-up is there: a file it can read, or an
/// environment variable that is set. `key` is the dotted key that names it.
fn check_secret_file(path: &Path, key: &str, issues: &mut Issues) {
    match std::fs::File::open(path) {
        Ok(_) => {}
        Err(e) => issues.push(
            key,
            format!(
                "a file this user can read, but {}: {e} (create it, mode 640, owned by the \
                 user the service runs as, or remove the key)",
                path.display()
            ),
        ),
    }
}

fn check_secret_env(var: &str, key: &str, issues: &mut Issues) {
    if std::env::var_os(var).is_none() {
        issues.push(
            key,
            format!(
                "an environment variable that is set, but {var} is not set here (the service \
                 gets it from its unit: Environment= or EnvironmentFile=)"
            ),
        );
    }
}

/// The secret files (InfluxDB token, MQTT password, MQTT TLS files) and environment
/// variables `run` reads when it starts the sinks; every missing or unreadable one is named
/// by its key, so `check-config` (the unit's `ExecStartPre=`) refuses what `run` would.
pub fn check_secrets(cfg: &Config, issues: &mut Issues) {
    if let Some(ic) = &cfg.influx {
        // The InfluxDB sink opens token_file as written (relative to the working directory).
        if let Some(f) = &ic.token_file {
            check_secret_file(f, "influx.token_file", issues);
        }
        if let Some(v) = &ic.token_env {
            check_secret_env(v, "influx.token_env", issues);
        }
    }
    if let Some(mc) = &cfg.mqtt {
        let mc = mc.resolved(cfg.base_dir());
        if let Some(f) = &mc.password_file {
            check_secret_file(f, "mqtt.password_file", issues);
        }
        if let Some(v) = &mc.password_env {
            check_secret_env(v, "mqtt.password_env", issues);
        }
        if let Some(t) = &mc.tls {
            check_secret_file(&t.ca_file, "mqtt.tls.ca_file", issues);
            if let Some(f) = &t.client_cert_file {
                check_secret_file(f, "mqtt.tls.client_cert_file", issues);
            }
            if let Some(f) = &t.client_key_file {
                check_secret_file(f, "mqtt.tls.client_key_file", issues);
            }
        }
    }
}

/// Whether the pump loop has anything to control. Its only controlled variable is GPU
/// temperature: a host with `gpus.backend = "none"` has none of its own, so each of its CDUs
/// must cool other hosts (`[[cdu]] hosts`), whose readings arrive over MQTT. Otherwise the
/// CDU either goes to failsafe once the boot timeout passes (GPU input required) or holds
/// the start speed forever while reporting `running`.
pub fn check_gpu_inputs(cfg: &Config, issues: &mut Issues) {
    if cfg.gpus.backend != GpuBackendKind::None {
        return;
    }
    let me = cfg.site.host_name();
    let blind: Vec<&str> = cfg
        .cdus
        .iter()
        .filter(|c| !c.hosts.iter().any(|h| *h != me))
        .map(|c| c.name.as_str())
        .collect();
    if cfg.cdus.is_empty() {
        issues.push(
            "gpus.backend",
            "GPUs or at least one [[cdu]] to control, but backend = \"none\" and no [[cdu]]: \
             nothing would be controlled",
        );
    } else if blind.is_empty() {
        // Every CDU hears its GPUs over the network.
    } else if cfg.control.plausibility.gpu_required {
        issues.push(
            "control.plausibility.gpu_required",
            format!(
                "GPU readings for every CDU, but gpus.backend = \"none\" gives none to CDU(s) \
                 {} (they list no other host in `hosts`): they would enter failsafe {} s after \
                 start and run their pump at control.pump.failsafe_speed. Run coolantd on the \
                 host whose GPUs the CDU cools, with gpus.backend = \"nvml\", or list the hosts \
                 it cools in the CDU's `hosts`",
                blind.join(", "),
                cfg.control.supervisor.boot_timeout_s
            ),
        );
    } else {
        issues.push(
            "gpus.backend",
            "a source of GPU temperatures (the pump loop's only controlled variable), but with \
             backend = \"none\" and control.plausibility.gpu_required = false nothing is \
             controlled: the pumps would hold control.pump.start_speed while the daemon reports \
             `running`. Run coolantd on the host whose GPUs the CDU cools, with \
             gpus.backend = \"nvml\", or list the hosts it cools in the CDU's `hosts`",
        );
    }
}

/// What `run` checks about a configuration beyond the file and its profiles before it
/// starts anything. `sinks` is false for commands that start no sink (`probe`, `sim`).
pub fn check_startup(cfg: &Config, sinks: bool) -> Result<(), ConfigError> {
    let mut issues = Issues::default();
    if cfg.simulator.as_ref().is_some_and(|s| s.agents) {
        // The agents and their plant run under `coolantd sim`; a daemon that started the
        // plant too would serve a second CDU and read the agents' GPUs behind their back.
        issues.push(
            "simulator.agents",
            format!(
                "false for `coolantd run`: this file runs a simulated rack with its agents; \
                 start it with `coolantd sim --config {}`, and its controller with a file of \
                 its own (config/sim-rack-controller.toml)",
                cfg.path.display()
            ),
        );
        return issues.into_result(&cfg.path);
    }
    check_gpu_inputs(cfg, &mut issues);
    if sinks {
        check_secrets(cfg, &mut issues);
    }
    issues.into_result(&cfg.path)
}

/// Remarks about a valid configuration that deserve a look before going live; printed by
/// `check-config`, never refused.
pub fn notes(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if !cfg.cdus.is_empty() && cfg.control.period_ms < 100 {
        out.push(format!(
            "control.period_ms = {}: every tick polls each CDU over Modbus and writes its pump \
             and watchdog registers; most CDU controllers update their registers every 100 ms \
             to 1 s, so a period under 100 ms mostly re-reads the same values",
            cfg.control.period_ms
        ));
    }
    if cfg.influx.is_none() {
        out.push("no [influx] section: metrics are not stored (fine for a first dry run)".into());
    }
    if cfg.mqtt.is_none() {
        out.push("no [mqtt] section: no state, alarms or commands over MQTT".into());
    }
    out
}

/// The last line of `check-config`: whether this configuration writes anything, and what.
/// `gpu_count` is the number of GPUs when it is known (simulated, or NVML opened by
/// `--connect`).
pub fn verdict(cfg: &Config, profiles: &LoadedProfiles, gpu_count: Option<usize>) -> String {
    use crate::model::Role;
    if cfg.site.dry_run {
        return "DRY RUN: decides, logs and publishes everything, writes nothing to any CDU or \
                GPU (site.dry_run = true)"
            .into();
    }
    let mut writes = Vec::new();
    for c in &cfg.cdus {
        if let Some(p) = profiles.cdu.get(&c.name) {
            for role in [Role::PumpSpeedCommand, Role::Watchdog] {
                if let Some(r) = p
                    .registers
                    .iter()
                    .find(|r| r.role == Some(role) && r.writable)
                {
                    writes.push(format!("{} {} ({} {})", c.name, r.name, r.kind, r.address));
                }
            }
        }
    }
    let gpus = if cfg.gpus.backend == GpuBackendKind::None {
        None
    } else if !cfg.control.power_cap.enabled {
        Some("no power limits (control.power_cap.enabled = false)".to_string())
    } else {
        let n = gpu_count.or_else(|| match (&cfg.gpus.backend, &cfg.simulator) {
            (GpuBackendKind::Simulated, Some(s)) => {
                Some(s.gpus_per_host as usize * s.hosts.len().max(1))
            }
            (GpuBackendKind::Nvml, _) if !cfg.gpus.indices.is_empty() => {
                Some(cfg.gpus.indices.len())
            }
            _ => None,
        });
        Some(match n {
            Some(n) => format!("the power limits of {n} GPUs"),
            None => "the power limits of every GPU NVML reports (gpus.indices is empty; \
                     --connect counts them)"
                .to_string(),
        })
    };
    let mut parts = Vec::new();
    if !writes.is_empty() {
        parts.push(writes.join(", "));
    }
    parts.extend(gpus);
    // Caps of other hosts' GPUs are written by their agents, on the controller's leases.
    let remote = cfg.remote_hosts();
    if !remote.is_empty() && cfg.control.power_cap.enabled {
        parts.push(format!(
            "power cap leases to the agents of {} host(s) ({})",
            remote.len(),
            remote.join(", ")
        ));
    }
    if parts.is_empty() {
        "LIVE: will write nothing (no CDU and no GPU)".into()
    } else {
        format!("LIVE: will write {}", parts.join(" and "))
    }
}

/// One peer `check-config --connect` tried, and what came of it.
pub struct Reach {
    pub what: String,
    pub result: Result<String, String>,
}

/// `check-config --connect`: reads every CDU once (a full Modbus poll, no write), connects
/// to the MQTT broker and asks the database for its health, and with `gpus.backend = "nvml"`
/// opens NVML and counts the GPUs. Returns what was tried and the GPU count when known.
pub async fn connect(cfg: &Config, profiles: &LoadedProfiles) -> (Vec<Reach>, Option<usize>) {
    use std::time::{Duration, Instant};
    let mut out = Vec::new();
    let host = cfg.site.host_name();
    let mut gpu_count = None;
    if cfg.gpus.backend == GpuBackendKind::Nvml {
        let facts_for = |board: &str| {
            profiles
                .gpu
                .board_facts_for(board, cfg.gpus.default_profile.as_deref())
        };
        let result = crate::collect::nvml::init()
            .map_err(|e| e.to_string())
            .and_then(|nvml| {
                crate::collect::nvml::NvmlBackend::open(nvml, &host, &cfg.gpus.indices, &facts_for)
                    .map_err(|e| e.to_string())
            })
            .map(|b| {
                use crate::collect::GpuBackend as _;
                let inv = b.inventory();
                gpu_count = Some(inv.len());
                let unknown: Vec<_> = inv
                    .iter()
                    .filter(|g| profiles.gpu.for_board(&g.name).is_none())
                    .map(|g| format!("{} ({})", g.key, g.name))
                    .collect();
                let mut s = format!("{} GPU(s)", inv.len());
                if !unknown.is_empty() {
                    s.push_str(&format!(
                        "; no profile matches {}: gpus.default_profile applies",
                        unknown.join(", ")
                    ));
                }
                s
            });
        out.push(Reach {
            what: "gpus (NVML)".into(),
            result,
        });
    }
    for (i, c) in cfg.cdus.iter().enumerate() {
        let Some(profile) = profiles.cdu.get(&c.name) else {
            continue;
        };
        let place = match &c.transport {
            crate::config::CduTransport::Tcp { address } => address.clone(),
            crate::config::CduTransport::Rtu { device, .. } => device.display().to_string(),
        };
        let mut client = crate::collect::modbus::ModbusCdu::new(c, profile.clone());
        let t0 = Instant::now();
        let sample = client.poll(Duration::ZERO).await;
        let took = t0.elapsed();
        let bad: Vec<String> = sample
            .registers
            .iter()
            .filter_map(|r| r.value.as_ref().err().map(|e| format!("{}: {e}", r.name)))
            .collect();
        let n = sample.registers.len();
        // The [simulator] serves this CDU only while `run` (or `sim`) runs.
        let own_sim = cfg.simulator.as_ref().is_some_and(|s| s.listen == place);
        // Only a connection that fails counts as "not started yet"; a device that answers
        // with an exception (a wrong unit id, an unmapped register) is a real finding.
        let not_listening = sample.registers.iter().all(|r| {
            matches!(
                r.value,
                Err(crate::model::SensorFault::Transport { .. }
                    | crate::model::SensorFault::Timeout)
            )
        });
        let result = if own_sim && not_listening && n > 0 {
            Ok(format!(
                "not answering now; this configuration's [simulator] serves it once \
                 `coolantd run` starts ({})",
                bad.first().map_or("", String::as_str)
            ))
        } else if bad.is_empty() {
            Ok(format!(
                "read {n} registers in {:.1} ms",
                took.as_secs_f64() * 1e3
            ))
        } else if bad.len() == n {
            Err(format!("no register could be read ({})", bad[0]))
        } else {
            Err(format!(
                "{} of {n} registers failed: {}",
                bad.len(),
                bad.join("; ")
            ))
        };
        out.push(Reach {
            what: format!("cdu[{i}] {} ({place}, unit {})", c.name, c.unit_id),
            result,
        });
    }
    if let Some(ic) = &cfg.influx {
        out.push(Reach {
            what: format!("influx {}", ic.url),
            result: database_health(&ic.url).await,
        });
    }
    if let Some(mc) = &cfg.mqtt {
        let mc = mc.resolved(cfg.base_dir());
        out.push(Reach {
            what: format!("mqtt {}:{}", mc.host, mc.port()),
            result: crate::link::mqtt::check_connect(
                &mc,
                &cfg.site.name,
                &host,
                Duration::from_secs(5),
            )
            .await
            .map(|()| "connected (CONNACK), disconnected".to_string()),
        });
    }
    (out, gpu_count)
}

/// Asks an InfluxDB 2 (or VictoriaMetrics) `/health`, falling back to InfluxDB 1's `/ping`.
async fn database_health(url: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let base = url.trim_end_matches('/');
    let mut last = String::new();
    for path in ["/health", "/ping"] {
        match client.get(format!("{base}{path}")).send().await {
            Ok(r) if r.status().is_success() => {
                return Ok(format!("GET {path}: HTTP {}", r.status().as_u16()))
            }
            Ok(r) => last = format!("GET {path}: HTTP {}", r.status().as_u16()),
            Err(e) => return Err(format!("GET {path}: {e}")),
        }
    }
    Err(last)
}

/// Loads every firmware profile the configuration names (`profile::load_profiles`) and checks
/// them against the rest of the file: each CDU profile maps the roles the control loop needs
/// and polls within `control.max_sample_age_ms`, and the set point suits the GPU profiles.
/// Used by `check-config`, `run` and reload.
pub fn load_profiles(cfg: &Config) -> Result<LoadedProfiles, ConfigError> {
    let dir = cfg.profiles_path();
    check_profiles_dir(cfg, &dir)?;
    let cdus: Vec<(&str, &str)> = cfg
        .cdus
        .iter()
        .map(|c| (c.name.as_str(), c.profile.as_str()))
        .collect();
    let profiles = crate::profile::load_profiles(
        &dir,
        &cfg.path,
        &cdus,
        &cfg.control.required_roles(),
        cfg.gpus.default_profile.as_deref(),
        |i, p| check_poll_fits(cfg, i, p),
    )?;
    check_setpoint(cfg, &profiles.gpu)?;
    Ok(profiles)
}

/// Refuses a CDU whose timeout cannot deliver a sample the control core accepts.
///
/// A poll is one request per block of the profile's read plan, each allowed `timeout_ms`,
/// after a reconnect (one more) when the last poll failed; no request is retried within a
/// poll (a failure drops the connection and the next poll retries after the backoff). The
/// sample is stamped when the poll starts and reaches the core at the tick after it
/// completes, up to one period later. So a CDU answering every request just inside its
/// timeout delivers samples up to `(requests + 1) × timeout_ms + period_ms` old; beyond
/// `control.max_sample_age_ms` such a CDU, slow but answering as configured, would read as
/// lost on every poll. The tick itself never waits for it longer than half a period.
fn check_poll_fits(cfg: &Config, index: usize, profile: &CduProfile) -> Result<(), ConfigError> {
    let c = &cfg.cdus[index];
    let requests = crate::collect::modbus::plan::plan(profile).len() as u64;
    // In wall time: a simulator sped up by `time_scale` ages samples faster, but its CDU
    // answers on loopback in well under a millisecond, and refusing sim.toml whenever
    // time_scale is raised would take the documented speed-up away.
    let worst = (requests + 1) * c.timeout_ms + cfg.control.period_ms;
    if worst <= cfg.control.max_sample_age_ms {
        return Ok(());
    }
    let fits = cfg
        .control
        .max_sample_age_ms
        .saturating_sub(cfg.control.period_ms)
        / (requests + 1);
    Err(ConfigError {
        file: cfg.path.clone(),
        issues: vec![ConfigIssue {
            key: format!("cdu[{index}].timeout_ms"),
            expected: format!(
                "a timeout whose worst-case poll fits control.max_sample_age_ms: profile `{}` \
                 polls in {requests} request(s) plus a reconnect, each allowed {} ms, \
                 and the sample waits up to one control.period_ms ({} ms) for a tick: {worst} ms \
                 in all, more than control.max_sample_age_ms = {} ms; use timeout_ms <= {fits} \
                 or raise control.max_sample_age_ms",
                profile.name, c.timeout_ms, cfg.control.period_ms, cfg.control.max_sample_age_ms
            ),
        }],
    })
}
