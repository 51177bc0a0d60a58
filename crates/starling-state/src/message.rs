//! The application message as held in memory and in the log.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use starling_codec::QoS;
use starling_proto::state::v1 as pb;

/// Fixed per-message cost counted against byte limits on top of topic and payload.
pub const MESSAGE_OVERHEAD: usize = 64;

/// Fixed cost of each property present, on top of its bytes (see [`MessageProperties::cost`]).
pub const PROPERTY_OVERHEAD: usize = 16;

/// The MQTT 5 properties of a PUBLISH that travel with the message to its subscribers
/// (MQTT 5 §3.3.2.3). The Message Expiry Interval is [`Message::expires_at_ms`]; Topic Alias
/// and Subscription Identifier belong to one connection's delivery, not to the message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Payload Format Indicator: the payload is UTF-8.
    pub payload_format_indicator: bool,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<String>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User Properties (key, value), in the order received; keys may repeat.
    pub user_properties: Vec<(String, String)>,
}

impl MessageProperties {
    /// Bytes these properties count for against queue limits.
    pub fn cost(&self) -> usize {
        let strings = [self.content_type.as_deref(), self.response_topic.as_deref()]
            .into_iter()
            .flatten()
            .map(|s| s.len() + PROPERTY_OVERHEAD)
            .sum::<usize>();
        let correlation = self
            .correlation_data
            .as_ref()
            .map_or(0, |d| d.len() + PROPERTY_OVERHEAD);
        let user = self
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + PROPERTY_OVERHEAD)
            .sum::<usize>();
        strings + correlation + user
    }

    /// Bytes these properties take in a PUBLISH packet (identifier byte and value each).
    pub fn wire_len(&self) -> usize {
        let string = |s: &Option<String>| s.as_ref().map_or(0, |s| 1 + 2 + s.len());
        usize::from(self.payload_format_indicator) * 2
            + string(&self.content_type)
            + string(&self.response_topic)
            + self
                .correlation_data
                .as_ref()
                .map_or(0, |d| 1 + 2 + d.len())
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
                .sum::<usize>()
    }

    /// Converts from the log encoding.
    pub fn from_pb(p: pb::MessageProperties) -> MessageProperties {
        MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p
                .user_properties
                .into_iter()
                .map(|u| (u.key, u.value))
                .collect(),
        }
    }

    /// Converts to the log encoding.
    pub fn to_pb(&self) -> pb::MessageProperties {
        pb::MessageProperties {
            payload_format_indicator: self.payload_format_indicator,
            content_type: self.content_type.clone(),
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone(),
            user_properties: self
                .user_properties
                .iter()
                .map(|(key, value)| pb::UserProperty {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }
}

/// An application message. Clones share the topic, payload and properties allocations.
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
    /// MQTT 5 properties; `None` for messages published with 3.1 / 3.1.1 (no cost for them).
    pub properties: Option<Arc<MessageProperties>>,
    /// When it expires, in log time (ms since the Unix epoch); 0: never. Absolute, so that it
    /// means the same on every node and after any time in a queue: the remaining interval a
    /// delivery carries is computed from it when it is sent.
    pub expires_at_ms: u64,
    /// Client id of the publisher (for No Local); empty when not known.
    pub publisher: ByteString,
}

impl Default for Message {
    /// An empty QoS 0 message on an empty topic (for struct update syntax).
    fn default() -> Self {
        Message {
            topic: ByteString::new(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            expires_at_ms: 0,
            publisher: ByteString::new(),
        }
    }
}

impl Message {
    /// A message without properties, expiry or publisher (what MQTT 3.1.1 publishes).
    pub fn new(topic: ByteString, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            ..Message::default()
        }
    }

    /// Bytes this message counts for against queue limits.
    pub fn cost(&self) -> usize {
        self.topic.len()
            + self.payload.len()
            + MESSAGE_OVERHEAD
            + self.properties.as_ref().map_or(0, |p| p.cost())
    }

    /// Whether it has expired at `now_ms` (log time).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    /// The same message at another QoS and RETAIN flag (everything else shared).
    pub fn with(&self, qos: QoS, retain: bool) -> Message {
        Message {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos,
            retain,
            properties: self.properties.clone(),
            expires_at_ms: self.expires_at_ms,
            publisher: self.publisher.clone(),
        }
    }

    /// Converts from the log encoding. Out-of-range QoS values are clamped to 2.
    pub fn from_pb(m: pb::AppMessage) -> Message {
        Message {
            topic: ByteString::from(m.topic),
            payload: m.payload,
            qos: QoS::from_u8(m.qos.min(2) as u8).unwrap_or(QoS::ExactlyOnce),
            retain: m.retain,
            properties: m
                .properties
                .map(|p| Arc::new(MessageProperties::from_pb(p))),
            expires_at_ms: m.expires_at_ms,
            publisher: ByteString::from(m.publisher),
        }
    }

    /// Converts to the log encoding.
    pub fn to_pb(&self) -> pb::AppMessage {
        pb::AppMessage {
            topic: self.topic.to_string(),
            payload: self.payload.clone(),
            qos: u32::from(self.qos.as_u8()),
            retain: self.retain,
            properties: self.properties.as_ref().map(|p| p.to_pb()),
            expires_at_ms: self.expires_at_ms,
            publisher: self.publisher.to_string(),
        }
    }
}

/// Bytes of a Variable Byte Integer holding `n`.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The size of the MQTT 5 PUBLISH packet that delivers `message` with `subscription_ids`: fixed
/// header, topic name, packet id (QoS 1/2), properties (those of the message, a Message Expiry
/// Interval if it expires, one Subscription Identifier per id) and payload. No Topic Alias is
/// assumed, so this is the most the delivery can take; what a session's Maximum Packet Size is
/// checked against.
pub fn publish_packet_size(message: &Message, subscription_ids: &[u32]) -> usize {
    let properties = message.properties.as_ref().map_or(0, |p| p.wire_len())
        + if message.expires_at_ms != 0 { 1 + 4 } else { 0 }
        + subscription_ids
            .iter()
            .map(|id| 1 + varint_len(*id as usize))
            .sum::<usize>();
    let packet_id = if message.qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2
        + message.topic.len()
        + packet_id
        + varint_len(properties)
        + properties
        + message.payload.len();
    1 + varint_len(remaining) + remaining
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_message_is_what_3_1_1_sends_plus_an_empty_property_length() {
        let m = Message::new(
            "a/b".into(),
            Bytes::from_static(b"hello"),
            QoS::AtMostOnce,
            false,
        );
        // 1 fixed header + 1 remaining length + (2 + 3 topic + 1 property length + 5 payload)
        assert_eq!(publish_packet_size(&m, &[]), 13);
        let m = m.with(QoS::AtLeastOnce, false);
        assert_eq!(publish_packet_size(&m, &[]), 15, "packet id");
    }

    #[test]
    fn properties_expiry_and_subscription_ids_count_as_on_the_wire() {
        let props = MessageProperties {
            payload_format_indicator: true,                    // 2
            content_type: Some("text/plain".into()),           // 1 + 2 + 10
            response_topic: Some("r".into()),                  // 1 + 2 + 1
            correlation_data: Some(Bytes::from_static(b"id")), // 1 + 2 + 2
            user_properties: vec![("k".into(), "vv".into())],  // 1 + 2 + 1 + 2 + 2
        };
        assert_eq!(props.wire_len(), 2 + 13 + 4 + 5 + 8);
        let m = Message {
            properties: Some(Arc::new(props)),
            expires_at_ms: 5_000, // Message Expiry Interval: 1 + 4
            ..Message::new(
                "t".into(),
                Bytes::from(vec![0u8; 200]),
                QoS::ExactlyOnce,
                true,
            )
        };
        // Subscription Identifiers 1 (1 + 1) and 300 (1 + 2).
        let properties = 32 + 5 + 2 + 3;
        let remaining = 2 + 1 + 2 + 1 + properties + 200;
        assert_eq!(remaining, 248);
        assert_eq!(publish_packet_size(&m, &[1, 300]), 1 + 2 + remaining);
    }

    #[test]
    fn varints_grow_at_their_boundaries() {
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
        assert_eq!(varint_len(2_097_152), 4);
    }

    #[test]
    fn properties_cost_and_round_trip_through_the_log_encoding() {
        let plain = Message::new(
            "t".into(),
            Bytes::from_static(b"p"),
            QoS::AtLeastOnce,
            false,
        );
        assert_eq!(plain.cost(), 1 + 1 + MESSAGE_OVERHEAD);
        let m = Message {
            properties: Some(Arc::new(MessageProperties {
                content_type: Some("json".into()),
                user_properties: vec![("a".into(), "b".into()), ("a".into(), "c".into())],
                ..MessageProperties::default()
            })),
            expires_at_ms: 9,
            publisher: "me".into(),
            ..plain.clone()
        };
        assert_eq!(m.cost(), plain.cost() + (4 + 16) + 2 * (2 + 16));
        assert_eq!(Message::from_pb(m.to_pb()), m);
        assert_eq!(Message::from_pb(plain.to_pb()), plain);
        assert!(m.is_expired(9) && !m.is_expired(8) && !plain.is_expired(u64::MAX));
    }
}
