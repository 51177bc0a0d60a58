//! Peer transport over gRPC (tonic): one long-lived client stream per peer and kind, and
//! snapshot transfers in chunks.
//!
//! - Raft messages ([`Transport`]): sending never blocks the Raft actor; each peer has a bounded
//!   queue drained by a task that keeps a stream open, reconnecting with backoff. A full queue
//!   drops the message (Raft retransmits) and reports the peer unreachable.
//! - Snapshots (`snapshot`): a `MsgSnapshot` never goes on the Raft stream; it is sent in chunks
//!   of at most `cluster.snapshot_chunk_bytes` by a task per transfer, one request per chunk
//!   (`Cluster.SendSnapshotChunk`), driven by the [`SnapshotTransfer`] state machine. Its end comes
//!   back to the Raft actor, which reports it to raft-rs.
//! - Fast-path forwards ([`PeerForwarder`], the broker's `Forwarder`): messages for another
//!   node's local subscribers, batched per router pass; a full queue drops and counts them (the
//!   fast path is at most once across nodes). One stream per peer keeps per-topic order.
//!
//! Receiving, the `Cluster` service (`service`) steps Raft messages into the Raft actor (messages
//! for another node or group are dropped), assembles snapshot chunks ([`SnapshotReceiver`]) and
//! hands the whole snapshot to the actor, which refuses one it cannot use, and hands forwards to
//! the local router shards, waiting until they took them (backpressure on the stream). Every
//! message is size-capped on both sides.
//!
//! Authentication ([`crate::auth`]): with a cluster secret every call carries credentials that
//! the service's interceptor checks before any message is decoded, and a sender opens its
//! streams only after the peer answered a `Hello` with proof that it holds the secret too.
//!
//! [`SnapshotTransfer`]: crate::raft::SnapshotTransfer
//! [`SnapshotReceiver`]: crate::raft::SnapshotReceiver

mod forward;
mod service;
mod snapshot;

pub(crate) use self::forward::PeerForwarder;
pub(crate) use self::service::ClusterService;
pub(crate) use self::snapshot::{SnapshotDone, SnapshotSends};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use starling_proto::cluster::v1::cluster_client::ClusterClient;
use starling_proto::cluster::v1::{HelloRequest, RaftEnvelope};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::auth::PeerAuth;
use crate::raft::storage::encode;
use crate::raft::{Outcome, TransferId, TransferSettings};

/// Sends Raft messages to peers, and snapshots in chunks.
pub(crate) struct Transport {
    /// This node (the `from` of every envelope).
    node_id: u64,
    /// The Raft group (on every envelope).
    group: u64,
    /// Capacity of each peer's queue (`cluster.peer_queue`).
    queue: usize,
    /// Message size cap (`cluster.max_message_bytes`).
    max_message_bytes: usize,
    /// Per peer: its address and the task streaming to it.
    peers: HashMap<u64, Peer>,
    /// Messages dropped because a peer's queue was full or the peer is unknown.
    pub(crate) dropped: u64,
    /// Cluster credentials; `None`: insecure mode.
    auth: Option<Arc<PeerAuth>>,
    /// Snapshot transfers under way, at most one per peer.
    snapshots: SnapshotSends,
}

/// What [`Transport::send`] could not do.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// Peers whose queue was full: report them unreachable to raft-rs.
    pub(crate) unreachable: Vec<u64>,
    /// Snapshot transfers that ended at once (unknown peer, superseded): report them.
    pub(crate) snapshots: Vec<(TransferId, Outcome)>,
}

/// The task that streams Raft messages to one peer.
struct Peer {
    /// Where it is reached.
    address: String,
    /// Its bounded queue.
    tx: mpsc::Sender<RaftEnvelope>,
    /// The streaming task, aborted when the peer goes.
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
        transfer: TransferSettings,
        auth: Option<Arc<PeerAuth>>,
    ) -> Transport {
        Transport {
            node_id,
            group,
            queue,
            max_message_bytes,
            peers: HashMap::new(),
            dropped: 0,
            snapshots: SnapshotSends::new(
                node_id,
                group,
                transfer,
                max_message_bytes,
                auth.clone(),
            ),
            auth,
        }
    }

    /// Where snapshot transfers report their end (the Raft actor).
    pub(crate) fn set_snapshot_reports(&mut self, to: Recipient<SnapshotDone>) {
        self.snapshots.set_reports(to);
    }

    /// Makes the peer set `peers` (id, raft address; this node is skipped): new peers get a
    /// stream, peers gone (or moved) lose theirs, and their snapshot transfers end (returned,
    /// to be reported). Must run on an actix/tokio thread.
    pub(crate) fn set_peers(&mut self, peers: &[(u64, String)]) -> Vec<(TransferId, Outcome)> {
        let mut ended = Vec::new();
        let keep = |id: &u64, address: &str| peers.iter().any(|(i, a)| i == id && a == address);
        self.peers.retain(|id, p| keep(id, &p.address));
        for (id, address) in peers {
            if *id == self.node_id || self.peers.contains_key(id) {
                continue;
            }
            ended.extend(self.snapshots.abort(*id, "peer address changed"));
            let (tx, rx) = mpsc::channel(self.queue);
            let task = actix_rt::spawn(peer_loop(
                *id,
                address.clone(),
                rx,
                self.max_message_bytes,
                self.auth.clone(),
            ));
            self.peers.insert(
                *id,
                Peer {
                    address: address.clone(),
                    tx,
                    task,
                },
            );
        }
        for id in self.snapshots.peers() {
            if !self.peers.contains_key(&id) {
                ended.extend(self.snapshots.abort(id, "peer removed"));
            }
        }
        ended
    }

    /// Sends `msgs`: snapshots as chunked transfers, the rest on the peers' streams.
    pub(crate) fn send(&mut self, msgs: Vec<RaftMessage>) -> Sent {
        let mut sent = Sent::default();
        for m in msgs {
            let to = m.to;
            let Some(peer) = self.peers.get(&to) else {
                self.dropped += 1;
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    if let Some(id) = TransferId::of(&m) {
                        sent.snapshots
                            .push((id, Outcome::Failed("unknown peer".into())));
                    }
                }
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let address = peer.address.clone();
                sent.snapshots.extend(self.snapshots.start(&m, &address));
                continue;
            }
            let env = RaftEnvelope {
                group_id: self.group,
                from: self.node_id,
                to,
                payload: encode(&m),
            };
            if peer.tx.try_send(env).is_err() {
                self.dropped += 1;
                if !sent.unreachable.contains(&to) {
                    sent.unreachable.push(to);
                }
            }
        }
        sent
    }

    /// Ends every snapshot transfer (returned, to be reported).
    pub(crate) fn abort_snapshots(&mut self, why: &str) -> Vec<(TransferId, Outcome)> {
        let peers = self.snapshots.peers();
        peers
            .into_iter()
            .filter_map(|id| self.snapshots.abort(id, why))
            .collect()
    }

    /// Transfer `id` reported its end: true if it is still the current one to its peer (then
    /// it is forgotten), false if it was superseded meanwhile (its end was reported then).
    pub(crate) fn transfer_done(&mut self, id: &TransferId) -> bool {
        self.snapshots.done(id)
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
pub(crate) async fn connect(address: &str) -> Result<Channel, PeerError> {
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
pub(crate) fn peer_client(
    channel: Channel,
    auth: Option<Arc<PeerAuth>>,
    to: u64,
    max: usize,
) -> PeerClient {
    ClusterClient::with_interceptor(channel, SignCalls { auth, to })
        .max_encoding_message_size(max)
        .max_decoding_message_size(max)
}

/// The Hello exchange: the peer accepts our credentials and proves it is node `to` holding the
/// cluster secret. Skipped in insecure mode.
pub(crate) async fn hello(
    client: &mut PeerClient,
    auth: Option<&PeerAuth>,
    to: u64,
) -> Result<(), PeerError> {
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

/// Connects to node `to` at `address` (messages capped at `max` bytes) and exchanges `Hello`.
///
/// # Errors
/// It is unreachable, refused our credentials, or did not prove its own.
pub(crate) async fn connect_peer(
    address: &str,
    auth: Option<Arc<PeerAuth>>,
    to: u64,
    max: usize,
) -> Result<PeerClient, PeerError> {
    let channel = connect(address).await?;
    let mut client = peer_client(channel, auth.clone(), to, max);
    hello(&mut client, auth.as_deref(), to).await?;
    Ok(client)
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
pub(crate) type OpenStream<M> =
    fn(
        PeerClient,
        ReceiverStream<M>,
    ) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

fn open_raft(
    mut client: PeerClient,
    stream: ReceiverStream<RaftEnvelope>,
) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>> {
    Box::pin(async move { client.raft(stream).await.map(|_| ()) })
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
pub(crate) async fn stream_loop<M: Send + 'static>(
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
        let client = match connect_peer(&address, auth.clone(), id, max).await {
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
