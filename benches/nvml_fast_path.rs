//! The cost of coolantd's per-GPU fast sample against the raw nvml-wrapper calls it is made of,
//! in the same process on the same GPUs. Read-only: nothing here calls a setter.
//!
//! `cargo bench --bench nvml_fast_path` uses the driver's `libnvidia-ml.so.1`; with
//! `COOLANTD_BENCH_NVML_LIB=/path/to/libnvml_replay.so` it runs against the replay library
//! (crates/nvml-replay), where the figures measure coolantd's own overhead, not the driver.
//! scripts/device-check.sh runs it on a GPU host.

use coolantd::collect::nvml::NvmlBackend;
use coolantd::collect::GpuBackend;
use coolantd::profile::gpu::GpuProfiles;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::Nvml;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

fn init(lib: &Option<OsString>) -> Nvml {
    let r = match lib {
        Some(path) => Nvml::builder().lib_path(path).init(),
        None => Nvml::init(),
    };
    r.unwrap_or_else(|e| {
        eprintln!("nvml_fast_path: NVML is not available ({e}); set COOLANTD_BENCH_NVML_LIB to the replay library to run without a GPU");
        std::process::exit(2);
    })
}

/// The same reads `read_fast` makes for one GPU, straight through nvml-wrapper.
fn raw_sample(nvml: &Nvml, index: u32) -> usize {
    let Ok(dev) = nvml.device_by_index(index) else {
        return 0;
    };
    let ids = [FieldId(82), FieldId(185), FieldId(186)];
    let mut ok = 0;
    ok += usize::from(dev.temperature(TemperatureSensor::Gpu).is_ok());
    ok += usize::from(dev.field_values_for(&ids).is_ok());
    ok += usize::from(dev.enforced_power_limit().is_ok());
    ok += usize::from(dev.clock_info(Clock::SM).is_ok());
    ok += usize::from(dev.clock_info(Clock::Memory).is_ok());
    ok += usize::from(dev.utilization_rates().is_ok());
    ok += usize::from(dev.current_throttle_reasons().is_ok());
    ok += usize::from(dev.performance_state().is_ok());
    ok
}

/// The median of `rounds` timings of `iters` calls of `f`, per call.
fn median_per_call(rounds: usize, iters: u32, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..iters {
                f();
            }
            t0.elapsed() / iters
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

fn main() {
    let lib = std::env::var_os("COOLANTD_BENCH_NVML_LIB");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let profiles = GpuProfiles::load_dir(&root.join("firmware-profiles/gpu"))
        .expect("firmware-profiles/gpu loads");
    let facts = |board: &str| profiles.for_board(board).map(|p| p.board_facts());
    let backend = NvmlBackend::open(init(&lib), "bench", &[], &facts)
        .expect("the GPUs enumerate through NVML");
    let gpus = backend.inventory();
    let n = u32::try_from(gpus.len()).expect("a handful of GPUs");
    assert!(n > 0, "NVML found no GPU");
    let raw = init(&lib);
    let iters = std::env::var("COOLANTD_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);

    // Warm up both paths (and the NotSupported cache) before timing.
    for _ in 0..10 {
        backend.read_fast(Duration::ZERO);
        for i in 0..n {
            raw_sample(&raw, i);
        }
    }
    let coolantd = median_per_call(7, iters, || {
        std::hint::black_box(backend.read_fast(Duration::ZERO));
    }) / n;
    let direct = median_per_call(7, iters, || {
        for i in 0..n {
            std::hint::black_box(raw_sample(&raw, i));
        }
    }) / n;
    let source = lib
        .as_ref()
        .map_or("the driver's libnvidia-ml.so.1".to_string(), |l| {
            l.to_string_lossy().into_owned()
        });
    println!(
        "nvml_fast_path: {n} GPU(s) ({}), NVML from {source}",
        gpus[0].name
    );
    println!(
        "nvml_fast_path: coolantd read_fast  {:>9.2} µs per GPU",
        coolantd.as_secs_f64() * 1e6
    );
    println!(
        "nvml_fast_path: raw nvml-wrapper    {:>9.2} µs per GPU (handle + 8 reads)",
        direct.as_secs_f64() * 1e6
    );
    println!(
        "nvml_fast_path: coolantd overhead   {:>9.2} µs per GPU",
        (coolantd.as_secs_f64() - direct.as_secs_f64()) * 1e6
    );
}
