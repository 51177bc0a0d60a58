//! [`RaftCore`]: everything the Raft node of one group decides, as a plain struct.
//!
//! It drives `raft::RawNode` and keeps what goes with it: the in-memory log raft-rs reads, the
//! numbered writes in flight and the messages waiting for them, the applied index, the startup
//! hold, the configuration history and the peer table, leader-change and peer-down detection,
//! membership-change waiters, snapshots and compaction. It does no IO, reads no clock and draws
//! no random numbers of its own: inputs are method calls that take the time as a parameter, and
//! what must be done is collected in a [`RaftOutput`] the caller performs. The actor
//! ([`RaftNode`](super::RaftNode)) is a thin shell over it; a simulation drives it directly.
//!
//! ```text
//!  attach / tick / step / propose / change_members / ... ──▶ RawNode
//!  handle_ready (once per batch of inputs) ──▶ RaftOutput { messages, writes, events, peers }
//!  persisted(write) ──▶ on_persist_ready ──▶ RaftOutput { messages that waited for it }
//! ```
//!
//! The caller must perform the writes in the order they are numbered and report each one with
//! [`RaftCore::persisted`] (a report covers every earlier write too); a write that fails, or a
//! writer that is gone, is fatal ([`RaftOutput::fatal`]): a node that cannot persist must not
//! vote or acknowledge anything any more.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message as RaftMessage, MessageType, Snapshot,
};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole};
use starling_broker::LogEvent;
use starling_proto::cluster::v1 as cpb;
use starling_storage::{SnapshotRecord, StorageError, WriteBatch};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::applied;
use super::hold::{Released, StartupHold};
use super::status::{role_name, NodeStatus};
use super::storage::{decode, encode, persist_entries, RaftStorage, PEERS, SNAPSHOT_CONF_STATE};
use super::transfer::{TransferId, TransferSettings};
use crate::backup::Backup;
use crate::latency::LatencyHistogram;

/// Settings of a Raft node.
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
    /// Per-peer queue of the transport.
    pub peer_queue: usize,
    /// Message size cap (`cluster.max_message_bytes`); raft-rs puts at most half of it in entries
    /// per message.
    pub max_message_bytes: usize,
    /// How long a membership change may take.
    pub conf_change_timeout: Duration,
    /// A voter the leader has not heard from for this long is reported down: the cluster then
    /// disconnects its sessions and publishes their wills.
    pub node_down_after: Duration,
    /// How snapshots are sent in chunks.
    pub transfer: TransferSettings,
}

impl RaftSettings {
    /// The defaults of `cluster.*` for node `id` of group `group`.
    pub fn for_node(id: u64, group: u64) -> RaftSettings {
        RaftSettings {
            id,
            group,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            peer_queue: 4096,
            max_message_bytes: 256 * 1024 * 1024,
            conf_change_timeout: Duration::from_secs(10),
            node_down_after: Duration::from_secs(10),
            transfer: TransferSettings::default(),
        }
    }
}

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

/// Draws an election timeout in ticks from `[min, max)`: replaces raft-rs's own random draw
/// when set ([`RaftCore::set_election_timeout_source`]), so that a seeded simulation decides it.
pub type ElectionTimeoutSource = Box<dyn FnMut(usize, usize) -> usize + Send>;

/// What the caller must do after a call into [`RaftCore`], in this order within each list.
#[derive(Debug, Default)]
pub struct RaftOutput {
    /// Raft messages to peers, in order; `MsgSnapshot`s among them go through a snapshot
    /// transfer ([`super::transfer`]) whose end is reported with [`RaftCore::snapshot_sent`].
    pub messages: Vec<RaftMessage>,
    /// Storage writes, numbered: perform them in order and report each with
    /// [`RaftCore::persisted`].
    pub writes: Vec<(u64, WriteBatch)>,
    /// For the session store, in order.
    pub events: Vec<LogEvent>,
    /// The peer table changed: connect to these `(id, raft address)` (this node included).
    pub peers: Option<Vec<(u64, String)>>,
    /// The node must stop: why. Nothing else it asks for may be done any more.
    pub fatal: Option<String>,
}

impl RaftOutput {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.writes.is_empty()
            && self.events.is_empty()
            && self.peers.is_none()
            && self.fatal.is_none()
    }
}

/// Why a message was not stepped.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A snapshot our code cannot use: refused before raft-rs sees it, so that raft-rs and the
    /// storage never disagree about the log.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// raft-rs refused it.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The node stopped after a fatal error.
    #[error("the node has stopped")]
    Stopped,
}

/// A write handed out and not yet reported persisted.
#[derive(Debug)]
struct InFlightWrite {
    /// Its number ([`RaftOutput::writes`]).
    seq: u64,
    /// The Ready it persists (0: none, e.g. a compaction).
    ready: u64,
    /// Messages to send once it is durable (acknowledgements and votes).
    messages: Vec<RaftMessage>,
}

/// A membership change proposed here, answered once it is applied here.
struct ConfWaiter {
    change: MemberChange,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), String>>,
}

/// Proposals on the leader whose commit is awaited for the latency histogram, at most.
const LATENCY_TRACKED: usize = 65_536;

/// Proposals held at most during the startup window (see `hold`).
const STARTUP_HOLD: usize = 4096;

/// The decisions of the Raft node of one group; see the module documentation.
pub struct RaftCore {
    /// Fixed settings.
    settings: RaftSettings,
    /// raft-rs.
    raw: RawNode<RaftStorage>,
    /// The log raft-rs reads (the same one `raw` holds), updated by Ready handling.
    storage: RaftStorage,
    /// The session store is attached: Ready handling waits for it, and proposals made before it
    /// are kept in `early`.
    attached: bool,
    /// Writes handed out, not yet reported persisted, in order.
    in_flight: VecDeque<InFlightWrite>,
    /// Number of the last write handed out.
    last_write: u64,
    /// Configurations since the snapshot, by the index that made them: a snapshot taken at an
    /// index records the configuration as of that index, not the latest.
    conf_history: Vec<(u64, ConfState)>,
    /// Member addresses: the transport's peers, persisted with the log and carried in snapshots.
    peers: Vec<cpb::MemberContext>,
    /// The commit index on disk at start: `Recovered` is sent once everything up to it is
    /// applied (the replay).
    startup_commit: u64,
    /// `Recovered` was sent.
    recovered_sent: bool,
    /// Last index handed to the session store (a snapshot's, after one was installed).
    last_applied: u64,
    /// Membership changes awaited by the admin endpoint.
    conf_waiters: Vec<ConfWaiter>,
    /// Proposals made before the session store attached.
    early: Vec<Bytes>,
    /// Proposals made after the start and before a leader is known (see `hold`).
    startup: StartupHold,
    /// Leader as last seen, to tell the store when it changes.
    known_leader: u64,
    /// Entries proposed here while leading: (index, when), for the latency histogram.
    proposed_at: VecDeque<(u64, Instant)>,
    /// Proposal-to-commit latency.
    latency: LatencyHistogram,
    /// Leader only: when each voter was last heard from.
    last_active: HashMap<u64, Instant>,
    /// Leader only: voters reported down (reported once until heard from again).
    reported_down: HashSet<u64>,
    /// Replaces raft-rs's random election timeouts when set (simulation).
    election_source: Option<ElectionTimeoutSource>,
    /// Term, role and leader after the last call into raft-rs: raft-rs draws a new election
    /// timeout whenever they change.
    seen: (u64, StateRole, u64),
    /// The election timeout last set from `election_source`.
    timeout_set: usize,
    /// Set once the node must stop; every input is ignored from then on.
    fatal: Option<String>,
}

impl std::fmt::Debug for RaftCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftCore")
            .field("id", &self.settings.id)
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .field("last_applied", &self.last_applied)
            .field("fatal", &self.fatal)
            .finish_non_exhaustive()
    }
}

/// Decodes a snapshot's data and checks that the state in it is one the session store can
/// restore.
///
/// # Errors
/// What cannot be decoded.
pub fn check_snapshot_data(data: &Bytes) -> Result<cpb::SnapshotData, String> {
    let wrapped = cpb::SnapshotData::decode(data.clone())
        .map_err(|e| format!("snapshot data cannot be decoded: {e}"))?;
    starling_state::pb::Snapshot::decode(wrapped.state.clone())
        .map_err(|e| format!("snapshot state cannot be decoded: {e}"))?;
    Ok(wrapped)
}

impl RaftCore {
    /// A node over `storage` (loaded, bootstrapped or empty: see [`RaftStorage::open`]) with
    /// the peer table `peers`, at `now`.
    ///
    /// # Errors
    /// raft-rs rejects the configuration or the stored state.
    pub fn new(
        settings: RaftSettings,
        storage: RaftStorage,
        peers: Vec<cpb::MemberContext>,
        now: Instant,
    ) -> Result<RaftCore, raft::Error> {
        let (startup_commit, conf, snap_index) = {
            let core = storage.rl();
            (
                core.hard_state.commit,
                core.conf_state.clone(),
                core.first_index() - 1,
            )
        };
        let config = raft::Config {
            id: settings.id,
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            // What the snapshot holds is what the store restores first.
            applied: snap_index,
            max_size_per_msg: (settings.max_message_bytes as u64 / 2).min(1024 * 1024),
            max_inflight_msgs: 256,
            max_uncommitted_size: 256 * 1024 * 1024,
            max_committed_size_per_ready: 16 * 1024 * 1024,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        config.validate()?;
        let raw = RawNode::new(
            &config,
            storage.clone(),
            &super::slog_drain::logger(settings.id),
        )?;
        let seen = (raw.raft.term, raw.raft.state, raw.raft.leader_id);
        let timeout_set = raw.raft.randomized_election_timeout();
        Ok(RaftCore {
            raw,
            storage,
            attached: false,
            in_flight: VecDeque::new(),
            last_write: 0,
            conf_history: vec![(snap_index, conf)],
            peers,
            startup_commit,
            recovered_sent: false,
            last_applied: snap_index,
            conf_waiters: Vec::new(),
            early: Vec::new(),
            // Several election timeouts: a whole cluster restarting elects within that.
            startup: StartupHold::new(
                now,
                settings.tick * (5 * settings.election_ticks) as u32,
                STARTUP_HOLD,
            ),
            known_leader: 0,
            proposed_at: VecDeque::new(),
            latency: LatencyHistogram::default(),
            last_active: HashMap::new(),
            reported_down: HashSet::new(),
            election_source: None,
            seen,
            timeout_set,
            fatal: None,
            settings,
        })
    }

    /// Draws election timeouts from `source` instead of raft-rs's thread-local random
    /// generator, from now on (the current timeout is drawn again at once).
    pub fn set_election_timeout_source(&mut self, source: ElectionTimeoutSource) {
        self.election_source = Some(source);
        self.draw_election_timeout();
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.settings.id
    }

    /// The settings.
    pub fn settings(&self) -> &RaftSettings {
        &self.settings
    }

    /// raft-rs, to look at (progress of followers, terms, logs).
    pub fn raw(&self) -> &RawNode<RaftStorage> {
        &self.raw
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Whether this node's replica is fresh enough for its routers to decide alone that a QoS
    /// 1/2 message needs no durable delivery: a leader is known and was heard from within an
    /// election timeout (a leader counts itself: check-quorum steps it down otherwise), and
    /// everything known to be committed has been handed to the store. See
    /// [`starling_broker::Freshness`].
    pub fn fresh(&self) -> bool {
        let r = &self.raw.raft;
        self.fatal.is_none()
            && r.leader_id != 0
            && r.election_elapsed < self.settings.election_ticks
            && self.last_applied >= r.raft_log.committed
    }

    /// Last index handed to the session store.
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// Why the node stopped, if it did.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// The peer table as `(id, raft address)`, this node included.
    pub fn peer_addresses(&self) -> Vec<(u64, String)> {
        self.peers
            .iter()
            .map(|p| (p.node_id, p.raft_address.clone()))
            .collect()
    }

    /// Stops the node for good: nothing it does from now on may reach disk or peers.
    fn stop(&mut self, why: String, out: &mut RaftOutput) {
        if self.fatal.is_none() {
            self.fatal = Some(why.clone());
        }
        out.fatal = Some(why);
    }

    /// Events reach the session store only once it is attached.
    fn emit(&self, event: LogEvent, out: &mut RaftOutput) {
        if self.attached {
            out.events.push(event);
        }
    }

    /// raft-rs draws a new election timeout whenever it resets (a new term, role or leader);
    /// with a source set, replace it with one from the source. Called after every call into
    /// raft-rs that can reset it.
    fn after_raft_call(&mut self) {
        if self.election_source.is_none() {
            return;
        }
        let r = &self.raw.raft;
        let seen = (r.term, r.state, r.leader_id);
        if seen != self.seen || r.randomized_election_timeout() != self.timeout_set {
            self.draw_election_timeout();
        }
    }

    fn draw_election_timeout(&mut self) {
        let Some(source) = self.election_source.as_mut() else {
            return;
        };
        // raft-rs's defaults: [election_tick, 2 * election_tick).
        let min = self.settings.election_ticks;
        let max = 2 * self.settings.election_ticks;
        let t = source(min, max).clamp(min, max.saturating_sub(1).max(min));
        self.raw.raft.set_randomized_election_timeout(t);
        let r = &self.raw.raft;
        self.seen = (r.term, r.state, r.leader_id);
        self.timeout_set = t;
    }

    /// The session store is attached: it gets the stored snapshot (`Restore`), the committed
    /// entries as they are applied, then `Recovered`; proposals made before are proposed now.
    pub fn attach(&mut self, now: Instant, out: &mut RaftOutput) {
        if self.fatal.is_some() || self.attached {
            return;
        }
        self.attached = true;
        let snapshot = {
            let core = self.storage.rl();
            (core.first_index() > 1).then(|| (core.first_index() - 1, core.snapshot.data.clone()))
        };
        if let Some((index, data)) = snapshot {
            match cpb::SnapshotData::decode(data) {
                Ok(w) => self.emit(
                    LogEvent::Restore {
                        index,
                        data: w.state,
                    },
                    out,
                ),
                Err(e) => {
                    // Going on without it would apply the log to the wrong state.
                    return self.stop(
                        format!("the stored snapshot at {index} cannot be decoded: {e}"),
                        out,
                    );
                }
            }
        }
        self.check_recovered(out);
        for data in std::mem::take(&mut self.early) {
            if let Some(data) = self.startup.offer(self.raw.raft.leader_id, data) {
                self.propose_now(data, now, out);
            }
        }
        self.after_raft_call();
    }

    /// One tick of Raft time (the caller calls it every `settings.tick`).
    pub fn tick(&mut self, now: Instant, out: &mut RaftOutput) {
        if self.fatal.is_some() {
            return;
        }
        self.raw.tick();
        self.after_raft_call();
        self.release_held(now, out);
        self.expire_conf_waiters(now);
        self.check_peers_alive(now, out);
    }

    /// A peer's message. A `MsgSnapshot` is checked first: one whose data our code cannot
    /// restore is refused before raft-rs takes it.
    ///
    /// # Errors
    /// [`StepError::InvalidSnapshot`] (the sender reports the transfer failed), raft-rs's
    /// refusal, or a stopped node.
    pub fn step(&mut self, msg: RaftMessage, _out: &mut RaftOutput) -> Result<(), StepError> {
        if self.fatal.is_some() {
            return Err(StepError::Stopped);
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            check_snapshot_data(&msg.get_snapshot().data).map_err(StepError::InvalidSnapshot)?;
        }
        let result = self.raw.step(msg);
        self.after_raft_call();
        result.map_err(StepError::from)
    }

    /// An entry to replicate (the session store's batch of commands). Refused at once (a
    /// `Rejected` event) when raft-rs drops it; held while the node has just started and
    /// knows no leader yet.
    pub fn propose(&mut self, data: Bytes, now: Instant, out: &mut RaftOutput) {
        if self.fatal.is_some() {
            return;
        }
        if !self.attached {
            self.early.push(data);
            return;
        }
        self.release_held(now, out);
        if let Some(data) = self.startup.offer(self.raw.raft.leader_id, data) {
            self.propose_now(data, now, out);
        }
        self.after_raft_call();
    }

    /// Hands an entry to raft-rs; tells the store at once if raft-rs refuses it.
    fn propose_now(&mut self, data: Bytes, now: Instant, out: &mut RaftOutput) {
        let result = self.raw.propose(Vec::new(), data.to_vec());
        if result.is_ok()
            && self.raw.raft.state == StateRole::Leader
            && self.proposed_at.len() < LATENCY_TRACKED
        {
            let index = self.raw.raft.raft_log.last_index();
            self.proposed_at.push_back((index, now));
        }
        if let Err(e) = result {
            debug!(error = %e, "proposal dropped");
            let reason = if self.raw.raft.leader_id == 0 {
                "no leader".to_string()
            } else {
                e.to_string()
            };
            self.emit(
                LogEvent::Rejected {
                    entry: data,
                    reason,
                },
                out,
            );
        }
    }

    /// Ends the startup hold once a leader is known (proposing what was held) or the window
    /// closed (refusing it).
    fn release_held(&mut self, now: Instant, out: &mut RaftOutput) {
        if !self.attached {
            return;
        }
        match self.startup.release(self.raw.raft.leader_id, now) {
            Some(Released::Propose(held)) => {
                if !held.is_empty() {
                    info!(
                        proposals = held.len(),
                        leader = self.raw.raft.leader_id,
                        "leader known: proposing what was held since the start"
                    );
                }
                for data in held {
                    self.propose_now(data, now, out);
                }
            }
            Some(Released::Refuse(held)) => {
                for data in held {
                    self.emit(
                        LogEvent::Rejected {
                            entry: data,
                            reason: "no leader since the start".into(),
                        },
                        out,
                    );
                }
            }
            None => {}
        }
    }

    /// Handles what raft-rs has ready; call it after each batch of inputs (the actor does once
    /// per mailbox pass, so that everything that arrived meanwhile shares one Ready and one
    /// write: group commit).
    pub fn handle_ready(&mut self, now: Instant, out: &mut RaftOutput) {
        if self.fatal.is_some() {
            return;
        }
        // A leader may be known since the last input: what was held goes into this Ready.
        self.release_held(now, out);
        if !self.attached || !self.raw.has_ready() {
            self.observe_leader(out);
            return;
        }
        let mut rd = self.raw.ready();
        // Step 1: the leader's messages go at once; they may precede the leader's own write
        // (Raft thesis 10.2.1): it counts itself towards a quorum only once persisted.
        out.messages.extend(rd.take_messages());
        let mut batch = WriteBatch::new(self.settings.group);
        // Step 2: a snapshot from the leader replaces the log and the state. It was checked
        // when it arrived; one that still cannot be decoded stops the node rather than leave
        // raft-rs (which took it) and the storage disagreeing.
        if !rd.snapshot().is_empty() {
            if let Err(why) = self.install_snapshot(rd.snapshot().clone(), &mut batch, out) {
                return self.stop(why, out);
            }
        }
        // Step 3: new entries (replacing a conflicting suffix) and the hard state, in memory
        // at once (raft-rs reads them from there) and in the write batch.
        if !rd.entries().is_empty() {
            persist_entries(&mut batch, rd.entries());
            self.storage.wl().append(rd.entries());
        }
        if let Some(hs) = rd.hs() {
            self.storage.wl().hard_state = hs.clone();
            batch.hard_state = Some(encode(hs));
        }
        let committed = rd.take_committed_entries();
        // Acknowledgements and votes: sent only once the write is durable.
        let messages = rd.take_persisted_messages();
        let ready = rd.number();
        // Step 4: raft-rs may go on; it learns of durability through `on_persist_ready`.
        self.raw.advance_append_async(rd);
        // Step 5: committed entries (raft-rs hands out only what is durable here): membership
        // changes are applied here, the rest goes to the session store, in order.
        self.apply_committed(committed, &mut batch, now, out);
        // Step 6: the write, numbered; its messages wait for it.
        self.push_write(batch, ready, messages, out);
        self.after_raft_call();
        self.observe_leader(out);
    }

    fn push_write(
        &mut self,
        batch: WriteBatch,
        ready: u64,
        messages: Vec<RaftMessage>,
        out: &mut RaftOutput,
    ) {
        self.last_write += 1;
        let seq = self.last_write;
        self.in_flight.push_back(InFlightWrite {
            seq,
            ready,
            messages,
        });
        out.writes.push((seq, batch));
    }

    /// Write `seq` (and every earlier one) is durable, or failed (fatal).
    pub fn persisted(
        &mut self,
        seq: u64,
        result: Result<(), StorageError>,
        _now: Instant,
        out: &mut RaftOutput,
    ) {
        if self.fatal.is_some() {
            return;
        }
        if let Err(e) = result {
            // A node that cannot persist must not vote or acknowledge anything any more.
            return self.stop(format!("raft storage write failed: {e}"), out);
        }
        while self.in_flight.front().is_some_and(|w| w.seq <= seq) {
            let Some(w) = self.in_flight.pop_front() else {
                break;
            };
            if w.ready != 0 {
                self.raw.on_persist_ready(w.ready);
                // A snapshot installed by that Ready is applied now that it is persisted.
                applied::advance_applied(&mut self.raw, self.last_applied);
            }
            out.messages.extend(w.messages);
        }
        self.after_raft_call();
    }

    /// The storage writer is gone: nothing handed out can become durable. As fatal as a
    /// failed write.
    pub fn writer_closed(&mut self, out: &mut RaftOutput) {
        self.stop("the raft storage writer has stopped".into(), out);
    }

    fn install_snapshot(
        &mut self,
        snap: Snapshot,
        batch: &mut WriteBatch,
        out: &mut RaftOutput,
    ) -> Result<(), String> {
        let meta = snap.get_metadata().clone();
        let (index, term) = (meta.index, meta.term);
        let conf = meta.get_conf_state().clone();
        let wrapped = check_snapshot_data(&snap.data)
            .map_err(|e| format!("a snapshot raft-rs accepted at {index}: {e}"))?;
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
            self.set_peers(peers.members, batch, out);
        }
        self.last_applied = index;
        self.emit(
            LogEvent::Restore {
                index,
                data: wrapped.state,
            },
            out,
        );
        Ok(())
    }

    fn apply_committed(
        &mut self,
        committed: Vec<Entry>,
        batch: &mut WriteBatch,
        now: Instant,
        out: &mut RaftOutput,
    ) {
        if committed.is_empty() {
            return;
        }
        let mut applied = Vec::with_capacity(committed.len());
        for e in committed {
            match e.get_entry_type() {
                EntryType::EntryNormal => applied.push((e.index, e.data.clone())),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&e, batch, out);
                    applied.push((e.index, Bytes::new()));
                }
            }
        }
        if let Some((last, _)) = applied.last() {
            self.last_applied = *last;
            self.raw.advance_apply_to(*last);
            while let Some((_, at)) = self.proposed_at.front().filter(|(i, _)| *i <= *last) {
                self.latency.observe(now.saturating_duration_since(*at));
                self.proposed_at.pop_front();
            }
        }
        self.emit(LogEvent::Committed(applied), out);
        self.check_recovered(out);
    }

    fn check_recovered(&mut self, out: &mut RaftOutput) {
        if self.attached && !self.recovered_sent && self.last_applied >= self.startup_commit {
            self.recovered_sent = true;
            self.emit(LogEvent::Recovered, out);
        }
    }

    fn apply_conf_change(&mut self, e: &Entry, batch: &mut WriteBatch, out: &mut RaftOutput) {
        let cc: ConfChangeV2 = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            match decode(&e.data) {
                Ok(cc) => cc,
                Err(err) => return warn!(index = e.index, error = %err, "undecodable conf change"),
            }
        } else {
            match decode::<raft::eraftpb::ConfChange>(&e.data) {
                Ok(cc) => raft_proto::ConfChangeI::into_v2(cc),
                Err(err) => return warn!(index = e.index, error = %err, "undecodable conf change"),
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
                    // A removed node hears no more of the log: the sessions it served are
                    // released by the others (offline, wills published), as for a node that
                    // went silent. The leader proposes it; the others' proposals are no-ops.
                    if id != self.settings.id && self.raw.raft.state == StateRole::Leader {
                        info!(node = id, "node removed: its sessions go offline");
                        self.emit(LogEvent::PeerDown { node: id }, out);
                    }
                }
            }
        }
        self.set_peers(peers, batch, out);
    }

    fn finish_conf_waiters(&mut self, done: impl Fn(&MemberChange) -> bool) {
        let (finished, rest): (Vec<_>, Vec<_>) =
            self.conf_waiters.drain(..).partition(|w| done(&w.change));
        self.conf_waiters = rest;
        for w in finished {
            let _ = w.reply.send(Ok(()));
        }
    }

    fn expire_conf_waiters(&mut self, now: Instant) {
        let (expired, rest): (Vec<_>, Vec<_>) =
            self.conf_waiters.drain(..).partition(|w| w.deadline <= now);
        self.conf_waiters = rest;
        for w in expired {
            let _ = w.reply.send(Err(
                "membership change not applied in time (no quorum?)".into()
            ));
        }
    }

    /// Replaces the peer table: persisted with the batch, and handed to the transport.
    fn set_peers(
        &mut self,
        peers: Vec<cpb::MemberContext>,
        batch: &mut WriteBatch,
        out: &mut RaftOutput,
    ) {
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
        out.peers = Some(self.peer_addresses());
    }

    /// A state snapshot as of `index` (the store's, at an applied index): stored with the
    /// configuration as of that index and the peer table, and the log is compacted behind it,
    /// in memory and on disk.
    pub fn save_snapshot(&mut self, index: u64, data: Bytes, out: &mut RaftOutput) {
        if self.fatal.is_some() {
            return;
        }
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
                state: data,
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
        self.push_write(batch, 0, Vec::new(), out);
        debug!(index, term, "raft log compacted behind a snapshot");
    }

    /// Proposes a membership change; `reply` is answered once it is applied here, or when it
    /// fails (refused now, or not applied within `conf_change_timeout`).
    pub fn change_members(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<Result<(), String>>,
        now: Instant,
        _out: &mut RaftOutput,
    ) {
        if self.fatal.is_some() {
            let _ = reply.send(Err("the node has stopped".into()));
            return;
        }
        let mut single = ConfChangeSingle::default();
        let mut cc = ConfChangeV2::default();
        match &change {
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
                change,
                deadline: now + self.settings.conf_change_timeout,
                reply,
            }),
            Err(e) => {
                let why = if self.raw.raft.leader_id == 0 {
                    "no leader".to_string()
                } else {
                    e.to_string()
                };
                let _ = reply.send(Err(why));
            }
        }
        self.after_raft_call();
    }

    /// On the leader: hands leadership to the most up-to-date other voter (graceful shutdown).
    pub fn transfer_leadership(&mut self, _out: &mut RaftOutput) {
        if self.fatal.is_some() || self.raw.raft.state != StateRole::Leader {
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
            self.after_raft_call();
        }
    }

    /// The snapshot transfer `id` ended: `finished` when the receiver installed it, else it
    /// failed. Reported to raft-rs (`report_snapshot`) if raft-rs still waits for that
    /// transfer; otherwise (a new term, a newer snapshot for that follower) the report would
    /// concern another transfer and is dropped. Without a failure report the follower stays
    /// paused in raft-rs's Snapshot state until the leader changes.
    pub fn snapshot_sent(&mut self, id: &TransferId, finished: bool, _out: &mut RaftOutput) {
        if self.fatal.is_some() {
            return;
        }
        #[cfg(feature = "mutations")]
        if !finished && super::mutations::on(super::mutations::Mutation::UnreportedSnapshot) {
            return;
        }
        let r = &self.raw.raft;
        let awaited = r.state == StateRole::Leader
            && r.term == id.term
            && r.prs().get(id.to).is_some_and(|p| {
                p.state == ProgressState::Snapshot && p.pending_snapshot == id.index
            });
        if !awaited {
            debug!(
                to = id.to,
                index = id.index,
                term = id.term,
                "stale snapshot report dropped"
            );
            return;
        }
        let status = if finished {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id.to, status);
        self.after_raft_call();
    }

    /// A message to `to` could not be sent (its queue is full): raft-rs slows down replication
    /// to it.
    pub fn report_unreachable(&mut self, to: u64) {
        if self.fatal.is_some() {
            return;
        }
        self.raw.report_unreachable(to);
        self.after_raft_call();
    }

    /// Leader only: reports voters not heard from for `node_down_after` to the store, which
    /// proposes that their sessions go offline (their wills are published). A voter heard from
    /// again is forgotten from the report list.
    fn check_peers_alive(&mut self, now: Instant, out: &mut RaftOutput) {
        if self.raw.raft.state != StateRole::Leader {
            self.last_active.clear();
            self.reported_down.clear();
            return;
        }
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
            } else if now.saturating_duration_since(seen) >= self.settings.node_down_after
                && self.reported_down.insert(id)
            {
                warn!(node = id, after = ?self.settings.node_down_after, "node unreachable: its sessions go offline and their wills are published");
                self.emit(LogEvent::PeerDown { node: id }, out);
            }
        }
    }

    /// Tells the store when the leader changes (entries proposed before may never commit).
    fn observe_leader(&mut self, out: &mut RaftOutput) {
        let leader = self.raw.raft.leader_id;
        if leader != self.known_leader {
            if self.known_leader != 0 {
                self.emit(
                    LogEvent::LeaderChanged {
                        leader: (leader != 0).then_some(leader),
                        term: self.raw.raft.term,
                    },
                    out,
                );
            }
            info!(leader, term = self.raw.raft.term, "leader changed");
            self.known_leader = leader;
        }
        if self.raw.raft.state != StateRole::Leader {
            // Entries proposed as leader may never commit now; stop timing them.
            self.proposed_at.clear();
        }
    }

    /// What the admin endpoint and `$SYS` see (the transport's counters left at zero).
    pub fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let core = self.storage.rl();
        NodeStatus {
            id: self.settings.id,
            role: role_name(raft.state),
            term: raft.term,
            leader: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: self.last_applied,
            first_index: core.first_index(),
            last_index: core.last_index(),
            snapshot_index: core.first_index() - 1,
            voters: core.conf_state.voters.clone(),
            learners: core.conf_state.learners.clone(),
            peers: self
                .peers
                .iter()
                .map(|p| (p.node_id, p.raft_address.clone(), p.admin_address.clone()))
                .collect(),
            dropped_messages: 0,
            proposal_latency: self.latency.clone(),
        }
    }

    /// The latest stored snapshot and the entries applied after it.
    pub fn export_backup(&self) -> Backup {
        let core = self.storage.rl();
        let entries = core
            .entries
            .iter()
            .take_while(|e| e.index <= self.last_applied)
            .cloned()
            .collect();
        Backup {
            snapshot: core.snapshot.clone(),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::SnapshotMetadata;
    use starling_storage::LogStore;

    #[test]
    fn an_undecodable_snapshot_raft_rs_took_stops_the_node() {
        let store = LogStore::open_in_memory().unwrap();
        let configured: Vec<(u64, String)> = (1..=3).map(|id| (id, format!("n{id}:1"))).collect();
        let (storage, peers, _) = RaftStorage::open(&store, 1, 2, &configured, true).unwrap();
        let now = Instant::now();
        let mut core = RaftCore::new(RaftSettings::for_node(2, 1), storage, peers, now).unwrap();
        let mut out = RaftOutput::default();
        core.attach(now, &mut out);
        let mut meta = SnapshotMetadata::default();
        meta.index = 10;
        meta.term = 2;
        meta.mut_conf_state().voters = vec![1, 2, 3];
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = Bytes::from_static(b"\xff\xff not a snapshot");
        let mut m = RaftMessage::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        (m.from, m.to, m.term) = (1, 2, 2);
        m.set_snapshot(snap);
        // Past the check (which `step` does): raft-rs takes it.
        core.raw.step(m).unwrap();
        let mut out = RaftOutput::default();
        core.handle_ready(now, &mut out);
        assert!(
            out.fatal
                .as_deref()
                .is_some_and(|f| f.contains("cannot be decoded")),
            "{out:?}"
        );
        assert!(out.writes.is_empty() && out.events.is_empty(), "{out:?}");
        assert!(core.fatal().is_some());
    }
}
