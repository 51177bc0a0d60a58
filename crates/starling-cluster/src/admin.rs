//! The admin HTTP endpoint: cluster status and membership operations, used by
//! `starling cluster status | join | leave` and by operators (`curl`).
//!
//! - `GET /cluster/status`: this node's view as JSON (role, term, leader, commit and applied
//!   index, members, peer addresses, a digest of the replicated state).
//! - `POST /cluster/members` `{"node_id": 4, "raft_address": "host:7946", "admin_address": ""}`:
//!   adds a voter (through Raft; any member forwards to the leader). Answers once applied here.
//!   With a cluster secret the new node must first prove it holds it (a `Hello` to its
//!   `raft_address`): 403 if it does not, 503 if it cannot be reached within 10 s.
//! - `DELETE /cluster/members/{id}`: removes a member.
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: 200 when this node can serve: a single node whose store answers, or a
//!   cluster member that knows a leader and has applied within `max_lag` (query parameter,
//!   default [`READY_MAX_LAG`]) entries of the commit index; 503 with the reason otherwise.
//! - `GET /metrics`: Prometheus text exposition (connections, messages by QoS, bytes, queue
//!   depths, drops, Raft term/leader/indexes, proposal-to-commit latency histogram).
//! - `GET /cluster/snapshot`: a [`Backup`](crate::backup::Backup) of the replicated state
//!   (clustered mode).
//! - `GET /cluster/limits`: the replicated limits in force (`max_queued_messages`,
//!   `max_inflight`, `max_queued_bytes`); `PUT /cluster/limits` with any subset of them changes
//!   them for every node (a log entry; answers once applied here).
//! - `GET /cluster/check`: compares every index this node derives from the replicated state
//!   (the state's subscription index, router keys, every router shard's subscriptions) with a
//!   rebuild from the state: 200 when they agree, 500 with the differences.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use starling_broker::{CheckDerived, GetStats, Metrics, SessionStore, SetLimits, StoreStats};
use tokio::sync::oneshot;
use tracing::{error, info};

use crate::raft::{ChangeMembers, ExportBackup, MemberChange, NodeStatus};
use crate::raft_log::ClusterHandle;

/// What the admin endpoint serves from.
#[derive(Clone)]
pub struct AdminState {
    /// The Raft node (clustered mode).
    pub cluster: Option<ClusterHandle>,
    /// The session store (for the state digest).
    pub store: Addr<SessionStore>,
    /// The broker's counters (for `/metrics`).
    pub metrics: Arc<Metrics>,
}

/// `/readyz`: how far this node's applied index may trail the commit index by default.
pub const READY_MAX_LAG: u64 = 100;

/// How long a join waits for the new node's peer port to answer its `Hello`.
const JOIN_PROBE_PATIENCE: Duration = Duration::from_secs(10);

/// How long `/readyz` and `/metrics` wait for the session store.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// A member as shown by `/cluster/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberView {
    /// Node id.
    pub id: u64,
    /// Peer address.
    pub raft_address: String,
    /// Admin address, if known.
    pub admin_address: String,
    /// Voter (false: learner).
    pub voter: bool,
}

/// `GET /cluster/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusView {
    /// This node.
    pub node_id: u64,
    /// `single`, `leader`, `follower`, `candidate`, `pre-candidate`.
    pub role: String,
    /// Raft term.
    pub term: u64,
    /// Leader id, if known.
    pub leader: Option<u64>,
    /// Commit index.
    pub commit_index: u64,
    /// Index applied to the state machine on this node.
    pub applied_index: u64,
    /// First index kept in the log, and the last.
    pub first_index: u64,
    /// Last log index.
    pub last_index: u64,
    /// Latest snapshot index.
    pub snapshot_index: u64,
    /// Members.
    pub members: Vec<MemberView>,
    /// Digest (hex) of the replicated state as applied here: equal on two nodes at the same
    /// applied index exactly when their states are equal.
    pub state_digest: String,
    /// Persistent sessions.
    pub sessions: usize,
    /// Retained messages.
    pub retained: usize,
    /// Clients connected to this node.
    pub clients: usize,
    /// The replicated limits in force.
    pub limits: LimitsView,
}

/// The replicated limits (`GET /cluster/limits`); in `PUT /cluster/limits` an absent (or 0)
/// field leaves that limit as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitsView {
    /// Messages queued per persistent session beyond the in-flight window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_messages: Option<u64>,
    /// Outbound QoS 1/2 messages in flight per client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u64>,
    /// Bytes held per persistent session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<u64>,
}

impl LimitsView {
    fn of(l: &starling_state::StateConfig) -> LimitsView {
        LimitsView {
            max_queued_messages: Some(l.max_queued_messages as u64),
            max_inflight: Some(l.max_inflight as u64),
            max_queued_bytes: Some(l.max_queued_bytes as u64),
        }
    }
}

/// `GET /cluster/check`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckView {
    /// Every derived index agrees with its rebuild.
    pub ok: bool,
    /// The differences found.
    pub differences: Vec<String>,
}

/// `POST /cluster/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The new node's id.
    pub node_id: u64,
    /// Its peer address.
    pub raft_address: String,
    /// Its admin address (informational).
    #[serde(default)]
    pub admin_address: String,
}

/// An error as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorView {
    /// What went wrong.
    pub error: String,
}

type ApiError = (StatusCode, Json<ErrorView>);

fn err(code: StatusCode, e: &dyn std::fmt::Display) -> ApiError {
    (
        code,
        Json(ErrorView {
            error: e.to_string(),
        }),
    )
}

async fn status(State(s): State<AdminState>) -> Result<Json<StatusView>, ApiError> {
    let stats = s
        .store
        .send(GetStats { digest: true })
        .await
        .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, &e))?;
    let digest = format!("{:016x}", stats.digest.unwrap_or(0));
    let view = match &s.cluster {
        Some(c) => {
            let n = c.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let members = n
                .voters
                .iter()
                .map(|id| (*id, true))
                .chain(n.learners.iter().map(|id| (*id, false)))
                .map(|(id, voter)| {
                    let (raft_address, admin_address) = n
                        .peers
                        .iter()
                        .find(|p| p.0 == id)
                        .map(|p| (p.1.clone(), p.2.clone()))
                        .unwrap_or_default();
                    MemberView {
                        id,
                        raft_address,
                        admin_address,
                        voter,
                    }
                })
                .collect();
            StatusView {
                node_id: n.id,
                role: n.role.to_string(),
                term: n.term,
                leader: (n.leader != 0).then_some(n.leader),
                commit_index: n.commit_index,
                applied_index: stats.applied_index,
                first_index: n.first_index,
                last_index: n.last_index,
                snapshot_index: n.snapshot_index,
                members,
                state_digest: digest,
                sessions: stats.state.sessions,
                retained: stats.state.retained_messages,
                clients: stats.clients,
                limits: LimitsView::of(&stats.limits),
            }
        }
        None => StatusView {
            node_id: 1,
            role: "single".into(),
            term: 0,
            leader: Some(1),
            commit_index: stats.log.commit_index,
            applied_index: stats.applied_index,
            first_index: 0,
            last_index: stats.log.commit_index,
            snapshot_index: 0,
            members: vec![MemberView {
                id: 1,
                raft_address: String::new(),
                admin_address: String::new(),
                voter: true,
            }],
            state_digest: digest,
            sessions: stats.state.sessions,
            retained: stats.state.retained_messages,
            clients: stats.clients,
            limits: LimitsView::of(&stats.limits),
        },
    };
    Ok(Json(view))
}

async fn get_limits(State(s): State<AdminState>) -> Result<Json<LimitsView>, ApiError> {
    let stats = store_stats(&s)
        .await
        .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, &e))?;
    Ok(Json(LimitsView::of(&stats.limits)))
}

async fn put_limits(
    State(s): State<AdminState>,
    Json(req): Json<LimitsView>,
) -> Result<Json<LimitsView>, ApiError> {
    let limits = starling_state::pb::Limits {
        max_queued_messages: req.max_queued_messages.unwrap_or(0),
        max_inflight: req.max_inflight.unwrap_or(0),
        max_queued_bytes: req.max_queued_bytes.unwrap_or(0),
    };
    if req.max_inflight.is_some_and(|n| n > 65_535) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            &"max_inflight must be at most 65535",
        ));
    }
    info!(?limits, "change of the replicated limits requested");
    let (tx, rx) = oneshot::channel();
    s.store
        .send(SetLimits { limits, reply: tx })
        .await
        .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, &e))?;
    match tokio::time::timeout(Duration::from_secs(15), rx).await {
        Ok(Ok(Ok(l))) => Ok(Json(LimitsView::of(&l))),
        Ok(Ok(Err(e))) => Err(err(StatusCode::SERVICE_UNAVAILABLE, &e)),
        _ => Err(err(
            StatusCode::GATEWAY_TIMEOUT,
            &"the change was not applied in time",
        )),
    }
}

async fn check(State(s): State<AdminState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if let Err(e) = s.store.send(CheckDerived { reply: tx }).await {
        return err(StatusCode::SERVICE_UNAVAILABLE, &e).into_response();
    }
    let outcome = match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(r)) => r,
        _ => Err(vec!["the check did not complete in time".to_string()]),
    };
    match outcome {
        Ok(()) => Json(CheckView {
            ok: true,
            differences: Vec::new(),
        })
        .into_response(),
        Err(differences) => {
            error!(?differences, "derived indices differ from their rebuild");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(CheckView {
                    ok: false,
                    differences,
                }),
            )
                .into_response()
        }
    }
}

async fn change(s: &AdminState, change: MemberChange) -> Result<StatusCode, ApiError> {
    let Some(c) = &s.cluster else {
        return Err(err(StatusCode::CONFLICT, &"not in clustered mode"));
    };
    let (tx, rx) = oneshot::channel();
    info!(?change, "membership change requested");
    c.node
        .send(ChangeMembers { change, reply: tx })
        .await
        .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, &e))?;
    match tokio::time::timeout(Duration::from_secs(15), rx).await {
        Ok(Ok(Ok(()))) => Ok(StatusCode::OK),
        Ok(Ok(Err(e))) => Err(err(StatusCode::SERVICE_UNAVAILABLE, &e)),
        _ => Err(err(
            StatusCode::GATEWAY_TIMEOUT,
            &"membership change not applied in time",
        )),
    }
}

async fn join(
    State(s): State<AdminState>,
    Json(req): Json<JoinRequest>,
) -> Result<StatusCode, ApiError> {
    if req.node_id == 0 || !req.raft_address.contains(':') {
        return Err(err(
            StatusCode::BAD_REQUEST,
            &"node_id must be non-zero and raft_address host:port",
        ));
    }
    if let Some(auth) = s.cluster.as_ref().and_then(|c| c.auth.as_ref()) {
        use crate::transport::{probe_member, PeerError};
        match probe_member(auth, req.node_id, &req.raft_address, JOIN_PROBE_PATIENCE).await {
            Ok(()) => {}
            Err(e @ PeerError::Unauthenticated(_)) => {
                tracing::warn!(
                    node_id = req.node_id,
                    raft_address = %req.raft_address,
                    error = %e,
                    "join refused: the new node did not prove the cluster secret"
                );
                return Err(err(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "node {} at {} {e}; it must run with the cluster's secret",
                        req.node_id, req.raft_address
                    ),
                ));
            }
            Err(e) => {
                return Err(err(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("node {} at {}: {e}", req.node_id, req.raft_address),
                ))
            }
        }
    }
    change(
        &s,
        MemberChange::Add {
            id: req.node_id,
            raft_address: req.raft_address,
            admin_address: req.admin_address,
        },
    )
    .await
}

async fn leave(State(s): State<AdminState>, Path(id): Path<u64>) -> Result<StatusCode, ApiError> {
    change(&s, MemberChange::Remove { id }).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn store_stats(s: &AdminState) -> Result<StoreStats, String> {
    match tokio::time::timeout(STORE_TIMEOUT, s.store.send(GetStats { digest: false })).await {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(e)) => Err(format!("session store unavailable: {e}")),
        Err(_) => Err(format!(
            "session store did not answer within {STORE_TIMEOUT:?} (busy applying?)"
        )),
    }
}

/// Whether a cluster member is ready: `Ok(summary)` or `Err(reason)`.
///
/// # Errors
/// Not in the configuration, no leader known, or applied index more than `max_lag` behind.
pub fn cluster_readiness(
    n: &NodeStatus,
    store_applied: u64,
    max_lag: u64,
) -> Result<String, String> {
    if !n.voters.contains(&n.id) && !n.learners.contains(&n.id) {
        return Err(format!(
            "node {} is not in the cluster configuration (waiting to be added?)",
            n.id
        ));
    }
    if n.leader == 0 {
        return Err(format!(
            "no leader known in term {} (election in progress or no quorum)",
            n.term
        ));
    }
    let lag = n.commit_index.saturating_sub(store_applied);
    if lag > max_lag {
        return Err(format!(
            "catching up: applied {store_applied} of commit index {} ({lag} behind, max {max_lag})",
            n.commit_index
        ));
    }
    Ok(format!(
        "node {} {} in term {}, leader {}, applied {store_applied} of {}",
        n.id, n.role, n.term, n.leader, n.commit_index
    ))
}

/// `/readyz` query.
#[derive(Debug, Deserialize)]
struct ReadyQuery {
    max_lag: Option<u64>,
}

async fn readyz(State(s): State<AdminState>, Query(q): Query<ReadyQuery>) -> (StatusCode, String) {
    let stats = match store_stats(&s).await {
        Ok(stats) => stats,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    };
    let verdict = match &s.cluster {
        None => Ok(format!(
            "single node serving, applied {}",
            stats.applied_index
        )),
        Some(c) => {
            let n = c.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
            cluster_readiness(&n, stats.applied_index, q.max_lag.unwrap_or(READY_MAX_LAG))
        }
    };
    match verdict {
        Ok(v) => (StatusCode::OK, format!("ready: {v}\n")),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

/// Prometheus text exposition.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }
}

/// Renders the metrics of one node (`status`: `None` for a single node).
pub fn render_metrics(
    node_id: u64,
    t: &starling_broker::Totals,
    stats: Option<&StoreStats>,
    status: Option<&NodeStatus>,
) -> String {
    let mut m = Exposition(String::with_capacity(8 * 1024));
    m.family(
        "starling_info",
        "gauge",
        "Build and node information (always 1).",
    );
    m.sample(
        "starling_info",
        &format!(
            "version=\"{}\",node_id=\"{node_id}\",mode=\"{}\"",
            env!("CARGO_PKG_VERSION"),
            if status.is_some() {
                "cluster"
            } else {
                "single"
            }
        ),
        1,
    );
    m.one(
        "starling_connections_opened_total",
        "counter",
        "TCP connections accepted.",
        t.connections_opened,
    );
    m.one(
        "starling_connections_closed_total",
        "counter",
        "TCP connections closed.",
        t.connections_closed,
    );
    m.one(
        "starling_connections",
        "gauge",
        "TCP connections open now.",
        t.connections_opened.saturating_sub(t.connections_closed),
    );
    m.one(
        "starling_clients_connected",
        "gauge",
        "MQTT clients connected to this node now.",
        t.clients_online(),
    );
    m.one(
        "starling_clients_connected_total",
        "counter",
        "Clients that completed CONNECT.",
        t.clients_connected,
    );
    m.one(
        "starling_clients_disconnected_total",
        "counter",
        "Clients that left after CONNECT.",
        t.clients_disconnected,
    );
    m.family(
        "starling_messages_received_total",
        "counter",
        "PUBLISH packets received, by QoS.",
    );
    for (q, v) in t.publish_received.iter().enumerate() {
        m.sample(
            "starling_messages_received_total",
            &format!("qos=\"{q}\""),
            v,
        );
    }
    m.family(
        "starling_messages_sent_total",
        "counter",
        "PUBLISH packets sent, by QoS.",
    );
    for (q, v) in t.publish_sent.iter().enumerate() {
        m.sample("starling_messages_sent_total", &format!("qos=\"{q}\""), v);
    }
    m.one(
        "starling_packets_received_total",
        "counter",
        "MQTT packets received.",
        t.packets_received,
    );
    m.one(
        "starling_packets_sent_total",
        "counter",
        "MQTT packets sent.",
        t.packets_sent,
    );
    m.one(
        "starling_bytes_received_total",
        "counter",
        "Bytes received from clients.",
        t.bytes_received,
    );
    m.one(
        "starling_bytes_sent_total",
        "counter",
        "Bytes sent to clients.",
        t.bytes_sent,
    );
    m.family(
        "starling_messages_dropped_total",
        "counter",
        "Messages dropped by this node, by reason.",
    );
    for (reason, v) in [
        ("qos0_write_buffer_full", t.dropped_qos0),
        ("session_queue_full", t.dropped_queue_full),
        ("connection_mailbox_full", t.dropped_mailbox_full),
    ] {
        m.sample(
            "starling_messages_dropped_total",
            &format!("reason=\"{reason}\""),
            v,
        );
    }
    m.one(
        "starling_protocol_errors_total",
        "counter",
        "Connections closed for a protocol violation.",
        t.protocol_errors,
    );
    m.family(
        "starling_limit_hits_total",
        "counter",
        "Times a configured limit refused, dropped or paused something, by its config key.",
    );
    for (limit, v) in t.limit_hits() {
        m.sample(
            "starling_limit_hits_total",
            &format!("limit=\"{limit}\""),
            v,
        );
    }
    m.family(
        "starling_security_events_total",
        "counter",
        "Authentication refusals, ACL denials and failed TLS / WebSocket handshakes.",
    );
    for (event, v) in t.security_events() {
        m.sample(
            "starling_security_events_total",
            &format!("event=\"{event}\""),
            v,
        );
    }
    if let Some(s) = stats {
        m.one(
            "starling_local_clients",
            "gauge",
            "Clients registered with this node's session store.",
            s.clients,
        );
        m.one(
            "starling_sessions",
            "gauge",
            "Persistent sessions in the replicated state.",
            s.state.sessions,
        );
        m.one(
            "starling_sessions_online",
            "gauge",
            "Persistent sessions connected (anywhere in the cluster).",
            s.state.connected,
        );
        m.one(
            "starling_subscriptions",
            "gauge",
            "Subscriptions of persistent sessions.",
            s.state.subscriptions,
        );
        m.one(
            "starling_queued_messages",
            "gauge",
            "Messages queued or in flight for persistent sessions (queue depth).",
            s.state.queued_messages,
        );
        m.one(
            "starling_retained_messages",
            "gauge",
            "Retained messages.",
            s.state.retained_messages,
        );
        m.one(
            "starling_session_queue_dropped_total",
            "counter",
            "Messages dropped because a persistent session's queue was full (replicated, since the start of the log).",
            s.state.dropped_messages,
        );
        m.one(
            "starling_commit_waiting_requests",
            "gauge",
            "Client requests waiting for a commit.",
            s.waiting,
        );
        m.one(
            "starling_state_applied_index",
            "gauge",
            "Log index applied to the session state on this node.",
            s.applied_index,
        );
    }
    if let Some(n) = status {
        m.one("starling_raft_term", "gauge", "Current Raft term.", n.term);
        m.one(
            "starling_raft_leader_id",
            "gauge",
            "Known leader's node id (0: none).",
            n.leader,
        );
        m.one(
            "starling_raft_is_leader",
            "gauge",
            "1 if this node leads.",
            u8::from(n.role == "leader"),
        );
        m.family(
            "starling_raft_role",
            "gauge",
            "This node's Raft role (1 for the current one).",
        );
        for role in ["leader", "follower", "candidate", "pre-candidate"] {
            m.sample(
                "starling_raft_role",
                &format!("role=\"{role}\""),
                u8::from(n.role == role),
            );
        }
        m.one(
            "starling_raft_commit_index",
            "gauge",
            "Raft commit index.",
            n.commit_index,
        );
        m.one(
            "starling_raft_applied_index",
            "gauge",
            "Last index handed to the state machine.",
            n.applied_index,
        );
        m.one(
            "starling_raft_first_index",
            "gauge",
            "First log index kept.",
            n.first_index,
        );
        m.one(
            "starling_raft_last_index",
            "gauge",
            "Last log index.",
            n.last_index,
        );
        m.one(
            "starling_raft_snapshot_index",
            "gauge",
            "Index of the latest snapshot.",
            n.snapshot_index,
        );
        m.one(
            "starling_raft_voters",
            "gauge",
            "Voting members.",
            n.voters.len(),
        );
        m.one(
            "starling_raft_learners",
            "gauge",
            "Learners.",
            n.learners.len(),
        );
        m.one(
            "starling_raft_dropped_messages_total",
            "counter",
            "Raft messages dropped by the peer transport (full queue).",
            n.dropped_messages,
        );
        let h = &n.proposal_latency;
        let name = "starling_raft_proposal_commit_seconds";
        m.family(
            name,
            "histogram",
            "Time from proposal to commit of entries proposed on this node while it led.",
        );
        for (le, c) in h.cumulative() {
            m.sample(&format!("{name}_bucket"), &format!("le=\"{le}\""), c);
        }
        m.sample(&format!("{name}_sum"), "", h.sum_secs);
        m.sample(&format!("{name}_count"), "", h.count);
    }
    m.0
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let totals = s.metrics.totals();
    let stats = store_stats(&s).await.ok();
    let status = s
        .cluster
        .as_ref()
        .map(|c| c.status.lock().unwrap_or_else(|e| e.into_inner()).clone());
    let node_id = s.cluster.as_ref().map_or(1, |c| c.node_id);
    let body = render_metrics(node_id, &totals, stats.as_ref(), status.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn snapshot(State(s): State<AdminState>) -> Result<Response, ApiError> {
    let Some(c) = &s.cluster else {
        return Err(err(
            StatusCode::NOT_IMPLEMENTED,
            &"single node: back up the data directory (stop the node, copy starling.redb)",
        ));
    };
    let backup = c
        .node
        .send(ExportBackup)
        .await
        .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, &e))?;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"starling-{}-{}.backup\"",
                c.node_id,
                backup.applied_index()
            ),
        ),
        (
            header::HeaderName::from_static("x-starling-snapshot-index"),
            backup.snapshot_index().to_string(),
        ),
        (
            header::HeaderName::from_static("x-starling-applied-index"),
            backup.applied_index().to_string(),
        ),
    ];
    Ok((headers, backup.encode()).into_response())
}

/// The routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/cluster/status", get(status))
        .route("/cluster/members", axum::routing::post(join))
        .route("/cluster/members/{id}", delete(leave))
        .route("/cluster/snapshot", get(snapshot))
        .route("/cluster/limits", get(get_limits).put(put_limits))
        .route("/cluster/check", get(check))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Binds `addr` and serves the admin endpoint on the current runtime.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(addr = %local, "admin endpoint listening");
    actix_rt::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            error!(error = %e, "admin endpoint stopped");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, leader: u64, commit: u64) -> NodeStatus {
        NodeStatus {
            id,
            role: if id == leader { "leader" } else { "follower" },
            term: 3,
            leader,
            commit_index: commit,
            voters: vec![1, 2, 3],
            ..NodeStatus::default()
        }
    }

    #[test]
    fn readiness_needs_membership_a_leader_and_a_small_lag() {
        assert!(cluster_readiness(&member(2, 1, 500), 450, 100).is_ok());
        let e = cluster_readiness(&member(2, 0, 500), 500, 100).unwrap_err();
        assert!(e.contains("no leader"), "{e}");
        let e = cluster_readiness(&member(2, 1, 500), 10, 100).unwrap_err();
        assert!(e.contains("catching up"), "{e}");
        let e = cluster_readiness(&member(4, 1, 500), 500, 100).unwrap_err();
        assert!(e.contains("not in the cluster"), "{e}");
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let t = starling_broker::Totals {
            publish_received: [5, 6, 7],
            ..Default::default()
        };
        let mut n = member(1, 1, 9);
        n.proposal_latency.observe(Duration::from_millis(2));
        let text = render_metrics(1, &t, Some(&StoreStats::default()), Some(&n));
        assert!(text.contains("# TYPE starling_messages_received_total counter\n"));
        assert!(text.contains("starling_messages_received_total{qos=\"1\"} 6\n"));
        assert!(text.contains("starling_raft_is_leader 1\n"));
        assert!(text.contains("starling_raft_proposal_commit_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("starling_raft_proposal_commit_seconds_count 1\n"));
        // Every sample belongs to a family announced with HELP and TYPE before it.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(*b)))
                    .unwrap_or(name);
                assert!(typed.contains(base), "sample without TYPE: {line}");
            }
        }
    }
}
