//! A persistent session as replicated: subscriptions, outbound queue with QoS stages, inbound QoS 2
//! packet ids, will, and ownership (which node and connection serve it, under which epoch); for
//! MQTT 5 also its expiry, the client's limits and a will waiting for its delay.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use starling_codec::QoS;
use starling_proto::state::v1 as pb;

use crate::message::Message;

/// What a subscription asks for (MQTT 5 §3.8.3.1); a 3.1.1 subscription has only the QoS.
///
/// Retain Handling is not kept: it only decides what the SUBSCRIBE itself sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubOptions {
    /// Granted QoS.
    pub qos: QoS,
    /// Messages the session's own client published are not delivered through it.
    pub no_local: bool,
    /// Routed messages keep their RETAIN flag (else it is cleared).
    pub retain_as_published: bool,
    /// Subscription Identifier; 0: none.
    pub subscription_id: u32,
}

/// A QoS from the log encoding, out-of-range values clamped to 2.
pub(crate) fn qos_of(v: u32) -> QoS {
    QoS::from_u8(v.min(2) as u8).unwrap_or(QoS::ExactlyOnce)
}

impl SubOptions {
    /// A subscription with only a QoS (3.1, 3.1.1).
    pub fn qos(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            subscription_id: 0,
        }
    }

    /// The options a SUBSCRIBE asks for.
    pub fn from_request(r: &pb::SubscriptionRequest) -> SubOptions {
        SubOptions {
            qos: qos_of(r.qos),
            no_local: r.no_local,
            retain_as_published: r.retain_as_published,
            subscription_id: r.subscription_id,
        }
    }

    /// The snapshot record of a subscription to `filter`.
    pub fn to_record(self, filter: &str) -> pb::SubscriptionRecord {
        pb::SubscriptionRecord {
            filter: filter.to_string(),
            qos: self.qos.as_u8().into(),
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            subscription_id: self.subscription_id,
        }
    }

    /// The options of a snapshot record.
    pub fn from_record(r: &pb::SubscriptionRecord) -> SubOptions {
        SubOptions {
            qos: qos_of(r.qos),
            no_local: r.no_local,
            retain_as_published: r.retain_as_published,
            subscription_id: r.subscription_id,
        }
    }
}

/// A connection's will.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// The message (its `expires_at_ms` is unused: see `expiry_secs`).
    pub message: Message,
    /// Will Delay Interval (MQTT 5): how long after the connection ends it is published, unless
    /// the client reconnects or the session ends first. 0: at once.
    pub delay_secs: u32,
    /// Message Expiry Interval, counted from the publication; 0: never expires.
    pub expiry_secs: u32,
}

impl Will {
    /// The message as published at `now_ms` (log time).
    pub fn publication(&self, now_ms: u64) -> Message {
        let mut m = self.message.clone();
        m.expires_at_ms = if self.expiry_secs == 0 {
            0
        } else {
            now_ms.saturating_add(u64::from(self.expiry_secs) * 1000)
        };
        m
    }
}

/// The node and connection that serve a connected session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Node id.
    pub node: u64,
    /// Connection id, unique on that node.
    pub connection: u64,
}

/// A message in a session's outbound queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// Per-session sequence number (from 1); the packet id derives from it.
    pub seq: u64,
    /// The message as it is to be delivered (QoS already downgraded, RETAIN as sent).
    pub message: Message,
    /// PUBREC received and committed: PUBREL is what is owed.
    pub released: bool,
    /// Subscription Identifiers of the session's subscriptions it matched, ascending (MQTT 5:
    /// one copy carries them all).
    pub subscription_ids: Vec<u32>,
}

/// The packet id of the outbound message with sequence number `seq`.
///
/// Deterministic, so that every node (and every later connection) uses the same id for the same
/// message: ids are never taken from a node-local counter. Messages less than 65535 apart in
/// sequence never share an id.
pub fn packet_id_for(seq: u64) -> u16 {
    ((seq.saturating_sub(1) % 65535) + 1) as u16
}

/// One outbound message handed to the connection that serves the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    /// Sequence number, used in acknowledgements to the state machine.
    pub seq: u64,
    /// Packet id on the wire.
    pub packet_id: u16,
    /// Set when the message may have been sent before (resend with DUP=1).
    pub dup: bool,
    /// PUBREC already received: send PUBREL, not PUBLISH.
    pub released: bool,
    /// The message (QoS and RETAIN as to be sent).
    pub message: Message,
    /// Subscription Identifiers to send with it, ascending.
    pub subscription_ids: Vec<u32>,
}

/// A persistent (clean-session=0) session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Who serves it now; `None` while no client is connected.
    pub owner: Option<Owner>,
    /// Incremented by every connect (takeover); commands carry it and stale ones are rejected.
    pub epoch: u64,
    /// Topic filter → subscription options (granted QoS first).
    pub subscriptions: BTreeMap<Arc<str>, SubOptions>,
    /// Outbound QoS 1/2 messages not yet completed, in sequence order.
    pub queue: VecDeque<Queued>,
    /// Sequence number of the next enqueued message.
    pub next_seq: u64,
    /// Highest sequence number that may have been written to a client.
    pub sent_up_to: u64,
    /// Inbound QoS 2 packet ids received and awaiting PUBREL.
    pub inbound: BTreeSet<u16>,
    /// Will of the current connection; after the connection ended, a will waiting for its
    /// delay (`will_due_at_ms`).
    pub will: Option<Will>,
    /// When the will waiting for its delay is published (log time); 0: no will waits.
    pub will_due_at_ms: u64,
    /// When the last connection ended (log time, ms since the Unix epoch); 0 while connected.
    pub disconnected_at_ms: u64,
    /// User name of the client that created the session.
    pub username: String,
    /// Bytes held by `queue` (see [`Message::cost`]).
    pub queued_bytes: usize,
    /// Protocol level of the last CONNECT (3, 4, 5; 0 in states that predate it: 3.1.1).
    pub protocol_level: u8,
    /// Session Expiry Interval (MQTT 5): the session ends this long after its connection does;
    /// `u32::MAX`: never. `None` for a 3.1 / 3.1.1 session, whose expiry is each node's
    /// `persistent_client_expiration` (a `DropSession` proposed by the store).
    pub expiry_secs: Option<u32>,
    /// Receive Maximum of the client (0: not given, i.e. 65535).
    pub receive_maximum: u32,
    /// Maximum Packet Size of the client (0: no limit): larger messages are not queued.
    pub maximum_packet_size: u32,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>) -> Session {
        Session {
            client_id,
            next_seq: 1,
            ..Session::default()
        }
    }

    /// The outbound view of a queued message.
    pub fn outbound(&self, q: &Queued) -> Outbound {
        Outbound {
            seq: q.seq,
            packet_id: packet_id_for(q.seq),
            dup: q.released || q.seq <= self.sent_up_to,
            released: q.released,
            message: q.message.clone(),
            subscription_ids: q.subscription_ids.clone(),
        }
    }

    /// When the session ends, in log time: its connection ended and its expiry runs out then.
    /// `None` while connected, for a session that never expires, and for a 3.1 / 3.1.1 one.
    pub fn expires_at_ms(&self) -> Option<u64> {
        match self.expiry_secs {
            Some(secs) if self.owner.is_none() && secs != u32::MAX => Some(
                self.disconnected_at_ms
                    .saturating_add(u64::from(secs) * 1000),
            ),
            _ => None,
        }
    }

    /// When its delayed will is due, in log time, if one waits.
    pub fn will_due_at(&self) -> Option<u64> {
        (self.will_due_at_ms != 0 && self.will.is_some()).then_some(self.will_due_at_ms)
    }

    /// Receive Maximum of the client: 65535 when it gave none.
    pub fn receive_maximum(&self) -> u32 {
        if self.receive_maximum == 0 {
            65535
        } else {
            self.receive_maximum
        }
    }

    /// Removes the messages that expired before they were sent (sequence above `sent_up_to`,
    /// not released): a message sent once stays until acknowledged, as MQTT 5 §3.3.2.3.3
    /// requires. Returns how many went.
    pub fn drop_expired_unsent(&mut self, now_ms: u64) -> usize {
        let sent = self.sent_up_to;
        let before = self.queue.len();
        let mut freed = 0;
        self.queue.retain(|q| {
            let drop = q.seq > sent && !q.released && q.message.is_expired(now_ms);
            if drop {
                freed += q.message.cost();
            }
            !drop
        });
        self.queued_bytes -= freed;
        before - self.queue.len()
    }

    /// Position of `seq` in the queue.
    pub fn position(&self, seq: u64) -> Option<usize> {
        self.queue.binary_search_by_key(&seq, |q| q.seq).ok()
    }

    /// Removes the message `seq`; returns it.
    pub fn remove(&mut self, seq: u64) -> Option<Queued> {
        let i = self.position(seq)?;
        let q = self.queue.remove(i)?;
        self.queued_bytes -= q.message.cost();
        Some(q)
    }

    /// Appends a message with the next sequence number; returns its sequence number.
    pub fn push(&mut self, message: Message, subscription_ids: Vec<u32>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued_bytes += message.cost();
        self.queue.push_back(Queued {
            seq,
            message,
            released: false,
            subscription_ids,
        });
        seq
    }
}

/// A clean session tracked in clustered mode, so that every node can route to it, take it over
/// and publish its will if its node dies. It lives as long as its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanSession {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// The connection serving it.
    pub owner: Owner,
    /// Epoch of that connection.
    pub epoch: u64,
    /// Topic filter → subscription options.
    pub subscriptions: BTreeMap<Arc<str>, SubOptions>,
    /// Will of the connection (published as soon as it ends: the session ends with it).
    pub will: Option<Will>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_cycle_through_1_to_65535() {
        assert_eq!(packet_id_for(1), 1);
        assert_eq!(packet_id_for(65535), 65535);
        assert_eq!(packet_id_for(65536), 1);
        assert_eq!(packet_id_for(0), 1);
    }
}
