//! The port between the session store and the log that orders and persists its commands.
//!
//! A single node implements it with a local write-ahead log; a cluster with Raft. Either way the
//! store proposes encoded entries and learns of committed ones — its own and, in a cluster, other
//! nodes' — through [`LogEvent`]s, in log order, and applies them to its replica of the state.

use actix::prelude::*;
use bytes::Bytes;

/// What the log tells the session store.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum LogEvent {
    /// Replace the state with this snapshot (at start, or when catching up from a leader).
    Restore {
        /// Log index the snapshot covers.
        index: u64,
        /// Encoded [`starling_state::pb::Snapshot`].
        data: Bytes,
    },
    /// Entries committed, in index order. Empty `data` is an entry without commands.
    Committed(Vec<(u64, Bytes)>),
    /// Replay of what was on disk is complete; entries after this are new.
    Recovered,
    /// The Raft leader changed: entries proposed before may never commit. Their requesters fail
    /// now (visibly: CONNACK 3, closed connection) instead of at their timeout; should such an
    /// entry still commit, nothing was acknowledged for it.
    LeaderChanged {
        /// The new leader, if known.
        leader: Option<u64>,
        /// The new term.
        term: u64,
    },
    /// The leader has not heard from `node` for the configured time: propose that its sessions
    /// go offline (wills published).
    PeerDown {
        /// The node.
        node: u64,
    },
    /// A proposed entry was refused and will never commit (e.g. no leader): its requesters fail
    /// now instead of at their timeout.
    Rejected {
        /// The entry as proposed.
        entry: Bytes,
        /// Why.
        reason: String,
    },
}

/// Why a proposal was not taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    /// Too much is in flight; propose again after the next commit.
    #[error("log busy")]
    Busy,
    /// The log cannot commit (no leader, no quorum, shutting down).
    #[error("log unavailable: {0}")]
    Unavailable(String),
}

/// A failure to start the log.
#[derive(Debug, thiserror::Error)]
#[error("log failed to start: {0}")]
pub struct LogStartError(pub String);

/// Status of the log for `$SYS` and the admin endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStatus {
    /// `"single"`, `"leader"`, `"follower"`, `"candidate"`.
    pub role: &'static str,
    /// Raft term (0 for a single node).
    pub term: u64,
    /// Leader node id, if known.
    pub leader: Option<u64>,
    /// Highest committed index.
    pub commit_index: u64,
    /// Cluster members.
    pub members: Vec<u64>,
}

/// The replicated log behind the session store.
pub trait ReplicatedLog: Send + 'static {
    /// Starts the log; it then sends [`LogEvent::Restore`] (if it has a snapshot), the committed
    /// entries it has, and [`LogEvent::Recovered`] to `sink`, followed by new commits as they
    /// happen.
    ///
    /// # Errors
    /// The log cannot be opened or read.
    fn start(&mut self, sink: Recipient<LogEvent>) -> Result<(), LogStartError>;

    /// Proposes an entry. Never blocks.
    ///
    /// # Errors
    /// [`ProposeError::Busy`] to retry after the next commit, or `Unavailable`.
    fn propose(&mut self, data: Bytes) -> Result<(), ProposeError>;

    /// Persists a snapshot of the state as of `index` and compacts the log up to it.
    fn save_snapshot(&mut self, index: u64, data: Bytes);

    /// Current status.
    fn status(&self) -> LogStatus;

    /// True when every entry this node proposes is committed as it was proposed (the same
    /// `Bytes`), in proposal order, with nothing else in between: the store can then skip
    /// decoding its own entries. False for a replicated log.
    fn commits_as_proposed(&self) -> bool {
        false
    }

    /// Writes what is queued and stops; `done` is answered (or dropped) once everything is on
    /// disk, so the process may exit.
    fn shutdown(&mut self, done: tokio::sync::oneshot::Sender<()>);
}

/// Sends fast-path messages to another node of the cluster (QoS 0, and deliveries to clean
/// sessions served there). Never blocks; a message that cannot be queued is dropped and counted
/// (the fast path is at most once across nodes).
pub trait Forwarder: Send + Sync + 'static {
    /// Queues `messages` for delivery to `node`'s local subscribers.
    fn forward(&self, node: u64, messages: Vec<starling_state::Message>);
}

/// Whether this node's replica is fresh enough for its routers to decide on their own that a
/// QoS 1/2 message needs no durable delivery: the node is in contact with a Raft leader (heard
/// within an election timeout) and has applied what it knows to be committed. A node that is
/// not (just restarted and catching up, cut off from the leader) may not know subscriptions
/// made meanwhile, so its routers hand every QoS 1/2 message to the log instead, whose apply
/// routes it with the full state on every node. Set by the log; a single node is always fresh.
#[derive(Debug)]
pub struct Freshness(std::sync::atomic::AtomicBool);

impl Freshness {
    /// Fresh or not, to start with.
    pub fn new(fresh: bool) -> Freshness {
        Freshness(std::sync::atomic::AtomicBool::new(fresh))
    }

    /// Whether the replica is fresh.
    pub fn is_fresh(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets it.
    pub fn set(&self, fresh: bool) {
        self.0.store(fresh, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness::new(true)
    }
}
