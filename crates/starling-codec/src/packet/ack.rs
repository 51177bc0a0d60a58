//! The acknowledgements of a publication: PUBACK (3.4), PUBREC (3.5), PUBREL (3.6) and PUBCOMP
//! (3.7). One struct each, so that each carries only its own reason codes.

use crate::properties::AckProperties;
use crate::reason::{PubAckReasonCode, PubCompReasonCode, PubRecReasonCode, PubRelReasonCode};

macro_rules! ack_packet {
    ($(#[$meta:meta])* $name:ident, $reason:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name {
            /// Packet identifier of the publication acknowledged.
            pub packet_id: u16,
            /// Reason code (5.0; success in 3.1 and 3.1.1).
            pub reason: $reason,
            /// Reason String and User Properties (5.0; empty otherwise).
            pub properties: AckProperties,
        }

        impl $name {
            /// The success form: what 3.1 / 3.1.1 carry, and the 2-byte form of 5.0.
            pub fn new(packet_id: u16) -> $name {
                $name {
                    packet_id,
                    reason: $reason::Success,
                    properties: AckProperties::default(),
                }
            }

            /// With a reason code and no properties.
            pub fn with_reason(packet_id: u16, reason: $reason) -> $name {
                $name {
                    packet_id,
                    reason,
                    properties: AckProperties::default(),
                }
            }
        }
    };
}

ack_packet!(
    /// PUBACK: the answer to a QoS 1 PUBLISH.
    PubAck,
    PubAckReasonCode
);
ack_packet!(
    /// PUBREC: the first answer to a QoS 2 PUBLISH.
    PubRec,
    PubRecReasonCode
);
ack_packet!(
    /// PUBREL: the answer to PUBREC.
    PubRel,
    PubRelReasonCode
);
ack_packet!(
    /// PUBCOMP: the answer to PUBREL, the end of a QoS 2 exchange.
    PubComp,
    PubCompReasonCode
);
