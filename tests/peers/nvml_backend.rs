//! The NVML backend, end to end. Against the replay library (crates/nvml-replay, the real
//! H200 and H100 captures behind nvml-wrapper's real dynamic loading) on every machine: the
//! values and unit conversions, which calls the fast path makes, the NotSupported bookkeeping,
//! a GPU falling off the bus, and power caps written within the constraints and read back.
//! Against whatever this machine has: on a GPU host it reads the real GPUs (read-only: nothing
//! there calls a setter); everywhere else it must say clearly that NVML is missing, and the
//! daemon must fall back to the simulator only where the configuration allows it.

use coolantd_testkit::nvml_replay;
use coolantd_testkit::sim_daemon;

use coolantd::collect::nvml::NvmlBackend;
use coolantd::collect::{GpuBackend, GpuError};
use coolantd::config::Config;
use coolantd::model::GpuKey;
use coolantd::profile::gpu::GpuProfiles;
use coolantd::service::run::{Daemon, RunOptions};
use coolantd::units::Watts;
use nvml_replay::Replay;
use std::path::Path;
use std::time::Duration;

fn profiles() -> GpuProfiles {
    GpuProfiles::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-profiles/gpu"))
        .expect("GPU profiles")
}

#[test]
fn nvml_reads_every_gpu_or_says_it_is_missing() {
    match coolantd::collect::nvml::init() {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("NVML is not available"), "{msg}");
            assert!(
                msg.contains("NVIDIA driver"),
                "the message says what to check: {msg}"
            );
        }
        Ok(nvml) => {
            // A GPU host: read every GPU once through the daemon's own backend.
            let p = profiles();
            let facts = |board: &str| p.for_board(board).map(|g| g.board_facts());
            let backend =
                coolantd::collect::nvml::NvmlBackend::open(nvml, "test-host", &[], &facts)
                    .expect("GPUs enumerate");
            let inv = backend.inventory();
            assert!(!inv.is_empty(), "NVML initialised but found no GPU");
            let fast = backend.read_fast(Duration::ZERO);
            assert_eq!(fast.len(), inv.len());
            for s in &fast {
                let core = s.core.expect("every GPU reports its core temperature");
                assert!((0.0..130.0).contains(&core.0), "{core}");
                let limit = s
                    .enforced_limit
                    .expect("every GPU reports its enforced limit");
                let st = inv
                    .iter()
                    .find(|g| g.key == s.key)
                    .expect("sample of a known GPU");
                assert!(
                    limit >= st.power_min && limit <= st.power_max,
                    "{limit} outside the board's range"
                );
            }
            eprintln!("read {} GPU(s): {:?}", inv.len(), fast);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nvml_the_daemon_refuses_unless_fallback_is_allowed() {
    if coolantd::collect::nvml::init().is_ok() {
        eprintln!("NVML is present on this host: the missing-driver path cannot be exercised here");
        return;
    }
    let dir = sim_daemon::TempDir::new("nvml-missing");
    let nvml = [("backend = \"simulated\"", "backend = \"nvml\"")];
    let text = sim_daemon::sim_config_text(sim_daemon::free_port(), &dir.0, &nvml, "");
    let path = dir.0.join("site.toml");
    std::fs::write(&path, &text).expect("write config");
    let cfg = Config::load(&path).expect("valid config");
    let opts = RunOptions {
        dry_run: false,
        sim_autostep: false,
        sinks: false,
        rehearse: false,
    };
    let err = Daemon::build(cfg, &opts)
        .await
        .err()
        .expect("no NVML and no fallback: refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("NVML is not available"), "{msg}");
    assert!(
        msg.contains("sim.toml"),
        "the message says how to run without GPUs: {msg}"
    );

    let fallback = [(
        "backend = \"simulated\"",
        "backend = \"nvml\"\nfallback_to_simulated = true",
    )];
    let with_fallback = sim_daemon::sim_config_text(sim_daemon::free_port(), &dir.0, &fallback, "");
    let mut d = sim_daemon::build(&with_fallback, &dir.0, false).await;
    d.sim().expect("simulator").step(Duration::from_secs(1));
    let s = d.tick(Duration::from_secs(1)).await;
    assert_eq!(s.gpus.len(), 8, "runs on the simulated GPUs");
}

fn open_replay(r: &Replay) -> NvmlBackend {
    let p = profiles();
    let facts = |board: &str| p.for_board(board).map(|g| g.board_facts());
    NvmlBackend::open(r.init(), "replay-host", &[], &facts).expect("the replay GPUs open")
}

fn fixture(board: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(board)
        .join("info.json");
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    serde_json::from_str::<serde_json::Value>(&text).expect("fixture is JSON")["info"]["devices"][0]
        .clone()
}

/// A captured number, whether the capture wrote it as a number or as a (quoted) string.
fn captured(dev: &serde_json::Value, key: &str) -> f64 {
    match &dev[key] {
        serde_json::Value::Number(n) => n.as_f64().expect("finite"),
        serde_json::Value::String(s) => s.trim_matches('"').parse().expect("numeric string"),
        v => panic!("{key}: unexpected {v}"),
    }
}

fn assert_close(what: &str, got: Option<f64>, want: f64) {
    let got = got.unwrap_or_else(|| panic!("{what}: no value read"));
    assert!(
        (got - want).abs() < 1e-9,
        "{what}: read {got}, captured {want}"
    );
}

#[test]
fn the_backend_reads_the_captured_boards_in_watts_and_degrees() {
    for (board, name) in [("h200", "NVIDIA H200"), ("h100", "NVIDIA H100 80GB HBM3")] {
        let dev = fixture(board);
        let r = Replay::new(board, board, 2);
        let b = open_replay(&r);
        let inv = b.inventory();
        assert_eq!(inv.len(), 2, "{board}: both replayed GPUs enumerate");
        let st = &inv[0];
        assert_eq!(st.name, name);
        assert_eq!(
            st.uuid,
            dev["uuid"].as_str().expect("uuid").trim_matches('"')
        );
        assert_ne!(inv[0].uuid, inv[1].uuid, "each GPU keeps its own UUID");
        assert_close(
            "slowdown",
            Some(st.slowdown.0),
            captured(&dev, "thr_slowdown"),
        );
        assert_close("gpu_max", Some(st.gpu_max.0), captured(&dev, "thr_gpu_max"));
        assert_close("hbm_max", Some(st.hbm_max.0), captured(&dev, "thr_mem_max"));
        assert_close(
            "shutdown",
            Some(st.shutdown.0),
            captured(&dev, "thr_shutdown"),
        );
        assert_eq!((st.power_min, st.power_max), (Watts(200.0), Watts(700.0)));
        assert_close(
            "power_default",
            Some(st.power_default.0),
            captured(&dev, "power_limit_default_mw") / 1000.0,
        );

        let fast = b.read_fast(Duration::from_secs(3));
        let s = &fast[0];
        assert_eq!(s.at, Duration::from_secs(3));
        assert_close("core °C", s.core.map(|c| c.0), captured(&dev, "temp_gpu_c"));
        assert_close(
            "HBM °C",
            s.hbm.map(|c| c.0),
            captured(&dev, "field_memory_temp_c"),
        );
        // NVML reports milliwatts; the sample carries watts.
        assert_close(
            "average W",
            s.power_average.map(|w| w.0),
            captured(&dev, "field_power_average_mw") / 1000.0,
        );
        assert_close(
            "instant W",
            s.power_instant.map(|w| w.0),
            captured(&dev, "field_power_instant_mw") / 1000.0,
        );
        assert_close(
            "enforced W",
            s.enforced_limit.map(|w| w.0),
            captured(&dev, "enforced_power_limit_mw") / 1000.0,
        );
        assert_close(
            "SM MHz",
            s.sm_clock.map(|m| m.0),
            captured(&dev, "clock_sm"),
        );
        assert_close(
            "mem MHz",
            s.mem_clock.map(|m| m.0),
            captured(&dev, "clock_mem"),
        );
        assert_close("utilisation", s.utilization.map(|u| u.0), 0.0);
        assert_eq!(s.throttle_reasons, Some(0x1), "GPU_IDLE, as captured");
        assert_eq!(s.pstate, Some(0), "P0, as captured");

        let slow = b.read_slow(Duration::from_secs(3));
        // NVML reports millijoules; the sample carries joules.
        assert_close(
            "energy J",
            slow[0].energy.map(|j| j.0),
            captured(&dev, "total_energy_mj") / 1000.0,
        );
        assert_eq!(slow[0].violation_power_ns, Some(0));
        assert_eq!(slow[0].violation_thermal_ns, Some(0));
        assert_eq!(slow[0].ecc_corrected, Some(0));
        assert!(r.setter_calls().is_empty(), "reading writes nothing");
    }
}

/// The calls one fast read may make per GPU: sub-microsecond values and one batched
/// field-values call (tests/fixtures/h200/timing.json).
const FAST_CALLS: [&str; 9] = [
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetPerformanceState",
    "nvmlShutdown",
];

#[test]
fn the_fast_path_makes_only_fast_calls() {
    let r = Replay::new("fast", "h200", 4);
    let b = open_replay(&r);
    r.clear_calls();
    let ticks = 10;
    for k in 0..ticks {
        b.read_fast(Duration::from_secs(k));
    }
    let calls = r.calls();
    for c in &calls {
        let f = c.split_whitespace().next().unwrap_or("");
        assert!(
            FAST_CALLS.contains(&f),
            "the fast path called {c}; energy, violation, ECC and PCIe reads belong on the slow path"
        );
    }
    // Exactly one handle look-up and eight reads (two of them clocks) per GPU per tick.
    assert_eq!(calls.len(), 9 * 4 * ticks as usize, "{calls:#?}");
    assert_eq!(r.count("nvmlDeviceGetFieldValues", Some(3)), ticks as usize);
    assert!(
        calls
            .iter()
            .filter(|c| c.starts_with("nvmlDeviceGetFieldValues"))
            .all(|c| c.contains("fields=82,185,186 ")),
        "one batched call for HBM temperature and both power readings"
    );

    r.clear_calls();
    b.read_slow(Duration::ZERO);
    for slow in [
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetViolationStatus",
        "nvmlDeviceGetTotalEccErrors",
    ] {
        assert!(r.count(slow, None) >= 4, "the slow path reads {slow}");
    }
    assert_eq!(
        r.count("nvmlDeviceGetPcieThroughput", None),
        0,
        "PCIe throughput (~20 ms) is read nowhere"
    );
}

#[test]
fn not_supported_is_asked_once_per_gpu() {
    let r = Replay::new("unsupported", "h100", 3);
    r.set_faults(
        "unsupported * nvmlDeviceGetPerformanceState\n\
         unsupported 1 nvmlDeviceGetTotalEnergyConsumption\n",
    );
    let b = open_replay(&r);
    for k in 0..5 {
        let fast = b.read_fast(Duration::from_secs(k));
        assert!(fast.iter().all(|s| s.pstate.is_none() && s.core.is_some()));
        let slow = b.read_slow(Duration::from_secs(k));
        assert!(slow[1].energy.is_none());
        assert!(slow[0].energy.is_some() && slow[2].energy.is_some());
    }
    for gpu in 0..3 {
        assert_eq!(
            r.count("nvmlDeviceGetPerformanceState", Some(gpu)),
            1,
            "GPU {gpu}: asked once, then remembered as unsupported"
        );
        assert_eq!(r.count("nvmlDeviceGetTemperature", Some(gpu)), 5);
    }
    assert_eq!(r.count("nvmlDeviceGetTotalEnergyConsumption", Some(1)), 1);
    assert_eq!(r.count("nvmlDeviceGetTotalEnergyConsumption", Some(0)), 5);

    // A timeout is not "unsupported": the value is missing this time and asked again next time.
    r.set_faults("timeout 2 nvmlDeviceGetTemperature\n");
    assert!(b.read_fast(Duration::ZERO)[2].core.is_none());
    r.set_faults("");
    assert!(b.read_fast(Duration::ZERO)[2].core.is_some());
    assert_eq!(r.count("nvmlDeviceGetTemperature", Some(2)), 7);
}

#[test]
fn a_gpu_falling_off_the_bus_leaves_the_others_running() {
    let r = Replay::new("lost", "h200", 3);
    let b = open_replay(&r);
    for k in 0..3 {
        assert!(b
            .read_fast(Duration::from_secs(k))
            .iter()
            .all(|s| s.core.is_some()));
    }
    r.set_faults("lost 1\n");
    for k in 3..6 {
        let fast = b.read_fast(Duration::from_secs(k));
        assert_eq!(fast.len(), 3, "the lost GPU still has a (empty) sample");
        assert!(fast[0].core.is_some() && fast[2].core.is_some());
        assert_eq!(
            fast[1],
            coolantd::model::GpuSample::empty(fast[1].key.clone(), fast[1].source, fast[1].at)
        );
        let slow = b.read_slow(Duration::from_secs(k));
        assert!(slow[1].energy.is_none() && slow[0].energy.is_some());
    }
    let key = GpuKey {
        host: "replay-host".into(),
        index: 1,
    };
    let e = b
        .set_power_limit(&key, Watts(500.0))
        .expect_err("a lost GPU takes no cap");
    assert!(
        e.to_string().contains("replay-host/1") || e.to_string().contains("1"),
        "{e}"
    );
    assert!(r.setter_calls().is_empty(), "{:?}", r.setter_calls());
    // Only the handle look-up reached the lost GPU: nothing was read from it after the loss.
    let after_loss: Vec<_> = r
        .calls()
        .into_iter()
        .filter(|c| c.contains(" dev=1 ") && c.ends_with("-> 15"))
        .collect();
    assert!(
        after_loss
            .iter()
            .all(|c| c.starts_with("nvmlDeviceGetHandleByIndex_v2")),
        "{after_loss:#?}"
    );
    assert_eq!(
        after_loss.len(),
        3 + 3 + 1,
        "three fast, three slow reads and the setter looked it up"
    );
    // Back on the bus (a reset), it reads again.
    r.set_faults("");
    assert!(b.read_fast(Duration::from_secs(6))[1].core.is_some());
}

#[test]
fn caps_are_written_within_the_constraints_and_read_back() {
    let r = Replay::new("caps", "h200", 2);
    let b = open_replay(&r);
    let key = |index| GpuKey {
        host: "replay-host".into(),
        index,
    };
    b.set_power_limit(&key(1), Watts(450.0))
        .expect("450 W is within 200..=700 W");
    let fast = b.read_fast(Duration::ZERO);
    assert_eq!(
        fast[1].enforced_limit,
        Some(Watts(450.0)),
        "the cap reads back"
    );
    assert_eq!(
        fast[0].enforced_limit,
        Some(Watts(700.0)),
        "the other GPU is untouched"
    );
    assert_eq!(
        r.setter_calls(),
        vec!["nvmlDeviceSetPowerManagementLimit dev=1 limit=450000 -> 0".to_string()],
        "one setter call, in milliwatts"
    );
    for w in [199.0, 700.5, f64::NAN] {
        let e = b
            .set_power_limit(&key(0), Watts(w))
            .expect_err("outside the board's range");
        assert!(matches!(e, GpuError::LimitOutOfRange { .. }), "{e}");
        assert!(
            e.to_string().contains("200") && e.to_string().contains("700"),
            "{e}"
        );
    }
    assert_eq!(
        r.setter_calls().len(),
        1,
        "a refused cap never reaches NVML"
    );
    b.set_power_limit(&key(0), Watts(200.0))
        .expect("the minimum itself is allowed");
    assert_eq!(
        b.read_fast(Duration::ZERO)[0].enforced_limit,
        Some(Watts(200.0))
    );
    let e = b
        .set_power_limit(&key(7), Watts(300.0))
        .expect_err("no such GPU");
    assert!(matches!(e, GpuError::UnknownGpu(_)), "{e}");
}

#[test]
fn probe_prints_the_captured_values() {
    let r = Replay::new("probe", "h200", 2);
    let dir = sim_daemon::TempDir::new("nvml-probe");
    let text = sim_daemon::sim_config_text(
        sim_daemon::free_port(),
        &dir.0,
        &[("backend = \"simulated\"", "backend = \"nvml\"")],
        "",
    );
    let path = dir.0.join("site.toml");
    std::fs::write(&path, &text).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coolantd"))
        .args(["probe", "--json", "--config"])
        .arg(&path)
        // The driver's own name, found the way the real library is found.
        .env("LD_LIBRARY_PATH", &r.dir)
        .output()
        .expect("run coolantd probe");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("probe --json is JSON");
    let gpus = report["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 2, "{report:#}");
    let dev = fixture("h200");
    let g = &gpus[0];
    assert_eq!(g["name"], "NVIDIA H200");
    assert_eq!(g["source"], "nvml", "{g:#}");
    assert_eq!(g["core_temp"]["value"], captured(&dev, "temp_gpu_c"));
    assert_eq!(g["core_temp"]["unit"], "°C");
    assert_eq!(
        g["hbm_temp"]["value"],
        captured(&dev, "field_memory_temp_c")
    );
    assert_eq!(
        g["power_average"]["value"],
        captured(&dev, "field_power_average_mw") / 1000.0
    );
    assert_eq!(
        g["power"]["value"],
        captured(&dev, "field_power_instant_mw") / 1000.0
    );
    assert_eq!(g["power_limit"]["value"], 700.0);
    assert_eq!(
        g["energy"]["value"],
        captured(&dev, "total_energy_mj") / 1000.0
    );
    assert_eq!(g["slowdown_temp"]["value"], 89.0);
    assert!(
        r.count("nvmlInit_v2", None) >= 1,
        "probe loaded the replay library"
    );
    assert!(
        r.setter_calls().is_empty(),
        "probe never writes: {:?}",
        r.setter_calls()
    );
}
