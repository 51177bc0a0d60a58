//! Framing, and the rules of 3.1 and 3.1.1.

use super::*;

// ---- framing ----

#[test]
fn empty_buffer_needs_more_bytes() {
    let mut buf = BytesMut::new();
    assert_eq!(decoder(None).decode(&mut buf), Ok(None));
}

#[test]
fn partial_frames_decode_incrementally() {
    let mut stream = BytesMut::new();
    stream.extend_from_slice(&frame(0x10, &connect_body(b"MQTT", 4, 0x02, &[b"c1"])));
    stream.extend_from_slice(&frame(0x82, &[0, 1, 0, 1, b'a', 1]));
    stream.extend_from_slice(&frame(0x32, &publish_body(b"a/b", Some(7), b"hello")));
    stream.extend_from_slice(&frame(0x30, &publish_body(b"t", None, &[0u8; 300])));
    stream.extend_from_slice(&frame(0x62, &[0, 7]));
    stream.extend_from_slice(&frame(0xC0, &[]));
    stream.extend_from_slice(&frame(0xE0, &[]));

    let mut d = decoder(None);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for &byte in stream.iter() {
        buf.extend_from_slice(&[byte]);
        loop {
            let before = buf.clone();
            match d.decode(&mut buf).unwrap() {
                Some(p) => packets.push(p),
                None => {
                    assert_eq!(buf, before, "Ok(None) consumes nothing");
                    break;
                }
            }
        }
    }
    assert!(buf.is_empty());
    let types: Vec<_> = packets.iter().map(Packet::packet_type).collect();
    assert_eq!(
        types,
        [
            PacketType::Connect,
            PacketType::Subscribe,
            PacketType::Publish,
            PacketType::Publish,
            PacketType::PubRel,
            PacketType::PingReq,
            PacketType::Disconnect,
        ]
    );
    match &packets[3] {
        Packet::Publish(p) => assert_eq!(p.payload.len(), 300),
        other => panic!("{other:?}"),
    }
}

#[test]
fn remaining_length_of_five_bytes_is_rejected() {
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
    assert_eq!(
        Decoder::new(usize::MAX).decode(&mut buf),
        Err(DecodeError::MalformedRemainingLength)
    );
}

#[test]
fn remaining_length_continuation_on_fourth_byte_is_rejected_at_once() {
    // The fifth byte has not arrived yet, but the fourth says there is one.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x80][..]);
    assert_eq!(
        Decoder::new(usize::MAX).decode(&mut buf),
        Err(DecodeError::MalformedRemainingLength)
    );
}

#[test]
fn partial_remaining_length_needs_more_bytes() {
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80][..]);
    assert_eq!(Decoder::new(usize::MAX).decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 3);
}

#[test]
fn four_byte_remaining_length_is_accepted() {
    // 268 435 455, the protocol maximum: waits for the body.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(Decoder::new(usize::MAX).decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 5);
}

#[test]
fn non_minimal_remaining_length_is_accepted() {
    // PINGREQ with remaining length 0 written on two bytes (3.1.1 does not forbid it).
    let mut buf = BytesMut::from(&[0xC0, 0x80, 0x00][..]);
    assert_eq!(decoder(None).decode(&mut buf), Ok(Some(Packet::PingReq)));
    assert!(buf.is_empty());
}

#[test]
fn oversized_packet_rejected_before_body_arrives() {
    let mut d = Decoder::new(262_144);
    // PUBLISH announcing 300 000 - 4 bytes of remaining length (4-byte fixed header).
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0x30]);
    write_remaining_length(&mut buf, 299_996);
    assert_eq!(buf.len(), 4);
    let err = d.decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        DecodeError::PacketTooLarge {
            size: 300_000,
            max: 262_144
        }
    );
    assert_eq!(
        err.to_string(),
        "packet of 300000 bytes exceeds maximum 262144"
    );
}

#[test]
fn packet_of_exactly_max_size_is_accepted() {
    let body = publish_body(b"t", None, &[7u8; 100]);
    let mut buf = frame(0x30, &body);
    let size = buf.len();
    let mut d = Decoder::new(size);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Publish(_)))));
    let mut buf = frame(0x30, &body);
    d.set_max_packet_size(size - 1);
    assert_eq!(d.max_packet_size(), size - 1);
    assert_eq!(
        d.decode(&mut buf),
        Err(DecodeError::PacketTooLarge {
            size,
            max: size - 1
        })
    );
}

#[test]
fn waiting_for_a_huge_body_reserves_at_most_64k() {
    let mut d = Decoder::new(usize::MAX);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0x30]);
    write_remaining_length(&mut buf, 200_000_000);
    buf.extend_from_slice(&[0, 1, b't']);
    for _ in 0..3 {
        assert_eq!(d.decode(&mut buf), Ok(None));
    }
    assert!(
        buf.capacity() >= buf.len() + 1024,
        "room reserved for the body"
    );
    assert!(
        buf.capacity() <= 2 * MAX_RESERVE_PER_CALL,
        "{}",
        buf.capacity()
    );
}

#[test]
fn body_is_copied_out_of_the_read_buffer() {
    let mut buf = frame(0x30, &publish_body(b"a/b", None, b"payload"));
    buf.extend_from_slice(&frame(0xC0, &[]));
    let range = buf.as_ptr_range();
    let Some(Packet::Publish(p)) = decoder(None).decode(&mut buf).unwrap() else {
        panic!("publish expected");
    };
    assert!(!range.contains(&p.payload.as_ptr()));
    assert!(!range.contains(&p.topic.as_bytes().as_ptr()));
    // The rest of the read buffer is untouched.
    assert_eq!(&buf[..], &[0xC0, 0x00]);
}

#[test]
fn topic_and_payload_share_the_frame_allocation() {
    let mut buf = frame(0x32, &publish_body(b"a/b", Some(9), b"payload"));
    let Some(Packet::Publish(p)) = decoder(None).decode(&mut buf).unwrap() else {
        panic!("publish expected");
    };
    // topic, then the 2-byte packet id, then the payload: contiguous in one allocation.
    let topic_end = p.topic.as_bytes().as_ptr_range().end;
    assert_eq!(topic_end.wrapping_add(2), p.payload.as_ptr());
}

#[test]
fn invalid_packet_types_are_rejected_from_the_first_byte() {
    for first in [0x00, 0x0F, 0xF0, 0xFF] {
        let mut buf = BytesMut::from(&[first][..]);
        assert_eq!(
            decoder(None).decode(&mut buf),
            Err(DecodeError::InvalidPacketType(first >> 4))
        );
    }
}

// ---- fixed-header flags ----

#[test]
fn pubrel_subscribe_unsubscribe_require_flags_0010_in_311() {
    for (first, body) in [
        (0x60u8, &[0u8, 1][..]),
        (0x80, &[0, 1, 0, 1, b'a', 0][..]),
        (0xA0, &[0, 1, 0, 1, b'a'][..]),
    ] {
        for protocol in [None, V311] {
            assert_eq!(
                decode_frame(first, body, protocol),
                Err(DecodeError::InvalidFlags {
                    packet_type: first >> 4,
                    flags: 0
                })
            );
            assert!(decode_frame(first | 0x02, body, protocol).is_ok());
            assert!(decode_frame(first | 0x03, body, protocol).is_err());
        }
    }
}

#[test]
fn other_packets_require_flags_0000_in_311() {
    let cases: [(u8, &[u8]); 9] = [
        (0x20, &[0, 0]),
        (0x40, &[0, 1]),
        (0x50, &[0, 1]),
        (0x70, &[0, 1]),
        (0x90, &[0, 1, 0]),
        (0xB0, &[0, 1]),
        (0xC0, &[]),
        (0xD0, &[]),
        (0xE0, &[]),
    ];
    for (first, body) in cases {
        assert!(decode_frame(first, body, None).is_ok(), "{first:#x}");
        for flags in [0x01, 0x02, 0x08] {
            assert_eq!(
                decode_frame(first | flags, body, V311),
                Err(DecodeError::InvalidFlags {
                    packet_type: first >> 4,
                    flags
                })
            );
        }
    }
}

#[test]
fn flags_of_non_publish_packets_are_not_checked_in_31() {
    assert_eq!(
        decode_frame(0x60, &[0, 1], V31),
        Ok(Packet::PubRel(PubRel::new(1)))
    );
    assert_eq!(
        decode_frame(0x4F, &[0, 1], V31),
        Ok(Packet::PubAck(PubAck::new(1)))
    );
    assert_eq!(decode_frame(0xC1, &[], V31), Ok(Packet::PingReq));
    assert!(decode_frame(0x80, &[0, 1, 0, 1, b'a', 0], V31).is_ok());
}

#[test]
fn connect_flags_are_checked_even_in_31() {
    let body = connect_body(b"MQIsdp", 3, 0x02, &[b"c"]);
    assert_eq!(
        decode_frame(0x11, &body, V31),
        Err(DecodeError::InvalidFlags {
            packet_type: 1,
            flags: 1
        })
    );
}

// ---- PUBLISH ----

#[test]
fn publish_decodes() {
    let p = decode_frame(0x3D, &publish_body(b"a/b", Some(10), b"xyz"), None).unwrap();
    let Packet::Publish(p) = p else { panic!() };
    assert!(p.dup && p.retain);
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert_eq!(&p.topic[..], "a/b");
    assert_eq!(p.packet_id, 10);
    assert_eq!(&p.payload[..], b"xyz");
}

#[test]
fn publish_with_qos3_is_rejected() {
    let mut buf = BytesMut::from(&[0x36][..]);
    assert_eq!(
        decoder(V31).decode(&mut buf),
        Err(DecodeError::InvalidQoS(3))
    );
    assert_eq!(
        decode_frame(0x36, &publish_body(b"a", Some(1), b""), None),
        Err(DecodeError::InvalidQoS(3))
    );
}

#[test]
fn publish_dup_with_qos0_is_rejected_in_311() {
    for protocol in [None, V311] {
        assert!(matches!(
            decode_frame(0x38, &publish_body(b"a", None, b"x"), protocol),
            Err(DecodeError::Malformed(_))
        ));
    }
}

#[test]
fn publish_dup_with_qos0_is_accepted_in_31() {
    let Packet::Publish(p) = decode_frame(0x38, &publish_body(b"a", None, b"x"), V31).unwrap()
    else {
        panic!()
    };
    assert!(p.dup);
    assert_eq!(p.qos, QoS::AtMostOnce);
}

#[test]
fn publish_with_invalid_utf8_topic_is_rejected() {
    for topic in [&b"\xFF"[..], b"a\xC3", b"\xED\xA0\x80"] {
        assert_eq!(
            decode_frame(0x30, &publish_body(topic, None, b""), None),
            Err(DecodeError::InvalidUtf8)
        );
    }
}

#[test]
fn publish_with_null_in_topic_is_rejected() {
    assert_eq!(
        decode_frame(0x30, &publish_body(b"a\0b", None, b""), None),
        Err(DecodeError::NullCharacter)
    );
}

#[test]
fn publish_with_empty_topic_is_rejected() {
    assert_eq!(
        decode_frame(0x30, &publish_body(b"", None, b"x"), None),
        Err(DecodeError::EmptyTopic)
    );
}

#[test]
fn publish_with_wildcard_in_topic_is_rejected() {
    for topic in [&b"a/+"[..], b"#", b"a/#", b"a+b"] {
        assert_eq!(
            decode_frame(0x30, &publish_body(topic, None, b""), None),
            Err(DecodeError::WildcardInTopic)
        );
    }
}

#[test]
fn publish_qos0_has_no_packet_id() {
    let Packet::Publish(p) = decode_frame(0x30, &[0, 1, b'a', 0, 5, 6], None).unwrap() else {
        panic!()
    };
    assert_eq!(p.packet_id, 0);
    assert_eq!(&p.payload[..], &[0, 5, 6]);
}

#[test]
fn publish_with_zero_packet_id_is_rejected() {
    for first in [0x32, 0x34] {
        assert_eq!(
            decode_frame(first, &publish_body(b"a", Some(0), b"x"), None),
            Err(DecodeError::ZeroPacketId)
        );
    }
}

#[test]
fn publish_without_room_for_packet_id_is_rejected() {
    assert!(matches!(
        decode_frame(0x32, &[0, 1, b'a', 0], None),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn publish_with_empty_payload_decodes() {
    let Packet::Publish(p) = decode_frame(0x31, &publish_body(b"a", None, b""), None).unwrap()
    else {
        panic!()
    };
    assert!(p.payload.is_empty());
    assert!(p.retain);
}

#[test]
fn publish_topic_length_beyond_body_is_rejected() {
    for body in [&[0u8, 5, b'a'][..], &[0], &[]] {
        assert!(matches!(
            decode_frame(0x30, body, None),
            Err(DecodeError::Malformed(_))
        ));
    }
}

// ---- CONNECT ----

#[test]
fn mqtt_level4_connect_decodes() {
    let mut d = decoder(None);
    let mut buf = frame(0x10, &connect_body(b"MQTT", 4, 0x02, &[b"client-1"]));
    let c = unwrap_connect(d.decode(&mut buf).unwrap().unwrap());
    assert_eq!(c.protocol, ProtocolVersion::V3_1_1);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert_eq!(&c.client_id[..], "client-1");
    assert_eq!((c.will, c.username, c.password), (None, None, None));
    assert_eq!(d.protocol(), Some(ProtocolVersion::V3_1_1));
}

#[test]
fn mqisdp_level3_connect_decodes() {
    let mut d = decoder(None);
    let mut buf = frame(0x10, &connect_body(b"MQIsdp", 3, 0x00, &[b"c"]));
    let c = unwrap_connect(d.decode(&mut buf).unwrap().unwrap());
    assert_eq!(c.protocol, ProtocolVersion::V3_1);
    assert!(!c.clean_start);
    assert_eq!(d.protocol(), Some(ProtocolVersion::V3_1));
}

#[test]
fn connect_does_not_override_a_protocol_already_set() {
    let mut d = decoder(V311);
    let mut buf = frame(0x10, &connect_body(b"MQIsdp", 3, 0x00, &[b"c"]));
    assert!(d.decode(&mut buf).unwrap().is_some());
    assert_eq!(d.protocol(), V311);
}

#[test]
fn unknown_protocol_name_or_level_is_unacceptable() {
    for (name, level) in [
        (&b"MQTT"[..], 3u8),
        (b"MQTT", 6),
        (b"MQIsdp", 4),
        (b"MQTX", 4),
        (b"mqtt", 4),
        (b"", 0),
    ] {
        assert_eq!(
            decode_frame(0x10, &connect_body(name, level, 0x02, &[b"c"]), None),
            Err(DecodeError::UnacceptableProtocol {
                name: String::from_utf8(name.to_vec()).unwrap(),
                level
            })
        );
    }
}

#[test]
fn unacceptable_protocol_is_reported_before_other_errors() {
    // Reserved flag set and a truncated payload: the protocol is still what is reported.
    let mut body = field(b"MQTT");
    body.extend_from_slice(&[6, 0xFF]);
    assert_eq!(
        decode_frame(0x10, &body, None),
        Err(DecodeError::UnacceptableProtocol {
            name: "MQTT".into(),
            level: 6
        })
    );
}

#[test]
fn a_decoder_refusing_5_0_reports_level_5_as_unacceptable_whatever_follows() {
    // A 3.1.1 body behind level 5, and a body cut after the flags: both are refused for their
    // protocol, as a server that does not speak 5.0 answers (CONNACK 1).
    let mut cut = field(b"MQTT");
    cut.extend_from_slice(&[5, 0xFF]);
    for body in [connect_body(b"MQTT", 5, 0x02, &[b"c"]), cut] {
        let mut d = decoder(None);
        d.set_accept_v5(false);
        let mut buf = frame(0x10, &body);
        let err = d.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnacceptableProtocol {
                name: "MQTT".into(),
                level: 5
            }
        );
        assert_eq!(
            err.connect_return_code()
                .map(ConnectReasonCode::v3_return_code),
            Some(1)
        );
        assert_eq!(d.protocol(), None);
    }
    // 3.1 and 3.1.1 are still accepted.
    for (name, level) in [(&b"MQTT"[..], 4u8), (b"MQIsdp", 3)] {
        let mut d = decoder(None);
        d.set_accept_v5(false);
        let mut buf = frame(0x10, &connect_body(name, level, 0x02, &[b"c"]));
        assert!(d.decode(&mut buf).unwrap().is_some());
    }
}

#[test]
fn unacceptable_protocol_name_is_lossy_and_truncated() {
    let mut name = vec![0xFFu8, b'x'];
    name.extend_from_slice(&[b'a'; 100]);
    let Err(DecodeError::UnacceptableProtocol { name, level }) =
        decode_frame(0x10, &connect_body(&name, 4, 0, &[b"c"]), None)
    else {
        panic!()
    };
    assert_eq!(name, "\u{FFFD}xaaaaaaaaaaaaaa");
    assert_eq!(name.chars().count(), 16);
    assert_eq!(level, 4);
}

#[test]
fn truncated_protocol_name_is_malformed() {
    for body in [
        &[0u8, 4, b'M', b'Q'][..],
        &[0, 4, b'M', b'Q', b'T', b'T'],
        &[0],
    ] {
        assert!(matches!(
            decode_frame(0x10, body, None),
            Err(DecodeError::Malformed(_))
        ));
    }
}

#[test]
fn connect_with_reserved_flag_is_rejected_in_311() {
    assert!(matches!(
        connect_311(0x03, &[b"c"]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn connect_with_reserved_flag_is_accepted_in_31() {
    assert!(connect_31(0x03, &[b"c"]).is_ok());
}

#[test]
fn will_qos_without_will_flag_is_rejected() {
    for flags in [0x08, 0x10, 0x18] {
        assert!(matches!(
            connect_311(flags, &[b"c"]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            connect_31(flags, &[b"c"]),
            Err(DecodeError::Malformed(_))
        ));
    }
}

#[test]
fn will_retain_without_will_flag_is_rejected() {
    assert!(matches!(
        connect_311(0x20, &[b"c"]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn will_qos3_is_rejected() {
    assert_eq!(
        connect_311(0x1C, &[b"c", b"w", b"m"]),
        Err(DecodeError::InvalidQoS(3))
    );
}

#[test]
fn password_without_user_name_is_rejected_in_311() {
    assert!(matches!(
        connect_311(0x40, &[b"c", b"pw"]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn password_without_user_name_is_accepted_in_31() {
    let c = unwrap_connect(connect_31(0x40, &[b"c", b"pw"]).unwrap());
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn connect_with_will_user_name_and_password_decodes() {
    let c = unwrap_connect(
        connect_311(
            0xC0 | 0x20 | 0x10 | 0x04,
            &[b"c", b"will/t", b"bye", b"u", b"\0pw"],
        )
        .unwrap(),
    );
    assert!(!c.clean_start);
    let will = c.will.unwrap();
    assert_eq!(&will.topic[..], "will/t");
    assert_eq!(&will.payload[..], b"bye");
    assert_eq!(will.qos, QoS::ExactlyOnce);
    assert!(will.retain);
    assert_eq!(c.username.as_deref(), Some("u"));
    // Passwords are binary: U+0000 allowed.
    assert_eq!(c.password.as_deref(), Some(&b"\0pw"[..]));
}

#[test]
fn will_topic_must_be_a_valid_topic_name() {
    assert_eq!(
        connect_311(0x04, &[b"c", b"", b"m"]),
        Err(DecodeError::EmptyTopic)
    );
    assert_eq!(
        connect_311(0x04, &[b"c", b"a/#", b"m"]),
        Err(DecodeError::WildcardInTopic)
    );
    assert_eq!(
        connect_311(0x04, &[b"c", b"a\0", b"m"]),
        Err(DecodeError::NullCharacter)
    );
    assert_eq!(
        connect_311(0x04, &[b"c", b"\xC0", b"m"]),
        Err(DecodeError::InvalidUtf8)
    );
}

#[test]
fn connect_with_trailing_bytes_is_rejected() {
    let mut body = connect_body(b"MQTT", 4, 0x02, &[b"c"]);
    body.push(0);
    assert!(matches!(
        decode_frame(0x10, &body, None),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn connect_31_with_missing_user_name_and_password_treats_them_as_absent() {
    let c = unwrap_connect(connect_31(0xC2, &[b"c"]).unwrap());
    assert_eq!((c.username, c.password), (None, None));
    let c = unwrap_connect(connect_31(0xC2, &[b"c", b"user"]).unwrap());
    assert_eq!(c.username.as_deref(), Some("user"));
    assert_eq!(c.password, None);
    // A field that starts but is cut short is still malformed.
    let mut body = connect_body(b"MQIsdp", 3, 0xC2, &[b"c"]);
    body.extend_from_slice(&[0, 4, b'u']);
    assert!(matches!(
        decode_frame(0x10, &body, None),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn connect_311_with_missing_user_name_or_password_is_rejected() {
    for fields in [&[&b"c"[..]][..], &[b"c", b"user"]] {
        assert!(matches!(
            connect_311(0xC2, fields),
            Err(DecodeError::Malformed(_))
        ));
    }
}

#[test]
fn connect_with_empty_client_id_decodes() {
    let c = unwrap_connect(connect_311(0x02, &[b""]).unwrap());
    assert!(c.client_id.is_empty());
}

#[test]
fn connect_strings_must_be_valid_utf8_without_null() {
    assert_eq!(connect_311(0x02, &[b"\xFF"]), Err(DecodeError::InvalidUtf8));
    assert_eq!(
        connect_311(0x02, &[b"a\0"]),
        Err(DecodeError::NullCharacter)
    );
    assert_eq!(
        connect_311(0x82, &[b"c", b"\xFE"]),
        Err(DecodeError::InvalidUtf8)
    );
    assert_eq!(
        connect_311(0x82, &[b"c", b"\0"]),
        Err(DecodeError::NullCharacter)
    );
}

#[test]
fn truncated_connect_is_malformed() {
    let full = connect_body(b"MQTT", 4, 0xC6, &[b"c", b"w", b"m", b"u", b"p"]);
    assert!(decode_frame(0x10, &full, None).is_ok());
    for len in 7..full.len() {
        assert!(
            matches!(
                decode_frame(0x10, &full[..len], None),
                Err(DecodeError::Malformed(_))
            ),
            "cut at {len}"
        );
    }
}

// ---- CONNACK ----

#[test]
fn connack_decodes() {
    assert_eq!(
        decode_frame(0x20, &[1, 0], None),
        Ok(Packet::ConnAck(Box::new(ConnAck::new(
            true,
            ConnectReasonCode::Success
        ))))
    );
    assert_eq!(
        decode_frame(0x20, &[0, 5], None),
        Ok(Packet::ConnAck(Box::new(ConnAck::new(
            false,
            ConnectReasonCode::NotAuthorized
        ))))
    );
}

#[test]
fn connack_with_reserved_flags_is_rejected() {
    assert!(matches!(
        decode_frame(0x20, &[2, 0], None),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn connack_with_return_code_above_5_is_rejected() {
    assert!(matches!(
        decode_frame(0x20, &[0, 6], None),
        Err(DecodeError::Malformed(_))
    ));
}

// ---- PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK ----

#[test]
fn acks_decode() {
    assert_eq!(
        decode_frame(0x40, &[1, 2], None),
        Ok(Packet::PubAck(PubAck::new(0x0102)))
    );
    assert_eq!(
        decode_frame(0x50, &[0, 3], None),
        Ok(Packet::PubRec(PubRec::new(3)))
    );
    assert_eq!(
        decode_frame(0x62, &[0, 4], None),
        Ok(Packet::PubRel(PubRel::new(4)))
    );
    assert_eq!(
        decode_frame(0x70, &[0xFF, 0xFF], None),
        Ok(Packet::PubComp(PubComp::new(65535)))
    );
    assert_eq!(
        decode_frame(0xB0, &[0, 6], None),
        Ok(Packet::UnsubAck(UnsubAck::new(6)))
    );
}

#[test]
fn ack_with_wrong_remaining_length_is_rejected_before_body_arrives() {
    for first in [0x20, 0x40, 0x50, 0x62, 0x70, 0xB0] {
        for len in [0usize, 1, 3, 100_000] {
            // Only the fixed header: the error comes before the body is there.
            let mut buf = BytesMut::from(&[first][..]);
            write_remaining_length(&mut buf, len);
            assert!(
                matches!(
                    decoder(None).decode(&mut buf),
                    Err(DecodeError::Malformed(_))
                ),
                "{first:#x} {len}"
            );
            assert!(decode_packet(first, Bytes::from(vec![1; len]), None).is_err());
        }
    }
}

#[test]
fn ack_with_zero_packet_id_is_rejected() {
    for first in [0x40, 0x50, 0x62, 0x70, 0xB0] {
        assert_eq!(
            decode_frame(first, &[0, 0], None),
            Err(DecodeError::ZeroPacketId)
        );
    }
}

// ---- SUBSCRIBE ----

fn subscribe_body(packet_id: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut v = packet_id.to_be_bytes().to_vec();
    for (f, options) in filters {
        v.extend_from_slice(&field(f));
        v.push(*options);
    }
    v
}

#[test]
fn subscribe_decodes() {
    let body = subscribe_body(10, &[(b"a/+", 0), (b"b/#", 1), (b"c", 2)]);
    let Packet::Subscribe(s) = decode_frame(0x82, &body, None).unwrap() else {
        panic!()
    };
    assert_eq!(s.packet_id, 10);
    let got: Vec<_> = s
        .filters
        .iter()
        .map(|f| (&f.filter[..], f.options.qos))
        .collect();
    assert_eq!(
        got,
        [
            ("a/+", QoS::AtMostOnce),
            ("b/#", QoS::AtLeastOnce),
            ("c", QoS::ExactlyOnce)
        ]
    );
}

#[test]
fn subscribe_with_zero_packet_id_is_rejected() {
    assert_eq!(
        decode_frame(0x82, &subscribe_body(0, &[(b"a", 0)]), None),
        Err(DecodeError::ZeroPacketId)
    );
}

#[test]
fn subscribe_without_filters_is_rejected() {
    assert_eq!(
        decode_frame(0x82, &subscribe_body(1, &[]), None),
        Err(DecodeError::EmptySubscription)
    );
}

#[test]
fn subscribe_with_qos3_is_rejected() {
    for protocol in [None, V31] {
        assert_eq!(
            decode_frame(0x82, &subscribe_body(1, &[(b"a", 0), (b"b", 3)]), protocol),
            Err(DecodeError::InvalidQoS(3))
        );
    }
}

#[test]
fn subscribe_with_reserved_option_bits_is_rejected_in_311() {
    for options in [0x04, 0x80, 0xFD] {
        assert!(matches!(
            decode_frame(0x82, &subscribe_body(1, &[(b"a", options)]), V311),
            Err(DecodeError::Malformed(_))
        ));
    }
}

#[test]
fn subscribe_reserved_option_bits_are_ignored_in_31() {
    let Packet::Subscribe(s) =
        decode_frame(0x82, &subscribe_body(1, &[(b"a", 0xF1)]), V31).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        s.filters[0].options,
        SubscriptionOptions::new(QoS::AtLeastOnce)
    );
}

#[test]
fn subscribe_filters_are_not_syntax_checked() {
    let body = subscribe_body(1, &[(b"a/#/c", 0), (b"", 1), (b"a+", 2)]);
    let Packet::Subscribe(s) = decode_frame(0x82, &body, None).unwrap() else {
        panic!()
    };
    assert_eq!(s.filters.len(), 3);
}

#[test]
fn subscribe_filter_must_be_valid_utf8_without_null() {
    assert_eq!(
        decode_frame(0x82, &subscribe_body(1, &[(b"\xFF", 0)]), None),
        Err(DecodeError::InvalidUtf8)
    );
    assert_eq!(
        decode_frame(0x82, &subscribe_body(1, &[(b"a\0", 0)]), None),
        Err(DecodeError::NullCharacter)
    );
}

#[test]
fn subscribe_without_requested_qos_is_rejected() {
    let mut body = subscribe_body(1, &[(b"a", 0)]);
    body.pop();
    assert!(matches!(
        decode_frame(0x82, &body, None),
        Err(DecodeError::Malformed(_))
    ));
}

// ---- SUBACK ----

#[test]
fn suback_decodes() {
    let Packet::SubAck(s) = decode_frame(0x90, &[0, 5, 0, 1, 2, 0x80], None).unwrap() else {
        panic!()
    };
    assert_eq!(s.packet_id, 5);
    assert_eq!(
        s.reason_codes,
        [
            SubAckReasonCode::GrantedQoS0,
            SubAckReasonCode::GrantedQoS1,
            SubAckReasonCode::GrantedQoS2,
            SubAckReasonCode::UnspecifiedError,
        ]
    );
}

#[test]
fn suback_with_invalid_return_code_is_rejected() {
    for code in [3u8, 0x81, 0xFF] {
        assert!(matches!(
            decode_frame(0x90, &[0, 5, code], None),
            Err(DecodeError::Malformed(_))
        ));
    }
}

#[test]
fn suback_without_return_codes_is_rejected() {
    for body in [&[0u8, 5][..], &[0], &[]] {
        assert!(matches!(
            decode_frame(0x90, body, None),
            Err(DecodeError::Malformed(_))
        ));
    }
}

#[test]
fn suback_with_zero_packet_id_is_rejected() {
    assert_eq!(
        decode_frame(0x90, &[0, 0, 1], None),
        Err(DecodeError::ZeroPacketId)
    );
}

// ---- UNSUBSCRIBE ----

fn unsubscribe_body(packet_id: u16, filters: &[&[u8]]) -> Vec<u8> {
    let mut v = packet_id.to_be_bytes().to_vec();
    for f in filters {
        v.extend_from_slice(&field(f));
    }
    v
}

#[test]
fn unsubscribe_decodes() {
    let Packet::Unsubscribe(u) =
        decode_frame(0xA2, &unsubscribe_body(3, &[b"a/#", b"b"]), None).unwrap()
    else {
        panic!()
    };
    assert_eq!(u.packet_id, 3);
    assert_eq!(u.filters, ["a/#", "b"]);
}

#[test]
fn unsubscribe_with_zero_packet_id_is_rejected() {
    assert_eq!(
        decode_frame(0xA2, &unsubscribe_body(0, &[b"a"]), None),
        Err(DecodeError::ZeroPacketId)
    );
}

#[test]
fn unsubscribe_without_filters_is_rejected() {
    assert_eq!(
        decode_frame(0xA2, &unsubscribe_body(1, &[]), None),
        Err(DecodeError::EmptySubscription)
    );
}

#[test]
fn unsubscribe_with_truncated_filter_is_rejected() {
    let mut body = unsubscribe_body(1, &[b"abc"]);
    body.pop();
    assert!(matches!(
        decode_frame(0xA2, &body, None),
        Err(DecodeError::Malformed(_))
    ));
}

// ---- PINGREQ, PINGRESP, DISCONNECT ----

#[test]
fn bodiless_packets_decode() {
    assert_eq!(decode_frame(0xC0, &[], None), Ok(Packet::PingReq));
    assert_eq!(decode_frame(0xD0, &[], None), Ok(Packet::PingResp));
    assert_eq!(
        decode_frame(0xE0, &[], None),
        Ok(Packet::Disconnect(Disconnect::default()))
    );
}

#[test]
fn bodiless_packets_with_a_body_are_rejected() {
    for first in [0xC0, 0xD0, 0xE0] {
        let mut buf = BytesMut::from(&[first, 1][..]);
        assert!(matches!(
            decoder(None).decode(&mut buf),
            Err(DecodeError::Malformed(_))
        ));
    }
}
