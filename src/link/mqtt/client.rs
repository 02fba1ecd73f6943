//! One face for rumqttc's MQTT 3.1.1 and MQTT 5 clients, so that the sink is written once.

use super::config::{MqttConfig, MqttProtocol};
use rumqttc::v5 as r5;

/// What the sink hands to the broker.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// QoS 1 when true (at least once), QoS 0 otherwise.
    pub reliable: bool,
    pub retain: bool,
    /// MQTT 5 correlation data to echo on a reply; ignored on 3.1.1.
    pub correlation_data: Option<Vec<u8>>,
}

/// What the event loop yields, reduced to what the sink cares about.
#[derive(Debug)]
pub enum Incoming {
    /// The broker accepted the connection (a fresh session: subscriptions are gone).
    ConnAck,
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        /// MQTT 5 request/response properties.
        response_topic: Option<String>,
        correlation_data: Option<Vec<u8>>,
    },
    /// Our DISCONNECT went out: the session is over.
    DisconnectSent,
    Other,
}

#[derive(Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(r5::AsyncClient),
}

pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<r5::EventLoop>),
}

/// Size of rumqttc's request channel. Our own outbox does the buffering; this only has to
/// keep the socket busy.
const REQUEST_CAPACITY: usize = 64;

/// Largest message we send. Telemetry of a host with 8 GPUs and 2 CDUs is ~10 KiB, rumqttc's
/// default limit for MQTT 3.1.1; too large a message would otherwise break the connection.
pub const MAX_OUTGOING: usize = 1024 * 1024;

/// Largest message the broker may send us over MQTT 5, which announces it in CONNECT: the
/// broker then discards larger messages for us instead of sending them. Commands are under
/// 1 KiB; [`super::MAX_COMMAND`] is the daemon's own limit.
const MAX_INCOMING_V5: u32 = 64 * 1024;

/// Largest packet accepted over MQTT 3.1.1: everything the protocol allows (the largest
/// remaining length, 268,435,455 bytes). MQTT 3.1.1 cannot tell the broker a limit, and
/// rumqttc drops the session on any larger packet; a retained one would then drop it again
/// on every connect. So the packet is read and the daemon refuses an oversize command itself.
/// The broker's `max_packet_size` bounds the memory this can take.
const MAX_INCOMING_V311: usize = 268_435_455;

/// Seconds to wait for TCP, TLS and CONNACK before an attempt counts as failed.
const CONNECT_TIMEOUT_S: u64 = 5;

pub struct Connect<'a> {
    pub cfg: &'a MqttConfig,
    pub client_id: String,
    pub will_topic: String,
    pub will_payload: Vec<u8>,
    /// The native sink's `offline` is retained; Sparkplug's NDEATH must not be.
    pub will_retain: bool,
    pub password: Option<String>,
    pub tls: Option<rumqttc::TlsConfiguration>,
}

pub fn build(c: Connect<'_>) -> (Client, EventLoop) {
    let cfg = c.cfg;
    let transport = match c.tls {
        Some(t) => rumqttc::Transport::tls_with_config(t),
        None => rumqttc::Transport::tcp(),
    };
    match cfg.protocol {
        MqttProtocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(c.client_id, cfg.host.clone(), cfg.port());
            o.set_keep_alive(cfg.keep_alive())
                // A clean session: a command queued by the broker while we were away would
                // be stale by the time we are back, and replaying it could be unsafe.
                .set_clean_session(true)
                .set_max_packet_size(MAX_INCOMING_V311, MAX_OUTGOING)
                .set_transport(transport)
                .set_last_will(rumqttc::LastWill::new(
                    c.will_topic,
                    c.will_payload,
                    rumqttc::QoS::AtLeastOnce,
                    c.will_retain,
                ));
            if let Some(u) = &cfg.username {
                o.set_credentials(u.clone(), c.password.unwrap_or_default());
            }
            let (client, mut el) = rumqttc::AsyncClient::new(o, REQUEST_CAPACITY);
            let mut n = el.network_options();
            n.set_connection_timeout(CONNECT_TIMEOUT_S);
            // Nagle's algorithm would hold a small packet (a cap lease, an acknowledgement)
            // until the broker acknowledges the previous one, up to its delayed-ACK time
            // (40 ms on Linux): the rack's cap → ack figure doubled with it.
            n.set_tcp_nodelay(true);
            el.set_network_options(n);
            (Client::V4(client), EventLoop::V4(Box::new(el)))
        }
        MqttProtocol::V5 => {
            let mut o = r5::MqttOptions::new(c.client_id, cfg.host.clone(), cfg.port());
            o.set_keep_alive(cfg.keep_alive())
                .set_clean_start(true)
                .set_max_packet_size(Some(MAX_INCOMING_V5))
                .set_transport(transport)
                .set_connection_timeout(CONNECT_TIMEOUT_S)
                .set_last_will(r5::mqttbytes::v5::LastWill::new(
                    c.will_topic,
                    c.will_payload,
                    r5::mqttbytes::QoS::AtLeastOnce,
                    c.will_retain,
                    None,
                ));
            if let Some(u) = &cfg.username {
                o.set_credentials(u.clone(), c.password.unwrap_or_default());
            }
            // Without Nagle's algorithm, as for MQTT 3.1.1 above.
            let mut n = o.network_options();
            n.set_tcp_nodelay(true);
            o.set_network_options(n);
            let (client, el) = r5::AsyncClient::new(o, REQUEST_CAPACITY);
            (Client::V5(client), EventLoop::V5(Box::new(el)))
        }
    }
}

impl Client {
    pub async fn publish(&self, m: Message) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let qos = if m.reliable {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                c.publish(m.topic, qos, m.retain, m.payload)
                    .await
                    .map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let qos = if m.reliable {
                    r5::mqttbytes::QoS::AtLeastOnce
                } else {
                    r5::mqttbytes::QoS::AtMostOnce
                };
                let props = r5::mqttbytes::v5::PublishProperties {
                    // 1: the payload is UTF-8 (JSON or a plain word), MQTT 5 §3.3.2.3.2.
                    payload_format_indicator: Some(1),
                    correlation_data: m.correlation_data.map(Into::into),
                    ..Default::default()
                };
                c.publish_with_properties(m.topic, qos, m.retain, m.payload, props)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Publishes a binary payload (Sparkplug's protobuf): over MQTT 5 without the UTF-8
    /// payload format indicator that [`Client::publish`] sets.
    pub async fn publish_binary(&self, m: Message) -> Result<(), String> {
        match self {
            Client::V4(_) => self.publish(m).await,
            Client::V5(c) => {
                let qos = if m.reliable {
                    r5::mqttbytes::QoS::AtLeastOnce
                } else {
                    r5::mqttbytes::QoS::AtMostOnce
                };
                c.publish(m.topic, qos, m.retain, m.payload)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Queues a binary publish without waiting: for callers that must not block while the
    /// request channel is full (the event loop's own task, a control tick).
    pub fn try_publish_binary(&self, m: &Message) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let qos = if m.reliable {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                c.try_publish(m.topic.clone(), qos, m.retain, m.payload.clone())
                    .map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let qos = if m.reliable {
                    r5::mqttbytes::QoS::AtLeastOnce
                } else {
                    r5::mqttbytes::QoS::AtMostOnce
                };
                c.try_publish(m.topic.clone(), qos, m.retain, m.payload.clone())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Queues a subscription without waiting (see [`Client::try_publish_binary`]).
    pub fn try_subscribe(&self, topic: &str) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(topic, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(topic, r5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    pub async fn subscribe(&self, topic: &str) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .subscribe(topic, rumqttc::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe(topic, r5::mqttbytes::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    pub async fn disconnect(&self) -> Result<(), String> {
        match self {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        }
    }
}

impl EventLoop {
    /// Replaces the will registered by the next connection attempt (Sparkplug's NDEATH
    /// carries a new bdSeq per session).
    pub fn set_last_will(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        match self {
            EventLoop::V4(el) => {
                el.mqtt_options.set_last_will(rumqttc::LastWill::new(
                    topic,
                    payload,
                    rumqttc::QoS::AtLeastOnce,
                    retain,
                ));
            }
            EventLoop::V5(el) => {
                el.options.set_last_will(r5::mqttbytes::v5::LastWill::new(
                    topic,
                    payload,
                    r5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    None,
                ));
            }
        }
    }

    pub async fn poll(&mut self) -> Result<Incoming, String> {
        match self {
            EventLoop::V4(el) => {
                use rumqttc::{Event, Outgoing, Packet};
                match el.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(_)) => Ok(Incoming::ConnAck),
                    Event::Incoming(Packet::Publish(p)) => Ok(Incoming::Publish {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                        response_topic: None,
                        correlation_data: None,
                    }),
                    Event::Outgoing(Outgoing::Disconnect) => Ok(Incoming::DisconnectSent),
                    _ => Ok(Incoming::Other),
                }
            }
            EventLoop::V5(el) => {
                use r5::mqttbytes::v5::Packet;
                use r5::Event;
                match el.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(_)) => Ok(Incoming::ConnAck),
                    Event::Incoming(Packet::Publish(p)) => {
                        let (response_topic, correlation_data) = match p.properties {
                            Some(pr) => {
                                (pr.response_topic, pr.correlation_data.map(|b| b.to_vec()))
                            }
                            None => (None, None),
                        };
                        Ok(Incoming::Publish {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            response_topic,
                            correlation_data,
                        })
                    }
                    Event::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Incoming::DisconnectSent),
                    _ => Ok(Incoming::Other),
                }
            }
        }
    }
}
