//! Faults of the network and of presence: an agent killed (its last will), an agent
//! partitioned (no will), the broker restarted, two agents claiming one host, and agent clocks
//! 10 minutes off.

use super::rig::*;
use coolantd::wire::{Readings, Status};
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::tcp_proxy::TcpProxy;
use coolantd_testkit::TempDir;
use serde_json::Value;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// 1. An agent killed: its last will

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_agent_killed_its_last_will_makes_its_gpus_lost_inputs() {
    if !have_mosquitto() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = TempDir::new("rack-killed");
    let hosts = ["node01", "node02"];
    let mut agents = spawn_agents(dir.path(), broker.port(), &hosts, 2);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;

    // SIGKILL: no goodbye; the broker publishes node02's last will at once (the socket
    // closed). Its GPUs are lost inputs: Degraded on what remains.
    let t0 = ctl.tick();
    agents[1].kill();
    let s = ctl
        .until("node02 lost by its last will", BOUND, |s| {
            !online(s, "node02")
                && lost_reason(s, "node02").contains("last will")
                && has_alarm(s, "rack_host_lost:node02")
        })
        .await;
    report("agent killed", "host lost (last will)", tick(&s) - t0, 3);
    let s = ctl
        .until("Degraded on node01's GPUs", BOUND, |s| {
            s["state"] == "degraded"
        })
        .await;
    report("agent killed", "Degraded", tick(&s) - t0, 5);
    assert!(online(&s, "node01"), "{}", s["rack"]);

    // The last agent killed: no GPU temperature is known, Failsafe.
    let t0 = ctl.tick();
    agents[0].kill();
    let s = ctl
        .until("Failsafe with every remote GPU lost", BOUND, |s| {
            s["state"] == "failsafe"
        })
        .await;
    report("every agent killed", "Failsafe", tick(&s) - t0, 5);
    assert!(
        lost_reason(&s, "node01").contains("last will"),
        "{}",
        s["rack"]
    );
}

// ---------------------------------------------------------------------------------------
// 2. An agent partitioned: no FIN, no will

/// What one partition of node01 (through the proxy) showed.
struct Partition {
    /// Everything the broker passed on from the partition's start to after the heal.
    since: Vec<Msg>,
    /// node01 on `/status` after the heal.
    host: Value,
}

/// Two agents, node01 behind a proxy that blackholes for `partition_ms`; node01's agent
/// has `keep_alive_s`. Checks and reports the reactions common to short and long
/// partitions: stale (not a will) first, Degraded, back without a restart, Running again,
/// and what the controller counts as missed is what the broker never saw.
async fn partition(tag: &str, keep_alive_s: u64, partition_ms: u64) -> Partition {
    let broker = Mosquitto::start();
    let dir = TempDir::new(tag);
    let hosts = ["node01", "node02"];
    let proxy = TcpProxy::start(([127, 0, 0, 1], broker.port()).into()).await;
    let mut tap = Tap::connect(broker.port(), &format!("tap-{tag}")).await;
    // node01 reaches the broker through the proxy, node02 directly.
    let cfg = agent_config(dir.path(), "node01", "node01", proxy.addr.port(), 2);
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        "keep_alive_s = 5",
        &format!("keep_alive_s = {keep_alive_s}"),
    );
    std::fs::write(&cfg, text).expect("write");
    let mut a1 = spawn_agent(&cfg);
    let _a2 = spawn_agent(&agent_config(
        dir.path(),
        "node02",
        "node02",
        broker.port(),
        2,
    ));
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    let s = ctl.rack_up(&hosts).await;
    assert!(proxy.bytes() > 0, "node01's traffic goes through the proxy");
    assert_eq!(rack_host(&s, "node01")["gaps"], 0, "{}", s["rack"]);

    tap.drain();
    let (before, _) = tap
        .readings_where("node01", "node01's readings", BOUND, |_| true)
        .await;
    let t0 = ctl.tick();
    proxy.set_blackhole(true);
    // From here the tap is left alone until the heal: it keeps every message for the
    // sequence count at the end.
    let s = ctl
        .until("node01 stale", BOUND, |s| {
            !online(s, "node01") && !lost_reason(s, "node01").is_empty()
        })
        .await;
    // Staleness, never the will first: 600 ms is 3 ticks, one more for the tick that sees
    // it, one for the readings in flight when the partition began and one of slack.
    assert!(
        lost_reason(&s, "node01").contains("no readings for"),
        "{}",
        s["rack"]
    );
    report(
        &format!("agent partitioned (keep_alive_s {keep_alive_s})"),
        "host stale, lost inputs",
        tick(&s) - t0,
        STALE_MS / PERIOD_MS + 3,
    );
    assert!(
        has_alarm(&s, "rack_host_lost:node01"),
        "{:?}",
        alarm_ids(&s)
    );
    assert!(online(&s, "node02"), "{}", s["rack"]);
    let s = ctl
        .until("Degraded", BOUND, |s| s["state"] == "degraded")
        .await;
    report(
        &format!("agent partitioned (keep_alive_s {keep_alive_s})"),
        "Degraded",
        tick(&s) - t0,
        STALE_MS / PERIOD_MS + 4,
    );

    tokio::time::sleep(Duration::from_millis(partition_ms)).await;
    let t1 = ctl.tick();
    proxy.set_blackhole(false);
    let s = ctl
        .until("node01 back", BOUND, |s| online(s, "node01"))
        .await;
    report("partition healed", "host back online", tick(&s) - t1, 10);
    let s = ctl
        .until("running again", BOUND, |s| s["state"] == "running")
        .await;
    report(
        "partition healed",
        "Running again",
        tick(&s) - t1,
        1_000 / PERIOD_MS + 12,
    );
    // Everything node01 published since `before`, as the broker passed it on.
    let since = tap.collect(Duration::from_millis(500)).await;
    let readings: Vec<Readings> = since
        .iter()
        .filter(|m| m.topic == topic("node01", "readings"))
        .map(|m| m.decode::<Readings>())
        .collect();
    // The same agent, never restarted: the same session before and after.
    assert!(
        readings.iter().all(|r| r.session == before.session),
        "the agent did not restart"
    );
    assert!(a1.try_wait().is_none(), "node01's agent still runs");
    let mut seqs: Vec<u64> = std::iter::once(before.seq)
        .chain(readings.iter().map(|r| r.seq))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "in order, no replay: {seqs:?}"
    );
    seqs.dedup();
    let span = seqs.last().copied().unwrap_or(before.seq) - before.seq + 1;
    let missing = span - seqs.len() as u64;
    let s = ctl.status();
    let host = rack_host(&s, "node01").clone();
    eprintln!(
        "rack fault: partition of {partition_ms} ms (keep_alive_s {keep_alive_s}) healed: gaps {}, missed {} (the broker missed {missing} of {span} readings), replays {}",
        host["gaps"], host["missed"], host["replays"]
    );
    // The controller counts as missed exactly what never reached the broker.
    assert_eq!(host["missed"].as_u64(), Some(missing), "{host}");
    assert_eq!(host["replays"], 0, "{host}");
    Partition { since, host }
}

fn offline_status(m: &Msg, host: &str) -> bool {
    m.topic == topic(host, "status") && !m.decode::<Status>().online
}

/// A partition shorter than the broker's keep-alive (1.5 × 5 s): no FIN, no will; the
/// controller judges by staleness alone, and TCP delivers the held readings late but whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_partitioned_agent_goes_stale_and_comes_back_without_a_restart() {
    if !have_mosquitto() {
        return;
    }
    let p = partition("rack-partition", 5, 2_500).await;
    assert!(
        !p.since.iter().any(|m| offline_status(m, "node01")),
        "a short partition publishes no offline status (no will)"
    );
    assert_eq!(p.host["missed"], 0, "{}", p.host);
}

/// A partition longer than the broker's keep-alive (1.5 × 1 s): the broker gives up on
/// the session and publishes the will, well after staleness made the host lost; the agent
/// reconnects by itself once the network heals, and the readings it could not send while
/// disconnected are counted as gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_long_partition_fires_the_will_and_the_agent_reconnects_by_itself() {
    if !have_mosquitto() {
        return;
    }
    let p = partition("rack-long-partition", 1, 4_000).await;
    assert!(
        p.since.iter().any(|m| offline_status(m, "node01")),
        "the broker's keep-alive fired node01's will"
    );
    assert!(
        p.host["gaps"].as_u64().is_some_and(|g| g >= 1),
        "readings lost while disconnected are counted: {}",
        p.host
    );
}

// ---------------------------------------------------------------------------------------
// 3. The broker restarted

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_broker_restart_is_failsafe_until_both_sides_reconnect() {
    if !have_mosquitto() {
        return;
    }
    let mut broker = Mosquitto::start();
    let dir = TempDir::new("rack-broker");
    let hosts = ["node01"];
    let _agents = spawn_agents(dir.path(), broker.port(), &hosts, 2);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;

    let t0 = ctl.tick();
    broker.stop();
    let s = ctl
        .until("Failsafe while the broker is down", BOUND, |s| {
            s["state"] == "failsafe" && !online(s, "node01")
        })
        .await;
    report(
        "broker down",
        "remote inputs lost, Failsafe",
        tick(&s) - t0,
        STALE_MS / PERIOD_MS + 4,
    );
    assert!(
        lost_reason(&s, "node01").contains("no readings for"),
        "{}",
        s["rack"]
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let t1 = ctl.tick();
    broker.restart();
    // Both sides reconnect by themselves (backoff 100..400 ms): the agent's readings reach
    // the controller again.
    let s = ctl
        .until("node01 back after the broker restart", BOUND, |s| {
            online(s, "node01") && s["rack"]["connected"] == true
        })
        .await;
    report(
        "broker restarted",
        "both reconnected, host online",
        tick(&s) - t1,
        10,
    );
    let s = ctl
        .until("running again", BOUND, |s| s["state"] == "running")
        .await;
    report(
        "broker restarted",
        "Running (after recovery_hold_s 1 s)",
        tick(&s) - t1,
        1_000 / PERIOD_MS + 12,
    );
}

// ---------------------------------------------------------------------------------------
// 5. Two agents claiming one host

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_two_agents_claiming_one_host_are_both_distrusted_until_one_leaves() {
    if !have_mosquitto() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = TempDir::new("rack-duplicate");
    let hosts = ["node01", "node02"];
    let _a1 = spawn_agent(&agent_config(
        dir.path(),
        "node01",
        "node01-a",
        broker.port(),
        2,
    ));
    let _a2 = spawn_agent(&agent_config(
        dir.path(),
        "node02",
        "node02",
        broker.port(),
        2,
    ));
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;

    // A second agent calls itself node01 (another client id, another session).
    let t0 = ctl.tick();
    let mut twin = spawn_agent(&agent_config(
        dir.path(),
        "node01",
        "node01-b",
        broker.port(),
        2,
    ));
    let s = ctl
        .until("the duplicate alarm", BOUND, |s| {
            has_alarm(s, "rack_host_duplicate:node01") && !online(s, "node01")
        })
        .await;
    // From the twin's spawn: its process start and first readings count too.
    report(
        "two agents claim node01",
        "rack_host_duplicate, GPUs lost (from the second agent's spawn)",
        tick(&s) - t0,
        10,
    );
    let s = ctl
        .until("Degraded", BOUND, |s| s["state"] == "degraded")
        .await;
    assert!(online(&s, "node02"), "{}", s["rack"]);
    let dup = s["alarms"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == "rack_host_duplicate:node01"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(dup["severity"], "critical", "{dup}");

    // One leaves: after conflict_clear_after_ms (1 s) of one agent alone, node01 is
    // trusted again.
    let t1 = ctl.tick();
    twin.signal(libc::SIGTERM);
    assert!(twin.wait_exit(BOUND).is_some(), "log:\n{}", twin.log());
    let s = ctl
        .until("node01 trusted again", BOUND, |s| {
            online(s, "node01") && !has_alarm(s, "rack_host_duplicate:node01")
        })
        .await;
    report(
        "duplicate host, one left",
        "host trusted again",
        tick(&s) - t1,
        CONFLICT_MS / PERIOD_MS + 6,
    );
}

// ---------------------------------------------------------------------------------------
// 6. A clock 10 minutes off

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_an_agent_clock_ten_minutes_off_changes_nothing() {
    if !have_mosquitto() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = TempDir::new("rack-clock");
    let hosts = ["slow", "fast"];
    let ten_min = 10 * 60 * 1000;
    let mut agents = vec![
        SkewedAgent::start(broker.port(), "slow", 0x51, -ten_min).await,
        SkewedAgent::start(broker.port(), "fast", 0xfa, ten_min).await,
    ];
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    // Readings every period until the rack runs, then for 2 s more: both hosts stay
    // trusted throughout, their readings as fresh as they arrive.
    let t0 = Instant::now();
    let mut up_at = None;
    while up_at.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(2)) {
        for a in &mut agents {
            a.readings().await;
        }
        tokio::time::sleep(Duration::from_millis(PERIOD_MS)).await;
        let Some(s) = ctl.try_status() else { continue };
        let up = hosts.iter().all(|h| online(&s, h)) && s["state"] == "running";
        match up_at {
            None if up => up_at = Some(Instant::now()),
            Some(_) => {
                assert!(up, "a skewed clock made a host lost: {}", s["rack"]);
                for h in hosts {
                    let age = rack_host(&s, h)["age_s"].as_f64().unwrap_or(f64::MAX);
                    assert!(age < 1.0, "{h}: age {age} s by arrival: {}", s["rack"]);
                }
            }
            None => {}
        }
        assert!(
            t0.elapsed() < BOUND,
            "the skewed hosts never ran: {}\nlog:\n{}",
            ctl.status()["rack"],
            ctl.proc.log()
        );
    }
    // Both fall silent at once: both are stale after the same 600 ms by arrival, whatever
    // their clocks said.
    let t1 = ctl.tick();
    let s = ctl
        .until("both hosts stale", BOUND, |s| {
            hosts
                .iter()
                .all(|h| lost_reason(s, h).contains("no readings for"))
        })
        .await;
    report(
        "agent clock ±10 min, then silent",
        "both stale together",
        tick(&s) - t1,
        STALE_MS / PERIOD_MS + 2,
    );
}
