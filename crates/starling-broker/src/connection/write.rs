//! Packet writers: everything the connection sends is encoded into its write buffer here, with
//! the Mosquitto-format debug line of each packet (and of each acknowledgement received).
//!
//! `#[PerformanceCriticalPath]`: [`Connection::write_publish`] runs per delivery.

use bytestring::ByteString;
use starling_codec::encode::{encode_ack, encode_publish, encode_publish_v5, PublishV5};
use starling_codec::{
    ConnAck, ConnectReasonCode, Packet, PacketType, PayloadFormat, ProtocolVersion, PubAck,
    PubAckReasonCode, PubRec, PubRecReasonCode, PublishProperties,
};
use starling_state::{Message as AppMessage, MessageProperties};
use tracing::debug;

use super::{AckNote, Connection, Outgoing, Phase, MQTT_LOG};
use crate::messages::AckKind;
use crate::metrics::Counters;

/// The property block of a PUBLISH whose message carries none.
static NO_PROPERTIES: PublishProperties = PublishProperties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    topic_alias: None,
    response_topic: None,
    correlation_data: None,
    user_properties: Vec::new(),
    subscription_identifiers: Vec::new(),
    content_type: None,
};

/// The PUBLISH properties that carry a message's own properties.
fn publish_properties(p: &MessageProperties) -> PublishProperties {
    PublishProperties {
        payload_format_indicator: p.payload_format_indicator.then_some(PayloadFormat::Utf8),
        content_type: p.content_type.as_deref().map(ByteString::from),
        response_topic: p.response_topic.as_deref().map(ByteString::from),
        correlation_data: p.correlation_data.clone(),
        user_properties: p
            .user_properties
            .iter()
            .map(|(k, v)| (ByteString::from(k.as_str()), ByteString::from(v.as_str())))
            .collect(),
        ..PublishProperties::default()
    }
}

/// The packet type of an acknowledgement.
fn ack_type(kind: AckKind) -> PacketType {
    match kind {
        AckKind::PubAck => PacketType::PubAck,
        AckKind::PubRec => PacketType::PubRec,
        AckKind::PubComp => PacketType::PubComp,
    }
}

impl Connection {
    /// Encodes any packet (while closing, only CONNACK).
    pub(super) fn write_packet(&mut self, packet: &Packet) {
        if self.phase == Phase::Closing && !matches!(packet, Packet::ConnAck(_)) {
            return;
        }
        if packet.encode(self.protocol(), &mut self.wbuf).is_ok() {
            Counters::add(&self.worker.counters.packets_sent, 1);
            self.wake();
        }
    }

    /// CONNACK, with its Mosquitto line.
    pub(super) fn write_connack(
        &mut self,
        session_present: bool,
        code: ConnectReasonCode,
        name: &str,
    ) {
        debug!(target: MQTT_LOG, client_id = %name, "Sending CONNACK to {name} ({})", code.v3_return_code());
        self.write_packet(&Packet::ConnAck(Box::new(ConnAck::new(
            session_present,
            code,
        ))));
    }

    /// The protocol the connection speaks, for encoding: its CONNECT's, or 3.1.1 before it (a
    /// refusal of an unknown protocol is a 3.1.1 CONNACK).
    pub(super) fn protocol(&self) -> ProtocolVersion {
        self.decoder.protocol().unwrap_or(ProtocolVersion::V3_1_1)
    }

    /// PUBACK / PUBREC / PUBREL / PUBCOMP / UNSUBACK, with its Mosquitto line.
    pub(super) fn write_ack(&mut self, kind: PacketType, packet_id: u16) {
        if self.phase == Phase::Closing {
            return;
        }
        encode_ack(&mut self.wbuf, kind, packet_id);
        Counters::add(&self.worker.counters.packets_sent, 1);
        if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
            let name = self.name();
            let what = match kind {
                PacketType::PubAck => "PUBACK",
                PacketType::PubRec => "PUBREC",
                PacketType::PubRel => "PUBREL",
                PacketType::PubComp => "PUBCOMP",
                _ => "UNSUBACK",
            };
            if kind == PacketType::UnsubAck {
                debug!(target: MQTT_LOG, client_id = %name, "Sending UNSUBACK to {name}");
            } else {
                debug!(target: MQTT_LOG, client_id = %name, "Sending {what} to {name} (Mid: {packet_id})");
            }
        }
        self.wake();
    }

    /// 5.0 PUBACK / PUBREC with a reason code other than success: 0x87 (Not authorized) for a
    /// PUBLISH the ACL refused, 0x10 (No matching subscribers) for one that reached nobody.
    pub(super) fn write_noted_ack(&mut self, kind: AckKind, packet_id: u16, note: AckNote) {
        let (ack, rec) = match note {
            AckNote::Success => return self.write_ack(ack_type(kind), packet_id),
            AckNote::NoMatchingSubscribers => (
                PubAckReasonCode::NoMatchingSubscribers,
                PubRecReasonCode::NoMatchingSubscribers,
            ),
            AckNote::NotAuthorized => (
                PubAckReasonCode::NotAuthorized,
                PubRecReasonCode::NotAuthorized,
            ),
        };
        let (packet, what, rc) = match kind {
            AckKind::PubAck => (
                Packet::PubAck(PubAck::with_reason(packet_id, ack)),
                "PUBACK",
                ack.as_u8(),
            ),
            AckKind::PubRec => (
                Packet::PubRec(PubRec::with_reason(packet_id, rec)),
                "PUBREC",
                rec.as_u8(),
            ),
            AckKind::PubComp => return self.write_ack(PacketType::PubComp, packet_id),
        };
        if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
            let name = self.name();
            debug!(target: MQTT_LOG, client_id = %name, "Sending {what} to {name} (Mid: {packet_id}, RC:{rc})");
        }
        self.write_packet(&packet);
    }

    /// PUBLISH, counted by QoS, with its Mosquitto line.
    pub(super) fn write_publish(&mut self, packet_id: u16, dup: bool, m: &AppMessage) {
        if self.phase == Phase::Closing {
            return;
        }
        let encoded = if self.protocol().is_v5() {
            // The message's own properties, as the publisher (or the will) gave them.
            let owned = m.properties.as_deref().map(publish_properties);
            encode_publish_v5(
                &mut self.wbuf,
                &PublishV5 {
                    dup,
                    qos: m.qos,
                    retain: m.retain,
                    topic: &m.topic,
                    packet_id,
                    properties: owned.as_ref().unwrap_or(&NO_PROPERTIES),
                    message_expiry_interval: None,
                    topic_alias: None,
                    subscription_identifiers: &[],
                    payload: &m.payload,
                },
            )
        } else {
            encode_publish(
                &mut self.wbuf,
                dup,
                m.qos,
                m.retain,
                &m.topic,
                packet_id,
                &m.payload,
            )
        };
        if encoded.is_err() {
            return;
        }
        let c = &self.worker.counters;
        Counters::add(&c.publish_sent[m.qos as usize], 1);
        Counters::add(&c.packets_sent, 1);
        if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
            let name = self.name();
            debug!(target: MQTT_LOG, client_id = %name,
                "Sending PUBLISH to {name} (d{}, q{}, r{}, m{packet_id}, '{}', ... ({} bytes))",
                u8::from(dup), m.qos as u8, u8::from(m.retain), m.topic, m.payload.len());
        }
        self.wake();
    }

    /// Writes what the flow asked for.
    pub(super) fn write_outgoing(&mut self, sends: impl IntoIterator<Item = Outgoing>) {
        for s in sends {
            match s {
                Outgoing::Publish {
                    packet_id,
                    dup,
                    message,
                } => self.write_publish(packet_id, dup, &message),
                Outgoing::PubRel(pid) => self.write_ack(PacketType::PubRel, pid),
            }
        }
    }

    /// The Mosquitto line of an acknowledgement received.
    pub(super) fn log_ack_in(&self, what: &str, pid: u16) {
        if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
            let name = self.name();
            debug!(target: MQTT_LOG, client_id = %name, "Received {what} from {name} (Mid: {pid})");
        }
    }
}
