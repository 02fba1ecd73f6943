//! A plain TCP proxy that can partition its clients from their server without closing
//! anything: in blackhole mode bytes stop moving in both directions and new connections
//! are accepted but not passed on, as on a network that drops every packet (no FIN, no
//! reset, so no MQTT last will until a keep-alive runs out). Healing lets the held bytes
//! through, as TCP's retransmissions would. Start it inside a tokio runtime.
//!
//! The Modbus proxy ([`crate::modbus_proxy`]) reads frames to count and rewrite them; this
//! one forwards any protocol (MQTT here) byte for byte.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How often a held connection looks whether the partition healed.
const POLL: Duration = Duration::from_millis(10);

pub struct TcpProxy {
    pub addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // The connection tasks live in the accept task's JoinSet and die with it.
        self.task.abort();
    }
}

async fn healed(blackhole: &AtomicBool) {
    while blackhole.load(Ordering::SeqCst) {
        tokio::time::sleep(POLL).await;
    }
}

/// Copies `from` to `to`, holding each chunk while the partition lasts.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackhole: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // A FIN or reset crosses a partition no more than data does.
                healed(&blackhole).await;
                return;
            }
            Ok(n) => n,
        };
        healed(&blackhole).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        bytes.fetch_add(n as u64, Ordering::SeqCst);
    }
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let blackhole = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (bh, by) = (blackhole.clone(), bytes.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let (bh, by) = (bh.clone(), by.clone());
                conns.spawn(async move {
                    // A connection opened during a partition reaches the server only once
                    // it heals (its SYN would have been lost and retried).
                    healed(&bh).await;
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = up.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::select! {
                        () = pump(cr, uw, bh.clone(), by.clone()) => {}
                        () = pump(ur, cw, bh, by) => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            blackhole,
            bytes,
            task,
        }
    }

    /// Starts (`true`) or heals (`false`) the partition.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }

    /// Bytes forwarded so far in both directions: proof that traffic went through here.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}
