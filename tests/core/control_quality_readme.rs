//! README.md's control-quality table and the baseline that `cargo bench --bench
//! control_quality` guards (benches/control_quality_baseline.json) say the same thing: the
//! bench fails when the code drifts from the baseline, and this test fails when the README
//! drifts from it.

use serde_json::Value;
use std::path::Path;

fn case_of(plant: &str) -> &'static str {
    match plant {
        "H200, SP 55 °C" => "h200",
        "H100, SP 72 °C" => "h100",
        "H100 on 50 °C water, SP 82 °C" => "h100-warm",
        "H200 rack, 64 GPUs that differ, SP 55 °C" => "rack",
        other => panic!("README.md: unknown plant {other:?} in the control-quality table"),
    }
}

/// The number a cell starts with (`78 K·s` → 78); `—` is no figure.
fn figure(cell: &str) -> Option<f64> {
    let n: String = cell
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    n.parse().ok()
}

#[test]
fn readme_table_matches_the_guarded_baseline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("benches/control_quality_baseline.json"))
            .expect("benches/control_quality_baseline.json"),
    )
    .expect("the baseline is JSON");
    let section = readme
        .split("### Control quality")
        .nth(1)
        .expect("README.md has a Control quality section");
    let columns = [
        "above_1k_s",
        "above_ks",
        "overshoot_k",
        "pump_kj",
        "perf_lost_pct",
        "slowdown_s",
    ];
    let mut rows = 0;
    for line in section.lines().filter(|l| l.starts_with("| H")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 8, "README.md: {line}");
        let (case, strategy) = (case_of(cells[0]), cells[1]);
        let row = base["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["case"] == case && r["strategy"] == strategy)
            .unwrap_or_else(|| panic!("no baseline row for {case} / {strategy}"));
        for (metric, cell) in columns.iter().zip(&cells[2..]) {
            assert_eq!(
                figure(cell),
                row[*metric].as_f64(),
                "README.md {case} / {strategy}: {metric} reads {cell:?}, the baseline {}",
                row[*metric]
            );
        }
        rows += 1;
    }
    assert_eq!(
        rows,
        base["rows"].as_array().map_or(0, Vec::len),
        "every guarded row is in the README table"
    );
}
