//! Incremental, strict decoding of MQTT 3.1 / 3.1.1 packets from a read buffer.
//!
//! ```text
//!  socket ──read──▶ BytesMut ──Decoder::decode──▶ Ok(Some(Packet))   a whole frame was there
//!                      │                        ▶ Ok(None)           need more bytes, nothing consumed
//!                      │                        ▶ Err(DecodeError)   protocol violation: close
//!                      │
//!                      └─ complete frame: body copied once into its own exact-size `Bytes`;
//!                         topics, strings and payloads are slices of that copy
//! ```
//!
//! What is checked before the body has arrived: the packet type and fixed-header flags, the
//! remaining-length encoding (at most 4 bytes), the total size against the configured maximum, and
//! the exact remaining length of the fixed-size packets. So a peer cannot make the broker buffer a
//! body it is going to refuse anyway, and while a large body trickles in the read buffer grows by
//! at most 64 KiB per call.
//!
//! Why the body is copied: a `Bytes` slice of the socket's read buffer would keep that whole
//! buffer alive for as long as any message taken from it sits in a session queue. One exact-size
//! copy per packet bounds retained memory by what is actually queued.

// #[PerformanceCriticalPath]: every packet received by the broker goes through `Decoder::decode`.

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, TopicError};
use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PacketType, ProtocolVersion, Publish,
    QoS, SubAck, Subscribe, SubscribeFilter, SubscribeReturnCode, Unsubscribe,
};
use crate::topic;

/// The most capacity [`Decoder::decode`] reserves in the read buffer in one call while waiting
/// for the body of a packet.
pub const MAX_RESERVE_PER_CALL: usize = 64 * 1024;

/// Incremental MQTT decoder for one connection.
///
/// It holds the connection's maximum packet size and, once known, its protocol version, which
/// relaxes some fixed-header checks for MQTT 3.1 peers (as Mosquitto does).
#[derive(Clone, Debug)]
pub struct Decoder {
    max_packet_size: usize,
    protocol: Option<ProtocolVersion>,
}

impl Decoder {
    /// A decoder accepting packets of at most `max_packet_size` bytes in total (fixed header
    /// included), with no protocol version yet (strict 3.1.1 rules).
    pub fn new(max_packet_size: usize) -> Decoder {
        Decoder {
            max_packet_size,
            protocol: None,
        }
    }

    /// Fixes the protocol version of the connection. [`Decoder::decode`] also does this by itself
    /// when it decodes a CONNECT while no version is set.
    pub fn set_protocol(&mut self, v: ProtocolVersion) {
        self.protocol = Some(v);
    }

    /// The protocol version of the connection, if set.
    pub fn protocol(&self) -> Option<ProtocolVersion> {
        self.protocol
    }

    /// The maximum total packet size in bytes.
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Changes the maximum total packet size in bytes.
    pub fn set_max_packet_size(&mut self, n: usize) {
        self.max_packet_size = n;
    }

    /// Decodes the packet at the front of `buf`.
    ///
    /// - `Ok(Some(packet))`: the packet's bytes have been consumed from `buf`.
    /// - `Ok(None)`: `buf` does not hold a whole packet yet; nothing was consumed (at most
    ///   [`MAX_RESERVE_PER_CALL`] bytes of capacity may have been reserved for the rest).
    /// - `Err(_)`: a protocol violation; the connection must be closed. Whether the offending
    ///   bytes were consumed is unspecified.
    ///
    /// A successfully decoded CONNECT sets the decoder's protocol if none was set.
    ///
    /// # Errors
    /// [`DecodeError::MalformedRemainingLength`] as soon as the remaining length is seen to need
    /// more than 4 bytes, [`DecodeError::PacketTooLarge`] as soon as the length is known, header
    /// errors as soon as the first byte is there, body errors once the whole packet is.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&header) = buf.first() else {
            return Ok(None);
        };
        let packet_type = check_fixed_header(header, self.protocol)?;
        let Some((header_len, remaining)) = read_remaining_length(buf)? else {
            return Ok(None);
        };
        let size = header_len + remaining;
        if size > self.max_packet_size {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        check_remaining_length(packet_type, remaining)?;
        if buf.len() < size {
            buf.reserve((size - buf.len()).min(MAX_RESERVE_PER_CALL));
            return Ok(None);
        }
        buf.advance(header_len);
        let strict = is_strict(self.protocol);
        let result = if needs_owned_body(packet_type) {
            let body = Bytes::copy_from_slice(&buf[..remaining]);
            buf.advance(remaining);
            decode_owned(packet_type, header, body, strict)
        } else {
            let result = decode_borrowed(packet_type, header, &buf[..remaining], strict);
            buf.advance(remaining);
            result
        };
        let packet = result?;
        if let (None, Packet::Connect(connect)) = (self.protocol, &packet) {
            self.protocol = Some(connect.protocol);
        }
        Ok(Some(packet))
    }
}

/// Decodes one packet from its first byte and its whole body (everything after the remaining
/// length), under the rules of `protocol` (`None`: strict 3.1.1 rules).
///
/// Strings and payloads of the result are slices of `body`. The remaining length is
/// `body.len()`; no size limit is applied here.
///
/// # Errors
/// Any [`DecodeError`] except the framing ones ([`DecodeError::MalformedRemainingLength`],
/// [`DecodeError::PacketTooLarge`]).
pub fn decode_packet(
    header_byte: u8,
    body: Bytes,
    protocol: Option<ProtocolVersion>,
) -> Result<Packet, DecodeError> {
    let packet_type = check_fixed_header(header_byte, protocol)?;
    check_remaining_length(packet_type, body.len())?;
    let strict = is_strict(protocol);
    if needs_owned_body(packet_type) {
        decode_owned(packet_type, header_byte, body, strict)
    } else {
        decode_borrowed(packet_type, header_byte, &body, strict)
    }
}

/// Strict (3.1.1) rules apply unless the connection is known to speak 3.1.
fn is_strict(protocol: Option<ProtocolVersion>) -> bool {
    protocol != Some(ProtocolVersion::V3_1)
}

/// Reads the packet type from the first byte and checks its flags.
fn check_fixed_header(
    header: u8,
    protocol: Option<ProtocolVersion>,
) -> Result<PacketType, DecodeError> {
    let type_nibble = header >> 4;
    let flags = header & 0x0F;
    let packet_type = match type_nibble {
        1 => PacketType::Connect,
        2 => PacketType::ConnAck,
        3 => PacketType::Publish,
        4 => PacketType::PubAck,
        5 => PacketType::PubRec,
        6 => PacketType::PubRel,
        7 => PacketType::PubComp,
        8 => PacketType::Subscribe,
        9 => PacketType::SubAck,
        10 => PacketType::Unsubscribe,
        11 => PacketType::UnsubAck,
        12 => PacketType::PingReq,
        13 => PacketType::PingResp,
        14 => PacketType::Disconnect,
        t => return Err(DecodeError::InvalidPacketType(t)),
    };
    let strict = is_strict(protocol);
    let expected = match packet_type {
        PacketType::Publish => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS(qos));
            }
            if strict && qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::Malformed("dup flag set on qos 0 publish"));
            }
            return Ok(packet_type);
        }
        // CONNECT comes before the version is known: always checked.
        PacketType::Connect => 0b0000,
        // 3.1 peers: not checked, as Mosquitto does.
        _ if !strict => return Ok(packet_type),
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
        _ => 0b0000,
    };
    if flags != expected {
        return Err(DecodeError::InvalidFlags {
            packet_type: type_nibble,
            flags,
        });
    }
    Ok(packet_type)
}

/// Reads the remaining length after the first byte of `buf`: `Some((fixed header length,
/// remaining length))`, or `None` if more bytes are needed.
fn read_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, value)));
        }
    }
    // The fourth length byte has its continuation bit set: a fifth would follow.
    Err(DecodeError::MalformedRemainingLength)
}

/// Checks the remaining length of the fixed-size packets before their body is awaited.
fn check_remaining_length(packet_type: PacketType, remaining: usize) -> Result<(), DecodeError> {
    match packet_type {
        PacketType::ConnAck
        | PacketType::PubAck
        | PacketType::PubRec
        | PacketType::PubRel
        | PacketType::PubComp
        | PacketType::UnsubAck
            if remaining != 2 =>
        {
            Err(DecodeError::Malformed("remaining length must be 2"))
        }
        PacketType::PingReq | PacketType::PingResp | PacketType::Disconnect if remaining != 0 => {
            Err(DecodeError::Malformed("remaining length must be 0"))
        }
        _ => Ok(()),
    }
}

/// Whether the decoded packet keeps slices of its body (so the body must be an owned copy).
fn needs_owned_body(packet_type: PacketType) -> bool {
    matches!(
        packet_type,
        PacketType::Connect | PacketType::Publish | PacketType::Subscribe | PacketType::Unsubscribe
    )
}

/// Decodes the packets whose fields are slices of their body.
fn decode_owned(
    packet_type: PacketType,
    header: u8,
    body: Bytes,
    strict: bool,
) -> Result<Packet, DecodeError> {
    let mut r = Reader { buf: body };
    match packet_type {
        PacketType::Publish => decode_publish(header, r).map(Packet::Publish),
        PacketType::Connect => decode_connect(r).map(|c| Packet::Connect(Box::new(c))),
        PacketType::Subscribe => decode_subscribe(r, strict).map(Packet::Subscribe),
        PacketType::Unsubscribe => {
            let packet_id = r.packet_id()?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string("truncated topic filter")?);
            }
            if filters.is_empty() {
                return Err(DecodeError::EmptySubscription);
            }
            Ok(Packet::Unsubscribe(Unsubscribe { packet_id, filters }))
        }
        _ => decode_borrowed(packet_type, header, &r.buf, strict),
    }
}

/// Decodes the packets that keep nothing of their body.
fn decode_borrowed(
    packet_type: PacketType,
    header: u8,
    body: &[u8],
    strict: bool,
) -> Result<Packet, DecodeError> {
    match packet_type {
        PacketType::ConnAck => match *body {
            [flags, code] => {
                if flags & 0xFE != 0 {
                    return Err(DecodeError::Malformed("reserved connack flags set"));
                }
                let code = ConnectReturnCode::from_u8(code)
                    .ok_or(DecodeError::Malformed("invalid connack return code"))?;
                Ok(Packet::ConnAck(ConnAck {
                    session_present: flags & 0x01 != 0,
                    code,
                }))
            }
            _ => Err(DecodeError::Malformed("remaining length must be 2")),
        },
        PacketType::PubAck => ack_packet_id(body).map(Packet::PubAck),
        PacketType::PubRec => ack_packet_id(body).map(Packet::PubRec),
        PacketType::PubRel => ack_packet_id(body).map(Packet::PubRel),
        PacketType::PubComp => ack_packet_id(body).map(Packet::PubComp),
        PacketType::UnsubAck => ack_packet_id(body).map(Packet::UnsubAck),
        PacketType::SubAck => {
            let [hi, lo, codes @ ..] = body else {
                return Err(DecodeError::Malformed("missing packet identifier"));
            };
            let packet_id = nonzero_packet_id([*hi, *lo])?;
            if codes.is_empty() {
                return Err(DecodeError::Malformed("suback without return codes"));
            }
            let return_codes = codes
                .iter()
                .map(|&c| match c {
                    0x80 => Ok(SubscribeReturnCode::Failure),
                    c => QoS::from_u8(c)
                        .map(SubscribeReturnCode::Success)
                        .ok_or(DecodeError::Malformed("invalid suback return code")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Packet::SubAck(SubAck {
                packet_id,
                return_codes,
            }))
        }
        PacketType::PingReq | PacketType::PingResp | PacketType::Disconnect if !body.is_empty() => {
            Err(DecodeError::Malformed("remaining length must be 0"))
        }
        PacketType::PingReq => Ok(Packet::PingReq),
        PacketType::PingResp => Ok(Packet::PingResp),
        PacketType::Disconnect => Ok(Packet::Disconnect),
        PacketType::Connect
        | PacketType::Publish
        | PacketType::Subscribe
        | PacketType::Unsubscribe => {
            // Not reachable through `decode_packet`/`Decoder::decode`; decode from a copy anyway.
            decode_owned(packet_type, header, Bytes::copy_from_slice(body), strict)
        }
    }
}

/// The packet identifier of a 2-byte acknowledgement body.
fn ack_packet_id(body: &[u8]) -> Result<u16, DecodeError> {
    match *body {
        [hi, lo] => nonzero_packet_id([hi, lo]),
        _ => Err(DecodeError::Malformed("remaining length must be 2")),
    }
}

fn nonzero_packet_id(be: [u8; 2]) -> Result<u16, DecodeError> {
    match u16::from_be_bytes(be) {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn decode_publish(header: u8, mut r: Reader) -> Result<Publish, DecodeError> {
    let qos_bits = (header >> 1) & 0b11;
    let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::InvalidQoS(qos_bits))?;
    let topic = r.topic_name("truncated topic name")?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    Ok(Publish {
        dup: header & 0b1000 != 0,
        qos,
        retain: header & 0b0001 != 0,
        topic,
        packet_id,
        payload: r.buf,
    })
}

/// CONNECT flag bits.
const CLEAN_SESSION: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

fn decode_connect(mut r: Reader) -> Result<Connect, DecodeError> {
    // Name and level first: an unknown protocol gets CONNACK 1, whatever follows.
    let name = r.binary("truncated protocol name")?;
    let level = r.u8("missing protocol level")?;
    let protocol = match (name.as_ref(), level) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        _ => {
            // 16 characters take at most 64 bytes, even as replacement characters.
            let head = &name[..name.len().min(64)];
            return Err(DecodeError::UnacceptableProtocol {
                name: String::from_utf8_lossy(head).chars().take(16).collect(),
                level,
            });
        }
    };
    let strict = protocol == ProtocolVersion::V3_1_1;

    let flags = r.u8("missing connect flags")?;
    if strict && flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved connect flag set"));
    }
    let will_flag = flags & WILL != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & WILL_RETAIN != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "will qos or retain without will flag",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS(will_qos))?;
    let username_flag = flags & USERNAME != 0;
    let password_flag = flags & PASSWORD != 0;
    if strict && password_flag && !username_flag {
        return Err(DecodeError::Malformed(
            "password flag without user name flag",
        ));
    }

    let keep_alive = r.u16("missing keep-alive")?;
    let client_id = r.string("truncated client identifier")?;
    let will = if will_flag {
        let topic = r.topic_name("truncated will topic")?;
        let payload = r.binary("truncated will message")?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    // Old 3.1 clients set the user-name/password flags but send nothing: treat as absent.
    let username = if username_flag && (strict || !r.is_empty()) {
        Some(r.string("truncated user name")?)
    } else {
        None
    };
    let password = if password_flag && (strict || !r.is_empty()) {
        Some(r.binary("truncated password")?)
    } else {
        None
    };
    if !r.is_empty() {
        return Err(DecodeError::Malformed(
            "trailing bytes after connect payload",
        ));
    }
    Ok(Connect {
        protocol,
        clean_session: flags & CLEAN_SESSION != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_subscribe(mut r: Reader, strict: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("truncated topic filter")?;
        let options = r.u8("missing requested qos")?;
        let qos_bits = options & 0b11;
        let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::InvalidQoS(qos_bits))?;
        if strict && options & 0xFC != 0 {
            return Err(DecodeError::Malformed("reserved bits set in requested qos"));
        }
        filters.push(SubscribeFilter { filter, qos });
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    Ok(Subscribe { packet_id, filters })
}

/// A cursor over an owned packet body; fields are split off as slices of the same allocation.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.buf
            .try_get_u8()
            .map_err(|_| DecodeError::Malformed(what))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.buf
            .try_get_u16()
            .map_err(|_| DecodeError::Malformed(what))
    }

    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16("missing packet identifier")? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    /// A 2-byte length followed by that many bytes.
    fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(what)?);
        if self.buf.len() < len {
            return Err(DecodeError::Malformed(what));
        }
        Ok(self.buf.split_to(len))
    }

    /// A UTF-8 string without U+0000.
    fn string(&mut self, what: &'static str) -> Result<ByteString, DecodeError> {
        let s = utf8(self.binary(what)?)?;
        if s.as_bytes().contains(&0) {
            return Err(DecodeError::NullCharacter);
        }
        Ok(s)
    }

    /// A valid topic name (non-empty, no wildcards, no U+0000).
    fn topic_name(&mut self, what: &'static str) -> Result<ByteString, DecodeError> {
        let s = utf8(self.binary(what)?)?;
        topic::validate_topic_name(&s).map_err(|e| match e {
            TopicError::Empty => DecodeError::EmptyTopic,
            TopicError::NullCharacter => DecodeError::NullCharacter,
            TopicError::WildcardInName | TopicError::InvalidWildcard => {
                DecodeError::WildcardInTopic
            }
            TopicError::TooLong => DecodeError::Malformed("topic name too long"),
        })?;
        Ok(s)
    }
}

fn utf8(bytes: Bytes) -> Result<ByteString, DecodeError> {
    ByteString::try_from(bytes).map_err(|_| DecodeError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::write_remaining_length;

    const V31: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1);
    const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1_1);

    /// A whole frame: first byte, remaining length, body.
    fn frame(first: u8, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        out.extend_from_slice(&[first]);
        write_remaining_length(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }

    /// A length-prefixed field.
    fn field(bytes: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(bytes);
        v
    }

    fn decoder(protocol: Option<ProtocolVersion>) -> Decoder {
        let mut d = Decoder::new(1 << 20);
        if let Some(p) = protocol {
            d.set_protocol(p);
        }
        d
    }

    /// Decodes one whole frame with a decoder under `protocol`, checking it is consumed on success.
    fn decode_frame(
        first: u8,
        body: &[u8],
        protocol: Option<ProtocolVersion>,
    ) -> Result<Packet, DecodeError> {
        let mut buf = frame(first, body);
        let packet = decoder(protocol).decode(&mut buf)?;
        let packet = packet.expect("a whole frame decodes");
        assert!(buf.is_empty(), "frame fully consumed");
        // The free function agrees with the decoder.
        assert_eq!(
            decode_packet(first, Bytes::copy_from_slice(body), protocol).as_ref(),
            Ok(&packet)
        );
        Ok(packet)
    }

    fn publish_body(topic: &[u8], packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let mut v = field(topic);
        if let Some(id) = packet_id {
            v.extend_from_slice(&id.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    /// A CONNECT body: name, level, flags, keep-alive 60, then the payload fields as given.
    fn connect_body(name: &[u8], level: u8, flags: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut v = field(name);
        v.push(level);
        v.push(flags);
        v.extend_from_slice(&60u16.to_be_bytes());
        for f in fields {
            v.extend_from_slice(&field(f));
        }
        v
    }

    fn connect_311(flags: u8, fields: &[&[u8]]) -> Result<Packet, DecodeError> {
        decode_frame(0x10, &connect_body(b"MQTT", 4, flags, fields), None)
    }

    fn connect_31(flags: u8, fields: &[&[u8]]) -> Result<Packet, DecodeError> {
        decode_frame(0x10, &connect_body(b"MQIsdp", 3, flags, fields), None)
    }

    fn unwrap_connect(p: Packet) -> Connect {
        match p {
            Packet::Connect(c) => *c,
            other => panic!("not a CONNECT: {other:?}"),
        }
    }

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
        assert_eq!(decode_frame(0x60, &[0, 1], V31), Ok(Packet::PubRel(1)));
        assert_eq!(decode_frame(0x4F, &[0, 1], V31), Ok(Packet::PubAck(1)));
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
        assert!(c.clean_session);
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
        assert!(!c.clean_session);
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
            (b"MQTT", 5),
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
        body.extend_from_slice(&[5, 0xFF]);
        assert_eq!(
            decode_frame(0x10, &body, None),
            Err(DecodeError::UnacceptableProtocol {
                name: "MQTT".into(),
                level: 5
            })
        );
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
        assert!(!c.clean_session);
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
            Ok(Packet::ConnAck(ConnAck {
                session_present: true,
                code: ConnectReturnCode::Accepted
            }))
        );
        assert_eq!(
            decode_frame(0x20, &[0, 5], None),
            Ok(Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized
            }))
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
            Ok(Packet::PubAck(0x0102))
        );
        assert_eq!(decode_frame(0x50, &[0, 3], None), Ok(Packet::PubRec(3)));
        assert_eq!(decode_frame(0x62, &[0, 4], None), Ok(Packet::PubRel(4)));
        assert_eq!(
            decode_frame(0x70, &[0xFF, 0xFF], None),
            Ok(Packet::PubComp(65535))
        );
        assert_eq!(decode_frame(0xB0, &[0, 6], None), Ok(Packet::UnsubAck(6)));
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
        let got: Vec<_> = s.filters.iter().map(|f| (&f.filter[..], f.qos)).collect();
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
        assert_eq!(s.filters[0].qos, QoS::AtLeastOnce);
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
            s.return_codes,
            [
                SubscribeReturnCode::Success(QoS::AtMostOnce),
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
                SubscribeReturnCode::Success(QoS::ExactlyOnce),
                SubscribeReturnCode::Failure,
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
        assert_eq!(decode_frame(0xE0, &[], None), Ok(Packet::Disconnect));
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
}
