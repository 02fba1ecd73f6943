//! The broker session of the rack wire format (`coolantd agent`): binary protobuf messages on
//! `<prefix>/v1/host/<host>/...` (see [`crate::wire`]).
//!
//! Unlike the telemetry sink it has no outbox: the agent's readings are worth nothing once
//! the next tick's are out, and an acknowledgement that is lost is resent by the controller's
//! retry. So a message is handed to rumqttc only while connected, without waiting; the
//! retained ones (status and facts) are remembered and published again after every CONNACK,
//! with the subscriptions a clean session lacks.

use super::client::{self, Client, EventLoop, Incoming, Message};
use super::config::MqttConfig;
use super::connection::{read_password, tls_config, Backoff};
use super::SinkError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Incoming messages the agent has not taken yet. A controller sends one lease per host and
/// period, so more waiting than this is a flood; the excess is dropped and logged.
const INBOX: usize = 64;

/// One incoming message.
#[derive(Debug, Clone)]
pub struct WireIncoming {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// What the session needs to start.
pub struct WireLinkOptions<'a> {
    /// The `[mqtt]` section, its paths already resolved.
    pub cfg: &'a MqttConfig,
    pub client_id: String,
    /// The last will: published, retained, by the broker when the session dies uncleanly.
    pub will_topic: String,
    pub will_payload: Vec<u8>,
    /// Topic filters subscribed after every CONNACK.
    pub subscriptions: Vec<String>,
}

struct Shared {
    connected: AtomicBool,
    closing: AtomicBool,
    /// The latest payload of each retained topic, republished after every CONNACK.
    retained: Mutex<BTreeMap<String, Vec<u8>>>,
    subscriptions: Vec<String>,
}

impl Shared {
    fn retained(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A poisoned lock only means a panic elsewhere; the map itself is always whole.
        self.retained.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running wire session.
pub struct WireLink {
    client: Client,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl WireLink {
    /// Starts connecting in the background and returns the session with the receiver of
    /// incoming messages. Fails only on local problems (password or TLS files).
    pub fn start(
        o: WireLinkOptions<'_>,
    ) -> Result<(WireLink, mpsc::Receiver<WireIncoming>), SinkError> {
        let password = read_password(o.cfg)?;
        let tls = match &o.cfg.tls {
            Some(t) => Some(tls_config(t)?),
            None => None,
        };
        let (client, eventloop) = client::build(client::Connect {
            cfg: o.cfg,
            client_id: o.client_id,
            will_topic: o.will_topic,
            will_payload: o.will_payload,
            will_retain: true,
            password,
            tls,
        });
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            retained: Mutex::new(BTreeMap::new()),
            subscriptions: o.subscriptions,
        });
        let (tx, rx) = mpsc::channel(INBOX);
        let task = tokio::spawn(poll_loop(
            eventloop,
            client.clone(),
            shared.clone(),
            tx,
            o.cfg.reconnect_min(),
            o.cfg.reconnect_max(),
        ));
        Ok((
            WireLink {
                client,
                shared,
                task,
            },
            rx,
        ))
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Publishes a message now if connected (QoS 1). A retained message is also remembered
    /// and published again after every reconnect. Returns whether it was handed to the
    /// client.
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> bool {
        if retain {
            self.shared
                .retained()
                .insert(topic.to_string(), payload.clone());
        }
        if !self.is_connected() {
            return false;
        }
        let m = Message {
            topic: topic.to_string(),
            payload,
            reliable: true,
            retain,
            correlation_data: None,
        };
        match self.client.try_publish_binary(&m) {
            Ok(()) => true,
            Err(e) => {
                crate::log_limited!(warn, "MQTT publish not queued", topic = %topic, error = %e);
                false
            }
        }
    }

    /// Ends the session as a killed process would: the polling task stops, the socket is
    /// closed without a DISCONNECT, and the broker publishes the last will.
    pub fn abort(self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.task.abort();
    }

    /// Publishes `last` (retained: the offline status), disconnects cleanly so the broker
    /// discards the will, and waits up to `bound` for the DISCONNECT to go out.
    pub async fn shutdown(self, last: Option<(String, Vec<u8>)>, bound: Duration) {
        if let Some((topic, payload)) = last {
            self.publish(&topic, payload, true);
        }
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Err(e) = self.client.disconnect().await {
            warn!(error = %e, "could not disconnect from the MQTT broker");
        }
        let mut task = self.task;
        if tokio::time::timeout(bound, &mut task).await.is_err() {
            warn!("the MQTT session did not close in time; the broker will publish the last will");
            task.abort();
        }
    }
}

async fn poll_loop(
    mut eventloop: EventLoop,
    client: Client,
    shared: Arc<Shared>,
    tx: mpsc::Sender<WireIncoming>,
    backoff_min: Duration,
    backoff_max: Duration,
) {
    let mut backoff = Backoff::new(backoff_min, backoff_max);
    let mut failures = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Incoming::ConnAck) => {
                backoff.connected(Instant::now());
                info!(attempts = failures + 1, "connected to the MQTT broker");
                failures = 0;
                // A clean session: the subscriptions are gone, and a broker restarted without
                // persistence has forgotten the retained status and facts.
                for topic in &shared.subscriptions {
                    if let Err(e) = client.try_subscribe(topic) {
                        warn!(error = %e, topic = %topic, "MQTT subscribe failed");
                    }
                }
                let retained: Vec<(String, Vec<u8>)> = shared
                    .retained()
                    .iter()
                    .map(|(t, p)| (t.clone(), p.clone()))
                    .collect();
                for (topic, payload) in retained {
                    let m = Message {
                        topic,
                        payload,
                        reliable: true,
                        retain: true,
                        correlation_data: None,
                    };
                    if let Err(e) = client.try_publish_binary(&m) {
                        warn!(error = %e, topic = %m.topic, "MQTT publish after connect failed");
                    }
                }
                shared.connected.store(true, Ordering::SeqCst);
            }
            Ok(Incoming::Publish {
                topic,
                payload,
                retain,
                ..
            }) => {
                if let Err(e) = tx.try_send(WireIncoming {
                    topic,
                    payload,
                    retain,
                }) {
                    let topic = match &e {
                        mpsc::error::TrySendError::Full(m)
                        | mpsc::error::TrySendError::Closed(m) => m.topic.clone(),
                    };
                    crate::log_limited!(
                        warn,
                        "incoming MQTT message dropped: the agent is not keeping up",
                        topic = %topic
                    );
                }
            }
            Ok(Incoming::DisconnectSent) => {
                shared.connected.store(false, Ordering::SeqCst);
                return;
            }
            Ok(Incoming::Other) => {}
            Err(e) => {
                let was = shared.connected.swap(false, Ordering::SeqCst);
                if shared.closing.load(Ordering::SeqCst) {
                    return;
                }
                failures += 1;
                let delay = backoff.failed(Instant::now());
                if was {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "lost the MQTT broker, reconnecting");
                } else if failures.is_power_of_two() {
                    warn!(error = %e, attempts = failures, retry_in_ms = delay.as_millis() as u64, "cannot reach the MQTT broker");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}
