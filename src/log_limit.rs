//! Rate-limited warnings: [`log_limited!`](crate::log_limited) writes a few lines per call
//! site every 10 s, then one summary line with the count ("… and 4,999 more in the last
//! 10 s"). It sits at the bottom of the crate because the sinks, the links and the service
//! all use it; `service::logging` chooses where the lines go.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// How long one rate-limiting window lasts.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// How many lines one call site may write per window before it is summarised.
pub const RATE_BURST: u32 = 5;

/// The rate limit of one log call site; see [`log_limited!`](crate::log_limited). A
/// `static`, so that it lives as long as the program and can be found by the thread that
/// writes the summaries of windows that ended without a further line.
pub struct RateLimit {
    what: &'static str,
    window: Mutex<Option<Window>>,
    registered: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Every call site that has logged, for [`flush_suppressed`].
static LIMITS: Mutex<Vec<&'static RateLimit>> = Mutex::new(Vec::new());

impl RateLimit {
    /// `what` names the line in the summary; the macro passes the log message.
    pub const fn new(what: &'static str) -> RateLimit {
        RateLimit {
            what,
            window: Mutex::new(None),
            registered: AtomicBool::new(false),
        }
    }

    /// Whether the line may be written now. Writes the summary of the previous window
    /// first when that window suppressed lines.
    pub fn admit(&'static self) -> bool {
        if !self.registered.swap(true, Ordering::Relaxed) {
            LIMITS.lock().unwrap_or_else(|e| e.into_inner()).push(self);
        }
        let (log, summary) = self.admit_at(Instant::now());
        if let Some(n) = summary {
            summarise(self.what, n);
        }
        log
    }

    /// [`RateLimit::admit`] at `now`, without writing: whether to log, and the count of
    /// lines the window that just ended suppressed.
    pub fn admit_at(&self, now: Instant) -> (bool, Option<u64>) {
        let mut guard = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let mut summary = None;
        let w = guard.get_or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.start) >= RATE_WINDOW {
            summary = (w.suppressed > 0).then_some(w.suppressed);
            *w = Window {
                start: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged < RATE_BURST {
            w.logged += 1;
            (true, summary)
        } else {
            w.suppressed += 1;
            (false, summary)
        }
    }

    /// Ends a window that is over at `now` and returns how many lines it suppressed, if any.
    pub fn flush_at(&self, now: Instant) -> Option<u64> {
        let mut guard = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let w = (*guard)?;
        if now.saturating_duration_since(w.start) < RATE_WINDOW {
            return None;
        }
        *guard = None;
        (w.suppressed > 0).then_some(w.suppressed)
    }
}

/// Writes the summary line of a window that suppressed `n` lines of `what`.
fn summarise(what: &str, n: u64) {
    tracing::warn!(
        suppressed = n,
        "{what}: … and {} more in the last {} s",
        thousands(n),
        RATE_WINDOW.as_secs()
    );
}

/// `4999` → `4,999`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes the summaries of windows that ended without a further line (a flood that
/// stopped), so that no suppressed line goes uncounted.
pub fn flush_suppressed() {
    let now = Instant::now();
    let limits: Vec<&'static RateLimit> = LIMITS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for l in limits {
        if let Some(n) = l.flush_at(now) {
            summarise(l.what, n);
        }
    }
}

/// Starts the thread that calls [`flush_suppressed`] every second. A plain thread, so that
/// it works before and after the tokio runtime; if it cannot start, summaries still come
/// with the next line of each call site.
pub fn start_summaries() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("log-summaries".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_secs(1));
                flush_suppressed();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the log summary thread; suppressed-line counts come with the next line");
        }
    });
}

/// Logs like `tracing::warn!` (or any level), at most [`RATE_BURST`] times per
/// [`RATE_WINDOW`] for this call site; the rest are counted and summarised. The message must
/// be a literal; fields come after it:
/// `log_limited!(warn, "MQTT command rejected", reason = %reason)`. Never use it for alarms.
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $msg:literal $(, $($field:tt)+)?) => {{
        static LIMIT: $crate::log_limit::RateLimit =
            $crate::log_limit::RateLimit::new($msg);
        if LIMIT.admit() {
            ::tracing::$level!($($($field)+ ,)? $msg);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_line_is_limited_per_window_and_counted() {
        let l = RateLimit::new("flood");
        let t0 = Instant::now();
        let mut logged = 0;
        for i in 0..5_000u32 {
            let (log, summary) = l.admit_at(t0 + Duration::from_micros(u64::from(i)));
            assert_eq!(summary, None);
            logged += u32::from(log);
        }
        assert_eq!(logged, RATE_BURST);
        // Nothing to flush while the window is open; once it is over, the count comes out.
        assert_eq!(l.flush_at(t0 + Duration::from_secs(9)), None);
        assert_eq!(
            l.flush_at(t0 + RATE_WINDOW),
            Some(5_000 - u64::from(RATE_BURST))
        );
        assert_eq!(l.flush_at(t0 + RATE_WINDOW * 2), None);
        // A later line opens a new window and is written.
        assert_eq!(l.admit_at(t0 + RATE_WINDOW * 3), (true, None));
    }

    #[test]
    fn the_next_line_reports_the_previous_window() {
        let l = RateLimit::new("flood");
        let t0 = Instant::now();
        for _ in 0..RATE_BURST + 3 {
            l.admit_at(t0);
        }
        assert_eq!(l.admit_at(t0 + RATE_WINDOW), (true, Some(3)));
        assert_eq!(thousands(4_999), "4,999");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
