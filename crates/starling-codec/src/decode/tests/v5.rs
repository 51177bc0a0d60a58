//! The rules of 5.0: properties, reason codes, the short forms, subscription options. Every
//! rejection checks the error and the reason code the broker would send for it.

use super::*;

/// Decodes one frame on a 5.0 connection.
fn v5(first: u8, body: &[u8]) -> Result<Packet, DecodeError> {
    decode_frame(first, body, V5)
}

/// Asserts a decoding error and its reason code.
#[track_caller]
fn rejected(result: Result<Packet, DecodeError>, error: DecodeError, reason: u8) {
    assert_eq!(error.reason_code(), reason, "{error:?}");
    match (result, error) {
        (Err(got), expected) => assert_eq!(got, expected),
        (Ok(p), expected) => panic!("expected {expected:?}, decoded {p:?}"),
    }
}

/// Asserts a malformed packet (0x81) of whatever description.
#[track_caller]
fn malformed(result: Result<Packet, DecodeError>) {
    match result {
        Err(e @ DecodeError::Malformed(_)) => assert_eq!(e.reason_code(), 0x81),
        other => panic!("expected a malformed packet, got {other:?}"),
    }
}

/// A property block: its length, then `bytes`.
fn block(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut out = BytesMut::new();
    write_remaining_length(&mut out, bytes.len());
    v.extend_from_slice(&out);
    v.extend_from_slice(bytes);
    v
}

/// A 5.0 CONNECT body: flags, keep-alive 60, `props`, client id, then `rest` as it is.
fn connect_v5_body(flags: u8, props: &[u8], client_id: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = field(b"MQTT");
    v.push(5);
    v.push(flags);
    v.extend_from_slice(&60u16.to_be_bytes());
    v.extend_from_slice(&block(props));
    v.extend_from_slice(&field(client_id));
    v.extend_from_slice(rest);
    v
}

fn connect_v5(flags: u8, props: &[u8], rest: &[u8]) -> Result<Packet, DecodeError> {
    decode_frame(0x10, &connect_v5_body(flags, props, b"c", rest), None)
}

// ---- CONNECT ----

#[test]
fn connect_v5_byte_exact() {
    // The standard's CONNECT (3.1.2.11): protocol name, level 5, flags (clean start), keep-alive
    // 10, properties: Session Expiry Interval 10; client id "c".
    let bytes = [
        0x10, 19, // fixed header
        0, 4, b'M', b'Q', b'T', b'T', 5,    // protocol name, level
        0x02, // clean start
        0, 10, // keep-alive
        5, 0x11, 0, 0, 0, 10, // properties
        0, 1, b'c', // client id
    ];
    let mut buf = BytesMut::from(&bytes[..]);
    let mut d = Decoder::new(1 << 20);
    let Some(Packet::Connect(c)) = d.decode(&mut buf).unwrap() else {
        panic!("connect expected")
    };
    assert!(buf.is_empty());
    assert_eq!(d.protocol(), V5, "the CONNECT sets the protocol");
    assert_eq!(c.protocol, ProtocolVersion::V5);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 10);
    assert_eq!(c.properties.session_expiry_interval, Some(10));
    assert_eq!(&c.client_id[..], "c");
    let mut out = BytesMut::new();
    Packet::Connect(c)
        .encode(ProtocolVersion::V5, &mut out)
        .unwrap();
    assert_eq!(&out[..], &bytes[..]);
}

#[test]
fn connect_v5_with_will_user_name_and_password_decodes() {
    // Will properties come between the client id and the will topic.
    let mut rest = block(&[0x18, 0, 0, 0, 30, 0x01, 1, 0x03, 0, 1, b't']);
    rest.extend_from_slice(&field(b"will/t"));
    rest.extend_from_slice(&field(b"bye"));
    rest.extend_from_slice(&field(b"u"));
    rest.extend_from_slice(&field(b"pw"));
    let props = [
        0x21, 0, 10, // receive maximum
        0x27, 0, 0, 1, 0, // maximum packet size
        0x22, 0, 5, // topic alias maximum
        0x19, 1, // request response information
        0x17, 0, // request problem information
        0x26, 0, 1, b'k', 0, 1, b'v', // user property
        0x15, 0, 1, b'm', // authentication method
        0x16, 0, 2, 1, 2, // authentication data
    ];
    let c = unwrap_connect(connect_v5(0xC0 | 0x20 | 0x08 | 0x04, &props, &rest).unwrap());
    assert!(!c.clean_start);
    assert_eq!(
        c.properties,
        ConnectProperties {
            session_expiry_interval: None,
            receive_maximum: Some(10),
            maximum_packet_size: Some(256),
            topic_alias_maximum: Some(5),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            user_properties: vec![("k".into(), "v".into())],
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(&[1, 2])),
        }
    );
    let will = c.will.unwrap();
    assert_eq!(&will.topic[..], "will/t");
    assert_eq!(&will.payload[..], b"bye");
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(will.retain);
    assert_eq!(
        will.properties,
        WillProperties {
            will_delay_interval: Some(30),
            payload_format_indicator: Some(PayloadFormat::Utf8),
            content_type: Some("t".into()),
            ..WillProperties::default()
        }
    );
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn connect_v5_allows_a_password_without_user_name() {
    let c = unwrap_connect(connect_v5(0x40, &[], &field(b"pw")).unwrap());
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn connect_v5_reserved_flag_is_malformed() {
    // 3.1.2.3: "If the reserved flag is not 0 it is a Malformed Packet".
    malformed(connect_v5(0x03, &[], &[]));
}

#[test]
fn connect_v5_will_qos_or_retain_without_will_flag_is_a_protocol_error() {
    for flags in [0x08, 0x10, 0x20, 0x28] {
        rejected(
            connect_v5(flags, &[], &[]),
            DecodeError::ProtocolError("will qos or retain without will flag"),
            0x82,
        );
    }
}

#[test]
fn connect_v5_will_qos_3_is_malformed() {
    let mut rest = block(&[]);
    rest.extend_from_slice(&field(b"w"));
    rest.extend_from_slice(&field(b"m"));
    rejected(
        connect_v5(0x1C, &[], &rest),
        DecodeError::InvalidQoS(3),
        0x81,
    );
}

#[test]
fn connect_v5_will_properties_are_read_only_with_the_will_flag() {
    // Without the will flag, will properties would be trailing bytes.
    malformed(connect_v5(0x00, &[], &block(&[0x18, 0, 0, 0, 1])));
    // With it, a missing will property block is a truncated packet.
    malformed(connect_v5(0x04, &[], &[]));
    // A will property that belongs to CONNECT only is not allowed there.
    let mut rest = block(&[0x11, 0, 0, 0, 1]);
    rest.extend_from_slice(&field(b"w"));
    rest.extend_from_slice(&field(b"m"));
    rejected(
        connect_v5(0x04, &[], &rest),
        DecodeError::PropertyNotAllowed {
            id: 0x11,
            context: "will",
        },
        0x81,
    );
    // The will topic is a topic name.
    let mut rest = block(&[]);
    rest.extend_from_slice(&field(b"w/#"));
    rest.extend_from_slice(&field(b"m"));
    rejected(
        connect_v5(0x04, &[], &rest),
        DecodeError::WildcardInTopic,
        0x90,
    );
}

#[test]
fn connect_v5_authentication_data_needs_a_method() {
    rejected(
        connect_v5(0x02, &[0x16, 0, 1, 9], &[]),
        DecodeError::ProtocolError("authentication data without authentication method"),
        0x82,
    );
    assert!(connect_v5(0x02, &[0x15, 0, 1, b'm', 0x16, 0, 1, 9], &[]).is_ok());
    assert!(connect_v5(0x02, &[0x15, 0, 1, b'm'], &[]).is_ok());
}

#[test]
fn connect_v5_property_rules() {
    // Not a CONNECT property.
    rejected(
        connect_v5(0x02, &[0x23, 0, 1], &[]),
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            context: "CONNECT",
        },
        0x81,
    );
    // Twice.
    rejected(
        connect_v5(0x02, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], &[]),
        DecodeError::DuplicateProperty(0x11),
        0x82,
    );
    // Values.
    for (props, id) in [
        (&[0x21u8, 0, 0][..], 0x21u8),
        (&[0x27, 0, 0, 0, 0], 0x27),
        (&[0x17, 2], 0x17),
        (&[0x19, 2], 0x19),
    ] {
        rejected(
            connect_v5(0x02, props, &[]),
            DecodeError::InvalidPropertyValue(id),
            0x82,
        );
    }
    // User properties may repeat.
    let c = unwrap_connect(
        connect_v5(0x02, &[0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0], &[]).unwrap(),
    );
    assert_eq!(c.properties.user_properties.len(), 2);
}

#[test]
fn connect_v5_property_length_must_lie_inside_the_packet() {
    let mut body = field(b"MQTT");
    body.extend_from_slice(&[5, 0x02, 0, 60, 20, 0x11, 0, 0]);
    malformed(decode_frame(0x10, &body, None));
}

#[test]
fn connect_at_an_unknown_level_reports_unsupported_protocol_version() {
    let body = connect_body(b"MQTT", 6, 0x02, &[b"c"]);
    let e = decode_frame(0x10, &body, None).unwrap_err();
    assert_eq!(e.reason_code(), 0x84);
    assert_eq!(
        e.connack_reason_code(),
        ConnectReasonCode::UnsupportedProtocolVersion
    );
}

// ---- CONNACK ----

#[test]
fn connack_v5_byte_exact() {
    // Session present, success, properties: Receive Maximum 20, Maximum QoS 1, Assigned Client
    // Identifier "id".
    let body = [0x01, 0x00, 10, 0x21, 0, 20, 0x24, 1, 0x12, 0, 2, b'i', b'd'];
    let Packet::ConnAck(c) = v5(0x20, &body).unwrap() else {
        panic!()
    };
    assert!(c.session_present);
    assert_eq!(c.code, ConnectReasonCode::Success);
    assert_eq!(
        c.properties,
        ConnAckProperties {
            receive_maximum: Some(20),
            maximum_qos: Some(QoS::AtLeastOnce),
            assigned_client_identifier: Some("id".into()),
            ..ConnAckProperties::default()
        }
    );
    let mut out = BytesMut::new();
    Packet::ConnAck(c)
        .encode(ProtocolVersion::V5, &mut out)
        .unwrap();
    assert_eq!(&out[2..], &body[..]);
}

#[test]
fn connack_v5_refusal_codes_decode() {
    let Packet::ConnAck(c) = v5(0x20, &[0, 0x87, 0]).unwrap() else {
        panic!()
    };
    assert_eq!(c.code, ConnectReasonCode::NotAuthorized);
}

#[test]
fn connack_v5_rules() {
    malformed(v5(0x20, &[0x02, 0, 0]));
    // 0x01 is not a CONNACK reason code (nor 0x04, a DISCONNECT one).
    for code in [0x01, 0x04, 0x8B] {
        rejected(
            v5(0x20, &[0, code, 0]),
            DecodeError::InvalidReasonCode {
                packet_type: 2,
                code,
            },
            0x82,
        );
    }
    for id in [0x24u8, 0x25, 0x28, 0x29, 0x2A] {
        rejected(
            v5(0x20, &[0, 0, 2, id, 2]),
            DecodeError::InvalidPropertyValue(id),
            0x82,
        );
    }
    rejected(
        v5(0x20, &[0, 0, 4, 0x16, 0, 1, 7]),
        DecodeError::ProtocolError("authentication data without authentication method"),
        0x82,
    );
    // Missing property length.
    malformed(v5(0x20, &[0, 0]));
    // Trailing bytes.
    malformed(v5(0x20, &[0, 0, 0, 0]));
}

// ---- PUBLISH ----

fn publish_v5_body(topic: &[u8], packet_id: Option<u16>, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = field(topic);
    if let Some(id) = packet_id {
        v.extend_from_slice(&id.to_be_bytes());
    }
    v.extend_from_slice(&block(props));
    v.extend_from_slice(payload);
    v
}

#[test]
fn publish_v5_byte_exact() {
    // QoS 1, retain; topic "a/b", id 10, properties: Message Expiry 60, Topic Alias 2,
    // Subscription Identifiers 1 and 300, Content Type "t"; payload "hi".
    let body = [
        0, 3, b'a', b'/', b'b', 0, 10, // topic, packet id
        17, 0x02, 0, 0, 0, 60, 0x23, 0, 2, 0x0B, 1, 0x0B, 0xAC, 0x02, 0x03, 0, 1,
        b't', // props
        b'h', b'i', // payload
    ];
    let Packet::Publish(p) = v5(0x33, &body).unwrap() else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtLeastOnce, true, false));
    assert_eq!((&p.topic[..], p.packet_id), ("a/b", 10));
    assert_eq!(
        p.properties,
        PublishProperties {
            message_expiry_interval: Some(60),
            topic_alias: Some(2),
            content_type: Some("t".into()),
            subscription_identifiers: vec![1, 300],
            ..PublishProperties::default()
        }
    );
    assert_eq!(&p.payload[..], b"hi");
    let mut out = BytesMut::new();
    Packet::Publish(p)
        .encode(ProtocolVersion::V5, &mut out)
        .unwrap();
    assert_eq!(&out[2..], &body[..]);
}

#[test]
fn publish_v5_topic_may_be_empty_only_with_a_topic_alias() {
    let Packet::Publish(p) = v5(0x30, &publish_v5_body(b"", None, &[0x23, 0, 1], b"x")).unwrap()
    else {
        panic!()
    };
    assert!(p.topic.is_empty());
    assert_eq!(p.properties.topic_alias, Some(1));
    rejected(
        v5(0x30, &publish_v5_body(b"", None, &[], b"x")),
        DecodeError::EmptyTopic,
        0x82,
    );
}

#[test]
fn publish_v5_topic_alias_0_is_invalid() {
    rejected(
        v5(0x30, &publish_v5_body(b"t", None, &[0x23, 0, 0], b"")),
        DecodeError::InvalidTopicAlias,
        0x94,
    );
}

#[test]
fn publish_v5_subscription_identifiers() {
    // Many, in order.
    let Packet::Publish(p) = v5(
        0x30,
        &publish_v5_body(b"t", None, &[0x0B, 3, 0x0B, 1, 0x0B, 2], b""),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.subscription_identifiers, [3, 1, 2]);
    // Never 0.
    rejected(
        v5(0x30, &publish_v5_body(b"t", None, &[0x0B, 0], b"")),
        DecodeError::InvalidPropertyValue(0x0B),
        0x82,
    );
    // At most 4 bytes.
    rejected(
        v5(
            0x30,
            &publish_v5_body(b"t", None, &[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01], b""),
        ),
        DecodeError::MalformedVariableByteInteger,
        0x81,
    );
}

#[test]
fn publish_v5_property_rules() {
    rejected(
        v5(0x30, &publish_v5_body(b"t", None, &[0x01, 2], b"")),
        DecodeError::InvalidPropertyValue(0x01),
        0x82,
    );
    rejected(
        v5(0x30, &publish_v5_body(b"t", None, &[0x1F, 0, 0], b"")),
        DecodeError::PropertyNotAllowed {
            id: 0x1F,
            context: "PUBLISH",
        },
        0x81,
    );
    rejected(
        v5(
            0x30,
            &publish_v5_body(b"t", None, &[0x03, 0, 0, 0x03, 0, 0], b""),
        ),
        DecodeError::DuplicateProperty(0x03),
        0x82,
    );
    rejected(
        v5(0x30, &publish_v5_body(b"t", None, &[0x08, 0, 1, b'#'], b"")),
        DecodeError::InvalidPropertyValue(0x08),
        0x82,
    );
    rejected(
        v5(
            0x30,
            &publish_v5_body(b"t", None, &[0x26, 0, 1, 0xFF, 0, 0], b""),
        ),
        DecodeError::InvalidUtf8,
        0x81,
    );
    // The property length may not run past the packet.
    let mut body = field(b"t");
    body.extend_from_slice(&[9, 0x02, 0, 0]);
    malformed(v5(0x30, &body));
}

#[test]
fn publish_v5_topic_rules_are_those_of_3_1_1() {
    rejected(
        v5(0x30, &publish_v5_body(b"a/+", None, &[], b"")),
        DecodeError::WildcardInTopic,
        0x90,
    );
    rejected(
        v5(0x30, &publish_v5_body(b"a\0", None, &[], b"")),
        DecodeError::NullCharacter,
        0x81,
    );
    rejected(
        v5(0x32, &publish_v5_body(b"t", Some(0), &[], b"")),
        DecodeError::ZeroPacketId,
        0x82,
    );
    rejected(v5(0x36, &[0, 1, b't']), DecodeError::InvalidQoS(3), 0x81);
    malformed(v5(0x38, &publish_v5_body(b"t", None, &[], b"")));
}

#[test]
fn publish_v5_payload_follows_the_properties() {
    let Packet::Publish(p) =
        v5(0x32, &publish_v5_body(b"t", Some(1), &[0x01, 1], b"\0\x01")).unwrap()
    else {
        panic!()
    };
    assert_eq!(&p.payload[..], b"\0\x01");
    assert_eq!(
        p.properties.payload_format_indicator,
        Some(PayloadFormat::Utf8)
    );
}

// ---- PUBACK, PUBREC, PUBREL, PUBCOMP ----

#[test]
fn acks_of_remaining_length_2_are_success_without_properties() {
    assert_eq!(v5(0x40, &[0, 1]), Ok(Packet::PubAck(PubAck::new(1))));
    assert_eq!(v5(0x50, &[0, 2]), Ok(Packet::PubRec(PubRec::new(2))));
    assert_eq!(v5(0x62, &[0, 3]), Ok(Packet::PubRel(PubRel::new(3))));
    assert_eq!(v5(0x70, &[0, 4]), Ok(Packet::PubComp(PubComp::new(4))));
}

#[test]
fn acks_of_remaining_length_3_carry_a_reason_code_and_no_properties() {
    assert_eq!(
        v5(0x40, &[0, 1, 0x10]),
        Ok(Packet::PubAck(PubAck::with_reason(
            1,
            PubAckReasonCode::NoMatchingSubscribers
        )))
    );
    assert_eq!(
        v5(0x50, &[0, 1, 0x97]),
        Ok(Packet::PubRec(PubRec::with_reason(
            1,
            PubRecReasonCode::QuotaExceeded
        )))
    );
    assert_eq!(
        v5(0x62, &[0, 1, 0x92]),
        Ok(Packet::PubRel(PubRel::with_reason(
            1,
            PubRelReasonCode::PacketIdentifierNotFound
        )))
    );
    assert_eq!(
        v5(0x70, &[0, 1, 0x00]),
        Ok(Packet::PubComp(PubComp::new(1)))
    );
}

#[test]
fn acks_with_properties_decode() {
    let body = [0, 9, 0x87, 9, 0x1F, 0, 1, b'r', 0x26, 0, 0, 0, 0];
    let Packet::PubAck(a) = v5(0x40, &body[..]).unwrap() else {
        panic!()
    };
    assert_eq!(a.packet_id, 9);
    assert_eq!(a.reason, PubAckReasonCode::NotAuthorized);
    assert_eq!(a.properties.reason_string.as_deref(), Some("r"));
    assert_eq!(a.properties.user_properties, [("".into(), "".into())]);
    // Length 4: a reason code and an empty property block.
    assert_eq!(
        v5(0x70, &[0, 1, 0x92, 0]).unwrap().packet_type(),
        PacketType::PubComp
    );
}

#[test]
fn each_ack_takes_only_its_own_reason_codes() {
    // PUBREL and PUBCOMP take 0x00 and 0x92 only; PUBACK and PUBREC not 0x92.
    for (first, code) in [
        (0x62u8, 0x10u8),
        (0x62, 0x80),
        (0x70, 0x10),
        (0x40, 0x92),
        (0x50, 0x92),
        (0x40, 0x01),
    ] {
        rejected(
            v5(first, &[0, 1, code]),
            DecodeError::InvalidReasonCode {
                packet_type: first >> 4,
                code,
            },
            0x82,
        );
        rejected(
            v5(first, &[0, 1, code, 0]),
            DecodeError::InvalidReasonCode {
                packet_type: first >> 4,
                code,
            },
            0x82,
        );
    }
}

#[test]
fn ack_rules() {
    // Remaining length 1 (or 0) is refused before the body is awaited.
    for first in [0x40u8, 0x50, 0x62, 0x70] {
        for len in [0usize, 1] {
            let mut buf = BytesMut::from(&[first][..]);
            write_remaining_length(&mut buf, len);
            assert!(matches!(
                decoder(V5).decode(&mut buf),
                Err(DecodeError::Malformed(_))
            ));
        }
        rejected(v5(first, &[0, 0]), DecodeError::ZeroPacketId, 0x82);
        rejected(v5(first, &[0, 0, 0]), DecodeError::ZeroPacketId, 0x82);
        malformed(v5(first, &[0, 1, 0, 0, 0]));
        rejected(
            v5(first, &[0, 1, 0, 6, 0x1F, 0, 0, 0x1F, 0, 0]),
            DecodeError::DuplicateProperty(0x1F),
            0x82,
        );
        rejected(
            v5(first, &[0, 1, 0, 2, 0x0B, 1]),
            DecodeError::PropertyNotAllowed {
                id: 0x0B,
                context: "acknowledgement",
            },
            0x81,
        );
    }
    // PUBREL keeps its 0010 flags.
    rejected(
        v5(0x60, &[0, 1]),
        DecodeError::InvalidFlags {
            packet_type: 6,
            flags: 0,
        },
        0x81,
    );
}

#[test]
fn a_property_length_of_five_bytes_is_malformed() {
    // The property length is a Variable Byte Integer: at most 4 bytes.
    rejected(
        v5(0x40, &[0, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
        DecodeError::MalformedVariableByteInteger,
        0x81,
    );
    rejected(
        v5(0xE0, &[0, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        DecodeError::MalformedVariableByteInteger,
        0x81,
    );
}

// ---- SUBSCRIBE ----

fn subscribe_v5_body(props: &[u8], filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut v = 10u16.to_be_bytes().to_vec();
    v.extend_from_slice(&block(props));
    for (f, options) in filters {
        v.extend_from_slice(&field(f));
        v.push(*options);
    }
    v
}

#[test]
fn subscribe_v5_byte_exact() {
    // Id 10, Subscription Identifier 5; "a/#" QoS 1 No Local; "b" QoS 2 Retain As Published,
    // Retain Handling 2.
    let body = [
        0, 10, 2, 0x0B, 5, 0, 3, b'a', b'/', b'#', 0x05, 0, 1, b'b', 0x2A,
    ];
    let Packet::Subscribe(s) = v5(0x82, &body).unwrap() else {
        panic!()
    };
    assert_eq!(s.packet_id, 10);
    assert_eq!(s.properties.subscription_identifier, Some(5));
    assert_eq!(
        s.filters,
        [
            SubscribeFilter {
                filter: "a/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribe,
                },
            },
            SubscribeFilter {
                filter: "b".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            },
        ]
    );
    let mut out = BytesMut::new();
    Packet::Subscribe(s)
        .encode(ProtocolVersion::V5, &mut out)
        .unwrap();
    assert_eq!(&out[2..], &body[..]);
}

#[test]
fn subscribe_v5_reserved_option_bits_are_malformed() {
    for options in [0x40, 0x80, 0xC1] {
        malformed(v5(0x82, &subscribe_v5_body(&[], &[(b"a", options)])));
    }
}

#[test]
fn subscribe_v5_qos_3_and_retain_handling_3_are_protocol_errors() {
    for options in [0x03, 0x30, 0x31, 0x33] {
        rejected(
            v5(0x82, &subscribe_v5_body(&[], &[(b"a", 0), (b"b", options)])),
            DecodeError::InvalidSubscriptionOptions(options),
            0x82,
        );
    }
}

#[test]
fn subscribe_v5_no_local_on_a_shared_subscription_is_a_protocol_error() {
    rejected(
        v5(0x82, &subscribe_v5_body(&[], &[(b"$share/g/a", 0x04)])),
        DecodeError::NoLocalOnSharedSubscription,
        0x82,
    );
    // Even on an invalid shared filter: it is still a shared subscription.
    rejected(
        v5(0x82, &subscribe_v5_body(&[], &[(b"$share/+/a", 0x05)])),
        DecodeError::NoLocalOnSharedSubscription,
        0x82,
    );
    assert!(v5(0x82, &subscribe_v5_body(&[], &[(b"$share/g/a", 0x01)])).is_ok());
    assert!(v5(0x82, &subscribe_v5_body(&[], &[(b"share/g/a", 0x04)])).is_ok());
}

#[test]
fn subscribe_v5_property_rules() {
    rejected(
        v5(0x82, &subscribe_v5_body(&[0x0B, 1, 0x0B, 2], &[(b"a", 0)])),
        DecodeError::DuplicateProperty(0x0B),
        0x82,
    );
    rejected(
        v5(0x82, &subscribe_v5_body(&[0x0B, 0], &[(b"a", 0)])),
        DecodeError::InvalidPropertyValue(0x0B),
        0x82,
    );
    rejected(
        v5(0x82, &subscribe_v5_body(&[0x1F, 0, 0], &[(b"a", 0)])),
        DecodeError::PropertyNotAllowed {
            id: 0x1F,
            context: "SUBSCRIBE",
        },
        0x81,
    );
    let Packet::Subscribe(s) = v5(
        0x82,
        &subscribe_v5_body(&[0x26, 0, 1, b'a', 0, 1, b'b'], &[(b"a", 0)]),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(s.properties.user_properties, [("a".into(), "b".into())]);
}

#[test]
fn subscribe_v5_needs_a_filter() {
    rejected(
        v5(0x82, &subscribe_v5_body(&[], &[])),
        DecodeError::EmptySubscription,
        0x82,
    );
    // A 3.1.1 SUBSCRIBE (no property block) read as 5.0: the first filter's length is taken
    // for the property length.
    malformed(v5(0x82, &[0, 1, 0, 1, b'a', 0]));
}

// ---- SUBACK ----

#[test]
fn suback_v5_decodes() {
    let body = [
        0, 4, 3, 0x1F, 0, 0, 0x00, 0x01, 0x02, 0x80, 0x8F, 0x9E, 0xA2,
    ];
    let Packet::SubAck(s) = v5(0x90, &body).unwrap() else {
        panic!()
    };
    assert_eq!(s.packet_id, 4);
    assert_eq!(s.properties.reason_string.as_deref(), Some(""));
    assert_eq!(
        s.reason_codes,
        [
            SubAckReasonCode::GrantedQoS0,
            SubAckReasonCode::GrantedQoS1,
            SubAckReasonCode::GrantedQoS2,
            SubAckReasonCode::UnspecifiedError,
            SubAckReasonCode::TopicFilterInvalid,
            SubAckReasonCode::SharedSubscriptionsNotSupported,
            SubAckReasonCode::WildcardSubscriptionsNotSupported,
        ]
    );
}

#[test]
fn suback_v5_rules() {
    rejected(
        v5(0x90, &[0, 4, 0]),
        DecodeError::ProtocolError("no reason codes"),
        0x82,
    );
    rejected(
        v5(0x90, &[0, 4, 0, 0x03]),
        DecodeError::InvalidReasonCode {
            packet_type: 9,
            code: 3,
        },
        0x82,
    );
    rejected(v5(0x90, &[0, 0, 0, 0]), DecodeError::ZeroPacketId, 0x82);
    // A 3.1.1 SUBACK [id, 1] read as 5.0: property length 1 runs past the packet.
    malformed(v5(0x90, &[0, 4, 1]));
}

// ---- UNSUBSCRIBE, UNSUBACK ----

#[test]
fn unsubscribe_v5_decodes() {
    let mut body = vec![0, 7];
    body.extend_from_slice(&block(&[0x26, 0, 0, 0, 0]));
    body.extend_from_slice(&field(b"a/#"));
    body.extend_from_slice(&field(b"b"));
    let Packet::Unsubscribe(u) = v5(0xA2, &body).unwrap() else {
        panic!()
    };
    assert_eq!(u.packet_id, 7);
    assert_eq!(u.properties.user_properties.len(), 1);
    assert_eq!(u.filters, ["a/#", "b"]);
}

#[test]
fn unsubscribe_v5_rules() {
    rejected(
        v5(0xA2, &[0, 7, 2, 0x0B, 1, 0, 1, b'a']),
        DecodeError::PropertyNotAllowed {
            id: 0x0B,
            context: "UNSUBSCRIBE",
        },
        0x81,
    );
    rejected(v5(0xA2, &[0, 7, 0]), DecodeError::EmptySubscription, 0x82);
}

#[test]
fn unsuback_v5_has_one_reason_code_per_filter() {
    let Packet::UnsubAck(u) = v5(0xB0, &[0, 7, 0, 0x00, 0x11, 0x87]).unwrap() else {
        panic!()
    };
    assert_eq!(u.packet_id, 7);
    assert_eq!(
        u.reason_codes,
        [
            UnsubAckReasonCode::Success,
            UnsubAckReasonCode::NoSubscriptionExisted,
            UnsubAckReasonCode::NotAuthorized,
        ]
    );
    rejected(
        v5(0xB0, &[0, 7, 0]),
        DecodeError::ProtocolError("no reason codes"),
        0x82,
    );
    rejected(
        v5(0xB0, &[0, 7, 0, 0x10]),
        DecodeError::InvalidReasonCode {
            packet_type: 11,
            code: 0x10,
        },
        0x82,
    );
    // The 3.1.1 form is too short for 5.0.
    malformed(v5(0xB0, &[0, 7]));
}

// ---- DISCONNECT ----

#[test]
fn disconnect_v5_forms() {
    assert_eq!(v5(0xE0, &[]), Ok(Packet::Disconnect(Disconnect::default())));
    assert_eq!(
        v5(0xE0, &[0x04]),
        Ok(Packet::Disconnect(Disconnect::with_reason(
            DisconnectReasonCode::DisconnectWithWillMessage
        )))
    );
    assert_eq!(
        v5(0xE0, &[0x00, 0]),
        Ok(Packet::Disconnect(Disconnect::default()))
    );
    let Packet::Disconnect(d) =
        v5(0xE0, &[0x8B, 10, 0x11, 0, 0, 0, 5, 0x1C, 0, 2, b's', b'2']).unwrap()
    else {
        panic!()
    };
    assert_eq!(d.reason, DisconnectReasonCode::ServerShuttingDown);
    assert_eq!(d.properties.session_expiry_interval, Some(5));
    assert_eq!(d.properties.server_reference.as_deref(), Some("s2"));
}

#[test]
fn disconnect_v5_rules() {
    rejected(
        v5(0xE0, &[0x01]),
        DecodeError::InvalidReasonCode {
            packet_type: 14,
            code: 1,
        },
        0x82,
    );
    rejected(
        v5(0xE0, &[0, 3, 0x23, 0, 1]),
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            context: "DISCONNECT",
        },
        0x81,
    );
    rejected(
        v5(0xE0, &[0, 10, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1]),
        DecodeError::DuplicateProperty(0x11),
        0x82,
    );
    malformed(v5(0xE0, &[0, 0, 0]));
    rejected(
        v5(0xE1, &[]),
        DecodeError::InvalidFlags {
            packet_type: 14,
            flags: 1,
        },
        0x81,
    );
}

// ---- AUTH ----

#[test]
fn auth_v5_forms() {
    assert_eq!(v5(0xF0, &[]), Ok(Packet::Auth(Auth::default())));
    let Packet::Auth(a) = v5(0xF0, &[0x18, 9, 0x15, 0, 2, b'm', b'1', 0x16, 0, 1, 0xAA]).unwrap()
    else {
        panic!()
    };
    assert_eq!(a.reason, AuthReasonCode::ContinueAuthentication);
    assert_eq!(a.properties.authentication_method.as_deref(), Some("m1"));
    assert_eq!(
        a.properties.authentication_data.as_deref(),
        Some(&[0xAA][..])
    );
    assert_eq!(
        v5(0xF0, &[0x19]),
        Ok(Packet::Auth(Auth {
            reason: AuthReasonCode::ReAuthenticate,
            properties: AuthProperties::default(),
        }))
    );
}

#[test]
fn auth_exists_only_in_5_0() {
    for protocol in [None, V31, V311] {
        let mut buf = BytesMut::from(&[0xF0, 0][..]);
        assert_eq!(
            decoder(protocol).decode(&mut buf),
            Err(DecodeError::InvalidPacketType(15))
        );
    }
}

#[test]
fn auth_v5_rules() {
    for flags in [0x01, 0x02, 0x08] {
        rejected(
            v5(0xF0 | flags, &[]),
            DecodeError::InvalidFlags {
                packet_type: 15,
                flags,
            },
            0x81,
        );
    }
    rejected(
        v5(0xF0, &[0x04]),
        DecodeError::InvalidReasonCode {
            packet_type: 15,
            code: 4,
        },
        0x82,
    );
    rejected(
        v5(0xF0, &[0x18, 4, 0x16, 0, 1, 1]),
        DecodeError::ProtocolError("authentication data without authentication method"),
        0x82,
    );
    rejected(
        v5(0xF0, &[0x18, 3, 0x13, 0, 1]),
        DecodeError::PropertyNotAllowed {
            id: 0x13,
            context: "AUTH",
        },
        0x81,
    );
}

// ---- PINGREQ, PINGRESP, framing ----

#[test]
fn pings_stay_bodiless_in_5_0() {
    assert_eq!(v5(0xC0, &[]), Ok(Packet::PingReq));
    assert_eq!(v5(0xD0, &[]), Ok(Packet::PingResp));
    let mut buf = BytesMut::from(&[0xC0, 1, 0][..]);
    assert!(matches!(
        decoder(V5).decode(&mut buf),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn a_5_0_stream_decodes_incrementally() {
    let mut stream = BytesMut::new();
    stream.extend_from_slice(&frame(
        0x10,
        &connect_v5_body(0x02, &[0x11, 0, 0, 0, 9], b"c", &[]),
    ));
    stream.extend_from_slice(&frame(0xF0, &[0x18, 4, 0x15, 0, 1, b'm']));
    stream.extend_from_slice(&frame(
        0x82,
        &subscribe_v5_body(&[0x0B, 2], &[(b"a", 0x21)]),
    ));
    stream.extend_from_slice(&frame(
        0x32,
        &publish_v5_body(b"a", Some(1), &[0x26, 0, 1, b'k', 0, 1, b'v'], b"payload"),
    ));
    stream.extend_from_slice(&frame(0x40, &[0, 1, 0x10]));
    stream.extend_from_slice(&frame(0x62, &[0, 1]));
    stream.extend_from_slice(&frame(0xA2, &[0, 2, 0, 0, 1, b'a']));
    stream.extend_from_slice(&frame(0xE0, &[0x04]));

    let mut d = decoder(None);
    let mut buf = BytesMut::new();
    let mut types = Vec::new();
    for &byte in stream.iter() {
        buf.extend_from_slice(&[byte]);
        loop {
            let before = buf.clone();
            match d.decode(&mut buf).unwrap() {
                Some(p) => types.push(p.packet_type()),
                None => {
                    assert_eq!(buf, before, "Ok(None) consumes nothing");
                    break;
                }
            }
        }
    }
    assert!(buf.is_empty());
    assert_eq!(d.protocol(), V5);
    use PacketType::*;
    assert_eq!(
        types,
        [
            Connect,
            Auth,
            Subscribe,
            Publish,
            PubAck,
            PubRel,
            Unsubscribe,
            Disconnect
        ]
    );
}

#[test]
fn properties_are_slices_of_the_frame_copy() {
    let mut buf = frame(
        0x30,
        &publish_v5_body(
            b"t",
            None,
            &[0x03, 0, 4, b't', b'e', b'x', b't'],
            b"payload",
        ),
    );
    let range = buf.as_ptr_range();
    let Some(Packet::Publish(p)) = decoder(V5).decode(&mut buf).unwrap() else {
        panic!()
    };
    let content_type = p.properties.content_type.unwrap();
    assert!(!range.contains(&content_type.as_bytes().as_ptr()));
    // Content type, then the payload: contiguous in the one copy.
    assert_eq!(
        content_type.as_bytes().as_ptr_range().end,
        p.payload.as_ptr()
    );
}
