//! Real JSON outputs validated against the schemas in `docs/schemas/` with an independent
//! validator (python3-jsonschema, Draft 2020-12): `coolantd probe --json` on the simulator,
//! once with every register read and once with the CDU unreachable (the error shape).

#[path = "support/sim_daemon.rs"]
mod sim_daemon;

use sim_daemon::{free_port, sim_config_text, TempDir};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_coolantd");

/// Validates `doc` against `docs/schemas/<schema>`; panics with the validator's message.
fn validate(schema: &str, doc: &[u8]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/schemas")
        .join(schema);
    let dir = TempDir::new("schema");
    let doc_path = dir.0.join("doc.json");
    std::fs::write(&doc_path, doc).expect("write document");
    let script = "import json,sys,jsonschema\n\
        s=json.load(open(sys.argv[1]));d=json.load(open(sys.argv[2]))\n\
        jsonschema.Draft202012Validator.check_schema(s)\n\
        errs=sorted(jsonschema.Draft202012Validator(s).iter_errors(d),key=lambda e:list(e.path))\n\
        [print(list(e.path),e.message) for e in errs]\n\
        sys.exit(1 if errs else 0)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .arg(&doc_path)
        .output()
        .expect("python3 runs (apt-get install python3-jsonschema)");
    assert!(
        out.status.success(),
        "{schema}: {}{}\ndocument: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(doc)
    );
}

fn probe(replace: &[(&str, &str)]) -> serde_json::Value {
    probe_text(|t| t, replace)
}

fn probe_text(edit: impl Fn(String) -> String, replace: &[(&str, &str)]) -> serde_json::Value {
    let dir = TempDir::new("probe-json");
    let port = free_port();
    let text = edit(sim_config_text(port, &dir.0.join("state"), replace, ""));
    let config = dir.0.join("coolantd.toml");
    std::fs::write(&config, text).expect("write config");
    let out = Command::new(BIN)
        .args(["probe", "--json", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    validate("probe.schema.json", &out.stdout);
    serde_json::from_slice(&out.stdout).expect("probe --json is JSON")
}

#[test]
fn probe_json_matches_its_schema_with_values() {
    let r = probe(&[]);
    let regs = r["cdus"][0]["registers"].as_array().expect("registers");
    let supply = regs
        .iter()
        .find(|x| x["role"] == "supply_temperature")
        .expect("supply register");
    assert_eq!(supply["reading"]["unit"], "°C", "{supply}");
    assert!(supply["reading"]["value"].is_number(), "{supply}");
    assert_eq!(supply["verdict"], "plausible");
    assert_eq!(r["gpus"][0]["core_temp"]["unit"], "°C");
    // Nothing of Rust's enum or Duration encodings leaks out.
    let text = r.to_string();
    for leak in ["\"Ok\"", "\"Err\"", "\"secs\"", "\"nanos\""] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
}

#[test]
fn probe_json_matches_its_schema_with_an_unreachable_cdu() {
    // Port 1 on loopback: nothing listens, so every register is a transport error.
    let r = probe(&[("address = \"127.0.0.1:", "address = \"127.0.0.1:1\"\n#")]);
    let regs = r["cdus"][0]["registers"].as_array().expect("registers");
    assert!(!regs.is_empty());
    for reg in regs {
        assert_eq!(reg["reading"]["kind"], "transport", "{reg}");
        assert!(reg["reading"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()));
        assert_eq!(reg["verdict"], "unreadable");
    }
}

#[test]
fn probe_needs_no_control_table_but_run_does() {
    // config/sim.toml without its [control] and [control.pid] tables.
    let strip = |t: String| {
        let start = t.find("[control]").expect("sim.toml has [control]");
        let end = t.find("[simulator]").expect("sim.toml has [simulator]");
        format!("{}{}", &t[..start], &t[end..])
    };
    let r = probe_text(strip, &[]);
    assert_eq!(r["gpus"].as_array().map(Vec::len), Some(8));
    assert!(r["cdus"][0]["registers"][0]["reading"]["value"].is_number());

    let dir = TempDir::new("no-control");
    let text = strip(sim_config_text(free_port(), &dir.0.join("state"), &[], ""));
    let config = dir.0.join("coolantd.toml");
    std::fs::write(&config, text).expect("write config");
    let out = Command::new(BIN)
        .args(["check-config"])
        .arg(&config)
        .output()
        .expect("run check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "run configs still need [control]");
    assert!(err.contains("control") && err.contains("probe"), "{err}");
}
