//! Acknowledgements a connection owes its client, released in the order the client's packets
//! arrived (MQTT 3.1.1 §4.6), whichever path (router, commit) completes them first.
//!
//! An entry may also owe nothing to write ([`PendingAcks::push_silent`]): a retained QoS 0
//! PUBLISH waits for its commit like a QoS 1/2 one (it counts against `max_inflight_in`, so the
//! connection stops reading while too many are outstanding), but the client expects no answer.

use std::collections::VecDeque;

use crate::messages::AckKind;

/// One owed entry.
struct Pending {
    /// What completes it ([`PendingAcks::complete`]); increasing along the queue.
    token: u64,
    /// The acknowledgement to write once due; `None`: nothing to write.
    kind: Option<AckKind>,
    /// The packet id the acknowledgement carries.
    packet_id: u16,
    /// Completed; written (or dropped, if silent) once every earlier entry is too.
    done: bool,
    /// 5.0: the reason code the acknowledgement carries.
    note: AckNote,
}

/// What a 5.0 acknowledgement says besides success.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AckNote {
    /// 0x00.
    #[default]
    Success,
    /// 0x10: the message reached no subscriber (PUBACK / PUBREC of a routed PUBLISH).
    NoMatchingSubscribers,
    /// 0x87: the ACL refused the PUBLISH.
    NotAuthorized,
}

/// The ordered queue of owed acknowledgements.
#[derive(Default)]
pub(crate) struct PendingAcks {
    /// Entries in arrival order.
    queue: VecDeque<Pending>,
    /// The last token handed out (tokens are unique per connection).
    next_token: u64,
}

impl PendingAcks {
    /// Owes `kind` for `packet_id` once the returned token completes.
    pub(crate) fn push(&mut self, kind: AckKind, packet_id: u16) -> u64 {
        self.push_entry(Some(kind), packet_id)
    }

    /// Holds a place in the queue until the returned token completes, writing nothing then.
    pub(crate) fn push_silent(&mut self) -> u64 {
        self.push_entry(None, 0)
    }

    fn push_entry(&mut self, kind: Option<AckKind>, packet_id: u16) -> u64 {
        self.next_token += 1;
        self.queue.push_back(Pending {
            token: self.next_token,
            kind,
            packet_id,
            done: false,
            note: AckNote::Success,
        });
        self.next_token
    }

    /// Owes `kind` for `packet_id` with nothing to wait for (still after earlier ones).
    pub(crate) fn push_done(&mut self, kind: AckKind, packet_id: u16) {
        let t = self.push(kind, packet_id);
        self.complete(t);
    }

    /// Owes `kind` for `packet_id`, refused as not authorized, with nothing to wait for.
    pub(crate) fn push_denied(&mut self, kind: AckKind, packet_id: u16) {
        let t = self.push(kind, packet_id);
        if let Some(p) = self.queue.back_mut() {
            p.note = AckNote::NotAuthorized;
        }
        self.complete(t);
    }

    /// Marks a token as having reached no subscriber (before it completes).
    pub(crate) fn no_subscribers(&mut self, token: u64) {
        if let Ok(i) = self.queue.binary_search_by_key(&token, |p| p.token) {
            self.queue[i].note = AckNote::NoMatchingSubscribers;
        }
    }

    /// Marks a token done.
    pub(crate) fn complete(&mut self, token: u64) {
        if let Ok(i) = self.queue.binary_search_by_key(&token, |p| p.token) {
            self.queue[i].done = true;
        }
    }

    /// Pops the acknowledgements that can be sent now (silent entries are popped unseen).
    pub(crate) fn ready(&mut self, mut f: impl FnMut(AckKind, u16)) {
        self.ready_with(|kind, packet_id, _| f(kind, packet_id));
    }

    /// As [`PendingAcks::ready`], with the reason code of each.
    pub(crate) fn ready_with(&mut self, mut f: impl FnMut(AckKind, u16, AckNote)) {
        while self.queue.front().is_some_and(|p| p.done) {
            if let Some(Pending {
                kind: Some(kind),
                packet_id,
                note,
                ..
            }) = self.queue.pop_front()
            {
                f(kind, packet_id, note);
            }
        }
    }

    /// Entries owed, silent ones included.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_in_arrival_order_even_when_completed_out_of_order() {
        let mut a = PendingAcks::default();
        let t1 = a.push(AckKind::PubAck, 1);
        let t2 = a.push(AckKind::PubRec, 2);
        a.push_done(AckKind::PubComp, 3);
        let mut sent = Vec::new();
        a.complete(t2);
        a.ready(|k, p| sent.push((k, p)));
        assert!(sent.is_empty());
        a.complete(t1);
        a.ready(|k, p| sent.push((k, p)));
        assert_eq!(
            sent,
            vec![
                (AckKind::PubAck, 1),
                (AckKind::PubRec, 2),
                (AckKind::PubComp, 3)
            ]
        );
        assert_eq!(a.len(), 0);
    }

    #[test]
    fn a_silent_entry_holds_its_place_and_writes_nothing() {
        let mut a = PendingAcks::default();
        let silent = a.push_silent();
        a.push_done(AckKind::PubAck, 7);
        assert_eq!(a.len(), 2);
        let mut sent = Vec::new();
        a.ready(|k, p| sent.push((k, p)));
        assert!(sent.is_empty(), "PUBACK 7 waits behind the silent entry");
        a.complete(silent);
        a.ready(|k, p| sent.push((k, p)));
        assert_eq!(sent, vec![(AckKind::PubAck, 7)]);
        assert_eq!(a.len(), 0);
    }
}
