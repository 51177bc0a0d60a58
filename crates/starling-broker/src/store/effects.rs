//! Turning the effects of applied entries into output: replies to waiting requesters,
//! deliveries to the connections this node serves, router updates, fast-path deliveries.

use rustc_hash::FxHashMap;
use std::time::Duration;

use starling_state::{CommandResult, Effect, Message as AppMessage, Outbound, Owner};
use tracing::{info, warn};

use super::core::{Closing, StoreCore};
use super::output::{ConnMessage, LostConnect, Reply, ShardMessage};
use super::proposals::Waiter;
use crate::connection::MQTT_LOG;
use crate::messages::*;
use crate::router::shard_of;

/// Messages to send once a batch of entries is applied, grouped per destination.
pub(super) struct Outboxes<C> {
    /// Per connection id, in the order connections first appear.
    conns: FxHashMap<u64, ConnOutbox<C>>,
    /// Connection ids in the order they first appear (output order is deterministic).
    order: Vec<u64>,
    /// Messages for the non-durable subscribers of this node, in order.
    fast_path: Vec<AppMessage>,
}

impl<C> Default for Outboxes<C> {
    fn default() -> Self {
        Outboxes {
            conns: FxHashMap::default(),
            order: Vec::new(),
            fast_path: Vec::new(),
        }
    }
}

struct ConnOutbox<C> {
    target: Target<C>,
    epoch: u64,
    items: Vec<Outbound>,
    qos0: Vec<AppMessage>,
    releases: Vec<u64>,
    acked: Vec<u64>,
    refused: Vec<u64>,
}

impl<C: Clone> Outboxes<C> {
    fn conn(&mut self, target: &Target<C>, epoch: Option<u64>) -> &mut ConnOutbox<C> {
        let order = &mut self.order;
        let o = self.conns.entry(target.conn_id).or_insert_with(|| {
            order.push(target.conn_id);
            ConnOutbox {
                target: target.clone(),
                epoch: 0,
                items: Vec::new(),
                qos0: Vec::new(),
                releases: Vec::new(),
                acked: Vec::new(),
                refused: Vec::new(),
            }
        });
        if let Some(epoch) = epoch {
            o.epoch = epoch;
        }
        o
    }

    /// Moves everything into the core's output: per connection its deliveries, releases and
    /// acknowledgements; the fast path per shard.
    pub(super) fn send(mut self, core: &mut StoreCore<C>) {
        for id in std::mem::take(&mut self.order) {
            let Some(o) = self.conns.remove(&id) else {
                continue;
            };
            if !o.items.is_empty() || !o.qos0.is_empty() {
                let msg = ConnMessage::Durable(DurableDeliver {
                    epoch: o.epoch,
                    items: o.items,
                    qos0: o.qos0,
                });
                core.out.conns.push((o.target.clone(), msg));
            }
            if !o.releases.is_empty() {
                let msg = ConnMessage::Release(ReleaseReady {
                    epoch: o.epoch,
                    seqs: o.releases,
                });
                core.out.conns.push((o.target.clone(), msg));
            }
            if !o.acked.is_empty() {
                let msg = ConnMessage::Acked(Acked {
                    tokens: o.acked,
                    refused: false,
                    unmatched: Vec::new(),
                });
                core.out.conns.push((o.target.clone(), msg));
            }
            if !o.refused.is_empty() {
                let msg = ConnMessage::Acked(Acked {
                    tokens: o.refused,
                    refused: true,
                    unmatched: Vec::new(),
                });
                core.out.conns.push((o.target, msg));
            }
        }
        if !self.fast_path.is_empty() {
            let shards = core.shards;
            let mut per_shard: Vec<Vec<AppMessage>> = vec![Vec::new(); shards];
            for m in self.fast_path {
                per_shard[shard_of(&m.topic, shards)].push(m);
            }
            for (shard, messages) in per_shard.into_iter().enumerate() {
                if !messages.is_empty() {
                    core.out
                        .shards
                        .push(ShardMessage::FastPath { shard, messages });
                }
            }
        }
    }
}

impl<C: Clone> StoreCore<C> {
    /// The connection serving a session, if `owner` is a connection on this node.
    pub(super) fn local_target(&self, client_id: &str, owner: Owner) -> Option<Target<C>> {
        if owner.node != self.node_id {
            return None;
        }
        self.client(client_id, owner.connection).map(|c| Target {
            conn_id: c.conn_id,
            addr: c.addr.clone(),
        })
    }

    /// Where a session's non-durable deliveries go: its connection here, or its node.
    pub(super) fn route_target(&self, client_id: &str, owner: Owner) -> Option<RouteTarget<C>> {
        if owner.node == self.node_id {
            self.local_target(client_id, owner).map(RouteTarget::Local)
        } else {
            Some(RouteTarget::Remote(owner.node))
        }
    }

    /// The owner of a persistent or tracked clean session.
    pub(super) fn owner_of(&self, client_id: &str) -> Option<Owner> {
        match self.state.session(client_id) {
            Some(s) => s.owner,
            None => self.state.clean_session(client_id).map(|c| c.owner),
        }
    }

    pub(super) fn dispatch(&mut self, effect: Effect, out: &mut Outboxes<C>) {
        match effect {
            Effect::Reply {
                node,
                incarnation,
                request_id,
                result,
            } => {
                if let Some(w) = self.proposals.take(node, incarnation, request_id) {
                    self.reply(w, result, out);
                }
            }
            Effect::Deliver {
                client_id,
                owner,
                epoch,
                message,
            } => {
                if let Some(t) = self.local_target(&client_id, owner) {
                    out.conn(&t, Some(epoch)).items.push(message);
                }
            }
            Effect::DeliverQos0 {
                client_id,
                owner,
                epoch,
                message,
                subscription_ids: _,
            } => {
                if let Some(t) = self.local_target(&client_id, owner) {
                    out.conn(&t, Some(epoch)).qos0.push(message);
                }
            }
            Effect::Release {
                client_id,
                owner,
                epoch,
                seq,
            } => {
                if let Some(t) = self.local_target(&client_id, owner) {
                    out.conn(&t, Some(epoch)).releases.push(seq);
                }
            }
            Effect::FastPath { message } => out.fast_path.push(message),
            Effect::Kick {
                client_id,
                owner,
                by,
            } => {
                if let Some(t) = self.local_target(&client_id, owner) {
                    let reason = match by {
                        Some(new) if new.node != owner.node => KickReason::TakenOverElsewhere,
                        Some(_) => KickReason::TakenOver,
                        None => KickReason::SessionRemoved,
                    };
                    self.send_conn(t, ConnMessage::Kick(reason));
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
                options,
                durable,
            } => {
                let key = self.key_of(&client_id);
                let target = self
                    .owner_of(&client_id)
                    .and_then(|o| self.route_target(&client_id, o));
                self.broadcast(RouteUpdate::Add {
                    key,
                    filter,
                    options,
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
                    self.release_orphan(&client_id, epoch);
                }
                let target = self
                    .owner_of(&client_id)
                    .and_then(|o| self.route_target(&client_id, o));
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
                let target = self
                    .owner_of(&client_id)
                    .and_then(|o| self.route_target(&client_id, o));
                if !filters.is_empty() {
                    self.broadcast(RouteUpdate::Retarget {
                        key,
                        filters,
                        target,
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
            Effect::LimitsChanged { limits } => {
                self.shared_limits.set(&limits);
                info!(
                    max_queued_messages = limits.max_queued_messages,
                    max_inflight = limits.max_inflight,
                    max_queued_bytes = limits.max_queued_bytes,
                    "replicated limits in force"
                );
            }
            Effect::QueueFull {
                client_id,
                queued,
                queued_bytes,
            } => {
                // Counted in the state (dropped_messages); logged at most every 10 s.
                let now = self.now;
                if self
                    .last_queue_full_log
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                {
                    self.last_queue_full_log = Some(now);
                    warn!(client_id = %client_id, queued, queued_bytes,
                        "session queue full for client {client_id} (limits max_queued_messages / max_queued_bytes); dropping new messages");
                }
            }
            Effect::PacketTooLarge {
                client_id,
                size,
                limit,
            } => {
                // Counted in the state (oversized_messages); logged at most every 10 s.
                let now = self.now;
                if self
                    .last_oversized_log
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                {
                    self.last_oversized_log = Some(now);
                    warn!(client_id = %client_id, size, limit,
                        "message of {size} bytes for client {client_id} exceeds the Maximum Packet Size it accepts ({limit}); dropped");
                }
            }
        }
    }

    /// Disconnects a session whose connection on this node is gone (proposed until it applies).
    pub(super) fn release_orphan(&mut self, client_id: &str, epoch: u64) {
        let key = (bytestring::ByteString::from(client_id), epoch);
        if self.closing.contains_key(&key) {
            return;
        }
        let c = Closing {
            publish_will: true,
            sent_up_to: 0,
            in_flight: false,
        };
        self.propose_closing(key.0, epoch, c);
    }

    fn reply(&mut self, w: Waiter<C>, result: CommandResult, out: &mut Outboxes<C>) {
        match w {
            Waiter::Connect {
                reply,
                target,
                client_id,
            } => {
                self.connect_done(&client_id);
                let CommandResult::Connected {
                    epoch,
                    session_present,
                    resume,
                } = result
                else {
                    self.remove_client(&client_id, target.conn_id);
                    let _ = reply.send(ConnectOutcome::Unavailable);
                    return;
                };
                // Epoch 0: an untracked clean session (single node), keyed by its connection in
                // the router. Decided by the state machine: an MQTT 5 CONNECT that meant to
                // resume a stored session gets a clean one if the session went meanwhile.
                let local = epoch == 0;
                let key = if local {
                    target.conn_id
                } else {
                    self.key_of(&client_id)
                };
                if let Some(c) = self.clients.get_mut(&client_id) {
                    if c.conn_id == target.conn_id {
                        c.epoch = epoch;
                    }
                }
                let outcome = ConnectOutcome::Accepted {
                    session_present,
                    epoch,
                    key,
                    resume,
                };
                self.out.replies.push(Reply::Connect {
                    reply,
                    outcome,
                    lost: LostConnect {
                        client_id,
                        conn_id: target.conn_id,
                        epoch,
                        local,
                    },
                });
            }
            Waiter::Subscribe {
                reply,
                filters,
                clean,
            } => {
                let outcome = match result {
                    CommandResult::Subscribed { granted, .. } => {
                        // A persistent session's replicated retained messages arrive as
                        // deliveries; a clean session gets them here; `$SYS` ones are local.
                        SubscribeOutcome::Done {
                            granted,
                            retained: self.retained_for(&filters, clean),
                        }
                    }
                    _ => SubscribeOutcome::Unavailable,
                };
                self.out.replies.push(Reply::Subscribe { reply, outcome });
            }
            Waiter::Disconnect(reply) => {
                let _ = reply.send(matches!(result, CommandResult::Disconnected));
            }
            Waiter::Unsubscribe(reply) => {
                self.out.replies.push(Reply::Unsubscribe {
                    reply,
                    done: matches!(result, CommandResult::Unsubscribed),
                });
            }
            // Committed (or stale: the session moved on, and this connection is closed).
            Waiter::OutboundAck(_) => {}
            Waiter::Ack { conn, token } => {
                let o = out.conn(&conn, None);
                match result {
                    CommandResult::Published { .. } | CommandResult::Released => {
                        o.acked.push(token)
                    }
                    _ => o.refused.push(token),
                }
            }
            // Applied, or refused as stale: either way nothing is left to do for it.
            Waiter::Closing { client_id, epoch } => {
                self.closing.remove(&(client_id, epoch));
            }
            Waiter::NodeDown => self.self_down_applied(),
            Waiter::Limits(reply) => {
                let _ = reply.send(match result {
                    CommandResult::LimitsSet(l) => Ok(l),
                    other => Err(format!("not applied: {other:?}")),
                });
            }
            Waiter::StartLimits => self.start_limits_applied(),
            Waiter::Retained => {}
            Waiter::Tick => self.tick_in_flight = false,
        }
    }
}
