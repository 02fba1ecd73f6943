//! The NVML backend against whatever this machine has. On a GPU host it reads the real GPUs
//! (read-only: nothing here calls a setter); everywhere else it must say clearly that NVML is
//! missing, and the daemon must fall back to the simulator only where the configuration
//! allows it.

#[path = "support/sim_daemon.rs"]
mod sim_daemon;

use coolantd::collect::GpuBackend;
use coolantd::config::Config;
use coolantd::profile::gpu::GpuProfiles;
use coolantd::service::run::{Daemon, RunOptions};
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
    };
    let err = Daemon::build(cfg, &opts)
        .await
        .err()
        .expect("no NVML and no fallback: refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("NVML is not available"), "{msg}");
    assert!(
        msg.contains("fallback_to_simulated"),
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
