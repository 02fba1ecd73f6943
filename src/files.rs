//! Reading and parsing the daemon's TOML files (the site configuration and the firmware
//! profiles) with errors that name the file, the key and what was expected. It sits below
//! both so that profiles need not import the configuration that assembles them.

use crate::validate::{ConfigError, ConfigIssue, Issues};
use std::path::Path;

/// Parses TOML text into `T`, reporting the dotted key path and the position of the first
/// error. Shared by the site configuration and the firmware profiles.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let pos = inner
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        let key = if path == "." || path.is_empty() {
            "(top level)".to_string()
        } else {
            path
        };
        ConfigError {
            file: file.to_path_buf(),
            issues: vec![ConfigIssue {
                key,
                expected: format!("{}{pos}", inner.message().trim_end()),
            }],
        }
    })
}

/// Reads a file into a string, with an error that names it.
pub fn read_file(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        issues: vec![ConfigIssue {
            key: "(file)".into(),
            expected: format!("a readable file: {e}"),
        }],
    })
}

/// Checks a name used in the configuration. Names end up in MQTT topics and metric tags: keep them to characters that need no escaping.
pub fn check_name(v: &str, key: &str, issues: &mut Issues) {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    issues.check(
        ok,
        key,
        // Debug formatting shows a control character escaped instead of invisibly.
        format!("1 to 64 characters of letters, digits, '-', '_' or '.', got {v:?}"),
    );
}
