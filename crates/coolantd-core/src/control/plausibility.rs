//! Input plausibility: nothing reaches a loop before it passed these checks.
//!
//! Each input is tracked across ticks so that the checks that need history can run: rate of
//! change against the last accepted value, and "stuck" (no change for a long time while a
//! related value moved, e.g. flow that ignores a 10 % pump change). A rejected input may be
//! bridged by its last good value for `hold_ticks` ticks, so that one lost Modbus reply does
//! not trip failsafe, but no longer.

use crate::model::Mono;

/// Limits one input is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub min: f64,
    pub max: f64,
    /// Largest believable change per second, if checked.
    pub max_rate: Option<f64>,
    /// Stuck check: (seconds unchanged, change of the related value that must move it).
    pub stuck: Option<(f64, f64)>,
    /// Samples older than this are stale, seconds.
    pub max_age_s: f64,
    pub hold_ticks: u32,
}

/// The verdict on one input for this tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A fresh, plausible value.
    Good(f64),
    /// The latest reading was rejected for the reason given; the last good value is bridged.
    Held(f64, String),
    /// No usable value; the reason names what was wrong.
    Lost(String),
}

impl Verdict {
    pub fn value(&self) -> Option<f64> {
        match self {
            Verdict::Good(v) | Verdict::Held(v, _) => Some(*v),
            Verdict::Lost(_) => None,
        }
    }

    pub fn is_lost(&self) -> bool {
        matches!(self, Verdict::Lost(_))
    }
}

/// One input's history.
#[derive(Debug, Clone, Default)]
pub struct InputTrack {
    last_good: Option<(f64, Mono)>,
    last_seen_at: Option<Mono>,
    bad_ticks: u32,
    unchanged: Option<Unchanged>,
    verdict: Option<Verdict>,
}

#[derive(Debug, Clone, Copy)]
struct Unchanged {
    value: f64,
    since: Mono,
    related_lo: f64,
    related_hi: f64,
}

impl InputTrack {
    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    /// Judges this tick's reading: `Ok((value, taken_at))` or why there is none. `related`
    /// is the value whose change must move this one (for the stuck check).
    pub fn observe(
        &mut self,
        now: Mono,
        reading: Result<(f64, Mono), String>,
        related: Option<f64>,
        lim: &Limits,
    ) -> Verdict {
        let judged =
            reading.and_then(|(v, at)| self.judge(now, v, at, related, lim).map(|()| (v, at)));
        let verdict = match judged {
            Ok((v, at)) => {
                self.bad_ticks = 0;
                self.last_good = Some((v, at));
                Verdict::Good(v)
            }
            Err(why) => {
                self.bad_ticks = self.bad_ticks.saturating_add(1);
                match self.last_good {
                    Some((v, _)) if self.bad_ticks <= lim.hold_ticks => Verdict::Held(v, why),
                    _ => Verdict::Lost(why),
                }
            }
        };
        self.verdict = Some(verdict.clone());
        verdict
    }

    fn judge(
        &mut self,
        now: Mono,
        v: f64,
        at: Mono,
        related: Option<f64>,
        lim: &Limits,
    ) -> Result<(), String> {
        if !v.is_finite() {
            return Err(format!("reading {v} is not a number"));
        }
        let age = now.saturating_sub(at).as_secs_f64();
        if age > lim.max_age_s {
            return Err(format!(
                "stale: newest reading is {age:.1} s old (limit {:.1} s)",
                lim.max_age_s
            ));
        }
        if v < lim.min || v > lim.max {
            return Err(format!(
                "reading {v} outside the plausible range {}..={}",
                lim.min, lim.max
            ));
        }
        let new_sample = match self.last_seen_at {
            Some(t) => at > t,
            None => true,
        };
        self.last_seen_at = Some(self.last_seen_at.map_or(at, |t| t.max(at)));
        if let (Some(rate), Some((v0, t0))) = (lim.max_rate, self.last_good) {
            let dt = at.saturating_sub(t0).as_secs_f64();
            if dt > 0.0 && (v - v0).abs() / dt > rate {
                return Err(format!(
                    "changed {:.1}/s from {v0} to {v}, faster than the plausible {rate}/s",
                    (v - v0).abs() / dt
                ));
            }
        }
        if let Some((after_s, related_change)) = lim.stuck {
            let r = related.filter(|r| r.is_finite());
            match &mut self.unchanged {
                Some(u) if u.value == v => {
                    if let (true, Some(r)) = (new_sample, r) {
                        u.related_lo = u.related_lo.min(r);
                        u.related_hi = u.related_hi.max(r);
                    }
                    let still = now.saturating_sub(u.since).as_secs_f64();
                    if still >= after_s && u.related_hi - u.related_lo >= related_change {
                        return Err(format!(
                            "stuck at {v} for {still:.0} s while a related value moved by {:.1}",
                            u.related_hi - u.related_lo
                        ));
                    }
                }
                _ => {
                    let r0 = r.unwrap_or(f64::NAN);
                    self.unchanged = Some(Unchanged {
                        value: v,
                        since: at,
                        related_lo: if r0.is_nan() { f64::INFINITY } else { r0 },
                        related_hi: if r0.is_nan() { f64::NEG_INFINITY } else { r0 },
                    });
                }
            }
        }
        Ok(())
    }
}

/// Dew point by the Magnus formula with Sonntag's (1990) constants a = 17.62,
/// b = 243.12 °C, valid for −45..60 °C over water. `None` when the inputs are not usable.
pub fn dew_point(temperature_c: f64, relative_humidity_pct: f64) -> Option<f64> {
    const A: f64 = 17.62;
    const B: f64 = 243.12;
    if !(temperature_c.is_finite()
        && relative_humidity_pct.is_finite()
        && relative_humidity_pct > 0.0
        && relative_humidity_pct <= 100.0
        && temperature_c > -B)
    {
        return None;
    }
    let gamma = (relative_humidity_pct / 100.0).ln() + A * temperature_c / (B + temperature_c);
    let td = B * gamma / (A - gamma);
    td.is_finite().then_some(td)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lim() -> Limits {
        Limits {
            min: 0.0,
            max: 80.0,
            max_rate: Some(5.0),
            stuck: Some((60.0, 10.0)),
            max_age_s: 3.0,
            hold_ticks: 1,
        }
    }

    fn s(n: u64) -> Mono {
        Duration::from_secs(n)
    }

    #[test]
    fn bad_reading_is_bridged_for_hold_ticks_then_lost() {
        let mut t = InputTrack::default();
        assert_eq!(
            t.observe(s(0), Ok((30.0, s(0))), None, &lim()),
            Verdict::Good(30.0)
        );
        assert!(
            matches!(t.observe(s(1), Ok((f64::NAN, s(1))), None, &lim()), Verdict::Held(v, _) if v == 30.0)
        );
        assert!(t
            .observe(s(2), Err("timed out".into()), None, &lim())
            .is_lost());
        assert_eq!(
            t.observe(s(3), Ok((30.5, s(3))), None, &lim()),
            Verdict::Good(30.5)
        );
    }

    #[test]
    fn stale_out_of_range_and_fast_readings_are_rejected() {
        let mut t = InputTrack::default();
        let l = Limits {
            hold_ticks: 0,
            ..lim()
        };
        assert!(t.observe(s(10), Ok((30.0, s(5))), None, &l).is_lost());
        assert!(t.observe(s(10), Ok((81.0, s(10))), None, &l).is_lost());
        assert_eq!(
            t.observe(s(11), Ok((30.0, s(11))), None, &l),
            Verdict::Good(30.0)
        );
        assert!(t.observe(s(12), Ok((40.0, s(12))), None, &l).is_lost());
        assert_eq!(
            t.observe(s(13), Ok((34.0, s(13))), None, &l),
            Verdict::Good(34.0)
        );
    }

    #[test]
    fn stuck_only_when_related_value_moves() {
        let l = Limits {
            hold_ticks: 0,
            ..lim()
        };
        let mut quiet = InputTrack::default();
        let mut moved = InputTrack::default();
        for i in 0..=100u64 {
            let a = quiet.observe(s(i), Ok((50.0, s(i))), Some(40.0), &l);
            let b = moved.observe(s(i), Ok((50.0, s(i))), Some(40.0 + i as f64 * 0.2), &l);
            assert!(!a.is_lost());
            if i < 60 {
                assert!(!b.is_lost(), "tick {i}");
            }
        }
        assert!(moved.verdict().is_some_and(|v| v.is_lost()));
    }

    #[test]
    fn magnus_dew_point_matches_tables() {
        // 25 °C at 60 % RH: 16.7 °C in psychrometric tables.
        let td = dew_point(25.0, 60.0).expect("valid");
        assert!((td - 16.7).abs() < 0.2, "{td}");
        assert!(dew_point(25.0, 0.0).is_none());
        assert!(dew_point(f64::NAN, 50.0).is_none());
    }
}
