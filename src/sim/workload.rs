//! Workloads: how hard each simulated GPU is asked to work over time, as a load fraction
//! (0 = idle, 1 = full load). The GPU profile turns a load into a power demand
//! (`idle_w + load · (full_load_w − idle_w)`), and the power cap limits what is drawn.

use serde::Deserialize;

/// One segment of a trace workload.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// How long the segment lasts, seconds.
    pub duration_s: f64,
    /// The load during the segment (during the "on" part of a burst).
    pub load: f64,
    /// With a period: bursts of `load` for `duty · period_s`, idle for the rest.
    #[serde(default)]
    pub period_s: Option<f64>,
    /// Share of each period spent at `load` (0..1); defaults to one half.
    #[serde(default)]
    pub duty: Option<f64>,
}

/// `[simulator.workload]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Workload {
    /// Every GPU idle.
    Idle,
    /// Every GPU at full load.
    Full,
    /// A constant load.
    Constant { load: f64 },
    /// `from` until `at_s`, then `to`.
    Step { at_s: f64, from: f64, to: f64 },
    /// Bursts of `high` for `duty · period_s`, `low` otherwise. GPUs are staggered by
    /// `stagger_s` each, so a host's GPUs do not all switch at once.
    Bursts {
        period_s: f64,
        duty: f64,
        high: f64,
        #[serde(default)]
        low: f64,
        #[serde(default)]
        stagger_s: f64,
    },
    /// A sequence of segments; after the last one the trace repeats when `repeat`, else the
    /// last segment's load holds.
    Trace {
        segments: Vec<Segment>,
        #[serde(default)]
        repeat: bool,
    },
    /// The benchmark trace: idle 60 s, full load 300 s, bursts (20 s period, half duty) 300 s,
    /// idle 120 s, repeated.
    #[default]
    Benchmark,
}

impl Workload {
    /// The benchmark trace as segments (what `kind = "benchmark"` runs).
    pub fn benchmark_segments() -> Vec<Segment> {
        let seg = |duration_s, load, period_s| Segment {
            duration_s,
            load,
            period_s,
            duty: None,
        };
        vec![
            seg(60.0, 0.0, None),
            seg(300.0, 1.0, None),
            seg(300.0, 1.0, Some(20.0)),
            seg(120.0, 0.0, None),
        ]
    }

    /// The load of GPU number `gpu` (counted across the plant) at `t_s` seconds of plant time,
    /// clamped to 0..=1.
    pub fn load(&self, gpu: usize, t_s: f64) -> f64 {
        let l = match self {
            Workload::Idle => 0.0,
            Workload::Full => 1.0,
            Workload::Constant { load } => *load,
            Workload::Step { at_s, from, to } => {
                if t_s < *at_s {
                    *from
                } else {
                    *to
                }
            }
            Workload::Bursts {
                period_s,
                duty,
                high,
                low,
                stagger_s,
            } => {
                if burst_on(t_s + gpu as f64 * stagger_s, *period_s, *duty) {
                    *high
                } else {
                    *low
                }
            }
            Workload::Trace { segments, repeat } => trace_load(segments, *repeat, t_s),
            Workload::Benchmark => trace_load(&Self::benchmark_segments(), true, t_s),
        };
        l.clamp(0.0, 1.0)
    }

    /// Checks the parameters; every issue names its key under `key`.
    pub fn validate(&self, key: &str, issues: &mut crate::validate::Issues) {
        let load = |v: f64, k: &str, issues: &mut crate::validate::Issues| {
            issues.range(v, 0.0, 1.0, format!("{key}.{k}"), "a load fraction")
        };
        match self {
            Workload::Idle | Workload::Full | Workload::Benchmark => {}
            Workload::Constant { load: l } => load(*l, "load", issues),
            Workload::Step { at_s, from, to } => {
                issues.range(*at_s, 0.0, 1e9, format!("{key}.at_s"), "a time in seconds");
                load(*from, "from", issues);
                load(*to, "to", issues);
            }
            Workload::Bursts {
                period_s,
                duty,
                high,
                low,
                stagger_s,
            } => {
                issues.range(
                    *period_s,
                    0.1,
                    1e6,
                    format!("{key}.period_s"),
                    "a period in seconds",
                );
                issues.range(
                    *duty,
                    0.0,
                    1.0,
                    format!("{key}.duty"),
                    "a share of the period",
                );
                load(*high, "high", issues);
                load(*low, "low", issues);
                issues.range(*stagger_s, 0.0, 1e6, format!("{key}.stagger_s"), "seconds");
            }
            Workload::Trace { segments, .. } => {
                issues.check(
                    !segments.is_empty(),
                    format!("{key}.segments"),
                    "at least one segment",
                );
                for (i, s) in segments.iter().enumerate() {
                    let k = format!("{key}.segments[{i}]");
                    issues.range(s.duration_s, 0.1, 1e9, format!("{k}.duration_s"), "seconds");
                    issues.range(s.load, 0.0, 1.0, format!("{k}.load"), "a load fraction");
                    if let Some(p) = s.period_s {
                        issues.range(p, 0.1, 1e6, format!("{k}.period_s"), "a period in seconds");
                    }
                    if let Some(d) = s.duty {
                        issues.range(d, 0.0, 1.0, format!("{k}.duty"), "a share of the period");
                    }
                }
            }
        }
    }
}

fn burst_on(t_s: f64, period_s: f64, duty: f64) -> bool {
    t_s.rem_euclid(period_s) < duty * period_s
}

fn trace_load(segments: &[Segment], repeat: bool, t_s: f64) -> f64 {
    let total: f64 = segments.iter().map(|s| s.duration_s).sum();
    if segments.is_empty() || total <= 0.0 {
        return 0.0;
    }
    let mut t = if repeat { t_s.rem_euclid(total) } else { t_s };
    for s in segments {
        if t < s.duration_s {
            return match s.period_s {
                Some(p) if !burst_on(t, p, s.duty.unwrap_or(0.5)) => 0.0,
                _ => s.load,
            };
        }
        t -= s.duration_s;
    }
    segments.last().map_or(0.0, |s| s.load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_switches_at_its_time() {
        let w = Workload::Step {
            at_s: 20.0,
            from: 0.0,
            to: 1.0,
        };
        assert_eq!(w.load(0, 19.9), 0.0);
        assert_eq!(w.load(0, 20.0), 1.0);
    }

    #[test]
    fn benchmark_goes_idle_full_bursts_idle_and_repeats() {
        let w = Workload::Benchmark;
        assert_eq!(w.load(0, 30.0), 0.0);
        assert_eq!(w.load(0, 100.0), 1.0);
        assert_eq!(w.load(0, 365.0), 1.0); // first half of a burst period
        assert_eq!(w.load(0, 375.0), 0.0); // second half
        assert_eq!(w.load(0, 700.0), 0.0);
        assert_eq!(w.load(0, 780.0 + 100.0), 1.0);
    }

    #[test]
    fn bursts_are_staggered_per_gpu() {
        let w = Workload::Bursts {
            period_s: 10.0,
            duty: 0.5,
            high: 1.0,
            low: 0.1,
            stagger_s: 5.0,
        };
        assert_eq!(w.load(0, 1.0), 1.0);
        assert_eq!(w.load(1, 1.0), 0.1);
    }

    #[test]
    fn parses_from_toml_and_rejects_unknown_keys() {
        let w: Workload =
            toml::from_str("kind = \"step\"\nat_s = 5\nfrom = 0\nto = 1\n").expect("valid step");
        assert_eq!(w.load(0, 6.0), 1.0);
        assert!(
            toml::from_str::<Workload>("kind = \"step\"\nat_s = 5\nfrom = 0\nto = 1\nx = 1\n")
                .is_err()
        );
    }
}
