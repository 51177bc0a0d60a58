//! A persistent session as replicated: subscriptions, outbound queue with QoS stages, inbound QoS 2
//! packet ids, will, and ownership (which node and connection serve it, under which epoch).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use starling_codec::QoS;

use crate::message::Message;

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
    /// Topic filter → granted QoS.
    pub subscriptions: BTreeMap<Arc<str>, QoS>,
    /// Outbound QoS 1/2 messages not yet completed, in sequence order.
    pub queue: VecDeque<Queued>,
    /// Sequence number of the next enqueued message.
    pub next_seq: u64,
    /// Highest sequence number that may have been written to a client.
    pub sent_up_to: u64,
    /// Inbound QoS 2 packet ids received and awaiting PUBREL.
    pub inbound: BTreeSet<u16>,
    /// Will of the current connection.
    pub will: Option<Message>,
    /// When the last connection ended (ms since the epoch, from the log); 0 while connected.
    pub disconnected_at_ms: u64,
    /// User name of the client that created the session.
    pub username: String,
    /// Bytes held by `queue` (see [`Message::cost`]).
    pub queued_bytes: usize,
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
        }
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
    pub fn push(&mut self, message: Message) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued_bytes += message.cost();
        self.queue.push_back(Queued {
            seq,
            message,
            released: false,
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
    /// Topic filter → granted QoS.
    pub subscriptions: BTreeMap<Arc<str>, QoS>,
    /// Will of the connection.
    pub will: Option<Message>,
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
