//! sd_notify against a real unix datagram socket bound by the test, standing in for systemd's
//! notification socket (a path socket and an abstract one, as systemd may use either).

use coolantd::service::notify::{monotonic_usec, Notifier};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A bound receiving socket in a private temporary folder, removed on drop.
struct Receiver {
    sock: UnixDatagram,
    _dir: coolantd_testkit::TempDir,
}

impl Receiver {
    fn path(tag: &str) -> (Receiver, String) {
        let dir = coolantd_testkit::TempDir::new(&format!("notify-{tag}"));
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let p = path.to_str().expect("UTF-8 temp path").to_string();
        (Receiver { sock, _dir: dir }, p)
    }

    fn recv(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).expect("a notification arrives");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")
    }
}

#[test]
fn every_message_arrives_as_one_datagram() {
    let (rx, path) = Receiver::path("all");
    let n = Notifier::new(&path).expect("notifier for a path socket");
    assert!(n.is_enabled());

    n.ready().expect("send READY");
    assert_eq!(rx.recv(), "READY=1");
    n.status("running: 8 GPUs,\n2 CDUs").expect("send STATUS");
    assert_eq!(rx.recv(), "STATUS=running: 8 GPUs, 2 CDUs");
    n.watchdog().expect("send WATCHDOG");
    assert_eq!(rx.recv(), "WATCHDOG=1");

    let before = monotonic_usec().expect("monotonic clock");
    n.reloading().expect("send RELOADING");
    let after = monotonic_usec().expect("monotonic clock");
    let msg = rx.recv();
    let mut lines = msg.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC line in {msg:?}"));
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}"
    );
    assert_eq!(lines.next(), None);

    n.stopping().expect("send STOPPING");
    assert_eq!(rx.recv(), "STOPPING=1");
}

#[test]
fn abstract_sockets_are_addressed_with_at() {
    let name = format!("coolantd-test-notify-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let n = Notifier::new(&format!("@{name}")).expect("notifier for an abstract socket");
    n.ready().expect("send READY");
    let mut buf = [0u8; 64];
    let len = sock.recv(&mut buf).expect("a notification arrives");
    assert_eq!(&buf[..len], b"READY=1");
}

#[test]
fn a_missing_socket_is_an_error_not_a_hang_and_disabled_is_silent() {
    let (rx, path) = Receiver::path("gone");
    drop(rx);
    let n = Notifier::new(&path).expect("constructing does not connect");
    assert!(n.ready().is_err(), "sending to a removed socket fails");

    let off = Notifier::disabled();
    assert!(!off.is_enabled());
    off.ready().expect("no-op");
    off.reloading().expect("no-op");
}
