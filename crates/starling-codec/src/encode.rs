//! Encoding of MQTT 3.1 / 3.1.1 packets into a write buffer.
//!
//! - [`Packet::encode`] / [`Packet::encoded_len`] for every packet type, client-side ones
//!   included (the test client and the load generator use them).
//! - [`encode_publish`] and [`encode_ack`]: the broker's hot path, writing straight from borrowed
//!   fields without building a [`Packet`].
//!
//! Every encoder validates first, then reserves the exact size once and writes: on error nothing
//! has been written to `out`.
//!
//! The encoders check what the wire format cannot carry (lengths, zero packet identifiers, empty
//! lists) but not protocol semantics such as wildcards in a topic name: a test client must be able
//! to send such packets to the broker.

// #[PerformanceCriticalPath]: `encode_publish` runs once per delivered message.

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::{
    Connect, Packet, PacketType, QoS, SubAck, Subscribe, Unsubscribe, MAX_REMAINING_LENGTH,
};

/// Longest string or length-prefixed binary field.
const MAX_FIELD_LEN: usize = 65_535;

/// Number of bytes of the variable-length encoding of the remaining length `n` (1 to 4 for
/// `n <= 268_435_455`; 4 is returned for anything larger).
pub fn remaining_length_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `n` as an MQTT remaining length (variable-length, 7 bits per byte, least significant
/// first).
///
/// `n` must not exceed [`MAX_REMAINING_LENGTH`]; larger values are written with more than 4
/// bytes, which no peer accepts.
pub fn write_remaining_length(out: &mut BytesMut, n: usize) {
    let mut n = n;
    loop {
        // Truncation intended: the low 7 bits.
        let mut byte = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            return;
        }
    }
}

/// Writes the first byte and the remaining length in one `put_slice`.
fn put_fixed_header(out: &mut BytesMut, first: u8, remaining: usize) {
    let mut header = [first, 0, 0, 0, 0];
    let mut n = remaining;
    let mut len = 1;
    while len < header.len() {
        let mut byte = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        header[len] = byte;
        len += 1;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&header[..len]);
}

/// Checks the length of a string or binary field.
fn check_field(len: usize) -> Result<(), EncodeError> {
    if len > MAX_FIELD_LEN {
        Err(EncodeError::StringTooLong(len))
    } else {
        Ok(())
    }
}

/// Checks a total remaining length.
fn check_remaining(len: usize) -> Result<(), EncodeError> {
    if len > MAX_REMAINING_LENGTH {
        Err(EncodeError::PayloadTooLarge(len))
    } else {
        Ok(())
    }
}

fn check_packet_id(id: u16) -> Result<(), EncodeError> {
    if id == 0 {
        Err(EncodeError::ZeroPacketId)
    } else {
        Ok(())
    }
}

/// Writes a 2-byte length and the bytes; the length has been checked.
fn put_field(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(u16::try_from(bytes.len()).unwrap_or(u16::MAX));
    out.put_slice(bytes);
}

/// Encodes a PUBLISH straight from its fields.
///
/// `packet_id` is written only for QoS 1 and 2 (and ignored for QoS 0). The topic is not checked
/// for wildcards here.
///
/// # Errors
/// [`EncodeError::StringTooLong`] for a topic over 65 535 bytes, [`EncodeError::ZeroPacketId`]
/// for QoS > 0 with packet id 0, [`EncodeError::PayloadTooLarge`] if the packet would exceed the
/// protocol maximum. Nothing is written on error.
pub fn encode_publish(
    out: &mut BytesMut,
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: &str,
    packet_id: u16,
    payload: &[u8],
) -> Result<(), EncodeError> {
    check_field(topic.len())?;
    let has_id = qos != QoS::AtMostOnce;
    if has_id {
        check_packet_id(packet_id)?;
    }
    let remaining = publish_remaining_len(topic.len(), qos, payload.len());
    check_remaining(remaining)?;
    out.reserve(1 + remaining_length_len(remaining) + remaining);
    let first = 0x30 | u8::from(dup) << 3 | qos.as_u8() << 1 | u8::from(retain);
    put_fixed_header(out, first, remaining);
    put_field(out, topic.as_bytes());
    if has_id {
        out.put_u16(packet_id);
    }
    out.put_slice(payload);
    Ok(())
}

fn publish_remaining_len(topic_len: usize, qos: QoS, payload_len: usize) -> usize {
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    (2 + topic_len + id_len).saturating_add(payload_len)
}

/// Encodes a PUBACK, PUBREC, PUBREL (flags `0010`), PUBCOMP or UNSUBACK carrying `packet_id`.
///
/// `packet_id` should be non-zero; it is not checked here. For any other `packet_type` nothing
/// is written (and debug builds panic: that is a bug in the caller, not bad input).
pub fn encode_ack(out: &mut BytesMut, packet_type: PacketType, packet_id: u16) {
    debug_assert!(
        matches!(
            packet_type,
            PacketType::PubAck
                | PacketType::PubRec
                | PacketType::PubRel
                | PacketType::PubComp
                | PacketType::UnsubAck
        ),
        "encode_ack called with {packet_type:?}"
    );
    let first = match packet_type {
        PacketType::PubAck => 0x40,
        PacketType::PubRec => 0x50,
        PacketType::PubRel => 0x62,
        PacketType::PubComp => 0x70,
        PacketType::UnsubAck => 0xB0,
        _ => return,
    };
    let [hi, lo] = packet_id.to_be_bytes();
    out.put_slice(&[first, 2, hi, lo]);
}

/// CONNECT flag bits.
const CLEAN_SESSION: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

impl Packet {
    /// Total number of bytes [`Packet::encode`] writes for this packet (fixed header included).
    ///
    /// For a packet that cannot be encoded, the size it would have.
    pub fn encoded_len(&self) -> usize {
        let remaining = self.remaining_len();
        1 + remaining_length_len(remaining) + remaining
    }

    /// Appends the encoded packet to `out`.
    ///
    /// CONNECT is written with the protocol name and level of its `protocol` and flags derived
    /// from its fields. Topic names and filters are not validated.
    ///
    /// # Errors
    /// [`EncodeError::StringTooLong`] for a string or binary field over 65 535 bytes,
    /// [`EncodeError::ZeroPacketId`] for a packet identifier that must be non-zero,
    /// [`EncodeError::EmptySubscription`] for a SUBSCRIBE, UNSUBSCRIBE or SUBACK with an empty
    /// list, [`EncodeError::PayloadTooLarge`] past the protocol's maximum size. Nothing is
    /// written on error.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let first = match self {
            Packet::Publish(p) => {
                return encode_publish(
                    out,
                    p.dup,
                    p.qos,
                    p.retain,
                    &p.topic,
                    p.packet_id,
                    &p.payload,
                );
            }
            Packet::PubAck(id)
            | Packet::PubRec(id)
            | Packet::PubRel(id)
            | Packet::PubComp(id)
            | Packet::UnsubAck(id) => {
                check_packet_id(*id)?;
                encode_ack(out, self.packet_type(), *id);
                return Ok(());
            }
            Packet::Connect(c) => {
                validate_connect(c)?;
                0x10
            }
            Packet::ConnAck(_) => 0x20,
            Packet::Subscribe(s) => {
                validate_subscribe(s)?;
                0x82
            }
            Packet::SubAck(s) => {
                validate_suback(s)?;
                0x90
            }
            Packet::Unsubscribe(u) => {
                validate_unsubscribe(u)?;
                0xA2
            }
            Packet::PingReq => 0xC0,
            Packet::PingResp => 0xD0,
            Packet::Disconnect => 0xE0,
        };
        let remaining = self.remaining_len();
        check_remaining(remaining)?;
        out.reserve(1 + remaining_length_len(remaining) + remaining);
        put_fixed_header(out, first, remaining);
        match self {
            Packet::Connect(c) => put_connect_body(out, c),
            Packet::ConnAck(a) => {
                out.put_slice(&[u8::from(a.session_present), a.code as u8]);
            }
            Packet::Subscribe(s) => {
                out.put_u16(s.packet_id);
                for f in &s.filters {
                    put_field(out, f.filter.as_bytes());
                    out.put_u8(f.qos.as_u8());
                }
            }
            Packet::SubAck(s) => {
                out.put_u16(s.packet_id);
                for code in &s.return_codes {
                    out.put_u8(code.as_u8());
                }
            }
            Packet::Unsubscribe(u) => {
                out.put_u16(u.packet_id);
                for f in &u.filters {
                    put_field(out, f.as_bytes());
                }
            }
            // Written above, or bodiless.
            Packet::Publish(_)
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::UnsubAck(_)
            | Packet::PingReq
            | Packet::PingResp
            | Packet::Disconnect => {}
        }
        Ok(())
    }

    /// The remaining length of the encoded packet (saturating for absurd sizes).
    fn remaining_len(&self) -> usize {
        match self {
            Packet::Connect(c) => connect_remaining_len(c),
            Packet::ConnAck(_)
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::UnsubAck(_) => 2,
            Packet::Publish(p) => publish_remaining_len(p.topic.len(), p.qos, p.payload.len()),
            Packet::Subscribe(s) => s
                .filters
                .iter()
                .fold(2usize, |n, f| n.saturating_add(3 + f.filter.len())),
            Packet::SubAck(s) => 2usize.saturating_add(s.return_codes.len()),
            Packet::Unsubscribe(u) => u
                .filters
                .iter()
                .fold(2usize, |n, f| n.saturating_add(2 + f.len())),
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
        }
    }
}

fn validate_connect(c: &Connect) -> Result<(), EncodeError> {
    check_field(c.client_id.len())?;
    if let Some(will) = &c.will {
        check_field(will.topic.len())?;
        check_field(will.payload.len())?;
    }
    if let Some(username) = &c.username {
        check_field(username.len())?;
    }
    if let Some(password) = &c.password {
        check_field(password.len())?;
    }
    Ok(())
}

fn validate_subscribe(s: &Subscribe) -> Result<(), EncodeError> {
    check_packet_id(s.packet_id)?;
    if s.filters.is_empty() {
        return Err(EncodeError::EmptySubscription);
    }
    s.filters
        .iter()
        .try_for_each(|f| check_field(f.filter.len()))
}

fn validate_suback(s: &SubAck) -> Result<(), EncodeError> {
    check_packet_id(s.packet_id)?;
    if s.return_codes.is_empty() {
        return Err(EncodeError::EmptySubscription);
    }
    Ok(())
}

fn validate_unsubscribe(u: &Unsubscribe) -> Result<(), EncodeError> {
    check_packet_id(u.packet_id)?;
    if u.filters.is_empty() {
        return Err(EncodeError::EmptySubscription);
    }
    u.filters.iter().try_for_each(|f| check_field(f.len()))
}

fn connect_remaining_len(c: &Connect) -> usize {
    // Protocol name, level, flags, keep-alive, client id.
    let mut n = 2 + c.protocol.name().len() + 1 + 1 + 2 + 2 + c.client_id.len();
    if let Some(will) = &c.will {
        n += 2 + will.topic.len() + 2 + will.payload.len();
    }
    if let Some(username) = &c.username {
        n += 2 + username.len();
    }
    if let Some(password) = &c.password {
        n += 2 + password.len();
    }
    n
}

fn put_connect_body(out: &mut BytesMut, c: &Connect) {
    put_field(out, c.protocol.name().as_bytes());
    out.put_u8(c.protocol.level());
    let mut flags = 0u8;
    if c.clean_session {
        flags |= CLEAN_SESSION;
    }
    if let Some(will) = &c.will {
        flags |= WILL | will.qos.as_u8() << 3;
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if c.password.is_some() {
        flags |= PASSWORD;
    }
    if c.username.is_some() {
        flags |= USERNAME;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    put_field(out, c.client_id.as_bytes());
    if let Some(will) = &c.will {
        put_field(out, will.topic.as_bytes());
        put_field(out, &will.payload);
    }
    if let Some(username) = &c.username {
        put_field(out, username.as_bytes());
    }
    if let Some(password) = &c.password {
        put_field(out, password);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use bytestring::ByteString;

    use super::*;
    use crate::decode::Decoder;
    use crate::packet::{
        ConnAck, ConnectReturnCode, LastWill, ProtocolVersion, Publish, SubscribeFilter,
        SubscribeReturnCode,
    };

    fn encoded(p: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        p.encode(&mut out).unwrap();
        assert_eq!(out.len(), p.encoded_len(), "encoded_len of {p:?}");
        out.to_vec()
    }

    fn roundtrip(p: &Packet) {
        let mut buf = BytesMut::from(&encoded(p)[..]);
        assert_eq!(
            Decoder::new(usize::MAX).decode(&mut buf),
            Ok(Some(p.clone()))
        );
        assert!(buf.is_empty());
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
            Packet::PubAck(0),
            Packet::PubRec(0),
            Packet::PubRel(0),
            Packet::PubComp(0),
            Packet::UnsubAck(0),
        ] {
            let mut out = BytesMut::new();
            assert_eq!(p.encode(&mut out), Err(EncodeError::ZeroPacketId));
            assert!(out.is_empty());
        }
    }

    #[test]
    fn bodiless_packets_are_two_bytes() {
        assert_eq!(encoded(&Packet::PingReq), [0xC0, 0]);
        assert_eq!(encoded(&Packet::PingResp), [0xD0, 0]);
        assert_eq!(encoded(&Packet::Disconnect), [0xE0, 0]);
    }

    #[test]
    fn connack_is_encoded() {
        let p = Packet::ConnAck(ConnAck {
            session_present: true,
            code: ConnectReturnCode::BadUserNameOrPassword,
        });
        assert_eq!(encoded(&p), [0x20, 2, 1, 4]);
    }

    fn connect(protocol: ProtocolVersion) -> Connect {
        Connect {
            protocol,
            clean_session: true,
            keep_alive: 30,
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
        c.clean_session = false;
        c.will = Some(LastWill {
            topic: ByteString::from_static("w"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
        });
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
            Packet::Connect(Box::new(c)).encode(&mut out),
            Err(EncodeError::StringTooLong(70_000))
        );
        let mut c = connect(ProtocolVersion::V3_1_1);
        c.password = Some(Bytes::from(long.into_bytes()));
        assert_eq!(
            Packet::Connect(Box::new(c)).encode(&mut out),
            Err(EncodeError::StringTooLong(70_000))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn subscribe_and_unsubscribe_carry_flags_0010() {
        let s = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: ByteString::from_static("a/#"),
                qos: QoS::ExactlyOnce,
            }],
        });
        assert_eq!(encoded(&s), [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 2]);
        roundtrip(&s);
        let u = Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec![ByteString::from_static("a")],
        });
        assert_eq!(encoded(&u), [0xA2, 5, 0, 2, 0, 1, b'a']);
        roundtrip(&u);
    }

    #[test]
    fn suback_is_encoded() {
        let p = Packet::SubAck(SubAck {
            packet_id: 7,
            return_codes: vec![
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
                SubscribeReturnCode::Failure,
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
                filters: vec![],
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 1,
                filters: vec![],
            }),
            Packet::SubAck(SubAck {
                packet_id: 1,
                return_codes: vec![],
            }),
        ] {
            assert_eq!(p.encode(&mut out), Err(EncodeError::EmptySubscription));
        }
        assert!(out.is_empty());
    }

    #[test]
    fn subscription_packets_with_zero_packet_id_are_not_encoded() {
        let mut out = BytesMut::new();
        let filter = SubscribeFilter {
            filter: ByteString::from_static("a"),
            qos: QoS::AtMostOnce,
        };
        for p in [
            Packet::Subscribe(Subscribe {
                packet_id: 0,
                filters: vec![filter],
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 0,
                filters: vec![ByteString::from_static("a")],
            }),
            Packet::SubAck(SubAck {
                packet_id: 0,
                return_codes: vec![SubscribeReturnCode::Failure],
            }),
        ] {
            assert_eq!(p.encode(&mut out), Err(EncodeError::ZeroPacketId));
        }
        assert!(out.is_empty());
    }

    #[test]
    fn encode_appends_to_existing_bytes() {
        let mut out = BytesMut::from(&b"xy"[..]);
        Packet::PingReq.encode(&mut out).unwrap();
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
}
