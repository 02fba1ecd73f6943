//! The collector against an independent Modbus server: pymodbus 3.0 (Debian
//! `python3-pymodbus`, run with `/usr/bin/python3`). The server's words are computed in
//! Python with `struct` for every data type in every byte order, so a decoding mistake in
//! coolantd cannot hide behind the same mistake in its encoder.

use coolantd_testkit::modbus_common as common;
use coolantd_testkit::pymodbus_map;

use common::{free_port, have_python_modules, tcp_config};
use coolantd::collect::modbus::ModbusCdu;
use coolantd::model::{Role, SensorFault};
use pymodbus_map::{assert_full_sample, fixture, value, PYTHON};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The pymodbus server process; killed on drop.
struct PyServer {
    child: Child,
}

impl PyServer {
    fn start(port: u16, map: &Path) -> PyServer {
        let child = Command::new(PYTHON)
            .arg(coolantd_testkit::python_script("pymodbus_cdu.py"))
            .arg(port.to_string())
            .arg(map)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("/usr/bin/python3 starts");
        let server = PyServer { child };
        // pymodbus takes about a second to import; wait (bounded) until it accepts.
        for _ in 0..150 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pymodbus server did not accept on port {port} within 7.5 s");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn decodes_every_type_and_order_from_pymodbus() {
    if !have_python_modules("pymodbus", "python3-pymodbus") {
        return;
    }
    let fx = fixture("decode");
    let port = free_port();
    let _server = PyServer::start(port, &fx.map);
    let mut cdu = ModbusCdu::new(&tcp_config("py", port, 1000), fx.profile.clone());
    let s = cdu.poll(Duration::from_secs(1)).await;
    assert_full_sample(&s, &fx);

    // Writes: a FLOAT32 CDAB (two registers) and a UINT16, each read back by the collector.
    cdu.write(Role::PumpSpeedCommand, 63.5)
        .await
        .expect("pump write");
    cdu.write(Role::Watchdog, 4242.0).await.expect("watchdog");
    let s = cdu.poll(Duration::from_secs(2)).await;
    assert_eq!(value(&s, "pump_cmd"), &Ok(63.5));
    assert_eq!(value(&s, "watchdog"), &Ok(4242.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn survives_a_server_restart() {
    if !have_python_modules("pymodbus", "python3-pymodbus") {
        return;
    }
    let fx = fixture("restart");
    let port = free_port();
    let mut server = PyServer::start(port, &fx.map);
    let mut cdu = ModbusCdu::new(&tcp_config("py", port, 300), fx.profile.clone());
    cdu.set_backoff(Duration::from_millis(100), Duration::from_millis(400));
    let s = cdu.poll(Duration::ZERO).await;
    assert_eq!(value(&s, "int16_abcd"), &Ok(-1234.0));

    server.stop();
    for _ in 0..3 {
        let s = cdu.poll(Duration::ZERO).await;
        for r in &s.registers {
            assert!(
                matches!(
                    r.value,
                    Err(SensorFault::Transport { .. } | SensorFault::Timeout)
                ),
                "{}: {:?} from a stopped server",
                r.name,
                r.value
            );
        }
    }
    assert!(!cdu.is_connected());
    assert!(cdu.last_error().is_some());

    let _server = PyServer::start(port, &fx.map);
    let mut back = false;
    for _ in 0..40 {
        let s = cdu.poll(Duration::ZERO).await;
        if value(&s, "int16_abcd") == &Ok(-1234.0) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "collector did not reconnect within 4 s of the restart"
    );
    assert!(cdu.is_connected());
    assert!(cdu.stats().connects >= 2, "{:?}", cdu.stats());
}
