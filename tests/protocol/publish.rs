//! PUBLISH and QoS: the three handshakes, exactly-once for inbound QoS 2, delivery QoS, the
//! in-flight window, bounded queues, per-topic order, invalid PUBLISHes, the packet size limit.

use std::time::Duration;

use bytes::Bytes;
use starling_codec::{Disconnect, Packet, PubAck, PubComp, PubRec, PubRel, Publish, QoS};
use starling_testkit::{RawClient, RecvError};

use crate::common::*;

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

/// Receives exactly `n` PUBLISHes, then asserts that nothing else arrives for a moment.
async fn exactly(c: &mut RawClient, n: usize) -> Vec<Publish> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match c.recv().await {
            Ok(Packet::Publish(p)) => got.push(p),
            other => panic!("expected PUBLISH {} of {n}, got {other:?}", got.len() + 1),
        }
    }
    match c.recv_within(Duration::from_millis(500)).await {
        Err(RecvError::Timeout) => got,
        other => panic!("expected nothing after {n} PUBLISHes, got {other:?}"),
    }
}

/// With a window of one: receives and acknowledges `n` QoS 1 PUBLISHes one at a time (each
/// alone on the wire), then asserts nothing more comes; returns the payloads.
async fn one_by_one(c: &mut RawClient, n: usize) -> Vec<Bytes> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let p = exactly(c, 1).await.remove(0);
        c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
        got.push(p.payload);
    }
    assert_eq!(
        c.recv_within(Duration::from_millis(300)).await,
        Err(RecvError::Timeout)
    );
    got
}

#[tokio::test]
async fn qos2_handshake_at_packet_level_in_both_directions() {
    let b = broker();
    let (mut sub, ack) = RawClient::connect(b.addr(), "sub", true).await;
    assert_eq!(ack.code, starling_codec::ConnectReasonCode::Success);
    sub.subscribe(1, &[("q2/t", QoS::ExactlyOnce)]).await;
    let (mut publ, _) = RawClient::connect(b.addr(), "pub", true).await;
    publ.publish("q2/t", b"hello", QoS::ExactlyOnce, false, 7)
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(7))));
    publ.send(&Packet::PubRel(PubRel::new(7))).await;
    assert_eq!(publ.recv().await, Ok(Packet::PubComp(PubComp::new(7))));
    let p = sub.next_publish().await.unwrap();
    assert_eq!(
        (p.qos, &p.payload[..], p.dup, p.retain),
        (QoS::ExactlyOnce, &b"hello"[..], false, false)
    );
    sub.send(&Packet::PubRec(PubRec::new(p.packet_id))).await;
    assert_eq!(
        sub.recv().await,
        Ok(Packet::PubRel(PubRel::new(p.packet_id)))
    );
    sub.send(&Packet::PubComp(PubComp::new(p.packet_id))).await;
}

#[tokio::test]
async fn qos1_puback_flow() {
    let b = broker();
    let (mut sub, _) = RawClient::connect(b.addr(), "sub", true).await;
    sub.subscribe(1, &[("q1/t", QoS::AtLeastOnce)]).await;
    let (mut publ, _) = RawClient::connect(b.addr(), "pub", true).await;
    publ.publish("q1/t", b"one", QoS::AtLeastOnce, false, 42)
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubAck(PubAck::new(42))));
    let p = sub.next_publish().await.unwrap();
    assert_eq!(
        (p.qos, &p.payload[..], p.dup, p.retain),
        (QoS::AtLeastOnce, &b"one"[..], false, false)
    );
    assert_ne!(p.packet_id, 0);
    sub.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    // Acknowledged: never sent again, and the next message flows.
    publ.publish("q1/t", b"two", QoS::AtLeastOnce, false, 43)
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubAck(PubAck::new(43))));
    let got = exactly(&mut sub, 1).await;
    assert_eq!(&got[0].payload[..], b"two");
    // A real client sees the same flow.
    let mut real = Mqtt::connect(b.addr(), "real", true).await;
    real.publish("q1/t", rumqttc::QoS::AtLeastOnce, false, "three")
        .await;
    assert_eq!(&sub.next_publish().await.unwrap().payload[..], b"three");
}

#[tokio::test]
async fn qos2_inbound_dup_not_routed_twice() {
    let b = broker();
    let (mut sub, _) = RawClient::connect(b.addr(), "sub", true).await;
    sub.subscribe(1, &[("x2/t", QoS::ExactlyOnce)]).await;
    let (mut publ, _) = RawClient::connect(b.addr(), "pub", true).await;
    publ.send(&publish("x2/t", b"once", QoS::ExactlyOnce, 9, false))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(9))));
    publ.send(&publish("x2/t", b"once", QoS::ExactlyOnce, 9, true))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(9))));
    publ.send(&Packet::PubRel(PubRel::new(9))).await;
    assert_eq!(publ.recv().await, Ok(Packet::PubComp(PubComp::new(9))));
    // Released: the id is free again and a new message with it is a new message.
    publ.send(&publish("x2/t", b"again", QoS::ExactlyOnce, 9, false))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(9))));
    publ.send(&Packet::PubRel(PubRel::new(9))).await;
    assert_eq!(publ.recv().await, Ok(Packet::PubComp(PubComp::new(9))));
    let got = exactly(&mut sub, 2).await;
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"once"[..], &b"again"[..]]);
}

#[tokio::test]
async fn qos2_inbound_dup_not_routed_twice_for_persistent_session() {
    let b = broker();
    let mut sub = Mqtt::connect(b.addr(), "sub", true).await;
    sub.subscribe("x2p/t", rumqttc::QoS::ExactlyOnce).await;
    let (mut publ, _) = RawClient::connect(b.addr(), "pub", false).await;
    publ.send(&publish("x2p/t", b"once", QoS::ExactlyOnce, 5, false))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(5))));
    publ.send(&publish("x2p/t", b"once", QoS::ExactlyOnce, 5, true))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(5))));
    publ.send(&Packet::PubRel(PubRel::new(5))).await;
    assert_eq!(publ.recv().await, Ok(Packet::PubComp(PubComp::new(5))));
    // A marker through the same path: it must be the next message after the single "once".
    publ.send(&publish("x2p/t", b"marker", QoS::ExactlyOnce, 6, false))
        .await;
    assert_eq!(publ.recv().await, Ok(Packet::PubRec(PubRec::new(6))));
    assert_eq!(&sub.next_publish().await.payload[..], b"once");
    assert_eq!(&sub.next_publish().await.payload[..], b"marker");
}

#[tokio::test]
async fn qos2_outbound_keeps_packet_id_and_stage_until_pubcomp() {
    let b = broker();
    for clean in [true, false] {
        let id = format!("q2out-{clean}");
        let (mut sub, _) = RawClient::connect(b.addr(), &id, clean).await;
        sub.subscribe(1, &[("q2out/t", QoS::ExactlyOnce)]).await;
        let mut publ = Mqtt::connect(b.addr(), &format!("{id}-pub"), true).await;
        publ.publish("q2out/t", rumqttc::QoS::ExactlyOnce, false, "m1")
            .await;
        let p = sub.next_publish().await.unwrap();
        assert_eq!(p.qos, QoS::ExactlyOnce);
        sub.send(&Packet::PubRec(PubRec::new(p.packet_id))).await;
        assert_eq!(
            sub.recv().await,
            Ok(Packet::PubRel(PubRel::new(p.packet_id)))
        );
        // A repeated PUBREC is answered with the same PUBREL: the stage is kept.
        sub.send(&Packet::PubRec(PubRec::new(p.packet_id))).await;
        assert_eq!(
            sub.recv().await,
            Ok(Packet::PubRel(PubRel::new(p.packet_id)))
        );
        // Until PUBCOMP, the id is not given to another message.
        for i in 0..3 {
            publ.publish("q2out/t", rumqttc::QoS::ExactlyOnce, false, format!("n{i}"))
                .await;
        }
        let others = exactly(&mut sub, 3).await;
        assert!(
            others.iter().all(|o| o.packet_id != p.packet_id),
            "{others:?}"
        );
        sub.send(&Packet::PubComp(PubComp::new(p.packet_id))).await;
        // PUBCOMP for an id that is not at PUBREL stage changes nothing (and is not answered).
        sub.send(&Packet::PubComp(PubComp::new(others[0].packet_id)))
            .await;
        sub.send(&Packet::PubRec(PubRec::new(others[0].packet_id)))
            .await;
        assert_eq!(
            sub.recv().await,
            Ok(Packet::PubRel(PubRel::new(others[0].packet_id)))
        );
        sub.send(&Packet::Disconnect(Disconnect::default())).await;
    }
}

#[tokio::test]
async fn qos_downgrade_to_subscription_qos() {
    let b = broker();
    let mut sub = Mqtt::connect(b.addr(), "sub", true).await;
    for q in 0..3u8 {
        let qos = rq(QoS::from_u8(q).unwrap());
        assert_eq!(
            sub.subscribe(&format!("down/{q}"), qos).await,
            vec![rumqttc::SubscribeReasonCode::Success(qos)]
        );
    }
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    for s in 0..3u8 {
        for p in 0..3u8 {
            let qos = rq(QoS::from_u8(p).unwrap());
            publ.publish(&format!("down/{s}"), qos, false, format!("{s}{p}"))
                .await;
        }
    }
    let mut got = Vec::new();
    for _ in 0..9 {
        let m = sub.next_publish().await;
        got.push((String::from_utf8(m.payload.to_vec()).unwrap(), m.qos as u8));
    }
    got.sort();
    let want: Vec<(String, u8)> = (0..3u8)
        .flat_map(|s| (0..3u8).map(move |p| (format!("{s}{p}"), s.min(p))))
        .collect();
    assert_eq!(got, want);
    sub.assert_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn publish_topic_with_wildcard_or_empty_closes_connection() {
    let b = broker();
    let mut sub = Mqtt::connect(b.addr(), "sub", true).await;
    sub.subscribe("#", rumqttc::QoS::AtLeastOnce).await;
    for topic in ["a/+", "a/#", "+", "#", "a+b", ""] {
        let (mut c, _) = RawClient::connect(b.addr(), "bad-topic", true).await;
        c.send(&publish(topic, b"bad", QoS::AtLeastOnce, 1, false))
            .await;
        assert_closed_silently(&mut c).await;
    }
    // Nothing of them was routed: the first message the catch-all subscriber gets is this one.
    let mut ok = Mqtt::connect(b.addr(), "good", true).await;
    ok.publish("a/b", rumqttc::QoS::AtLeastOnce, false, "good")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"good");
    wait_log(&b, "malformed-packet log line", |l| {
        l.contains("disconnected due to malformed packet") && l.contains("wildcard in topic name")
    })
    .await;
    wait_log(&b, "malformed-packet log line", |l| {
        l.contains("disconnected due to malformed packet") && l.contains("empty topic name")
    })
    .await;
}

#[tokio::test]
async fn publish_qos3_closes_connection() {
    let b = broker();
    let (mut c, _) = RawClient::connect(b.addr(), "q3", true).await;
    c.send_raw(&packet(0x36, &[&field(b"t")[..], &[0, 1], b"x"].concat()))
        .await;
    assert_closed_silently(&mut c).await;
    wait_log(&b, "malformed-packet log line", |l| {
        l.contains("Client q3 disconnected due to malformed packet") && l.contains("invalid qos 3")
    })
    .await;
}

#[tokio::test]
async fn inflight_window_limits_unacked_messages() {
    let b = broker_env(&[("STARLING_MQTT_MAX_INFLIGHT", "3")]);
    for clean in [true, false] {
        let id = format!("window-{clean}");
        let topic = format!("win/{clean}");
        let (mut sub, _) = RawClient::connect(b.addr(), &id, clean).await;
        sub.subscribe(1, &[(&topic, QoS::AtLeastOnce)]).await;
        let mut publ = Mqtt::connect(b.addr(), &format!("{id}-pub"), true).await;
        for i in 0..8 {
            publ.publish(&topic, rumqttc::QoS::AtLeastOnce, false, format!("{i}"))
                .await;
        }
        let mut got: Vec<Publish> = exactly(&mut sub, 3).await;
        // Each PUBACK opens the window for exactly one more.
        while got.len() < 8 {
            let oldest = got[got.len() - 3].packet_id;
            sub.send(&Packet::PubAck(PubAck::new(oldest))).await;
            got.extend(exactly(&mut sub, 1).await);
        }
        let payloads: Vec<String> = got
            .iter()
            .map(|p| String::from_utf8(p.payload.to_vec()).unwrap())
            .collect();
        assert_eq!(
            payloads,
            (0..8).map(|i| i.to_string()).collect::<Vec<_>>(),
            "clean={clean}"
        );
        assert!(got.iter().all(|p| !p.dup), "clean={clean}");
    }
}

#[tokio::test]
async fn inflight_window_defaults_to_20() {
    let b = broker();
    let (mut sub, _) = RawClient::connect(b.addr(), "window", true).await;
    sub.subscribe(1, &[("win/default", QoS::ExactlyOnce)]).await;
    let mut publ = Mqtt::connect(b.addr(), "pub", true).await;
    for i in 0..25 {
        publ.publish(
            "win/default",
            rumqttc::QoS::ExactlyOnce,
            false,
            format!("{i}"),
        )
        .await;
    }
    let got = exactly(&mut sub, 20).await;
    // A QoS 2 message holds its slot through PUBREC/PUBREL until PUBCOMP.
    sub.send(&Packet::PubRec(PubRec::new(got[0].packet_id)))
        .await;
    assert_eq!(
        sub.recv().await,
        Ok(Packet::PubRel(PubRel::new(got[0].packet_id)))
    );
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        Err(RecvError::Timeout)
    );
    sub.send(&Packet::PubComp(PubComp::new(got[0].packet_id)))
        .await;
    let next = exactly(&mut sub, 1).await;
    assert_eq!(&next[0].payload[..], b"20");
}

#[tokio::test]
async fn queue_overflow_drops_and_counts() {
    let b = broker_env(&[
        ("STARLING_MQTT_MAX_INFLIGHT", "1"),
        ("STARLING_MQTT_MAX_QUEUED_MESSAGES", "5"),
        ("STARLING_MQTT_SYS_INTERVAL_SECS", "1"),
    ]);
    let (mut sub, _) = RawClient::connect(b.addr(), "slow", true).await;
    sub.subscribe(1, &[("flood/t", QoS::AtLeastOnce)]).await;
    let mut publ = Mqtt::connect(b.addr(), "flood", true).await;
    for i in 0..10 {
        publ.publish("flood/t", rumqttc::QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    // Policy: one in flight, five queued, the newest four dropped.
    let mut got = Vec::new();
    for _ in 0..6 {
        let p = exactly(&mut sub, 1).await.remove(0);
        sub.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["0", "1", "2", "3", "4", "5"]);
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        Err(RecvError::Timeout)
    );
    wait_log(&b, "queue-full log line", |l| {
        l.contains("session queue full for client slow") && l.contains("max_queued_messages")
    })
    .await;
    assert_sys_dropped(&b, "4").await;
}

#[tokio::test]
async fn persistent_queue_overflow_drops_and_counts() {
    // An offline persistent session holds max_inflight + max_queued_messages = 1 + 5 messages.
    let b = broker_env(&[
        ("STARLING_MQTT_MAX_INFLIGHT", "1"),
        ("STARLING_MQTT_MAX_QUEUED_MESSAGES", "5"),
        ("STARLING_MQTT_SYS_INTERVAL_SECS", "1"),
    ]);
    let (mut sub, _) = RawClient::connect(b.addr(), "away", false).await;
    sub.subscribe(1, &[("flood/p", QoS::AtLeastOnce)]).await;
    sub.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_closed_silently(&mut sub).await;
    let mut publ = Mqtt::connect(b.addr(), "flood", true).await;
    for i in 0..8 {
        publ.publish("flood/p", rumqttc::QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    let (mut sub, ack) = RawClient::connect(b.addr(), "away", false).await;
    assert!(ack.session_present);
    let got: Vec<String> = one_by_one(&mut sub, 6)
        .await
        .iter()
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    assert_eq!(got, ["0", "1", "2", "3", "4", "5"]);
    wait_log(&b, "queue-full log line", |l| {
        l.contains("session queue full for client away") && l.contains("max_queued_messages")
    })
    .await;
    assert_sys_dropped(&b, "2").await;
}

#[tokio::test]
async fn queue_byte_limit_drops_and_counts() {
    let b = broker_env(&[
        ("STARLING_MQTT_MAX_INFLIGHT", "1"),
        ("STARLING_MQTT_MAX_QUEUED_BYTES", "2048"),
        ("STARLING_MQTT_SYS_INTERVAL_SECS", "1"),
    ]);
    // Each message counts 7 (topic) + 500 (payload) + 64 = 571 bytes: three fit in 2048,
    // counting the one in flight.
    let payload = |i: usize| format!("{i}").repeat(500).into_bytes();
    let (mut clean, _) = RawClient::connect(b.addr(), "slow-clean", true).await;
    clean.subscribe(1, &[("bytes/t", QoS::AtLeastOnce)]).await;
    let (mut away, _) = RawClient::connect(b.addr(), "slow-away", false).await;
    away.subscribe(1, &[("bytes/t", QoS::AtLeastOnce)]).await;
    away.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_closed_silently(&mut away).await;
    let mut publ = Mqtt::connect(b.addr(), "flood", true).await;
    for i in 0..8 {
        publ.publish("bytes/t", rumqttc::QoS::AtLeastOnce, false, payload(i))
            .await;
    }
    // Clean session: one in flight and two queued; persistent and offline: three queued.
    let got = one_by_one(&mut clean, 3).await;
    assert_eq!(
        got,
        (0..3).map(|i| Bytes::from(payload(i))).collect::<Vec<_>>()
    );
    let (mut away, _) = RawClient::connect(b.addr(), "slow-away", false).await;
    let got = one_by_one(&mut away, 3).await;
    assert_eq!(
        got,
        (0..3).map(|i| Bytes::from(payload(i))).collect::<Vec<_>>()
    );
    // Logged with the name of the limit that bit.
    for id in ["slow-clean", "slow-away"] {
        wait_log(&b, &format!("queue-full log line for {id}"), |l| {
            l.contains(&format!("session queue full for client {id}"))
                && l.contains("max_queued_bytes")
        })
        .await;
    }
    assert_sys_dropped(&b, "10").await;
}

/// Waits until `$SYS/broker/publish/messages/dropped` reads `want`.
async fn assert_sys_dropped(b: &starling_testkit::BrokerProcess, want: &str) {
    let mut sys = Mqtt::connect(b.addr(), "sys-reader", true).await;
    sys.subscribe(
        "$SYS/broker/publish/messages/dropped",
        rumqttc::QoS::AtMostOnce,
    )
    .await;
    let mut last = String::new();
    for _ in 0..5 {
        last = String::from_utf8(sys.next_publish().await.payload.to_vec()).unwrap();
        if last == want {
            return;
        }
    }
    panic!("$SYS/broker/publish/messages/dropped is {last:?}, expected {want:?}");
}

#[tokio::test]
async fn per_topic_order_is_kept() {
    const N: u32 = 2000;
    let b = broker();
    let mut clean = Mqtt::connect(b.addr(), "order-clean", true).await;
    clean.subscribe("order/t", rumqttc::QoS::AtLeastOnce).await;
    let mut durable = Mqtt::connect(b.addr(), "order-durable", false).await;
    durable
        .subscribe("order/t", rumqttc::QoS::ExactlyOnce)
        .await;
    let mut publ = Mqtt::connect(b.addr(), "order-pub", true).await;
    for i in 0..N {
        publ.client
            .publish(
                "order/t",
                rumqttc::QoS::AtLeastOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
    }
    publ.wait_acks(N as usize).await;
    for (name, sub) in [("clean", &mut clean), ("persistent", &mut durable)] {
        for i in 0..N {
            let p = sub.next_publish().await;
            let got = u32::from_be_bytes(p.payload[..].try_into().unwrap());
            assert_eq!(got, i, "{name} subscriber: message {i} out of order");
        }
    }
}

#[tokio::test]
async fn max_packet_size_enforced() {
    let b = broker_env(&[("STARLING_MQTT_MAX_PACKET_SIZE", "1024")]);
    let mut sub = Mqtt::connect(b.addr(), "sub", true).await;
    sub.subscribe("big/t", rumqttc::QoS::AtLeastOnce).await;
    // 2 + 5 (topic) + 2 (id) + 1011 = 1020 bytes of body, 1023 with the fixed header: accepted.
    let (mut c, _) = RawClient::connect(b.addr(), "big", true).await;
    c.send(&publish("big/t", &[b'a'; 1011], QoS::AtLeastOnce, 1, false))
        .await;
    assert_eq!(c.recv().await, Ok(Packet::PubAck(PubAck::new(1))));
    assert_eq!(sub.next_publish().await.payload.len(), 1011);
    // One byte more than the maximum: closed, nothing routed.
    c.send(&publish("big/t", &[b'b'; 1013], QoS::AtLeastOnce, 2, false))
        .await;
    assert_closed_silently(&mut c).await;
    let mut ok = Mqtt::connect(b.addr(), "ok", true).await;
    ok.publish("big/t", rumqttc::QoS::AtLeastOnce, false, "small")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"small");
    wait_log(&b, "packet-size log line", |l| {
        l.contains("packet of 1025 bytes exceeds maximum 1024")
    })
    .await;
    // SUBSCRIBE sizes count too.
    let (mut c, _) = RawClient::connect(b.addr(), "bigsub", true).await;
    c.send(&Packet::Subscribe(starling_codec::Subscribe {
        packet_id: 1,
        filters: vec![starling_codec::SubscribeFilter::new(
            "f".repeat(1100).into(),
            QoS::AtMostOnce,
        )],
        properties: Default::default(),
    }))
    .await;
    assert_closed_silently(&mut c).await;
}
