//! The broker session: connecting (credentials, TLS, the last will that publishes `offline`
//! when the daemon vanishes), the publisher task that restores a fresh session after every
//! CONNACK, the polling task that keeps rumqttc's event loop turning, and the reconnect
//! backoff. Incoming messages are handed to [`super::routing`].

use super::client::{self, Client, EventLoop, Incoming};
use super::commands::CommandRequest;
use super::config::{MqttConfig, MqttTlsConfig};
use super::payload::{Topics, OFFLINE, ONLINE};
use super::routing::{self, Inbound};
use super::{msg, Shared, SinkError};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// A session must have lasted this long for the reconnect backoff to start again from its
/// minimum: a broker that closes every session at once must not be retried in a tight loop.
const STABLE_SESSION: Duration = Duration::from_secs(10);

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
pub(super) async fn publish_loop(
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
    // A clean session has no subscriptions: renew them on every connection.
    for topic in routing::subscriptions(t, commands_enabled) {
        if let Err(e) = client.subscribe(topic).await {
            warn!(error = %e, topic = %topic, "MQTT subscribe failed");
        }
    }
}

pub(super) async fn poll_loop(
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
            }) => routing::route(
                &shared,
                commands.as_ref(),
                Inbound {
                    topic,
                    payload,
                    retain,
                    response_topic,
                    correlation_data,
                },
            ),
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
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    up_since: Option<Instant>,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
            up_since: None,
        }
    }

    /// A session started at `now`.
    pub(super) fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection failed at `now` (a lost session or a failed attempt): the delay
    /// before the next attempt.
    pub(super) fn failed(&mut self, now: Instant) -> Duration {
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
