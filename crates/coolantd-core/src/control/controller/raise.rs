//! Which conditions raise which alarms, once the loops of a tick have run. The leak alarm is
//! not here: it decides the CDU's state, so `cdu_tick` raises it before the supervisor steps.

use super::cap::CapLoop;
use super::inputs::CduReadings;
use super::{CduCtl, GpuCtl, TickCtx};
use crate::control::alarms::{AlarmBook, AlarmId};
use crate::control::config::ControlConfig;
use crate::model::{ControlState, GpuKey, Mono, Severity};
use std::collections::BTreeMap;

/// Asserts a warning-level condition unless start-up suppression is on.
pub(super) fn warn(
    book: &mut AlarmBook,
    suppress: bool,
    now: Mono,
    id: AlarmId,
    sev: Severity,
    msg: String,
) {
    if !suppress {
        book.assert(now, id, sev, false, msg);
    }
}

/// The alarms of the GPUs of the inventory: no usable input, at the thermal limit.
pub(super) fn gpu_alarms(book: &mut AlarmBook, ctx: &TickCtx, gpus: &BTreeMap<GpuKey, GpuCtl>) {
    for (key, g) in gpus {
        let g = &g.input;
        if g.st.is_none() {
            continue;
        }
        if let Some(why) = &g.lost {
            warn(
                book,
                ctx.suppress,
                ctx.now,
                AlarmId::GpuInput { gpu: key.clone() },
                Severity::Warning,
                format!("{key}: no usable core temperature: {why}"),
            );
        }
        if g.hot {
            book.assert(
                ctx.now,
                AlarmId::GpuSlowdown { gpu: key.clone() },
                Severity::Critical,
                false,
                format!(
                    "{key} at its thermal limit (core {:?} °C): power capped to minimum, pumps to maximum",
                    g.core_v
                ),
            );
        }
    }
}

/// The alarms of one GPU's cap loop: a lower limit set by someone else, writes failing or
/// impossible.
pub(super) fn cap_alarms(
    book: &mut AlarmBook,
    ctx: &TickCtx,
    cfg: &ControlConfig,
    key: &GpuKey,
    cap: &CapLoop,
    ours: f64,
) {
    let pc = &cfg.power_cap;
    if let Some(e) = cap.external {
        warn(book, ctx.suppress, ctx.now, AlarmId::PowerLimitExternal { gpu: key.clone() }, Severity::Warning, format!(
            "{key}: enforced power limit {e:.0} W is below ours ({:.0} W): another agent limits this GPU; coolantd leaves it alone",
            ours
        ));
    }
    match cap.write.unsupported() {
        Some(why) => warn(
            book,
            ctx.suppress,
            ctx.now,
            AlarmId::PowerCapUnsupported { gpu: key.clone() },
            Severity::Warning,
            format!(
                "{key}: the GPU cannot take a power limit ({why}); not tried again until the configuration is reloaded"
            ),
        ),
        None if cap.write.failures() >= pc.write_failures_alarm => warn(
            book,
            ctx.suppress,
            ctx.now,
            AlarmId::PowerCapWriteFailed { gpu: key.clone() },
            Severity::Warning,
            format!(
                "{key}: {} power limit writes in a row failed; retrying every tick",
                cap.write.failures()
            ),
        ),
        None => {}
    }
}

// One alarm per condition, in the order their events must appear; splitting it would only
// scatter that order over several functions.
/// The alarms of one CDU after its loop ran (the leak alarm is raised before, as it decides
/// the state). The order is the order their events appear in within a tick.
pub(super) fn cdu_alarms(
    book: &mut AlarmBook,
    ctx: &TickCtx,
    cfg: &ControlConfig,
    c: &CduCtl,
    r: &CduReadings,
    dew_alarm: Option<String>,
) {
    let (now, suppress) = (ctx.now, ctx.suppress);
    let name = &c.setup.name;
    let cdu = || name.clone();
    if let Some(why) = &r.unreachable {
        let msg = format!("{name} unreachable: {why}");
        warn(
            book,
            suppress,
            now,
            AlarmId::CduUnreachable { cdu: cdu() },
            Severity::Critical,
            msg,
        );
    }
    for (role, why) in &r.lost_required {
        let id = AlarmId::InputLost {
            cdu: cdu(),
            role: *role,
        };
        let msg = format!("{name}: required input {role} lost: {why}");
        warn(book, suppress, now, id, Severity::Critical, msg);
    }
    for (role, why) in &r.lost_optional {
        let id = AlarmId::InputLost {
            cdu: cdu(),
            role: *role,
        };
        let msg = format!("{name}: optional input {role} lost: {why}");
        warn(book, suppress, now, id, Severity::Warning, msg);
    }
    if r.local {
        let msg = if r.mode_unknown {
            format!("{name}: remote/local mode unknown (remote_enable lost); treated as local mode: coolantd does not write to it")
        } else {
            format!("{name} is in local mode: coolantd does not write to it")
        };
        warn(
            book,
            suppress,
            now,
            AlarmId::LocalMode { cdu: cdu() },
            Severity::Warning,
            msg,
        );
    }
    if c.pump.fault() {
        let msg = format!(
            "{name}: pump feedback {:.1} % does not follow the command {:.1} % within {} s",
            r.feedback.unwrap_or(f64::NAN),
            c.pump.write.acked().unwrap_or(f64::NAN),
            cfg.pump.follow_timeout_s
        );
        warn(
            book,
            suppress,
            now,
            AlarmId::PumpNotFollowing { cdu: cdu() },
            Severity::Critical,
            msg,
        );
    }
    if !r.local {
        match c.pump.write.unsupported() {
            Some(why) => book.assert(
                now,
                AlarmId::PumpWriteUnsupported { cdu: cdu() },
                Severity::Critical,
                false,
                format!("{name}: the CDU cannot take the pump speed write ({why}); not tried again until the configuration is reloaded"),
            ),
            None if c.pump.write.failures() >= cfg.pump.write_failures_alarm => book.assert(
                now,
                AlarmId::PumpWriteFailed { cdu: cdu() },
                Severity::Critical,
                false,
                format!(
                    "{name}: {} pump speed writes in a row failed; retrying every tick",
                    c.pump.write.failures()
                ),
            ),
            None => {}
        }
    }
    if c.sup.state() == ControlState::Failsafe {
        let why: Vec<String> = c.causes.iter().map(|c| c.to_string()).collect();
        let boot = if c.sup.boot_timed_out() {
            " (inputs never became valid after start)"
        } else {
            ""
        };
        let codes = c.causes.iter().map(|c| c.code()).collect();
        book.assert_with_causes(
            now,
            AlarmId::Failsafe { cdu: cdu() },
            Severity::Critical,
            false,
            format!("{name} in failsafe{boot}: {}", why.join(", ")),
            codes,
        );
    }
    if let Some(msg) = dew_alarm {
        warn(
            book,
            suppress,
            now,
            AlarmId::DewPoint { cdu: cdu() },
            Severity::Warning,
            msg,
        );
    }
}
