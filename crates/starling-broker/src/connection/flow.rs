//! What a connection knows about its client's session once CONNECT is accepted, and the rules
//! of its QoS flows: [`ClientFlow`], a plain struct (no actix, no IO, no clock) that the
//! connection actor feeds with decoded packets and store answers, and whose answers it turns into
//! packets and actor messages. A simulated client connection drives the same struct.
//!
//! ```text
//!  from the client                 ClientFlow                       the actor then
//!  PUBLISH ───────────── on_publish ─┬─ Inbound::Routed ─────────── take_routes() → Route
//!                                    ├─ Inbound::Store ──────────── SessionRequest::Publish
//!                                    └─ Inbound::Repeated ────────── due_acks() → PUBREC
//!  PUBREL ────────────── on_pubrel ──┬─ Release::Store ──────────── SessionRequest::Release
//!                                    └─ Release::Complete ───────── due_acks() → PUBCOMP
//!  Acked{tokens} ─────── complete ─────────────────────────────────── due_acks() → PUBACK/…
//!  PUBACK/PUBREC/PUBCOMP on_puback/… ─ Option<Commit> + Outgoing ─── SessionRequest::Ack, writes
//!  Deliver ───────────── offer ───── Offer ───────────────────────── write or count the drop
//!  DurableDeliver ────── durable_deliver ── Outgoing ─────────────── writes
//!  ReleaseReady ──────── release_ready ── packet ids ─────────────── PUBREL
//! ```
//!
//! The exactly-once rules it holds (docs/architecture.md):
//! - A persistent session's inbound QoS 2 PUBLISH is accepted by the replicated state, once per
//!   packet id, before PUBREC; its PUBREL is committed before PUBCOMP. A clean session keeps its
//!   inbound QoS 2 ids here: a repeated id is acknowledged without routing again, and PUBREL gets
//!   PUBCOMP even for an id it does not know.
//! - Acknowledgements owed to the client leave in the order its packets arrived, whichever path
//!   completes them first. A retained QoS 0 PUBLISH holds a place in that order too, writing
//!   nothing: it waits for its commit and counts against `max_inflight_in`, so a client streaming
//!   retained messages is read no faster than they commit.
//! - Outbound, a persistent session's messages, packet ids and stages come from the replicated
//!   state: a resumed session sends PUBREL for what the client already acknowledged with PUBREC,
//!   PUBLISH (DUP as stored) for the rest; PUBREL goes out only once the PUBREC is committed
//!   ([`ClientFlow::release_ready`]); [`ClientFlow::sent_up_to`] is the highest sequence
//!   written.
//!
//! Memory: what an idle client never uses (its outbound flow, its inbound state) is allocated
//! on first use.

use bytestring::ByteString;
use rustc_hash::FxHashSet;
use starling_codec::QoS;
use starling_state::{Message as AppMessage, Outbound};

pub use super::acks::AckNote;
use super::acks::PendingAcks;
use super::outbound::{AckOutcome, DurableOutbound, LocalOutbound};
pub use super::outbound::{Offer, Outgoing};
use crate::config::SharedLimits;
use crate::messages::{AckKind, RoutedPublish};

/// The outbound limits of a session's flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLimits {
    /// QoS 1/2 messages in flight to the client at once (`max_inflight`).
    pub max_inflight: usize,
    /// A clean session's queue behind the window, in messages (`max_queued_messages`).
    pub max_queued_messages: usize,
    /// A clean session's messages held, in flight or queued, in bytes (`max_queued_bytes`).
    pub max_queued_bytes: usize,
}

impl FlowLimits {
    /// The limits in force (the replicated ones: see [`SharedLimits`]).
    pub fn from_shared(limits: &SharedLimits) -> FlowLimits {
        let l = limits.get();
        FlowLimits {
            max_inflight: l.max_inflight,
            max_queued_messages: l.max_queued_messages,
            max_queued_bytes: l.max_queued_bytes,
        }
    }
}

/// What an inbound PUBLISH requires.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Held for routing with the rest of this read pass ([`ClientFlow::take_routes`]). With a
    /// token, an acknowledgement (or, for a retained QoS 0 message, a place in the order of
    /// acknowledgements) is owed once the router or the commit completes it.
    Routed {
        /// The token the router (or the store, after the commit) completes.
        token: Option<u64>,
    },
    /// A persistent session's QoS 2 PUBLISH: ask the store to accept it exactly once
    /// (`SessionRequest::Publish`); PUBREC is owed once `token` completes.
    Store {
        /// The token the store completes.
        token: u64,
        /// The PUBLISH's packet id.
        packet_id: u16,
        /// The message.
        message: AppMessage,
    },
    /// A clean session's QoS 2 packet id already received and not yet released: PUBREC is owed
    /// at once (after any earlier acknowledgement), without routing the message again.
    Repeated,
}

/// What an inbound PUBREL requires.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// A persistent session: ask the store to release the id (`SessionRequest::Release`);
    /// PUBCOMP is owed once `token` completes.
    Store {
        /// The token the store completes.
        token: u64,
    },
    /// A clean session: PUBCOMP is owed at once (after any earlier acknowledgement), also for an
    /// id it does not know.
    Complete,
}

/// An acknowledgement from the client to commit in the replicated state (persistent sessions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Sequence number of the message in the session's queue.
    pub seq: u64,
    /// Which acknowledgement.
    pub kind: AckKind,
}

/// What the store needs to hear when the connection ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowClosed {
    /// Client id.
    pub client_id: ByteString,
    /// Router key.
    pub key: u64,
    /// The epoch whose owner goes away; 0 when nothing is left to end in the replicated state
    /// (a clean session outside it, or a persistent session whose DISCONNECT committed).
    pub epoch: u64,
    /// Persistent session.
    pub persistent: bool,
    /// Highest outbound sequence number written (persistent sessions).
    pub sent_up_to: u64,
    /// The connection publishes the will itself (if one is due): a clean session outside the
    /// replicated state. Otherwise the state machine does.
    pub publishes_own_will: bool,
}

/// The outbound flow, by session kind.
enum OutboundFlow {
    /// Clean session: local packet ids, window and bounded queue.
    Local(LocalOutbound),
    /// Persistent session: what the replicated state hands over, tracked on the wire.
    Durable(DurableOutbound),
}

/// Inbound state, created with the first PUBLISH or PUBREL.
#[derive(Default)]
struct InboundFlow {
    /// Clean sessions: QoS 2 packet ids received and not yet released (a repeat is not routed
    /// again). Persistent sessions keep theirs in the replicated state.
    qos2: FxHashSet<u16>,
    /// Acknowledgements owed, in arrival order.
    acks: PendingAcks,
    /// PUBLISHes of this read pass, routed together when the pass ends.
    routes: Vec<RoutedPublish>,
}

/// A client's session as its connection sees it: identity, outbound and inbound QoS flows, and
/// the acknowledgements owed. See the module documentation for the rules.
pub struct ClientFlow {
    /// Names the session in the store's requests.
    client_id: ByteString,
    /// Clean-session = 0: QoS state lives in the replicated state; outbound messages come from
    /// the store.
    persistent: bool,
    /// DISCONNECT committed: the session is offline in the replicated state already, so the
    /// close reports epoch 0.
    released: bool,
    /// The epoch of this connection's ownership (0: a clean session outside the replicated
    /// state); commands carry it so that a stale connection's are rejected.
    epoch: u64,
    /// Subscriber key in the router index.
    key: u64,
    /// Outbound QoS 1/2 flow, created with the first message.
    outbound: Option<Box<OutboundFlow>>,
    /// Inbound state, created with the first PUBLISH or PUBREL.
    inbound: Option<Box<InboundFlow>>,
}

impl ClientFlow {
    /// The flow of a session accepted by the store.
    pub fn new(client_id: ByteString, persistent: bool, epoch: u64, key: u64) -> ClientFlow {
        ClientFlow {
            client_id,
            persistent,
            released: false,
            epoch,
            key,
            outbound: None,
            inbound: None,
        }
    }

    /// Client id.
    pub fn client_id(&self) -> &ByteString {
        &self.client_id
    }

    /// Persistent (clean-session = 0).
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// The epoch to put on session commands (0: a clean session outside the replicated state).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Subscriber key in the router index.
    pub fn key(&self) -> u64 {
        self.key
    }

    fn inbound(&mut self) -> &mut InboundFlow {
        self.inbound.get_or_insert_with(Box::default)
    }

    /// The outbound flow, created with `l` on first use.
    fn outbound(&mut self, l: &FlowLimits) -> &mut OutboundFlow {
        let persistent = self.persistent;
        self.outbound.get_or_insert_with(|| {
            Box::new(if persistent {
                OutboundFlow::Durable(DurableOutbound::new(l.max_inflight))
            } else {
                OutboundFlow::Local(LocalOutbound::new(
                    l.max_inflight,
                    l.max_queued_messages,
                    l.max_queued_bytes,
                ))
            })
        })
    }

    // ---- inbound ----

    /// A PUBLISH from the client (allowed by the ACL and the topic limits), with `message`'s QoS
    /// and RETAIN as received.
    pub fn on_publish(&mut self, packet_id: u16, message: AppMessage) -> Inbound {
        let persistent = self.persistent;
        let t = self.inbound();
        let token = match message.qos {
            // A retained message goes to the replicated state: it waits for its commit like a
            // durable PUBLISH (nothing to write then), so reading stops while too many wait.
            QoS::AtMostOnce if message.retain => Some(t.acks.push_silent()),
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(t.acks.push(AckKind::PubAck, packet_id)),
            QoS::ExactlyOnce if persistent => {
                // Exactly once across failover: the state machine accepts the id once.
                let token = t.acks.push(AckKind::PubRec, packet_id);
                return Inbound::Store {
                    token,
                    packet_id,
                    message,
                };
            }
            QoS::ExactlyOnce => {
                if !t.qos2.insert(packet_id) {
                    t.acks.push_done(AckKind::PubRec, packet_id);
                    return Inbound::Repeated;
                }
                Some(t.acks.push(AckKind::PubRec, packet_id))
            }
        };
        t.routes.push(RoutedPublish { message, token });
        Inbound::Routed { token }
    }

    /// A PUBLISH refused (ACL, topic limits): acknowledged as if routed, so that the client
    /// moves on, and dropped. A clean session remembers a QoS 2 id as received, so that its
    /// PUBREL and any repeat are answered as usual.
    pub fn on_refused_publish(&mut self, qos: QoS, packet_id: u16) {
        let persistent = self.persistent;
        let t = self.inbound();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => t.acks.push_done(AckKind::PubAck, packet_id),
            QoS::ExactlyOnce => {
                if !persistent {
                    t.qos2.insert(packet_id);
                }
                t.acks.push_done(AckKind::PubRec, packet_id);
            }
        }
    }

    /// An MQTT 5 PUBLISH refused by the ACL: PUBACK / PUBREC with 0x87 (Not authorized), in
    /// order, and dropped. A refused QoS 2 exchange ends with that PUBREC (no PUBREL follows), so
    /// its packet id is not remembered.
    pub fn on_denied_publish(&mut self, qos: QoS, packet_id: u16) {
        let t = self.inbound();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => t.acks.push_denied(AckKind::PubAck, packet_id),
            QoS::ExactlyOnce => t.acks.push_denied(AckKind::PubRec, packet_id),
        }
    }

    /// A PUBREL from the client.
    pub fn on_pubrel(&mut self, packet_id: u16) -> Release {
        let persistent = self.persistent;
        let t = self.inbound();
        if persistent {
            let token = t.acks.push(AckKind::PubComp, packet_id);
            return Release::Store { token };
        }
        t.qos2.remove(&packet_id);
        t.acks.push_done(AckKind::PubComp, packet_id);
        Release::Complete
    }

    /// The PUBLISHes of this read pass, in arrival order, to route together.
    pub fn take_routes(&mut self) -> Vec<RoutedPublish> {
        match self.inbound.as_deref_mut() {
            Some(t) => std::mem::take(&mut t.routes),
            None => Vec::new(),
        }
    }

    /// The router or the store completed these tokens.
    pub fn complete(&mut self, tokens: impl IntoIterator<Item = u64>) {
        if let Some(t) = self.inbound.as_deref_mut() {
            for token in tokens {
                t.acks.complete(token);
            }
        }
    }

    /// Hands the acknowledgements that are due to `write`, in arrival order, and forgets them.
    pub fn due_acks(&mut self, write: impl FnMut(AckKind, u16)) {
        if let Some(t) = self.inbound.as_deref_mut() {
            t.acks.ready(write);
        }
    }

    /// These tokens' messages reached no subscriber: their 5.0 acknowledgement says so (0x10).
    pub fn no_subscribers(&mut self, tokens: &[u64]) {
        if let Some(t) = self.inbound.as_deref_mut() {
            for token in tokens {
                t.acks.no_subscribers(*token);
            }
        }
    }

    /// As [`ClientFlow::due_acks`], with the 5.0 reason code of each.
    pub fn due_acks_with(&mut self, write: impl FnMut(AckKind, u16, AckNote)) {
        if let Some(t) = self.inbound.as_deref_mut() {
            t.acks.ready_with(write);
        }
    }

    /// Entries owed to the client, completed or not (what `max_inflight_in` bounds).
    pub fn owed_acks(&self) -> usize {
        self.inbound.as_ref().map_or(0, |t| t.acks.len())
    }

    // ---- outbound ----

    /// A message for non-durable delivery (fast path, a clean session's retained messages):
    /// QoS 0 (and a persistent session's QoS 1/2, which the store delivers itself when they
    /// must be durable) is written at QoS 0; a clean session's QoS 1/2 enters its flow (created
    /// with `limits` by the first one).
    pub fn offer(&mut self, message: AppMessage, limits: &FlowLimits) -> Offer {
        if message.qos == QoS::AtMostOnce {
            return Offer::AtMostOnce(message);
        }
        if self.persistent {
            return Offer::AtMostOnce(message.with(QoS::AtMostOnce, message.retain));
        }
        match self.outbound(limits) {
            OutboundFlow::Local(f) => f.offer(message),
            OutboundFlow::Durable(_) => Offer::AtMostOnce(message),
        }
    }

    /// A resumed persistent session's outbound messages (from CONNECT): PUBREL for those the
    /// client acknowledged with PUBREC, PUBLISH for the rest, as far as the window allows.
    pub fn resume(
        &mut self,
        outbound: Vec<Outbound>,
        limits: &FlowLimits,
        out: &mut Vec<Outgoing>,
    ) {
        self.durable_deliver(outbound, limits, out);
    }

    /// A persistent session's messages from the store, in sequence order (the caller drops
    /// those of another epoch): what fits the window (`limits.max_inflight`, fixed by the
    /// first call) goes to `out`. Ignored by a clean session.
    pub fn durable_deliver(
        &mut self,
        items: Vec<Outbound>,
        limits: &FlowLimits,
        out: &mut Vec<Outgoing>,
    ) {
        if !self.persistent {
            return;
        }
        if let OutboundFlow::Durable(f) = self.outbound(limits) {
            f.extend(items);
            f.refill(out);
        }
    }

    /// The PUBRECs of these sequence numbers are committed: the packet ids to send PUBREL for
    /// (those still waiting for it).
    pub fn release_ready(&mut self, seqs: &[u64]) -> Vec<u16> {
        match self.outbound.as_deref_mut() {
            Some(OutboundFlow::Durable(f)) => seqs
                .iter()
                .filter_map(|seq| f.release_ready(*seq))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// PUBACK from the client: what to commit (persistent sessions), and in `out` what the
    /// freed window slot lets through.
    pub fn on_puback(&mut self, packet_id: u16, out: &mut Vec<Outgoing>) -> Option<Commit> {
        match self.outbound.as_deref_mut()? {
            OutboundFlow::Local(f) => {
                if f.puback(packet_id) {
                    f.refill(out);
                }
                None
            }
            OutboundFlow::Durable(f) => {
                let AckOutcome::Commit(seq) = f.puback(packet_id) else {
                    return None;
                };
                f.refill(out);
                Some(Commit {
                    seq,
                    kind: AckKind::PubAck,
                })
            }
        }
    }

    /// PUBREC from the client: a clean session answers PUBREL at once (in `out`, also for a
    /// repeat); a persistent session commits the PUBREC first ([`ClientFlow::release_ready`]
    /// then says when PUBREL may go), and answers a repeat after that with PUBREL again.
    pub fn on_pubrec(&mut self, packet_id: u16, out: &mut Vec<Outgoing>) -> Option<Commit> {
        match self.outbound.as_deref_mut()? {
            OutboundFlow::Local(f) => {
                if f.pubrec(packet_id) {
                    out.push(Outgoing::PubRel(packet_id));
                }
                None
            }
            OutboundFlow::Durable(f) => match f.pubrec(packet_id) {
                AckOutcome::Commit(seq) => Some(Commit {
                    seq,
                    kind: AckKind::PubRec,
                }),
                AckOutcome::ResendPubRel(pid) => {
                    out.push(Outgoing::PubRel(pid));
                    None
                }
                AckOutcome::Ignore => None,
            },
        }
    }

    /// PUBCOMP from the client: what to commit (persistent sessions), and in `out` what the
    /// freed window slot lets through.
    pub fn on_pubcomp(&mut self, packet_id: u16, out: &mut Vec<Outgoing>) -> Option<Commit> {
        match self.outbound.as_deref_mut()? {
            OutboundFlow::Local(f) => {
                if f.pubcomp(packet_id) {
                    f.refill(out);
                }
                None
            }
            OutboundFlow::Durable(f) => {
                let AckOutcome::Commit(seq) = f.pubcomp(packet_id) else {
                    return None;
                };
                f.refill(out);
                Some(Commit {
                    seq,
                    kind: AckKind::PubComp,
                })
            }
        }
    }

    /// A persistent session's message that this client may not read (ACL): the
    /// acknowledgements to commit so that it leaves the session's queue unsent, or `None` if it
    /// must be sent anyway (the client acknowledged it with PUBREC already: let it complete).
    pub fn skip(item: &Outbound) -> Option<Vec<Commit>> {
        if item.released {
            return None;
        }
        let kinds: &[AckKind] = match item.message.qos {
            QoS::AtMostOnce => &[],
            QoS::AtLeastOnce => &[AckKind::PubAck],
            QoS::ExactlyOnce => &[AckKind::PubRec, AckKind::PubComp],
        };
        Some(
            kinds
                .iter()
                .map(|kind| Commit {
                    seq: item.seq,
                    kind: *kind,
                })
                .collect(),
        )
    }

    /// Highest outbound sequence number written (persistent sessions; 0 before any).
    pub fn sent_up_to(&self) -> u64 {
        match self.outbound.as_deref() {
            Some(OutboundFlow::Durable(f)) => f.max_sent_seq(),
            _ => 0,
        }
    }

    // ---- end ----

    /// The client's DISCONNECT is committed (persistent sessions): the session is offline in the
    /// replicated state already.
    pub fn on_released(&mut self) {
        self.released = true;
    }

    /// What the store needs to hear when the connection ends.
    pub fn closed(&self) -> FlowClosed {
        FlowClosed {
            client_id: self.client_id.clone(),
            key: self.key,
            epoch: if self.released { 0 } else { self.epoch },
            persistent: self.persistent,
            sent_up_to: self.sent_up_to(),
            publishes_own_will: !self.persistent && self.epoch == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_state::packet_id_for;

    const LIMITS: FlowLimits = FlowLimits {
        max_inflight: 10,
        max_queued_messages: 100,
        max_queued_bytes: 1 << 20,
    };

    fn clean() -> ClientFlow {
        ClientFlow::new("c".into(), false, 0, 1)
    }

    fn persistent() -> ClientFlow {
        ClientFlow::new("p".into(), true, 3, 2)
    }

    fn window(n: usize) -> FlowLimits {
        FlowLimits {
            max_inflight: n,
            ..LIMITS
        }
    }

    fn m(qos: QoS, retain: bool) -> AppMessage {
        AppMessage {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos,
            retain,
            ..AppMessage::default()
        }
    }

    fn due(f: &mut ClientFlow) -> Vec<(AckKind, u16)> {
        let mut v = Vec::new();
        f.due_acks(|k, p| v.push((k, p)));
        v
    }

    fn item(seq: u64, qos: QoS, dup: bool, released: bool) -> Outbound {
        Outbound {
            seq,
            packet_id: packet_id_for(seq),
            dup,
            released,
            message: m(qos, false),
            subscription_ids: Vec::new(),
        }
    }

    fn token_of(i: &Inbound) -> u64 {
        match i {
            Inbound::Routed { token: Some(t) } | Inbound::Store { token: t, .. } => *t,
            other => panic!("no token: {other:?}"),
        }
    }

    #[test]
    fn persistent_qos2_goes_to_the_store_and_pubrec_waits_for_its_token() {
        let mut f = persistent();
        let i = f.on_publish(9, m(QoS::ExactlyOnce, false));
        let Inbound::Store {
            token, packet_id, ..
        } = i
        else {
            panic!("{i:?}");
        };
        assert_eq!(packet_id, 9);
        assert!(f.take_routes().is_empty(), "not routed by the connection");
        assert!(due(&mut f).is_empty(), "PUBREC waits for the commit");
        assert_eq!(f.owed_acks(), 1);
        // A repeat (DUP) goes to the store again: it decides, from the replicated state.
        let again = f.on_publish(9, m(QoS::ExactlyOnce, false));
        assert!(matches!(again, Inbound::Store { packet_id: 9, .. }));
        f.complete([token]);
        assert_eq!(due(&mut f), vec![(AckKind::PubRec, 9)]);
        f.complete([token_of(&again)]);
        assert_eq!(due(&mut f), vec![(AckKind::PubRec, 9)]);
        assert_eq!(f.owed_acks(), 0);
    }

    #[test]
    fn clean_repeated_qos2_id_is_acknowledged_without_routing_again() {
        let mut f = clean();
        let first = f.on_publish(4, m(QoS::ExactlyOnce, false));
        let t = token_of(&first);
        assert_eq!(f.take_routes().len(), 1);
        assert_eq!(
            f.on_publish(4, m(QoS::ExactlyOnce, false)),
            Inbound::Repeated
        );
        assert!(f.take_routes().is_empty(), "the repeat is not routed");
        assert!(
            due(&mut f).is_empty(),
            "the repeat's PUBREC follows the first one's"
        );
        f.complete([t]);
        assert_eq!(
            due(&mut f),
            vec![(AckKind::PubRec, 4), (AckKind::PubRec, 4)]
        );
        // Released: the id may be used for a new message, which is routed.
        assert_eq!(f.on_pubrel(4), Release::Complete);
        assert_eq!(due(&mut f), vec![(AckKind::PubComp, 4)]);
        assert!(matches!(
            f.on_publish(4, m(QoS::ExactlyOnce, false)),
            Inbound::Routed { token: Some(_) }
        ));
        assert_eq!(f.take_routes().len(), 1);
    }

    #[test]
    fn clean_pubrel_for_an_unknown_id_still_gets_pubcomp() {
        let mut f = clean();
        assert_eq!(f.on_pubrel(77), Release::Complete);
        assert_eq!(due(&mut f), vec![(AckKind::PubComp, 77)]);
    }

    #[test]
    fn persistent_pubrel_goes_to_the_store() {
        let mut f = persistent();
        let Release::Store { token } = f.on_pubrel(5) else {
            panic!("a persistent session's PUBREL is committed first");
        };
        assert!(due(&mut f).is_empty());
        f.complete([token]);
        assert_eq!(due(&mut f), vec![(AckKind::PubComp, 5)]);
    }

    #[test]
    fn acknowledgements_leave_in_arrival_order_whichever_completes_first() {
        let mut f = clean();
        let a = token_of(&f.on_publish(1, m(QoS::AtLeastOnce, false)));
        let b = token_of(&f.on_publish(2, m(QoS::ExactlyOnce, false)));
        assert_eq!(f.on_pubrel(3), Release::Complete);
        let c = token_of(&f.on_publish(4, m(QoS::AtLeastOnce, false)));
        f.complete([c, b]);
        assert!(due(&mut f).is_empty(), "PUBACK 1 is not done yet");
        f.complete([a]);
        assert_eq!(
            due(&mut f),
            vec![
                (AckKind::PubAck, 1),
                (AckKind::PubRec, 2),
                (AckKind::PubComp, 3),
                (AckKind::PubAck, 4)
            ]
        );
        assert_eq!(f.owed_acks(), 0);
    }

    #[test]
    fn non_retained_qos0_owes_nothing() {
        let mut f = clean();
        assert_eq!(
            f.on_publish(0, m(QoS::AtMostOnce, false)),
            Inbound::Routed { token: None }
        );
        assert_eq!(f.owed_acks(), 0);
        assert_eq!(f.take_routes().len(), 1);
    }

    #[test]
    fn retained_qos0_waits_for_its_commit_in_order_and_writes_nothing() {
        let mut f = clean();
        let r = f.on_publish(0, m(QoS::AtMostOnce, true));
        let Inbound::Routed { token: Some(r) } = r else {
            panic!("a retained QoS 0 PUBLISH needs a token: {r:?}");
        };
        let routes = f.take_routes();
        assert_eq!(routes[0].token, Some(r), "the router hands it to the store");
        assert_eq!(f.owed_acks(), 1, "counts against max_inflight_in");
        let q1 = token_of(&f.on_publish(8, m(QoS::AtLeastOnce, false)));
        f.complete([q1]);
        assert!(due(&mut f).is_empty(), "PUBACK 8 waits behind it");
        f.complete([r]);
        assert_eq!(due(&mut f), vec![(AckKind::PubAck, 8)]);
        assert_eq!(f.owed_acks(), 0);
        // A refused one (ACL, topic limits) is dropped: nothing to wait for.
        f.on_refused_publish(QoS::AtMostOnce, 0);
        assert_eq!(f.owed_acks(), 0);
    }

    #[test]
    fn refused_publishes_are_acknowledged_as_if_routed() {
        let mut f = clean();
        f.on_refused_publish(QoS::AtLeastOnce, 1);
        f.on_refused_publish(QoS::ExactlyOnce, 2);
        assert!(f.take_routes().is_empty());
        assert_eq!(
            due(&mut f),
            vec![(AckKind::PubAck, 1), (AckKind::PubRec, 2)]
        );
        assert_eq!(
            f.on_publish(2, m(QoS::ExactlyOnce, false)),
            Inbound::Repeated
        );
    }

    #[test]
    fn resumed_session_sends_pubrel_for_released_and_dup_publish_for_the_rest() {
        let mut f = persistent();
        let mut out = Vec::new();
        f.resume(
            vec![
                item(1, QoS::ExactlyOnce, true, true),
                item(2, QoS::AtLeastOnce, true, false),
                item(3, QoS::ExactlyOnce, true, false),
            ],
            &LIMITS,
            &mut out,
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], Outgoing::PubRel(1));
        assert!(matches!(
            out[1],
            Outgoing::Publish {
                packet_id: 2,
                dup: true,
                ..
            }
        ));
        assert!(matches!(
            out[2],
            Outgoing::Publish {
                packet_id: 3,
                dup: true,
                ..
            }
        ));
        out.clear();
        assert_eq!(
            f.on_pubcomp(1, &mut out),
            Some(Commit {
                seq: 1,
                kind: AckKind::PubComp
            })
        );
        assert_eq!(
            f.on_puback(2, &mut out),
            Some(Commit {
                seq: 2,
                kind: AckKind::PubAck
            })
        );
    }

    #[test]
    fn pubrel_to_the_client_waits_for_release_ready() {
        let mut f = persistent();
        let mut out = Vec::new();
        f.durable_deliver(
            vec![item(5, QoS::ExactlyOnce, false, false)],
            &LIMITS,
            &mut out,
        );
        assert!(matches!(out[0], Outgoing::Publish { packet_id: 5, .. }));
        out.clear();
        assert_eq!(
            f.on_pubrec(5, &mut out),
            Some(Commit {
                seq: 5,
                kind: AckKind::PubRec
            })
        );
        assert!(out.is_empty(), "no PUBREL before the PUBREC commits");
        assert_eq!(f.on_pubrec(5, &mut out), None, "a repeat while committing");
        assert!(out.is_empty());
        assert_eq!(f.on_pubcomp(5, &mut out), None, "no PUBREL sent yet");
        assert_eq!(f.release_ready(&[5]), vec![5]);
        assert_eq!(f.release_ready(&[5]), Vec::<u16>::new(), "once");
        assert_eq!(f.on_pubrec(5, &mut out), None);
        assert_eq!(
            out,
            vec![Outgoing::PubRel(5)],
            "a repeat after: PUBREL again"
        );
        assert_eq!(
            f.on_pubcomp(5, &mut Vec::new()),
            Some(Commit {
                seq: 5,
                kind: AckKind::PubComp
            })
        );
    }

    #[test]
    fn sent_up_to_is_the_highest_sequence_written() {
        let mut f = persistent();
        assert_eq!(f.sent_up_to(), 0);
        let mut out = Vec::new();
        f.durable_deliver(
            vec![
                item(4, QoS::AtLeastOnce, false, false),
                item(5, QoS::AtLeastOnce, false, false),
                item(6, QoS::AtLeastOnce, false, false),
            ],
            &window(2),
            &mut out,
        );
        assert_eq!(out.len(), 2, "window of two");
        assert_eq!(f.sent_up_to(), 5, "6 is queued, not written");
        out.clear();
        f.on_puback(4, &mut out);
        assert_eq!(out.len(), 1, "the freed slot lets 6 through");
        assert_eq!(f.sent_up_to(), 6);
        assert_eq!(f.closed().sent_up_to, 6);
    }

    #[test]
    fn clean_offer_uses_the_local_flow_and_persistent_downgrades() {
        let mut c = clean();
        assert!(matches!(
            c.offer(m(QoS::AtLeastOnce, false), &LIMITS),
            Offer::Send(Outgoing::Publish { packet_id: 1, .. })
        ));
        let mut out = Vec::new();
        assert_eq!(c.on_pubrec(1, &mut out), None, "QoS 1 in flight: ignored");
        assert_eq!(c.on_puback(1, &mut out), None);
        assert!(matches!(
            c.offer(m(QoS::AtMostOnce, true), &LIMITS),
            Offer::AtMostOnce(AppMessage { retain: true, .. })
        ));
        let mut p = persistent();
        assert!(matches!(
            p.offer(m(QoS::ExactlyOnce, true), &LIMITS),
            Offer::AtMostOnce(AppMessage {
                qos: QoS::AtMostOnce,
                retain: true,
                ..
            })
        ));
        assert_eq!(p.sent_up_to(), 0);
    }

    #[test]
    fn clean_pubrec_gets_pubrel_at_once() {
        let mut c = clean();
        c.offer(m(QoS::ExactlyOnce, false), &LIMITS);
        let mut out = Vec::new();
        assert_eq!(c.on_pubrec(1, &mut out), None);
        assert_eq!(out, vec![Outgoing::PubRel(1)]);
        out.clear();
        assert_eq!(c.on_pubcomp(1, &mut out), None);
    }

    #[test]
    fn skipped_messages_commit_their_acknowledgements_unless_released() {
        assert_eq!(
            ClientFlow::skip(&item(3, QoS::ExactlyOnce, false, false)),
            Some(vec![
                Commit {
                    seq: 3,
                    kind: AckKind::PubRec
                },
                Commit {
                    seq: 3,
                    kind: AckKind::PubComp
                }
            ])
        );
        assert_eq!(
            ClientFlow::skip(&item(3, QoS::ExactlyOnce, false, true)),
            None
        );
    }

    #[test]
    fn close_reports_epoch_zero_once_released() {
        let mut p = persistent();
        let c = p.closed();
        assert_eq!(
            (c.epoch, c.persistent, c.publishes_own_will),
            (3, true, false)
        );
        p.on_released();
        assert_eq!(p.closed().epoch, 0);
        let c = clean().closed();
        assert_eq!((c.epoch, c.publishes_own_will), (0, true));
    }
}
