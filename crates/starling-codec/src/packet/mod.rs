//! Typed MQTT control packets of 3.1, 3.1.1 and 5.0.
//!
//! One struct per packet, the same for every version: a 3.1 / 3.1.1 packet is the 5.0 packet
//! with empty properties and success reason codes, and what a version cannot carry is left out
//! when encoding for it (see [`crate::encode`]). The families live in submodules:
//!
//! | Module | Packets |
//! |---|---|
//! | `connect` | [`Connect`] (with [`LastWill`]), [`ConnAck`] |
//! | `publish` | [`Publish`] |
//! | `ack` | [`PubAck`], [`PubRec`], [`PubRel`], [`PubComp`] |
//! | `subscribe` | [`Subscribe`], [`SubAck`], [`Unsubscribe`], [`UnsubAck`] |
//! | `disconnect` | [`Disconnect`] |
//! | `auth` | [`Auth`] (5.0 only) |
//!
//! Strings that live long (client ids, user names) and topics are [`ByteString`]s: UTF-8 checked
//! once by the decoder, then cloned by reference count. Payloads are [`Bytes`] slices of the
//! packet's own allocation, so one PUBLISH payload is shared by every subscriber without a copy.
//!
//! [`ByteString`]: bytestring::ByteString
//! [`Bytes`]: bytes::Bytes

mod ack;
mod auth;
mod connect;
mod disconnect;
mod publish;
mod subscribe;

pub use ack::{PubAck, PubComp, PubRec, PubRel};
pub use auth::Auth;
pub use connect::{ConnAck, Connect, LastWill};
pub use disconnect::Disconnect;
pub use publish::Publish;
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, UnsubAck, Unsubscribe,
};

/// The largest remaining length the 4-byte variable-length encoding can express (256 MiB - 1).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Quality of service of a PUBLISH or a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum QoS {
    /// QoS 0: at most once.
    AtMostOnce = 0,
    /// QoS 1: at least once (PUBACK).
    AtLeastOnce = 1,
    /// QoS 2: exactly once (PUBREC, PUBREL, PUBCOMP).
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value, `None` for 3 and above.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The protocol spoken on a connection, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The protocol name of CONNECT.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
        }
    }

    /// Whether this is MQTT 5.0 (properties and reason codes on the wire).
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Any MQTT control packet.
///
/// PUBLISH is kept inline (it is the packet of the hot path); CONNECT and CONNACK, large and
/// once per connection, are boxed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(Box<ConnAck>),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubAck),
    /// PUBREC.
    PubRec(PubRec),
    /// PUBREL.
    PubRel(PubRel),
    /// PUBCOMP.
    PubComp(PubComp),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (5.0 only).
    Auth(Auth),
}

/// The control-packet type, the high nibble of the first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// 1
    Connect = 1,
    /// 2
    ConnAck = 2,
    /// 3
    Publish = 3,
    /// 4
    PubAck = 4,
    /// 5
    PubRec = 5,
    /// 6
    PubRel = 6,
    /// 7
    PubComp = 7,
    /// 8
    Subscribe = 8,
    /// 9
    SubAck = 9,
    /// 10
    Unsubscribe = 10,
    /// 11
    UnsubAck = 11,
    /// 12
    PingReq = 12,
    /// 13
    PingResp = 13,
    /// 14
    Disconnect = 14,
    /// 15 (5.0 only; reserved in 3.1 and 3.1.1)
    Auth = 15,
}

impl PacketType {
    /// The type for the high nibble of a first byte, `None` for the reserved 0 (and above 15).
    pub fn from_u8(nibble: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match nibble {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The packet's name as the standard writes it (`"PUBACK"`).
    pub fn name(self) -> &'static str {
        use PacketType::*;
        match self {
            Connect => "CONNECT",
            ConnAck => "CONNACK",
            Publish => "PUBLISH",
            PubAck => "PUBACK",
            PubRec => "PUBREC",
            PubRel => "PUBREL",
            PubComp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            SubAck => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            UnsubAck => "UNSUBACK",
            PingReq => "PINGREQ",
            PingResp => "PINGRESP",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }
}

impl Packet {
    /// The type of this packet.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_type_nibbles_round_trip() {
        for n in 0..=u8::MAX {
            match PacketType::from_u8(n) {
                Some(t) => assert_eq!(t as u8, n),
                None => assert!(n == 0 || n > 15),
            }
        }
    }

    #[test]
    fn protocol_versions_name_and_level() {
        assert_eq!(
            (ProtocolVersion::V3_1.name(), ProtocolVersion::V3_1.level()),
            ("MQIsdp", 3)
        );
        assert_eq!(
            (
                ProtocolVersion::V3_1_1.name(),
                ProtocolVersion::V3_1_1.level()
            ),
            ("MQTT", 4)
        );
        assert_eq!(
            (ProtocolVersion::V5.name(), ProtocolVersion::V5.level()),
            ("MQTT", 5)
        );
        assert!(ProtocolVersion::V5.is_v5() && !ProtocolVersion::V3_1_1.is_v5());
    }

    #[test]
    fn the_packet_enum_stays_small() {
        // PUBLISH is the largest inline variant; everything else fits beside it.
        assert!(std::mem::size_of::<Packet>() <= std::mem::size_of::<Publish>() + 8);
    }
}
