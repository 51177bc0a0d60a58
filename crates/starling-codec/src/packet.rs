//! Typed MQTT control packets.
//!
//! Strings that live long (client ids, user names) and topics are [`ByteString`]s: UTF-8 checked
//! once by the decoder, then cloned by reference count. Payloads are [`Bytes`] slices of the
//! packet's own allocation, so one PUBLISH payload is shared by every subscriber without a copy.

use bytes::Bytes;
use bytestring::ByteString;

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
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
        }
    }

    /// The protocol name of CONNECT.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            ProtocolVersion::V3_1_1 => "MQTT",
        }
    }
}

/// The will message carried by CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastWill {
    /// Topic the will is published to (a valid topic name: no wildcards, not empty).
    pub topic: ByteString,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will publication.
    pub qos: QoS,
    /// Whether the will is published retained.
    pub retain: bool,
}

/// CONNECT (client to server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version named by the packet.
    pub protocol: ProtocolVersion,
    /// Clean-session flag.
    pub clean_session: bool,
    /// Keep-alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty (3.1.1), which the broker then handles.
    pub client_id: ByteString,
    /// Will message, if the will flag is set.
    pub will: Option<LastWill>,
    /// User name, if the user-name flag is set.
    pub username: Option<ByteString>,
    /// Password (binary data), if the password flag is set.
    pub password: Option<Bytes>,
}

/// CONNACK return codes of 3.1 and 3.1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    /// 0: connection accepted.
    Accepted = 0,
    /// 1: unacceptable protocol version.
    UnacceptableProtocolVersion = 1,
    /// 2: identifier rejected.
    IdentifierRejected = 2,
    /// 3: server unavailable.
    ServerUnavailable = 3,
    /// 4: bad user name or password.
    BadUserNameOrPassword = 4,
    /// 5: not authorised.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The code for a wire value, `None` above 5.
    pub fn from_u8(v: u8) -> Option<ConnectReturnCode> {
        use ConnectReturnCode::*;
        Some(match v {
            0 => Accepted,
            1 => UnacceptableProtocolVersion,
            2 => IdentifierRejected,
            3 => ServerUnavailable,
            4 => BadUserNameOrPassword,
            5 => NotAuthorized,
            _ => return None,
        })
    }
}

/// CONNACK (server to client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session-present flag (3.1.1; always false on the wire for 3.1).
    pub session_present: bool,
    /// Return code.
    pub code: ConnectReturnCode,
}

/// PUBLISH (both directions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag: this may be a redelivery.
    pub dup: bool,
    /// QoS of this transmission.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (never contains wildcards; never empty).
    pub topic: ByteString,
    /// Packet identifier; 0 exactly when `qos` is [`QoS::AtMostOnce`].
    pub packet_id: u16,
    /// Application payload.
    pub payload: Bytes,
}

/// Return code of one filter in a SUBACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscribeReturnCode {
    /// Granted at this maximum QoS.
    Success(QoS),
    /// 0x80: refused (3.1.1 only).
    Failure,
}

impl SubscribeReturnCode {
    /// The wire byte.
    pub fn as_u8(self) -> u8 {
        match self {
            SubscribeReturnCode::Success(q) => q.as_u8(),
            SubscribeReturnCode::Failure => 0x80,
        }
    }
}

/// One topic filter of a SUBSCRIBE with its requested QoS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The filter as sent; its syntax is checked by the broker with
    /// [`crate::topic::validate_filter`] so that a bad filter can get 0x80 rather than a disconnect.
    pub filter: ByteString,
    /// Requested maximum QoS.
    pub qos: QoS,
}

/// SUBSCRIBE (client to server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<SubscribeFilter>,
}

/// SUBACK (server to client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// One return code per filter, in order.
    pub return_codes: Vec<SubscribeReturnCode>,
}

/// UNSUBSCRIBE (client to server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<ByteString>,
}

/// Any MQTT 3.1 / 3.1.1 control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK with its packet id.
    PubAck(u16),
    /// PUBREC with its packet id.
    PubRec(u16),
    /// PUBREL with its packet id.
    PubRel(u16),
    /// PUBCOMP with its packet id.
    PubComp(u16),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK with its packet id.
    UnsubAck(u16),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect,
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
            Packet::Disconnect => PacketType::Disconnect,
        }
    }
}
