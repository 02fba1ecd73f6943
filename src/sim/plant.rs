//! The coolant loop: GPUs on cold plates, one CDU (pump, heat exchanger to facility water,
//! primary valve), stepped deterministically.
//!
//! ```text
//!   facility water ──valve──► HX ◄── return ◄── cold plates (N GPUs, in parallel) ◄── supply
//!                              └──────────────► loop mass (supply) ──► pump ──────────────┘
//! ```
//!
//! - Pump (affinity laws about a rated point): flow ∝ speed, ΔP ∝ speed², shaft power ∝ speed³.
//!   The rated point is the pump at 100 %: `rated_flow_lpm`, `rated_dp_kpa`, and a hydraulic
//!   efficiency, so rated power = flow·ΔP/η. The pump follows its command with a first-order
//!   lag and never runs below its minimum speed unless it has failed.
//! - Each GPU's heat enters the coolant through its cold plate (see [`super::thermal`]); the
//!   cold plates share the flow equally. Return = supply + Q/(ṁ·cp).
//! - The heat exchanger is a counterflow ε-NTU exchanger with a fixed UA; the primary (facility)
//!   flow is `primary_rated_flow_lpm` times the valve position.
//! - The loop's coolant is one lumped mass at the supply temperature; pump work ends up in it.
//! - The valve is either fixed or driven by the CDU's own PI loop on supply temperature.

use super::thermal::{GpuThermal, THERMAL_STEP};
use super::workload::Workload;
use super::CduState;
use crate::model::{GpuKey, Role};
use crate::profile::gpu::GpuProfile;
use crate::units::{Celsius, Joules, Kilopascal, LitresPerMinute, Megahertz, Percent, Watts};
use std::time::Duration;

/// NVML clocks-event reason bits (nvml.h, `nvmlClocksEventReason*`).
pub mod throttle {
    pub const GPU_IDLE: u64 = 0x1;
    pub const SW_POWER_CAP: u64 = 0x4;
    pub const SW_THERMAL_SLOWDOWN: u64 = 0x20;
    pub const HW_THERMAL_SLOWDOWN: u64 = 0x40;
}

/// Water's specific heat near 25 °C, J/(kg·K) (standard property tables), for the primary side.
const WATER_CP: f64 = 4180.0;
/// Water's density near 25 °C, kg/l (standard property tables).
const WATER_DENSITY: f64 = 0.997;
/// The SM clock falls with the power a cap removes as (limit/demand)^0.82; the exponent makes the
/// profiles' `full_load_w` reproduce the clocks the captures showed on the cap (see the profiles).
const CLOCK_EXPONENT: f64 = 0.82;
/// NVML's averaged power lags the instantaneous one by about a second (fixtures/h200/README.md).
const POWER_AVERAGE_TAU_S: f64 = 1.0;
/// Below this load a GPU counts as idle (GPU_IDLE bit, idle clocks).
const IDLE_LOAD: f64 = 0.01;
/// The secondary flow is floored at this share of rated in the heat balance: with the pump
/// stopped, some heat still moves by conduction and natural convection, and the return
/// temperature stays finite.
const MIN_FLOW_SHARE: f64 = 0.02;

/// The loop's physical parameters. Defaults come from [`super::SimConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlantParams {
    /// Total secondary flow with the pump at 100 %.
    pub rated_flow: LitresPerMinute,
    /// Loop differential pressure with the pump at 100 %.
    pub rated_dp: Kilopascal,
    /// Pump (wire-to-water) efficiency at the rated point, 0..1.
    pub pump_efficiency: f64,
    /// The pump's minimum speed while running.
    pub min_speed: Percent,
    /// Time constant with which the pump follows its command, seconds.
    pub pump_time_constant_s: f64,
    /// Coolant specific heat, J/(kg·K).
    pub coolant_cp: f64,
    /// Coolant density, kg/l.
    pub coolant_density: f64,
    /// Coolant volume of the secondary loop, litres.
    pub loop_volume_l: f64,
    /// Heat exchanger conductance UA, W/K.
    pub hx_ua_w_per_k: f64,
    /// Primary (facility) flow with the valve fully open.
    pub primary_rated_flow: LitresPerMinute,
    pub facility_water: Celsius,
    /// The supply temperature the CDU's own valve loop holds (when the valve is not fixed).
    pub supply_setpoint: Celsius,
    /// A fixed valve position instead of the CDU's valve loop.
    pub valve_fixed: Option<Percent>,
    pub room: Celsius,
    pub room_humidity: Percent,
    /// When set: with no new watchdog value for this long, the CDU runs the pump at
    /// `fallback_speed` until the watchdog changes again.
    pub watchdog_timeout: Option<Duration>,
    pub fallback_speed: Percent,
    /// The pump command at start.
    pub initial_speed: Percent,
    /// How the GPUs differ from each other; none by default.
    pub spread: Spread,
}

/// Per-GPU differences between GPUs of one model: real boards are not identical (mounting
/// pressure and thermal paste under the cold plate, silicon leakage), and hosts high in a
/// rack run warmer. Each GPU's factors follow from the seed, its host name and index alone,
/// so a GPU keeps them when hosts are added or removed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Half-width of the uniform spread of each GPU's plate-to-coolant resistance, as a share
    /// (0.03: each plate between 3 % better and 3 % worse than the profile's).
    pub plate: f64,
    /// Half-width of the uniform spread of each GPU's power demand above idle, as a share.
    pub power: f64,
    /// Extra plate resistance of the top host's GPUs, as a share; it falls linearly to none
    /// for the bottom host (hosts are listed bottom to top). Nothing with one host.
    pub hot_spot: f64,
    pub seed: u64,
}

impl Default for Spread {
    fn default() -> Self {
        Spread {
            plate: 0.0,
            power: 0.0,
            hot_spot: 0.0,
            seed: 1,
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a small, well-mixed generator, enough for drawing a
/// few factors per GPU deterministically.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Spread {
    /// The (plate resistance, power demand) factors of GPU `index` on `host`, the host at
    /// `height` in the rack (0 bottom, 1 top). Both are exactly 1 without spread.
    pub fn factors(&self, host: &str, index: u32, height: f64) -> (f64, f64) {
        let mut state = self.seed ^ fnv1a(host, index);
        // Uniform in [-1, 1): the top 53 bits as a fraction.
        let mut draw = || (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        let (u_plate, u_power) = (draw(), draw());
        let plate = (1.0 + self.plate * u_plate) * (1.0 + self.hot_spot * height);
        (plate, 1.0 + self.power * u_power)
    }
}

fn fnv1a(host: &str, index: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes().chain(index.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// How a simulated GPU misbehaves, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuFault {
    #[default]
    None,
    /// Present, but every read returns unknown values and writes fail.
    Unresponsive,
    /// Fallen off the bus: absent from reads, unknown to writes.
    Gone,
}

/// One simulated GPU in the plant.
#[derive(Debug, Clone)]
pub struct PlantGpu {
    pub key: GpuKey,
    pub uuid: String,
    pub thermal: GpuThermal,
    /// The power limit set through NVML.
    pub limit: Watts,
    pub power: Watts,
    pub power_average: Watts,
    pub load: f64,
    pub sm_clock: Megahertz,
    pub throttle: u64,
    pub energy: Joules,
    pub violation_power_ns: u64,
    pub violation_thermal_ns: u64,
    /// Reached the shutdown temperature: draws nothing, reads nothing, until restarted.
    pub shut_down: bool,
    pub fault: GpuFault,
    /// This GPU's plate-to-coolant resistance against the profile's ([`Spread`]).
    pub plate_factor: f64,
    /// This GPU's power demand above idle against the profile's ([`Spread`]).
    pub power_factor: f64,
}

/// The plant: GPUs, loop, CDU.
#[derive(Debug, Clone)]
pub struct Plant {
    params: PlantParams,
    profile: GpuProfile,
    workload: Workload,
    gpus: Vec<PlantGpu>,
    t: Duration,
    pump_command: Percent,
    pump_speed: Percent,
    pump_failed: bool,
    supply: Celsius,
    return_: Celsius,
    valve: Percent,
    valve_integral: f64,
    leak: bool,
    remote_enable: bool,
    watchdog_value: f64,
    watchdog_writes: u64,
    watchdog_changed_at: Duration,
    pump_energy: Joules,
    heat_to_coolant: Watts,
    heat_to_facility: Watts,
}

/// A deterministic UUID in NVML's format, from the host name and index (FNV-1a).
fn synth_uuid(host: &str, index: u32) -> String {
    let h = fnv1a(host, index);
    let g = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xffff,
        g >> 48,
        g & 0xffff_ffff_ffff
    )
}

impl Plant {
    /// A plant with `gpus_per_host` GPUs of `profile` on each host, all idle at steady state,
    /// the supply at its set point and the pump at its initial speed.
    pub fn new(
        params: PlantParams,
        profile: &GpuProfile,
        hosts: &[String],
        gpus_per_host: u32,
        workload: Workload,
    ) -> Plant {
        let supply = params.supply_setpoint;
        let speed = params.initial_speed;
        let mut plant = Plant {
            profile: profile.clone(),
            workload,
            gpus: Vec::new(),
            t: Duration::ZERO,
            pump_command: speed,
            pump_speed: speed.max(params.min_speed),
            pump_failed: false,
            supply,
            return_: supply,
            valve: params.valve_fixed.unwrap_or(Percent(50.0)),
            valve_integral: params.valve_fixed.map_or(50.0, |v| v.0),
            leak: false,
            remote_enable: true,
            watchdog_value: 0.0,
            watchdog_writes: 0,
            watchdog_changed_at: Duration::ZERO,
            pump_energy: Joules(0.0),
            heat_to_coolant: Watts(0.0),
            heat_to_facility: Watts(0.0),
            params,
        };
        let n = hosts.len() * gpus_per_host as usize;
        let r_pc = plant.plate_resistance(n);
        let idle = profile.power.idle_w;
        let spread = plant.params.spread;
        let top = hosts.len().saturating_sub(1).max(1) as f64;
        for (position, host) in hosts.iter().enumerate() {
            for index in 0..gpus_per_host {
                let (plate_factor, power_factor) =
                    spread.factors(host, index, position as f64 / top);
                plant.gpus.push(PlantGpu {
                    key: GpuKey {
                        host: host.clone(),
                        index,
                    },
                    uuid: synth_uuid(host, index),
                    thermal: GpuThermal::steady(
                        &profile.thermal,
                        idle,
                        supply,
                        r_pc * plate_factor,
                    ),
                    limit: profile.power.default_w,
                    power: idle,
                    power_average: idle,
                    load: 0.0,
                    sm_clock: profile.clocks.idle_sm_mhz,
                    throttle: throttle::GPU_IDLE,
                    energy: Joules(0.0),
                    violation_power_ns: 0,
                    violation_thermal_ns: 0,
                    shut_down: false,
                    fault: GpuFault::None,
                    plate_factor,
                    power_factor,
                });
            }
        }
        plant
    }

    fn speed_share(&self) -> f64 {
        self.pump_speed.0 / 100.0
    }

    fn plate_resistance(&self, n_gpus: usize) -> f64 {
        let per_gpu = self.flow().0 / n_gpus.max(1) as f64;
        self.profile
            .thermal
            .plate_to_coolant_at(LitresPerMinute(per_gpu))
    }

    /// Advances the plant by `dt`, in internal steps of at most [`THERMAL_STEP`].
    pub fn step(&mut self, dt: Duration) {
        let h_max = THERMAL_STEP.as_secs_f64();
        let total = dt.as_secs_f64();
        let n = (total / h_max).ceil().max(1.0) as u32;
        let sub = dt / n;
        for _ in 0..n {
            self.substep(sub);
        }
    }

    fn substep(&mut self, dt: Duration) {
        let h = dt.as_secs_f64();
        self.t += dt;
        let t_s = self.t.as_secs_f64();
        let p = &self.params;

        // Pump: the CDU's watchdog fallback overrides the remote command.
        let command = if self.watchdog_expired() {
            p.fallback_speed
        } else {
            self.pump_command
        };
        let target = if self.pump_failed {
            0.0
        } else {
            command.0.clamp(p.min_speed.0, 100.0)
        };
        let k = 1.0 - (-h / p.pump_time_constant_s).exp();
        self.pump_speed = Percent(self.pump_speed.0 + (target - self.pump_speed.0) * k);
        self.pump_energy = Joules(self.pump_energy.0 + self.pump_power().0 * h);

        // GPUs.
        let n = self.gpus.len();
        let r_pc = self.plate_resistance(n);
        let prof = &self.profile;
        let supply = self.supply;
        let mut heat = 0.0;
        let avg_k = 1.0 - (-h / POWER_AVERAGE_TAU_S).exp();
        for (i, g) in self.gpus.iter_mut().enumerate() {
            g.load = self.workload.load(i, t_s);
            if g.thermal.die >= prof.thresholds.shutdown_c {
                g.shut_down = true;
            }
            let demand = prof.power.idle_w.0
                + g.load * g.power_factor * (prof.power.full_load_w.0 - prof.power.idle_w.0);
            let hot = g.thermal.die >= prof.thresholds.slowdown_c;
            // At the slowdown temperature the GPU pulls its own power down to the board minimum.
            let limit = if hot {
                g.limit.min(prof.power.min_w)
            } else {
                g.limit
            };
            let power = if g.shut_down {
                0.0
            } else {
                demand.min(limit.0)
            };
            let capped = !g.shut_down && demand > limit.0;
            g.power = Watts(power);
            g.power_average = Watts(g.power_average.0 + (power - g.power_average.0) * avg_k);
            g.energy = Joules(g.energy.0 + power * h);
            let idle = g.load < IDLE_LOAD;
            g.sm_clock = if g.shut_down || idle {
                prof.clocks.idle_sm_mhz
            } else if capped {
                Megahertz(prof.clocks.max_sm_mhz.0 * (power / demand).powf(CLOCK_EXPONENT))
            } else {
                prof.clocks.max_sm_mhz
            };
            let mut bits = 0;
            if idle {
                bits |= throttle::GPU_IDLE;
            }
            if capped && !hot {
                bits |= throttle::SW_POWER_CAP;
                g.violation_power_ns += dt.as_nanos() as u64;
            }
            if g.thermal.die >= prof.thresholds.gpu_max_c {
                bits |= throttle::SW_THERMAL_SLOWDOWN;
            }
            if hot {
                bits |= throttle::HW_THERMAL_SLOWDOWN;
                g.violation_thermal_ns += dt.as_nanos() as u64;
            }
            g.throttle = bits;
            heat += g
                .thermal
                .step(
                    &prof.thermal,
                    h,
                    Watts(power),
                    supply,
                    r_pc * g.plate_factor,
                )
                .0;
        }
        self.heat_to_coolant = Watts(heat);

        // Loop and heat exchanger.
        let p = &self.params;
        let c_sec = self.secondary_capacity_rate();
        self.return_ = Celsius(self.supply.0 + heat / c_sec);
        let c_pri = p.primary_rated_flow.0 / 60.0 * WATER_DENSITY * WATER_CP * self.valve.0 / 100.0;
        let q_hx = if c_pri <= 0.0 {
            0.0
        } else {
            let (c_min, c_max) = (c_sec.min(c_pri), c_sec.max(c_pri));
            let ntu = p.hx_ua_w_per_k / c_min;
            let cr = c_min / c_max;
            let eps = if (1.0 - cr).abs() < 1e-9 {
                ntu / (1.0 + ntu)
            } else {
                let e = (-ntu * (1.0 - cr)).exp();
                (1.0 - e) / (1.0 - cr * e)
            };
            eps * c_min * (self.return_.0 - p.facility_water.0)
        };
        self.heat_to_facility = Watts(q_hx);
        let mass_cp = p.loop_volume_l * p.coolant_density * p.coolant_cp;
        let pump_heat = self.pump_power().0;
        self.supply = Celsius(self.supply.0 + (heat + pump_heat - q_hx) * h / mass_cp);

        // The CDU's own valve loop: PI on supply temperature, opening as the supply warms.
        // Gains: 20 %/K proportional, 2 %/(K·s) integral (chosen for a well-damped response of
        // the default loop; not taken from any product).
        if p.valve_fixed.is_none() {
            let e = self.supply.0 - p.supply_setpoint.0;
            let unclamped = 20.0 * e + self.valve_integral;
            let saturated = (unclamped >= 100.0 && e > 0.0) || (unclamped <= 0.0 && e < 0.0);
            if !saturated {
                self.valve_integral = (self.valve_integral + 2.0 * e * h).clamp(-100.0, 200.0);
            }
            self.valve = Percent((20.0 * e + self.valve_integral).clamp(0.0, 100.0));
        }
    }

    fn secondary_capacity_rate(&self) -> f64 {
        let p = &self.params;
        let share = self.speed_share().max(MIN_FLOW_SHARE);
        p.rated_flow.0 * share / 60.0 * p.coolant_density * p.coolant_cp
    }

    fn watchdog_expired(&self) -> bool {
        match self.params.watchdog_timeout {
            Some(timeout) => self.t.saturating_sub(self.watchdog_changed_at) > timeout,
            None => false,
        }
    }

    /// Plant time since start.
    pub fn now(&self) -> Duration {
        self.t
    }

    pub fn params(&self) -> &PlantParams {
        &self.params
    }

    pub fn profile(&self) -> &GpuProfile {
        &self.profile
    }

    pub fn gpus(&self) -> &[PlantGpu] {
        &self.gpus
    }

    /// The GPU with this key (present or not).
    pub fn gpu(&self, key: &GpuKey) -> Option<&PlantGpu> {
        self.gpus.iter().find(|g| &g.key == key)
    }

    fn gpu_mut(&mut self, key: &GpuKey) -> Option<&mut PlantGpu> {
        self.gpus.iter_mut().find(|g| &g.key == key)
    }

    /// Sets one GPU's power limit, clamped to nothing: the caller checks the range.
    /// Returns false when there is no such GPU.
    pub fn set_power_limit(&mut self, key: &GpuKey, limit: Watts) -> bool {
        match self.gpu_mut(key) {
            Some(g) => {
                g.limit = limit;
                true
            }
            None => false,
        }
    }

    /// Injects (or clears) a GPU fault. Returns false when there is no such GPU.
    pub fn set_gpu_fault(&mut self, key: &GpuKey, fault: GpuFault) -> bool {
        match self.gpu_mut(key) {
            Some(g) => {
                g.fault = fault;
                true
            }
            None => false,
        }
    }

    pub fn set_workload(&mut self, workload: Workload) {
        self.workload = workload;
    }

    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    pub fn set_leak(&mut self, leak: bool) {
        self.leak = leak;
    }

    /// Local mode (false) makes the CDU refuse remote pump commands.
    pub fn set_remote_enable(&mut self, remote: bool) {
        self.remote_enable = remote;
    }

    /// A failed pump spins down and its feedback no longer follows the command.
    pub fn fail_pump(&mut self, failed: bool) {
        self.pump_failed = failed;
    }

    pub fn set_facility_water(&mut self, t: Celsius) {
        self.params.facility_water = t;
    }

    pub fn pump_command(&self) -> Percent {
        self.pump_command
    }

    /// The pump's actual speed (what the feedback register reports).
    pub fn pump_speed(&self) -> Percent {
        self.pump_speed
    }

    /// Secondary flow: rated flow × speed (affinity law).
    pub fn flow(&self) -> LitresPerMinute {
        LitresPerMinute(self.params.rated_flow.0 * self.speed_share())
    }

    /// Loop differential pressure: rated ΔP × speed² (affinity law).
    pub fn differential_pressure(&self) -> Kilopascal {
        Kilopascal(self.params.rated_dp.0 * self.speed_share().powi(2))
    }

    /// Pump electrical power: rated hydraulic power / efficiency × speed³ (affinity law).
    pub fn pump_power(&self) -> Watts {
        let p = &self.params;
        let rated = p.rated_flow.0 / 60_000.0 * p.rated_dp.0 * 1000.0 / p.pump_efficiency;
        Watts(rated * self.speed_share().powi(3))
    }

    /// Pump energy since start.
    pub fn pump_energy(&self) -> Joules {
        self.pump_energy
    }

    pub fn supply(&self) -> Celsius {
        self.supply
    }

    pub fn return_temperature(&self) -> Celsius {
        self.return_
    }

    pub fn valve(&self) -> Percent {
        self.valve
    }

    /// Heat flowing from the cold plates into the coolant, last step.
    pub fn heat_to_coolant(&self) -> Watts {
        self.heat_to_coolant
    }

    /// Heat handed to facility water by the heat exchanger, last step.
    pub fn heat_to_facility(&self) -> Watts {
        self.heat_to_facility
    }

    /// Total GPU electrical power, last step.
    pub fn gpu_power(&self) -> Watts {
        Watts(self.gpus.iter().map(|g| g.power.0).sum())
    }

    /// The hottest GPU core.
    pub fn hottest_core(&self) -> Celsius {
        self.gpus
            .iter()
            .map(|g| g.thermal.die)
            .fold(Celsius(f64::MIN), Celsius::max)
    }

    /// How many watchdog writes the CDU has seen.
    pub fn watchdog_writes(&self) -> u64 {
        self.watchdog_writes
    }

    /// True while the CDU runs on its watchdog fallback speed.
    pub fn in_watchdog_fallback(&self) -> bool {
        self.watchdog_expired()
    }
}

impl CduState for Plant {
    fn read(&self, role: Role) -> Option<f64> {
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        Some(match role {
            Role::SupplyTemperature => self.supply.0,
            Role::ReturnTemperature => self.return_.0,
            Role::Flow => self.flow().0,
            Role::DifferentialPressure => self.differential_pressure().0,
            Role::PumpSpeedCommand => self.pump_command.0,
            Role::PumpSpeedFeedback => self.pump_speed.0,
            Role::Leak => b(self.leak),
            Role::RemoteEnable => b(self.remote_enable),
            Role::FacilityWaterTemperature => self.params.facility_water.0,
            Role::ValvePosition => self.valve.0,
            Role::RoomTemperature => self.params.room.0,
            Role::RoomHumidity => self.params.room_humidity.0,
            Role::Watchdog => self.watchdog_value,
        })
    }

    fn write(&mut self, role: Role, value: f64) -> Result<(), String> {
        match role {
            Role::PumpSpeedCommand => {
                if !self.remote_enable {
                    return Err("the CDU is in local mode and refuses remote pump commands".into());
                }
                if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
                    return Err(format!("pump speed {value} % outside 0..=100 %"));
                }
                self.pump_command = Percent(value);
                Ok(())
            }
            Role::Watchdog => {
                if !value.is_finite() {
                    return Err(format!("watchdog value {value} is not a number"));
                }
                self.watchdog_writes += 1;
                if value != self.watchdog_value {
                    self.watchdog_value = value;
                    self.watchdog_changed_at = self.t;
                }
                Ok(())
            }
            other => Err(format!("{other} is read-only on this CDU")),
        }
    }
}

/// The shared plant as the CDU server and the simulated GPUs hold it.
impl CduState for std::sync::Arc<std::sync::Mutex<Plant>> {
    fn read(&self, role: Role) -> Option<f64> {
        self.lock().unwrap_or_else(|e| e.into_inner()).read(role)
    }

    fn write(&mut self, role: Role, value: f64) -> Result<(), String> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(role, value)
    }
}
