//! Outbound QoS 1/2 flows of one connection.
//!
//! - [`LocalOutbound`], for clean sessions: packet ids from a local allocator, an in-flight
//!   window, and a bounded queue behind it. Nothing of it outlives the connection.
//! - [`DurableOutbound`], for persistent sessions: the messages, their packet ids and stages come
//!   from the replicated state; this only tracks what is on the wire, so that a window slot is
//!   reused as soon as the client acknowledges, while the acknowledgement commits in the
//!   background. PUBREL waits for the PUBREC to be committed (exactly-once rule 2).

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use starling_codec::QoS;
use starling_state::{Message as AppMessage, Outbound};

use crate::metrics::Limit;

/// A packet the flow asks the connection to write.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// PUBLISH `message` with `packet_id` (DUP as given).
    Publish {
        /// Packet id.
        packet_id: u16,
        /// DUP flag.
        dup: bool,
        /// Message (QoS as to be sent).
        message: AppMessage,
    },
    /// PUBREL `packet_id`.
    PubRel(u16),
}

/// Result of offering a message for delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Write it at QoS 0 now, as given (subject to the write buffer's limit): a QoS 0 message,
    /// or a persistent session's non-durable one. A clean session's window never returns it.
    AtMostOnce(AppMessage),
    /// Write it now.
    Send(Outgoing),
    /// Queued behind the window.
    Queued,
    /// Queue full: dropped. The limit that bit.
    Dropped(Limit),
}

struct LocalInflight {
    message: AppMessage,
    released: bool,
}

/// Clean session outbound flow.
pub(crate) struct LocalOutbound {
    window: usize,
    max_queued: usize,
    max_queued_bytes: usize,
    next_pid: u16,
    // Packet ids: at most 65535 keys, a fast hash is fine.
    inflight: FxHashMap<u16, LocalInflight>,
    queue: VecDeque<AppMessage>,
    /// Bytes of the messages held, in flight or queued (as the replicated state counts them).
    held_bytes: usize,
}

impl LocalOutbound {
    pub(crate) fn new(window: usize, max_queued: usize, max_queued_bytes: usize) -> LocalOutbound {
        LocalOutbound {
            window: window.min(65_535),
            max_queued,
            max_queued_bytes,
            next_pid: 0,
            inflight: FxHashMap::default(),
            queue: VecDeque::new(),
            held_bytes: 0,
        }
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid != 0 && !self.inflight.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }

    fn start(&mut self, message: AppMessage) -> Outgoing {
        let packet_id = self.alloc_pid();
        self.inflight.insert(
            packet_id,
            LocalInflight {
                message: message.clone(),
                released: false,
            },
        );
        Outgoing::Publish {
            packet_id,
            dup: false,
            message,
        }
    }

    /// Offers a QoS 1/2 message.
    pub(crate) fn offer(&mut self, message: AppMessage) -> Offer {
        let cost = message.cost();
        if self.held_bytes + cost > self.max_queued_bytes {
            return Offer::Dropped(Limit::MaxQueuedBytes);
        }
        if self.inflight.len() < self.window && self.queue.is_empty() {
            self.held_bytes += cost;
            return Offer::Send(self.start(message));
        }
        if self.queue.len() >= self.max_queued {
            return Offer::Dropped(Limit::MaxQueuedMessages);
        }
        self.held_bytes += cost;
        self.queue.push_back(message);
        Offer::Queued
    }

    fn complete(&mut self, pid: u16) {
        if let Some(f) = self.inflight.remove(&pid) {
            self.held_bytes -= f.message.cost();
        }
    }

    /// Messages that fit the window now.
    pub(crate) fn refill(&mut self, out: &mut Vec<Outgoing>) {
        while self.inflight.len() < self.window {
            let Some(m) = self.queue.pop_front() else {
                break;
            };
            out.push(self.start(m));
        }
    }

    /// PUBACK: true if it completed a QoS 1 message.
    pub(crate) fn puback(&mut self, pid: u16) -> bool {
        match self.inflight.get(&pid) {
            Some(f) if f.message.qos == QoS::AtLeastOnce => {
                self.complete(pid);
                true
            }
            _ => false,
        }
    }

    /// PUBREC: true if PUBREL is to be sent (also for a repeated PUBREC).
    pub(crate) fn pubrec(&mut self, pid: u16) -> bool {
        match self.inflight.get_mut(&pid) {
            Some(f) if f.message.qos == QoS::ExactlyOnce => {
                f.released = true;
                true
            }
            _ => false,
        }
    }

    /// PUBCOMP: true if it completed a QoS 2 message.
    pub(crate) fn pubcomp(&mut self, pid: u16) -> bool {
        match self.inflight.get(&pid) {
            Some(f) if f.released => {
                self.complete(pid);
                true
            }
            _ => false,
        }
    }

    /// Messages in flight and queued.
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.inflight.len(), self.queue.len())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// PUBLISH written.
    Sent,
    /// PUBREC received, commit pending.
    Received,
    /// PUBREL written.
    Released,
}

#[derive(Debug)]
struct DurableInflight {
    seq: u64,
    qos: QoS,
    stage: Stage,
}

/// What a client's acknowledgement means for a persistent session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckOutcome {
    /// Commit this acknowledgement of message `seq`.
    Commit(u64),
    /// Nothing to commit; write PUBREL again (a repeated PUBREC).
    ResendPubRel(u16),
    /// Not in flight (or wrong kind): ignore.
    Ignore,
}

/// Persistent session outbound flow.
pub(crate) struct DurableOutbound {
    window: usize,
    pending: VecDeque<Outbound>,
    inflight: FxHashMap<u16, DurableInflight>,
    max_sent_seq: u64,
}

impl DurableOutbound {
    pub(crate) fn new(window: usize) -> DurableOutbound {
        DurableOutbound {
            window: window.min(65_535),
            pending: VecDeque::new(),
            inflight: FxHashMap::default(),
            max_sent_seq: 0,
        }
    }

    /// Messages handed over by the store (resume list or new deliveries), in sequence order.
    pub(crate) fn extend(&mut self, items: impl IntoIterator<Item = Outbound>) {
        self.pending.extend(items);
    }

    /// Starts what fits the window.
    pub(crate) fn refill(&mut self, out: &mut Vec<Outgoing>) {
        while self.inflight.len() < self.window {
            let Some(next) = self.pending.front() else {
                break;
            };
            // Two messages 65535 or more apart in sequence would share a packet id.
            let oldest = self
                .inflight
                .values()
                .map(|f| f.seq)
                .min()
                .unwrap_or(next.seq);
            if next.seq >= oldest + 65_535 || self.inflight.contains_key(&next.packet_id) {
                break;
            }
            let Some(o) = self.pending.pop_front() else {
                break;
            };
            self.max_sent_seq = self.max_sent_seq.max(o.seq);
            let stage = if o.released {
                Stage::Released
            } else {
                Stage::Sent
            };
            self.inflight.insert(
                o.packet_id,
                DurableInflight {
                    seq: o.seq,
                    qos: o.message.qos,
                    stage,
                },
            );
            out.push(if o.released {
                Outgoing::PubRel(o.packet_id)
            } else {
                Outgoing::Publish {
                    packet_id: o.packet_id,
                    dup: o.dup,
                    message: o.message,
                }
            });
        }
    }

    /// PUBACK from the client.
    pub(crate) fn puback(&mut self, pid: u16) -> AckOutcome {
        match self.inflight.get(&pid) {
            Some(f) if f.qos == QoS::AtLeastOnce => {
                let seq = f.seq;
                self.inflight.remove(&pid);
                AckOutcome::Commit(seq)
            }
            _ => AckOutcome::Ignore,
        }
    }

    /// PUBREC from the client.
    pub(crate) fn pubrec(&mut self, pid: u16) -> AckOutcome {
        match self.inflight.get_mut(&pid) {
            Some(f) if f.qos == QoS::ExactlyOnce => match f.stage {
                Stage::Sent => {
                    f.stage = Stage::Received;
                    AckOutcome::Commit(f.seq)
                }
                Stage::Received => AckOutcome::Ignore,
                Stage::Released => AckOutcome::ResendPubRel(pid),
            },
            _ => AckOutcome::Ignore,
        }
    }

    /// The PUBREC of `seq` is committed: the packet id to send PUBREL for.
    pub(crate) fn release_ready(&mut self, seq: u64) -> Option<u16> {
        let (pid, f) = self.inflight.iter_mut().find(|(_, f)| f.seq == seq)?;
        if f.stage != Stage::Received {
            return None;
        }
        f.stage = Stage::Released;
        Some(*pid)
    }

    /// PUBCOMP from the client.
    pub(crate) fn pubcomp(&mut self, pid: u16) -> AckOutcome {
        match self.inflight.get(&pid) {
            Some(f) if f.stage == Stage::Released => {
                let seq = f.seq;
                self.inflight.remove(&pid);
                AckOutcome::Commit(seq)
            }
            _ => AckOutcome::Ignore,
        }
    }

    /// Highest sequence number written to the client.
    pub(crate) fn max_sent_seq(&self) -> u64 {
        self.max_sent_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_state::packet_id_for;

    fn m(qos: QoS, p: &'static str) -> AppMessage {
        AppMessage {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(p.as_bytes()),
            qos,
            retain: false,
            ..AppMessage::default()
        }
    }

    fn pid(s: &Outgoing) -> u16 {
        match s {
            Outgoing::Publish { packet_id, .. } => *packet_id,
            Outgoing::PubRel(p) => *p,
        }
    }

    #[test]
    fn local_window_queues_then_refills_in_order() {
        let mut o = LocalOutbound::new(2, 10, 1 << 20);
        let a = o.offer(m(QoS::AtLeastOnce, "a"));
        let b = o.offer(m(QoS::ExactlyOnce, "b"));
        assert!(matches!(
            a,
            Offer::Send(Outgoing::Publish { packet_id: 1, .. })
        ));
        assert!(matches!(
            b,
            Offer::Send(Outgoing::Publish { packet_id: 2, .. })
        ));
        assert_eq!(o.offer(m(QoS::AtLeastOnce, "c")), Offer::Queued);
        assert!(o.puback(1));
        assert!(!o.puback(1), "a second PUBACK completes nothing");
        let mut out = Vec::new();
        o.refill(&mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], Outgoing::Publish { message, .. } if message.payload == "c"));
        assert!(!o.pubcomp(2), "PUBCOMP before PUBREC is ignored");
        assert!(o.pubrec(2));
        assert!(o.pubrec(2), "repeated PUBREC gets PUBREL again");
        assert!(o.pubcomp(2));
        assert_eq!(o.len(), (1, 0));
    }

    #[test]
    fn local_queue_is_bounded() {
        let mut o = LocalOutbound::new(1, 1, 1 << 20);
        o.offer(m(QoS::AtLeastOnce, "a"));
        assert_eq!(o.offer(m(QoS::AtLeastOnce, "b")), Offer::Queued);
        assert_eq!(
            o.offer(m(QoS::AtLeastOnce, "c")),
            Offer::Dropped(Limit::MaxQueuedMessages)
        );
    }

    #[test]
    fn local_queue_is_bounded_in_bytes_too() {
        // Each message costs 1 (topic) + 1 (payload) + 64 = 66 bytes: two fit in 140, counting
        // the one in flight (as the replicated state counts a persistent session's bytes).
        let mut o = LocalOutbound::new(1, 10, 140);
        assert!(matches!(o.offer(m(QoS::AtLeastOnce, "a")), Offer::Send(_)));
        assert_eq!(o.offer(m(QoS::AtLeastOnce, "b")), Offer::Queued);
        assert_eq!(
            o.offer(m(QoS::AtLeastOnce, "c")),
            Offer::Dropped(Limit::MaxQueuedBytes)
        );
        // Completing the one in flight frees its bytes.
        assert!(o.puback(1));
        assert_eq!(o.offer(m(QoS::AtLeastOnce, "d")), Offer::Queued);
    }

    #[test]
    fn local_packet_ids_skip_those_in_flight() {
        let mut o = LocalOutbound::new(3, 10, 1 << 20);
        o.next_pid = 65_534;
        let ids: Vec<u16> = (0..3)
            .map(|_| match o.offer(m(QoS::AtLeastOnce, "x")) {
                Offer::Send(s) => pid(&s),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![65_535, 1, 2]);
    }

    fn ob(seq: u64, qos: QoS, released: bool) -> Outbound {
        Outbound {
            seq,
            packet_id: packet_id_for(seq),
            dup: false,
            released,
            message: m(qos, "x"),
            subscription_ids: Vec::new(),
        }
    }

    #[test]
    fn durable_resume_sends_pubrel_for_released_and_publish_for_the_rest() {
        let mut o = DurableOutbound::new(10);
        o.extend([
            ob(1, QoS::ExactlyOnce, true),
            ob(2, QoS::AtLeastOnce, false),
        ]);
        let mut out = Vec::new();
        o.refill(&mut out);
        assert_eq!(out[0], Outgoing::PubRel(1));
        assert!(matches!(out[1], Outgoing::Publish { packet_id: 2, .. }));
        assert_eq!(o.pubcomp(1), AckOutcome::Commit(1));
        assert_eq!(o.puback(2), AckOutcome::Commit(2));
        assert_eq!(o.max_sent_seq(), 2);
    }

    #[test]
    fn durable_pubrel_waits_for_commit_of_pubrec() {
        let mut o = DurableOutbound::new(1);
        o.extend([
            ob(5, QoS::ExactlyOnce, false),
            ob(6, QoS::AtLeastOnce, false),
        ]);
        let mut out = Vec::new();
        o.refill(&mut out);
        assert_eq!(out.len(), 1, "window of one");
        assert_eq!(o.pubrec(5), AckOutcome::Commit(5));
        assert_eq!(o.pubrec(5), AckOutcome::Ignore, "still committing");
        assert_eq!(o.pubcomp(5), AckOutcome::Ignore, "no PUBREL sent yet");
        assert_eq!(o.release_ready(5), Some(5));
        assert_eq!(o.pubrec(5), AckOutcome::ResendPubRel(5));
        assert_eq!(o.pubcomp(5), AckOutcome::Commit(5));
        out.clear();
        o.refill(&mut out);
        assert!(matches!(out[0], Outgoing::Publish { packet_id: 6, .. }));
    }

    #[test]
    fn durable_window_never_reuses_a_packet_id_in_flight() {
        let mut o = DurableOutbound::new(10);
        o.extend([
            ob(1, QoS::AtLeastOnce, false),
            ob(65_536, QoS::AtLeastOnce, false),
        ]);
        let mut out = Vec::new();
        o.refill(&mut out);
        assert_eq!(out.len(), 1);
        o.puback(1);
        out.clear();
        o.refill(&mut out);
        assert_eq!(out.len(), 1);
    }
}
