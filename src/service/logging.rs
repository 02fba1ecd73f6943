//! Log output: `tracing-subscriber` with an `EnvFilter` (`RUST_LOG` overrides
//! `[logging] level`), in the form that suits where stderr goes.
//!
//! - A terminal: colours and timestamps, for a person running `coolantd` by hand.
//! - The journal (systemd sets `JOURNAL_STREAM` to stderr's device:inode): plain lines with
//!   no colour and no timestamp (journald stamps every line), each prefixed with the syslog
//!   priority `<N>` so that `journalctl -p warning` and the red/yellow highlighting work.
//! - Anything else (a file, a pipe): plain lines with timestamps, no colour.
//! - `format = "json"`: one JSON object per line, for log shippers.
//!
//! Warnings that remote input can repeat at will (malformed MQTT commands, refused HTTP
//! connections, a sink failing on every tick) go through [`log_limited!`](crate::log_limited):
//! a few lines per call site every 10 s, then one summary line with the count ("… and 4,999
//! more in the last 10 s"). That keeps the log small enough for journald's own rate limit
//! never to swallow the alarm lines, which are never rate-limited. The limiter itself is in
//! [`crate::log_limit`], below the sinks that use it.

use crate::config::{LogFormat, LoggingConfig};
pub use crate::log_limit::{flush_suppressed, RateLimit, RATE_BURST, RATE_WINDOW};
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The concrete output style chosen from the configuration and the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Colours and timestamps.
    Terminal,
    /// `<N>`-prefixed plain lines without timestamps.
    Journal,
    /// Plain lines with timestamps.
    Plain,
    Json,
}

/// Picks the style. `text` never uses colour, even on a terminal.
pub fn choose_style(format: LogFormat, on_journal: bool, on_terminal: bool) -> Style {
    match format {
        LogFormat::Json => Style::Json,
        _ if on_journal => Style::Journal,
        LogFormat::Auto if on_terminal => Style::Terminal,
        LogFormat::Auto | LogFormat::Text => Style::Plain,
    }
}

/// True when stderr is the journal stream systemd connected (sd-daemon's documented check:
/// `JOURNAL_STREAM` holds the stream's `device:inode`, compared against stderr's, so that a
/// child whose stderr was redirected does not mistake itself for a journal writer).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // /proc/self/fd/2 resolves to stderr itself, so metadata() stats the open stream.
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// Builds the filter: `RUST_LOG` when set and valid, else the configured level, else `info`.
fn filter(cfg: &LoggingConfig) -> EnvFilter {
    if let Ok(f) = EnvFilter::try_from_default_env() {
        return f;
    }
    let f = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // hyper writes a WARN for every HTTP client that does not finish its request headers in
    // time: a slowloris attack would write one line per connection. Those closes are counted
    // in /metrics (`coolantd_http_connections_timed_out_total`) instead.
    match "hyper::proto::h1=error".parse() {
        Ok(d) => f.add_directive(d),
        Err(_) => f,
    }
}

/// Installs the global subscriber. Call once, early in `main`. A second call (tests, or a
/// subscriber installed elsewhere) leaves the first one in place.
pub fn init(cfg: &LoggingConfig) {
    let style = choose_style(
        cfg.format,
        stderr_is_journal(),
        std::io::stderr().is_terminal(),
    );
    // try_init also routes records of crates that log through the `log` facade (rumqttc,
    // tokio-modbus) into tracing, so they reach the same output and filter.
    let _ = subscriber(style, filter(cfg), std::io::stderr).try_init();
    crate::log_limit::start_summaries();
}

/// A subscriber of `style` writing to `writer`. Public so that tests can capture the output
/// with `tracing::subscriber::with_default` instead of a global subscriber.
pub fn subscriber<W>(
    style: Style,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync + 'static>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match style {
        Style::Terminal => Box::new(
            builder
                .with_ansi(true)
                .event_format(ClearLine(Format::default().with_ansi(true)))
                .finish(),
        ),
        Style::Plain => Box::new(builder.with_ansi(false).finish()),
        Style::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_ansi(false)
                .finish(),
        ),
        Style::Journal => Box::new(
            builder
                .with_ansi(false)
                .event_format(Journal(Format::default().without_time().with_ansi(false)))
                .finish(),
        ),
    }
}

/// Prefixes each line with its syslog priority, which journald strips and records as
/// `PRIORITY=` (systemd.exec(5), `SyslogLevelPrefix=`, on by default).
struct Journal(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // Priorities from syslog(3): err 3, warning 4, info 6, debug 7.
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// On a terminal the service loop keeps a live status line without a newline
/// (`service::daemon::serve`); each log line first returns to column 0 and erases it, so the two
/// are never glued together. The status line is redrawn on the next tick.
struct ClearLine(Format<Full>);

/// Carriage return and "erase entire line" (ECMA-48 EL with parameter 2).
pub const CLEAR_LINE: &str = "\r\x1b[2K";

impl<S, N> FormatEvent<S, N> for ClearLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        writer.write_str(CLEAR_LINE)?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn capture(style: Style, level: &str) -> String {
        let out = Capture::default();
        let sub = subscriber(style, EnvFilter::new(level), out.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(cdu = "cdu-a", register = 40001, "flow sensor timed out");
            tracing::debug!("hidden at info");
        });
        let bytes = out.0.lock().expect("test writer lock").clone();
        String::from_utf8(bytes).expect("log output is UTF-8")
    }

    #[test]
    fn only_the_limited_call_site_is_suppressed() {
        let out = Capture::default();
        let sub = subscriber(Style::Plain, EnvFilter::new("info"), out.clone());
        tracing::subscriber::with_default(sub, || {
            for i in 0..100 {
                crate::log_limited!(warn, "command rejected", n = i);
                if i % 10 == 0 {
                    tracing::warn!(alarm = "leak:cdu-a", "leak detected");
                }
            }
        });
        let bytes = out.0.lock().expect("test writer lock").clone();
        let s = String::from_utf8(bytes).expect("UTF-8");
        assert_eq!(
            s.matches("command rejected").count(),
            RATE_BURST as usize,
            "{s}"
        );
        assert_eq!(s.matches("leak detected").count(), 10, "{s}");
    }

    #[test]
    fn style_follows_format_and_environment() {
        assert_eq!(choose_style(LogFormat::Auto, false, true), Style::Terminal);
        assert_eq!(choose_style(LogFormat::Auto, false, false), Style::Plain);
        assert_eq!(choose_style(LogFormat::Auto, true, true), Style::Journal);
        assert_eq!(choose_style(LogFormat::Text, false, true), Style::Plain);
        assert_eq!(choose_style(LogFormat::Text, true, false), Style::Journal);
        assert_eq!(choose_style(LogFormat::Json, true, true), Style::Json);
    }

    #[test]
    fn journal_lines_carry_priority_and_no_timestamp_or_colour() {
        let s = capture(Style::Journal, "info");
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 1, "{s}");
        assert!(lines[0].starts_with("<4> WARN "), "{s}");
        assert!(lines[0].contains("cdu=\"cdu-a\" register=40001"), "{s}");
        assert!(!s.contains('\x1b'), "{s}");
    }

    #[test]
    fn json_lines_parse() {
        let s = capture(Style::Json, "debug");
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2, "{s}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON object");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["cdu"], "cdu-a");
        assert_eq!(v["register"], 40001);
        assert_eq!(v["message"], "flow sensor timed out");
    }

    #[test]
    fn plain_lines_have_no_colour() {
        let s = capture(Style::Plain, "info");
        assert!(s.contains("flow sensor timed out"), "{s}");
        assert!(!s.contains('\x1b'), "{s}");
    }

    #[test]
    fn terminal_lines_first_erase_the_status_line() {
        // A status line drawn without a newline, then a log line: the log line must start
        // by returning to column 0 and erasing it, or the two end up glued on one line.
        let s = capture(Style::Terminal, "info");
        assert!(s.starts_with(CLEAR_LINE), "{s:?}");
        assert_eq!(s.matches(CLEAR_LINE).count(), 1, "{s:?}");
    }
}
