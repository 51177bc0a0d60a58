//! The application message as held in memory and in the log.

use bytes::Bytes;
use bytestring::ByteString;
use starling_codec::QoS;
use starling_proto::state::v1 as pb;

/// Fixed per-message cost counted against byte limits on top of topic and payload.
pub const MESSAGE_OVERHEAD: usize = 64;

/// An application message. Clones share the topic and payload allocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: ByteString,
    /// Payload.
    pub payload: Bytes,
    /// QoS it is published (or to be delivered) at.
    pub qos: QoS,
    /// RETAIN flag as it is to be sent.
    pub retain: bool,
}

impl Message {
    /// Bytes this message counts for against queue limits.
    pub fn cost(&self) -> usize {
        self.topic.len() + self.payload.len() + MESSAGE_OVERHEAD
    }

    /// The same message at another QoS and RETAIN flag (payload and topic shared).
    pub fn with(&self, qos: QoS, retain: bool) -> Message {
        Message {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos,
            retain,
        }
    }

    /// Converts from the log encoding. Out-of-range QoS values are clamped to 2.
    pub fn from_pb(m: pb::AppMessage) -> Message {
        Message {
            topic: ByteString::from(m.topic),
            payload: m.payload,
            qos: QoS::from_u8(m.qos.min(2) as u8).unwrap_or(QoS::ExactlyOnce),
            retain: m.retain,
        }
    }

    /// Converts to the log encoding.
    pub fn to_pb(&self) -> pb::AppMessage {
        pb::AppMessage {
            topic: self.topic.to_string(),
            payload: self.payload.clone(),
            qos: u32::from(self.qos.as_u8()),
            retain: self.retain,
        }
    }
}
