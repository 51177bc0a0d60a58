//! `kill -9` of a node at each stage of a QoS 2 flow (and in the middle of a QoS 1 flow), in
//! both directions, with a persistent publisher and a persistent subscriber on two different
//! nodes and the Raft leader on the third: the node killed is the publisher's, the
//! subscriber's, or the leader. Every message is delivered exactly once (QoS 2), none is lost
//! (QoS 1), and the flows complete.
//!
//! One test per (direction, victim); each runs its four cells in one cluster,
//! `STARLING_STAGE_ROUNDS` times (default 3: what the broker had done when the node died is a
//! race, see below), restarting the killed node (and placing the clients again) before the
//! next cell. A cell:
//!
//! 1. place: leader L, publisher on follower P, subscriber on follower S;
//! 2. the strict client of the direction under test pauses at the stage (publisher: PUBLISH
//!    written / PUBREC read / PUBREL written; subscriber: PUBLISH read and delivered / PUBREC
//!    written / PUBREL read), the rest of the flow not yet on the wire;
//! 3. `kill -9` of the victim; the paused client then resumes: on the same connection if its
//!    node survived ([`Release::Continue`]), else it abandons the connection without writing
//!    what was due ([`Release::Reconnect`]) and resumes its session on another node;
//! 4. the publish completes, the subscriber receives the message and its flow completes (no
//!    id left awaiting PUBREL), and one more message goes through;
//! 5. the victim is restarted and every node converges to the same state.
//!
//! The stage is exact from the client's point of view; what the broker had done by the kill
//! (committed or not, PUBREC written or not) is whatever the race made it, and the protocol
//! must cope with either. `MEASURE` lines give each cell's time from the kill to completion.

use std::time::{Duration, Instant};

use starling_codec::QoS;
use starling_testkit::strict::{Held, Pending, Release, Stage};
use starling_testkit::StrictClient;

use crate::check::{check, ledger_from_history};
use crate::support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The publisher's flow (client → broker).
    Publisher,
    /// The subscriber's flow (broker → client).
    Subscriber,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    PublisherNode,
    SubscriberNode,
    Leader,
}

/// The cells of one direction: the three QoS 2 stages, then QoS 1 before its PUBACK.
fn cells(side: Side) -> [(QoS, Stage); 4] {
    match side {
        Side::Publisher => [
            (QoS::ExactlyOnce, Stage::PublishSent),
            (QoS::ExactlyOnce, Stage::PubRecReceived),
            (QoS::ExactlyOnce, Stage::PubRelSent),
            (QoS::AtLeastOnce, Stage::PublishSent),
        ],
        Side::Subscriber => [
            (QoS::ExactlyOnce, Stage::PublishReceived),
            (QoS::ExactlyOnce, Stage::PubRecSent),
            (QoS::ExactlyOnce, Stage::PubRelReceived),
            (QoS::AtLeastOnce, Stage::PublishReceived),
        ],
    }
}

async fn matrix(side: Side, victim: Victim, tag: &str) {
    let mut c = blocking(|| cluster(3).start());
    let pl = place(&c);
    let sub = strict_at(&c, &format!("{tag}-sub"), pl.subscriber).await;
    let filter = format!("{tag}/#");
    sub.subscribe(&[(filter.as_str(), QoS::ExactlyOnce)], PROMPT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&c, &[&sub])));
    let publisher = format!("{tag}-pub");
    let publ = strict_at(&c, &publisher, pl.publisher).await;

    // One message end to end first: the subscription is in place on every node.
    let mut seq = 0;
    send_and_expect(
        &c,
        &publ,
        &sub,
        &format!("{tag}/warmup"),
        seq,
        QoS::ExactlyOnce,
    )
    .await;

    let rounds = env_u64("STARLING_STAGE_ROUNDS", 3) as usize;
    let all = cells(side);
    for (cell, (qos, stage)) in (0..rounds * all.len()).map(|i| (i, all[i % all.len()])) {
        let pl = place(&c);
        move_to(&publ, &c, pl.publisher).await;
        move_to(&sub, &c, pl.subscriber).await;
        let victim_id = match victim {
            Victim::PublisherNode => pl.publisher,
            Victim::SubscriberNode => pl.subscriber,
            Victim::Leader => pl.leader,
        };
        let what = format!(
            "{tag} cell {cell}: QoS {} {side:?} at {stage:?}, kill node {victim_id} ({victim:?}; \
             leader {}, publisher on {}, subscriber on {})",
            qos as u8, pl.leader, pl.publisher, pl.subscriber
        );
        println!("{what}");
        let topic = format!("{tag}/{cell}");
        seq += 1;
        let body = payload(&publisher, seq);
        let (held_by, held, pending): (&StrictClient, Held, Pending) = match side {
            Side::Publisher => {
                let (held, pending) = publ
                    .publish_until(&topic, body.clone(), qos, stage, PROMPT)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}\n{}", diagnose(&c, &[&publ, &sub])));
                (&publ, held, pending)
            }
            Side::Subscriber => {
                sub.hold(stage, Some(&topic)).unwrap();
                let pending = publ.publish_nowait(&topic, body.clone(), qos, false);
                let held = sub
                    .wait_held(PROMPT)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}\n{}", diagnose(&c, &[&publ, &sub])));
                (&sub, held, pending)
            }
        };
        assert_eq!(held.stage, stage);

        let killed = Instant::now();
        blocking(|| c.kill9(victim_id));
        let how = if held.node == c.addr(victim_id) {
            Release::Reconnect
        } else {
            Release::Continue
        };
        held_by.release(how).unwrap();

        // The publish completes, the subscriber gets the message and completes its flow.
        let done = pending
            .wait(FLOW)
            .await
            .unwrap_or_else(|e| panic!("{what}: publish: {e}\n{}", diagnose(&c, &[&publ, &sub])));
        let wanted = body.clone();
        sub.wait_deliveries(FLOW, &format!("message {seq}"), |d| {
            d.iter().any(|d| d.payload == wanted.as_bytes())
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", diagnose(&c, &[&publ, &sub])));
        wait_inbound_done(&c, &sub, &publ, &what).await;
        let sub_done = killed.elapsed();
        measure(
            &format!("{tag} cell {cell} ({stage:?}, QoS {}, {how:?})", qos as u8),
            format!(
                "after the kill: publish completed {:?}, subscriber's flow completed {:?}; \
                 PUBLISH written {} times",
                done.completed.saturating_duration_since(killed),
                sub_done,
                done.publish_writes
            ),
        );

        // The flows go on with the node down.
        seq += 1;
        send_and_expect(&c, &publ, &sub, &topic, seq, QoS::ExactlyOnce).await;

        blocking(|| {
            c.restart(victim_id);
            c.wait_for_leader(ELECTION);
            c.wait_converged(CONVERGE)
        });
    }

    // Every message exactly once (QoS 1 at least once), in order per topic.
    publ.wait_idle(FLOW).await.unwrap();
    let ledger = ledger_from_history(&publ.history());
    assert_eq!(ledger.len() as u64, seq + 1, "every message was written");
    let deliveries = sub.deliveries();
    let v = check(&ledger, &deliveries, QoS::ExactlyOnce);
    println!(
        "{tag}: {} messages, {} deliveries ({} QoS 1 redeliveries)",
        v.expected, v.deliveries, v.qos1_redeliveries
    );
    v.assert_clean(tag);
    assert_eq!(
        sessions_lost(&publ.history()),
        0,
        "{tag}: publisher session lost"
    );
    assert_eq!(
        sessions_lost(&sub.history()),
        0,
        "{tag}: subscriber session lost"
    );
}

/// Publishes message `seq` and waits until it is completed and delivered.
async fn send_and_expect(
    c: &starling_testkit::TestCluster,
    publ: &StrictClient,
    sub: &StrictClient,
    topic: &str,
    seq: u64,
    qos: QoS,
) {
    let body = payload(publ.client_id(), seq);
    publ.publish(topic, body.clone(), qos, FLOW)
        .await
        .unwrap_or_else(|e| panic!("message {seq}: {e}\n{}", diagnose(c, &[publ, sub])));
    sub.wait_deliveries(FLOW, &format!("message {seq}"), |d| {
        d.iter().any(|d| d.payload == body.as_bytes())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(c, &[publ, sub])));
    wait_inbound_done(c, sub, publ, &format!("message {seq}")).await;
}

/// Waits until the subscriber has no QoS 2 id awaiting PUBREL: the broker sent PUBREL for
/// everything it delivered (exactly-once rule 2 completes).
async fn wait_inbound_done(
    c: &starling_testkit::TestCluster,
    sub: &StrictClient,
    publ: &StrictClient,
    what: &str,
) {
    let deadline = Instant::now() + FLOW;
    while !sub.inbound_awaiting().is_empty() {
        if Instant::now() >= deadline {
            panic!(
                "{what}: the subscriber still awaits PUBREL for {:?} after {FLOW:?}\n{}",
                sub.inbound_awaiting(),
                diagnose(c, &[publ, sub])
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_flow_kill_publishers_node() {
    matrix(Side::Publisher, Victim::PublisherNode, "pf-pn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_flow_kill_subscribers_node() {
    matrix(Side::Publisher, Victim::SubscriberNode, "pf-sn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_flow_kill_leader() {
    matrix(Side::Publisher, Victim::Leader, "pf-l").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_flow_kill_publishers_node() {
    matrix(Side::Subscriber, Victim::PublisherNode, "sf-pn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_flow_kill_subscribers_node() {
    matrix(Side::Subscriber, Victim::SubscriberNode, "sf-sn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_flow_kill_leader() {
    matrix(Side::Subscriber, Victim::Leader, "sf-l").await;
}
