//! Cost of the control core: one PID step, and one controller tick for a host with 8 GPUs
//! and one CDU (the common HGX layout).

use coolantd::control::pid::{Action, Pid, PidParams};
use coolantd::control::{CduSetup, ControlConfig, Controller, TickInput};
use coolantd::model::{CduSample, GpuKey, GpuSample, GpuStatic, RegisterReading, Role, Source};
use coolantd::units::{Celsius, Percent, Watts};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::time::Duration;

fn pid_step(c: &mut Criterion) {
    let mut pid = Pid::new(
        PidParams {
            kp: 5.0,
            ki: 0.25,
            kd: 2.0,
            derivative_filter_s: 5.0,
            tracking_time_s: None,
            out_min: 20.0,
            out_max: 100.0,
            slew_up_per_s: 10.0,
            slew_down_per_s: 2.0,
            action: Action::Reverse,
        },
        50.0,
    );
    let mut pv = 60.0;
    c.bench_function("pid_step", |b| {
        b.iter(|| {
            pv = if pv > 75.0 { 60.0 } else { pv + 0.01 };
            black_box(pid.update(black_box(68.0), black_box(pv), 0.0, 1.0))
        })
    });
}

fn gpu(i: u32) -> GpuStatic {
    GpuStatic {
        key: GpuKey {
            host: "node01".into(),
            index: i,
        },
        uuid: format!("GPU-{i}"),
        name: "NVIDIA H200".into(),
        profile: "h200-sxm".into(),
        slowdown: Celsius(89.0),
        gpu_max: Celsius(87.0),
        hbm_max: Celsius(95.0),
        shutdown: Celsius(95.0),
        power_min: Watts(200.0),
        power_max: Watts(700.0),
        power_default: Watts(700.0),
    }
}

fn controller_tick(c: &mut Criterion) {
    let roles = vec![
        Role::SupplyTemperature,
        Role::ReturnTemperature,
        Role::Flow,
        Role::DifferentialPressure,
        Role::PumpSpeedCommand,
        Role::PumpSpeedFeedback,
        Role::Leak,
        Role::RemoteEnable,
        Role::Watchdog,
    ];
    let setup = CduSetup {
        name: "cdu-a".into(),
        hosts: vec!["node01".into()],
        pump_min: Percent(10.0),
        pump_max: Percent(100.0),
        roles: roles.clone(),
    };
    let cfg = ControlConfig::default();
    let mut ctl = Controller::new(&cfg, vec![setup], (0..8).map(gpu).collect());
    let mut now = Duration::ZERO;
    let mut gpus: Vec<GpuSample> = (0..8)
        .map(|i| {
            let mut s = GpuSample::empty(gpu(i).key, Source::Nvml, now);
            s.core = Some(Celsius(60.0 + i as f64));
            s.hbm = Some(Celsius(55.0 + i as f64));
            s.power_instant = Some(Watts(650.0));
            s.enforced_limit = Some(Watts(700.0));
            s
        })
        .collect();
    let mut cdu = CduSample {
        cdu: "cdu-a".into(),
        at: now,
        registers: roles
            .iter()
            .map(|r| RegisterReading {
                name: r.as_str().into(),
                role: Some(*r),
                value: Ok(match r {
                    Role::SupplyTemperature => 30.0,
                    Role::ReturnTemperature => 38.0,
                    Role::Flow => 120.0,
                    Role::DifferentialPressure => 80.0,
                    Role::PumpSpeedFeedback | Role::PumpSpeedCommand => 50.0,
                    Role::RemoteEnable => 1.0,
                    _ => 0.0,
                }),
            })
            .collect(),
    };
    let mut k = 0u64;
    c.bench_function("controller_tick_8gpu_1cdu", |b| {
        b.iter(|| {
            k += 1;
            now += Duration::from_secs(1);
            for (i, g) in gpus.iter_mut().enumerate() {
                g.at = now;
                g.core = Some(Celsius(66.0 + i as f64 * 0.2 + (k % 7) as f64 * 0.1));
            }
            cdu.at = now;
            black_box(ctl.tick(&TickInput {
                now,
                gpus: &gpus,
                cdus: std::slice::from_ref(&cdu),
                outcomes: &[],
            }))
        })
    });
}

criterion_group!(benches, pid_step, controller_tick);
criterion_main!(benches);
