//! Commands from MQTT: the checks a message on the command topic must pass (not empty, not
//! oversized, not retained, valid JSON per `payload::parse_command`), the hand-over to the
//! control core through a bounded queue, and the reply, to the command's MQTT 5 response
//! topic when it named one, else to `.../command/reply`.

use super::client::Message;
use super::payload::{self, parse_command};
use super::{MqttSink, Shared};
use crate::model::{Command, CommandOutcome, RejectKind};
use tokio::sync::mpsc;
use tracing::debug;

/// A well-formed command from MQTT, for the control core to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRequest {
    /// The `id` of the command message (or its MQTT 5 correlation data); pass it back to
    /// [`MqttSink::reply`].
    pub correlation_id: Option<String>,
    pub command: Command,
}

/// Capacity of the command receiver. An operator sends a command every few seconds at
/// most; more than this waiting means the core is stuck, and further commands are rejected.
pub(super) const COMMAND_QUEUE: usize = 32;
/// MQTT 5 response routes remembered for replies the core has not sent yet.
const ROUTES: usize = 64;
/// Largest command accepted (commands are under 1 KiB); larger messages on the command topic
/// are refused with a reply, and the session stays up.
pub const MAX_COMMAND: usize = 64 * 1024;

/// Where a reply goes when the command asked for an MQTT 5 response topic.
pub(super) struct Route {
    pub(super) id: String,
    pub(super) topic: String,
    pub(super) correlation_data: Option<Vec<u8>>,
}

impl MqttSink {
    /// Answers a command: to its MQTT 5 response topic when it named one, else to
    /// `.../command/reply`.
    pub fn reply(&self, correlation_id: Option<&str>, outcome: &CommandOutcome) {
        let s = &self.shared;
        let route = correlation_id.and_then(|id| {
            let mut ob = s.outbox();
            let i = ob.routes.iter().position(|r| r.id == id)?;
            ob.routes.remove(i)
        });
        let (topic, correlation_data) = match route {
            Some(r) => (r.topic, r.correlation_data),
            None => (s.topics.reply.clone(), None),
        };
        s.push_reply(Message {
            topic,
            payload: payload::reply_json(correlation_id, outcome),
            reliable: true,
            retain: false,
            correlation_data,
        });
    }
}

pub(super) fn on_command(
    shared: &Shared,
    tx: &mpsc::Sender<CommandRequest>,
    payload: &[u8],
    retain: bool,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
) {
    let reply_topic = response_topic
        .clone()
        .unwrap_or_else(|| shared.topics.reply.clone());
    let reject = |id: Option<String>, kind: RejectKind, reason: String| {
        crate::log_limited!(
            warn,
            "MQTT command rejected",
            correlation_id = ?id,
            reason = %reason
        );
        shared.push_reply(Message {
            topic: reply_topic.clone(),
            payload: payload::reply_json(id.as_deref(), &CommandOutcome::Rejected { kind, reason }),
            reliable: true,
            retain: false,
            correlation_data: correlation_data.clone(),
        });
    };
    if payload.is_empty() {
        // An empty message is how a retained message is cleared; it is not a command.
        debug!("ignoring an empty message on the command topic");
        return;
    }
    if payload.len() > MAX_COMMAND {
        // Read in full (see client.rs) so that the session survives it, but never parsed.
        reject(
            None,
            RejectKind::TooLarge,
            format!(
                "message too large for a command: {} bytes, the limit is {MAX_COMMAND} bytes",
                payload.len()
            ),
        );
        return;
    }
    if retain {
        // A retained command would run again on every reconnect: refuse it.
        reject(
            None,
            RejectKind::Retained,
            "retained commands are not accepted: publish commands without the retain flag".into(),
        );
        return;
    }
    let (id, command) = match parse_command(payload) {
        Ok(v) => v,
        Err(bad) => return reject(bad.id, bad.kind, bad.reason),
    };
    // MQTT 5: without an `id` in the payload, the correlation data is the id.
    let id = id.or_else(|| {
        correlation_data
            .as_ref()
            .map(|c| match std::str::from_utf8(c) {
                Ok(s) => s.to_string(),
                Err(_) => c.iter().map(|b| format!("{b:02x}")).collect(),
            })
    });
    if let (Some(topic), Some(id)) = (response_topic, &id) {
        let mut ob = shared.outbox();
        if ob.routes.len() >= ROUTES {
            ob.routes.pop_front();
        }
        ob.routes.push_back(Route {
            id: id.clone(),
            topic,
            correlation_data: correlation_data.clone(),
        });
    }
    crate::log_limited!(
        info,
        "MQTT command received",
        correlation_id = ?id,
        command = ?command
    );
    match tx.try_send(CommandRequest {
        correlation_id: id.clone(),
        command,
    }) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => reject(
            id,
            RejectKind::Busy,
            format!("busy: {COMMAND_QUEUE} commands are already waiting for the controller"),
        ),
        Err(mpsc::error::TrySendError::Closed(_)) => reject(
            id,
            RejectKind::ShuttingDown,
            "the controller is shutting down".into(),
        ),
    }
}
