//! PUBLISH (3.3) and its acknowledgements PUBACK, PUBREC, PUBREL, PUBCOMP (3.4 to 3.7).
//!
//! An acknowledgement has three 5.0 forms: remaining length 2 (success, no properties), 3 (a
//! reason code, no properties) and from 4 (reason code and properties). The first is also the
//! only 3.1.1 form. The short forms are read in place.

use super::reader::Reader;
use super::{expect_end, nonzero_packet_id};
use crate::error::DecodeError;
use crate::packet::{Packet, PacketType, PubAck, PubComp, PubRec, PubRel, Publish, QoS};
use crate::properties::{read_block, AckProperties, PublishProperties};
use crate::reason::{PubAckReasonCode, PubCompReasonCode, PubRecReasonCode, PubRelReasonCode};

pub(super) fn publish(header: u8, mut r: Reader, v5: bool) -> Result<Publish, DecodeError> {
    let qos_bits = (header >> 1) & 0b11;
    let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::InvalidQoS(qos_bits))?;
    let topic = if v5 {
        r.topic_name_or_empty("truncated topic name")?
    } else {
        r.topic_name("truncated topic name")?
    };
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties: PublishProperties = if v5 {
        read_block(&mut r)?
    } else {
        PublishProperties::default()
    };
    // 3.3.2.1: an empty topic name stands for the topic of its Topic Alias.
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopic);
    }
    Ok(Publish {
        dup: header & 0b1000 != 0,
        qos,
        retain: header & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// An acknowledgement of remaining length 2 or 3, read in place.
#[inline(always)]
pub(super) fn short_ack(packet_type: PacketType, body: &[u8]) -> Result<Packet, DecodeError> {
    let (id, reason) = match *body {
        [hi, lo] => ([hi, lo], 0),
        [hi, lo, reason] => ([hi, lo], reason),
        _ => return Err(DecodeError::Malformed("remaining length must be 2")),
    };
    ack_packet(
        packet_type,
        nonzero_packet_id(id)?,
        reason,
        AckProperties::default(),
    )
}

/// A 5.0 acknowledgement with properties.
pub(super) fn ack(packet_type: PacketType, mut r: Reader) -> Result<Packet, DecodeError> {
    let packet_id = r.packet_id()?;
    let reason = r.u8("missing reason code")?;
    let properties: AckProperties = read_block(&mut r)?;
    expect_end(&r, "trailing bytes after acknowledgement properties")?;
    ack_packet(packet_type, packet_id, reason, properties)
}

/// Builds the acknowledgement of `packet_type`, with its own reason codes.
#[inline(always)]
fn ack_packet(
    packet_type: PacketType,
    packet_id: u16,
    reason: u8,
    properties: AckProperties,
) -> Result<Packet, DecodeError> {
    let invalid = || DecodeError::InvalidReasonCode {
        packet_type: packet_type as u8,
        code: reason,
    };
    Ok(match packet_type {
        PacketType::PubAck => Packet::PubAck(PubAck {
            packet_id,
            reason: PubAckReasonCode::from_u8(reason).ok_or_else(invalid)?,
            properties,
        }),
        PacketType::PubRec => Packet::PubRec(PubRec {
            packet_id,
            reason: PubRecReasonCode::from_u8(reason).ok_or_else(invalid)?,
            properties,
        }),
        PacketType::PubRel => Packet::PubRel(PubRel {
            packet_id,
            reason: PubRelReasonCode::from_u8(reason).ok_or_else(invalid)?,
            properties,
        }),
        PacketType::PubComp => Packet::PubComp(PubComp {
            packet_id,
            reason: PubCompReasonCode::from_u8(reason).ok_or_else(invalid)?,
            properties,
        }),
        _ => return Err(DecodeError::Malformed("not an acknowledgement")),
    })
}
