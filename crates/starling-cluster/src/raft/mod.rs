//! The Raft node of one group: tikv `raft::RawNode` driven the way TiKV does, split into a plain
//! struct that decides ([`RaftCore`]) and an actor shell that performs ([`RaftNode`]).
//!
//! ```text
//!  RaftNode (actor): Tick / Step / Propose / Persisted / ... ──▶ RaftCore ──▶ RawNode
//!       ▲   performs RaftOutput:                                   │
//!       │    messages ──▶ transport (MsgSnapshot: in chunks, see transfer)
//!       │    writes   ──▶ storage writer thread ──▶ Persisted{seq} ─┘
//!       │    events   ──▶ session store (Restore / Committed / Recovered / ...)
//!       │    peers    ──▶ transport, fast-path forwarder
//!       └─── fatal    ──▶ the process stops (exit code 70)
//! ```
//! Storage IO never runs on the actor's thread, and the core does no IO at all: a simulation
//! drives [`RaftCore`] directly, several nodes in one thread on simulated time, with the same
//! chunked snapshot transfers ([`SnapshotTransfer`], [`SnapshotReceiver`]) over its own network
//! and a [`LogStore`](starling_storage::LogStore) in memory as its disk.
//!
//! # Layout
//! - `core`: [`RaftCore`], [`RaftOutput`], [`RaftSettings`], [`MemberChange`]: the decisions,
//!   with the Ready loop's steps.
//! - `node`: [`RaftNode`], the actor shell, and its messages.
//! - `storage`: [`RaftStorage`], the log raft-rs reads, loaded from and mirrored to redb.
//! - `transfer`: snapshots in chunks, sender and receiver state machines.
//! - `applied`, `hold`: two corrections of raft-rs's defaults (see their docs).
//! - `status`: [`NodeStatus`].
//! - `mutations` (feature `mutations`): known bugs that the simulator's tests put back.

// rust-protobuf messages (raft-rs types) are built by assigning fields of a default value.
#![allow(clippy::field_reassign_with_default)]

mod applied;
mod core;
mod hold;
#[cfg(feature = "mutations")]
pub mod mutations;
mod node;
pub(crate) mod slog_drain;
mod status;
pub(crate) mod storage;
pub mod transfer;

#[cfg(test)]
mod tests;

pub use self::core::{
    check_snapshot_data, ElectionTimeoutSource, MemberChange, RaftCore, RaftOutput, RaftSettings,
    StepError,
};
pub(crate) use self::node::{Attach, InstallSnapshot, Propose, SaveSnapshot, Step, Stop};
pub use self::node::{
    ChangeMembers, ExportBackup, RaftNode, TransferLeadership, EXIT_STORAGE_FAILED,
};
pub use self::status::{NodeStatus, StatusCell};
pub use self::storage::{LoadError, Opened, RaftStorage};
pub use self::transfer::{
    AckStatus, Chunk, ChunkAck, Next, Outcome, Received, SnapshotReceiver, SnapshotTransfer,
    TransferId, TransferSettings,
};
