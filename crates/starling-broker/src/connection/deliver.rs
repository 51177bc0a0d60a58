//! Outbound messages: non-durable deliveries ([`Deliver`]), a persistent session's messages from
//! the store ([`DurableDeliver`]) filtered by the ACL, PUBREL once a PUBREC is committed
//! ([`ReleaseReady`]), and the client's PUBACK / PUBREC / PUBCOMP, which the flow turns into
//! commits and freed window slots.
//!
//! `#[PerformanceCriticalPath]`: [`Connection::deliver`] runs per delivery batch.

use actix::prelude::*;
use starling_codec::PacketType;
use starling_state::{Message as AppMessage, Outbound};

use super::{ClientFlow, Connection, FlowLimits, Offer, Phase};
use crate::messages::{AckKind, Deliver, DurableDeliver, ReleaseReady, SessionRequest};
use crate::metrics::{Counters, Limit, SecurityEvent};

impl Connection {
    /// Non-durable deliveries (fast path, or a clean session's retained messages).
    pub(super) fn deliver(&mut self, messages: Vec<AppMessage>) {
        if self.phase != Phase::Active {
            return;
        }
        self.refresh_guard();
        let max_wbuf = self.worker.config.max_write_buffer;
        let limits = FlowLimits::from_shared(&self.worker.limits);
        for m in messages {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            if let Some(g) = s.guard.as_deref_mut() {
                if !g.can_read(&m.topic) {
                    self.denied(
                        SecurityEvent::DeliveryDenied,
                        1,
                        "message not delivered: the ACL does not allow reading it",
                        &m.topic,
                    );
                    continue;
                }
            }
            match s.flow.offer(m, &limits) {
                Offer::AtMostOnce(m) => {
                    if self.wbuf.len() >= max_wbuf {
                        Counters::add(&self.worker.counters.dropped_qos0, 1);
                        self.limit_bit(
                            Limit::MaxWriteBuffer,
                            "write buffer full (slow consumer)",
                            "dropping messages",
                        );
                        continue;
                    }
                    self.write_publish(0, false, &m);
                }
                Offer::Send(o) => self.write_outgoing([o]),
                Offer::Queued => {}
                Offer::Dropped(limit) => {
                    Counters::add(&self.worker.counters.dropped_queue_full, 1);
                    self.limit_bit(limit, "session queue full", "dropping messages");
                }
            }
        }
    }

    /// Keeps the persistent-session messages this client may read; the others are acknowledged
    /// in the replicated state without being sent (they leave the session's queue).
    pub(super) fn readable_durable(&mut self, items: Vec<Outbound>) -> Vec<Outbound> {
        self.refresh_guard();
        let Some(s) = self.session.as_mut() else {
            return items;
        };
        let Some(g) = s.guard.as_deref_mut() else {
            return items;
        };
        let mut keep = Vec::with_capacity(items.len());
        let mut denied = None;
        let mut n = 0;
        for o in items {
            let skip = if g.can_read(&o.message.topic) {
                None
            } else {
                ClientFlow::skip(&o)
            };
            let Some(commits) = skip else {
                keep.push(o);
                continue;
            };
            for c in commits {
                self.worker.store.do_send(SessionRequest::Ack {
                    client_id: s.flow.client_id().clone(),
                    epoch: s.flow.epoch(),
                    seq: c.seq,
                    kind: c.kind,
                });
            }
            denied = Some(o.message.topic);
            n += 1;
        }
        if let Some(topic) = denied {
            self.denied(
                SecurityEvent::DeliveryDenied,
                n,
                "message not delivered: the ACL does not allow reading it",
                &topic,
            );
        }
        keep
    }

    /// PUBACK, PUBREC or PUBCOMP from the client, for a message sent to it.
    pub(super) fn on_ack(&mut self, kind: AckKind, pid: u16) {
        let what = match kind {
            AckKind::PubAck => "PUBACK",
            AckKind::PubRec => "PUBREC",
            AckKind::PubComp => "PUBCOMP",
        };
        self.log_ack_in(what, pid);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        let commit = match kind {
            AckKind::PubAck => s.flow.on_puback(pid, &mut out),
            AckKind::PubRec => s.flow.on_pubrec(pid, &mut out),
            AckKind::PubComp => s.flow.on_pubcomp(pid, &mut out),
        };
        if let Some(c) = commit {
            self.worker.store.do_send(SessionRequest::Ack {
                client_id: s.flow.client_id().clone(),
                epoch: s.flow.epoch(),
                seq: c.seq,
                kind: c.kind,
            });
        }
        self.write_outgoing(out);
    }
}

impl Handler<Deliver> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) {
        self.deliver(msg.messages);
    }
}

impl Handler<DurableDeliver> for Connection {
    type Result = ();

    fn handle(&mut self, msg: DurableDeliver, _: &mut Self::Context) {
        let Some(s) = self.session.as_ref() else {
            return;
        };
        if s.flow.epoch() != msg.epoch || self.phase != Phase::Active {
            return;
        }
        let items = if s.guard.is_some() {
            self.readable_durable(msg.items)
        } else {
            msg.items
        };
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        let limits = FlowLimits::from_shared(&self.worker.limits);
        s.flow.durable_deliver(items, &limits, &mut out);
        self.write_outgoing(out);
        for m in msg.qos0 {
            let allowed = self
                .session
                .as_mut()
                .and_then(|s| s.guard.as_deref_mut())
                .is_none_or(|g| g.can_read(&m.topic));
            if allowed {
                self.write_publish(0, false, &m);
            } else {
                self.denied(
                    SecurityEvent::DeliveryDenied,
                    1,
                    "message not delivered: the ACL does not allow reading it",
                    &m.topic,
                );
            }
        }
    }
}

impl Handler<ReleaseReady> for Connection {
    type Result = ();

    fn handle(&mut self, msg: ReleaseReady, _: &mut Self::Context) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.flow.epoch() != msg.epoch {
            return;
        }
        for pid in s.flow.release_ready(&msg.seqs) {
            self.write_ack(PacketType::PubRel, pid);
        }
    }
}
