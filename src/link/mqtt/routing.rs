//! Routing: which topics the session subscribes to, and which handler a message arriving on
//! a topic reaches. The daemon listens on its command topic only, and only when
//! `mqtt.commands_enabled` is set; anything else a broker delivers (an overlapping
//! subscription of a shared client id, say) is ignored here rather than parsed.

use super::commands::{self, CommandRequest};
use super::payload::Topics;
use super::Shared;
use tokio::sync::mpsc;

/// One PUBLISH from the broker, as the polling task received it.
pub(super) struct Inbound {
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    pub(super) retain: bool,
    /// MQTT 5 response topic, where the reply to a command goes.
    pub(super) response_topic: Option<String>,
    pub(super) correlation_data: Option<Vec<u8>>,
}

/// The topics to subscribe to after every CONNACK (a clean session starts with none).
pub(super) fn subscriptions(topics: &Topics, commands_enabled: bool) -> Vec<&str> {
    if commands_enabled {
        vec![topics.command.as_str()]
    } else {
        Vec::new()
    }
}

/// Hands an incoming message to its handler. `commands` is `None` when commands are
/// disabled, so a command topic message then reaches nothing.
pub(super) fn route(shared: &Shared, commands: Option<&mpsc::Sender<CommandRequest>>, m: Inbound) {
    if let Some(tx) = commands {
        if m.topic == shared.topics.command {
            commands::on_command(
                shared,
                tx,
                &m.payload,
                m.retain,
                m.response_topic,
                m.correlation_data,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_command_topic_is_subscribed_and_only_when_commands_are_enabled() {
        let t = Topics::new("coolantd", "site", "host");
        assert_eq!(subscriptions(&t, true), [t.command.as_str()]);
        assert!(subscriptions(&t, false).is_empty());
    }
}
