//! Faults around cap leases: an expired lease replayed after a broker restart, the controller
//! killed or stopped cleanly while caps are leased, a cap for a GPU that vanished, an agent
//! restarted in the middle of a lease, and a leak on 64 remote GPUs.

use super::rig::*;
use coolantd::wire::{self, CapAck, CapLease, Status};
use coolantd_testkit::daemon_process::DaemonProcess;
use coolantd_testkit::mosquitto::Mosquitto;
use coolantd_testkit::TempDir;
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// 3. The broker restarted for longer than a lease

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_after_a_broker_restart_no_expired_lease_is_applied_again() {
    if !have_mosquitto() {
        return;
    }
    let mut broker = Mosquitto::start();
    let dir = TempDir::new("rack-stale-lease");
    let hosts = ["node01"];
    let agents = spawn_agents(dir.path(), broker.port(), &hosts, 2);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;
    let mut tap = Tap::connect(broker.port(), "tap-stale").await;

    // A leak: every GPU capped to its minimum under a lease the agent acknowledges.
    ctl.leak();
    let caps = topic("node01", "caps");
    let first = tap
        .next_where("a lease capping node01", BOUND, |m| {
            m.topic == caps
                && m.decode::<CapLease>()
                    .caps
                    .iter()
                    .all(|c| (c.limit_w - H200_MIN_W).abs() < 0.5)
        })
        .await;
    assert!(!first.retain, "a lease is never retained");
    let old: CapLease = first.decode();
    tap.readings_where("node01", "node01 at its minimum", BOUND, |r| {
        all_at(r, H200_MIN_W)
    })
    .await;

    // The broker away for longer than the lease: the agent's lease runs out and its guard
    // takes the caps over.
    broker.stop();
    agents[0].wait_line("the lease expiry on the agent", BOUND, |l| {
        l.contains("lease_expired")
    });
    broker.restart();
    let s = ctl
        .until("node01 back after the broker restart", BOUND, |s| {
            online(s, "node01")
        })
        .await;
    assert_eq!(s["state"], "emergency", "the leak still holds");

    // The controller's own client may have sent leases queued during the outage again
    // after the reconnect; those already ended on the agent are refused.
    let replayed = agents[0]
        .log()
        .matches("already ended here arrived again")
        .count();
    // An old copy of the expired lease, as a client's queue would send it after the
    // reconnect: refused in its acknowledgement, never applied again.
    let mut tap = Tap::connect(broker.port(), "tap-stale-2").await;
    tap.publish(&caps, wire::encode(&old).expect("encode"), false)
        .await;
    let acks = topic("node01", "acks");
    let ack = tap
        .next_where("the refusal of the old lease", BOUND, |m| {
            m.topic == acks && m.decode::<CapAck>().id == old.id
        })
        .await
        .decode::<CapAck>();
    assert!(
        !ack.results.is_empty()
            && ack.results.iter().all(|r| {
                r.refusal_kind() == Some(wire::Refusal::Failed)
                    && r.detail
                        .as_deref()
                        .is_some_and(|d| d.contains("already ended"))
            }),
        "{ack:?}"
    );
    // The controller's leases after the restart are new ones; the agent accepted each id
    // once only.
    let ids = accepted_ids(&agents[0].log());
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a lease id applied twice: {ids:?}");
    assert!(
        ids.iter().filter(|&&i| i == old.id).count() <= 1,
        "the expired lease {} was applied again: {ids:?}",
        old.id
    );
    assert!(
        agents[0].log().contains("already ended here arrived again"),
        "{}",
        agents[0].log()
    );
    eprintln!(
        "rack fault: broker restarted past a lease → the expired lease {} refused on replay ({replayed} copies replayed by the controller's own client before the test's); leases applied: {ids:?}",
        old.id
    );
}

// ---------------------------------------------------------------------------------------
// 4. The controller killed, and stopped cleanly

/// Brings up a controller and one agent (2 GPUs), leaks, and waits until the agent holds
/// both GPUs at their minimum under an acknowledged lease. Returns the broker, the folder, the
/// agent, the controller and a tap that has seen the capped readings.
async fn capped_rig(tag: &str) -> (Mosquitto, TempDir, Vec<DaemonProcess>, Controller, Tap) {
    let broker = Mosquitto::start();
    let dir = TempDir::new(tag);
    let hosts = ["node01"];
    let agents = spawn_agents(dir.path(), broker.port(), &hosts, 2);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;
    let mut tap = Tap::connect(broker.port(), &format!("tap-{tag}")).await;
    ctl.leak();
    tap.readings_where("node01", "node01 at its minimum", BOUND, |r| {
        all_at(r, H200_MIN_W)
    })
    .await;
    ctl.until("the caps acknowledged", BOUND, |s| {
        acked_at(s, "node01", 2, f64::from(H200_MIN_W))
    })
    .await;
    (broker, dir, agents, ctl, tap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_killed_controller_leaves_its_caps_until_the_lease_ends_then_the_guard() {
    if !have_mosquitto() {
        return;
    }
    let (_broker, _dir, agents, mut ctl, mut tap) = capped_rig("rack-ctl-killed").await;
    tap.drain();
    let (last, _) = tap
        .readings_where("node01", "readings before the kill", BOUND, |_| true)
        .await;
    ctl.proc.kill();
    let will = tap
        .next_where("the controller's last will", BOUND, |m| {
            m.topic.starts_with("coolantd/v1/controller/")
        })
        .await;
    assert_eq!(will.payload, b"offline", "{will:?}");
    // The caps hold while the lease runs: at least the renewal margin (a third of 2 s),
    // at most the whole lease, then the guard raises them gradually.
    let (raised, _) = tap
        .readings_where("node01", "a cap raised by the guard", BOUND, |r| {
            !all_at(r, H200_MIN_W)
        })
        .await;
    let held = raised.seq - last.seq;
    eprintln!(
        "rack fault: controller killed → caps held {held} agent ticks, then the guard ({:?})",
        limits(&raised)
    );
    let lease_ticks = LEASE_MS / PERIOD_MS;
    assert!(
        held >= lease_ticks / 3 - 1,
        "the caps were dropped before the lease ended: {held} ticks"
    );
    report(
        "controller killed",
        "lease ends, guard takes over",
        held,
        lease_ticks + 3,
    );
    agents[0].wait_line("the lease-expiry alarm", BOUND, |l| {
        l.contains("ALARM") && l.contains("lease_expired")
    });
    // Gradually: 10 W/s is 2 W a tick, never the original limit at once.
    assert!(
        limits(&raised).iter().all(|&w| w < H200_MIN_W + 10.0),
        "{raised:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_clean_controller_stop_releases_the_caps_to_the_guard_at_once() {
    if !have_mosquitto() {
        return;
    }
    let (_broker, _dir, agents, mut ctl, mut tap) = capped_rig("rack-ctl-stop").await;
    tap.drain();
    let (last, _) = tap
        .readings_where("node01", "readings before the stop", BOUND, |_| true)
        .await;
    ctl.proc.signal(libc::SIGTERM);
    let caps = topic("node01", "caps");
    let release = tap
        .next_where("the release lease", BOUND, |m| m.topic == caps)
        .await
        .decode::<CapLease>();
    assert!(
        release.caps.is_empty(),
        "a release names no GPU: {release:?}"
    );
    let (raised, _) = tap
        .readings_where("node01", "a cap raised by the guard", BOUND, |r| {
            !all_at(r, H200_MIN_W)
        })
        .await;
    let ticks = raised.seq - last.seq;
    report(
        "controller stopped cleanly",
        "caps released to the guard",
        ticks,
        // Half the lease: the controller's stop itself takes a tick or two on a loaded
        // machine; the log checks below tell a release from an expiry.
        LEASE_MS / PERIOD_MS / 2,
    );
    assert!(
        limits(&raised).iter().all(|&w| w < H200_MIN_W + 10.0),
        "released gradually, not at once: {raised:?}"
    );
    agents[0].wait_line("the release", BOUND, |l| {
        l.contains("the controller released caps")
    });
    let (st, _) = ctl
        .proc
        .wait_exit(BOUND)
        .unwrap_or_else(|| panic!("the controller did not stop; log:\n{}", ctl.proc.log()));
    assert_eq!(st.code(), Some(0), "log:\n{}", ctl.proc.log());
    assert!(
        !agents[0].log().contains("lease_expired"),
        "released, not expired: {}",
        agents[0].log()
    );
}

// ---------------------------------------------------------------------------------------
// 7. A cap for a GPU that vanished

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_cap_for_a_vanished_gpu_is_refused_and_dropped() {
    if !have_mosquitto() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = TempDir::new("rack-vanished");
    let hosts = ["node01", "node02"];
    let mut agents = spawn_agents(dir.path(), broker.port(), &hosts, 4);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    ctl.rack_up(&hosts).await;
    let mut tap = Tap::connect(broker.port(), "tap-vanished").await;
    ctl.leak();
    ctl.until("both hosts capped", BOUND, |s| {
        hosts
            .iter()
            .all(|h| acked_at(s, h, 4, f64::from(H200_MIN_W)))
    })
    .await;

    // node01 restarts with two GPUs fewer (a board fell off the bus).
    agents[0].signal(libc::SIGTERM);
    assert!(agents[0].wait_exit(BOUND).is_some(), "{}", agents[0].log());
    tap.drain();
    agents[0] = spawn_agent(&agent_config(
        dir.path(),
        "node01",
        "node01",
        broker.port(),
        2,
    ));
    let acks = topic("node01", "acks");
    let refused = tap
        .next_where("an ack refusing GPUs 2 and 3", BOUND, |m| {
            m.topic == acks
                && m.decode::<CapAck>()
                    .results
                    .iter()
                    .any(|r| r.refusal_kind() == Some(wire::Refusal::UnknownGpu))
        })
        .await
        .decode::<CapAck>();
    let unknown: Vec<u32> = refused
        .results
        .iter()
        .filter(|r| r.refusal_kind() == Some(wire::Refusal::UnknownGpu))
        .map(|r| r.index)
        .collect();
    assert_eq!(unknown, [2, 3], "{refused:?}");
    assert!(
        refused.results.iter().any(|r| r
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("this host has no GPU 2"))),
        "a clear reason: {refused:?}"
    );
    // The controller drops them: its next lease names GPUs 0 and 1 only, and is applied.
    let caps = topic("node01", "caps");
    let next = tap
        .next_where("a lease without the vanished GPUs", BOUND, |m| {
            m.topic == caps && m.decode::<CapLease>().id != refused.id
        })
        .await
        .decode::<CapLease>();
    let named: Vec<u32> = next.caps.iter().map(|c| c.index).collect();
    assert_eq!(named, [0, 1], "{next:?}");
    let s = ctl
        .until("node01's two GPUs capped, node02 untouched", BOUND, |s| {
            acked_at(s, "node01", 2, f64::from(H200_MIN_W))
                && acked_at(s, "node02", 4, f64::from(H200_MIN_W))
                && online(s, "node01")
                && online(s, "node02")
        })
        .await;
    assert_eq!(s["state"], "emergency", "the leak still rules");
    assert!(
        ctl.proc.log().contains("unknown_gpu") || ctl.proc.log().contains("no GPU 2"),
        "the controller logs the refusal: {}",
        ctl.proc.log()
    );
    eprintln!("rack fault: cap for a vanished GPU → refused (unknown_gpu), dropped from the next lease {:?}", named);
}

// ---------------------------------------------------------------------------------------
// 8. An agent restarting in the middle of a lease

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_an_agent_restarted_mid_lease_restores_and_takes_only_a_new_lease() {
    if !have_mosquitto() {
        return;
    }
    let (broker, dir, mut agents, ctl, mut tap) = capped_rig("rack-restart").await;
    let caps = topic("node01", "caps");
    let held = tap
        .next_where("a lease (renewal) to node01", BOUND, |m| m.topic == caps)
        .await
        .decode::<CapLease>();
    let before_ids = accepted_ids(&agents[0].log());
    tap.drain();
    let (old, _) = tap
        .readings_where("node01", "readings before the kill", BOUND, |_| true)
        .await;
    agents[0].kill();
    assert!(
        dir.path().join("state-node01/power-limits.json").exists(),
        "the crash leaves the original limits on record"
    );
    // A retained copy of its lease waits on the broker, as a misconfigured client could
    // leave it: the restarted agent gets it at subscription and refuses it.
    let bytes = wire::encode(&held).expect("encode");
    tap.drain();
    tap.publish(&caps, bytes.clone(), true).await;
    // Back through the broker: stored before the agent subscribes, so the agent gets it as
    // a retained message.
    tap.next_where("the retained copy at the broker", BOUND, |m| {
        m.topic == caps && m.payload == bytes
    })
    .await;
    let config = dir.path().join("node01.toml");
    agents[0] = spawn_agent(&config);
    agents[0].wait_line("the restore at start", BOUND, |l| {
        l.contains("restored the original power limit")
    });
    agents[0].wait_line("the retained lease refused", BOUND, |l| {
        l.contains("retained cap lease refused")
    });
    tap.publish(&caps, Vec::new(), true).await;
    // The new session's presence, then the controller's current caps under a new lease
    // (it sends them as soon as it hears the new session), acknowledged.
    let status = topic("node01", "status");
    let online_at = tap
        .next_where("the new session's online status", BOUND, |m| {
            m.topic == status && {
                let st = m.decode::<Status>();
                st.online && st.session != old.session
            }
        })
        .await
        .at;
    let acks = topic("node01", "acks");
    let ack_msg = tap
        .next_where("the ack of a new lease", BOUND, |m| {
            m.topic == acks && m.decode::<CapAck>().session != old.session
        })
        .await;
    let ack: CapAck = ack_msg.decode();
    assert!(
        !before_ids.contains(&ack.id),
        "the restarted agent acknowledged an old lease {}: {before_ids:?}",
        ack.id
    );
    assert!(
        ack.results
            .iter()
            .all(|r| r.enforced_w.is_some_and(|w| (w - H200_MIN_W).abs() < 0.5)),
        "{ack:?}"
    );
    // Every lease the new session applied is one the controller sent it after the restart.
    let after_ids = accepted_ids(&agents[0].log());
    assert!(
        !after_ids.is_empty() && after_ids.iter().all(|i| !before_ids.contains(i)),
        "an old lease re-applied after the restart: before {before_ids:?}, after {after_ids:?}"
    );
    let ms = ack_msg.at.duration_since(online_at).as_millis() as u64;
    // The session's readings count from 1: the tick of its first capped readings.
    let (capped, _) = tap
        .readings_where("node01", "capped again", BOUND, |r| {
            r.session != old.session && all_at(r, H200_MIN_W)
        })
        .await;
    eprintln!(
        "rack fault: agent restarted mid-lease → new lease {} acked {ms} ms after the new session said online",
        ack.id
    );
    report(
        "agent restarted mid-lease",
        "capped again under a new lease (agent ticks of the new session)",
        capped.seq,
        6,
    );
    let s = ctl
        .until("the new lease acknowledged", BOUND, |s| {
            acked_at(s, "node01", 2, f64::from(H200_MIN_W)) && online(s, "node01")
        })
        .await;
    assert_eq!(s["state"], "emergency");
    drop(broker);
}

// ---------------------------------------------------------------------------------------
// 9. A leak with 64 remote GPUs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_fault_a_leak_caps_all_64_remote_gpus() {
    if !have_mosquitto() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = TempDir::new("rack-leak64");
    let hosts = [
        "node01", "node02", "node03", "node04", "node05", "node06", "node07", "node08",
    ];
    let _agents = spawn_agents(dir.path(), broker.port(), &hosts, 8);
    let ctl = Controller::start(dir.path(), broker.port(), &hosts).await;
    let s = ctl.rack_up(&hosts).await;
    let remote = s["gpus"].as_array().map_or(0, Vec::len);
    assert_eq!(remote, 64, "64 remote GPUs on /status");
    let mut tap = Tap::connect(broker.port(), "tap-leak64").await;
    tap.drain();
    let sampler = TickSampler::start(ctl.http);
    tokio::time::sleep(Duration::from_millis(100)).await;

    ctl.leak();
    // Every host's first ack whose caps are all at the minimum.
    let acks: Vec<String> = hosts.iter().map(|h| topic(h, "acks")).collect();
    let mut capped = std::collections::BTreeMap::new();
    while capped.len() < hosts.len() {
        let m = tap
            .next_where("the acks of every host", BOUND, |m| acks.contains(&m.topic))
            .await;
        let ack: CapAck = m.decode();
        let all_min = ack.results.len() == 8
            && ack
                .results
                .iter()
                .all(|r| r.enforced_w.is_some_and(|w| (w - H200_MIN_W).abs() < 0.5));
        if all_min {
            capped.entry(ack.host.clone()).or_insert(m.at);
        }
    }
    let leak_at = ctl.leak_read_at().expect("the leak was read");
    let last = capped.values().max().copied().expect("acks");
    let ms = last.duration_since(leak_at).as_millis() as u64;
    let s = ctl
        .until("every remote GPU held at its minimum", BOUND, |s| {
            hosts
                .iter()
                .all(|h| acked_at(s, h, 8, f64::from(H200_MIN_W)))
        })
        .await;
    assert_eq!(s["state"], "emergency");
    // Controller ticks from the one that polled the leak to the one during which the last
    // acknowledgement reached the broker.
    let ticks = sampler.tick_at(last) - sampler.tick_at(leak_at);
    eprintln!(
        "rack fault: leak with 64 remote GPUs → last agent's ack at the broker {ms} ms after the leak's Modbus reading"
    );
    report(
        "leak, 64 remote GPUs (8 agents × 8)",
        "every GPU capped and acknowledged",
        ticks,
        5,
    );
}
