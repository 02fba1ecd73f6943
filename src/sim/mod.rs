//! The plant simulator: simulated GPUs and a simulated CDU served over real Modbus TCP.
//!
//! [`SimRuntime`] runs it for the daemon: it builds the plant from `[simulator]`
//! ([`build_plant`]), serves the plant's CDU over Modbus TCP on `simulator.listen`
//! ([`cdu_server`], the plant implements [`CduState`]), steps the plant every
//! `simulator.step_ms` of wall time by `step_ms × time_scale` of plant time (the physics
//! substeps itself, so any step is stable), and hands [`SimGpus`] to the daemon as its GPU
//! backend. Tests step the plant themselves, in lockstep with the daemon's ticks.

pub mod fit;
pub mod gpus;
pub mod plant;
pub mod rack;
pub mod rehearsal;
pub mod runtime;
pub mod thermal;
pub mod workload;

pub use gpus::SimGpus;
pub use plant::{GpuFault, Plant, PlantParams, Spread};
pub use rack::{SimFault, SimFaultKind};
pub use rehearsal::Rehearsal;
pub use runtime::SimRuntime;
pub use workload::{Segment, Workload};

use crate::profile::gpu::GpuProfile;
use crate::units::{Celsius, Kilopascal, LitresPerMinute, Percent};
use crate::validate::Issues;
use serde::Deserialize;
use std::time::Duration;

/// The secondary loop's coolant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Coolant {
    /// Water with 25 % propylene glycol, the usual secondary-loop fluid of CDUs.
    #[default]
    Pg25,
    Water,
}

impl Coolant {
    /// (specific heat J/(kg·K), density kg/l).
    pub fn properties(self) -> (f64, f64) {
        match self {
            // PG25 near 30 °C: ~3.93 kJ/(kg·K), ~1.02 kg/l (ASHRAE Handbook—Fundamentals,
            // propylene glycol solution property tables).
            Coolant::Pg25 => (3930.0, 1.02),
            // Water near 30 °C (standard property tables).
            Coolant::Water => (4180.0, 0.996),
        }
    }
}

/// `[simulator]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Hosts whose GPUs sit on the simulated CDU; empty means just this site's host.
    pub hosts: Vec<String>,
    pub gpus_per_host: u32,
    /// GPU profile name: `firmware-profiles/gpu/<gpu_profile>.toml`.
    pub gpu_profile: String,
    /// CDU firmware profile the simulated CDU's Modbus server speaks.
    pub cdu_profile: String,
    /// Modbus TCP address of the simulated CDU.
    pub listen: String,
    /// The Modbus unit id the simulated CDU answers to; any other id gets exception 0x0B
    /// (gateway target device failed to respond), so a wrong `[[cdu]] unit_id` shows up.
    pub unit_id: u8,
    /// Facility water supply temperature. 25 °C sits inside ASHRAE liquid-cooling class W27
    /// (facility supply up to 27 °C).
    pub facility_water_c: f64,
    /// The supply temperature the CDU's own valve loop holds.
    pub supply_setpoint_c: f64,
    /// Hold the primary valve at this position instead of running the CDU's valve loop.
    pub valve_fixed_pct: Option<f64>,
    /// Plant seconds per wall second (1.0 = real time).
    pub time_scale: f64,
    /// Wall-clock period at which the daemon steps the plant, milliseconds.
    pub step_ms: u64,
    pub workload: Workload,
    pub coolant: Coolant,
    /// Pump command at start, %.
    pub initial_pump_pct: f64,
    /// Secondary flow per GPU with the pump at 100 %, l/min. Assumed: 3 l/min puts the
    /// profiles' reference flow (2 l/min, the assumed flow of the captures) at 67 % speed.
    pub rated_flow_lpm_per_gpu: f64,
    /// Loop differential pressure at 100 %, kPa. Assumed order of a CDU's secondary head.
    pub rated_dp_kpa: f64,
    /// Pump wire-to-water efficiency at the rated point. Assumed.
    pub pump_efficiency: f64,
    /// Minimum pump speed while running, % (commercial CDUs enforce one; DESIGN.md §2).
    pub min_pump_pct: f64,
    /// Time constant of the pump following its command, s. Assumed.
    pub pump_time_constant_s: f64,
    /// Secondary coolant volume, l; default 20 l in the CDU plus 1 l per GPU. Assumed.
    pub loop_volume_l: Option<f64>,
    /// Heat exchanger UA per GPU, W/K. Assumed: sized so a fully open valve holds the supply
    /// a few kelvin above facility water at full load.
    pub hx_ua_w_per_k_per_gpu: f64,
    /// Primary (facility) flow per GPU with the valve fully open, l/min. Assumed.
    pub primary_flow_lpm_per_gpu: f64,
    pub room_c: f64,
    pub room_humidity_pct: f64,
    /// With no new watchdog value for this long, the CDU falls back to `fallback_pump_pct`.
    /// Absent: the watchdog is recorded but never expires.
    pub watchdog_timeout_s: Option<f64>,
    pub fallback_pump_pct: f64,
    /// Each GPU's plate-to-coolant resistance lies within ± this share of the profile's, %
    /// (uniform, seeded). 0 (default): identical GPUs. A few % is the order of mounting and
    /// thermal-paste variation. Assumed.
    pub plate_spread_pct: f64,
    /// Each GPU's power demand above idle lies within ± this share of the profile's, %
    /// (silicon leakage, uneven work). 0 (default): identical GPUs. Assumed.
    pub power_spread_pct: f64,
    /// The top host's GPUs have this much more plate resistance, %, falling linearly to none
    /// at the bottom host (`hosts` are listed bottom to top): the warm top of a rack.
    /// 0 (default): no hot spot. Assumed.
    pub hot_spot_pct: f64,
    /// Seed of the spread: the same seed gives every GPU the same factors on every run.
    pub spread_seed: u64,
    /// `coolantd sim` runs one host agent per simulated host, each with its own session on
    /// the `[mqtt]` broker, reading only its host's GPUs and applying the caps its
    /// controller leases to the shared plant. Such a file is for `coolantd sim` only.
    pub agents: bool,
    /// `[simulator.agent]`: the simulated agents' tick and guard (the `[agent]` keys of an
    /// agent's file); defaults when absent. Periods are plant time.
    pub agent: Option<crate::agent::AgentSection>,
    /// The plant runs in another process (`coolantd sim` with agents): this daemon starts
    /// no simulator and serves no CDU; it only keeps its clock at `time_scale`, the
    /// plant's speed, so its control period and leases stay those of the plant.
    pub external: bool,
    /// `[[simulator.faults]]`: faults on the simulated hosts' agents, plant time.
    pub faults: Vec<SimFault>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            hosts: Vec::new(),
            gpus_per_host: 8,
            gpu_profile: "h200-sxm".into(),
            cdu_profile: "sim-cdu".into(),
            listen: "127.0.0.1:5020".into(),
            unit_id: 1,
            facility_water_c: 25.0,
            supply_setpoint_c: 30.0,
            valve_fixed_pct: None,
            time_scale: 1.0,
            step_ms: 100,
            workload: Workload::default(),
            coolant: Coolant::default(),
            initial_pump_pct: 60.0,
            rated_flow_lpm_per_gpu: 3.0,
            rated_dp_kpa: 150.0,
            pump_efficiency: 0.5,
            min_pump_pct: 20.0,
            pump_time_constant_s: 2.0,
            loop_volume_l: None,
            hx_ua_w_per_k_per_gpu: 250.0,
            primary_flow_lpm_per_gpu: 3.0,
            room_c: 24.0,
            room_humidity_pct: 45.0,
            watchdog_timeout_s: None,
            fallback_pump_pct: 100.0,
            plate_spread_pct: 0.0,
            power_spread_pct: 0.0,
            hot_spot_pct: 0.0,
            spread_seed: 1,
            agents: false,
            agent: None,
            external: false,
            faults: Vec::new(),
        }
    }
}

impl SimConfig {
    pub fn validate(&self, key: &str, issues: &mut Issues) {
        let k = |name: &str| format!("{key}.{name}");
        let mut seen = std::collections::BTreeSet::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let ok = !h.is_empty()
                && h.len() <= 64
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            issues.check(
                ok,
                format!("{key}.hosts[{i}]"),
                format!("1 to 64 characters of letters, digits, '-', '_' or '.', got `{h}`"),
            );
            issues.check(
                seen.insert(h.as_str()),
                format!("{key}.hosts[{i}]"),
                format!("a unique host name, but `{h}` is listed twice"),
            );
        }
        issues.check(
            (1..=1024).contains(&self.gpus_per_host),
            k("gpus_per_host"),
            format!("1 to 1024 GPUs per host, got {}", self.gpus_per_host),
        );
        for (name, v) in [
            ("gpu_profile", &self.gpu_profile),
            ("cdu_profile", &self.cdu_profile),
        ] {
            issues.check(
                !v.is_empty() && !v.contains(['/', '\\']),
                k(name),
                format!("a profile name (a file stem, no path), got `{v}`"),
            );
        }
        issues.check(
            self.listen.parse::<std::net::SocketAddr>().is_ok(),
            k("listen"),
            format!(
                "an `ip:port` address such as 127.0.0.1:5020, got `{}`",
                self.listen
            ),
        );
        issues.check(
            (1..=247).contains(&self.unit_id),
            k("unit_id"),
            format!("a Modbus unit id between 1 and 247, got {}", self.unit_id),
        );
        issues.range(
            self.facility_water_c,
            2.0,
            60.0,
            k("facility_water_c"),
            "a water temperature in °C",
        );
        issues.range(
            self.supply_setpoint_c,
            5.0,
            65.0,
            k("supply_setpoint_c"),
            "a supply temperature in °C",
        );
        if let Some(v) = self.valve_fixed_pct {
            issues.range(v, 0.0, 100.0, k("valve_fixed_pct"), "a valve position in %");
        }
        issues.range(
            self.time_scale,
            0.01,
            10_000.0,
            k("time_scale"),
            "plant seconds per wall second",
        );
        issues.check(
            (1..=10_000).contains(&self.step_ms),
            k("step_ms"),
            format!("a step between 1 and 10000 ms, got {}", self.step_ms),
        );
        self.workload.validate(&k("workload"), issues);
        issues.range(
            self.initial_pump_pct,
            0.0,
            100.0,
            k("initial_pump_pct"),
            "a pump speed in %",
        );
        issues.range(
            self.rated_flow_lpm_per_gpu,
            0.05,
            100.0,
            k("rated_flow_lpm_per_gpu"),
            "a flow in l/min",
        );
        issues.range(
            self.rated_dp_kpa,
            1.0,
            2000.0,
            k("rated_dp_kpa"),
            "a pressure in kPa",
        );
        issues.range(
            self.pump_efficiency,
            0.05,
            1.0,
            k("pump_efficiency"),
            "an efficiency",
        );
        issues.range(
            self.min_pump_pct,
            0.0,
            100.0,
            k("min_pump_pct"),
            "a pump speed in %",
        );
        issues.range(
            self.pump_time_constant_s,
            0.01,
            600.0,
            k("pump_time_constant_s"),
            "a time constant in s",
        );
        if let Some(v) = self.loop_volume_l {
            issues.range(v, 0.1, 1e6, k("loop_volume_l"), "a volume in l");
        }
        issues.range(
            self.hx_ua_w_per_k_per_gpu,
            1.0,
            1e5,
            k("hx_ua_w_per_k_per_gpu"),
            "a conductance in W/K",
        );
        issues.range(
            self.primary_flow_lpm_per_gpu,
            0.05,
            100.0,
            k("primary_flow_lpm_per_gpu"),
            "a flow in l/min",
        );
        issues.range(
            self.room_c,
            -20.0,
            60.0,
            k("room_c"),
            "a room temperature in °C",
        );
        issues.range(
            self.room_humidity_pct,
            0.0,
            100.0,
            k("room_humidity_pct"),
            "a relative humidity in %",
        );
        if let Some(v) = self.watchdog_timeout_s {
            issues.range(v, 0.1, 86_400.0, k("watchdog_timeout_s"), "a timeout in s");
        }
        issues.range(
            self.fallback_pump_pct,
            0.0,
            100.0,
            k("fallback_pump_pct"),
            "a pump speed in %",
        );
        for (name, v, max) in [
            ("plate_spread_pct", self.plate_spread_pct, 20.0),
            ("power_spread_pct", self.power_spread_pct, 20.0),
            ("hot_spot_pct", self.hot_spot_pct, 50.0),
        ] {
            issues.range(v, 0.0, max, k(name), "a spread in %");
        }
        if let Some(a) = &self.agent {
            a.validate(&k("agent"), issues);
        }
        issues.check(
            !(self.agents && self.external),
            k("external"),
            "false when simulator.agents is true: the process that runs the agents runs the plant",
        );
        issues.check(
            self.agents || (self.agent.is_none() && self.faults.is_empty()),
            k("agents"),
            "true when [simulator.agent] or [[simulator.faults]] is given: they act on the simulated agents",
        );
        issues.check(
            !self.agents || !self.hosts.is_empty(),
            k("hosts"),
            "the simulated hosts, one agent each, when simulator.agents is true",
        );
        for (i, f) in self.faults.iter().enumerate() {
            f.validate(&format!("{key}.faults[{i}]"), &self.hosts, issues);
        }
    }

    /// The simulated agents' settings: `[simulator.agent]` or the defaults.
    pub fn agent_section(&self) -> crate::agent::AgentSection {
        self.agent.clone().unwrap_or_default()
    }

    /// The wall-clock period at which to step the plant.
    pub fn step(&self) -> Duration {
        Duration::from_millis(self.step_ms)
    }

    /// The plant time one wall-clock step advances: `step × time_scale`.
    pub fn plant_step(&self) -> Duration {
        self.step().mul_f64(self.time_scale)
    }

    /// The hosts on the simulated CDU: configured, or just `site_host`.
    pub fn hosts_or(&self, site_host: &str) -> Vec<String> {
        if self.hosts.is_empty() {
            vec![site_host.to_string()]
        } else {
            self.hosts.clone()
        }
    }

    /// The plant's physical parameters for `n_gpus` GPUs.
    pub fn plant_params(&self, n_gpus: usize) -> PlantParams {
        let n = n_gpus.max(1) as f64;
        let (cp, rho) = self.coolant.properties();
        PlantParams {
            rated_flow: LitresPerMinute(self.rated_flow_lpm_per_gpu * n),
            rated_dp: Kilopascal(self.rated_dp_kpa),
            pump_efficiency: self.pump_efficiency,
            min_speed: Percent(self.min_pump_pct),
            pump_time_constant_s: self.pump_time_constant_s,
            coolant_cp: cp,
            coolant_density: rho,
            loop_volume_l: self.loop_volume_l.unwrap_or(20.0 + n),
            hx_ua_w_per_k: self.hx_ua_w_per_k_per_gpu * n,
            primary_rated_flow: LitresPerMinute(self.primary_flow_lpm_per_gpu * n),
            facility_water: Celsius(self.facility_water_c),
            supply_setpoint: Celsius(self.supply_setpoint_c),
            valve_fixed: self.valve_fixed_pct.map(Percent),
            room: Celsius(self.room_c),
            room_humidity: Percent(self.room_humidity_pct),
            watchdog_timeout: self.watchdog_timeout_s.map(Duration::from_secs_f64),
            fallback_speed: Percent(self.fallback_pump_pct),
            initial_speed: Percent(self.initial_pump_pct),
            spread: Spread {
                plate: self.plate_spread_pct / 100.0,
                power: self.power_spread_pct / 100.0,
                hot_spot: self.hot_spot_pct / 100.0,
                seed: self.spread_seed,
            },
        }
    }
}

/// Builds the plant the configuration describes. `site_host` names the GPUs' host when
/// `simulator.hosts` is empty.
pub fn build_plant(cfg: &SimConfig, gpu_profile: &GpuProfile, site_host: &str) -> Plant {
    let hosts = cfg.hosts_or(site_host);
    let n = hosts.len() * cfg.gpus_per_host as usize;
    Plant::new(
        cfg.plant_params(n),
        gpu_profile,
        &hosts,
        cfg.gpus_per_host,
        cfg.workload.clone(),
    )
}

/// The simulated CDU's state as its Modbus server sees it: values by role, in the units of
/// the simulator's firmware profile. Implemented by the plant; served by the CDU server.
pub trait CduState: Send {
    /// The current value of a role, or `None` when the simulated CDU has no such sensor.
    fn read(&self, role: crate::model::Role) -> Option<f64>;

    /// Applies a write from a Modbus client (pump speed command, watchdog). `Err` carries
    /// the reason the CDU refuses it; the server answers with an exception code.
    fn write(&mut self, role: crate::model::Role, value: f64) -> Result<(), String>;
}
pub mod cdu_server;
