//! The core's architecture invariants, checked on its own source: it does no IO, reads no
//! clock, spawns and sleeps nothing, knows nothing of the daemon around it, and depends on
//! nothing beyond an allow-list. Each check fails with the file, line and rule it broke.

use std::path::{Path, PathBuf};

/// What the core's code must not mention, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "the core has no async runtime"),
    ("std::fs", "the core does no file IO"),
    ("fs::", "the core does no file IO"),
    ("std::net", "the core does no network IO"),
    ("net::", "the core does no network IO"),
    ("std::process", "the core starts no process"),
    (
        "std::env",
        "the core reads no environment: configuration comes in as values",
    ),
    ("std::thread", "the core spawns no thread and never sleeps"),
    ("thread::sleep", "the core never sleeps"),
    (
        "Instant",
        "the core reads no clock: `now: Mono` is passed in",
    ),
    (
        "SystemTime",
        "the core reads no clock: `now: Mono` is passed in",
    ),
    (
        "coolantd::",
        "the core knows nothing of the daemon (the shell) around it",
    ),
];

/// The crates the core may depend on (normal and build dependencies).
const ALLOWED_DEPENDENCIES: &[&str] = &["serde", "serde_derive", "thiserror"];

/// The crates the core's own tests may use.
const ALLOWED_DEV_DEPENDENCIES: &[&str] = &["proptest", "serde_json", "toml"];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot read an entry of {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line without its comment (a `//` inside a string literal cuts the line
/// short, which can only hide a mention, never invent one).
fn code_of(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

/// Every mention of a forbidden name in the code (not the comments) of `text`.
fn violations(file: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = code_of(line);
        for (pattern, why) in FORBIDDEN {
            if code.contains(pattern) {
                found.push(format!("{file}:{}: `{pattern}`: {why}", n + 1));
            }
        }
    }
    found
}

#[test]
fn core_source_does_no_io_reads_no_clock_and_knows_no_shell() {
    let mut files = Vec::new();
    rust_files(&crate_dir().join("src"), &mut files);
    assert!(
        files.len() >= 10,
        "found only {} source files under src/: is the scan looking in the right place?",
        files.len()
    );
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
        let name = f
            .strip_prefix(crate_dir())
            .unwrap_or(f)
            .display()
            .to_string();
        found.extend(violations(&name, &text));
    }
    assert!(
        found.is_empty(),
        "the core breaks its invariants:\n{}",
        found.join("\n")
    );
}

/// The dependency names of one table of Cargo.toml (`[dependencies]` and the like).
fn names(table: Option<&toml::Value>) -> Vec<String> {
    table
        .and_then(toml::Value::as_table)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn core_depends_only_on_its_allow_list() {
    let path = crate_dir().join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let manifest: toml::Table = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", path.display()));
    let mut normal = names(manifest.get("dependencies"));
    normal.extend(names(manifest.get("build-dependencies")));
    let mut dev = names(manifest.get("dev-dependencies"));
    // Target-specific tables count as what they are.
    if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
        for t in targets.values() {
            normal.extend(names(t.get("dependencies")));
            normal.extend(names(t.get("build-dependencies")));
            dev.extend(names(t.get("dev-dependencies")));
        }
    }
    assert!(
        normal.iter().any(|d| d == "serde"),
        "no serde among {normal:?}: is this the core's Cargo.toml?"
    );
    let bad: Vec<&String> = normal
        .iter()
        .filter(|d| !ALLOWED_DEPENDENCIES.contains(&d.as_str()))
        .collect();
    assert!(
        bad.is_empty(),
        "{}: dependencies {bad:?} are outside the core's allow-list {ALLOWED_DEPENDENCIES:?}",
        path.display()
    );
    let bad_dev: Vec<&String> = dev
        .iter()
        .filter(|d| !ALLOWED_DEV_DEPENDENCIES.contains(&d.as_str()))
        .collect();
    assert!(
        bad_dev.is_empty(),
        "{}: dev-dependencies {bad_dev:?} are outside the allow-list {ALLOWED_DEV_DEPENDENCIES:?}",
        path.display()
    );
}

#[test]
fn the_scan_sees_what_it_must_refuse() {
    let bad = "use tokio::time::sleep;\nlet t = std::time::Instant::now(); // fine here\n";
    let found = violations("x.rs", bad);
    assert!(
        found.iter().any(|v| v.starts_with("x.rs:1: `tokio`")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.starts_with("x.rs:2: `Instant`")),
        "{found:?}"
    );
    let only_comments = "// tokio, std::fs and Instant are named here only in words\n";
    assert!(violations("y.rs", only_comments).is_empty());
}
