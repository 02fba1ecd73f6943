//! Fault reactions of the control core, with the tick counts they must meet.

use crate::control_support;

use control_support::{cfg, Rig, ROLES};
use coolantd::control::{CduSetup, Controller, TickInput};
use coolantd::model::{
    Actuation, ActuationError, AlarmTransition, Command, CommandOutcome, ControlState, Role,
    SensorFault,
};
use coolantd::units::Percent;
use std::time::Duration;

fn settled(n: u32) -> Rig {
    let mut rig = Rig::new(&cfg(), n);
    let out = rig.run(300);
    assert_eq!(out.state, ControlState::Running);
    rig
}

#[test]
fn boot_holds_start_speed_until_inputs_valid() {
    let mut rig = Rig::new(&cfg(), 2);
    rig.supply = Err(SensorFault::Timeout);
    let out = rig.step();
    assert_eq!(out.state, ControlState::Boot);
    assert!(!out.ready);
    assert_eq!(Rig::pump_writes(&out), vec![cfg().pump.start_speed]);
    assert!(Rig::caps(&out).is_empty(), "caps untouched in boot");
    let out = rig.run(5);
    assert_eq!(out.state, ControlState::Boot);
    assert_eq!(rig.pump_cmd, cfg().pump.start_speed);
    rig.supply = Ok(30.0);
    let out = rig.step();
    assert_eq!(out.state, ControlState::Running);
    assert!(out.ready);
}

#[test]
fn boot_times_out_to_failsafe() {
    let mut rig = Rig::new(&cfg(), 1);
    rig.supply = Err(SensorFault::Timeout);
    let out = rig.run(31);
    assert_eq!(out.state, ControlState::Failsafe);
    assert!(Rig::has_alarm(&out, "failsafe:cdu-a"));
}

#[test]
fn lost_required_input_reaches_failsafe_within_2_ticks() {
    let mut rig = settled(2);
    rig.supply = Err(SensorFault::Exception {
        code: 2,
        meaning: "illegal data address".into(),
    });
    let first = rig.step();
    let second = rig.step();
    assert!(
        first.state == ControlState::Failsafe || second.state == ControlState::Failsafe,
        "{:?} {:?}",
        first.state,
        second.state
    );
    assert!(Rig::has_alarm(
        &second,
        "input_lost:cdu-a:supply_temperature"
    ));
    // Pumps at least at the failsafe speed, at once.
    assert!(rig.pump_cmd >= cfg().pump.failsafe_speed - 1e-9);
}

#[test]
fn silent_cdu_reaches_failsafe_once_its_poll_is_stale() {
    let mut rig = settled(1);
    rig.cdu_silent = true;
    let age_ticks = (cfg().max_sample_age_ms / cfg().period_ms) as usize;
    let mut reached = None;
    for t in 1..=age_ticks + 3 {
        if rig.step().state == ControlState::Failsafe {
            reached = Some(t);
            break;
        }
    }
    let t = reached.expect("failsafe");
    assert!(t <= age_ticks + 2, "failsafe after {t} ticks");
}

#[test]
fn failsafe_recovery_is_bumpless() {
    // Unslewed, so that the slew limiter cannot hide a jump: leaving failsafe must continue
    // from the failsafe speed because the PID tracked it, not because the pump may only fall
    // 2 %/s.
    let mut c = cfg();
    c.pump.slew_up_per_s = 1000.0;
    c.pump.slew_down_per_s = 1000.0;
    let mut rig = Rig::new(&c, 2);
    assert_eq!(rig.run(300).state, ControlState::Running);
    let settled_speed = rig.pump_cmd;
    rig.supply = Err(SensorFault::Timeout);
    rig.run(10);
    assert_eq!(rig.pump_cmd, c.pump.failsafe_speed);
    assert!(
        c.pump.failsafe_speed - settled_speed > 20.0,
        "the test needs a gap to jump across: settled at {settled_speed:.1} %"
    );
    rig.supply = Ok(30.0);
    let mut back = false;
    for _ in 0..30 {
        let prev = rig.pump_cmd;
        let out = rig.step();
        if out.state == ControlState::Running && !back {
            back = true;
            // The first automatic step: from the failsafe speed, plus what P and I owe the
            // error of one tick; never a jump back to the pre-fault speed.
            let owed = c.pid.kp * 0.5 + c.pid.ki * (rig.hottest() - 68.0).abs() + 1.0;
            assert!(
                (rig.pump_cmd - prev).abs() <= owed,
                "bump leaving failsafe: {prev:.1} -> {:.1} (pre-fault {settled_speed:.1})",
                rig.pump_cmd
            );
        }
    }
    assert!(back);
}

#[test]
fn leak_lowers_caps_same_tick() {
    let mut rig = settled(4);
    rig.leak = 1.0;
    let out = rig.step();
    assert_eq!(out.state, ControlState::Emergency);
    let caps = Rig::caps(&out);
    assert_eq!(caps.len(), 4, "{caps:?}");
    assert!(
        caps.iter().all(|(_, w)| *w == 200.0),
        "GPU minimum: {caps:?}"
    );
    assert_eq!(Rig::pump_writes(&out), vec![100.0]);
    assert!(out
        .events
        .iter()
        .any(|e| e.alarm.id == "leak:cdu-a" && e.transition == AlarmTransition::Raised));
}

#[test]
fn leak_alarm_stays_latched_until_ack() {
    let mut rig = settled(1);
    rig.leak = 1.0;
    rig.step();
    rig.leak = 0.0;
    let out = rig.run(50);
    assert_eq!(
        out.state,
        ControlState::Emergency,
        "a leak never clears itself"
    );
    let leak = out
        .active_alarms
        .iter()
        .find(|a| a.id == "leak:cdu-a")
        .expect("latched");
    assert!(leak.latched && !leak.cause_present);
    assert_eq!(
        rig.ctl.command(
            rig.now,
            &Command::AckAlarm {
                id: "leak:cdu-a".into()
            }
        ),
        CommandOutcome::Accepted
    );
    let out = rig.step();
    assert!(!Rig::has_alarm(&out, "leak:"));
    assert_ne!(out.state, ControlState::Emergency);
    assert!(out
        .events
        .iter()
        .any(|e| e.alarm.id == "leak:cdu-a" && e.transition == AlarmTransition::Cleared));
}

#[test]
fn gpu_at_slowdown_caps_same_tick() {
    let mut rig = settled(2);
    rig.core_override = vec![(1, 89.0)];
    let out = rig.step();
    assert_eq!(out.state, ControlState::Emergency);
    assert_eq!(Rig::caps(&out), vec![(1, 200.0)], "only the hot GPU");
    assert_eq!(Rig::pump_writes(&out), vec![100.0]);
    assert!(Rig::has_alarm(&out, "gpu_slowdown:node01/gpu1"));
    // Hysteresis: 87 °C is still too close.
    rig.core_override = vec![(1, 87.0)];
    assert_eq!(rig.step().state, ControlState::Emergency);
    rig.core_override.clear();
    let out = rig.step();
    assert_ne!(out.state, ControlState::Emergency);
}

#[test]
fn hbm_at_its_max_is_an_emergency() {
    let mut rig = settled(1);
    rig.temps[0] = 100.0; // HBM reads temps − 5 = 95 °C, its max.
    rig.core_override = vec![(0, 70.0)];
    let out = rig.step();
    assert_eq!(out.state, ControlState::Emergency);
}

#[test]
fn pump_not_following_raises_alarm() {
    let mut rig = settled(1);
    rig.pump_follows = false;
    rig.pump_fb = 10.0;
    let timeout = cfg().pump.follow_timeout_s as usize;
    let out = rig.run(timeout - 1);
    assert!(!Rig::has_alarm(&out, "pump_not_following:"));
    let out = rig.run(2);
    assert!(Rig::has_alarm(&out, "pump_not_following:cdu-a"));
    assert_eq!(out.state, ControlState::Degraded);
    rig.pump_follows = true;
    let out = rig.run(10);
    assert!(!Rig::has_alarm(&out, "pump_not_following:"));
}

#[test]
fn failed_pump_write_is_retried_then_alarmed() {
    let mut rig = settled(1);
    rig.fail_cdu_writes = true;
    // Force a change so that a write is due.
    rig.ctl
        .command(rig.now, &Command::SetSetpoint { celsius: 60.0 });
    let n = cfg().pump.write_failures_alarm as usize;
    for _ in 0..n {
        let out = rig.step();
        assert_eq!(
            Rig::pump_writes(&out).len(),
            1,
            "each failure is retried on the next tick"
        );
        assert!(!Rig::has_alarm(&out, "pump_write_failed:"));
    }
    // The outcome of the n-th failed write arrives with the next tick.
    let out = rig.step();
    assert!(Rig::has_alarm(&out, "pump_write_failed:cdu-a"));
    assert_eq!(out.state, ControlState::Failsafe);
    rig.fail_cdu_writes = false;
    let out = rig.run(10);
    assert!(!Rig::has_alarm(&out, "pump_write_failed:"));
}

#[test]
fn local_mode_cdu_not_written() {
    let mut c = cfg();
    let mut roles = ROLES.to_vec();
    roles.push(Role::Watchdog);
    c.supervisor.startup_suppress_s = 0.0;
    let mut rig = Rig::with_roles(&c, 1, &roles);
    rig.run(100);
    rig.remote = 0.0;
    for _ in 0..20 {
        let out = rig.step();
        assert!(
            !out.actuations.iter().any(|a| matches!(
                a,
                Actuation::SetPumpSpeed { .. } | Actuation::FeedWatchdog { .. }
            )),
            "{:?}",
            out.actuations
        );
        assert!(Rig::has_alarm(&out, "local_mode:cdu-a"));
        assert_eq!(out.state, ControlState::Degraded);
    }
    rig.remote = 1.0;
    let out = rig.step();
    assert!(out
        .actuations
        .iter()
        .any(|a| matches!(a, Actuation::FeedWatchdog { .. })));
}

#[test]
fn unknown_remote_enable_is_treated_as_local_mode() {
    let mut c = cfg();
    let mut roles = ROLES.to_vec();
    roles.push(Role::Watchdog);
    c.supervisor.startup_suppress_s = 0.0;
    let mut rig = Rig::with_roles(&c, 1, &roles);
    rig.run(100);
    rig.remote_fault = Some(SensorFault::Timeout);
    // Past the hold that bridges a brief fault, the mode is unknown: no writes at all.
    let out = rig.run(20);
    for _ in 0..10 {
        let out = rig.step();
        assert!(
            !out.actuations.iter().any(|a| matches!(
                a,
                Actuation::SetPumpSpeed { .. } | Actuation::FeedWatchdog { .. }
            )),
            "{:?}",
            out.actuations
        );
        assert!(Rig::has_alarm(&out, "local_mode:cdu-a"));
        assert_eq!(out.state, ControlState::Degraded);
    }
    assert!(Rig::has_alarm(&out, "local_mode:cdu-a"));
    rig.remote_fault = None;
    let out = rig.step();
    assert!(out
        .actuations
        .iter()
        .any(|a| matches!(a, Actuation::FeedWatchdog { .. })));
}

#[test]
fn unmapped_remote_enable_means_remote() {
    let roles: Vec<Role> = ROLES
        .iter()
        .copied()
        .filter(|r| *r != Role::RemoteEnable)
        .chain([Role::Watchdog])
        .collect();
    let mut rig = Rig::with_roles(&cfg(), 1, &roles);
    let out = rig.run(50);
    assert!(!Rig::has_alarm(&out, "local_mode:cdu-a"));
    assert!(out
        .actuations
        .iter()
        .any(|a| matches!(a, Actuation::FeedWatchdog { .. })));
}

#[test]
fn watchdog_fed_every_tick_with_incrementing_value() {
    let mut roles = ROLES.to_vec();
    roles.push(Role::Watchdog);
    let mut rig = Rig::with_roles(&cfg(), 1, &roles);
    let values: Vec<u16> = (0..5)
        .flat_map(|_| {
            rig.step().actuations.into_iter().filter_map(|a| match a {
                Actuation::FeedWatchdog { value, .. } => Some(value),
                _ => None,
            })
        })
        .collect();
    assert_eq!(values, vec![1, 2, 3, 4, 5]);
}

#[test]
fn stale_gpu_sample_ignored() {
    let mut rig = settled(2);
    // GPU 1 is hot, but its reading is older than max_sample_age_ms.
    rig.gpu_delay = Duration::from_millis(cfg().max_sample_age_ms + 1000);
    rig.core_override = vec![(1, 88.5)];
    let age_ticks = (cfg().max_sample_age_ms / cfg().period_ms) as usize;
    let mut out = rig.step();
    for _ in 0..age_ticks + 1 {
        assert_ne!(out.state, ControlState::Emergency);
        out = rig.step();
    }
    // Every GPU is stale: the controlled variable is unknown, so failsafe.
    assert_eq!(out.controlled, None);
    assert_eq!(out.state, ControlState::Failsafe);
    // Graded failsafe: with the GPU temperatures unknown the caps fall to the safe share.
    let safe = 700.0 * cfg().power_cap.failsafe_percent / 100.0;
    assert!(
        rig.limit.iter().all(|w| (w - safe).abs() < 1e-6),
        "{:?}",
        rig.limit
    );
}

#[test]
fn one_gpu_lost_degrades_and_control_continues_on_the_others() {
    let mut rig = settled(3);
    rig.gpu_silent = vec![2];
    let age_ticks = (cfg().max_sample_age_ms / cfg().period_ms) as usize;
    let out = rig.run(age_ticks + 3);
    assert_eq!(out.state, ControlState::Degraded);
    assert!(out.controlled.is_some());
    assert!(Rig::has_alarm(&out, "gpu_input:node01/gpu2"));
}

#[test]
fn nan_sensor_rejected() {
    let mut c = cfg();
    // Hold the core temperature only, so that the HBM reading cannot stand in for it.
    c.controlled_variable = coolantd::control::config::ControlledVariable::Core;
    let mut rig = Rig::new(&c, 2);
    rig.run(300);
    rig.core_override = vec![(0, f64::NAN), (1, f64::NAN)];
    let out = rig.step();
    // Bridged for one tick by the last good value, never fed to the PID as NaN.
    assert!(out.controlled.is_some_and(|c| c.get().is_finite()));
    assert!(out
        .loops
        .iter()
        .all(|l| l.output.is_finite() && l.p.is_finite()));
    let out = rig.step();
    assert_eq!(out.state, ControlState::Failsafe);
    assert!(Rig::has_alarm(&out, "gpu_input:node01/gpu0"));
    rig.supply = Ok(f64::NAN);
    rig.core_override.clear();
    let out = rig.run(3);
    assert!(Rig::has_alarm(&out, "input_lost:cdu-a:supply_temperature"));
}

#[test]
fn implausible_jump_rejected() {
    let mut rig = settled(1);
    let t = rig.temps[0];
    // +60 K within one second is faster than any die can heat.
    rig.core_override = vec![(0, t + 60.0)];
    let out = rig.step();
    assert_ne!(out.state, ControlState::Emergency);
    assert!(out.controlled.is_some_and(|c| c.get() < t + 1.0));
}

#[test]
fn stuck_flow_detected_when_pump_moves() {
    let mut c = cfg();
    c.plausibility.stuck_after_s = 60.0;
    let mut rig = Rig::new(&c, 1);
    rig.run(10);
    // The flow meter freezes while the pump keeps moving (a ramp of set points).
    let frozen = rig.cdu_sample();
    let mut out = None;
    for i in 0..200 {
        let mut s = frozen.clone();
        s.at = rig.now;
        for r in &mut s.registers {
            if r.role != Some(Role::Flow) {
                r.value = rig
                    .cdu_sample()
                    .registers
                    .iter()
                    .find(|x| x.role == r.role)
                    .map_or(Ok(0.0), |x| x.value.clone());
            }
        }
        let sp = if (i / 20) % 2 == 0 { 60.0 } else { 75.0 };
        rig.ctl
            .command(rig.now, &Command::SetSetpoint { celsius: sp });
        let gpus = rig.gpu_samples();
        let o = rig.ctl.tick(&TickInput {
            now: rig.now,
            gpus: &gpus,
            cdus: &[s],
            outcomes: &[],
        });
        rig.now += rig.period;
        out = Some(o);
    }
    let out = out.expect("ticks ran");
    assert!(
        Rig::has_alarm(&out, "input_lost:cdu-a:flow"),
        "{:?}",
        out.active_alarms
    );
}

#[test]
fn startup_suppression_hides_warnings_but_not_leaks() {
    let c = coolantd::control::ControlConfig::default();
    let mut rig = Rig::new(&c, 1);
    rig.run(5);
    rig.remote = 0.0;
    rig.leak = 1.0;
    let out = rig.step();
    assert!(Rig::has_alarm(&out, "leak:cdu-a"));
    assert!(
        !Rig::has_alarm(&out, "local_mode:"),
        "suppressed during start-up"
    );
}

#[test]
fn dew_point_alarm_when_supply_near_dew_point() {
    let mut roles = ROLES.to_vec();
    roles.extend([Role::RoomTemperature, Role::RoomHumidity]);
    let mut rig = Rig::with_roles(&cfg(), 1, &roles);
    // Room 24 °C at 60 % RH: dew point ≈ 15.8 °C. Supply 17 °C is within the 2 K margin.
    rig.supply = Ok(17.0);
    let out = rig.run(3);
    assert!(Rig::has_alarm(&out, "dew_point:cdu-a"));
    let dp = out
        .loops
        .iter()
        .find(|l| l.name == "dew_point:cdu-a")
        .expect("reported");
    assert!((dp.output - 15.8).abs() < 0.3, "{}", dp.output);
    rig.supply = Ok(25.0);
    let out = rig.run(2);
    assert!(!Rig::has_alarm(&out, "dew_point:"));
}

#[test]
fn safe_outputs_restore_caps_and_set_failsafe_speed() {
    let mut rig = Rig::new(&cfg(), 1);
    rig.supply = Ok(52.0);
    rig.run(600);
    assert!(rig.limit[0] < 690.0);
    let safe = rig.ctl.safe_outputs();
    assert!(safe.contains(&Actuation::SetPumpSpeed {
        cdu: "cdu-a".into(),
        speed: Percent(100.0)
    }));
    assert!(safe
        .iter()
        .any(|a| matches!(a, Actuation::SetPowerCap { limit, .. } if limit.get() == 700.0)));
}

#[test]
fn profile_pump_range_narrows_the_configured_one() {
    let setup = CduSetup {
        name: "cdu-a".into(),
        hosts: vec!["node01".into()],
        pump_min: Percent(30.0),
        pump_max: Percent(90.0),
        roles: ROLES.to_vec(),
    };
    let mut ctl = Controller::new(&cfg(), vec![setup], vec![control_support::h200(0)]);
    let mut rig = Rig::new(&cfg(), 1);
    rig.leak = 1.0;
    let out = ctl.tick(&TickInput {
        now: Duration::ZERO,
        gpus: &rig.gpu_samples(),
        cdus: &[rig.cdu_sample()],
        outcomes: &[],
    });
    assert_eq!(
        Rig::pump_writes(&out),
        vec![90.0],
        "emergency maximum is the profile's"
    );
    assert_eq!(
        ctl.safe_outputs()[0],
        Actuation::SetPumpSpeed {
            cdu: "cdu-a".into(),
            speed: Percent(90.0)
        }
    );
    rig.leak = 0.0;
}

#[test]
fn unsupported_power_cap_is_alarmed_once_and_not_retried_until_reload() {
    let mut rig = settled(1);
    // A leak sends the cap to the GPU's minimum this tick.
    rig.leak = 1.0;
    let out = rig.step();
    assert_eq!(Rig::caps(&out).len(), 1);
    // The GPU answers that it cannot take a power limit at all, and keeps its own.
    for o in rig.outcomes.iter_mut() {
        if matches!(o.actuation, Actuation::SetPowerCap { .. }) {
            o.result = Err(ActuationError::NotSupported("power limit".into()));
        }
    }
    rig.limit[0] = 700.0;
    let mut raised = 0;
    for tick in 0..20 {
        let out = rig.step();
        assert!(Rig::caps(&out).is_empty(), "tick {tick}: written again");
        assert!(Rig::has_alarm(&out, "power_cap_unsupported:node01/gpu0"));
        assert!(!Rig::has_alarm(&out, "power_cap_write_failed:"));
        raised += out
            .events
            .iter()
            .filter(|e| {
                e.alarm.id.starts_with("power_cap_unsupported:")
                    && e.transition == AlarmTransition::Raised
            })
            .count();
    }
    assert_eq!(raised, 1, "alarmed once");
    rig.ctl.reconfigure(&cfg());
    let out = rig.step();
    assert_eq!(Rig::caps(&out).len(), 1, "a reload tries once more");
}
