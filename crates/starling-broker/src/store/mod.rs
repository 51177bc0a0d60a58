//! The session-store actor: the node's replica of the replicated state, and the bridge between
//! it and the connections.
//!
//! It serves three kinds of work:
//! - requests from connections (connect, subscribe, durable publishes and acknowledgements),
//!   turned into commands and proposed in batches ([`proposals`]);
//! - log events: committed entries are applied to the [`State`] and their effects dispatched
//!   (replies, deliveries to the connections it serves, router updates, fast-path deliveries);
//! - the registry of clients connected to this node (takeover on this node, clean sessions,
//!   which never enter the replicated state on a single node).
//!
//! It never blocks: the log does its IO on its own thread.

mod effects;
mod proposals;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use starling_codec::QoS;
use starling_state::{pb, FastMap, Message as AppMessage, RetainedStore, State, StateStats};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{error, info, warn};

use self::effects::Outboxes;
use self::proposals::{Proposals, Waiter};
use crate::config::BrokerConfig;
use crate::connection::{Connection, MQTT_LOG};
use crate::messages::*;
use crate::replication::{LogEvent, LogStatus, ProposeError, ReplicatedLog};
use crate::router::{shard_of, RouterShard};

/// Router keys of persistent sessions have the top bit set; clean sessions use their connection
/// id.
const PERSISTENT_KEY: u64 = 1 << 63;

/// A client connected to this node.
struct Client {
    conn_id: u64,
    addr: Addr<Connection>,
}

/// The session-store actor.
pub struct SessionStore {
    node_id: u64,
    config: Arc<BrokerConfig>,
    state: State,
    log: Box<dyn ReplicatedLog>,
    routers: Arc<[Addr<RouterShard>]>,
    proposals: Proposals,
    flush_scheduled: bool,
    log_busy: bool,
    clients: FastMap<ByteString, Client>,
    /// Persistent connects proposed and not yet applied, per client id.
    connecting: FastMap<ByteString, usize>,
    keys: FastMap<Arc<str>, u64>,
    next_key: u64,
    sys_retained: RetainedStore,
    entries_since_snapshot: u64,
    ready: Option<oneshot::Sender<Result<(), String>>>,
    recovered: bool,
    last_queue_full_log: Option<Instant>,
    /// Clustered mode: clean sessions are recorded in the replicated state too.
    track_clean: bool,
    /// Entries proposed and not yet committed, decoded (only for a log that commits them as
    /// proposed, in order).
    decoded: VecDeque<(Bytes, pb::Batch)>,
}

impl SessionStore {
    /// A store for node `node_id` over `log`. `ready` fires once the log has been replayed.
    pub fn new(
        node_id: u64,
        config: Arc<BrokerConfig>,
        log: Box<dyn ReplicatedLog>,
        ready: oneshot::Sender<Result<(), String>>,
        track_clean: bool,
    ) -> SessionStore {
        let incarnation = rand::random::<u64>() | 1;
        SessionStore {
            node_id,
            state: State::new(config.state_config()),
            config,
            log,
            routers: Arc::from(Vec::new()),
            proposals: Proposals::new(node_id, incarnation),
            flush_scheduled: false,
            log_busy: false,
            clients: FastMap::default(),
            connecting: FastMap::default(),
            keys: FastMap::default(),
            next_key: 0,
            sys_retained: RetainedStore::new(),
            entries_since_snapshot: 0,
            ready: Some(ready),
            recovered: false,
            last_queue_full_log: None,
            track_clean,
            decoded: VecDeque::new(),
        }
    }

    fn key_of(&mut self, client_id: &str) -> u64 {
        if let Some(k) = self.keys.get(client_id) {
            return *k;
        }
        self.next_key += 1;
        let k = PERSISTENT_KEY | self.next_key;
        self.keys.insert(Arc::from(client_id), k);
        k
    }

    fn broadcast(&self, update: RouteUpdate) {
        if let Some((last, rest)) = self.routers.split_last() {
            for r in rest {
                r.do_send(update.clone());
            }
            last.do_send(update);
        }
    }

    /// The connection serving `client_id` on this node if it is `conn_id`.
    fn client(&self, client_id: &str, conn_id: u64) -> Option<&Client> {
        self.clients.get(client_id).filter(|c| c.conn_id == conn_id)
    }

    fn propose(
        &mut self,
        kind: pb::command::Kind,
        waiter: Option<Waiter>,
        ctx: &mut Context<Self>,
    ) {
        self.proposals.push(kind, waiter);
        if self.proposals.full() {
            self.flush(ctx);
        } else if !self.flush_scheduled {
            // Runs after the mailbox is drained: one entry for everything proposed meanwhile.
            self.flush_scheduled = true;
            ctx.spawn(actix::fut::ready(()).map(|_, act: &mut Self, ctx| {
                act.flush_scheduled = false;
                act.flush(ctx);
            }));
        }
    }

    fn flush(&mut self, _ctx: &mut Context<Self>) {
        if self.log_busy {
            return;
        }
        let Some((entry, batch)) = self.proposals.take_entry() else {
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
                warn!(reason = %why, "proposal refused; requesters will time out");
            }
        }
    }

    fn fail_waiter(w: Waiter) {
        match w {
            Waiter::Connect { reply, .. } => {
                let _ = reply.send(ConnectOutcome::Unavailable);
            }
            Waiter::Subscribe { reply, .. } => {
                let _ = reply.send(SubscribeOutcome::Unavailable);
            }
            Waiter::Unsubscribe(reply) | Waiter::Disconnect(reply) => {
                let _ = reply.send(false);
            }
            Waiter::Ack { conn, token } => conn.addr.do_send(Acked {
                tokens: vec![token],
                refused: true,
            }),
            Waiter::OutboundAck(conn) => conn.addr.do_send(Acked {
                tokens: Vec::new(),
                refused: true,
            }),
        }
    }

    fn retained_for(
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

    fn on_recovered(&mut self, ctx: &mut Context<Self>) {
        self.recovered = true;
        // Subscriptions of persistent sessions, all offline after a restart.
        let mut adds = Vec::new();
        // Sessions that were connected here (persistent or tracked clean ones), also those a
        // restored backup assigned to this node (`starling restore`).
        let stale = self.state.has_sessions_on(self.node_id);
        for s in self.state.sessions() {
            for (filter, qos) in &s.subscriptions {
                adds.push((s.client_id.clone(), filter.clone(), *qos));
            }
        }
        for (client_id, filter, qos) in adds {
            let key = self.key_of(&client_id);
            self.broadcast(RouteUpdate::Add {
                key,
                filter,
                qos,
                durable: true,
                target: None,
            });
        }
        let stats = self.state.stats();
        info!(
            sessions = stats.sessions,
            retained = stats.retained_messages,
            queued = stats.queued_messages,
            applied_index = self.state.applied_index(),
            "state recovered"
        );
        if stale {
            // Connections of the previous run are gone: their sessions go offline, wills out.
            self.propose(
                pb::command::Kind::NodeDown(pb::NodeDown {
                    node_id: self.node_id,
                }),
                None,
                ctx,
            );
        }
        if let Some(r) = self.ready.take() {
            let _ = r.send(Ok(()));
        }
    }

    fn maybe_snapshot(&mut self) {
        if self.entries_since_snapshot < self.config.snapshot_entries {
            return;
        }
        self.entries_since_snapshot = 0;
        let started = std::time::Instant::now();
        let data = self.state.encode_snapshot();
        let index = self.state.applied_index();
        let bytes = data.len();
        self.log.save_snapshot(index, data);
        info!(
            index,
            bytes,
            micros = started.elapsed().as_micros() as u64,
            "state snapshot taken"
        );
    }

    /// Fails requests that waited longer than the commit timeout.
    fn expire_waiters(&mut self) {
        let deadline = Instant::now() - self.config.commit_timeout();
        for w in self.proposals.expire(deadline) {
            Self::fail_waiter(w);
        }
    }

    /// Proposes the removal of persistent sessions offline for longer than the expiry.
    fn expire_sessions(&mut self, ctx: &mut Context<Self>) {
        if self.config.session_expiry_secs > 0 {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let expiry = self.config.session_expiry_secs * 1000;
            let expired: Vec<(String, u64)> = self
                .state
                .sessions()
                .filter(|s| s.owner.is_none() && s.disconnected_at_ms + expiry < now_ms)
                .map(|s| (s.client_id.to_string(), s.disconnected_at_ms))
                .collect();
            for (client_id, at) in expired {
                info!(client_id = %client_id, "persistent session expired");
                let kind = pb::command::Kind::DropSession(pb::DropSession {
                    client_id,
                    if_disconnected_at_ms: at,
                });
                self.propose(kind, None, ctx);
            }
        }
    }
}

impl Actor for SessionStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16 * 1024);
        ctx.run_interval(Duration::from_millis(500), |act, ctx| {
            act.expire_waiters();
            if !act.proposals.is_empty() {
                act.flush(ctx);
            }
        });
        ctx.run_interval(Duration::from_secs(10), |act, ctx| act.expire_sessions(ctx));
    }
}

/// Hands the store its router shards and starts the log (replay, then new commits).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Init {
    /// Router shards.
    pub routers: Arc<[Addr<RouterShard>]>,
}

impl Handler<Init> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: Init, ctx: &mut Self::Context) {
        self.routers = msg.routers;
        if let Err(e) = self.log.start(ctx.address().recipient()) {
            error!(error = %e, "cannot start the log");
            if let Some(r) = self.ready.take() {
                let _ = r.send(Err(e.to_string()));
            }
            ctx.stop();
        }
    }
}

impl Handler<LogEvent> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: LogEvent, ctx: &mut Self::Context) {
        match msg {
            LogEvent::Restore { index, data } => {
                match State::decode_snapshot(self.config.state_config(), data) {
                    Ok(state) => {
                        info!(index, "state restored from snapshot");
                        self.state = state;
                    }
                    Err(e) => {
                        error!(index, error = %e, "snapshot cannot be decoded");
                        if let Some(r) = self.ready.take() {
                            let _ =
                                r.send(Err(format!("snapshot at {index} cannot be decoded: {e}")));
                        }
                        ctx.stop();
                    }
                }
            }
            LogEvent::Committed(entries) => {
                let mut out = Outboxes::default();
                let mut effects = Vec::new();
                for (index, data) in entries {
                    if data.is_empty() {
                        self.state.skip(index);
                        continue;
                    }
                    // A log that commits our entries as proposed hands back the same bytes: the
                    // batch is already decoded.
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
                        self.dispatch(e, &mut out, ctx);
                    }
                    self.entries_since_snapshot += 1;
                }
                out.send(&self.routers);
                if self.recovered {
                    self.maybe_snapshot();
                }
                if self.log_busy {
                    self.log_busy = false;
                    self.flush(ctx);
                }
            }
            LogEvent::Recovered => self.on_recovered(ctx),
            LogEvent::PeerDown { node } => {
                let kind = pb::command::Kind::NodeDown(pb::NodeDown { node_id: node });
                self.propose(kind, None, ctx);
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
                    Self::fail_waiter(w);
                }
            }
            LogEvent::Rejected { entry, reason } => {
                warn!(reason = %reason, "proposal refused by the log; its requests fail");
                for w in self.proposals.take_entry_waiters(entry) {
                    Self::fail_waiter(w);
                }
            }
        }
    }
}

impl Handler<ConnectRequest> for SessionStore {
    type Result = ();

    fn handle(&mut self, req: ConnectRequest, ctx: &mut Self::Context) {
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
                let old_conn = old.conn_id;
                let (closed, gone) = oneshot::channel();
                old.addr.do_send(Kick {
                    reason: KickReason::TakenOver,
                    closed: Some(closed),
                });
                let gone = tokio::time::timeout(self.config.commit_timeout(), gone);
                ctx.spawn(
                    actix::fut::wrap_future::<_, Self>(gone).map(move |_, act, ctx| {
                        if act.client(&id, old_conn).is_some() {
                            act.clients.remove(&id);
                        }
                        // Unless the new connection gave up meanwhile; another one may have
                        // arrived too, which this takes over in turn.
                        if !req.reply.is_closed() {
                            <Self as Handler<ConnectRequest>>::handle(act, req, ctx);
                        }
                    }),
                );
                return;
            }
        }
        self.clients.insert(
            id.clone(),
            Client {
                conn_id: req.target.conn_id,
                addr: req.target.addr.clone(),
            },
        );
        let clean = req.info.clean_session;
        // On a single node a clean session never enters the replicated state (unless it must
        // discard a stored session); in a cluster it is recorded so that every node can route
        // to it, take it over, and publish its will if this node dies.
        let track = clean && self.track_clean;
        if clean
            && !track
            && self.state.session(&id).is_none()
            && !self.connecting.contains_key(&id)
        {
            let _ = req.reply.send(ConnectOutcome::Accepted {
                session_present: false,
                epoch: 0,
                key: req.target.conn_id,
                resume: Box::default(),
            });
            return;
        }
        *self.connecting.entry(id.clone()).or_default() += 1;
        let will = if clean && !track {
            None
        } else {
            req.info.will.as_ref().map(|w| {
                AppMessage {
                    topic: w.topic.clone(),
                    payload: w.payload.clone(),
                    qos: w.qos,
                    retain: w.retain,
                }
                .to_pb()
            })
        };
        let kind = pb::command::Kind::Connect(pb::SessionConnect {
            client_id: id.to_string(),
            clean_session: clean,
            node_id: self.node_id,
            connection_id: req.target.conn_id,
            will,
            username: req
                .info
                .username
                .as_ref()
                .map_or(String::new(), |u| u.to_string()),
            track,
        });
        let waiter = Waiter::Connect {
            reply: req.reply,
            target: req.target,
            client_id: id,
            local: clean && !track,
        };
        self.propose(kind, Some(waiter), ctx);
    }
}

impl Handler<SubscribeRequest> for SessionStore {
    type Result = ();

    fn handle(&mut self, req: SubscribeRequest, ctx: &mut Self::Context) {
        if req.epoch == 0 {
            for (filter, qos) in &req.filters {
                self.broadcast(RouteUpdate::Add {
                    key: req.key,
                    filter: filter.clone(),
                    qos: *qos,
                    durable: false,
                    target: Some(RouteTarget::Local(req.target.clone())),
                });
            }
            let retained = self.retained_for(&req.filters, true);
            let granted = req.filters.iter().map(|(_, q)| *q).collect();
            let _ = req.reply.send(SubscribeOutcome::Done { granted, retained });
            return;
        }
        let kind = pb::command::Kind::Subscribe(pb::Subscribe {
            client_id: req.client_id.to_string(),
            epoch: req.epoch,
            filters: req
                .filters
                .iter()
                .map(|(f, q)| pb::SubscriptionRequest {
                    filter: f.to_string(),
                    qos: u32::from(q.as_u8()),
                })
                .collect(),
        });
        let clean = self.state.clean_session(&req.client_id).is_some();
        let waiter = Waiter::Subscribe {
            reply: req.reply,
            filters: req.filters,
            clean,
        };
        self.propose(kind, Some(waiter), ctx);
    }
}

impl Handler<UnsubscribeRequest> for SessionStore {
    type Result = ();

    fn handle(&mut self, req: UnsubscribeRequest, ctx: &mut Self::Context) {
        if req.epoch == 0 {
            for filter in req.filters {
                self.broadcast(RouteUpdate::Remove {
                    key: req.key,
                    filter,
                });
            }
            let _ = req.reply.send(true);
            return;
        }
        let kind = pb::command::Kind::Unsubscribe(pb::Unsubscribe {
            client_id: req.client_id.to_string(),
            epoch: req.epoch,
            filters: req.filters.iter().map(|f| f.to_string()).collect(),
        });
        self.propose(kind, Some(Waiter::Unsubscribe(req.reply)), ctx);
    }
}

impl Handler<SessionRequest> for SessionStore {
    type Result = ();

    fn handle(&mut self, req: SessionRequest, ctx: &mut Self::Context) {
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
                self.propose(kind, Some(Waiter::Ack { conn: from, token }), ctx);
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
                self.propose(kind, Some(Waiter::Ack { conn: from, token }), ctx);
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
                });
                self.propose(kind, Some(Waiter::Disconnect(reply)), ctx);
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
                self.propose(cmd, waiter, ctx);
            }
        }
    }
}

impl Handler<DurablePublish> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: DurablePublish, ctx: &mut Self::Context) {
        for item in msg.items {
            let kind = pb::command::Kind::Publish(pb::Publish {
                message: Some(item.message.to_pb()),
                fast_path_done: true,
                ..pb::Publish::default()
            });
            let waiter = item.reply.map(|(conn, token)| Waiter::Ack { conn, token });
            self.propose(kind, waiter, ctx);
        }
    }
}

impl Handler<ConnectionClosed> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: ConnectionClosed, ctx: &mut Self::Context) {
        if self.client(&msg.client_id, msg.conn_id).is_some() {
            self.clients.remove(&msg.client_id);
        }
        if msg.epoch == 0 {
            // An untracked clean session (or a persistent one already released): only its
            // router entries are left to remove.
            if !msg.persistent {
                for filter in msg.filters {
                    self.broadcast(RouteUpdate::Remove {
                        key: msg.key,
                        filter,
                    });
                }
            }
        } else {
            let kind = pb::command::Kind::Disconnect(pb::SessionDisconnect {
                client_id: msg.client_id.to_string(),
                epoch: msg.epoch,
                sent_up_to: msg.sent_up_to,
                publish_will: msg.publish_will,
            });
            self.propose(kind, None, ctx);
        }
    }
}

/// Replaces the node-local `$SYS` retained messages and delivers them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SysPublish {
    /// Messages (RETAIN set).
    pub messages: Vec<AppMessage>,
}

impl Handler<SysPublish> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: SysPublish, _: &mut Self::Context) {
        let mut per_shard: Vec<Vec<AppMessage>> = vec![Vec::new(); self.routers.len()];
        for m in msg.messages {
            self.sys_retained.set(&m);
            per_shard[shard_of(&m.topic, self.routers.len())].push(m.with(m.qos, false));
        }
        for (i, messages) in per_shard.into_iter().enumerate() {
            if !messages.is_empty() {
                self.routers[i].do_send(FastPath { messages });
            }
        }
    }
}

/// Counts for `$SYS` and the admin endpoint.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    /// Replicated-state counts.
    pub state: StateStats,
    /// Clients connected to this node.
    pub clients: usize,
    /// Requests waiting for a commit.
    pub waiting: usize,
    /// Last applied log index.
    pub applied_index: u64,
    /// Log status.
    pub log: LogStatus,
    /// Digest of the replicated state (only when asked for).
    pub digest: Option<u64>,
}

/// Asks the store for its counts.
#[derive(Message)]
#[rtype(result = "StoreStats")]
pub struct GetStats {
    /// Also compute the state digest (walks the whole state).
    pub digest: bool,
}

impl Handler<GetStats> for SessionStore {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, msg: GetStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(StoreStats {
            state: self.state.stats(),
            clients: self.clients.len(),
            waiting: self.proposals.waiting(),
            applied_index: self.state.applied_index(),
            log: self.log.status(),
            digest: msg.digest.then(|| self.state.digest()),
        })
    }
}

/// Graceful shutdown: close every client, wait for their sessions to be committed, snapshot,
/// stop the log. Replies when done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for SessionStore {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        for c in self.clients.values() {
            c.addr.do_send(Kick {
                reason: KickReason::Shutdown,
                closed: None,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        Box::pin(
            actix::fut::wrap_future::<_, Self>(async {})
                .then(move |_, _, _| ShutdownWait { deadline })
                .map(|_, act: &mut Self, ctx| {
                    act.flush(ctx);
                    for w in act.proposals.drain() {
                        Self::fail_waiter(w);
                    }
                    let data = act.state.encode_snapshot();
                    act.log.save_snapshot(act.state.applied_index(), data);
                    act.log.shutdown();
                    info!("session store stopped");
                }),
        )
    }
}

/// Polls until every client is gone and what they proposed is committed, or the deadline.
struct ShutdownWait {
    deadline: Instant,
}

impl ActorFuture<SessionStore> for ShutdownWait {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        act: &mut SessionStore,
        ctx: &mut Context<SessionStore>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if Instant::now() >= self.deadline
            || (act.clients.is_empty() && act.proposals.is_empty() && act.proposals.waiting() == 0)
        {
            return std::task::Poll::Ready(());
        }
        act.flush(ctx);
        let waker = cx.waker().clone();
        ctx.run_later(Duration::from_millis(20), move |_, _| waker.wake());
        std::task::Poll::Pending
    }
}
