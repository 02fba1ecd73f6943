//! Modbus collector costs: decoding a whole sim-cdu profile's words, and one full poll of the
//! simulated CDU over loopback TCP.
//!
//! `cargo bench --bench modbus -- --warm-up-time 1 --measurement-time 3`

use coolantd_testkit::modbus_common as common;

use common::{sim_profile_path, tcp_config, MapState};
use coolantd::collect::modbus::decode::{decode_bit, decode_words, encode, Encoded};
use coolantd::collect::modbus::ModbusCdu;
use coolantd::profile::CduProfile;
use coolantd::sim::CduState;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let profile = Arc::new(CduProfile::load(&sim_profile_path()).expect("sim-cdu.toml loads"));
    let state = MapState::full();
    let raw: Vec<Encoded> = profile
        .registers
        .iter()
        .map(|r| {
            let v = r.role.and_then(|role| state.read(role)).unwrap_or(0.0);
            encode(r, v).expect("state values encode")
        })
        .collect();

    c.bench_function("decode_sim_cdu_profile", |b| {
        b.iter(|| {
            let mut sum = 0.0;
            for (reg, enc) in profile.registers.iter().zip(&raw) {
                sum += match enc {
                    Encoded::Bit(bit) => decode_bit(*bit),
                    Encoded::Words(w) => decode_words(reg, black_box(w)).unwrap_or(f64::NAN),
                };
            }
            black_box(sum)
        })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let shared: Arc<Mutex<dyn CduState>> = Arc::new(Mutex::new(MapState::full()));
    let (addr, task) = rt
        .block_on(coolantd::sim::cdu_server::spawn(
            "127.0.0.1:0",
            Arc::clone(&profile),
            shared,
        ))
        .expect("server binds");
    let mut cdu = ModbusCdu::new(&tcp_config("bench", addr.port(), 1000), profile);
    let first = rt.block_on(cdu.poll(Duration::ZERO));
    assert!(first.registers.iter().all(|r| r.value.is_ok()), "{first:?}");
    c.bench_function("poll_sim_cdu_loopback_tcp", |b| {
        b.iter(|| black_box(rt.block_on(cdu.poll(Duration::ZERO))))
    });
    task.abort();
}

criterion_group!(benches, bench);
criterion_main!(benches);
