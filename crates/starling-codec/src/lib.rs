//! MQTT 3.1 (`MQIsdp`, level 3), 3.1.1 (`MQTT`, level 4) and 5.0 (`MQTT`, level 5) packets on
//! `bytes`.
//!
//! # Layout
//! - [`packet`]: the typed packets, one struct per packet for every version (a 3.1.1 packet is
//!   the 5.0 one with empty properties and success codes), one file per packet family.
//! - [`properties`]: 5.0 property identifiers, the typed property set of each packet, and the
//!   rules of a property block.
//! - [`reason`]: 5.0 reason codes, one enum per packet, with the 3.1.1 return-code mappings.
//! - [`decode`]: incremental, strict decoding from a read buffer ([`Decoder`]).
//! - [`encode`]: encoding into a write buffer for a protocol version, including the PUBLISH
//!   fast paths and trimming to a receiver's Maximum Packet Size.
//! - [`topic`]: topic-name and topic-filter validation and matching (with the `$` rule), and
//!   shared subscriptions.
//! - [`error`]: typed errors for each of the above, with the 5.0 reason code of each decoding
//!   error.
//!
//! No IO and no async here: the broker owns sockets; this crate turns bytes into packets and back.
//!
//! ```
//! use bytes::BytesMut;
//! use starling_codec::{Decoder, Packet, ProtocolVersion, PubAck, PubAckReasonCode};
//!
//! let ack = Packet::PubAck(PubAck::with_reason(7, PubAckReasonCode::NoMatchingSubscribers));
//! let mut buf = BytesMut::new();
//! ack.encode(ProtocolVersion::V5, &mut buf).unwrap();
//! assert_eq!(&buf[..], &[0x40, 3, 0, 7, 0x10]);
//!
//! let mut decoder = Decoder::new(1 << 20);
//! decoder.set_protocol(ProtocolVersion::V5);
//! assert_eq!(decoder.decode(&mut buf), Ok(Some(ack)));
//! ```

pub mod decode;
pub mod encode;
pub mod error;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod topic;

pub use decode::Decoder;
pub use error::{DecodeError, EncodeError, TopicError};
pub use packet::*;
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PayloadFormat, PropertyId, PublishProperties, SubscribeProperties, UnsubscribeProperties,
    UserProperty, WillProperties,
};
pub use reason::*;
