//! Heat-load feed-forward for the pump loop.
//!
//! A GPU's power jumps within milliseconds; its temperature follows over seconds (the cold
//! plate's time constant: ~25 s on the H100 capture). The feedback loop only sees the heat once
//! the temperature has moved. This module reads the power the GPUs draw now and tells the PID
//! which pump speed that load needs at steady state, from the fitted plate model:
//!
//! ```text
//!   T_core = T_supply + P · (R_dc + R_pc(flow)),   R_pc(flow) = R_pc_ref · (flow_ref / flow)^n
//!   ⇒ flow per GPU = flow_ref · (R_pc_ref / ((SP − T_supply)/P − R_dc))^(1/n)
//!   pump speed = total flow / (flow per % of speed)          (affinity law: flow ∝ speed)
//! ```
//!
//! `P` is the hottest-loaded GPU's power (the plates share the flow and the loop holds the
//! hottest GPU). Non-GPU heat on the same loop (`non_gpu_w_per_host`) is assumed to sit on
//! plates that need flow in proportion to their heat, so it scales the total flow by
//! `Q / Q_gpu`. The flow per % of speed is learnt from the CDU's own flow and pump-feedback
//! readings; before the first reading the configured `flow_at_full_speed_lpm` stands in.
//!
//! A site whose plates, pipes or pump differ from the fixtures still converges: whenever the
//! loop sits at its set point, a bounded multiplicative correction is adapted slowly towards
//! what the loop actually needed (the PID's applied output over the model's speed). Every
//! change of the correction moves the PID's integrator the opposite way, so learning never
//! moves the pump.
//!
//! The feed-forward switches itself off (bumplessly: the integrator takes over its share) when
//! a power reading of one of the CDU's GPUs is missing or stale, or the supply temperature is
//! unknown, and says why in the tick's [`crate::model::FeedForwardReport`].

use super::config::FeedForwardConfig;
use crate::model::Mono;

/// The plate model of the GPUs on one CDU, from the `[thermal]` table of their profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlateModel {
    /// Die → cold plate resistance, K/W.
    pub die_to_plate_k_per_w: f64,
    /// Cold plate → coolant resistance at `reference_flow_lpm`, K/W.
    pub plate_to_coolant_k_per_w: f64,
    /// Per-GPU flow at which `plate_to_coolant_k_per_w` was fitted, l/min.
    pub reference_flow_lpm: f64,
    /// `n` in `R_pc ∝ flow^-n`.
    pub flow_exponent: f64,
}

impl PlateModel {
    fn is_physical(&self) -> bool {
        [
            self.die_to_plate_k_per_w,
            self.plate_to_coolant_k_per_w,
            self.reference_flow_lpm,
            self.flow_exponent,
        ]
        .iter()
        .all(|v| v.is_finite() && *v > 0.0)
    }

    /// The per-GPU flow (l/min) that holds a core at `sp` with `power` W on the plate and
    /// coolant at `supply`; `None` when no flow can (the die's own rise already exceeds the
    /// margin).
    pub fn flow_for(&self, power: f64, supply: f64, sp: f64) -> Option<f64> {
        if power <= 0.0 {
            return Some(0.0);
        }
        let r_pc = (sp - supply) / power - self.die_to_plate_k_per_w;
        if r_pc.is_nan() || r_pc <= 0.0 {
            return None;
        }
        let f = self.reference_flow_lpm
            * (self.plate_to_coolant_k_per_w / r_pc).powf(1.0 / self.flow_exponent);
        f.is_finite().then_some(f)
    }
}

/// One GPU's power reading as the feed-forward sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerReading {
    /// The GPU, for the reason text.
    pub gpu: String,
    /// Watts and when they were read; `None`: no power in the newest sample.
    pub power: Option<(f64, Mono)>,
}

/// What the feed-forward sees in one tick.
#[derive(Debug, Clone)]
pub struct FfInput<'a> {
    pub now: Mono,
    pub dt: f64,
    pub setpoint: f64,
    /// The CDU's GPUs (from the inventory), in any order.
    pub powers: &'a [PowerReading],
    /// Hosts on this CDU, for the non-GPU share.
    pub hosts: usize,
    pub supply: Option<f64>,
    pub flow: Option<f64>,
    pub pump_feedback: Option<f64>,
    /// The pump loop's output limits.
    pub out_min: f64,
    pub out_max: f64,
}

/// What the feed-forward decided in one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct FfStep {
    /// The value for the PID's feed-forward input, % pump speed (0 when disengaged).
    pub ff: f64,
    pub engaged: bool,
    /// Why it is disengaged.
    pub reason: Option<String>,
    /// Σ GPU power + non-GPU share, W (when every reading is there).
    pub heat_load_w: Option<f64>,
    /// The model's speed for that load before correction, %: the speed that holds the set
    /// point itself (the term aims `aim_above_k` above it).
    pub model_speed: Option<f64>,
}

/// The feed-forward's state on one CDU.
#[derive(Debug, Clone)]
pub struct FeedForward {
    model: Option<PlateModel>,
    /// Learnt flow per % of pump speed, l/min per %.
    flow_per_pct: Option<f64>,
    correction: f64,
    /// The value last handed to the PID (slew-limited), %.
    ff: f64,
    engaged: bool,
    /// The model's speeds this tick, for the learning: the one the term aims at and the one
    /// that holds the set point itself, %.
    last_model_speed: Option<(f64, f64)>,
    /// Since when the target has been below the value handed to the PID.
    low_since: Option<Mono>,
}

impl Default for FeedForward {
    fn default() -> Self {
        FeedForward {
            model: None,
            flow_per_pct: None,
            correction: 1.0,
            ff: 0.0,
            engaged: false,
            last_model_speed: None,
            low_since: None,
        }
    }
}

impl FeedForward {
    pub fn set_model(&mut self, model: Option<PlateModel>) {
        self.model = model.filter(PlateModel::is_physical);
    }

    pub fn model(&self) -> Option<PlateModel> {
        self.model
    }

    /// The learnt multiplicative correction of the model's speed.
    pub fn correction(&self) -> f64 {
        self.correction
    }

    /// The value currently handed to the PID.
    pub fn output(&self) -> f64 {
        self.ff
    }

    /// Computes this tick's feed-forward. The caller passes the result to the PID and, when
    /// `engaged` flipped or `ff` jumped for any reason other than the load, shifts the PID's
    /// integrator by [`FeedForward::output`]'s change (see `Pid::shift_feed_forward`): the
    /// returned `ff` already includes the slew limit.
    pub fn step(&mut self, cfg: &FeedForwardConfig, input: &FfInput<'_>) -> FfStep {
        // Learn the pump's flow per % whenever both readings are there (affinity law).
        if let (Some(flow), Some(fb)) = (input.flow, input.pump_feedback) {
            if fb >= 5.0 && flow.is_finite() && flow > 0.0 {
                let k = flow / fb;
                self.flow_per_pct = Some(match self.flow_per_pct {
                    // A few ticks of smoothing: flow meters are noisy, pumps lag their feedback.
                    Some(old) => old + (k - old) * (input.dt / 5.0).min(1.0),
                    None => k,
                });
            }
        }
        let off = |why: String| FfStep {
            ff: 0.0,
            engaged: false,
            reason: Some(why),
            heat_load_w: None,
            model_speed: None,
        };
        let verdict = self.speed(cfg, input);
        let (speed, at_sp, heat) = match (cfg.enabled, verdict) {
            (false, _) => {
                self.disengage();
                return off("disabled in the configuration".into());
            }
            (true, Err(why)) => {
                self.disengage();
                return off(why);
            }
            (true, Ok(v)) => v,
        };
        let target = (self.correction * speed).clamp(input.out_min, input.out_max);
        // A lower load must last `hold_down_s` before the term falls: a training iteration's
        // communication dip, caught by a sample or two, would otherwise pull the pump down and
        // push it up again every few seconds (pump travel and energy for nothing).
        let held = if target < self.ff {
            let since = *self.low_since.get_or_insert(input.now);
            input.now.saturating_sub(since).as_secs_f64() < cfg.hold_down_s
        } else {
            self.low_since = None;
            false
        };
        let next = if self.engaged && held {
            self.ff
        } else if self.engaged {
            target.clamp(
                self.ff - cfg.slew_down_per_s * input.dt,
                self.ff + cfg.slew_up_per_s * input.dt,
            )
        } else {
            // Engaging: the PID's integrator is shifted by the caller, so the full value may
            // apply at once without moving the pump.
            target
        };
        self.ff = next;
        self.engaged = true;
        self.last_model_speed = Some((speed, at_sp));
        FfStep {
            ff: next,
            engaged: true,
            reason: None,
            heat_load_w: Some(heat),
            model_speed: Some(at_sp),
        }
    }

    fn disengage(&mut self) {
        self.engaged = false;
        self.ff = 0.0;
        self.last_model_speed = None;
        self.low_since = None;
    }

    /// Adapts the correction towards what the loop needed: `applied` is the pump command the
    /// loop settled on. Call only while the loop is steady at its set point and unsaturated.
    /// Returns the change of the feed-forward value, which the caller must take out of the
    /// PID's integrator so that the pump does not move.
    pub fn adapt(&mut self, cfg: &FeedForwardConfig, dt: f64, applied: f64) -> f64 {
        let Some((speed, at_sp)) = self.last_model_speed.filter(|(s, p)| *s > 1.0 && *p > 1.0)
        else {
            return 0.0;
        };
        if !self.engaged || cfg.adapt_time_s <= 0.0 {
            return 0.0;
        }
        // Learnt against the speed that holds the set point itself, so that the correction
        // describes the plant and does not undo `aim_above_k`.
        let wanted = applied / at_sp;
        let k = (dt / cfg.adapt_time_s).min(1.0);
        let next = (self.correction + (wanted - self.correction) * k)
            .clamp(cfg.correction_min, cfg.correction_max);
        let delta = (next - self.correction) * speed;
        self.correction = next;
        self.ff += delta;
        delta
    }

    /// The model's speed for the term (aimed `aim_above_k` above the set point), its speed at
    /// the set point itself, and the heat load; or why there are none.
    fn speed(
        &self,
        cfg: &FeedForwardConfig,
        input: &FfInput<'_>,
    ) -> Result<(f64, f64, f64), String> {
        let Some(model) = self.model else {
            return Err("no thermal model for this CDU's GPUs (profile without [thermal])".into());
        };
        if input.powers.is_empty() {
            return Err("no GPUs on this CDU".into());
        }
        let max_age = cfg.max_power_age_ms as f64 / 1000.0;
        let mut total = 0.0;
        let mut hottest: f64 = 0.0;
        for r in input.powers {
            let Some((w, at)) = r.power else {
                return Err(format!("no power reading from {}", r.gpu));
            };
            let age = input.now.saturating_sub(at).as_secs_f64();
            if age > max_age {
                return Err(format!(
                    "power reading of {} is {age:.1} s old (max_power_age_ms {})",
                    r.gpu, cfg.max_power_age_ms
                ));
            }
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!(
                    "power reading of {} is not plausible: {w} W",
                    r.gpu
                ));
            }
            total += w;
            hottest = hottest.max(w);
        }
        let Some(supply) = input.supply else {
            return Err("supply temperature unknown".into());
        };
        let flow_per_pct = match (self.flow_per_pct, cfg.flow_at_full_speed_lpm) {
            (Some(k), _) => k,
            (None, Some(full)) => full / 100.0,
            (None, None) => {
                return Err(
                    "no flow reading yet to scale the model (set flow_at_full_speed_lpm)".into(),
                )
            }
        };
        let non_gpu = cfg.non_gpu_w_per_host * input.hosts as f64 + cfg.non_gpu_fraction * total;
        let heat = total + non_gpu;
        let speed_for = |target: f64| match model.flow_for(hottest, supply, target) {
            Some(per_gpu) => {
                let share = if total > 0.0 { heat / total } else { 1.0 };
                per_gpu * input.powers.len() as f64 * share / flow_per_pct
            }
            // No flow holds that temperature at this load: ask for everything.
            None => input.out_max,
        };
        let (speed, at_sp) = (
            speed_for(input.setpoint + cfg.aim_above_k),
            speed_for(input.setpoint),
        );
        if !(speed.is_finite() && at_sp.is_finite()) {
            return Err("the model gave no finite speed".into());
        }
        Ok((speed, at_sp, heat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> PlateModel {
        PlateModel {
            die_to_plate_k_per_w: 0.030701,
            plate_to_coolant_k_per_w: 0.028948,
            reference_flow_lpm: 2.0,
            flow_exponent: 0.8,
        }
    }

    #[test]
    fn flow_inverts_the_plate_model() {
        let m = h100();
        let f = m.flow_for(700.0, 30.0, 72.0).expect("reachable");
        // Forward: the core temperature at that flow is the set point.
        let r_pc = m.plate_to_coolant_k_per_w * (m.reference_flow_lpm / f).powf(0.8);
        let core = 30.0 + 700.0 * (m.die_to_plate_k_per_w + r_pc);
        assert!((core - 72.0).abs() < 1e-9, "{core}");
        // The die's own rise (700 W · 0.0307 K/W = 21.5 K) does not fit in 15 K.
        assert_eq!(m.flow_for(700.0, 50.0, 65.0), None);
    }

    fn input<'a>(powers: &'a [PowerReading], now: Mono) -> FfInput<'a> {
        FfInput {
            now,
            dt: 1.0,
            setpoint: 72.0,
            powers,
            hosts: 1,
            supply: Some(30.0),
            flow: Some(4.0),
            pump_feedback: Some(50.0),
            out_min: 20.0,
            out_max: 100.0,
        }
    }

    #[test]
    fn stale_power_disengages_with_the_gpu_named() {
        let cfg = FeedForwardConfig::default();
        let mut ff = FeedForward::default();
        ff.set_model(Some(h100()));
        let t0 = Mono::from_secs_f64(10.0);
        let p = vec![PowerReading {
            gpu: "node01/gpu0".into(),
            power: Some((700.0, t0)),
        }];
        assert!(ff.step(&cfg, &input(&p, t0)).engaged);
        let late = Mono::from_secs_f64(10.0 + cfg.max_power_age_ms as f64 / 1000.0 + 0.5);
        let s = ff.step(&cfg, &input(&p, late));
        assert!(!s.engaged);
        assert_eq!(s.ff, 0.0);
        let why = s.reason.expect("a reason");
        assert!(why.contains("node01/gpu0") && why.contains("old"), "{why}");
    }

    #[test]
    fn correction_learns_what_the_loop_needed_within_bounds() {
        let cfg = FeedForwardConfig {
            aim_above_k: 0.0,
            ..FeedForwardConfig::default()
        };
        let mut ff = FeedForward::default();
        ff.set_model(Some(h100()));
        let t = Mono::from_secs_f64(1.0);
        let p = vec![PowerReading {
            gpu: "g".into(),
            power: Some((500.0, t)),
        }];
        let s = ff.step(&cfg, &input(&p, t));
        let speed = s.model_speed.expect("engaged");
        // The loop needs 30 % more than the model says: the correction goes there, and the
        // feed-forward's change is handed back for the integrator.
        let mut moved = 0.0;
        for _ in 0..(20.0 * cfg.adapt_time_s) as usize {
            moved += ff.adapt(&cfg, 1.0, 1.3 * speed);
        }
        assert!((ff.correction() - 1.3).abs() < 1e-3, "{}", ff.correction());
        assert!((moved - 0.3 * speed).abs() < 1e-2 * speed);
        // An impossible demand stays within the bounds.
        for _ in 0..(20.0 * cfg.adapt_time_s) as usize {
            ff.adapt(&cfg, 1.0, 100.0 * speed);
        }
        assert_eq!(ff.correction(), cfg.correction_max);
    }

    #[test]
    fn the_term_aims_above_the_set_point_but_learns_against_it() {
        let cfg = FeedForwardConfig::default();
        assert!(cfg.aim_above_k > 0.0);
        let m = h100();
        let mut ff = FeedForward::default();
        ff.set_model(Some(m));
        let t = Mono::from_secs_f64(1.0);
        let p = vec![PowerReading {
            gpu: "g".into(),
            power: Some((500.0, t)),
        }];
        let mut i = input(&p, t);
        i.out_min = 0.0;
        let s = ff.step(&cfg, &i);
        // The term's speed holds the core `aim_above_k` above the set point (input(): 72 °C,
        // 30 °C supply, 4 l/min at 50 % for one GPU); the report gives the set point's.
        let per_pct = 4.0 / 50.0;
        let at = |target: f64| m.flow_for(500.0, 30.0, target).expect("reachable") / per_pct;
        let aimed = at(72.0 + cfg.aim_above_k);
        assert!(
            aimed > 0.0 && aimed < 100.0,
            "{aimed}: clamped, nothing tested"
        );
        assert!((s.ff - aimed).abs() < 1e-9, "term {} for {aimed}", s.ff);
        assert_eq!(s.model_speed, Some(at(72.0)));
        assert!(aimed < at(72.0));
        // A loop that settles where the model says the set point needs has nothing to learn:
        // the margin is not taken for a model error.
        for _ in 0..(5.0 * cfg.adapt_time_s) as usize {
            ff.adapt(&cfg, 1.0, at(72.0));
        }
        assert!((ff.correction() - 1.0).abs() < 1e-9, "{}", ff.correction());
    }

    #[test]
    fn a_short_dip_in_power_does_not_move_the_term_a_long_one_does() {
        let cfg = FeedForwardConfig::default();
        let mut ff = FeedForward::default();
        ff.set_model(Some(h100()));
        let reading = |w: f64, t: f64| {
            vec![PowerReading {
                gpu: "g".into(),
                power: Some((w, Mono::from_secs_f64(t))),
            }]
        };
        fn at(p: &[PowerReading], t: f64) -> FfInput<'_> {
            let mut i = input(p, Mono::from_secs_f64(t));
            i.out_min = 0.0;
            i
        }
        let mut t = 1.0;
        let full = ff.step(&cfg, &at(&reading(700.0, t), t)).ff;
        // A training iteration's communication dip, caught by one or two samples.
        for _ in 0..2 {
            t += 1.0;
            let s = ff.step(&cfg, &at(&reading(70.0, t), t));
            assert_eq!(s.ff, full, "a {:.0} s dip moved the term", cfg.hold_down_s);
        }
        t += 1.0;
        assert_eq!(ff.step(&cfg, &at(&reading(700.0, t), t)).ff, full);
        // A checkpoint: the load stays low, so after the hold the term falls at its slew.
        let mut last = full;
        for _ in 0..(cfg.hold_down_s as usize + 3) {
            t += 1.0;
            last = ff.step(&cfg, &at(&reading(70.0, t), t)).ff;
        }
        assert!(
            last < full - cfg.slew_down_per_s,
            "held at {last:.1} % after a sustained drop from {full:.1} %"
        );
    }
}
