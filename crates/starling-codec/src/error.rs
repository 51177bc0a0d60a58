//! Typed errors of the codec: [`DecodeError`] for bytes from a peer, [`EncodeError`] for packets
//! that cannot be put on the wire, [`TopicError`] for topic names and filters.
//!
//! Display messages are short and lower-case so that the broker can put them in one log line.

use thiserror::Error;

use crate::packet::ConnectReturnCode;

/// Why bytes received from a peer are not a valid MQTT 3.1 / 3.1.1 packet.
///
/// Every variant is a protocol violation after which the connection is closed, except
/// [`DecodeError::UnacceptableProtocol`] on a CONNECT, which the broker answers with CONNACK 1
/// first (see [`DecodeError::connect_return_code`]).
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
    /// Packet type 0 or 15 (reserved).
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
    /// A QoS field holds 3.
    #[error("invalid qos {0}")]
    InvalidQoS(u8),
    /// A string is not well-formed UTF-8.
    #[error("invalid utf-8 string")]
    InvalidUtf8,
    /// A string contains U+0000.
    #[error("string contains u+0000")]
    NullCharacter,
    /// CONNECT names a protocol (name, level) other than `MQTT`/4 and `MQIsdp`/3.
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
    /// A topic name (PUBLISH or will) is empty.
    #[error("empty topic name")]
    EmptyTopic,
    /// A packet identifier that must be non-zero is 0.
    #[error("packet identifier is 0")]
    ZeroPacketId,
    /// A SUBSCRIBE or UNSUBSCRIBE carries no topic filter.
    #[error("no topic filter in subscribe or unsubscribe")]
    EmptySubscription,
    /// Any other violation: wrong lengths, trailing bytes, bad CONNECT flags, bad return codes...
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

impl DecodeError {
    /// The CONNACK return code the broker sends before closing when this error comes from a
    /// CONNECT, if the protocol requires one (only [`DecodeError::UnacceptableProtocol`]: 1).
    /// For every other error the connection is closed without a CONNACK.
    pub fn connect_return_code(&self) -> Option<ConnectReturnCode> {
        match self {
            DecodeError::UnacceptableProtocol { .. } => {
                Some(ConnectReturnCode::UnacceptableProtocolVersion)
            }
            _ => None,
        }
    }
}

/// Why a packet cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The remaining length would exceed 268 435 455 bytes.
    #[error("remaining length of {0} bytes exceeds the protocol maximum")]
    PayloadTooLarge(usize),
    /// A string or length-prefixed binary field is longer than 65 535 bytes.
    #[error("field of {0} bytes exceeds 65535")]
    StringTooLong(usize),
    /// A packet identifier that must be non-zero is 0.
    #[error("packet identifier is 0")]
    ZeroPacketId,
    /// A SUBSCRIBE, UNSUBSCRIBE or SUBACK with an empty list.
    #[error("empty subscription list")]
    EmptySubscription,
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
                level: 5
            }
            .to_string(),
            "unacceptable protocol \"MQTT\" level 5"
        );
        assert_eq!(
            DecodeError::Malformed("trailing bytes").to_string(),
            "malformed packet: trailing bytes"
        );
    }

    #[test]
    fn only_unacceptable_protocol_maps_to_a_connack_code() {
        let e = DecodeError::UnacceptableProtocol {
            name: String::new(),
            level: 0,
        };
        assert_eq!(
            e.connect_return_code(),
            Some(ConnectReturnCode::UnacceptableProtocolVersion)
        );
        assert_eq!(DecodeError::InvalidUtf8.connect_return_code(), None);
    }
}
