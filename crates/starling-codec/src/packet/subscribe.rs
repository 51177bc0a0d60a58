//! SUBSCRIBE (3.8), SUBACK (3.9), UNSUBSCRIBE (3.10) and UNSUBACK (3.11).

use bytestring::ByteString;

use super::QoS;
use crate::properties::{AckProperties, SubscribeProperties, UnsubscribeProperties};
use crate::reason::{SubAckReasonCode, UnsubAckReasonCode};

/// When retained messages are sent for a new subscription (5.0, 3.8.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe (the only behaviour of 3.1.1).
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not already exist.
    SendAtSubscribeIfNew = 1,
    /// 2: do not send them.
    DoNotSend = 2,
}

impl RetainHandling {
    /// The handling for a wire value, `None` for 3 (a protocol error) and above.
    pub fn from_u8(v: u8) -> Option<RetainHandling> {
        match v {
            0 => Some(RetainHandling::SendAtSubscribe),
            1 => Some(RetainHandling::SendAtSubscribeIfNew),
            2 => Some(RetainHandling::DoNotSend),
            _ => None,
        }
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The options byte of one SUBSCRIBE filter. In 3.1 / 3.1.1 only the QoS exists; the other
/// fields are then false / [`RetainHandling::SendAtSubscribe`] and are not encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// Maximum QoS of deliveries on this subscription.
    pub qos: QoS,
    /// No Local: do not deliver the subscriber's own publications (5.0).
    pub no_local: bool,
    /// Retain As Published: keep the RETAIN flag of forwarded publications (5.0).
    pub retain_as_published: bool,
    /// When to send retained messages (5.0).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// The options of a 3.1.1 subscription at `qos`.
    pub fn new(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }

    /// The 5.0 options byte (bits 6 and 7 reserved, 0).
    pub fn as_u8(self) -> u8 {
        self.qos.as_u8()
            | u8::from(self.no_local) << 2
            | u8::from(self.retain_as_published) << 3
            | self.retain_handling.as_u8() << 4
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The filter as sent; its syntax is checked by the broker with
    /// [`crate::topic::validate_filter`] so that a bad filter can get a failure code rather than
    /// a disconnect.
    pub filter: ByteString,
    /// Requested maximum QoS and, in 5.0, the other subscription options.
    pub options: SubscriptionOptions,
}

impl SubscribeFilter {
    /// A filter with the 3.1.1 options for `qos`.
    pub fn new(filter: ByteString, qos: QoS) -> SubscribeFilter {
        SubscribeFilter {
            filter,
            options: SubscriptionOptions::new(qos),
        }
    }
}

/// SUBSCRIBE (client to server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// SUBSCRIBE properties (5.0; empty otherwise).
    pub properties: SubscribeProperties,
    /// At least one filter.
    pub filters: Vec<SubscribeFilter>,
}

/// SUBACK (server to client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// Reason String and User Properties (5.0; empty otherwise).
    pub properties: AckProperties,
    /// One code per filter, in order (at least one).
    pub reason_codes: Vec<SubAckReasonCode>,
}

/// UNSUBSCRIBE (client to server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// UNSUBSCRIBE properties (5.0; empty otherwise).
    pub properties: UnsubscribeProperties,
    /// At least one filter.
    pub filters: Vec<ByteString>,
}

/// UNSUBACK (server to client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// Reason String and User Properties (5.0; empty otherwise).
    pub properties: AckProperties,
    /// One code per filter, in order: at least one in 5.0, none in 3.1 / 3.1.1 (where they
    /// are not encoded).
    pub reason_codes: Vec<UnsubAckReasonCode>,
}

impl UnsubAck {
    /// The 3.1 / 3.1.1 form: a packet identifier only.
    pub fn new(packet_id: u16) -> UnsubAck {
        UnsubAck {
            packet_id,
            properties: AckProperties::default(),
            reason_codes: Vec::new(),
        }
    }
}
