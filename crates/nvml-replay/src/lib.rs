//! A replay `libnvidia-ml.so.1` for coolantd's tests.
//!
//! nvml-wrapper loads NVML at run time, so this shared object, named `libnvidia-ml.so.1` and
//! found through `LD_LIBRARY_PATH` or `Nvml::builder().lib_path(..)`, stands in for the
//! driver: the real `NvmlBackend`, the real binary and the real unit conversions run against
//! it on machines without a GPU. It
//!
//! - serves the values of a real capture (`tests/fixtures/{h200,h100}/info.json`), raw as
//!   NVML reports them (milliwatts, millijoules, °C), repeated for `gpus` devices;
//! - answers `NVML_ERROR_NOT_SUPPORTED` for every value the capture could not read;
//! - injects faults named in a control file that it re-reads on every call (so a test can
//!   change them mid-run): `lost <gpu>` (the GPU fell off the bus), `timeout <gpu|*> <function>`,
//!   `unsupported <gpu|*> <function>`;
//! - keeps the power limit that a setter wrote, so it reads back;
//! - appends one line per call to a log (`<function> dev=<gpu> <args> -> <return code>`), so
//!   tests can count exactly which calls a code path made.
//!
//! Configuration: a file `nvml-replay.conf` beside the loaded library (`key = value` lines:
//! `fixture`, `gpus`, `log`, `control`), so each test can load its own copy with its own state;
//! otherwise the environment (`NVML_REPLAY_FIXTURE`, `NVML_REPLAY_GPUS`, `NVML_REPLAY_LOG`,
//! `NVML_REPLAY_CONTROL`). Without a fixture it serves the H200 capture.

#![allow(non_snake_case)]
// Every export is called by C code with pointers it vouches for, as NVML's own functions are.
#![allow(clippy::missing_safety_doc)]

use serde_json::Value;
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

type Ret = c_uint;
const SUCCESS: Ret = 0;
const UNINITIALIZED: Ret = 1;
const INVALID_ARGUMENT: Ret = 2;
const NOT_SUPPORTED: Ret = 3;
const INSUFFICIENT_SIZE: Ret = 7;
const TIMEOUT: Ret = 10;
const GPU_IS_LOST: Ret = 15;

/// `nvmlDevice_t` is an opaque pointer; the replay hands out `index + 1`.
type Handle = *mut c_void;

const DEFAULT_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/h200/info.json"
);

/// One GPU as the capture saw it. `None` is a value the board did not report.
#[derive(Clone, Default)]
struct Dev {
    name: Option<String>,
    uuid: Option<String>,
    temp_gpu: Option<u32>,
    /// Indexed by `nvmlTemperatureThresholds_t`: shutdown, slowdown, memory max, GPU max.
    thresholds: [Option<u32>; 4],
    constraints: Option<(u32, u32)>,
    default_limit: Option<u32>,
    limit: Option<u32>,
    enforced: Option<u32>,
    power_usage: Option<u32>,
    clock_sm: Option<u32>,
    clock_mem: Option<u32>,
    utilization: Option<(u32, u32)>,
    throttle: Option<u64>,
    pstate: Option<u32>,
    energy_mj: Option<u64>,
    violation_power: Option<(u64, u64)>,
    violation_thermal: Option<(u64, u64)>,
    ecc_corrected: Option<u64>,
    field_memory_temp: Option<f64>,
    field_power_average: Option<f64>,
    field_power_instant: Option<f64>,
    pcie_tx: Option<u32>,
}

struct State {
    devs: Vec<Dev>,
    driver: String,
    nvml_version: String,
    log: Option<PathBuf>,
    control: Option<PathBuf>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The folder this shared object was loaded from, to find a per-copy configuration.
fn own_dir() -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = nvmlInit_v2 as *const c_void;
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    let path = unsafe { CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned();
    Path::new(&path).parent().map(Path::to_path_buf)
}

fn settings() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(text) =
        own_dir().and_then(|d| std::fs::read_to_string(d.join("nvml-replay.conf")).ok())
    {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        return out;
    }
    for (key, var) in [
        ("fixture", "NVML_REPLAY_FIXTURE"),
        ("gpus", "NVML_REPLAY_GPUS"),
        ("log", "NVML_REPLAY_LOG"),
        ("control", "NVML_REPLAY_CONTROL"),
    ] {
        if let Ok(v) = std::env::var(var) {
            out.push((key.to_string(), v));
        }
    }
    out
}

/// A captured value: a number, or a string holding one (possibly quoted); an object with an
/// `error` is a value the board did not report.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.trim().trim_matches('"').to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn num<T: std::str::FromStr>(v: Option<&Value>) -> Option<T> {
    let t = text(v)?;
    t.parse::<T>().ok().or_else(|| {
        t.parse::<f64>()
            .ok()
            .and_then(|f| format!("{}", f as i64).parse().ok())
    })
}

/// The number after `key: ` in a Debug-printed struct (`ViolationTime { violation_time: 0 }`).
fn debug_field(v: Option<&Value>, key: &str) -> Option<u64> {
    let t = text(v)?;
    let rest = &t[t.find(&format!("{key}: "))? + key.len() + 2..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn throttle_bits(v: Option<&Value>) -> Option<u64> {
    let t = text(v)?;
    let inner = t.strip_prefix("ThrottleReasons(")?.strip_suffix(')')?;
    let mut bits = 0;
    for name in inner.split('|').map(str::trim).filter(|n| !n.is_empty()) {
        bits |= match name {
            "GPU_IDLE" => 0x1,
            "APPLICATIONS_CLOCKS_SETTING" => 0x2,
            "SW_POWER_CAP" => 0x4,
            "HW_SLOWDOWN" => 0x8,
            "SYNC_BOOST" => 0x10,
            "SW_THERMAL_SLOWDOWN" => 0x20,
            "HW_THERMAL_SLOWDOWN" => 0x40,
            "HW_POWER_BRAKE_SLOWDOWN" => 0x80,
            "DISPLAY_CLOCK_SETTING" => 0x100,
            _ => return None,
        };
    }
    Some(bits)
}

fn pstate(v: Option<&Value>) -> Option<u32> {
    const NAMES: [&str; 16] = [
        "Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten",
        "Eleven", "Twelve", "Thirteen", "Fourteen", "Fifteen",
    ];
    let t = text(v)?;
    NAMES.iter().position(|n| *n == t).map(|p| p as u32)
}

fn parse_dev(d: &Value) -> Dev {
    let g = |k: &str| d.get(k);
    let limit = num(g("power_limit_mw"));
    Dev {
        name: text(g("name")),
        uuid: text(g("uuid")),
        temp_gpu: num(g("temp_gpu_c")),
        thresholds: [
            num(g("thr_shutdown")),
            num(g("thr_slowdown")),
            num(g("thr_mem_max")),
            num(g("thr_gpu_max")),
        ],
        constraints: debug_field(g("power_limit_constraints"), "min_limit")
            .zip(debug_field(g("power_limit_constraints"), "max_limit"))
            .map(|(a, b)| (a as u32, b as u32)),
        default_limit: num(g("power_limit_default_mw")),
        limit,
        enforced: num(g("enforced_power_limit_mw")),
        power_usage: num(g("power_usage_mw")),
        clock_sm: num(g("clock_sm")),
        clock_mem: num(g("clock_mem")),
        utilization: debug_field(g("utilization"), "gpu")
            .zip(debug_field(g("utilization"), "memory"))
            .map(|(a, b)| (a as u32, b as u32)),
        throttle: throttle_bits(g("throttle_now")),
        pstate: pstate(g("pstate")),
        energy_mj: num(g("total_energy_mj")),
        violation_power: debug_field(g("violation_power"), "reference_time")
            .zip(debug_field(g("violation_power"), "violation_time")),
        violation_thermal: debug_field(g("violation_thermal"), "reference_time")
            .zip(debug_field(g("violation_thermal"), "violation_time")),
        ecc_corrected: num(g("ecc_corrected_volatile")),
        field_memory_temp: g("field_memory_temp_c").and_then(Value::as_f64),
        field_power_average: g("field_power_average_mw").and_then(Value::as_f64),
        field_power_instant: g("field_power_instant_mw").and_then(Value::as_f64),
        pcie_tx: num(g("pcie_tx")),
    }
}

fn load() -> Result<State, String> {
    let set = settings();
    let get = |k: &str| set.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let fixture = get("fixture").unwrap_or_else(|| DEFAULT_FIXTURE.to_string());
    let raw = std::fs::read_to_string(&fixture).map_err(|e| format!("{fixture}: {e}"))?;
    let json: Value = serde_json::from_str(&raw).map_err(|e| format!("{fixture}: {e}"))?;
    let info = json.get("info").unwrap_or(&json);
    let captured: Vec<Dev> = info
        .get("devices")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(parse_dev).collect())
        .unwrap_or_default();
    if captured.is_empty() {
        return Err(format!("{fixture}: no `devices` captured"));
    }
    let count = match get("gpus") {
        Some(n) => n.parse::<usize>().map_err(|e| format!("gpus = {n}: {e}"))?,
        None => captured.len(),
    };
    // More GPUs than were captured repeat the capture; each keeps a distinct UUID.
    let devs = (0..count)
        .map(|i| {
            let mut d = captured[i % captured.len()].clone();
            if i >= captured.len() {
                d.uuid = d
                    .uuid
                    .map(|u| format!("{}{:02x}", &u[..u.len().saturating_sub(2)], i));
            }
            d
        })
        .collect();
    Ok(State {
        devs,
        driver: text(info.get("driver")).unwrap_or_default(),
        nvml_version: text(info.get("nvml")).unwrap_or_default(),
        log: get("log").map(PathBuf::from),
        control: get("control").map(PathBuf::from),
    })
}

/// Appends one call to the log: one `write` per line, so concurrent processes do not interleave.
fn record(st: &State, line: &str) {
    if let Some(path) = &st.log {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// The fault the control file injects into `function` on GPU `index`, if any.
fn fault(st: &State, index: usize, function: &str) -> Option<Ret> {
    let text = std::fs::read_to_string(st.control.as_ref()?).ok()?;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let gpu_matches = |g: &str| g == "*" || g.parse::<usize>().ok() == Some(index);
        match w.as_slice() {
            ["lost", g] if gpu_matches(g) => return Some(GPU_IS_LOST),
            ["timeout", g, f] if gpu_matches(g) && *f == function => return Some(TIMEOUT),
            ["unsupported", g, f] if gpu_matches(g) && *f == function => {
                return Some(NOT_SUPPORTED)
            }
            _ => {}
        }
    }
    None
}

/// Runs one device call: checks initialisation and the handle, applies injected faults,
/// records the call with its arguments and the code it returns.
fn device_call(function: &str, handle: Handle, args: &str, f: impl FnOnce(&mut Dev) -> Ret) -> Ret {
    let mut guard = lock();
    let Some(st) = guard.as_mut() else {
        return UNINITIALIZED;
    };
    let index = (handle as usize).wrapping_sub(1);
    let ret = if index >= st.devs.len() {
        INVALID_ARGUMENT
    } else if let Some(r) = fault(st, index, function) {
        r
    } else {
        f(&mut st.devs[index])
    };
    let sep = if args.is_empty() { "" } else { " " };
    record(st, &format!("{function} dev={index}{sep}{args} -> {ret}"));
    ret
}

/// Writes a value the board reported, or answers NOT_SUPPORTED.
unsafe fn put<T: Copy>(out: *mut T, v: Option<T>) -> Ret {
    match v {
        _ if out.is_null() => INVALID_ARGUMENT,
        Some(v) => {
            *out = v;
            SUCCESS
        }
        None => NOT_SUPPORTED,
    }
}

unsafe fn put_str(out: *mut c_char, len: c_uint, v: Option<&str>) -> Ret {
    let Some(v) = v else { return NOT_SUPPORTED };
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    if v.len() + 1 > len as usize {
        return INSUFFICIENT_SIZE;
    }
    std::ptr::copy_nonoverlapping(v.as_ptr(), out.cast::<u8>(), v.len());
    *out.add(v.len()) = 0;
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Ret {
    let mut guard = lock();
    if guard.is_none() {
        match load() {
            Ok(st) => *guard = Some(st),
            Err(e) => {
                eprintln!("nvml-replay: {e}");
                return UNINITIALIZED;
            }
        }
    }
    if let Some(st) = guard.as_ref() {
        record(st, "nvmlInit_v2 dev=- -> 0");
    }
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    nvmlInit_v2()
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Ret {
    // The state stays: NVML counts init/shutdown pairs, and a test reading back a limit after
    // a backend was dropped must see what the GPU holds.
    if let Some(st) = lock().as_ref() {
        record(st, "nvmlShutdown dev=- -> 0");
    }
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlErrorString(result: Ret) -> *const c_char {
    let s: &'static [u8] = match result {
        SUCCESS => b"Success\0",
        UNINITIALIZED => b"Uninitialized\0",
        INVALID_ARGUMENT => b"Invalid Argument\0",
        NOT_SUPPORTED => b"Not Supported\0",
        INSUFFICIENT_SIZE => b"Insufficient Size\0",
        TIMEOUT => b"Timeout\0",
        GPU_IS_LOST => b"GPU is lost\0",
        _ => b"Unknown Error\0",
    };
    s.as_ptr().cast()
}

unsafe fn system_string(
    function: &str,
    out: *mut c_char,
    len: c_uint,
    pick: fn(&State) -> &str,
) -> Ret {
    let guard = lock();
    let Some(st) = guard.as_ref() else {
        return UNINITIALIZED;
    };
    let ret = put_str(out, len, Some(pick(st)));
    record(st, &format!("{function} dev=- -> {ret}"));
    ret
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(out: *mut c_char, len: c_uint) -> Ret {
    system_string("nvmlSystemGetDriverVersion", out, len, |s| &s.driver)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(out: *mut c_char, len: c_uint) -> Ret {
    system_string("nvmlSystemGetNVMLVersion", out, len, |s| &s.nvml_version)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    let guard = lock();
    let Some(st) = guard.as_ref() else {
        return UNINITIALIZED;
    };
    let ret = put(count, Some(st.devs.len() as c_uint));
    record(st, &format!("nvmlDeviceGetCount_v2 dev=- -> {ret}"));
    ret
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, out: *mut Handle) -> Ret {
    let guard = lock();
    let Some(st) = guard.as_ref() else {
        return UNINITIALIZED;
    };
    let i = index as usize;
    let ret = if i >= st.devs.len() {
        INVALID_ARGUMENT
    } else if let Some(r) = fault(st, i, "nvmlDeviceGetHandleByIndex_v2") {
        r
    } else {
        put(out, Some((i + 1) as Handle))
    };
    record(
        st,
        &format!("nvmlDeviceGetHandleByIndex_v2 dev={i} -> {ret}"),
    );
    ret
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(h: Handle, out: *mut c_char, len: c_uint) -> Ret {
    device_call("nvmlDeviceGetName", h, "", |d| {
        put_str(out, len, d.name.as_deref())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(h: Handle, out: *mut c_char, len: c_uint) -> Ret {
    device_call("nvmlDeviceGetUUID", h, "", |d| {
        put_str(out, len, d.uuid.as_deref())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    h: Handle,
    sensor: c_uint,
    out: *mut c_uint,
) -> Ret {
    device_call(
        "nvmlDeviceGetTemperature",
        h,
        &format!("sensor={sensor}"),
        |d| {
            // Sensor 0 is NVML_TEMPERATURE_GPU, the only one NVML defines.
            if sensor == 0 {
                put(out, d.temp_gpu)
            } else {
                INVALID_ARGUMENT
            }
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperatureThreshold(
    h: Handle,
    kind: c_uint,
    out: *mut c_uint,
) -> Ret {
    device_call(
        "nvmlDeviceGetTemperatureThreshold",
        h,
        &format!("threshold={kind}"),
        |d| put(out, d.thresholds.get(kind as usize).copied().flatten()),
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimitConstraints(
    h: Handle,
    min: *mut c_uint,
    max: *mut c_uint,
) -> Ret {
    device_call(
        "nvmlDeviceGetPowerManagementLimitConstraints",
        h,
        "",
        |d| match put(min, d.constraints.map(|c| c.0)) {
            SUCCESS => put(max, d.constraints.map(|c| c.1)),
            e => e,
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementDefaultLimit(
    h: Handle,
    out: *mut c_uint,
) -> Ret {
    device_call("nvmlDeviceGetPowerManagementDefaultLimit", h, "", |d| {
        put(out, d.default_limit)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimit(h: Handle, out: *mut c_uint) -> Ret {
    device_call("nvmlDeviceGetPowerManagementLimit", h, "", |d| {
        put(out, d.limit)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(h: Handle, out: *mut c_uint) -> Ret {
    device_call("nvmlDeviceGetEnforcedPowerLimit", h, "", |d| {
        put(out, d.enforced)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(h: Handle, out: *mut c_uint) -> Ret {
    device_call("nvmlDeviceGetPowerUsage", h, "", |d| {
        put(out, d.power_usage)
    })
}

/// The setter: refuses limits outside the board's constraints as the driver does
/// (INVALID_ARGUMENT), otherwise the limit holds and is enforced from now on.
#[no_mangle]
pub extern "C" fn nvmlDeviceSetPowerManagementLimit(h: Handle, limit: c_uint) -> Ret {
    device_call(
        "nvmlDeviceSetPowerManagementLimit",
        h,
        &format!("limit={limit}"),
        |d| match d.constraints {
            None => NOT_SUPPORTED,
            Some((min, max)) if limit < min || limit > max => INVALID_ARGUMENT,
            Some(_) => {
                d.limit = Some(limit);
                d.enforced = Some(limit);
                SUCCESS
            }
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(h: Handle, kind: c_uint, out: *mut c_uint) -> Ret {
    device_call(
        "nvmlDeviceGetClockInfo",
        h,
        &format!("clock={kind}"),
        |d| match kind {
            // NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2.
            1 => put(out, d.clock_sm),
            2 => put(out, d.clock_mem),
            _ => NOT_SUPPORTED,
        },
    )
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(h: Handle, out: *mut Utilization) -> Ret {
    device_call("nvmlDeviceGetUtilizationRates", h, "", |d| {
        put(
            out,
            d.utilization
                .map(|(gpu, memory)| Utilization { gpu, memory }),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    h: Handle,
    out: *mut c_ulonglong,
) -> Ret {
    device_call("nvmlDeviceGetCurrentClocksThrottleReasons", h, "", |d| {
        put(out, d.throttle)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksEventReasons(
    h: Handle,
    out: *mut c_ulonglong,
) -> Ret {
    device_call("nvmlDeviceGetCurrentClocksEventReasons", h, "", |d| {
        put(out, d.throttle)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPerformanceState(h: Handle, out: *mut c_uint) -> Ret {
    device_call("nvmlDeviceGetPerformanceState", h, "", |d| {
        put(out, d.pstate)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    h: Handle,
    out: *mut c_ulonglong,
) -> Ret {
    device_call("nvmlDeviceGetTotalEnergyConsumption", h, "", |d| {
        put(out, d.energy_mj)
    })
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ViolationTime {
    reference_time: c_ulonglong,
    violation_time: c_ulonglong,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetViolationStatus(
    h: Handle,
    policy: c_uint,
    out: *mut ViolationTime,
) -> Ret {
    device_call(
        "nvmlDeviceGetViolationStatus",
        h,
        &format!("policy={policy}"),
        |d| {
            // NVML_PERF_POLICY_POWER = 0, NVML_PERF_POLICY_THERMAL = 1.
            let v = match policy {
                0 => d.violation_power,
                1 => d.violation_thermal,
                _ => None,
            };
            put(
                out,
                v.map(|(r, t)| ViolationTime {
                    reference_time: r,
                    violation_time: t,
                }),
            )
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    h: Handle,
    error_type: c_uint,
    counter: c_uint,
    out: *mut c_ulonglong,
) -> Ret {
    let args = format!("error={error_type} counter={counter}");
    device_call("nvmlDeviceGetTotalEccErrors", h, &args, |d| {
        // Only corrected (0) volatile (0) errors were captured.
        if error_type == 0 && counter == 0 {
            put(out, d.ecc_corrected)
        } else {
            NOT_SUPPORTED
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPcieThroughput(
    h: Handle,
    counter: c_uint,
    out: *mut c_uint,
) -> Ret {
    device_call(
        "nvmlDeviceGetPcieThroughput",
        h,
        &format!("counter={counter}"),
        |d| put(out, if counter == 0 { d.pcie_tx } else { None }),
    )
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union FieldValue {
    d: f64,
    ui: c_uint,
    ull: c_ulonglong,
}

/// `nvmlFieldValue_t`.
#[repr(C)]
pub struct FieldSample {
    field_id: c_uint,
    scope_id: c_uint,
    timestamp: i64,
    latency_usec: i64,
    value_type: c_uint,
    ret: Ret,
    value: FieldValue,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    h: Handle,
    count: c_int,
    values: *mut FieldSample,
) -> Ret {
    if values.is_null() || count < 0 {
        return INVALID_ARGUMENT;
    }
    let fields = std::slice::from_raw_parts_mut(values, count as usize);
    let ids: Vec<String> = fields.iter().map(|f| f.field_id.to_string()).collect();
    let args = format!("fields={}", ids.join(","));
    device_call("nvmlDeviceGetFieldValues", h, &args, |d| {
        for f in fields.iter_mut() {
            // NVML_FI_DEV_MEMORY_TEMP (82), NVML_FI_DEV_POWER_AVERAGE (185) and
            // NVML_FI_DEV_POWER_INSTANT (186) come back as unsigned ints (°C, mW).
            let v = match f.field_id {
                82 => d.field_memory_temp,
                185 => d.field_power_average,
                186 => d.field_power_instant,
                _ => None,
            };
            match v {
                Some(v) => {
                    f.value_type = 1;
                    f.value = FieldValue { ui: v as c_uint };
                    f.ret = SUCCESS;
                }
                None => f.ret = NOT_SUPPORTED,
            }
        }
        SUCCESS
    })
}
