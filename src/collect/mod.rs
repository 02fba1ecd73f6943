//! Collectors: the IO adapters that read GPUs (NVML or the simulator) and CDUs (Modbus) and
//! turn what they read into [`crate::model`] samples.

pub mod config;
pub mod modbus;
pub mod nvml;

use crate::model::{GpuKey, GpuSample, GpuSlowSample, GpuStatic, Mono};
/// Board facts come from the GPU profile (the lower layer); re-exported where NVML uses them.
pub use crate::profile::gpu::BoardFacts;
use crate::units::Watts;

/// Errors at the GPU boundary, worded for the person who has to fix them.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("NVML is not available on this host ({0}); is the NVIDIA driver installed?")]
    NvmlUnavailable(String),
    #[error("{gpu}: {call} failed: {message}")]
    Call {
        gpu: GpuKey,
        call: &'static str,
        message: String,
    },
    #[error("{gpu}: {call} is not supported by this GPU")]
    NotSupported { gpu: GpuKey, call: &'static str },
    #[error("no GPU {0} on this host")]
    UnknownGpu(GpuKey),
    #[error("{gpu}: power limit {requested} outside the board's range {min}..={max}")]
    LimitOutOfRange {
        gpu: GpuKey,
        requested: Watts,
        min: Watts,
        max: Watts,
    },
}

/// A source of GPU readings and the GPU power-limit actuator.
///
/// Implemented by NVML ([`nvml::NvmlBackend`]) and by the plant simulator
/// ([`crate::sim::SimGpus`]). Methods take `&self` so the slow path can run on a blocking
/// thread beside the control tick; implementations keep their caches behind locks.
pub trait GpuBackend: Send + Sync {
    /// What is known about every GPU, read once at start-up.
    fn inventory(&self) -> Vec<GpuStatic>;

    /// Reads every GPU's fast values. One failing GPU yields a sample with unknown values,
    /// never an error for all of them.
    fn read_fast(&self, now: Mono) -> Vec<GpuSample>;

    /// Reads the slow counters (milliseconds per call on real GPUs): never on the control path.
    fn read_slow(&self, now: Mono) -> Vec<GpuSlowSample>;

    /// Sets one GPU's power limit. Dry-run never reaches this method.
    fn set_power_limit(&self, gpu: &GpuKey, limit: Watts) -> Result<(), GpuError>;
}
