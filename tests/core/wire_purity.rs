//! The rack modules (`src/wire`, `src/remote`, `src/agent`) are sans-IO: time comes in as a
//! value, bytes in and decisions out. This fails when any of their files names a clock, a
//! file system, a socket, a runtime or the shell's modules.

use std::path::{Path, PathBuf};

/// What a pure module must not name, and why it would break the rule.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "an async runtime"),
    ("std::fs", "the file system"),
    ("std::net", "sockets"),
    ("std::process", "processes"),
    ("std::thread", "threads"),
    ("Instant::now", "a clock"),
    ("SystemTime", "a clock"),
    ("rumqttc", "the MQTT client"),
    ("nvml_wrapper", "NVML"),
    ("tokio_modbus", "Modbus"),
    ("reqwest", "HTTP"),
    ("crate::service", "the shell"),
    ("crate::sink", "the shell"),
    ("crate::collect", "the shell"),
    ("crate::config", "the shell's configuration loading"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn rack_modules_read_no_clock_and_do_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for module in ["wire", "remote", "agent"] {
        rust_files(&root.join(module), &mut files);
    }
    assert!(
        files.len() >= 9,
        "expected the rack modules' files: {files:?}"
    );
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("source file");
        for (line_no, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for (word, what) in FORBIDDEN {
                if code.contains(word) {
                    found.push(format!(
                        "{}:{}: `{word}` ({what})",
                        file.display(),
                        line_no + 1
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "sans-IO modules reach out:\n{}",
        found.join("\n")
    );
}
