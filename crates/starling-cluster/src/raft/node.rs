//! [`RaftNode`]: the actor shell around [`RaftCore`].
//!
//! It turns mailbox messages into calls of the core, with the time read here, and performs what
//! the core asks for ([`RaftOutput`]): messages to the transport (snapshots in chunks), writes to
//! the storage writer thread (in order; a FIFO holds those its full queue could not take yet),
//! events to the session store, the peer table to the transport and the fast-path forwarder. A
//! fatal output stops the process with exit code 70. Ticks come from an actix timer; the Ready
//! is handled once per mailbox pass, so that everything that arrived meanwhile shares one Ready
//! and one write.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use raft::eraftpb::Message as RaftMessage;
use starling_broker::{Freshness, LogEvent};
use starling_storage::{Done, LogWriter, StorageError, SubmitError, WriteBatch};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::core::{MemberChange, RaftCore, RaftOutput};
use super::status::StatusCell;
use super::transfer::{Outcome, TransferId};
use crate::backup::Backup;
use crate::transport::{PeerForwarder, SnapshotDone, Transport};

/// Exit code of a node that stops because it cannot persist (EX_SOFTWARE).
pub const EXIT_STORAGE_FAILED: i32 = 70;

/// Where the actor's writes go: the storage writer thread ([`LogWriter`]), or a test's stand-in.
pub(crate) trait WriteQueue: Send {
    /// Queues `batch`; `done` is called once it is written. Never blocks.
    #[allow(
        clippy::result_large_err,
        reason = "the writer hands the batch back by value"
    )]
    fn try_submit(&self, batch: WriteBatch, done: Done) -> Result<(), SubmitError>;

    /// Writes what is queued and stops.
    fn shutdown(self: Box<Self>);
}

impl WriteQueue for LogWriter {
    fn try_submit(&self, batch: WriteBatch, done: Done) -> Result<(), SubmitError> {
        LogWriter::try_submit(self, batch, done)
    }

    fn shutdown(self: Box<Self>) {
        LogWriter::shutdown(*self);
    }
}

/// A peer's Raft message, to step into the node.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Step(pub(crate) RaftMessage);

/// A snapshot a peer sent in chunks, reassembled: stepped if valid, else refused (the sender
/// then reports the transfer failed).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub(crate) struct InstallSnapshot(pub(crate) RaftMessage);

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
pub(crate) struct Stop(pub(crate) Option<oneshot::Sender<()>>);

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

/// The storage writer finished write `seq`.
#[derive(Message)]
#[rtype(result = "()")]
struct Persisted {
    seq: u64,
    result: Result<(), StorageError>,
}

/// The Raft actor of one group.
pub struct RaftNode {
    /// Every decision: Ready handling, proposals, membership, snapshots, liveness.
    core: RaftCore,
    /// Peer connections: Raft streams, snapshot transfers.
    transport: Transport,
    /// The storage writer; `None` once stopped.
    writer: Option<Box<dyn WriteQueue>>,
    /// Writes the writer's queue could not take yet, in the core's order.
    waiting: VecDeque<(u64, WriteBatch)>,
    /// A full writer queue was logged (once until it drains).
    full_logged: bool,
    /// The session store, once attached.
    sink: Option<Recipient<LogEvent>>,
    /// What the admin endpoint and `$SYS` read, refreshed after every Ready pass.
    status: StatusCell,
    /// A Ready pass is scheduled for after the mailbox is drained.
    ready_scheduled: bool,
    /// Fast-path forwarder whose peer set follows the membership.
    forwarder: Option<Arc<PeerForwarder>>,
    /// When a failed snapshot transfer to each peer was last logged at warn level (Raft may
    /// retry at every heartbeat).
    failure_logged: HashMap<u64, Instant>,
    /// Where the routers read whether this node's replica is fresh (refreshed with the status).
    freshness: Arc<Freshness>,
}

/// A failed snapshot transfer to a peer is logged as a warning at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl RaftNode {
    /// A shell around `core`, writing through `writer`, publishing its status in `status`.
    pub(crate) fn new(
        core: RaftCore,
        writer: Box<dyn WriteQueue>,
        status: StatusCell,
        transport: Transport,
    ) -> RaftNode {
        RaftNode {
            core,
            transport,
            writer: Some(writer),
            waiting: VecDeque::new(),
            full_logged: false,
            sink: None,
            status,
            ready_scheduled: false,
            forwarder: None,
            failure_logged: HashMap::new(),
            freshness: Arc::new(Freshness::new(false)),
        }
    }

    /// Publishes whether this node's replica is fresh in `freshness` (for the routers).
    pub(crate) fn with_freshness(mut self, freshness: Arc<Freshness>) -> RaftNode {
        self.freshness = freshness;
        self
    }

    /// Sends fast-path forwards through `forwarder`, keeping its peers in step with the
    /// membership.
    pub(crate) fn with_forwarder(mut self, forwarder: Arc<PeerForwarder>) -> RaftNode {
        self.forwarder = Some(forwarder);
        self
    }

    fn schedule_ready(&mut self, ctx: &mut Context<Self>) {
        if !self.ready_scheduled {
            self.ready_scheduled = true;
            // Runs after the mailbox is drained: one Ready for everything stepped meanwhile.
            ctx.spawn(actix::fut::ready(()).map(|_, act: &mut Self, ctx| {
                act.ready_scheduled = false;
                let mut out = RaftOutput::default();
                act.core.handle_ready(Instant::now(), &mut out);
                if !act.core.is_leader() {
                    // Only a leader sends snapshots; what a former leader still sends is stale.
                    for (id, outcome) in act.transport.abort_snapshots("no longer the leader") {
                        act.transfer_ended(id, &outcome, &mut out);
                    }
                }
                act.perform(out, ctx);
                act.publish_status();
            }));
        }
    }

    /// Does what the core asked for; reports back what that produced (snapshot transfers that
    /// ended at once, peers that could not take a message, a writer that is gone) until there is
    /// nothing left.
    fn perform(&mut self, mut out: RaftOutput, ctx: &mut Context<Self>) {
        loop {
            if let Some(why) = out.fatal.take() {
                return self.die(&why, ctx);
            }
            let mut more = RaftOutput::default();
            if let Some(peers) = out.peers.take() {
                for (id, outcome) in self.transport.set_peers(&peers) {
                    self.transfer_ended(id, &outcome, &mut more);
                }
                if let Some(f) = &self.forwarder {
                    f.set_peers(&peers);
                }
            }
            if !out.messages.is_empty() {
                let sent = self.transport.send(std::mem::take(&mut out.messages));
                for id in sent.unreachable {
                    self.core.report_unreachable(id);
                }
                for (id, outcome) in sent.snapshots {
                    self.transfer_ended(id, &outcome, &mut more);
                }
            }
            self.waiting.extend(out.writes.drain(..));
            self.submit_writes(ctx, &mut more);
            if let Some(sink) = &self.sink {
                for event in out.events.drain(..) {
                    sink.do_send(event);
                }
            }
            if more.is_empty() {
                return;
            }
            out = more;
        }
    }

    /// Hands waiting writes to the writer, in order, as far as its queue takes them.
    fn submit_writes(&mut self, ctx: &mut Context<Self>, out: &mut RaftOutput) {
        // Stopped: what is still produced is not written (the node is going away).
        let Some(writer) = &self.writer else { return };
        while let Some((seq, batch)) = self.waiting.pop_front() {
            let addr = ctx.address();
            let done: Done = Box::new(move |result| addr.do_send(Persisted { seq, result }));
            match writer.try_submit(batch, done) {
                Ok(()) => {}
                Err(e) if e.is_full() => {
                    // Keep the order: retry from the front after the next completion.
                    let (batch, _) = e.into_parts();
                    self.waiting.push_front((seq, batch));
                    if !self.full_logged {
                        warn!(
                            waiting = self.waiting.len(),
                            "storage writer queue full (storage.queue_capacity); Raft writes wait"
                        );
                        self.full_logged = true;
                    }
                    return;
                }
                Err(_) => {
                    self.waiting.clear();
                    return self.core.writer_closed(out);
                }
            }
        }
        self.full_logged = false;
    }

    /// A snapshot transfer ended: tell the core (raft-rs), log a failure.
    fn transfer_ended(&mut self, id: TransferId, outcome: &Outcome, out: &mut RaftOutput) {
        match outcome {
            Outcome::Finished => {
                info!(
                    to = id.to,
                    index = id.index,
                    "snapshot sent and installed by the follower"
                );
                self.core.snapshot_sent(&id, true, out);
            }
            Outcome::Failed(why) => {
                let now = Instant::now();
                let quiet = self
                    .failure_logged
                    .get(&id.to)
                    .is_some_and(|t| now.saturating_duration_since(*t) < FAILURE_LOG_INTERVAL);
                if quiet {
                    debug!(to = id.to, index = id.index, reason = %why, "snapshot transfer failed");
                } else {
                    self.failure_logged.insert(id.to, now);
                    warn!(to = id.to, index = id.index, reason = %why, "snapshot transfer failed; Raft will send one again");
                }
                self.core.snapshot_sent(&id, false, out);
            }
        }
    }

    /// A node that cannot persist must not vote or acknowledge anything any more: it stops.
    fn die(&mut self, why: &str, ctx: &mut Context<Self>) {
        error!(
            error = %why,
            code = EXIT_STORAGE_FAILED,
            "raft node cannot go on; stopping the node"
        );
        self.waiting.clear();
        System::current().stop_with_code(EXIT_STORAGE_FAILED);
        ctx.stop();
    }

    fn publish_status(&self) {
        self.freshness.set(self.core.fresh());
        let mut s = self.core.status();
        s.dropped_messages = self.transport.dropped;
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// Runs `f` on the core with a fresh output, performs it, and schedules a Ready pass.
    fn with_core<R>(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut RaftCore, &mut RaftOutput) -> R,
    ) -> R {
        let mut out = RaftOutput::default();
        let r = f(&mut self.core, &mut out);
        self.perform(out, ctx);
        self.schedule_ready(ctx);
        r
    }
}

impl Actor for RaftNode {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64 * 1024);
        self.transport
            .set_snapshot_reports(ctx.address().recipient());
        let out = RaftOutput {
            peers: Some(self.core.peer_addresses()),
            ..RaftOutput::default()
        };
        self.perform(out, ctx);
        self.publish_status();
        ctx.run_interval(self.core.settings().tick, |act, ctx| {
            act.with_core(ctx, |core, out| core.tick(Instant::now(), out));
        });
    }
}

impl Handler<Attach> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: Attach, ctx: &mut Self::Context) {
        self.sink = Some(msg.0);
        self.with_core(ctx, |core, out| core.attach(Instant::now(), out));
    }
}

impl Handler<Step> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: Step, ctx: &mut Self::Context) {
        self.with_core(ctx, |core, out| {
            if let Err(e) = core.step(msg.0, out) {
                debug!(error = %e, "raft message not stepped");
            }
        });
    }
}

impl Handler<InstallSnapshot> for RaftNode {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: InstallSnapshot, ctx: &mut Self::Context) -> Self::Result {
        self.with_core(ctx, |core, out| core.step(msg.0, out))
            .map_err(|e| e.to_string())
    }
}

impl Handler<Propose> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: Propose, ctx: &mut Self::Context) {
        self.with_core(ctx, |core, out| core.propose(msg.0, Instant::now(), out));
    }
}

impl Handler<Persisted> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: Persisted, ctx: &mut Self::Context) {
        self.with_core(ctx, |core, out| {
            core.persisted(msg.seq, msg.result, Instant::now(), out);
        });
    }
}

impl Handler<SnapshotDone> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: SnapshotDone, ctx: &mut Self::Context) {
        if !self.transport.transfer_done(&msg.id) {
            // Superseded meanwhile; its end was reported then.
            return;
        }
        let mut out = RaftOutput::default();
        self.transfer_ended(msg.id, &msg.outcome, &mut out);
        self.perform(out, ctx);
        self.schedule_ready(ctx);
    }
}

impl Handler<SaveSnapshot> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: SaveSnapshot, ctx: &mut Self::Context) {
        self.with_core(ctx, |core, out| {
            core.save_snapshot(msg.index, msg.data, out)
        });
    }
}

impl Handler<ChangeMembers> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: ChangeMembers, ctx: &mut Self::Context) {
        self.with_core(ctx, |core, out| {
            core.change_members(msg.change, msg.reply, Instant::now(), out);
        });
    }
}

impl Handler<TransferLeadership> for RaftNode {
    type Result = ();

    fn handle(&mut self, _: TransferLeadership, ctx: &mut Self::Context) {
        self.with_core(ctx, RaftCore::transfer_leadership);
    }
}

impl Handler<ExportBackup> for RaftNode {
    type Result = MessageResult<ExportBackup>;

    fn handle(&mut self, _: ExportBackup, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.export_backup())
    }
}

impl Handler<Stop> for RaftNode {
    type Result = ();

    fn handle(&mut self, msg: Stop, ctx: &mut Self::Context) {
        // Drains what is queued (the shutdown snapshot included) and joins the writer thread:
        // the process exits once `msg.0` is answered.
        if let Some(w) = self.writer.take() {
            w.shutdown();
        }
        if let Some(done) = msg.0 {
            let _ = done.send(());
        }
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use starling_storage::LogStore;

    use super::*;
    use crate::raft::{RaftSettings, RaftStorage};

    /// A writer whose thread is gone.
    struct Closed;

    impl WriteQueue for Closed {
        fn try_submit(&self, batch: WriteBatch, done: Done) -> Result<(), SubmitError> {
            Err(SubmitError::Closed(batch, done))
        }

        fn shutdown(self: Box<Self>) {}
    }

    /// A writer whose every write fails.
    struct Failing;

    impl WriteQueue for Failing {
        fn try_submit(&self, _: WriteBatch, done: Done) -> Result<(), SubmitError> {
            done(Err(StorageError::Engine {
                op: "commit",
                message: "disk gone".into(),
            }));
            Ok(())
        }

        fn shutdown(self: Box<Self>) {}
    }

    /// Stands in for the session store.
    struct Sink;

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<LogEvent> for Sink {
        type Result = ();

        fn handle(&mut self, _: LogEvent, _: &mut Self::Context) {}
    }

    /// Runs a single-node cluster writing through `writer` until its system stops; the exit
    /// code (99 if nothing stopped it within 30 s).
    fn exit_code_with(writer: Box<dyn WriteQueue>) -> i32 {
        let sys = System::new();
        sys.block_on(async move {
            let store = LogStore::open_in_memory().unwrap();
            let (storage, peers, _) =
                RaftStorage::open(&store, 1, 1, &[(1, "127.0.0.1:1".into())], true).unwrap();
            let settings = RaftSettings {
                tick: Duration::from_millis(5),
                ..RaftSettings::for_node(1, 1)
            };
            let transport = Transport::new(
                1,
                1,
                16,
                settings.max_message_bytes,
                settings.transfer.clone(),
                None,
            );
            let core = RaftCore::new(settings, storage, peers, Instant::now()).unwrap();
            let node = RaftNode::new(core, writer, StatusCell::default(), transport).start();
            node.do_send(Attach(Sink.start().recipient()));
            // A deadline, not a synchronisation: a node that never stops fails the test.
            actix_rt::spawn(async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                System::current().stop_with_code(99);
            });
        });
        sys.run_with_code().unwrap()
    }

    #[test]
    fn a_writer_that_closed_under_a_running_node_stops_it_with_exit_code_70() {
        assert_eq!(exit_code_with(Box::new(Closed)), EXIT_STORAGE_FAILED);
    }

    #[test]
    fn a_failed_write_stops_the_node_with_exit_code_70() {
        assert_eq!(exit_code_with(Box::new(Failing)), EXIT_STORAGE_FAILED);
    }
}
