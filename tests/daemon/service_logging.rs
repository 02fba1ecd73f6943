//! `logging::init` end to end, in a child process (the global subscriber can be installed
//! once per process): this test binary re-runs itself with `COOLANTD_LOG_CHILD` set, with
//! stderr redirected to a file, and the parent reads what the child wrote.

use coolantd::config::{LogFormat, LoggingConfig};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The child's body; a no-op in a normal test run.
#[test]
fn child_entry() {
    let Ok(format) = std::env::var("COOLANTD_LOG_CHILD") else {
        return;
    };
    let format = match format.as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        _ => LogFormat::Auto,
    };
    coolantd::service::logging::init(&LoggingConfig {
        level: "info".into(),
        format,
    });
    tracing::error!(cdu = "cdu-a", "leak detected");
    tracing::info!(tick = 7u64, "tick done");
    tracing::debug!("only with RUST_LOG=debug");
}

struct Run {
    stderr: String,
}

/// Runs the child with stderr in a fresh file; `journal` sets JOURNAL_STREAM to that file's
/// device:inode (what systemd does for the journal stream), or to a wrong value.
fn run_child(format: &str, journal: Option<bool>, rust_log: Option<&str>) -> Run {
    let dir = coolantd_testkit::TempDir::new("log");
    let path: PathBuf = dir.path().join("stderr.txt");
    let file = std::fs::File::create(&path).expect("create stderr file");
    let meta = file.metadata().expect("stat stderr file");
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    let child_test = coolantd_testkit::test_name(module_path!(), "child_entry");
    cmd.args(["--exact", &child_test, "--nocapture", "--test-threads=1"])
        .env("COOLANTD_LOG_CHILD", format)
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file));
    match journal {
        Some(true) => {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        Some(false) => {
            cmd.env(
                "JOURNAL_STREAM",
                format!("{}:{}", meta.dev(), meta.ino() + 1),
            );
        }
        None => {}
    }
    if let Some(l) = rust_log {
        cmd.env("RUST_LOG", l);
    }
    let status = cmd.status().expect("child runs");
    let stderr = std::fs::read_to_string(&path).expect("read child stderr");
    assert!(status.success(), "child failed:\n{stderr}");
    Run { stderr }
}

#[test]
fn journal_stream_gets_priority_prefixed_lines_without_timestamps() {
    let r = run_child("auto", Some(true), None);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stderr);
    assert!(lines[0].starts_with("<3>ERROR "), "{}", r.stderr);
    assert!(lines[0].contains("leak detected"), "{}", r.stderr);
    assert!(lines[1].starts_with("<6> INFO "), "{}", r.stderr);
    assert!(!r.stderr.contains('\x1b'));
}

#[test]
fn a_journal_stream_of_another_file_is_not_the_journal() {
    let r = run_child("auto", Some(false), None);
    let first = r.stderr.lines().next().unwrap_or_default();
    assert!(!first.starts_with('<'), "{}", r.stderr);
    // Plain style starts with an RFC 3339 timestamp, for example 2024-05-01T12:00:00.000Z.
    assert!(
        first.len() > 20 && first.as_bytes()[4] == b'-' && first.as_bytes()[10] == b'T',
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains('\x1b'));
}

#[test]
fn json_format_and_rust_log_override() {
    let r = run_child("json", Some(true), Some("debug"));
    let lines: Vec<serde_json::Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "RUST_LOG=debug adds the debug line: {}",
        r.stderr
    );
    assert_eq!(lines[0]["level"], "ERROR");
    assert_eq!(lines[0]["cdu"], "cdu-a");
    assert_eq!(lines[1]["tick"], 7);
}
