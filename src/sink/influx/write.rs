//! The write requests: one batch of line protocol to the server, by the influxdb2 crate
//! (v2 only, uncompressed, response headers hidden) or by a direct `reqwest` POST (gzip,
//! `Retry-After`, and the v1 endpoint). Both report a [`WriteResult`] for the policy.

use super::config::Secret;
use super::policy::{parse_retry_after, TransportKind, WriteResult};
use std::io::Write;

/// Gzips a write body. Level 1: line protocol is so repetitive that the fastest level already
/// removes most of it (see `benches/sink.rs`), and the shipper should not spend its time here.
pub fn gzip_body(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use flate2::write::GzEncoder;
    let mut enc = GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body)?;
    enc.finish()
}

/// Sends one batch.
pub(super) enum Writer {
    Crate {
        client: influxdb2::Client,
        org: String,
        bucket: String,
    },
    Http(HttpWriter),
}

impl Writer {
    pub(super) async fn write(&self, body: &str) -> WriteResult {
        match self {
            Writer::Crate {
                client,
                org,
                bucket,
            } => match client
                .write_line_protocol(org, bucket, body.to_owned())
                .await
            {
                Ok(()) => WriteResult::Accepted,
                Err(e) => from_crate_error(e),
            },
            Writer::Http(w) => w.write(body).await,
        }
    }
}

/// The influxdb2 crate's error as a result: an HTTP answer keeps its status and text; the
/// crate never shows the `Retry-After` header.
fn from_crate_error(e: influxdb2::RequestError) -> WriteResult {
    match e {
        influxdb2::RequestError::Http { status, text } => WriteResult::Status {
            code: status.as_u16(),
            text,
            retry_after: None,
        },
        other => {
            let kind = match &other {
                influxdb2::RequestError::ReqwestProcessing { source } => transport_kind(source),
                _ => TransportKind::Other,
            };
            WriteResult::Transport {
                kind,
                msg: other.to_string(),
            }
        }
    }
}

/// Why reqwest got no answer, as far as it says.
fn transport_kind(e: &reqwest::Error) -> TransportKind {
    if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Other
    }
}

/// How the direct write path authenticates.
pub(super) enum Auth {
    None,
    /// `Authorization: Token …` (v2; also InfluxDB 2.x and 3 on the v1 endpoint).
    Token(Secret),
    /// HTTP Basic with the v1 user and password (InfluxDB 1.x), kept out of the URL so the
    /// password never lands in a proxy's access log.
    Basic {
        user: String,
        password: Secret,
    },
}

/// The direct write path: what `influxdb2` 0.5 sends, plus gzip, access to response headers,
/// and the v1 endpoint.
pub(super) struct HttpWriter {
    pub(super) client: reqwest::Client,
    /// `<url>/api/v2/write` or `<url>/write`.
    pub(super) url: String,
    /// `org`, `bucket`, `precision` (v2) or `db`, `rp`, `precision` (v1).
    pub(super) query: Vec<(String, String)>,
    pub(super) auth: Auth,
    pub(super) gzip: bool,
}

impl HttpWriter {
    async fn write(&self, body: &str) -> WriteResult {
        use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
        let other = |msg: String| WriteResult::Transport {
            kind: TransportKind::Other,
            msg,
        };
        let payload = if self.gzip {
            // A full batch is megabytes; compress off the async workers.
            let raw = body.as_bytes().to_vec();
            match tokio::task::spawn_blocking(move || gzip_body(&raw)).await {
                Ok(Ok(gz)) => gz,
                Ok(Err(e)) => return other(format!("gzip of the write body failed: {e}")),
                Err(e) => return other(format!("gzip task failed: {e}")),
            }
        } else {
            body.as_bytes().to_vec()
        };
        let mut req = self
            .client
            .post(&self.url)
            .query(&self.query)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8");
        match &self.auth {
            Auth::None => {}
            Auth::Token(t) => {
                req = req.header(AUTHORIZATION, format!("Token {}", t.expose()));
            }
            Auth::Basic { user, password } => {
                req = req.basic_auth(user, Some(password.expose()));
            }
        }
        if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let resp = match req.body(payload).send().await {
            Ok(r) => r,
            Err(e) => {
                return WriteResult::Transport {
                    kind: transport_kind(&e),
                    msg: describe(&e),
                }
            }
        };
        let code = resp.status().as_u16();
        if code == 204 {
            return WriteResult::Accepted;
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let text = resp.text().await.unwrap_or_default();
        WriteResult::Status {
            code,
            text,
            retry_after,
        }
    }
}

/// A reqwest error with its causes ("error sending request" alone does not say connection
/// refused or timed out).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let body = "gpu,host=a v=1i 1\n".repeat(100);
        let gz = gzip_body(body.as_bytes()).expect("gzip");
        assert!(gz.len() < body.len() / 5, "{} bytes", gz.len());
        let mut out = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut out)
            .expect("gunzip");
        assert_eq!(out, body);
    }

    #[test]
    fn crate_errors_keep_the_status_and_text() {
        let e = influxdb2::RequestError::Http {
            status: reqwest::StatusCode::from_u16(413).expect("status"),
            text: "too large".into(),
        };
        assert_eq!(
            from_crate_error(e),
            WriteResult::Status {
                code: 413,
                text: "too large".into(),
                retry_after: None
            }
        );
        let e = influxdb2::RequestError::Deserializing { text: "x".into() };
        assert!(matches!(
            from_crate_error(e),
            WriteResult::Transport {
                kind: TransportKind::Other,
                ..
            }
        ));
    }
}
