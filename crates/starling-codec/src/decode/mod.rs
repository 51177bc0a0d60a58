//! Incremental, strict decoding of MQTT 3.1, 3.1.1 and 5.0 packets from a read buffer.
//!
//! ```text
//!  socket ──read──▶ BytesMut ──Decoder::decode──▶ Ok(Some(Packet))   a whole frame was there
//!                      │                        ▶ Ok(None)           need more bytes, nothing consumed
//!                      │                        ▶ Err(DecodeError)   protocol violation: close
//!                      │
//!                      ├─ short packets (acks without properties, PINGs, short DISCONNECT /
//!                      │  AUTH, 3.1.1 CONNACK / SUBACK / UNSUBACK): read in place, no allocation
//!                      └─ the others: body copied once into its own exact-size `Bytes`;
//!                         topics, strings, properties and payloads are slices of that copy
//! ```
//!
//! What is checked before the body has arrived: the packet type and fixed-header flags (AUTH
//! only on a 5.0 connection), the remaining-length encoding (at most 4 bytes), the total size
//! against the configured maximum, and the remaining length of the fixed-size packets. So a peer
//! cannot make the broker buffer a body it is going to refuse anyway, and while a large body
//! trickles in the read buffer grows by at most 64 KiB per call.
//!
//! Why the body is copied: a `Bytes` slice of the socket's read buffer would keep that whole
//! buffer alive for as long as any message taken from it sits in a session queue. One exact-size
//! copy per packet bounds retained memory by what is actually queued.
//!
//! The rules follow the connection's protocol version, fixed by its CONNECT: 3.1 peers get
//! Mosquitto's leniency on reserved bits, 3.1.1 and 5.0 are strict; before CONNECT the 3.1.1
//! rules apply. The packet families are read in `connect` (CONNECT, CONNACK), `publish`
//! (PUBLISH and its acknowledgements), `subscribe` (SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK)
//! and `control` (PINGREQ, PINGRESP, DISCONNECT, AUTH); property blocks by
//! [`crate::properties`].

// #[PerformanceCriticalPath]: every packet received by the broker goes through `Decoder::decode`.

mod connect;
mod control;
mod publish;
pub(crate) mod reader;
mod subscribe;
#[cfg(test)]
mod tests;

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::{self, Packet, PacketType, ProtocolVersion};
use reader::Reader;

/// The most capacity [`Decoder::decode`] reserves in the read buffer in one call while waiting
/// for the body of a packet.
pub const MAX_RESERVE_PER_CALL: usize = 64 * 1024;

/// Incremental MQTT decoder for one connection.
///
/// It holds the connection's maximum packet size and, once known, its protocol version, which
/// selects the 5.0 layouts and relaxes some fixed-header checks for MQTT 3.1 peers (as Mosquitto
/// does).
#[derive(Clone, Debug)]
pub struct Decoder {
    max_packet_size: usize,
    protocol: Option<ProtocolVersion>,
    /// Whether a CONNECT at level 5 is decoded, or refused as an unacceptable protocol.
    accept_v5: bool,
}

impl Decoder {
    /// A decoder accepting packets of at most `max_packet_size` bytes in total (fixed header
    /// included), with no protocol version yet (strict 3.1.1 rules), accepting CONNECTs of
    /// 3.1, 3.1.1 and 5.0.
    pub fn new(max_packet_size: usize) -> Decoder {
        Decoder {
            max_packet_size,
            protocol: None,
            accept_v5: true,
        }
    }

    /// Whether a CONNECT at protocol level 5 is decoded (the default) or refused with
    /// [`DecodeError::UnacceptableProtocol`], as a server that does not speak 5.0 refuses it
    /// (CONNACK return code 1), whatever follows the protocol level.
    pub fn set_accept_v5(&mut self, accept: bool) {
        self.accept_v5 = accept;
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

    fn rules(&self) -> Rules {
        Rules {
            protocol: self.protocol,
            accept_v5: self.accept_v5,
        }
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
        let rules = self.rules();
        let packet_type = check_fixed_header(header, rules)?;
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
        check_remaining_length(packet_type, remaining, rules)?;
        if buf.len() < size {
            buf.reserve((size - buf.len()).min(MAX_RESERVE_PER_CALL));
            return Ok(None);
        }
        buf.advance(header_len);
        // Each path returns the packet where it is built: a `Packet` is as large as a 5.0
        // PUBLISH, and every move through a local costs a copy of it.
        if is_short(packet_type, remaining, rules) {
            let result = decode_short(packet_type, &buf[..remaining], rules);
            buf.advance(remaining);
            return result.map(Some);
        }
        let body = Bytes::copy_from_slice(&buf[..remaining]);
        buf.advance(remaining);
        if packet_type == PacketType::Connect {
            let packet = decode_owned(packet_type, header, body, rules)?;
            if let (None, Packet::Connect(connect)) = (self.protocol, &packet) {
                self.protocol = Some(connect.protocol);
            }
            return Ok(Some(packet));
        }
        decode_owned(packet_type, header, body, rules).map(Some)
    }
}

/// Decodes one packet from its first byte and its whole body (everything after the remaining
/// length), under the rules of `protocol` (`None`: strict 3.1.1 rules). A CONNECT of any of the
/// three versions is accepted.
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
    let rules = Rules {
        protocol,
        accept_v5: true,
    };
    let packet_type = check_fixed_header(header_byte, rules)?;
    check_remaining_length(packet_type, body.len(), rules)?;
    decode_owned(packet_type, header_byte, body, rules)
}

/// The rules a packet is decoded under.
#[derive(Clone, Copy, Debug)]
struct Rules {
    /// The connection's version; `None` before CONNECT (3.1.1 rules).
    protocol: Option<ProtocolVersion>,
    /// Whether a CONNECT at level 5 is accepted.
    accept_v5: bool,
}

impl Rules {
    /// Strict (3.1.1 and 5.0) rules apply unless the connection is known to speak 3.1.
    fn strict(self) -> bool {
        self.protocol != Some(ProtocolVersion::V3_1)
    }

    /// The 5.0 layouts (properties, reason codes).
    fn v5(self) -> bool {
        self.protocol == Some(ProtocolVersion::V5)
    }
}

/// Reads the packet type from the first byte and checks its flags.
fn check_fixed_header(header: u8, rules: Rules) -> Result<PacketType, DecodeError> {
    let type_nibble = header >> 4;
    let flags = header & 0x0F;
    let packet_type = match PacketType::from_u8(type_nibble) {
        Some(PacketType::Auth) if !rules.v5() => {
            return Err(DecodeError::InvalidPacketType(type_nibble))
        }
        Some(t) => t,
        None => return Err(DecodeError::InvalidPacketType(type_nibble)),
    };
    let strict = rules.strict();
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
fn check_remaining_length(
    packet_type: PacketType,
    remaining: usize,
    rules: Rules,
) -> Result<(), DecodeError> {
    use PacketType::*;
    match packet_type {
        PingReq | PingResp if remaining != 0 => {
            Err(DecodeError::Malformed("remaining length must be 0"))
        }
        // 5.0: a packet identifier, then an optional reason code and properties.
        PubAck | PubRec | PubRel | PubComp if rules.v5() && remaining < 2 => {
            Err(DecodeError::Malformed("remaining length below 2"))
        }
        _ if rules.v5() => Ok(()),
        ConnAck | PubAck | PubRec | PubRel | PubComp | UnsubAck if remaining != 2 => {
            Err(DecodeError::Malformed("remaining length must be 2"))
        }
        Disconnect if remaining != 0 => Err(DecodeError::Malformed("remaining length must be 0")),
        _ => Ok(()),
    }
}

/// Whether the packet is read in place ([`decode_short`]), keeping nothing of its body:
/// acknowledgements without properties, PINGs, DISCONNECT and AUTH of at most one byte, and the
/// 3.1 / 3.1.1 CONNACK, SUBACK and UNSUBACK.
fn is_short(packet_type: PacketType, len: usize, rules: Rules) -> bool {
    use PacketType::*;
    match packet_type {
        PubAck | PubRec | PubRel | PubComp => len <= 3,
        PingReq | PingResp => true,
        Disconnect | Auth => len <= 1,
        ConnAck | SubAck | UnsubAck => !rules.v5(),
        Connect | Publish | Subscribe | Unsubscribe => false,
    }
}

/// Decodes a packet for which [`is_short`] holds from its body in place.
#[inline(always)]
fn decode_short(packet_type: PacketType, body: &[u8], rules: Rules) -> Result<Packet, DecodeError> {
    use PacketType::*;
    match packet_type {
        PubAck | PubRec | PubRel | PubComp => publish::short_ack(packet_type, body),
        PingReq | PingResp if !body.is_empty() => {
            Err(DecodeError::Malformed("remaining length must be 0"))
        }
        PingReq => Ok(Packet::PingReq),
        PingResp => Ok(Packet::PingResp),
        Disconnect | Auth => control::short(packet_type, body, rules),
        ConnAck => connect::connack_v3(body),
        SubAck => subscribe::suback_v3(body),
        UnsubAck => ack_packet_id(body).map(|id| Packet::UnsubAck(packet::UnsubAck::new(id))),
        Connect | Publish | Subscribe | Unsubscribe => {
            Err(DecodeError::Malformed("not a short packet"))
        }
    }
}

/// Decodes any packet from its owned body.
fn decode_owned(
    packet_type: PacketType,
    header: u8,
    body: Bytes,
    rules: Rules,
) -> Result<Packet, DecodeError> {
    use PacketType::*;
    if is_short(packet_type, body.len(), rules) {
        return decode_short(packet_type, &body, rules);
    }
    let r = Reader::new(body);
    match packet_type {
        Connect => connect::connect(r, rules.accept_v5).map(|c| Packet::Connect(Box::new(c))),
        ConnAck => connect::connack_v5(r).map(|c| Packet::ConnAck(Box::new(c))),
        Publish => publish::publish(header, r, rules.v5()).map(Packet::Publish),
        PubAck | PubRec | PubRel | PubComp => publish::ack(packet_type, r),
        Subscribe => subscribe::subscribe(r, rules).map(Packet::Subscribe),
        SubAck => subscribe::suback_v5(r).map(Packet::SubAck),
        Unsubscribe => subscribe::unsubscribe(r, rules.v5()).map(Packet::Unsubscribe),
        UnsubAck => subscribe::unsuback_v5(r).map(Packet::UnsubAck),
        Disconnect | Auth => control::long(packet_type, r),
        // Always short: handled above.
        PingReq | PingResp => Err(DecodeError::Malformed("remaining length must be 0")),
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

/// Fails if bytes are left after the last field of a packet.
fn expect_end(r: &Reader, what: &'static str) -> Result<(), DecodeError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::Malformed(what))
    }
}
