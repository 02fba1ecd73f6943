//! InfluxDB line protocol encoder.
//!
//! Follows the InfluxDB v2 line protocol reference
//! (<https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/>):
//! `measurement[,tag=value...] field=value[,field=value...] timestamp_ns`.
//!
//! Escaping rules from that reference:
//! - measurement: comma and space;
//! - tag keys, tag values and field keys: comma, equals sign and space;
//! - string field values: double quote and backslash.
//!
//! Backslashes in names are also doubled, because the reference treats `\\` as one literal
//! backslash, and an undoubled trailing backslash would otherwise escape the separator after it.
//!
//! Line protocol has no way to carry a newline inside a line, so a newline or carriage return
//! anywhere is written as the two visible characters `\n` / `\r` (the value changes slightly,
//! the batch never breaks). NaN and infinite floats have no representation: such fields are
//! left out, and a point left without any field is skipped, because a line needs one.

use crate::model::{FieldValue, Point};
use std::fmt::Write as _;

/// Where a string is written, which decides the characters that need a backslash.
#[derive(Clone, Copy)]
enum Ctx {
    Measurement,
    /// Tag key, tag value or field key.
    Key,
    StringValue,
}

fn escape_into(out: &mut String, s: &str, ctx: Ctx) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str(if matches!(ctx, Ctx::StringValue) {
                "\\\\n"
            } else {
                "\\n"
            }),
            '\r' => out.push_str(if matches!(ctx, Ctx::StringValue) {
                "\\\\r"
            } else {
                "\\r"
            }),
            '\\' => out.push_str("\\\\"),
            ',' | ' ' if !matches!(ctx, Ctx::StringValue) => {
                out.push('\\');
                out.push(c);
            }
            '=' if matches!(ctx, Ctx::Key) => out.push_str("\\="),
            '"' if matches!(ctx, Ctx::StringValue) => out.push_str("\\\""),
            _ => out.push(c),
        }
    }
}

/// Appends the field value; returns false (writing nothing) for a non-finite float.
fn value_into(out: &mut String, v: &FieldValue) -> bool {
    match v {
        FieldValue::Float(f) if !f.is_finite() => return false,
        // Rust's `Display` for f64 prints the shortest string that reads back to the same
        // bits, never in exponent form, so full precision survives the round trip.
        FieldValue::Float(f) => {
            let _ = write!(out, "{f}");
        }
        FieldValue::Int(i) => {
            let _ = write!(out, "{i}i");
        }
        FieldValue::UInt(u) => {
            let _ = write!(out, "{u}u");
        }
        FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        FieldValue::Str(s) => {
            out.push('"');
            escape_into(out, s, Ctx::StringValue);
            out.push('"');
        }
    }
    true
}

/// Appends `p` as one line (with its trailing `\n`) to `out`. Returns false and leaves `out`
/// unchanged when the point cannot be written: empty measurement, or no writable field.
/// Tags with an empty key or value are left out (line protocol does not allow them), as are
/// fields with an empty key.
pub fn encode_point(p: &Point, out: &mut String) -> bool {
    if p.measurement.is_empty() {
        return false;
    }
    let start = out.len();
    escape_into(out, &p.measurement, Ctx::Measurement);
    for (k, v) in &p.tags {
        if k.is_empty() || v.is_empty() {
            continue;
        }
        out.push(',');
        escape_into(out, k, Ctx::Key);
        out.push('=');
        escape_into(out, v, Ctx::Key);
    }
    let mut first = true;
    for (k, v) in &p.fields {
        if k.is_empty() {
            continue;
        }
        let mark = out.len();
        out.push(if first { ' ' } else { ',' });
        escape_into(out, k, Ctx::Key);
        out.push('=');
        if value_into(out, v) {
            first = false;
        } else {
            out.truncate(mark);
        }
    }
    if first {
        out.truncate(start);
        return false;
    }
    let _ = writeln!(out, " {}", p.time_ns);
    true
}

/// Encodes one point to its line (with the trailing `\n`), or `None` when it is skipped.
pub fn encode_line(p: &Point) -> Option<String> {
    let mut s = String::with_capacity(256);
    encode_point(p, &mut s).then_some(s)
}

/// Encodes many points into one request body; skipped points leave no trace.
pub fn encode_batch(points: &[Point]) -> String {
    let mut s = String::with_capacity(points.len() * 256);
    for p in points {
        encode_point(p, &mut s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(p: &Point) -> String {
        encode_line(p).expect("point has a field")
    }

    #[test]
    fn all_field_types() {
        let p = Point::new("gpu", 1_700_000_000_123_456_789)
            .tag("host", "node01")
            .field("f", FieldValue::Float(1.5))
            .field("i", FieldValue::Int(-3))
            .field("u", FieldValue::UInt(u64::MAX))
            .field("b", FieldValue::Bool(true))
            .field("s", FieldValue::Str("ok".into()));
        assert_eq!(
            line(&p),
            "gpu,host=node01 f=1.5,i=-3i,u=18446744073709551615u,b=true,s=\"ok\" 1700000000123456789\n"
        );
    }

    #[test]
    fn measurement_escapes_comma_and_space_only() {
        let p = Point::new("a b,c=d", 0).field("v", FieldValue::Int(1));
        assert_eq!(line(&p), "a\\ b\\,c=d v=1i 0\n");
    }

    #[test]
    fn tags_and_field_keys_escape_comma_equals_space() {
        let p = Point::new("m", 5)
            .tag("k ey", "v,a=l ue")
            .field("f=k,e y", FieldValue::Bool(false));
        assert_eq!(line(&p), "m,k\\ ey=v\\,a\\=l\\ ue f\\=k\\,e\\ y=false 5\n");
    }

    #[test]
    fn string_values_escape_quote_and_backslash_but_not_comma() {
        let p =
            Point::new("m", 1).field("msg", FieldValue::Str(r#"he said "hi", a=b \ done"#.into()));
        assert_eq!(line(&p), "m msg=\"he said \\\"hi\\\", a=b \\\\ done\" 1\n");
    }

    #[test]
    fn trailing_backslash_in_tag_cannot_eat_the_separator() {
        let p = Point::new("m", 1)
            .tag("path", "C:\\")
            .field("v", FieldValue::Int(1));
        assert_eq!(line(&p), "m,path=C:\\\\ v=1i 1\n");
    }

    #[test]
    fn newlines_become_visible_escapes() {
        let p = Point::new("m\n", 1)
            .tag("t", "a\nb")
            .field("s", FieldValue::Str("x\r\ny".into()));
        assert_eq!(line(&p), "m\\n,t=a\\nb s=\"x\\\\r\\\\ny\" 1\n");
    }

    #[test]
    fn non_finite_floats_are_left_out() {
        let p = Point::new("m", 1)
            .field("a", FieldValue::Float(f64::NAN))
            .field("b", FieldValue::Float(2.0))
            .field("c", FieldValue::Float(f64::INFINITY));
        assert_eq!(line(&p), "m b=2 1\n");
    }

    #[test]
    fn point_without_writable_field_is_skipped() {
        let mut out = String::from("keep\n");
        let p = Point::new("m", 1).field("a", FieldValue::Float(f64::NEG_INFINITY));
        assert!(!encode_point(&p, &mut out));
        assert!(!encode_point(&Point::new("m", 1), &mut out));
        let empty_measurement = Point::new("", 1).field("a", FieldValue::Int(1));
        assert!(!encode_point(&empty_measurement, &mut out));
        assert_eq!(out, "keep\n");
    }

    #[test]
    fn empty_tags_and_field_keys_are_left_out() {
        let p = Point::new("m", -1)
            .tag("empty", "")
            .tag("", "x")
            .field("", FieldValue::Int(1))
            .field("v", FieldValue::Int(2));
        assert_eq!(line(&p), "m v=2i -1\n");
    }

    #[test]
    fn floats_keep_full_precision() {
        let v = 0.1 + 0.2;
        let p = Point::new("m", 0).field("v", FieldValue::Float(v));
        let l = line(&p);
        let num = l
            .trim_start_matches("m v=")
            .split(' ')
            .next()
            .expect("value");
        assert_eq!(num.parse::<f64>().expect("float"), v);
        assert_eq!(
            line(&Point::new("m", 0).field("v", FieldValue::Float(1e-7))),
            "m v=0.0000001 0\n"
        );
    }

    #[test]
    fn batch_concatenates_and_skips() {
        let a = Point::new("a", 1).field("v", FieldValue::Int(1));
        let b = Point::new("b", 2);
        let c = Point::new("c", 3).field("v", FieldValue::Int(3));
        assert_eq!(encode_batch(&[a, b, c]), "a v=1i 1\nc v=3i 3\n");
    }

    fn any_value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<f64>().prop_map(FieldValue::Float),
            any::<i64>().prop_map(FieldValue::Int),
            any::<u64>().prop_map(FieldValue::UInt),
            any::<bool>().prop_map(FieldValue::Bool),
            any::<String>().prop_map(FieldValue::Str),
        ]
    }

    proptest! {
        #[test]
        fn any_point_is_at_most_one_line(
            m in any::<String>(),
            tags in proptest::collection::vec((any::<String>(), any::<String>()), 0..4),
            fields in proptest::collection::vec((any::<String>(), any_value()), 0..5),
            t in any::<i64>(),
        ) {
            let mut p = Point::new(m, t);
            for (k, v) in tags { p = p.tag(k, v); }
            for (k, v) in fields { p = p.field(k, v); }
            let mut out = String::new();
            if encode_point(&p, &mut out) {
                prop_assert!(out.ends_with('\n'));
                prop_assert_eq!(out.matches('\n').count(), 1);
                prop_assert!(!out.contains('\r'));
                let suffix = format!(" {t}\n");
                prop_assert!(out.ends_with(&suffix));
            } else {
                prop_assert!(out.is_empty());
            }
        }
    }
}
