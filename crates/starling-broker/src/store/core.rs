//! [`StoreCore`]: everything the session store decides, as a plain struct. The actor
//! ([`super::SessionStore`]) feeds it messages and log events and sends what it outputs; the
//! deterministic simulator drives the same struct without actix.
//!
//! Time and randomness come from outside: the caller sets the clock ([`StoreCore::set_clock`])
//! before each input, and the process incarnation is a constructor argument.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use bytes::Bytes;
use bytestring::ByteString;
use starling_codec::QoS;
use starling_state::{
    pb, FastMap, Message as AppMessage, RetainedStore, State, StateConfig, SubOptions,
};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::effects::Outboxes;
use super::output::{ConnMessage, LostConnect, Reply, ShardMessage, StoreOutput, Takeover};
use super::proposals::{Proposals, Waiter};
use super::StoreStats;
use crate::config::BrokerConfig;
use crate::connection::{Connection, MQTT_LOG};
use crate::messages::*;
use crate::replication::{LogEvent, ProposeError, ReplicatedLog};
use crate::router::{shard_of, SESSION_KEY};

/// Applied entries between two checks of the derived indices in debug builds (release builds
/// check only when asked: `GET /cluster/check`).
const DEBUG_CHECK_EVERY: u64 = 512;

/// How often a proposal that must apply (this node's `NodeDown`, the end of a connection) is
/// proposed again after it failed.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// A client connected to this node.
pub(crate) struct Client<C> {
    /// Its connection's id (the owner the replicated state records).
    pub(crate) conn_id: u64,
    /// How to reach the connection.
    pub(crate) addr: C,
    /// The session epoch it was accepted with; 0 until then, and for a clean session outside
    /// the replicated state (single node).
    pub(crate) epoch: u64,
}

/// The end of a session's connection on this node, to be applied as a `SessionDisconnect`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Closing {
    /// Publish the will (abnormal end) or discard it (DISCONNECT received).
    pub(crate) publish_will: bool,
    /// Highest outbound sequence number written.
    pub(crate) sent_up_to: u64,
    /// Proposed and waiting for the commit (else: proposed again at the next tick).
    pub(crate) in_flight: bool,
}

/// A request of an untracked clean session that waits in [`StoreCore::local_reads`].
pub(crate) enum LocalRequest<C> {
    Subscribe(SubscribeRequest<C>),
    Unsubscribe(UnsubscribeRequest),
}

impl<C> LocalRequest<C> {
    /// The connection's router key.
    fn key(&self) -> u64 {
        match self {
            LocalRequest::Subscribe(r) => r.key,
            LocalRequest::Unsubscribe(r) => r.key,
        }
    }
}

/// Where this node's own `NodeDown` is after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SelfDown {
    /// Nothing to do (or done): CONNECTs are served.
    Done,
    /// Sessions of the previous run are still recorded as served here: CONNECTs wait until the
    /// `NodeDown` applies, so that it cannot take a session that connected in this run.
    Pending {
        /// Proposed and waiting for the commit (else: proposed again at the next tick).
        in_flight: bool,
    },
}

/// Which of the store's deliberately broken variants are on (simulator mutation tests only).
#[cfg(feature = "mutations")]
pub mod mutations {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A broken variant.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mutation {
        /// The router index is not rebuilt when the state is replaced or recovered.
        NoRouteRebuild,
        /// A restarted node's `NodeDown` is proposed once; a failure is not retried, and the
        /// reconciliation does not release the sessions it leaves behind.
        NodeDownOnce,
        /// The state machine applies each node's local limits instead of the replicated ones.
        LocalLimits,
    }

    static FLAGS: [AtomicBool; 3] = [
        AtomicBool::new(false),
        AtomicBool::new(false),
        AtomicBool::new(false),
    ];

    fn slot(m: Mutation) -> &'static AtomicBool {
        &FLAGS[m as usize]
    }

    /// Switches a mutation on or off (process-wide).
    pub fn set(m: Mutation, on: bool) {
        slot(m).store(on, Ordering::Relaxed);
    }

    /// Whether a mutation is on.
    pub fn on(m: Mutation) -> bool {
        slot(m).load(Ordering::Relaxed)
    }
}

/// Whether the broken variant `$m` of [`mutations::Mutation`] is on; always false (and nothing
/// compiled) without the `mutations` feature.
macro_rules! mutated {
    ($m:ident) => {{
        #[cfg(feature = "mutations")]
        let on = $crate::store::mutations::on($crate::store::mutations::Mutation::$m);
        #[cfg(not(feature = "mutations"))]
        let on = false;
        on
    }};
}
pub(crate) use mutated;

/// The session store's logic: the node's replica of the replicated state, proposal batching, the
/// registry of clients connected here, and the indices derived from the state (router keys and
/// the router shards' subscriptions, which it keeps up to date through [`ShardMessage`]s).
pub struct StoreCore<C = Addr<Connection>> {
    /// This node: owners recorded in the state name it.
    pub(crate) node_id: u64,
    /// Settings (local queues, timeouts, snapshot thresholds).
    pub(crate) config: Arc<BrokerConfig>,
    /// The node's replica of the replicated state.
    pub(crate) state: State,
    /// The log that orders and persists the commands.
    pub(crate) log: Box<dyn ReplicatedLog>,
    /// Router shards: fast-path messages go to `shard_of(topic, shards)`.
    pub(crate) shards: usize,
    /// Commands not yet proposed and requesters waiting for their commands to apply.
    pub(crate) proposals: Proposals<C>,
    /// Something was proposed: the shell flushes at the end of its pass ([`StoreCore::flush`]).
    pub(crate) flush_due: bool,
    /// The log refused the last entry as busy: proposals wait for the next commit.
    pub(crate) log_busy: bool,
    /// Clients connected to this node, by client id.
    pub(crate) clients: FastMap<ByteString, Client<C>>,
    /// CONNECTs proposed and not yet answered, per client id (while one is, a clean CONNECT on a
    /// single node goes through the log too, so that it is ordered after it).
    pub(crate) connecting: FastMap<ByteString, usize>,
    /// Router key of each session in the replicated state (derived: one per session).
    pub(crate) keys: FastMap<Arc<str>, u64>,
    /// Last router key handed out.
    pub(crate) next_key: u64,
    /// This node's `$SYS` retained messages (node-local, never replicated).
    pub(crate) sys_retained: RetainedStore,
    /// Entries applied since the last snapshot.
    pub(crate) entries_since_snapshot: u64,
    /// Bytes of the entries applied since the last snapshot.
    pub(crate) bytes_since_snapshot: u64,
    /// Size of the last snapshot taken or installed: the byte trigger is at least this, so
    /// that the cost of snapshots stays proportional to the bytes logged.
    pub(crate) last_snapshot_bytes: u64,
    /// Fires once the log has been replayed (the broker then opens its listeners).
    pub(crate) ready: Option<oneshot::Sender<Result<(), String>>>,
    /// The log has been replayed; entries from now on are new.
    pub(crate) recovered: bool,
    /// Last time a full session queue was logged (rate limit).
    pub(crate) last_queue_full_log: Option<Instant>,
    /// A `Tick` proposed by this node has not applied (or failed) yet: no other is proposed.
    pub(crate) tick_in_flight: bool,
    /// Last time a message over a client's Maximum Packet Size was logged (rate limit).
    pub(crate) last_oversized_log: Option<Instant>,
    /// Clustered mode: clean sessions are recorded in the replicated state too.
    pub(crate) track_clean: bool,
    /// Entries proposed and not yet committed, decoded (only for a log that commits them as
    /// proposed, in order).
    pub(crate) decoded: VecDeque<(Bytes, pb::Batch)>,
    /// Where this node's own `NodeDown` is (see [`SelfDown`]).
    pub(crate) self_down: SelfDown,
    /// CONNECTs held until this node's `NodeDown` applied, in arrival order.
    pub(crate) held_connects: VecDeque<ConnectRequest<C>>,
    /// SUBSCRIBEs and UNSUBSCRIBEs of untracked clean sessions (single node) that wait for the
    /// requests queued before them to apply (see [`StoreCore::subscribe`]), in arrival order, each
    /// with the last request id it waits for.
    pub(crate) local_reads: VecDeque<(u64, LocalRequest<C>)>,
    /// Ends of connections of sessions in the replicated state, by (client id, epoch), kept until
    /// applied: proposed again when a proposal fails, so that no session stays recorded as
    /// served by a connection that is gone.
    pub(crate) closing: FastMap<(ByteString, u64), Closing>,
    /// Next time failed proposals that must apply are proposed again.
    pub(crate) retry_at: Option<Instant>,
    /// Applied entries since the last check of the derived indices.
    pub(crate) since_check: u64,
    /// Check the derived indices after every restore and recovery and every this many applied
    /// entries, a difference being fatal (0: only when asked). Debug builds check; release
    /// builds and the simulator (which runs its own checks) do not.
    pub(crate) check_every: u64,
    /// The limits this node's configuration asks for (the replicated ones are in the state).
    pub(crate) local_limits: StateConfig,
    /// Where the replicated limits are published for the connections (derived from the state).
    pub(crate) shared_limits: Arc<crate::config::SharedLimits>,
    /// The clock, set by the caller before each input.
    pub(crate) now: Instant,
    /// Wall clock (ms since the Unix epoch), set with `now`: entry timestamps, session expiry.
    pub(crate) wall_ms: u64,
    /// What the inputs produced since the caller last took it.
    pub(crate) out: StoreOutput<C>,
}

impl<C: Clone> StoreCore<C> {
    /// A store for node `node_id` over `log`, with `shards` router shards. `ready` fires once the
    /// log has been replayed. `incarnation` identifies this process's requests (random per
    /// start). `max_entry_bytes` bounds one log entry. `shared_limits` is where the replicated
    /// limits are published for the connections.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: u64,
        config: Arc<BrokerConfig>,
        log: Box<dyn ReplicatedLog>,
        shards: usize,
        ready: oneshot::Sender<Result<(), String>>,
        track_clean: bool,
        incarnation: u64,
        max_entry_bytes: usize,
        now: Instant,
        shared_limits: Arc<crate::config::SharedLimits>,
    ) -> StoreCore<C> {
        StoreCore {
            node_id,
            state: State::default(),
            local_limits: config.state_config(),
            shared_limits,
            config,
            log,
            shards: shards.max(1),
            proposals: Proposals::new(node_id, incarnation, max_entry_bytes),
            flush_due: false,
            log_busy: false,
            clients: FastMap::default(),
            connecting: FastMap::default(),
            keys: FastMap::default(),
            next_key: 0,
            sys_retained: RetainedStore::new(),
            entries_since_snapshot: 0,
            bytes_since_snapshot: 0,
            last_snapshot_bytes: 0,
            ready: Some(ready),
            recovered: false,
            last_queue_full_log: None,
            tick_in_flight: false,
            last_oversized_log: None,
            track_clean,
            decoded: VecDeque::new(),
            self_down: SelfDown::Done,
            held_connects: VecDeque::new(),
            local_reads: VecDeque::new(),
            closing: FastMap::default(),
            retry_at: None,
            since_check: 0,
            check_every: if cfg!(debug_assertions) {
                DEBUG_CHECK_EVERY
            } else {
                0
            },
            now,
            wall_ms: 0,
            out: StoreOutput::default(),
        }
    }

    /// Checks the derived indices every `n` applied entries and after each restore and recovery,
    /// a difference being fatal; 0: only when asked ([`StoreCore::check_derived`]).
    pub fn set_check_every(&mut self, n: u64) {
        self.check_every = n;
    }

    /// Sets the clock for the next inputs.
    pub fn set_clock(&mut self, now: Instant, wall_ms: u64) {
        self.now = now;
        self.wall_ms = wall_ms;
    }

    /// Takes what the inputs produced.
    pub fn take_output(&mut self) -> StoreOutput<C> {
        std::mem::take(&mut self.out)
    }

    /// True once (and until [`StoreCore::flush`]) something waits to be proposed at the end of
    /// the current pass.
    pub fn take_flush_due(&mut self) -> bool {
        std::mem::take(&mut self.flush_due)
    }

    /// The log (to start it, or for the simulator to reach its implementation).
    pub fn log_mut(&mut self) -> &mut dyn ReplicatedLog {
        self.log.as_mut()
    }

    /// The node's replica of the replicated state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The router key of a session (created on first use).
    pub(crate) fn key_of(&mut self, client_id: &str) -> u64 {
        if let Some(k) = self.keys.get(client_id) {
            return *k;
        }
        self.next_key += 1;
        let k = SESSION_KEY | self.next_key;
        self.keys.insert(Arc::from(client_id), k);
        k
    }

    pub(crate) fn broadcast(&mut self, update: RouteUpdate<C>) {
        self.out.shards.push(ShardMessage::Update(update));
    }

    pub(crate) fn send_conn(&mut self, target: Target<C>, msg: ConnMessage) {
        self.out.conns.push((target, msg));
    }

    /// The connection serving `client_id` on this node if it is `conn_id`.
    pub(crate) fn client(&self, client_id: &str, conn_id: u64) -> Option<&Client<C>> {
        self.clients.get(client_id).filter(|c| c.conn_id == conn_id)
    }

    /// Forgets the connection `conn_id` of `client_id` (if it is the one registered); the
    /// subscriptions routed to it lose their target when the state still says it serves them.
    pub(crate) fn remove_client(&mut self, client_id: &str, conn_id: u64) {
        if self.client(client_id, conn_id).is_none() {
            return;
        }
        self.clients.remove(client_id);
        let owned_here = self
            .owner_of(client_id)
            .is_some_and(|o| o.node == self.node_id && o.connection == conn_id);
        if owned_here {
            let filters = self.state.filters_of(client_id);
            if !filters.is_empty() {
                let key = self.key_of(client_id);
                self.broadcast(RouteUpdate::Retarget {
                    key,
                    filters,
                    target: None,
                });
            }
        }
    }

    /// Queues a command; flushes when the buffer is full, else at the end of the pass.
    pub(crate) fn propose(&mut self, kind: pb::command::Kind, waiter: Option<Waiter<C>>) {
        match self.proposals.push(kind, waiter, self.now) {
            Ok(()) => {
                if self.proposals.full() {
                    self.flush();
                } else {
                    self.flush_due = true;
                }
            }
            Err((too_large, waiter)) => {
                warn!(
                    bytes = too_large.bytes,
                    limit = too_large.limit,
                    "command larger than one log entry may be (limit cluster.max_message_bytes); refused"
                );
                if let Some(w) = waiter {
                    self.fail_waiter(w);
                }
            }
        }
    }

    /// Hands what is buffered to the log, one entry at a time, until it is empty or busy.
    pub fn flush(&mut self) {
        while !self.log_busy {
            let Some((entry, batch)) = self.proposals.take_entry(self.wall_ms) else {
                return;
            };
            match self.log.propose(entry.clone()) {
                Ok(()) => {
                    if self.log.commits_as_proposed() {
                        self.decoded.push_back((entry, batch));
                    }
                }
                Err(ProposeError::Busy) => {
                    self.log_busy = true;
                    self.proposals.restore(entry);
                }
                Err(ProposeError::Unavailable(why)) => {
                    warn!(reason = %why, "proposal refused; its requests fail");
                    for w in self.proposals.take_entry_waiters(entry) {
                        self.fail_waiter(w);
                    }
                }
            }
        }
    }

    /// A request that will not be answered by the state machine: tell its requester.
    pub(crate) fn fail_waiter(&mut self, w: Waiter<C>) {
        match w {
            Waiter::Connect {
                reply,
                client_id,
                target,
                ..
            } => {
                self.connect_done(&client_id);
                // The connection closes without a session, and tells nobody: forget it here,
                // or a late commit of its CONNECT would find it registered and take it for
                // live (its session would stay recorded as served by it for good).
                self.remove_client(&client_id, target.conn_id);
                let _ = reply.send(ConnectOutcome::Unavailable);
            }
            Waiter::Subscribe { reply, .. } => {
                let _ = reply.send(SubscribeOutcome::Unavailable);
            }
            Waiter::Unsubscribe(reply) | Waiter::Disconnect(reply) => {
                let _ = reply.send(false);
            }
            Waiter::Ack { conn, token } => self.send_conn(
                conn,
                ConnMessage::Acked(Acked {
                    tokens: vec![token],
                    refused: true,
                    unmatched: Vec::new(),
                }),
            ),
            Waiter::OutboundAck(conn) => self.send_conn(
                conn,
                ConnMessage::Acked(Acked {
                    tokens: Vec::new(),
                    refused: true,
                    unmatched: Vec::new(),
                }),
            ),
            Waiter::Closing { client_id, epoch } => {
                if let Some(c) = self.closing.get_mut(&(client_id, epoch)) {
                    c.in_flight = false;
                    self.retry_at.get_or_insert(self.now + RETRY_AFTER);
                }
            }
            Waiter::NodeDown => {
                if mutated!(NodeDownOnce) {
                    // The broken variant: give up after the first attempt.
                    self.self_down = SelfDown::Done;
                    self.release_held_connects();
                } else if let SelfDown::Pending { in_flight } = &mut self.self_down {
                    *in_flight = false;
                    self.retry_at.get_or_insert(self.now + RETRY_AFTER);
                }
            }
            Waiter::Limits(reply) => {
                let _ = reply.send(Err("not committed (no leader, or timed out)".into()));
            }
            // A single node's own log: proposed again (nothing listens until it applies).
            Waiter::StartLimits => self.propose_start_limits(),
            Waiter::Retained => {}
            // Proposed again at a later tick if the deadline is still ahead of the log.
            Waiter::Tick => self.tick_in_flight = false,
        }
    }

    /// A CONNECT's answer found nobody waiting (see [`Reply::send`]): the connection gave up
    /// and will not report its end.
    pub fn connect_lost(&mut self, lost: &LostConnect) {
        self.remove_client(&lost.client_id, lost.conn_id);
        if !lost.local {
            self.release_orphan(&lost.client_id, lost.epoch);
        }
    }

    /// A CONNECT of `client_id` was answered (or failed): it no longer counts as pending.
    pub(crate) fn connect_done(&mut self, client_id: &str) {
        if let Some(n) = self.connecting.get_mut(client_id) {
            *n -= 1;
            if *n == 0 {
                self.connecting.remove(client_id);
            }
        }
    }

    /// Retained messages matching `filters`: the replicated ones if asked, and `$SYS` ones.
    pub(crate) fn retained_for(
        &self,
        filters: &[(Arc<str>, QoS)],
        include_replicated: bool,
    ) -> Vec<AppMessage> {
        let mut out = Vec::new();
        for (filter, qos) in filters {
            let mut add = |m: &AppMessage| out.push(m.with(m.qos.min(*qos), true));
            if include_replicated {
                self.state.retained().for_each_matching(filter, &mut add);
            }
            self.sys_retained.for_each_matching(filter, &mut add);
        }
        out
    }

    // ---- log events ----

    /// A log event: restore, committed entries, recovery, leadership and peer changes.
    pub fn on_log_event(&mut self, ev: LogEvent) {
        match ev {
            LogEvent::Restore { index, data } => self.on_restore(index, data),
            LogEvent::Committed(entries) => self.on_committed(entries),
            LogEvent::Recovered => self.on_recovered(),
            LogEvent::PeerDown { node } => {
                let kind = pb::command::Kind::NodeDown(pb::NodeDown { node_id: node });
                self.propose(kind, None);
            }
            LogEvent::LeaderChanged { leader, term } => {
                let failed = self.proposals.take_proposed();
                if !failed.is_empty() {
                    warn!(
                        ?leader,
                        term,
                        requests = failed.len(),
                        "leader changed: requests proposed before fail (clients retry)"
                    );
                }
                for w in failed {
                    self.fail_waiter(w);
                }
            }
            LogEvent::Rejected { entry, reason } => {
                warn!(reason = %reason, "proposal refused by the log; its requests fail");
                for w in self.proposals.take_entry_waiters(entry) {
                    self.fail_waiter(w);
                }
            }
        }
        self.serve_local_reads();
    }

    fn on_restore(&mut self, index: u64, data: Bytes) {
        let bytes = data.len() as u64;
        match State::decode_snapshot(data) {
            Ok(state) => {
                info!(index, "state restored from snapshot");
                self.state = state;
                self.entries_since_snapshot = 0;
                self.bytes_since_snapshot = 0;
                self.last_snapshot_bytes = bytes;
                // Entries proposed here and covered by the snapshot never reach the decoded
                // cache's consumer: drop what the snapshot covers.
                self.decoded.clear();
                if self.recovered {
                    // What live connections hold was derived from the state the snapshot
                    // replaces, and the effects of the entries it covers (deliveries, releases,
                    // fast-path messages) never happened here: they close, and their clients
                    // resume from the new state (persistent sessions) or start again (clean).
                    self.close_all(KickReason::StateReplaced);
                }
                self.after_state_replaced();
            }
            Err(e) => {
                error!(index, error = %e, "snapshot cannot be decoded");
                if let Some(r) = self.ready.take() {
                    let _ = r.send(Err(format!("snapshot at {index} cannot be decoded: {e}")));
                }
                self.out.stop = true;
            }
        }
    }

    fn on_committed(&mut self, entries: Vec<(u64, Bytes)>) {
        let mut out = Outboxes::default();
        let mut effects = Vec::new();
        for (index, data) in entries {
            self.bytes_since_snapshot += data.len() as u64;
            self.entries_since_snapshot += 1;
            self.since_check += 1;
            if data.is_empty() {
                self.state.skip(index);
                continue;
            }
            if mutated!(LocalLimits) {
                self.override_limits();
            }
            // A log that commits our entries as proposed hands back the same bytes: the batch is
            // already decoded.
            let own = self
                .decoded
                .front()
                .is_some_and(|(b, _)| b.as_ptr() == data.as_ptr() && b.len() == data.len());
            let cached = if own { self.decoded.pop_front() } else { None };
            let applied = match cached {
                Some((_, batch)) => {
                    self.state.apply(index, &batch, &mut effects);
                    Ok(())
                }
                None => self.state.apply_encoded(index, &data, &mut effects),
            };
            if let Err(e) = applied {
                error!(index, error = %e, "undecodable log entry skipped");
            }
            for e in effects.drain(..) {
                self.dispatch(e, &mut out);
            }
        }
        out.send(self);
        if self.recovered {
            self.maybe_snapshot();
        }
        if self.check_every != 0 && self.since_check >= self.check_every {
            // A difference is logged and fatal (`None`: nobody to answer).
            let _ = self.check_derived(None);
        }
        if self.log_busy {
            self.log_busy = false;
            self.flush();
        }
    }

    #[cfg(feature = "mutations")]
    fn override_limits(&mut self) {
        self.state.override_limits(self.local_limits.clone());
    }

    #[cfg(not(feature = "mutations"))]
    fn override_limits(&mut self) {}

    fn on_recovered(&mut self) {
        self.recovered = true;
        let stats = self.state.stats();
        info!(
            sessions = stats.sessions,
            retained = stats.retained_messages,
            queued = stats.queued_messages,
            applied_index = self.state.applied_index(),
            "state recovered"
        );
        let limits_pending = self.limits_at_start();
        // Sessions that were connected here (persistent or tracked clean ones), also those a
        // restored backup assigned to this node (`starling restore`): their connections are
        // gone. They go offline (wills out) before this node serves any session again.
        if self.state.has_sessions_on(self.node_id) {
            self.self_down = SelfDown::Pending { in_flight: false };
            self.propose_self_down();
        }
        self.after_state_replaced();
        if !limits_pending {
            self.report_ready();
        }
    }

    /// Tells the starter that the store serves.
    fn report_ready(&mut self) {
        if let Some(r) = self.ready.take() {
            let _ = r.send(Ok(()));
        }
    }

    /// The limits this node's configuration asks for against the replicated ones. On a single
    /// node the configuration decides: a difference is proposed as a `SetLimits` entry, and
    /// `true` says that readiness waits for it. In a cluster only the explicit operation
    /// changes them: local values are ignored, with a warning naming them.
    fn limits_at_start(&mut self) -> bool {
        let diff = self.local_limits.differences(self.state.config());
        if diff.is_empty() {
            return false;
        }
        if self.track_clean {
            for (key, local, replicated) in &diff {
                warn!(
                    key = %format!("mqtt.{key}"),
                    local,
                    replicated,
                    "mqtt.{key} = {local} in this node's configuration is ignored: the cluster \
                     applies {replicated}; change it for every node with `starling cluster \
                     limits` (or PUT /cluster/limits)"
                );
            }
            false
        } else {
            info!(limits = ?self.local_limits, "limits changed by the configuration");
            self.propose_start_limits();
            true
        }
    }

    fn propose_start_limits(&mut self) {
        let kind = pb::command::Kind::SetLimits(pb::SetLimits {
            limits: Some(self.local_limits.to_pb()),
        });
        self.propose(kind, Some(Waiter::StartLimits));
    }

    /// The configured limits applied on a single node: it serves.
    pub(crate) fn start_limits_applied(&mut self) {
        self.report_ready();
    }

    fn propose_self_down(&mut self) {
        if let SelfDown::Pending { in_flight } = &mut self.self_down {
            *in_flight = true;
            let kind = pb::command::Kind::NodeDown(pb::NodeDown {
                node_id: self.node_id,
            });
            self.propose(kind, Some(Waiter::NodeDown));
        }
    }

    /// This node's `NodeDown` applied: CONNECTs are served again, in arrival order.
    pub(crate) fn self_down_applied(&mut self) {
        if self.self_down != SelfDown::Done {
            info!("sessions of the previous run are offline; serving sessions");
            self.self_down = SelfDown::Done;
            self.release_held_connects();
        }
    }

    fn release_held_connects(&mut self) {
        for req in std::mem::take(&mut self.held_connects) {
            if !req.reply.is_closed() {
                self.connect(req);
            }
        }
    }

    pub(crate) fn maybe_snapshot(&mut self) {
        if self.entries_since_snapshot < self.config.snapshot_entries
            && self.bytes_since_snapshot < self.config.snapshot_bytes.max(self.last_snapshot_bytes)
        {
            return;
        }
        self.entries_since_snapshot = 0;
        self.bytes_since_snapshot = 0;
        let started = std::time::Instant::now();
        let data = self.state.encode_snapshot();
        let index = self.state.applied_index();
        let bytes = data.len();
        self.last_snapshot_bytes = bytes as u64;
        self.log.save_snapshot(index, data);
        info!(
            index,
            bytes,
            micros = started.elapsed().as_micros() as u64,
            "state snapshot taken"
        );
    }

    // ---- timers ----

    /// The periodic work (every half second): fail requests that waited past the commit timeout,
    /// propose again what must apply, move the log's clock past a deadline, flush.
    pub fn tick(&mut self) {
        let deadline = self.now - self.config.commit_timeout();
        for w in self.proposals.expire(deadline) {
            self.fail_waiter(w);
        }
        self.serve_local_reads();
        if self.retry_at.is_some_and(|t| t <= self.now) {
            self.retry_at = None;
            self.retry();
        }
        self.propose_tick_if_due();
        if !self.proposals.is_empty() {
            self.flush();
        }
    }

    /// Proposes a `Tick` once this node's clock has passed the state's next deadline (a session
    /// expiry, a delayed will, a retained message's expiry): the state machine passes deadlines
    /// only as entries move the log's clock (starling_state's "Log time"), and nothing else may
    /// be logged for a while. Only the node whose log takes proposals at once proposes it (a
    /// single node, or a cluster's leader: followers would only forward duplicates), one at a
    /// time; any other entry that applies meanwhile passes the deadline just as well.
    fn propose_tick_if_due(&mut self) {
        if self.tick_in_flight || !self.recovered {
            return;
        }
        let Some(due) = self.state.next_deadline_ms() else {
            return;
        };
        if self.wall_ms < due || !matches!(self.log.status().role, "single" | "leader") {
            return;
        }
        tracing::debug!(
            due,
            log_clock = self.state.log_clock_ms(),
            "proposing a tick: the log's clock is to pass a deadline"
        );
        self.tick_in_flight = true;
        self.propose(pb::command::Kind::Tick(pb::Tick {}), Some(Waiter::Tick));
    }

    /// Proposes again this node's `NodeDown` and the ends of connections whose proposal failed.
    fn retry(&mut self) {
        if self.self_down == (SelfDown::Pending { in_flight: false }) {
            if self.state.has_sessions_on(self.node_id) {
                info!("proposing again that the sessions of this node's previous run go offline");
                self.propose_self_down();
            } else {
                // Applied in an entry this node received inside a snapshot.
                self.self_down_applied();
            }
        }
        let due: Vec<(ByteString, u64, Closing)> = self
            .closing
            .iter()
            .filter(|(_, c)| !c.in_flight)
            .map(|((id, epoch), c)| (id.clone(), *epoch, *c))
            .collect();
        for (client_id, epoch, c) in due {
            if !self.serves(&client_id, epoch) {
                self.closing.remove(&(client_id, epoch));
                continue;
            }
            self.propose_closing(client_id, epoch, c);
        }
    }

    /// Whether the state records `client_id` as served by this node under `epoch`.
    pub(crate) fn serves(&self, client_id: &str, epoch: u64) -> bool {
        match (
            self.state.session(client_id),
            self.state.clean_session(client_id),
        ) {
            (Some(s), _) => s.epoch == epoch && s.owner.is_some_and(|o| o.node == self.node_id),
            (None, Some(c)) => c.epoch == epoch && c.owner.node == self.node_id,
            (None, None) => false,
        }
    }

    pub(crate) fn propose_closing(&mut self, client_id: ByteString, epoch: u64, c: Closing) {
        tracing::debug!(client_id = %client_id, epoch, publish_will = c.publish_will, "proposing the end of a connection");
        self.closing.insert(
            (client_id.clone(), epoch),
            Closing {
                in_flight: true,
                ..c
            },
        );
        let kind = pb::command::Kind::Disconnect(pb::SessionDisconnect {
            client_id: client_id.to_string(),
            epoch,
            sent_up_to: c.sent_up_to,
            publish_will: c.publish_will,
            session_expiry_secs: None,
        });
        self.propose(kind, Some(Waiter::Closing { client_id, epoch }));
    }

    /// Proposes the removal of 3.1 / 3.1.1 persistent sessions offline for longer than the
    /// configured expiry (every ten seconds), and reconciles the registry with the state. (An
    /// MQTT 5 session carries its own expiry, which the state machine applies in log time.)
    pub fn expire_sessions(&mut self) {
        if self.config.session_expiry_secs > 0 {
            let expiry = self.config.session_expiry_secs * 1000;
            let now_ms = self.wall_ms;
            let mut expired: Vec<(String, u64)> = self
                .state
                .sessions()
                .filter(|s| {
                    s.owner.is_none()
                        && s.expiry_secs.is_none()
                        && s.disconnected_at_ms + expiry < now_ms
                })
                .map(|s| (s.client_id.to_string(), s.disconnected_at_ms))
                .collect();
            expired.sort_unstable();
            for (client_id, at) in expired {
                info!(client_id = %client_id, "persistent session expired");
                let kind = pb::command::Kind::DropSession(pb::DropSession {
                    client_id,
                    if_disconnected_at_ms: at,
                });
                self.propose(kind, None);
            }
        }
        if self.recovered {
            self.reconcile();
        }
    }

    // ---- requests from connections ----

    /// A CONNECT (authenticated) asks for its session.
    pub fn connect(&mut self, req: ConnectRequest<C>) {
        if self.self_down != SelfDown::Done {
            self.held_connects.push_back(req);
            return;
        }
        let id = req.info.client_id.clone();
        // Before any takeover: a refused client must not close the owner's connection.
        if self.config.bind_session_to_user {
            let user = req.info.username.as_deref().unwrap_or("");
            if self.state.session(&id).is_some_and(|s| s.username != user) {
                let _ = req.reply.send(ConnectOutcome::NotAuthorized);
                return;
            }
        }
        if let Some(old) = self.clients.get(&id) {
            if old.conn_id != req.target.conn_id {
                // The old connection is closed first, then the new one proceeds (MQTT-3.1.4-2):
                // the new client never gets its CONNACK while the old socket is still open.
                info!(target: MQTT_LOG, client_id = %id, "Client {id} already connected, closing old connection.");
                let old = Target {
                    conn_id: old.conn_id,
                    addr: old.addr.clone(),
                };
                self.out.takeovers.push(Takeover { old, request: req });
                return;
            }
        }
        self.clients.insert(
            id.clone(),
            Client {
                conn_id: req.target.conn_id,
                addr: req.target.addr.clone(),
                epoch: 0,
            },
        );
        let clean_start = req.info.clean_session;
        let stored = self.state.session(&id).is_some();
        // A clean session ends with its connection: Clean Session (3.1, 3.1.1), or an MQTT 5
        // Session Expiry Interval of 0 that does not resume a stored session (one resumed ends
        // with this connection, by the state machine).
        let clean = match req.info.session {
            None => clean_start,
            Some(v5) => v5.expiry_secs == 0 && (clean_start || !stored),
        };
        // On a single node a clean session never enters the replicated state (unless it must
        // discard a stored session); in a cluster it is recorded so that every node can route
        // to it, take it over, and publish its will if this node dies.
        let track = clean && self.track_clean;
        if clean && !track && !stored && !self.connecting.contains_key(&id) {
            self.out.replies.push(Reply::Connect {
                reply: req.reply,
                outcome: ConnectOutcome::Accepted {
                    session_present: false,
                    epoch: 0,
                    key: req.target.conn_id,
                    resume: Box::default(),
                },
                lost: LostConnect {
                    client_id: id,
                    conn_id: req.target.conn_id,
                    epoch: 0,
                    local: true,
                },
            });
            return;
        }
        *self.connecting.entry(id.clone()).or_default() += 1;
        let will = if clean && !track {
            None
        } else {
            req.info
                .will
                .as_ref()
                .map(|w| crate::messages::will_message(w).to_pb())
        };
        let v5 = req.info.session.unwrap_or_default();
        let kind = pb::command::Kind::Connect(pb::SessionConnect {
            client_id: id.to_string(),
            clean_session: clean_start,
            node_id: self.node_id,
            connection_id: req.target.conn_id,
            will,
            username: req
                .info
                .username
                .as_ref()
                .map_or(String::new(), |u| u.to_string()),
            track,
            protocol_level: match req.info.session {
                Some(_) => 5,
                None => u32::from(req.info.protocol.level()),
            },
            session_expiry_secs: req.info.session.map(|s| s.expiry_secs),
            receive_maximum: v5.receive_maximum,
            maximum_packet_size: v5.maximum_packet_size,
            will_delay_secs: v5.will_delay_secs,
            will_expiry_secs: v5.will_expiry_secs,
        });
        let waiter = Waiter::Connect {
            reply: req.reply,
            target: req.target,
            client_id: id,
        };
        self.propose(kind, Some(waiter));
    }

    /// The old connection of a takeover is gone (or did not go in time): the CONNECT proceeds,
    /// unless its connection gave up meanwhile.
    pub fn finish_takeover(&mut self, old_conn: u64, req: ConnectRequest<C>) {
        let id = req.info.client_id.clone();
        self.remove_client(&id, old_conn);
        if !req.reply.is_closed() {
            // Another connection may have arrived meanwhile, which this takes over in turn.
            self.connect(req);
        }
    }

    /// SUBSCRIBE (filters already validated).
    ///
    /// A clean session on a single node is not in the replicated state: its subscription is
    /// served here, reading the retained messages as they are. What this node was asked before
    /// (a retained message set or cleared by a client that has since disconnected) may not have
    /// applied yet: the request then waits until it has, so that it sees it, as it would on a
    /// broker that applies each PUBLISH before reading the next packet.
    pub fn subscribe(&mut self, req: SubscribeRequest<C>) {
        if req.epoch == 0 {
            self.local_request(LocalRequest::Subscribe(req));
            return;
        }
        self.replicated_subscribe(req);
    }

    /// An untracked clean session's request: now, or after what was queued before it.
    fn local_request(&mut self, req: LocalRequest<C>) {
        let last = self.proposals.last_request();
        if self.local_reads.is_empty() && !self.proposals.waits_up_to(last) {
            self.serve_local(req);
        } else {
            self.local_reads.push_back((last, req));
        }
    }

    /// Serves the waiting local requests whose predecessors have applied (or failed).
    pub(crate) fn serve_local_reads(&mut self) {
        while let Some((last, _)) = self.local_reads.front() {
            if self.proposals.waits_up_to(*last) {
                return;
            }
            if let Some((_, req)) = self.local_reads.pop_front() {
                self.serve_local(req);
            }
        }
    }

    fn serve_local(&mut self, req: LocalRequest<C>) {
        match req {
            LocalRequest::Subscribe(req) => {
                for (filter, qos) in &req.filters {
                    self.broadcast(RouteUpdate::Add {
                        key: req.key,
                        filter: filter.clone(),
                        options: SubOptions::qos(*qos),
                        durable: false,
                        target: Some(RouteTarget::Local(req.target.clone())),
                    });
                }
                let retained = self.retained_for(&req.filters, true);
                let granted = req.filters.iter().map(|(_, q)| *q).collect();
                self.out.replies.push(Reply::Subscribe {
                    reply: req.reply,
                    outcome: SubscribeOutcome::Done { granted, retained },
                });
            }
            LocalRequest::Unsubscribe(req) => {
                for filter in req.filters {
                    self.broadcast(RouteUpdate::Remove {
                        key: req.key,
                        filter,
                    });
                }
                self.out.replies.push(Reply::Unsubscribe {
                    reply: req.reply,
                    done: true,
                });
            }
        }
    }

    fn replicated_subscribe(&mut self, req: SubscribeRequest<C>) {
        let kind = pb::command::Kind::Subscribe(pb::Subscribe {
            client_id: req.client_id.to_string(),
            epoch: req.epoch,
            filters: req
                .filters
                .iter()
                .map(|(f, q)| pb::SubscriptionRequest {
                    filter: f.to_string(),
                    qos: u32::from(q.as_u8()),
                    ..pb::SubscriptionRequest::default()
                })
                .collect(),
        });
        let clean = self.state.clean_session(&req.client_id).is_some();
        let waiter = Waiter::Subscribe {
            reply: req.reply,
            filters: req.filters,
            clean,
        };
        self.propose(kind, Some(waiter));
    }

    /// UNSUBSCRIBE.
    pub fn unsubscribe(&mut self, req: UnsubscribeRequest) {
        if req.epoch == 0 {
            // In order with the same connection's SUBSCRIBEs (see `subscribe`).
            self.local_request(LocalRequest::Unsubscribe(req));
            return;
        }
        let kind = pb::command::Kind::Unsubscribe(pb::Unsubscribe {
            client_id: req.client_id.to_string(),
            epoch: req.epoch,
            filters: req.filters.iter().map(|f| f.to_string()).collect(),
        });
        self.propose(kind, Some(Waiter::Unsubscribe(req.reply)));
    }

    /// A request on a persistent session's replicated state.
    pub fn session_request(&mut self, req: SessionRequest<C>) {
        match req {
            SessionRequest::Publish {
                from,
                token,
                client_id,
                epoch,
                packet_id,
                message,
            } => {
                let kind = pb::command::Kind::Publish(pb::Publish {
                    message: Some(message.to_pb()),
                    origin_client: client_id.to_string(),
                    origin_epoch: epoch,
                    packet_id: u32::from(packet_id),
                    fast_path_done: false,
                });
                self.propose(kind, Some(Waiter::Ack { conn: from, token }));
            }
            SessionRequest::Release {
                from,
                token,
                client_id,
                epoch,
                packet_id,
            } => {
                let kind = pb::command::Kind::Release(pb::ReleaseInbound {
                    client_id: client_id.to_string(),
                    epoch,
                    packet_id: u32::from(packet_id),
                });
                self.propose(kind, Some(Waiter::Ack { conn: from, token }));
            }
            SessionRequest::Disconnect {
                client_id,
                epoch,
                sent_up_to,
                reply,
            } => {
                let kind = pb::command::Kind::Disconnect(pb::SessionDisconnect {
                    client_id: client_id.to_string(),
                    epoch,
                    sent_up_to,
                    publish_will: false,
                    session_expiry_secs: None,
                });
                self.propose(kind, Some(Waiter::Disconnect(reply)));
            }
            SessionRequest::Ack {
                client_id,
                epoch,
                seq,
                kind,
            } => {
                let kind = match kind {
                    AckKind::PubAck => pb::AckKind::Puback,
                    AckKind::PubRec => pb::AckKind::Pubrec,
                    AckKind::PubComp => pb::AckKind::Pubcomp,
                };
                let waiter = self.clients.get(&client_id).map(|c| {
                    Waiter::OutboundAck(Target {
                        conn_id: c.conn_id,
                        addr: c.addr.clone(),
                    })
                });
                let cmd = pb::command::Kind::Ack(pb::OutboundAck {
                    client_id: client_id.to_string(),
                    epoch,
                    seq,
                    kind: kind as i32,
                });
                self.propose(cmd, waiter);
            }
        }
    }

    /// Messages the router found need the replicated state (persistent subscribers, RETAIN).
    pub fn durable_publish(&mut self, items: Vec<DurableItem<C>>) {
        for item in items {
            let kind = pb::command::Kind::Publish(pb::Publish {
                message: Some(item.message.to_pb()),
                fast_path_done: true,
                ..pb::Publish::default()
            });
            let waiter = match item.reply {
                Some((conn, token)) => Some(Waiter::Ack { conn, token }),
                None if item.message.retain => Some(Waiter::Retained),
                None => None,
            };
            self.propose(kind, waiter);
        }
    }

    /// A connection ended.
    pub fn connection_closed(&mut self, msg: ConnectionClosed) {
        self.remove_client(&msg.client_id, msg.conn_id);
        if msg.epoch == 0 {
            // An untracked clean session (or a persistent one already released): only its
            // router entries are left to remove.
            if !msg.persistent {
                // Its requests still waiting are moot (nobody waits for their answers).
                self.local_reads.retain(|(_, r)| r.key() != msg.key);
                for filter in msg.filters {
                    self.broadcast(RouteUpdate::Remove {
                        key: msg.key,
                        filter,
                    });
                }
            }
        } else {
            let c = Closing {
                publish_will: msg.publish_will,
                sent_up_to: msg.sent_up_to,
                in_flight: false,
            };
            self.propose_closing(msg.client_id, msg.epoch, c);
        }
    }

    /// Replaces the node-local `$SYS` retained messages and delivers them.
    pub fn sys_publish(&mut self, messages: Vec<AppMessage>) {
        let mut per_shard: Vec<Vec<AppMessage>> = vec![Vec::new(); self.shards];
        for m in messages {
            self.sys_retained.set(&m);
            per_shard[shard_of(&m.topic, self.shards)].push(m.with(m.qos, false));
        }
        for (shard, messages) in per_shard.into_iter().enumerate() {
            if !messages.is_empty() {
                self.out
                    .shards
                    .push(ShardMessage::FastPath { shard, messages });
            }
        }
    }

    /// Proposes new replicated limits (0 fields: unchanged); `reply` gets the limits in force
    /// once applied here.
    pub fn set_limits(
        &mut self,
        limits: pb::Limits,
        reply: oneshot::Sender<Result<StateConfig, String>>,
    ) {
        let kind = pb::command::Kind::SetLimits(pb::SetLimits {
            limits: Some(limits),
        });
        self.propose(kind, Some(Waiter::Limits(reply)));
    }

    /// Counts for `$SYS` and the admin endpoint.
    pub fn stats(&self, digest: bool) -> StoreStats {
        StoreStats {
            state: self.state.stats(),
            clients: self.clients.len(),
            waiting: self.proposals.waiting(),
            applied_index: self.state.applied_index(),
            log: self.log.status(),
            digest: digest.then(|| self.state.digest()),
            limits: self.state.config().clone(),
        }
    }

    // ---- shutdown ----

    /// Closes every client (graceful shutdown).
    pub fn begin_shutdown(&mut self) {
        self.close_all(KickReason::Shutdown);
    }

    /// Closes every client of this node.
    fn close_all(&mut self, reason: KickReason) {
        let mut all: Vec<Target<C>> = self
            .clients
            .values()
            .map(|c| Target {
                conn_id: c.conn_id,
                addr: c.addr.clone(),
            })
            .collect();
        all.sort_by_key(|t| t.conn_id);
        if !all.is_empty() && reason == KickReason::StateReplaced {
            info!(
                clients = all.len(),
                "state replaced by a snapshot: this node's clients are disconnected and resume"
            );
        }
        for t in all {
            self.send_conn(t, ConnMessage::Kick(reason));
        }
    }

    /// True once every client is gone and what they proposed is committed.
    pub fn quiet(&self) -> bool {
        self.clients.is_empty() && self.proposals.is_empty() && self.proposals.waiting() == 0
    }

    /// What keeps the store from being quiet, for the log line of a stop that ran out of time.
    pub fn not_quiet(&self) -> String {
        format!(
            "{} clients still registered, {} commands not yet proposed, requests waiting: {:?}",
            self.clients.len(),
            if self.proposals.is_empty() {
                "no"
            } else {
                "some"
            },
            self.proposals.waiting_kinds()
        )
    }

    /// Fails what still waits, snapshots, and stops the log; the answer comes once the log has
    /// written everything (the shell waits for it before the process may exit).
    pub fn finish_shutdown(&mut self) -> oneshot::Receiver<()> {
        self.flush();
        for w in self.proposals.drain() {
            self.fail_waiter(w);
        }
        let data = self.state.encode_snapshot();
        self.log.save_snapshot(self.state.applied_index(), data);
        let (done, stopped) = oneshot::channel();
        self.log.shutdown(done);
        info!("session store stopped");
        stopped
    }
}
