//! Sparkplug B 3.0 beside the native topics: the daemon is an edge node, its CDUs and GPUs
//! are devices (docs/mqtt.md, "Sparkplug B").
//!
//! Sparkplug needs its own MQTT session: its death certificate (NDEATH with the session's
//! bdSeq) must be the session's will, and the native session's will is `offline` on the
//! availability topic. So this is a second connection to the same broker, with the same
//! credentials and TLS, client id `<client_id>-spb`. Three tasks, as in the native sink:
//! - the poller drives rumqttc's event loop, registers a new NDEATH (next bdSeq) as the will
//!   before every reconnect, and forwards connections and messages;
//! - the node task owns the [`node::EdgeNode`] state machine and publishes what it returns;
//! - the caller's side ([`SparkplugSink`]) only hands over snapshots (latest wins) and
//!   command outcomes, and never waits.

mod config;
mod node;
pub mod proto;

pub use config::SparkplugConfig;
pub use node::{BdSeq, EdgeNode, Out, Topics};

use super::client::{self, Client, EventLoop, Incoming};
use super::{CommandRequest, MqttConfig, SinkError};
use crate::model::{Command, CommandOutcome, RejectKind, Snapshot};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Incoming messages waiting for the node task; more are dropped (logged, rate-limited).
/// Connection changes are never dropped, and the poller never waits for the node task: the
/// node task may be waiting for rumqttc, which only the poller drains.
const MESSAGE_QUEUE: usize = 256;
/// Command outcomes waiting for the node task.
const OUTCOME_QUEUE: usize = 64;
/// Commands waiting for the controller (as for the native command topic).
const COMMAND_QUEUE: usize = 32;
/// How long `shutdown` waits for NDEATH and DISCONNECT to go out.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

enum Event {
    Connected { bd_seq: u8 },
    Disconnected,
    Message { topic: String, payload: Vec<u8> },
}

/// The Sparkplug edge node of one daemon. Every method returns at once.
pub struct SparkplugSink {
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    outcomes: mpsc::Sender<(String, Command, CommandOutcome)>,
    closing: watch::Sender<bool>,
    /// Returns whether it said goodbye (NDEATH and DISCONNECT went to rumqttc).
    node_task: JoinHandle<bool>,
    poller: JoinHandle<()>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SparkplugSink {
    /// Connects in the background. `cfg` is the whole `[mqtt]` table (broker, credentials,
    /// TLS) with its `sparkplug` section set; `host` names the edge node when
    /// `edge_node_id` is absent. Commands arrive on the receiver, labelled in
    /// `correlation_id` (e.g. `control/setpoint_c = 50`); answer them with [`Self::reply`].
    pub fn start(
        cfg: &MqttConfig,
        spb: &SparkplugConfig,
        host: &str,
    ) -> Result<(SparkplugSink, mpsc::Receiver<CommandRequest>), SinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SinkError::NoRuntime)?;
        let password = super::read_password(cfg)?;
        let tls = match &cfg.tls {
            Some(t) => Some(super::tls_config(t)?),
            None => None,
        };
        let node_id = spb.edge_node(host);
        let topics = Topics::new(&spb.group_id, &node_id, spb.primary_host_id.as_deref());
        let client_id = format!(
            "{}-spb",
            cfg.client_id
                .clone()
                .unwrap_or_else(|| format!("coolantd-{host}"))
        );
        let bd = BdSeq::default();
        let death_topic = topics.node_topic("NDEATH");
        info!(
            broker = %format!("{}:{}", cfg.host, cfg.port()),
            client_id = %client_id,
            group = %spb.group_id,
            edge_node = %node_id,
            primary_host = ?spb.primary_host_id,
            "starting the Sparkplug B edge node"
        );
        let (client, eventloop) = client::build(client::Connect {
            cfg,
            client_id,
            will_topic: death_topic.clone(),
            will_payload: node::death_payload(bd.current(), unix_ms()),
            will_retain: false,
            password,
            tls,
        });
        // Unbounded for connection changes; messages are bounded by `queued`.
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let (snap_tx, snap_rx) = watch::channel(None);
        let (out_tx, out_rx) = mpsc::channel(OUTCOME_QUEUE);
        let (close_tx, close_rx) = watch::channel(false);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let poller = runtime.spawn(poll_loop(
            eventloop,
            bd,
            death_topic,
            ev_tx,
            queued.clone(),
            close_rx.clone(),
            (cfg.reconnect_min(), cfg.reconnect_max()),
        ));
        let edge = EdgeNode::new(topics, cfg.telemetry_period());
        let node_task = runtime.spawn(node_loop(
            client,
            edge,
            cfg.commands_enabled,
            ev_rx,
            queued,
            snap_rx,
            out_rx,
            close_rx,
            cfg.commands_enabled.then_some(cmd_tx),
        ));
        Ok((
            SparkplugSink {
                snapshots: snap_tx,
                outcomes: out_tx,
                closing: close_tx,
                node_task,
                poller,
            },
            cmd_rx,
        ))
    }

    /// Offers a tick's snapshot (latest wins).
    pub fn publish_snapshot(&self, snap: &Arc<Snapshot>) {
        self.snapshots.send_replace(Some(snap.clone()));
    }

    /// The core's answer to a command from [`Self::start`]'s receiver: shown in the node
    /// metric `Node Control/Last Command`.
    pub fn reply(&self, req: &CommandRequest, outcome: &CommandOutcome) {
        let label = req
            .correlation_id
            .as_deref()
            .unwrap_or("command")
            .to_string();
        let item = (label, req.command.clone(), outcome.clone());
        if self.outcomes.try_send(item).is_err() {
            crate::log_limited!(
                warn,
                "Sparkplug command outcome queue full, outcome not shown"
            );
        }
    }

    /// Publishes NDEATH (a clean disconnect does not fire the will) and disconnects.
    pub async fn shutdown(self) {
        let _ = self.closing.send(true);
        let SparkplugSink {
            mut node_task,
            mut poller,
            ..
        } = self;
        let said_goodbye = match tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut node_task).await {
            Ok(r) => r.unwrap_or(false),
            Err(_) => {
                warn!("Sparkplug node did not finish within the shutdown timeout");
                node_task.abort();
                false
            }
        };
        // Without a session there is no DISCONNECT to wait for: stop reconnecting at once.
        if !said_goodbye
            || tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut poller)
                .await
                .is_err()
        {
            poller.abort();
        }
        info!("Sparkplug B edge node stopped");
    }
}

#[allow(clippy::too_many_arguments)]
async fn node_loop(
    client: Client,
    mut edge: EdgeNode,
    commands_enabled: bool,
    mut events: mpsc::UnboundedReceiver<Event>,
    queued: Arc<AtomicUsize>,
    mut snaps: watch::Receiver<Option<Arc<Snapshot>>>,
    mut outcomes: mpsc::Receiver<(String, Command, CommandOutcome)>,
    mut closing: watch::Receiver<bool>,
    commands: Option<mpsc::Sender<CommandRequest>>,
) -> bool {
    let mut bd_seq: Option<u8> = None;
    loop {
        let now = Instant::now();
        let out = tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Connected { bd_seq: b }) => {
                    bd_seq = Some(b);
                    subscribe(&client, edge.topics(), commands_enabled).await;
                    edge.on_connected(b)
                }
                Some(Event::Disconnected) => {
                    bd_seq = None;
                    edge.on_disconnected();
                    Vec::new()
                }
                Some(Event::Message { topic, payload }) => {
                    queued.fetch_sub(1, Ordering::SeqCst);
                    if !commands_enabled && topic != edge.topics().state.clone().unwrap_or_default() {
                        Vec::new()
                    } else {
                        edge.on_message(&topic, &payload, now)
                    }
                }
                None => return false,
            },
            r = snaps.changed() => {
                if r.is_err() {
                    return false;
                }
                let snap = snaps.borrow_and_update().clone();
                match snap {
                    Some(s) => edge.on_snapshot(&s, now),
                    None => Vec::new(),
                }
            }
            Some((label, command, outcome)) = outcomes.recv() => {
                edge.on_outcome(&label, &command, &outcome);
                Vec::new()
            }
            _ = closing.changed() => {
                if let Some(b) = bd_seq {
                    let death = client::Message {
                        topic: edge.topics().node_topic("NDEATH"),
                        payload: node::death_payload(b, unix_ms()),
                        reliable: true,
                        retain: false,
                        correlation_data: None,
                    };
                    if let Err(e) = client.publish_binary(death).await {
                        warn!(error = %e, "could not publish the Sparkplug NDEATH");
                    }
                    if let Err(e) = client.disconnect().await {
                        warn!(error = %e, "could not disconnect the Sparkplug session");
                        return false;
                    }
                    return true;
                }
                return false;
            }
        };
        for o in out {
            match o {
                Out::Publish(p) => {
                    let m = client::Message {
                        topic: p.topic,
                        payload: p.payload,
                        // Sparkplug 3.0: births and data at QoS 0, never retained.
                        reliable: false,
                        retain: false,
                        correlation_data: None,
                    };
                    if let Err(e) = client.publish_binary(m).await {
                        debug!(error = %e, "Sparkplug publish not queued");
                    }
                }
                Out::Command { label, command } => {
                    let Some(tx) = &commands else { continue };
                    let req = CommandRequest {
                        correlation_id: Some(label.clone()),
                        command: command.clone(),
                    };
                    if tx.try_send(req).is_err() {
                        edge.on_outcome(
                            &label,
                            &command,
                            &CommandOutcome::Rejected {
                                kind: RejectKind::Busy,
                                reason: format!(
                                    "busy: {COMMAND_QUEUE} commands are already waiting for the controller"
                                ),
                            },
                        );
                    }
                }
            }
        }
    }
}

async fn subscribe(client: &Client, t: &Topics, commands_enabled: bool) {
    let mut filters = Vec::new();
    if let Some(s) = &t.state {
        filters.push(s.clone());
    }
    if commands_enabled {
        filters.push(t.ncmd.clone());
        filters.push(t.dcmd_filter.clone());
    }
    for f in filters {
        if let Err(e) = client.subscribe(&f).await {
            warn!(error = %e, topic = %f, "Sparkplug subscribe failed");
        }
    }
}

async fn poll_loop(
    mut eventloop: EventLoop,
    mut bd: BdSeq,
    death_topic: String,
    events: mpsc::UnboundedSender<Event>,
    queued: Arc<AtomicUsize>,
    closing: watch::Receiver<bool>,
    (backoff_min, backoff_max): (Duration, Duration),
) {
    let mut delay = backoff_min;
    let mut up_since: Option<Instant> = None;
    loop {
        match eventloop.poll().await {
            Ok(Incoming::ConnAck) => {
                up_since = Some(Instant::now());
                info!(bd_seq = bd.current(), "Sparkplug session up");
                if events
                    .send(Event::Connected {
                        bd_seq: bd.current(),
                    })
                    .is_err()
                {
                    return;
                }
            }
            Ok(Incoming::Publish { topic, payload, .. }) => {
                if payload.len() > super::MAX_COMMAND {
                    crate::log_limited!(warn, "Sparkplug message too large, ignored", topic = %topic, bytes = payload.len());
                    continue;
                }
                if queued.load(Ordering::SeqCst) >= MESSAGE_QUEUE {
                    crate::log_limited!(warn, "Sparkplug message queue full, message dropped", topic = %topic);
                    continue;
                }
                queued.fetch_add(1, Ordering::SeqCst);
                if events.send(Event::Message { topic, payload }).is_err() {
                    return;
                }
            }
            Ok(Incoming::DisconnectSent) => return,
            Ok(Incoming::Other) => {}
            Err(e) => {
                if *closing.borrow() {
                    return;
                }
                let _ = events.send(Event::Disconnected);
                // Every new session gets a new bdSeq, registered in its will.
                let next = bd.advance();
                eventloop.set_last_will(&death_topic, node::death_payload(next, unix_ms()), false);
                if up_since
                    .take()
                    .is_some_and(|t| t.elapsed() >= Duration::from_secs(10))
                {
                    delay = backoff_min;
                }
                crate::log_limited!(warn, "Sparkplug session lost or refused, reconnecting", error = %e, retry_in_ms = delay.as_millis() as u64);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff_max);
            }
        }
    }
}
