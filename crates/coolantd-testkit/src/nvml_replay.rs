//! The replay NVML library (crates/nvml-replay) for tests: each [`Replay`] is a private copy of
//! the built `libnvml_replay.so`, named `libnvidia-ml.so.1` in its own folder with its own
//! configuration, call log and fault file, so tests running in parallel do not share state.

use std::path::{Path, PathBuf};

/// The library cargo built (`target/<profile>/libnvml_replay.so`, beside the test's `deps/`).
pub fn built_library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let lib = profile_dir.join("libnvml_replay.so");
    assert!(
        lib.exists(),
        "the replay NVML library is not built: {} is missing. Build it with \
         `cargo build -p nvml-replay` (scripts/test.sh does this before the tests)",
        lib.display()
    );
    lib
}

/// One private replay library.
pub struct Replay {
    pub dir: PathBuf,
    /// Removes `dir` when the replay is dropped.
    _tmp: tempfile::TempDir,
}

impl Replay {
    /// A replay of `board` (`h200` or `h100`, a folder under tests/fixtures) with `gpus` GPUs.
    pub fn new(tag: &str, board: &str, gpus: usize) -> Replay {
        let tmp = crate::temp_dir(&format!("nvml-{tag}"));
        let dir = tmp.path().to_path_buf();
        std::fs::copy(built_library(), dir.join("libnvidia-ml.so.1"))
            .expect("copy the replay library");
        let fixture = crate::repo_root()
            .join("tests/fixtures")
            .join(board)
            .join("info.json");
        assert!(fixture.exists(), "{} is missing", fixture.display());
        std::fs::write(
            dir.join("nvml-replay.conf"),
            format!(
                "fixture = {}\ngpus = {gpus}\nlog = {}\ncontrol = {}\n",
                fixture.display(),
                dir.join("calls.log").display(),
                dir.join("faults").display()
            ),
        )
        .expect("write the replay configuration");
        Replay { dir, _tmp: tmp }
    }

    /// The library's path, for `Nvml::builder().lib_path(..)`.
    pub fn lib(&self) -> PathBuf {
        self.dir.join("libnvidia-ml.so.1")
    }

    /// Opens NVML through nvml-wrapper's own dynamic loading of this copy.
    pub fn init(&self) -> nvml_wrapper::Nvml {
        let lib = self.lib();
        nvml_wrapper::Nvml::builder()
            .lib_path(lib.as_os_str())
            .init()
            .expect("the replay library initialises")
    }

    /// Replaces the injected faults (`lost 1`, `timeout 0 nvmlDeviceGetTemperature`,
    /// `unsupported * nvmlDeviceGetPerformanceState`, one a line); read on every call.
    pub fn set_faults(&self, faults: &str) {
        std::fs::write(self.dir.join("faults"), faults).expect("write the fault file");
    }

    /// Every call recorded so far, one line each: `<function> dev=<gpu> <args> -> <code>`.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.dir.join("calls.log"));
    }

    /// How many recorded calls went to `function` (on GPU `dev`, when given).
    pub fn count(&self, function: &str, dev: Option<u32>) -> usize {
        self.calls()
            .iter()
            .filter(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(function)
                    && dev.is_none_or(|d| w.next() == Some(format!("dev={d}").as_str()))
            })
            .count()
    }

    /// The recorded calls to any NVML setter (`nvmlDeviceSet*`, `nvmlDeviceClear*`, ...).
    pub fn setter_calls(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|l| {
                let f = l.split_whitespace().next().unwrap_or("");
                f.starts_with("nvmlDeviceSet")
                    || f.starts_with("nvmlDeviceClear")
                    || f.starts_with("nvmlDeviceReset")
            })
            .collect()
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
