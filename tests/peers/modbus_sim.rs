//! The collector against the simulated CDU's Modbus TCP server, both over real loopback TCP:
//! every role of sim-cdu.toml decodes to what the state holds, writes are verified and
//! refused where they must be, and a server that goes away and comes back is reconnected.

use coolantd_testkit::modbus_common as common;

use common::{sim_profile_path, tcp_config, MapState};
use coolantd::collect::modbus::{CduError, ModbusCdu};
use coolantd::model::{Role, SensorFault};
use coolantd::profile::CduProfile;
use coolantd::sim::CduState;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn profile() -> Arc<CduProfile> {
    Arc::new(CduProfile::load(&sim_profile_path()).expect("sim-cdu.toml loads"))
}

async fn serve(
    addr: &str,
    state: &Arc<Mutex<MapState>>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let dyn_state: Arc<Mutex<dyn CduState>> = state.clone();
    coolantd::sim::cdu_server::spawn(addr, profile(), dyn_state)
        .await
        .expect("server binds")
}

#[tokio::test]
async fn collector_reads_every_role_and_writes_are_verified() {
    let state = Arc::new(Mutex::new(MapState::full()));
    let (addr, task) = serve("127.0.0.1:0", &state).await;
    let mut cdu = ModbusCdu::new(&tcp_config("sim", addr.port(), 500), profile());
    assert!(!cdu.is_connected(), "no IO before the first poll");

    let sample = cdu.poll(Duration::from_secs(3)).await;
    assert_eq!(sample.cdu, "sim");
    assert_eq!(sample.at, Duration::from_secs(3));
    assert_eq!(sample.registers.len(), 13);
    let expected = MapState::full();
    for role in Role::ALL {
        let got = sample.worst(role);
        let want = expected.values[&role];
        let got = got.unwrap_or_else(|| panic!("{role} missing: {sample:?}"));
        // Tenth-scaled registers carry one decimal; floats and bits are exact.
        assert!((got - want).abs() < 1e-6, "{role}: got {got}, want {want}");
    }
    assert!(cdu.is_connected());
    // One request per table: discrete, input, holding.
    assert_eq!(cdu.read_plan().len(), 3);

    // A verified write reaches the state.
    cdu.write(Role::PumpSpeedCommand, 72.3)
        .await
        .expect("write within limits");
    assert_eq!(
        state.lock().expect("lock").values[&Role::PumpSpeedCommand],
        72.3
    );
    cdu.write(Role::Watchdog, 8.0).await.expect("watchdog");
    assert_eq!(state.lock().expect("lock").values[&Role::Watchdog], 8.0);
    let after = cdu.poll(Duration::from_secs(4)).await;
    assert_eq!(after.worst(Role::PumpSpeedCommand), Some(72.3));

    // Outside the profile's limits: refused before anything goes on the wire.
    let before = cdu.stats().requests;
    let e = cdu
        .write(Role::PumpSpeedCommand, 10.0)
        .await
        .expect_err("under the limits");
    assert!(matches!(e, CduError::OutOfLimits { .. }), "{e}");
    assert!(e.to_string().contains("pump_speed_cmd"), "{e}");
    assert_eq!(cdu.stats().requests, before);

    // Inside the profile's limits but refused by the CDU: the exception comes back by name.
    state.lock().expect("lock").min_pump = 30.0;
    let e = cdu
        .write(Role::PumpSpeedCommand, 25.0)
        .await
        .expect_err("the CDU refuses");
    match &e {
        CduError::Exception { code, meaning, .. } => {
            assert_eq!(*code, 3);
            assert!(meaning.to_lowercase().contains("illegal data value"), "{e}");
        }
        other => panic!("expected an exception, got {other}"),
    }
    assert!(cdu.is_connected(), "an exception keeps the connection");

    // A role the profile cannot write.
    let e = cdu
        .write(Role::Flow, 1.0)
        .await
        .expect_err("flow is read-only");
    assert!(matches!(e, CduError::NotWritable { .. }), "{e}");
    task.abort();
}

#[tokio::test]
async fn collector_backs_off_and_reconnects() {
    let state = Arc::new(Mutex::new(MapState::full()));
    let (addr, task) = serve("127.0.0.1:0", &state).await;
    let mut cdu = ModbusCdu::new(&tcp_config("sim", addr.port(), 200), profile());
    cdu.set_backoff(Duration::from_millis(50), Duration::from_millis(200));
    assert!(cdu
        .poll(Duration::ZERO)
        .await
        .registers
        .iter()
        .all(|r| r.value.is_ok()));

    // Stop the server: its connection tasks end with it.
    task.abort();
    let _ = task.await;
    let mut faults = Vec::new();
    for _ in 0..3 {
        let s = cdu.poll(Duration::ZERO).await;
        for r in &s.registers {
            match &r.value {
                Ok(v) => panic!("{} read {v} from a stopped server", r.name),
                Err(f) => faults.push(f.clone()),
            }
        }
    }
    assert!(!cdu.is_connected());
    assert!(faults
        .iter()
        .all(|f| matches!(f, SensorFault::Transport { .. } | SensorFault::Timeout)));
    // While backing off the collector answers at once and says so.
    let s = cdu.poll(Duration::ZERO).await;
    if cdu.reconnect_in().is_some() {
        let msg = s.registers[0]
            .value
            .clone()
            .expect_err("still down")
            .to_string();
        assert!(msg.contains("reconnecting in"), "{msg}");
    }

    // Start again on the same port; the collector must come back on its own.
    let (_addr, task) = serve(&addr.to_string(), &state).await;
    let mut ok = false;
    for _ in 0..50 {
        let s = cdu.poll(Duration::ZERO).await;
        if s.registers.iter().all(|r| r.value.is_ok()) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "no reconnection within 2.5 s");
    assert!(cdu.stats().connects >= 2);
    task.abort();
}
