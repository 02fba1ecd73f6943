//! Physical units as newtypes, so that the samples, actuations and limits that cross the
//! core's boundary cannot mix a temperature with a flow (ARCHITECTURE.md says exactly where
//! bare `f64` still crosses).
//!
//! Each unit is a thin `Copy` wrapper with `serde(transparent)`, so configuration files and
//! JSON carry plain numbers. Most units add and subtract like plain quantities. A temperature
//! is a point on a scale, not a quantity: `Celsius - Celsius` is a difference ([`Kelvin`]),
//! `Celsius ± Kelvin` is a `Celsius`, and two temperatures cannot be added.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! unit {
    ($(#[$doc:meta])* $name:ident, $suffix:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub f64);

        impl $name {
            /// The unit's symbol, as shown in logs, tables and metric documentation.
            pub const SYMBOL: &'static str = $suffix;

            /// The raw number in this unit.
            #[inline]
            pub fn get(self) -> f64 {
                self.0
            }

            /// True when the value is a finite number (not NaN, not infinite).
            #[inline]
            pub fn is_finite(self) -> bool {
                self.0.is_finite()
            }

            /// The larger of two values; NaN loses against a number.
            #[inline]
            pub fn max(self, other: Self) -> Self {
                Self(self.0.max(other.0))
            }

            /// The smaller of two values; NaN loses against a number.
            #[inline]
            pub fn min(self, other: Self) -> Self {
                Self(self.0.min(other.0))
            }

            /// Clamps into `[lo, hi]`.
            #[inline]
            pub fn clamp(self, lo: Self, hi: Self) -> Self {
                Self(self.0.clamp(lo.0, hi.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match f.precision() {
                    Some(p) => write!(f, "{:.*} {}", p, self.0, $suffix),
                    None => write!(f, "{} {}", self.0, $suffix),
                }
            }
        }

    };
}

/// Adding and subtracting within a unit, for quantities (not for points on a scale such as
/// [`Celsius`]).
macro_rules! quantity {
    ($($name:ident),*) => {$(
        impl std::ops::Add for $name {
            type Output = Self;
            fn add(self, rhs: Self) -> Self {
                Self(self.0 + rhs.0)
            }
        }

        impl std::ops::Sub for $name {
            type Output = Self;
            fn sub(self, rhs: Self) -> Self {
                Self(self.0 - rhs.0)
            }
        }
    )*};
}

unit!(
    /// Temperature in degrees Celsius (GPU core, HBM, coolant, facility water).
    Celsius, "°C"
);
unit!(
    /// Temperature difference in kelvin (margins, ΔT across a loop).
    Kelvin, "K"
);
unit!(
    /// Electrical or thermal power in watts.
    Watts, "W"
);
unit!(
    /// Volumetric coolant flow in litres per minute.
    LitresPerMinute, "l/min"
);
unit!(
    /// Pressure or differential pressure in kilopascal.
    Kilopascal, "kPa"
);
unit!(
    /// A share of full scale: pump speed, valve position, humidity.
    Percent, "%"
);
unit!(
    /// Clock frequency in megahertz.
    Megahertz, "MHz"
);
unit!(
    /// Energy in joules.
    Joules, "J"
);

quantity!(
    Kelvin,
    Watts,
    LitresPerMinute,
    Kilopascal,
    Percent,
    Megahertz,
    Joules
);

/// The difference of two temperatures is a temperature difference.
impl std::ops::Sub for Celsius {
    type Output = Kelvin;
    fn sub(self, rhs: Celsius) -> Kelvin {
        Kelvin(self.0 - rhs.0)
    }
}

impl std::ops::Add<Kelvin> for Celsius {
    type Output = Celsius;
    fn add(self, rhs: Kelvin) -> Celsius {
        Celsius(self.0 + rhs.0)
    }
}

impl std::ops::Sub<Kelvin> for Celsius {
    type Output = Celsius;
    fn sub(self, rhs: Kelvin) -> Celsius {
        Celsius(self.0 - rhs.0)
    }
}

impl std::ops::Neg for Kelvin {
    type Output = Kelvin;
    fn neg(self) -> Kelvin {
        Kelvin(-self.0)
    }
}

impl Celsius {
    /// Distance from `self` up to `limit`: positive while below the limit.
    #[inline]
    pub fn margin_to(self, limit: Celsius) -> Kelvin {
        limit - self
    }
}

impl Watts {
    /// From the milliwatts NVML reports.
    #[inline]
    pub fn from_milliwatts(mw: u32) -> Watts {
        Watts(f64::from(mw) / 1000.0)
    }

    /// To the milliwatts NVML expects, rounded down so a cap never exceeds what was asked.
    #[inline]
    pub fn to_milliwatts(self) -> u32 {
        (self.0 * 1000.0).floor().clamp(0.0, f64::from(u32::MAX)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_positive_below_limit() {
        assert_eq!(Celsius(80.0).margin_to(Celsius(89.0)), Kelvin(9.0));
        assert_eq!(Celsius(90.0).margin_to(Celsius(89.0)), Kelvin(-1.0));
    }

    #[test]
    fn temperature_difference_is_kelvin() {
        let d: Kelvin = Celsius(45.0) - Celsius(30.0);
        assert_eq!(d, Kelvin(15.0));
        assert_eq!(Celsius(30.0) + d, Celsius(45.0));
        assert_eq!(Celsius(45.0) - Kelvin(5.0), Celsius(40.0));
        assert_eq!(-Kelvin(2.0), Kelvin(-2.0));
        assert_eq!(Kelvin(2.0) + Kelvin(3.0), Kelvin(5.0));
    }

    #[test]
    fn milliwatt_round_trip_rounds_down() {
        assert_eq!(Watts::from_milliwatts(700_000), Watts(700.0));
        assert_eq!(Watts(450.0009).to_milliwatts(), 450_000);
        assert_eq!(Watts(-5.0).to_milliwatts(), 0);
    }

    #[test]
    fn display_uses_symbol_and_precision() {
        assert_eq!(format!("{:.1}", Celsius(55.25)), "55.2 °C");
        assert_eq!(format!("{}", Percent(40.0)), "40 %");
    }
}
