//! Starling's replicated state machine.
//!
//! # Layout
//! - [`state`]: [`State`], which applies log entries ([`pb::Batch`] of commands) deterministically
//!   and produces [`Effect`]s; snapshot, restore and digest.
//! - [`session`]: a persistent session: subscriptions with their options, outbound queue with
//!   QoS stages, inbound QoS 2 ids, will (and a will waiting for its delay), owner and epoch (the
//!   fencing token of takeover), MQTT 5 expiry and the client's limits.
//! - [`message`]: the application message with its MQTT 5 properties and expiry.
//! - [`retained`]: retained messages by topic, looked up by filter, indexed by expiry.
//! - [`trie`]: the subscription index shared with the broker's router shards.
//! - [`effect`]: what applying asks the node to do.
//!
//! The same entries drive a single node (its write-ahead log) and a cluster (the Raft log). The
//! state holds persistent sessions and retained messages; clean sessions live only on the node
//! that serves them.

/// Hash maps keyed by client-controlled strings (client ids, topic levels): foldhash is fast and
/// seeded at random per process, which keeps crafted keys from degrading them (SipHash, the
/// standard default, cost a tenth of the instructions of the durable path).
pub type FastMap<K, V> = std::collections::HashMap<K, V, hashing::ProcessSeeded>;

pub mod effect;
pub mod hashing;
pub mod message;
pub mod retained;
pub mod session;
pub mod state;
pub mod trie;

pub use effect::{CommandResult, Effect, Rejection, Resume};
pub use message::{publish_packet_size, Message, MessageProperties};
pub use retained::RetainedStore;
pub use session::{packet_id_for, Outbound, Owner, Queued, Session, SubOptions, Will};
pub use starling_proto::state::v1 as pb;
pub use state::{SnapshotError, State, StateConfig, StateStats};
pub use trie::TopicTrie;
