//! Rejections and transient errors. VictoriaMetrics answers 204 even to lines it drops, so it
//! cannot show the sink's 4xx handling; no real InfluxDB 2 is installable on Debian. This test
//! therefore runs a minimal loopback HTTP peer that answers like InfluxDB does: 400 with a JSON
//! message for a batch holding a bad line, 503 once, 204 otherwise.

use coolantd::model::{FieldValue, Point};
use coolantd::sink::influx::{InfluxConfig, InfluxSink, Secret};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Seen {
    bodies: Vec<String>,
    auth: Vec<String>,
    answered_503: bool,
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
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let body = String::from_utf8_lossy(&body).into_owned();
                let answer = {
                    let mut s = seen.lock().expect("lock");
                    s.auth.push(auth);
                    s.bodies.push(body.clone());
                    if !s.answered_503 {
                        s.answered_503 = true;
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_string()
                    } else if body.contains("bad") {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_batch_goes_to_dead_letter_and_later_points_flow() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    std::thread::spawn(move || serve(listener, s2));

    let state = tempfile::tempdir().expect("state dir");
    let mut cfg = InfluxConfig::new(format!("http://127.0.0.1:{port}"), "b");
    cfg.org = "o".into();
    cfg.token = Some(Secret::new("t0ken"));
    cfg.batch_size = 3;
    cfg.flush_interval_ms = 10;
    cfg.retry_min_ms = 10;
    cfg.retry_max_ms = 50;
    let sink = InfluxSink::start(&cfg, state.path()).expect("sink starts");

    let p = |m: &str, i: i64| Point::new(m, i).field("v", FieldValue::Int(i));
    // First batch (3 points) meets the 503, then succeeds; the second holds a bad line and is
    // rejected as a whole; the third succeeds.
    sink.submit(&[p("good", 1), p("good", 2), p("good", 3)]);
    sink.submit(&[p("good", 4), p("bad", 5), p("good", 6)]);
    sink.submit(&[p("good", 7)]);

    let t0 = Instant::now();
    let st = loop {
        let st = sink.stats();
        if st.backlog == 0 {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{st:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
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
