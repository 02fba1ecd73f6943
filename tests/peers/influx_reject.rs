//! Rejections, transient errors and `Retry-After`. VictoriaMetrics answers 204 even to lines it
//! drops and never sends 429/503, so it cannot show the sink's 4xx handling or its pacing; no
//! real InfluxDB 2 is installable on Debian. These tests therefore run a minimal loopback HTTP
//! peer that answers like InfluxDB does: first whatever the test scripted (503, 429 with
//! `Retry-After`, …), then 400 with a JSON message for a batch holding a bad line, 204 otherwise.
//! It records what arrived and when.

use coolantd::model::{FieldValue, Point};
use coolantd::sink::influx::{InfluxConfig, InfluxSink, Secret, SinkStats};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Default)]
struct Seen {
    /// Answers to give first, one per request, before the default behaviour.
    script: VecDeque<String>,
    /// Request bodies as received (gzip still applied).
    raw: Vec<Vec<u8>>,
    /// Request bodies, gunzipped where `Content-Encoding: gzip` said so.
    bodies: Vec<String>,
    auth: Vec<String>,
    encoding: Vec<String>,
    content_type: Vec<String>,
    request_line: Vec<String>,
    at: Vec<Instant>,
}

fn gunzip(raw: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(raw)
        .read_to_string(&mut out)
        .expect("a valid gzip body");
    out
}

fn serve(listener: TcpListener, seen: Arc<Mutex<Seen>>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { return };
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream.try_clone().expect("clone stream"));
            loop {
                let mut len = 0usize;
                let mut auth = String::new();
                let mut encoding = String::new();
                let mut content_type = String::new();
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 {
                        return;
                    }
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("authorization:") {
                        auth = h["authorization:".len()..].trim().to_string();
                    }
                    if let Some(v) = lower.strip_prefix("content-encoding:") {
                        encoding = v.trim().to_string();
                    }
                    if let Some(v) = lower.strip_prefix("content-type:") {
                        content_type = v.trim().to_string();
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let at = Instant::now();
                let text = if encoding == "gzip" {
                    gunzip(&body)
                } else {
                    String::from_utf8_lossy(&body).into_owned()
                };
                let answer = {
                    let mut s = seen.lock().expect("lock");
                    s.at.push(at);
                    s.auth.push(auth);
                    s.encoding.push(encoding);
                    s.content_type.push(content_type);
                    s.request_line.push(line.trim_end().to_string());
                    s.raw.push(body);
                    s.bodies.push(text.clone());
                    if let Some(a) = s.script.pop_front() {
                        a
                    } else if text.contains("bad") {
                        let msg = r#"{"code":"invalid","message":"unable to parse 'bad v=\"x\" 1': field type conflict"}"#;
                        format!(
                            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{msg}",
                            msg.len()
                        )
                    } else {
                        "HTTP/1.1 204 No Content\r\n\r\n".to_string()
                    }
                };
                if stream.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
}

const EMPTY_503: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";

/// Starts the responder with its scripted first answers; returns its port and its record.
fn responder(script: &[String]) -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Seen {
        script: script.iter().cloned().collect(),
        ..Seen::default()
    }));
    let s2 = seen.clone();
    std::thread::spawn(move || serve(listener, s2));
    (port, seen)
}

fn config(port: u16) -> InfluxConfig {
    let mut cfg = InfluxConfig::new(format!("http://127.0.0.1:{port}"), "b");
    cfg.org = "o".into();
    cfg.token = Some(Secret::new("t0ken"));
    cfg.batch_size = 3;
    cfg.flush_interval_ms = 10;
    cfg.retry_min_ms = 10;
    cfg.retry_max_ms = 50;
    cfg
}

async fn drained(sink: &InfluxSink) -> SinkStats {
    let t0 = Instant::now();
    loop {
        let st = sink.stats();
        if st.backlog == 0 {
            return st;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{st:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_batch_goes_to_dead_letter_and_later_points_flow() {
    let (port, seen) = responder(&[EMPTY_503.to_string()]);
    let state = tempfile::tempdir().expect("state dir");
    let cfg = config(port);
    let sink = InfluxSink::start(&cfg, state.path()).expect("sink starts");

    let p = |m: &str, i: i64| Point::new(m, i).field("v", FieldValue::Int(i));
    // First batch (3 points) meets the 503, then succeeds; the second holds a bad line and is
    // rejected as a whole; the third succeeds.
    sink.submit(&[p("good", 1), p("good", 2), p("good", 3)]);
    sink.submit(&[p("good", 4), p("bad", 5), p("good", 6)]);
    sink.submit(&[p("good", 7)]);

    let st = drained(&sink).await;
    assert_eq!((st.written, st.rejected, st.retries), (4, 3, 1), "{st:?}");
    assert_eq!(
        st.last_error, None,
        "cleared by the successful write after it"
    );

    let dead = std::fs::read_to_string(state.path().join("influx-dead-letter.lp"))
        .expect("dead-letter file");
    let lines: Vec<&str> = dead.lines().collect();
    assert_eq!(lines.len(), 4, "{dead}");
    assert!(lines[0].starts_with("# rejected at unix ") && lines[0].contains("HTTP 400"));
    assert!(
        lines[0].contains("field type conflict"),
        "the server's message is kept"
    );
    assert_eq!(&lines[1..], ["good v=4i 4", "bad v=5i 5", "good v=6i 6"]);

    {
        let s = seen.lock().expect("lock");
        assert!(s.auth.iter().all(|a| a == "Token t0ken"), "{:?}", s.auth);
        assert_eq!(
            s.bodies[0], s.bodies[1],
            "the batch that met 503 is resent unchanged"
        );
    }
    sink.shutdown(Duration::from_secs(1)).await;
}

/// What the direct path declares (the influxdb2 crate sends no Content-Type at all).
const HTTP_CT: &str = "text/plain; charset=utf-8";

fn points(run: &str) -> Vec<Point> {
    (1..=3)
        .map(|i| {
            Point::new("seq", 1_700_000_000_000_000_000 + i)
                .tag("run", run)
                .field("v", FieldValue::Float(i as f64 * 0.5))
        })
        .collect()
}

/// Sends one batch of three points through a sink whose first answer is `first`; returns
/// the record once the batch is written, after checking it was sent twice, unchanged.
async fn one_retry(cfg: &InfluxConfig, seen: &Arc<Mutex<Seen>>, run: &str) -> Duration {
    let state = tempfile::tempdir().expect("state dir");
    let sink = InfluxSink::start(cfg, state.path()).expect("sink starts");
    sink.submit(&points(run));
    let st = drained(&sink).await;
    assert_eq!((st.written, st.retries), (3, 1), "{st:?}");
    sink.shutdown(Duration::from_secs(1)).await;

    let s = seen.lock().expect("lock");
    assert_eq!(s.at.len(), 2, "one refused request, one accepted");
    assert_eq!(s.raw[0], s.raw[1], "the batch is resent unchanged");
    let want = format!(
        "seq,run={run} v=0.5 1700000000000000001\n\
         seq,run={run} v=1 1700000000000000002\n\
         seq,run={run} v=1.5 1700000000000000003\n"
    );
    assert_eq!(s.bodies[1], want, "the exact line protocol arrives");
    assert!(s.auth.iter().all(|a| a == "Token t0ken"), "{:?}", s.auth);
    for l in &s.request_line {
        assert!(l.starts_with("POST /api/v2/write?"), "{l}");
        for q in ["org=o", "bucket=b", "precision=ns"] {
            assert!(l.contains(q), "{l} lacks {q}");
        }
    }
    s.at[1] - s.at[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_429_retry_after_seconds_delays_the_resend() {
    let (port, seen) = responder(&[
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n".into(),
    ]);
    let mut cfg = config(port);
    cfg.gzip = true;
    // The back-off alone would resend after 5..10 ms; only Retry-After explains a 1 s gap.
    cfg.retry_max_ms = 5000;
    let gap = one_retry(&cfg, &seen, "gz").await;
    assert!(gap >= Duration::from_millis(950), "resent after {gap:?}");
    let s = seen.lock().expect("lock");
    assert_eq!(s.content_type, [HTTP_CT, HTTP_CT]);
    assert_eq!(s.encoding, ["gzip", "gzip"]);
    assert_ne!(
        s.raw[1],
        s.bodies[1].as_bytes(),
        "the body on the wire is compressed"
    );
    eprintln!(
        "gzip: {} bytes of line protocol sent as {} bytes; resent after {gap:?}",
        s.bodies[1].len(),
        s.raw[1].len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_http_date_on_503_is_honoured() {
    // Four seconds ahead, truncated to whole seconds by the date format: at least 3 s to wait
    // when the first request comes at once, and still more than the 950 ms asserted below when
    // a loaded machine delays that request by up to two seconds (the bound was flaky at 2 s).
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(4));
    let (port, seen) = responder(&[format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {date}\r\nContent-Length: 0\r\n\r\n"
    )]);
    let mut cfg = config(port);
    cfg.honor_retry_after = true;
    cfg.retry_max_ms = 5000;
    let gap = one_retry(&cfg, &seen, "date").await;
    assert!(gap >= Duration::from_millis(950), "resent after {gap:?}");
    let s = seen.lock().expect("lock");
    assert_eq!(s.content_type, [HTTP_CT, HTTP_CT]);
    assert_eq!(s.encoding, ["", ""], "no gzip unless asked for");
    assert_eq!(s.raw[1], s.bodies[1].as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_capped_at_retry_max() {
    let (port, seen) = responder(&[
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3600\r\nContent-Length: 0\r\n\r\n".into(),
    ]);
    let mut cfg = config(port);
    cfg.honor_retry_after = true;
    cfg.retry_max_ms = 300;
    // `drained` gives up after 10 s: an uncapped hour would fail there.
    let gap = one_retry(&cfg, &seen, "cap").await;
    assert!(gap >= Duration::from_millis(250), "resent after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb2_path_cannot_see_retry_after_and_backs_off() {
    // The default path: the influxdb2 crate drops response headers, so its retry comes after
    // the back-off (5..10 ms here), not after the hour the server asked for (with a cap of ten
    // minutes, a sink that honoured it could not resend before `drained` gives up). This pins
    // down what docs/metrics.md says about `honor_retry_after = false` without timing the gap.
    let (port, seen) = responder(&[
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3600\r\nContent-Length: 0\r\n\r\n".into(),
    ]);
    let mut cfg = config(port);
    cfg.retry_max_ms = 600_000;
    let gap = one_retry(&cfg, &seen, "crate").await;
    eprintln!("influxdb2 path: resent after {gap:?} despite Retry-After: 3600");
}
