//! Snapshot transfers over gRPC: a task per transfer drives a [`SnapshotTransfer`], one
//! `SnapshotChunk` request at a time, and tells the Raft actor how it ended ([`SnapshotDone`]).
//!
//! At most one transfer runs per peer. A `MsgSnapshot` for a peer that already has one running
//! is the same transfer (left running) or a newer one, which replaces the old (ended at once as
//! superseded). The task has its own connection, opened when the transfer starts, so that a
//! large snapshot never holds up the Raft stream's heartbeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use raft::eraftpb::Message as RaftMessage;
use starling_proto::cluster::v1::snapshot_chunk_ack::Status as PbStatus;
use starling_proto::cluster::v1::{SnapshotChunk, SnapshotChunkAck};
use tokio::time::Instant;
use tracing::{debug, info};

use super::{connect_peer, PeerClient};
use crate::auth::PeerAuth;
use crate::raft::storage::encode;
use crate::raft::{
    AckStatus, Chunk, ChunkAck, Next, Outcome, SnapshotTransfer, TransferId, TransferSettings,
};

/// A snapshot transfer ended (sent by its task to the Raft actor).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SnapshotDone {
    /// The transfer.
    pub(crate) id: TransferId,
    /// How.
    pub(crate) outcome: Outcome,
}

/// A transfer's task.
struct Running {
    /// Which transfer it runs.
    id: TransferId,
    /// Aborted when the transfer is superseded or its peer goes.
    task: actix_rt::task::JoinHandle<()>,
}

/// The snapshot transfers under way, at most one per peer.
pub(crate) struct SnapshotSends {
    /// This node (for log lines).
    node_id: u64,
    /// The Raft group (on every chunk).
    group: u64,
    /// Chunk size and retry limits.
    settings: TransferSettings,
    /// Message size cap of the peer connection.
    max_message_bytes: usize,
    /// Cluster credentials; `None`: insecure mode.
    auth: Option<Arc<PeerAuth>>,
    /// Per peer: the transfer running.
    running: HashMap<u64, Running>,
    /// Where tasks report their end; set when the actor starts.
    reports: Option<Recipient<SnapshotDone>>,
}

impl Drop for SnapshotSends {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.task.abort();
        }
    }
}

impl SnapshotSends {
    pub(crate) fn new(
        node_id: u64,
        group: u64,
        settings: TransferSettings,
        max_message_bytes: usize,
        auth: Option<Arc<PeerAuth>>,
    ) -> SnapshotSends {
        SnapshotSends {
            node_id,
            group,
            settings,
            max_message_bytes,
            auth,
            running: HashMap::new(),
            reports: None,
        }
    }

    pub(crate) fn set_reports(&mut self, to: Recipient<SnapshotDone>) {
        self.reports = Some(to);
    }

    /// Peers with a transfer running.
    pub(crate) fn peers(&self) -> Vec<u64> {
        self.running.keys().copied().collect()
    }

    /// Ends the transfer to `peer`, if any: its outcome, to report.
    pub(crate) fn abort(&mut self, peer: u64, why: &str) -> Option<(TransferId, Outcome)> {
        let r = self.running.remove(&peer)?;
        r.task.abort();
        Some((r.id, Outcome::Failed(why.to_string())))
    }

    /// Starts sending `msg` (a `MsgSnapshot`) to the peer at `address`. Returns the transfers
    /// that ended at once (the one it supersedes; this one if it cannot start).
    pub(crate) fn start(&mut self, msg: &RaftMessage, address: &str) -> Vec<(TransferId, Outcome)> {
        let mut ended = Vec::new();
        let Some(id) = TransferId::of(msg) else {
            return ended;
        };
        if self.running.get(&id.to).is_some_and(|r| r.id == id) {
            // Raft sent the same snapshot again: the transfer under way carries it.
            return ended;
        }
        ended.extend(self.abort(id.to, "superseded by a newer snapshot"));
        let Some(reports) = self.reports.clone() else {
            ended.push((id, Outcome::Failed("transport not started".into())));
            return ended;
        };
        let data = encode(msg);
        info!(
            node = self.node_id,
            to = id.to,
            index = id.index,
            bytes = data.len(),
            chunk_bytes = self.settings.chunk_bytes,
            "sending snapshot in chunks"
        );
        let transfer = SnapshotTransfer::new(id, data, self.settings.clone(), Instant::now());
        let task = actix_rt::spawn(run(
            transfer,
            self.group,
            address.to_string(),
            self.auth.clone(),
            self.max_message_bytes,
            self.settings.chunk_timeout,
            reports,
        ));
        self.running.insert(id.to, Running { id, task });
        ended
    }

    /// Transfer `id` reported its end: true if it is the current one (then forgotten).
    pub(crate) fn done(&mut self, id: &TransferId) -> bool {
        if self.running.get(&id.to).is_some_and(|r| r.id == *id) {
            self.running.remove(&id.to);
            true
        } else {
            false
        }
    }
}

/// Drives one transfer to its end over its own connection, then reports the end.
async fn run(
    mut transfer: SnapshotTransfer,
    group: u64,
    address: String,
    auth: Option<Arc<PeerAuth>>,
    max: usize,
    chunk_timeout: Duration,
    reports: Recipient<SnapshotDone>,
) {
    let id = transfer.id();
    let mut client: Option<PeerClient> = None;
    loop {
        let chunk = match transfer.next(Instant::now()) {
            Next::Done(outcome) => {
                debug!(
                    to = id.to,
                    index = id.index,
                    chunks = transfer.chunks_sent(),
                    ?outcome,
                    "snapshot transfer over"
                );
                reports.do_send(SnapshotDone { id, outcome });
                return;
            }
            Next::WaitUntil(at) => {
                tokio::time::sleep_until(at).await;
                continue;
            }
            Next::Send(chunk) => chunk,
        };
        let mut c = match client.take() {
            Some(c) => c,
            None => match tokio::time::timeout(
                chunk_timeout,
                connect_peer(&address, auth.clone(), id.to, max),
            )
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    transfer.on_error(&e.to_string(), Instant::now());
                    continue;
                }
                Err(_) => {
                    transfer.on_error("no connection in time", Instant::now());
                    continue;
                }
            },
        };
        let answer = tokio::time::timeout(
            chunk_timeout,
            c.send_snapshot_chunk(chunk_to_pb(group, &chunk)),
        );
        match answer.await {
            Ok(Ok(ack)) => {
                transfer.on_ack(&ack_from_pb(id, ack.into_inner()), Instant::now());
                client = Some(c);
            }
            // The connection is dropped: the next attempt opens a new one.
            Ok(Err(status)) => transfer.on_error(&status.to_string(), Instant::now()),
            Err(_) => transfer.on_error("no answer in time", Instant::now()),
        }
    }
}

/// A chunk as it goes on the wire.
pub(crate) fn chunk_to_pb(group: u64, c: &Chunk) -> SnapshotChunk {
    SnapshotChunk {
        group_id: group,
        from: c.id.from,
        to: c.id.to,
        term: c.id.term,
        index: c.id.index,
        snapshot_term: c.id.snapshot_term,
        total: c.total,
        offset: c.offset,
        data: c.data.clone(),
    }
}

/// A chunk from the wire.
pub(crate) fn chunk_from_pb(pb: SnapshotChunk) -> Chunk {
    Chunk {
        id: TransferId {
            from: pb.from,
            to: pb.to,
            term: pb.term,
            index: pb.index,
            snapshot_term: pb.snapshot_term,
        },
        total: pb.total,
        offset: pb.offset,
        data: pb.data,
    }
}

/// An answer as it goes on the wire.
pub(crate) fn ack_to_pb(a: &ChunkAck) -> SnapshotChunkAck {
    let (status, reason) = match &a.status {
        AckStatus::Receiving => (PbStatus::Receiving, String::new()),
        AckStatus::Installing => (PbStatus::Installing, String::new()),
        AckStatus::Accepted => (PbStatus::Accepted, String::new()),
        AckStatus::Refused(why) => (PbStatus::Refused, why.clone()),
    };
    SnapshotChunkAck {
        held: a.held,
        status: status as i32,
        reason,
    }
}

/// An answer from the wire to a chunk of transfer `id`. An unknown status counts as a refusal.
pub(crate) fn ack_from_pb(id: TransferId, pb: SnapshotChunkAck) -> ChunkAck {
    let status = match PbStatus::try_from(pb.status) {
        Ok(PbStatus::Receiving) => AckStatus::Receiving,
        Ok(PbStatus::Installing) => AckStatus::Installing,
        Ok(PbStatus::Accepted) => AckStatus::Accepted,
        Ok(PbStatus::Refused) => AckStatus::Refused(pb.reason),
        Err(_) => AckStatus::Refused(format!("unknown answer {}", pb.status)),
    };
    ChunkAck {
        id,
        held: pb.held,
        status,
    }
}
