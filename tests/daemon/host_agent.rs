//! The host agent, the real binary on simulated GPUs (`coolantd-agent`, which the unit runs;
//! `coolantd agent` where said), against a real Mosquitto: what it publishes (readings, retained facts and status, the last will), how it applies and
//! acknowledges a cap lease, hands over to its local guard when the lease runs out, stays
//! hands-off in dry run and restores the original limits on SIGTERM.

use coolantd::wire::{self, Cap, CapAck, CapLease, Facts, Readings, Status, VERSION};
use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::{free_port, repo_root, TempDir};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::process::Command;
use std::time::Duration;
use tokio::sync::mpsc;

pub(crate) const HOST: &str = "node07";
/// The agent's tick in these tests, ms.
pub(crate) const PERIOD_MS: u64 = 200;
/// Bound on anything the agent does once (start, connect, answer), not a speed target.
pub(crate) const BOUND: Duration = Duration::from_secs(20);
/// The simulated H200's limit before any cap, W (its profile's default).
const H200_DEFAULT_W: f32 = 700.0;

fn topic(kind: &str) -> String {
    format!("coolantd/v1/host/{HOST}/{kind}")
}

/// An agent configuration on simulated H200s, with its state in `dir`.
pub(crate) fn agent_config(dir: &TempDir, broker: u16, dry_run: bool) -> std::path::PathBuf {
    let root = repo_root();
    let text = format!(
        r#"
[site]
name = "rack1"
host = "{HOST}"
state_dir = {state:?}
profiles_dir = {profiles:?}
dry_run = {dry_run}

[gpus]
backend = "simulated"

[simulator]
gpus_per_host = 2
gpu_profile = "h200-sxm"
cdu_profile = "sim-cdu"
listen = "127.0.0.1:{sim_port}"
workload = {{ kind = "idle" }}

[mqtt]
host = "127.0.0.1"
port = {broker}
keep_alive_s = 5
reconnect_min_ms = 100

[agent]
period_ms = {PERIOD_MS}
"#,
        state = dir.0.join("state").display().to_string(),
        profiles = root.join("firmware-profiles").display().to_string(),
        sim_port = free_port(),
    );
    let path = dir.0.join("agent.toml");
    std::fs::write(&path, text).expect("write agent.toml");
    path
}

/// [`agent_config`] with every GPU at full load, the plant 50 × faster than real time and a
/// guard whose critical margin (29.9 K) a loaded GPU reaches within seconds.
pub(crate) fn hot_agent_config(dir: &TempDir, broker: u16) -> std::path::PathBuf {
    let path = agent_config(dir, broker, false);
    let text = std::fs::read_to_string(&path)
        .expect("read agent.toml")
        .replace(
            "workload = { kind = \"idle\" }",
            "workload = { kind = \"full\" }\ntime_scale = 50.0\ninitial_pump_pct = 20.0",
        )
        .replace(
            &format!("period_ms = {PERIOD_MS}"),
            &format!(
                "period_ms = {PERIOD_MS}\nguard_target_margin_k = 30.0\nguard_critical_margin_k = 29.9"
            ),
        );
    std::fs::write(&path, text).expect("write agent.toml");
    path
}

/// The agent's own binary, which `systemd/coolantd-agent.service` runs.
pub(crate) fn spawn_agent(config: &std::path::Path, extra: &[&str]) -> DaemonProcess {
    DaemonProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_coolantd-agent"))
            .arg("--config")
            .arg(config)
            .args(extra),
    )
}

/// The same agent as `coolantd agent`, the daemon binary's subcommand.
fn spawn_agent_subcommand(config: &std::path::Path) -> DaemonProcess {
    DaemonProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_coolantd"))
            .arg("agent")
            .arg("--config")
            .arg(config),
    )
}

/// A binary-safe subscriber: the wire format is protobuf, not text.
pub(crate) struct Wire {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
    task: tokio::task::JoinHandle<()>,
}

impl Wire {
    pub(crate) async fn connect(port: u16, id: &str) -> Wire {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.retain));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        client
            .subscribe(format!("coolantd/v1/host/{HOST}/+"), QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        tokio::time::timeout(Duration::from_secs(5), sub_rx.recv())
            .await
            .expect("SUBACK within 5 s");
        Wire { client, rx, task }
    }

    /// The next message on `kind`'s topic, decoded; panics after [`BOUND`].
    pub(crate) async fn next<M: wire::WireMessage>(
        &mut self,
        kind: &str,
        agent: &DaemonProcess,
    ) -> (M, bool) {
        let want = topic(kind);
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((t, payload, retain))) if t == want => {
                    let m = wire::decode::<M>(&payload)
                        .unwrap_or_else(|e| panic!("{t}: not a valid message: {e}"));
                    return (m, retain);
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("subscriber stopped"),
                Err(_) => panic!(
                    "no message on {want} within {BOUND:?}; log:\n{}",
                    agent.log()
                ),
            }
        }
    }

    /// Readings until one satisfies `pred`; panics after [`BOUND`].
    pub(crate) async fn readings_until(
        &mut self,
        agent: &DaemonProcess,
        what: &str,
        pred: impl Fn(&Readings) -> bool,
    ) -> Readings {
        let t0 = tokio::time::Instant::now();
        loop {
            let (r, _) = self.next::<Readings>("readings", agent).await;
            if pred(&r) {
                return r;
            }
            assert!(
                t0.elapsed() < BOUND,
                "no readings with {what}; log:\n{}",
                agent.log()
            );
        }
    }

    /// Drops what arrived so far, so the next message is one sent from now on.
    pub(crate) fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    pub(crate) async fn lease(&self, id: u64, lease_ms: u32, caps: &[(u32, f32)]) {
        let msg = CapLease {
            v: Some(VERSION),
            host: HOST.into(),
            id,
            lease_ms,
            caps: caps
                .iter()
                .map(|&(index, limit_w)| Cap { index, limit_w })
                .collect(),
        };
        let bytes = wire::encode(&msg).expect("a valid lease encodes");
        self.client
            .publish(topic("caps"), QoS::AtLeastOnce, false, bytes)
            .await
            .expect("queue the lease");
    }

    pub(crate) async fn ack(&mut self, id: u64, agent: &DaemonProcess) -> CapAck {
        loop {
            let (a, retained) = self.next::<CapAck>("acks", agent).await;
            assert!(!retained, "acks are not retained");
            if a.id == id {
                return a;
            }
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn limit(r: &Readings, index: u32) -> f32 {
    r.gpus
        .iter()
        .find(|g| g.index == index)
        .and_then(|g| g.limit_w)
        .unwrap_or_else(|| panic!("GPU {index} has no limit in {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_publishes_readings_facts_and_status_and_its_will() {
    publishes_readings_facts_and_status_and_its_will(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coolantd_agent_subcommand_publishes_the_same() {
    publishes_readings_facts_and_status_and_its_will(true).await;
}

async fn publishes_readings_facts_and_status_and_its_will(subcommand: bool) {
    let broker = Mosquitto::start();
    let dir = TempDir::new("agent-publish");
    let cfg = agent_config(&dir, broker.port(), false);
    let mut agent = if subcommand {
        spawn_agent_subcommand(&cfg)
    } else {
        spawn_agent(&cfg, &[])
    };
    let mut sub = Wire::connect(broker.port(), "test-publish").await;

    let (facts, retained) = sub.next::<Facts>("facts", &agent).await;
    assert!(retained || facts.host == HOST, "facts arrive");
    assert_eq!(facts.host, HOST);
    assert_eq!(facts.gpus.len(), 2, "{facts:?}");
    assert_eq!(facts.hash, Facts::content_hash(&facts.gpus));
    assert!(
        facts
            .gpus
            .iter()
            .all(|g| g.original_limit_w == H200_DEFAULT_W),
        "{facts:?}"
    );

    let mut seqs = Vec::new();
    let mut session = None;
    while seqs.len() < 5 {
        let (r, retained) = sub.next::<Readings>("readings", &agent).await;
        assert!(!retained, "readings are not retained");
        assert_eq!(r.host, HOST);
        assert_eq!(
            r.facts_hash, facts.hash,
            "readings name the facts they belong to"
        );
        assert_eq!(r.gpus.len(), 2);
        assert!(
            r.gpus
                .iter()
                .all(|g| g.core_c.is_some() && g.limit_w.is_some()),
            "{r:?}"
        );
        assert_eq!(
            *session.get_or_insert(r.session),
            r.session,
            "one session per start"
        );
        seqs.push(r.seq);
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "seq counts up by one per message: {seqs:?}"
    );

    // A late subscriber gets the retained facts and the online status at once.
    // The broker sends retained messages in its own order: take both as they come.
    let mut late = Wire::connect(broker.port(), "test-late").await;
    let (mut st, mut f2) = (None, None);
    let deadline = tokio::time::Instant::now() + BOUND;
    while st.is_none() || f2.is_none() {
        let (t, payload, retain) = tokio::time::timeout_at(deadline, late.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no retained status and facts; log:\n{}", agent.log()))
            .expect("subscriber running");
        if t == topic("status") {
            assert!(retain, "status is retained");
            st = Some(wire::decode::<Status>(&payload).expect("status decodes"));
        } else if t == topic("facts") {
            assert!(retain, "facts are retained");
            f2 = Some(wire::decode::<Facts>(&payload).expect("facts decode"));
        }
    }
    let st = st.expect("status seen");
    assert!(st.online && st.host == HOST, "{st:?}");
    assert_eq!(f2.expect("facts seen"), facts);

    // SIGKILL: no goodbye; the broker publishes the last will, retained.
    sub.drain();
    agent.kill();
    let (st, _) = sub.next::<Status>("status", &agent).await;
    assert!(!st.online, "the last will says offline: {st:?}");
    assert_eq!(st.session, session.expect("a session was seen"));
    let mut after = Wire::connect(broker.port(), "test-after").await;
    let (st, retained) = after.next::<Status>("status", &agent).await;
    assert!(retained && !st.online, "offline stays retained: {st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_applied_acked_then_handed_to_the_guard_and_sigterm_restores() {
    let broker = Mosquitto::start();
    let dir = TempDir::new("agent-lease");
    let cfg = agent_config(&dir, broker.port(), false);
    let mut agent = spawn_agent(&cfg, &[]);
    let mut sub = Wire::connect(broker.port(), "test-lease").await;
    let _ = sub.next::<Facts>("facts", &agent).await;
    let first = sub
        .readings_until(&agent, "GPU 0 at its default", |r| {
            limit(r, 0) == H200_DEFAULT_W
        })
        .await;
    assert_eq!(limit(&first, 1), H200_DEFAULT_W);

    // GPU 0 capped at 400 W, GPU 5 does not exist, GPU 1 asked for more than the board takes.
    let lease_ms = 2_000;
    sub.lease(41, lease_ms, &[(0, 400.0), (5, 400.0), (1, 1_000.0)])
        .await;
    let ack = sub.ack(41, &agent).await;
    assert_eq!(ack.host, HOST);
    assert!(!ack.dry_run);
    let r0 = ack
        .results
        .iter()
        .find(|r| r.index == 0)
        .expect("GPU 0 answered");
    assert_eq!(
        r0.enforced_w,
        Some(400.0),
        "the enforced limit read back: {ack:?}"
    );
    let refusal = |i: u32| {
        ack.results
            .iter()
            .find(|r| r.index == i)
            .and_then(|r| r.refusal_kind())
    };
    assert_eq!(refusal(5), Some(wire::Refusal::UnknownGpu), "{ack:?}");
    assert_eq!(refusal(1), Some(wire::Refusal::OutOfRange), "{ack:?}");
    let recorded = std::fs::read_to_string(dir.0.join("state/power-limits.json"))
        .expect("the original limit is recorded before the first cap");
    assert!(recorded.contains("700"), "{recorded}");

    let capped = sub
        .readings_until(&agent, "GPU 0 at 400 W", |r| limit(r, 0) == 400.0)
        .await;
    assert_eq!(limit(&capped, 1), H200_DEFAULT_W, "GPU 1 untouched");

    // No renewal: the lease ends and the guard takes over from 400 W, raising it at its own
    // bounded rate (10 W/s by default), never at once back to 700 W.
    agent.wait_line("the lease-expiry alarm", BOUND, |l| {
        l.contains("ALARM") && l.contains("lease")
    });
    sub.drain();
    let ticks = 10;
    let mut seen = Vec::new();
    for _ in 0..ticks {
        let (r, _) = sub.next::<Readings>("readings", &agent).await;
        seen.push(limit(&r, 0));
    }
    // Each tick may raise by 10 W/s × 0.2 s; allow the whole window's rise plus a margin.
    let bound = 400.0 + 10.0 * (PERIOD_MS as f32 / 1000.0) * (ticks as f32 + 5.0) + 5.0;
    assert!(
        seen.iter().all(|&w| (400.0..=bound).contains(&w)),
        "after the lease the cap must rise gradually from 400 W, not jump: {seen:?}"
    );
    assert!(
        seen[ticks - 1] > seen[0],
        "the guard raises a cool GPU's cap back, step by step: {seen:?}"
    );

    // SIGTERM: the original limit is restored and the last readings show it.
    agent.signal(libc::SIGTERM);
    let (st, _) = agent
        .wait_exit(BOUND)
        .unwrap_or_else(|| panic!("still running; log:\n{}", agent.log()));
    assert_eq!(st.code(), Some(0), "log:\n{}", agent.log());
    let last = sub
        .readings_until(&agent, "GPU 0 restored", |r| limit(r, 0) == H200_DEFAULT_W)
        .await;
    assert_eq!(limit(&last, 1), H200_DEFAULT_W);
    let (st, _) = sub.next::<Status>("status", &agent).await;
    assert!(!st.online, "a clean exit says offline");
    assert!(
        !dir.0.join("state/power-limits.json").exists(),
        "the restored limit is still on record after a clean exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_acks_would_set_and_leaves_the_limit_alone() {
    let broker = Mosquitto::start();
    let dir = TempDir::new("agent-dry");
    let cfg = agent_config(&dir, broker.port(), false);
    let mut agent = spawn_agent(&cfg, &["--dry-run"]);
    let mut sub = Wire::connect(broker.port(), "test-dry").await;
    let _ = sub.next::<Facts>("facts", &agent).await;
    sub.lease(7, 60_000, &[(0, 300.0)]).await;
    let ack = sub.ack(7, &agent).await;
    assert!(ack.dry_run, "{ack:?}");
    let r0 = ack
        .results
        .iter()
        .find(|r| r.index == 0)
        .expect("GPU 0 answered");
    assert_eq!(
        r0.enforced_w,
        Some(H200_DEFAULT_W),
        "dry run reads back the unchanged limit: {ack:?}"
    );
    assert_eq!(r0.detail.as_deref(), Some("would set 300 W"), "{ack:?}");
    for _ in 0..5 {
        let (r, _) = sub.next::<Readings>("readings", &agent).await;
        assert_eq!(
            limit(&r, 0),
            H200_DEFAULT_W,
            "dry run changed the simulated GPU's limit"
        );
    }
    assert!(
        !dir.0.join("state/power-limits.json").exists(),
        "dry run records nothing"
    );
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(BOUND).is_some(), "log:\n{}", agent.log());
}

#[test]
fn check_config_tells_an_agent_file_and_names_its_bad_keys() {
    let dir = TempDir::new("agent-check");
    let cfg = agent_config(&dir, free_port(), false);
    let out = Command::new(env!("CARGO_BIN_EXE_coolantd"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("host agent for `node07`"), "{stdout}");

    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        &format!("period_ms = {PERIOD_MS}"),
        "period_ms = 5\nguard_raise_w_per_s = -1.0",
    );
    std::fs::write(&cfg, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_coolantd"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("agent.toml"), "{stderr}");
    assert!(
        stderr.contains("agent.period_ms") && stderr.contains("agent.guard_raise_w_per_s"),
        "{stderr}"
    );
}

#[test]
fn both_agent_binaries_refuse_a_bad_file_with_78_naming_the_key() {
    let dir = TempDir::new("agent-refuse");
    let cfg = agent_config(&dir, free_port(), false);
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace(&format!("period_ms = {PERIOD_MS}"), "period_ms = 5");
    std::fs::write(&cfg, text).expect("write");
    for (bin, sub) in [
        (env!("CARGO_BIN_EXE_coolantd-agent"), None),
        (env!("CARGO_BIN_EXE_coolantd"), Some("agent")),
    ] {
        let out = Command::new(bin)
            .args(sub)
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("run the agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{bin} {sub:?}: {stderr}");
        assert!(
            stderr.contains("configuration refused") && stderr.contains("agent.period_ms"),
            "{bin} {sub:?}: {stderr}"
        );
    }
    // An unknown flag is a usage error (clap's 2) in both, before any file is read.
    for (bin, sub) in [
        (env!("CARGO_BIN_EXE_coolantd-agent"), None),
        (env!("CARGO_BIN_EXE_coolantd"), Some("agent")),
    ] {
        let out = Command::new(bin)
            .args(sub)
            .arg("--no-such-flag")
            .output()
            .expect("run the agent");
        assert_eq!(out.status.code(), Some(2), "{bin} {sub:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_leaves_the_record_and_the_next_start_restores_it() {
    let broker = Mosquitto::start();
    let dir = TempDir::new("agent-crash");
    let cfg = agent_config(&dir, broker.port(), false);
    let mut agent = spawn_agent(&cfg, &[]);
    let mut sub = Wire::connect(broker.port(), "test-crash").await;
    let _ = sub.next::<Facts>("facts", &agent).await;
    sub.lease(9, 60_000, &[(1, 350.0)]).await;
    let ack = sub.ack(9, &agent).await;
    assert_eq!(ack.results[0].enforced_w, Some(350.0), "{ack:?}");
    agent.kill();
    let record = dir.0.join("state/power-limits.json");
    assert!(
        record.exists(),
        "a crash leaves the original limits on record"
    );

    // The simulated GPUs restart with the agent, so the restore is seen in the log and the
    // record, not in a limit (on NVML the capped board would keep 350 W until then).
    let mut again = spawn_agent(&cfg, &[]);
    again.wait_line("the restore at start", BOUND, |l| {
        l.contains("restored the original power limit") && l.contains("limit_w=700")
    });
    assert!(
        again.log().contains("left by an earlier run"),
        "{}",
        again.log()
    );
    assert!(!record.exists(), "the restored limit is still on record");
    again.signal(libc::SIGTERM);
    assert!(again.wait_exit(BOUND).is_some(), "log:\n{}", again.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_at_its_slowdown_margin_is_cut_by_the_agent_in_the_same_tick() {
    let broker = Mosquitto::start();
    let dir = TempDir::new("agent-hot");
    let cfg = hot_agent_config(&dir, broker.port());
    let agent = spawn_agent(&cfg, &[]);
    let mut sub = Wire::connect(broker.port(), "test-hot").await;
    let (facts, _) = sub.next::<Facts>("facts", &agent).await;
    let slowdown = facts.gpus[0].slowdown_c;
    // The readings of tick n are read before tick n's caps are applied, so the cap the
    // guard set in the tick that saw the critical margin shows in tick n + 1's readings.
    let hot = sub
        .readings_until(&agent, "GPU 0 within 29.9 K of slowdown", |r| {
            r.gpus[0].core_c.is_some_and(|c| c >= slowdown - 29.9)
        })
        .await;
    let (next, _) = sub.next::<Readings>("readings", &agent).await;
    assert_eq!(next.seq, hot.seq + 1, "consecutive ticks");
    let (before, after) = (limit(&hot, 0), limit(&next, 0));
    assert!(
        after <= 0.75 * before + 1.0,
        "a critical GPU's cap is cut by a quarter in the tick that sees it: {before} W → {after} W"
    );
    agent.wait_line("the slowdown alarm", BOUND, |l| {
        l.contains("ALARM") && l.contains("gpu_at_slowdown")
    });
}
