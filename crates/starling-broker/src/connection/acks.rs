//! Acknowledgements a connection owes its client, released in the order the client's packets
//! arrived (MQTT 3.1.1 §4.6), whichever path (router, commit) completes them first.

use std::collections::VecDeque;

use crate::messages::AckKind;

struct Pending {
    token: u64,
    kind: AckKind,
    packet_id: u16,
    done: bool,
}

/// The ordered queue of owed acknowledgements.
#[derive(Default)]
pub(crate) struct PendingAcks {
    queue: VecDeque<Pending>,
    next_token: u64,
}

impl PendingAcks {
    /// Owes `kind` for `packet_id` once the returned token completes.
    pub(crate) fn push(&mut self, kind: AckKind, packet_id: u16) -> u64 {
        self.next_token += 1;
        self.queue.push_back(Pending {
            token: self.next_token,
            kind,
            packet_id,
            done: false,
        });
        self.next_token
    }

    /// Owes `kind` for `packet_id` with nothing to wait for (still after earlier ones).
    pub(crate) fn push_done(&mut self, kind: AckKind, packet_id: u16) {
        let t = self.push(kind, packet_id);
        self.complete(t);
    }

    /// Marks a token done.
    pub(crate) fn complete(&mut self, token: u64) {
        if let Ok(i) = self.queue.binary_search_by_key(&token, |p| p.token) {
            self.queue[i].done = true;
        }
    }

    /// Pops the acknowledgements that can be sent now.
    pub(crate) fn ready(&mut self, mut f: impl FnMut(AckKind, u16)) {
        while self.queue.front().is_some_and(|p| p.done) {
            if let Some(p) = self.queue.pop_front() {
                f(p.kind, p.packet_id);
            }
        }
    }

    /// Acknowledgements owed.
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
}
