//! The HTTP endpoint under abuse by real concurrent TCP clients: idle keep-alive sockets and
//! slowloris requests try to hold every connection slot while the test probes `/healthz`.

use coolantd::model::{ControlState, Mode, Snapshot};
use coolantd::service::http::{serve, Health};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

fn snapshot() -> Snapshot {
    Snapshot {
        site: "hall-1".into(),
        host: "node01".into(),
        time_ns: 1_700_000_000_000_000_000,
        tick: 1,
        dry_run: false,
        mode: Mode::Auto,
        state: ControlState::Running,
        setpoint: 65.0,
        controlled: Some(60.0),
        ready: true,
        cdus: vec![],
        gpus: vec![],
        alarms: vec![],
        decisions: Vec::new(),
        points: vec![],
        rack: None,
    }
}

struct Server {
    addr: std::net::SocketAddr,
    _tx: watch::Sender<Arc<Snapshot>>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// The endpoint with a control loop that keeps ticking, so `/healthz` is 200 whenever it
/// gets through.
async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let health = Arc::new(Health::new(Duration::from_secs(1)));
    let (tx, rx) = watch::channel(Arc::new(snapshot()));
    tokio::spawn(serve(listener, rx, health.clone()));
    let ticker = tokio::spawn(async move {
        loop {
            health.tick(Duration::from_millis(1));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Server {
        addr,
        _tx: tx,
        ticker,
    }
}

/// One request on a fresh connection within `limit`: the status code, 0 on failure.
async fn probe(addr: std::net::SocketAddr, path: &str, limit: Duration) -> (u16, String) {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.ok()?;
        let code = raw.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, raw))
    };
    tokio::time::timeout(limit, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, String::new()))
}

/// An idle keep-alive client: one complete request, then it holds the socket; when the
/// server closes it, it comes back after a short pause.
async fn idle_client(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut buf = [0u8; 1024];
            // Reads the response, then waits on the idle socket until the server closes it.
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A slowloris client: a request line, then one header line a second, never the end of the
/// headers; it comes back after a short pause when closed.
async fn slowloris_client(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .is_ok()
            {
                let mut buf = [0u8; 256];
                'held: while !stop.load(Ordering::Relaxed) {
                    for _ in 0..5 {
                        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                            .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break 'held,
                            _ => {}
                        }
                    }
                    if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Attacks a fresh server with `idle` keep-alive and `slow` slowloris clients, probes
/// `/healthz` 100 times (every 100 ms, 2 s each) and returns the successes, the longest run
/// of failures and the shed counter.
async fn probe_under_attack(idle: usize, slow: usize) -> (u32, u32, f64) {
    let server = start().await;
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..idle {
        attackers.push(tokio::spawn(idle_client(addr, stop.clone())));
    }
    for _ in 0..slow {
        attackers.push(tokio::spawn(slowloris_client(addr, stop.clone())));
    }
    // Let the attackers take every slot first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ok = 0;
    let mut longest_failure_run = 0;
    let mut run = 0;
    for _ in 0..100 {
        let (code, _) = probe(addr, "/healthz", Duration::from_secs(2)).await;
        if code == 200 {
            ok += 1;
            run = 0;
        } else {
            run += 1;
            longest_failure_run = longest_failure_run.max(run);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    let shed = counter(addr, "coolantd_http_connections_shed_total").await;
    println!(
        "/healthz under {idle} idle + {slow} slowloris clients: {ok} of 100 probes answered \
         200, longest run of failures {longest_failure_run}; {shed} connections shed"
    );
    (ok, longest_failure_run, shed)
}

/// Issue 12, D6: 64 idle keep-alive sockets used to hold every slot for 60 s, and 200
/// slowloris connections let 6 of 100 `/healthz` probes through (0 of 100 in this test).
/// Now idle and slow connections are closed on short timeouts, clients still sending their
/// first request head have slots of their own, and a newcomer sheds the oldest connection
/// when the slots are full; the shed connections are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_gets_through_idle_and_slowloris_clients() {
    let (ok, run, shed) = probe_under_attack(64, 200).await;
    assert!(
        ok >= 95,
        "{ok} of 100 probes succeeded (longest failure run {run})"
    );
    assert!(shed > 0.0, "connections were shed but not counted");
}

/// As above with more slowloris clients than the slots for unfinished requests, so that
/// they keep shedding each other while the probes come in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_gets_through_more_slowloris_clients_than_slots() {
    let (ok, run, shed) = probe_under_attack(64, 500).await;
    assert!(
        ok >= 90,
        "{ok} of 100 probes succeeded (longest failure run {run})"
    );
    assert!(shed > 500.0, "connections were shed but not counted");
}

/// Issue 12, D6: a keep-alive connection that stays silent after its request is closed on
/// the idle timeout, long before the connection lifetime (60 s).
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_on_a_short_timeout() {
    let server = start().await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let started = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        closed.is_ok(),
        "the idle connection was still open after 20 s"
    );
    println!(
        "idle keep-alive connection closed after {:?}",
        started.elapsed()
    );
    assert_eq!(
        counter(server.addr, "coolantd_http_connections_timed_out_total").await,
        1.0
    );
}

/// The value of an unlabelled counter on `/metrics`.
async fn counter(addr: std::net::SocketAddr, name: &str) -> f64 {
    let (code, metrics) = probe(addr, "/metrics", Duration::from_secs(5)).await;
    assert_eq!(code, 200, "{metrics}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
}

/// Issue 12, D6: a request head trickled one header line a second (which keeps the
/// connection from going idle) is closed on the header read timeout and counted.
#[tokio::test]
async fn a_slowloris_request_is_closed_on_the_header_timeout_and_counted() {
    let server = start().await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 512];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => {
                if started.elapsed() > Duration::from_secs(20) {
                    break false;
                }
                if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    break true;
                }
            }
        }
    };
    assert!(closed, "the slow request was still open after 20 s");
    println!("slowloris request closed after {:?}", started.elapsed());
    // The server counts the close when the connection task ends, just after the socket closes.
    let mut timed_out = 0.0;
    for _ in 0..50 {
        timed_out = counter(server.addr, "coolantd_http_connections_timed_out_total").await;
        if timed_out >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(timed_out, 1.0);
}
