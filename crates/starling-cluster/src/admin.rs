//! The admin HTTP endpoint: cluster status and membership operations, used by
//! `starling cluster status | join | leave` and by operators (`curl`).
//!
//! - `GET /cluster/status`: this node's view as JSON (role, term, leader, commit and applied
//!   index, members, peer addresses, a digest of the replicated state).
//! - `POST /cluster/members` `{"node_id": 4, "raft_address": "host:7946", "admin_address": ""}`:
//!   adds a voter (through Raft; any member forwards to the leader). Answers once applied here.
//! - `DELETE /cluster/members/{id}`: removes a member.
//! - `GET /healthz`: the process is alive.

use std::net::SocketAddr;
use std::time::Duration;

use actix::Addr;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use starling_broker::{GetStats, SessionStore};
use tokio::sync::oneshot;
use tracing::{error, info};

use crate::raft::{ChangeMembers, MemberChange};
use crate::raft_log::ClusterHandle;

/// What the admin endpoint serves from.
#[derive(Clone)]
pub struct AdminState {
    /// The Raft node (clustered mode).
    pub cluster: Option<ClusterHandle>,
    /// The session store (for the state digest).
    pub store: Addr<SessionStore>,
}

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
        },
    };
    Ok(Json(view))
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

/// The routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/cluster/status", get(status))
        .route("/cluster/members", axum::routing::post(join))
        .route("/cluster/members/{id}", delete(leave))
        .route("/healthz", get(healthz))
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
