//! What to do with a batch after a write attempt: acknowledge it, send it again later, send
//! a smaller part of it, dead-letter it, or leave it in the spool because the sink is stopping.
//!
//! The decision is a pure function of the attempt's result, the back-off retries so far, the
//! batch's size and whether the sink is stopping: no IO, no clock and no randomness of its own
//! (the jitter comes in as a number), so every case is a unit test without a database. The
//! shipping task (`ship.rs`) carries the decision out.
//!
//! The batch's age is deliberately not an input: the sink never gives a batch up for being
//! old (nothing is lost while the spool has room), so the age could not change a decision.

use std::time::{Duration, SystemTime};

/// What one write request came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// HTTP 204: the server stored the batch.
    Accepted,
    /// Any other HTTP answer. `retry_after` is the server's `Retry-After` as a delay (see
    /// [`parse_retry_after`]); the influxdb2 crate's path never sees it.
    Status {
        code: u16,
        text: String,
        retry_after: Option<Duration>,
    },
    /// No HTTP answer at all.
    Transport { kind: TransportKind, msg: String },
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// No connection: refused, unreachable, name not resolved, TLS handshake failed.
    Connect,
    /// The connection or the answer took longer than `request_timeout_ms`.
    Timeout,
    /// Anything else on the way (a broken connection mid-request, the gzip task failed).
    Other,
}

/// Where the batch stands when its result comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Retries paced by the back-off since the last accepted write: the back-off's exponent.
    /// Retries the server paced with `Retry-After` do not count.
    pub failures: u32,
    /// Points in the batch that was sent.
    pub points: u64,
    /// The sink is shutting down: a retry would outlast it.
    pub stopping: bool,
}

/// How the delay of a [`Decision::Retry`] was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Exponential back-off with jitter; the caller counts one more failure.
    Backoff,
    /// The server's `Retry-After` (as it asked, before clamping).
    Server(Duration),
}

/// What the shipping task does next with the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The server took the batch: remove it from the spool (or memory).
    Done,
    /// Send the same batch again after `after`.
    Retry {
        after: Duration,
        reason: String,
        pacing: Pacing,
    },
    /// The request was too large: send the first `limit` points of the batch next.
    Split { limit: usize, reason: String },
    /// The server refused the data itself: append the batch to the dead-letter file.
    DeadLetter { reason: String },
    /// A failure worth retrying, but the sink is stopping: the batch stays in the spool for
    /// the next start.
    Keep { reason: String },
}

/// The retry bounds from the configuration (`retry_min_ms`, `retry_max_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Policy {
    /// Decides what follows a write. `jitter` is a uniform number in [0, 1) that places a
    /// back-off delay within its upper half.
    pub fn decide(&self, result: &WriteResult, attempt: Attempt, jitter: f64) -> Decision {
        let (reason, retry_after) = match result {
            WriteResult::Accepted => return Decision::Done,
            WriteResult::Transport { msg, .. } => (msg.clone(), None),
            WriteResult::Status {
                code,
                text,
                retry_after,
            } => {
                let reason = format!("HTTP {code}: {}", text.trim());
                match code {
                    // One line too large cannot be split further: it is refused data.
                    413 if attempt.points > 1 => {
                        return Decision::Split {
                            limit: usize::try_from(attempt.points / 2)
                                .unwrap_or(usize::MAX)
                                .max(1),
                            reason,
                        }
                    }
                    413 => return Decision::DeadLetter { reason },
                    // `Retry-After` counts only where the server asks the client to come back
                    // later (429 Too Many Requests, 503 Service Unavailable; RFC 9110 §10.2.3).
                    429 | 503 => (reason, *retry_after),
                    // 408 is a timeout. 401, 403 and 404 are about the token, org or bucket,
                    // not the points: dead-lettering everything until an operator fixes the
                    // configuration would empty the spool for nothing.
                    408 | 401 | 403 | 404 => (reason, None),
                    400..=499 => return Decision::DeadLetter { reason },
                    _ => (reason, None),
                }
            }
        };
        if attempt.stopping {
            return Decision::Keep { reason };
        }
        match retry_after {
            // The server said when to come back: no jitter (it spreads clients itself) and no
            // growth of the back-off. The floor keeps a `Retry-After: 0` or a past date from
            // becoming a busy loop.
            Some(d) => Decision::Retry {
                after: d.clamp(self.retry_min, self.retry_max),
                reason,
                pacing: Pacing::Server(d),
            },
            None => {
                // Full jitter in [backoff/2, backoff], so many hosts recovering from one
                // outage do not hit the server in lockstep.
                let half = self.backoff(attempt.failures) / 2;
                let jitter = if jitter.is_finite() {
                    jitter.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                Decision::Retry {
                    after: half + half.mul_f64(jitter),
                    reason,
                    pacing: Pacing::Backoff,
                }
            }
        }
    }

    /// The back-off after `failures` paced retries: `retry_min` doubled per failure, capped
    /// at `retry_max`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let mut d = self.retry_min;
        // 64 doublings take any non-zero delay past every configurable maximum.
        for _ in 0..failures.min(64) {
            d = d.saturating_mul(2).min(self.retry_max);
        }
        d.min(self.retry_max.max(self.retry_min))
    }
}

/// The delay a `Retry-After` value asks for (RFC 9110 §10.2.3): delta-seconds or an
/// HTTP-date, which counts from `now` and is zero once past. None when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still "a very long time"; the caller caps it.
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn policy() -> Policy {
        Policy {
            retry_min: MS(500),
            retry_max: MS(30_000),
        }
    }

    fn status(code: u16, retry_after: Option<Duration>) -> WriteResult {
        WriteResult::Status {
            code,
            text: " msg\n".into(),
            retry_after,
        }
    }

    fn transport(kind: TransportKind) -> WriteResult {
        WriteResult::Transport {
            kind,
            msg: "error sending request: connection refused".into(),
        }
    }

    fn attempt(failures: u32, points: u64) -> Attempt {
        Attempt {
            failures,
            points,
            stopping: false,
        }
    }

    fn retry(after: Duration, reason: &str, pacing: Pacing) -> Decision {
        Decision::Retry {
            after,
            reason: reason.into(),
            pacing,
        }
    }

    #[test]
    fn decision_table() {
        let p = policy();
        let backoff = Pacing::Backoff;
        let later = Some(Duration::from_secs(3));
        let cases: Vec<(&str, WriteResult, Attempt, Decision)> = vec![
            (
                "204",
                WriteResult::Accepted,
                attempt(5, 1000),
                Decision::Done,
            ),
            (
                "429 with Retry-After: the server's delay, no back-off growth",
                status(429, later),
                attempt(2, 1000),
                retry(MS(3_000), "HTTP 429: msg", Pacing::Server(MS(3_000))),
            ),
            (
                "503 with Retry-After",
                status(503, later),
                attempt(0, 10),
                retry(MS(3_000), "HTTP 503: msg", Pacing::Server(MS(3_000))),
            ),
            (
                "429 without Retry-After: back-off",
                status(429, None),
                attempt(0, 10),
                retry(MS(250), "HTTP 429: msg", backoff),
            ),
            (
                "Retry-After: 0 is floored at retry_min",
                status(429, Some(Duration::ZERO)),
                attempt(0, 10),
                retry(MS(500), "HTTP 429: msg", Pacing::Server(Duration::ZERO)),
            ),
            (
                "Retry-After of an hour is capped at retry_max",
                status(503, Some(Duration::from_secs(3600))),
                attempt(0, 10),
                retry(
                    MS(30_000),
                    "HTTP 503: msg",
                    Pacing::Server(Duration::from_secs(3600)),
                ),
            ),
            (
                "500 ignores a Retry-After and backs off, doubled per failure",
                status(500, later),
                attempt(2, 10),
                retry(MS(1_000), "HTTP 500: msg", backoff),
            ),
            (
                "502 backs off, capped at retry_max",
                status(502, None),
                attempt(20, 10),
                retry(MS(15_000), "HTTP 502: msg", backoff),
            ),
            (
                "400 partial write: the data is refused",
                status(400, None),
                attempt(0, 1000),
                Decision::DeadLetter {
                    reason: "HTTP 400: msg".into(),
                },
            ),
            (
                "422 unprocessable",
                status(422, None),
                attempt(0, 1000),
                Decision::DeadLetter {
                    reason: "HTTP 422: msg".into(),
                },
            ),
            (
                "413 on 1000 points: split in half",
                status(413, None),
                attempt(0, 1000),
                Decision::Split {
                    limit: 500,
                    reason: "HTTP 413: msg".into(),
                },
            ),
            (
                "413 on 3 points",
                status(413, None),
                attempt(0, 3),
                Decision::Split {
                    limit: 1,
                    reason: "HTTP 413: msg".into(),
                },
            ),
            (
                "413 on a 1-line batch: nothing left to split",
                status(413, None),
                attempt(0, 1),
                Decision::DeadLetter {
                    reason: "HTTP 413: msg".into(),
                },
            ),
            (
                "401: the token, not the data; retried",
                status(401, None),
                attempt(0, 10),
                retry(MS(250), "HTTP 401: msg", backoff),
            ),
            (
                "403: retried",
                status(403, later),
                attempt(1, 10),
                retry(MS(500), "HTTP 403: msg", backoff),
            ),
            (
                "404 (bucket missing): retried",
                status(404, None),
                attempt(0, 10),
                retry(MS(250), "HTTP 404: msg", backoff),
            ),
            (
                "408 request timeout: retried",
                status(408, None),
                attempt(0, 10),
                retry(MS(250), "HTTP 408: msg", backoff),
            ),
            (
                "connection refused: retried with back-off",
                transport(TransportKind::Connect),
                attempt(3, 10),
                retry(
                    MS(2_000),
                    "error sending request: connection refused",
                    backoff,
                ),
            ),
            (
                "timeout: retried",
                transport(TransportKind::Timeout),
                attempt(0, 10),
                retry(
                    MS(250),
                    "error sending request: connection refused",
                    backoff,
                ),
            ),
        ];
        for (what, result, a, want) in cases {
            assert_eq!(p.decide(&result, a, 0.0), want, "{what}");
        }
    }

    #[test]
    fn stopping_keeps_what_would_be_retried_but_still_splits_and_dead_letters() {
        let p = policy();
        let stopping = Attempt {
            failures: 0,
            points: 10,
            stopping: true,
        };
        for r in [
            status(500, None),
            status(429, Some(Duration::from_secs(1))),
            status(401, None),
            transport(TransportKind::Connect),
        ] {
            assert!(
                matches!(p.decide(&r, stopping, 0.5), Decision::Keep { .. }),
                "{r:?}"
            );
        }
        assert!(matches!(
            p.decide(&status(400, None), stopping, 0.5),
            Decision::DeadLetter { .. }
        ));
        assert!(matches!(
            p.decide(&status(413, None), stopping, 0.5),
            Decision::Split { limit: 5, .. }
        ));
        assert_eq!(
            p.decide(&WriteResult::Accepted, stopping, 0.5),
            Decision::Done
        );
    }

    #[test]
    fn backoff_jitter_stays_in_the_upper_half() {
        let p = policy();
        let r = transport(TransportKind::Other);
        for (jitter, want) in [
            (0.0, MS(1_000)),
            (0.5, MS(1_500)),
            (0.999_999, MS(2_000)),
            // Out-of-range jitter is clamped rather than trusted.
            (7.0, MS(2_000)),
            (-1.0, MS(1_000)),
            (f64::NAN, MS(1_000)),
        ] {
            let Decision::Retry { after, .. } = p.decide(&r, attempt(2, 1), jitter) else {
                panic!("retry expected");
            };
            let diff = after.abs_diff(want);
            assert!(diff <= MS(1), "jitter {jitter}: {after:?}, want {want:?}");
        }
    }

    #[test]
    fn backoff_doubles_from_min_to_max() {
        let p = policy();
        let got: Vec<u128> = (0..9).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(
            got,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(p.backoff(u32::MAX), MS(30_000));
        let huge = Policy {
            retry_min: Duration::MAX / 2,
            retry_max: Duration::MAX,
        };
        assert_eq!(huge.backoff(3), Duration::MAX, "no overflow");
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // RFC 9110's example date is 784111777; each of its three forms, 10 s after `now`.
        for date in [
            "Sun, 06 Nov 1994 08:49:47 GMT",
            "Sunday, 06-Nov-94 08:49:47 GMT",
            "Sun Nov  6 08:49:47 1994",
        ] {
            assert_eq!(
                parse_retry_after(date, now),
                Some(Duration::from_secs(10)),
                "{date}"
            );
        }
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:27 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-1", "1.5", "soon"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
