//! The simulated CDU's Modbus TCP server, checked with an independent client: mbpoll.
//!
//! Needs the Debian package `mbpoll`.

use coolantd_testkit::modbus_common as common;

use common::{have_peer, sim_profile_path, MapState};
use coolantd::model::Role;
use coolantd::profile::CduProfile;
use coolantd::sim::CduState;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

const MBPOLL: &str = "/usr/bin/mbpoll";

struct Server {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    state: Arc<Mutex<dyn CduState>>,
    /// The test state, when the server serves one (the plant test serves the real plant).
    map: Option<Arc<Mutex<MapState>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = &self.rt;
    }
}

fn start() -> Server {
    let map = Arc::new(Mutex::new(MapState::full()));
    let state: Arc<Mutex<dyn CduState>> = map.clone();
    let mut s = start_with(state);
    s.map = Some(map);
    s
}

fn start_with(state: Arc<Mutex<dyn CduState>>) -> Server {
    let profile = Arc::new(CduProfile::load(&sim_profile_path()).expect("sim-cdu.toml loads"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (addr, task) = rt
        .block_on(coolantd::sim::cdu_server::spawn(
            "127.0.0.1:0",
            profile,
            state.clone(),
        ))
        .expect("server binds a loopback port");
    Server {
        rt,
        addr,
        task,
        state,
        map: None,
    }
}

/// Runs mbpoll once against the server with `args` (type, reference, count, values...).
fn mbpoll(server: &Server, args: &[&str]) -> (bool, String) {
    let port = server.addr.port().to_string();
    let mut cmd = Command::new(MBPOLL);
    cmd.args(["-m", "tcp", "-p", &port, "-a", "1", "-0", "-1", "-o", "2"]);
    // mbpoll takes options before the host and write values after it.
    let (opts, values): (Vec<&str>, Vec<&str>) = match args.iter().position(|a| *a == "--") {
        Some(p) => (args[..p].to_vec(), args[p + 1..].to_vec()),
        None => (args.to_vec(), Vec::new()),
    };
    cmd.args(&opts).arg("127.0.0.1");
    if !values.is_empty() {
        cmd.arg("--").args(&values);
    }
    let out = cmd.output().expect("mbpoll runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Parses mbpoll's `[ref]: value` lines.
fn values(output: &str) -> Vec<(u16, String)> {
    output
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('[')?;
            let (r, v) = rest.split_once("]:")?;
            Some((r.trim().parse().ok()?, v.trim().to_string()))
        })
        .collect()
}

fn floats(server: &Server, args: &[&str]) -> Vec<(u16, f64)> {
    let (ok, out) = mbpoll(server, args);
    assert!(ok, "mbpoll {args:?} failed:\n{out}");
    values(&out)
        .into_iter()
        .map(|(r, v)| {
            (
                r,
                v.parse::<f64>()
                    .unwrap_or_else(|_| panic!("`{v}` in:\n{out}")),
            )
        })
        .collect()
}

/// 16-bit registers read as hex words, so the test decodes them itself.
fn words(server: &Server, table: &str, start: u16, count: u16) -> Vec<u16> {
    let (ok, out) = mbpoll(
        server,
        &[
            "-t",
            &format!("{table}:hex"),
            "-r",
            &start.to_string(),
            "-c",
            &count.to_string(),
        ],
    );
    assert!(ok, "mbpoll failed:\n{out}");
    values(&out)
        .into_iter()
        .map(|(_, v)| {
            u16::from_str_radix(v.trim_start_matches("0x"), 16)
                .unwrap_or_else(|_| panic!("`{v}` in:\n{out}"))
        })
        .collect()
}

fn state_value(server: &Server, role: Role) -> f64 {
    server
        .state
        .lock()
        .expect("state lock")
        .read(role)
        .expect("role present")
}

#[test]
fn mbpoll_reads_what_the_state_reports() {
    if !have_peer(MBPOLL, "mbpoll") {
        return;
    }
    let s = start();

    // Input registers 0..3: supply and return as big-endian (ABCD) floats.
    let f = floats(&s, &["-t", "3:float", "-B", "-r", "0", "-c", "2"]);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0].1, state_value(&s, Role::SupplyTemperature));
    assert_eq!(f[1].1, state_value(&s, Role::ReturnTemperature));

    // Input register 4: flow as a word-swapped (CDAB) float, mbpoll's default order.
    let f = floats(&s, &["-t", "3:float", "-r", "4", "-c", "1"]);
    assert_eq!(f[0].1, state_value(&s, Role::Flow));

    // Input registers 6..11: tenths, INT16 or UINT16.
    let w = words(&s, "3", 6, 6);
    let tenths = |word: u16, signed: bool| {
        if signed {
            f64::from(word as i16) / 10.0
        } else {
            f64::from(word) / 10.0
        }
    };
    let expect = [
        (Role::DifferentialPressure, true),
        (Role::PumpSpeedFeedback, false),
        (Role::FacilityWaterTemperature, true),
        (Role::ValvePosition, false),
        (Role::RoomTemperature, true),
        (Role::RoomHumidity, false),
    ];
    assert_eq!(w.len(), expect.len());
    for (word, (role, signed)) in w.iter().zip(expect) {
        let v = tenths(*word, signed);
        assert!(
            (v - state_value(&s, role)).abs() < 0.051,
            "{role}: {v} vs {}",
            state_value(&s, role)
        );
    }

    // Discrete inputs: leak (0) and remote enable (1).
    let (ok, out) = mbpoll(&s, &["-t", "1", "-r", "0", "-c", "2"]);
    assert!(ok, "{out}");
    let bits: Vec<String> = values(&out).into_iter().map(|(_, v)| v).collect();
    assert_eq!(bits, ["0", "1"], "{out}");

    // Holding registers: pump speed command (tenths of %) and watchdog.
    let w = words(&s, "4", 0, 2);
    assert_eq!(
        f64::from(w[0]) / 10.0,
        state_value(&s, Role::PumpSpeedCommand)
    );
    assert_eq!(f64::from(w[1]), state_value(&s, Role::Watchdog));

    // An address the profile does not map is refused with an exception, not zeros.
    let (ok, out) = mbpoll(&s, &["-t", "3", "-r", "12", "-c", "1"]);
    assert!(
        !ok || values(&out).is_empty(),
        "unmapped read succeeded:\n{out}"
    );
    assert!(out.to_lowercase().contains("illegal data address"), "{out}");
}

#[test]
fn mbpoll_writes_the_pump_speed() {
    if !have_peer(MBPOLL, "mbpoll") {
        return;
    }
    let s = start();
    // 555 tenths of a percent = 55.5 %.
    let (ok, out) = mbpoll(&s, &["-t", "4", "-r", "0", "--", "555"]);
    assert!(ok, "write failed:\n{out}");
    assert_eq!(state_value(&s, Role::PumpSpeedCommand), 55.5);
    assert_eq!(
        s.map
            .as_ref()
            .expect("test state")
            .lock()
            .expect("state lock")
            .writes,
        [(Role::PumpSpeedCommand, 55.5)]
    );

    // 10 % is under the profile's limits: the server refuses it and the state keeps 55.5 %.
    let (ok, out) = mbpoll(&s, &["-t", "4", "-r", "0", "--", "100"]);
    assert!(!ok, "a write under the limits was accepted:\n{out}");
    assert!(out.to_lowercase().contains("illegal data value"), "{out}");
    assert_eq!(state_value(&s, Role::PumpSpeedCommand), 55.5);

    // Input registers are read-only.
    let (ok, out) = mbpoll(&s, &["-t", "3", "-r", "0", "--", "1"]);
    assert!(!ok, "a write to an input register was accepted:\n{out}");
}

/// mbpoll against the real plant model (not a test map): after two minutes of full load the
/// simulator's CDU serves what the plant computes, and an independent client reads the same.
#[test]
fn mbpoll_reads_the_running_plant() {
    if !have_peer(MBPOLL, "mbpoll") {
        return;
    }
    let profiles = coolantd::profile::gpu::GpuProfiles::load_dir(
        &common::root().join("firmware-profiles/gpu"),
    )
    .expect("GPU profiles load");
    let cfg = coolantd::sim::SimConfig {
        workload: coolantd::sim::Workload::Full,
        ..coolantd::sim::SimConfig::default()
    };
    let mut plant = coolantd::sim::build_plant(
        &cfg,
        profiles.by_name("h200-sxm").expect("h200 profile"),
        "node",
    );
    plant.step(std::time::Duration::from_secs(120));
    let plant: Arc<Mutex<dyn CduState>> = Arc::new(Mutex::new(plant));
    let s = start_with(plant);
    let f = floats(&s, &["-t", "3:float", "-B", "-r", "0", "-c", "2"]);
    let (supply, ret) = (
        state_value(&s, Role::SupplyTemperature),
        state_value(&s, Role::ReturnTemperature),
    );
    // FLOAT32 on the wire: equal to the plant's f64 within single precision.
    assert!((f[0].1 - supply).abs() < 1e-3, "supply {f:?} vs {supply}");
    assert!((f[1].1 - ret).abs() < 1e-3, "return {f:?} vs {ret}");
    assert!(
        ret > supply + 1.0,
        "8 GPUs at full load heat the coolant: supply {supply}, return {ret}"
    );
    let flow = floats(&s, &["-t", "3:float", "-r", "4", "-c", "1"]);
    assert!(
        (flow[0].1 - state_value(&s, Role::Flow)).abs() < 1e-3,
        "{flow:?}"
    );
}
