//! 5.0 forms: the shortest encodings, what 3.1.1 leaves out, fitting a Maximum Packet Size,
//! and the PUBLISH fast path with per-delivery properties.

use super::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

fn v5(p: &Packet) -> Vec<u8> {
    encoded_in(p, V5)
}

fn reason_and_user_property() -> AckProperties {
    AckProperties {
        reason_string: Some("quota".into()),
        user_properties: vec![("k".into(), "v".into())],
    }
}

#[test]
fn acks_are_written_in_their_shortest_form() {
    let p = Packet::PubAck(PubAck::new(0x0102));
    assert_eq!(v5(&p), [0x40, 2, 1, 2]);
    let p = Packet::PubRec(PubRec::with_reason(1, PubRecReasonCode::QuotaExceeded));
    assert_eq!(v5(&p), [0x50, 3, 0, 1, 0x97]);
    roundtrip_in(&p, V5);
    let p = Packet::PubRel(PubRel::with_reason(
        1,
        PubRelReasonCode::PacketIdentifierNotFound,
    ));
    assert_eq!(v5(&p), [0x62, 3, 0, 1, 0x92]);
    // With properties: reason code (even success) and the block.
    let p = Packet::PubComp(PubComp {
        packet_id: 1,
        reason: PubCompReasonCode::Success,
        properties: AckProperties {
            reason_string: Some("ok".into()),
            user_properties: Vec::new(),
        },
    });
    assert_eq!(v5(&p), [0x70, 9, 0, 1, 0x00, 5, 0x1F, 0, 2, b'o', b'k']);
    roundtrip_in(&p, V5);
}

#[test]
fn disconnect_and_auth_are_written_in_their_shortest_form() {
    assert_eq!(v5(&Packet::Disconnect(Disconnect::default())), [0xE0, 0]);
    let p = Packet::Disconnect(Disconnect::with_reason(
        DisconnectReasonCode::DisconnectWithWillMessage,
    ));
    assert_eq!(v5(&p), [0xE0, 1, 0x04]);
    roundtrip_in(&p, V5);
    let p = Packet::Disconnect(Disconnect {
        reason: DisconnectReasonCode::NormalDisconnection,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..DisconnectProperties::default()
        },
    });
    assert_eq!(v5(&p), [0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, 0]);
    roundtrip_in(&p, V5);

    assert_eq!(v5(&Packet::Auth(Auth::default())), [0xF0, 0]);
    let p = Packet::Auth(Auth {
        reason: AuthReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some("m".into()),
            ..AuthProperties::default()
        },
    });
    assert_eq!(v5(&p), [0xF0, 6, 0x18, 4, 0x15, 0, 1, b'm']);
    roundtrip_in(&p, V5);
}

#[test]
fn auth_cannot_be_encoded_before_5_0() {
    for version in [ProtocolVersion::V3_1, V311] {
        let mut out = BytesMut::new();
        assert_eq!(
            Packet::Auth(Auth::default()).encode(version, &mut out),
            Err(EncodeError::NotInProtocol(15))
        );
        assert!(out.is_empty());
    }
}

#[test]
fn connack_v5_byte_exact() {
    let p = Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        code: ConnectReasonCode::ClientIdentifierNotValid,
        properties: ConnAckProperties {
            reason_string: Some("id".into()),
            ..ConnAckProperties::default()
        },
    }));
    assert_eq!(v5(&p), [0x20, 8, 0, 0x85, 5, 0x1F, 0, 2, b'i', b'd']);
    roundtrip_in(&p, V5);
}

#[test]
fn suback_and_unsuback_v5_byte_exact() {
    let p = Packet::SubAck(SubAck {
        packet_id: 3,
        properties: AckProperties::default(),
        reason_codes: vec![
            SubAckReasonCode::GrantedQoS2,
            SubAckReasonCode::WildcardSubscriptionsNotSupported,
        ],
    });
    assert_eq!(v5(&p), [0x90, 5, 0, 3, 0, 0x02, 0xA2]);
    roundtrip_in(&p, V5);
    let p = Packet::UnsubAck(UnsubAck {
        packet_id: 3,
        properties: AckProperties::default(),
        reason_codes: vec![UnsubAckReasonCode::NoSubscriptionExisted],
    });
    assert_eq!(v5(&p), [0xB0, 4, 0, 3, 0, 0x11]);
    roundtrip_in(&p, V5);
}

#[test]
fn unsubscribe_v5_byte_exact() {
    let p = Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: UnsubscribeProperties {
            user_properties: vec![("a".into(), "".into())],
        },
        filters: vec!["x/#".into()],
    });
    assert_eq!(
        v5(&p),
        [0xA2, 14, 0, 2, 6, 0x26, 0, 1, b'a', 0, 0, 0, 3, b'x', b'/', b'#']
    );
    roundtrip_in(&p, V5);
}

#[test]
fn before_5_0_properties_and_reason_codes_are_left_out() {
    let ack = Packet::PubAck(PubAck {
        packet_id: 9,
        reason: PubAckReasonCode::NotAuthorized,
        properties: reason_and_user_property(),
    });
    assert_eq!(encoded(&ack), [0x40, 2, 0, 9]);
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 9,
        properties: reason_and_user_property(),
        reason_codes: vec![UnsubAckReasonCode::NotAuthorized],
    });
    assert_eq!(encoded(&unsuback), [0xB0, 2, 0, 9]);
    let disconnect = Packet::Disconnect(Disconnect::with_reason(
        DisconnectReasonCode::ServerShuttingDown,
    ));
    assert_eq!(encoded(&disconnect), [0xE0, 0]);
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: SubscribeProperties {
            subscription_identifier: Some(4),
            ..SubscribeProperties::default()
        },
        filters: vec![SubscribeFilter {
            filter: "a".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }],
    });
    assert_eq!(encoded(&subscribe), [0x82, 6, 0, 1, 0, 1, b'a', 1]);
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 0,
        properties: PublishProperties {
            content_type: Some("json".into()),
            ..PublishProperties::default()
        },
        payload: Bytes::from_static(b"x"),
    });
    assert_eq!(encoded(&publish), [0x30, 4, 0, 1, b't', b'x']);
}

#[test]
fn connack_reason_codes_become_311_return_codes() {
    for (code, v3) in [
        (ConnectReasonCode::Success, 0),
        (ConnectReasonCode::UnsupportedProtocolVersion, 1),
        (ConnectReasonCode::ClientIdentifierNotValid, 2),
        (ConnectReasonCode::ServerBusy, 3),
        (ConnectReasonCode::BadUserNameOrPassword, 4),
        (ConnectReasonCode::Banned, 5),
    ] {
        let p = Packet::ConnAck(Box::new(ConnAck::new(false, code)));
        assert_eq!(encoded(&p), [0x20, 2, 0, v3]);
        let p = Packet::ConnAck(Box::new(ConnAck {
            properties: ConnAckProperties {
                reason_string: Some("x".into()),
                ..ConnAckProperties::default()
            },
            ..ConnAck::new(false, code)
        }));
        assert_eq!(encoded(&p), [0x20, 2, 0, v3], "properties left out");
    }
}

#[test]
fn suback_failures_become_0x80_before_5_0() {
    let p = Packet::SubAck(SubAck {
        packet_id: 1,
        properties: AckProperties::default(),
        reason_codes: vec![
            SubAckReasonCode::GrantedQoS0,
            SubAckReasonCode::NotAuthorized,
            SubAckReasonCode::TopicFilterInvalid,
        ],
    });
    assert_eq!(encoded(&p), [0x90, 5, 0, 1, 0, 0x80, 0x80]);
}

#[test]
fn connect_is_encoded_in_the_version_it_names() {
    let mut c = connect(ProtocolVersion::V5);
    c.properties.receive_maximum = Some(5);
    let p = Packet::Connect(Box::new(c));
    let bytes = encoded_in(&p, V311);
    assert_eq!(bytes, encoded_in(&p, V5));
    assert_eq!(
        bytes,
        [
            0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 3, 0x21, 0, 5, 0, 3, b'c',
            b'i', b'd'
        ]
    );
    roundtrip_in(&p, V5);
    // A 3.1.1 CONNECT leaves its properties out.
    let mut c = connect(V311);
    c.properties.receive_maximum = Some(5);
    let bytes = encoded_in(&Packet::Connect(Box::new(c)), V5);
    assert_eq!(bytes.len(), 17);
}

#[test]
fn connect_v5_with_will_and_password_only() {
    let mut c = connect(ProtocolVersion::V5);
    let mut will = LastWill::new("w".into(), Bytes::from_static(b"m"), QoS::AtMostOnce, false);
    will.properties.will_delay_interval = Some(1);
    c.will = Some(will);
    c.password = Some(Bytes::from_static(b"p"));
    let p = Packet::Connect(Box::new(c));
    let bytes = v5(&p);
    // Flags: password, will; then empty properties, client id, will properties, will topic.
    assert_eq!(bytes[9], 0x40 | 0x04 | 0x02);
    assert_eq!(
        &bytes[12..],
        &[0, 0, 3, b'c', b'i', b'd', 5, 0x18, 0, 0, 0, 1, 0, 1, b'w', 0, 1, b'm', 0, 1, b'p']
    );
    roundtrip_in(&p, V5);
}

#[test]
fn property_values_the_wire_cannot_carry_are_not_encoded() {
    let mut out = BytesMut::new();
    let p = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: SubscribeProperties {
            subscription_identifier: Some(MAX_VAR_INT + 1),
            ..SubscribeProperties::default()
        },
        filters: vec![SubscribeFilter::new("a".into(), QoS::AtMostOnce)],
    });
    assert_eq!(
        p.encode(V5, &mut out),
        Err(EncodeError::InvalidProperty(0x0B))
    );
    // 3.1.1 does not carry the property at all.
    assert!(p.encode(V311, &mut out).is_ok());
    out.clear();
    let p = Packet::Disconnect(Disconnect {
        reason: DisconnectReasonCode::NormalDisconnection,
        properties: DisconnectProperties {
            reason_string: Some("x".repeat(70_000).into()),
            ..DisconnectProperties::default()
        },
    });
    assert_eq!(
        p.encode(V5, &mut out),
        Err(EncodeError::StringTooLong(70_000))
    );
    assert!(out.is_empty());
}

// ---- Maximum Packet Size ----

#[test]
fn fit_drops_the_reason_string_first_then_the_user_properties() {
    let full = Packet::PubAck(PubAck {
        packet_id: 1,
        reason: PubAckReasonCode::QuotaExceeded,
        properties: reason_and_user_property(),
    });
    let full_len = full.encoded_len(V5);
    assert_eq!(full_len, v5(&full).len());

    // Fits as it is.
    let mut p = full.clone();
    assert!(p.fit_to_maximum(V5, full_len));
    assert_eq!(p, full);

    // One byte short: the reason string goes, the user property stays.
    let mut p = full.clone();
    assert!(p.fit_to_maximum(V5, full_len - 1));
    let Packet::PubAck(a) = &p else { panic!() };
    assert_eq!(a.properties.reason_string, None);
    assert_eq!(a.properties.user_properties.len(), 1);
    assert_eq!(a.reason, PubAckReasonCode::QuotaExceeded);

    // Down to the reason code alone.
    let mut p = full.clone();
    assert!(p.fit_to_maximum(V5, 5));
    assert_eq!(
        p,
        Packet::PubAck(PubAck::with_reason(1, PubAckReasonCode::QuotaExceeded))
    );
    assert_eq!(v5(&p).len(), 5);

    // Never below what the packet needs.
    let mut p = full;
    assert!(!p.fit_to_maximum(V5, 4));
}

#[test]
fn fit_applies_to_every_packet_with_a_reason_string() {
    let big = || Some(ByteString::from("r".repeat(100)));
    let users = || vec![(ByteString::from("u".repeat(100)), ByteString::new())];
    let packets = [
        Packet::ConnAck(Box::new(ConnAck {
            properties: ConnAckProperties {
                reason_string: big(),
                user_properties: users(),
                ..ConnAckProperties::default()
            },
            ..ConnAck::new(false, ConnectReasonCode::Success)
        })),
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: AckProperties {
                reason_string: big(),
                user_properties: users(),
            },
            reason_codes: vec![SubAckReasonCode::GrantedQoS0],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 1,
            properties: AckProperties {
                reason_string: big(),
                user_properties: users(),
            },
            reason_codes: vec![UnsubAckReasonCode::Success],
        }),
        Packet::Disconnect(Disconnect {
            reason: DisconnectReasonCode::NormalDisconnection,
            properties: DisconnectProperties {
                reason_string: big(),
                user_properties: users(),
                ..DisconnectProperties::default()
            },
        }),
        Packet::Auth(Auth {
            reason: AuthReasonCode::Success,
            properties: AuthProperties {
                reason_string: big(),
                user_properties: users(),
                ..AuthProperties::default()
            },
        }),
        Packet::PubRel(PubRel {
            packet_id: 1,
            reason: PubRelReasonCode::Success,
            properties: AckProperties {
                reason_string: big(),
                user_properties: users(),
            },
        }),
    ];
    for full in packets {
        let mut p = full.clone();
        assert!(p.fit_to_maximum(V5, 50), "{full:?}");
        assert!(p.encoded_len(V5) <= 50);
        assert_ne!(p, full);
        assert_eq!(p.packet_type(), full.packet_type());
    }
}

#[test]
fn fit_leaves_other_packets_alone() {
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 0,
        properties: PublishProperties {
            user_properties: vec![("k".into(), "v".repeat(100).into())],
            ..PublishProperties::default()
        },
        payload: Bytes::new(),
    });
    let mut p = publish.clone();
    assert!(!p.fit_to_maximum(V5, 20));
    assert_eq!(p, publish, "a PUBLISH keeps its user properties");
    // In 3.1.1 nothing is dropped (there is nothing to drop).
    let ack = Packet::PubAck(PubAck::new(1));
    let mut p = ack.clone();
    assert!(!p.fit_to_maximum(V311, 3));
    assert!(p.fit_to_maximum(V311, 4));
    assert_eq!(p, ack);
}

// ---- PUBLISH fast path ----

fn message_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(PayloadFormat::Utf8),
        message_expiry_interval: Some(3600),
        topic_alias: Some(9),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("k".into(), "v".into())],
        subscription_identifiers: vec![77],
        content_type: Some("text/plain".into()),
    }
}

#[test]
fn publish_v5_fast_path_replaces_the_per_delivery_properties() {
    let stored = message_properties();
    let parts = PublishV5 {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "a/b",
        packet_id: 12,
        properties: &stored,
        message_expiry_interval: Some(1800),
        topic_alias: None,
        subscription_identifiers: &[1, 2],
        payload: b"payload",
    };
    let mut fast = BytesMut::new();
    encode_publish_v5(&mut fast, &parts).unwrap();
    assert_eq!(fast.len(), parts.encoded_len());

    // The same as the packet with those properties in place.
    let packet = Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: 12,
        properties: PublishProperties {
            message_expiry_interval: Some(1800),
            topic_alias: None,
            subscription_identifiers: vec![1, 2],
            ..message_properties()
        },
        payload: Bytes::from_static(b"payload"),
    });
    assert_eq!(&fast[..], &v5(&packet)[..]);
    roundtrip_in(&packet, V5);
}

#[test]
fn publish_v5_fast_path_with_an_established_alias_sends_an_empty_topic() {
    let stored = PublishProperties::default();
    let parts = PublishV5 {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "",
        packet_id: 0,
        properties: &stored,
        message_expiry_interval: None,
        topic_alias: Some(3),
        subscription_identifiers: &[],
        payload: b"x",
    };
    let mut out = BytesMut::new();
    encode_publish_v5(&mut out, &parts).unwrap();
    assert_eq!(&out[..], &[0x30, 7, 0, 0, 3, 0x23, 0, 3, b'x']);
}

#[test]
fn publish_v5_fast_path_writes_nothing_on_error() {
    let stored = PublishProperties::default();
    let mut parts = PublishV5 {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t",
        packet_id: 0,
        properties: &stored,
        message_expiry_interval: None,
        topic_alias: None,
        subscription_identifiers: &[],
        payload: b"",
    };
    let mut out = BytesMut::new();
    assert_eq!(
        encode_publish_v5(&mut out, &parts),
        Err(EncodeError::ZeroPacketId)
    );
    parts.packet_id = 1;
    parts.subscription_identifiers = &[MAX_VAR_INT + 1];
    assert_eq!(
        encode_publish_v5(&mut out, &parts),
        Err(EncodeError::InvalidProperty(0x0B))
    );
    assert!(out.is_empty());
    assert_eq!(out.capacity(), 0, "nothing reserved on error");
}

#[test]
fn publish_without_properties_is_one_byte_longer_in_5_0() {
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: 5,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"hi"),
    };
    let packet = Packet::Publish(p);
    let v3 = encoded(&packet);
    let v5 = v5(&packet);
    assert_eq!(v5.len(), v3.len() + 1);
    assert_eq!(&v5[..9], &[0x33, 10, 0, 3, b'a', b'/', b'b', 0, 5]);
    assert_eq!(v5[9], 0, "empty property block");
    assert_eq!(&v5[10..], b"hi");
}
