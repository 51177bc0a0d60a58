//! [`NodeStatus`]: what the admin endpoint and `$SYS` see of a Raft node.

use std::sync::{Arc, Mutex};

use raft::StateRole;
use starling_broker::LogStatus;

use crate::latency::LatencyHistogram;

/// What the admin endpoint and `$SYS` see of a node.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// This node.
    pub id: u64,
    /// Leader, follower, candidate, pre-candidate.
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// Known leader (0: none).
    pub leader: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Last index handed to the state machine.
    pub applied_index: u64,
    /// First and last index of the log kept.
    pub first_index: u64,
    /// Last log index.
    pub last_index: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Known peers: id → (raft address, admin address).
    pub peers: Vec<(u64, String, String)>,
    /// Messages dropped by the transport.
    pub dropped_messages: u64,
    /// Proposal-to-commit latency of entries proposed on this node while it led.
    pub proposal_latency: LatencyHistogram,
}

impl NodeStatus {
    pub(crate) fn log_status(&self) -> LogStatus {
        LogStatus {
            role: self.role,
            term: self.term,
            leader: (self.leader != 0).then_some(self.leader),
            commit_index: self.commit_index,
            members: self.voters.clone(),
        }
    }
}

/// Shared, cheap to read status.
pub type StatusCell = Arc<Mutex<NodeStatus>>;

/// The name of a role as the status shows it.
pub(crate) fn role_name(r: StateRole) -> &'static str {
    match r {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}
