//! Wills: DISCONNECT discards the will; any other loss of the connection publishes it, with its
//! QoS and RETAIN, for clean and persistent sessions alike.

use bytes::Bytes;
use starling_codec::{
    ConnAck, ConnectReasonCode, Disconnect, LastWill, Packet, ProtocolVersion, PubComp, PubRec,
    PubRel, QoS,
};
use starling_testkit::raw::connect_packet;
use starling_testkit::RawClient;

use crate::common::*;

fn accepted() -> ConnAck {
    ConnAck::new(false, ConnectReasonCode::Success)
}

fn will(topic: &str, payload: &'static [u8], qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos,
        retain,
        properties: Default::default(),
    }
}

async fn client_with_will(
    b: &starling_testkit::BrokerProcess,
    id: &str,
    clean: bool,
    w: LastWill,
) -> RawClient {
    let (c, ack) = RawClient::connect_with(
        b.addr(),
        connect_packet(id, clean, ProtocolVersion::V3_1_1, 60, Some(w)),
    )
    .await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    c
}

#[tokio::test]
async fn disconnect_discards_will() {
    let b = broker();
    let mut watcher = Mqtt::connect(b.addr(), "watcher", true).await;
    watcher
        .subscribe("will/bye", rumqttc::QoS::AtLeastOnce)
        .await;
    let mut c = client_with_will(
        &b,
        "polite",
        true,
        will("will/bye", b"lost", QoS::AtLeastOnce, false),
    )
    .await;
    c.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_closed_silently(&mut c).await;
    // A will would have been routed before the connection closed, so before this marker on the
    // same topic: the marker must be the first thing the watcher gets.
    let mut p = Mqtt::connect(b.addr(), "marker", true).await;
    p.publish("will/bye", rumqttc::QoS::AtLeastOnce, false, "marker")
        .await;
    let got = watcher.next_publish().await;
    assert_eq!(
        &got.payload[..],
        b"marker",
        "the will was published after DISCONNECT"
    );
    wait_log(&b, "DISCONNECT log line", |l| {
        l.contains("Received DISCONNECT from polite")
    })
    .await;
}

#[tokio::test]
async fn socket_close_publishes_will() {
    let b = broker();
    let mut watcher = Mqtt::connect(b.addr(), "watcher", true).await;
    watcher
        .subscribe("will/sock", rumqttc::QoS::ExactlyOnce)
        .await;
    let c = client_with_will(
        &b,
        "dropper",
        true,
        will("will/sock", b"socket gone", QoS::AtLeastOnce, false),
    )
    .await;
    drop(c);
    let w = watcher.next_publish().await;
    assert_eq!(
        (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
        (
            "will/sock",
            &b"socket gone"[..],
            rumqttc::QoS::AtLeastOnce,
            false
        )
    );
    wait_log(&b, "socket error log line", |l| {
        l.contains("Socket error on client dropper, disconnecting.")
    })
    .await;
}

#[tokio::test]
async fn will_is_delivered_at_min_of_will_qos_and_subscription_qos() {
    let b = broker();
    let mut low = Mqtt::connect(b.addr(), "low", true).await;
    low.subscribe("will/q", rumqttc::QoS::AtMostOnce).await;
    let mut high = Mqtt::connect(b.addr(), "high", true).await;
    high.subscribe("will/q", rumqttc::QoS::ExactlyOnce).await;
    drop(
        client_with_will(
            &b,
            "q2will",
            true,
            will("will/q", b"q2", QoS::ExactlyOnce, false),
        )
        .await,
    );
    assert_eq!(low.next_publish().await.qos, rumqttc::QoS::AtMostOnce);
    assert_eq!(high.next_publish().await.qos, rumqttc::QoS::ExactlyOnce);
}

#[tokio::test]
async fn retained_will_is_retained() {
    let b = broker();
    // A persistent subscriber's copy is queued by the same state change that retains the will, so
    // once it has arrived the retained message is in place.
    let mut watcher = Mqtt::connect(b.addr(), "watcher", false).await;
    watcher
        .subscribe("will/ret", rumqttc::QoS::AtLeastOnce)
        .await;
    drop(
        client_with_will(
            &b,
            "ret",
            true,
            will("will/ret", b"retained will", QoS::AtLeastOnce, true),
        )
        .await,
    );
    let live = watcher.next_publish().await;
    assert_eq!(
        (&live.payload[..], live.retain),
        (&b"retained will"[..], false)
    );
    let (mut late, _) = RawClient::connect(b.addr(), "late", true).await;
    late.subscribe(1, &[("will/ret", QoS::AtLeastOnce)]).await;
    let p = late.next_publish().await.expect("retained will");
    assert_eq!(
        (p.topic.as_ref(), &p.payload[..], p.retain, p.qos),
        ("will/ret", &b"retained will"[..], true, QoS::AtLeastOnce)
    );
}

#[tokio::test]
async fn protocol_violation_publishes_will() {
    let b = broker();
    let mut watcher = Mqtt::connect(b.addr(), "watcher", true).await;
    watcher
        .subscribe("will/violation", rumqttc::QoS::AtLeastOnce)
        .await;
    let mut c = client_with_will(
        &b,
        "violator",
        true,
        will("will/violation", b"broke the rules", QoS::AtMostOnce, false),
    )
    .await;
    // QoS 3 PUBLISH.
    c.send_raw(&packet(0x36, &[&field(b"t")[..], &[0, 1]].concat()))
        .await;
    assert_closed_silently(&mut c).await;
    assert_eq!(
        &watcher.next_publish().await.payload[..],
        b"broke the rules"
    );
}

#[tokio::test]
async fn persistent_session_will_is_published_on_socket_close() {
    let b = broker();
    let mut watcher = Mqtt::connect(b.addr(), "watcher", true).await;
    watcher
        .subscribe("will/persistent", rumqttc::QoS::AtLeastOnce)
        .await;
    let c = client_with_will(
        &b,
        "keeper",
        false,
        will("will/persistent", b"session stays", QoS::AtLeastOnce, false),
    )
    .await;
    drop(c);
    let w = watcher.next_publish().await;
    assert_eq!(
        (&w.payload[..], w.qos),
        (&b"session stays"[..], rumqttc::QoS::AtLeastOnce)
    );
    // And a persistent session's DISCONNECT discards it: reconnect with a will, disconnect
    // cleanly, then a marker on the same topic must be the next message.
    let mut c = client_with_will(
        &b,
        "keeper",
        false,
        will("will/persistent", b"second", QoS::AtLeastOnce, false),
    )
    .await;
    c.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_closed_silently(&mut c).await;
    let (mut p, ack) = RawClient::connect(b.addr(), "marker", false).await;
    assert_eq!(ack, accepted());
    // Published through the same path as a persistent session's will (the session store).
    p.publish("will/persistent", b"marker", QoS::ExactlyOnce, false, 1)
        .await;
    assert_eq!(p.recv().await, Ok(Packet::PubRec(PubRec::new(1))));
    p.send(&Packet::PubRel(PubRel::new(1))).await;
    assert_eq!(p.recv().await, Ok(Packet::PubComp(PubComp::new(1))));
    assert_eq!(&watcher.next_publish().await.payload[..], b"marker");
}
