//! A Modbus TCP proxy between the daemon and a CDU: it counts write requests at the wire
//! (every function code that can change a register or coil), can swallow every response (a
//! CDU that hangs) and can rewrite response PDUs (faults, a leak). Start it
//! inside a tokio runtime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Write single coil (5), write single register (6), write multiple coils (15), write
/// multiple registers (16), mask write register (22), read/write multiple registers (23).
pub const WRITE_FUNCTION_CODES: [u8; 6] = [5, 6, 15, 16, 22, 23];

pub type Patch = Box<dyn Fn(&mut Vec<u8>) -> bool + Send>;

/// The simulated CDU answers the sim-cdu profile's input registers 0..=11 in one read
/// (function code 4, 12 registers = 24 bytes); the patches rely on that layout.
pub const FC4_BYTES: u8 = 24;

/// Rewrites the simulated CDU's sensor answers: supply 50 °C, return 65 °C, flow 2 l/min
/// (word-swapped, as the profile says) and the leak cable wet (discrete input 0).
pub fn cdu_fault_patch() -> Patch {
    Box::new(|pdu: &mut Vec<u8>| match pdu.first() {
        Some(4) if pdu.len() == 2 + usize::from(FC4_BYTES) && pdu[1] == FC4_BYTES => {
            let put = |pdu: &mut Vec<u8>, reg: usize, b: [u8; 4]| {
                pdu[2 + 2 * reg..6 + 2 * reg].copy_from_slice(&b)
            };
            put(pdu, 0, 50.0f32.to_be_bytes());
            put(pdu, 2, 65.0f32.to_be_bytes());
            let f = 2.0f32.to_be_bytes();
            put(pdu, 4, [f[2], f[3], f[0], f[1]]);
            true
        }
        Some(2) if pdu.len() >= 3 => {
            pdu[2] |= 1;
            true
        }
        _ => false,
    })
}

/// Answers every input-register read with Modbus exception 0x04 (server device failure).
pub fn exception_patch() -> Patch {
    Box::new(|pdu: &mut Vec<u8>| {
        if pdu.first() != Some(&4) {
            return false;
        }
        *pdu = vec![0x84, 0x04];
        true
    })
}

/// Sits between the daemon and the simulated CDU. `hang` swallows every response (the CDU
/// accepts TCP and requests but never answers); `delay_ms` holds every response that long
/// (a slow CDU); `patch` rewrites response PDUs; write requests (function codes 5, 6, 15,
/// 16, 22, 23) are counted.
pub struct Proxy {
    pub addr: SocketAddr,
    pub hang: Arc<AtomicBool>,
    pub delay_ms: Arc<AtomicU64>,
    patch: Arc<Mutex<Option<Patch>>>,
    pub patched: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The connection tasks live in the accept task's JoinSet and die with it.
        self.task.abort();
    }
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Option<([u8; 7], Vec<u8>)> {
    let mut hdr = [0u8; 7];
    r.read_exact(&mut hdr).await.ok()?;
    let len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
    let mut pdu = vec![0u8; len.saturating_sub(1)];
    r.read_exact(&mut pdu).await.ok()?;
    Some((hdr, pdu))
}

async fn write_frame(w: &mut (impl AsyncWriteExt + Unpin), mut hdr: [u8; 7], pdu: &[u8]) -> bool {
    let len = u16::try_from(pdu.len() + 1).expect("a Modbus PDU is short");
    hdr[4..6].copy_from_slice(&len.to_be_bytes());
    // One write per frame: a header and a PDU in two segments would meet Nagle's delay.
    let mut frame = hdr.to_vec();
    frame.extend_from_slice(pdu);
    w.write_all(&frame).await.is_ok()
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let hang = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let patch: Arc<Mutex<Option<Patch>>> = Arc::new(Mutex::new(None));
        let patched = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (h, p, pc, wc, rc) = (
            hang.clone(),
            patch.clone(),
            patched.clone(),
            writes.clone(),
            requests.clone(),
        );
        let dl = delay_ms.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let (h, p, pc, wc, rc) = (h.clone(), p.clone(), pc.clone(), wc.clone(), rc.clone());
                let dl = dl.clone();
                conns.spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = up.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let to_server = async {
                        while let Some((hdr, pdu)) = read_frame(&mut cr).await {
                            rc.fetch_add(1, Ordering::SeqCst);
                            if pdu
                                .first()
                                .is_some_and(|fc| WRITE_FUNCTION_CODES.contains(fc))
                            {
                                wc.fetch_add(1, Ordering::SeqCst);
                            }
                            if !write_frame(&mut uw, hdr, &pdu).await {
                                break;
                            }
                        }
                    };
                    let to_client = async {
                        while let Some((hdr, mut pdu)) = read_frame(&mut ur).await {
                            if h.load(Ordering::SeqCst) {
                                continue;
                            }
                            let delay = dl.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                            }
                            let hit = p
                                .lock()
                                .map(|g| g.as_ref().is_some_and(|f| f(&mut pdu)))
                                .unwrap_or(false);
                            if hit {
                                pc.fetch_add(1, Ordering::SeqCst);
                            }
                            if !write_frame(&mut cw, hdr, &pdu).await {
                                break;
                            }
                        }
                    };
                    tokio::select! {
                        () = to_server => {}
                        () = to_client => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            hang,
            delay_ms,
            patch,
            patched,
            writes,
            requests,
            task,
        }
    }

    pub fn set_patch(&self, f: Option<Patch>) {
        *self.patch.lock().expect("patch lock") = f;
    }

    /// Write requests forwarded so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Every request forwarded so far, reads included: proof that traffic went through here.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}
