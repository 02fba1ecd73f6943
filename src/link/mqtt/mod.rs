//! MQTT: telemetry, retained state and availability, alarm events, and operator commands.
//!
//! Three parts, so that nothing can deadlock and memory stays bounded:
//! - the caller's side ([`MqttSink`]'s methods) only puts messages into a bounded outbox
//!   (latest telemetry and state win; events and replies are bounded queues) and never waits;
//! - a publisher task moves the outbox to rumqttc while connected, and after every CONNACK
//!   republishes availability, state and discovery and renews the subscription;
//! - a polling task drives rumqttc's event loop continuously (nothing is sent otherwise),
//!   reconnects with capped exponential backoff, and hands incoming messages to the router.
//!
//! Where each part lives: this file holds the caller's side and the outbox; `connection.rs`
//! the session (connect, last will, both tasks, reconnect backoff, credentials and TLS);
//! `routing.rs` what the session subscribes to and which handler an incoming topic reaches;
//! `commands.rs` command parsing, validation and the reply; `payload.rs` the topic tree and
//! JSON shapes; `discovery.rs` Home Assistant discovery; `sparkplug/` the Sparkplug B node.
//! The topic tree and payloads are described in docs/mqtt.md.

mod client;
mod commands;
mod config;
mod connection;
mod discovery;
mod payload;
pub mod rack;
mod routing;
pub mod sparkplug;
mod wire_link;

pub use commands::{CommandRequest, MAX_COMMAND};
pub use config::{MqttConfig, MqttProtocol, MqttTlsConfig};
pub use connection::check_connect;
pub use payload::{event_json, parse_command, BadCommand, Topics, OFFLINE, ONLINE};
pub use wire_link::{WireIncoming, WireLink, WireLinkOptions};

use crate::model::{AlarmEvent, Snapshot};
use client::{Client, Message};
use commands::{Route, COMMAND_QUEUE};
// Private imports, visible to `sparkplug`, whose second session uses the same credentials.
use connection::{poll_loop, publish_loop, read_password, tls_config};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// What the sink holds for the broker (see [`MqttSink::backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttBacklog {
    pub events: usize,
    pub replies: usize,
    /// A telemetry message waits (there is never more than one).
    pub telemetry: bool,
    pub dropped_events: u64,
    pub dropped_replies: u64,
}

/// Why the MQTT sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot read the MQTT password file {file} (mqtt.password_file): {source}")]
    PasswordFile {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the environment variable `{var}` named by mqtt.password_env is not set (or not UTF-8)"
    )]
    PasswordEnv { var: String },
    #[error("cannot read {file} ({key}): {source}")]
    TlsFile {
        key: &'static str,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} ({key}) holds no {expected} in PEM format")]
    TlsPem {
        key: &'static str,
        file: PathBuf,
        expected: &'static str,
    },
    #[error("the MQTT sink must be started from inside the tokio runtime")]
    NoRuntime,
}

/// Alarm events kept while the broker is away; the oldest go first. InfluxDB is the
/// lossless record; MQTT consumers re-sync from the retained state.
pub const EVENT_QUEUE: usize = 1_000;
/// Replies kept while the broker is away.
const REPLY_QUEUE: usize = 100;
/// How long `shutdown` waits for the last messages, `offline` and DISCONNECT to go out.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Outbox {
    telemetry: Option<Vec<u8>>,
    last_telemetry: Option<Instant>,
    /// State waiting to go out.
    state: Option<Vec<u8>>,
    /// The newest state, republished after every CONNACK.
    last_state: Option<Vec<u8>>,
    last_state_key: Option<Vec<u8>>,
    last_controlled: Option<f64>,
    events: VecDeque<Vec<u8>>,
    replies: VecDeque<Message>,
    routes: VecDeque<Route>,
    /// The current discovery messages (republished after every CONNACK) and whether they
    /// still have to go out.
    discovery: Vec<(String, Vec<u8>)>,
    discovery_cdus: Option<Vec<String>>,
    discovery_pending: bool,
    dropped_events: u64,
    dropped_replies: u64,
}

struct Shared {
    outbox: Mutex<Outbox>,
    wake: Notify,
    connected: AtomicBool,
    closing: AtomicBool,
    topics: Topics,
    site: String,
    host: String,
    telemetry_period: Duration,
    discovery_prefix: Option<String>,
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding this lock leaves plain data behind; carry on with it.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_reply(&self, m: Message) {
        let mut ob = self.outbox();
        if ob.replies.len() >= REPLY_QUEUE {
            ob.replies.pop_front();
            ob.dropped_replies += 1;
            crate::log_limited!(
                warn,
                "MQTT reply queue full, dropping the oldest reply",
                dropped = ob.dropped_replies
            );
        }
        ob.replies.push_back(m);
        drop(ob);
        self.wake.notify_one();
    }

    /// The next message to hand to rumqttc: replies first (someone is waiting), then events,
    /// state, telemetry and discovery.
    fn next(&self) -> Option<Message> {
        let t = &self.topics;
        let mut ob = self.outbox();
        if let Some(m) = ob.replies.pop_front() {
            return Some(m);
        }
        if let Some(p) = ob.events.pop_front() {
            return Some(msg(&t.events, p, true, false));
        }
        if let Some(p) = ob.state.take() {
            return Some(msg(&t.state, p, true, true));
        }
        if let Some(p) = ob.telemetry.take() {
            return Some(msg(&t.telemetry, p, false, false));
        }
        if ob.discovery_pending {
            ob.discovery_pending = false;
            // The rest of the batch rides the reply queue, which drains first, so the
            // discovery messages go out together and in order.
            let mut batch: VecDeque<Message> = ob
                .discovery
                .iter()
                .map(|(topic, p)| msg(topic, p.clone(), true, true))
                .collect();
            let first = batch.pop_front();
            ob.replies.extend(batch);
            return first;
        }
        None
    }
}

fn msg(topic: &str, payload: Vec<u8>, reliable: bool, retain: bool) -> Message {
    Message {
        topic: topic.to_string(),
        payload,
        reliable,
        retain,
        correlation_data: None,
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The MQTT integration of one daemon. Cheap to call from the control loop: every method
/// returns at once.
pub struct MqttSink {
    shared: Arc<Shared>,
    client: Client,
    poller: JoinHandle<()>,
    publisher: JoinHandle<()>,
}

impl MqttSink {
    /// Connects in the background; returns at once. Commands arrive on the receiver.
    /// Must be called from inside the tokio runtime. Relative paths in `cfg` are taken
    /// relative to the working directory: pass [`MqttConfig::resolved`] to resolve them
    /// against the configuration file's folder first.
    pub fn start(
        cfg: &MqttConfig,
        site: &str,
        host: &str,
    ) -> Result<(MqttSink, mpsc::Receiver<CommandRequest>), SinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SinkError::NoRuntime)?;
        let password = read_password(cfg)?;
        let tls = match &cfg.tls {
            Some(t) => Some(tls_config(t)?),
            None => None,
        };
        let topics = Topics::new(&cfg.topic_prefix, site, host);
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("coolantd-{host}"));
        info!(
            broker = %format!("{}:{}", cfg.host, cfg.port()),
            client_id = %client_id,
            protocol = ?cfg.protocol,
            tls = cfg.tls.is_some(),
            topics = %topics.base,
            commands = cfg.commands_enabled,
            "starting MQTT sink"
        );
        let (client, eventloop) = client::build(client::Connect {
            cfg,
            client_id,
            will_topic: topics.availability.clone(),
            will_payload: OFFLINE.into(),
            will_retain: true,
            password,
            tls,
        });
        let shared = Arc::new(Shared {
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            topics,
            site: site.to_string(),
            host: host.to_string(),
            telemetry_period: cfg.telemetry_period(),
            discovery_prefix: cfg.discovery.then(|| cfg.discovery_prefix.clone()),
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (gen_tx, gen_rx) = watch::channel(0u64);
        let poller = runtime.spawn(poll_loop(
            eventloop,
            shared.clone(),
            gen_tx,
            cfg.commands_enabled.then_some(cmd_tx),
            cfg.reconnect_min(),
            cfg.reconnect_max(),
        ));
        let publisher = runtime.spawn(publish_loop(
            client.clone(),
            shared.clone(),
            gen_rx,
            cfg.commands_enabled,
        ));
        Ok((
            MqttSink {
                shared,
                client,
                poller,
                publisher,
            },
            cmd_rx,
        ))
    }

    /// The topics this sink publishes to and listens on.
    pub fn topics(&self) -> &Topics {
        &self.shared.topics
    }

    /// Offers a tick's snapshot: telemetry goes out at most once per telemetry period, the
    /// retained state whenever it changed (the controlled value alone: at the telemetry
    /// rate). While disconnected only the newest of each is kept.
    pub fn publish_snapshot(&self, snap: &Snapshot) {
        let s = &self.shared;
        let now = Instant::now();
        let mut ob = s.outbox();
        // An unsent message (the broker is away) is replaced by the newest: latest wins.
        let telemetry_due = ob.telemetry.is_some()
            || ob
                .last_telemetry
                .is_none_or(|t| now.duration_since(t) >= s.telemetry_period);
        if telemetry_due {
            ob.telemetry = Some(payload::telemetry_json(snap));
            ob.last_telemetry = Some(now);
        }
        let (state, key) = payload::state_json(snap);
        let step = ob.last_state_key.as_ref() != Some(&key);
        let drift = telemetry_due && ob.last_controlled != snap.controlled;
        if step || drift || ob.last_state.is_none() {
            ob.state = Some(state.clone());
            ob.last_state = Some(state);
            ob.last_state_key = Some(key);
            ob.last_controlled = snap.controlled;
        }
        if let Some(prefix) = &s.discovery_prefix {
            let names: Vec<String> = snap.cdus.iter().map(|c| c.name.clone()).collect();
            if ob.discovery_cdus.as_ref() != Some(&names) {
                ob.discovery = discovery::messages(prefix, &s.topics, &s.site, &s.host, snap);
                ob.discovery_cdus = Some(names);
                ob.discovery_pending = true;
            }
        }
        drop(ob);
        s.wake.notify_one();
    }

    /// Publishes an alarm event (QoS 1). Kept in a bounded queue while disconnected.
    pub fn publish_event(&self, ev: &AlarmEvent) {
        let p = payload::event_json(ev, now_ns());
        let mut ob = self.shared.outbox();
        if ob.events.len() >= EVENT_QUEUE {
            ob.events.pop_front();
            ob.dropped_events += 1;
            if ob.dropped_events.is_power_of_two() {
                warn!(
                    dropped = ob.dropped_events,
                    "MQTT alarm event queue full while the broker is unreachable, dropping the oldest"
                );
            }
        }
        ob.events.push_back(p);
        drop(ob);
        self.shared.wake.notify_one();
    }

    /// What is waiting for the broker, and what was dropped since start.
    pub fn backlog(&self) -> MqttBacklog {
        let ob = self.shared.outbox();
        MqttBacklog {
            events: ob.events.len(),
            replies: ob.replies.len(),
            telemetry: ob.telemetry.is_some(),
            dropped_events: ob.dropped_events,
            dropped_replies: ob.dropped_replies,
        }
    }

    /// True while a session with the broker is up.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Sends what is queued, publishes `offline` (retained) and disconnects cleanly, so the
    /// broker does not fire the last will. Gives up after a few seconds.
    pub async fn shutdown(self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let MqttSink {
            shared,
            client,
            poller,
            mut publisher,
        } = self;
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut publisher)
            .await
            .is_err()
        {
            warn!("MQTT sink did not finish sending within the shutdown timeout");
            publisher.abort();
        }
        drop(client);
        let mut poller = poller;
        // Without a session there is nothing to say goodbye to: stop reconnecting at once.
        let connected = shared.connected.load(Ordering::SeqCst);
        if !connected
            || tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut poller)
                .await
                .is_err()
        {
            poller.abort();
        }
        info!("MQTT sink stopped");
    }
}
