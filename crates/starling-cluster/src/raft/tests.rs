//! Several [`RaftCore`]s in one thread on a hand-run network and in-memory stores: the way a
//! simulation drives them. Snapshots are held back for the test to deliver (whole or in chunks),
//! lose, or report.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use raft::{ProgressState, StateRole};
use starling_broker::LogEvent;
use starling_storage::LogStore;
use tokio::time::Instant;

use super::*;

const GROUP: u64 = 1;

/// Held by tests that report failed transfers, and by the one that switches the (process-wide)
/// mutation on, so that they never overlap.
static REPORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn reports() -> std::sync::MutexGuard<'static, ()> {
    REPORTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// One node: its core and its disk.
struct Node {
    core: RaftCore,
    store: LogStore,
    /// Cut off: it neither ticks, sends nor receives.
    down: bool,
    events: Vec<LogEvent>,
}

/// A cluster on a hand-run network.
struct Net {
    nodes: BTreeMap<u64, Node>,
    now: Instant,
    /// Messages on their way.
    wire: VecDeque<RaftMessage>,
    /// `MsgSnapshot`s the leader sent: the test decides what becomes of them.
    snapshots: Vec<RaftMessage>,
}

fn settings(id: u64) -> RaftSettings {
    RaftSettings {
        tick: Duration::from_millis(10),
        ..RaftSettings::for_node(id, GROUP)
    }
}

/// An empty state as the session store encodes it.
fn empty_state() -> Bytes {
    Bytes::from(starling_state::pb::Snapshot::default().encode_to_vec())
}

impl Net {
    fn new(ids: &[u64]) -> Net {
        let now = Instant::now();
        let configured: Vec<(u64, String)> =
            ids.iter().map(|id| (*id, format!("node{id}:1"))).collect();
        let mut nodes = BTreeMap::new();
        for &id in ids {
            let store = LogStore::open_in_memory().unwrap();
            let (storage, peers, opened) =
                RaftStorage::open(&store, GROUP, id, &configured, true).unwrap();
            assert_eq!(opened, Opened::Bootstrapped);
            let mut core = RaftCore::new(settings(id), storage, peers, now).unwrap();
            // Node 1 times out first, then 2, then 3: the elections are foreseeable.
            core.set_election_timeout_source(Box::new(move |min, _| min + 3 * (id as usize - 1)));
            let mut out = RaftOutput::default();
            core.attach(now, &mut out);
            let mut node = Node {
                core,
                store,
                down: false,
                events: Vec::new(),
            };
            assert!(out.fatal.is_none());
            node.events.extend(out.events);
            nodes.insert(id, node);
        }
        Net {
            nodes,
            now,
            wire: VecDeque::new(),
            snapshots: Vec::new(),
        }
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    fn core(&mut self, id: u64) -> &mut RaftCore {
        &mut self.nodes.get_mut(&id).unwrap().core
    }

    /// Performs `out` of node `id`: writes at once (then reported persisted), messages onto
    /// the wire, snapshots aside.
    fn perform(&mut self, id: u64, mut out: RaftOutput) {
        loop {
            assert!(out.fatal.is_none(), "node {id}: {:?}", out.fatal);
            let node = self.nodes.get_mut(&id).unwrap();
            node.events.append(&mut out.events);
            let mut more = RaftOutput::default();
            for (seq, batch) in out.writes.drain(..) {
                let result = node.store.write(&[batch]);
                node.core.persisted(seq, result, self.now, &mut more);
            }
            for m in out.messages.drain(..) {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    self.snapshots.push(m);
                } else {
                    self.wire.push_back(m);
                }
            }
            if more.is_empty() {
                return;
            }
            out = more;
        }
    }

    /// Every up node handles its Ready, and messages are delivered, until all is quiet.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                if self.nodes[&id].down {
                    continue;
                }
                let mut out = RaftOutput::default();
                let now = self.now;
                self.core(id).handle_ready(now, &mut out);
                self.perform(id, out);
            }
            if self.wire.is_empty() {
                return;
            }
            while let Some(m) = self.wire.pop_front() {
                let (from, to) = (m.from, m.to);
                if self.nodes[&from].down || self.nodes[&to].down {
                    continue;
                }
                let mut out = RaftOutput::default();
                let _ = self.core(to).step(m, &mut out);
                self.perform(to, out);
            }
        }
        panic!("the network never settled");
    }

    /// `n` ticks of every up node, settling after each.
    fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.now += Duration::from_millis(10);
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                if self.nodes[&id].down {
                    continue;
                }
                let mut out = RaftOutput::default();
                let now = self.now;
                self.core(id).tick(now, &mut out);
                self.perform(id, out);
            }
            self.settle();
        }
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .find(|(_, n)| !n.down && n.core.raw().raft.state == StateRole::Leader)
            .map(|(id, _)| *id)
    }

    fn propose(&mut self, id: u64, n: usize) {
        for i in 0..n {
            let mut out = RaftOutput::default();
            let now = self.now;
            self.core(id)
                .propose(Bytes::from(format!("entry {i}")), now, &mut out);
            self.perform(id, out);
            self.settle();
        }
    }

    /// The leader's view of follower `id`.
    fn progress(&self, leader: u64, id: u64) -> ProgressState {
        self.node(leader)
            .core
            .raw()
            .raft
            .prs()
            .get(id)
            .unwrap()
            .state
    }
}

/// Nodes 1..3, node 1 leading, node 3 cut off while the others take entries and compact past
/// it, then back: the leader wants to send it a snapshot. Returns the net with that
/// `MsgSnapshot` held in `snapshots`.
fn follower_needing_a_snapshot() -> Net {
    let mut net = Net::new(&[1, 2, 3]);
    net.ticks(30);
    assert_eq!(net.leader(), Some(1));
    net.propose(1, 3);
    net.nodes.get_mut(&3).unwrap().down = true;
    net.propose(1, 10);
    for id in [1, 2] {
        let applied = net.node(id).core.last_applied();
        let mut out = RaftOutput::default();
        net.core(id).save_snapshot(applied, empty_state(), &mut out);
        net.perform(id, out);
    }
    let first = net.node(1).core.raw().raft.raft_log.first_index();
    assert!(first > net.node(3).core.raw().raft.raft_log.last_index() + 1);
    net.nodes.get_mut(&3).unwrap().down = false;
    net.ticks(5);
    assert_eq!(net.snapshots.len(), 1, "the leader sends node 3 a snapshot");
    assert_eq!(net.progress(1, 3), ProgressState::Snapshot);
    net
}

#[test]
fn without_a_report_a_lost_snapshot_keeps_the_follower_paused() {
    let mut net = follower_needing_a_snapshot();
    net.snapshots.clear();
    net.ticks(200);
    assert_eq!(net.leader(), Some(1), "no leader change");
    assert_eq!(
        net.progress(1, 3),
        ProgressState::Snapshot,
        "raft-rs waits for a report that never comes"
    );
    assert!(net.snapshots.is_empty(), "and sends nothing more");
}

#[test]
fn a_failed_snapshot_transfer_is_reported_and_retried() {
    let _serial = reports();
    let mut net = follower_needing_a_snapshot();
    let lost = net.snapshots.pop().unwrap();
    let id = TransferId::of(&lost).unwrap();
    let mut out = RaftOutput::default();
    net.core(1).snapshot_sent(&id, false, &mut out);
    net.perform(1, out);
    assert_ne!(
        net.progress(1, 3),
        ProgressState::Snapshot,
        "the follower leaves Snapshot state without a leader change"
    );
    // raft-rs sends it again; this time it arrives, in chunks.
    net.ticks(5);
    let again = net.snapshots.pop().expect("a new snapshot for node 3");
    let id = TransferId::of(&again).unwrap();
    let data = super::storage::encode(&again);
    let settings = TransferSettings {
        chunk_bytes: 64,
        ..TransferSettings::default()
    };
    let mut tx = SnapshotTransfer::new(id, data, settings, net.now);
    let mut rx = SnapshotReceiver::new(1 << 20);
    let mut chunks = 0;
    let outcome = loop {
        match tx.next(net.now) {
            Next::Done(o) => break o,
            Next::WaitUntil(t) => net.now = t,
            Next::Send(chunk) => {
                chunks += 1;
                let ack = match rx.offer(chunk) {
                    Received::Reply(ack) => ack,
                    Received::Complete { id, message } => {
                        let msg: RaftMessage = super::storage::decode(&message).unwrap();
                        let mut out = RaftOutput::default();
                        let verdict = net.core(3).step(msg, &mut out).map_err(|e| e.to_string());
                        net.perform(3, out);
                        rx.installed(&id, verdict)
                    }
                };
                tx.on_ack(&ack, net.now);
            }
        }
    };
    assert_eq!(outcome, Outcome::Finished);
    assert!(chunks > 1, "{chunks} chunks");
    let mut out = RaftOutput::default();
    net.core(1).snapshot_sent(&id, true, &mut out);
    net.perform(1, out);
    net.ticks(10);
    let leader_applied = net.node(1).core.last_applied();
    assert_eq!(net.node(3).core.last_applied(), leader_applied);
    assert!(net
        .node(3)
        .events
        .iter()
        .any(|e| matches!(e, LogEvent::Restore { index, .. } if *index >= id.index)));
    assert_eq!(net.progress(1, 3), ProgressState::Replicate);
}

#[test]
fn a_report_for_another_transfer_changes_nothing() {
    let _serial = reports();
    let mut net = follower_needing_a_snapshot();
    let sent = net.snapshots.pop().unwrap();
    let id = TransferId::of(&sent).unwrap();
    for stale in [
        TransferId {
            term: id.term - 1,
            ..id
        },
        TransferId {
            index: id.index - 1,
            ..id
        },
    ] {
        let mut out = RaftOutput::default();
        net.core(1).snapshot_sent(&stale, false, &mut out);
        assert_eq!(net.progress(1, 3), ProgressState::Snapshot);
    }
}

#[cfg(feature = "mutations")]
#[test]
fn the_unreported_snapshot_mutation_puts_the_bug_back() {
    let _serial = reports();
    use super::mutations::{self, Mutation};
    let mut net = follower_needing_a_snapshot();
    let id = TransferId::of(&net.snapshots.pop().unwrap()).unwrap();
    mutations::set(Mutation::UnreportedSnapshot, true);
    let mut out = RaftOutput::default();
    net.core(1).snapshot_sent(&id, false, &mut out);
    mutations::set(Mutation::UnreportedSnapshot, false);
    assert_eq!(net.progress(1, 3), ProgressState::Snapshot);
}

#[test]
fn a_snapshot_our_code_cannot_restore_is_refused_before_raft_takes_it() {
    let mut net = follower_needing_a_snapshot();
    let good = net.snapshots.pop().unwrap();
    let before = net.node(3).core.raw().raft.raft_log.committed;
    let with_state = |state: Bytes| {
        let mut m = good.clone();
        m.mut_snapshot().data = Bytes::from(
            starling_proto::cluster::v1::SnapshotData { state, peers: None }.encode_to_vec(),
        );
        m
    };
    let mut garbage = good.clone();
    garbage.mut_snapshot().data = Bytes::from_static(b"\xff\xff\xff not protobuf");
    for bad in [garbage, with_state(Bytes::from_static(b"\x0a\xff\xff"))] {
        let mut out = RaftOutput::default();
        let r = net.core(3).step(bad, &mut out);
        assert!(matches!(r, Err(StepError::InvalidSnapshot(_))), "{r:?}");
        assert!(out.is_empty());
    }
    net.settle();
    assert_eq!(net.node(3).core.raw().raft.raft_log.committed, before);
    assert!(net.node(3).core.fatal().is_none());
    // The valid one goes in.
    let mut out = RaftOutput::default();
    net.core(3).step(good, &mut out).unwrap();
}

#[test]
fn a_failed_or_impossible_write_stops_the_node() {
    let mut net = Net::new(&[1, 2, 3]);
    net.ticks(30);
    let leader = net.leader().unwrap();
    // A write fails.
    let mut out = RaftOutput::default();
    let now = net.now;
    net.core(leader)
        .propose(Bytes::from_static(b"x"), now, &mut out);
    net.core(leader).handle_ready(now, &mut out);
    let (seq, _) = out.writes.pop().expect("a write");
    let mut after = RaftOutput::default();
    let err = starling_storage::StorageError::Engine {
        op: "commit",
        message: "disk gone".into(),
    };
    net.core(leader).persisted(seq, Err(err), now, &mut after);
    assert!(after
        .fatal
        .as_deref()
        .is_some_and(|f| f.contains("disk gone")));
    assert!(
        after.messages.is_empty(),
        "nothing that waited for it is sent"
    );
    // From then on it does nothing.
    let mut later = RaftOutput::default();
    net.core(leader)
        .propose(Bytes::from_static(b"y"), now, &mut later);
    net.core(leader).tick(now, &mut later);
    net.core(leader).handle_ready(now, &mut later);
    assert!(later.is_empty(), "{later:?}");

    // The writer is gone.
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let mut out = RaftOutput::default();
    net.core(follower).writer_closed(&mut out);
    assert!(out.fatal.is_some());
    assert!(net.node(follower).core.fatal().is_some());
}

#[test]
fn election_timeouts_come_from_the_source_when_one_is_set() {
    let store = LogStore::open_in_memory().unwrap();
    let configured = vec![(1, "a:1".to_string()), (2, "b:1".to_string())];
    let (storage, peers, _) = RaftStorage::open(&store, GROUP, 1, &configured, true).unwrap();
    let mut core = RaftCore::new(settings(1), storage, peers, Instant::now()).unwrap();
    let drawn = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = drawn.clone();
    let mut next = 10;
    core.set_election_timeout_source(Box::new(move |min, max| {
        log.lock().unwrap().push((min, max));
        next += 1;
        next
    }));
    assert_eq!(core.raw().raft.randomized_election_timeout(), 11);
    let mut out = RaftOutput::default();
    let now = Instant::now();
    for _ in 0..11 {
        core.tick(now, &mut out);
    }
    // It campaigned (pre-candidate): a new timeout from the source.
    assert_eq!(core.raw().raft.state, StateRole::PreCandidate);
    assert_eq!(core.raw().raft.randomized_election_timeout(), 12);
    assert_eq!(drawn.lock().unwrap()[0], (10, 20));
    // Answers out of range are brought into it.
    core.set_election_timeout_source(Box::new(|_, _| 1000));
    assert_eq!(core.raw().raft.randomized_election_timeout(), 19);
}
