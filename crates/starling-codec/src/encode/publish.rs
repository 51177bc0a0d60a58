//! The hot path: PUBLISH and acknowledgements written straight from borrowed fields.
//!
//! [`encode_publish`] is the 3.1 / 3.1.1 form (no properties); [`encode_publish_v5`] writes a
//! 5.0 PUBLISH whose property block comes from the publisher's [`PublishProperties`] plus the
//! parts the broker sets per subscriber ([`PublishV5`]). Neither allocates beyond reserving room
//! in `out`.

use bytes::{BufMut, BytesMut};

use super::{
    check_field, check_packet_id, check_remaining, put_field, put_fixed_header,
    remaining_length_len, var_int_len,
};
use crate::error::EncodeError;
use crate::packet::{PacketType, Publish, QoS};
use crate::properties::{PublishBlock, PublishProperties};

/// Encodes a 3.1 / 3.1.1 PUBLISH straight from its fields.
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
    let remaining = remaining_len_v3(topic.len(), qos, payload.len());
    check_remaining(remaining)?;
    out.reserve(1 + remaining_length_len(remaining) + remaining);
    put_fixed_header(out, first_byte(dup, qos, retain), remaining);
    put_field(out, topic.as_bytes());
    if has_id {
        out.put_u16(packet_id);
    }
    out.put_slice(payload);
    Ok(())
}

fn first_byte(dup: bool, qos: QoS, retain: bool) -> u8 {
    0x30 | u8::from(dup) << 3 | qos.as_u8() << 1 | u8::from(retain)
}

pub(super) fn remaining_len_v3(topic_len: usize, qos: QoS, payload_len: usize) -> usize {
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    (2 + topic_len + id_len).saturating_add(payload_len)
}

/// A 5.0 PUBLISH as the broker sends it to one subscriber: the message's fields and properties
/// borrowed from where they are stored, and the three properties that differ per delivery.
///
/// The `message_expiry_interval`, `topic_alias` and `subscription_identifiers` given here are
/// written instead of those of `properties` (which are ignored). `topic` may be empty when the
/// Topic Alias is already known to the client.
#[derive(Clone, Copy, Debug)]
pub struct PublishV5<'a> {
    /// DUP flag.
    pub dup: bool,
    /// QoS of this transmission.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name, or empty with a Topic Alias.
    pub topic: &'a str,
    /// Packet identifier (written for QoS 1 and 2 only).
    pub packet_id: u16,
    /// The publisher's properties, forwarded as they are but for the three below.
    pub properties: &'a PublishProperties,
    /// What is left of the message's lifetime, in seconds.
    pub message_expiry_interval: Option<u32>,
    /// The alias of the topic on this connection.
    pub topic_alias: Option<u16>,
    /// The identifiers of this client's subscriptions that matched.
    pub subscription_identifiers: &'a [u32],
    /// Application payload.
    pub payload: &'a [u8],
}

impl<'a> From<&'a Publish> for PublishV5<'a> {
    /// The packet as it is, with its own per-delivery properties.
    fn from(p: &'a Publish) -> PublishV5<'a> {
        PublishV5 {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            packet_id: p.packet_id,
            properties: &p.properties,
            message_expiry_interval: p.properties.message_expiry_interval,
            topic_alias: p.properties.topic_alias,
            subscription_identifiers: &p.properties.subscription_identifiers,
            payload: &p.payload,
        }
    }
}

impl<'a> PublishV5<'a> {
    fn block(&self) -> PublishBlock<'a> {
        PublishBlock {
            base: self.properties,
            message_expiry_interval: self.message_expiry_interval,
            topic_alias: self.topic_alias,
            subscription_identifiers: self.subscription_identifiers,
        }
    }

    pub(super) fn remaining_len(&self) -> usize {
        remaining_len_v3(self.topic.len(), self.qos, self.payload.len())
            .saturating_add(self.block().block_len())
    }

    /// Total number of bytes [`encode_publish_v5`] writes: what the broker compares with the
    /// client's Maximum Packet Size before sending.
    pub fn encoded_len(&self) -> usize {
        let remaining = self.remaining_len();
        1usize
            .saturating_add(remaining_length_len(remaining))
            .saturating_add(remaining)
    }
}

/// Encodes a 5.0 PUBLISH straight from its parts (see [`PublishV5`]).
///
/// # Errors
/// As [`encode_publish`], and [`EncodeError::StringTooLong`] or
/// [`EncodeError::InvalidProperty`] for a property the wire cannot carry. Nothing is written on
/// error.
pub fn encode_publish_v5(out: &mut BytesMut, p: &PublishV5<'_>) -> Result<(), EncodeError> {
    check_field(p.topic.len())?;
    let has_id = p.qos != QoS::AtMostOnce;
    if has_id {
        check_packet_id(p.packet_id)?;
    }
    let block = p.block();
    let body_len = block.body_len();
    block.check(body_len)?;
    let remaining = remaining_len_v3(p.topic.len(), p.qos, p.payload.len())
        .saturating_add(var_int_len(body_len as u32))
        .saturating_add(body_len);
    check_remaining(remaining)?;
    out.reserve(1 + remaining_length_len(remaining) + remaining);
    put_fixed_header(out, first_byte(p.dup, p.qos, p.retain), remaining);
    put_field(out, p.topic.as_bytes());
    if has_id {
        out.put_u16(p.packet_id);
    }
    block.put_block(body_len, out);
    out.put_slice(p.payload);
    Ok(())
}

/// Encodes a PUBACK, PUBREC, PUBREL (flags `0010`) or PUBCOMP of success without properties,
/// the same 4 bytes in every version, or a 3.1 / 3.1.1 UNSUBACK (a 5.0 UNSUBACK carries reason
/// codes: use [`crate::Packet::encode`]).
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
