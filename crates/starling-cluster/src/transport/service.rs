//! The `Cluster` gRPC service: what peers send this node.

use std::sync::{Arc, Mutex, OnceLock};

use actix::prelude::*;
use raft::eraftpb::Message as RaftMessage;
use starling_broker::LocalDelivery;
use starling_proto::cluster::v1::cluster_server::Cluster;
use starling_proto::cluster::v1::{
    ForwardAck, ForwardBatch, HelloReply, HelloRequest, RaftAck, RaftEnvelope, SnapshotChunk,
    SnapshotChunkAck,
};
use starling_state::Message as AppMessage;
use tracing::{debug, info, warn};

use super::snapshot::{ack_to_pb, chunk_from_pb};
use crate::auth::{AuthenticatedPeer, PeerAuth};
use crate::raft::storage::decode;
use crate::raft::{
    AckStatus, InstallSnapshot, RaftNode, Received, SnapshotReceiver, Step, TransferId,
};

/// The gRPC service that receives peers' Raft messages, snapshot chunks and forwards.
pub(crate) struct ClusterService {
    /// This node: messages for another are dropped.
    pub(crate) node_id: u64,
    /// The Raft group: messages for another are dropped.
    pub(crate) group: u64,
    /// The Raft actor, which steps what arrives.
    pub(crate) raft: Addr<RaftNode>,
    /// Snapshot chunks being assembled (a lock held for one chunk at a time, never across an
    /// await).
    pub(crate) snapshots: Arc<Mutex<SnapshotReceiver>>,
    /// Set once the broker runs; forwards that arrive before are dropped.
    pub(crate) delivery: Arc<OnceLock<LocalDelivery>>,
    /// Cluster credentials (the interceptor checks callers; `hello` proves this node).
    pub(crate) auth: Option<Arc<PeerAuth>>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn raft(
        &self,
        request: tonic::Request<tonic::Streaming<RaftEnvelope>>,
    ) -> Result<tonic::Response<RaftAck>, tonic::Status> {
        let mut stream = request.into_inner();
        while let Some(env) = stream.message().await? {
            if env.group_id != self.group || env.to != self.node_id {
                debug!(
                    group = env.group_id,
                    to = env.to,
                    "raft message for another node or group dropped"
                );
                continue;
            }
            let msg: RaftMessage = decode(&env.payload).map_err(|e| {
                tonic::Status::invalid_argument(format!("undecodable raft message: {e}"))
            })?;
            // A full mailbox drops the message: Raft retransmits.
            let _ = self.raft.try_send(Step(msg));
        }
        Ok(tonic::Response::new(RaftAck {}))
    }

    async fn forward(
        &self,
        request: tonic::Request<tonic::Streaming<ForwardBatch>>,
    ) -> Result<tonic::Response<ForwardAck>, tonic::Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            let Some(delivery) = self.delivery.get() else {
                continue;
            };
            let messages = batch
                .messages
                .into_iter()
                .map(AppMessage::from_pb)
                .collect();
            delivery.deliver(messages).await;
        }
        Ok(tonic::Response::new(ForwardAck {}))
    }

    async fn send_snapshot_chunk(
        &self,
        request: tonic::Request<SnapshotChunk>,
    ) -> Result<tonic::Response<SnapshotChunkAck>, tonic::Status> {
        let caller = request.extensions().get::<AuthenticatedPeer>().map(|p| p.0);
        let pb = request.into_inner();
        if pb.group_id != self.group || pb.to != self.node_id {
            return Err(tonic::Status::failed_precondition(format!(
                "snapshot chunk for node {} of group {}; this is node {} of group {}",
                pb.to, pb.group_id, self.node_id, self.group
            )));
        }
        if self.auth.is_some() && caller != Some(pb.from) {
            return Err(tonic::Status::permission_denied(
                "a snapshot chunk from another node than the caller",
            ));
        }
        let chunk = chunk_from_pb(pb);
        let id = chunk.id;
        let received = self
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .offer(chunk);
        let ack = match received {
            Received::Reply(ack) => ack,
            Received::Complete { id, message } => {
                info!(
                    from = id.from,
                    index = id.index,
                    bytes = message.len(),
                    "snapshot received in chunks"
                );
                // The install finishes (and is recorded) even if this call is cancelled
                // meanwhile, so that a sender asking again gets the verdict.
                let raft = self.raft.clone();
                let snapshots = self.snapshots.clone();
                // (Not `actix_rt::spawn`: hyper runs this call outside the arbiter's LocalSet.)
                let install = tokio::spawn(async move {
                    let verdict = install(&raft, &id, &message).await;
                    snapshots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .installed(&id, verdict)
                });
                match install.await {
                    Ok(ack) => ack,
                    // Not left "installing" for good: a sender asking again gets the refusal.
                    Err(e) => self
                        .snapshots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .installed(&id, Err(format!("install failed: {e}"))),
                }
            }
        };
        if let AckStatus::Refused(why) = &ack.status {
            warn!(from = id.from, index = id.index, reason = %why, "snapshot transfer refused");
        }
        Ok(tonic::Response::new(ack_to_pb(&ack)))
    }

    async fn hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let Some(auth) = &self.auth else {
            // Insecure mode: nothing to prove.
            return Ok(tonic::Response::new(HelloReply {
                node_id: self.node_id,
                proof: Default::default(),
            }));
        };
        // Set by the interceptor, which refused the call otherwise.
        let caller = request
            .extensions()
            .get::<AuthenticatedPeer>()
            .map(|p| p.0)
            .ok_or_else(|| tonic::Status::unauthenticated("no peer credentials"))?;
        let req = request.into_inner();
        if req.to != self.node_id {
            return Err(tonic::Status::failed_precondition(format!(
                "this is node {}, not node {}",
                self.node_id, req.to
            )));
        }
        if req.challenge.len() < crate::auth::NONCE_LEN || req.challenge.len() > 64 {
            return Err(tonic::Status::invalid_argument(
                "challenge of 16 to 64 bytes",
            ));
        }
        Ok(tonic::Response::new(HelloReply {
            node_id: self.node_id,
            proof: auth.hello_proof(caller, &req.challenge).into(),
        }))
    }
}

/// Hands a reassembled snapshot to the Raft actor, which steps it if it is valid.
async fn install(raft: &Addr<RaftNode>, id: &TransferId, message: &[u8]) -> Result<(), String> {
    let msg: RaftMessage =
        decode(message).map_err(|e| format!("undecodable snapshot message: {e}"))?;
    if TransferId::of(&msg).as_ref() != Some(id) {
        return Err("the message is not the snapshot the transfer announced".into());
    }
    raft.send(InstallSnapshot(msg))
        .await
        .map_err(|e| format!("raft node unavailable: {e}"))?
}
