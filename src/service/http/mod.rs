//! The HTTP endpoint: `/healthz`, `/readyz`, `/metrics` (Prometheus text format 0.0.4) and
//! `/status` (the latest snapshot as JSON).
//!
//! The server is hyper 0.14 (HTTP/1.1 only). hyper 0.14 is already compiled into the tree for
//! reqwest (the InfluxDB client), so the server half costs a few seconds of build time, and it
//! brings a parser that has seen the internet: malformed request lines, oversized headers and
//! pipelining are handled there rather than in code of our own.
//!
//! The endpoint never blocks the control loop: it runs in its own tasks, reads the snapshot
//! through a `watch` channel (cloning an `Arc`, never holding the channel's lock while it
//! renders) and reads liveness from atomics in [`Health`]. Connections are capped and each one
//! has a lifetime limit, so a slow or hostile client cannot pile up tasks.
//!
//! Health probes must get through while clients hold connections open: a request head must
//! arrive within [`HEADER_READ_TIMEOUT`], a connection silent for [`IDLE_TIMEOUT`] (between
//! keep-alive requests too) is closed, and when every slot is taken a new connection sheds
//! the oldest one instead of being refused. Connections still waiting for their first
//! request head have slots of their own, so slow clients only ever push out slow clients. Those closes are counted in `/metrics`
//! (`coolantd_http_connections_shed_total`, `…_timed_out_total`) and logged rate-limited.

mod health;
mod prometheus;

use health::not_ready_reason;
pub use health::{Health, Liveness};

pub use prometheus::{render_metrics, sanitize_metric_name};

use crate::model::{ControlState, Snapshot};
use crate::validate::Issues;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Body, Method, Request, Response, StatusCode};
use serde::Deserialize;
use std::collections::BTreeMap as Slots;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// The Prometheus exporter port registered for coolantd would be allocated from the
/// community list (https://github.com/prometheus/prometheus/wiki/Default-port-allocations);
/// 9105 is free there at the time of writing. Loopback by default: the endpoint has no
/// authentication, so exposing it is a deliberate choice in the configuration.
const DEFAULT_LISTEN: &str = "127.0.0.1:9105";

/// At most this many connections are served at once (after their first request head
/// arrived); a further one sheds the oldest. A Prometheus server, a load balancer's health
/// check and an operator's curl need a handful.
const MAX_CONNECTIONS: usize = 64;

/// At most this many connections wait for their first request head; a further one sheds
/// the oldest of them. Kept apart from the served ones, so that clients that never finish a
/// request (slowloris) cannot push out a health probe, which sends its request at once.
const MAX_PENDING: usize = 256;

/// Longest first request head read before hyper takes over (hyper then answers 431 or 400).
const MAX_HEAD: usize = 16 * 1024;

/// A client must send its request headers within this time (slow-loris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection on which no byte moved for this long is closed: an idle keep-alive
/// connection between requests, or a client that stopped reading its response.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection (keep-alive included) is closed after this long. Prometheus scrapes every
/// 15 s by default and simply reconnects, so this only bounds idle and hostile connections.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// How many missed control periods make `/healthz` fail. Three tolerates one slow tick (a
/// Modbus timeout) without flapping, yet reports a stuck loop within seconds.
const DEFAULT_STALE_PERIODS: u32 = 3;

/// Content type of the Prometheus text exposition format, version 0.0.4.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `[http]`: the health, metrics and status endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve the endpoint at all. Defaults to true when the section is present.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Address and port to listen on, for example `127.0.0.1:9105` or `[::]:9105`.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_enabled() -> bool {
    true
}

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: default_enabled(),
            listen: default_listen(),
        }
    }
}

impl HttpConfig {
    pub fn validate(&self, key: &str, issues: &mut Issues) {
        match self.listen.parse::<SocketAddr>() {
            Ok(addr) => issues.check(
                addr.port() != 0,
                format!("{key}.listen"),
                format!(
                    "a fixed port (Prometheus must know where to scrape), got `{}`",
                    self.listen
                ),
            ),
            Err(_) => issues.push(
                format!("{key}.listen"),
                format!(
                    "an IP address and port such as `127.0.0.1:9105` or `[::]:9105` \
                     (host names are not resolved), got `{}`",
                    self.listen
                ),
            ),
        }
    }

    /// The listen address; an error names the key when the text is not an address.
    pub fn listen_addr(&self) -> Result<SocketAddr, HttpError> {
        self.listen
            .parse()
            .map_err(|_| HttpError::BadAddress(self.listen.clone()))
    }

    /// Binds the listening socket. Done before `READY=1`, so that a port already in use
    /// fails the start instead of a silently missing endpoint.
    pub async fn bind(&self) -> Result<TcpListener, HttpError> {
        let addr = self.listen_addr()?;
        TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })
    }
}

/// Errors setting up the HTTP endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.listen: expected an IP address and port such as 127.0.0.1:9105, got `{0}`")]
    BadAddress(String),
    #[error("http.listen: cannot listen on {addr} (is another process using the port?): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves the endpoint on `listener` until the snapshot's sender is dropped (the daemon is
/// shutting down); then returns `Ok(())`. Accept errors (for example running out of file
/// descriptors) are logged and retried, because the endpoint must not take the daemon down.
pub async fn serve(
    listener: TcpListener,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, "http endpoint listening");
    let pending = Arc::new(Tier::new(MAX_PENDING));
    let active = Arc::new(Tier::new(MAX_CONNECTIONS));
    let mut next_id = 0u64;
    let mut closed = snapshot.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    crate::log_limited!(warn, "http accept failed; retrying", %error);
                    // Back off so that a persistent error (EMFILE) does not spin a core.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            changed = closed.changed() => {
                if changed.is_err() {
                    tracing::debug!("snapshot sender dropped; http endpoint stops");
                    return Ok(());
                }
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        let shed = pending.join(id, &health);
        let snapshot = snapshot.clone();
        let health = health.clone();
        let active = active.clone();
        let pending = pending.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            // First the request head, in a tier of its own: a client that never finishes
            // its head can only push out other such clients, never one being served.
            let head = tokio::select! {
                r = tokio::time::timeout(HEADER_READ_TIMEOUT, read_head(&mut stream)) => Some(r),
                _ = shed.notified() => None,
            };
            pending.leave(id);
            let head = match head {
                None => return tracing::debug!(%peer, "http connection shed for a newer one"),
                Some(Err(_)) => {
                    health.http_timed_out.fetch_add(1, Ordering::Relaxed);
                    return tracing::debug!(%peer, "http request head not sent in time; closed");
                }
                Some(Ok(Err(error))) => {
                    return tracing::debug!(%peer, %error, "http connection ended before a request")
                }
                Some(Ok(Ok(None))) => return,
                Some(Ok(Ok(Some(head)))) => head,
            };
            let shed = active.join(id, &health);
            let end = serve_connection(stream, head, snapshot, health.clone(), &shed).await;
            active.leave(id);
            match end {
                End::Done(Ok(())) => {}
                End::Done(Err(error)) => {
                    // hyper 0.14 reports its header read timeout as an error kind of its own
                    // that `is_timeout` does not cover; its message is the public sign of it.
                    if error.is_timeout() || error.to_string().contains("timeout") {
                        health.http_timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(%peer, %error, "http connection ended");
                }
                End::Idle => {
                    health.http_timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "http connection idle; closed");
                }
                End::Lifetime => {
                    tracing::debug!(%peer, "http connection reached its lifetime limit")
                }
                End::Shed => tracing::debug!(%peer, "http connection shed for a newer one"),
            }
        });
    }
}

/// Connections in one phase (waiting for their first request head, or served), capped:
/// when every slot is taken, a newcomer sheds the oldest.
struct Tier {
    limit: usize,
    held: Mutex<Slots<u64, Arc<Notify>>>,
}

impl Tier {
    fn new(limit: usize) -> Tier {
        Tier {
            limit,
            held: Mutex::new(Slots::new()),
        }
    }

    /// Takes a slot for connection `id`, shedding the oldest holders if needed; the
    /// returned `Notify` fires when `id` is shed in turn.
    fn join(&self, id: u64, health: &Health) -> Arc<Notify> {
        let shed = Arc::new(Notify::new());
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while held.len() >= self.limit {
            let Some((_, oldest)) = held.pop_first() else {
                break;
            };
            // A stored permit: the holder sees it even if it is not waiting yet.
            oldest.notify_one();
            health.http_shed.fetch_add(1, Ordering::Relaxed);
            crate::log_limited!(
                warn,
                "all http connection slots taken; closing the oldest connection",
                limit = self.limit
            );
        }
        held.insert(id, shed.clone());
        shed
    }

    fn leave(&self, id: u64) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// Reads until the end of the first request head (an empty line), or [`MAX_HEAD`] bytes;
/// `None` when the client closed first. The bytes go to hyper, which parses them.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        // Only the new bytes and the three before them can complete the empty line.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let tail = &head[from..];
        let complete =
            tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n");
        if complete || head.len() >= MAX_HEAD {
            return Ok(Some(head));
        }
    }
}

/// Why a connection ended.
enum End {
    Done(hyper::Result<()>),
    Idle,
    Lifetime,
    Shed,
}

/// Serves one connection, starting with the request head already read, until it ends, falls
/// silent for [`IDLE_TIMEOUT`], reaches [`CONNECTION_LIFETIME`] or is shed for a newer one.
async fn serve_connection(
    stream: TcpStream,
    head: Vec<u8>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    health: Arc<Health>,
    shed: &Notify,
) -> End {
    let opened = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let io = Tracked {
        io: stream,
        head,
        head_pos: 0,
        opened,
        activity: activity.clone(),
    };
    let service = service_fn(move |req| {
        let response = respond(&req, &snapshot, &health);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = hyper::server::conn::Http::new()
        .http1_only(true)
        .http1_header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let lifetime_end = opened + CONNECTION_LIFETIME;
    loop {
        let last = opened + Duration::from_millis(activity.load(Ordering::Relaxed));
        let wake = (last + IDLE_TIMEOUT).min(lifetime_end);
        tokio::select! {
            r = &mut conn => return End::Done(r),
            _ = shed.notified() => return End::Shed,
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if now >= lifetime_end {
                    return End::Lifetime;
                }
                let last = opened + Duration::from_millis(activity.load(Ordering::Relaxed));
                if now.saturating_duration_since(last) >= IDLE_TIMEOUT {
                    return End::Idle;
                }
            }
        }
    }
}

/// A connection's socket that first replays the request head read before, and records when
/// a byte last moved (milliseconds after `opened`).
struct Tracked {
    io: TcpStream,
    head: Vec<u8>,
    head_pos: usize,
    opened: Instant,
    activity: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.head_pos < this.head.len() {
            let n = (this.head.len() - this.head_pos).min(buf.remaining());
            buf.put_slice(&this.head[this.head_pos..this.head_pos + n]);
            this.head_pos += n;
            if this.head_pos == this.head.len() {
                this.head = Vec::new();
                this.head_pos = 0;
            }
            this.touch();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Body::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn respond(
    req: &Request<Body>,
    snapshot: &watch::Receiver<Arc<Snapshot>>,
    health: &Health,
) -> Response<Body> {
    let path = req.uri().path();
    let known = matches!(path, "/" | "/healthz" | "/readyz" | "/metrics" | "/status");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}\n\n{ENDPOINTS}"),
        );
    }
    // HEAD is answered like GET; hyper leaves the body out.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed here; use GET\n", req.method()),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let now = Instant::now();
    // Clone the Arc and release the channel's read lock before doing any work.
    let snap: Arc<Snapshot> = snapshot.borrow().clone();
    match path {
        "/" => text(StatusCode::OK, ENDPOINTS),
        "/healthz" => match health.liveness(now) {
            Liveness::Alive => text(StatusCode::OK, "ok\n"),
            Liveness::NoTickYet => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "control loop has not completed a tick yet\n",
            ),
            Liveness::Stale { age, limit } => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "control loop stuck: last healthy tick {:.1} s ago (limit {:.1} s)\n",
                    age.as_secs_f64(),
                    limit.as_secs_f64()
                ),
            ),
        },
        "/readyz" => match not_ready_reason(&snap, health, now) {
            None => text(StatusCode::OK, "ready\n"),
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
        "/metrics" => {
            let body = render_metrics(&snap, Some(health), now);
            let mut r = Response::new(Body::from(body));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
            );
            r
        }
        _ => match serde_json::to_vec(&*snap) {
            Ok(body) => {
                let mut r = Response::new(Body::from(body));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            Err(error) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the status as JSON: {error}\n"),
            ),
        },
    }
}

/// Register faults as `name: why` lines, for [`summarize_faults`].
pub fn fault_lines(faults: &[crate::model::RegisterFault]) -> Vec<String> {
    faults.iter().map(ToString::to_string).collect()
}

/// Register faults (`name: why`) with the same cause folded into one entry, so that a CDU
/// that cannot be reached reads as one cause, not one line per register.
pub fn summarize_faults(faults: &[String]) -> Vec<String> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for f in faults {
        let (name, why) = f.split_once(": ").unwrap_or(("", f.as_str()));
        match groups.iter_mut().find(|(w, _)| w == why) {
            Some((_, names)) => names.push(name.to_string()),
            None => groups.push((why.to_string(), vec![name.to_string()])),
        }
    }
    groups
        .into_iter()
        .map(|(why, names)| match names.as_slice() {
            [one] if !one.is_empty() => format!("{one}: {why}"),
            [_] => why,
            many => format!("{} registers ({}, …): {why}", many.len(), many[0]),
        })
        .collect()
}

/// What `/` answers (and a 404 repeats): the endpoints and what each is for.
const ENDPOINTS: &str = "coolantd endpoints:\n\
    /healthz  200 while the control loop ticks (liveness)\n\
    /readyz   200 when every required input is valid; otherwise 503 and why\n\
    /metrics  Prometheus text format (names and meanings: docs/metrics.md)\n\
    /status   the whole state as JSON (also: coolantd status)\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_with_one_cause_are_folded() {
        let f = |s: &str| s.to_string();
        let faults = [
            f("supply_temp: transport error: refused"),
            f("flow: transport error: refused"),
            f("leak: timed out"),
        ];
        assert_eq!(
            summarize_faults(&faults),
            vec![
                f("2 registers (supply_temp, …): transport error: refused"),
                f("leak: timed out")
            ]
        );
    }

    #[test]
    fn listen_address_is_validated() {
        let mut issues = Issues::default();
        HttpConfig::default().validate("http", &mut issues);
        assert!(issues.is_empty());
        for bad in ["localhost:9105", "127.0.0.1", "127.0.0.1:0", ""] {
            let mut issues = Issues::default();
            HttpConfig {
                enabled: true,
                listen: bad.into(),
            }
            .validate("http", &mut issues);
            let v = issues.into_vec();
            assert_eq!(v.len(), 1, "{bad}");
            assert_eq!(v[0].key, "http.listen");
        }
    }

    #[test]
    fn health_goes_stale_after_three_periods() {
        let t0 = Instant::now();
        let h = Health::with_start(Duration::from_secs(1), t0);
        assert_eq!(h.liveness(t0), Liveness::NoTickYet);
        h.tick_at(t0 + Duration::from_secs(2), Duration::from_millis(5));
        assert_eq!(h.liveness(t0 + Duration::from_secs(4)), Liveness::Alive);
        assert_eq!(h.liveness(t0 + Duration::from_secs(5)), Liveness::Alive);
        assert!(matches!(
            h.liveness(t0 + Duration::from_millis(5001)),
            Liveness::Stale { .. }
        ));
        assert_eq!(h.ticks(), 1);
    }
}
