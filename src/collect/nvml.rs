//! The NVML GPU backend (nvml-wrapper).
//!
//! `libnvidia-ml.so.1` is loaded at run time, so the daemon builds and starts everywhere and
//! reports a missing driver as an error, not a crash. Costs measured on an H200
//! (tests/fixtures/h200/timing.json): most reads take 0.3–0.7 µs, the energy counter ~3 ms
//! (p99 ~15 ms), violation counters ~0.6 ms, PCIe throughput ~20 ms. The fast path therefore
//! reads only sub-microsecond values plus one batched field-values call; energy, violation
//! time and ECC live on the slow path, and PCIe throughput is not read at all.

use super::{BoardFacts, GpuBackend, GpuError};
use crate::model::{GpuKey, GpuSample, GpuSlowSample, GpuStatic, Mono, Source};
use crate::units::{Celsius, Joules, Megahertz, Percent, Watts};
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PerformancePolicy, PerformanceState, TemperatureSensor,
    TemperatureThreshold,
};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::{Device, Nvml};
use std::collections::BTreeSet;
use std::sync::Mutex;

/// NVML field ids (nvml.h): `NVML_FI_DEV_MEMORY_TEMP` (HBM temperature, °C),
/// `NVML_FI_DEV_POWER_AVERAGE` (1 s average, mW), `NVML_FI_DEV_POWER_INSTANT` (mW).
const FI_MEMORY_TEMP: u32 = 82;
const FI_POWER_AVERAGE: u32 = 185;
const FI_POWER_INSTANT: u32 = 186;

/// One metric that a GPU may not support. Once NVML answers `NotSupported`, the metric is
/// recorded here, logged once, and never asked again for that GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    CoreTemp,
    Fields,
    EnforcedLimit,
    SmClock,
    MemClock,
    Utilization,
    Throttle,
    PState,
    Energy,
    ViolationPower,
    ViolationThermal,
    Ecc,
}

struct Gpu {
    index: u32,
    facts: GpuStatic,
    unsupported: Mutex<BTreeSet<Metric>>,
}

/// The real GPUs of this host.
pub struct NvmlBackend {
    nvml: Nvml,
    gpus: Vec<Gpu>,
}

/// Opens NVML. The error says clearly that the driver is missing, for the caller to log
/// before it refuses to start or falls back to the simulator.
pub fn init() -> Result<Nvml, GpuError> {
    Nvml::init().map_err(|e| GpuError::NvmlUnavailable(e.to_string()))
}

impl NvmlBackend {
    /// Enumerates the GPUs (all, or only `indices`), reading identity, thresholds and power
    /// constraints once. Thresholds NVML does not report come from the board's profile
    /// (`facts_for` maps NVML's board name to the profile's facts).
    pub fn open(
        nvml: Nvml,
        host: &str,
        indices: &[u32],
        facts_for: &dyn Fn(&str) -> Option<BoardFacts>,
    ) -> Result<NvmlBackend, GpuError> {
        let count = nvml
            .device_count()
            .map_err(|e| GpuError::NvmlUnavailable(e.to_string()))?;
        let wanted: Vec<u32> = if indices.is_empty() {
            (0..count).collect()
        } else {
            indices.to_vec()
        };
        let mut gpus = Vec::new();
        for index in wanted {
            let key = GpuKey {
                host: host.to_string(),
                index,
            };
            let dev = nvml
                .device_by_index(index)
                .map_err(|e| call_err(&key, "device_by_index", e))?;
            let name = dev.name().unwrap_or_else(|_| "unknown GPU".into());
            let uuid = dev.uuid().unwrap_or_default();
            let facts = facts_for(&name);
            let threshold = |t: TemperatureThreshold, fallback: Option<Celsius>| {
                dev.temperature_threshold(t)
                    .ok()
                    .map(|v| Celsius(f64::from(v)))
                    .or(fallback)
            };
            let Some(f) = facts.clone().or_else(|| {
                // Without a profile, NVML's own thresholds and limits still describe the board.
                Some(BoardFacts {
                    profile: "nvml".into(),
                    slowdown: threshold(TemperatureThreshold::Slowdown, None)?,
                    gpu_max: threshold(TemperatureThreshold::GpuMax, None)?,
                    hbm_max: threshold(TemperatureThreshold::MemoryMax, None)?,
                    shutdown: threshold(TemperatureThreshold::Shutdown, None)?,
                    power_min: Watts::from_milliwatts(
                        dev.power_management_limit_constraints().ok()?.min_limit,
                    ),
                    power_max: Watts::from_milliwatts(
                        dev.power_management_limit_constraints().ok()?.max_limit,
                    ),
                    power_default: Watts::from_milliwatts(
                        dev.power_management_limit_default().ok()?,
                    ),
                })
            }) else {
                return Err(GpuError::Call {
                    gpu: key,
                    call: "thresholds",
                    message: format!(
                        "no GPU profile matches `{name}` and NVML does not report its thresholds; \
                         add a profile under firmware-profiles/gpu/ or set gpus.default_profile"
                    ),
                });
            };
            let constraints = dev.power_management_limit_constraints().ok();
            let st = GpuStatic {
                key: key.clone(),
                uuid,
                name,
                profile: f.profile.clone(),
                slowdown: threshold(TemperatureThreshold::Slowdown, Some(f.slowdown))
                    .unwrap_or(f.slowdown),
                gpu_max: threshold(TemperatureThreshold::GpuMax, Some(f.gpu_max))
                    .unwrap_or(f.gpu_max),
                hbm_max: threshold(TemperatureThreshold::MemoryMax, Some(f.hbm_max))
                    .unwrap_or(f.hbm_max),
                shutdown: threshold(TemperatureThreshold::Shutdown, Some(f.shutdown))
                    .unwrap_or(f.shutdown),
                // The board's own constraints win; the profile bounds them further where it is
                // stricter, so a profile can keep the daemon away from extreme caps.
                power_min: constraints.as_ref().map_or(f.power_min, |c| {
                    Watts::from_milliwatts(c.min_limit).max(f.power_min)
                }),
                power_max: constraints.as_ref().map_or(f.power_max, |c| {
                    Watts::from_milliwatts(c.max_limit).min(f.power_max)
                }),
                power_default: dev
                    .power_management_limit_default()
                    .map(Watts::from_milliwatts)
                    .unwrap_or(f.power_default),
            };
            tracing::info!(gpu = %key, name = %st.name, uuid = %st.uuid, profile = %st.profile,
                slowdown = st.slowdown.0, hbm_max = st.hbm_max.0, power_min = st.power_min.0,
                power_max = st.power_max.0, "found GPU");
            gpus.push(Gpu {
                index,
                facts: st,
                unsupported: Mutex::new(BTreeSet::new()),
            });
        }
        Ok(NvmlBackend { nvml, gpus })
    }

    fn gpu(&self, key: &GpuKey) -> Option<&Gpu> {
        self.gpus.iter().find(|g| &g.facts.key == key)
    }
}

fn call_err(key: &GpuKey, call: &'static str, e: NvmlError) -> GpuError {
    match e {
        NvmlError::NotSupported => GpuError::NotSupported {
            gpu: key.clone(),
            call,
        },
        e => GpuError::Call {
            gpu: key.clone(),
            call,
            message: e.to_string(),
        },
    }
}

impl Gpu {
    /// Reads one metric unless it is known to be unsupported; a `NotSupported` answer is
    /// remembered and logged once, other errors are logged at debug and yield `None`.
    fn read<T>(&self, metric: Metric, f: impl FnOnce() -> Result<T, NvmlError>) -> Option<T> {
        if self
            .unsupported
            .lock()
            .map(|s| s.contains(&metric))
            .unwrap_or(false)
        {
            return None;
        }
        match f() {
            Ok(v) => Some(v),
            Err(NvmlError::NotSupported) => {
                tracing::info!(gpu = %self.facts.key, metric = ?metric, "not supported by this GPU; skipping it from now on");
                if let Ok(mut s) = self.unsupported.lock() {
                    s.insert(metric);
                }
                None
            }
            Err(e) => {
                tracing::debug!(gpu = %self.facts.key, metric = ?metric, error = %e, "NVML read failed");
                None
            }
        }
    }
}

fn pstate_number(p: PerformanceState) -> Option<u8> {
    use PerformanceState::*;
    Some(match p {
        Zero => 0,
        One => 1,
        Two => 2,
        Three => 3,
        Four => 4,
        Five => 5,
        Six => 6,
        Seven => 7,
        Eight => 8,
        Nine => 9,
        Ten => 10,
        Eleven => 11,
        Twelve => 12,
        Thirteen => 13,
        Fourteen => 14,
        Fifteen => 15,
        Unknown => return None,
    })
}

fn field_f64(samples: &[Result<FieldValueSample, NvmlError>], id: u32) -> Option<f64> {
    samples
        .iter()
        .flatten()
        .find(|s| s.field.0 == id)
        .and_then(|s| match s.value {
            Ok(SampleValue::F64(v)) => Some(v),
            Ok(SampleValue::U32(v)) => Some(f64::from(v)),
            Ok(SampleValue::U64(v)) => Some(v as f64),
            Ok(SampleValue::I64(v)) => Some(v as f64),
            Err(_) => None,
        })
}

fn read_fast_one(g: &Gpu, dev: &Device<'_>, now: Mono) -> GpuSample {
    let mut s = GpuSample::empty(g.facts.key.clone(), Source::Nvml, now);
    s.core = g
        .read(Metric::CoreTemp, || dev.temperature(TemperatureSensor::Gpu))
        .map(|v| Celsius(f64::from(v)));
    // One batched call for HBM temperature and both power readings (~0.7 µs on an H200).
    let ids = [
        FieldId(FI_MEMORY_TEMP),
        FieldId(FI_POWER_AVERAGE),
        FieldId(FI_POWER_INSTANT),
    ];
    if let Some(fields) = g.read(Metric::Fields, || dev.field_values_for(&ids)) {
        s.hbm = field_f64(&fields, FI_MEMORY_TEMP).map(Celsius);
        s.power_average = field_f64(&fields, FI_POWER_AVERAGE).map(|mw| Watts(mw / 1000.0));
        s.power_instant = field_f64(&fields, FI_POWER_INSTANT).map(|mw| Watts(mw / 1000.0));
    }
    s.enforced_limit = g
        .read(Metric::EnforcedLimit, || dev.enforced_power_limit())
        .map(Watts::from_milliwatts);
    s.sm_clock = g
        .read(Metric::SmClock, || dev.clock_info(Clock::SM))
        .map(|v| Megahertz(f64::from(v)));
    s.mem_clock = g
        .read(Metric::MemClock, || dev.clock_info(Clock::Memory))
        .map(|v| Megahertz(f64::from(v)));
    s.utilization = g
        .read(Metric::Utilization, || dev.utilization_rates())
        .map(|u| Percent(f64::from(u.gpu)));
    s.throttle_reasons = g
        .read(Metric::Throttle, || dev.current_throttle_reasons())
        .map(|r| r.bits());
    s.pstate = g
        .read(Metric::PState, || dev.performance_state())
        .and_then(pstate_number);
    s
}

impl GpuBackend for NvmlBackend {
    fn inventory(&self) -> Vec<GpuStatic> {
        self.gpus.iter().map(|g| g.facts.clone()).collect()
    }

    fn read_fast(&self, now: Mono) -> Vec<GpuSample> {
        self.gpus
            .iter()
            .map(|g| match self.nvml.device_by_index(g.index) {
                Ok(dev) => read_fast_one(g, &dev, now),
                Err(e) => {
                    // A GPU that fell off the bus must not stop the others: its sample is empty
                    // and the control core treats it as a lost input.
                    tracing::warn!(gpu = %g.facts.key, error = %e, "GPU not reachable through NVML");
                    GpuSample::empty(g.facts.key.clone(), Source::Nvml, now)
                }
            })
            .collect()
    }

    fn read_slow(&self, now: Mono) -> Vec<GpuSlowSample> {
        self.gpus
            .iter()
            .map(|g| {
                let mut s = GpuSlowSample {
                    key: g.facts.key.clone(),
                    at: now,
                    energy: None,
                    violation_power_ns: None,
                    violation_thermal_ns: None,
                    ecc_corrected: None,
                };
                if let Ok(dev) = self.nvml.device_by_index(g.index) {
                    s.energy = g
                        .read(Metric::Energy, || dev.total_energy_consumption())
                        .map(|mj| Joules(mj as f64 / 1000.0));
                    s.violation_power_ns = g
                        .read(Metric::ViolationPower, || {
                            dev.violation_status(PerformancePolicy::Power)
                        })
                        .map(|v| v.violation_time);
                    s.violation_thermal_ns = g
                        .read(Metric::ViolationThermal, || {
                            dev.violation_status(PerformancePolicy::Thermal)
                        })
                        .map(|v| v.violation_time);
                    s.ecc_corrected = g.read(Metric::Ecc, || {
                        dev.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                    });
                }
                s
            })
            .collect()
    }

    fn set_power_limit(&self, key: &GpuKey, limit: Watts) -> Result<(), GpuError> {
        let g = self
            .gpu(key)
            .ok_or_else(|| GpuError::UnknownGpu(key.clone()))?;
        if !(limit >= g.facts.power_min && limit <= g.facts.power_max) {
            return Err(GpuError::LimitOutOfRange {
                gpu: key.clone(),
                requested: limit,
                min: g.facts.power_min,
                max: g.facts.power_max,
            });
        }
        let mut dev = self
            .nvml
            .device_by_index(g.index)
            .map_err(|e| call_err(key, "device_by_index", e))?;
        dev.set_power_management_limit(limit.to_milliwatts())
            .map_err(|e| call_err(key, "set_power_management_limit", e))
    }
}
