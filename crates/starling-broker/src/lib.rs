//! Starling's broker core: MQTT 3.1 / 3.1.1 on actix actors.
//!
//! # Layout
//! - [`connection`]: the connection actor, one per client (socket IO, protocol state machine,
//!   keep-alive, outbound QoS flows, ordered acknowledgements).
//! - [`router`]: router-shard actors, one per worker thread; each holds the whole subscription
//!   index and routes the PUBLISHes of the connections on its thread (so a client's messages keep
//!   their order and routing needs no thread hop); messages from the store or from other nodes go
//!   to the shard a hash of their topic picks.
//! - [`store`]: the session-store actor, owning the node's replica of the replicated state
//!   (persistent sessions, retained messages) and the registry of clients on this node.
//! - [`replication`]: the port to the log that orders the store's commands (a local write-ahead
//!   log on one node, Raft in a cluster); implemented outside this crate.
//! - [`sys`]: `$SYS` topics. [`metrics`]: per-thread counters. [`messages`]: actor messages.
//! - `listener`: accept loops (TCP, TLS, WebSocket; connection limits).
//! - [`security`]: the password and ACL files in force (swapped on reload) and the password
//!   verification threads.
//!
//! Threads: the actix System thread accepts; `workers` arbiters each run a router shard and the
//! connections handed to them round-robin; the store has its own arbiter; the log does its IO on
//! its own thread.

pub mod config;
pub mod connection;
mod listener;
pub mod messages;
pub mod metrics;
pub mod replication;
pub mod router;
pub mod security;
pub mod store;
pub mod sys;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::info;

pub use config::{Anonymous, BrokerConfig, ConfigError, ListenerConfig, Transport};
pub use metrics::{Metrics, Totals};
pub use replication::{
    Forwarder, Freshness, LogEvent, LogStartError, LogStatus, ProposeError, ReplicatedLog,
};
pub use security::{Security, SecurityError, SecuritySummary};
pub use store::{
    CheckDerived, GetStats, Init, SessionStore, SetLimits, Shutdown, StoreCore, StoreStats,
};

use router::RouterShard;

/// What every connection on one worker shares.
pub struct Worker {
    pub(crate) config: Arc<BrokerConfig>,
    /// The replicated queue limits in force (the store keeps them current).
    pub(crate) limits: Arc<config::SharedLimits>,
    /// The router shard running on this worker's thread: it routes the PUBLISHes of this
    /// worker's connections, without a thread hop.
    pub(crate) router: Addr<RouterShard>,
    pub(crate) store: Addr<SessionStore>,
    pub(crate) counters: Arc<metrics::Counters>,
    pub(crate) security: Arc<Security>,
}

/// Who this node is within its cluster.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// This node's id (1 for a single node).
    pub node_id: u64,
    /// Clustered mode: sends fast-path messages to other nodes. Its presence also makes clean
    /// sessions part of the replicated state (so that every node can route to them).
    pub forwarder: Option<Arc<dyn Forwarder>>,
    /// Largest log entry the log carries (in a cluster: what one Raft message may hold); a
    /// durable PUBLISH whose command would not fit is refused. 0: no bound.
    pub max_entry_bytes: usize,
    /// Whether this node's replica is fresh enough to route QoS 1/2 by (set by the log;
    /// `None`: always, as on a single node).
    pub freshness: Option<Arc<replication::Freshness>>,
}

/// Delivers messages forwarded by another node to this node's non-durable subscribers.
#[derive(Clone)]
pub struct LocalDelivery {
    routers: Arc<[Addr<RouterShard>]>,
}

impl LocalDelivery {
    /// Routes `messages` (in order per topic) to local subscribers; completes once the router
    /// shards have taken them, which is the backpressure of the forwarding stream.
    pub async fn deliver(&self, messages: Vec<starling_state::Message>) {
        let n = self.routers.len();
        let mut per_shard: Vec<Vec<starling_state::Message>> = vec![Vec::new(); n];
        for m in messages {
            per_shard[router::shard_of(&m.topic, n)].push(m);
        }
        for (i, messages) in per_shard.into_iter().enumerate() {
            if !messages.is_empty() {
                let _ = self.routers[i].send(messages::FastPath { messages }).await;
            }
        }
    }
}

/// The broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The log could not be started or replayed.
    #[error("state store: {0}")]
    Store(String),
    /// The password or ACL file could not be loaded.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// A TLS listener's certificate, key or CA file could not be loaded.
    #[error("TLS listener {addr}: {source}")]
    Tls {
        /// The listener.
        addr: SocketAddr,
        /// Why.
        source: connection::transport::TlsSetupError,
    },
}

/// A running broker.
pub struct Broker {
    addrs: Vec<SocketAddr>,
    routers: Arc<[Addr<RouterShard>]>,
    store: Addr<SessionStore>,
    accept_tasks: Vec<actix_rt::task::JoinHandle<()>>,
    arbiters: Vec<Arbiter>,
    metrics: Arc<Metrics>,
    security: Arc<Security>,
}

impl Broker {
    /// Starts the broker on the current actix System: workers, router shards, the session store
    /// over `log` (replayed before anything is accepted), `$SYS`, then the listeners.
    ///
    /// # Errors
    /// Invalid settings, a listener that cannot be bound, or a log that cannot be replayed.
    pub async fn start(
        config: BrokerConfig,
        node: NodeOptions,
        log: Box<dyn ReplicatedLog>,
        metrics: Arc<Metrics>,
    ) -> Result<Broker, StartError> {
        let NodeOptions {
            node_id,
            forwarder,
            max_entry_bytes,
            freshness,
        } = node;
        let freshness = freshness.unwrap_or_default();
        let max_entry_bytes = if max_entry_bytes == 0 {
            usize::MAX
        } else {
            max_entry_bytes
        };
        let track_clean = forwarder.is_some();
        config.validate()?;
        // Security files and certificates first: a bad file stops the start before any thread.
        let security = Arc::new(Security::load(&config)?);
        let mut handshakes = Vec::new();
        let tables = config.listeners.iter().map(|a| (*a, None));
        let tables = tables.chain(config.listener.iter().map(|l| (l.addr, Some(l))));
        for (addr, l) in tables {
            let tls = match l.filter(|l| l.transport.is_tls()) {
                Some(l) => Some(
                    connection::transport::server_config(l)
                        .map_err(|source| StartError::Tls { addr, source })?,
                ),
                None => None,
            };
            let h = connection::transport::Handshake::new(
                l.map_or(Transport::Tcp, |l| l.transport),
                tls,
                l.is_some_and(|l| l.use_identity_as_username),
                config.max_packet_size,
            );
            handshakes.push((addr, Arc::new(h)));
        }
        info!(
            anonymous = config.anonymous_allowed(),
            "anonymous clients {}",
            if config.anonymous_allowed() {
                "allowed"
            } else {
                "refused (CONNACK 5)"
            }
        );
        let config = Arc::new(config);
        let limits = Arc::new(config::SharedLimits::new(&config.state_config()));
        let n = config.worker_count();
        let worker_arbiters: Vec<Arbiter> = (0..n).map(|_| Arbiter::new()).collect();
        let store_arbiter = Arbiter::new();

        // The store starts first; it gets its routers (and starts replaying the log) with `Init`.
        let (ready_tx, ready_rx) = oneshot::channel();
        let store = {
            let (config, limits) = (config.clone(), limits.clone());
            SessionStore::start_in_arbiter(&store_arbiter.handle(), move |_| {
                SessionStore::new(
                    node_id,
                    config,
                    log,
                    ready_tx,
                    track_clean,
                    max_entry_bytes,
                    n,
                    limits,
                )
            })
        };
        let routers: Vec<Addr<RouterShard>> = worker_arbiters
            .iter()
            .map(|a| {
                let (store, counters, forwarder, freshness) = (
                    store.clone(),
                    metrics.block(),
                    forwarder.clone(),
                    freshness.clone(),
                );
                let hold = config.commit_timeout();
                RouterShard::start_in_arbiter(&a.handle(), move |_| {
                    RouterShard::new(store, forwarder, counters, freshness, hold)
                })
            })
            .collect();
        let routers: Arc<[Addr<RouterShard>]> = routers.into();
        store.do_send(store::Init {
            routers: routers.clone(),
        });
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Store(e)),
            Err(_) => return Err(StartError::Store("the session store stopped".into())),
        }

        let workers: Arc<[(ArbiterHandle, Arc<Worker>)]> = worker_arbiters
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let w = Worker {
                    config: config.clone(),
                    limits: limits.clone(),
                    router: routers[i].clone(),
                    store: store.clone(),
                    counters: metrics.block(),
                    security: security.clone(),
                };
                (a.handle(), Arc::new(w))
            })
            .collect::<Vec<_>>()
            .into();
        let live = Arc::new(listener::Live::new());
        let mut addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        let accept_counters = metrics.block();
        for (addr, handshake) in handshakes {
            let l = listener::bind(addr, config.backlog)
                .map_err(|source| StartError::Listen { addr, source })?;
            let local = l
                .local_addr()
                .map_err(|source| StartError::Listen { addr, source })?;
            info!(addr = %local, transport = ?handshake.transport(), "listening for MQTT");
            addrs.push(local);
            let cx = listener::AcceptContext {
                workers: workers.clone(),
                live: live.clone(),
                handshake,
                max_connections: config.max_connections,
                max_per_ip: config.max_connections_per_ip,
                connect_timeout: config.connect_timeout(),
                counters: accept_counters.clone(),
            };
            accept_tasks.push(actix_rt::spawn(listener::accept_loop(l, cx)));
        }
        // Started once every listener is bound: an actor created but never polled before a
        // startup error would run its `started` while the runtime is torn down, and panic there.
        if config.sys_interval_secs > 0 {
            let interval = Duration::from_secs(config.sys_interval_secs);
            sys::SysPublisher::new(store.clone(), routers[0].clone(), metrics.clone(), interval)
                .start();
        }
        let mut arbiters = worker_arbiters;
        arbiters.push(store_arbiter);
        Ok(Broker {
            routers,
            addrs,
            store,
            accept_tasks,
            arbiters,
            metrics,
            security,
        })
    }

    /// Re-reads the password and ACL files (SIGHUP). Connected clients keep their connection;
    /// their ACL decisions follow the new rules from their next message on. On error the rules
    /// in force stay.
    ///
    /// # Errors
    /// A file that cannot be read or parsed.
    pub fn reload_security(&self) -> Result<SecuritySummary, starling_auth::LoadError> {
        self.security.reload()
    }

    /// The security state (password and ACL files in force).
    pub fn security(&self) -> &Arc<Security> {
        &self.security
    }

    /// The bound listener addresses (with the actual port when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The entry point for messages forwarded by other nodes.
    pub fn local_delivery(&self) -> LocalDelivery {
        LocalDelivery {
            routers: self.routers.clone(),
        }
    }

    /// The session store, for status queries.
    pub fn store(&self) -> &Addr<SessionStore> {
        &self.store
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, closes every client, lets the store commit what they leave behind and
    /// snapshot, then stops the worker threads.
    pub async fn shutdown(self) {
        for t in &self.accept_tasks {
            t.abort();
        }
        let _ = self.store.send(Shutdown).await;
        for a in self.arbiters {
            a.stop();
        }
    }
}
