//! Persistence on one node: what a persistent session, the retained store and the inbound and
//! outbound QoS 2 stages hold survives `kill -9` and a graceful SIGTERM, exactly once.
//!
//! Every broker here runs with the default `fsync = "always"`: a PUBACK/PUBREC/PUBCOMP the
//! broker sent for a persistent session means the state it acknowledges is on disk.

#[path = "../common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use starling_codec::{
    ConnAck, ConnectReasonCode, Disconnect, LastWill, Packet, ProtocolVersion, PubAck, PubComp,
    PubRec, PubRel, Publish, QoS, Subscribe, SubscribeFilter,
};
use starling_testkit::raw::connect_packet;
use starling_testkit::{RawClient, RecvError};

use crate::common::*;

fn ack(session_present: bool) -> ConnAck {
    ConnAck {
        session_present,
        code: ConnectReasonCode::Success,
        properties: Default::default(),
    }
}

fn publish(topic: &str, payload: &[u8], qos: QoS, packet_id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        payload: Bytes::copy_from_slice(payload),
        properties: Default::default(),
    })
}

async fn disconnect(mut c: RawClient) {
    c.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_closed_silently(&mut c).await;
}

/// Receives the next PUBLISH, failing on anything else.
async fn next_publish(c: &mut RawClient) -> Publish {
    match c.recv().await {
        Ok(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Completes the handshake of a received QoS 1/2 message.
async fn complete(c: &mut RawClient, p: &Publish) {
    match p.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await,
        QoS::ExactlyOnce => {
            c.send(&Packet::PubRec(PubRec::new(p.packet_id))).await;
            assert_eq!(c.recv().await, Ok(Packet::PubRel(PubRel::new(p.packet_id))));
            c.send(&Packet::PubComp(PubComp::new(p.packet_id))).await;
        }
    }
}

/// Acts as a well-behaved client until `n` PUBLISHes have arrived and every QoS 2 handshake is
/// complete (PUBACK or PUBREC at once, PUBCOMP for each PUBREL); returns them in arrival order.
async fn receive_all(c: &mut RawClient, n: usize) -> Vec<Publish> {
    let mut got = Vec::with_capacity(n);
    let mut open = std::collections::HashSet::new();
    while got.len() < n || !open.is_empty() {
        match c.recv().await {
            Ok(Packet::Publish(p)) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await,
                    QoS::ExactlyOnce => {
                        assert!(
                            open.insert(p.packet_id),
                            "packet id {} reused while in flight",
                            p.packet_id
                        );
                        c.send(&Packet::PubRec(PubRec::new(p.packet_id))).await;
                    }
                }
                got.push(p);
            }
            Ok(Packet::PubRel(PubRel { packet_id: id, .. })) => {
                assert!(
                    open.remove(&id),
                    "PUBREL for {id}, which is not at PUBREC stage"
                );
                c.send(&Packet::PubComp(PubComp::new(id))).await;
            }
            other => panic!("after {} PUBLISHes: {other:?}", got.len()),
        }
    }
    got
}

/// Waits until everything the client sent before is committed: a persistent session's SUBSCRIBE
/// is answered after its commit, and the log commits in order. (A client's PUBACK or PUBCOMP is
/// committed in the background: a crash right after it may make the broker resend the PUBLISH or
/// PUBREL, as the protocol allows.)
async fn commit_barrier(c: &mut RawClient) {
    c.subscribe(99, &[("barrier/none", QoS::AtMostOnce)]).await;
}

async fn assert_silent(c: &mut RawClient) {
    assert_eq!(
        c.recv_within(Duration::from_millis(500)).await,
        Err(RecvError::Timeout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_qos1_and_qos2_survive_kill_9() {
    const N: usize = 30;
    let mut b = broker();
    let (mut sub, a) = RawClient::connect(b.addr(), "ps", false).await;
    assert_eq!(a, ack(false));
    sub.subscribe(1, &[("p/t", QoS::ExactlyOnce)]).await;
    disconnect(sub).await;
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    for i in 0..N {
        publ.publish("p/t", rumqttc::QoS::AtLeastOnce, false, format!("1-{i}"))
            .await;
        publ.publish("p/t", rumqttc::QoS::ExactlyOnce, false, format!("2-{i}"))
            .await;
    }
    b.kill9();
    b.restart();
    let (mut sub, a) = RawClient::connect(b.addr(), "ps", false).await;
    assert_eq!(a, ack(true));
    let got: Vec<(String, QoS, bool)> = receive_all(&mut sub, 2 * N)
        .await
        .into_iter()
        .map(|p| (String::from_utf8(p.payload.to_vec()).unwrap(), p.qos, p.dup))
        .collect();
    let want: Vec<(String, QoS, bool)> = (0..N)
        .flat_map(|i| {
            [
                (format!("1-{i}"), QoS::AtLeastOnce, false),
                (format!("2-{i}"), QoS::ExactlyOnce, false),
            ]
        })
        .collect();
    assert_eq!(got, want);
    assert_silent(&mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_qos2_survives_kill_9_without_duplicates() {
    let mut b = broker();
    let (mut sub, _) = RawClient::connect(b.addr(), "ps2", false).await;
    sub.subscribe(1, &[("p2/t", QoS::ExactlyOnce)]).await;
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    for i in 0..4 {
        publ.publish("p2/t", rumqttc::QoS::ExactlyOnce, false, format!("m{i}"))
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_publish(&mut sub).await);
    }
    // The first two reach PUBREC; the PUBREL means the stage is committed.
    for p in &got[..2] {
        sub.send(&Packet::PubRec(PubRec::new(p.packet_id))).await;
        assert_eq!(
            sub.recv().await,
            Ok(Packet::PubRel(PubRel::new(p.packet_id)))
        );
    }
    b.kill9();
    b.restart();
    drop(sub);
    let (mut sub, a) = RawClient::connect(b.addr(), "ps2", false).await;
    assert_eq!(a, ack(true));
    // In sequence: PUBREL for the released ones, the others again as DUP PUBLISH, same ids.
    for p in &got[..2] {
        assert_eq!(
            sub.recv().await,
            Ok(Packet::PubRel(PubRel::new(p.packet_id)))
        );
    }
    for p in &got[2..] {
        let again = next_publish(&mut sub).await;
        assert_eq!(
            (&again.payload[..], again.packet_id, again.dup, again.qos),
            (&p.payload[..], p.packet_id, true, QoS::ExactlyOnce)
        );
    }
    for p in &got[..2] {
        sub.send(&Packet::PubComp(PubComp::new(p.packet_id))).await;
    }
    for p in &got[2..] {
        complete(&mut sub, p).await;
    }
    assert_silent(&mut sub).await;
    // Nothing comes back on the next resume either.
    disconnect(sub).await;
    let (mut sub, _) = RawClient::connect(b.addr(), "ps2", false).await;
    assert_silent(&mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_qos2_awaiting_pubrel_survives_kill_9() {
    let mut b = broker();
    let (mut sub, _) = RawClient::connect(b.addr(), "sub", false).await;
    sub.subscribe(1, &[("in/t", QoS::ExactlyOnce)]).await;
    let (mut publ, _) = RawClient::connect(b.addr(), "pp", false).await;
    publ.send(&publish(
        "in/t",
        b"exactly once",
        QoS::ExactlyOnce,
        7,
        false,
    ))
    .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(7))));
    // The subscriber has it, completely, before the crash.
    let p = next_publish(&mut sub).await;
    assert_eq!(&p.payload[..], b"exactly once");
    complete(&mut sub, &p).await;
    commit_barrier(&mut sub).await;
    disconnect(sub).await;
    b.kill9();
    b.restart();
    drop(publ);
    let (mut publ, a) = RawClient::connect(b.addr(), "pp", false).await;
    assert_eq!(a, ack(true));
    publ.send(&publish("in/t", b"exactly once", QoS::ExactlyOnce, 7, true))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(7))));
    publ.send(&Packet::PubRel(PubRel::new(7))).await;
    assert_eq!(publ.recv().await, Ok(Packet::PubComp(PubComp::new(7))));
    publ.send(&publish("in/t", b"after", QoS::AtLeastOnce, 8, false))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubAck(PubAck::new(8))));
    let (mut sub, a) = RawClient::connect(b.addr(), "sub", false).await;
    assert_eq!(a, ack(true));
    let p = next_publish(&mut sub).await;
    assert_eq!(
        &p.payload[..],
        b"after",
        "the resent PUBLISH was delivered again"
    );
    complete(&mut sub, &p).await;
    assert_silent(&mut sub).await;
}

/// The retained messages a new subscription to `filter` gets: everything that arrives before the
/// SUBACK of a second SUBSCRIBE sent right after (retained messages follow their own SUBACK).
async fn retained(b: &starling_testkit::BrokerProcess, filter: &str) -> Vec<(String, Vec<u8>)> {
    let (mut c, _) = RawClient::connect(b.addr(), "retained-reader", true).await;
    for (id, f) in [(1, filter), (2, "no/such/topic")] {
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: id,
            filters: vec![SubscribeFilter::new(f.into(), QoS::AtMostOnce)],
            properties: Default::default(),
        }))
        .await;
    }
    let mut out = Vec::new();
    loop {
        match c.recv().await {
            Ok(Packet::SubAck(a)) if a.packet_id == 2 => break,
            Ok(Packet::SubAck(_)) => {}
            Ok(Packet::Publish(p)) => {
                assert!(p.retain, "{p:?}");
                out.push((p.topic.to_string(), p.payload.to_vec()));
            }
            other => panic!("{other:?}"),
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_restart() {
    let mut b = broker();
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("ret/a", rumqttc::QoS::AtLeastOnce, true, "a")
        .await;
    publ.publish("ret/b", rumqttc::QoS::ExactlyOnce, true, "b")
        .await;
    b.kill9();
    b.restart();
    let want = |v: &[(&str, &str)]| -> Vec<(String, Vec<u8>)> {
        v.iter()
            .map(|(t, p)| (t.to_string(), p.as_bytes().to_vec()))
            .collect()
    };
    assert_eq!(
        retained(&b, "ret/#").await,
        want(&[("ret/a", "a"), ("ret/b", "b")])
    );
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("ret/a", rumqttc::QoS::AtLeastOnce, true, "")
        .await;
    publ.publish("ret/c", rumqttc::QoS::AtMostOnce, true, "c")
        .await;
    // QoS 0 has no acknowledgement: wait until it is stored before stopping.
    starling_testkit::wait_until_async(PROMPT, "ret/c to be retained", || {
        let b = &b;
        async move { retained(b, "ret/c").await.len() == 1 }
    })
    .await;
    assert_eq!(
        b.terminate(Duration::from_secs(10)),
        Some(0),
        "graceful shutdown must exit 0"
    );
    b.restart();
    assert_eq!(
        retained(&b, "ret/#").await,
        want(&[("ret/b", "b"), ("ret/c", "c")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_restart() {
    let mut b = broker();
    let (mut sub, _) = RawClient::connect(b.addr(), "ss", false).await;
    sub.subscribe(1, &[("s/a", QoS::AtLeastOnce), ("s/+/b", QoS::ExactlyOnce)])
        .await;
    disconnect(sub).await;
    b.kill9();
    b.restart();
    // Offline after the restart: messages are queued for the restored subscriptions.
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("s/a", rumqttc::QoS::ExactlyOnce, false, "a")
        .await;
    publ.publish("s/x/b", rumqttc::QoS::ExactlyOnce, false, "xb")
        .await;
    publ.publish("s/c", rumqttc::QoS::ExactlyOnce, false, "not subscribed")
        .await;
    let (mut sub, a) = RawClient::connect(b.addr(), "ss", false).await;
    assert_eq!(a, ack(true));
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = next_publish(&mut sub).await;
        complete(&mut sub, &p).await;
        got.push((p.topic.to_string(), p.qos));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("s/a".to_string(), QoS::AtLeastOnce),
            ("s/x/b".to_string(), QoS::ExactlyOnce)
        ]
    );
    assert_silent(&mut sub).await;
    // Online, after a second crash: live delivery on reconnect.
    b.kill9();
    b.restart();
    drop(sub);
    let (mut sub, a) = RawClient::connect(b.addr(), "ss", false).await;
    assert_eq!(a, ack(true));
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("s/a", rumqttc::QoS::AtLeastOnce, false, "live")
        .await;
    let p = next_publish(&mut sub).await;
    assert_eq!((p.topic.as_ref(), &p.payload[..]), ("s/a", &b"live"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_present_after_restart() {
    let mut b = broker();
    let (c, a) = RawClient::connect(b.addr(), "kept", false).await;
    assert_eq!(a, ack(false));
    disconnect(c).await;
    let (c, a) = RawClient::connect(b.addr(), "clean", true).await;
    assert_eq!(a, ack(false));
    disconnect(c).await;
    b.kill9();
    b.restart();
    let (c, a) = RawClient::connect(b.addr(), "kept", false).await;
    assert_eq!(a, ack(true));
    disconnect(c).await;
    let (c, a) = RawClient::connect(b.addr(), "clean", false).await;
    assert_eq!(a, ack(false), "a clean session leaves nothing to resume");
    disconnect(c).await;
    // And through a graceful restart.
    assert_eq!(b.terminate(Duration::from_secs(10)), Some(0));
    b.restart();
    let (_c, a) = RawClient::connect(b.addr(), "kept", false).await;
    assert_eq!(a, ack(true));
}

/// A persistent session whose client is connected when the broker is killed has its will
/// published when the broker comes back: on recovery the store finds the sessions that the
/// previous run still owned, takes them offline and publishes their wills (retained if asked),
/// as if each connection had been lost. Clean sessions are not stored, so their wills are lost
/// with the process (as in Mosquitto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_of_clients_connected_at_crash_are_published_after_restart() {
    let mut b = broker();
    let (mut watcher, _) = RawClient::connect(b.addr(), "watcher", false).await;
    watcher.subscribe(1, &[("will/#", QoS::AtLeastOnce)]).await;
    disconnect(watcher).await;
    let will = LastWill {
        topic: "will/dying".into(),
        payload: Bytes::from_static(b"crashed with the broker"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    };
    let connect = connect_packet("dying", false, ProtocolVersion::V3_1_1, 60, Some(will));
    let (mut dying, a) = RawClient::connect_with(b.addr(), connect).await;
    assert_eq!(a, ack(false));
    dying.send(&Packet::PingReq).await;
    assert_eq!(dying.recv().await, Ok(Packet::PingResp));
    b.kill9();
    b.restart();
    drop(dying);
    let (mut watcher, a) = RawClient::connect(b.addr(), "watcher", false).await;
    assert_eq!(a, ack(true));
    let p = next_publish(&mut watcher).await;
    assert_eq!(
        (p.topic.as_ref(), &p.payload[..], p.qos),
        (
            "will/dying",
            &b"crashed with the broker"[..],
            QoS::AtLeastOnce
        )
    );
    complete(&mut watcher, &p).await;
    assert_silent(&mut watcher).await;
    assert_eq!(
        retained(&b, "will/#").await,
        [(
            "will/dying".to_string(),
            b"crashed with the broker".to_vec()
        )]
    );
    // The session itself is kept, offline: its owner can resume it.
    let (_c, a) = RawClient::connect(b.addr(), "dying", false).await;
    assert_eq!(a, ack(true));
}

/// DISCONNECT discards the will for good: the broker closes the socket only once the session's
/// disconnect is committed, so killing it the moment the close is seen cannot resurrect the will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_discarded_by_disconnect_stays_discarded_across_kill_9() {
    let mut b = broker();
    let (mut watcher, _) = RawClient::connect(b.addr(), "watcher", false).await;
    watcher.subscribe(1, &[("will/#", QoS::AtLeastOnce)]).await;
    disconnect(watcher).await;
    for round in 0..5 {
        let will = LastWill {
            topic: format!("will/polite-{round}").as_str().into(),
            payload: Bytes::from_static(b"must never appear"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        };
        let connect = connect_packet("polite", false, ProtocolVersion::V3_1_1, 60, Some(will));
        let (mut polite, _) = RawClient::connect_with(b.addr(), connect).await;
        polite
            .send(&Packet::Disconnect(Disconnect::default()))
            .await;
        assert!(
            polite.closed_within(Duration::from_secs(5)).await,
            "DISCONNECT closes the connection"
        );
        b.kill9();
        b.restart();
    }
    let (mut watcher, a) = RawClient::connect(b.addr(), "watcher", false).await;
    assert_eq!(a, ack(true));
    assert_silent(&mut watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_graceful_shutdown_persists_and_closes_clients() {
    let mut b = broker();
    let (mut sub, _) = RawClient::connect(b.addr(), "g", false).await;
    sub.subscribe(1, &[("g/t", QoS::ExactlyOnce)]).await;
    let (mut clean, _) = RawClient::connect(b.addr(), "g-clean", true).await;
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("g/t", rumqttc::QoS::AtLeastOnce, false, "in flight")
        .await;
    let inflight = next_publish(&mut sub).await;
    // Not acknowledged; and one more that the session holds at PUBREL stage.
    publ.publish("g/t", rumqttc::QoS::ExactlyOnce, false, "released")
        .await;
    let released = next_publish(&mut sub).await;
    sub.send(&Packet::PubRec(PubRec::new(released.packet_id)))
        .await;
    assert_eq!(
        sub.recv().await,
        Ok(Packet::PubRel(PubRel::new(released.packet_id)))
    );
    drop(publ);
    assert_eq!(
        b.terminate(Duration::from_secs(10)),
        Some(0),
        "SIGTERM must exit 0"
    );
    // Every client was closed by the broker.
    assert!(sub.closed_within(Duration::from_secs(1)).await);
    assert!(clean.closed_within(Duration::from_secs(1)).await);
    wait_log(&b, "shutdown log line", |l| {
        l.contains("session store stopped")
    })
    .await;
    b.restart();
    let (mut sub, a) = RawClient::connect(b.addr(), "g", false).await;
    assert_eq!(a, ack(true));
    let again = next_publish(&mut sub).await;
    assert_eq!(
        (&again.payload[..], again.packet_id, again.dup),
        (&b"in flight"[..], inflight.packet_id, true)
    );
    assert_eq!(
        sub.recv().await,
        Ok(Packet::PubRel(PubRel::new(released.packet_id)))
    );
    sub.send(&Packet::PubAck(PubAck::new(again.packet_id)))
        .await;
    sub.send(&Packet::PubComp(PubComp::new(released.packet_id)))
        .await;
    assert_silent(&mut sub).await;
}
