//! Explicit conversions between the wire messages and the internal model, so either can
//! change without the other: the wire carries plain °C/W/mJ numbers, the model unit types.

use super::msg::{GpuFacts, GpuReading};
use crate::model::{GpuKey, GpuSample, GpuStatic, Mono, Source};
use crate::units::{Celsius, Joules, Watts};

/// f64 → f32 for the wire. Temperatures and power need no more than f32's ~7 digits.
fn narrow(v: f64) -> f32 {
    v as f32
}

impl GpuReading {
    /// The wire reading of a local sample (and the slow path's energy, when known).
    pub fn from_sample(s: &GpuSample, energy: Option<Joules>) -> GpuReading {
        GpuReading {
            index: s.key.index,
            core_c: s.core.map(|c| narrow(c.get())),
            hbm_c: s.hbm.map(|c| narrow(c.get())),
            power_w: s.power_instant.map(|w| narrow(w.get())),
            limit_w: s.enforced_limit.map(|w| narrow(w.get())),
            throttle: s.throttle_reasons,
            energy_mj: energy
                .filter(|j| j.is_finite() && j.get() >= 0.0)
                .map(|j| (j.get() * 1000.0).round() as u64),
        }
    }

    /// The model sample of a remote reading, stamped with the receiver's `arrival` time
    /// (never the sender's clock). Values the wire does not carry stay unknown.
    pub fn to_sample(&self, host: &str, arrival: Mono) -> GpuSample {
        let key = GpuKey {
            host: host.to_string(),
            index: self.index,
        };
        let mut s = GpuSample::empty(key, Source::Remote, arrival);
        s.core = self.core_c.map(|c| Celsius(f64::from(c)));
        s.hbm = self.hbm_c.map(|c| Celsius(f64::from(c)));
        s.power_instant = self.power_w.map(|w| Watts(f64::from(w)));
        s.enforced_limit = self.limit_w.map(|w| Watts(f64::from(w)));
        s.throttle_reasons = self.throttle;
        s
    }

    /// The energy counter, in the model's unit.
    pub fn energy(&self) -> Option<Joules> {
        self.energy_mj.map(|mj| Joules(mj as f64 / 1000.0))
    }
}

impl GpuFacts {
    /// The wire facts of a local GPU, with the limit it had before any cap.
    pub fn from_static(st: &GpuStatic, original_limit: Watts) -> GpuFacts {
        GpuFacts {
            index: st.key.index,
            uuid: st.uuid.clone(),
            board: st.name.clone(),
            profile: st.profile.clone(),
            slowdown_c: narrow(st.slowdown.get()),
            shutdown_c: narrow(st.shutdown.get()),
            gpu_max_c: narrow(st.gpu_max.get()),
            hbm_max_c: narrow(st.hbm_max.get()),
            power_min_w: narrow(st.power_min.get()),
            power_max_w: narrow(st.power_max.get()),
            power_default_w: narrow(st.power_default.get()),
            original_limit_w: narrow(original_limit.get()),
        }
    }

    /// The model's static facts of a remote GPU.
    pub fn to_static(&self, host: &str) -> GpuStatic {
        GpuStatic {
            key: GpuKey {
                host: host.to_string(),
                index: self.index,
            },
            uuid: self.uuid.clone(),
            name: self.board.clone(),
            profile: self.profile.clone(),
            slowdown: Celsius(f64::from(self.slowdown_c)),
            gpu_max: Celsius(f64::from(self.gpu_max_c)),
            hbm_max: Celsius(f64::from(self.hbm_max_c)),
            shutdown: Celsius(f64::from(self.shutdown_c)),
            power_min: Watts(f64::from(self.power_min_w)),
            power_max: Watts(f64::from(self.power_max_w)),
            power_default: Watts(f64::from(self.power_default_w)),
        }
    }

    /// The limit to restore, in the model's unit.
    pub fn original_limit(&self) -> Watts {
        Watts(f64::from(self.original_limit_w))
    }
}
