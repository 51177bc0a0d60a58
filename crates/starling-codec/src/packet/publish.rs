//! PUBLISH (3.3).

use bytes::Bytes;
use bytestring::ByteString;

use super::QoS;
use crate::properties::PublishProperties;

/// PUBLISH (both directions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag: this may be a redelivery.
    pub dup: bool,
    /// QoS of this transmission.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (never contains wildcards). Never empty, except in 5.0 when the properties
    /// carry a Topic Alias standing for the topic.
    pub topic: ByteString,
    /// Packet identifier; 0 exactly when `qos` is [`QoS::AtMostOnce`].
    pub packet_id: u16,
    /// PUBLISH properties (5.0; empty otherwise).
    pub properties: PublishProperties,
    /// Application payload.
    pub payload: Bytes,
}
