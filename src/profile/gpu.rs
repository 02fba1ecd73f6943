//! GPU profiles: one GPU model's facts (board-name match, thermal thresholds, power-limit range,
//! clocks) and the simulator's fitted thermal parameters for that board and the cooling behind
//! it. Loaded from `firmware-profiles/gpu/<name>.toml`; the profile's name is the file stem.

use super::thermal::ThermalParams;
use crate::files::{parse_toml, read_file};
use crate::units::{Celsius, Megahertz, Watts};
use crate::validate::{ConfigError, Issues};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The thermal thresholds NVML reports for the board.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// The core temperature at which the GPU slows itself down.
    pub slowdown_c: Celsius,
    /// The core temperature the GPU is designed to stay under.
    pub gpu_max_c: Celsius,
    /// The HBM temperature limit.
    pub hbm_max_c: Celsius,
    /// The core temperature at which the GPU shuts down.
    pub shutdown_c: Celsius,
}

/// The power-limit range and the simulator's power draw.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerSpec {
    /// Lowest power limit the board accepts.
    pub min_w: Watts,
    /// Highest power limit the board accepts.
    pub max_w: Watts,
    /// The board's default power limit.
    pub default_w: Watts,
    /// Simulator: what the board draws with no work.
    pub idle_w: Watts,
    /// Simulator: what a full load would draw without a power cap.
    pub full_load_w: Watts,
}

/// Clocks, for the simulated GPU's readings.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSpec {
    /// Highest SM clock.
    pub max_sm_mhz: Megahertz,
    /// SM clock at idle.
    pub idle_sm_mhz: Megahertz,
    /// Memory clock.
    pub mem_mhz: Megahertz,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    description: String,
    /// NVML board names this profile applies to: exact, case-insensitive; a trailing `*`
    /// matches any name that starts with what comes before it.
    #[serde(rename = "match")]
    matches: Vec<String>,
    thresholds: Thresholds,
    power: PowerSpec,
    clocks: ClockSpec,
    thermal: ThermalParams,
}

/// One GPU model's profile.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuProfile {
    /// The file stem, for example `h200-sxm`.
    pub name: String,
    pub description: String,
    pub patterns: Vec<String>,
    pub thresholds: Thresholds,
    pub power: PowerSpec,
    pub clocks: ClockSpec,
    pub thermal: ThermalParams,
    /// The file the profile was read from.
    pub path: PathBuf,
}

impl GpuProfile {
    /// Reads and validates a profile file.
    pub fn load(path: &Path) -> Result<GpuProfile, ConfigError> {
        let text = read_file(path)?;
        GpuProfile::parse(&text, path)
    }

    /// Parses and validates profile text; `path` names it in errors and gives the profile's name.
    pub fn parse(text: &str, path: &Path) -> Result<GpuProfile, ConfigError> {
        let f: ProfileFile = parse_toml(text, path)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let p = GpuProfile {
            name,
            description: f.description,
            patterns: f.matches,
            thresholds: f.thresholds,
            power: f.power,
            clocks: f.clocks,
            thermal: f.thermal,
            path: path.to_path_buf(),
        };
        let mut issues = Issues::default();
        p.validate(&mut issues);
        issues.into_result(path)?;
        Ok(p)
    }

    fn validate(&self, issues: &mut Issues) {
        issues.check(
            !self.name.is_empty(),
            "(file)",
            "a file named `<profile>.toml`",
        );
        issues.check(
            !self.patterns.is_empty() && self.patterns.iter().all(|m| !m.trim().is_empty()),
            "match",
            "at least one non-empty NVML board name, such as \"NVIDIA H200\"",
        );
        let t = &self.thresholds;
        for (k, v) in [
            ("slowdown_c", t.slowdown_c),
            ("gpu_max_c", t.gpu_max_c),
            ("hbm_max_c", t.hbm_max_c),
            ("shutdown_c", t.shutdown_c),
        ] {
            issues.range(
                v.0,
                20.0,
                150.0,
                format!("thresholds.{k}"),
                "a temperature in °C",
            );
        }
        issues.check(
            t.gpu_max_c <= t.slowdown_c,
            "thresholds.gpu_max_c",
            format!(
                "at most the slowdown temperature {}, got {}",
                t.slowdown_c, t.gpu_max_c
            ),
        );
        issues.check(
            t.slowdown_c <= t.shutdown_c,
            "thresholds.slowdown_c",
            format!(
                "at most the shutdown temperature {}, got {}",
                t.shutdown_c, t.slowdown_c
            ),
        );
        let w = &self.power;
        for (k, v) in [
            ("min_w", w.min_w),
            ("max_w", w.max_w),
            ("default_w", w.default_w),
            ("idle_w", w.idle_w),
            ("full_load_w", w.full_load_w),
        ] {
            issues.range(v.0, 1.0, 5000.0, format!("power.{k}"), "a power in W");
        }
        issues.check(
            w.min_w <= w.default_w && w.default_w <= w.max_w,
            "power.default_w",
            format!(
                "a default within min_w..=max_w ({}..={}), got {}",
                w.min_w, w.max_w, w.default_w
            ),
        );
        issues.check(
            w.idle_w <= w.full_load_w,
            "power.idle_w",
            format!("at most full_load_w {}, got {}", w.full_load_w, w.idle_w),
        );
        let c = &self.clocks;
        for (k, v) in [
            ("max_sm_mhz", c.max_sm_mhz),
            ("idle_sm_mhz", c.idle_sm_mhz),
            ("mem_mhz", c.mem_mhz),
        ] {
            issues.range(v.0, 1.0, 10_000.0, format!("clocks.{k}"), "a clock in MHz");
        }
        issues.check(
            c.idle_sm_mhz <= c.max_sm_mhz,
            "clocks.idle_sm_mhz",
            format!("at most max_sm_mhz {}, got {}", c.max_sm_mhz, c.idle_sm_mhz),
        );
        self.thermal.validate("thermal", issues);
    }

    /// True when NVML's board name is one this profile applies to.
    pub fn matches(&self, nvml_name: &str) -> bool {
        let name = nvml_name.trim().trim_matches('"').trim().to_lowercase();
        self.patterns.iter().any(|p| {
            let p = p.trim().to_lowercase();
            match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == p,
            }
        })
    }

    /// The board name the simulator reports: the first exact pattern.
    pub fn board_name(&self) -> &str {
        self.patterns
            .first()
            .map(|p| p.trim_end_matches('*').trim())
            .unwrap_or(self.name.as_str())
    }
}

/// Every GPU profile of a folder.
#[derive(Debug, Clone, Default)]
pub struct GpuProfiles {
    profiles: Vec<GpuProfile>,
}

impl GpuProfiles {
    /// Loads every `*.toml` in `dir` (the `firmware-profiles/gpu` folder), in name order.
    /// Any broken file fails the whole load, naming the file.
    pub fn load_dir(dir: &Path) -> Result<GpuProfiles, ConfigError> {
        let entries = std::fs::read_dir(dir).map_err(|e| ConfigError {
            file: dir.to_path_buf(),
            issues: vec![crate::validate::ConfigIssue {
                key: "(folder)".into(),
                expected: format!("a readable folder of GPU profiles: {e}"),
            }],
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut profiles = Vec::with_capacity(paths.len());
        for p in paths {
            profiles.push(GpuProfile::load(&p)?);
        }
        Ok(GpuProfiles { profiles })
    }

    /// Builds a set from profiles already loaded (tests, embedded defaults).
    pub fn from_profiles(profiles: Vec<GpuProfile>) -> GpuProfiles {
        GpuProfiles { profiles }
    }

    /// The profile with this name (file stem).
    pub fn by_name(&self, name: &str) -> Option<&GpuProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// The first profile (in name order) whose patterns match NVML's board name.
    pub fn for_board(&self, nvml_name: &str) -> Option<&GpuProfile> {
        self.profiles.iter().find(|p| p.matches(nvml_name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &GpuProfile> {
        self.profiles.iter()
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

impl GpuProfiles {
    /// The facts for an NVML board name: from the profile whose pattern matches it, else from
    /// the `default` profile (`gpus.default_profile`), else none.
    pub fn board_facts_for(&self, nvml_name: &str, default: Option<&str>) -> Option<BoardFacts> {
        self.for_board(nvml_name)
            .or_else(|| default.and_then(|n| self.by_name(n)))
            .map(GpuProfile::board_facts)
    }
}

impl GpuProfile {
    /// The facts the NVML backend falls back on where NVML does not report them.
    pub fn board_facts(&self) -> BoardFacts {
        BoardFacts {
            profile: self.name.clone(),
            slowdown: self.thresholds.slowdown_c,
            gpu_max: self.thresholds.gpu_max_c,
            hbm_max: self.thresholds.hbm_max_c,
            shutdown: self.thresholds.shutdown_c,
            power_min: self.power.min_w,
            power_max: self.power.max_w,
            power_default: self.power.default_w,
        }
    }
}

/// A board model's facts from its GPU profile, used where NVML does not report them.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardFacts {
    pub profile: String,
    pub slowdown: Celsius,
    pub gpu_max: Celsius,
    pub hbm_max: Celsius,
    pub shutdown: Celsius,
    pub power_min: Watts,
    pub power_max: Watts,
    pub power_default: Watts,
}
