//! MQTT: telemetry, retained state and availability, alarm events, and operator commands.
//!
//! Three parts, so that nothing can deadlock and memory stays bounded:
//! - the caller's side ([`MqttSink`]'s methods) only puts messages into a bounded outbox
//!   (latest telemetry and state win; events and replies are bounded queues) and never waits;
//! - a publisher task moves the outbox to rumqttc while connected, and after every CONNACK
//!   republishes availability, state and discovery and renews the subscription;
//! - a polling task drives rumqttc's event loop continuously (nothing is sent otherwise),
//!   reconnects with capped exponential backoff, and parses commands.
//!
//! The topic tree and payloads are described in docs/mqtt.md.

mod client;
mod config;
mod discovery;
mod payload;
pub mod sparkplug;

pub use config::{MqttConfig, MqttProtocol, MqttTlsConfig};
pub use payload::{parse_command, BadCommand, Topics, OFFLINE, ONLINE};

use crate::model::{AlarmEvent, Command, CommandOutcome, Snapshot};
use client::{Client, EventLoop, Incoming, Message};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// A well-formed command from MQTT, for the control core to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRequest {
    /// The `id` of the command message (or its MQTT 5 correlation data); pass it back to
    /// [`MqttSink::reply`].
    pub correlation_id: Option<String>,
    pub command: Command,
}

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

/// Capacity of the command receiver. An operator sends a command every few seconds at
/// most; more than this waiting means the core is stuck, and further commands are rejected.
const COMMAND_QUEUE: usize = 32;
/// Alarm events kept while the broker is away; the oldest go first. InfluxDB is the
/// lossless record; MQTT consumers re-sync from the retained state.
pub const EVENT_QUEUE: usize = 1_000;
/// Replies kept while the broker is away.
const REPLY_QUEUE: usize = 100;
/// MQTT 5 response routes remembered for replies the core has not sent yet.
const ROUTES: usize = 64;
/// How long `shutdown` waits for the last messages, `offline` and DISCONNECT to go out.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest command accepted (commands are under 1 KiB); larger messages on the command topic
/// are refused with a reply, and the session stays up.
pub const MAX_COMMAND: usize = 64 * 1024;
/// A session must have lasted this long for the reconnect backoff to start again from its
/// minimum: a broker that closes every session at once must not be retried in a tight loop.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Where a reply goes when the command asked for an MQTT 5 response topic.
struct Route {
    id: String,
    topic: String,
    correlation_data: Option<Vec<u8>>,
}

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

/// `check-config --connect`: connects once with the configured credentials and TLS, waits
/// for the broker's CONNACK and disconnects cleanly. It uses its own client id, so a running
/// daemon is not kicked off, and its own will topic (`<base>/check-config`), so the daemon's
/// availability is never touched; a clean disconnect discards the will anyway.
pub async fn check_connect(
    cfg: &MqttConfig,
    site: &str,
    host: &str,
    timeout: Duration,
) -> Result<(), String> {
    let password = read_password(cfg).map_err(|e| e.to_string())?;
    let tls = match &cfg.tls {
        Some(t) => Some(tls_config(t).map_err(|e| e.to_string())?),
        None => None,
    };
    let topics = Topics::new(&cfg.topic_prefix, site, host);
    let (client, mut eventloop) = client::build(client::Connect {
        cfg,
        client_id: format!("coolantd-check-config-{host}-{}", std::process::id()),
        will_topic: format!("{}/check-config", topics.base),
        will_payload: OFFLINE.as_bytes().to_vec(),
        will_retain: false,
        password,
        tls,
    });
    let handshake = async {
        loop {
            match eventloop.poll().await? {
                Incoming::ConnAck => break,
                _ => continue,
            }
        }
        client.disconnect().await?;
        loop {
            match eventloop.poll().await {
                Ok(Incoming::DisconnectSent) | Err(_) => return Ok(()),
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| format!("no CONNACK within {} s", timeout.as_secs()))?
}

pub(super) fn read_password(cfg: &MqttConfig) -> Result<Option<String>, SinkError> {
    if let Some(p) = &cfg.password {
        return Ok(Some(p.clone()));
    }
    if let Some(file) = &cfg.password_file {
        let s = std::fs::read_to_string(file).map_err(|source| SinkError::PasswordFile {
            file: file.clone(),
            source,
        })?;
        return Ok(Some(s.trim_end_matches(['\r', '\n']).to_string()));
    }
    if let Some(var) = &cfg.password_env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| SinkError::PasswordEnv { var: var.clone() });
    }
    Ok(None)
}

fn read_pem(
    key: &'static str,
    file: &Path,
    markers: &[&str],
    expected: &'static str,
) -> Result<Vec<u8>, SinkError> {
    let bytes = std::fs::read(file).map_err(|source| SinkError::TlsFile {
        key,
        file: file.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !markers.iter().any(|m| text.contains(m)) {
        return Err(SinkError::TlsPem {
            key,
            file: file.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

pub(super) fn tls_config(t: &MqttTlsConfig) -> Result<rumqttc::TlsConfiguration, SinkError> {
    // rumqttc builds its rustls config with the process-wide crypto provider; install ring
    // once. An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = read_pem(
        "mqtt.tls.ca_file",
        &t.ca_file,
        &["-----BEGIN CERTIFICATE-----"],
        "certificate",
    )?;
    let client_auth = match (&t.client_cert_file, &t.client_key_file) {
        (Some(c), Some(k)) => Some((
            read_pem(
                "mqtt.tls.client_cert_file",
                c,
                &["-----BEGIN CERTIFICATE-----"],
                "certificate",
            )?,
            read_pem(
                "mqtt.tls.client_key_file",
                k,
                &[
                    "-----BEGIN PRIVATE KEY-----",
                    "-----BEGIN RSA PRIVATE KEY-----",
                    "-----BEGIN EC PRIVATE KEY-----",
                ],
                "private key",
            )?,
        )),
        _ => None,
    };
    Ok(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    })
}

/// Moves the outbox to rumqttc while connected; after every CONNACK first restores what a
/// fresh session lacks.
async fn publish_loop(
    client: Client,
    shared: Arc<Shared>,
    mut gen_rx: watch::Receiver<u64>,
    commands_enabled: bool,
) {
    let mut seen_gen = 0u64;
    loop {
        let closing = shared.closing.load(Ordering::SeqCst);
        let connected = shared.connected.load(Ordering::SeqCst);
        let gen = *gen_rx.borrow_and_update();
        if connected && gen != 0 && gen != seen_gen {
            seen_gen = gen;
            on_connack(&client, &shared, commands_enabled).await;
        }
        if connected {
            if let Some(m) = shared.next() {
                if m.payload.len() > client::MAX_OUTGOING {
                    warn!(topic = %m.topic, bytes = m.payload.len(), "MQTT message too large, not sent");
                } else if let Err(e) = client.publish(m).await {
                    debug!(error = %e, "MQTT publish not queued");
                }
                continue;
            }
        }
        if closing {
            if connected {
                let m = msg(&shared.topics.availability, OFFLINE.into(), true, true);
                if let Err(e) = client.publish(m).await {
                    warn!(error = %e, "could not publish MQTT availability `offline`");
                }
                if let Err(e) = client.disconnect().await {
                    warn!(error = %e, "could not disconnect from the MQTT broker");
                }
            }
            return;
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            r = gen_rx.changed() => if r.is_err() { return },
        }
    }
}

async fn on_connack(client: &Client, shared: &Shared, commands_enabled: bool) {
    let t = &shared.topics;
    let mut first = vec![msg(&t.availability, ONLINE.into(), true, true)];
    {
        let mut ob = shared.outbox();
        // The newest state replaces any older one still waiting.
        ob.state = None;
        if let Some(s) = &ob.last_state {
            first.push(msg(&t.state, s.clone(), true, true));
        }
        // A broker restarted without persistence has forgotten the retained discovery.
        ob.discovery_pending = !ob.discovery.is_empty();
    }
    for m in first {
        if let Err(e) = client.publish(m).await {
            warn!(error = %e, "MQTT publish after connect failed");
        }
    }
    if commands_enabled {
        // A clean session has no subscriptions: renew it on every connection.
        if let Err(e) = client.subscribe(&t.command).await {
            warn!(error = %e, topic = %t.command, "MQTT subscribe failed");
        }
    }
}

async fn poll_loop(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    gen_tx: watch::Sender<u64>,
    commands: Option<mpsc::Sender<CommandRequest>>,
    backoff_min: Duration,
    backoff_max: Duration,
) {
    let mut backoff = Backoff::new(backoff_min, backoff_max);
    let mut gen = 0u64;
    let mut failures = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Incoming::ConnAck) => {
                gen += 1;
                shared.connected.store(true, Ordering::SeqCst);
                gen_tx.send_replace(gen);
                backoff.connected(Instant::now());
                crate::log_limited!(
                    info,
                    "connected to the MQTT broker",
                    attempts = failures + 1
                );
                failures = 0;
            }
            Ok(Incoming::Publish {
                topic,
                payload,
                retain,
                response_topic,
                correlation_data,
            }) => {
                if let Some(tx) = &commands {
                    if topic == shared.topics.command {
                        on_command(
                            &shared,
                            tx,
                            &payload,
                            retain,
                            response_topic,
                            correlation_data,
                        );
                    }
                }
            }
            Ok(Incoming::DisconnectSent) => {
                shared.connected.store(false, Ordering::SeqCst);
                return;
            }
            Ok(Incoming::Other) => {}
            Err(e) => {
                let was = shared.connected.swap(false, Ordering::SeqCst);
                gen_tx.send_replace(0);
                if shared.closing.load(Ordering::SeqCst) {
                    return;
                }
                failures += 1;
                let delay = backoff.failed(Instant::now());
                if was {
                    crate::log_limited!(
                        warn,
                        "lost the MQTT broker, reconnecting",
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64
                    );
                } else if failures.is_power_of_two() {
                    warn!(error = %e, attempts = failures, retry_in_ms = delay.as_millis() as u64, "cannot reach the MQTT broker");
                }
                // rumqttc retries at once on the next poll; wait first so that a dead broker
                // does not get a connection attempt in a tight loop.
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The reconnect delay: doubles from `min` to `max` on every failure, and starts again from
/// `min` only after a session that lasted [`STABLE_SESSION`]. Resetting on every CONNACK
/// would retry a broker that closes each session at once (a retained message it cannot
/// deliver, a client-id takeover, a packet limit) at the minimum delay forever.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    up_since: Option<Instant>,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
            up_since: None,
        }
    }

    /// A session started at `now`.
    fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection failed at `now` (a lost session or a failed attempt): the delay
    /// before the next attempt.
    fn failed(&mut self, now: Instant) -> Duration {
        if let Some(up) = self.up_since.take() {
            if now.saturating_duration_since(up) >= STABLE_SESSION {
                self.next = self.min;
            }
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

fn on_command(
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
    let reject = |id: Option<String>, reason: String| {
        crate::log_limited!(
            warn,
            "MQTT command rejected",
            correlation_id = ?id,
            reason = %reason
        );
        shared.push_reply(Message {
            topic: reply_topic.clone(),
            payload: payload::reply_json(id.as_deref(), &CommandOutcome::Rejected { reason }),
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
            "retained commands are not accepted: publish commands without the retain flag".into(),
        );
        return;
    }
    let (id, command) = match parse_command(payload) {
        Ok(v) => v,
        Err(bad) => return reject(bad.id, bad.reason),
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
            format!("busy: {COMMAND_QUEUE} commands are already waiting for the controller"),
        ),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            reject(id, "the controller is shutting down".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_while_sessions_die_at_once_and_resets_after_a_stable_one() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1_600));
        let mut t = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..7 {
            b.connected(t);
            t += ms(50);
            let d = b.failed(t);
            delays.push(d.as_millis());
            t += d;
        }
        assert_eq!(delays, [100, 200, 400, 800, 1_600, 1_600, 1_600]);
        // A session that stayed up starts the sequence again.
        b.connected(t);
        assert_eq!(b.failed(t + STABLE_SESSION), ms(100));
        // Failed attempts without a session keep doubling.
        assert_eq!(b.failed(t + STABLE_SESSION), ms(200));
    }
}
