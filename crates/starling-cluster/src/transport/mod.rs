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
//!
//! Authentication ([`crate::auth`]): with a cluster secret every call carries credentials that
//! the service's interceptor checks before any message is decoded, and a sender opens its
//! streams only after the peer answered a `Hello` with proof that it holds the secret too.

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
use starling_proto::cluster::v1::{
    ForwardAck, ForwardBatch, HelloReply, HelloRequest, RaftAck, RaftEnvelope,
};
use starling_state::Message as AppMessage;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::auth::{AuthenticatedPeer, PeerAuth};
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
    /// Cluster credentials; `None`: insecure mode.
    auth: Option<Arc<PeerAuth>>,
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
            auth: None,
        }
    }

    /// Authenticates with `auth` from now on (before any peer is added).
    pub(crate) fn set_auth(&mut self, auth: Option<Arc<PeerAuth>>) {
        self.auth = auth;
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
            self.auth.clone(),
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

/// Adds this node's credentials to every call to one peer (nothing in insecure mode).
#[derive(Clone)]
pub(crate) struct SignCalls {
    auth: Option<Arc<PeerAuth>>,
    to: u64,
}

impl Interceptor for SignCalls {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(a) = &self.auth {
            a.sign(self.to, &mut req);
        }
        Ok(req)
    }
}

/// Checks the credentials of every call to this node (accepts all in insecure mode).
#[derive(Clone)]
pub(crate) struct CheckPeers(pub(crate) Option<Arc<PeerAuth>>);

impl Interceptor for CheckPeers {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &self.0 {
            Some(a) => a.check(req),
            None => Ok(req),
        }
    }
}

/// A client of one peer's `Cluster` service whose calls carry this node's credentials.
pub(crate) type PeerClient = ClusterClient<InterceptedService<Channel, SignCalls>>;

/// Why a peer could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    /// Not reachable (connect failed or timed out).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Reachable, but it refused our credentials or did not prove its own.
    #[error("failed authentication: {0}")]
    Unauthenticated(String),
}

/// Connects to a peer at `address`.
///
/// HTTP/2 keep-alive pings detect a peer cut off by the network: without them a stream to it
/// stayed open through a partition, its TCP retransmissions backing off, and the peer rejoined
/// only seconds after the network healed (a partition of over 6 s took about 13 s to become
/// ready again in the chaos soak). A ping unanswered for `KEEP_ALIVE_TIMEOUT` closes the
/// connection, and the stream loop reconnects as soon as the peer answers again.
async fn connect(address: &str) -> Result<Channel, PeerError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| PeerError::Unreachable(format!("invalid address: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    endpoint
        .connect()
        .await
        .map_err(|e| PeerError::Unreachable(e.to_string()))
}

/// How often an open peer connection is pinged.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a ping may go unanswered before the connection counts as dead: well above a
/// loaded node's scheduling delays, well below the several seconds TCP takes on its own.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A client for node `to` on `channel`, capped at `max` bytes per message.
fn peer_client(channel: Channel, auth: Option<Arc<PeerAuth>>, to: u64, max: usize) -> PeerClient {
    ClusterClient::with_interceptor(channel, SignCalls { auth, to })
        .max_encoding_message_size(max)
        .max_decoding_message_size(max)
}

/// The Hello exchange: the peer accepts our credentials and proves it is node `to` holding the
/// cluster secret. Skipped in insecure mode.
async fn hello(client: &mut PeerClient, auth: Option<&PeerAuth>, to: u64) -> Result<(), PeerError> {
    let Some(auth) = auth else {
        return Ok(());
    };
    let challenge = PeerAuth::challenge();
    let req = HelloRequest {
        from: auth.node_id(),
        to,
        challenge: challenge.clone().into(),
    };
    let reply = match tokio::time::timeout(Duration::from_secs(5), client.hello(req)).await {
        Err(_) => return Err(PeerError::Unreachable("no answer to Hello in 5 s".into())),
        Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
            return Err(PeerError::Unreachable(s.message().to_string()))
        }
        Ok(Err(s)) => {
            return Err(PeerError::Unauthenticated(format!(
                "{:?}: {}",
                s.code(),
                s.message()
            )))
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    if reply.node_id != to {
        return Err(PeerError::Unauthenticated(format!(
            "it is node {}, not node {to}",
            reply.node_id
        )));
    }
    if !auth.verify_hello(to, &challenge, &reply.proof) {
        return Err(PeerError::Unauthenticated(
            "it did not prove the cluster secret".into(),
        ));
    }
    Ok(())
}

/// Checks that node `to` at `address` holds the cluster secret (before it is added as a
/// member), retrying while it is unreachable for up to `patience`.
///
/// # Errors
/// It stayed unreachable, refused our credentials, or did not prove its own.
pub(crate) async fn probe_member(
    auth: &Arc<PeerAuth>,
    to: u64,
    address: &str,
    patience: Duration,
) -> Result<(), PeerError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let attempt = async {
            let channel = connect(address).await?;
            let mut client = peer_client(channel, Some(auth.clone()), to, 64 * 1024);
            hello(&mut client, Some(auth), to).await
        };
        match attempt.await {
            Err(PeerError::Unreachable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// Opens one client stream of a kind on a connected channel.
type OpenStream<M> = fn(
    PeerClient,
    ReceiverStream<M>,
) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

fn open_raft(
    mut client: PeerClient,
    stream: ReceiverStream<RaftEnvelope>,
) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>> {
    Box::pin(async move { client.raft(stream).await.map(|_| ()) })
}

fn open_forward(
    mut client: PeerClient,
    stream: ReceiverStream<ForwardBatch>,
) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>> {
    Box::pin(async move { client.forward(stream).await.map(|_| ()) })
}

async fn peer_loop(
    id: u64,
    address: String,
    rx: mpsc::Receiver<RaftEnvelope>,
    max: usize,
    auth: Option<Arc<PeerAuth>>,
) {
    stream_loop(id, address, rx, max, auth, open_raft).await;
}

/// Keeps a client stream of one kind open to a peer, feeding it from `rx`, reconnecting with
/// backoff; returns when `rx` is closed (the peer was removed).
async fn stream_loop<M: Send + 'static>(
    id: u64,
    address: String,
    mut rx: mpsc::Receiver<M>,
    max: usize,
    auth: Option<Arc<PeerAuth>>,
    open: OpenStream<M>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut logged = false;
    // Authentication failures are retried more slowly, and logged at most once a minute.
    let mut auth_logged: Option<tokio::time::Instant> = None;
    loop {
        let connected = async {
            let channel = connect(&address).await?;
            let mut client = peer_client(channel, auth.clone(), id, max);
            hello(&mut client, auth.as_deref(), id).await?;
            Ok::<_, PeerError>(client)
        };
        let client = match connected.await {
            Ok(c) => c,
            Err(e) => {
                let pause = match &e {
                    PeerError::Unreachable(_) => {
                        if !logged {
                            warn!(peer = id, address = %address, error = %e, "peer unreachable; retrying");
                            logged = true;
                        }
                        backoff
                    }
                    PeerError::Unauthenticated(_) => {
                        if auth_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            warn!(
                                peer = id,
                                address = %address,
                                error = %e,
                                "peer failed authentication (is cluster.secret the same on \
                                 every node?); nothing is sent to it; retrying"
                            );
                            auth_logged = Some(tokio::time::Instant::now());
                        }
                        Duration::from_secs(2)
                    }
                };
                // Stale messages are useless once the peer is back: Raft resends what matters,
                // and the fast path is at most once.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(pause).await;
                // Capped low: a restarted peer is back within about this long.
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        if logged || auth_logged.is_some() {
            debug!(peer = id, address = %address, "peer reachable again");
        }
        logged = false;
        auth_logged = None;
        backoff = Duration::from_millis(50);
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

/// The gRPC service that receives peers' Raft messages and forwards.
pub(crate) struct ClusterService {
    pub(crate) node_id: u64,
    pub(crate) group: u64,
    pub(crate) raft: Addr<RaftNode>,
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
