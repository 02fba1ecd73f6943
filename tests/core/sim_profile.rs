//! GPU profiles and the `[simulator]` section: loading, matching, and errors that name the
//! file and key.

use coolantd::config::{parse_toml, Issues};
use coolantd::profile::gpu::{GpuProfile, GpuProfiles};
use coolantd::sim::{SimConfig, Workload};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("firmware-profiles/gpu")
}

fn h200_text() -> String {
    std::fs::read_to_string(dir().join("h200-sxm.toml")).expect("shipped profile")
}

#[test]
fn shipped_profiles_load_and_match_nvml_names() {
    let all = GpuProfiles::load_dir(&dir()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 2);
    let h200 = all.for_board("NVIDIA H200").expect("H200 matches");
    assert_eq!(h200.name, "h200-sxm");
    assert_eq!(h200.thresholds.slowdown_c.0, 89.0);
    assert_eq!(h200.thresholds.gpu_max_c.0, 87.0);
    assert_eq!(h200.power.min_w.0, 200.0);
    assert_eq!(h200.power.max_w.0, 700.0);
    // NVML's name as the fixture's Debug output quotes it, and different case.
    assert_eq!(
        all.for_board("\"nvidia h200\"").map(|p| p.name.as_str()),
        Some("h200-sxm")
    );
    assert_eq!(
        all.for_board("NVIDIA H100 80GB HBM3")
            .map(|p| p.name.as_str()),
        Some("h100-sxm")
    );
    // A different board (NVL, PCIe) must not borrow an SXM profile.
    assert!(all.for_board("NVIDIA H200 NVL").is_none());
    assert!(all.for_board("NVIDIA H100 PCIe").is_none());
    assert_eq!(
        all.by_name("h100-sxm").map(|p| p.board_name()),
        Some("NVIDIA H100 80GB HBM3")
    );
    assert!(all.by_name("b200").is_none());
}

#[test]
fn wildcard_patterns_match_prefixes() {
    let text = h200_text().replace(r#"match = ["NVIDIA H200"]"#, r#"match = ["NVIDIA H200*"]"#);
    let p =
        GpuProfile::parse(&text, Path::new("x/h200-any.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.name, "h200-any");
    assert!(p.matches("NVIDIA H200 NVL"));
    assert!(!p.matches("NVIDIA H100"));
}

#[test]
fn misordered_thresholds_are_refused_naming_the_key() {
    let text = h200_text().replace("gpu_max_c = 87", "gpu_max_c = 91");
    let e =
        GpuProfile::parse(&text, Path::new("gpu/bad.toml")).expect_err("gpu max above slowdown");
    let msg = e.to_string();
    assert!(
        msg.contains("gpu/bad.toml") && msg.contains("thresholds.gpu_max_c"),
        "{msg}"
    );

    let text = h200_text().replace("default_w = 700", "default_w = 750");
    let e = GpuProfile::parse(&text, Path::new("bad.toml")).expect_err("default above max");
    assert!(e.to_string().contains("power.default_w"), "{e}");

    let text = h200_text().replace(
        "plate_capacity_j_per_k = 3645.481",
        "plate_capacity_j_per_k = -1",
    );
    let e = GpuProfile::parse(&text, Path::new("bad.toml")).expect_err("negative capacity");
    assert!(
        e.to_string().contains("thermal.plate_capacity_j_per_k"),
        "{e}"
    );
}

#[test]
fn unknown_and_missing_keys_are_refused_naming_the_key() {
    let text = h200_text().replace("[clocks]", "[clocks]\nturbo_mhz = 2100");
    let e = GpuProfile::parse(&text, Path::new("bad.toml")).expect_err("unknown key");
    assert!(
        e.to_string().contains("clocks") && e.to_string().contains("turbo_mhz"),
        "{e}"
    );

    let text = h200_text().replace("shutdown_c = 95", "");
    let e = GpuProfile::parse(&text, Path::new("bad.toml")).expect_err("missing key");
    assert!(e.to_string().contains("shutdown_c"), "{e}");

    let e = GpuProfile::load(Path::new("/nonexistent/h999.toml")).expect_err("no file");
    assert!(e.to_string().contains("/nonexistent/h999.toml"), "{e}");
}

#[test]
fn a_broken_profile_fails_the_folder_load_naming_the_file() {
    let dir = coolantd_testkit::TempDir::new("gpu-profiles");
    let tmp = dir.path();
    std::fs::write(tmp.join("good.toml"), h200_text()).expect("write");
    std::fs::write(tmp.join("broken.toml"), "description = 1\n").expect("write");
    let e = GpuProfiles::load_dir(tmp).expect_err("broken file");
    assert!(e.to_string().contains("broken.toml"), "{e}");
}

fn sim(text: &str) -> SimConfig {
    parse_toml(text, Path::new("site.toml")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn simulator_section_parses_with_defaults() {
    let c = sim(
        "hosts = [\"n1\", \"n2\"]\ngpus_per_host = 4\ntime_scale = 10\n\
                 [workload]\nkind = \"step\"\nat_s = 20\nfrom = 0\nto = 1\n",
    );
    assert_eq!(c.gpus_per_host, 4);
    assert_eq!(c.gpu_profile, "h200-sxm");
    assert_eq!(c.listen, "127.0.0.1:5020");
    assert_eq!(
        c.workload,
        Workload::Step {
            at_s: 20.0,
            from: 0.0,
            to: 1.0
        }
    );
    let mut issues = Issues::default();
    c.validate("simulator", &mut issues);
    assert!(issues.is_empty(), "{:?}", issues.into_vec());
    assert_eq!(c.hosts_or("site"), ["n1", "n2"]);
    assert_eq!(sim("").hosts_or("site"), ["site"]);
}

#[test]
fn simulator_errors_name_their_keys() {
    let c = sim(
        "gpus_per_host = 0\ntime_scale = -1\nlisten = \"nowhere\"\nhosts = [\"a\", \"a\"]\n\
                 [workload]\nkind = \"constant\"\nload = 1.5\n",
    );
    let mut issues = Issues::default();
    c.validate("simulator", &mut issues);
    let keys: Vec<String> = issues.into_vec().into_iter().map(|i| i.key).collect();
    for k in [
        "simulator.gpus_per_host",
        "simulator.time_scale",
        "simulator.listen",
        "simulator.hosts[1]",
        "simulator.workload.load",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    let e = parse_toml::<SimConfig>("gpus = 8\n", Path::new("site.toml")).expect_err("unknown key");
    assert!(e.to_string().contains("gpus"), "{e}");
}
