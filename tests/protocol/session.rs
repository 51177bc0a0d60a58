//! Sessions: clean sessions leave nothing behind; persistent sessions keep subscriptions, queue
//! QoS 1/2 while offline, resend what is in flight on resume (DUP PUBLISH, PUBREL) before the
//! queue, keep inbound QoS 2 ids, can expire; the session-present flag; takeover of a session.

use std::time::Duration;

use bytes::Bytes;
use starling_codec::{
    ConnAck, ConnectReasonCode, Disconnect, Packet, ProtocolVersion, PubAck, PubComp, PubRec,
    PubRel, Publish, QoS,
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

async fn disconnect(mut c: RawClient) {
    c.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_closed_silently(&mut c).await;
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

#[tokio::test]
async fn clean_session_discards_state() {
    let b = broker();
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    // A persistent session with a subscription and a queued message...
    let (mut c, a) = RawClient::connect(b.addr(), "cs", false).await;
    assert_eq!(a, ack(false));
    c.subscribe(1, &[("cs/t", QoS::AtLeastOnce)]).await;
    disconnect(c).await;
    publ.publish("cs/t", rumqttc::QoS::AtLeastOnce, false, "queued")
        .await;
    // ...is discarded by a clean-session connect: no session, no queued message, no subscription.
    let (mut c, a) = RawClient::connect(b.addr(), "cs", true).await;
    assert_eq!(a, ack(false));
    publ.publish("cs/t", rumqttc::QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(
        c.recv_within(Duration::from_millis(500)).await,
        Err(RecvError::Timeout)
    );
    // A clean session's own state is discarded at disconnect.
    c.subscribe(2, &[("cs/clean", QoS::AtLeastOnce)]).await;
    disconnect(c).await;
    let (mut c, a) = RawClient::connect(b.addr(), "cs", true).await;
    assert_eq!(a, ack(false));
    publ.publish("cs/clean", rumqttc::QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(
        c.recv_within(Duration::from_millis(500)).await,
        Err(RecvError::Timeout)
    );
    disconnect(c).await;
    // And nothing was stored for the id.
    let (_c, a) = RawClient::connect(b.addr(), "cs", false).await;
    assert_eq!(a, ack(false));
}

#[tokio::test]
async fn session_present_flag_on_resume() {
    let b = broker();
    let opts = |clean| options(b.addr(), "sp", clean);
    let (m, a) = Mqtt::connect_with(opts(false)).await;
    assert!(!a.session_present, "new session");
    m.disconnect().await;
    let (m, a) = Mqtt::connect_with(opts(false)).await;
    assert!(a.session_present, "resumed session");
    m.disconnect().await;
    let (m, a) = Mqtt::connect_with(opts(true)).await;
    assert!(!a.session_present, "clean session");
    m.disconnect().await;
    let (_m, a) = Mqtt::connect_with(opts(false)).await;
    assert!(
        !a.session_present,
        "the clean connect discarded the stored session"
    );
}

#[tokio::test]
async fn mqtt31_connack_never_sets_session_present() {
    let b = broker();
    for _ in 0..2 {
        let connect = connect_packet("sp31", false, ProtocolVersion::V3_1, 60, None);
        let (c, a) = RawClient::connect_with(b.addr(), connect).await;
        assert_eq!(a, ack(false));
        disconnect(c).await;
    }
    // The session was kept all the same: 3.1.1 sees it.
    let (_c, a) = RawClient::connect(b.addr(), "sp31", false).await;
    assert_eq!(a, ack(true));
}

#[tokio::test]
async fn persistent_session_gets_messages_queued_while_offline() {
    let b = broker();
    let mut sub = Mqtt::connect(b.addr(), "off", false).await;
    sub.subscribe("off/t", rumqttc::QoS::ExactlyOnce).await;
    sub.disconnect().await;
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("off/t", rumqttc::QoS::AtMostOnce, false, "zero")
        .await;
    publ.publish("off/t", rumqttc::QoS::AtLeastOnce, false, "one")
        .await;
    publ.publish("off/t", rumqttc::QoS::ExactlyOnce, false, "two")
        .await;
    let (mut sub, a) = Mqtt::connect_with(options(b.addr(), "off", false)).await;
    assert!(a.session_present);
    let p = sub.next_publish().await;
    assert_eq!(
        (&p.payload[..], p.qos),
        (&b"one"[..], rumqttc::QoS::AtLeastOnce)
    );
    let p = sub.next_publish().await;
    assert_eq!(
        (&p.payload[..], p.qos),
        (&b"two"[..], rumqttc::QoS::ExactlyOnce)
    );
    // The QoS 0 message was not queued: the next one is a live message published now.
    publ.publish("off/t", rumqttc::QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"live");
}

#[tokio::test]
async fn resume_resends_unacked_publish_with_dup_and_pubrel() {
    let b = broker();
    let (mut sub, _) = RawClient::connect(b.addr(), "rs", false).await;
    sub.subscribe(1, &[("rs/t", QoS::ExactlyOnce)]).await;
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("rs/t", rumqttc::QoS::AtLeastOnce, false, "q1")
        .await;
    publ.publish("rs/t", rumqttc::QoS::ExactlyOnce, false, "q2")
        .await;
    let p1 = sub.next_publish().await.unwrap();
    let p2 = sub.next_publish().await.unwrap();
    assert_eq!(
        (&p1.payload[..], p1.qos, p1.dup),
        (&b"q1"[..], QoS::AtLeastOnce, false)
    );
    assert_eq!(
        (&p2.payload[..], p2.qos, p2.dup),
        (&b"q2"[..], QoS::ExactlyOnce, false)
    );
    sub.send(&Packet::PubRec(PubRec::new(p2.packet_id))).await;
    assert_eq!(
        sub.recv().await,
        Ok(Packet::PubRel(PubRel::new(p2.packet_id)))
    );
    // Drop the connection with the QoS 1 message unacknowledged and the QoS 2 one at PUBREL.
    drop(sub);
    wait_log(&b, "socket error log line", |l| {
        l.contains("Socket error on client rs,")
    })
    .await;
    publ.publish("rs/t", rumqttc::QoS::AtLeastOnce, false, "queued")
        .await;
    let (mut sub, a) = RawClient::connect(b.addr(), "rs", false).await;
    assert_eq!(a, ack(true));
    let resent = sub.next_publish().await.unwrap();
    assert_eq!(
        (
            &resent.payload[..],
            resent.qos,
            resent.dup,
            resent.packet_id
        ),
        (&b"q1"[..], QoS::AtLeastOnce, true, p1.packet_id)
    );
    assert_eq!(
        sub.recv().await,
        Ok(Packet::PubRel(PubRel::new(p2.packet_id)))
    );
    let queued = sub.next_publish().await.unwrap();
    assert_eq!((&queued.payload[..], queued.dup), (&b"queued"[..], false));
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        Err(RecvError::Timeout)
    );
    // Completing them ends the story: the next resume resends nothing.
    sub.send(&Packet::PubAck(PubAck::new(p1.packet_id))).await;
    sub.send(&Packet::PubComp(PubComp::new(p2.packet_id))).await;
    sub.send(&Packet::PubAck(PubAck::new(queued.packet_id)))
        .await;
    disconnect(sub).await;
    let (mut sub, a) = RawClient::connect(b.addr(), "rs", false).await;
    assert_eq!(a, ack(true));
    publ.publish("rs/t", rumqttc::QoS::AtLeastOnce, false, "after")
        .await;
    let next = sub.next_publish().await.unwrap();
    assert_eq!((&next.payload[..], next.dup), (&b"after"[..], false));
}

#[tokio::test]
async fn inbound_qos2_awaiting_pubrel_survives_reconnect() {
    let b = broker();
    let mut sub = Mqtt::connect(b.addr(), "sub", true).await;
    sub.subscribe("in2/t", rumqttc::QoS::ExactlyOnce).await;
    let (mut publ, _) = RawClient::connect(b.addr(), "in2", false).await;
    publ.send(&publish("in2/t", b"once", QoS::ExactlyOnce, 7, false))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(7))));
    drop(publ);
    let (mut publ, a) = RawClient::connect(b.addr(), "in2", false).await;
    assert_eq!(a, ack(true));
    publ.send(&publish("in2/t", b"once", QoS::ExactlyOnce, 7, true))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(7))));
    publ.send(&Packet::PubRel(PubRel::new(7))).await;
    assert_eq!(publ.recv().await, Ok(Packet::PubComp(PubComp::new(7))));
    publ.send(&publish("in2/t", b"marker", QoS::ExactlyOnce, 8, false))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(8))));
    assert_eq!(&sub.next_publish().await.payload[..], b"once");
    assert_eq!(
        &sub.next_publish().await.payload[..],
        b"marker",
        "the DUP resend was routed again"
    );
}

#[tokio::test]
async fn takeover_of_persistent_session_moves_delivery_to_new_connection() {
    let b = broker();
    let (mut old, a) = RawClient::connect(b.addr(), "tp", false).await;
    assert_eq!(a, ack(false));
    old.subscribe(1, &[("tp/t", QoS::AtLeastOnce)]).await;
    let (mut new, a) = RawClient::connect(b.addr(), "tp", false).await;
    assert_eq!(a, ack(true));
    assert_closed_silently(&mut old).await;
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("tp/t", rumqttc::QoS::AtLeastOnce, false, "to the new one")
        .await;
    let p = new.next_publish().await.unwrap();
    assert_eq!(&p.payload[..], b"to the new one");
    wait_log(&b, "takeover log line", |l| {
        l.contains("Client tp already connected, closing old connection.")
    })
    .await;
}

#[tokio::test]
async fn abandoned_persistent_session_expires_after_configured_time() {
    let b = broker_env(&[("STARLING_MQTT_SESSION_EXPIRY_SECS", "1")]);
    let (mut c, a) = RawClient::connect(b.addr(), "gone", false).await;
    assert_eq!(a, ack(false));
    c.subscribe(1, &[("gone/t", QoS::AtLeastOnce)]).await;
    disconnect(c).await;
    // Expiry is checked on a 10 s sweep.
    starling_testkit::wait_until_async(Duration::from_secs(15), "session expiry log line", || {
        std::future::ready(
            b.log_lines()
                .iter()
                .any(|l| l.contains("persistent session expired") && l.contains("gone")),
        )
    })
    .await;
    let (mut c, a) = RawClient::connect(b.addr(), "gone", false).await;
    assert_eq!(a, ack(false), "expired session was resumed");
    // Its subscription went with it.
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("gone/t", rumqttc::QoS::AtLeastOnce, false, "x")
        .await;
    assert_eq!(
        c.recv_within(Duration::from_millis(500)).await,
        Err(RecvError::Timeout)
    );
}

#[tokio::test]
async fn connected_persistent_session_does_not_expire() {
    let b = broker_env(&[("STARLING_MQTT_SESSION_EXPIRY_SECS", "1")]);
    let (mut c, _) = RawClient::connect(b.addr(), "stays", false).await;
    c.subscribe(1, &[("stays/t", QoS::AtLeastOnce)]).await;
    // Three expiry periods online, kept alive by pings.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    for _ in 0..6 {
        tick.tick().await;
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Ok(Packet::PingResp));
    }
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("stays/t", rumqttc::QoS::AtLeastOnce, false, "still here")
        .await;
    assert_eq!(&c.next_publish().await.unwrap().payload[..], b"still here");
}

#[tokio::test]
async fn takeover_resends_unacknowledged_messages_to_the_new_connection() {
    let b = broker();
    let (mut old, _) = RawClient::connect(b.addr(), "tr", false).await;
    old.subscribe(1, &[("tr/t", QoS::ExactlyOnce)]).await;
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("tr/t", rumqttc::QoS::AtLeastOnce, false, "unacked")
        .await;
    publ.publish("tr/t", rumqttc::QoS::ExactlyOnce, false, "at pubrel")
        .await;
    let p1 = old.next_publish().await.unwrap();
    let p2 = old.next_publish().await.unwrap();
    old.send(&Packet::PubRec(PubRec::new(p2.packet_id))).await;
    assert_eq!(
        old.recv().await,
        Ok(Packet::PubRel(PubRel::new(p2.packet_id)))
    );
    let (mut new, a) = RawClient::connect(b.addr(), "tr", false).await;
    assert_eq!(a, ack(true));
    assert_closed_silently(&mut old).await;
    let again = new.next_publish().await.unwrap();
    assert_eq!(
        (&again.payload[..], again.packet_id, again.dup, again.qos),
        (&b"unacked"[..], p1.packet_id, true, QoS::AtLeastOnce)
    );
    assert_eq!(
        new.recv().await,
        Ok(Packet::PubRel(PubRel::new(p2.packet_id)))
    );
    new.send(&Packet::PubAck(PubAck::new(again.packet_id)))
        .await;
    new.send(&Packet::PubComp(PubComp::new(p2.packet_id))).await;
    assert_eq!(
        new.recv_within(Duration::from_millis(300)).await,
        Err(RecvError::Timeout)
    );
}

#[tokio::test]
async fn clean_connect_takes_over_and_discards_a_connected_persistent_session() {
    let b = broker();
    let (mut old, _) = RawClient::connect(b.addr(), "cd", false).await;
    old.subscribe(1, &[("cd/t", QoS::AtLeastOnce)]).await;
    let (mut new, a) = RawClient::connect(b.addr(), "cd", true).await;
    assert_eq!(a, ack(false));
    assert_closed_silently(&mut old).await;
    // The persistent subscription went with the session.
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("cd/t", rumqttc::QoS::AtLeastOnce, false, "x")
        .await;
    assert_eq!(
        new.recv_within(Duration::from_millis(500)).await,
        Err(RecvError::Timeout)
    );
    disconnect(new).await;
    let (_c, a) = RawClient::connect(b.addr(), "cd", false).await;
    assert_eq!(a, ack(false));
}
