//! The session store: the node's replica of the replicated state, and the bridge between it and
//! the connections.
//!
//! [`StoreCore`] (a plain struct, no actix) decides everything:
//! - requests from connections (connect, subscribe, durable publishes and acknowledgements),
//!   turned into commands and proposed in batches (`proposals`);
//! - log events: committed entries are applied to the [`State`](starling_state::State) and their
//!   effects turned into output (`effects`): replies, deliveries to the connections it serves,
//!   router updates, fast-path deliveries;
//! - the registry of clients connected to this node (takeover on this node, clean sessions,
//!   which never enter the replicated state on a single node);
//! - what this node derives from the replicated state, rebuilt when the state is replaced or
//!   recovered and checked against a rebuild (`derived`).
//!
//! [`SessionStore`] is the actor around it: it feeds messages to the core, sets its clock, runs
//! its timers and sends what it outputs ([`output`]). It never blocks: the log does its IO on
//! its own thread.

mod core;
mod derived;
mod effects;
pub mod output;
mod proposals;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use starling_state::{pb, Message as AppMessage, StateConfig, StateStats};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{error, warn};

#[cfg(feature = "mutations")]
pub use self::core::mutations;
pub use self::core::StoreCore;
use self::output::{ConnMessage, ShardMessage, StoreOutput};
pub use self::proposals::ENTRY_OVERHEAD;
use crate::config::BrokerConfig;
use crate::messages::*;
use crate::replication::{LogEvent, LogStatus, ReplicatedLog};
use crate::router::RouterShard;

/// Wall clock in milliseconds since the Unix epoch.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The session-store actor: a shell around [`StoreCore`].
pub struct SessionStore {
    /// The logic.
    core: StoreCore,
    /// The router shards the core's [`ShardMessage`]s go to.
    routers: Arc<[Addr<RouterShard>]>,
    /// A flush is scheduled for the end of the current mailbox pass.
    flush_scheduled: bool,
}

impl SessionStore {
    /// A store for node `node_id` over `log` with `shards` router shards. `ready` fires once
    /// the log has been replayed. `max_entry_bytes` bounds one log entry. `limits` is where the
    /// replicated queue limits are published for the connections.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: u64,
        config: Arc<BrokerConfig>,
        log: Box<dyn ReplicatedLog>,
        ready: oneshot::Sender<Result<(), String>>,
        track_clean: bool,
        max_entry_bytes: usize,
        shards: usize,
        limits: Arc<crate::config::SharedLimits>,
    ) -> SessionStore {
        let incarnation = rand::random::<u64>() | 1;
        let core = StoreCore::new(
            node_id,
            config,
            log,
            shards,
            ready,
            track_clean,
            incarnation,
            max_entry_bytes,
            Instant::now(),
            limits,
        );
        SessionStore {
            core,
            routers: Arc::from(Vec::new()),
            flush_scheduled: false,
        }
    }

    /// Sets the core's clock before an input.
    fn clock(&mut self) -> &mut StoreCore {
        self.core.set_clock(Instant::now(), wall_ms());
        &mut self.core
    }

    /// Sends what the core produced, and schedules its flush for the end of the pass.
    fn send_out(&mut self, ctx: &mut Context<Self>) {
        // Performing can produce more (a CONNECT answered to nobody is undone).
        loop {
            let out = self.core.take_output();
            if out.is_empty() {
                break;
            }
            self.perform(out, ctx);
        }
        if self.core.take_flush_due() && !self.flush_scheduled {
            // Runs after the mailbox is drained: one entry for everything proposed meanwhile.
            self.flush_scheduled = true;
            ctx.spawn(actix::fut::ready(()).map(|_, act: &mut Self, ctx| {
                act.flush_scheduled = false;
                act.clock().flush();
                act.send_out(ctx);
            }));
        }
    }

    fn perform(&mut self, out: StoreOutput, ctx: &mut Context<Self>) {
        for m in out.shards {
            match m {
                ShardMessage::Update(update) => {
                    if let Some((last, rest)) = self.routers.split_last() {
                        for r in rest {
                            r.do_send(update.clone());
                        }
                        last.do_send(update);
                    }
                }
                ShardMessage::FastPath { shard, messages } => {
                    if let Some(r) = self.routers.get(shard) {
                        r.do_send(FastPath { messages });
                    }
                }
            }
        }
        // After the router updates: what a client does on its answer finds them queued.
        for reply in out.replies {
            if let Some(lost) = reply.send() {
                self.core.connect_lost(&lost);
            }
        }
        for (target, m) in out.conns {
            match m {
                ConnMessage::Durable(d) => target.addr.do_send(d),
                ConnMessage::Release(r) => target.addr.do_send(r),
                ConnMessage::Acked(a) => target.addr.do_send(a),
                ConnMessage::Kick(reason) => target.addr.do_send(Kick {
                    reason,
                    closed: None,
                }),
            }
        }
        for t in out.takeovers {
            let old_conn = t.old.conn_id;
            let (closed, gone) = oneshot::channel();
            t.old.addr.do_send(Kick {
                reason: KickReason::TakenOver,
                closed: Some(closed),
            });
            let gone = tokio::time::timeout(self.core.config.commit_timeout(), gone);
            let request = t.request;
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(gone).map(move |_, act, ctx| {
                    act.clock().finish_takeover(old_conn, request);
                    act.send_out(ctx);
                }),
            );
        }
        if out.stop {
            ctx.stop();
        }
    }
}

impl Actor for SessionStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16 * 1024);
        ctx.run_interval(Duration::from_millis(500), |act, ctx| {
            act.clock().tick();
            act.send_out(ctx);
        });
        ctx.run_interval(Duration::from_secs(10), |act, ctx| {
            act.clock().expire_sessions();
            act.send_out(ctx);
        });
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
        if let Err(e) = self.core.log_mut().start(ctx.address().recipient()) {
            error!(error = %e, "cannot start the log");
            if let Some(r) = self.core.ready.take() {
                let _ = r.send(Err(e.to_string()));
            }
            ctx.stop();
        }
    }
}

impl Handler<LogEvent> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: LogEvent, ctx: &mut Self::Context) {
        self.clock().on_log_event(msg);
        self.send_out(ctx);
    }
}

impl Handler<ConnectRequest> for SessionStore {
    type Result = ();

    fn handle(&mut self, req: ConnectRequest, ctx: &mut Self::Context) {
        self.clock().connect(req);
        self.send_out(ctx);
    }
}

impl Handler<SubscribeRequest> for SessionStore {
    type Result = ();

    fn handle(&mut self, req: SubscribeRequest, ctx: &mut Self::Context) {
        self.clock().subscribe(req);
        self.send_out(ctx);
    }
}

impl Handler<UnsubscribeRequest> for SessionStore {
    type Result = ();

    fn handle(&mut self, req: UnsubscribeRequest, ctx: &mut Self::Context) {
        self.clock().unsubscribe(req);
        self.send_out(ctx);
    }
}

impl Handler<SessionRequest> for SessionStore {
    type Result = ();

    fn handle(&mut self, req: SessionRequest, ctx: &mut Self::Context) {
        self.clock().session_request(req);
        self.send_out(ctx);
    }
}

impl Handler<DurablePublish> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: DurablePublish, ctx: &mut Self::Context) {
        self.clock().durable_publish(msg.items);
        self.send_out(ctx);
    }
}

impl Handler<ConnectionClosed> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: ConnectionClosed, ctx: &mut Self::Context) {
        self.clock().connection_closed(msg);
        self.send_out(ctx);
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

    fn handle(&mut self, msg: SysPublish, ctx: &mut Self::Context) {
        self.clock().sys_publish(msg.messages);
        self.send_out(ctx);
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
    /// The replicated limits in force.
    pub limits: StateConfig,
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
        MessageResult(self.core.stats(msg.digest))
    }
}

/// Proposes new replicated limits (the admin operation); answers with the limits in force once
/// applied on this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLimits {
    /// The new limits; a field of 0 leaves that limit as it is.
    pub limits: pb::Limits,
    /// The limits in force once applied, or why not.
    pub reply: oneshot::Sender<Result<StateConfig, String>>,
}

impl Handler<SetLimits> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: SetLimits, ctx: &mut Self::Context) {
        self.clock().set_limits(msg.limits, msg.reply);
        self.send_out(ctx);
    }
}

/// Checks every index derived from the replicated state against a rebuild from it (the state's
/// subscription index, the router keys, every router shard's subscriptions); answers with the
/// differences found.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckDerived {
    /// `Ok` when everything agrees, else the differences.
    pub reply: oneshot::Sender<Result<(), Vec<String>>>,
}

impl Handler<CheckDerived> for SessionStore {
    type Result = ();

    fn handle(&mut self, msg: CheckDerived, ctx: &mut Self::Context) {
        let shards = self.routers.len();
        let (tx, mut rx) = tokio::sync::mpsc::channel(shards.max(1));
        let own = self.clock().check_derived(Some(tx));
        self.send_out(ctx);
        let reply = msg.reply;
        actix_rt::spawn(async move {
            let mut problems: Vec<String> = own.err().into_iter().collect();
            for _ in 0..shards {
                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                    Ok(Some(Ok(()))) => {}
                    Ok(Some(Err(e))) => problems.push(format!("router shard: {e}")),
                    _ => problems.push("a router shard did not answer".into()),
                }
            }
            let _ = reply.send(if problems.is_empty() {
                Ok(())
            } else {
                Err(problems)
            });
        });
    }
}

/// How long a stopping store waits for its log to write what it was handed.
const LOG_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Graceful shutdown: close every client, wait for their sessions to be committed, snapshot,
/// stop the log. Replies when the log has written everything.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for SessionStore {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.clock().begin_shutdown();
        self.send_out(ctx);
        let deadline = Instant::now() + Duration::from_secs(5);
        Box::pin(
            actix::fut::wrap_future::<_, Self>(async {})
                .then(move |_, _, _| ShutdownWait { deadline })
                .then(|_, act: &mut Self, ctx| {
                    let stopped = act.clock().finish_shutdown();
                    act.send_out(ctx);
                    // The process may exit once the log has written the shutdown snapshot
                    // and everything before it.
                    actix::fut::wrap_future(async move {
                        if tokio::time::timeout(LOG_STOP_TIMEOUT, stopped)
                            .await
                            .is_err()
                        {
                            error!(
                                "the log did not report its end within {LOG_STOP_TIMEOUT:?}: \
                                 the next start replays the log since its last snapshot"
                            );
                        }
                    })
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
        if act.core.quiet() {
            return std::task::Poll::Ready(());
        }
        if Instant::now() >= self.deadline {
            warn!(
                left = %act.core.not_quiet(),
                "graceful stop: gave up waiting for the clients' last requests to commit: {}",
                act.core.not_quiet()
            );
            return std::task::Poll::Ready(());
        }
        act.clock().flush();
        act.send_out(ctx);
        let waker = cx.waker().clone();
        ctx.run_later(Duration::from_millis(20), move |_, _| waker.wake());
        std::task::Poll::Pending
    }
}
