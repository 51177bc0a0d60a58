//! Encoding of MQTT 3.1, 3.1.1 and 5.0 packets into a write buffer.
//!
//! - [`Packet::encode`] / [`Packet::encoded_len`] for every packet type in a given protocol
//!   version, client-side ones included (the test client and the load generator use them).
//!   What the version cannot carry is left out: properties and reason codes before 5.0 (a
//!   CONNACK's reason code becomes its 3.1.1 return code, a SUBACK failure 0x80). CONNECT is
//!   always encoded in the version it names.
//! - [`Packet::fit_to_maximum`]: drops the Reason String, then the User Properties of a packet
//!   that would exceed the receiver's Maximum Packet Size, as the standard allows.
//! - [`encode_publish`], [`encode_publish_v5`] and [`encode_ack`]: the broker's hot path,
//!   writing straight from borrowed fields without building a [`Packet`].
//!
//! The encoder writes the shortest form the standard allows: no property block where the
//! packet may omit an empty one (acknowledgements, DISCONNECT, AUTH), no reason code where it
//! may omit a success.
//!
//! Every encoder validates first, then reserves the exact size once and writes: on error nothing
//! has been written to `out`.
//!
//! The encoders check what the wire format cannot carry (lengths, zero packet identifiers, empty
//! lists, a Subscription Identifier past the Variable Byte Integer range) but not protocol
//! semantics such as wildcards in a topic name or a zero Receive Maximum: a test client must be
//! able to send such packets to the broker.

// #[PerformanceCriticalPath]: `encode_publish` / `encode_publish_v5` run once per delivered
// message.

mod publish;
#[cfg(test)]
mod tests;

pub use publish::{encode_ack, encode_publish, encode_publish_v5, PublishV5};

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, ProtocolVersion, SubAck, Subscribe, UnsubAck,
    Unsubscribe, MAX_REMAINING_LENGTH,
};
use crate::properties::{AckProperties, Droppable, PropertySet};

/// Longest string or length-prefixed binary field.
const MAX_FIELD_LEN: usize = 65_535;

/// The largest value of a Variable Byte Integer (4 bytes).
pub const MAX_VAR_INT: u32 = 268_435_455;

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

/// Length of a Variable Byte Integer.
pub(crate) fn var_int_len(n: u32) -> usize {
    remaining_length_len(n as usize)
}

/// Writes a Variable Byte Integer (`n` at most [`MAX_VAR_INT`]).
pub(crate) fn put_var_int(out: &mut BytesMut, n: u32) {
    write_remaining_length(out, n as usize);
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
pub(crate) fn check_field(len: usize) -> Result<(), EncodeError> {
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
pub(crate) fn put_field(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(u16::try_from(bytes.len()).unwrap_or(u16::MAX));
    out.put_slice(bytes);
}

/// CONNECT flag bits.
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

/// A packet of the acknowledgement family seen through what they share: packet identifier,
/// reason code, properties.
struct AckParts<'a> {
    packet_id: u16,
    reason: u8,
    properties: &'a AckProperties,
}

impl AckParts<'_> {
    /// Remaining length in 5.0: 2 for success without properties, 3 with a reason code only.
    fn remaining_len_v5(&self) -> usize {
        if !self.properties.is_empty() {
            3usize.saturating_add(self.properties.block_len())
        } else if self.reason != 0 {
            3
        } else {
            2
        }
    }

    fn put_v5(&self, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if !self.properties.is_empty() {
            out.put_u8(self.reason);
            self.properties.put_block(out);
        } else if self.reason != 0 {
            out.put_u8(self.reason);
        }
    }
}

/// Remaining length of a DISCONNECT or AUTH in 5.0: 0 for success without properties, 1 with
/// a reason code only.
fn reason_and_block_len<P: PropertySet>(reason: u8, properties: &P, empty: bool) -> usize {
    if !empty {
        1usize.saturating_add(properties.block_len())
    } else if reason != 0 {
        1
    } else {
        0
    }
}

fn put_reason_and_block<P: PropertySet>(
    out: &mut BytesMut,
    reason: u8,
    properties: &P,
    empty: bool,
) {
    if !empty {
        out.put_u8(reason);
        properties.put_block(out);
    } else if reason != 0 {
        out.put_u8(reason);
    }
}

impl Packet {
    /// Total number of bytes [`Packet::encode`] writes for this packet in `version` (fixed
    /// header included): what the broker compares with a client's Maximum Packet Size.
    ///
    /// For a packet that cannot be encoded, the size it would have.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let remaining = self.remaining_len(version);
        1usize
            .saturating_add(remaining_length_len(remaining))
            .saturating_add(remaining)
    }

    /// Appends the packet to `out`, encoded for a connection speaking `version`.
    ///
    /// Before 5.0, properties and reason codes are left out (a CONNACK's reason code is
    /// written as its 3.1.1 return code, a SUBACK failure as 0x80); CONNECT is written in the
    /// version it names whatever `version` says. Topic names and filters are not validated.
    ///
    /// # Errors
    /// [`EncodeError::StringTooLong`] for a string or binary field over 65 535 bytes,
    /// [`EncodeError::ZeroPacketId`] for a packet identifier that must be non-zero,
    /// [`EncodeError::EmptySubscription`] for a SUBSCRIBE, UNSUBSCRIBE, SUBACK or 5.0 UNSUBACK
    /// with an empty list, [`EncodeError::InvalidProperty`] for a property value the wire
    /// cannot carry, [`EncodeError::NotInProtocol`] for AUTH before 5.0,
    /// [`EncodeError::PayloadTooLarge`] past the protocol's maximum size. Nothing is written
    /// on error.
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let v5 = version.is_v5();
        if let Packet::Publish(p) = self {
            return if v5 {
                encode_publish_v5(out, &PublishV5::from(p))
            } else {
                encode_publish(
                    out,
                    p.dup,
                    p.qos,
                    p.retain,
                    &p.topic,
                    p.packet_id,
                    &p.payload,
                )
            };
        }
        self.validate(v5)?;
        let remaining = self.remaining_len(version);
        check_remaining(remaining)?;
        out.reserve(1 + remaining_length_len(remaining) + remaining);
        put_fixed_header(out, self.first_byte(), remaining);
        self.put_body(v5, out);
        Ok(())
    }

    /// Makes the packet fit a receiver's Maximum Packet Size, as far as the standard allows: if
    /// its encoding in `version` exceeds `max_packet_size`, drops its Reason String, then (if
    /// still too large) its User Properties. Only the packets that carry a Reason String
    /// (CONNACK, the acknowledgements, DISCONNECT, AUTH) are changed.
    ///
    /// Returns whether the packet now fits. A packet that does not fit must not be sent; for a
    /// PUBLISH that is the broker's business (it discards the message for that client).
    pub fn fit_to_maximum(&mut self, version: ProtocolVersion, max_packet_size: usize) -> bool {
        if self.encoded_len(version) <= max_packet_size {
            return true;
        }
        if !version.is_v5() {
            return false;
        }
        let dropped = match self.droppable() {
            Some(p) => p.drop_reason_string(),
            None => return false,
        };
        if dropped && self.encoded_len(version) <= max_packet_size {
            return true;
        }
        if let Some(p) = self.droppable() {
            p.drop_user_properties();
        }
        self.encoded_len(version) <= max_packet_size
    }

    /// The properties [`Packet::fit_to_maximum`] may shrink.
    fn droppable(&mut self) -> Option<&mut dyn Droppable> {
        Some(match self {
            Packet::ConnAck(c) => &mut c.properties,
            Packet::PubAck(a) => &mut a.properties,
            Packet::PubRec(a) => &mut a.properties,
            Packet::PubRel(a) => &mut a.properties,
            Packet::PubComp(a) => &mut a.properties,
            Packet::SubAck(a) => &mut a.properties,
            Packet::UnsubAck(a) => &mut a.properties,
            Packet::Disconnect(d) => &mut d.properties,
            Packet::Auth(a) => &mut a.properties,
            _ => return None,
        })
    }

    fn ack_parts(&self) -> Option<AckParts<'_>> {
        let (packet_id, reason, properties) = match self {
            Packet::PubAck(a) => (a.packet_id, a.reason.as_u8(), &a.properties),
            Packet::PubRec(a) => (a.packet_id, a.reason.as_u8(), &a.properties),
            Packet::PubRel(a) => (a.packet_id, a.reason.as_u8(), &a.properties),
            Packet::PubComp(a) => (a.packet_id, a.reason.as_u8(), &a.properties),
            _ => return None,
        };
        Some(AckParts {
            packet_id,
            reason,
            properties,
        })
    }

    /// The first byte: type and flags.
    fn first_byte(&self) -> u8 {
        match self {
            Packet::Publish(p) => {
                0x30 | u8::from(p.dup) << 3 | p.qos.as_u8() << 1 | u8::from(p.retain)
            }
            Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => {
                (self.packet_type() as u8) << 4 | 0b0010
            }
            _ => (self.packet_type() as u8) << 4,
        }
    }

    /// Checks everything the wire format cannot carry (PUBLISH is checked by its encoder).
    fn validate(&self, v5: bool) -> Result<(), EncodeError> {
        if let Some(ack) = self.ack_parts() {
            check_packet_id(ack.packet_id)?;
            return if v5 { ack.properties.check() } else { Ok(()) };
        }
        match self {
            Packet::Connect(c) => validate_connect(c),
            Packet::ConnAck(c) if v5 => c.properties.check(),
            Packet::Subscribe(s) => validate_subscribe(s, v5),
            Packet::SubAck(s) => validate_suback(s, v5),
            Packet::Unsubscribe(u) => validate_unsubscribe(u, v5),
            Packet::UnsubAck(u) => validate_unsuback(u, v5),
            Packet::Disconnect(d) if v5 => d.properties.check(),
            Packet::Auth(a) if v5 => a.properties.check(),
            Packet::Auth(_) => Err(EncodeError::NotInProtocol(15)),
            _ => Ok(()),
        }
    }

    /// The remaining length of the encoded packet (saturating for absurd sizes).
    fn remaining_len(&self, version: ProtocolVersion) -> usize {
        let v5 = version.is_v5();
        if let Some(ack) = self.ack_parts() {
            return if v5 { ack.remaining_len_v5() } else { 2 };
        }
        let block = |len: usize| if v5 { len } else { 0 };
        match self {
            Packet::Connect(c) => connect_remaining_len(c),
            Packet::ConnAck(c) => 2usize.saturating_add(block(c.properties.block_len())),
            Packet::Publish(p) if v5 => PublishV5::from(p).remaining_len(),
            Packet::Publish(p) => publish::remaining_len_v3(p.topic.len(), p.qos, p.payload.len()),
            Packet::Subscribe(s) => s.filters.iter().fold(
                2usize.saturating_add(block(s.properties.block_len())),
                |n, f| n.saturating_add(3 + f.filter.len()),
            ),
            Packet::SubAck(s) => 2usize
                .saturating_add(block(s.properties.block_len()))
                .saturating_add(s.reason_codes.len()),
            Packet::Unsubscribe(u) => u.filters.iter().fold(
                2usize.saturating_add(block(u.properties.block_len())),
                |n, f| n.saturating_add(2 + f.len()),
            ),
            Packet::UnsubAck(u) if v5 => 2usize
                .saturating_add(u.properties.block_len())
                .saturating_add(u.reason_codes.len()),
            Packet::UnsubAck(_) => 2,
            Packet::Disconnect(d) if v5 => {
                reason_and_block_len(d.reason.as_u8(), &d.properties, d.properties.is_empty())
            }
            Packet::Auth(a) if v5 => {
                reason_and_block_len(a.reason.as_u8(), &a.properties, a.properties.is_empty())
            }
            Packet::PingReq | Packet::PingResp | Packet::Disconnect(_) | Packet::Auth(_) => 0,
            // Handled by `ack_parts`.
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => 2,
        }
    }

    /// Writes the body; [`Packet::validate`] has passed. PUBLISH is written by its encoder.
    fn put_body(&self, v5: bool, out: &mut BytesMut) {
        if let Some(ack) = self.ack_parts() {
            if v5 {
                ack.put_v5(out);
            } else {
                out.put_u16(ack.packet_id);
            }
            return;
        }
        match self {
            Packet::Connect(c) => put_connect_body(out, c),
            Packet::ConnAck(c) => put_connack_body(out, c, v5),
            Packet::Subscribe(s) => put_subscribe_body(out, s, v5),
            Packet::SubAck(s) => put_suback_body(out, s, v5),
            Packet::Unsubscribe(u) => put_unsubscribe_body(out, u, v5),
            Packet::UnsubAck(u) => put_unsuback_body(out, u, v5),
            Packet::Disconnect(Disconnect { reason, properties }) if v5 => {
                put_reason_and_block(out, reason.as_u8(), properties, properties.is_empty());
            }
            Packet::Auth(Auth { reason, properties }) if v5 => {
                put_reason_and_block(out, reason.as_u8(), properties, properties.is_empty());
            }
            // Written by `encode_publish*`, written above, or bodiless.
            Packet::Publish(_)
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::PingReq
            | Packet::PingResp
            | Packet::Disconnect(_)
            | Packet::Auth(_) => {}
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
    if c.protocol.is_v5() {
        c.properties.check()?;
        if let Some(will) = &c.will {
            will.properties.check()?;
        }
    }
    Ok(())
}

fn validate_subscribe(s: &Subscribe, v5: bool) -> Result<(), EncodeError> {
    check_packet_id(s.packet_id)?;
    if s.filters.is_empty() {
        return Err(EncodeError::EmptySubscription);
    }
    if v5 {
        s.properties.check()?;
    }
    s.filters
        .iter()
        .try_for_each(|f| check_field(f.filter.len()))
}

fn validate_suback(s: &SubAck, v5: bool) -> Result<(), EncodeError> {
    check_packet_id(s.packet_id)?;
    if s.reason_codes.is_empty() {
        return Err(EncodeError::EmptySubscription);
    }
    if v5 {
        s.properties.check()?;
    }
    Ok(())
}

fn validate_unsubscribe(u: &Unsubscribe, v5: bool) -> Result<(), EncodeError> {
    check_packet_id(u.packet_id)?;
    if u.filters.is_empty() {
        return Err(EncodeError::EmptySubscription);
    }
    if v5 {
        u.properties.check()?;
    }
    u.filters.iter().try_for_each(|f| check_field(f.len()))
}

fn validate_unsuback(u: &UnsubAck, v5: bool) -> Result<(), EncodeError> {
    check_packet_id(u.packet_id)?;
    if v5 {
        if u.reason_codes.is_empty() {
            return Err(EncodeError::EmptySubscription);
        }
        u.properties.check()?;
    }
    Ok(())
}

fn connect_remaining_len(c: &Connect) -> usize {
    let v5 = c.protocol.is_v5();
    // Protocol name, level, flags, keep-alive, client id.
    let mut n = 2 + c.protocol.name().len() + 1 + 1 + 2 + 2 + c.client_id.len();
    if v5 {
        n = n.saturating_add(c.properties.block_len());
    }
    if let Some(will) = &c.will {
        n = n.saturating_add(4 + will.topic.len() + will.payload.len());
        if v5 {
            n = n.saturating_add(will.properties.block_len());
        }
    }
    if let Some(username) = &c.username {
        n = n.saturating_add(2 + username.len());
    }
    if let Some(password) = &c.password {
        n = n.saturating_add(2 + password.len());
    }
    n
}

fn put_connect_body(out: &mut BytesMut, c: &Connect) {
    let v5 = c.protocol.is_v5();
    put_field(out, c.protocol.name().as_bytes());
    out.put_u8(c.protocol.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= CLEAN_START;
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
    if v5 {
        c.properties.put_block(out);
    }
    put_field(out, c.client_id.as_bytes());
    if let Some(will) = &c.will {
        if v5 {
            will.properties.put_block(out);
        }
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

fn put_connack_body(out: &mut BytesMut, c: &ConnAck, v5: bool) {
    out.put_u8(u8::from(c.session_present));
    if v5 {
        out.put_u8(c.code.as_u8());
        c.properties.put_block(out);
    } else {
        out.put_u8(c.code.v3_return_code());
    }
}

fn put_subscribe_body(out: &mut BytesMut, s: &Subscribe, v5: bool) {
    out.put_u16(s.packet_id);
    if v5 {
        s.properties.put_block(out);
    }
    for f in &s.filters {
        put_field(out, f.filter.as_bytes());
        out.put_u8(if v5 {
            f.options.as_u8()
        } else {
            f.options.qos.as_u8()
        });
    }
}

fn put_suback_body(out: &mut BytesMut, s: &SubAck, v5: bool) {
    out.put_u16(s.packet_id);
    if v5 {
        s.properties.put_block(out);
        for code in &s.reason_codes {
            out.put_u8(code.as_u8());
        }
    } else {
        for code in &s.reason_codes {
            out.put_u8(code.v3_return_code());
        }
    }
}

fn put_unsubscribe_body(out: &mut BytesMut, u: &Unsubscribe, v5: bool) {
    out.put_u16(u.packet_id);
    if v5 {
        u.properties.put_block(out);
    }
    for f in &u.filters {
        put_field(out, f.as_bytes());
    }
}

fn put_unsuback_body(out: &mut BytesMut, u: &UnsubAck, v5: bool) {
    out.put_u16(u.packet_id);
    if v5 {
        u.properties.put_block(out);
        for code in &u.reason_codes {
            out.put_u8(code.as_u8());
        }
    }
}
