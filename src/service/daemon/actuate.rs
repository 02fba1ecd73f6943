//! Actuation: the one module that writes anything to hardware. Power caps (NVML setters),
//! CDU writes (handed to each CDU's poller here, written on the wire by
//! [`write_register`]), the safe outputs on shutdown and the restore of recorded power
//! limits all go through it, and so do the host agent's caps ([`set_gpu_power_limit`],
//! [`restore_recorded`]); nothing else in the crate calls `set_power_limit` or a CDU write
//! (`tests/module_graph.rs` checks). In dry run it writes nothing and logs what it would do.

use super::links::join_all_in_order;
use super::tick::Now;
use super::Daemon;
use crate::collect::modbus::{CduError, ModbusCdu};
use crate::collect::{GpuBackend, GpuError};
use crate::model::{
    Actuation, ActuationError, ActuationOutcome, GpuKey, GpuSample, GpuStatic, Mono, Role,
    TickOutput,
};
use crate::service::cdu_link::CduLink;
use crate::service::limits::LimitStore;
use crate::units::Watts;

impl Daemon {
    /// The actuate step: applies the core's actuations of this tick, power caps first (they
    /// are sub-millisecond NVML calls and, in an emergency, the urgent ones); CDU writes go
    /// to each CDU's poller and are awaited only until `deadline`; their outcomes reach the
    /// core when they are known. In dry run it only logs each decision, with why.
    pub(super) async fn actuate(
        &mut self,
        now: Now,
        out: &TickOutput,
        gpus: &[GpuSample],
        deadline: tokio::time::Instant,
    ) {
        if !self.dry_run {
            self.record_original_limits(&out.actuations, gpus);
        }
        let mut ordered: Vec<&Actuation> = out.actuations.iter().collect();
        ordered.sort_by_key(|a| !matches!(a, Actuation::SetPowerCap { .. }));
        for a in ordered {
            if self.dry_run {
                // Each decision once, with why; watchdog feeds are routine (one per tick).
                match a {
                    Actuation::FeedWatchdog { .. } => tracing::debug!("would {a}"),
                    _ => tracing::info!(reason = decision_reason(&out.loops, a), "would {a}"),
                }
                self.outcomes.push(ActuationOutcome {
                    actuation: a.clone(),
                    at: now.mono,
                    result: Ok(()),
                    dry_run: true,
                });
                continue;
            }
            // Another host's GPU: its agent applies the cap, and the outcome comes with its
            // acknowledgement.
            if let (Actuation::SetPowerCap { gpu, .. }, Some(rack)) = (a, self.rack.as_mut()) {
                if rack.owns(gpu) && !self.inventory.iter().any(|s| &s.key == gpu) {
                    rack.set_cap(a);
                    continue;
                }
            }
            let result = match a {
                Actuation::SetPowerCap { .. } => self.apply_cap(a),
                Actuation::SetPumpSpeed { .. } | Actuation::FeedWatchdog { .. } => {
                    match self.send_write(a, now.mono) {
                        Ok(()) => continue,
                        Err(e) => Err(ActuationError::Failed(e)),
                    }
                }
            };
            // A refusal that cannot change was logged once where it was remembered.
            if let Err(e @ ActuationError::Failed(_)) = &result {
                tracing::warn!(action = %a, error = %e, "actuation failed");
            }
            self.outcomes.push(ActuationOutcome {
                actuation: a.clone(),
                at: now.mono,
                result,
                dry_run: false,
            });
        }
        // The leases go out in the tick that decided them: a leak caps remote GPUs in the
        // same tick as local ones, plus the network's delay.
        if let Some(rack) = self.rack.as_mut() {
            rack.transmit(now.mono);
        }
        self.wait_cdus(deadline, |st| st.writes.is_empty()).await;
    }

    /// Hands a CDU write to that CDU's poller.
    fn send_write(&mut self, a: &Actuation, now: Mono) -> Result<(), String> {
        let (cdu, role, value) = match a {
            Actuation::SetPumpSpeed { cdu, speed } => (cdu, Role::PumpSpeedCommand, speed.0),
            Actuation::FeedWatchdog { cdu, value } => (cdu, Role::Watchdog, f64::from(*value)),
            Actuation::SetPowerCap { .. } => return Err("not a CDU write".into()),
        };
        let i = self
            .links
            .iter()
            .position(|c| c.name() == cdu)
            .ok_or_else(|| format!("no CDU `{cdu}`"))?;
        self.next_write_id += 1;
        let id = self.next_write_id;
        self.links[i].write(id, role, value)?;
        self.link_state[i].writes.insert(id, (a.clone(), now));
        Ok(())
    }

    /// Applies one power cap (never called in dry-run mode). A GPU whose cap NVML refused
    /// as not supported is remembered and not asked again: the refusal is logged once, and
    /// every later cap for it is answered `NotSupported` without a call.
    fn apply_cap(&mut self, a: &Actuation) -> Result<(), ActuationError> {
        let Actuation::SetPowerCap { gpu, limit } = a else {
            return Err(ActuationError::NotSupported("not a power cap".into()));
        };
        if let Some(why) = self.caps_not_supported.get(gpu) {
            return Err(ActuationError::NotSupported(why.clone()));
        }
        let result = self.set_power_limit(gpu, *limit);
        if let Err(ActuationError::NotSupported(why)) = &result {
            tracing::warn!(
                gpu = %gpu,
                error = %why,
                "power caps are not supported for this GPU; not asked again until a restart"
            );
            self.caps_not_supported.insert(gpu.clone(), why.clone());
        }
        result
    }

    /// The NVML setter behind [`Daemon::apply_cap`], with its error typed by whether a
    /// retry can help.
    fn set_power_limit(&self, gpu: &GpuKey, limit: Watts) -> Result<(), ActuationError> {
        let backend = self
            .gpus
            .as_ref()
            .ok_or_else(|| ActuationError::NotSupported("no GPU backend".into()))?;
        // Another host's GPU (a remote reading) is capped by that host's daemon.
        if !self.inventory.iter().any(|s| &s.key == gpu) {
            return Err(ActuationError::NotSupported(format!(
                "no GPU {gpu} on this host"
            )));
        }
        set_gpu_power_limit(backend.as_ref(), gpu, limit)
    }

    /// Records, in one durable write, the original limit of every GPU this tick caps for the
    /// first time, so it can be restored. A failure to record is logged loudly but never
    /// holds back a cap: in an emergency the GPU matters more than the bookkeeping.
    fn record_original_limits(&mut self, actuations: &[Actuation], samples: &[GpuSample]) {
        let Some(store) = self.limits.as_mut() else {
            return;
        };
        let mut fresh = Vec::new();
        for a in actuations {
            let Actuation::SetPowerCap { gpu, .. } = a else {
                continue;
            };
            let Some(st) = self.inventory.iter().find(|s| &s.key == gpu) else {
                continue;
            };
            let original = samples
                .iter()
                .find(|s| &s.key == gpu)
                .and_then(|s| s.enforced_limit)
                .unwrap_or(st.power_default);
            fresh.push((gpu.clone(), st.uuid.clone(), original));
        }
        if let Err(e) = store.record_all(fresh) {
            tracing::error!(error = %e, "cannot record the GPUs' original power limits; caps are applied anyway, restore them by hand if the daemon stops");
        }
    }

    /// Puts every output in its configured safe state and restores recorded power limits.
    ///
    /// Each CDU's poller is stopped first, cutting short a request in progress, and the safe
    /// pump speed is then written to every CDU at once, even one that is backing off after
    /// errors: this is the last chance to reach it. Per CDU that is at most 4 requests of
    /// `timeout_ms` each (resolve, connect, write, read-back); config validation keeps that
    /// inside systemd's `TimeoutStopSec=`. Afterwards the CDUs are no longer polled.
    pub async fn leave_safely(&mut self, restore_limits: bool) {
        let safe = self.controller.safe_outputs();
        let links = std::mem::take(&mut self.links);
        self.fail_pending_writes("not written: the daemon is shutting down");
        self.link_state.clear();
        let clients = join_all_in_order(links.into_iter().map(CduLink::stop)).await;
        let dry_run = self.dry_run;
        let writes = clients.into_iter().flatten().map(|mut c| {
            let mine: Vec<Actuation> = safe
                .iter()
                .filter(|a| matches!(a, Actuation::SetPumpSpeed { cdu, .. } if cdu == c.name()))
                .cloned()
                .collect();
            async move {
                c.clear_backoff();
                for a in mine {
                    let Actuation::SetPumpSpeed { speed, .. } = &a else {
                        continue;
                    };
                    if dry_run {
                        tracing::info!(action = %a, "would {a}");
                        continue;
                    }
                    match write_register(&mut c, Role::PumpSpeedCommand, speed.0).await {
                        Ok(()) => tracing::info!(action = %a, "safe output applied"),
                        Err(e) => {
                            tracing::error!(action = %a, error = %e, "could not apply the safe output")
                        }
                    }
                }
            }
        });
        join_all_in_order(writes).await;
        for a in safe {
            if !matches!(a, Actuation::SetPowerCap { .. }) || restore_limits {
                continue;
            }
            // Another host's GPU: its agent holds the last lease until it ends, then its
            // local thermal guard takes over; there is nothing to write here.
            if let (Actuation::SetPowerCap { gpu, .. }, Some(rack)) = (&a, self.rack.as_ref()) {
                if rack.owns(gpu) && !self.inventory.iter().any(|s| &s.key == gpu) {
                    continue;
                }
            }
            if dry_run {
                tracing::info!(reason = "shutting down: the safe output", "would {a}");
            } else if let Err(e) = self.apply_cap(&a) {
                tracing::error!(action = %a, error = %e, "could not apply the safe output");
            }
        }
        if restore_limits && !self.dry_run {
            if let (Some(store), Some(g)) = (self.limits.as_mut(), self.gpus.as_ref()) {
                restore_recorded(store, g.as_ref(), &self.inventory);
            }
        }
    }
}

/// The reason the control core gave for the loop behind an actuation.
fn decision_reason<'a>(loops: &'a [crate::model::LoopReport], a: &Actuation) -> &'a str {
    let name = match a {
        Actuation::SetPumpSpeed { cdu, .. } | Actuation::FeedWatchdog { cdu, .. } => {
            format!("pump:{cdu}")
        }
        Actuation::SetPowerCap { gpu, .. } => format!("power:{gpu}"),
    };
    loops
        .iter()
        .find(|l| l.name == name)
        .map_or("", |l| l.reason.as_str())
}

/// Sets one GPU's power limit through its backend, the error typed by whether a retry can
/// help. The daemon's caps and the host agent's (`service::agent`) both come through here:
/// this is the one NVML setter call of the service. Dry-run paths never call it.
pub fn set_gpu_power_limit(
    gpus: &dyn GpuBackend,
    gpu: &GpuKey,
    limit: Watts,
) -> Result<(), ActuationError> {
    gpus.set_power_limit(gpu, limit).map_err(|e| match e {
        GpuError::NotSupported { .. } | GpuError::UnknownGpu(_) => {
            ActuationError::NotSupported(e.to_string())
        }
        _ => ActuationError::Failed(e.to_string()),
    })
}

/// Restores every recorded limit it can, forgetting each one restored.
pub fn restore_recorded(
    store: &mut LimitStore,
    gpus: &dyn GpuBackend,
    inventory: &[GpuStatic],
) -> usize {
    let recorded: Vec<_> = store.recorded().cloned().collect();
    let mut restored = 0;
    for r in recorded {
        let Some(st) = inventory.iter().find(|s| s.uuid == r.uuid) else {
            tracing::warn!(uuid = %r.uuid, "a recorded GPU is not present; its limit stays recorded");
            continue;
        };
        match gpus.set_power_limit(&st.key, r.original) {
            Ok(()) => {
                tracing::info!(gpu = %st.key, limit_w = r.original.0, "restored the original power limit");
                if let Err(e) = store.forget(&r.uuid) {
                    tracing::error!(error = %e, "could not update the recorded limits");
                }
                restored += 1;
            }
            Err(e) => {
                tracing::error!(gpu = %st.key, error = %e, "could not restore the power limit")
            }
        }
    }
    restored
}

/// Writes one register of a CDU: the Modbus write behind every pump speed and watchdog feed,
/// called by the CDU's poller task (`service::cdu_link`) and by nothing else.
pub async fn write_register(cdu: &mut ModbusCdu, role: Role, value: f64) -> Result<(), CduError> {
    cdu.write(role, value).await
}
