//! A rumqttc client for the rack wire topics: binary payloads, a user name and password,
//! the broker's answer to each CONNECT, SUBSCRIBE and QoS 1 PUBLISH. Tests of the broker's
//! access rules need those answers; [`crate::mqtt_client::TestClient`] hides them.

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one answer from the broker may take on a loaded 2-core machine.
pub const ANSWER: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Note {
    ConnAck,
    Refused(ConnectReturnCode),
    SubAck(Vec<SubscribeReasonCode>),
    PubAck,
    Error(String),
}

pub struct WireClient {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Note>,
    received: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

/// Why a client did not get a session.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectFailure {
    /// The broker answered CONNACK with this refusal.
    Refused(ConnectReturnCode),
    /// Anything else (no broker, a closed socket, no answer in time).
    Other(String),
}

impl WireClient {
    /// Connects as `id` with `credentials` (user, password) over MQTT 3.1.1 and waits for the
    /// broker's CONNACK. The client does not retry a refused connection.
    pub async fn connect(
        port: u16,
        id: &str,
        credentials: Option<(&str, &str)>,
    ) -> Result<WireClient, ConnectFailure> {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(true);
        if let Some((user, password)) = credentials {
            o.set_credentials(user, password);
        }
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (msg_tx, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let note = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Note::ConnAck,
                    Ok(Event::Incoming(Packet::SubAck(s))) => Note::SubAck(s.return_codes),
                    Ok(Event::Incoming(Packet::PubAck(_))) => Note::PubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = msg_tx.send((p.topic.clone(), p.payload.to_vec()));
                        continue;
                    }
                    Ok(_) => continue,
                    Err(ConnectionError::ConnectionRefused(code)) => {
                        let _ = tx.send(Note::Refused(code));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Note::Error(e.to_string()));
                        return;
                    }
                };
                if tx.send(note).is_err() {
                    return;
                }
            }
        });
        match tokio::time::timeout(ANSWER, rx.recv()).await {
            Ok(Some(Note::ConnAck)) => Ok(WireClient {
                client,
                rx,
                received,
                task,
            }),
            Ok(Some(Note::Refused(code))) => Err(ConnectFailure::Refused(code)),
            Ok(Some(other)) => Err(ConnectFailure::Other(format!("{other:?}"))),
            Ok(None) => Err(ConnectFailure::Other("event loop ended".into())),
            Err(_) => Err(ConnectFailure::Other(format!(
                "no CONNACK within {ANSWER:?}"
            ))),
        }
    }

    /// The next note from the broker that is not a message; panics on a connection error.
    async fn answer(&mut self, what: &str) -> Note {
        match tokio::time::timeout(ANSWER, self.rx.recv()).await {
            Ok(Some(Note::Error(e))) => panic!("connection failed while waiting for {what}: {e}"),
            Ok(Some(n)) => n,
            Ok(None) => panic!("client stopped while waiting for {what}"),
            Err(_) => panic!("no {what} within {ANSWER:?}"),
        }
    }

    /// Subscribes to `filter` at QoS 1 and returns the broker's SUBACK codes.
    pub async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        loop {
            if let Note::SubAck(codes) = self.answer("SUBACK").await {
                return codes;
            }
        }
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK: once it is here, the broker has
    /// routed (or dropped) the message, and anything published afterwards reaches a
    /// subscriber after it.
    pub async fn publish_acked(&mut self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue publish");
        loop {
            if let Note::PubAck = self.answer("PUBACK").await {
                return;
            }
        }
    }

    /// The next message received within `timeout`, or `None`.
    pub async fn next(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        tokio::time::timeout(timeout, self.received.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for WireClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}
