//! The Raft actor: drives `raft::RawNode` for one group the way TiKV does.
//!
//! ```text
//!  Tick / Step / Propose ──▶ RawNode ──(once per mailbox pass)──▶ Ready
//!     Ready: send leader messages at once; install a snapshot (→ Restore); append entries and
//!            hard state to the in-memory log and to a WriteBatch; apply committed entries
//!            (→ Committed to the session store; conf changes here); advance_append_async;
//!            submit the batch to the storage writer thread
//!     Persisted{number}: on_persist_ready; send the messages that waited for the write
//! ```
//! Storage IO never runs on this actor's thread. Proposals are whatever the session store
//! batched into one entry; many proposals land in one Ready, and one Ready in one fsync.

// rust-protobuf messages (raft-rs types) are built by assigning fields of a default value.
#![allow(clippy::field_reassign_with_default)]

mod applied;
mod hold;
pub(crate) mod slog_drain;
pub(crate) mod storage;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message as RaftMessage,
};
use raft::{RawNode, StateRole};
use starling_broker::{LogEvent, LogStatus};
use starling_proto::cluster::v1 as cpb;
use starling_storage::{LogWriter, SnapshotRecord, StorageError, WriteBatch};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use self::hold::{Released, StartupHold};
use self::storage::{decode, encode, persist_entries, RaftStorage, PEERS, SNAPSHOT_CONF_STATE};
use crate::backup::Backup;
use crate::latency::LatencyHistogram;
use crate::transport::{PeerForwarder, Transport};

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

/// Settings the actor needs.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    /// This node.
    pub id: u64,
    /// Raft group.
    pub group: u64,
    /// Tick interval.
    pub tick: Duration,
    /// Election ticks.
    pub election_ticks: usize,
    /// Heartbeat ticks.
    pub heartbeat_ticks: usize,
    /// Applied index to start from (the snapshot's).
    pub applied: u64,
    /// Per-peer queue.
    pub peer_queue: usize,
    /// Message size cap.
    pub max_message_bytes: usize,
    /// How long a membership change may take.
    pub conf_change_timeout: Duration,
    /// A voter the leader has not heard from for this long is reported down: the cluster then
    /// disconnects its sessions and publishes their wills.
    pub node_down_after: Duration,
}

/// A peer's Raft message, to step into the node.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Step(pub(crate) RaftMessage);

/// An entry to replicate (the session store's batch of commands).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Propose(pub(crate) Bytes);

/// Where committed entries go (the session store); sent once at start.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Attach(pub(crate) Recipient<LogEvent>);

/// A state snapshot as of `index` to store; the log before it is compacted.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SaveSnapshot {
    pub(crate) index: u64,
    pub(crate) data: Bytes,
}

/// Stop: write what is queued, stop ticking.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Stop;

/// A membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a voter.
    Add {
        /// Its id.
        id: u64,
        /// Its peer (gRPC) address.
        raft_address: String,
        /// Its admin address (informational).
        admin_address: String,
    },
    /// Remove a member.
    Remove {
        /// Its id.
        id: u64,
    },
}

/// Proposes a membership change; answers once it is applied here (or fails).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChangeMembers {
    /// The change.
    pub change: MemberChange,
    /// Outcome.
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Asks the node to hand leadership to another voter (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TransferLeadership;

/// Asks for a [`Backup`]: the latest stored snapshot and the entries applied after it.
#[derive(Message)]
#[rtype(result = "Backup")]
pub struct ExportBackup;

/// Proposals on the leader whose commit is awaited for the latency histogram, at most.
const LATENCY_TRACKED: usize = 65_536;

/// The storage writer finished write `seq`.
#[derive(Message)]
#[rtype(result = "()")]
struct Persisted {
    seq: u64,
    result: Result<(), StorageError>,
}

struct PendingWrite {
    batch: WriteBatch,
    number: u64,
    messages: Vec<RaftMessage>,
}

struct ConfWaiter {
    change: MemberChange,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The Raft actor of one group.
pub struct RaftNode {
    settings: RaftSettings,
    raw: RawNode<RaftStorage>,
    storage: RaftStorage,
    writer: Option<LogWriter>,
    transport: Transport,
    sink: Option<Recipient<LogEvent>>,
    ready_scheduled: bool,
    queued_writes: VecDeque<PendingWrite>,
    /// Writes handed to the writer, in order: (write seq, Ready number, messages to send after).
    in_flight: VecDeque<(u64, u64, Vec<RaftMessage>)>,
    next_write: u64,
    conf_history: Vec<(u64, ConfState)>,
    peers: Vec<cpb::MemberContext>,
    startup_commit: u64,
    recovered_sent: bool,
    last_applied: u64,
    status: StatusCell,
    conf_waiters: Vec<ConfWaiter>,
    /// Proposals received before the log was attached.
    early: Vec<Bytes>,
    /// Proposals made after the start and before a leader is known (see `hold`).
    startup: StartupHold,
    /// Leader as last seen, to tell the store when it changes.
    known_leader: u64,
    /// Entries proposed here while leading: (index, when), for the latency histogram.
    proposed_at: VecDeque<(u64, Instant)>,
    /// Proposal-to-commit latency.
    latency: LatencyHistogram,
    /// Fast-path forwarder whose peer set follows the membership.
    forwarder: Option<Arc<PeerForwarder>>,
    /// Leader only: when each voter was last heard from, and those reported down.
    last_active: HashMap<u64, Instant>,
    reported_down: HashSet<u64>,
}

fn role_name(r: StateRole) -> &'static str {
    match r {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}

impl RaftNode {
    /// A node over `storage` (loaded or bootstrapped), writing through `writer`.
    ///
    /// # Errors
    /// raft-rs rejects the configuration or the stored state.
    pub(crate) fn new(
        settings: RaftSettings,
        storage: RaftStorage,
        writer: LogWriter,
        peers: Vec<cpb::MemberContext>,
        status: StatusCell,
    ) -> Result<RaftNode, raft::Error> {
        let config = raft::Config {
            id: settings.id,
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            applied: settings.applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_uncommitted_size: 256 * 1024 * 1024,
            max_committed_size_per_ready: 16 * 1024 * 1024,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        config.validate()?;
        let (startup_commit, conf, snap_index) = {
            let core = storage.rl();
            (
                core.hard_state.commit,
                core.conf_state.clone(),
                core.first_index() - 1,
            )
        };
        let raw = RawNode::new(&config, storage.clone(), &slog_drain::logger(settings.id))?;
        let transport = Transport::new(
            settings.id,
            settings.group,
            settings.peer_queue,
            settings.max_message_bytes,
        );
        Ok(RaftNode {
            raw,
            storage,
            writer: Some(writer),
            transport,
            sink: None,
            ready_scheduled: false,
            queued_writes: VecDeque::new(),
            in_flight: VecDeque::new(),
            next_write: 0,
            conf_history: vec![(snap_index, conf)],
            peers,
            startup_commit,
            recovered_sent: false,
            last_applied: settings.applied,
            status,
            conf_waiters: Vec::new(),
            early: Vec::new(),
            // Several election timeouts: a whole cluster restarting elects within that.
            startup: StartupHold::new(
                Instant::now(),
                settings.tick * (5 * settings.election_ticks) as u32,
                4096,
            ),
            known_leader: 0,
            proposed_at: VecDeque::new(),
            latency: LatencyHistogram::default(),
            forwarder: None,
            last_active: HashMap::new(),
            reported_down: HashSet::new(),
            settings,
        })
    }

    /// Authenticates every call to a peer with `auth` (`None`: insecure mode); see
    /// `crate::auth`. Before the actor starts.
    pub(crate) fn with_peer_auth(mut self, auth: Option<Arc<crate::auth::PeerAuth>>) -> RaftNode {
        self.transport.set_auth(auth);
        self
    }

    /// Sends fast-path forwards through `forwarder`, keeping its peers in step with the
    /// membership.
    pub(crate) fn with_forwarder(mut self, forwarder: Arc<PeerForwarder>) -> RaftNode {
        self.forwarder = Some(forwarder);
        self
    }

    fn peer_addresses(&self) -> Vec<(u64, String)> {
        self.peers
            .iter()
            .map(|p| (p.node_id, p.raft_address.clone()))
            .collect()
    }

    /// Leader only: reports voters not heard from for `node_down_after` to the store, which
    /// proposes that their sessions go offline (their wills are published). A voter heard from
    /// again is forgotten from the report list.
    fn check_peers_alive(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            self.last_active.clear();
            self.reported_down.clear();
            return;
        }
        let now = Instant::now();
        let me = self.settings.id;
        let voters: Vec<u64> = self.storage.rl().conf_state.voters.clone();
        for id in voters.into_iter().filter(|id| *id != me) {
            let active = self.raw.raft.prs().get(id).is_some_and(|p| p.recent_active);
            let seen = *self.last_active.entry(id).or_insert(now);
            if active {
                self.last_active.insert(id, now);
                if self.reported_down.remove(&id) {
                    info!(node = id, "node is back");
                }
            } else if now.duration_since(seen) >= self.settings.node_down_after
                && self.reported_down.insert(id)
            {
                warn!(node = id, after = ?self.settings.node_down_after, "node unreachable: its sessions go offline and their wills are published");
                if let Some(sink) = &self.sink {
                    sink.do_send(LogEvent::PeerDown { node: id });
                }
            }
        }
    }

    fn schedule_ready(&mut self, ctx: &mut Context<Self>) {
        if !self.ready_scheduled {
            self.ready_scheduled = true;
            // Runs after the mailbox is drained: one Ready for everything stepped meanwhile.
            ctx.spawn(actix::fut::ready(()).map(|_, act: &mut Self, ctx| {
                act.ready_scheduled = false;
                act.on_ready(ctx);
            }));
        }
    }

    fn send(&mut self, msgs: Vec<RaftMessage>) {
        for id in self.transport.send(msgs) {
            self.raw.report_unreachable(id);
        }
    }

    fn on_ready(&mut self, ctx: &mut Context<Self>) {
        if self.release_held() {
            self.schedule_ready(ctx);
        }
        if self.sink.is_none() || !self.raw.has_ready() {
            self.update_status();
            return;
        }
        let mut rd = self.raw.ready();
        let msgs = rd.take_messages();
        self.send(msgs);
        let mut batch = WriteBatch::new(self.settings.group);
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone(), &mut batch);
        }
        if !rd.entries().is_empty() {
            persist_entries(&mut batch, rd.entries());
            self.storage.wl().append(rd.entries());
        }
        if let Some(hs) = rd.hs() {
            self.storage.wl().hard_state = hs.clone();
            batch.hard_state = Some(encode(hs));
        }
        let committed = rd.take_committed_entries();
        let messages = rd.take_persisted_messages();
        let number = rd.number();
        self.raw.advance_append_async(rd);
        self.apply_committed(committed, &mut batch);
        self.queued_writes.push_back(PendingWrite {
            batch,
            number,
            messages,
        });
        self.submit_writes(ctx);
        self.update_status();
    }

    fn install_snapshot(&mut self, snap: raft::eraftpb::Snapshot, batch: &mut WriteBatch) {
        let meta = snap.get_metadata().clone();
        let (index, term) = (meta.index, meta.term);
        let conf = meta.get_conf_state().clone();
        let wrapped = match cpb::SnapshotData::decode(snap.data.clone()) {
            Ok(w) => w,
            Err(e) => {
                error!(index, error = %e, "received snapshot cannot be decoded; ignored");
                return;
            }
        };
        info!(
            index,
            term,
            bytes = snap.data.len(),
            "installing snapshot from the leader"
        );
        batch.snapshot = Some(SnapshotRecord {
            index,
            term,
            data: snap.data.clone(),
        });
        batch.meta.push((SNAPSHOT_CONF_STATE.into(), encode(&conf)));
        batch.conf_state = Some(encode(&conf));
        batch.truncate_from = Some(index + 1);
        batch.compact_to = Some(index + 1);
        self.storage.wl().install(snap);
        self.conf_history = vec![(index, conf)];
        if let Some(peers) = wrapped.peers {
            self.set_peers(peers.members, batch);
        }
        self.last_applied = index;
        if let Some(sink) = &self.sink {
            sink.do_send(LogEvent::Restore {
                index,
                data: wrapped.state,
            });
        }
    }

    fn apply_committed(&mut self, committed: Vec<Entry>, batch: &mut WriteBatch) {
        if committed.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(committed.len());
        for e in committed {
            match e.get_entry_type() {
                EntryType::EntryNormal => out.push((e.index, e.data.clone())),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&e, batch);
                    out.push((e.index, Bytes::new()));
                }
            }
        }
        if let Some((last, _)) = out.last() {
            self.last_applied = *last;
            self.raw.advance_apply_to(*last);
            let now = Instant::now();
            while let Some((_, at)) = self.proposed_at.front().filter(|(i, _)| *i <= *last) {
                self.latency.observe(now - *at);
                self.proposed_at.pop_front();
            }
        }
        if let Some(sink) = &self.sink {
            sink.do_send(LogEvent::Committed(out));
        }
        self.check_recovered();
    }

    fn check_recovered(&mut self) {
        if !self.recovered_sent && self.last_applied >= self.startup_commit {
            self.recovered_sent = true;
            if let Some(sink) = &self.sink {
                sink.do_send(LogEvent::Recovered);
            }
        }
    }

    fn apply_conf_change(&mut self, e: &Entry, batch: &mut WriteBatch) {
        let cc: ConfChangeV2 = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            match decode(&e.data) {
                Ok(cc) => cc,
                Err(err) => return error!(index = e.index, error = %err, "undecodable conf change"),
            }
        } else {
            match decode::<raft::eraftpb::ConfChange>(&e.data) {
                Ok(cc) => raft_proto::ConfChangeI::into_v2(cc),
                Err(err) => return error!(index = e.index, error = %err, "undecodable conf change"),
            }
        };
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => return warn!(index = e.index, error = %err, "conf change rejected"),
        };
        info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
        self.storage.wl().conf_state = cs.clone();
        batch.conf_state = Some(encode(&cs));
        self.conf_history.push((e.index, cs));
        let mut peers = self.peers.clone();
        for change in cc.get_changes() {
            let id = change.node_id;
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if let Ok(ctx) = cpb::MemberContext::decode(cc.context.clone()) {
                        if ctx.node_id == id {
                            peers.retain(|p| p.node_id != id);
                            peers.push(ctx);
                        }
                    }
                    self.finish_conf_waiters(
                        |c| matches!(c, MemberChange::Add { id: i, .. } if *i == id),
                    );
                }
                ConfChangeType::RemoveNode => {
                    peers.retain(|p| p.node_id != id);
                    self.finish_conf_waiters(
                        |c| matches!(c, MemberChange::Remove { id: i } if *i == id),
                    );
                }
            }
        }
        self.set_peers(peers, batch);
    }

    fn finish_conf_waiters(&mut self, done: impl Fn(&MemberChange) -> bool) {
        let (finished, rest): (Vec<_>, Vec<_>) =
            self.conf_waiters.drain(..).partition(|w| done(&w.change));
        self.conf_waiters = rest;
        for w in finished {
            let _ = w.reply.send(Ok(()));
        }
    }

    /// Replaces the peer table: transport connections, persisted copy.
    fn set_peers(&mut self, peers: Vec<cpb::MemberContext>, batch: &mut WriteBatch) {
        for p in &self.peers {
            if !peers.iter().any(|q| q.node_id == p.node_id) {
                self.transport.remove_peer(p.node_id);
            }
        }
        for p in &peers {
            self.transport.set_peer(p.node_id, &p.raft_address);
        }
        batch.meta.push((
            PEERS.into(),
            Bytes::from(
                cpb::PeerTable {
                    members: peers.clone(),
                }
                .encode_to_vec(),
            ),
        ));
        self.peers = peers;
        if let Some(f) = &self.forwarder {
            f.set_peers(&self.peer_addresses());
        }
    }

    fn submit_writes(&mut self, ctx: &mut Context<Self>) {
        let Some(writer) = &self.writer else { return };
        while let Some(w) = self.queued_writes.pop_front() {
            let addr = ctx.address();
            let seq = self.next_write + 1;
            let done = Box::new(move |result: Result<(), StorageError>| {
                addr.do_send(Persisted { seq, result });
            });
            match writer.try_submit(w.batch, done) {
                Ok(()) => {
                    self.next_write = seq;
                    self.in_flight.push_back((seq, w.number, w.messages));
                }
                Err(e) if e.is_full() => {
                    // Keep order: retry from the front after the next completion.
                    let (batch, _) = e.into_parts();
                    self.queued_writes.push_front(PendingWrite { batch, ..w });
                    warn!("storage writer queue full; Raft writes wait");
                    return;
                }
                Err(e) => {
                    error!(error = %e, "storage writer gone");
                    return;
                }
            }
        }
    }

    fn update_status(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader != self.known_leader {
            if self.known_leader != 0 {
                if let Some(sink) = &self.sink {
                    let term = self.raw.raft.term;
                    sink.do_send(LogEvent::LeaderChanged {
                        leader: (leader != 0).then_some(leader),
                        term,
                    });
                }
            }
            info!(leader, term = self.raw.raft.term, "leader changed");
            self.known_leader = leader;
        }
        if self.raw.raft.state != StateRole::Leader {
            // Entries proposed as leader may never commit now; stop timing them.
            self.proposed_at.clear();
        }
        let raft = &self.raw.raft;
        let core = self.storage.rl();
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.id = self.settings.id;
        s.role = role_name(raft.state);
        s.term = raft.term;
        s.leader = raft.leader_id;
        s.commit_index = raft.raft_log.committed;
        s.applied_index = self.last_applied;
        s.first_index = core.first_index();
        s.last_index = core.last_index();
        s.snapshot_index = core.first_index() - 1;
        s.voters = core.conf_state.voters.clone();
        s.learners = core.conf_state.learners.clone();
        s.peers = self
            .peers
            .iter()
            .map(|p| (p.node_id, p.raft_address.clone(), p.admin_address.clone()))
            .collect();
        s.dropped_messages = self.transport.dropped;
        if s.proposal_latency.count != self.latency.count {
            s.proposal_latency = self.latency.clone();
        }
    }

    fn expire_conf_waiters(&mut self) {
        let now = Instant::now();
        let (expired, rest): (Vec<_>, Vec<_>) =
            self.conf_waiters.drain(..).partition(|w| w.deadline <= now);
        self.conf_waiters = rest;
        for w in expired {
            let _ = w.reply.send(Err(
                "membership change not applied in time (no quorum?)".into()
            ));
        }
    }
}

impl Actor for RaftNode {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64 * 1024);
        let peers = self.peers.clone();
        for p in &peers {
            self.transport.set_peer(p.node_id, &p.raft_address);
        }
        if let Some(f) = &self.forwarder {
            f.set_peers(&self.peer_addresses());
        }
        ctx.run_interval(self.settings.tick, |act, ctx| {
            act.raw.tick();
            act.release_held();
            act.expire_conf_waiters();
            act.check_peers_alive();
            act.schedule_ready(ctx);
        });
    }
}

impl Handler<Attach> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: Attach, ctx: &mut Self::Context) {
        let snapshot = {
            let core = self.storage.rl();
            (core.first_index() > 1).then(|| (core.first_index() - 1, core.snapshot.data.clone()))
        };
        if let Some((index, data)) = snapshot {
            match cpb::SnapshotData::decode(data) {
                Ok(w) => msg.0.do_send(LogEvent::Restore {
                    index,
                    data: w.state,
                }),
                Err(e) => error!(index, error = %e, "stored snapshot cannot be decoded"),
            }
        }
        self.sink = Some(msg.0);
        self.check_recovered();
        for data in std::mem::take(&mut self.early) {
            if let Some(data) = self.startup.offer(self.raw.raft.leader_id, data) {
                self.propose_now(data);
            }
        }
        self.schedule_ready(ctx);
    }
}

impl Handler<Step> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: Step, ctx: &mut Self::Context) {
        if let Err(e) = self.raw.step(msg.0) {
            debug!(error = %e, "raft message not stepped");
        }
        self.schedule_ready(ctx);
    }
}

impl Handler<Propose> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: Propose, ctx: &mut Self::Context) {
        if self.sink.is_none() {
            self.early.push(msg.0);
            return;
        }
        self.release_held();
        if let Some(data) = self.startup.offer(self.raw.raft.leader_id, msg.0) {
            self.propose_now(data);
        }
        self.schedule_ready(ctx);
    }
}

impl RaftNode {
    /// Hands an entry to raft-rs; tells the store at once if raft-rs refuses it.
    fn propose_now(&mut self, data: Bytes) {
        let result = self.raw.propose(Vec::new(), data.to_vec());
        if result.is_ok()
            && self.raw.raft.state == StateRole::Leader
            && self.proposed_at.len() < LATENCY_TRACKED
        {
            let index = self.raw.raft.raft_log.last_index();
            self.proposed_at.push_back((index, Instant::now()));
        }
        if let Err(e) = result {
            debug!(error = %e, "proposal dropped");
            let reason = if self.raw.raft.leader_id == 0 {
                "no leader".to_string()
            } else {
                e.to_string()
            };
            self.refuse(data, reason);
        }
    }

    fn refuse(&self, entry: Bytes, reason: String) {
        if let Some(sink) = &self.sink {
            sink.do_send(LogEvent::Rejected { entry, reason });
        }
    }

    /// Ends the startup hold once a leader is known (proposing what was held) or the window
    /// closed (refusing it). True if something was proposed.
    fn release_held(&mut self) -> bool {
        if self.sink.is_none() {
            return false;
        }
        match self
            .startup
            .release(self.raw.raft.leader_id, Instant::now())
        {
            Some(Released::Propose(held)) => {
                let any = !held.is_empty();
                if any {
                    info!(
                        proposals = held.len(),
                        leader = self.raw.raft.leader_id,
                        "leader known: proposing what was held since the start"
                    );
                }
                for data in held {
                    self.propose_now(data);
                }
                any
            }
            Some(Released::Refuse(held)) => {
                for data in held {
                    self.refuse(data, "no leader since the start".into());
                }
                false
            }
            None => false,
        }
    }
}

impl Handler<Persisted> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: Persisted, ctx: &mut Self::Context) {
        if let Err(e) = msg.result {
            // A node that cannot persist must not vote or acknowledge anything any more.
            error!(error = %e, "raft storage write failed; stopping the node");
            System::current().stop_with_code(70);
            return;
        }
        while self
            .in_flight
            .front()
            .is_some_and(|(seq, _, _)| *seq <= msg.seq)
        {
            let Some((_, number, messages)) = self.in_flight.pop_front() else {
                break;
            };
            if number != 0 {
                self.raw.on_persist_ready(number);
                // A snapshot installed by that Ready is applied now that it is persisted.
                applied::advance_applied(&mut self.raw, self.last_applied);
            }
            self.send(messages);
        }
        self.submit_writes(ctx);
        self.schedule_ready(ctx);
    }
}

impl Handler<SaveSnapshot> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: SaveSnapshot, ctx: &mut Self::Context) {
        let index = msg.index;
        let (snap_index, term) = {
            let core = self.storage.rl();
            (core.first_index() - 1, core.term(index))
        };
        let Some(term) = term else { return };
        if index <= snap_index || index > self.last_applied {
            return;
        }
        let conf = self
            .conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        let wrapped = Bytes::from(
            cpb::SnapshotData {
                state: msg.data,
                peers: Some(cpb::PeerTable {
                    members: self.peers.clone(),
                }),
            }
            .encode_to_vec(),
        );
        self.storage
            .wl()
            .compact(index, term, conf.clone(), wrapped.clone());
        self.conf_history.retain(|(i, _)| *i >= index);
        if self.conf_history.first().is_none_or(|(i, _)| *i > index) {
            self.conf_history.insert(0, (index, conf.clone()));
        }
        let mut batch = WriteBatch::new(self.settings.group);
        batch.snapshot = Some(SnapshotRecord {
            index,
            term,
            data: wrapped,
        });
        batch.meta.push((SNAPSHOT_CONF_STATE.into(), encode(&conf)));
        batch.compact_to = Some(index + 1);
        self.queued_writes.push_back(PendingWrite {
            batch,
            number: 0,
            messages: Vec::new(),
        });
        self.submit_writes(ctx);
        debug!(index, term, "raft log compacted behind a snapshot");
    }
}

impl Handler<ChangeMembers> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: ChangeMembers, ctx: &mut Self::Context) {
        let mut single = ConfChangeSingle::default();
        let mut cc = ConfChangeV2::default();
        match &msg.change {
            MemberChange::Add {
                id,
                raft_address,
                admin_address,
            } => {
                single.set_change_type(ConfChangeType::AddNode);
                single.node_id = *id;
                cc.context = Bytes::from(
                    cpb::MemberContext {
                        node_id: *id,
                        raft_address: raft_address.clone(),
                        admin_address: admin_address.clone(),
                    }
                    .encode_to_vec(),
                );
            }
            MemberChange::Remove { id } => {
                single.set_change_type(ConfChangeType::RemoveNode);
                single.node_id = *id;
            }
        }
        cc.set_changes(vec![single].into());
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => self.conf_waiters.push(ConfWaiter {
                change: msg.change,
                deadline: Instant::now() + self.settings.conf_change_timeout,
                reply: msg.reply,
            }),
            Err(e) => {
                let why = if self.raw.raft.leader_id == 0 {
                    "no leader".to_string()
                } else {
                    e.to_string()
                };
                let _ = msg.reply.send(Err(why));
            }
        }
        self.schedule_ready(ctx);
    }
}

impl Handler<TransferLeadership> for RaftNode {
    type Result = ();

    fn handle(&mut self, _: TransferLeadership, ctx: &mut Self::Context) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let me = self.settings.id;
        let target = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .max_by_key(|(_, p)| p.matched)
            .map(|(id, _)| *id);
        if let Some(t) = target {
            info!(to = t, "transferring leadership");
            self.raw.transfer_leader(t);
            self.schedule_ready(ctx);
        }
    }
}

impl Handler<ExportBackup> for RaftNode {
    type Result = MessageResult<ExportBackup>;

    fn handle(&mut self, _: ExportBackup, _: &mut Self::Context) -> Self::Result {
        let core = self.storage.rl();
        let entries = core
            .entries
            .iter()
            .take_while(|e| e.index <= self.last_applied)
            .cloned()
            .collect();
        MessageResult(Backup {
            snapshot: core.snapshot.clone(),
            entries,
        })
    }
}

impl Handler<Stop> for RaftNode {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        if let Some(w) = self.writer.take() {
            w.shutdown();
        }
        ctx.stop();
    }
}
