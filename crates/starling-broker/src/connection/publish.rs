//! Inbound PUBLISH and PUBREL: topic limits and the ACL (a refused PUBLISH is acknowledged and
//! dropped), the flow's decision ([`ClientFlow::on_publish`]), the read pass's batch to the
//! router shard, and the owed acknowledgements released in order as [`Acked`] completes them.
//!
//! `#[PerformanceCriticalPath]`: [`Connection::on_publish`] runs per PUBLISH.

use actix::prelude::*;
use bytestring::ByteString;
use starling_codec::{PacketType, Publish};
use starling_state::Message as AppMessage;
use tracing::debug;

use super::guard::{topic_limit, Refusal};
use super::lifecycle::CloseReason;
use super::{AckNote, Connection, Inbound, Release, MQTT_LOG};
use crate::messages::{AckKind, Acked, Route, SessionRequest, Target};
use crate::metrics::{Counters, Limit, SecurityEvent};

impl Connection {
    /// PUBLISH: rate limit, topic limits and ACL, then whatever the flow decides.
    pub(super) fn on_publish(&mut self, p: Publish, ctx: &mut Context<Self>) {
        let counters = &self.worker.counters;
        Counters::add(&counters.publish_received[p.qos as usize], 1);
        if self.worker.config.max_publish_rate > 0 {
            // Every PUBLISH costs a token, refused or not.
            self.take_publish_token(ctx);
        }
        self.refresh_guard();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
            let name = s.flow.client_id();
            debug!(target: MQTT_LOG, client_id = %name,
                "Received PUBLISH from {name} (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
                u8::from(p.dup), p.qos as u8, u8::from(p.retain), p.packet_id, p.topic, p.payload.len());
        }
        if s.protocol.is_v5() && (p.properties.topic_alias.is_some() || p.topic.is_empty()) {
            // CONNACK's Topic Alias Maximum is 0: no alias is valid.
            return self.close(CloseReason::TopicAliasInvalid, ctx);
        }
        if let Some(limit) = topic_limit(&self.worker.config, &p.topic) {
            return self.drop_publish(&p, Refusal::Limit(limit));
        }
        if let Some(g) = s.guard.as_deref_mut() {
            if !g.can_write(&p.topic) {
                return self.drop_publish(&p, Refusal::Acl);
            }
        }
        let v5 = s.protocol.is_v5();
        let message = AppMessage {
            properties: if v5 {
                crate::messages::publish_properties(&p.properties)
            } else {
                None
            },
            publisher: if v5 {
                s.flow.client_id().clone()
            } else {
                ByteString::new()
            },
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            ..AppMessage::default()
        };
        match s.flow.on_publish(p.packet_id, message) {
            Inbound::Routed { token } => {
                if token.is_some() {
                    self.note_inflight_in();
                }
            }
            Inbound::Store {
                token,
                packet_id,
                message,
            } => {
                let request = SessionRequest::Publish {
                    from: Target {
                        conn_id: self.id,
                        addr: ctx.address(),
                    },
                    token,
                    client_id: s.flow.client_id().clone(),
                    epoch: s.flow.epoch(),
                    packet_id,
                    message,
                };
                self.worker.store.do_send(request);
                self.note_inflight_in();
            }
            Inbound::Repeated => self.release_acks(),
        }
    }

    /// A PUBLISH refused by a topic limit or the ACL: acknowledged as if routed (so that the
    /// client moves on), and dropped.
    fn drop_publish(&mut self, p: &Publish, why: Refusal) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.protocol.is_v5() && why == Refusal::Acl {
            s.flow.on_denied_publish(p.qos, p.packet_id);
        } else {
            s.flow.on_refused_publish(p.qos, p.packet_id);
        }
        self.release_acks();
        match why {
            Refusal::Acl => {
                if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
                    let name = self.name();
                    debug!(target: MQTT_LOG, client_id = %name,
                        "Denied PUBLISH from {name} (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
                        u8::from(p.dup), p.qos as u8, u8::from(p.retain), p.packet_id, p.topic, p.payload.len());
                }
                self.denied(
                    SecurityEvent::PublishDenied,
                    1,
                    "PUBLISH dropped: the ACL does not allow writing",
                    &p.topic,
                );
            }
            Refusal::Limit(limit) => {
                let what = if limit == Limit::MaxTopicLevels {
                    "topic name with too many levels"
                } else {
                    "topic name too long"
                };
                self.limit_bit(limit, what, "PUBLISH dropped");
            }
        }
    }

    /// Sends this read pass's PUBLISHes to their shards.
    pub(super) fn flush_routes(&mut self, ctx: &mut Context<Self>) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let publishes = s.flow.take_routes();
        if publishes.is_empty() {
            return;
        }
        let from = Target {
            conn_id: self.id,
            addr: ctx.address(),
        };
        // This worker's own shard: a client's PUBLISHes all take the same path, which keeps
        // their order (MQTT orders per publisher), and routing needs no thread hop.
        let msg = Route {
            from: Some(from),
            publishes,
        };
        if let Err(SendError::Full(msg)) = self.worker.router.try_send(msg) {
            // Backpressure: stop reading until the shard takes it.
            let send = self.worker.router.send(msg);
            ctx.wait(actix::fut::wrap_future::<_, Self>(send).map(|_, _, _| ()));
        }
    }

    /// PUBREL: committed first for a persistent session, PUBCOMP at once for a clean one.
    pub(super) fn on_pubrel(&mut self, pid: u16, ctx: &mut Context<Self>) {
        self.log_ack_in("PUBREL", pid);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        match s.flow.on_pubrel(pid) {
            Release::Store { token } => {
                let request = SessionRequest::Release {
                    from: Target {
                        conn_id: self.id,
                        addr: ctx.address(),
                    },
                    token,
                    client_id: s.flow.client_id().clone(),
                    epoch: s.flow.epoch(),
                    packet_id: pid,
                };
                self.worker.store.do_send(request);
            }
            Release::Complete => self.release_acks(),
        }
    }

    /// Sends the acknowledgements that are due, in order.
    fn release_acks(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut due = Vec::new();
        s.flow
            .due_acks_with(|kind, pid, note| due.push((kind, pid, note)));
        for (kind, pid, note) in due {
            if note != AckNote::Success {
                self.write_noted_ack(kind, pid, note);
                continue;
            }
            let t = match kind {
                AckKind::PubAck => PacketType::PubAck,
                AckKind::PubRec => PacketType::PubRec,
                AckKind::PubComp => PacketType::PubComp,
            };
            self.write_ack(t, pid);
        }
    }
}

impl Handler<Acked> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Acked, ctx: &mut Self::Context) {
        if msg.refused {
            return self.close(CloseReason::Unavailable, ctx);
        }
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let was_paused = s.flow.owed_acks() >= self.worker.config.max_inflight_in;
        if !msg.unmatched.is_empty() && s.protocol.is_v5() {
            s.flow.no_subscribers(&msg.unmatched);
        }
        s.flow.complete(msg.tokens);
        self.release_acks();
        if was_paused && !self.read_paused() {
            self.wake();
        }
    }
}
