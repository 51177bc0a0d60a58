//! Typed errors of the codec: [`DecodeError`] for bytes from a peer, [`EncodeError`] for packets
//! that cannot be put on the wire, [`TopicError`] for topic names and filters.
//!
//! Display messages are short and lower-case so that the broker can put them in one log line.
//! Every [`DecodeError`] names, through [`DecodeError::reason_code`], the MQTT 5.0 reason code the
//! broker sends before closing a 5.0 connection (section 4.13).

use thiserror::Error;

use crate::reason::{ConnectReasonCode, DisconnectReasonCode};

/// Why bytes received from a peer are not a valid MQTT packet.
///
/// Every variant is a protocol violation after which the connection is closed, except
/// [`DecodeError::UnacceptableProtocol`] on a CONNECT, which the broker answers with CONNACK 1
/// (0x84 in 5.0) first (see [`DecodeError::connect_return_code`]). A 5.0 peer is told why with
/// [`DecodeError::reason_code`] in a CONNACK (if the error came from its CONNECT) or a
/// DISCONNECT.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The remaining-length field is longer than 4 bytes.
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// The packet (fixed header + remaining length) is larger than the configured maximum.
    #[error("packet of {size} bytes exceeds maximum {max}")]
    PacketTooLarge {
        /// Announced total size of the packet in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// Packet type 0 (reserved), or 15 (AUTH) on a connection that is not 5.0.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// The fixed-header flags are not the ones the packet type requires.
    #[error("invalid flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags {
        /// The packet type (high nibble of the first byte).
        packet_type: u8,
        /// The flags (low nibble of the first byte).
        flags: u8,
    },
    /// A QoS field holds 3 (PUBLISH, will, or a 3.1 / 3.1.1 SUBSCRIBE).
    #[error("invalid qos {0}")]
    InvalidQoS(u8),
    /// A string is not well-formed UTF-8.
    #[error("invalid utf-8 string")]
    InvalidUtf8,
    /// A string contains U+0000.
    #[error("string contains u+0000")]
    NullCharacter,
    /// CONNECT names a protocol (name, level) other than `MQTT`/5, `MQTT`/4 and `MQIsdp`/3 (or
    /// `MQTT`/5 to a decoder that does not accept 5.0).
    #[error("unacceptable protocol {name:?} level {level}")]
    UnacceptableProtocol {
        /// The protocol name, lossily decoded and truncated to 16 characters.
        name: String,
        /// The protocol level.
        level: u8,
    },
    /// A topic name (PUBLISH or will) contains `+` or `#`.
    #[error("wildcard in topic name")]
    WildcardInTopic,
    /// A topic name (PUBLISH or will) is empty (in 5.0 a PUBLISH may have an empty topic only
    /// with a Topic Alias).
    #[error("empty topic name")]
    EmptyTopic,
    /// A packet identifier that must be non-zero is 0.
    #[error("packet identifier is 0")]
    ZeroPacketId,
    /// A SUBSCRIBE or UNSUBSCRIBE carries no topic filter.
    #[error("no topic filter in subscribe or unsubscribe")]
    EmptySubscription,
    /// Any other malformed packet: wrong lengths, trailing bytes, bad CONNECT flags, bad return
    /// codes of 3.1.1...
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A Variable Byte Integer inside the packet (property length, subscription identifier)
    /// is longer than 4 bytes.
    #[error("malformed variable byte integer")]
    MalformedVariableByteInteger,
    /// A property the packet may not carry, or an identifier the standard does not define.
    #[error("property {id:#04x} not allowed in {context} properties")]
    PropertyNotAllowed {
        /// The property identifier as read.
        id: u32,
        /// Where it appeared (`"CONNECT"`, `"will"`, `"PUBLISH"`, `"acknowledgement"`...).
        context: &'static str,
    },
    /// A property that may appear once appears twice.
    #[error("property {0:#04x} appears twice")]
    DuplicateProperty(u8),
    /// A property value the standard does not allow (Receive Maximum 0, a boolean other than 0
    /// or 1, Subscription Identifier 0...).
    #[error("invalid value of property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// A PUBLISH carries Topic Alias 0.
    #[error("topic alias 0")]
    InvalidTopicAlias,
    /// A reason code the packet cannot carry.
    #[error("invalid reason code {code:#04x} for packet type {packet_type}")]
    InvalidReasonCode {
        /// The packet type.
        packet_type: u8,
        /// The reason code as read.
        code: u8,
    },
    /// 5.0 subscription options with Maximum QoS 3 or Retain Handling 3.
    #[error("invalid subscription options {0:#04x}")]
    InvalidSubscriptionOptions(u8),
    /// No Local set on a shared subscription (`$share/...`).
    #[error("no local on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// Any other protocol error of 5.0: will QoS or retain without the will flag, Authentication
    /// Data without Authentication Method...
    #[error("protocol error: {0}")]
    ProtocolError(&'static str),
}

impl DecodeError {
    /// The CONNACK return code the broker sends before closing when this error comes from a
    /// 3.1 / 3.1.1 CONNECT, if the protocol requires one (only
    /// [`DecodeError::UnacceptableProtocol`]: 0x84, written as return code 1). For every other
    /// error a 3.1 / 3.1.1 connection is closed without a CONNACK.
    pub fn connect_return_code(&self) -> Option<ConnectReasonCode> {
        match self {
            DecodeError::UnacceptableProtocol { .. } => {
                Some(ConnectReasonCode::UnsupportedProtocolVersion)
            }
            _ => None,
        }
    }

    /// The MQTT 5.0 reason code for this error (4.13): what a CONNACK (for an error in CONNECT)
    /// or a DISCONNECT (for any other packet) sent before closing says.
    ///
    /// 0x81 Malformed Packet, 0x82 Protocol Error, 0x84 Unsupported Protocol Version (CONNECT
    /// only), 0x90 Topic Name invalid, 0x94 Topic Alias invalid (PUBLISH only), 0x95 Packet too
    /// large. Every value is in the CONNACK table for the errors a CONNECT can produce and in the
    /// DISCONNECT table for the others; [`DecodeError::connack_reason_code`] and
    /// [`DecodeError::disconnect_reason_code`] give it typed.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::MalformedRemainingLength
            | DecodeError::InvalidPacketType(_)
            | DecodeError::InvalidFlags { .. }
            | DecodeError::InvalidQoS(_)
            | DecodeError::InvalidUtf8
            | DecodeError::NullCharacter
            | DecodeError::Malformed(_)
            | DecodeError::MalformedVariableByteInteger
            | DecodeError::PropertyNotAllowed { .. } => 0x81,
            DecodeError::EmptyTopic
            | DecodeError::ZeroPacketId
            | DecodeError::EmptySubscription
            | DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::InvalidReasonCode { .. }
            | DecodeError::InvalidSubscriptionOptions(_)
            | DecodeError::NoLocalOnSharedSubscription
            | DecodeError::ProtocolError(_) => 0x82,
            DecodeError::UnacceptableProtocol { .. } => 0x84,
            DecodeError::WildcardInTopic => 0x90,
            DecodeError::InvalidTopicAlias => 0x94,
            DecodeError::PacketTooLarge { .. } => 0x95,
        }
    }

    /// [`DecodeError::reason_code`] as a CONNACK reason code (for errors in a CONNECT).
    pub fn connack_reason_code(&self) -> ConnectReasonCode {
        ConnectReasonCode::from_u8(self.reason_code())
            .unwrap_or(ConnectReasonCode::UnspecifiedError)
    }

    /// [`DecodeError::reason_code`] as a DISCONNECT reason code (for errors after CONNECT).
    pub fn disconnect_reason_code(&self) -> DisconnectReasonCode {
        DisconnectReasonCode::from_u8(self.reason_code())
            .unwrap_or(DisconnectReasonCode::ProtocolError)
    }
}

/// Why a packet cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The remaining length (or a property block) would exceed 268 435 455 bytes.
    #[error("remaining length of {0} bytes exceeds the protocol maximum")]
    PayloadTooLarge(usize),
    /// A string or length-prefixed binary field is longer than 65 535 bytes.
    #[error("field of {0} bytes exceeds 65535")]
    StringTooLong(usize),
    /// A packet identifier that must be non-zero is 0.
    #[error("packet identifier is 0")]
    ZeroPacketId,
    /// A SUBSCRIBE, UNSUBSCRIBE, SUBACK (or 5.0 UNSUBACK) with an empty list.
    #[error("empty subscription list")]
    EmptySubscription,
    /// A property value the wire format cannot carry (a Subscription Identifier above
    /// 268 435 455, Maximum QoS 2).
    #[error("value of property {0:#04x} cannot be encoded")]
    InvalidProperty(u8),
    /// The packet type does not exist in the protocol version (AUTH before 5.0).
    #[error("packet type {0} does not exist in this protocol version")]
    NotInProtocol(u8),
}

/// Why a string is not a valid topic name or topic filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum TopicError {
    /// The topic or filter is empty.
    #[error("empty topic")]
    Empty,
    /// The topic or filter is longer than 65 535 bytes.
    #[error("topic longer than 65535 bytes")]
    TooLong,
    /// The topic or filter contains U+0000.
    #[error("topic contains u+0000")]
    NullCharacter,
    /// A topic name contains `+` or `#`.
    #[error("wildcard in topic name")]
    WildcardInName,
    /// A filter uses `+` or `#` other than as a whole level, or `#` other than as the last level.
    #[error("invalid wildcard in topic filter")]
    InvalidWildcard,
    /// A shared subscription `$share/<group>/<filter>` with an empty group, a group containing
    /// `+`, `#` or `/`, or no filter.
    #[error("invalid shared subscription")]
    InvalidSharedSubscription,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_messages_are_short_and_lower_case() {
        assert_eq!(
            DecodeError::MalformedRemainingLength.to_string(),
            "malformed remaining length"
        );
        assert_eq!(
            DecodeError::PacketTooLarge {
                size: 300_000,
                max: 262_144
            }
            .to_string(),
            "packet of 300000 bytes exceeds maximum 262144"
        );
        assert_eq!(
            DecodeError::InvalidFlags {
                packet_type: 8,
                flags: 0
            }
            .to_string(),
            "invalid flags 0b0000 for packet type 8"
        );
        assert_eq!(
            DecodeError::UnacceptableProtocol {
                name: "MQTT".into(),
                level: 6
            }
            .to_string(),
            "unacceptable protocol \"MQTT\" level 6"
        );
        assert_eq!(
            DecodeError::Malformed("trailing bytes").to_string(),
            "malformed packet: trailing bytes"
        );
        assert_eq!(
            DecodeError::PropertyNotAllowed {
                id: 0x23,
                context: "SUBSCRIBE"
            }
            .to_string(),
            "property 0x23 not allowed in SUBSCRIBE properties"
        );
        assert_eq!(
            DecodeError::DuplicateProperty(0x1F).to_string(),
            "property 0x1f appears twice"
        );
        assert_eq!(
            DecodeError::InvalidReasonCode {
                packet_type: 4,
                code: 0x92
            }
            .to_string(),
            "invalid reason code 0x92 for packet type 4"
        );
    }

    #[test]
    fn only_unacceptable_protocol_maps_to_a_connack_return_code() {
        let e = DecodeError::UnacceptableProtocol {
            name: String::new(),
            level: 0,
        };
        assert_eq!(
            e.connect_return_code(),
            Some(ConnectReasonCode::UnsupportedProtocolVersion)
        );
        assert_eq!(
            e.connect_return_code()
                .map(ConnectReasonCode::v3_return_code),
            Some(1)
        );
        assert_eq!(DecodeError::InvalidUtf8.connect_return_code(), None);
    }

    #[test]
    fn reason_codes_follow_the_standard() {
        let table = [
            (DecodeError::MalformedRemainingLength, 0x81),
            (DecodeError::InvalidQoS(3), 0x81),
            (DecodeError::InvalidUtf8, 0x81),
            (DecodeError::Malformed("x"), 0x81),
            (DecodeError::MalformedVariableByteInteger, 0x81),
            (
                DecodeError::PropertyNotAllowed {
                    id: 1,
                    context: "x",
                },
                0x81,
            ),
            (DecodeError::DuplicateProperty(1), 0x82),
            (DecodeError::InvalidPropertyValue(1), 0x82),
            (DecodeError::ProtocolError("x"), 0x82),
            (DecodeError::InvalidSubscriptionOptions(3), 0x82),
            (DecodeError::NoLocalOnSharedSubscription, 0x82),
            (
                DecodeError::UnacceptableProtocol {
                    name: String::new(),
                    level: 6,
                },
                0x84,
            ),
            (DecodeError::WildcardInTopic, 0x90),
            (DecodeError::InvalidTopicAlias, 0x94),
            (DecodeError::PacketTooLarge { size: 2, max: 1 }, 0x95),
        ];
        for (e, code) in table {
            assert_eq!(e.reason_code(), code, "{e:?}");
        }
    }

    #[test]
    fn typed_reason_codes_exist_in_their_tables() {
        // What a CONNECT can produce is in the CONNACK table...
        for e in [
            DecodeError::Malformed("x"),
            DecodeError::ProtocolError("x"),
            DecodeError::WildcardInTopic,
            DecodeError::PacketTooLarge { size: 2, max: 1 },
            DecodeError::UnacceptableProtocol {
                name: String::new(),
                level: 6,
            },
        ] {
            assert_eq!(e.connack_reason_code().as_u8(), e.reason_code(), "{e:?}");
        }
        // ... and every other error is in the DISCONNECT table.
        for e in [
            DecodeError::Malformed("x"),
            DecodeError::ProtocolError("x"),
            DecodeError::WildcardInTopic,
            DecodeError::InvalidTopicAlias,
            DecodeError::PacketTooLarge { size: 2, max: 1 },
        ] {
            assert_eq!(e.disconnect_reason_code().as_u8(), e.reason_code(), "{e:?}");
        }
    }
}
