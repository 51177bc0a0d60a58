//! MQTT 3.1 (`MQIsdp`, level 3) and 3.1.1 (`MQTT`, level 4) packets on `bytes`.
//!
//! # Layout
//! - [`packet`]: the typed packets (all 14 control packets of 3.1 / 3.1.1).
//! - [`decode`]: incremental, strict decoding from a read buffer ([`Decoder`]).
//! - [`encode`]: encoding into a write buffer, including a PUBLISH fast path.
//! - [`topic`]: topic-name and topic-filter validation and matching (with the `$` rule).
//! - [`error`]: typed errors for each of the above.
//!
//! No IO and no async here: the broker owns sockets; this crate turns bytes into packets and back.
//! MQTT 5 (properties, reason codes) will extend [`packet::ProtocolVersion`] and the decoder.

pub mod decode;
pub mod encode;
pub mod error;
pub mod packet;
pub mod topic;

pub use decode::Decoder;
pub use error::{DecodeError, EncodeError, TopicError};
pub use packet::*;
