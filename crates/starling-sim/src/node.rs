//! A simulated node: one process of the broker, made of the production logic the actors drive
//! — the Raft node ([`RaftCore`]), the session store ([`StoreCore`]), the router shards
//! ([`RouteTable`]) and the client connections ([`SimConn`] over `ClientFlow`) — with their
//! mailboxes as ordered channels of the simulation and their IO (peer transport, storage
//! writer, sockets) as simulated messages.
//!
//! What the node's actors do with each message mirrors their handlers in `starling-broker` and
//! `starling-cluster`: feed the core, then perform its output.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use starling_broker::config::{BrokerConfig, SharedLimits};
use starling_broker::connection::FlowLimits;
use starling_broker::messages::{
    Acked, ConnectRequest, DurableItem, KickReason, Route, RouteTargetId, RouteUpdate,
    SessionSettings, Target,
};
use starling_broker::replication::{
    LogEvent, LogStartError, LogStatus, ProposeError, ReplicatedLog,
};
use starling_broker::router::{shard_of, HeldRoutes, Outbox, RouteTable};
use starling_broker::store::output::{ConnMessage, ShardMessage};
use starling_broker::StoreCore;
use starling_cluster::raft::{
    Chunk, ChunkAck, Next, Outcome, RaftCore, RaftOutput, RaftSettings, RaftStorage, Received,
    SnapshotReceiver, SnapshotTransfer, TransferId, TransferSettings,
};
use starling_state::{pb, Message as AppMessage};
use starling_storage::LogStore;
use tokio::sync::oneshot;

use crate::client::ClientIdx;
use crate::conn::{ConnInput, ConnOut, SimConn, StoreRequest};
use crate::disk::SimDisk;
use crate::net::NetMsg;
use crate::rng::SimRng;
use crate::sched::{Chan, Event, Micros, Sched};

/// An actor of a node (the end of an ordered channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Actor {
    /// The session store.
    Store,
    /// The Raft node.
    Raft,
    /// A router shard.
    Router(usize),
    /// A connection.
    Conn(u64),
}

/// A message for an actor of a node.
pub enum Local {
    /// For the session store.
    Store(StoreInput),
    /// For the Raft node.
    Raft(RaftInput),
    /// For a router shard.
    Router(RouterInput),
    /// For a connection.
    Conn(ConnInput),
    /// A connection's awaited answer may be there (the store answered on a oneshot).
    Wake,
}

/// What the session store handles.
// Most are requests (a CONNECT's carries the will with its properties): boxing them would cost
// an allocation each and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum StoreInput {
    /// A connection's request.
    Request(StoreRequest),
    /// Messages the router found need the replicated state.
    Durable(Vec<DurableItem<()>>),
    /// From the log.
    Log(LogEvent),
    /// The old connection of a takeover is gone (or the wait timed out).
    FinishTakeover(u64, Box<ConnectRequest<()>>),
    /// The admin operation that changes the replicated limits.
    SetLimits(pb::Limits),
}

/// What the Raft node handles.
pub enum RaftInput {
    /// The store's entry.
    Propose(Bytes),
    /// A state snapshot to store; the log before it is compacted.
    SaveSnapshot(u64, Bytes),
    /// A peer's message.
    Step(Box<RaftMessage>),
    /// The storage write `seq` is durable.
    Persisted(u64),
    /// A snapshot transfer ended.
    SnapshotSent(TransferId, bool),
    /// Hand leadership to another voter (graceful shutdown).
    TransferLeadership,
}

/// What a router shard handles.
pub enum RouterInput {
    /// From the store.
    Store(ShardMessage<()>),
    /// A connection's PUBLISHes.
    Route(Route<()>),
    /// Messages forwarded by another node.
    Forwarded(Vec<AppMessage>),
}

/// A node's timers.
#[derive(Clone, Copy, Debug)]
pub enum Timer {
    /// Raft's tick.
    RaftTick,
    /// The Raft node's end of mailbox pass: handle the Ready.
    RaftReady,
    /// The store's half-second timer.
    StoreTick,
    /// The store's ten-second timer (session expiry, reconciliation).
    StoreExpire,
    /// The store's end of mailbox pass: flush proposals.
    StoreFlush,
    /// A snapshot transfer to this peer is due to act.
    Transfer(u64),
    /// A connection's wait for the store timed out.
    ConnTimeout(u64, u64),
    /// A takeover's wait for the old connection timed out.
    Takeover(u64),
    /// A connection's keep-alive check.
    KeepAlive(u64),
    /// A router shard looks whether its held batches may go.
    RouterHeld(usize),
}

/// The store's port to the Raft node: what the store's log calls become.
#[derive(Clone, Default)]
struct LogPort(Arc<Mutex<PortState>>);

#[derive(Default)]
struct PortState {
    proposals: Vec<Bytes>,
    snapshots: Vec<(u64, Bytes)>,
    status: LogStatus,
    stopped: bool,
}

impl LogPort {
    fn lock(&self) -> std::sync::MutexGuard<'_, PortState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ReplicatedLog for LogPort {
    fn start(&mut self, _: actix::Recipient<LogEvent>) -> Result<(), LogStartError> {
        Ok(())
    }

    fn propose(&mut self, data: Bytes) -> Result<(), ProposeError> {
        let mut s = self.lock();
        if s.stopped {
            return Err(ProposeError::Unavailable("raft node stopped".into()));
        }
        s.proposals.push(data);
        Ok(())
    }

    fn save_snapshot(&mut self, index: u64, data: Bytes) {
        self.lock().snapshots.push((index, data));
    }

    fn status(&self) -> LogStatus {
        self.lock().status.clone()
    }

    fn shutdown(&mut self, _: tokio::sync::oneshot::Sender<()>) {
        self.lock().stopped = true;
    }
}

/// Counts of what a run exercised.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Snapshots taken (compactions).
    pub snapshots_taken: u64,
    /// Snapshot transfers that failed (and were reported).
    pub snapshot_failures: u64,
    /// Crashes (kill -9).
    pub crashes: u64,
    /// Crashes while a client was in the middle of a QoS 2 flow through that node.
    pub crashes_mid_qos2: u64,
    /// Graceful restarts.
    pub graceful_restarts: u64,
    /// Membership changes applied.
    pub membership_changes: u64,
    /// Takeovers (a session taken from one connection by another).
    pub takeovers: u64,
    /// Partitions.
    pub partitions: u64,
    /// Changes of the replicated limits.
    pub limit_changes: u64,
    /// Proposals of a restarted node refused because no leader appeared within its startup
    /// hold (its own `NodeDown` among them: then proposed again).
    pub startup_refusals: u64,
    /// Leader changes seen.
    pub leader_changes: u64,
    /// Derived-index checks passed.
    pub derived_checks: u64,
    /// Digest comparisons at equal applied indexes.
    pub digest_checks: u64,
}

/// A node process.
pub struct SimNode {
    /// Node id.
    pub id: u64,
    /// Process incarnation (events of an earlier one are dropped).
    pub inc: u64,
    /// The Raft node's logic.
    pub raft: RaftCore,
    /// The session store's logic.
    pub store: StoreCore<()>,
    /// The router shards.
    pub routers: Vec<RouteTable<()>>,
    /// Each shard's batches held while the replica is not fresh.
    held: Vec<HeldRoutes<()>>,
    /// Connections by id.
    pub conns: BTreeMap<u64, SimConn>,
    /// Last connection id handed out (random prefix per process, as the listener does).
    next_conn: u64,
    /// The store's log port.
    port: LogPort,
    /// Snapshot transfers to peers.
    transfers: BTreeMap<u64, SnapshotTransfer>,
    /// Snapshots arriving in chunks.
    receiver: SnapshotReceiver,
    /// Fires once the store recovered.
    ready: oneshot::Receiver<Result<(), String>>,
    /// The store recovered (listeners would be open).
    pub serving: bool,
    /// A Ready is scheduled for the end of the Raft node's pass.
    ready_scheduled: bool,
    /// A flush is scheduled for the end of the store's pass.
    flush_scheduled: bool,
    /// Takeovers waiting for the old connection to go: wait id → (old connection, CONNECT).
    takeovers: BTreeMap<u64, (u64, ConnectRequest<()>)>,
    /// Last takeover wait id.
    next_wait: u64,
    /// Configuration of this node (may differ from the others').
    pub config: Arc<BrokerConfig>,
    /// The replicated limits as the store publishes them for connections.
    limits: Arc<SharedLimits>,
    /// The leader this node last saw.
    pub leader: u64,
}

/// Why a node process ended on its own.
pub struct Fatal(pub String);

/// The settings of the simulated cluster.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// Every node that may ever run.
    pub all: Vec<u64>,
    /// The founding voters.
    pub founders: Vec<u64>,
    /// Raft tick.
    pub tick: Duration,
    /// Election ticks.
    pub election_ticks: usize,
    /// After how long the leader reports a silent node down.
    pub node_down_after: Duration,
    /// Snapshot chunk size.
    pub chunk_bytes: usize,
    /// Largest entry.
    pub max_entry_bytes: usize,
}

fn address(id: u64) -> String {
    format!("node-{id}:7946")
}

impl SimNode {
    /// Starts node `id`'s process `inc` over `disk`: opens (or bootstraps) its Raft log, attaches
    /// the store, starts the timers.
    pub fn start(
        id: u64,
        inc: u64,
        disk: &SimDisk,
        cluster: &ClusterSettings,
        config: Arc<BrokerConfig>,
        bootstrap: bool,
        s: &mut Sched,
    ) -> Result<SimNode, String> {
        let configured: Vec<(u64, String)> = cluster
            .founders
            .iter()
            .map(|id| (*id, address(*id)))
            .collect();
        let (storage, peers, _) = RaftStorage::open(
            disk.store(),
            starling_cluster::STATE_GROUP,
            id,
            &configured,
            bootstrap,
        )
        .map_err(|e| format!("node {id}: cannot open its log: {e}"))?;
        let mut settings = RaftSettings::for_node(id, starling_cluster::STATE_GROUP);
        settings.tick = cluster.tick;
        settings.election_ticks = cluster.election_ticks;
        settings.node_down_after = cluster.node_down_after;
        settings.transfer = TransferSettings {
            chunk_bytes: cluster.chunk_bytes,
            chunk_timeout: Duration::from_millis(500),
            retry_pause: Duration::from_millis(100),
            max_attempts: 4,
            deadline: Duration::from_secs(20),
        };
        settings.max_message_bytes = cluster.max_entry_bytes * 2;
        let mut raft = RaftCore::new(settings, storage, peers, s.instant())
            .map_err(|e| format!("node {id}: raft refused its state: {e}"))?;
        let mut timeouts = SimRng::new(s.rng.next_u64());
        raft.set_election_timeout_source(Box::new(move |min, max| {
            timeouts.range(min as u64, max as u64 - 1) as usize
        }));
        let port = LogPort::default();
        let (tx, ready) = oneshot::channel();
        let shards = 2;
        let limits = Arc::new(SharedLimits::new(&config.state_config()));
        let mut store = StoreCore::new(
            id,
            config.clone(),
            Box::new(port.clone()),
            shards,
            tx,
            true,
            s.rng.next_u64() | 1,
            cluster.max_entry_bytes,
            s.instant(),
            limits.clone(),
        );
        store.set_check_every(0);
        let mut node = SimNode {
            id,
            inc,
            raft,
            store,
            routers: (0..shards).map(|_| RouteTable::default()).collect(),
            held: (0..shards).map(|_| HeldRoutes::default()).collect(),
            conns: BTreeMap::new(),
            next_conn: (s.rng.next_u64() & 0xffff_ffff) << 32,
            port,
            transfers: BTreeMap::new(),
            receiver: SnapshotReceiver::new(1 << 30),
            ready,
            serving: false,
            ready_scheduled: false,
            flush_scheduled: false,
            takeovers: BTreeMap::new(),
            next_wait: 0,
            config,
            limits,
            leader: 0,
        };
        // The store attaches (`Init`): the Raft node hands it the stored snapshot and replays.
        let mut out = RaftOutput::default();
        node.raft.attach(s.instant(), &mut out);
        node.after_raft(out, s)?;
        let tick = cluster.tick.as_micros() as u64;
        let phases = [
            s.rng.range(1, tick),
            s.rng.range(1, 500_000),
            s.rng.range(1, 10_000_000),
        ];
        s.timer(id, inc, phases[0], Timer::RaftTick);
        s.timer(id, inc, phases[1], Timer::StoreTick);
        s.timer(id, inc, phases[2], Timer::StoreExpire);
        Ok(node)
    }

    fn clock(&mut self, s: &Sched) {
        self.store.set_clock(s.instant(), s.wall_ms());
    }

    /// A new connection from `client`'s connection `gen`, with the MQTT 5 session settings of
    /// its CONNECT; its id.
    pub fn accept(&mut self, client: ClientIdx, gen: u64, session: Option<SessionSettings>) -> u64 {
        self.next_conn += 1;
        let id = self.next_conn;
        let limits = FlowLimits::from_shared(&self.limits);
        self.conns
            .insert(id, SimConn::new(id, client, gen, limits, session));
        id
    }

    // ---- the Raft node ----

    /// A message for the Raft node.
    pub fn raft_input(&mut self, input: RaftInput, s: &mut Sched) -> Result<(), Fatal> {
        let now = s.instant();
        let mut out = RaftOutput::default();
        match input {
            RaftInput::Propose(data) => self.raft.propose(data, now, &mut out),
            RaftInput::SaveSnapshot(index, data) => self.raft.save_snapshot(index, data, &mut out),
            RaftInput::Step(m) => {
                let _ = self.raft.step(*m, &mut out);
            }
            RaftInput::Persisted(seq) => self.raft.persisted(seq, Ok(()), now, &mut out),
            RaftInput::SnapshotSent(id, finished) => {
                self.raft.snapshot_sent(&id, finished, &mut out)
            }
            RaftInput::TransferLeadership => self.raft.transfer_leadership(&mut out),
        }
        self.after_raft(out, s).map_err(Fatal)?;
        self.schedule_ready(s);
        Ok(())
    }

    /// A Raft timer.
    pub fn raft_timer(&mut self, timer: Timer, s: &mut Sched, tick: Micros) -> Result<(), Fatal> {
        let now = s.instant();
        let mut out = RaftOutput::default();
        match timer {
            Timer::RaftTick => {
                self.raft.tick(now, &mut out);
                s.timer(self.id, self.inc, tick, Timer::RaftTick);
                self.schedule_ready(s);
            }
            Timer::RaftReady => {
                self.ready_scheduled = false;
                self.raft.handle_ready(now, &mut out);
            }
            _ => {}
        }
        self.after_raft(out, s).map_err(Fatal)
    }

    fn schedule_ready(&mut self, s: &mut Sched) {
        if !self.ready_scheduled {
            self.ready_scheduled = true;
            let d = s.rng.range(1, 300);
            s.timer(self.id, self.inc, d, Timer::RaftReady);
        }
    }

    /// Sends what the store output outside its mailbox (a check the world asked for).
    ///
    /// # Errors
    /// The store stopped.
    pub fn flush_output(&mut self, s: &mut Sched) -> Result<(), Fatal> {
        self.after_store(s)
    }

    /// Performs what a call into the Raft node outside its mailbox asked for (a membership
    /// change proposed by the world's admin operation).
    ///
    /// # Errors
    /// The Raft node stopped.
    pub fn raft_output(&mut self, out: RaftOutput, s: &mut Sched) -> Result<(), Fatal> {
        self.after_raft(out, s).map_err(Fatal)?;
        self.schedule_ready(s);
        Ok(())
    }

    /// Graceful shutdown, first half: every client is closed (`Shutdown`).
    pub fn begin_shutdown(&mut self, s: &mut Sched) {
        self.clock(s);
        self.store.begin_shutdown();
        let _ = self.after_store(s);
    }

    /// Graceful shutdown, second half: what still waits fails, the state is snapshotted and the
    /// log stopped (its writer drains what is queued).
    pub fn finish_shutdown(&mut self, s: &mut Sched) {
        self.clock(s);
        self.store.finish_shutdown();
        let _ = self.after_store(s);
    }

    /// Performs what the Raft node asked for.
    fn after_raft(&mut self, out: RaftOutput, s: &mut Sched) -> Result<(), String> {
        if let Some(why) = out.fatal {
            return Err(why);
        }
        for m in out.messages {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.start_transfer(&m, s);
            } else {
                s.net_send(self.id, m.to, NetMsg::Raft(Box::new(m)));
            }
        }
        for (seq, batch) in out.writes {
            s.disk_submit(self.id, self.inc, seq, batch);
        }
        for ev in out.events {
            match &ev {
                LogEvent::Restore { index, .. } => s.history.node(
                    s.ms(),
                    self.id,
                    format!("state restored from a snapshot at {index}"),
                ),
                LogEvent::Rejected { reason, .. } => {
                    if reason.contains("since the start") {
                        s.coverage.startup_refusals += 1;
                    }
                    s.history
                        .node(s.ms(), self.id, format!("proposal refused: {reason}"))
                }
                _ => {}
            }
            s.local(
                self.id,
                self.inc,
                Actor::Raft,
                Actor::Store,
                Local::Store(StoreInput::Log(ev)),
            );
        }
        let status = self.raft.status();
        if status.leader != self.leader && status.leader != 0 {
            s.history.node(
                s.ms(),
                self.id,
                format!("leader is node {} (term {})", status.leader, status.term),
            );
            s.coverage.leader_changes += 1;
        }
        self.leader = status.leader;
        self.port.lock().status = LogStatus {
            role: status.role,
            term: status.term,
            leader: (status.leader != 0).then_some(status.leader),
            commit_index: status.commit_index,
            members: status.voters.clone(),
        };
        Ok(())
    }

    // ---- snapshots in chunks ----

    fn start_transfer(&mut self, m: &RaftMessage, s: &mut Sched) {
        let Some(id) = TransferId::of(m) else { return };
        let data = Bytes::from(protobuf::Message::write_to_bytes(m).unwrap_or_default());
        let settings = self.raft.settings().transfer.clone();
        if let Some(old) = self.transfers.remove(&id.to) {
            // A newer snapshot for the same peer replaces the one in flight, which ends here.
            let _ = self.raft_input(RaftInput::SnapshotSent(old.id(), false), s);
        }
        self.transfers.insert(
            id.to,
            SnapshotTransfer::new(id, data, settings, s.instant()),
        );
        s.transfers_started.push((self.id, id.to));
        self.drive_transfer(id.to, s);
    }

    /// Moves a transfer on: sends its next chunk and sets the timer of its answer, sets its
    /// pause timer, or reports its end (as the transport's transfer task does).
    pub fn drive_transfer(&mut self, to: u64, s: &mut Sched) {
        loop {
            let Some(t) = self.transfers.get_mut(&to) else {
                return;
            };
            match t.next(s.instant()) {
                Next::Send(chunk) => s.net_send(self.id, to, NetMsg::Chunk(chunk)),
                Next::WaitUntil(at) => {
                    let delay = at.saturating_duration_since(s.instant()).as_micros() as u64;
                    s.timer(self.id, self.inc, delay.max(1), Timer::Transfer(to));
                    return;
                }
                Next::Done(outcome) => {
                    let id = t.id();
                    self.transfers.remove(&to);
                    let finished = outcome == Outcome::Finished;
                    if !finished {
                        s.coverage.snapshot_failures += 1;
                        s.history.node(
                            s.ms(),
                            self.id,
                            format!("snapshot transfer to node {to} failed: {outcome:?}"),
                        );
                    }
                    s.local(
                        self.id,
                        self.inc,
                        Actor::Raft,
                        Actor::Raft,
                        Local::Raft(RaftInput::SnapshotSent(id, finished)),
                    );
                    return;
                }
            }
        }
    }

    /// A transfer's timer.
    pub fn transfer_timer(&mut self, to: u64, s: &mut Sched) {
        self.drive_transfer(to, s);
    }

    /// The answer to a chunk this node sent.
    pub fn chunk_ack(&mut self, from: u64, ack: &ChunkAck, s: &mut Sched) {
        if let Some(t) = self.transfers.get_mut(&from) {
            t.on_ack(ack, s.instant());
            self.drive_transfer(from, s);
        }
    }

    /// A chunk of a snapshot for this node: assembled; a complete one is checked and stepped
    /// into Raft, and the answer goes back.
    pub fn chunk(&mut self, from: u64, chunk: Chunk, s: &mut Sched) -> Result<(), Fatal> {
        let ack = match self.receiver.offer(chunk) {
            Received::Reply(ack) => ack,
            Received::Complete { id, message } => {
                let verdict = match protobuf::Message::parse_from_bytes(&message) {
                    Ok(m) => {
                        let mut out = RaftOutput::default();
                        let r = self.raft.step(m, &mut out);
                        self.after_raft(out, s).map_err(Fatal)?;
                        self.schedule_ready(s);
                        match r {
                            Ok(()) => {
                                s.coverage.snapshots_installed += 1;
                                s.history.node(
                                    s.ms(),
                                    self.id,
                                    format!("snapshot at {} received from node {from}", id.index),
                                );
                                Ok(())
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(format!("undecodable snapshot message: {e}")),
                };
                self.receiver.installed(&id, verdict)
            }
        };
        s.net_send(self.id, from, NetMsg::ChunkAck(ack));
        Ok(())
    }

    // ---- the session store ----

    /// A message for the store.
    pub fn store_input(&mut self, input: StoreInput, s: &mut Sched) -> Result<(), Fatal> {
        self.clock(s);
        match input {
            StoreInput::Request(r) => match r {
                StoreRequest::Connect(req) => self.store.connect(req),
                StoreRequest::Subscribe(req) => self.store.subscribe(req),
                StoreRequest::Session(req) => self.store.session_request(req),
                StoreRequest::Closed(msg) => {
                    self.store.connection_closed(msg);
                }
            },
            StoreInput::Durable(items) => self.store.durable_publish(items),
            StoreInput::Log(ev) => {
                let recovered = matches!(ev, LogEvent::Recovered);
                let restore = matches!(ev, LogEvent::Restore { .. });
                self.store.on_log_event(ev);
                if (recovered || restore) && s.derived_checks {
                    // After the store's output of this event: the check follows the rebuild.
                    self.after_store(s)?;
                    self.check_derived(s);
                }
                if recovered {
                    self.serving = true;
                }
            }
            StoreInput::FinishTakeover(old, req) => self.store.finish_takeover(old, *req),
            StoreInput::SetLimits(l) => {
                let (tx, _rx) = oneshot::channel();
                self.store.set_limits(l, tx);
            }
        }
        self.after_store(s)
    }

    /// A store timer.
    pub fn store_timer(&mut self, timer: Timer, s: &mut Sched) -> Result<(), Fatal> {
        self.clock(s);
        match timer {
            Timer::StoreTick => {
                self.store.tick();
                s.timer(self.id, self.inc, 500_000, Timer::StoreTick);
            }
            Timer::StoreExpire => {
                self.store.expire_sessions();
                s.timer(self.id, self.inc, 10_000_000, Timer::StoreExpire);
            }
            Timer::StoreFlush => {
                self.flush_scheduled = false;
                self.store.flush();
            }
            Timer::Takeover(wait) => {
                if let Some((old, req)) = self.takeovers.remove(&wait) {
                    self.store.finish_takeover(old, req);
                }
            }
            _ => {}
        }
        self.after_store(s)
    }

    /// Checks the indices the store derives from the state against a rebuild (after restores,
    /// recoveries, every few hundred entries, and at the end): the store's own at once, the
    /// router shards' through the check message the store sends them, which reaches each shard
    /// after every update sent before it (as in the broker).
    pub fn check_derived(&mut self, s: &mut Sched) {
        // With a reply channel the store reports instead of stopping the process; the shards'
        // answers are read where the shards handle the check (`router_input`).
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        match self.store.check_derived(Some(tx)) {
            Err(e) => s.history.violation(
                s.ms(),
                format!(
                    "node {}: derived index differs from its rebuild: store: {e}",
                    self.id
                ),
            ),
            Ok(()) => s.coverage.derived_checks += 1,
        }
    }

    /// Performs what the store asked for.
    fn after_store(&mut self, s: &mut Sched) -> Result<(), Fatal> {
        let mut out = self.store.take_output();
        // Answers go out after the router updates of the same pass (as in the actor); one
        // nobody waits for is undone, which may produce more.
        while !out.replies.is_empty() {
            for reply in std::mem::take(&mut out.replies) {
                if let Some(lost) = reply.send() {
                    self.store.connect_lost(&lost);
                }
            }
            let more = self.store.take_output();
            out.shards.extend(more.shards);
            out.replies.extend(more.replies);
            out.conns.extend(more.conns);
            out.takeovers.extend(more.takeovers);
            out.stop |= more.stop;
        }
        for m in out.shards {
            match m {
                ShardMessage::Update(u) => {
                    for i in 0..self.routers.len() {
                        s.local(
                            self.id,
                            self.inc,
                            Actor::Store,
                            Actor::Router(i),
                            Local::Router(RouterInput::Store(ShardMessage::Update(u.clone()))),
                        );
                    }
                }
                ShardMessage::FastPath { shard, messages } => s.local(
                    self.id,
                    self.inc,
                    Actor::Store,
                    Actor::Router(shard),
                    Local::Router(RouterInput::Store(ShardMessage::FastPath {
                        shard,
                        messages,
                    })),
                ),
            }
        }
        let waiting: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.waiting())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            s.local(
                self.id,
                self.inc,
                Actor::Store,
                Actor::Conn(id),
                Local::Wake,
            );
        }
        for (t, m) in out.conns {
            s.local(
                self.id,
                self.inc,
                Actor::Store,
                Actor::Conn(t.conn_id),
                Local::Conn(ConnInput::Store(m)),
            );
        }
        for t in out.takeovers {
            self.next_wait += 1;
            let wait = self.next_wait;
            s.coverage.takeovers += 1;
            self.takeovers.insert(wait, (t.old.conn_id, t.request));
            s.local(
                self.id,
                self.inc,
                Actor::Store,
                Actor::Conn(t.old.conn_id),
                Local::Conn(ConnInput::Store(ConnMessage::Kick(KickReason::TakenOver))),
            );
            let timeout = self.config.commit_timeout().as_micros() as u64;
            s.timer(self.id, self.inc, timeout, Timer::Takeover(wait));
        }
        if out.stop {
            return Err(Fatal(
                "the session store stopped (its state cannot be restored)".into(),
            ));
        }
        let (proposals, snapshots) = {
            let mut p = self.port.lock();
            (
                std::mem::take(&mut p.proposals),
                std::mem::take(&mut p.snapshots),
            )
        };
        for data in proposals {
            s.local(
                self.id,
                self.inc,
                Actor::Store,
                Actor::Raft,
                Local::Raft(RaftInput::Propose(data)),
            );
        }
        for (index, data) in snapshots {
            s.coverage.snapshots_taken += 1;
            s.local(
                self.id,
                self.inc,
                Actor::Store,
                Actor::Raft,
                Local::Raft(RaftInput::SaveSnapshot(index, data)),
            );
        }
        if self.store.take_flush_due() && !self.flush_scheduled {
            self.flush_scheduled = true;
            let d = s.rng.range(1, 200);
            s.timer(self.id, self.inc, d, Timer::StoreFlush);
        }
        if !self.serving && matches!(self.ready.try_recv(), Ok(Ok(()))) {
            self.serving = true;
        }
        Ok(())
    }

    /// The old connection of a takeover is gone: the CONNECT proceeds.
    fn takeover_gone(&mut self, conn: u64, s: &mut Sched) {
        let waits: Vec<u64> = self
            .takeovers
            .iter()
            .filter(|(_, (old, _))| *old == conn)
            .map(|(w, _)| *w)
            .collect();
        for w in waits {
            if let Some((old, req)) = self.takeovers.remove(&w) {
                s.local(
                    self.id,
                    self.inc,
                    Actor::Conn(conn),
                    Actor::Store,
                    Local::Store(StoreInput::FinishTakeover(old, Box::new(req))),
                );
            }
        }
    }

    // ---- router shards ----

    /// A message for router shard `shard`.
    pub fn router_input(&mut self, shard: usize, input: RouterInput, s: &mut Sched) {
        let mut out = Outbox::default();
        let mut from = None;
        match input {
            RouterInput::Store(ShardMessage::Update(RouteUpdate::Check { entries, .. })) => {
                match self.routers[shard].check(&entries) {
                    Err(e) => s.history.violation(
                        s.ms(),
                        format!(
                            "node {}: derived index differs from its rebuild: router shard {shard}: {e}",
                            self.id
                        ),
                    ),
                    Ok(()) => s.coverage.derived_checks += 1,
                }
                return;
            }
            RouterInput::Store(ShardMessage::Update(u)) => {
                self.routers[shard].update(u);
                return;
            }
            RouterInput::Store(ShardMessage::FastPath { messages, .. })
            | RouterInput::Forwarded(messages) => {
                self.routers[shard].route_local(messages, &mut out)
            }
            RouterInput::Route(r) => {
                // As the shard: a batch waits while the replica is not fresh (the flag the Raft
                // node publishes after each pass).
                let was_empty = self.held[shard].is_empty();
                let Some(r) = self.held[shard].offer(r, self.raft.fresh(), s.instant()) else {
                    if was_empty {
                        s.timer(self.id, self.inc, 20_000, Timer::RouterHeld(shard));
                    }
                    return;
                };
                from = r.from.clone();
                self.routers[shard].route_batch(r.from.as_ref(), r.publishes, &mut out);
            }
        }
        self.router_out(shard, out, from, s);
    }

    /// Sends what a routing pass produced.
    fn router_out(
        &mut self,
        shard: usize,
        out: Outbox<()>,
        from: Option<Target<()>>,
        s: &mut Sched,
    ) {
        let me = Actor::Router(shard);
        let mut by_conn: Vec<(u64, Vec<AppMessage>)> = out
            .by_conn
            .into_iter()
            .map(|(id, (_, m))| (id, m))
            .collect();
        by_conn.sort_by_key(|(id, _)| *id);
        for (conn, messages) in by_conn {
            s.local(
                self.id,
                self.inc,
                me,
                Actor::Conn(conn),
                Local::Conn(ConnInput::Deliver(messages)),
            );
        }
        let mut by_node: Vec<(u64, Vec<AppMessage>)> = out.by_node.into_iter().collect();
        by_node.sort_by_key(|(n, _)| *n);
        for (node, messages) in by_node {
            s.net_send(self.id, node, NetMsg::Forward(messages));
        }
        if !out.durable.is_empty() {
            s.local(
                self.id,
                self.inc,
                me,
                Actor::Store,
                Local::Store(StoreInput::Durable(out.durable)),
            );
        }
        if let (Some(from), false) = (from, out.acked.is_empty()) {
            s.local(
                self.id,
                self.inc,
                me,
                Actor::Conn(from.conn_id),
                Local::Conn(ConnInput::Acked(out.acked)),
            );
        }
    }

    /// A shard's timer for its held batches: routed once the replica is fresh, refused when
    /// they waited past the commit timeout.
    pub fn router_held(&mut self, shard: usize, s: &mut Sched) {
        let timeout = self.config.commit_timeout();
        let r = self.held[shard].release(self.raft.fresh(), s.instant(), timeout);
        for route in r.ready {
            self.router_input_routed(shard, route, s);
        }
        for route in r.expired {
            if let Some(from) = route.from {
                let tokens = route.publishes.iter().filter_map(|p| p.token).collect();
                s.local(
                    self.id,
                    self.inc,
                    Actor::Router(shard),
                    Actor::Conn(from.conn_id),
                    Local::Conn(ConnInput::Store(ConnMessage::Acked(Acked {
                        tokens,
                        refused: true,
                        unmatched: Vec::new(),
                    }))),
                );
            }
        }
        if !self.held[shard].is_empty() {
            s.timer(self.id, self.inc, 20_000, Timer::RouterHeld(shard));
        }
    }

    /// Routes a batch that waited (as if it arrived now).
    fn router_input_routed(&mut self, shard: usize, r: Route<()>, s: &mut Sched) {
        let mut out = Outbox::default();
        let from = r.from.clone();
        self.routers[shard].route_batch(r.from.as_ref(), r.publishes, &mut out);
        self.router_out(shard, out, from, s);
    }

    /// Fast-path messages forwarded by another node: to the shard of each topic.
    pub fn forwarded(&mut self, from: u64, messages: Vec<AppMessage>, s: &mut Sched) {
        let n = self.routers.len();
        let mut per_shard: Vec<Vec<AppMessage>> = vec![Vec::new(); n];
        for m in messages {
            per_shard[shard_of(&m.topic, n)].push(m);
        }
        for (i, messages) in per_shard.into_iter().enumerate() {
            if !messages.is_empty() {
                let delay = s.rng_delay();
                s.ordered(
                    Chan::Net(from, self.id, 3 + i as u8),
                    delay,
                    Event::Local {
                        node: self.id,
                        inc: self.inc,
                        to: Actor::Router(i),
                        msg: Local::Router(RouterInput::Forwarded(messages)),
                    },
                );
            }
        }
    }

    // ---- connections ----

    /// A message for connection `conn`.
    pub fn conn_input(&mut self, conn: u64, input: Option<ConnInput>, s: &mut Sched) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if matches!(input, Some(ConnInput::Packet(_))) {
            c.last_read = s.now;
        }
        let mut out = ConnOut::default();
        match input {
            Some(i) => c.input(i, &mut out),
            None => {
                c.poll(&mut out);
            }
        }
        self.after_conn(conn, out, s);
    }

    /// A connection's keep-alive timer.
    pub fn keep_alive(&mut self, conn: u64, s: &mut Sched) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut out = ConnOut::default();
        if let Some(at) = c.keep_alive_due(s.now, &mut out) {
            s.timer(
                self.id,
                self.inc,
                at.saturating_sub(s.now) + 5_000,
                Timer::KeepAlive(conn),
            );
        }
        self.after_conn(conn, out, s);
    }

    /// A connection's wait `wait` for the store timed out.
    pub fn conn_timeout(&mut self, conn: u64, wait: u64, s: &mut Sched) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.wait_seq() != wait {
            return;
        }
        let mut out = ConnOut::default();
        c.wait_timed_out(&mut out);
        self.after_conn(conn, out, s);
    }

    fn after_conn(&mut self, conn: u64, out: ConnOut, s: &mut Sched) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (client, gen) = (c.client, c.gen);
        let me = Actor::Conn(conn);
        for p in out.to_client {
            s.to_client(client, gen, p);
        }
        let shard = (conn % self.routers.len() as u64) as usize;
        for r in out.to_router {
            s.local(
                self.id,
                self.inc,
                me,
                Actor::Router(shard),
                Local::Router(RouterInput::Route(r)),
            );
        }
        for r in out.to_store {
            s.local(
                self.id,
                self.inc,
                me,
                Actor::Store,
                Local::Store(StoreInput::Request(r)),
            );
        }
        if out.accepted && c.keep_alive > 0 {
            let limit = u64::from(c.keep_alive) * 1_500_000;
            s.timer(self.id, self.inc, limit + 5_000, Timer::KeepAlive(conn));
        }
        if out.waits {
            let wait = c.wait_seq();
            let timeout = self.config.answer_timeout().as_micros() as u64;
            s.timer(self.id, self.inc, timeout, Timer::ConnTimeout(conn, wait));
        }
        if let Some(closed) = out.closed {
            s.history.push(
                s.ms(),
                crate::history::Ev::Node {
                    node: self.id,
                    what: format!(
                        "connection of {} #{gen} closed ({}{})",
                        s.names.get(client).map_or("?", String::as_str),
                        closed.reason,
                        if closed.will_due { ", will due" } else { "" }
                    ),
                },
            );
            s.ended(client, gen, closed.will_due);
            s.client_lost(client, gen);
            self.conns.remove(&conn);
            self.takeover_gone(conn, s);
        }
    }

    /// Where the store routes a client's session (for checks).
    pub fn route_of(&self, key: u64) -> Vec<Option<RouteTargetId>> {
        self.routers[0]
            .session_entries()
            .into_iter()
            .filter(|e| e.0 == key)
            .map(|e| e.4)
            .collect()
    }

    /// Whether connection `conn` is live here and serves its session.
    pub fn conn_active(&self, conn: u64) -> bool {
        self.conns.get(&conn).is_some_and(SimConn::is_active)
    }

    /// Targets for the store's shell messages that name no connection here.
    pub fn has_conn(&self, t: &Target<()>) -> bool {
        self.conns.contains_key(&t.conn_id)
    }

    /// The disk this node writes.
    pub fn log_store(disk: &SimDisk) -> &LogStore {
        disk.store()
    }
}
