//! Encoder tests: 3.1 / 3.1.1 layouts and errors here, 5.0 forms in `v5`.

mod v5;

use bytes::Bytes;
use bytestring::ByteString;

use super::*;
use crate::decode::Decoder;
use crate::packet::*;
use crate::properties::*;
use crate::reason::*;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Encodes `p` for `version`, checking `encoded_len`.
fn encoded_in(p: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    p.encode(version, &mut out).unwrap();
    assert_eq!(out.len(), p.encoded_len(version), "encoded_len of {p:?}");
    out.to_vec()
}

fn encoded(p: &Packet) -> Vec<u8> {
    encoded_in(p, V311)
}

/// Encodes and decodes `p` in `version`: the same packet comes back.
fn roundtrip_in(p: &Packet, version: ProtocolVersion) {
    let mut buf = BytesMut::from(&encoded_in(p, version)[..]);
    let mut d = Decoder::new(usize::MAX);
    if !matches!(p, Packet::Connect(_)) {
        d.set_protocol(version);
    }
    assert_eq!(d.decode(&mut buf), Ok(Some(p.clone())));
    assert!(buf.is_empty());
}

fn roundtrip(p: &Packet) {
    roundtrip_in(p, V311);
}

#[test]
fn remaining_length_len_boundaries() {
    for (n, len) in [
        (0, 1),
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (2_097_151, 3),
        (2_097_152, 4),
        (MAX_REMAINING_LENGTH, 4),
    ] {
        assert_eq!(remaining_length_len(n), len, "{n}");
        let mut out = BytesMut::new();
        write_remaining_length(&mut out, n);
        assert_eq!(out.len(), len, "{n}");
    }
}

#[test]
fn remaining_length_examples_from_the_spec() {
    for (n, bytes) in [
        (0, &[0x00][..]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ] {
        let mut out = BytesMut::new();
        write_remaining_length(&mut out, n);
        assert_eq!(&out[..], bytes, "{n}");
        let mut fixed = BytesMut::new();
        put_fixed_header(&mut fixed, 0x30, n);
        assert_eq!(&fixed[1..], bytes, "{n}");
    }
}

#[test]
fn publish_qos0_is_encoded_without_packet_id() {
    let mut out = BytesMut::new();
    encode_publish(&mut out, false, QoS::AtMostOnce, true, "a/b", 99, b"hi").unwrap();
    assert_eq!(&out[..], &[0x31, 7, 0, 3, b'a', b'/', b'b', b'h', b'i']);
}

#[test]
fn publish_qos2_dup_is_encoded_with_packet_id() {
    let mut out = BytesMut::new();
    encode_publish(&mut out, true, QoS::ExactlyOnce, false, "t", 0x0102, b"").unwrap();
    assert_eq!(&out[..], &[0x3C, 5, 0, 1, b't', 1, 2]);
}

#[test]
fn publish_with_zero_packet_id_is_not_encoded() {
    let mut out = BytesMut::new();
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        assert_eq!(
            encode_publish(&mut out, false, qos, false, "t", 0, b"x"),
            Err(EncodeError::ZeroPacketId)
        );
    }
    assert!(out.is_empty());
}

#[test]
fn publish_topic_longer_than_65535_is_not_encoded() {
    let mut out = BytesMut::new();
    let topic = "t".repeat(65_536);
    assert_eq!(
        encode_publish(&mut out, false, QoS::AtMostOnce, false, &topic, 0, b""),
        Err(EncodeError::StringTooLong(65_536))
    );
    assert!(out.is_empty());
}

#[test]
fn publish_larger_than_protocol_maximum_is_not_encoded() {
    let mut out = BytesMut::new();
    // 2 + 1 (topic) + payload = MAX + 1. `vec!` of zeros is lazily mapped: cheap.
    let payload = vec![0u8; MAX_REMAINING_LENGTH - 2];
    assert_eq!(
        encode_publish(&mut out, false, QoS::AtMostOnce, false, "t", 0, &payload),
        Err(EncodeError::PayloadTooLarge(MAX_REMAINING_LENGTH + 1))
    );
    assert!(out.is_empty());
    assert_eq!(out.capacity(), 0, "nothing reserved on error");
}

#[test]
fn acks_are_encoded_with_their_flags() {
    for (t, first) in [
        (PacketType::PubAck, 0x40),
        (PacketType::PubRec, 0x50),
        (PacketType::PubRel, 0x62),
        (PacketType::PubComp, 0x70),
        (PacketType::UnsubAck, 0xB0),
    ] {
        let mut out = BytesMut::new();
        encode_ack(&mut out, t, 0xABCD);
        assert_eq!(&out[..], &[first, 2, 0xAB, 0xCD]);
    }
}

#[test]
fn ack_packets_with_zero_packet_id_are_not_encoded() {
    for p in [
        Packet::PubAck(PubAck::new(0)),
        Packet::PubRec(PubRec::new(0)),
        Packet::PubRel(PubRel::new(0)),
        Packet::PubComp(PubComp::new(0)),
        Packet::UnsubAck(UnsubAck::new(0)),
    ] {
        for version in [V311, ProtocolVersion::V5] {
            let mut out = BytesMut::new();
            assert_eq!(p.encode(version, &mut out), Err(EncodeError::ZeroPacketId));
            assert!(out.is_empty());
        }
    }
}

#[test]
fn bodiless_packets_are_two_bytes() {
    assert_eq!(encoded(&Packet::PingReq), [0xC0, 0]);
    assert_eq!(encoded(&Packet::PingResp), [0xD0, 0]);
    assert_eq!(
        encoded(&Packet::Disconnect(Disconnect::default())),
        [0xE0, 0]
    );
}

#[test]
fn connack_is_encoded() {
    let p = Packet::ConnAck(Box::new(ConnAck::new(
        true,
        ConnectReasonCode::BadUserNameOrPassword,
    )));
    assert_eq!(encoded(&p), [0x20, 2, 1, 4]);
}

fn connect(protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 30,
        properties: ConnectProperties::default(),
        client_id: ByteString::from_static("cid"),
        will: None,
        username: None,
        password: None,
    }
}

#[test]
fn connect_311_is_encoded_with_name_level_and_flags() {
    let p = Packet::Connect(Box::new(connect(ProtocolVersion::V3_1_1)));
    assert_eq!(
        encoded(&p),
        [0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 3, b'c', b'i', b'd']
    );
    roundtrip(&p);
}

#[test]
fn connect_31_is_encoded_as_mqisdp_level_3() {
    let p = Packet::Connect(Box::new(connect(ProtocolVersion::V3_1)));
    let bytes = encoded(&p);
    assert_eq!(
        &bytes[2..11],
        &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3]
    );
    roundtrip(&p);
}

#[test]
fn connect_flags_follow_the_fields() {
    let mut c = connect(ProtocolVersion::V3_1_1);
    c.clean_start = false;
    c.will = Some(LastWill::new(
        ByteString::from_static("w"),
        Bytes::from_static(b"bye"),
        QoS::AtLeastOnce,
        true,
    ));
    c.username = Some(ByteString::from_static("u"));
    c.password = Some(Bytes::from_static(b"p"));
    let p = Packet::Connect(Box::new(c));
    let bytes = encoded(&p);
    assert_eq!(bytes[9], 0x80 | 0x40 | 0x20 | 0x08 | 0x04);
    roundtrip(&p);
}

#[test]
fn connect_with_field_longer_than_65535_is_not_encoded() {
    let long = "x".repeat(70_000);
    let mut c = connect(ProtocolVersion::V3_1_1);
    c.username = Some(ByteString::from(long.as_str()));
    let mut out = BytesMut::new();
    assert_eq!(
        Packet::Connect(Box::new(c)).encode(V311, &mut out),
        Err(EncodeError::StringTooLong(70_000))
    );
    let mut c = connect(ProtocolVersion::V3_1_1);
    c.password = Some(Bytes::from(long.into_bytes()));
    assert_eq!(
        Packet::Connect(Box::new(c)).encode(V311, &mut out),
        Err(EncodeError::StringTooLong(70_000))
    );
    assert!(out.is_empty());
}

#[test]
fn subscribe_and_unsubscribe_carry_flags_0010() {
    let s = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: SubscribeProperties::default(),
        filters: vec![SubscribeFilter::new(
            ByteString::from_static("a/#"),
            QoS::ExactlyOnce,
        )],
    });
    assert_eq!(encoded(&s), [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 2]);
    roundtrip(&s);
    let u = Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: UnsubscribeProperties::default(),
        filters: vec![ByteString::from_static("a")],
    });
    assert_eq!(encoded(&u), [0xA2, 5, 0, 2, 0, 1, b'a']);
    roundtrip(&u);
}

#[test]
fn suback_is_encoded() {
    let p = Packet::SubAck(SubAck {
        packet_id: 7,
        properties: AckProperties::default(),
        reason_codes: vec![
            SubAckReasonCode::GrantedQoS1,
            SubAckReasonCode::UnspecifiedError,
        ],
    });
    assert_eq!(encoded(&p), [0x90, 4, 0, 7, 1, 0x80]);
    roundtrip(&p);
}

#[test]
fn empty_subscription_lists_are_not_encoded() {
    let mut out = BytesMut::new();
    for p in [
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: SubscribeProperties::default(),
            filters: vec![],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 1,
            properties: UnsubscribeProperties::default(),
            filters: vec![],
        }),
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: AckProperties::default(),
            reason_codes: vec![],
        }),
    ] {
        for version in [V311, ProtocolVersion::V5] {
            assert_eq!(
                p.encode(version, &mut out),
                Err(EncodeError::EmptySubscription)
            );
        }
    }
    // A 5.0 UNSUBACK needs its reason codes; a 3.1.1 one has none.
    let u = Packet::UnsubAck(UnsubAck::new(1));
    assert_eq!(
        u.encode(ProtocolVersion::V5, &mut out),
        Err(EncodeError::EmptySubscription)
    );
    assert!(out.is_empty());
}

#[test]
fn subscription_packets_with_zero_packet_id_are_not_encoded() {
    let mut out = BytesMut::new();
    let filter = SubscribeFilter::new(ByteString::from_static("a"), QoS::AtMostOnce);
    for p in [
        Packet::Subscribe(Subscribe {
            packet_id: 0,
            properties: SubscribeProperties::default(),
            filters: vec![filter],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 0,
            properties: UnsubscribeProperties::default(),
            filters: vec![ByteString::from_static("a")],
        }),
        Packet::SubAck(SubAck {
            packet_id: 0,
            properties: AckProperties::default(),
            reason_codes: vec![SubAckReasonCode::UnspecifiedError],
        }),
    ] {
        for version in [V311, ProtocolVersion::V5] {
            assert_eq!(p.encode(version, &mut out), Err(EncodeError::ZeroPacketId));
        }
    }
    assert!(out.is_empty());
}

#[test]
fn encode_appends_to_existing_bytes() {
    let mut out = BytesMut::from(&b"xy"[..]);
    Packet::PingReq.encode(V311, &mut out).unwrap();
    assert_eq!(&out[..], &[b'x', b'y', 0xC0, 0]);
}

#[test]
fn publish_packet_and_fast_path_agree() {
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: ByteString::from_static("a/b"),
        packet_id: 5,
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![9u8; 200]),
    };
    let mut fast = BytesMut::new();
    encode_publish(
        &mut fast,
        p.dup,
        p.qos,
        p.retain,
        &p.topic,
        p.packet_id,
        &p.payload,
    )
    .unwrap();
    let packet = Packet::Publish(p);
    assert_eq!(encoded(&packet), &fast[..]);
    roundtrip(&packet);
}
