//! MQTT 5 connections: CONNACK and its properties, assigned client ids, the session expiry cap,
//! reason codes on acknowledgements, DISCONNECT both ways, takeover between 3.1.1 and 5.0, and
//! a real 5.0 client (rumqttc) publishing and receiving at every QoS.

use std::time::Duration;

use bytes::Bytes;
use starling_codec::{
    ConnAck, ConnectReasonCode, Disconnect, DisconnectProperties, DisconnectReasonCode, LastWill,
    Packet, ProtocolVersion, QoS, UnsubAckReasonCode, Unsubscribe,
};
use starling_testkit::raw::connect_packet;
use starling_testkit::RawClient;

use crate::common::*;

/// Connects a raw 5.0 client.
async fn connect5(
    b: &starling_testkit::BrokerProcess,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
    will: Option<LastWill>,
) -> (RawClient, ConnAck) {
    let mut c = connect_packet(id, clean, ProtocolVersion::V5, 60, will);
    c.properties.session_expiry_interval = expiry;
    RawClient::connect_with(b.addr(), c).await
}

/// The next DISCONNECT from the broker, skipping other packets.
async fn next_disconnect(c: &mut RawClient) -> Disconnect {
    loop {
        match c.recv().await {
            Ok(Packet::Disconnect(d)) => return d,
            Ok(_) => {}
            Err(e) => panic!("no DISCONNECT: {e:?}"),
        }
    }
}

#[tokio::test]
async fn connack_describes_the_server() {
    let b = broker_env(&[
        ("STARLING_MQTT_MAX_INFLIGHT_IN", "300"),
        ("STARLING_MQTT_MAX_PACKET_SIZE", "100000"),
    ]);
    let (mut c, ack) = connect5(&b, "p5-props", true, None, None).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    assert!(!ack.session_present);
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(300));
    assert_eq!(p.maximum_packet_size, Some(100_000));
    assert_eq!(p.topic_alias_maximum, Some(0));
    assert_eq!(p.retain_available, Some(true));
    assert_eq!(p.shared_subscription_available, Some(false));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.subscription_identifiers_available, Some(false));
    assert_eq!(p.assigned_client_identifier, None);
    assert_eq!(p.session_expiry_interval, None);
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Ok(Packet::PingResp));
    wait_log(&b, "p5 connect line", |l| {
        l.contains("New client connected from 127.0.0.1 as p5-props (p5, c1, k60).")
    })
    .await;
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_one() {
    let b = broker();
    let (_c, ack) = connect5(&b, "", true, None, None).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("Assigned Client Identifier");
    assert!(!id.is_empty());
}

#[tokio::test]
async fn session_expiry_above_the_maximum_is_lowered() {
    let b = broker_env(&[("STARLING_MQTT_MAX_SESSION_EXPIRY_SECS", "600")]);
    let (_c, ack) = connect5(&b, "p5-long", false, Some(u32::MAX), None).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    assert_eq!(ack.properties.session_expiry_interval, Some(600));
    let (_d, ack) = connect5(&b, "p5-short", false, Some(60), None).await;
    assert_eq!(ack.properties.session_expiry_interval, None);
}

#[tokio::test]
async fn session_with_expiry_is_resumed() {
    let b = broker();
    let (mut c, ack) = connect5(&b, "p5-resume", true, Some(300), None).await;
    assert!(!ack.session_present);
    c.subscribe(1, &[("p5/resume", QoS::AtLeastOnce)]).await;
    c.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_closed(&mut c).await;
    let (mut p, _) = RawClient::connect(b.addr(), "p5-resume-pub", true).await;
    p.publish("p5/resume", b"queued", QoS::AtLeastOnce, false, 1)
        .await;
    assert!(matches!(p.recv().await, Ok(Packet::PubAck(_))));
    let (mut c, ack) = connect5(&b, "p5-resume", false, Some(300), None).await;
    assert!(ack.session_present, "{ack:?}");
    let m = c.next_publish().await.expect("the queued message");
    assert_eq!(m.payload, "queued");
    assert_eq!(m.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn unsuback_says_which_filters_were_not_subscribed() {
    let b = broker();
    let (mut c, _) = connect5(&b, "p5-unsub", true, None, None).await;
    c.subscribe(1, &[("p5/a", QoS::AtMostOnce)]).await;
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Default::default(),
        filters: vec!["p5/a".into(), "p5/none".into()],
    }))
    .await;
    match c.recv().await {
        Ok(Packet::UnsubAck(a)) => {
            assert_eq!(a.packet_id, 2);
            assert_eq!(
                a.reason_codes,
                vec![
                    UnsubAckReasonCode::Success,
                    UnsubAckReasonCode::NoSubscriptionExisted
                ]
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn disconnect_with_will_message_publishes_the_will() {
    let b = broker();
    let (mut w, _) = RawClient::connect(b.addr(), "p5-will-watch", true).await;
    w.subscribe(1, &[("p5/will/#", QoS::AtMostOnce)]).await;
    for (id, reason, expected) in [
        (
            "p5-will-keep",
            DisconnectReasonCode::DisconnectWithWillMessage,
            true,
        ),
        (
            "p5-will-drop",
            DisconnectReasonCode::NormalDisconnection,
            false,
        ),
    ] {
        let will = LastWill::new(
            format!("p5/will/{id}").into(),
            Bytes::from_static(b"gone"),
            QoS::AtMostOnce,
            false,
        );
        let (mut c, _) = connect5(&b, id, true, None, Some(will)).await;
        c.send(&Packet::Disconnect(Disconnect::with_reason(reason)))
            .await;
        assert_closed(&mut c).await;
        if expected {
            let m = w.next_publish().await.expect("the will");
            assert_eq!(m.topic, format!("p5/will/{id}"));
        }
    }
    // The normal disconnection's will never comes: a marker published after it arrives first.
    let (mut p, _) = RawClient::connect(b.addr(), "p5-will-marker", true).await;
    p.publish("p5/will/marker", b"m", QoS::AtMostOnce, false, 0)
        .await;
    let m = w.next_publish().await.expect("the marker");
    assert_eq!(m.topic, "p5/will/marker");
}

#[tokio::test]
async fn disconnect_setting_expiry_on_a_clean_session_is_a_protocol_error() {
    let b = broker();
    let (mut c, _) = connect5(&b, "p5-expiry-late", true, None, None).await;
    c.send(&Packet::Disconnect(Disconnect {
        reason: DisconnectReasonCode::NormalDisconnection,
        properties: DisconnectProperties {
            session_expiry_interval: Some(60),
            ..Default::default()
        },
    }))
    .await;
    let d = next_disconnect(&mut c).await;
    assert_eq!(d.reason, DisconnectReasonCode::ProtocolError);
    assert_closed(&mut c).await;
}

#[tokio::test]
async fn protocol_error_gets_disconnect_0x82() {
    let b = broker();
    let (mut c, _) = connect5(&b, "p5-twice", true, None, None).await;
    c.send(&Packet::Connect(Box::new(connect_packet(
        "p5-twice",
        true,
        ProtocolVersion::V5,
        60,
        None,
    ))))
    .await;
    let d = next_disconnect(&mut c).await;
    assert_eq!(d.reason, DisconnectReasonCode::ProtocolError);
    assert_closed(&mut c).await;
}

#[tokio::test]
async fn malformed_packet_gets_disconnect_0x81() {
    let b = broker();
    let (mut c, _) = connect5(&b, "p5-malformed", true, None, None).await;
    // PINGREQ with a body.
    c.send_raw(&[0xC0, 0x01, 0x00]).await;
    let d = next_disconnect(&mut c).await;
    assert_eq!(d.reason, DisconnectReasonCode::MalformedPacket);
    assert_closed(&mut c).await;
}

#[tokio::test]
async fn packet_too_large_gets_disconnect_0x95() {
    let b = broker_env(&[("STARLING_MQTT_MAX_PACKET_SIZE", "1024")]);
    let (mut c, _) = connect5(&b, "p5-large", true, None, None).await;
    c.publish("p5/large", &[0u8; 2048], QoS::AtMostOnce, false, 0)
        .await;
    let d = next_disconnect(&mut c).await;
    assert_eq!(d.reason, DisconnectReasonCode::PacketTooLarge);
    assert_closed(&mut c).await;
}

#[tokio::test]
async fn keep_alive_timeout_gets_disconnect_0x8d() {
    let b = broker();
    let mut connect = connect_packet("p5-silent", true, ProtocolVersion::V5, 1, None);
    connect.properties.session_expiry_interval = None;
    let (mut c, _) = RawClient::connect_with(b.addr(), connect).await;
    match c.recv_within(Duration::from_secs(5)).await {
        Ok(Packet::Disconnect(d)) => assert_eq!(d.reason, DisconnectReasonCode::KeepAliveTimeout),
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
}

#[tokio::test]
async fn takeover_between_versions() {
    let b = broker();
    // 5.0 taken over by 3.1.1: the 5.0 client hears why.
    let (mut v5, _) = connect5(&b, "p5-takeover", true, None, None).await;
    let (mut v3, ack) = RawClient::connect(b.addr(), "p5-takeover", true).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    let d = next_disconnect(&mut v5).await;
    assert_eq!(d.reason, DisconnectReasonCode::SessionTakenOver);
    assert_closed(&mut v5).await;
    // 3.1.1 taken over by 5.0: the 3.1.1 connection just closes.
    let (mut v5, ack) = connect5(&b, "p5-takeover", true, None, None).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    assert_closed_silently(&mut v3).await;
    v5.send(&Packet::PingReq).await;
    assert_eq!(v5.recv().await, Ok(Packet::PingResp));
}

#[tokio::test]
async fn rumqttc_v5_publishes_and_receives_at_every_qos() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let b = broker();
    let mut o = MqttOptions::new("p5-rumqttc", "127.0.0.1", b.addr().port());
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(ev) => {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Event::Incoming(P5::ConnAck(a)) = next(&mut rx, deadline).await {
            assert_eq!(
                a.code,
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
            );
            break;
        }
    }
    client.subscribe("p5/rq/#", Q5::ExactlyOnce).await.unwrap();
    loop {
        if let Event::Incoming(P5::SubAck(_)) = next(&mut rx, deadline).await {
            break;
        }
    }
    for (i, q) in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        client
            .publish(format!("p5/rq/{i}"), q, false, format!("m{i}"))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Event::Incoming(P5::Publish(p)) = next(&mut rx, deadline).await {
            got.push((
                String::from_utf8_lossy(&p.topic).to_string(),
                p.qos,
                p.payload,
            ));
        }
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("p5/rq/0".to_string(), Q5::AtMostOnce, Bytes::from("m0")),
            ("p5/rq/1".to_string(), Q5::AtLeastOnce, Bytes::from("m1")),
            ("p5/rq/2".to_string(), Q5::ExactlyOnce, Bytes::from("m2")),
        ]
    );
}

/// The next rumqttc v5 event, before `deadline`.
async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::Event>,
    deadline: tokio::time::Instant,
) -> rumqttc::v5::Event {
    tokio::time::timeout_at(deadline, rx.recv())
        .await
        .expect("event before the deadline")
        .expect("event loop running")
}

#[tokio::test]
async fn will_carries_its_properties() {
    let b = broker();
    let (mut w, _) = connect5(&b, "p5-wp-watch", true, None, None).await;
    w.subscribe(1, &[("p5/wp/#", QoS::AtMostOnce)]).await;
    let mut will = LastWill::new(
        "p5/wp/gone".into(),
        Bytes::from_static(b"{}"),
        QoS::AtMostOnce,
        false,
    );
    will.properties.content_type = Some("application/json".into());
    will.properties.response_topic = Some("p5/wp/reply".into());
    will.properties.correlation_data = Some(Bytes::from_static(b"c1"));
    will.properties.payload_format_indicator = Some(starling_codec::PayloadFormat::Utf8);
    will.properties.user_properties = vec![("a".into(), "1".into()), ("b".into(), "2".into())];
    let (c, _) = connect5(&b, "p5-wp", true, None, Some(will)).await;
    drop(c);
    let m = w.next_publish().await.expect("the will");
    assert_eq!(m.topic, "p5/wp/gone");
    let p = &m.properties;
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.response_topic.as_deref(), Some("p5/wp/reply"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"c1"[..]));
    assert_eq!(
        p.payload_format_indicator,
        Some(starling_codec::PayloadFormat::Utf8)
    );
    assert_eq!(
        p.user_properties,
        vec![("a".into(), "1".into()), ("b".into(), "2".into())]
    );
}

#[tokio::test]
async fn topic_alias_gets_disconnect_0x94_while_none_is_allowed() {
    let b = broker();
    let (mut c, ack) = connect5(&b, "p5-alias", true, None, None).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(0));
    let mut p = starling_codec::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "p5/alias".into(),
        packet_id: 0,
        payload: Bytes::from_static(b"x"),
        properties: Default::default(),
    };
    p.properties.topic_alias = Some(1);
    c.send(&Packet::Publish(p)).await;
    let d = next_disconnect(&mut c).await;
    assert_eq!(d.reason, DisconnectReasonCode::TopicAliasInvalid);
    assert_closed(&mut c).await;
}

#[tokio::test]
async fn publish_properties_reach_a_v5_subscriber() {
    let b = broker();
    let (mut s, _) = connect5(&b, "p5-props-sub", true, None, None).await;
    s.subscribe(1, &[("p5/props", QoS::AtLeastOnce)]).await;
    let (mut c, _) = connect5(&b, "p5-props-pub", true, None, None).await;
    let mut p = starling_codec::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "p5/props".into(),
        packet_id: 7,
        payload: Bytes::from_static(b"x"),
        properties: Default::default(),
    };
    p.properties.user_properties = vec![("z".into(), "1".into()), ("a".into(), "2".into())];
    p.properties.content_type = Some("text/plain".into());
    c.send(&Packet::Publish(p)).await;
    let m = s.next_publish().await.expect("the message");
    assert_eq!(
        m.properties.user_properties,
        vec![("z".into(), "1".into()), ("a".into(), "2".into())]
    );
    assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
}

#[tokio::test]
async fn publish_properties_survive_a_session_queue() {
    let b = broker();
    let (mut s, _) = connect5(&b, "p5-q-sub", true, Some(300), None).await;
    s.subscribe(1, &[("p5/queue", QoS::ExactlyOnce)]).await;
    s.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_closed(&mut s).await;
    let (mut c, _) = connect5(&b, "p5-q-pub", true, None, None).await;
    let mut p = starling_codec::Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "p5/queue".into(),
        packet_id: 9,
        payload: Bytes::from_static(b"x"),
        properties: Default::default(),
    };
    p.properties.user_properties = vec![("k".into(), "v".into())];
    p.properties.correlation_data = Some(Bytes::from_static(b"id-1"));
    c.send(&Packet::Publish(p)).await;
    assert!(matches!(c.recv().await, Ok(Packet::PubRec(_))));
    let (mut s, ack) = connect5(&b, "p5-q-sub", false, Some(300), None).await;
    assert!(ack.session_present);
    let m = s.next_publish().await.expect("the queued message");
    assert_eq!(m.qos, QoS::ExactlyOnce);
    assert_eq!(m.properties.user_properties, vec![("k".into(), "v".into())]);
    assert_eq!(m.properties.correlation_data.as_deref(), Some(&b"id-1"[..]));
}

#[tokio::test]
async fn publish_that_reaches_nobody_is_acknowledged_with_0x10() {
    use starling_codec::{PubAck, PubAckReasonCode, PubRec, PubRecReasonCode};
    let b = broker();
    let (mut c, _) = connect5(&b, "p5-nobody", true, None, None).await;
    c.publish("p5/nobody", b"x", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(
        c.recv().await,
        Ok(Packet::PubAck(PubAck::with_reason(
            1,
            PubAckReasonCode::NoMatchingSubscribers
        )))
    );
    c.publish("p5/nobody", b"x", QoS::ExactlyOnce, false, 2)
        .await;
    assert_eq!(
        c.recv().await,
        Ok(Packet::PubRec(PubRec::with_reason(
            2,
            PubRecReasonCode::NoMatchingSubscribers
        )))
    );
    // With a subscriber: success.
    c.subscribe(3, &[("p5/nobody", QoS::AtMostOnce)]).await;
    c.publish("p5/nobody", b"x", QoS::AtLeastOnce, false, 4)
        .await;
    loop {
        match c.recv().await {
            Ok(Packet::PubAck(a)) => {
                assert_eq!(a, PubAck::new(4));
                break;
            }
            Ok(Packet::Publish(_)) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}
