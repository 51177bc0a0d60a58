//! SUBSCRIBE (3.8), SUBACK (3.9), UNSUBSCRIBE (3.10) and UNSUBACK (3.11).
//!
//! Topic filters are not syntax-checked here: the broker answers a bad filter with a failure
//! code rather than a disconnect. What is checked: the subscription options (5.0: reserved bits
//! 6-7 make the packet malformed, Maximum QoS 3 and Retain Handling 3 are protocol errors, and so
//! is No Local on a shared subscription), at least one filter, at least one reason code.

use super::reader::Reader;
use super::{nonzero_packet_id, Rules};
use crate::error::DecodeError;
use crate::packet::{
    Packet, QoS, RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
use crate::properties::{read_block, AckProperties, SubscribeProperties, UnsubscribeProperties};
use crate::reason::{SubAckReasonCode, UnsubAckReasonCode};
use crate::topic;

pub(super) fn subscribe(mut r: Reader, rules: Rules) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties: SubscribeProperties = if rules.v5() {
        read_block(&mut r)?
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("truncated topic filter")?;
        let options = r.u8("missing subscription options")?;
        let options = if rules.v5() {
            options_v5(options, &filter)?
        } else {
            options_v3(options, rules.strict())?
        };
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

/// 3.1 / 3.1.1: the requested QoS; the other bits are reserved (ignored for 3.1).
fn options_v3(options: u8, strict: bool) -> Result<SubscriptionOptions, DecodeError> {
    let qos_bits = options & 0b11;
    let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::InvalidQoS(qos_bits))?;
    if strict && options & 0xFC != 0 {
        return Err(DecodeError::Malformed("reserved bits set in requested qos"));
    }
    Ok(SubscriptionOptions::new(qos))
}

/// 5.0 (3.8.3.1): QoS, No Local, Retain As Published, Retain Handling; bits 6-7 reserved.
fn options_v5(options: u8, filter: &str) -> Result<SubscriptionOptions, DecodeError> {
    if options & 0xC0 != 0 {
        return Err(DecodeError::Malformed(
            "reserved bits set in subscription options",
        ));
    }
    let qos = QoS::from_u8(options & 0b11);
    let retain_handling = RetainHandling::from_u8((options >> 4) & 0b11);
    let (Some(qos), Some(retain_handling)) = (qos, retain_handling) else {
        return Err(DecodeError::InvalidSubscriptionOptions(options));
    };
    let no_local = options & 0x04 != 0;
    // [MQTT-3.8.3-4]: whatever the rest of the filter, the subscription is a shared one.
    if no_local && topic::is_shared(filter) {
        return Err(DecodeError::NoLocalOnSharedSubscription);
    }
    Ok(SubscriptionOptions {
        qos,
        no_local,
        retain_as_published: options & 0x08 != 0,
        retain_handling,
    })
}

/// A 3.1 / 3.1.1 SUBACK: packet identifier and return codes (0, 1, 2 or 0x80), read in place.
pub(super) fn suback_v3(body: &[u8]) -> Result<Packet, DecodeError> {
    let [hi, lo, codes @ ..] = body else {
        return Err(DecodeError::Malformed("missing packet identifier"));
    };
    let packet_id = nonzero_packet_id([*hi, *lo])?;
    if codes.is_empty() {
        return Err(DecodeError::Malformed("suback without return codes"));
    }
    let reason_codes = codes
        .iter()
        .map(|&c| match c {
            0x00..=0x02 | 0x80 => SubAckReasonCode::from_u8(c)
                .ok_or(DecodeError::Malformed("invalid suback return code")),
            _ => Err(DecodeError::Malformed("invalid suback return code")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Packet::SubAck(SubAck {
        packet_id,
        properties: AckProperties::default(),
        reason_codes,
    }))
}

/// A 5.0 SUBACK: packet identifier, properties, reason codes.
pub(super) fn suback_v5(mut r: Reader) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties: AckProperties = read_block(&mut r)?;
    let reason_codes = reason_codes(r, 9, SubAckReasonCode::from_u8)?;
    Ok(SubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

pub(super) fn unsubscribe(mut r: Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties: UnsubscribeProperties = if v5 {
        read_block(&mut r)?
    } else {
        UnsubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("truncated topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

/// A 5.0 UNSUBACK: packet identifier, properties, reason codes.
pub(super) fn unsuback_v5(mut r: Reader) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties: AckProperties = read_block(&mut r)?;
    let reason_codes = reason_codes(r, 11, UnsubAckReasonCode::from_u8)?;
    Ok(UnsubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

/// The rest of a SUBACK / UNSUBACK: one reason code per byte, at least one.
fn reason_codes<T>(
    r: Reader,
    packet_type: u8,
    from_u8: fn(u8) -> Option<T>,
) -> Result<Vec<T>, DecodeError> {
    let codes = r.rest();
    if codes.is_empty() {
        return Err(DecodeError::ProtocolError("no reason codes"));
    }
    codes
        .iter()
        .map(|&code| from_u8(code).ok_or(DecodeError::InvalidReasonCode { packet_type, code }))
        .collect()
}
