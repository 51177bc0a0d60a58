//! Turning the effects of applied entries into messages: replies to waiting requesters,
//! deliveries to the connections this node serves, router updates, fast-path deliveries.

use rustc_hash::FxHashMap;
use std::time::Duration;

use actix::prelude::*;
use starling_state::{pb, CommandResult, Effect, Message as AppMessage, Outbound};
use tokio::time::Instant;
use tracing::{info, warn};

use super::proposals::Waiter;
use super::SessionStore;
use crate::connection::{Connection, MQTT_LOG};
use crate::messages::*;
use crate::router::{shard_of, RouterShard};

/// Messages to send once a batch of entries is applied, grouped per destination.
#[derive(Default)]
pub(super) struct Outboxes {
    conns: FxHashMap<u64, ConnOutbox>,
    fast_path: Vec<AppMessage>,
}

struct ConnOutbox {
    addr: Addr<Connection>,
    epoch: u64,
    items: Vec<Outbound>,
    qos0: Vec<AppMessage>,
    releases: Vec<u64>,
    acked: Vec<u64>,
    refused: Vec<u64>,
}

impl Outboxes {
    fn conn(
        &mut self,
        conn_id: u64,
        addr: &Addr<Connection>,
        epoch: Option<u64>,
    ) -> &mut ConnOutbox {
        let o = self.conns.entry(conn_id).or_insert_with(|| ConnOutbox {
            addr: addr.clone(),
            epoch: 0,
            items: Vec::new(),
            qos0: Vec::new(),
            releases: Vec::new(),
            acked: Vec::new(),
            refused: Vec::new(),
        });
        if let Some(epoch) = epoch {
            o.epoch = epoch;
        }
        o
    }

    pub(super) fn send(self, routers: &[Addr<RouterShard>]) {
        for (_, o) in self.conns {
            if !o.items.is_empty() || !o.qos0.is_empty() {
                o.addr.do_send(DurableDeliver {
                    epoch: o.epoch,
                    items: o.items,
                    qos0: o.qos0,
                });
            }
            if !o.releases.is_empty() {
                o.addr.do_send(ReleaseReady {
                    epoch: o.epoch,
                    seqs: o.releases,
                });
            }
            if !o.acked.is_empty() {
                o.addr.do_send(Acked {
                    tokens: o.acked,
                    refused: false,
                });
            }
            if !o.refused.is_empty() {
                o.addr.do_send(Acked {
                    tokens: o.refused,
                    refused: true,
                });
            }
        }
        if !self.fast_path.is_empty() {
            let mut per_shard: Vec<Vec<AppMessage>> = vec![Vec::new(); routers.len()];
            for m in self.fast_path {
                per_shard[shard_of(&m.topic, routers.len())].push(m);
            }
            for (i, messages) in per_shard.into_iter().enumerate() {
                if !messages.is_empty() {
                    routers[i].do_send(FastPath { messages });
                }
            }
        }
    }
}

impl SessionStore {
    /// The connection serving a session, if `owner` is a connection on this node.
    fn local_target(&self, client_id: &str, owner: starling_state::Owner) -> Option<Target> {
        if owner.node != self.node_id {
            return None;
        }
        self.client(client_id, owner.connection).map(|c| Target {
            conn_id: c.conn_id,
            addr: c.addr.clone(),
        })
    }

    /// Where a session's non-durable deliveries go: its connection here, or its node.
    fn route_target(&self, client_id: &str, owner: starling_state::Owner) -> Option<RouteTarget> {
        if owner.node == self.node_id {
            self.local_target(client_id, owner).map(RouteTarget::Local)
        } else {
            Some(RouteTarget::Remote(owner.node))
        }
    }

    /// The owner of a persistent or tracked clean session.
    fn owner_of(&self, client_id: &str) -> Option<starling_state::Owner> {
        match self.state.session(client_id) {
            Some(s) => s.owner,
            None => self.state.clean_session(client_id).map(|c| c.owner),
        }
    }

    pub(super) fn dispatch(&mut self, effect: Effect, out: &mut Outboxes, ctx: &mut Context<Self>) {
        match effect {
            Effect::Reply {
                node,
                incarnation,
                request_id,
                result,
            } => {
                if let Some(w) = self.proposals.take(node, incarnation, request_id) {
                    self.reply(w, result, out, ctx);
                }
            }
            Effect::Deliver {
                client_id,
                owner,
                epoch,
                message,
            } => {
                if let Some(t) = self.local_target(&client_id, owner) {
                    out.conn(t.conn_id, &t.addr, Some(epoch))
                        .items
                        .push(message);
                }
            }
            Effect::DeliverQos0 {
                client_id,
                owner,
                epoch,
                message,
            } => {
                if let Some(t) = self.local_target(&client_id, owner) {
                    out.conn(t.conn_id, &t.addr, Some(epoch)).qos0.push(message);
                }
            }
            Effect::Release {
                client_id,
                owner,
                epoch,
                seq,
            } => {
                if let Some(t) = self.local_target(&client_id, owner) {
                    out.conn(t.conn_id, &t.addr, Some(epoch)).releases.push(seq);
                }
            }
            Effect::FastPath { message } => out.fast_path.push(message),
            Effect::Kick { client_id, owner } => {
                if let Some(t) = self.local_target(&client_id, owner) {
                    t.addr.do_send(Kick {
                        reason: KickReason::TakenOver,
                        closed: None,
                    });
                } else if owner.node != self.node_id
                    && self
                        .owner_of(&client_id)
                        .is_some_and(|o| o.node == self.node_id)
                {
                    // Taken over here from a connection on another node (closed there).
                    info!(target: MQTT_LOG, client_id = %client_id, "Client {client_id} already connected, closing old connection.");
                }
            }
            Effect::RouteAdd {
                client_id,
                filter,
                qos,
                durable,
            } => {
                let key = self.key_of(&client_id);
                let target = self
                    .owner_of(&client_id)
                    .and_then(|o| self.route_target(&client_id, o));
                self.broadcast(RouteUpdate::Add {
                    key,
                    filter,
                    qos,
                    durable,
                    target,
                });
            }
            Effect::RouteRemove { client_id, filter } => {
                let key = self.key_of(&client_id);
                self.broadcast(RouteUpdate::Remove { key, filter });
            }
            Effect::Online {
                client_id,
                owner,
                epoch,
            } => {
                let key = self.key_of(&client_id);
                if owner.node == self.node_id
                    && self.local_target(&client_id, owner).is_none()
                    && self.recovered
                {
                    // Its connection is gone already (it gave up waiting, or was replaced before
                    // the commit): release the session, or its will and queue stay behind an
                    // owner that will never report back.
                    self.release_orphan(&client_id, epoch, ctx);
                }
                let target = self.route_target(&client_id, owner);
                let filters = self.state.filters_of(&client_id);
                if !filters.is_empty() {
                    self.broadcast(RouteUpdate::Retarget {
                        key,
                        filters,
                        target,
                    });
                }
            }
            Effect::Offline { client_id } => {
                let key = self.key_of(&client_id);
                let filters = self.state.filters_of(&client_id);
                if !filters.is_empty() {
                    self.broadcast(RouteUpdate::Retarget {
                        key,
                        filters,
                        target: None,
                    });
                }
            }
            Effect::SessionRemoved { client_id, filters } => {
                if let Some(key) = self.keys.remove(&*client_id) {
                    for filter in filters {
                        self.broadcast(RouteUpdate::Remove { key, filter });
                    }
                }
            }
            Effect::QueueFull {
                client_id,
                queued,
                queued_bytes,
            } => {
                // Counted in the state (dropped_messages); logged at most every 10 s.
                let now = Instant::now();
                if self
                    .last_queue_full_log
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                {
                    self.last_queue_full_log = Some(now);
                    warn!(client_id = %client_id, queued, queued_bytes,
                        "session queue full for client {client_id} (limits max_queued_messages / max_queued_bytes); dropping new messages");
                }
            }
        }
    }

    /// Disconnects a persistent session whose connection on this node is gone.
    fn release_orphan(&mut self, client_id: &str, epoch: u64, ctx: &mut Context<Self>) {
        let kind = pb::command::Kind::Disconnect(pb::SessionDisconnect {
            client_id: client_id.to_string(),
            epoch,
            sent_up_to: 0,
            publish_will: false,
        });
        self.propose(kind, None, ctx);
    }

    fn reply(
        &mut self,
        w: Waiter,
        result: CommandResult,
        out: &mut Outboxes,
        ctx: &mut Context<Self>,
    ) {
        match w {
            Waiter::Connect {
                reply,
                target,
                client_id,
                local,
            } => {
                if let Some(n) = self.connecting.get_mut(&client_id) {
                    *n -= 1;
                    if *n == 0 {
                        self.connecting.remove(&client_id);
                    }
                }
                let CommandResult::Connected {
                    epoch,
                    session_present,
                    resume,
                } = result
                else {
                    let _ = reply.send(ConnectOutcome::Unavailable);
                    return;
                };
                let key = if local {
                    target.conn_id
                } else {
                    self.key_of(&client_id)
                };
                let outcome = ConnectOutcome::Accepted {
                    session_present,
                    epoch,
                    key,
                    resume,
                };
                if reply.send(outcome).is_err() {
                    // The connection gave up waiting; it will not report its end.
                    if self.client(&client_id, target.conn_id).is_some() {
                        self.clients.remove(&client_id);
                    }
                    if !local {
                        self.release_orphan(&client_id, epoch, ctx);
                    }
                }
            }
            Waiter::Subscribe {
                reply,
                filters,
                clean,
            } => {
                let outcome = match result {
                    CommandResult::Subscribed(granted) => {
                        // A persistent session's replicated retained messages arrive as
                        // deliveries; a clean session gets them here; `$SYS` ones are local.
                        SubscribeOutcome::Done {
                            granted,
                            retained: self.retained_for(&filters, clean),
                        }
                    }
                    _ => SubscribeOutcome::Unavailable,
                };
                let _ = reply.send(outcome);
            }
            Waiter::Disconnect(reply) => {
                let _ = reply.send(matches!(result, CommandResult::Disconnected));
            }
            Waiter::Unsubscribe(reply) => {
                let _ = reply.send(matches!(result, CommandResult::Unsubscribed));
            }
            // Committed (or stale: the session moved on, and this connection is closed).
            Waiter::OutboundAck(_) => {}
            Waiter::Ack { conn, token } => {
                let o = out.conn(conn.conn_id, &conn.addr, None);
                match result {
                    CommandResult::Published { .. } | CommandResult::Released => {
                        o.acked.push(token)
                    }
                    _ => o.refused.push(token),
                }
            }
        }
    }
}
