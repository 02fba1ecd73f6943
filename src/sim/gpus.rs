//! The simulated GPUs as a [`GpuBackend`]: reads and power limits go to the shared plant.

use super::plant::{GpuFault, Plant};
use crate::collect::{GpuBackend, GpuError};
use crate::model::{GpuKey, GpuSample, GpuSlowSample, GpuStatic, Mono, Source};
use crate::units::{Percent, Watts};
use std::sync::{Arc, Mutex, MutexGuard};

/// The plant's GPUs (all of them, or one host's) behind the GPU backend trait.
#[derive(Debug, Clone)]
pub struct SimGpus {
    plant: Arc<Mutex<Plant>>,
    host: Option<String>,
}

impl SimGpus {
    /// The GPUs of `host` (all hosts when `None`) on the shared plant.
    pub fn new(plant: Arc<Mutex<Plant>>, host: Option<&str>) -> SimGpus {
        SimGpus {
            plant,
            host: host.map(str::to_string),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Plant> {
        // A panic elsewhere while holding the lock leaves the plant's numbers intact; keep going.
        self.plant.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mine(&self, key: &GpuKey) -> bool {
        match &self.host {
            Some(h) => h == &key.host,
            None => true,
        }
    }

    /// Fault injection: makes a GPU unresponsive, removes it, or heals it.
    pub fn inject_fault(&self, gpu: &GpuKey, fault: GpuFault) -> bool {
        self.lock().set_gpu_fault(gpu, fault)
    }

    /// The shared plant.
    pub fn plant(&self) -> &Arc<Mutex<Plant>> {
        &self.plant
    }
}

impl GpuBackend for SimGpus {
    fn inventory(&self) -> Vec<GpuStatic> {
        let plant = self.lock();
        let prof = plant.profile();
        plant
            .gpus()
            .iter()
            .filter(|g| self.mine(&g.key) && g.fault != GpuFault::Gone)
            .map(|g| GpuStatic {
                key: g.key.clone(),
                uuid: g.uuid.clone(),
                name: prof.board_name().to_string(),
                profile: prof.name.clone(),
                slowdown: prof.thresholds.slowdown_c,
                gpu_max: prof.thresholds.gpu_max_c,
                hbm_max: prof.thresholds.hbm_max_c,
                shutdown: prof.thresholds.shutdown_c,
                power_min: prof.power.min_w,
                power_max: prof.power.max_w,
                power_default: prof.power.default_w,
            })
            .collect()
    }

    fn read_fast(&self, now: Mono) -> Vec<GpuSample> {
        let plant = self.lock();
        let mem_clock = plant.profile().clocks.mem_mhz;
        plant
            .gpus()
            .iter()
            .filter(|g| self.mine(&g.key) && g.fault != GpuFault::Gone)
            .map(|g| {
                let mut s = GpuSample::empty(g.key.clone(), Source::Simulated, now);
                if g.fault == GpuFault::Unresponsive || g.shut_down {
                    return s;
                }
                s.core = Some(g.thermal.die);
                s.hbm = Some(g.thermal.hbm);
                s.power_instant = Some(g.power);
                s.power_average = Some(g.power_average);
                s.enforced_limit = Some(g.limit);
                s.sm_clock = Some(g.sm_clock);
                s.mem_clock = Some(mem_clock);
                s.utilization = Some(Percent((g.load * 100.0).round()));
                s.throttle_reasons = Some(g.throttle);
                // The captures show P0 at idle and under load alike.
                s.pstate = Some(0);
                s
            })
            .collect()
    }

    fn read_slow(&self, now: Mono) -> Vec<GpuSlowSample> {
        let plant = self.lock();
        plant
            .gpus()
            .iter()
            .filter(|g| self.mine(&g.key) && g.fault != GpuFault::Gone)
            .map(|g| {
                let ok = g.fault == GpuFault::None && !g.shut_down;
                GpuSlowSample {
                    key: g.key.clone(),
                    at: now,
                    energy: ok.then_some(g.energy),
                    violation_power_ns: ok.then_some(g.violation_power_ns),
                    violation_thermal_ns: ok.then_some(g.violation_thermal_ns),
                    ecc_corrected: ok.then_some(0),
                }
            })
            .collect()
    }

    fn set_power_limit(&self, gpu: &GpuKey, limit: Watts) -> Result<(), GpuError> {
        let mut plant = self.lock();
        let (min, max) = (plant.profile().power.min_w, plant.profile().power.max_w);
        let fault = match plant.gpu(gpu) {
            Some(g) if self.mine(gpu) => g.fault,
            _ => return Err(GpuError::UnknownGpu(gpu.clone())),
        };
        match fault {
            GpuFault::Gone => return Err(GpuError::UnknownGpu(gpu.clone())),
            GpuFault::Unresponsive => {
                return Err(GpuError::Call {
                    gpu: gpu.clone(),
                    call: "set_power_management_limit",
                    message: "the GPU is not responding (simulated fault)".into(),
                })
            }
            GpuFault::None => {}
        }
        if !(limit.is_finite() && limit >= min && limit <= max) {
            return Err(GpuError::LimitOutOfRange {
                gpu: gpu.clone(),
                requested: limit,
                min,
                max,
            });
        }
        plant.set_power_limit(gpu, limit);
        Ok(())
    }
}
