//! Subscriptions and topics: wildcard matching, the `$` rule, invalid filters (3.1.1 and 3.1),
//! re-subscription, UNSUBSCRIBE, overlapping filters, fixed-header flags.

use std::time::Duration;

use bytes::Bytes;

use starling_codec::{
    Packet, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, QoS, SubAckReasonCode, Subscribe,
    SubscribeFilter, UnsubAck, Unsubscribe,
};
use starling_testkit::raw::connect_packet;
use starling_testkit::{RawClient, RecvError};

use crate::common::*;

/// Publishes each topic (QoS 1, payload = topic) and returns the set of topics `sub` receives,
/// asserting nothing else arrives.
async fn matched(
    b: &starling_testkit::BrokerProcess,
    sub: &mut Mqtt,
    topics: &[&str],
    expect: usize,
) -> Vec<String> {
    let mut publ = Mqtt::connect(b.addr(), "matcher-pub", true).await;
    for t in topics {
        publ.publish(t, rumqttc::QoS::AtLeastOnce, false, t.as_bytes().to_vec())
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..expect {
        got.push(sub.next_publish().await.topic);
    }
    sub.assert_no_publish(Duration::from_millis(500)).await;
    got.sort();
    got
}

#[tokio::test]
async fn single_level_wildcard_matches_exactly_one_level() {
    let b = broker();
    let mut sub = Mqtt::connect(b.addr(), "plus", true).await;
    sub.subscribe("a/+/c", rumqttc::QoS::AtLeastOnce).await;
    sub.subscribe("+", rumqttc::QoS::AtLeastOnce).await;
    let got = matched(
        &b,
        &mut sub,
        &["a/b/c", "a//c", "a/b/d", "a/b/c/d", "a/c", "x", "x/y", "/x"],
        3,
    )
    .await;
    assert_eq!(got, ["a//c", "a/b/c", "x"]);
}

#[tokio::test]
async fn multi_level_wildcard_matches_parent_and_all_descendants() {
    let b = broker();
    let mut sub = Mqtt::connect(b.addr(), "hash", true).await;
    sub.subscribe("a/#", rumqttc::QoS::AtLeastOnce).await;
    let got = matched(&b, &mut sub, &["a", "a/b", "a/b/c", "ab", "b/a", "/a"], 3).await;
    assert_eq!(got, ["a", "a/b", "a/b/c"]);
    let mut all = Mqtt::connect(b.addr(), "all", true).await;
    all.subscribe("#", rumqttc::QoS::AtLeastOnce).await;
    let got = matched(&b, &mut all, &["a", "b/c/d", "/"], 3).await;
    assert_eq!(got, ["/", "a", "b/c/d"]);
}

#[tokio::test]
async fn dollar_topics_not_matched_by_leading_wildcards() {
    let b = broker_env(&[("STARLING_MQTT_SYS_INTERVAL_SECS", "1")]);
    let mut hash = Mqtt::connect(b.addr(), "hash", true).await;
    hash.subscribe("#", rumqttc::QoS::AtMostOnce).await;
    let mut plus = Mqtt::connect(b.addr(), "plus", true).await;
    plus.subscribe("+/broker/uptime", rumqttc::QoS::AtMostOnce)
        .await;
    plus.subscribe("+/+/+", rumqttc::QoS::AtMostOnce).await;
    let mut sys = Mqtt::connect(b.addr(), "sys", true).await;
    sys.subscribe("$SYS/#", rumqttc::QoS::AtMostOnce).await;
    let mut uptime = Mqtt::connect(b.addr(), "uptime", true).await;
    uptime
        .subscribe("$SYS/broker/+", rumqttc::QoS::AtMostOnce)
        .await;
    // `$SYS/#` and `$SYS/broker/+` see $SYS topics (retained at once, then every second).
    let p = sys.next_publish().await;
    assert!(p.topic.starts_with("$SYS/"), "{p:?}");
    loop {
        let p = uptime.next_publish().await;
        if p.topic == "$SYS/broker/uptime" {
            break;
        }
        assert_eq!(p.topic.matches('/').count(), 2, "{p:?}");
    }
    // Two more intervals: leading wildcards still saw none of them.
    hash.assert_no_publish(Duration::from_millis(2200)).await;
    plus.assert_no_publish(Duration::from_millis(10)).await;
    // They are live: ordinary topics reach them.
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("x/broker/uptime", rumqttc::QoS::AtLeastOnce, false, "plain")
        .await;
    assert_eq!(hash.next_publish().await.topic, "x/broker/uptime");
    assert_eq!(plus.next_publish().await.topic, "x/broker/uptime");
}

#[tokio::test]
async fn invalid_filters_get_0x80_in_311() {
    let b = broker();
    let (mut c, _) = RawClient::connect(b.addr(), "filters", true).await;
    let codes = c
        .subscribe(
            3,
            &[
                ("ok/+", QoS::AtLeastOnce),
                ("a/#/c", QoS::AtLeastOnce),
                ("a+", QoS::AtMostOnce),
                ("#a", QoS::ExactlyOnce),
                ("ok/#", QoS::ExactlyOnce),
            ],
        )
        .await;
    assert_eq!(
        codes,
        vec![
            SubAckReasonCode::GrantedQoS1,
            SubAckReasonCode::UnspecifiedError,
            SubAckReasonCode::UnspecifiedError,
            SubAckReasonCode::UnspecifiedError,
            SubAckReasonCode::GrantedQoS2,
        ]
    );
    // Still connected, and the valid filters work.
    c.publish("ok/x", b"fine", QoS::AtMostOnce, false, 0).await;
    let p = c.next_publish().await.unwrap();
    assert_eq!((p.topic.as_ref(), p.qos), ("ok/x", QoS::AtMostOnce));
    assert_eq!(
        c.recv_within(Duration::from_millis(300)).await,
        Err(RecvError::Timeout),
        "delivered once"
    );
}

#[tokio::test]
async fn invalid_filter_closes_connection_in_31() {
    let b = broker();
    for bad in ["a/#/c", "a+", "#a"] {
        let (mut c, ack) = RawClient::connect_with(
            b.addr(),
            connect_packet("v31", true, ProtocolVersion::V3_1, 60, None),
        )
        .await;
        assert_eq!(ack.code, starling_codec::ConnectReasonCode::Success);
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![
                SubscribeFilter::new("fine".into(), QoS::AtMostOnce),
                SubscribeFilter::new(bad.into(), QoS::AtMostOnce),
            ],
            properties: Default::default(),
        }))
        .await;
        assert_closed_silently(&mut c).await;
    }
}

async fn resubscribe_case(clean: bool) {
    let b = broker();
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("r/t", rumqttc::QoS::ExactlyOnce, true, "kept")
        .await;
    let (mut c, _) = RawClient::connect(b.addr(), "resub", clean).await;
    assert_eq!(
        c.subscribe(1, &[("r/t", QoS::ExactlyOnce)]).await,
        vec![SubAckReasonCode::GrantedQoS2]
    );
    let p = c.next_publish().await.unwrap();
    assert_eq!(
        (&p.payload[..], p.retain, p.qos),
        (&b"kept"[..], true, QoS::ExactlyOnce)
    );
    c.send(&Packet::PubRec(PubRec::new(p.packet_id))).await;
    assert_eq!(c.recv().await, Ok(Packet::PubRel(PubRel::new(p.packet_id))));
    c.send(&Packet::PubComp(PubComp::new(p.packet_id))).await;
    // Same filter again at QoS 1: granted 1, the retained message again, at QoS 1.
    assert_eq!(
        c.subscribe(2, &[("r/t", QoS::AtLeastOnce)]).await,
        vec![SubAckReasonCode::GrantedQoS1]
    );
    let p = c.next_publish().await.unwrap();
    assert_eq!(
        (&p.payload[..], p.retain, p.qos),
        (&b"kept"[..], true, QoS::AtLeastOnce)
    );
    c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    // The subscription was replaced, not added: a live QoS 2 message comes once, at QoS 1.
    publ.publish("r/t", rumqttc::QoS::ExactlyOnce, false, "live")
        .await;
    let p = c.next_publish().await.unwrap();
    assert_eq!(
        (&p.payload[..], p.retain, p.qos),
        (&b"live"[..], false, QoS::AtLeastOnce)
    );
    c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    assert_eq!(
        c.recv_within(Duration::from_millis(500)).await,
        Err(RecvError::Timeout)
    );
}

#[tokio::test]
async fn resubscribe_replaces_qos_and_resends_retained() {
    resubscribe_case(true).await;
}

#[tokio::test]
async fn resubscribe_replaces_qos_and_resends_retained_for_persistent_session() {
    resubscribe_case(false).await;
}

async fn unsubscribe_case(clean: bool) {
    let b = broker();
    let (mut c, _) = RawClient::connect(b.addr(), "unsub", clean).await;
    c.subscribe(
        1,
        &[
            ("u/a", QoS::AtLeastOnce),
            ("u/b", QoS::AtLeastOnce),
            ("u/+", QoS::AtMostOnce),
        ],
    )
    .await;
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 11,
        filters: vec!["u/a".into(), "u/+".into()],
        properties: Default::default(),
    }))
    .await;
    assert_eq!(c.recv().await, Ok(Packet::UnsubAck(UnsubAck::new(11))));
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("u/a", rumqttc::QoS::AtLeastOnce, false, "a")
        .await;
    publ.publish("u/b", rumqttc::QoS::AtLeastOnce, false, "b")
        .await;
    publ.publish("u/c", rumqttc::QoS::AtLeastOnce, false, "c")
        .await;
    let p = c.next_publish().await.unwrap();
    // Only `u/b` is left, and it was not touched: still QoS 1.
    assert_eq!((p.topic.as_ref(), p.qos), ("u/b", QoS::AtLeastOnce));
    c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    assert_eq!(
        c.recv_within(Duration::from_millis(500)).await,
        Err(RecvError::Timeout)
    );
    // Filters that match no subscription (including one that is not even valid) are acknowledged.
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 12,
        filters: vec!["never/subscribed".into(), "u/a".into(), "a/#/c".into()],
        properties: Default::default(),
    }))
    .await;
    assert_eq!(c.recv().await, Ok(Packet::UnsubAck(UnsubAck::new(12))));
}

#[tokio::test]
async fn unsubscribe_removes_only_given_filters_and_acks_even_if_none_matched() {
    unsubscribe_case(true).await;
}

#[tokio::test]
async fn unsubscribe_removes_only_given_filters_for_persistent_session() {
    unsubscribe_case(false).await;
}

async fn overlapping_case(clean: bool) {
    let b = broker();
    let (mut c, _) = RawClient::connect(b.addr(), "overlap", clean).await;
    c.subscribe(
        1,
        &[
            ("o/#", QoS::AtMostOnce),
            ("o/+", QoS::ExactlyOnce),
            ("o/x", QoS::AtLeastOnce),
        ],
    )
    .await;
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    publ.publish("o/x", rumqttc::QoS::ExactlyOnce, false, "one")
        .await;
    publ.publish("o/x", rumqttc::QoS::AtLeastOnce, false, "two")
        .await;
    // One copy each, at the highest QoS of the matching filters.
    let mut got = Vec::new();
    while got.len() < 2 {
        match c.recv().await {
            Ok(Packet::Publish(p)) => got.push((p.payload.clone(), p.qos)),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(
        got,
        [
            (Bytes::from_static(b"one"), QoS::ExactlyOnce),
            (Bytes::from_static(b"two"), QoS::AtLeastOnce)
        ]
    );
    assert_eq!(
        c.recv_within(Duration::from_millis(500)).await,
        Err(RecvError::Timeout)
    );
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_with_max_qos() {
    overlapping_case(true).await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_with_max_qos_for_persistent_session() {
    overlapping_case(false).await;
}

#[tokio::test]
async fn subscribe_unsubscribe_pubrel_flags_must_be_0010() {
    let b = broker();
    let sub_body = [&[0, 1][..], &field(b"f/t"), &[0]].concat();
    let unsub_body = [&[0, 2][..], &field(b"f/t")].concat();
    let cases: [(&str, Vec<u8>); 6] = [
        ("SUBSCRIBE 0000", packet(0x80, &sub_body)),
        ("SUBSCRIBE 0011", packet(0x83, &sub_body)),
        ("UNSUBSCRIBE 0000", packet(0xA0, &unsub_body)),
        ("UNSUBSCRIBE 1010", packet(0xAA, &unsub_body)),
        ("PUBREL 0000", packet(0x60, &[0, 3])),
        ("PUBREL 0110", packet(0x66, &[0, 3])),
    ];
    for (what, bytes) in cases {
        let (mut c, _) = RawClient::connect(b.addr(), "flags", true).await;
        c.send_raw(&bytes).await;
        match c.recv_within(PROMPT).await {
            Err(RecvError::Closed) => {}
            other => panic!("{what}: expected close, got {other:?}"),
        }
    }
    // The same packets with the right flags are served.
    let (mut c, _) = RawClient::connect(b.addr(), "flags", true).await;
    c.send_raw(&packet(0x82, &sub_body)).await;
    assert!(matches!(c.recv().await, Ok(Packet::SubAck(_))));
    c.send_raw(&packet(0xA2, &unsub_body)).await;
    assert_eq!(c.recv().await, Ok(Packet::UnsubAck(UnsubAck::new(2))));
    c.send_raw(&packet(0x62, &[0, 3])).await;
    assert_eq!(c.recv().await, Ok(Packet::PubComp(PubComp::new(3))));
}
