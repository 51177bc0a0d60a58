//! Starling's replicated log, behind the broker's [`ReplicatedLog`] port.
//!
//! # Layout
//! - [`local`]: [`LocalLog`], a node's own write-ahead log: commands are committed once they are
//!   durable on this node's disk (a cluster of one).
//!
//! [`ReplicatedLog`]: starling_broker::ReplicatedLog

pub mod local;

pub use local::LocalLog;
pub use starling_storage::FsyncPolicy;

/// The Raft group that holds sessions and retained messages. Every storage key and message
/// carries a group id so that more groups can follow.
pub const STATE_GROUP: u64 = 1;
