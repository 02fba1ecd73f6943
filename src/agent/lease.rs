//! A cap lease on the agent: the controller's caps, valid until `until` (receipt + the
//! lease's duration by the agent's own monotonic clock). A lease replaces the previous one
//! entirely; sending the same caps again renews it.

use super::guard::GpuLimits;
use super::CapDecision;
use crate::model::Mono;
use crate::units::Watts;
use crate::wire::{CapLease, CapResult, Refusal};
use std::collections::BTreeMap;
use std::time::Duration;

/// The lease in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub id: u64,
    /// Accepted caps per GPU index.
    pub caps: BTreeMap<u32, Watts>,
    pub until: Mono,
}

/// What taking a lease produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseAnswer {
    /// Caps to apply now.
    pub decisions: Vec<CapDecision>,
    /// GPUs refused, for the acknowledgement.
    pub refusals: Vec<CapResult>,
    /// GPUs accepted: the shell reads their enforced limit back for the acknowledgement.
    pub accepted: Vec<u32>,
}

impl Lease {
    /// Accepts the caps the agent can apply: a GPU it has, a limit inside the board's range.
    /// Everything else is refused with its reason, never clamped silently.
    pub(super) fn accept(
        now: Mono,
        msg: &CapLease,
        limits: impl Fn(u32) -> Option<GpuLimits>,
        answer: &mut LeaseAnswer,
    ) -> Lease {
        let mut caps = BTreeMap::new();
        for cap in &msg.caps {
            let limit = Watts(f64::from(cap.limit_w));
            match limits(cap.index) {
                None => answer.refusals.push(CapResult::refused(
                    cap.index,
                    Refusal::UnknownGpu,
                    &format!("this host has no GPU {}", cap.index),
                )),
                Some(l) if limit < l.power_min || limit > l.power_max => {
                    answer.refusals.push(CapResult::refused(
                        cap.index,
                        Refusal::OutOfRange,
                        &format!(
                            "{limit:.0} outside the board's {:.0}..={:.0}",
                            l.power_min, l.power_max
                        ),
                    ))
                }
                Some(_) => {
                    caps.insert(cap.index, limit);
                    answer.accepted.push(cap.index);
                }
            }
        }
        Lease {
            id: msg.id,
            caps,
            until: now + Duration::from_millis(u64::from(msg.lease_ms)),
        }
    }
}
