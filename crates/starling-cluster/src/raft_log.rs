//! [`RaftLog`]: the session store's log in clustered mode, backed by the Raft actor.

use std::net::TcpListener as StdTcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use starling_broker::{
    Freshness, LocalDelivery, LogEvent, LogStartError, LogStatus, ProposeError, ReplicatedLog,
};
use starling_proto::cluster::v1::cluster_server::ClusterServer;
use starling_storage::{FsyncPolicy, LogStore, LogWriter, StoreOptions};
use tonic::service::interceptor::InterceptedService;
use tracing::{error, info, warn};

use crate::auth::PeerAuth;

use crate::config::ClusterConfig;
use crate::raft::{
    Attach, Opened, Propose, RaftCore, RaftNode, RaftSettings, RaftStorage, SaveSnapshot,
    SnapshotReceiver, StatusCell, Stop, TransferSettings,
};
use crate::transport::{CheckPeers, ClusterService, PeerForwarder, Transport};
use crate::STATE_GROUP;

/// What the admin endpoint needs to reach the Raft node.
#[derive(Clone)]
pub struct ClusterHandle {
    /// This node.
    pub node_id: u64,
    /// The Raft actor.
    pub node: Addr<RaftNode>,
    /// Its status.
    pub status: StatusCell,
    /// Fast-path forwarding to the other nodes (the broker's `Forwarder`).
    pub forwarder: Arc<PeerForwarder>,
    /// Where forwards from other nodes are delivered; set once the broker runs.
    pub delivery: Arc<OnceLock<LocalDelivery>>,
    /// This node's cluster credentials; `None` in insecure mode.
    pub auth: Option<Arc<PeerAuth>>,
    /// Whether this node's replica is fresh enough to route QoS 1/2 by (for the routers).
    pub freshness: Arc<Freshness>,
}

impl ClusterHandle {
    /// Proposes `data` as one Raft entry through this node (raft-rs forwards it to the leader
    /// when this node follows); once committed it reaches every node's attached sink as
    /// [`LogEvent::Committed`]. For tools that drive the log without a session store (the
    /// benchmark harness, `starling-bench raft`).
    ///
    /// # Errors
    /// [`ProposeError::Busy`] when the Raft actor's mailbox is full,
    /// [`ProposeError::Unavailable`] once the actor has stopped.
    pub fn propose(&self, data: Bytes) -> Result<(), ProposeError> {
        match self.node.try_send(Propose(data)) {
            Ok(()) => Ok(()),
            Err(SendError::Full(_)) => Err(ProposeError::Busy),
            Err(SendError::Closed(_)) => Err(ProposeError::Unavailable("raft node stopped".into())),
        }
    }
}

/// The log in clustered mode: entries are committed by Raft across the cluster.
pub struct RaftLog {
    handle: ClusterHandle,
    _arbiter: Arbiter,
}

fn start_err(e: impl std::fmt::Display) -> LogStartError {
    LogStartError(e.to_string())
}

impl RaftLog {
    /// Opens this node's storage in `dir`, binds the peer port and starts the Raft actor, which
    /// waits until the session store attaches. A node whose disk is empty bootstraps a new cluster
    /// from `peers` (if `bootstrap` and it is one of them) or waits to be added. The peer port
    /// accepts only callers holding the cluster secret (unless `insecure`).
    ///
    /// # Errors
    /// Bad configuration (including no cluster secret without `insecure`), storage that cannot
    /// be opened or read, a peer port in use.
    pub fn start(
        config: &ClusterConfig,
        node_id: u64,
        dir: &Path,
        fsync: FsyncPolicy,
        queue_capacity: usize,
    ) -> Result<RaftLog, LogStartError> {
        let configured = config.peer_list().map_err(start_err)?;
        config.validate().map_err(start_err)?;
        let auth = match config.peer_secret().map_err(start_err)? {
            Some(secret) => Some(Arc::new(PeerAuth::new(node_id, &secret))),
            None => {
                warn!(
                    node_id,
                    listen = %config.listen,
                    "cluster.insecure = true: peers are NOT authenticated; any process that \
                     reaches the peer port can join, inject Raft messages and reach the Raft \
                     decoder (RUSTSEC-2024-0437). Set cluster.secret_file instead."
                );
                None
            }
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| LogStartError(format!("{}: {e}", dir.display())))?;
        let path = dir.join(crate::local::DB_FILE);
        let store = LogStore::open(&path, StoreOptions { fsync })
            .map_err(|e| LogStartError(format!("{}: {e}", path.display())))?;
        let (storage, peers, opened) =
            RaftStorage::open(&store, STATE_GROUP, node_id, &configured, config.bootstrap)
                .map_err(start_err)?;
        match opened {
            Opened::Loaded => info!(node_id, "raft state loaded from disk"),
            Opened::Bootstrapped => {
                let voters: Vec<u64> = configured.iter().map(|(id, _)| *id).collect();
                info!(node_id, ?voters, "bootstrapped a new cluster");
            }
            Opened::Empty => info!(node_id, "empty node: waiting to be added to a cluster"),
        }
        let settings = RaftSettings {
            id: node_id,
            group: STATE_GROUP,
            tick: Duration::from_millis(config.tick_ms.max(1)),
            election_ticks: config.election_ticks,
            heartbeat_ticks: config.heartbeat_ticks,
            peer_queue: config.peer_queue,
            max_message_bytes: config.max_message_bytes,
            conf_change_timeout: Duration::from_secs(10),
            node_down_after: Duration::from_secs(config.node_down_secs.max(1)),
            transfer: TransferSettings {
                chunk_bytes: config.snapshot_chunk(),
                ..TransferSettings::default()
            },
        };
        let listener = StdTcpListener::bind(config.listen).map_err(|e| {
            LogStartError(format!("cannot listen for peers on {}: {e}", config.listen))
        })?;
        listener.set_nonblocking(true).map_err(start_err)?;
        let writer = LogWriter::spawn(store, queue_capacity).map_err(start_err)?;
        let status = StatusCell::default();
        let transport = Transport::new(
            node_id,
            STATE_GROUP,
            settings.peer_queue,
            settings.max_message_bytes,
            settings.transfer.clone(),
            auth.clone(),
        );
        let core = RaftCore::new(settings, storage, peers, tokio::time::Instant::now())
            .map_err(start_err)?;
        let forwarder = PeerForwarder::new(
            node_id,
            config.peer_queue,
            config.max_message_bytes,
            auth.clone(),
        );
        let freshness = Arc::new(Freshness::new(false));
        let node = RaftNode::new(core, Box::new(writer), status.clone(), transport)
            .with_forwarder(forwarder.clone())
            .with_freshness(freshness.clone());
        let snapshots = Arc::new(Mutex::new(SnapshotReceiver::new(config.max_snapshot_bytes)));
        let delivery: Arc<OnceLock<LocalDelivery>> = Arc::default();
        let svc_delivery = delivery.clone();
        let arbiter = Arbiter::new();
        let max = config.max_message_bytes;
        let svc_auth = auth.clone();
        let addr = RaftNode::start_in_arbiter(&arbiter.handle(), move |ctx| {
            let svc = ClusterService {
                node_id,
                group: STATE_GROUP,
                raft: ctx.address(),
                snapshots,
                delivery: svc_delivery,
                auth: svc_auth.clone(),
            };
            actix_rt::spawn(async move {
                let incoming = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => tokio_stream::wrappers::TcpListenerStream::new(l),
                    Err(e) => return error!(error = %e, "peer listener"),
                };
                let server = ClusterServer::new(svc)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max);
                // Credentials are checked on the request's headers, before its body is read:
                // a stranger's bytes never reach the protobuf decoders.
                let server = InterceptedService::new(server, CheckPeers(svc_auth));
                if let Err(e) = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .add_service(server)
                    .serve_with_incoming(incoming)
                    .await
                {
                    error!(error = %e, "peer server stopped");
                }
            });
            node
        });
        info!(
            node_id,
            listen = %config.listen,
            peer_auth = if auth.is_some() { "cluster secret" } else { "none (insecure)" },
            "raft node started"
        );
        Ok(RaftLog {
            handle: ClusterHandle {
                node_id,
                node: addr,
                status,
                forwarder,
                delivery,
                auth,
                freshness,
            },
            _arbiter: arbiter,
        })
    }

    /// A handle for the admin endpoint.
    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }
}

impl ReplicatedLog for RaftLog {
    fn start(&mut self, sink: Recipient<LogEvent>) -> Result<(), LogStartError> {
        self.handle.node.do_send(Attach(sink));
        Ok(())
    }

    fn propose(&mut self, data: Bytes) -> Result<(), ProposeError> {
        match self.handle.node.try_send(Propose(data)) {
            Ok(()) => Ok(()),
            Err(SendError::Full(_)) => Err(ProposeError::Busy),
            Err(SendError::Closed(_)) => Err(ProposeError::Unavailable("raft node stopped".into())),
        }
    }

    fn save_snapshot(&mut self, index: u64, data: Bytes) {
        self.handle.node.do_send(SaveSnapshot { index, data });
    }

    fn status(&self) -> LogStatus {
        self.handle
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .log_status()
    }

    fn shutdown(&mut self, done: tokio::sync::oneshot::Sender<()>) {
        self.handle.node.do_send(Stop(Some(done)));
    }
}
