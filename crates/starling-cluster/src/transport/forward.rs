//! [`PeerForwarder`]: the fast path across nodes (the broker's `Forwarder` in clustered mode).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use starling_broker::Forwarder;
use starling_proto::cluster::v1::ForwardBatch;
use starling_state::Message as AppMessage;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use super::{stream_loop, PeerClient};
use crate::auth::PeerAuth;

fn open_forward(
    mut client: PeerClient,
    stream: ReceiverStream<ForwardBatch>,
) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>> {
    Box::pin(async move { client.forward(stream).await.map(|_| ()) })
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
    /// Cluster credentials; `None`: insecure mode.
    auth: Option<Arc<PeerAuth>>,
}

impl PeerForwarder {
    pub(crate) fn new(
        node_id: u64,
        queue: usize,
        max_message_bytes: usize,
        auth: Option<Arc<PeerAuth>>,
    ) -> Arc<PeerForwarder> {
        Arc::new(PeerForwarder {
            node_id,
            queue,
            max_message_bytes,
            auth,
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
                self.auth.clone(),
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
