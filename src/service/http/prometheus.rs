//! `/metrics`: the snapshot's points and the daemon's own metrics in the Prometheus text
//! exposition format (0.0.4). Names come from the schema (`sink::schema`); this file only
//! formats them: sanitising, label escaping, one `# HELP` and `# TYPE` per family.

use super::Health;
use crate::model::{FieldValue, LatencyHistogram, Point, Snapshot};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// One metric family: its type, help text and samples keyed by their rendered label set.
struct Family {
    kind: &'static str,
    help: String,
    /// Rendered label set → (value, point time). The latest point wins a duplicate series,
    /// because Prometheus rejects a scrape that repeats a series.
    samples: BTreeMap<String, (f64, i64)>,
}

/// Makes `s` a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) by replacing every
/// other character with `_`. Names that are already valid, as all of coolantd's are, pass
/// unchanged, so they stay identical to the InfluxDB export names.
pub fn sanitize_metric_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Makes `s` a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`, which
/// Prometheus reserves).
fn sanitize_label_name(s: &str) -> String {
    let mut out = sanitize_metric_name(s).replace(':', "_");
    while out.starts_with("__") {
        out.remove(0);
    }
    out
}

/// Escapes a label value: backslash, double quote and line feed, as the format requires.
fn escape_label_value(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes HELP text: backslash and line feed.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn render_labels(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut out = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&sanitize_label_name(k));
        out.push_str("=\"");
        escape_label_value(v, &mut out);
        out.push('"');
    }
    out.push('}');
    out
}

/// Formats a sample value the way Prometheus parses it (`NaN`, `+Inf`, `-Inf` spelled out).
fn format_value(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

fn add_sample(
    families: &mut BTreeMap<String, Family>,
    name: String,
    kind: &'static str,
    help: impl FnOnce() -> String,
    labels: String,
    value: f64,
    time_ns: i64,
) {
    let family = families.entry(name).or_insert_with(|| Family {
        kind,
        help: help(),
        samples: BTreeMap::new(),
    });
    match family.samples.get(&labels) {
        Some((_, t)) if *t > time_ns => {}
        _ => {
            family.samples.insert(labels, (value, time_ns));
        }
    }
}

/// Adds the samples of one point. Naming: each numeric or boolean field becomes the metric
/// `<measurement>_<field>`, exactly the name VictoriaMetrics gives the same point written
/// through the InfluxDB line protocol, so one dashboard query works on both paths. Tags
/// become labels. Booleans are 0/1. A string field becomes an info-style metric
/// `<measurement>_<field>_info{…,value="<string>"} 1`.
fn add_point(families: &mut BTreeMap<String, Family>, p: &Point) {
    for (field, value) in &p.fields {
        let base = sanitize_metric_name(&format!("{}_{}", p.measurement, field));
        let (name, v, extra) = match value {
            FieldValue::Float(v) => (base, *v, None),
            FieldValue::Int(v) => (base, *v as f64, None),
            FieldValue::UInt(v) => (base, *v as f64, None),
            FieldValue::Bool(b) => (base, if *b { 1.0 } else { 0.0 }, None),
            FieldValue::Str(s) => (format!("{base}_info"), 1.0, Some(s.clone())),
        };
        let mut labels = p.tags.clone();
        if let Some(s) = extra {
            labels.push(("value".into(), s));
        }
        // The meaning and unit documented in docs/metrics.md, where every field is listed.
        let help = || {
            let doc = crate::sink::schema::field_help(&p.measurement, field)
                .unwrap_or_else(|| format!("measurement {} field {field}", p.measurement));
            escape_help(&if matches!(value, FieldValue::Str(_)) {
                format!("{doc} (string value in label `value`)")
            } else {
                doc
            })
        };
        let kind = if crate::sink::schema::is_counter(&p.measurement, field) {
            "counter"
        } else {
            "gauge"
        };
        add_sample(
            families,
            name,
            kind,
            help,
            render_labels(&labels),
            v,
            p.time_ns,
        );
    }
}

/// Renders the Prometheus text exposition format (0.0.4): the snapshot's points, then the
/// daemon's own metrics (`coolantd_*`) when `health` is given. Families are sorted by name,
/// each with one `# HELP` and one `# TYPE` line.
pub fn render_metrics(snap: &Snapshot, health: Option<&Health>, now: Instant) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for p in &snap.points {
        add_point(&mut families, p);
    }
    use crate::sink::schema::process::{self as own_metrics, ProcessMetric};
    let mut own: Vec<(ProcessMetric, f64)> = vec![
        (own_metrics::SNAPSHOT_TICK, snap.tick as f64),
        (own_metrics::SNAPSHOT_READY, bool_f64(snap.ready)),
        (own_metrics::DRY_RUN, bool_f64(snap.dry_run)),
    ];
    if let Some(h) = health {
        own.extend([
            (own_metrics::TICKS_TOTAL, h.ticks() as f64),
            (
                own_metrics::TICK_DURATION_SECONDS,
                h.last_tick_duration_ns.load(Ordering::Relaxed) as f64 / 1e9,
            ),
            (
                own_metrics::TICK_DURATION_MAX_SECONDS,
                h.max_tick_duration_ns.load(Ordering::Relaxed) as f64 / 1e9,
            ),
            (
                own_metrics::UPTIME_SECONDS,
                now.saturating_duration_since(h.started).as_secs_f64(),
            ),
            (
                own_metrics::HTTP_CONNECTIONS_SHED_TOTAL,
                h.http_shed.load(Ordering::Relaxed) as f64,
            ),
            (
                own_metrics::HTTP_CONNECTIONS_TIMED_OUT_TOTAL,
                h.http_timed_out.load(Ordering::Relaxed) as f64,
            ),
        ]);
        if let Some(age) = h.last_tick_age(now) {
            own.push((own_metrics::LAST_TICK_AGE_SECONDS, age.as_secs_f64()));
        }
    }
    // The running version, as the usual `*_build_info` gauge with the value 1.
    let info = own_metrics::BUILD_INFO;
    add_sample(
        &mut families,
        info.name.to_string(),
        info.kind.as_str(),
        || info.help.to_string(),
        render_labels(&[("version".into(), env!("CARGO_PKG_VERSION").into())]),
        1.0,
        0,
    );
    for (m, value) in own {
        // A point family of the same name wins; the daemon's own value is then left out
        // rather than producing a duplicate family the scraper would reject.
        if families.contains_key(m.name) {
            continue;
        }
        add_sample(
            &mut families,
            m.name.to_string(),
            m.kind.as_str(),
            || m.help.to_string(),
            String::new(),
            value,
            0,
        );
    }
    let mut out = String::with_capacity(families.len() * 128);
    for (name, family) in &families {
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {}", family.kind);
        for (labels, (value, _)) in &family.samples {
            out.push_str(name);
            out.push_str(labels);
            out.push(' ');
            format_value(*value, &mut out);
            out.push('\n');
        }
    }
    if let Some(rack) = &snap.rack {
        let l = &rack.latency;
        for (m, h) in [
            (own_metrics::RACK_READING_AGE_SECONDS, &l.reading_age),
            (own_metrics::RACK_READING_DELAY_SECONDS, &l.reading_delay),
            (own_metrics::RACK_CAP_ACK_SECONDS, &l.cap_ack),
        ] {
            render_histogram(&mut out, m, h);
        }
    }
    out
}

/// One histogram family: cumulative `_bucket{le}` in seconds, `+Inf`, `_sum` and `_count`.
fn render_histogram(
    out: &mut String,
    m: crate::sink::schema::process::ProcessMetric,
    h: &LatencyHistogram,
) {
    let name = m.name;
    let _ = writeln!(out, "# HELP {name} {}", escape_help(m.help));
    let _ = writeln!(out, "# TYPE {name} {}", m.kind.as_str());
    for (bound, count) in h.bounds_ms.iter().zip(&h.counts) {
        let _ = write!(out, "{name}_bucket{{le=\"");
        format_value(bound / 1e3, out);
        let _ = writeln!(out, "\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = write!(out, "{name}_sum ");
    format_value(h.sum_ms / 1e3, out);
    out.push('\n');
    let _ = writeln!(out, "{name}_count {}", h.count);
}

fn bool_f64(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_escaping() {
        assert_eq!(sanitize_metric_name("gpu_core"), "gpu_core");
        assert_eq!(sanitize_metric_name("cdu-a.flow"), "cdu_a_flow");
        assert_eq!(sanitize_metric_name("1x"), "_1x");
        assert_eq!(sanitize_label_name("__name"), "_name");
        assert_eq!(sanitize_label_name("a:b"), "a_b");
        let mut s = String::new();
        escape_label_value("a\\b\"c\nd", &mut s);
        assert_eq!(s, "a\\\\b\\\"c\\nd");
        let mut v = String::new();
        format_value(f64::NEG_INFINITY, &mut v);
        assert_eq!(v, "-Inf");
    }

    #[test]
    fn a_rack_histogram_has_cumulative_buckets_sum_and_count() {
        let mut h = LatencyHistogram::default();
        h.observe_ms(4.0);
        h.observe_ms(60.0);
        let mut out = String::new();
        render_histogram(
            &mut out,
            crate::sink::schema::process::RACK_CAP_ACK_SECONDS,
            &h,
        );
        let n = "coolantd_rack_cap_ack_seconds";
        assert!(out.contains(&format!("# TYPE {n} histogram\n")), "{out}");
        assert!(
            out.contains(&format!("{n}_bucket{{le=\"0.003\"}} 0\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{n}_bucket{{le=\"0.005\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{n}_bucket{{le=\"0.075\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{n}_bucket{{le=\"+Inf\"}} 2\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{n}_sum 0.064\n")), "{out}");
        assert!(out.contains(&format!("{n}_count 2\n")), "{out}");
    }
}
