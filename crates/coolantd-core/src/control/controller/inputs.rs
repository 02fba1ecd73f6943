//! Input tracking: the newest GPU and CDU samples, their staleness and plausibility gates,
//! and what the loops may use from them this tick.

use crate::control::config::{ControlConfig, ControlledVariable};
use crate::control::plausibility::{InputTrack, Limits, Verdict};
use crate::control::CduSetup;
use crate::model::{CduSample, GpuSample, GpuStatic, Mono, Role};
use crate::units::{Celsius, Kelvin};
use std::collections::BTreeMap;

/// NVML's `nvmlClocksEventReasonHwThermalSlowdown` bit (nvml.h): the GPU is already slowing
/// itself down for heat, whatever its temperature reading says.
const HW_THERMAL_SLOWDOWN: u64 = 0x40;

/// One GPU's inputs: its static facts (when it is in the inventory), its newest sample and
/// what the gates made of it.
#[derive(Debug, Clone)]
pub(super) struct GpuInput {
    pub st: Option<GpuStatic>,
    pub latest: Option<GpuSample>,
    core: InputTrack,
    hbm: InputTrack,
    hbm_seen: bool,
    /// The core temperature that passed the gates.
    pub core_v: Option<f64>,
    /// This GPU's contribution to the controlled variable (core-equivalent °C).
    pub equiv: Option<f64>,
    /// Why the core temperature is unusable.
    pub lost: Option<String>,
    /// At (or, while clearing, near) its thermal limit.
    pub hot: bool,
}

/// The gates of a GPU's core and HBM temperatures.
fn gpu_limits(cfg: &ControlConfig) -> (Limits, Limits) {
    let q = &cfg.plausibility;
    let core = Limits {
        min: q.gpu_min_c,
        max: q.gpu_max_c,
        max_rate: Some(q.gpu_max_rate_k_per_s),
        stuck: Some((q.stuck_after_s, q.stuck_power_change_w)),
        max_age_s: max_age_s(cfg),
        hold_ticks: q.hold_ticks,
    };
    let hbm = Limits {
        stuck: None,
        ..core
    };
    (core, hbm)
}

/// How old a sample may be, seconds.
pub(super) fn max_age_s(cfg: &ControlConfig) -> f64 {
    cfg.max_sample_age_ms as f64 / 1000.0
}

/// True when `at` is no older than the sample age.
pub(super) fn fresh(cfg: &ControlConfig, now: Mono, at: Mono) -> bool {
    now.saturating_sub(at).as_secs_f64() <= max_age_s(cfg)
}

impl GpuInput {
    pub fn new(st: Option<GpuStatic>) -> GpuInput {
        GpuInput {
            st,
            latest: None,
            core: InputTrack::default(),
            hbm: InputTrack::default(),
            hbm_seen: false,
            core_v: None,
            equiv: None,
            lost: None,
            hot: false,
        }
    }

    /// Keeps `s` if it is newer than the sample held.
    pub fn offer(&mut self, s: &GpuSample) {
        if self.latest.as_ref().is_none_or(|l| l.at < s.at) {
            self.latest = Some(s.clone());
        }
    }

    /// Runs this tick's gates over the newest sample.
    pub fn observe(&mut self, now: Mono, cfg: &ControlConfig) {
        let (core_lim, hbm_lim) = gpu_limits(cfg);
        let s = self.latest.as_ref();
        let core_reading = match s {
            None => Err("no reading received".to_string()),
            Some(s) => s
                .core
                .map(|c| (c.get(), s.at))
                .ok_or_else(|| "no core temperature in the reading".to_string()),
        };
        let power = s
            .and_then(|s| s.power_average.or(s.power_instant))
            .map(|w| w.get());
        let core = self.core.observe(now, core_reading, power, &core_lim);
        self.core_v = core.value();
        self.lost = match &core {
            Verdict::Lost(why) => Some(why.clone()),
            _ => None,
        };
        let hbm_now = s.and_then(|s| s.hbm.map(|h| (h.get(), s.at)));
        self.hbm_seen |= hbm_now.is_some();
        let hbm_v = if self.hbm_seen {
            self.hbm
                .observe(
                    now,
                    hbm_now.ok_or_else(|| "no HBM temperature in the reading".to_string()),
                    None,
                    &hbm_lim,
                )
                .value()
        } else {
            None
        };
        let hbm_equiv = match (&self.st, hbm_v) {
            // The core temperature with the same margin to the slowdown threshold as the HBM
            // has to its maximum.
            (Some(st), Some(h)) => Some((st.slowdown - Celsius(h).margin_to(st.hbm_max)).get()),
            _ => None,
        };
        self.equiv = match cfg.controlled_variable {
            ControlledVariable::Core => self.core_v,
            ControlledVariable::HbmMargin => hbm_equiv.or(self.core_v),
            ControlledVariable::Max => match (self.core_v, hbm_equiv) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        };
        self.hot = self.thermal_limit(now, cfg, hbm_v);
    }

    /// At the thermal limit: NVML reports a hardware slowdown, or the core or HBM is within
    /// the emergency margin of its threshold (with hysteresis while hot).
    fn thermal_limit(&self, now: Mono, cfg: &ControlConfig, hbm_v: Option<f64>) -> bool {
        let sup = &cfg.supervisor;
        let s = self.latest.as_ref();
        let hw = s
            .and_then(|s| s.throttle_reasons)
            .is_some_and(|r| r & HW_THERMAL_SLOWDOWN != 0)
            && s.is_some_and(|s| fresh(cfg, now, s.at));
        let margin = Kelvin(sup.emergency_margin_k);
        let (core_thr, hbm_thr) = match &self.st {
            Some(st) => ((st.slowdown - margin).get(), (st.hbm_max - margin).get()),
            None => (f64::INFINITY, f64::INFINITY),
        };
        let clear = if self.hot { sup.emergency_clear_k } else { 0.0 };
        let over = |v: Option<f64>, thr: f64| v.is_some_and(|v| v >= thr - clear);
        hw || over(self.core_v, core_thr) || over(hbm_v, hbm_thr)
    }
}

/// The gate of one CDU role.
fn role_limits(cfg: &ControlConfig, role: Role) -> Limits {
    let q = &cfg.plausibility;
    let base = Limits {
        min: f64::NEG_INFINITY,
        max: f64::INFINITY,
        max_rate: None,
        stuck: None,
        max_age_s: max_age_s(cfg),
        hold_ticks: q.hold_ticks,
    };
    let stuck = Some((q.stuck_after_s, q.stuck_pump_change));
    match role {
        Role::SupplyTemperature | Role::ReturnTemperature | Role::FacilityWaterTemperature => {
            Limits {
                min: q.coolant_min_c,
                max: q.coolant_max_c,
                max_rate: Some(q.coolant_max_rate_k_per_s),
                ..base
            }
        }
        Role::Flow | Role::DifferentialPressure => Limits {
            min: 0.0,
            stuck,
            ..base
        },
        // A few % over full scale is rounding in the CDU's feedback scaling.
        Role::PumpSpeedFeedback => Limits {
            min: 0.0,
            max: 105.0,
            stuck,
            ..base
        },
        Role::ValvePosition => Limits {
            min: 0.0,
            max: 105.0,
            ..base
        },
        Role::RoomHumidity => Limits {
            min: 0.0,
            max: 100.0,
            ..base
        },
        // Indoor air near a CDU; outside this range the sensor is broken, not the room.
        Role::RoomTemperature => Limits {
            min: -20.0,
            max: 60.0,
            ..base
        },
        Role::Leak | Role::RemoteEnable => Limits {
            min: 0.0,
            max: 1.0,
            ..base
        },
        Role::PumpSpeedCommand | Role::Watchdog => base,
    }
}

/// One CDU's inputs: its newest poll and the gate of each role it maps.
#[derive(Debug, Clone, Default)]
pub(super) struct CduInputs {
    latest: Option<CduSample>,
    tracks: BTreeMap<Role, InputTrack>,
}

/// What one CDU's inputs say this tick.
#[derive(Debug, Clone, Default)]
pub(super) struct CduReadings {
    /// Why the CDU counts as unreachable.
    pub unreachable: Option<String>,
    pub lost_required: Vec<(Role, String)>,
    pub lost_optional: Vec<(Role, String)>,
    /// The profile maps the remote-enable flag, but its value is unknown.
    pub mode_unknown: bool,
    /// The CDU runs itself: coolantd must not write to it.
    pub local: bool,
    pub leak: bool,
    pub feedback: Option<f64>,
    pub supply: Option<f64>,
    pub flow: Option<f64>,
    pub room_temperature: Option<f64>,
    pub room_humidity: Option<f64>,
}

impl CduInputs {
    /// The value of `role` that passed its gate this tick.
    pub fn value(&self, role: Role) -> Option<f64> {
        self.tracks
            .get(&role)
            .and_then(|t| t.verdict())
            .and_then(Verdict::value)
    }

    /// Takes this CDU's newest sample from `samples`, runs the gates and condenses them.
    /// `pump_command` is the pump loop's last command, which flow, differential pressure and
    /// the speed feedback must follow (their stuck check).
    pub fn ingest(
        &mut self,
        now: Mono,
        cfg: &ControlConfig,
        setup: &CduSetup,
        samples: &[CduSample],
        pump_command: f64,
    ) -> CduReadings {
        if let Some(s) = samples
            .iter()
            .filter(|s| s.cdu == setup.name)
            .max_by_key(|s| s.at)
        {
            if self.latest.as_ref().is_none_or(|l| l.at < s.at) {
                self.latest = Some(s.clone());
            }
        }
        let mut r = CduReadings {
            unreachable: self.unreachable(now, cfg),
            ..CduReadings::default()
        };
        let mut roles: Vec<Role> = setup.roles.clone();
        roles.sort();
        roles.dedup();
        for role in roles {
            if matches!(role, Role::PumpSpeedCommand | Role::Watchdog) {
                continue;
            }
            let related = matches!(
                role,
                Role::Flow | Role::DifferentialPressure | Role::PumpSpeedFeedback
            )
            .then_some(pump_command);
            let reading = self.reading(role);
            let v = self.tracks.entry(role).or_default().observe(
                now,
                reading,
                related,
                &role_limits(cfg, role),
            );
            if let Verdict::Lost(why) = v {
                if cfg.plausibility.required.contains(&role) {
                    r.lost_required.push((role, why));
                } else {
                    r.lost_optional.push((role, why));
                }
            }
        }
        // A CDU whose profile maps the remote-enable flag but whose flag is unknown (register
        // faulted or missing for longer than the hold) is treated as local: it may be in local
        // mode, and writing to it would fight the operator at its panel, while the CDU keeps
        // its own control either way. Without the flag mapped, the CDU is always remote.
        let remote_enable = self.value(Role::RemoteEnable);
        r.mode_unknown = setup.roles.contains(&Role::RemoteEnable) && remote_enable.is_none();
        r.local = r.mode_unknown || remote_enable.is_some_and(|v| v < 0.5);
        r.leak = self.value(Role::Leak).is_some_and(|v| v >= 0.5);
        r.feedback = self.value(Role::PumpSpeedFeedback);
        r.supply = self.value(Role::SupplyTemperature);
        r.flow = self.value(Role::Flow);
        r.room_temperature = self.value(Role::RoomTemperature);
        r.room_humidity = self.value(Role::RoomHumidity);
        r
    }

    /// Why the CDU counts as unreachable: no poll, a stale one, or one without any register.
    fn unreachable(&self, now: Mono, cfg: &ControlConfig) -> Option<String> {
        match &self.latest {
            None => Some("no poll received".to_string()),
            Some(s) if !fresh(cfg, now, s.at) => Some(format!(
                "newest poll is {:.1} s old",
                now.saturating_sub(s.at).as_secs_f64()
            )),
            Some(s) if !s.registers.iter().any(|r| r.value.is_ok()) => {
                Some(match s.registers.first() {
                    Some(r) => match &r.value {
                        Err(e) => format!("every register failed, e.g. {}: {e}", r.name),
                        Ok(_) => "every register failed".to_string(),
                    },
                    None => "the poll returned no registers".to_string(),
                })
            }
            _ => None,
        }
    }

    /// The newest poll's value of `role` with its time, or why there is none.
    fn reading(&self, role: Role) -> Result<(f64, Mono), String> {
        match &self.latest {
            None => Err("no poll received".to_string()),
            Some(s) => match s.worst(role) {
                Some(v) => Ok((v, s.at)),
                None => Err(s
                    .registers
                    .iter()
                    .find(|r| r.role == Some(role))
                    .and_then(|r| r.value.as_ref().err().map(|e| format!("{}: {e}", r.name)))
                    .unwrap_or_else(|| "not in the poll".to_string())),
            },
        }
    }
}
