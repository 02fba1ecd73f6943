//! The NVML GPU backend.
