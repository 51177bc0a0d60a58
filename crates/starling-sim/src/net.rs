//! The simulated network between nodes: latency, partitions, and (while a flaky phase lasts)
//! drops, duplicates and reordering.
//!
//! Which faults apply to which messages follows what the real transport can do and what the
//! protocols tolerate. The peer streams run over TCP: a message is never duplicated or
//! overtaken by a later one on the same stream, but a broken stream loses what it held. So
//! fast-path forwards, and proposals a follower forwards to the leader (`MsgPropose`, which
//! raft-rs appends as often as it receives them), are only delayed or dropped; the other Raft
//! messages and snapshot chunks, whose protocols tolerate anything, are also duplicated and
//! reordered, which widens the search.

use std::collections::BTreeSet;

use raft::eraftpb::Message as RaftMessage;
use starling_cluster::raft::{Chunk, ChunkAck};
use starling_state::Message as AppMessage;

use crate::rng::SimRng;
use crate::sched::Micros;

/// A message between nodes.
#[derive(Clone, Debug)]
pub enum NetMsg {
    /// A Raft message (on the Raft stream).
    Raft(Box<RaftMessage>),
    /// A piece of a snapshot.
    Chunk(Chunk),
    /// The answer to a piece of a snapshot.
    ChunkAck(ChunkAck),
    /// Fast-path messages for the receiver's own subscribers.
    Forward(Vec<AppMessage>),
}

impl NetMsg {
    /// Which stream it travels on (streams keep their order).
    pub fn kind(&self) -> u8 {
        match self {
            NetMsg::Raft(_) => 0,
            NetMsg::Chunk(_) | NetMsg::ChunkAck(_) => 1,
            NetMsg::Forward(_) => 2,
        }
    }

    fn tolerates_disorder(&self) -> bool {
        match self {
            NetMsg::Forward(_) => false,
            NetMsg::Raft(m) => m.get_msg_type() != raft::eraftpb::MessageType::MsgPropose,
            NetMsg::Chunk(_) | NetMsg::ChunkAck(_) => true,
        }
    }
}

/// How one message travels.
pub struct Plan {
    /// Delays of its deliveries (none: lost; two: duplicated).
    pub deliveries: Vec<Micros>,
    /// Keeps its place on its stream.
    pub ordered: bool,
}

/// The network's state.
#[derive(Debug, Default)]
pub struct Network {
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(u64, u64)>,
    /// Per mille of messages dropped while flaky.
    pub drop: u64,
    /// Per mille of disorder-tolerant messages duplicated while flaky.
    pub duplicate: u64,
    /// Disorder-tolerant messages may overtake each other while flaky.
    pub reorder: bool,
    /// Extra delay, up to this many microseconds, while flaky.
    pub jitter: Micros,
    /// Nodes the clients cannot reach (isolated).
    unreachable_for_clients: BTreeSet<u64>,
}

impl Network {
    /// Cuts both directions between `a` and `b`.
    pub fn cut(&mut self, a: u64, b: u64) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Isolates `node` from `others`.
    pub fn isolate(&mut self, node: u64, others: &[u64]) {
        for o in others {
            if *o != node {
                self.cut(node, *o);
            }
        }
    }

    /// Makes `node` unreachable for clients too, until healed.
    pub fn isolate_clients(&mut self, node: u64) {
        self.unreachable_for_clients.insert(node);
    }

    /// Whether clients can reach `node`.
    pub fn client_reachable(&self, node: u64) -> bool {
        !self.unreachable_for_clients.contains(&node)
    }

    /// Whether `from` can reach `to`.
    pub fn reachable(&self, from: u64, to: u64) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Whether anything is cut or flaky.
    pub fn faulty(&self) -> bool {
        !self.cut.is_empty() || self.drop > 0 || self.duplicate > 0 || self.reorder
    }

    /// Heals everything.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.unreachable_for_clients.clear();
        self.drop = 0;
        self.duplicate = 0;
        self.reorder = false;
        self.jitter = 0;
    }

    /// How `msg` from `from` to `to` travels, if it does.
    pub fn plan(&self, from: u64, to: u64, msg: &NetMsg, rng: &mut SimRng) -> Option<Plan> {
        if !self.reachable(from, to) || (self.drop > 0 && rng.chance(self.drop)) {
            return None;
        }
        let base = rng.range(150, 1_500);
        let delay = base
            + if self.jitter > 0 {
                rng.below(self.jitter)
            } else {
                0
            };
        let disorder = msg.tolerates_disorder();
        let mut deliveries = vec![delay];
        if disorder && self.duplicate > 0 && rng.chance(self.duplicate) {
            deliveries.push(delay + rng.range(1, 20_000));
        }
        Some(Plan {
            deliveries,
            ordered: !(disorder && self.reorder),
        })
    }
}
