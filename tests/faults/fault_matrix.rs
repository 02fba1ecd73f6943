//! The daemon-level fault matrix: every row injects one fault into the real daemon running on
//! the plant simulator (real Modbus TCP to the simulated CDU, the simulated GPU backend) and
//! checks the state reached, the outputs that reached the plant, the alarm raised and the
//! reaction time in control ticks. The bounds come from the supervisor's contract: a lost
//! required input reaches Failsafe within 2 ticks; a leak or a GPU at its slowdown threshold
//! gets its power cap lowered within 1 tick.
//!
//! Faults on the wire (a CDU that hangs, answers exceptions, NaN, garbage or a stuck value)
//! come from a small Modbus TCP proxy between the daemon and the simulated CDU that rewrites
//! or swallows responses; nothing in the daemon is mocked.

use coolantd_testkit::modbus_proxy;
use coolantd_testkit::sim_daemon;

use coolantd::config::Config;
use coolantd::model::{Command, ControlState, GpuKey, Mode, Snapshot};
use coolantd::service::run::Daemon;
use coolantd::sim::{GpuFault, Plant, Workload};
use coolantd::units::Celsius;
use modbus_proxy::{exception_patch, Patch, Proxy, FC4_BYTES};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_secs(1);
/// The per-request Modbus timeout of the test configuration, ms: small, so that a hanging
/// CDU costs the test little time.
const TIMEOUT_MS: u64 = 50;
const CDU: &str = "cdu-sim";

/// Replaces the 4 bytes of a FLOAT32 input register at `offset` (registers from 0) in the
/// poll's function-code-4 response; `cdab` swaps the words as the profile's order says.
fn float_patch(register: usize, value: f32, cdab: bool) -> Patch {
    Box::new(move |pdu: &mut Vec<u8>| {
        if pdu.len() != 2 + usize::from(FC4_BYTES) || pdu[0] != 4 || pdu[1] != FC4_BYTES {
            return false;
        }
        let b = value.to_be_bytes();
        let bytes = if cdab { [b[2], b[3], b[0], b[1]] } else { b };
        let at = 2 + 2 * register;
        pdu[at..at + 4].copy_from_slice(&bytes);
        true
    })
}

// ---- The rig: a daemon on the simulator, stepped in lockstep -----------------------------

struct Rig {
    d: Daemon,
    k: u32,
    proxy: Option<Proxy>,
    _dir: sim_daemon::TempDir,
}

/// The settings every row shares: a small Modbus timeout and no start-up alarm suppression
/// (the rows start injecting faults after a few ticks, not 30 s).
const BASE_EXTRA: &str = "[control.supervisor]\nstartup_suppress_s = 0.0\n";

impl Rig {
    async fn new(via_proxy: bool, replace: &[(&str, &str)], extra: &str) -> Rig {
        let dir = sim_daemon::TempDir::new("fault-matrix");
        let port = sim_daemon::free_port();
        let proxy = if via_proxy {
            Some(Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await)
        } else {
            None
        };
        let timeout = format!("timeout_ms = {TIMEOUT_MS}");
        let sim_addr = format!("address = \"127.0.0.1:{port}\"");
        let cdu_addr = match &proxy {
            Some(p) => format!("address = \"{}\"", p.addr),
            None => sim_addr.clone(),
        };
        let mut rep: Vec<(&str, &str)> = vec![("timeout_ms = 200", &timeout)];
        rep.extend_from_slice(replace);
        let mut text =
            sim_daemon::sim_config_text(port, &dir.0, &rep, &format!("{BASE_EXTRA}{extra}"));
        text = text.replace(&sim_addr, &cdu_addr);
        let d = sim_daemon::build(&text, &dir.0, false).await;
        Rig {
            d,
            k: 0,
            proxy,
            _dir: dir,
        }
    }

    fn now(&self) -> Duration {
        PERIOD * self.k
    }

    async fn tick(&mut self) -> Arc<Snapshot> {
        self.k += 1;
        self.d.sim().expect("simulator in-process").step(PERIOD);
        let now = self.now();
        self.d.tick(now).await
    }

    /// Ticks until the loop runs normally (boot done, first writes acknowledged).
    async fn warm_up(&mut self, ticks: u32) -> Arc<Snapshot> {
        let mut s = self.tick().await;
        for _ in 1..ticks {
            s = self.tick().await;
        }
        assert_eq!(
            s.state,
            ControlState::Running,
            "warm-up: alarms {:?}",
            s.alarms
        );
        s
    }

    fn plant(&self) -> MutexGuard<'_, Plant> {
        self.d
            .sim()
            .expect("simulator in-process")
            .plant()
            .lock()
            .expect("plant lock")
    }

    fn proxy(&self) -> &Proxy {
        self.proxy
            .as_ref()
            .expect("this row runs through the proxy")
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        let outcome = self.d.controller().command(now, &cmd);
        assert_eq!(
            outcome,
            coolantd::model::CommandOutcome::Accepted,
            "{cmd:?}"
        );
    }
}

fn has_alarm(s: &Snapshot, id: &str) -> bool {
    s.alarms.iter().any(|a| a.id == id)
}

fn alarm_message<'a>(s: &'a Snapshot, id: &str) -> &'a str {
    s.alarms
        .iter()
        .find(|a| a.id == id)
        .map(|a| a.message.as_str())
        .unwrap_or_else(|| panic!("alarm {id} not active; active: {:?}", s.alarms))
}

/// Ticks until `done` holds, returning the snapshot and how many ticks it took (1 = the
/// first tick after the fault). Panics after `max` ticks.
async fn ticks_until(
    rig: &mut Rig,
    max: u32,
    what: &str,
    mut done: impl FnMut(&Snapshot) -> bool,
) -> (Arc<Snapshot>, u32) {
    for n in 1..=max {
        let s = rig.tick().await;
        if done(&s) {
            return (s, n);
        }
    }
    let s = rig.tick().await;
    panic!(
        "{what}: not reached within {max} ticks (state {}, alarms {:?}, cdu {:?})",
        s.state, s.alarms, s.cdus
    );
}

fn report(row: &str, state: ControlState, alarm: &str, ticks: u32) {
    eprintln!("FAULT-MATRIX | {row:<52} | {state:<9} | {alarm:<40} | {ticks} tick(s)");
}

const LOST_REQUIRED_BOUND: u32 = 2;
/// Against a CDU that never answers, a tick sends at most this many requests: the first
/// poll request times out and drops the connection.
const HUNG_REQUESTS_PER_TICK: u64 = 1;
const CAP_BOUND: u32 = 1;

// ---- Rows --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_server_killed_reaches_failsafe_within_2_ticks() {
    let mut rig = Rig::new(false, &[], "").await;
    rig.warm_up(5).await;
    let sim = rig.d.sim().expect("sim");
    sim.stop_server().await;
    let (s, n) = ticks_until(
        &mut rig,
        LOST_REQUIRED_BOUND,
        "failsafe after server kill",
        |s| s.state == ControlState::Failsafe,
    )
    .await;
    let id = format!("cdu_unreachable:{CDU}");
    assert!(has_alarm(&s, &id), "{:?}", s.alarms);
    assert!(has_alarm(&s, &format!("failsafe:{CDU}")));
    report("modbus_server_killed", s.state, &id, n);
    // The outage goes on for a while: failsafe holds.
    for _ in 0..3 {
        assert_eq!(rig.tick().await.state, ControlState::Failsafe);
    }

    rig.d
        .sim()
        .expect("sim")
        .restart_server()
        .await
        .expect("restart");
    // Reconnection waits for the client's backoff (wall clock), so give it real time.
    let mut trace: Vec<(ControlState, f64)> = Vec::new();
    let mut recovered = None;
    for n in 1..=200u32 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = rig.tick().await;
        trace.push((s.state, rig.plant().pump_command().0));
        if s.state == ControlState::Running {
            recovered = Some(n);
            break;
        }
    }
    let n = recovered.unwrap_or_else(|| panic!("no recovery after restart: {trace:?}"));
    eprintln!("FAULT-MATRIX | modbus_server_killed: back to Running {n} ticks after the restart");
    // Once the writes land again the pump is at its failsafe speed; leaving failsafe must
    // continue from there (bumpless), not jump back to the pre-fault speed or the start speed.
    let fs = trace
        .iter()
        .rposition(|(st, _)| *st == ControlState::Failsafe)
        .expect("failsafe before recovery");
    let (before, after) = (trace[fs].1, trace[fs + 1].1);
    assert!(
        (before - 100.0).abs() < 0.2,
        "failsafe pump speed should be 100 %, got {before} ({trace:?})"
    );
    let slew_down = 2.0; // control.pump.slew_down_per_s default, × 1 s period
    assert!(
        (after - before).abs() <= slew_down + 0.15,
        "bump leaving failsafe: {before} → {after}"
    );
    for _ in 0..3 {
        let s = rig.tick().await;
        assert_eq!(s.state, ControlState::Running);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_server_hangs_reaches_failsafe_within_2_ticks() {
    let mut rig = Rig::new(true, &[], "").await;
    rig.warm_up(5).await;
    rig.proxy().hang.store(true, Ordering::SeqCst);
    let mut slowest = Duration::ZERO;
    let mut reached = None;
    let requests_before = rig.proxy().requests();
    for n in 1..=6u32 {
        let t0 = Instant::now();
        // A guard against a missing timeout (the tick would hang forever), not a speed target.
        let s = tokio::time::timeout(Duration::from_secs(60), rig.tick())
            .await
            .expect("a tick against a hanging CDU ends at the Modbus timeout");
        slowest = slowest.max(t0.elapsed());
        if reached.is_none() && s.state == ControlState::Failsafe {
            assert!(
                has_alarm(&s, &format!("cdu_unreachable:{CDU}")),
                "{:?}",
                s.alarms
            );
            assert!(
                s.cdus[0].faults.iter().any(|f| f.kind == "timeout"),
                "{:?}",
                s.cdus[0].faults
            );
            reached = Some((s, n));
        }
    }
    let (s, n) = reached.expect("failsafe while the CDU hangs");
    assert!(n <= LOST_REQUIRED_BOUND, "failsafe after {n} ticks");
    report(
        "modbus_server_hangs",
        s.state,
        &format!("cdu_unreachable:{CDU}"),
        n,
    );
    let requests = rig.proxy().requests() - requests_before;
    eprintln!(
        "FAULT-MATRIX | modbus_server_hangs: slowest tick {slowest:?} with timeout {TIMEOUT_MS} ms, \
         {requests} requests in 6 ticks"
    );
    // One timed-out request drops the connection, so a tick waits for one timeout, not one per
    // register: counted in requests on the wire, not in wall-clock time.
    assert!(
        requests <= 6 * HUNG_REQUESTS_PER_TICK,
        "{requests} requests sent to a hanging CDU in 6 ticks"
    );
    rig.proxy().hang.store(false, Ordering::SeqCst);
    let mut back = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if rig.tick().await.state == ControlState::Running {
            back = true;
            break;
        }
    }
    assert!(back, "no recovery after the CDU answers again");
}

/// A CDU that answers, but slowly: the tick waits for it no longer than its budget and
/// steers on the newest sample it has, whose age grows; once older than
/// `max_sample_age_ms` the sample is a lost input and the loop reaches failsafe, as when
/// the CDU is unreachable. The budget is shortened here (the service uses half the period)
/// so that the plant's seconds pass while a poll is held; bounds are in ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_slow_cdu_goes_stale_and_reaches_failsafe() {
    let mut rig = Rig::new(true, &[], "").await;
    rig.warm_up(5).await;
    let budget = Duration::from_millis(2);
    rig.d.set_cdu_budget(budget);
    // Each reply well inside the timeout (a loaded machine must not turn it into one): a
    // poll of 3 requests plus the pump and heartbeat writes with their read-backs keeps the
    // CDU busy for about 7 × 30 ms per cycle, while a tick lasts about 2 budgets.
    rig.proxy()
        .delay_ms
        .store(TIMEOUT_MS * 3 / 5, Ordering::SeqCst);
    let (s, n) = ticks_until(&mut rig, 1, "cdu_slow raised", |s| {
        has_alarm(s, &format!("cdu_slow:{CDU}"))
    })
    .await;
    assert!(s.cdus[0].link.late, "{:?}", s.cdus[0].link);
    report(
        "modbus_slow_cdu (late poll)",
        s.state,
        &format!("cdu_slow:{CDU}"),
        n,
    );
    // max_sample_age_ms (3000 ms = 3 ticks) plus the hold (hold_ticks, 2 by default).
    let bound = 3 + LOST_REQUIRED_BOUND;
    let (s, n) = ticks_until(&mut rig, bound, "failsafe on a stale sample", |s| {
        s.state == ControlState::Failsafe
    })
    .await;
    let id = format!("cdu_unreachable:{CDU}");
    assert!(alarm_message(&s, &id).contains("old"), "{:?}", s.alarms);
    assert!(
        s.cdus[0].link.sample_age_ms.is_some_and(|a| a > 3000.0),
        "{:?}",
        s.cdus[0].link
    );
    assert!(has_alarm(&s, &format!("cdu_slow:{CDU}")));
    report("modbus_slow_cdu (sample stale)", s.state, &id, n);
    assert_eq!(
        rig.proxy().patched.load(Ordering::SeqCst),
        0,
        "no reply was altered, only held"
    );

    // The CDU is fast again: the pending poll lands and the loop recovers.
    rig.proxy().delay_ms.store(0, Ordering::SeqCst);
    rig.d.set_cdu_budget(sim_daemon::LOCKSTEP_CDU_BUDGET);
    let (_, m) = ticks_until(&mut rig, 8, "recovery after the slow CDU", |s| {
        s.state == ControlState::Running
    })
    .await;
    eprintln!("FAULT-MATRIX | modbus_slow_cdu: back to Running after {m} ticks");
}

/// A tick longer than its period is alarmed (`tick_overrun`) and counted in the `tick`
/// metrics. The simulator's time_scale of 100 makes the wall-clock period 10 ms, and a CDU
/// holding each reply 3 × that (the lockstep budget waits for it) makes the tick overrun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tick_overrun_is_alarmed_and_counted() {
    let mut rig = Rig::new(true, &[("time_scale = 1.0", "time_scale = 100.0")], "").await;
    rig.warm_up(5).await;
    rig.proxy().delay_ms.store(30, Ordering::SeqCst);
    let (s, n) = ticks_until(&mut rig, 2, "tick_overrun", |s| {
        has_alarm(s, "tick_overrun")
    })
    .await;
    assert!(
        alarm_message(&s, "tick_overrun").contains("longer than its 10 ms period"),
        "{:?}",
        s.alarms
    );
    let tick = s
        .points
        .iter()
        .find(|p| p.measurement == "tick")
        .expect("a tick point every tick");
    let field = |k: &str| {
        tick.fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert!(
        matches!(field("overruns"), Some(coolantd::model::FieldValue::Int(n)) if n >= 1),
        "{:?}",
        tick.fields
    );
    assert_eq!(
        field("period_ms"),
        Some(coolantd::model::FieldValue::Float(10.0))
    );
    report(
        "tick_overrun (CDU replies held 30 ms)",
        s.state,
        "tick_overrun",
        n,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_exception_codes_reported_per_register() {
    let mut rig = Rig::new(true, &[], "").await;
    rig.warm_up(5).await;
    rig.proxy().set_patch(Some(exception_patch()));
    let (s, n) = ticks_until(
        &mut rig,
        LOST_REQUIRED_BOUND,
        "failsafe on exceptions",
        |s| s.state == ControlState::Failsafe,
    )
    .await;
    assert!(rig.proxy().patched.load(Ordering::SeqCst) > 0);
    let faults = &s.cdus[0].faults;
    for reg in [
        "supply_temp",
        "return_temp",
        "flow",
        "diff_pressure",
        "pump_feedback",
    ] {
        assert!(
            faults
                .iter()
                .any(|f| f.register == reg && f.error.contains("exception 0x04")),
            "{reg} not reported with its exception: {faults:?}"
        );
    }
    // The discrete inputs still answer: the CDU is reachable, one register block refuses.
    assert!(!faults.iter().any(|f| f.register == "leak"), "{faults:?}");
    assert!(!has_alarm(&s, &format!("cdu_unreachable:{CDU}")));
    let id = format!("input_lost:{CDU}:supply_temperature");
    assert!(
        alarm_message(&s, &id).contains("exception"),
        "{:?}",
        s.alarms
    );
    report("modbus_exception_codes (0x04 on FC4)", s.state, &id, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_garbage_values_rejected() {
    // 500 °C fails the register's own plausibility (-10..100 °C, sim-cdu profile); 90 °C is
    // a valid register value but beyond the core's coolant limit (80 °C): both must be
    // rejected before they reach a loop.
    for (value, why) in [
        (500.0f32, "implausible value"),
        (90.0, "outside the plausible range"),
    ] {
        let mut rig = Rig::new(true, &[], "").await;
        let before = rig.warm_up(5).await;
        let supply0 = before.cdus[0].supply.expect("supply read");
        rig.proxy().set_patch(Some(float_patch(0, value, false)));
        let (s, n) = ticks_until(&mut rig, LOST_REQUIRED_BOUND, "failsafe on garbage", |s| {
            s.state == ControlState::Failsafe
        })
        .await;
        let id = format!("input_lost:{CDU}:supply_temperature");
        assert!(
            alarm_message(&s, &id).contains(why),
            "{value}: {:?}",
            s.alarms
        );
        // The pump goes to its failsafe speed, not to whatever a loop would make of 500 °C.
        assert!((rig.plant().pump_command().0 - 100.0).abs() < 0.2);
        report(
            &format!("modbus_garbage_values (supply {value} °C)"),
            s.state,
            &id,
            n,
        );
        // Never was the garbage taken as the coolant state: the held value is the old one.
        assert!((supply0 - f64::from(value)).abs() > 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_nan_rejected() {
    let mut rig = Rig::new(true, &[], "").await;
    rig.warm_up(5).await;
    rig.proxy().set_patch(Some(float_patch(0, f32::NAN, false)));
    let (s, n) = ticks_until(&mut rig, LOST_REQUIRED_BOUND, "failsafe on NaN", |s| {
        s.state == ControlState::Failsafe
    })
    .await;
    assert!(
        s.cdus[0].supply.is_none(),
        "NaN must not be reported as a reading"
    );
    assert!(
        s.cdus[0]
            .faults
            .iter()
            .any(|f| f.register == "supply_temp" && f.error.contains("NaN")),
        "{:?}",
        s.cdus[0].faults
    );
    let id = format!("input_lost:{CDU}:supply_temperature");
    assert!(has_alarm(&s, &id), "{:?}", s.alarms);
    report("sensor_nan (supply NaN)", s.state, &id, n);
    // The sensor heals: back to Running after the recovery hold (5 s default).
    rig.proxy().set_patch(None);
    let (_, m) = ticks_until(&mut rig, 8, "recovery after NaN", |s| {
        s.state == ControlState::Running
    })
    .await;
    eprintln!("FAULT-MATRIX | sensor_nan: back to Running after {m} ticks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_stuck_detected() {
    let stuck_after_s = 5.0;
    let mut rig = Rig::new(
        true,
        &[],
        &format!("[control.plausibility]\nstuck_after_s = {stuck_after_s}\n"),
    )
    .await;
    rig.warm_up(5).await;
    // Flow frozen at its current reading while the pump is told to triple its speed: a flow
    // meter that ignores that is stuck.
    let flow_now = rig.plant().flow().0 as f32;
    rig.proxy().set_patch(Some(float_patch(4, flow_now, true)));
    rig.command(Command::SetMode { mode: Mode::Manual });
    rig.command(Command::SetPumpSpeed { percent: 60.0 });
    let id = format!("input_lost:{CDU}:flow");
    let bound = (stuck_after_s / PERIOD.as_secs_f64()) as u32 + 2;
    let (s, n) = ticks_until(&mut rig, bound, "stuck flow", |s| has_alarm(s, &id)).await;
    assert!(rig.proxy().patched.load(Ordering::SeqCst) > 0);
    assert!(alarm_message(&s, &id).contains("stuck"), "{:?}", s.alarms);
    // Flow is an optional input: the loop goes on, degraded.
    assert_eq!(s.state, ControlState::Degraded);
    assert!(
        rig.plant().pump_command().0 > 50.0,
        "the manual speed still lands"
    );
    report("register_stuck (flow)", s.state, &id, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pump_feedback_not_following_raises_alarm() {
    let mut rig = Rig::new(false, &[], "").await;
    rig.warm_up(5).await;
    rig.plant().fail_pump(true);
    let id = format!("pump_not_following:{CDU}");
    // follow_timeout_s (10 s default) after the feedback leaves the 5 % tolerance band,
    // which a spinning-down pump does within a few seconds.
    let follow_timeout_ticks = 10;
    let (s, n) = ticks_until(&mut rig, follow_timeout_ticks + 5, "pump alarm", |s| {
        has_alarm(s, &id)
    })
    .await;
    assert!(
        n >= follow_timeout_ticks,
        "alarm before the follow timeout: {n}"
    );
    assert_eq!(s.state, ControlState::Degraded);
    report("pump_feedback_not_following", s.state, &id, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_raised_and_acknowledged() {
    let mut rig = Rig::new(false, &[], "").await;
    rig.warm_up(5).await;
    let (pmin, n_gpus) = {
        let p = rig.plant();
        (p.profile().power.min_w.0, p.gpus().len())
    };
    assert!(rig.plant().gpus().iter().all(|g| g.limit.0 > pmin + 1.0));
    rig.plant().set_leak(true);
    let s = rig.tick().await;
    let id = format!("leak:{CDU}");
    assert_eq!(s.state, ControlState::Emergency, "{:?}", s.alarms);
    assert!(has_alarm(&s, &id));
    // Within this one tick: every GPU of the CDU at its minimum, the pump at maximum.
    {
        let p = rig.plant();
        assert!(
            p.gpus().iter().all(|g| (g.limit.0 - pmin).abs() < 0.5),
            "caps not at minimum"
        );
        assert!(
            (p.pump_command().0 - 100.0).abs() < 0.2,
            "pump {}",
            p.pump_command().0
        );
    }
    // The next sample shows the enforced limit from the simulated GPUs.
    let s = rig.tick().await;
    assert_eq!(s.gpus.len(), n_gpus);
    assert!(s
        .gpus
        .iter()
        .all(|g| g.limit.is_some_and(|l| (l - pmin).abs() < 0.5)));
    report(
        "leak (caps to minimum, pump max)",
        ControlState::Emergency,
        &id,
        1,
    );

    // Dry again: the alarm stays latched and so does the emergency, until acknowledged.
    rig.plant().set_leak(false);
    for _ in 0..3 {
        let s = rig.tick().await;
        assert!(has_alarm(&s, &id), "leak alarm must stay latched");
        assert_eq!(s.state, ControlState::Emergency);
    }
    rig.command(Command::AckAlarm { id: id.clone() });
    let s = rig.tick().await;
    assert!(!has_alarm(&s, &id), "{:?}", s.alarms);
    assert_eq!(s.state, ControlState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_over_slowdown_caps_within_1_tick() {
    // A set point and cap band high enough that the ordinary cap loop stays out of the way,
    // so the GPU really reaches its slowdown threshold and the emergency path acts.
    let mut rig = Rig::new(
        false,
        &[("setpoint = 55.0", "setpoint = 80.0")],
        "[control.power_cap]\nband_k = 15.0\n",
    )
    .await;
    rig.warm_up(5).await;
    let (pmin, slowdown) = {
        let p = rig.plant();
        (
            p.profile().power.min_w.0,
            p.profile().thresholds.slowdown_c.0,
        )
    };
    {
        let mut p = rig.plant();
        p.set_workload(Workload::Constant { load: 1.0 });
        p.fail_pump(true);
        p.set_facility_water(Celsius(45.0));
    }
    let hw = coolantd::sim::plant::throttle::HW_THERMAL_SLOWDOWN;
    let mut onset = None;
    for k in 1..=900u32 {
        rig.k += 1;
        rig.d.sim().expect("sim").step(PERIOD);
        // What the daemon is about to read this tick.
        let hot: Vec<GpuKey> = rig
            .plant()
            .gpus()
            .iter()
            .filter(|g| g.thermal.die.0 >= slowdown || g.throttle & hw != 0)
            .map(|g| g.key.clone())
            .collect();
        let now = rig.now();
        let s = rig.d.tick(now).await;
        if !hot.is_empty() {
            let p = rig.plant();
            for key in &hot {
                let g = p.gpu(key).expect("gpu");
                assert!(
                    (g.limit.0 - pmin).abs() < 0.5,
                    "{key} at {:.1} °C: cap {} W not at the minimum within the tick",
                    g.thermal.die.0,
                    g.limit.0
                );
            }
            drop(p);
            assert_eq!(s.state, ControlState::Emergency);
            let id = format!("gpu_slowdown:{}", hot[0]);
            assert!(has_alarm(&s, &id), "{:?}", s.alarms);
            onset = Some((k, id));
            break;
        }
    }
    let (k, id) = onset.expect("the GPUs never reached their slowdown threshold");
    eprintln!("FAULT-MATRIX | gpu_over_slowdown: threshold reached {k} s after the pump failed");
    report(
        "gpu_over_slowdown (failed pump, 45 °C water)",
        ControlState::Emergency,
        &id,
        CAP_BOUND,
    );
    let s = rig.tick().await;
    assert!(s
        .gpus
        .iter()
        .any(|g| g.limit.is_some_and(|l| (l - pmin).abs() < 0.5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvml_errors_and_gpu_disappearing() {
    let mut rig = Rig::new(false, &[], "").await;
    rig.warm_up(5).await;
    let host = rig.d.host().to_string();
    let gpu = |i: u32| GpuKey {
        host: host.clone(),
        index: i,
    };
    let inject = |rig: &Rig, i: u32, f: GpuFault| {
        assert!(rig
            .d
            .sim()
            .expect("sim")
            .sim_gpus()
            .inject_fault(&gpu(i), f));
    };

    // One GPU stops answering NVML: its readings are lost, the others steer; degraded.
    inject(&rig, 0, GpuFault::Unresponsive);
    let id0 = format!("gpu_input:{}", gpu(0));
    let (s, n) = ticks_until(&mut rig, LOST_REQUIRED_BOUND, "one GPU unresponsive", |s| {
        has_alarm(s, &id0)
    })
    .await;
    assert_eq!(s.state, ControlState::Degraded);
    assert!(
        s.controlled.is_some(),
        "the other GPUs still give a controlled variable"
    );
    report("nvml_unresponsive (one GPU)", s.state, &id0, n);
    inject(&rig, 0, GpuFault::None);
    ticks_until(&mut rig, 2, "healed", |s| s.state == ControlState::Running).await;

    // One GPU falls off the bus: it vanishes from the reads. The daemon treats a GPU of its
    // inventory missing from the reads as a lost reading at once (not only once its last
    // reading has gone stale after max_sample_age_ms).
    inject(&rig, 1, GpuFault::Gone);
    let id1 = format!("gpu_input:{}", gpu(1));
    let (s, n) = ticks_until(&mut rig, LOST_REQUIRED_BOUND, "one GPU gone", |s| {
        has_alarm(s, &id1)
    })
    .await;
    assert_eq!(s.state, ControlState::Degraded);
    assert_eq!(
        s.gpus.len(),
        rig.plant().gpus().len(),
        "the gone GPU is still listed"
    );
    report("gpu_gone (one GPU)", s.state, &id1, n);
    inject(&rig, 1, GpuFault::None);
    ticks_until(&mut rig, 2, "back", |s| s.state == ControlState::Running).await;

    // Every GPU unresponsive: the GPU temperatures (a required input) are lost → failsafe.
    let n_gpus = rig.plant().gpus().len() as u32;
    for i in 0..n_gpus {
        inject(&rig, i, GpuFault::Unresponsive);
    }
    let (s, n) = ticks_until(
        &mut rig,
        LOST_REQUIRED_BOUND,
        "all GPUs unresponsive",
        |s| s.state == ControlState::Failsafe,
    )
    .await;
    let id = format!("failsafe:{CDU}");
    assert!(
        alarm_message(&s, &id).contains("GPU temperatures unknown"),
        "{:?}",
        s.alarms
    );
    assert!(
        (rig.plant().pump_command().0 - 100.0).abs() < 0.2,
        "pump to failsafe speed"
    );
    report("nvml_unresponsive (all GPUs)", s.state, &id, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdu_in_local_mode_not_written() {
    let mut rig = Rig::new(true, &[], "").await;
    rig.warm_up(5).await;
    // The daemon writes every tick in remote mode (the watchdog heartbeat at least).
    let w0 = rig.proxy().writes();
    rig.tick().await;
    assert!(rig.proxy().writes() > w0, "no writes seen in remote mode");

    rig.plant().set_remote_enable(false);
    let (cmd0, wd0, w0) = {
        let p = rig.plant();
        (
            p.pump_command().0,
            p.watchdog_writes(),
            rig.proxy().writes(),
        )
    };
    // Full load: in remote mode the loop would now raise the pump.
    rig.plant().set_workload(Workload::Constant { load: 1.0 });
    let id = format!("local_mode:{CDU}");
    let (s, n) = ticks_until(&mut rig, 1, "local mode seen", |s| has_alarm(s, &id)).await;
    assert_eq!(s.state, ControlState::Degraded);
    for _ in 0..15 {
        let s = rig.tick().await;
        assert!(has_alarm(&s, &id));
        assert!(!s
            .alarms
            .iter()
            .any(|a| a.id.starts_with("pump_write_failed")));
    }
    assert_eq!(
        rig.proxy().writes(),
        w0,
        "Modbus writes reached a CDU in local mode"
    );
    assert_eq!(rig.plant().watchdog_writes(), wd0);
    assert_eq!(rig.plant().pump_command().0, cmd0);
    report(
        "cdu_in_local_mode (no writes for 16 ticks)",
        s.state,
        &id,
        n,
    );

    rig.plant().set_remote_enable(true);
    let s = rig.tick().await;
    assert!(!has_alarm(&s, &id));
    assert!(rig.proxy().writes() > w0, "writes resume in remote mode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_with_invalid_file_keeps_old_config() {
    let mut rig = Rig::new(false, &[], "").await;
    rig.warm_up(5).await;
    rig.plant().set_workload(Workload::Constant { load: 1.0 });
    // Into regulation: the pump loop is off its limits.
    for _ in 0..90 {
        rig.tick().await;
    }
    let path = rig.d.config().path.clone();
    let good = std::fs::read_to_string(&path).expect("config");
    let before = rig.tick().await;
    assert_eq!(before.setpoint, 55.0);

    // A file that does not parse is refused at load, naming file and key.
    let bad = rig._dir.0.join("bad.toml");
    std::fs::write(&bad, good.replace("setpoint = 55.0", "setpoint = \"warm\"")).expect("write");
    let err = Config::load(&bad).expect_err("a string set point must be refused");
    assert_eq!(err.file, bad);
    assert!(
        err.issues.iter().any(|i| i.key.contains("setpoint")),
        "{err}"
    );
    // A file that parses but names a missing CDU profile is refused by the daemon.
    let missing = rig._dir.0.join("missing.toml");
    std::fs::write(
        &missing,
        good.replace("profile = \"sim-cdu\"", "profile = \"no-such-cdu\""),
    )
    .expect("write");
    let cfg = Config::load(&missing).expect("parses");
    assert!(rig.d.reload(cfg).is_err());
    assert_eq!(rig.d.config().cdus[0].profile, "sim-cdu");
    let s = rig.tick().await;
    assert_eq!(s.state, ControlState::Running);
    assert_eq!(s.setpoint, 55.0, "the old configuration stays");

    // A valid reload raising the set point by 1 K takes effect at the next tick, and the
    // pump command moves on from where it was instead of jumping.
    let pump_before = rig.plant().pump_command().0;
    assert!(
        pump_before > 21.0 && pump_before < 99.0,
        "pump not regulating: {pump_before}"
    );
    let ok = rig._dir.0.join("ok.toml");
    std::fs::write(&ok, good.replace("setpoint = 55.0", "setpoint = 56.0")).expect("write");
    rig.d
        .reload(Config::load(&ok).expect("valid"))
        .expect("reload");
    let s = rig.tick().await;
    assert_eq!(s.setpoint, 56.0);
    let pump_after = rig.plant().pump_command().0;
    // The slew limits (10 %/s up, 2 %/s down by default) bound any step; a reset PID would
    // restart from the start speed or its minimum. The plant holds the last *written*
    // command, which may lag the controller's output by up to the write deadband (0.2 %; the
    // feed-forward keeps the output creeping below it), plus the register's 0.1 % step.
    assert!(
        (pump_after - pump_before).abs() <= 2.0 + 0.2 + 0.15,
        "pump jumped on reload: {pump_before} → {pump_after}"
    );
    report(
        "config_reload (invalid refused, valid bumpless)",
        s.state,
        "-",
        1,
    );
}
