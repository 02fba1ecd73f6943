//! The pump loop and the power-cap loop against a small deterministic plant.

use crate::control_support;

use control_support::{cfg, Rig};
use coolantd::model::{Command, CommandOutcome, ControlState, RejectKind};

#[test]
fn pump_loop_settles_at_setpoint() {
    let mut rig = Rig::new(&cfg(), 8);
    rig.load = vec![700.0, 650.0, 600.0, 700.0, 500.0, 300.0, 700.0, 690.0];
    let out = rig.run(600);
    assert_eq!(out.state, ControlState::Running);
    let t = rig.hottest();
    assert!(
        (t - 68.0).abs() < 0.5,
        "hottest GPU {t:.2} °C, set point 68"
    );
    // Not just pegged: the pump sits inside its range, saving energy against 100 %.
    assert!(
        rig.pump_cmd > 20.0 && rig.pump_cmd < 90.0,
        "pump {:.1} %",
        rig.pump_cmd
    );
    // No overshoot beyond a few kelvin at any later point either.
    let mut worst: f64 = 0.0;
    for _ in 0..300 {
        rig.step();
        worst = worst.max((rig.hottest() - 68.0).abs());
    }
    assert!(worst < 0.5, "deviation {worst:.2} K in steady state");
}

/// A configuration whose slew limits cannot hide a bump or a kick: any jump of the PID output
/// reaches the pump command within one tick.
fn unslewed() -> coolantd::control::ControlConfig {
    let mut c = cfg();
    c.pump.slew_up_per_s = 1000.0;
    c.pump.slew_down_per_s = 1000.0;
    c
}

#[test]
fn setpoint_step_is_followed_without_kick() {
    // A derivative gain and no derivative filter, so that a derivative on the error would kick
    // by kd · Δsp / dt (20 % here) on a set-point step; on the measurement it does not.
    let mut c = unslewed();
    c.pid.kd = 40.0;
    c.pid.derivative_filter_s = 0.0;
    let mut rig = Rig::new(&c, 2);
    rig.run(600);
    let before = rig.pump_cmd;
    let step = 0.5;
    assert_eq!(
        rig.ctl.command(
            rig.now,
            &Command::SetSetpoint {
                celsius: 68.0 - step
            }
        ),
        CommandOutcome::Accepted
    );
    let out = rig.step();
    let first = Rig::pump_writes(&out).first().copied().unwrap_or(before);
    // Settled, the error was ~0: the step owes kp · 0.5 K = 10 % of proportional action (the
    // integral adds only the ~0 error of the previous tick). A derivative on the error would
    // add kd · 0.5 K / 1 s = 20 % on top.
    let owed = c.pid.kp * step;
    assert!(
        (first - before - owed).abs() <= 2.0,
        "{before:.2} -> {first:.2}, proportional action owes {owed:+.2}: a derivative kick"
    );
    rig.run(600);
    let sp = 68.0 - step;
    assert!((rig.hottest() - sp).abs() < 0.5, "{:.2}", rig.hottest());
}

#[test]
fn fast_period_of_100_ms_settles_too() {
    let mut c = cfg();
    c.period_ms = 100;
    let mut rig = Rig::new(&c, 4);
    rig.run(6000);
    assert!((rig.hottest() - 68.0).abs() < 0.5, "{:.2}", rig.hottest());
}

#[test]
fn power_caps_engage_only_when_pump_is_spent_and_restore_gradually() {
    let mut rig = Rig::new(&cfg(), 2);
    rig.run(300);
    assert_eq!(
        rig.limit,
        vec![700.0, 700.0],
        "no caps while the pump has headroom"
    );
    // Warm facility water: even a full pump cannot hold 68 °C at 700 W.
    rig.supply = Ok(50.0);
    rig.run(900);
    assert!(rig.pump_cmd > 99.0, "pump {:.1}", rig.pump_cmd);
    assert!(rig.limit[0] < 690.0, "caps lowered: {:?}", rig.limit);
    assert!(rig.limit[0] >= 200.0);
    let band = cfg().setpoint + cfg().power_cap.band_k;
    assert!(
        (rig.hottest() - band).abs() < 1.0,
        "held near {band}: {:.2}",
        rig.hottest()
    );
    // Cool water again: caps rise back, no faster than the restore rate.
    rig.supply = Ok(30.0);
    let mut prev = rig.limit[0];
    for _ in 0..600 {
        rig.step();
        assert!(rig.limit[0] - prev <= cfg().power_cap.restore_w_per_s + 1.0 + 1e-9);
        prev = rig.limit[0];
    }
    assert_eq!(rig.limit, vec![700.0, 700.0], "back to the original limit");
    let out = rig.run(300);
    assert!(out.state == ControlState::Running);
    assert!(rig.pump_cmd < 99.0);
}

#[test]
fn power_limit_reset_upward_is_reasserted() {
    let mut rig = Rig::new(&cfg(), 1);
    rig.supply = Ok(52.0);
    rig.run(600);
    let ours = rig.limit[0];
    assert!(ours < 690.0, "{ours}");
    // Someone (a driver reload) puts the limit back to 700 W.
    rig.limit[0] = 700.0;
    rig.step();
    let out = rig.step();
    let caps = Rig::caps(&out);
    assert!(
        caps.iter().any(|(_, w)| *w < 690.0) || rig.limit[0] < 690.0,
        "re-asserted: {caps:?} {:?}",
        rig.limit
    );
}

#[test]
fn lower_external_power_limit_is_reported_not_fought() {
    let mut rig = Rig::new(&cfg(), 1);
    rig.supply = Ok(52.0);
    rig.run(600);
    // Another agent clamps the GPU to 300 W.
    rig.limit[0] = 300.0;
    rig.supply = Ok(30.0);
    let mut raised = false;
    for _ in 0..20 {
        let out = rig.step();
        raised |= Rig::caps(&out).iter().any(|(_, w)| *w > 300.0 + 2.0);
        if Rig::has_alarm(&out, "power_limit_external:") {
            assert!(!raised);
            assert_eq!(rig.limit[0], 300.0);
            return;
        }
    }
    panic!("no power_limit_external alarm; caps raised over it: {raised}");
}

#[test]
fn manual_mode_holds_operator_speed_and_returns_bumplessly() {
    // Unslewed: with the default 2 %/s the slew limiter alone would keep any bump under 2.1 %.
    let c = unslewed();
    let mut rig = Rig::new(&c, 2);
    rig.run(400);
    assert_eq!(
        rig.ctl
            .command(rig.now, &Command::SetPumpSpeed { percent: 70.0 }),
        CommandOutcome::Rejected {
            kind: RejectKind::WrongMode,
            reason: "pump speed can only be set in manual mode".into()
        }
    );
    let mode = coolantd::model::Mode::Manual;
    assert_eq!(
        rig.ctl.command(rig.now, &Command::SetMode { mode }),
        CommandOutcome::Accepted
    );
    assert_eq!(
        rig.ctl
            .command(rig.now, &Command::SetPumpSpeed { percent: 70.0 }),
        CommandOutcome::Accepted
    );
    rig.run(100);
    assert!((rig.pump_cmd - 70.0).abs() < 1e-9);
    let mode = coolantd::model::Mode::Auto;
    assert_eq!(
        rig.ctl.command(rig.now, &Command::SetMode { mode }),
        CommandOutcome::Accepted
    );
    let out = rig.step();
    let w = Rig::pump_writes(&out).first().copied().unwrap_or(70.0);
    // From the operator's speed: the integrator tracked it, so only the change of the error
    // over one tick moves the output (the GPUs sit ~14 K under the set point by now, so an
    // untracked integrator or a reset would jump by tens of %).
    assert!((w - 70.0).abs() < 0.5, "bumpless: 70 -> {w:.2}");
}

#[test]
fn commands_outside_limits_are_rejected_and_change_nothing() {
    let mut rig = Rig::new(&cfg(), 1);
    rig.run(5);
    for bad in [f64::NAN, 10.0, 85.0, 90.0] {
        assert!(matches!(
            rig.ctl
                .command(rig.now, &Command::SetSetpoint { celsius: bad }),
            CommandOutcome::Rejected {
                kind: RejectKind::OutOfRange,
                ..
            }
        ));
    }
    let mut c = cfg();
    c.setpoint_max = 88.0;
    let mut rig = Rig::new(&c, 1);
    // 85 °C is within the configured bounds but above slowdown (89) − margin (5).
    match rig
        .ctl
        .command(rig.now, &Command::SetSetpoint { celsius: 85.0 })
    {
        CommandOutcome::Rejected {
            kind: RejectKind::OutOfRange,
            reason,
        } => assert!(reason.contains("slowdown"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.ctl.setpoint().get(), 68.0);
    assert!(matches!(
        rig.ctl
            .command(rig.now, &Command::AckAlarm { id: "nope".into() }),
        CommandOutcome::Rejected {
            kind: RejectKind::UnknownAlarm,
            ..
        }
    ));
    let out = rig.step();
    assert_eq!(out.setpoint.get(), 68.0);
}

#[test]
fn reconfigure_is_bumpless() {
    let mut rig = Rig::new(&unslewed(), 2);
    rig.run(400);
    let before = rig.pump_cmd;
    let mut c = unslewed();
    c.pid.kp = 10.0;
    c.pid.ki = 0.5;
    rig.ctl.reconfigure(&c);
    let out = rig.step();
    let w = Rig::pump_writes(&out).first().copied().unwrap_or(before);
    assert!((w - before).abs() < 1.0, "{before} -> {w}");
}
