//! Proposals a node makes right after it started, before it has learnt who leads.
//!
//! A restarted node replays its log and is ready before the first heartbeat tells it who the
//! leader is, and raft-rs drops a proposal made while no leader is known. What the node proposes
//! in that moment used to fail: its own `NodeDown` (the sessions it served before the crash go
//! offline and their wills are published), which nothing retries, so those wills were never
//! published when the node came back within `node_down_secs`; and the CONNECTs of clients
//! failing over to it (CONNACK 3 although there is a leader).
//!
//! So, until a leader is known for the first time, proposals are held in order, then proposed
//! in that order; if the startup window closes first, they are refused as before. Afterwards
//! (a leader was seen, or the window closed) a proposal without a leader is refused at once
//! again, so that the minority side of a partition still fails visibly. Nothing held was ever
//! handed to raft-rs, so releasing it cannot make anything commit twice.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// What the end of the startup window does with the held proposals.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Released {
    /// A leader is known: propose them, in this order.
    Propose(Vec<Bytes>),
    /// No leader within the window: refuse them.
    Refuse(Vec<Bytes>),
}

/// The startup window and the proposals held in it.
#[derive(Debug)]
pub(crate) struct StartupHold {
    /// `None` once closed.
    closes_at: Option<Instant>,
    held: VecDeque<Bytes>,
    cap: usize,
}

impl StartupHold {
    /// A window of `window` from `now`, holding at most `cap` proposals (the next ones are
    /// proposed, hence refused, at once).
    pub(crate) fn new(now: Instant, window: Duration, cap: usize) -> StartupHold {
        StartupHold {
            closes_at: Some(now + window),
            held: VecDeque::new(),
            cap,
        }
    }

    /// A proposal while `leader` (0: none) is known: `None` if it is held, else it is given
    /// back to be proposed now. Call [`StartupHold::release`] first, so that held proposals go
    /// before it.
    pub(crate) fn offer(&mut self, leader: u64, data: Bytes) -> Option<Bytes> {
        if self.closes_at.is_some() && leader == 0 && self.held.len() < self.cap {
            self.held.push_back(data);
            None
        } else {
            Some(data)
        }
    }

    /// Closes the window when a leader is known or at its end; returns what to do with what
    /// was held. `None` while the window stays open, and once it is closed.
    pub(crate) fn release(&mut self, leader: u64, now: Instant) -> Option<Released> {
        let closes_at = self.closes_at?;
        if leader != 0 {
            self.closes_at = None;
            return Some(Released::Propose(self.held.drain(..).collect()));
        }
        if now >= closes_at {
            self.closes_at = None;
            return Some(Released::Refuse(self.held.drain(..).collect()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn held_until_a_leader_is_known_then_proposed_in_order() {
        let t = Instant::now();
        let mut h = StartupHold::new(t, Duration::from_secs(5), 10);
        assert_eq!(h.offer(0, b("node-down")), None);
        assert_eq!(h.offer(0, b("connect")), None);
        assert_eq!(h.release(0, t + Duration::from_secs(1)), None, "still open");
        assert_eq!(
            h.release(3, t + Duration::from_secs(1)),
            Some(Released::Propose(vec![b("node-down"), b("connect")]))
        );
        // Closed: without a leader, proposals go through (and are refused by raft-rs) at once.
        assert_eq!(h.offer(0, b("later")), Some(b("later")));
        assert_eq!(h.release(0, t + Duration::from_secs(9)), None);
    }

    #[test]
    fn refused_when_no_leader_comes_in_time() {
        let t = Instant::now();
        let mut h = StartupHold::new(t, Duration::from_secs(5), 10);
        assert_eq!(h.offer(0, b("a")), None);
        assert_eq!(
            h.release(0, t + Duration::from_secs(5)),
            Some(Released::Refuse(vec![b("a")]))
        );
        assert_eq!(h.offer(0, b("b")), Some(b("b")));
    }

    #[test]
    fn a_leader_known_from_the_start_holds_nothing_and_the_hold_is_bounded() {
        let t = Instant::now();
        let mut h = StartupHold::new(t, Duration::from_secs(5), 1);
        assert_eq!(h.offer(2, b("a")), Some(b("a")));
        let mut h = StartupHold::new(t, Duration::from_secs(5), 1);
        assert_eq!(h.offer(0, b("a")), None);
        assert_eq!(h.offer(0, b("b")), Some(b("b")), "over the cap");
    }
}
