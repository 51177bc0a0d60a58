//! CONNECT: protocol versions, client ids, validation, authorisation, takeover, the first and
//! second packet, the CONNECT deadline.

use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_codec::{
    ConnAck, ConnectReasonCode, Disconnect, LastWill, Packet, ProtocolVersion, PubAck, QoS,
};
use starling_testkit::raw::connect_packet;
use starling_testkit::RawClient;

use crate::common::*;

fn accepted() -> ConnAck {
    ConnAck::new(false, ConnectReasonCode::Success)
}

fn refused(code: ConnectReasonCode) -> ConnAck {
    ConnAck::new(false, code)
}

/// The connection is open and served: PINGREQ gets PINGRESP.
async fn assert_alive(c: &mut RawClient) {
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Ok(Packet::PingResp));
}

#[tokio::test]
async fn mqtt31_client_id_of_24_chars_gets_connack_2() {
    let b = broker();
    let id = "a".repeat(24);
    let connect = connect_packet(&id, true, ProtocolVersion::V3_1, 60, None);
    let (mut c, ack) = RawClient::connect_with(b.addr(), connect).await;
    assert_eq!(ack, refused(ConnectReasonCode::ClientIdentifierNotValid));
    assert_closed_silently(&mut c).await;
}

#[tokio::test]
async fn mqtt31_client_id_of_23_chars_is_accepted() {
    let b = broker();
    let id = "b".repeat(23);
    let connect = connect_packet(&id, true, ProtocolVersion::V3_1, 60, None);
    let (mut c, ack) = RawClient::connect_with(b.addr(), connect).await;
    assert_eq!(ack, accepted());
    assert_alive(&mut c).await;
    // A 3.1 client is served like any other: it can subscribe and receive.
    assert_eq!(
        c.subscribe(1, &[("v31/t", QoS::AtLeastOnce)]).await,
        vec![starling_codec::SubAckReasonCode::granted(QoS::AtLeastOnce)]
    );
    c.publish("v31/t", b"x", QoS::AtLeastOnce, false, 3).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(c.recv().await.expect("PUBACK and PUBLISH"));
    }
    assert!(got.contains(&Packet::PubAck(PubAck::new(3))), "{got:?}");
    assert!(
        got.iter()
            .any(|p| matches!(p, Packet::Publish(p) if p.topic == "v31/t" && p.payload == "x")),
        "{got:?}"
    );
}

#[tokio::test]
async fn mqtt31_empty_client_id_gets_connack_2() {
    let b = broker();
    let connect = connect_packet("", true, ProtocolVersion::V3_1, 60, None);
    let (mut c, ack) = RawClient::connect_with(b.addr(), connect).await;
    assert_eq!(ack, refused(ConnectReasonCode::ClientIdentifierNotValid));
    assert_closed_silently(&mut c).await;
}

#[tokio::test]
async fn mqtt311_accepts_client_ids_longer_than_23_chars_up_to_the_configured_maximum() {
    let b = broker_env(&[("STARLING_MQTT_MAX_CLIENT_ID_LEN", "40")]);
    let (mut c, ack) = RawClient::connect(b.addr(), &"c".repeat(40), true).await;
    assert_eq!(ack, accepted());
    assert_alive(&mut c).await;
    let (mut c, ack) = RawClient::connect(b.addr(), &"c".repeat(41), true).await;
    assert_eq!(ack, refused(ConnectReasonCode::ClientIdentifierNotValid));
    assert_closed_silently(&mut c).await;
}

#[tokio::test]
async fn mqtt311_default_maximum_client_id_is_65535() {
    let b = broker();
    // Built by hand: 65 535 bytes of id is the longest a 2-byte length prefix can carry.
    let id = "d".repeat(65_535);
    let (mut c, ack) = RawClient::connect(b.addr(), &id, true).await;
    assert_eq!(ack, accepted());
    assert_alive(&mut c).await;
}

#[tokio::test]
async fn unknown_protocol_level_gets_connack_1_then_close() {
    let b = broker();
    let cases: [(&[u8], u8); 4] = [(b"MQTT", 3), (b"MQIsdp", 4), (b"MQTX", 4), (b"mqtt", 4)];
    for (name, level) in cases {
        let mut c = RawClient::open(b.addr()).await;
        c.send_raw(&raw_connect(name, level, 0x02, 60, &field(b"proto")))
            .await;
        assert_eq!(
            c.recv().await,
            Ok(Packet::ConnAck(Box::new(refused(
                ConnectReasonCode::UnsupportedProtocolVersion
            )))),
            "protocol {:?} level {level}",
            String::from_utf8_lossy(name)
        );
        assert_closed_silently(&mut c).await;
    }
}

#[tokio::test]
async fn empty_client_id_with_clean_session_gets_assigned_id() {
    let b = broker();
    let (mut first, ack) = RawClient::connect(b.addr(), "", true).await;
    assert_eq!(ack, accepted());
    let (mut second, ack) = RawClient::connect(b.addr(), "", true).await;
    assert_eq!(ack, accepted());
    // Both stay connected: the assigned ids differ, so the second did not take the first over.
    assert_alive(&mut first).await;
    assert_alive(&mut second).await;
    wait_log_count(&b, "New client connected from 127.0.0.1 as ", 2).await;
    let ids: Vec<String> = b
        .log_lines()
        .iter()
        .filter_map(|l| {
            let rest = l.split("New client connected from 127.0.0.1 as ").nth(1)?;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    assert!(ids.iter().all(|id| !id.is_empty()));
}

#[tokio::test]
async fn empty_client_id_without_clean_session_gets_connack_2() {
    let b = broker();
    let (mut c, ack) = RawClient::connect(b.addr(), "", false).await;
    assert_eq!(ack, refused(ConnectReasonCode::ClientIdentifierNotValid));
    assert_closed_silently(&mut c).await;
}

#[tokio::test]
async fn password_without_username_closes_in_311() {
    let b = broker();
    let mut connect = connect_packet("pw", true, ProtocolVersion::V3_1_1, 60, None);
    connect.password = Some(Bytes::from_static(b"secret"));
    let mut c = RawClient::open(b.addr()).await;
    c.send(&Packet::Connect(Box::new(connect))).await;
    assert_closed_silently(&mut c).await;
    wait_log(&b, "malformed-packet log line", |l| {
        l.contains("disconnected due to malformed packet")
            && l.contains("password flag without user name")
    })
    .await;
}

#[tokio::test]
async fn password_without_username_is_tolerated_in_31() {
    let b = broker();
    let mut connect = connect_packet("pw31", true, ProtocolVersion::V3_1, 60, None);
    connect.password = Some(Bytes::from_static(b"secret"));
    let (mut c, ack) = RawClient::connect_with(b.addr(), connect).await;
    assert_eq!(ack, accepted());
    assert_alive(&mut c).await;
}

#[tokio::test]
async fn reserved_connect_flag_closes_connection() {
    let b = broker();
    let mut c = RawClient::open(b.addr()).await;
    c.send_raw(&raw_connect(b"MQTT", 4, 0x03, 60, &field(b"reserved")))
        .await;
    assert_closed_silently(&mut c).await;
}

#[tokio::test]
async fn inconsistent_will_flags_close_connection() {
    let b = broker();
    let will = [field(b"will/t"), field(b"bye")].concat();
    let cases: [(u8, Vec<u8>); 3] = [
        // Will QoS 3.
        (0x02 | 0x04 | 0x18, [field(b"w1"), will.clone()].concat()),
        // Will retain without the will flag.
        (0x02 | 0x20, field(b"w2")),
        // Will QoS 1 without the will flag.
        (0x02 | 0x08, field(b"w3")),
    ];
    for (flags, payload) in cases {
        let mut c = RawClient::open(b.addr()).await;
        c.send_raw(&raw_connect(b"MQTT", 4, flags, 60, &payload))
            .await;
        assert_closed_silently(&mut c).await;
    }
}

#[tokio::test]
async fn malformed_utf8_or_nul_in_connect_strings_closes_connection() {
    let b = broker();
    let cases: [(u8, Vec<u8>); 4] = [
        // Client id: an invalid UTF-8 sequence.
        (0x02, field(&[b'a', 0xC3, 0x28])),
        // Client id with U+0000.
        (0x02, field(b"a\0b")),
        // Will topic with U+0000.
        (
            0x06,
            [field(b"w"), field(b"will\0t"), field(b"bye")].concat(),
        ),
        // User name: UTF-16 surrogate encoded in UTF-8 (not well-formed).
        (0x82, [field(b"u"), field(&[0xED, 0xA0, 0x80])].concat()),
    ];
    for (flags, payload) in cases {
        let mut c = RawClient::open(b.addr()).await;
        c.send_raw(&raw_connect(b"MQTT", 4, flags, 60, &payload))
            .await;
        assert_closed_silently(&mut c).await;
    }
}

#[tokio::test]
async fn anonymous_client_gets_connack_5_when_anonymous_access_is_off() {
    let b = broker_env(&[("STARLING_MQTT_ALLOW_ANONYMOUS", "false")]);
    let (mut c, ack) = RawClient::connect(b.addr(), "anon", true).await;
    assert_eq!(ack, refused(ConnectReasonCode::NotAuthorized));
    assert_closed_silently(&mut c).await;
    // A real client sees the refusal too.
    let (client, mut el) = rumqttc::AsyncClient::new(options(b.addr(), "anon2", true), 8);
    match el.poll().await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::NotAuthorized)
        }
        other => panic!("expected CONNACK 5, got {other:?}"),
    }
    drop(client);
    // With a user name it is accepted.
    let mut opts = options(b.addr(), "named", true);
    opts.set_credentials("alice", "pw");
    let (m, ack) = Mqtt::connect_with(opts).await;
    assert!(!ack.session_present);
    m.disconnect().await;
}

#[tokio::test]
async fn takeover_closes_old_connection_first() {
    let b = broker();
    let mut watcher = Mqtt::connect(b.addr(), "watcher", true).await;
    watcher
        .subscribe("will/dup", rumqttc::QoS::AtLeastOnce)
        .await;
    let will = LastWill {
        topic: "will/dup".into(),
        payload: Bytes::from_static(b"old connection lost"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    let connect = connect_packet("dup", true, ProtocolVersion::V3_1_1, 60, Some(will));
    let (mut old, ack) = RawClient::connect_with(b.addr(), connect).await;
    assert_eq!(ack, accepted());
    let (mut new, ack) = RawClient::connect(b.addr(), "dup", true).await;
    assert_eq!(ack, accepted());
    // By the time the new client holds its CONNACK, the old connection is already closed.
    assert_eq!(
        old.recv_within(Duration::ZERO).await,
        Err(starling_testkit::RecvError::Closed),
        "the old connection must be closed before the new one is accepted"
    );
    assert_alive(&mut new).await;
    // The takeover is logged before the new CONNACK, and the old connection's will is published.
    wait_log_count(&b, "Sending CONNACK to dup (0)", 2).await;
    let lines = b.log_lines();
    let kicked = lines
        .iter()
        .position(|l| l.contains("Client dup already connected, closing old connection."))
        .expect("takeover log line");
    let connacks: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("Sending CONNACK to dup (0)"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(connacks.len(), 2, "{connacks:?}");
    assert!(connacks[0] < kicked && kicked < connacks[1], "{lines:#?}");
    let w = watcher.next_publish().await;
    assert_eq!(
        (w.topic.as_str(), &w.payload[..]),
        ("will/dup", &b"old connection lost"[..])
    );
}

#[tokio::test]
async fn second_connect_closes_connection() {
    let b = broker();
    let (mut c, ack) = RawClient::connect(b.addr(), "twice", true).await;
    assert_eq!(ack, accepted());
    c.send(&Packet::Connect(Box::new(connect_packet(
        "twice",
        true,
        ProtocolVersion::V3_1_1,
        60,
        None,
    ))))
    .await;
    assert_closed_silently(&mut c).await;
    wait_log(&b, "protocol-error log line", |l| {
        l.contains("Client twice disconnected due to protocol error.")
            && l.contains("second CONNECT")
    })
    .await;
}

#[tokio::test]
async fn first_packet_not_connect_closes() {
    let b = broker();
    for first in [
        Packet::PingReq,
        Packet::Publish(starling_codec::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "early".into(),
            packet_id: 0,
            payload: Bytes::from_static(b"x"),
            properties: Default::default(),
        }),
        Packet::Disconnect(Disconnect::default()),
    ] {
        let mut c = RawClient::open(b.addr()).await;
        c.send(&first).await;
        assert_closed_silently(&mut c).await;
    }
    wait_log(&b, "protocol-error log line", |l| {
        l.contains("disconnected due to protocol error")
            && l.contains("first packet is not CONNECT")
    })
    .await;
}

#[tokio::test]
async fn connect_timeout_closes_silent_connection() {
    let b = broker_env(&[("STARLING_MQTT_CONNECT_TIMEOUT_SECS", "1")]);
    let started = Instant::now();
    let mut c = RawClient::open(b.addr()).await;
    assert_closed_silently(&mut c).await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(950),
        "closed after {after:?}, before the deadline"
    );
    assert!(
        after < Duration::from_secs(3),
        "closed after {after:?}, well past the deadline"
    );
    // A connection that sends CONNECT in time is not affected by the deadline.
    let (mut ok, ack) = RawClient::connect(b.addr(), "in-time", true).await;
    assert_eq!(ack, accepted());
    assert_eq!(
        ok.recv_within(Duration::from_millis(1500)).await,
        Err(starling_testkit::RecvError::Timeout)
    );
    assert_alive(&mut ok).await;
}
