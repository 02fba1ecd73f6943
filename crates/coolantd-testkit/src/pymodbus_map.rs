//! The register map shared by the pymodbus tests (TCP and RTU): every data type in every
//! byte order, bits, an implausible value, a missing register and two writables. The server
//! side's words are computed in Python with `struct` (`pymodbus_cdu.py`), so a decoding
//! mistake in coolantd cannot hide behind the same mistake in its encoder.

use coolantd::model::{CduSample, Role, SensorFault};
use coolantd::profile::CduProfile;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

pub const PYTHON: &str = "/usr/bin/python3";

/// One register: what the server holds (raw) and what the collector must decode.
pub struct Entry {
    pub name: String,
    pub kind: &'static str,
    pub address: u16,
    pub data_type: &'static str,
    pub order: &'static str,
    pub raw: f64,
    pub expected: f64,
    /// Extra profile keys (scale, role, plausible, ...).
    pub extra: String,
}

pub const ORDERS: [&str; 4] = ["ABCD", "DCBA", "BADC", "CDAB"];

pub fn width(t: &str) -> u16 {
    match t {
        "INT16" | "UINT16" => 1,
        "FLOAT64" => 4,
        _ => 2,
    }
}

/// Every type in every order, a scaled register, an implausible one and two writables.
pub fn entries() -> Vec<Entry> {
    let mut out = Vec::new();
    let mut address = 0u16;
    let types: [(&str, f64, f64); 6] = [
        ("INT16", -1234.0, -1234.0),
        ("UINT16", 51234.0, 51234.0),
        ("INT32", -123_456_789.0, -123_456_789.0),
        ("UINT32", 3_000_000_000.0, 3_000_000_000.0),
        // The server stores the nearest f32; that is what must come back.
        ("FLOAT32", 123.456, f64::from(123.456f32)),
        ("FLOAT64", 1_234_567.890_123, 1_234_567.890_123),
    ];
    for (t, raw, expected) in types {
        for order in ORDERS {
            out.push(Entry {
                name: format!("{}_{}", t.to_lowercase(), order.to_lowercase()),
                kind: "input",
                address,
                data_type: t,
                order,
                raw,
                expected,
                extra: String::new(),
            });
            address += width(t);
        }
    }
    // raw 652 in tenths, offset -40: 25.2 °C.
    out.push(Entry {
        name: "scaled_supply".into(),
        kind: "input",
        address,
        data_type: "INT16",
        order: "BADC",
        raw: 652.0,
        expected: 652.0 * 0.1 - 40.0,
        extra: "role = \"supply_temperature\"\nscale = 0.1\noffset = -40.0\n".into(),
    });
    address += 1;
    out.push(Entry {
        name: "implausible_return".into(),
        kind: "input",
        address,
        data_type: "FLOAT32",
        order: "ABCD",
        raw: 999.0,
        expected: f64::NAN,
        extra: "role = \"return_temperature\"\nplausible = [0.0, 100.0]\n".into(),
    });
    out.push(Entry {
        name: "pump_cmd".into(),
        kind: "holding",
        address: 0,
        data_type: "FLOAT32",
        order: "CDAB",
        raw: 45.0,
        expected: 45.0,
        extra: "role = \"pump_speed_command\"\nwritable = true\nlimits = [20.0, 100.0]\n".into(),
    });
    out.push(Entry {
        name: "watchdog".into(),
        kind: "holding",
        address: 2,
        data_type: "UINT16",
        order: "ABCD",
        raw: 7.0,
        expected: 7.0,
        extra: "role = \"watchdog\"\nwritable = true\nlimits = [0.0, 65535.0]\n".into(),
    });
    out
}

/// Address of the status word whose bits 2 (set) and 3 (clear) the profile maps.
pub const STATUS_WORD: u16 = 200;
/// An input register the profile maps and the server does not have.
pub const MISSING: u16 = 900;

pub fn server_map(entries: &[Entry]) -> String {
    let mut items: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                r#"{{"kind":"{}","address":{},"type":"{}","order":"{}","raw":{:?}}}"#,
                e.kind, e.address, e.data_type, e.order, e.raw
            )
        })
        .collect();
    items.push(format!(
        r#"{{"kind":"input","address":{STATUS_WORD},"type":"UINT16","order":"ABCD","raw":4}}"#
    ));
    items.push(r#"{"kind":"coil","address":0,"value":true}"#.into());
    items.push(r#"{"kind":"discrete","address":0,"value":false}"#.into());
    items.push(r#"{"kind":"discrete","address":1,"value":true}"#.into());
    format!("[{}]", items.join(","))
}

pub fn profile_text(entries: &[Entry]) -> String {
    let mut t = String::from("[profile]\nname = \"pymodbus-test\"\n");
    for e in entries {
        let _ = write!(
            t,
            "\n[[register]]\nname = \"{}\"\nkind = \"{}\"\naddress = {}\ntype = \"{}\"\n\
             order = \"{}\"\n{}",
            e.name, e.kind, e.address, e.data_type, e.order, e.extra
        );
    }
    let _ = write!(
        t,
        "\n[[register]]\nname = \"status_bit2\"\nkind = \"input\"\naddress = {STATUS_WORD}\n\
         type = \"BIT\"\nbit = 2\n\
         \n[[register]]\nname = \"status_bit3\"\nkind = \"input\"\naddress = {STATUS_WORD}\n\
         type = \"BIT\"\nbit = 3\n\
         \n[[register]]\nname = \"missing\"\nkind = \"input\"\naddress = {MISSING}\n\
         type = \"INT16\"\n\
         \n[[register]]\nname = \"remote\"\nrole = \"remote_enable\"\nkind = \"coil\"\n\
         address = 0\ntype = \"BIT\"\n\
         \n[[register]]\nname = \"leak\"\nrole = \"leak\"\nkind = \"discrete\"\naddress = 0\n\
         type = \"BIT\"\n\
         \n[[register]]\nname = \"door\"\nkind = \"discrete\"\naddress = 1\ntype = \"BIT\"\n"
    );
    t
}

pub struct Fixture {
    pub dir: PathBuf,
    /// Removes `dir` when the fixture is dropped.
    _tmp: tempfile::TempDir,
    pub map: PathBuf,
    pub profile: Arc<CduProfile>,
    pub entries: Vec<Entry>,
}

pub fn fixture(tag: &str) -> Fixture {
    let tmp = crate::temp_dir(&format!("pymodbus-{tag}"));
    let dir = tmp.path().to_path_buf();
    let entries = entries();
    let map = dir.join("map.json");
    std::fs::write(&map, server_map(&entries)).expect("write map");
    let profile_path = dir.join("pymodbus-test.toml");
    std::fs::write(&profile_path, profile_text(&entries)).expect("write profile");
    let profile = Arc::new(CduProfile::load(&profile_path).expect("generated profile is valid"));
    Fixture {
        dir,
        _tmp: tmp,
        map,
        profile,
        entries,
    }
}

pub fn value<'a>(s: &'a CduSample, name: &str) -> &'a Result<f64, SensorFault> {
    &s.registers
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no register {name} in the sample"))
        .value
}

/// Asserts that a poll of the full map decoded every register as the server encoded it.
pub fn assert_full_sample(s: &CduSample, fx: &Fixture) {
    for e in &fx.entries {
        if e.expected.is_nan() {
            continue;
        }
        match value(s, &e.name) {
            Ok(v) => assert!(
                (v - e.expected).abs() <= e.expected.abs() * 1e-12 + 1e-9,
                "{}: decoded {v}, expected {}",
                e.name,
                e.expected
            ),
            Err(f) => panic!("{}: {f}", e.name),
        }
    }
    assert_eq!(value(s, "status_bit2"), &Ok(1.0));
    assert_eq!(value(s, "status_bit3"), &Ok(0.0));
    assert_eq!(value(s, "remote"), &Ok(1.0));
    assert_eq!(value(s, "leak"), &Ok(0.0));
    assert_eq!(value(s, "door"), &Ok(1.0));
    match value(s, "implausible_return") {
        Err(SensorFault::Implausible { value, min, max }) => {
            assert_eq!((*value, *min, *max), (999.0, 0.0, 100.0));
        }
        other => panic!("implausible_return: {other:?}"),
    }
    // The missing register's request fails with exception 0x02, named; nothing else does.
    match value(s, "missing") {
        Err(f @ SensorFault::Exception { code, meaning }) => {
            assert_eq!(*code, 2);
            assert!(
                meaning.to_lowercase().contains("illegal data address"),
                "{f}"
            );
        }
        other => panic!("missing: {other:?}"),
    }
    assert_eq!(
        s.registers.iter().filter(|r| r.value.is_err()).count(),
        2,
        "only `missing` and `implausible_return` fail: {s:?}"
    );
    assert_eq!(s.worst(Role::SupplyTemperature), Some(652.0 * 0.1 - 40.0));
}
