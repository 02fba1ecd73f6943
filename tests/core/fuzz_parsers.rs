//! Fuzzing the three file parsers a facility engineer edits by hand: the site configuration,
//! CDU firmware profiles and GPU profiles. Arbitrary text and structured mutations of the
//! shipped files (a line deleted or duplicated, a number turned into NaN, a negative or a
//! huge value, a string changed, two keys swapped) must never panic, and every refusal must
//! name the file and, per issue, a key and what was expected there.

use coolantd::config::{Config, ConfigError};
use coolantd::profile::cdu::CduProfile;
use coolantd::profile::gpu::GpuProfile;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use std::path::{Path, PathBuf};

/// Cases per property: enough to hit every line of the shipped files with each mutation
/// kind many times, while the whole file stays at a few seconds in a debug build.
const CASES: u32 = 2000;

type Parser = fn(&str, &Path) -> Result<(), ConfigError>;

fn parse_config(t: &str, p: &Path) -> Result<(), ConfigError> {
    Config::parse(t, p).map(drop)
}
fn parse_cdu(t: &str, p: &Path) -> Result<(), ConfigError> {
    CduProfile::parse(t, p).map(drop)
}
fn parse_gpu(t: &str, p: &Path) -> Result<(), ConfigError> {
    GpuProfile::parse(t, p).map(drop)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped files each parser reads, with their paths.
fn shipped(dir: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let d = root().join(dir);
    if d.extension().is_some() {
        let text = std::fs::read_to_string(&d).expect("shipped file readable");
        return vec![(d, text)];
    }
    let mut entries: Vec<_> = std::fs::read_dir(&d)
        .expect("shipped folder readable")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    for p in entries {
        let text = std::fs::read_to_string(&p).expect("shipped file readable");
        out.push((p, text));
    }
    out
}

/// What a refusal must look like: the file named, at least one issue, each with a key and
/// an explanation; and its message renders.
fn check_error(e: &ConfigError, path: &Path, input: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        &e.file,
        path,
        "error names another file for input:\n{}",
        input
    );
    prop_assert!(
        !e.issues.is_empty(),
        "error without issues for input:\n{}",
        input
    );
    for i in &e.issues {
        prop_assert!(
            !i.key.trim().is_empty(),
            "issue without key: {:?}\ninput:\n{}",
            i,
            input
        );
        prop_assert!(
            !i.expected.trim().is_empty(),
            "issue without explanation: {:?}\ninput:\n{}",
            i,
            input
        );
    }
    let shown = e.to_string();
    prop_assert!(
        shown.contains(&path.display().to_string()),
        "message lacks the file: {}",
        shown
    );
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    /// Replaces the first number on a line.
    ChangeNumber(usize, &'static str),
    /// Replaces the first quoted string on a line.
    ChangeString(usize, String),
    /// Swaps the keys of two `key = value` lines.
    SwapKeys(usize, usize),
    /// Replaces a whole value.
    ReplaceValue(usize, &'static str),
}

const NUMBERS: &[&str] = &[
    "nan",
    "+nan",
    "-nan",
    "inf",
    "-inf",
    "-1",
    "-0.0",
    "0",
    "1e308",
    "-1e308",
    "1e-320",
    "4294967296",
    "99999999999999999999",
    "-9223372036854775809",
    "65536",
    "0x7fffffff",
    "1.",
];
const VALUES: &[&str] = &[
    "\"\"",
    "[]",
    "{}",
    "true",
    "nan",
    "-1",
    "[1.0]",
    "[nan, inf]",
    "[100.0, -100.0]",
    "\"127.0.0.1:0\"",
    "\"::1\"",
    "{ kind = \"step\" }",
    "1979-05-27T07:32:00Z",
    "\"\u{202e}x\"",
];

fn mutation(lines: usize) -> impl Strategy<Value = Mutation> {
    let n = lines.max(1);
    prop_oneof![
        (0..n).prop_map(Mutation::DeleteLine),
        (0..n).prop_map(Mutation::DuplicateLine),
        (0..n, prop::sample::select(NUMBERS)).prop_map(|(i, v)| Mutation::ChangeNumber(i, v)),
        (0..n, "[a-zA-Z0-9_ .:/-]{0,12}").prop_map(|(i, s)| Mutation::ChangeString(i, s)),
        (0..n, 0..n).prop_map(|(a, b)| Mutation::SwapKeys(a, b)),
        (0..n, prop::sample::select(VALUES)).prop_map(|(i, v)| Mutation::ReplaceValue(i, v)),
    ]
}

fn split_kv(line: &str) -> Option<(&str, &str)> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    line.split_once('=')
}

fn apply(lines: &mut Vec<String>, m: &Mutation) {
    if lines.is_empty() {
        return;
    }
    let len = lines.len();
    let at = move |i: usize| i % len;
    match m {
        Mutation::DeleteLine(i) => {
            lines.remove(at(*i));
        }
        Mutation::DuplicateLine(i) => {
            let i = at(*i);
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        Mutation::ChangeNumber(i, v) => {
            let l = &mut lines[at(*i)];
            if let Some(s) = l.find(|c: char| c.is_ascii_digit()) {
                let e = l[s..]
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
                    .map_or(l.len(), |k| s + k);
                l.replace_range(s..e, v);
            }
        }
        Mutation::ChangeString(i, v) => {
            let l = &mut lines[at(*i)];
            if let Some(s) = l.find('"') {
                if let Some(k) = l[s + 1..].find('"') {
                    l.replace_range(s + 1..s + 1 + k, v);
                }
            }
        }
        Mutation::SwapKeys(a, b) => {
            let (a, b) = (at(*a), at(*b));
            let (Some((ka, va)), Some((kb, vb))) = (split_kv(&lines[a]), split_kv(&lines[b]))
            else {
                return;
            };
            let (na, nb) = (format!("{kb}={va}"), format!("{ka}={vb}"));
            lines[a] = na;
            lines[b] = nb;
        }
        Mutation::ReplaceValue(i, v) => {
            let i = at(*i);
            if let Some((k, _)) = split_kv(&lines[i]) {
                lines[i] = format!("{k}= {v}");
            }
        }
    }
}

/// Runs `cases` cases of `strategy` through `parser`, checking each result; returns how many ran.
fn run<S: Strategy<Value = String>>(name: &str, strategy: S, path: &Path, parser: Parser) -> u32 {
    let mut runner = TestRunner::new(PtConfig {
        cases: CASES,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let count = std::sync::atomic::AtomicU32::new(0);
    let refused = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&strategy, |text| {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match parser(&text, path) {
            Ok(()) => Ok(()),
            Err(e) => {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                check_error(&e, path, &text)
            }
        }
    });
    if let Err(e) = result {
        panic!("{name} on {}: {e}", path.display());
    }
    let n = count.into_inner();
    let refused = refused.into_inner();
    eprintln!(
        "FUZZ | {name:<16} | {:<18} | {n} cases, {refused} refused",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    // A mutation that never breaks anything would test nothing.
    assert!(refused > 0, "{name}: no case was refused");
    n
}

fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        // TOML-shaped noise reaches further than random Unicode.
        "([\\[\\]a-z_.]{0,12}( = )?(\"[a-z0-9:. ]{0,8}\"|-?[0-9.e]{0,6}|nan|inf|true|\\[[0-9., ]{0,8}\\])?\n){0,12}",
    ]
}

fn mutated(text: String) -> impl Strategy<Value = String> {
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    prop::collection::vec(mutation(lines.len()), 1..4).prop_map(move |ms| {
        let mut l = lines.clone();
        for m in &ms {
            apply(&mut l, m);
        }
        l.join("\n")
    })
}

fn fuzz_family(family: &str, parser: Parser) {
    let files = shipped(family);
    assert!(!files.is_empty(), "no shipped files in {family}");
    let mut total = 0;
    for (path, text) in files {
        // The shipped file itself is valid: the mutations start from a good state.
        if let Err(e) = parser(&text, &path) {
            panic!("shipped {} does not parse: {e}", path.display());
        }
        total += run("mutated", mutated(text), &path, parser);
    }
    let (path, _) = &shipped(family)[0];
    total += run("arbitrary text", arbitrary_text(), path, parser);
    eprintln!("FUZZ | {family}: {total} cases in all");
}

#[test]
fn config_parse_never_panics_and_names_file_and_key() {
    fuzz_family("config/sim.toml", parse_config);
}

#[test]
fn cdu_profile_parse_never_panics_and_names_file_and_key() {
    fuzz_family("firmware-profiles/cdu", parse_cdu);
}

#[test]
fn gpu_profile_parse_never_panics_and_names_file_and_key() {
    fuzz_family("firmware-profiles/gpu", parse_gpu);
}
