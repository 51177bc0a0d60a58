//! Starling's replicated log, behind the broker's [`ReplicatedLog`] port.
//!
//! # Layout
//! - [`local`]: [`LocalLog`], a node's own write-ahead log: commands are committed once they are
//!   durable on this node's disk (a cluster of one).
//! - [`raft`]: the Raft node of one group: [`raft::RaftCore`], the plain struct driving tikv
//!   `raft::RawNode` (ticks, steps, proposals, Ready handling with asynchronous persistence,
//!   snapshots, membership changes), inside [`RaftNode`], its actor shell; snapshots sent in
//!   chunks ([`raft::transfer`]).
//! - [`raft_log`]: [`RaftLog`], the port implementation in clustered mode.
//! - `transport`: peer messages over gRPC (one stream per peer, reconnecting with backoff) and
//!   chunked snapshot transfers.
//! - [`auth`]: peer authentication with the cluster secret (every call, and a `Hello` proving
//!   the callee), checked before any peer message is decoded.
//! - [`config`]: the `[cluster]` settings.
//! - [`admin`]: the admin HTTP endpoint (status, readiness, Prometheus metrics, membership
//!   operations, backup export).
//! - [`backup`]: the backup file `GET /cluster/snapshot` exports.
//! - [`restore`]: `starling restore`, a backup turned into a stopped node's storage.
//! - [`latency`]: the proposal-to-commit latency histogram.
//!
//! [`ReplicatedLog`]: starling_broker::ReplicatedLog

pub mod admin;
pub mod auth;
pub mod backup;
pub mod config;
pub mod latency;
pub mod local;
pub mod raft;
pub mod raft_log;
pub mod restore;
mod transport;

pub use config::{node_id_from_hostname, ClusterConfig, ClusterConfigError};
pub use local::LocalLog;
pub use raft::{
    ChangeMembers, ExportBackup, MemberChange, NodeStatus, RaftNode, TransferLeadership,
};
pub use raft_log::{ClusterHandle, RaftLog};
pub use starling_storage::FsyncPolicy;

/// The Raft group that holds sessions and retained messages. Every storage key and message
/// carries a group id so that more groups can follow.
pub const STATE_GROUP: u64 = 1;
