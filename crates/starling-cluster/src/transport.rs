//! Peer transport over gRPC (tonic): one long-lived client stream per peer and kind.
//!
//! - Raft messages ([`Transport`]): sending never blocks the Raft actor; each peer has a bounded
//!   queue drained by a task that keeps a stream open, reconnecting with backoff. A full queue
//!   drops the message (Raft retransmits) and reports the peer unreachable.
//! - Fast-path forwards ([`PeerForwarder`], the broker's `Forwarder`): messages for another
//!   node's local subscribers, batched per router pass; a full queue drops and counts them (the
//!   fast path is at most once across nodes). One stream per peer keeps per-topic order.
//!
//! Receiving, the `Cluster` service steps Raft messages into the Raft actor (messages for another
//! node or group are dropped) and hands forwards to the local router shards, waiting until they
//! took them (backpressure on the stream). Every message is size-capped on both sides.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use actix::prelude::*;
use raft::eraftpb::Message as RaftMessage;
use starling_broker::{Forwarder, LocalDelivery};
use starling_proto::cluster::v1::cluster_client::ClusterClient;
use starling_proto::cluster::v1::cluster_server::Cluster;
use starling_proto::cluster::v1::{ForwardAck, ForwardBatch, RaftAck, RaftEnvelope};
use starling_state::Message as AppMessage;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
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

/// Opens one client stream of a kind on a connected channel.
type OpenStream<M> = fn(
    ClusterClient<Channel>,
    ReceiverStream<M>,
) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

fn open_raft(
    mut client: ClusterClient<Channel>,
    stream: ReceiverStream<RaftEnvelope>,
) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>> {
    Box::pin(async move { client.raft(stream).await.map(|_| ()) })
}

fn open_forward(
    mut client: ClusterClient<Channel>,
    stream: ReceiverStream<ForwardBatch>,
) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>> {
    Box::pin(async move { client.forward(stream).await.map(|_| ()) })
}

async fn peer_loop(id: u64, address: String, rx: mpsc::Receiver<RaftEnvelope>, max: usize) {
    stream_loop(id, address, rx, max, open_raft).await;
}

/// Keeps a client stream of one kind open to a peer, feeding it from `rx`, reconnecting with
/// backoff; returns when `rx` is closed (the peer was removed).
async fn stream_loop<M: Send + 'static>(
    id: u64,
    address: String,
    mut rx: mpsc::Receiver<M>,
    max: usize,
    open: OpenStream<M>,
) {
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
                // Stale messages are useless once the peer is back: Raft resends what matters,
                // and the fast path is at most once.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                // Capped low: a restarted peer is back within about this long.
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        if logged {
            debug!(peer = id, address = %address, "peer reachable again");
        }
        logged = false;
        backoff = Duration::from_millis(50);
        let client = ClusterClient::new(channel)
            .max_encoding_message_size(max)
            .max_decoding_message_size(max);
        let (tx, stream_rx) = mpsc::channel(256);
        let call = open(client, ReceiverStream::new(stream_rx));
        tokio::pin!(call);
        loop {
            tokio::select! {
                res = &mut call => {
                    debug!(peer = id, result = ?res, "peer stream ended");
                    break;
                }
                msg = rx.recv() => match msg {
                    None => return,
                    Some(m) => {
                        if tx.send(m).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
    }
}

struct ForwardPeer {
    address: String,
    tx: mpsc::Sender<ForwardBatch>,
    task: actix_rt::task::JoinHandle<()>,
}

impl Drop for ForwardPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends fast-path messages to other nodes: the broker's [`Forwarder`] in clustered mode.
pub struct PeerForwarder {
    node_id: u64,
    queue: usize,
    max_message_bytes: usize,
    peers: RwLock<HashMap<u64, ForwardPeer>>,
    /// Messages dropped because a peer's queue was full or the peer is unknown.
    dropped: AtomicU64,
    /// Messages queued for peers.
    forwarded: AtomicU64,
}

impl PeerForwarder {
    pub(crate) fn new(node_id: u64, queue: usize, max_message_bytes: usize) -> Arc<PeerForwarder> {
        Arc::new(PeerForwarder {
            node_id,
            queue,
            max_message_bytes,
            peers: RwLock::new(HashMap::new()),
            dropped: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        })
    }

    /// Makes the peer set `peers` (id, address). Must run on an actix/tokio thread.
    pub(crate) fn set_peers(&self, peers: &[(u64, String)]) {
        let mut map = self.peers.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|id, p| peers.iter().any(|(i, a)| i == id && *a == p.address));
        for (id, address) in peers {
            if *id == self.node_id || map.contains_key(id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(self.queue);
            let task = actix_rt::spawn(stream_loop(
                *id,
                address.clone(),
                rx,
                self.max_message_bytes,
                open_forward,
            ));
            map.insert(
                *id,
                ForwardPeer {
                    address: address.clone(),
                    tx,
                    task,
                },
            );
        }
    }

    /// Messages dropped so far (peer queue full or peer unknown).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Messages queued for peers so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Forwarder for PeerForwarder {
    fn forward(&self, node: u64, messages: Vec<AppMessage>) {
        let n = messages.len() as u64;
        let batch = ForwardBatch {
            from: self.node_id,
            messages: messages.iter().map(AppMessage::to_pb).collect(),
        };
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        match peers.get(&node).map(|p| p.tx.try_send(batch)) {
            Some(Ok(())) => {
                self.forwarded.fetch_add(n, Ordering::Relaxed);
            }
            _ => {
                if self.dropped.fetch_add(n, Ordering::Relaxed) == 0 {
                    warn!(node, "fast-path forward dropped (peer queue full or unknown; limit cluster.peer_queue)");
                }
            }
        }
    }
}

/// The gRPC service that receives peers' Raft messages and forwards.
pub(crate) struct ClusterService {
    pub(crate) node_id: u64,
    pub(crate) group: u64,
    pub(crate) raft: Addr<RaftNode>,
    /// Set once the broker runs; forwards that arrive before are dropped.
    pub(crate) delivery: Arc<OnceLock<LocalDelivery>>,
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
}
