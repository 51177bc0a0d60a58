//! The leader cut off from the two other nodes, three ways: two with `kill -STOP` /
//! `kill -CONT` (no root needed), and a real network partition with `iptables` where the
//! machine allows it:
//!
//! - `leader_cut_off_minority_refuses_visibly_then_heals`: the two followers are stopped, so
//!   the leader (still running, still serving MQTT, still believing it leads until
//!   check-quorum makes it step down) is alone: the minority side of a partition. What needs a
//!   commit is refused after at most the commit timeout, visibly: CONNACK 3 for a persistent
//!   CONNECT, a closed connection (no PUBREC / PUBACK) for a durable publish; nothing is
//!   acknowledged. The followers are resumed (the partition heals) and nothing acknowledged
//!   is lost; what was refused is resent by its (strict) publisher and delivered exactly once.
//! - `leader_stopped_majority_goes_on_then_old_leader_rejoins`: the leader itself is stopped
//!   (its peers and clients hear nothing, its sockets stay open): the two others elect a leader
//!   and go on, the clients of the stopped node give it up after their response timeout and
//!   resume elsewhere; the old leader is resumed (it wakes up believing it leads an old term),
//!   steps down, catches up, and nothing is lost or duplicated.
//! - `leader_partitioned_by_the_network_both_sides_alive`: the leader's peer traffic is dropped
//!   both ways while every process runs ([`NetSplit`]): both of the above at once.

use std::time::{Duration, Instant};

use starling_codec::{ConnectReasonCode, Packet, PubComp, PubRec, PubRel, Publish, QoS};
use starling_testkit::broker::signal;
use starling_testkit::strict::Event;
use starling_testkit::{RawClient, RecvError, TestCluster};

use crate::check::{check, ledger_from_history, Published};
use crate::netsplit::NetSplit;
use crate::support::*;

/// Process scheduling, the store's 500 ms expiry sweep, connection teardown.
const SLACK: Duration = Duration::from_millis(1500);

fn stop(c: &TestCluster, id: u64) {
    signal(c.node(id).process().pid().expect("running"), "STOP");
}

fn cont(c: &TestCluster, id: u64) {
    signal(c.node(id).process().pid().expect("running"), "CONT");
}

/// Resumes stopped nodes even when the test fails (a stopped process would outlive it).
struct Resume<'a>(&'a TestCluster, Vec<u64>);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        for id in &self.1 {
            cont(self.0, *id);
        }
    }
}

fn qos2(topic: &str, body: &str, pid: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: topic.into(),
        packet_id: pid,
        payload: bytes::Bytes::copy_from_slice(body.as_bytes()),
        properties: Default::default(),
    })
}

/// Waits for the broker to close `c`; fails if it acknowledges anything first.
async fn refused_by_close(c: &mut RawClient, what: &str) -> Duration {
    let t = Instant::now();
    loop {
        match c.recv_within(COMMIT_TIMEOUT + SLACK).await {
            Ok(Packet::PubAck(_)) | Ok(Packet::PubRec(_)) => {
                panic!("{what}: acknowledged without a quorum")
            }
            Ok(_) => {}
            Err(RecvError::Timeout) => panic!(
                "{what}: connection neither acknowledged nor closed after {:?}",
                t.elapsed()
            ),
            Err(_) => return t.elapsed(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_minority_refuses_visibly_then_heals() {
    let c = blocking(|| cluster(3).start());
    let pl = place(&c);
    let leader = pl.leader;
    let followers = [pl.publisher, pl.subscriber];

    // The subscriber on a follower; the publishers on the leader, which will be the minority.
    let sub = strict_at(&c, "pt-sub", pl.subscriber).await;
    sub.subscribe(&[("pt/#", QoS::ExactlyOnce)], PROMPT)
        .await
        .unwrap();
    let publ = strict_at(&c, "pt-pub", leader).await;
    let (mut raw, _) = RawClient::connect(c.addr(leader), "pt-raw", false).await;
    let (mut raw1, _) = RawClient::connect(c.addr(leader), "pt-raw1", true).await;
    for seq in 1..=20 {
        publ.publish("pt/a", payload("pt-pub", seq), QoS::ExactlyOnce, FLOW)
            .await
            .unwrap();
    }
    sub.wait_deliveries(FLOW, "20 messages", |d| d.len() >= 20)
        .await
        .unwrap();
    let before = blocking(|| c.wait_converged(CONVERGE));

    // The partition. At once, while the leader still believes it leads: a durable QoS 2
    // publish from a persistent session, a QoS 1 publish for the persistent subscriber from a
    // clean session, 20 QoS 2 messages from the strict publisher, and a persistent CONNECT.
    for f in followers {
        stop(&c, f);
    }
    let guard = Resume(&c, followers.to_vec());
    let cut = Instant::now();
    let pending: Vec<_> = (21..=40)
        .map(|seq| publ.publish_nowait("pt/a", payload("pt-pub", seq), QoS::ExactlyOnce, false))
        .collect();
    raw.send(&qos2("pt/a", "pt-raw/1", 1, false)).await;
    raw1.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "pt/b".into(),
        packet_id: 1,
        payload: bytes::Bytes::from_static(b"pt-raw1/1"),
        properties: Default::default(),
    }))
    .await;
    let connect = async {
        let t = Instant::now();
        let (mut refused, ack) = RawClient::connect(c.addr(leader), "pt-new", false).await;
        let waited = t.elapsed();
        assert_eq!(
            ack.code,
            ConnectReasonCode::ServerUnavailable,
            "persistent CONNECT"
        );
        assert!(!ack.session_present);
        assert!(
            refused.closed_within(PROMPT).await,
            "closed after CONNACK 3"
        );
        waited
    };
    let (q2, q1, connack) = tokio::join!(
        refused_by_close(&mut raw, "QoS 2 from a persistent session"),
        refused_by_close(&mut raw1, "QoS 1 for a persistent subscriber"),
        connect,
    );
    for (what, waited) in [
        ("persistent CONNECT refused (CONNACK 3)", connack),
        ("durable QoS 2 publish refused (connection closed)", q2),
        ("durable QoS 1 publish refused (connection closed)", q1),
    ] {
        measure(
            &format!("partition (minority): {what} after"),
            format!("{waited:?}"),
        );
        assert!(waited <= COMMIT_TIMEOUT + SLACK, "{what} after {waited:?}");
    }
    let commit_index = || {
        blocking(|| c.status(leader))["commit_index"]
            .as_u64()
            .expect("commit index")
    };
    let committed = commit_index();
    assert!(committed >= before.applied_index);

    // The partition lasts past the commit timeout: the isolated leader has stepped down
    // (check-quorum), commits nothing, and refuses at once now (no leader).
    tokio::time::sleep(
        (cut + COMMIT_TIMEOUT + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    )
    .await;
    let s = blocking(|| c.status(leader));
    println!(
        "isolated leader after {:?}: role={} term={} leader={}",
        cut.elapsed(),
        s["role"],
        s["term"],
        s["leader"]
    );
    assert_ne!(s["role"], "leader", "an isolated leader steps down: {s}");
    let t = Instant::now();
    let (_, ack) = RawClient::connect(c.addr(leader), "pt-new2", false).await;
    assert_eq!(ack.code, ConnectReasonCode::ServerUnavailable);
    measure(
        "partition (minority, leader stepped down): persistent CONNECT refused after",
        format!("{:?}", t.elapsed()),
    );
    assert_eq!(
        commit_index(),
        committed,
        "nothing committed on the minority side"
    );
    let cut_for = cut.elapsed();

    // Heal.
    drop(guard);
    let healed = Instant::now();
    blocking(|| c.wait_for_leader(ELECTION));
    for p in pending {
        p.wait(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("after healing: {e}\n{}", diagnose(&c, &[&publ, &sub])));
    }
    measure(
        "partition (minority): the 20 messages sent into the minority completed after healing",
        format!("{:?} (cut for {cut_for:?})", healed.elapsed()),
    );
    // None of them was acknowledged (PUBREC) before the partition healed.
    let early: Vec<String> = publ
        .history()
        .iter()
        .filter(|r| r.at < healed)
        .filter_map(|r| match &r.event {
            Event::Completed { payload, .. } => Some(String::from_utf8_lossy(payload).into()),
            _ => None,
        })
        .filter(|p: &String| {
            p.rsplit_once('/')
                .is_some_and(|(_, s)| s.parse::<u64>().is_ok_and(|s| s > 20))
        })
        .collect();
    assert!(early.is_empty(), "completed without a quorum: {early:?}");
    let pubrecs_while_cut = publ
        .history()
        .iter()
        .filter(|r| r.at > cut + Duration::from_millis(100) && r.at < healed)
        .filter(|r| matches!(r.event, Event::Received(Packet::PubRec(_))))
        .count();
    assert_eq!(pubrecs_while_cut, 0, "PUBREC without a quorum");
    // The raw publisher resends its refused QoS 2 message (DUP, same id) through any node.
    let (mut raw, ack) = RawClient::connect(c.addr(pl.publisher), "pt-raw", false).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    assert!(ack.session_present);
    raw.send(&qos2("pt/a", "pt-raw/1", 1, true)).await;
    assert_eq!(raw.recv().await, Ok(Packet::PubRec(PubRec::new(1))));
    raw.send(&Packet::PubRel(PubRel::new(1))).await;
    assert_eq!(raw.recv().await, Ok(Packet::PubComp(PubComp::new(1))));

    sub.wait_deliveries(FLOW, "41 messages", |d| d.len() >= 41)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&c, &[&publ, &sub])));
    blocking(|| c.wait_converged(CONVERGE));
    let mut ledger = ledger_from_history(&publ.history());
    ledger.push(Published {
        publisher: "pt-raw".into(),
        topic: "pt/a".into(),
        seq: 1,
        qos: QoS::ExactlyOnce,
        completed: true,
        writes: 2,
    });
    // Refused and never resent: it may or may not have been committed; never twice.
    ledger.push(Published {
        publisher: "pt-raw1".into(),
        topic: "pt/b".into(),
        seq: 1,
        qos: QoS::AtLeastOnce,
        completed: false,
        writes: 1,
    });
    let v = check(&ledger, &sub.deliveries(), QoS::ExactlyOnce);
    v.assert_clean("partition");
    assert_eq!(v.expected, 41);
    assert_eq!(sessions_lost(&publ.history()), 0);
    assert_eq!(sessions_lost(&sub.history()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stopped_majority_goes_on_then_old_leader_rejoins() {
    let c = blocking(|| cluster(3).start());
    let pl = place(&c);
    let old_leader = pl.leader;
    let sub = strict_at(&c, "ps-sub", pl.subscriber).await;
    sub.subscribe(&[("ps/#", QoS::ExactlyOnce)], PROMPT)
        .await
        .unwrap();
    // One publisher on a follower, one on the leader.
    let pf = strict_at(&c, "ps-pf", pl.publisher).await;
    let plead = strict_at(&c, "ps-pl", old_leader).await;
    for seq in 1..=10 {
        pf.publish("ps/f", payload("ps-pf", seq), QoS::ExactlyOnce, FLOW)
            .await
            .unwrap();
        plead
            .publish("ps/l", payload("ps-pl", seq), QoS::ExactlyOnce, FLOW)
            .await
            .unwrap();
    }

    stop(&c, old_leader);
    let guard = Resume(&c, vec![old_leader]);
    let stopped = Instant::now();
    // Both publishers keep going.
    let pending: Vec<_> = (11..=60)
        .flat_map(|seq| {
            [
                pf.publish_nowait("ps/f", payload("ps-pf", seq), QoS::ExactlyOnce, false),
                plead.publish_nowait("ps/l", payload("ps-pl", seq), QoS::ExactlyOnce, false),
            ]
        })
        .collect();
    // The two others elect a leader.
    let mut new_leader = None;
    blocking(|| {
        c.wait(ELECTION, "a new leader among the two running nodes", || {
            new_leader = [pl.publisher, pl.subscriber]
                .into_iter()
                .find(|id| c.try_status(*id).is_ok_and(|s| s["role"] == "leader"));
            new_leader.is_some()
        })
    });
    measure(
        "partition (leader stopped): new leader elected after",
        format!("{:?}", stopped.elapsed()),
    );
    // The majority goes on: both publishers complete everything while the old leader is
    // stopped (the one on the stopped node after its response timeout and a failover).
    for p in pending {
        p.wait(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&c, &[&pf, &plead, &sub])));
    }
    let on_majority = stopped.elapsed();
    assert_ne!(plead.connected_to(), Some(c.addr(old_leader)));
    let resumed = plead
        .history()
        .iter()
        .find(|r| r.at > stopped && matches!(r.event, Event::Connected { .. }))
        .map(|r| r.at - stopped);
    measure(
        "partition (leader stopped): its client resumed on another node after",
        format!("{resumed:?} (response timeout 3 s)"),
    );
    measure(
        "partition (leader stopped): 100 messages completed on the majority in",
        format!("{on_majority:?}"),
    );
    sub.wait_deliveries(FLOW, "120 messages", |d| d.len() >= 120)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&c, &[&pf, &plead, &sub])));

    // The old leader wakes up, steps down and catches up.
    drop(guard);
    let woke = Instant::now();
    blocking(|| {
        c.wait(CONVERGE, "the old leader to follow the new one", || {
            c.try_status(old_leader)
                .is_ok_and(|s| s["role"] == "follower" && s["leader"].as_u64() == new_leader)
        })
    });
    blocking(|| c.wait_converged(CONVERGE));
    measure(
        "partition (leader stopped): old leader followed and converged after resuming",
        format!("{:?}", woke.elapsed()),
    );
    // And serves: one more message through it.
    move_to(&pf, &c, old_leader).await;
    pf.publish("ps/f", payload("ps-pf", 61), QoS::ExactlyOnce, FLOW)
        .await
        .unwrap();
    sub.wait_deliveries(FLOW, "121 messages", |d| d.len() >= 121)
        .await
        .unwrap();
    blocking(|| c.wait_converged(CONVERGE));
    let mut ledger = ledger_from_history(&pf.history());
    ledger.extend(ledger_from_history(&plead.history()));
    let v = check(&ledger, &sub.deliveries(), QoS::ExactlyOnce);
    v.assert_no_loss_no_dup("leader stopped");
    assert!(
        v.unexplained_reorders().is_empty(),
        "{:?}",
        v.unexplained_reorders()
    );
    assert_eq!(v.expected, 121);
    for cl in [&pf, &plead, &sub] {
        assert_eq!(sessions_lost(&cl.history()), 0, "{}", cl.client_id());
    }
}

/// A real partition: the leader's peer traffic is dropped both ways (iptables, see
/// [`NetSplit`]) while every process runs. The leader, now the minority, refuses what needs a
/// commit; the two others elect a leader and go on, including with the client that was on the
/// old leader, which fails over to them; after healing the old leader follows, its uncommitted
/// entries are replaced, and nothing is lost or duplicated. Skipped (saying so) where the
/// machine cannot do it (not root, no iptables, no cgroup v2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_partitioned_by_the_network_both_sides_alive() {
    if let Err(why) = NetSplit::available() {
        println!("SKIPPED leader_partitioned_by_the_network_both_sides_alive: {why}");
        return;
    }
    let c = blocking(|| cluster(3).start());
    let pl = place(&c);
    let leader = pl.leader;
    let majority = [pl.publisher, pl.subscriber];
    let sub = strict_at(&c, "np-sub", pl.subscriber).await;
    sub.subscribe(&[("np/#", QoS::ExactlyOnce)], PROMPT)
        .await
        .unwrap();
    let on_majority = strict_at(&c, "np-pm", pl.publisher).await;
    let on_leader = strict_at(&c, "np-pl", leader).await;
    let (mut raw, _) = RawClient::connect(c.addr(leader), "np-raw", false).await;
    for seq in 1..=10 {
        on_majority
            .publish("np/m", payload("np-pm", seq), QoS::ExactlyOnce, FLOW)
            .await
            .unwrap();
        on_leader
            .publish("np/l", payload("np-pl", seq), QoS::ExactlyOnce, FLOW)
            .await
            .unwrap();
    }
    sub.wait_deliveries(FLOW, "20 messages", |d| d.len() >= 20)
        .await
        .unwrap();
    blocking(|| c.wait_converged(CONVERGE));

    let split = NetSplit::cut(&c, leader).unwrap_or_else(|e| panic!("cannot partition: {e}"));
    let cut = Instant::now();
    println!(
        "node {leader} cut off with {} iptables rules",
        split.rules()
    );
    let pending: Vec<_> = (11..=30)
        .flat_map(|seq| {
            [
                on_majority.publish_nowait("np/m", payload("np-pm", seq), QoS::ExactlyOnce, false),
                on_leader.publish_nowait("np/l", payload("np-pl", seq), QoS::ExactlyOnce, false),
            ]
        })
        .collect();
    // The minority refuses, visibly, within the commit timeout.
    raw.send(&qos2("np/r", "np-raw/1", 1, false)).await;
    let connect = async {
        let t = Instant::now();
        let (_, ack) = RawClient::connect(c.addr(leader), "np-new", false).await;
        assert_eq!(
            ack.code,
            ConnectReasonCode::ServerUnavailable,
            "persistent CONNECT"
        );
        t.elapsed()
    };
    let (q2, connack) = tokio::join!(
        refused_by_close(&mut raw, "QoS 2 from a persistent session"),
        connect
    );
    for (what, waited) in [
        ("persistent CONNECT refused (CONNACK 3)", connack),
        ("durable QoS 2 publish refused (connection closed)", q2),
    ] {
        measure(
            &format!("netsplit (minority): {what} after"),
            format!("{waited:?}"),
        );
        assert!(waited <= COMMIT_TIMEOUT + SLACK, "{what} after {waited:?}");
    }
    let minority_commit = || {
        blocking(|| c.status(leader))["commit_index"]
            .as_u64()
            .expect("commit index")
    };
    let committed = minority_commit();
    // The majority elects a leader and goes on, with both publishers (the old leader's client
    // fails over to it): everything completes while the partition lasts.
    let mut new_leader = None;
    blocking(|| {
        c.wait(ELECTION, "a leader on the majority side", || {
            new_leader = majority
                .into_iter()
                .find(|id| c.try_status(*id).is_ok_and(|s| s["role"] == "leader"));
            new_leader.is_some()
        })
    });
    measure(
        "netsplit (majority): new leader elected after",
        format!("{:?}", cut.elapsed()),
    );
    for p in pending {
        p.wait(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&c, &[&on_majority, &on_leader, &sub])));
    }
    let majority_done = cut.elapsed();
    assert_ne!(on_leader.connected_to(), Some(c.addr(leader)));
    let s = blocking(|| c.status(leader));
    let m = blocking(|| c.status(new_leader.expect("leader")));
    println!(
        "during the partition: old leader role={} term={} commit={}; new leader term={} commit={}",
        s["role"], s["term"], s["commit_index"], m["term"], m["commit_index"]
    );
    assert_ne!(s["role"], "leader", "the isolated leader stepped down");
    assert!(
        m["commit_index"].as_u64() > s["commit_index"].as_u64(),
        "the majority committed, the minority did not"
    );
    measure(
        "netsplit (majority): 40 messages (20 from the old leader's client) completed after",
        format!("{majority_done:?}"),
    );
    sub.wait_deliveries(FLOW, "60 messages", |d| d.len() >= 60)
        .await
        .unwrap();
    // The partition lasts past the commit timeout; the minority commits nothing meanwhile.
    tokio::time::sleep(
        (cut + COMMIT_TIMEOUT + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(
        minority_commit(),
        committed,
        "nothing committed on the minority side"
    );

    // Heal: the old leader follows the new one and catches up.
    let healed = Instant::now();
    split.heal();
    blocking(|| {
        c.wait(CONVERGE, "the old leader to follow the new one", || {
            c.try_status(leader)
                .is_ok_and(|s| s["role"] == "follower" && s["leader"].as_u64() == new_leader)
        })
    });
    blocking(|| c.wait_converged(CONVERGE));
    measure(
        "netsplit: old leader following and converged after healing",
        format!("{:?}", healed.elapsed()),
    );
    // The refused QoS 2 message is resent (DUP, same id) through the old leader: once.
    let (mut raw, ack) = RawClient::connect(c.addr(leader), "np-raw", false).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    assert!(ack.session_present);
    raw.send(&qos2("np/r", "np-raw/1", 1, true)).await;
    assert_eq!(raw.recv().await, Ok(Packet::PubRec(PubRec::new(1))));
    raw.send(&Packet::PubRel(PubRel::new(1))).await;
    assert_eq!(raw.recv().await, Ok(Packet::PubComp(PubComp::new(1))));
    sub.wait_deliveries(FLOW, "61 messages", |d| d.len() >= 61)
        .await
        .unwrap();
    blocking(|| c.wait_converged(CONVERGE));
    let mut ledger = ledger_from_history(&on_majority.history());
    ledger.extend(ledger_from_history(&on_leader.history()));
    ledger.push(Published {
        publisher: "np-raw".into(),
        topic: "np/r".into(),
        seq: 1,
        qos: QoS::ExactlyOnce,
        completed: true,
        writes: 2,
    });
    let v = check(&ledger, &sub.deliveries(), QoS::ExactlyOnce);
    v.assert_no_loss_no_dup("netsplit");
    assert!(
        v.unexplained_reorders().is_empty(),
        "{:?}",
        v.unexplained_reorders()
    );
    assert_eq!(v.expected, 61);
    for cl in [&on_majority, &on_leader, &sub] {
        assert_eq!(sessions_lost(&cl.history()), 0, "{}", cl.client_id());
    }
}
