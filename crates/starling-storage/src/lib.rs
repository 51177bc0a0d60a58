//! Durable storage for Starling's Raft groups: one embedded [redb] file per node.
//!
//! # Layout
//! - [`store`]: [`LogStore`], the database and its tables. For every Raft group (a `u64` on
//!   every key): log entries `index → bytes`, hard state, conf state, the latest state-machine
//!   snapshot `(index, term, bytes)`, small named metadata values, and the compaction mark.
//! - [`batch`]: [`WriteBatch`], everything one commit writes for one group, and
//!   [`SnapshotRecord`].
//! - [`writer`]: [`LogWriter`], the dedicated OS thread that owns all writes and group-commits
//!   whatever is queued in one transaction with one fsync, then calls each batch's callback.
//! - [`error`]: [`StorageError`] and [`SubmitError`].
//!
//! Bytes in, bytes out: the crate knows nothing about MQTT, actix or raft. The broker uses it
//! first as a single-node write-ahead log (entries are encoded command batches; the state machine
//! is rebuilt at start from [`LogStore::snapshot`] plus [`LogStore::entries`] after it), later as
//! the engine behind tikv `raft::Storage`.
//!
//! # Threads
//! Writes block on fsync, so they never run on an async or actor thread: submitters call
//! [`LogWriter::try_submit`] (never blocks) and get a callback on the writer thread, from which
//! they send themselves a message. Reads ([`LogStore::entries`] and friends) run on MVCC
//! snapshots from any thread and never wait for the writer.
//!
//! ```text
//!  actor ──try_submit──► [bounded queue] ──► starling-log-writer ──► redb (1 txn, 1 fsync)
//!    ▲                                             │
//!    └────────── done(Result) → message ───────────┘
//! ```

pub mod batch;
pub mod error;
pub mod store;
pub mod writer;

pub use batch::{SnapshotRecord, WriteBatch};
pub use error::{StorageError, SubmitError};
pub use store::{FsyncPolicy, LogStore, StoreOptions};
pub use writer::{Done, LogWriter, WriterStats};
