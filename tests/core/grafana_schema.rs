//! The Grafana dashboards and alert rules query only what coolantd writes, and
//! docs/metrics.md documents everything it writes. Both are checked against
//! `schema::catalog()`, which is produced by the same functions that build the points.

use coolantd::sink::schema::{catalog, FieldKind, MeasurementSchema};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            files(&p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
}

fn json_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("query", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => json_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_queries(v, out)),
        _ => {}
    }
}

/// `query: '...'` lines of a provisioning YAML file (single-quoted scalars, `''` for `'`).
fn yaml_queries(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("query: "))
        .map(|q| {
            let q = q.trim();
            q.strip_prefix('\'')
                .and_then(|q| q.strip_suffix('\''))
                .map(|q| q.replace("''", "'"))
                .unwrap_or_else(|| q.to_string())
        })
        .collect()
}

/// Identifiers in double quotes, in order.
fn quoted(s: &str) -> Vec<String> {
    s.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, t)| t.to_string())
        .collect()
}

/// Checks one InfluxQL query; returns a description of each problem.
fn check(q: &str, cat: &[MeasurementSchema]) -> Vec<String> {
    let mut bad = Vec::new();
    let upper = q.to_ascii_uppercase();
    let find = |m: &str| cat.iter().find(|s| s.name == m);
    if upper.starts_with("SHOW TAG VALUES") {
        let ids = quoted(q);
        match ids.as_slice() {
            [m, k] => match find(m) {
                Some(s) if s.tags.contains(k) => {}
                Some(_) => bad.push(format!("`{k}` is not a tag of `{m}`")),
                None => bad.push(format!("unknown measurement `{m}`")),
            },
            _ => bad.push("expected SHOW TAG VALUES FROM \"m\" WITH KEY = \"k\"".into()),
        }
        return bad;
    }
    let (Some(sel), Some(from)) = (upper.find("SELECT "), upper.find(" FROM ")) else {
        return vec!["not a SELECT or SHOW TAG VALUES query".into()];
    };
    let select = &q[sel + 7..from];
    let rest = &q[from + 6..];
    let Some(m) = quoted(rest).first().cloned() else {
        return vec!["FROM without a quoted measurement".into()];
    };
    let Some(schema) = find(&m) else {
        return vec![format!("unknown measurement `{m}`")];
    };
    let fields = quoted(select);
    if fields.is_empty() {
        bad.push("SELECT names no quoted field".into());
    }
    for f in &fields {
        match schema.fields.get(f) {
            None => bad.push(format!("`{f}` is not a field of `{m}`")),
            Some(kind) => {
                let numeric_agg = ["mean(", "min(", "max(", "sum("]
                    .iter()
                    .any(|a| select.contains(&format!("{a}\"{f}\")")));
                if numeric_agg && !matches!(kind, FieldKind::Float | FieldKind::Int) {
                    bad.push(format!("numeric aggregate over `{f}`, a {kind:?} field"));
                }
            }
        }
    }
    // Everything else quoted after FROM: the measurement, then tags or fields in WHERE / GROUP BY.
    for id in quoted(rest).iter().skip(1) {
        if !schema.tags.contains(id) && !schema.fields.contains_key(id) {
            bad.push(format!("`{id}` is neither a tag nor a field of `{m}`"));
        }
        if rest.contains(&format!("\"{id}\" = true"))
            && schema.fields.get(id) != Some(&FieldKind::Bool)
        {
            bad.push(format!("`{id}` compared with true but is not a bool field"));
        }
    }
    bad
}

#[test]
fn dashboards_and_alert_rules_query_only_what_the_schema_writes() {
    let cat = catalog();
    let dir = root().join("config/grafana");
    let mut queries: Vec<(PathBuf, String)> = Vec::new();

    let mut dashboards = Vec::new();
    files(&dir.join("dashboards"), "json", &mut dashboards);
    assert!(!dashboards.is_empty(), "no dashboards found");
    for f in &dashboards {
        let text = std::fs::read_to_string(f).expect("dashboard readable");
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let mut q = Vec::new();
        json_queries(&v, &mut q);
        queries.extend(q.into_iter().map(|q| (f.clone(), q)));
    }

    let mut yamls = Vec::new();
    files(&dir.join("provisioning/alerting"), "yaml", &mut yamls);
    let mut rules = 0;
    for f in &yamls {
        let text = std::fs::read_to_string(f).expect("rules readable");
        assert!(
            text.lines().any(|l| l.trim() == "apiVersion: 1"),
            "{}",
            f.display()
        );
        assert!(text.lines().any(|l| l == "groups:"), "{}", f.display());
        rules += text.matches("\n      - uid: ").count();
        let q = yaml_queries(&text);
        queries.extend(q.into_iter().map(|q| (f.clone(), q)));
    }
    assert!(rules >= 7, "expected at least 7 alert rules, found {rules}");
    assert!(queries.len() >= 20, "only {} queries found", queries.len());

    let mut problems = Vec::new();
    for (f, q) in &queries {
        for p in check(q, &cat) {
            problems.push(format!("{}: {p}\n    in: {q}", f.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_catches_misspelt_fields_and_wrong_types() {
    let cat = catalog();
    assert!(check(
        r#"SELECT mean("core_temp_c") FROM "gpu" WHERE "host" = 'a'"#,
        &cat
    )
    .is_empty());
    assert!(!check(r#"SELECT mean("core_temp") FROM "gpu""#, &cat).is_empty());
    assert!(!check(r#"SELECT mean("core_temp_c") FROM "gpus""#, &cat).is_empty());
    assert!(!check(r#"SELECT max("leak") FROM "coolant""#, &cat).is_empty());
    assert!(!check(
        r#"SELECT last("flow_lpm") FROM "coolant" GROUP BY "pump""#,
        &cat
    )
    .is_empty());
    assert!(!check(
        r#"SELECT count("flow_lpm") FROM "coolant" WHERE "flow_lpm" = true"#,
        &cat
    )
    .is_empty());
    assert!(!check(r#"SHOW TAG VALUES FROM "gpu" WITH KEY = "cdu""#, &cat).is_empty());
}

#[test]
fn metrics_doc_lists_every_measurement_tag_and_field() {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    let mut missing = Vec::new();
    for m in catalog() {
        if !doc.contains(&format!("## `{}`", m.name)) {
            missing.push(format!("measurement heading for `{}`", m.name));
        }
        for t in &m.tags {
            if !doc.contains(&format!("`{t}`")) {
                missing.push(format!("tag `{t}` of `{}`", m.name));
            }
        }
        for f in m.fields.keys() {
            if !doc.contains(&format!("| `{f}` |")) {
                missing.push(format!("field `{f}` of `{}`", m.name));
            }
        }
    }
    assert!(missing.is_empty(), "docs/metrics.md lacks: {missing:?}");
}
