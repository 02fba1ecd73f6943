//! The collector over Modbus RTU against an independent serial peer: a pymodbus 3.0 RTU
//! server (Debian `python3-pymodbus`, `python3-serial`, `python3-serial-asyncio`) on one end
//! of a virtual serial line made by `socat` (Debian `socat`), coolantd on the other end.
//! The register map is the one the TCP test serves (every data type in every byte order),
//! so RTU must decode exactly what TCP decodes.

use coolantd_testkit::modbus_common as common;
use coolantd_testkit::pymodbus_map;

use common::{have_peer, have_python_modules};
use coolantd::collect::modbus::ModbusCdu;
use coolantd::config::CduConfig;
use coolantd::model::{CduSample, Role, SensorFault};
use pymodbus_map::{assert_full_sample, fixture, value, Fixture, PYTHON};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOCAT: &str = "/usr/bin/socat";

/// The unit id the server answers to. Not 1, so that a client silently falling back to a
/// default unit id would fail the test.
const UNIT: u8 = 17;

/// True when pymodbus can serve a serial line (it needs pyserial and pyserial-asyncio);
/// otherwise see `common::peer_missing`.
fn have_pymodbus_serial() -> bool {
    have_python_modules(
        "serial, serial_asyncio, pymodbus.server",
        "python3-pymodbus python3-serial python3-serial-asyncio",
    )
}

/// Waits (bounded) for `cond`, polling every 20 ms.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A virtual null-modem cable: two pseudo-terminals joined by socat; killed on drop.
struct SerialLine {
    child: Child,
    /// The server's end.
    a: PathBuf,
    /// The collector's end.
    b: PathBuf,
}

impl SerialLine {
    fn start(dir: &Path) -> SerialLine {
        let (a, b) = (dir.join("a"), dir.join("b"));
        let child = Command::new(SOCAT)
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat starts");
        let line = SerialLine { child, a, b };
        wait_for(
            "socat creates both pty links",
            Duration::from_secs(5),
            || line.a.exists() && line.b.exists(),
        );
        line
    }
}

impl Drop for SerialLine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pymodbus RTU server on a serial device; killed on drop.
struct RtuServer {
    child: Child,
}

impl RtuServer {
    fn start(device: &Path, map: &Path) -> RtuServer {
        let child = Command::new(PYTHON)
            .arg(coolantd_testkit::python_script("pymodbus_cdu.py"))
            .args(["--rtu"])
            .arg(device)
            .args(["--baud", "19200", "--parity", "N", "--stopbits", "2"])
            .args(["--unit", &UNIT.to_string()])
            .arg(map)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("/usr/bin/python3 starts");
        let server = RtuServer { child };
        // There is no port to probe: the server is up once it holds the pty open (pyserial
        // flushes the input buffer on open, so nothing sent earlier is answered late).
        let pts = std::fs::canonicalize(device).expect("the pty link resolves");
        let fds = PathBuf::from(format!("/proc/{}/fd", server.child.id()));
        wait_for(
            "pymodbus opens the serial device",
            Duration::from_secs(10),
            || {
                std::fs::read_dir(&fds).is_ok_and(|d| {
                    d.flatten()
                        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == pts))
                })
            },
        );
        server
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RtuServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `[[cdu]]` table as an operator writes it: 19200 baud 8N2, the framing Modbus over
/// Serial Line V1.02 §2.5.1 prescribes when no parity is used. Not the default 8E1: a pty
/// has no line to carry a parity bit, Linux drops PARENB from its termios, and pyserial then
/// fails its second and later opens with EINVAL (seen on kernel 6.18 with pyserial 3.5).
fn rtu_config(device: &Path, unit_id: u8, timeout_ms: u64) -> CduConfig {
    let text = format!(
        "name = \"rtu-cdu\"\nprofile = \"pymodbus-test\"\ntransport = \"rtu\"\n\
         device = \"{}\"\nbaud = 19200\nparity = \"none\"\ndata_bits = 8\nstop_bits = 2\n\
         unit_id = {unit_id}\ntimeout_ms = {timeout_ms}\n",
        device.display()
    );
    toml::from_str(&text).expect("the generated [[cdu]] table is valid")
}

/// Everything a test needs: the register map, the line and the server.
struct Rig {
    // Field order is drop order: the server and the line go before the map's directory.
    server: RtuServer,
    line: SerialLine,
    fx: Fixture,
}

fn rig(tag: &str) -> Rig {
    let fx = fixture(&format!("rtu-{tag}"));
    let line = SerialLine::start(&fx.dir);
    let server = RtuServer::start(&line.a, &fx.map);
    Rig { server, line, fx }
}

/// True when every register failed for lack of an answer (never a value, never a decode
/// error), and at least one of them timed out on the wire.
fn all_unanswered(s: &CduSample) -> bool {
    let silent = s.registers.iter().all(|r| {
        matches!(
            r.value,
            Err(SensorFault::Timeout | SensorFault::Transport { .. })
        )
    });
    silent
        && s.registers
            .iter()
            .any(|r| r.value == Err(SensorFault::Timeout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn rtu_decodes_every_type_and_order_and_writes() {
    if !have_peer(SOCAT, "socat") || !have_pymodbus_serial() {
        return;
    }
    let rig = rig("decode");
    let mut cdu = ModbusCdu::new(&rtu_config(&rig.line.b, UNIT, 1000), rig.fx.profile.clone());
    assert_eq!(cdu.endpoint(), rig.line.b.display().to_string());

    // Several polls back to back: RTU frames must stay in step (no stale reply shifts the
    // answers by one request).
    for i in 0..3 {
        let s = cdu.poll(Duration::from_secs(i)).await;
        assert_full_sample(&s, &rig.fx);
    }
    assert_eq!(cdu.stats().timeouts, 0, "{:?}", cdu.stats());

    // A FLOAT32 CDAB (function 16, two registers) and a UINT16 (function 6), each read back.
    cdu.write(Role::PumpSpeedCommand, 63.5)
        .await
        .expect("pump write over RTU");
    cdu.write(Role::Watchdog, 4242.0)
        .await
        .expect("watchdog write over RTU");
    let s = cdu.poll(Duration::from_secs(4)).await;
    assert_eq!(value(&s, "pump_cmd"), &Ok(63.5));
    assert_eq!(value(&s, "watchdog"), &Ok(4242.0));
    assert_eq!(cdu.stats().connects, 1, "{:?}", cdu.stats());
    assert_eq!(cdu.stats().writes, 2, "{:?}", cdu.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn rtu_wrong_unit_times_out_and_reopens_after_server_restart() {
    if !have_peer(SOCAT, "socat") || !have_pymodbus_serial() {
        return;
    }
    let mut rig = rig("restart");

    // A slave on RS-485 ignores frames for other addresses: only timeouts, no values.
    let mut wrong = ModbusCdu::new(
        &rtu_config(&rig.line.b, UNIT + 1, 200),
        rig.fx.profile.clone(),
    );
    let s = wrong.poll(Duration::ZERO).await;
    assert!(all_unanswered(&s), "wrong unit id: {s:?}");
    assert!(wrong.stats().timeouts >= 1, "{:?}", wrong.stats());
    assert!(!wrong.is_connected());
    let reason = wrong.last_error().expect("a timeout is reported");
    assert!(reason.contains("timed out after 200 ms"), "{reason}");
    drop(wrong);

    // The right unit id on the same line gets answers.
    let mut cdu = ModbusCdu::new(&rtu_config(&rig.line.b, UNIT, 200), rig.fx.profile.clone());
    cdu.set_backoff(Duration::from_millis(50), Duration::from_millis(200));
    let s = cdu.poll(Duration::ZERO).await;
    assert_eq!(value(&s, "int16_abcd"), &Ok(-1234.0), "{s:?}");

    // The server goes away; the line stays. Polls fail register by register, and the
    // collector closes the port and retries with backoff instead of hanging.
    rig.server.stop();
    let mut saw_timeout = false;
    for _ in 0..3 {
        let s = cdu.poll(Duration::ZERO).await;
        for r in &s.registers {
            assert!(
                matches!(
                    r.value,
                    Err(SensorFault::Timeout | SensorFault::Transport { .. })
                ),
                "{}: {:?} from a stopped server",
                r.name,
                r.value
            );
        }
        saw_timeout |= s
            .registers
            .iter()
            .any(|r| r.value == Err(SensorFault::Timeout));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(saw_timeout, "a silent line must surface as timeouts");
    assert!(!cdu.is_connected());
    let connects_before = cdu.stats().connects;

    rig.server = RtuServer::start(&rig.line.a, &rig.fx.map);
    let mut back = None;
    for _ in 0..40 {
        let s = cdu.poll(Duration::ZERO).await;
        if value(&s, "int16_abcd") == &Ok(-1234.0) {
            back = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = back.expect("the collector reads again within a few seconds of the restart");
    assert_full_sample(&s, &rig.fx);
    assert!(cdu.is_connected());
    assert!(
        cdu.stats().connects > connects_before,
        "the serial port was reopened: {:?}",
        cdu.stats()
    );
    cdu.write(Role::Watchdog, 99.0)
        .await
        .expect("write after the restart");
}

/// The Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF; Modbus over Serial
/// Line V1.02 §6.2.2), low byte first on the wire.
fn crc16(frame: &[u8]) -> [u8; 2] {
    let mut crc: u16 = 0xFFFF;
    for &b in frame {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc.to_le_bytes()
}

/// A well-formed reply of unit `UNIT` to `rq`, carrying all-zero data.
fn zero_reply(rq: &coolantd::collect::modbus::ReadRequest) -> Vec<u8> {
    use coolantd::profile::cdu::RegisterKind;
    let (function, bytes) = match rq.kind {
        RegisterKind::Coil => (1, rq.count.div_ceil(8)),
        RegisterKind::Discrete => (2, rq.count.div_ceil(8)),
        RegisterKind::Holding => (3, rq.count * 2),
        RegisterKind::Input => (4, rq.count * 2),
    };
    let mut frame = vec![
        UNIT,
        function,
        u8::try_from(bytes).expect("a test request fits"),
    ];
    frame.resize(frame.len() + usize::from(bytes), 0);
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn rtu_reopen_discards_a_late_reply_received_while_closed() {
    if !have_peer(SOCAT, "socat") || !have_pymodbus_serial() {
        return;
    }
    let mut rig = rig("late");
    let mut cdu = ModbusCdu::new(&rtu_config(&rig.line.b, UNIT, 200), rig.fx.profile.clone());
    cdu.set_backoff(Duration::from_millis(50), Duration::from_millis(200));
    let s = cdu.poll(Duration::ZERO).await;
    assert_full_sample(&s, &rig.fx);

    rig.server.stop();
    let s = cdu.poll(Duration::ZERO).await;
    assert!(all_unanswered(&s), "stopped server: {s:?}");
    assert!(!cdu.is_connected());

    // A slow CDU's reply to the timed-out request lands while the collector's port is
    // closed. It is well formed, so only discarding it on reopen keeps it from being taken
    // as the answer to the next request.
    {
        use std::io::Write as _;
        let mut a = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&rig.line.a)
            .expect("the server's end of the line opens");
        a.write_all(&zero_reply(&cdu.read_plan()[0]))
            .expect("the late reply is sent");
        a.flush().expect("the late reply is flushed");
        // socat forwards it to the collector's end (one read-write cycle).
        std::thread::sleep(Duration::from_millis(100));
    }

    rig.server = RtuServer::start(&rig.line.a, &rig.fx.map);
    let mut first = None;
    for _ in 0..40 {
        let s = cdu.poll(Duration::ZERO).await;
        if s.registers.iter().any(|r| r.value.is_ok()) {
            first = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = first.expect("the collector reads again within a few seconds of the restart");
    // Every value of the first poll with values is the server's, not the late reply's zeros.
    assert_full_sample(&s, &rig.fx);
}
