//! `[control]`: set point, loop tuning, pump and power-cap limits, plausibility and supervisor.
//!
//! Defaults are tuned for an H100/H200 cold plate on a CDU secondary loop: a hottest-core
//! set point well under the 87 °C "GPU max operating" and 89 °C slowdown thresholds of
//! `fixtures/h200/info.json`, and a pump loop a few times slower than the plant's slow
//! (tens of seconds) time constant.
//!
//! Why one file over the ~700-line guideline: it is the whole `[control]` table, each key with
//! its meaning, default and the check that names it in an error; about 400 of its lines are
//! that validation, which reads best beside the keys it checks.

use crate::model::Role;
use crate::validate::Issues;
use serde::Deserialize;

/// Which temperature the pump loop holds at the set point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ControlledVariable {
    /// The hottest GPU core temperature.
    Core,
    /// The HBM temperature expressed as an equivalent core temperature: the GPU's slowdown
    /// threshold minus the HBM's margin to its own limit.
    HbmMargin,
    /// Whichever of the two is closest to its limit (the larger equivalent temperature).
    #[default]
    Max,
}

/// The longest control period: half of the shipped systemd unit's `WatchdogSec=10s`.
pub const MAX_PERIOD_MS: u64 = 5_000;

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Control period, milliseconds.
    pub period_ms: u64,
    /// The hottest-GPU temperature the pump loop holds, °C.
    pub setpoint: f64,
    /// Lowest set point an operator may command, °C.
    pub setpoint_min: f64,
    /// Highest set point an operator may command, °C.
    pub setpoint_max: f64,
    /// A set point must stay this far below the lowest slowdown threshold of the GPUs, K.
    pub slowdown_margin_k: f64,
    pub controlled_variable: ControlledVariable,
    /// Samples older than this are ignored, milliseconds. Remote readings arrive later than
    /// local ones; this bounds how old a reading may be and still steer the loop.
    pub max_sample_age_ms: u64,
    pub pid: PidConfig,
    pub pump: PumpConfig,
    pub power_cap: PowerCapConfig,
    pub plausibility: PlausibilityConfig,
    pub supervisor: SupervisorConfig,
    pub feed_forward: FeedForwardConfig,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            period_ms: 1000,
            // Well inside the 55 °C (full pump) .. 87 °C (GPU max operating) window of an H200
            // at 700 W, leaving ~20 K to slowdown (89 °C, fixtures/h200/info.json).
            setpoint: 68.0,
            setpoint_min: 40.0,
            setpoint_max: 82.0,
            slowdown_margin_k: 5.0,
            controlled_variable: ControlledVariable::Max,
            max_sample_age_ms: 3000,
            pid: PidConfig::default(),
            pump: PumpConfig::default(),
            power_cap: PowerCapConfig::default(),
            plausibility: PlausibilityConfig::default(),
            supervisor: SupervisorConfig::default(),
            feed_forward: FeedForwardConfig::default(),
        }
    }
}

/// `[control.pid]`: the pump loop, pump % per kelvin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PidConfig {
    /// % pump speed per K of error.
    pub kp: f64,
    /// % pump speed per K·s of error.
    pub ki: f64,
    /// % pump speed per K/s of measurement change.
    pub kd: f64,
    /// Derivative filter time constant, s.
    pub derivative_filter_s: f64,
    /// Anti-windup tracking time constant, s; unset: √(Ti·Td), or Ti without derivative.
    pub tracking_time_s: Option<f64>,
    /// Schedule kp and ki over the operating point (pump speed, the load it holds, the supply
    /// temperature) by the SIMC rule of `control/tuning.rs`, where the CDU's loop model is
    /// known (`Controller::set_loop_model`); `kp`/`ki` apply otherwise. Not a configuration
    /// key (yet): the daemon does not pass a loop model (it needs the loop's flow per GPU and
    /// the pump's lag), and the benchmark finds it worse than fixed gains (docs/control.md),
    /// so a key would only promise what the daemon does not do.
    #[serde(skip)]
    pub gain_schedule: bool,
}

impl Default for PidConfig {
    fn default() -> Self {
        // Disturbance rejection (a load step, bursts) matters more than set-point tracking
        // here. The earlier SIMC tuning for a 0.25 K/% plant (kp 5, ki 0.25) was too sluggish
        // on both fitted plants in `cargo bench --bench control_quality` (benchmark trace,
        // 30 °C supply): H200 at 55 °C overshoot 1.70 → 0.92 K, 67 → 0 s above SP+1 K;
        // H100 at 72 °C overshoot 4.33 → 2.02 K, 106 → 31 s above SP+1 K, for +3 kJ and +1 kJ
        // of pump energy over the 13-minute trace. The same gains hold up with temperatures
        // rounded to whole °C as NVML reports them (the slew limits absorb the steps).
        // No derivative: NVML reports whole °C, so a derivative mostly amplifies quantisation.
        PidConfig {
            kp: 20.0,
            ki: 1.0,
            kd: 0.0,
            derivative_filter_s: 5.0,
            tracking_time_s: None,
            // Off: in `cargo bench --bench control_quality` the scheduled SIMC gains cost pump
            // energy and travel on every plant for little gain (docs/control.md).
            gain_schedule: false,
        }
    }
}

/// `[control.pump]`, all in % of full speed (and % per second).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PumpConfig {
    pub min_speed: f64,
    pub max_speed: f64,
    /// Fastest rise of the command, %/s (fast: a hot GPU needs flow now).
    pub slew_up_per_s: f64,
    /// Fastest fall of the command, %/s (slow: saving pump energy is never urgent).
    pub slew_down_per_s: f64,
    /// Speed in failsafe (at least; a faster pump is not slowed down).
    pub failsafe_speed: f64,
    /// Speed held during boot, until every required input is valid.
    pub start_speed: f64,
    /// Feedback further than this from the command counts as not following, %.
    pub follow_tolerance: f64,
    /// How long the feedback may stay off the command before the pump is faulted, s.
    pub follow_timeout_s: f64,
    /// Consecutive failed writes before an alarm (each failure is retried next tick).
    pub write_failures_alarm: u32,
    /// A command closer than this to the last acknowledged one is not written again, %.
    pub write_deadband: f64,
    /// The command is rewritten at least this often even when unchanged, s.
    pub refresh_s: f64,
}

impl Default for PumpConfig {
    fn default() -> Self {
        PumpConfig {
            // 20 %: a typical CDU minimum pump speed for bearing lubrication and a stable
            // flow reading (commercial CDUs enforce a minimum speed of this order).
            min_speed: 20.0,
            max_speed: 100.0,
            slew_up_per_s: 10.0,
            slew_down_per_s: 2.0,
            failsafe_speed: 100.0,
            start_speed: 60.0,
            follow_tolerance: 5.0,
            // A CDU pump ramps over a few seconds; 10 s covers a full 20→100 % step.
            follow_timeout_s: 10.0,
            write_failures_alarm: 3,
            write_deadband: 0.2,
            refresh_s: 10.0,
        }
    }
}

/// `[control.feed_forward]`: the pump speed the GPUs' present power needs, from the plate
/// model of their profile (see `control/feedforward.rs`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedForwardConfig {
    pub enabled: bool,
    /// Heat from each host's non-GPU parts on the same loop (CPUs, NICs, memory), W.
    pub non_gpu_w_per_host: f64,
    /// Non-GPU heat as a share of the GPUs' power, 0..1 (adds to `non_gpu_w_per_host`).
    pub non_gpu_fraction: f64,
    /// A GPU power reading older than this switches the feed-forward off, milliseconds.
    pub max_power_age_ms: u64,
    /// Fastest rise of the feed-forward term, %/s.
    pub slew_up_per_s: f64,
    /// Fastest fall of the feed-forward term, %/s.
    pub slew_down_per_s: f64,
    /// The load must stay lower for this long before the feed-forward term falls, s; shorter
    /// dips (a training iteration's communication phase) do not move the pump.
    pub hold_down_s: f64,
    /// Anticipation: while the controlled value rises towards the set point, the pump command
    /// is raised to the feed-forward's speed early enough that the pump gets there (at its
    /// slew limit) this many seconds before the set point is reached; 0 switches it off, s.
    pub anticipate_lead_s: f64,
    /// The term aims at the load's speed for a core this far above the set point, K: within
    /// the ±0.5 K settle band, where the last tenths of a kelvin cost the most pump energy on
    /// a plate whose temperature hardly moves with flow; the integrator closes the rest.
    pub aim_above_k: f64,
    /// Within a minute of a load step, once the core has turned back down inside the term's
    /// aim (between the set point and `aim_above_k` above it), the feedback may not raise the
    /// pump further: the core is where the term meant it to be and already falling.
    pub hold_after_peak: bool,
    /// Within a minute of a load step, while the core still rises towards the set point from
    /// below, the pump rises no faster than it needs to reach the term's speed a few seconds
    /// before the core reaches the set point.
    pub pace_approach: bool,
    /// Time constant of the online correction of the model, s (0: no learning).
    pub adapt_time_s: f64,
    /// Bounds of the learnt multiplicative correction of the model's speed.
    pub correction_min: f64,
    pub correction_max: f64,
    /// The loop settles within this of the set point before the correction learns, K.
    pub adapt_band_k: f64,
    /// Total loop flow with the pump at 100 %, l/min; only used until the CDU's flow and pump
    /// feedback have been read (the model then scales from them).
    pub flow_at_full_speed_lpm: Option<f64>,
}

impl Default for FeedForwardConfig {
    fn default() -> Self {
        FeedForwardConfig {
            enabled: true,
            non_gpu_w_per_host: 0.0,
            non_gpu_fraction: 0.0,
            // Two NVML fast-path periods and then some: older than this, the power no longer
            // tells what the GPUs draw now.
            max_power_age_ms: 2000,
            // As fast as the pump itself may rise: the feed-forward exists to move early.
            slew_up_per_s: 10.0,
            // As the pump's own fall: a short dip in power (all-reduce, a checkpoint) should not
            // drop the flow that the next compute phase needs again.
            slew_down_per_s: 2.0,
            // Longer than a training iteration's communication dip (well under a second,
            // seen in at most one or two 1 s samples), shorter than a checkpoint's drop.
            hold_down_s: 3.0,
            // About the pump's own lag. Chosen with `cargo bench --bench control_quality`:
            // 2 s brings the H100's overshoot after a load step from 1.53 to 0.53 K; 4 s
            // removes it but cools the approach more than needed (IAE +23 %).
            anticipate_lead_s: 2.0,
            // Chosen with `cargo bench --bench control_quality` (benchmark trace, H200): 0.4 K
            // brings the pump energy after a load step from 11.9 to 11.4 kJ for 0.10 K more
            // overshoot (0.36 → 0.46 K, target ≤ 0.5 K); the H100, whose core moves several
            // kelvin with flow, hardly changes.
            aim_above_k: 0.4,
            // Measured with `cargo bench --bench control_quality`: with feed-forward the H200's
            // pump energy falls from 11.4 to 11.0 kJ on the benchmark trace (feedback only:
            // 10.5) and from 9.5 to 7.9 kJ on the checkpoint (8.1), for IAE 107 → 110 K·s;
            // on the H100 the overshoot goes from 0.61 to 0.54 K, the IAE from 455 to 467 K·s.
            hold_after_peak: true,
            // Measured with `cargo bench --bench control_quality`: on a job start on a cold
            // loop the H200's pump energy with feed-forward falls from 9.2 to 8.7 kJ (feedback
            // only: 8.4) for 0.05 → 0.20 K overshoot and 36 → 43 K·s IAE; the facility drift
            // from 55.5 to 55.2 kJ (52.3). The other workloads and the H100 hardly change.
            pace_approach: true,
            // Much slower than the plate's slowest time constant (tens of seconds), so the
            // correction learns the plant, not the transient.
            adapt_time_s: 300.0,
            correction_min: 0.5,
            correction_max: 2.0,
            adapt_band_k: 0.5,
            flow_at_full_speed_lpm: None,
        }
    }
}

/// What to do with the power caps when the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdown {
    /// Write back the limits found at start-up.
    #[default]
    Restore,
    /// Leave the current caps in place.
    Hold,
}

/// `[control.power_cap]`: the second actuator, used only when the pump cannot do more.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerCapConfig {
    pub enabled: bool,
    /// Caps start to fall when a GPU stays this far above the set point with the pump at
    /// its maximum, K.
    pub band_k: f64,
    /// W per K.
    pub kp: f64,
    /// W per K·s.
    pub ki: f64,
    /// The loop never caps below this share of the GPU's highest limit, % (the GPU's own
    /// minimum applies too). Emergency ignores it and goes to the GPU's minimum.
    pub min_percent: f64,
    /// Fastest fall of a cap, W/s.
    pub lower_w_per_s: f64,
    /// Fastest rise of a cap back towards the original limit, W/s (gradual: hysteresis).
    pub restore_w_per_s: f64,
    /// Cap applied in failsafe when GPU temperatures are unknown, % of the original limit.
    pub failsafe_percent: f64,
    /// The pump counts as saturated within this many % of its maximum.
    pub saturation_margin: f64,
    /// A cap closer than this to the last written one is not written again, W.
    pub write_deadband_w: f64,
    /// Read-back tolerance between the enforced limit and ours, W.
    pub readback_tolerance_w: f64,
    /// Consecutive failed writes before an alarm.
    pub write_failures_alarm: u32,
    pub on_shutdown: OnShutdown,
    /// With the pump spent, a load step lowers the cap at once to the power the plate model
    /// says holds the cap's set point at the present supply and flow (for a minute after the
    /// step; then the feedback alone), instead of waiting for the temperature.
    pub feed_forward: bool,
}

impl Default for PowerCapConfig {
    fn default() -> Self {
        PowerCapConfig {
            enabled: true,
            band_k: 2.0,
            // Die-to-coolant resistance ≈ 0.035 K/W for an H200 (≈ 25 K rise at 700 W):
            // 10 W/K gives a loop gain ≈ 0.35 on the fast die time constant.
            kp: 10.0,
            ki: 1.0,
            min_percent: 0.0,
            lower_w_per_s: 50.0,
            restore_w_per_s: 5.0,
            failsafe_percent: 70.0,
            saturation_margin: 0.5,
            write_deadband_w: 1.0,
            readback_tolerance_w: 2.0,
            write_failures_alarm: 3,
            on_shutdown: OnShutdown::Restore,
            feed_forward: false,
        }
    }
}

/// `[control.plausibility]`: what an input must look like before it reaches a loop.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlausibilityConfig {
    /// CDU roles whose loss sends the CDU to failsafe (when its profile maps them); every
    /// other mapped role is optional and its loss only degrades.
    pub required: Vec<Role>,
    /// Whether losing every GPU reading of a CDU sends it to failsafe.
    pub gpu_required: bool,
    /// Ticks a lost input is bridged by its last good value before it counts as lost.
    pub hold_ticks: u32,
    pub gpu_min_c: f64,
    pub gpu_max_c: f64,
    pub coolant_min_c: f64,
    pub coolant_max_c: f64,
    /// Fastest believable change of a GPU temperature, K/s.
    pub gpu_max_rate_k_per_s: f64,
    /// Fastest believable change of a coolant temperature, K/s.
    pub coolant_max_rate_k_per_s: f64,
    /// A value that has not changed for this long while related values changed is stuck, s.
    pub stuck_after_s: f64,
    /// Pump command change that must move flow, pressure and pump feedback, %.
    pub stuck_pump_change: f64,
    /// GPU power change that must move its temperature, W.
    pub stuck_power_change_w: f64,
}

impl Default for PlausibilityConfig {
    fn default() -> Self {
        PlausibilityConfig {
            required: vec![Role::SupplyTemperature, Role::Leak],
            gpu_required: true,
            hold_ticks: 1,
            gpu_min_c: 0.0,
            // Above any GPU's shutdown threshold (H100/H200: 92–95 °C) with room to spare.
            gpu_max_c: 130.0,
            coolant_min_c: 0.0,
            coolant_max_c: 80.0,
            // The die's fast time constant is ~0.3 s: a 700 W step moves it ~25 K within a
            // second; 50 K/s is beyond that.
            gpu_max_rate_k_per_s: 50.0,
            // Coolant has a thermal mass of many litres: a few K/s is already a burst pipe.
            coolant_max_rate_k_per_s: 5.0,
            stuck_after_s: 600.0,
            stuck_pump_change: 10.0,
            stuck_power_change_w: 150.0,
        }
    }
}

/// `[control.supervisor]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Warnings (not leaks, not thermal emergencies) are suppressed this long after start, s.
    pub startup_suppress_s: f64,
    /// Boot gives up waiting for the required inputs after this long and goes to failsafe, s.
    pub boot_timeout_s: f64,
    /// Inputs must be valid this long before failsafe returns to running, s.
    pub recovery_hold_s: f64,
    /// Emergency when a core is within this of its slowdown threshold, K.
    pub emergency_margin_k: f64,
    /// Emergency ends once every GPU is this far below the emergency threshold, K.
    pub emergency_clear_k: f64,
    /// Alarm when the supply temperature is within this of the room's dew point, K.
    pub dew_point_margin_k: f64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            startup_suppress_s: 30.0,
            boot_timeout_s: 30.0,
            recovery_hold_s: 5.0,
            emergency_margin_k: 0.0,
            emergency_clear_k: 3.0,
            dew_point_margin_k: 2.0,
        }
    }
}

impl ControlConfig {
    /// The one rule for a set point, shared by the configuration (`check-config`, `run`,
    /// reload) and the MQTT command path: within `setpoint_min..=setpoint_max`, and at most
    /// the lowest slowdown threshold of the GPUs it drives minus `slowdown_margin_k`. A set
    /// point above that walks the GPUs into their own thermal slowdown and the emergency
    /// path, cycling. `lowest_slowdown` is `None` when no GPU is known, which leaves only
    /// the range. The error says what was expected, for a message naming the key or command.
    pub fn check_setpoint(&self, celsius: f64, lowest_slowdown: Option<f64>) -> Result<(), String> {
        let (lo, hi) = (self.setpoint_min, self.setpoint_max);
        if !(celsius.is_finite() && celsius >= lo && celsius <= hi) {
            return Err(format!("set point {celsius} °C is outside {lo}..={hi} °C"));
        }
        if let Some(slowdown) = lowest_slowdown {
            let ceiling = slowdown - self.slowdown_margin_k;
            if celsius > ceiling {
                return Err(format!(
                    "set point {celsius} °C is above {ceiling} °C: the lowest GPU slowdown threshold ({slowdown} °C) minus the {} K margin (control.slowdown_margin_k)",
                    self.slowdown_margin_k
                ));
            }
        }
        Ok(())
    }

    /// The control period.
    pub fn period(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.period_ms)
    }

    /// The CDU roles the loop needs: the required inputs plus the pump actuator and its
    /// feedback. A CDU profile lacking one is refused at start-up.
    pub fn required_roles(&self) -> Vec<Role> {
        let mut roles = self.plausibility.required.clone();
        for r in [Role::PumpSpeedCommand, Role::PumpSpeedFeedback] {
            if !roles.contains(&r) {
                roles.push(r);
            }
        }
        roles
    }

    /// Whether a clean exit puts the GPUs' original power limits back.
    pub fn restore_limits_on_exit(&self) -> bool {
        self.power_cap.on_shutdown == OnShutdown::Restore
    }

    // One check per key in the order of the section, so the list reads like the file;
    // splitting it would scatter the keys over functions named after nothing.
    /// Checks every key; issues name the key (`control.pump.min_speed`) and what was expected.
    pub fn validate(&self, key: &str, issues: &mut Issues) {
        let k = |s: &str| format!("{key}.{s}");
        // The daemon feeds systemd's watchdog once per tick, and the shipped unit has
        // WatchdogSec=10s: two pings may lie up to two periods apart (a tick that overruns
        // skips the next), so a period above half the watchdog gets a healthy daemon killed.
        issues.check(
            (10..=MAX_PERIOD_MS).contains(&self.period_ms),
            k("period_ms"),
            format!(
                "a control period between 10 and {MAX_PERIOD_MS} ms (the systemd unit's \
                 WatchdogSec=10s is fed once per tick), got {}",
                self.period_ms
            ),
        );
        issues.range(
            self.setpoint_min,
            0.0,
            120.0,
            k("setpoint_min"),
            "a temperature in °C",
        );
        issues.range(
            self.setpoint_max,
            0.0,
            120.0,
            k("setpoint_max"),
            "a temperature in °C",
        );
        issues.check(
            self.setpoint_min <= self.setpoint_max,
            k("setpoint_max"),
            format!(
                "at least setpoint_min ({}), got {}",
                self.setpoint_min, self.setpoint_max
            ),
        );
        issues.range(
            self.setpoint,
            self.setpoint_min,
            self.setpoint_max,
            k("setpoint"),
            "a set point in °C between setpoint_min and setpoint_max,",
        );
        issues.range(
            self.slowdown_margin_k,
            0.0,
            50.0,
            k("slowdown_margin_k"),
            "a margin in K",
        );
        issues.check(
            self.max_sample_age_ms >= self.period_ms,
            k("max_sample_age_ms"),
            format!(
                "at least one control period ({} ms), got {}",
                self.period_ms, self.max_sample_age_ms
            ),
        );

        let p = &self.pid;
        issues.range(p.kp, 0.0, 1000.0, k("pid.kp"), "a gain in % per K");
        issues.range(p.ki, 0.0, 1000.0, k("pid.ki"), "a gain in % per K·s");
        issues.range(p.kd, 0.0, 10_000.0, k("pid.kd"), "a gain in % per K/s");
        issues.range(
            p.derivative_filter_s,
            0.0,
            600.0,
            k("pid.derivative_filter_s"),
            "seconds",
        );
        if let Some(t) = p.tracking_time_s {
            issues.range(t, 1e-3, 3600.0, k("pid.tracking_time_s"), "seconds");
        }
        issues.check(
            p.kp > 0.0 || p.ki > 0.0,
            k("pid.kp"),
            "a positive kp or ki (with both zero the pump never moves)",
        );

        let u = &self.pump;
        issues.range(u.min_speed, 0.0, 100.0, k("pump.min_speed"), "a speed in %");
        issues.range(u.max_speed, 0.0, 100.0, k("pump.max_speed"), "a speed in %");
        issues.check(
            u.min_speed < u.max_speed,
            k("pump.max_speed"),
            format!(
                "more than pump.min_speed ({}), got {}",
                u.min_speed, u.max_speed
            ),
        );
        for (name, v) in [
            ("failsafe_speed", u.failsafe_speed),
            ("start_speed", u.start_speed),
        ] {
            issues.range(
                v,
                u.min_speed,
                u.max_speed,
                k(&format!("pump.{name}")),
                "a speed in % between pump.min_speed and pump.max_speed,",
            );
        }
        issues.range(
            u.slew_up_per_s,
            1e-3,
            1000.0,
            k("pump.slew_up_per_s"),
            "a rate in %/s",
        );
        issues.range(
            u.slew_down_per_s,
            1e-3,
            1000.0,
            k("pump.slew_down_per_s"),
            "a rate in %/s",
        );
        issues.range(
            u.follow_tolerance,
            0.1,
            50.0,
            k("pump.follow_tolerance"),
            "a speed difference in %",
        );
        issues.range(
            u.follow_timeout_s,
            0.1,
            600.0,
            k("pump.follow_timeout_s"),
            "seconds",
        );
        issues.check(
            u.write_failures_alarm >= 1,
            k("pump.write_failures_alarm"),
            "at least 1 failed write",
        );
        issues.range(
            u.write_deadband,
            0.0,
            10.0,
            k("pump.write_deadband"),
            "a speed difference in %",
        );
        issues.range(u.refresh_s, 0.1, 3600.0, k("pump.refresh_s"), "seconds");

        let f = &self.feed_forward;
        issues.range(
            f.non_gpu_w_per_host,
            0.0,
            100_000.0,
            k("feed_forward.non_gpu_w_per_host"),
            "a power in W",
        );
        issues.range(
            f.non_gpu_fraction,
            0.0,
            1.0,
            k("feed_forward.non_gpu_fraction"),
            "a share of the GPU power",
        );
        issues.check(
            f.max_power_age_ms >= self.period_ms && f.max_power_age_ms <= 60_000,
            k("feed_forward.max_power_age_ms"),
            format!(
                "between one control period ({} ms) and 60000 ms, got {}",
                self.period_ms, f.max_power_age_ms
            ),
        );
        issues.range(
            f.slew_up_per_s,
            1e-3,
            1000.0,
            k("feed_forward.slew_up_per_s"),
            "a rate in %/s",
        );
        issues.range(
            f.slew_down_per_s,
            1e-3,
            1000.0,
            k("feed_forward.slew_down_per_s"),
            "a rate in %/s",
        );
        issues.range(
            f.hold_down_s,
            0.0,
            3600.0,
            k("feed_forward.hold_down_s"),
            "seconds (0: fall at once)",
        );
        issues.range(
            f.anticipate_lead_s,
            0.0,
            600.0,
            k("feed_forward.anticipate_lead_s"),
            "seconds (0: no anticipation)",
        );
        issues.range(
            f.adapt_time_s,
            0.0,
            86_400.0,
            k("feed_forward.adapt_time_s"),
            "seconds (0: no learning)",
        );
        issues.range(
            f.correction_min,
            0.05,
            1.0,
            k("feed_forward.correction_min"),
            "a factor",
        );
        issues.range(
            f.correction_max,
            1.0,
            20.0,
            k("feed_forward.correction_max"),
            "a factor",
        );
        issues.range(
            f.aim_above_k,
            0.0,
            2.0,
            k("feed_forward.aim_above_k"),
            "a margin in K above the set point",
        );
        issues.range(
            f.adapt_band_k,
            0.0,
            10.0,
            k("feed_forward.adapt_band_k"),
            "a band in K",
        );
        if let Some(v) = f.flow_at_full_speed_lpm {
            issues.range(
                v,
                0.1,
                100_000.0,
                k("feed_forward.flow_at_full_speed_lpm"),
                "a flow in l/min",
            );
        }

        let c = &self.power_cap;
        issues.range(c.band_k, 0.0, 30.0, k("power_cap.band_k"), "a band in K");
        issues.range(c.kp, 0.0, 1000.0, k("power_cap.kp"), "a gain in W per K");
        issues.range(c.ki, 0.0, 1000.0, k("power_cap.ki"), "a gain in W per K·s");
        issues.range(
            c.min_percent,
            0.0,
            100.0,
            k("power_cap.min_percent"),
            "a share in %",
        );
        issues.range(
            c.lower_w_per_s,
            0.1,
            10_000.0,
            k("power_cap.lower_w_per_s"),
            "a rate in W/s",
        );
        issues.range(
            c.restore_w_per_s,
            0.01,
            10_000.0,
            k("power_cap.restore_w_per_s"),
            "a rate in W/s",
        );
        issues.range(
            c.failsafe_percent,
            0.0,
            100.0,
            k("power_cap.failsafe_percent"),
            "a share in %",
        );
        issues.range(
            c.saturation_margin,
            0.0,
            20.0,
            k("power_cap.saturation_margin"),
            "a speed difference in %",
        );
        issues.range(
            c.write_deadband_w,
            0.0,
            100.0,
            k("power_cap.write_deadband_w"),
            "a power in W",
        );
        issues.range(
            c.readback_tolerance_w,
            0.0,
            100.0,
            k("power_cap.readback_tolerance_w"),
            "a power in W",
        );
        issues.check(
            c.write_failures_alarm >= 1,
            k("power_cap.write_failures_alarm"),
            "at least 1 failed write",
        );

        let q = &self.plausibility;
        issues.check(
            q.hold_ticks <= 100,
            k("plausibility.hold_ticks"),
            format!("at most 100 ticks, got {}", q.hold_ticks),
        );
        issues.range(
            q.gpu_min_c,
            -50.0,
            100.0,
            k("plausibility.gpu_min_c"),
            "a temperature in °C",
        );
        issues.range(
            q.gpu_max_c,
            q.gpu_min_c,
            200.0,
            k("plausibility.gpu_max_c"),
            "a temperature in °C above gpu_min_c,",
        );
        issues.range(
            q.coolant_min_c,
            -50.0,
            100.0,
            k("plausibility.coolant_min_c"),
            "a temperature in °C",
        );
        issues.range(
            q.coolant_max_c,
            q.coolant_min_c,
            150.0,
            k("plausibility.coolant_max_c"),
            "a temperature in °C above coolant_min_c,",
        );
        issues.range(
            q.gpu_max_rate_k_per_s,
            0.01,
            1e4,
            k("plausibility.gpu_max_rate_k_per_s"),
            "a rate in K/s",
        );
        issues.range(
            q.coolant_max_rate_k_per_s,
            0.01,
            1e4,
            k("plausibility.coolant_max_rate_k_per_s"),
            "a rate in K/s",
        );
        issues.range(
            q.stuck_after_s,
            1.0,
            1e6,
            k("plausibility.stuck_after_s"),
            "seconds",
        );
        issues.range(
            q.stuck_pump_change,
            0.1,
            100.0,
            k("plausibility.stuck_pump_change"),
            "a speed change in %",
        );
        issues.range(
            q.stuck_power_change_w,
            1.0,
            1e4,
            k("plausibility.stuck_power_change_w"),
            "a power change in W",
        );
        for (i, r) in q.required.iter().enumerate() {
            issues.check(
                !matches!(r, Role::PumpSpeedCommand | Role::Watchdog),
                format!("{key}.plausibility.required[{i}]"),
                format!("a role the controller reads, not the output `{r}`"),
            );
        }

        let s = &self.supervisor;
        issues.range(
            s.startup_suppress_s,
            0.0,
            3600.0,
            k("supervisor.startup_suppress_s"),
            "seconds",
        );
        issues.range(
            s.boot_timeout_s,
            0.0,
            3600.0,
            k("supervisor.boot_timeout_s"),
            "seconds",
        );
        issues.range(
            s.recovery_hold_s,
            0.0,
            3600.0,
            k("supervisor.recovery_hold_s"),
            "seconds",
        );
        issues.range(
            s.emergency_margin_k,
            0.0,
            30.0,
            k("supervisor.emergency_margin_k"),
            "a margin in K",
        );
        issues.range(
            s.emergency_clear_k,
            0.0,
            30.0,
            k("supervisor.emergency_clear_k"),
            "a margin in K",
        );
        issues.range(
            s.dew_point_margin_k,
            0.0,
            30.0,
            k("supervisor.dew_point_margin_k"),
            "a margin in K",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues_of(text: &str) -> Vec<crate::validate::ConfigIssue> {
        let cfg: ControlConfig = toml::from_str(text).expect("parses");
        let mut issues = Issues::default();
        cfg.validate("control", &mut issues);
        issues.into_vec()
    }

    #[test]
    fn defaults_are_valid_and_empty_section_parses() {
        assert!(issues_of("").is_empty());
        assert_eq!(
            toml::from_str::<ControlConfig>("").expect("parses"),
            ControlConfig::default()
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let issues = issues_of("setpoint = 95.0\n[pump]\nmin_speed = 80.0\nmax_speed = 50.0\n");
        let keys: Vec<_> = issues.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"control.setpoint"), "{issues:?}");
        assert!(keys.contains(&"control.pump.max_speed"), "{issues:?}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<ControlConfig>("setpiont = 60.0").is_err());
        assert!(toml::from_str::<ControlConfig>("[pid]\nkq = 1.0").is_err());
        let c: ControlConfig = toml::from_str(
            "controlled_variable = \"hbm_margin\"\n[plausibility]\nrequired = [\"flow\"]",
        )
        .expect("parses");
        assert_eq!(c.controlled_variable, ControlledVariable::HbmMargin);
        assert_eq!(c.plausibility.required, vec![Role::Flow]);
    }
}
