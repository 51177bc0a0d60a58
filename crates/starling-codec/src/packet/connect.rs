//! CONNECT (3.1) with its will, and CONNACK (3.2).

use bytes::Bytes;
use bytestring::ByteString;

use super::{ProtocolVersion, QoS};
use crate::properties::{ConnAckProperties, ConnectProperties, WillProperties};
use crate::reason::ConnectReasonCode;

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
    /// Will properties (5.0; empty otherwise).
    pub properties: WillProperties,
}

impl LastWill {
    /// A will without properties.
    pub fn new(topic: ByteString, payload: Bytes, qos: QoS, retain: bool) -> LastWill {
        LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: WillProperties::default(),
        }
    }
}

/// CONNECT (client to server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version named by the packet; CONNECT is always encoded in this version.
    pub protocol: ProtocolVersion,
    /// Clean Start (5.0), the same bit as Clean Session (3.1, 3.1.1).
    pub clean_start: bool,
    /// Keep-alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// CONNECT properties (5.0; empty otherwise).
    pub properties: ConnectProperties,
    /// Client identifier; may be empty, which the broker then handles.
    pub client_id: ByteString,
    /// Will message, if the will flag is set.
    pub will: Option<LastWill>,
    /// User name, if the user-name flag is set.
    pub username: Option<ByteString>,
    /// Password (binary data), if the password flag is set. 3.1.1 forbids a password without a
    /// user name; 3.1 and 5.0 allow it.
    pub password: Option<Bytes>,
}

/// CONNACK (server to client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session-present flag (always false on the wire for 3.1).
    pub session_present: bool,
    /// Reason code; 3.1 and 3.1.1 carry it as a return code (see
    /// [`ConnectReasonCode::v3_return_code`]).
    pub code: ConnectReasonCode,
    /// CONNACK properties (5.0; empty otherwise).
    pub properties: ConnAckProperties,
}

impl ConnAck {
    /// A CONNACK without properties.
    pub fn new(session_present: bool, code: ConnectReasonCode) -> ConnAck {
        ConnAck {
            session_present,
            code,
            properties: ConnAckProperties::default(),
        }
    }
}
