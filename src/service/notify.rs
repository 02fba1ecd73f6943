//! The systemd notification protocol (sd_notify(3)), written out: one datagram of
//! `KEY=VALUE` lines to the unix socket named by `NOTIFY_SOCKET`.
//!
//! Sending never blocks: the socket is non-blocking, so a stalled systemd costs the control
//! loop an error value, not a stalled tick. Outside systemd every call is a no-op.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends state changes to the service manager.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier for the socket named by `NOTIFY_SOCKET`, or a no-op one when the variable
    /// is unset or empty (not started by systemd, or `Type=` is not `notify`).
    pub fn from_env() -> io::Result<Notifier> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) if !path.is_empty() => match path.to_str() {
                Some(p) => Notifier::new(p),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET is not valid UTF-8",
                )),
            },
            _ => Ok(Notifier::disabled()),
        }
    }

    /// A notifier for an explicit socket: a file system path, or an abstract socket name
    /// written with a leading `@` (as systemd writes it into `NOTIFY_SOCKET`).
    pub fn new(socket: &str) -> io::Result<Notifier> {
        let addr = if let Some(name) = socket.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else if socket.starts_with('/') {
            SocketAddr::from_pathname(socket)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET must be an absolute path or an abstract name starting \
                     with @, got `{socket}`"
                ),
            ));
        };
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some((sock, addr)),
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// True when messages actually go somewhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends raw newline-separated `KEY=VALUE` assignments in one datagram.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        match &self.target {
            None => Ok(()),
            Some((sock, addr)) => sock.send_to_addr(state.as_bytes(), addr).map(|_| ()),
        }
    }

    /// Start-up is finished (`READY=1`); also used to end a reload.
    pub fn ready(&self) -> io::Result<()> {
        self.notify("READY=1")
    }

    /// A one-line status shown by `systemctl status`. Line feeds would start new
    /// assignments, so they are replaced by spaces.
    pub fn status(&self, text: &str) -> io::Result<()> {
        self.notify(&format!("STATUS={}", text.replace('\n', " ")))
    }

    /// Keeps the systemd watchdog from firing. Send only after a healthy control tick.
    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }

    /// The daemon begins to shut down (`STOPPING=1`).
    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }

    /// The daemon begins to reload its configuration. sd_notify(3) asks for the current
    /// `CLOCK_MONOTONIC` time with `RELOADING=1`, so that systemd can tell this reload
    /// from an earlier one. Send [`Notifier::ready`] when the reload is done.
    pub fn reloading(&self) -> io::Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            monotonic_usec()?
        ))
    }
}

/// `CLOCK_MONOTONIC` in microseconds. `std::time::Instant` reads the same clock but does not
/// expose its value, hence the direct call.
pub fn monotonic_usec() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(secs * 1_000_000 + nanos / 1_000)
}

/// The watchdog interval systemd expects (`WatchdogSec=`), from `WATCHDOG_USEC` and
/// `WATCHDOG_PID`; `None` when the watchdog is off or meant for another process. Ping at
/// half this interval, as sd_watchdog_enabled(3) recommends.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] from explicit values, for tests and for callers that read the
/// environment once at start-up.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_parsing() {
        let d = Some(Duration::from_secs(10));
        assert_eq!(watchdog_interval_from(Some("10000000"), None, 7), d);
        assert_eq!(watchdog_interval_from(Some("10000000"), Some("7"), 7), d);
        assert_eq!(watchdog_interval_from(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, Some("7"), 7), None);
    }

    #[test]
    fn relative_socket_paths_are_refused() {
        assert!(Notifier::new("run/notify").is_err());
        assert!(Notifier::disabled().ready().is_ok());
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_usec().expect("CLOCK_MONOTONIC is always available on Linux");
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_usec().expect("CLOCK_MONOTONIC is always available on Linux");
        assert!(b >= a + 2_000, "{a} -> {b}");
    }
}
