//! Architecture invariant: metric and measurement names are made only in the schema module
//! (`src/sink/schema/`). Every other file under `src/` uses its constants and functions.
//!
//! What counts as making a name, in a file's code before its `#[cfg(test)] mod tests`:
//! - a string literal that starts with `coolantd_` (the daemon's own Prometheus names);
//! - a string literal equal to a measurement the schema writes, where it stands for a
//!   measurement: as the first argument of `Point::new(` or compared with a `measurement`.
//!   The same words are also tag names (`gpu`) and configuration keys (`control`), which
//!   are not metric names, hence the context.
//!
//! Comments are skipped, so documentation may still name the metrics.

use std::path::{Path, PathBuf};

/// One string literal of a source file: its text (escapes left as written), its line, and
/// the code just before it.
struct Literal {
    text: String,
    line: usize,
    before: String,
}

/// The string literals of Rust source outside comments and character literals. Enough of
/// Rust's lexical grammar for this check: line and (nested) block comments, plain, byte and
/// raw strings, character literals and lifetimes.
fn literals(src: &str) -> Vec<Literal> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    let mut code = String::new();
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"…", r#"…"#, br#"…"#.
        if c == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
            let prev_raw_ok = i > 0 && b[i - 1] == b'b';
            if !prev_ident || prev_raw_ok {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) == Some(&b'"') {
                    let start = j + 1;
                    let close: Vec<u8> = std::iter::once(b'"')
                        .chain(std::iter::repeat_n(b'#', hashes))
                        .collect();
                    let mut k = start;
                    while k < b.len() && !b[k..].starts_with(&close) {
                        k += 1;
                    }
                    let text = String::from_utf8_lossy(&b[start..k.min(b.len())]).to_string();
                    out.push(Literal {
                        text: text.clone(),
                        line,
                        before: tail(&code),
                    });
                    line += text.matches('\n').count();
                    i = k + close.len();
                    code.push_str("\"\"");
                    continue;
                }
            }
        }
        if c == b'"' {
            let start = i + 1;
            let mut k = start;
            while k < b.len() && b[k] != b'"' {
                k += if b[k] == b'\\' { 2 } else { 1 };
            }
            let text = String::from_utf8_lossy(&b[start..k.min(b.len())]).to_string();
            out.push(Literal {
                text: text.clone(),
                line,
                before: tail(&code),
            });
            line += text.matches('\n').count();
            i = k + 1;
            code.push_str("\"\"");
            continue;
        }
        if c == b'\'' {
            // A character literal ('x', '\n', '\u{1F}', '"'); otherwise a lifetime.
            if b.get(i + 1) == Some(&b'\\') {
                let mut k = i + 2;
                while k < b.len() && b[k] != b'\'' {
                    k += 1;
                }
                i = k + 1;
                continue;
            }
            let ch_len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
            if b.get(i + 1 + ch_len) == Some(&b'\'') {
                i += ch_len + 2;
                continue;
            }
        }
        code.push(c as char);
        i += 1;
    }
    out
}

/// The last stretch of code before a literal, whitespace squeezed out.
fn tail(code: &str) -> String {
    let squeezed: String = code
        .chars()
        .rev()
        .filter(|c| !c.is_whitespace())
        .take(48)
        .collect();
    squeezed.chars().rev().collect()
}

/// The part of a file that is not its unit tests (by convention the last item).
fn code_part(src: &str) -> &str {
    let mut at = 0;
    for line in src.lines() {
        if line.trim() == "#[cfg(test)]" && src[at + line.len()..].trim_start().starts_with("mod ")
        {
            return &src[..at];
        }
        at += line.len() + 1;
    }
    src
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let p = e.expect("directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Where names are made outside the schema module, as `file:line: why`.
fn violations(root: &Path, measurements: &[String]) -> Vec<String> {
    let schema = root.join("src/sink/schema");
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut found = Vec::new();
    for f in files {
        if f.starts_with(&schema) || f == root.join("src/sink/schema.rs") {
            continue;
        }
        let src = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let rel = f.strip_prefix(root).unwrap_or(&f).display().to_string();
        for lit in literals(code_part(&src)) {
            if lit.text.starts_with("coolantd_") {
                found.push(format!(
                    "{rel}:{}: metric name \"{}\" (use sink::schema::process)",
                    lit.line, lit.text
                ));
            }
            let as_measurement = lit.before.ends_with("Point::new(")
                || lit.before.ends_with("measurement==")
                || lit.before.ends_with("measurement.as_str()==")
                || lit.before.ends_with("measurement!=");
            if as_measurement && measurements.contains(&lit.text) {
                found.push(format!(
                    "{rel}:{}: measurement name \"{}\" (use the sink::schema constant)",
                    lit.line, lit.text
                ));
            }
        }
    }
    found
}

fn measurements() -> Vec<String> {
    coolantd::sink::schema::catalog()
        .into_iter()
        .map(|m| m.name)
        .collect()
}

#[test]
fn metric_and_measurement_names_are_made_only_in_the_schema_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let measurements = measurements();
    assert!(
        measurements.len() >= 8,
        "the catalog lists the measurements: {measurements:?}"
    );
    let found = violations(root, &measurements);
    assert!(
        found.is_empty(),
        "metric or measurement names made outside src/sink/schema/:\n{}",
        found.join("\n")
    );
}

/// The scanner itself: it must see what it is meant to find, and nothing in comments,
/// character literals or test modules.
#[test]
fn the_scanner_finds_names_in_code_and_ignores_comments_and_tests() {
    let src = r##"
// "coolantd_in_a_comment"
/* "coolantd_in_a_block" /* nested "coolantd_x" */ */
fn f<'a>(x: &'a str) -> char {
    let q = '"';
    let a = "coolantd_ticks_total";
    let p = Point::new( "gpu" , 0);
    let t = tag("gpu");
    let r = r#"coolantd_raw"#;
    if p.measurement == "coolant" {}
    'x'
}
#[cfg(test)]
mod tests {
    const N: &str = "coolantd_in_tests";
}
"##;
    let lits = literals(code_part(src));
    let texts: Vec<&str> = lits.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "coolantd_ticks_total",
            "gpu",
            "gpu",
            "coolantd_raw",
            "coolant"
        ]
    );
    assert_eq!(lits[0].line, 6);
    assert!(lits[1].before.ends_with("Point::new("));
    assert!(lits[2].before.ends_with("tag("));
    assert!(lits[4].before.ends_with("measurement=="));

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("src/sink/schema")).expect("mkdir");
    std::fs::write(dir.path().join("src/a.rs"), src).expect("write");
    std::fs::write(
        dir.path().join("src/sink/schema/mod.rs"),
        "const A: &str = \"coolantd_fine_here\";",
    )
    .expect("write");
    let found = violations(dir.path(), &["gpu".into(), "coolant".into()]);
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(
        found[0].starts_with("src/a.rs:6: metric name"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("src/a.rs:7: measurement name"),
        "{found:#?}"
    );
}
