//! The daemon crate's top-level modules form layers, and no module imports one above it.
//!
//! The test reads every `.rs` file under `src/`, collects the top-level modules each one
//! names through `crate::X` (including `use crate::{X, Y}` groups and the crate-root macros
//! that expand to a module's items), and fails on any import cycle, naming it, and on any
//! import that points up the layering below. ARCHITECTURE.md ("Layers") explains the list;
//! change both together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may import only modules listed before it. `service` is
/// the top: it assembles the configuration (`crate::config` is `service::config`) and runs
/// the daemon.
const LAYERS: &[(&str, &str)] = &[
    (
        "log_limit",
        "rate-limited warnings (`log_limited!`), used from every layer above",
    ),
    ("units", "unit newtypes"),
    (
        "validate",
        "the issue collector and configuration error every section reports through",
    ),
    (
        "files",
        "reading and parsing TOML files with errors naming file and key",
    ),
    (
        "model",
        "samples in, actuations out, commands, alarms, points",
    ),
    ("control", "the pure control core"),
    (
        "wire",
        "the rack wire format between host agents and CDU controllers",
    ),
    (
        "remote",
        "the controller's remote GPU source and cap sender (sans-IO)",
    ),
    (
        "agent",
        "the host agent's cap lease and local thermal guard (sans-IO)",
    ),
    (
        "profile",
        "firmware profiles: register maps, board facts, the fitted plate model",
    ),
    (
        "collect",
        "what reads: NVML, Modbus, and their configuration sections",
    ),
    ("sim", "the plant simulator and its servers"),
    ("sink", "what writes out: schema, spool, InfluxDB"),
    (
        "link",
        "what talks both ways: MQTT state out and commands in, Sparkplug B",
    ),
    (
        "service",
        "the daemon: configuration assembly, tick, run loop, commands",
    ),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/sim/plant.rs` → `sim`), or `None` for the
/// crate root and the binary.
fn owner(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src_dir()).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?.as_os_str().to_str()?.to_string();
    if parts.next().is_some() {
        return Some(first);
    }
    let stem = first.strip_suffix(".rs")?;
    (stem != "lib" && stem != "main").then(|| stem.to_string())
}

/// The text without comments, so a doc link (`[`crate::sim::SimGpus`]`) is not an import.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        // A trailing comment; `://` keeps URLs inside strings whole.
        let code = match line.find(" //") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every name that follows `crate::` in `code`, with the first segment of each item of a
/// `crate::{a::b, c}` group.
fn crate_names(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        let after = &rest[i + "crate::".len()..];
        rest = after;
        // `$crate::` inside a macro counts as well: the macro's own file names its module.
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        item_start = true;
                        continue;
                    }
                    c if c.is_whitespace() => continue,
                    _ => {}
                }
                if item_start && depth == 0 {
                    let id = ident_at(&group[j..]);
                    if !id.is_empty() {
                        names.push(id.to_string());
                    }
                    item_start = false;
                }
            }
        } else {
            let id = ident_at(after);
            if !id.is_empty() {
                names.push(id.to_string());
            }
        }
    }
    names
}

/// Modules declared at the crate root (`pub mod x;`) and root re-exports of a module's child
/// (`pub use service::config;` makes `crate::config` mean `service`).
fn root_modules() -> (BTreeSet<String>, BTreeMap<String, String>) {
    let lib = src_dir().join("lib.rs");
    let text =
        std::fs::read_to_string(&lib).unwrap_or_else(|e| panic!("reading {}: {e}", lib.display()));
    let code = code_only(&text);
    let mut mods = BTreeSet::new();
    for line in code.lines() {
        let t = line.trim().trim_start_matches("pub ");
        if let Some(m) = t.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            mods.insert(m.trim().to_string());
        }
    }
    // Only re-exports of this crate's own modules are aliases; a re-export of another
    // crate (a workspace member) cannot take part in a cycle of this one.
    let mut aliases = BTreeMap::new();
    for line in code.lines() {
        let t = line.trim().trim_start_matches("pub ");
        if let Some(path) = t.strip_prefix("use ").and_then(|r| r.strip_suffix(';')) {
            let segs: Vec<&str> = path.trim().split("::").collect();
            if let (Some(first), Some(last)) = (segs.first(), segs.last()) {
                if mods.contains(*first) && !last.contains('{') {
                    aliases.insert(last.to_string(), first.to_string());
                }
            }
        }
    }
    (mods, aliases)
}

/// `#[macro_export]` macros live at the crate root but belong to the module that defines
/// them: `crate::log_limited!` in `sink` depends on whatever the macro expands to.
fn exported_macros(files: &[(PathBuf, String)]) -> BTreeMap<String, String> {
    let mut macros = BTreeMap::new();
    for (file, code) in files {
        let Some(module) = owner(file) else { continue };
        let mut rest = code.as_str();
        while let Some(i) = rest.find("#[macro_export]") {
            rest = &rest[i..];
            if let Some(j) = rest.find("macro_rules!") {
                let name = ident_at(rest[j + "macro_rules!".len()..].trim_start());
                macros.insert(name.to_string(), module.clone());
            }
            rest = &rest["#[macro_export]".len()..];
        }
    }
    macros
}

/// The import graph: module → (module it imports → files that do).
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn graph() -> Graph {
    let (mods, aliases) = root_modules();
    let mut paths = Vec::new();
    rust_files(&src_dir(), &mut paths);
    paths.sort();
    let files: Vec<(PathBuf, String)> = paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            let code = code_only(&text);
            (p, code)
        })
        .collect();
    let macros = exported_macros(&files);
    let mut g = Graph::new();
    for (file, code) in &files {
        let Some(from) = owner(file) else { continue };
        let rel = file
            .strip_prefix(src_dir())
            .unwrap_or(file)
            .display()
            .to_string();
        for name in crate_names(code) {
            let to = if let Some(m) = aliases.get(&name) {
                m.clone()
            } else if let Some(m) = macros.get(&name) {
                m.clone()
            } else if mods.contains(&name) {
                name
            } else {
                continue;
            };
            if to != from {
                g.entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(format!("src/{rel}"));
            }
        }
    }
    g
}

/// A cycle through `start`, if there is one, as the list of modules along it.
fn cycle_from(g: &Graph, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &Graph,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flat_map(|m| m.keys()) {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    walk(g, start, start, &mut path, &mut seen).then_some(path)
}

fn describe(g: &Graph, cycle: &[String]) -> String {
    cycle
        .windows(2)
        .map(|w| {
            let files: Vec<&str> = g[&w[0]][&w[1]].iter().map(String::as_str).collect();
            format!("{} → {} ({})", w[0], w[1], files.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn top_level_modules_import_no_cycle() {
    let g = graph();
    let mut cycles = Vec::new();
    let mut reported = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = cycle_from(&g, m) {
            let key: BTreeSet<String> = c.iter().cloned().collect();
            if reported.insert(key) {
                cycles.push(format!("cycle {}: {}", c.join(" → "), describe(&g, &c)));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn every_import_points_down_the_layers() {
    let (mods, _) = root_modules();
    let rank: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .map(|(i, (m, _))| (*m, i))
        .collect();
    for m in &mods {
        assert!(
            rank.contains_key(m.as_str()),
            "module `{m}` is declared in src/lib.rs but has no place in LAYERS \
             (tests/module_graph.rs): add it where its imports allow, and to ARCHITECTURE.md"
        );
    }
    let g = graph();
    let mut upward = Vec::new();
    for (from, tos) in &g {
        for (to, files) in tos {
            // Every module is ranked (checked above); an unranked one fails there first.
            let (Some(f), Some(t)) = (rank.get(from.as_str()), rank.get(to.as_str())) else {
                continue;
            };
            if f < t {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                upward.push(format!(
                    "{from} imports {to}, a higher layer ({})",
                    files.join(", ")
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layering {:?}:\n{}",
        LAYERS.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
        upward.join("\n")
    );
}

/// The parser itself: a test that could not see an import would pass on any code.
#[test]
fn the_parser_sees_every_form_of_import() {
    let code = code_only(
        "use crate::units::Celsius;\n\
         use crate::{model::Point, sim::{a, b}, validate};\n\
         // use crate::sink::Ignored;\n\
         let x = crate::profile::load(); // crate::collect in a comment\n\
         $crate::service::logging::RateLimit::new(\"x\");\n\
         let y = notcrate::control::x;\n",
    );
    let names = crate_names(&code);
    assert_eq!(
        names,
        ["units", "model", "sim", "validate", "profile", "service"]
    );
}

/// Every call in `src/service/**` and `src/main.rs` (the daemon and its commands) that
/// writes to hardware: an NVML `set_power_limit(` or a CDU register `write(` with a role.
/// The backends that implement the setters (collect, sim) are below and are not callers.
fn hardware_writes() -> Vec<(String, String)> {
    let mut paths = Vec::new();
    rust_files(&src_dir().join("service"), &mut paths);
    paths.push(src_dir().join("main.rs"));
    let mut found = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        let rel = p
            .strip_prefix(src_dir())
            .unwrap_or(&p)
            .display()
            .to_string();
        for line in code_only(&text).lines() {
            let t = line.trim();
            if t.starts_with("fn ") || t.starts_with("pub fn ") || t.starts_with("pub async fn ") {
                continue;
            }
            let nvml = t.contains("set_power_limit(");
            let cdu = t.find("write(").is_some_and(|i| {
                let args = &t[i..];
                let args = &args[..args.find(')').unwrap_or(args.len())];
                args.contains("role") || args.contains("Role::")
            });
            if nvml || cdu {
                found.push((format!("src/{rel}"), t.to_string()));
            }
        }
    }
    found
}

#[test]
fn only_the_actuate_module_writes_to_hardware() {
    let writes = hardware_writes();
    let (inside, outside): (Vec<_>, Vec<_>) = writes
        .into_iter()
        .partition(|(file, _)| file == "src/service/daemon/actuate.rs");
    // The scan must see the real calls, or it would pass on anything.
    assert!(
        inside.iter().any(|(_, l)| l.contains("set_power_limit("))
            && inside.iter().any(|(_, l)| l.contains("write(")),
        "the scan found no NVML setter or CDU write in actuate.rs: {inside:?}"
    );
    assert!(
        outside.is_empty(),
        "hardware writes outside src/service/daemon/actuate.rs (move them there):\n{}",
        outside
            .iter()
            .map(|(f, l)| format!("{f}: {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
