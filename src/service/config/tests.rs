//! Configuration errors must name the file, the key and what was expected.

use super::*;

const MINIMAL: &str = r#"
[site]
name = "lab"
host = "node01"

[control]

[[cdu]]
name = "cdu-a"
profile = "generic-cdu"
transport = "tcp"
address = "10.0.0.5:502"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("site.toml"))
}

fn one_issue(text: &str) -> ConfigIssue {
    let e = parse(text).expect_err("the configuration must be refused");
    assert_eq!(e.file, Path::new("site.toml"));
    assert!(!e.issues.is_empty());
    e.issues[0].clone()
}

#[test]
fn minimal_config_parses_with_defaults() {
    let c = parse(MINIMAL).expect("minimal config is valid");
    assert_eq!(c.cdus.len(), 1);
    assert_eq!(c.cdus[0].unit_id, 1);
    assert_eq!(c.cdus[0].timeout(), std::time::Duration::from_millis(500));
    assert_eq!(c.gpus.backend, GpuBackendKind::Nvml);
    assert_eq!(c.site.host_name(), "node01");
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let text = MINIMAL.replace("host = \"node01\"", "host = \"node01\"\nhots = 1");
    let i = one_issue(&text);
    assert_eq!(i.key, "site.hots");
    assert!(i.expected.contains("unknown field `hots`"), "{i:?}");
    assert!(i.expected.contains("line"), "position is reported: {i:?}");
}

#[test]
fn wrong_type_names_the_key() {
    let text = MINIMAL.replace(
        "transport = \"tcp\"",
        "transport = \"tcp\"\nunit_id = \"one\"",
    );
    let e = parse(&text).expect_err("a string unit id is refused");
    let msg = e.to_string();
    assert!(msg.starts_with("site.toml: "), "{msg}");
    assert!(msg.contains("cdu"), "{msg}");
}

#[test]
fn semantic_errors_are_all_reported_with_keys() {
    let text = MINIMAL.replace("10.0.0.5:502", "10.0.0.5").replace(
        "transport = \"tcp\"",
        "transport = \"tcp\"\nunit_id = 0\ntimeout_ms = 5",
    );
    let e = parse(&text).expect_err("invalid values are refused");
    let keys: Vec<&str> = e.issues.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"cdu[0].address"), "{keys:?}");
    assert!(keys.contains(&"cdu[0].unit_id"), "{keys:?}");
    assert!(keys.contains(&"cdu[0].timeout_ms"), "{keys:?}");
    let addr = e
        .issues
        .iter()
        .find(|i| i.key == "cdu[0].address")
        .map(|i| i.expected.clone());
    assert_eq!(addr.as_deref(), Some("`host:port`, got `10.0.0.5`"));
}

#[test]
fn duplicate_cdu_names_are_refused() {
    let text = format!("{MINIMAL}\n[[cdu]]\nname = \"cdu-a\"\nprofile = \"generic-cdu\"\ntransport = \"tcp\"\naddress = \"10.0.0.6:502\"\n");
    let e = parse(&text).expect_err("duplicate names are refused");
    assert!(
        e.issues
            .iter()
            .any(|i| i.key == "cdu[1].name" && i.expected.contains("unique")),
        "{e}"
    );
}

#[test]
fn rtu_transport_parses_and_checks_serial_settings() {
    let text = MINIMAL.replace(
        "transport = \"tcp\"\naddress = \"10.0.0.5:502\"",
        "transport = \"rtu\"\ndevice = \"/dev/ttyUSB0\"\nbaud = 12345\nparity = \"none\"",
    );
    let e = parse(&text).expect_err("odd baud rate is refused");
    assert!(e.issues.iter().any(|i| i.key == "cdu[0].baud"), "{e}");
    let ok = text.replace("12345", "9600");
    let c = parse(&ok).expect("valid RTU config");
    assert!(matches!(
        c.cdus[0].transport,
        CduTransport::Rtu {
            baud: 9600,
            parity: Parity::None,
            ..
        }
    ));
}

#[test]
fn simulated_backend_needs_a_simulator_section() {
    let text = format!("{MINIMAL}\n[gpus]\nbackend = \"simulated\"\n");
    let i = one_issue(&text);
    assert_eq!(i.key, "gpus.backend");
}

#[test]
fn bad_site_name_and_log_level_are_refused() {
    let text =
        MINIMAL.replace("name = \"lab\"", "name = \"my lab/1\"") + "\n[logging]\nlevel = \"=[\"\n";
    let e = parse(&text).expect_err("refused");
    let keys: Vec<&str> = e.issues.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"site.name"), "{keys:?}");
    assert!(keys.contains(&"logging.level"), "{keys:?}");
}

#[test]
fn missing_file_is_named() {
    let e = Config::load(Path::new("/nonexistent/coolantd.toml")).expect_err("missing file");
    assert!(e.to_string().contains("/nonexistent/coolantd.toml"), "{e}");
}

#[test]
fn toml_syntax_error_reports_a_line() {
    let e = parse("[site\nname = 1").expect_err("syntax error");
    assert!(e.issues[0].expected.contains("line 1"), "{e}");
}

#[test]
fn tcp_without_address_says_what_is_missing() {
    let text = MINIMAL.replace("address = \"10.0.0.5:502\"", "");
    let i = one_issue(&text);
    assert_eq!(i.key, "cdu[0]");
    assert!(i.expected.contains("needs `address"), "{i:?}");
}

#[test]
fn two_cdus_on_one_serial_device_are_refused() {
    let rtu = |name: &str, unit: u8| {
        format!("\n[[cdu]]\nname = \"{name}\"\nprofile = \"generic-cdu\"\ntransport = \"rtu\"\ndevice = \"/dev/ttyUSB0\"\nunit_id = {unit}\n")
    };
    let text = format!("{MINIMAL}{}{}", rtu("b", 2), rtu("c", 3));
    let e = parse(&text).expect_err("two CDUs on one device are refused");
    assert!(
        e.issues
            .iter()
            .any(|i| i.key == "cdu[2].device" && i.expected.contains("cdu[1]")),
        "{e}"
    );
}

#[test]
fn changed_keys_lists_each_change_and_hides_secrets() {
    let old = "[site]\nname = \"a\"\n[control]\nsetpoint = 55.0\n[[cdu]]\naddress = \"h:1\"\n[mqtt]\npassword = \"x\"\n";
    let new = "[site]\nname = \"a\"\n[control]\nsetpoint = 60.0\nperiod_ms = 500\n[[cdu]]\naddress = \"h:2\"\n[mqtt]\npassword = \"y\"\n";
    let c = super::changed_keys(old, new);
    assert_eq!(
        c,
        vec![
            "cdu[0].address: \"h:1\" → \"h:2\"".to_string(),
            "control.setpoint: 55.0 → 60.0".to_string(),
            "control.period_ms: (added) 500".to_string(),
        ],
        "{c:?}"
    );
    assert!(super::changed_keys(old, old).is_empty());
}

#[test]
fn control_table_is_required_except_for_probe() {
    let text = MINIMAL.replace("[control]\n", "");
    let i = one_issue(&text);
    assert_eq!(i.key, "control");
    assert!(i.expected.contains("probe"), "{}", i.expected);
    let dir = std::env::temp_dir().join(format!("coolantd-probe-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("site.toml");
    std::fs::write(&file, &text).expect("write config");
    let cfg = Config::load_for_probe(&file).expect("probe takes a config without [control]");
    assert!(!cfg.control_given);
    assert!(parse(MINIMAL).expect("minimal config").control_given);
    let _ = std::fs::remove_dir_all(&dir);
}

/// All issues of a refused configuration, as (key, expected) pairs.
fn issues_of(text: &str) -> Vec<(String, String)> {
    parse(text)
        .expect_err("the configuration must be refused")
        .issues
        .into_iter()
        .map(|i| (i.key, i.expected))
        .collect()
}

#[test]
fn rack_hosts_and_section_are_validated_with_their_keys() {
    let mqtt = "\n[mqtt]\nhost = \"127.0.0.1\"\n";
    // Remote hosts without a broker to hear them through.
    let text = format!("{MINIMAL}hosts = [\"node01\", \"node02\"]\n");
    let i = issues_of(&text);
    assert!(
        i.iter().any(|(k, e)| k == "mqtt" && e.contains("node02")),
        "{i:?}"
    );
    // With a broker, local and remote hosts mix freely.
    let ok = parse(&format!(
        "{MINIMAL}hosts = [\"node01\", \"node02\"]\n{mqtt}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.remote_hosts(), vec!["node02".to_string()]);
    // A host name is a topic level; a host is listed once.
    let i = issues_of(&format!(
        "{MINIMAL}hosts = [\"node/02\", \"node03\", \"node03\"]\n{mqtt}"
    ));
    assert!(i.iter().any(|(k, _)| k == "cdu[0].hosts[0]"), "{i:?}");
    assert!(
        i.iter()
            .any(|(k, e)| k == "cdu[0].hosts[2]" && e.contains("twice")),
        "{i:?}"
    );
    // [rack] bounds name their key.
    let i = issues_of(&format!(
        "{MINIMAL}hosts = [\"node02\"]\n{mqtt}\n[rack]\nstale_after_ms = 10\nack_timeout_ms = 1000\nlease_ms = 2000\nretries_before_alarm = 0\n"
    ));
    for key in [
        "rack.stale_after_ms",
        "rack.lease_ms",
        "rack.retries_before_alarm",
    ] {
        assert!(i.iter().any(|(k, _)| k == key), "{key}: {i:?}");
    }
    let i = issues_of(&format!(
        "{MINIMAL}hosts = [\"node02\"]\n{mqtt}\n[rack]\nstale_ms = 10\n"
    ));
    assert!(!i.is_empty(), "an unknown key in [rack] is refused");
}

#[test]
fn a_host_cooled_by_two_cdus_is_refused() {
    let text = format!(
        "{MINIMAL}hosts = [\"node02\"]\n\n[[cdu]]\nname = \"cdu-b\"\nprofile = \"generic-cdu\"\n\
         transport = \"tcp\"\naddress = \"10.0.0.6:502\"\nhosts = [\"node02\"]\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\n"
    );
    let i = issues_of(&text);
    assert!(
        i.iter()
            .any(|(k, e)| k == "cdu[1].hosts[0]" && e.contains("cdu[0]")),
        "{i:?}"
    );
}

#[test]
fn rack_scale_limits_are_validated_with_their_keys() {
    let mqtt = "\n[mqtt]\nhost = \"127.0.0.1\"\n";
    // The decision's phase lies in the first half of the period (1000 ms by default).
    let i = issues_of(&format!(
        "{MINIMAL}hosts = [\"node02\"]\n{mqtt}\n[rack]\ndecide_offset_ms = 501\n"
    ));
    assert!(
        i.iter()
            .any(|(k, e)| k == "rack.decide_offset_ms" && e.contains("500 ms")),
        "{i:?}"
    );
    let ok = parse(&format!(
        "{MINIMAL}hosts = [\"node02\"]\n{mqtt}\n[rack]\ndecide_offset_ms = 40\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let period = std::time::Duration::from_millis(1000);
    assert_eq!(ok.rack_or_default().decide_offset(period).as_millis(), 40);
    // Without the key: 25 ms, or a quarter of a shorter period.
    let default = crate::remote::RackConfig::default();
    assert_eq!(default.decide_offset(period).as_millis(), 25);
    assert_eq!(
        default
            .decide_offset(std::time::Duration::from_millis(40))
            .as_millis(),
        10
    );
    // More remote hosts than the rack session's inbox is sized for.
    let many = (0..=crate::remote::config::MAX_HOSTS)
        .map(|n| format!("\"n{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let i = issues_of(&format!("{MINIMAL}hosts = [{many}]\n{mqtt}"));
    assert!(
        i.iter()
            .any(|(k, e)| k == "cdu.hosts" && e.contains("at most 1024")),
        "{i:?}"
    );
}
