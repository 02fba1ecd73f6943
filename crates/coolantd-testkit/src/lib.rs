//! coolantd's integration-test harnesses, shared by the test binaries under `tests/` as an
//! ordinary dev-dependency. Each harness starts a real peer on free loopback ports and
//! removes what it wrote when dropped:
//!
//! - [`mosquitto`]: a Mosquitto broker; [`mqtt_client`]: a rumqttc client playing the integrator.
//! - [`victoria`]: VictoriaMetrics (InfluxDB write API, Prometheus export);
//!   [`influxdb1`]: InfluxDB 1.x with InfluxQL. Both start, wait and stop through [`server`].
//! - [`modbus_common`], [`pymodbus_map`]: simulated CDU states, the pymodbus register map and
//!   peer detection; [`modbus_proxy`]: a Modbus TCP proxy that counts, hangs and rewrites;
//!   [`tcp_proxy`]: a byte-for-byte TCP proxy that can partition its clients (blackhole).
//! - [`sim_daemon`]: a daemon on the plant simulator, in process or as configuration text for
//!   the real binary; [`daemon_process`]: the real binary as a child, its log collected.
//! - [`nvml_replay`]: private copies of the replay NVML library (crates/nvml-replay).
//!
//! The Python peers (`python/pymodbus_cdu.py`, `python/spb_host.py`) live beside this crate
//! and are found through [`python_script`].

pub mod daemon_process;
pub mod influxdb1;
pub mod json_schema;
pub mod modbus_common;
pub mod modbus_proxy;
pub mod mosquitto;
pub mod mqtt_client;
pub mod nvml_replay;
pub mod pymodbus_map;
pub mod server;
pub mod sim_daemon;
pub mod sim_rack;
pub mod tcp_proxy;
pub mod victoria;
pub mod wire_client;

use std::path::{Path, PathBuf};

/// A free TCP port on loopback (bound, read and released; the race with another process
/// taking it in between is acceptable for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback must have a free port")
}

/// The repository's root (configurations, firmware profiles and fixtures are found from it):
/// the same path as a test's `env!("CARGO_MANIFEST_DIR")`, with no `..` in it, because tests
/// find paths built from it in the daemon's messages.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("this crate lives in crates/coolantd-testkit")
}

/// One of the Python peers shipped with this crate (`pymodbus_cdu.py`, `spb_host.py`).
pub fn python_script(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The name under which the test harness lists `test`, a test function of the module whose
/// `module_path!()` is `module`: the module's path without the crate's name. A test binary
/// that re-runs itself for one test (a child in a crash or logging role) filters on it with
/// `--exact`, which is silently empty if the name is wrong.
pub fn test_name(module: &str, test: &str) -> String {
    match module.split_once("::") {
        Some((_, path)) => format!("{path}::{test}"),
        None => test.to_string(),
    }
}

/// A private temporary folder named after `tag`, removed when dropped.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("coolantd-{tag}-"))
        .tempdir()
        .expect("the temporary folder must be writable")
}

/// A temporary folder for a test: `.0` is its path; the folder and everything in it is
/// removed when this is dropped.
pub struct TempDir(pub PathBuf, tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let tmp = temp_dir(tag);
        TempDir(tmp.path().to_path_buf(), tmp)
    }

    pub fn path(&self) -> &Path {
        self.1.path()
    }
}
