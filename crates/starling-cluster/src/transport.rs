//! Peer transport: Raft messages over gRPC (tonic), one long-lived client stream per peer.
//!
//! Sending never blocks the Raft actor: each peer has a bounded queue drained by a task that
//! keeps a stream open to the peer, reconnecting with backoff. A full queue drops the message
//! (Raft retransmits) and reports the peer unreachable. Receiving: the `Cluster` service decodes
//! each envelope and steps it into the Raft actor; messages for another node or group are
//! dropped. Every message is size-capped on both sides.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use raft::eraftpb::Message as RaftMessage;
use starling_proto::cluster::v1::cluster_client::ClusterClient;
use starling_proto::cluster::v1::cluster_server::Cluster;
use starling_proto::cluster::v1::{RaftAck, RaftEnvelope};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use crate::raft::storage::{decode, encode};
use crate::raft::{RaftNode, Step};

/// Sends Raft messages to peers.
pub(crate) struct Transport {
    node_id: u64,
    group: u64,
    queue: usize,
    max_message_bytes: usize,
    peers: HashMap<u64, Peer>,
    /// Messages dropped because a peer's queue was full or the peer is unknown.
    pub(crate) dropped: u64,
}

struct Peer {
    address: String,
    tx: mpsc::Sender<RaftEnvelope>,
    task: actix_rt::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Transport {
    pub(crate) fn new(
        node_id: u64,
        group: u64,
        queue: usize,
        max_message_bytes: usize,
    ) -> Transport {
        Transport {
            node_id,
            group,
            queue,
            max_message_bytes,
            peers: HashMap::new(),
            dropped: 0,
        }
    }

    /// Adds a peer or changes its address. Must run on an actix/tokio thread.
    pub(crate) fn set_peer(&mut self, id: u64, address: &str) {
        if id == self.node_id || self.peers.get(&id).is_some_and(|p| p.address == address) {
            return;
        }
        let (tx, rx) = mpsc::channel(self.queue);
        let task = actix_rt::spawn(peer_loop(
            id,
            address.to_string(),
            rx,
            self.max_message_bytes,
        ));
        self.peers.insert(
            id,
            Peer {
                address: address.to_string(),
                tx,
                task,
            },
        );
    }

    pub(crate) fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    /// Sends; returns the peers that could not take a message.
    pub(crate) fn send(&mut self, msgs: Vec<RaftMessage>) -> Vec<u64> {
        let mut unreachable = Vec::new();
        for m in msgs {
            let to = m.to;
            let Some(peer) = self.peers.get(&to) else {
                self.dropped += 1;
                continue;
            };
            let env = RaftEnvelope {
                group_id: self.group,
                from: self.node_id,
                to,
                payload: encode(&m),
            };
            if peer.tx.try_send(env).is_err() {
                self.dropped += 1;
                if !unreachable.contains(&to) {
                    unreachable.push(to);
                }
            }
        }
        unreachable
    }
}

async fn peer_loop(id: u64, address: String, mut rx: mpsc::Receiver<RaftEnvelope>, max: usize) {
    let mut backoff = Duration::from_millis(50);
    let mut logged = false;
    loop {
        let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
            Ok(e) => e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true),
            Err(e) => {
                warn!(peer = id, address = %address, error = %e, "invalid peer address");
                return;
            }
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                if !logged {
                    warn!(peer = id, address = %address, error = %e, "peer unreachable; retrying");
                    logged = true;
                }
                // Stale messages are useless once the peer is back: Raft resends what matters.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if logged {
            debug!(peer = id, address = %address, "peer reachable again");
        }
        logged = false;
        backoff = Duration::from_millis(50);
        let mut client = ClusterClient::new(channel)
            .max_encoding_message_size(max)
            .max_decoding_message_size(max);
        let (tx, stream_rx) = mpsc::channel(256);
        let call = client.raft(ReceiverStream::new(stream_rx));
        tokio::pin!(call);
        loop {
            tokio::select! {
                res = &mut call => {
                    debug!(peer = id, result = ?res.map(|_| ()), "peer stream ended");
                    break;
                }
                msg = rx.recv() => match msg {
                    None => return,
                    Some(env) => {
                        if tx.send(env).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
    }
}

/// The gRPC service that receives peers' Raft messages.
pub(crate) struct ClusterService {
    pub(crate) node_id: u64,
    pub(crate) group: u64,
    pub(crate) raft: Addr<RaftNode>,
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
}
