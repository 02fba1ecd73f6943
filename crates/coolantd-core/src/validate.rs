//! Validation results shared by every part that checks its own configuration: the issue
//! (key and what was expected), the error for a file, and the collector a validation pass
//! fills.
//!
//! It lives apart from `config` so that the control core and each section's owner can report
//! issues without importing the shell's file loading.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a configuration or profile file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, for example `control.setpoint` or `cdu[0].address`.
    pub key: String,
    /// What was expected there, and what was found where that helps.
    pub expected: String,
}

/// A configuration that cannot be used: the file, and every issue found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.issues.as_slice() {
            [one] => write!(f, "{file}: {}: {}", one.key, one.expected),
            many => {
                write!(f, "{file}: {} problems:", many.len())?;
                for i in many {
                    write!(f, "\n  {}: {}", i.key, i.expected)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Collects the issues a validation pass finds, so that one run reports all of them.
#[derive(Debug, Default)]
pub struct Issues(Vec<ConfigIssue>);

impl Issues {
    /// Records an issue at `key`.
    pub fn push(&mut self, key: impl Into<String>, expected: impl Into<String>) {
        self.0.push(ConfigIssue {
            key: key.into(),
            expected: expected.into(),
        });
    }

    /// Records an issue at `key` unless `ok` holds.
    pub fn check(&mut self, ok: bool, key: impl Into<String>, expected: impl Into<String>) {
        if !ok {
            self.push(key, expected);
        }
    }

    /// Checks that a number is finite and within `[lo, hi]`.
    pub fn range(&mut self, value: f64, lo: f64, hi: f64, key: impl Into<String>, what: &str) {
        if !(value.is_finite() && value >= lo && value <= hi) {
            self.push(key, format!("{what} between {lo} and {hi}, got {value}"));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<ConfigIssue> {
        self.0
    }

    /// Turns the collected issues into an error for `file`, or `Ok` when there are none.
    pub fn into_result(self, file: &Path) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                file: file.to_path_buf(),
                issues: self.0,
            })
        }
    }
}
