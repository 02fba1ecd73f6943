//! The controller's MQTT session for its rack: hears the agents of the hosts its CDUs cool
//! (`<prefix>/v1/host/+/{readings,facts,status,acks}`, docs/mqtt.md "Rack wire format") and
//! publishes the cap leases the daemon hands it on `<prefix>/v1/host/<host>/caps`.
//!
//! IO only: what a message means is `crate::remote`'s business. Each message is stamped
//! with the instant it came off the socket, so that the daemon can feed the remote source
//! with its arrival time rather than the time of the tick that drains it. The inbox is
//! bounded; a message that does not fit is counted, never silently lost.

use super::client::{self, Client, Connect, EventLoop, Incoming, Message};
use super::config::MqttConfig;
use super::connection::{read_password, tls_config};
use super::SinkError;
use crate::wire::{Kind, Topic};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How many received messages wait for the next tick at most: 8 per host at the most hosts
/// a configuration may list (a reading, an acknowledgement, facts and status, with room for
/// a late tick); more means the tick is not draining.
const INBOX: usize = crate::remote::config::MAX_HOSTS * 8;

/// How many leases wait for the broker at most; the cap sender repeats what is not
/// acknowledged, so a dropped lease is retried, and counted here.
const OUTBOX: usize = 1024;

/// One wire message as received.
#[derive(Debug, Clone)]
pub struct RackMessage {
    pub at: Instant,
    pub host: String,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// What the session counted since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RackLinkStats {
    pub connected: bool,
    /// Messages on our subscriptions whose topic is not a v1 wire topic.
    pub bad_topics: u64,
    /// Messages dropped because the inbox was full.
    pub inbox_dropped: u64,
    /// Leases dropped because the outbox was full or the broker refused them.
    pub leases_dropped: u64,
}

#[derive(Debug, Default)]
struct Shared {
    connected: AtomicBool,
    bad_topics: AtomicU64,
    inbox_dropped: AtomicU64,
    leases_dropped: AtomicU64,
}

/// The rack session: a receiver of wire messages and a sender of leases.
pub struct RackLink {
    prefix: String,
    host: String,
    inbox: mpsc::Receiver<RackMessage>,
    outbox: mpsc::Sender<(String, Vec<u8>)>,
    shared: Arc<Shared>,
    client: Client,
    tasks: Vec<JoinHandle<()>>,
}

impl RackLink {
    /// Connects (in the background, reconnecting like the sink) as `<host>-rack`.
    pub fn start(cfg: &MqttConfig, host: &str) -> Result<RackLink, SinkError> {
        let prefix = cfg.topic_prefix.clone();
        let (client, eventloop) = client::build(Connect {
            cfg,
            client_id: format!("coolantd-{host}-rack"),
            // The controller's presence for the agents and for operators: retained, so a
            // reconnecting agent knows whether its controller is there.
            will_topic: controller_topic(&prefix, host),
            will_payload: b"offline".to_vec(),
            will_retain: true,
            password: read_password(cfg)?,
            tls: cfg.tls.as_ref().map(tls_config).transpose()?,
        });
        let shared = Arc::new(Shared::default());
        let (in_tx, inbox) = mpsc::channel(INBOX);
        let (outbox, out_rx) = mpsc::channel(OUTBOX);
        let poll = tokio::spawn(poll_loop(
            eventloop,
            client.clone(),
            prefix.clone(),
            host.to_string(),
            shared.clone(),
            in_tx,
            (cfg.reconnect_min(), cfg.reconnect_max()),
        ));
        let publish = tokio::spawn(publish_loop(client.clone(), shared.clone(), out_rx));
        Ok(RackLink {
            prefix,
            host: host.to_string(),
            inbox,
            outbox,
            shared,
            client,
            tasks: vec![poll, publish],
        })
    }

    /// Every message received since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<RackMessage> {
        let mut v = Vec::new();
        while let Ok(m) = self.inbox.try_recv() {
            v.push(m);
        }
        v
    }

    /// The next message, waiting for it until `deadline` at most.
    pub async fn recv_until(&mut self, deadline: tokio::time::Instant) -> Option<RackMessage> {
        tokio::time::timeout_at(deadline, self.inbox.recv())
            .await
            .ok()
            .flatten()
    }

    /// Queues an encoded lease for `host`; never waits.
    pub fn send_caps(&self, host: &str, payload: Vec<u8>) {
        let topic = Topic::format(&self.prefix, host, Kind::Caps);
        if self.outbox.try_send((topic, payload)).is_err() {
            self.shared.leases_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> RackLinkStats {
        RackLinkStats {
            connected: self.shared.connected.load(Ordering::Relaxed),
            bad_topics: self.shared.bad_topics.load(Ordering::Relaxed),
            inbox_dropped: self.shared.inbox_dropped.load(Ordering::Relaxed),
            leases_dropped: self.shared.leases_dropped.load(Ordering::Relaxed),
        }
    }

    /// Ends the session with a DISCONNECT (no last will: the controller left on purpose,
    /// and says so), after publishing `releases` (host, encoded lease) ahead of it.
    pub async fn shutdown(self, releases: Vec<(String, Vec<u8>)>) {
        for (host, payload) in releases {
            let _ = self
                .client
                .publish_binary(Message {
                    topic: Topic::format(&self.prefix, &host, Kind::Caps),
                    payload,
                    reliable: true,
                    retain: false,
                    correlation_data: None,
                })
                .await;
        }
        let _ = self
            .client
            .publish(Message {
                topic: controller_topic(&self.prefix, &self.host),
                payload: b"offline".to_vec(),
                reliable: true,
                retain: true,
                correlation_data: None,
            })
            .await;
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// The controller's own presence topic.
fn controller_topic(prefix: &str, host: &str) -> String {
    format!("{prefix}/v1/controller/{host}/status")
}

/// The filters of the kinds a controller takes, for every host (unknown hosts are counted
/// by the remote source, which needs to see them for that).
fn filters(prefix: &str) -> Vec<String> {
    [Kind::Readings, Kind::Facts, Kind::Status, Kind::Acks]
        .iter()
        .map(|k| format!("{prefix}/v1/host/+/{k}"))
        .collect()
}

async fn poll_loop(
    mut eventloop: EventLoop,
    client: Client,
    prefix: String,
    host: String,
    shared: Arc<Shared>,
    inbox: mpsc::Sender<RackMessage>,
    (min, max): (Duration, Duration),
) {
    let mut delay = min;
    loop {
        match eventloop.poll().await {
            Ok(Incoming::ConnAck) => {
                shared.connected.store(true, Ordering::Relaxed);
                delay = min;
                tracing::info!("rack: connected to the MQTT broker");
                // A clean session: the subscriptions are renewed on every connection. The
                // request queue is served by this very loop, so the requests are sent from
                // a task of their own.
                let c = client.clone();
                let p = prefix.clone();
                let h = host.clone();
                tokio::spawn(async move {
                    for f in filters(&p) {
                        if let Err(e) = c.subscribe(&f).await {
                            tracing::error!(filter = %f, error = %e, "rack: cannot subscribe");
                        }
                    }
                    let _ = c
                        .publish(Message {
                            topic: controller_topic(&p, &h),
                            payload: b"online".to_vec(),
                            reliable: true,
                            retain: true,
                            correlation_data: None,
                        })
                        .await;
                });
            }
            Ok(Incoming::Publish { topic, payload, .. }) => {
                let at = Instant::now();
                let Some(t) = Topic::parse(&prefix, &topic) else {
                    shared.bad_topics.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let m = RackMessage {
                    at,
                    host: t.host,
                    kind: t.kind,
                    payload,
                };
                if inbox.try_send(m).is_err() {
                    shared.inbox_dropped.fetch_add(1, Ordering::Relaxed);
                    crate::log_limited!(
                        warn,
                        "rack: inbox full, a message from an agent was dropped"
                    );
                }
            }
            Ok(Incoming::DisconnectSent) => {
                shared.connected.store(false, Ordering::Relaxed);
                return;
            }
            Ok(Incoming::Other) => {}
            Err(e) => {
                let was = shared.connected.swap(false, Ordering::Relaxed);
                if was {
                    tracing::warn!(error = %e, "rack: lost the MQTT broker, reconnecting");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
        }
    }
}

async fn publish_loop(
    client: Client,
    shared: Arc<Shared>,
    mut outbox: mpsc::Receiver<(String, Vec<u8>)>,
) {
    while let Some((topic, payload)) = outbox.recv().await {
        // QoS 1: a lease lost on the way costs an acknowledgement timeout; not retained, a
        // lease must never replay to an agent that connects later.
        let m = Message {
            topic,
            payload,
            reliable: true,
            retain: false,
            correlation_data: None,
        };
        if let Err(e) = client.publish_binary(m).await {
            shared.leases_dropped.fetch_add(1, Ordering::Relaxed);
            crate::log_limited!(warn, "rack: a cap lease was not queued", error = %e);
        }
    }
}
