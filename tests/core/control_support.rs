//! A small deterministic plant for the control-core tests: GPUs on cold plates whose thermal
//! resistance falls with pump speed, a CDU whose pump follows its command with a lag, and the
//! bookkeeping a shell does (apply actuations, report outcomes). Not the real simulator: just
//! enough physics to show that the loops settle and that faults get the right reactions.

use coolantd::control::{CduSetup, ControlConfig, Controller, TickInput};
use coolantd::model::{
    Actuation, ActuationError, ActuationOutcome, CduSample, GpuKey, GpuSample, GpuStatic,
    RegisterReading, Role, SensorFault, Source, TickOutput,
};
use coolantd::units::{Celsius, Percent, Watts};
use std::time::Duration;

pub const HOST: &str = "node01";

pub fn key(i: u32) -> GpuKey {
    GpuKey {
        host: HOST.into(),
        index: i,
    }
}

/// An H200 as `fixtures/h200/info.json` describes it.
pub fn h200(i: u32) -> GpuStatic {
    GpuStatic {
        key: key(i),
        uuid: format!("GPU-{i}"),
        name: "NVIDIA H200".into(),
        profile: "h200-sxm".into(),
        slowdown: Celsius(89.0),
        gpu_max: Celsius(87.0),
        hbm_max: Celsius(95.0),
        shutdown: Celsius(95.0),
        power_min: Watts(200.0),
        power_max: Watts(700.0),
        power_default: Watts(700.0),
    }
}

pub fn setup(roles: &[Role]) -> CduSetup {
    CduSetup {
        name: "cdu-a".into(),
        hosts: vec![HOST.into()],
        pump_min: Percent(10.0),
        pump_max: Percent(100.0),
        roles: roles.to_vec(),
    }
}

pub const ROLES: &[Role] = &[
    Role::SupplyTemperature,
    Role::ReturnTemperature,
    Role::Flow,
    Role::PumpSpeedCommand,
    Role::PumpSpeedFeedback,
    Role::Leak,
    Role::RemoteEnable,
];

pub struct Rig {
    pub ctl: Controller,
    pub now: Duration,
    pub period: Duration,
    pub outcomes: Vec<ActuationOutcome>,
    /// GPU die temperatures, °C.
    pub temps: Vec<f64>,
    /// What each GPU would draw without a cap, W.
    pub load: Vec<f64>,
    /// The enforced power limit of each GPU, W.
    pub limit: Vec<f64>,
    pub pump_cmd: f64,
    pub pump_fb: f64,
    /// Whether the pump follows its command.
    pub pump_follows: bool,
    pub supply: Result<f64, SensorFault>,
    pub leak: f64,
    pub remote: f64,
    /// The remote-enable register fails with this fault instead of reading `remote`.
    pub remote_fault: Option<SensorFault>,
    /// Writes to the CDU fail (the shell reports an error).
    pub fail_cdu_writes: bool,
    /// The CDU is not polled (no sample in the tick input).
    pub cdu_silent: bool,
    /// GPU indices whose samples are not delivered.
    pub gpu_silent: Vec<u32>,
    /// GPU samples are delivered this much older than `now`.
    pub gpu_delay: Duration,
    /// Overrides of a GPU's reported core temperature.
    pub core_override: Vec<(u32, f64)>,
    pub roles: Vec<Role>,
    pub last: Option<TickOutput>,
}

impl Rig {
    pub fn new(cfg: &ControlConfig, n_gpus: u32) -> Rig {
        Rig::with_roles(cfg, n_gpus, ROLES)
    }

    pub fn with_roles(cfg: &ControlConfig, n_gpus: u32, roles: &[Role]) -> Rig {
        let gpus = (0..n_gpus).map(h200).collect();
        Rig {
            ctl: Controller::new(cfg, vec![setup(roles)], gpus),
            now: Duration::ZERO,
            period: Duration::from_millis(cfg.period_ms),
            outcomes: Vec::new(),
            temps: vec![40.0; n_gpus as usize],
            load: vec![700.0; n_gpus as usize],
            limit: vec![700.0; n_gpus as usize],
            pump_cmd: 50.0,
            pump_fb: 50.0,
            pump_follows: true,
            supply: Ok(30.0),
            leak: 0.0,
            remote: 1.0,
            remote_fault: None,
            fail_cdu_writes: false,
            cdu_silent: false,
            gpu_silent: Vec::new(),
            gpu_delay: Duration::ZERO,
            core_override: Vec::new(),
            roles: roles.to_vec(),
            last: None,
        }
    }

    /// Steady-state die temperature for a power and pump speed: supply + P·R, with a cold
    /// plate resistance that falls with flow (flow ∝ pump speed).
    pub fn steady(&self, power: f64) -> f64 {
        let supply = *self.supply.as_ref().unwrap_or(&30.0);
        supply + power * (0.02 + 1.0 / self.pump_fb.max(5.0))
    }

    fn reg(role: Role, v: Result<f64, SensorFault>) -> RegisterReading {
        RegisterReading {
            name: role.as_str().into(),
            role: Some(role),
            value: v,
        }
    }

    pub fn cdu_sample(&self) -> CduSample {
        let mut registers = Vec::new();
        for r in &self.roles {
            let v = match r {
                Role::SupplyTemperature => self.supply.clone(),
                Role::ReturnTemperature => Ok(35.0),
                Role::Flow => Ok(self.pump_fb * 2.0),
                Role::PumpSpeedCommand => Ok(self.pump_cmd),
                Role::PumpSpeedFeedback => Ok(self.pump_fb),
                Role::Leak => Ok(self.leak),
                Role::RemoteEnable => match &self.remote_fault {
                    Some(f) => Err(f.clone()),
                    None => Ok(self.remote),
                },
                Role::RoomTemperature => Ok(24.0),
                Role::RoomHumidity => Ok(60.0),
                Role::Watchdog => Ok(0.0),
                _ => Ok(0.0),
            };
            registers.push(Self::reg(*r, v));
        }
        CduSample {
            cdu: "cdu-a".into(),
            at: self.now,
            registers,
        }
    }

    pub fn power(&self, i: usize) -> f64 {
        self.load[i].min(self.limit[i])
    }

    pub fn gpu_samples(&self) -> Vec<GpuSample> {
        (0..self.temps.len())
            .filter(|i| !self.gpu_silent.contains(&(*i as u32)))
            .map(|i| {
                let mut s = GpuSample::empty(
                    key(i as u32),
                    Source::Simulated,
                    self.now.saturating_sub(self.gpu_delay),
                );
                let core = self
                    .core_override
                    .iter()
                    .find(|(k, _)| *k as usize == i)
                    .map_or(self.temps[i], |(_, v)| *v);
                s.core = Some(Celsius(core));
                s.hbm = Some(Celsius(self.temps[i] - 5.0));
                s.power_instant = Some(Watts(self.power(i)));
                s.enforced_limit = Some(Watts(self.limit[i]));
                s
            })
            .collect()
    }

    /// One tick: the controller decides on what the plant shows now, the shell applies the
    /// actuations, then the plant advances by one period.
    pub fn step(&mut self) -> TickOutput {
        let gpus = self.gpu_samples();
        let cdus = if self.cdu_silent {
            Vec::new()
        } else {
            vec![self.cdu_sample()]
        };
        let outcomes = std::mem::take(&mut self.outcomes);
        let out = self.ctl.tick(&TickInput {
            now: self.now,
            gpus: &gpus,
            cdus: &cdus,
            outcomes: &outcomes,
        });
        for a in &out.actuations {
            let result = match a {
                Actuation::SetPumpSpeed { speed, .. } => {
                    if self.fail_cdu_writes || self.cdu_silent {
                        Err(ActuationError::Failed("Modbus timeout".to_string()))
                    } else {
                        self.pump_cmd = speed.get();
                        Ok(())
                    }
                }
                Actuation::SetPowerCap { gpu, limit } => {
                    self.limit[gpu.index as usize] = limit.get();
                    Ok(())
                }
                Actuation::FeedWatchdog { .. } => Ok(()),
            };
            self.outcomes.push(ActuationOutcome {
                actuation: a.clone(),
                at: self.now,
                result,
                dry_run: false,
            });
        }
        self.advance();
        self.last = Some(out.clone());
        out
    }

    fn advance(&mut self) {
        let dt = self.period.as_secs_f64();
        if self.pump_follows {
            // The pump ramps towards its command with a 2 s time constant.
            self.pump_fb += (self.pump_cmd - self.pump_fb) * (dt / 2.0).min(1.0);
        }
        for i in 0..self.temps.len() {
            let target = self.steady(self.power(i));
            // The slow (cold plate + coolant) time constant, 20 s.
            self.temps[i] += (target - self.temps[i]) * (dt / 20.0).min(1.0);
        }
        self.now += self.period;
    }

    pub fn run(&mut self, ticks: usize) -> TickOutput {
        let mut out = None;
        for _ in 0..ticks {
            out = Some(self.step());
        }
        out.expect("at least one tick")
    }

    pub fn hottest(&self) -> f64 {
        self.temps.iter().copied().fold(f64::MIN, f64::max)
    }

    pub fn pump_writes(out: &TickOutput) -> Vec<f64> {
        out.actuations
            .iter()
            .filter_map(|a| match a {
                Actuation::SetPumpSpeed { speed, .. } => Some(speed.get()),
                _ => None,
            })
            .collect()
    }

    pub fn caps(out: &TickOutput) -> Vec<(u32, f64)> {
        out.actuations
            .iter()
            .filter_map(|a| match a {
                Actuation::SetPowerCap { gpu, limit } => Some((gpu.index, limit.get())),
                _ => None,
            })
            .collect()
    }

    pub fn has_alarm(out: &TickOutput, prefix: &str) -> bool {
        out.active_alarms.iter().any(|a| a.id.starts_with(prefix))
    }
}

/// A configuration with start-up suppression off, so that tests see every alarm.
pub fn cfg() -> ControlConfig {
    let mut c = ControlConfig::default();
    c.supervisor.startup_suppress_s = 0.0;
    c
}
