//! The run-ahead bound.
//!
//! A *flow* is a set of publishers and the subscribers that receive all of them (fan-in: P
//! publishers, one subscriber; fan-out: one publisher, S subscribers; p2p: one pair per flow;
//! qos2: P publishers, one subscriber). Its [`Gate`] counts the messages the flow's publishers
//! have *reserved* (about to send) and, per subscriber, the distinct messages it has received.
//!
//! The bound is on the **total**, not per publisher sequence: publishers may send only while
//!
//! ```text
//! reserved - min over subscribers(received) - written_off  <  max_ahead
//! ```
//!
//! so at most `max_ahead` messages of the flow are anywhere between the publishers and the
//! slowest subscriber (client buffers, sockets, broker queues). With `max_ahead` no larger than
//! the broker's per-session queue plus in-flight window, a correct broker never has to drop a
//! message, and a QoS 0 figure measures forwarding rather than the drop policy.
//!
//! A lost message would hold the gap open forever; a publisher that waits longer than `--stall`
//! *writes the gap off* (the window restarts from what was received) and counts a stall. The
//! run's lost count says what really went missing.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Shared counters of one flow.
#[derive(Debug)]
pub struct Gate {
    max_ahead: u64,
    reserved: AtomicU64,
    written_off: AtomicU64,
    received: Box<[AtomicU64]>,
    notify: Notify,
    /// Highest `reserved - min(received)` seen when reserving (diagnostics).
    peak: AtomicU64,
}

impl Gate {
    /// A gate for `subscribers` subscribers (at least one) with the given bound (at least one).
    pub fn new(subscribers: usize, max_ahead: u64) -> Gate {
        Gate {
            max_ahead: max_ahead.max(1),
            reserved: AtomicU64::new(0),
            written_off: AtomicU64::new(0),
            received: (0..subscribers.max(1)).map(|_| AtomicU64::new(0)).collect(),
            notify: Notify::new(),
            peak: AtomicU64::new(0),
        }
    }

    fn floor(&self) -> u64 {
        let min = self
            .received
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        min + self.written_off.load(Ordering::Acquire)
    }

    /// How many messages may be sent right now.
    pub fn available(&self) -> u64 {
        (self.floor() + self.max_ahead).saturating_sub(self.reserved.load(Ordering::Acquire))
    }

    /// Messages reserved (about to be or already sent) so far.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Highest number of messages seen outstanding (reserved but not received by the slowest
    /// subscriber) right after a reservation.
    pub fn peak_outstanding(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Reserves up to `want` messages; returns how many were granted (0: wait).
    pub fn try_reserve(&self, want: u64) -> u64 {
        if want == 0 {
            return 0;
        }
        let limit = self.floor() + self.max_ahead;
        let mut r = self.reserved.load(Ordering::Acquire);
        loop {
            let k = want.min(limit.saturating_sub(r));
            if k == 0 {
                return 0;
            }
            match self
                .reserved
                .compare_exchange_weak(r, r + k, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let min = self.floor() - self.written_off.load(Ordering::Acquire);
                    self.peak
                        .fetch_max((r + k).saturating_sub(min), Ordering::Relaxed);
                    return k;
                }
                Err(now) => r = now,
            }
        }
    }

    /// Subscriber `index` received `n` more distinct messages of this flow.
    pub fn record_received(&self, index: usize, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(r) = self.received.get(index) {
            r.fetch_add(n, Ordering::AcqRel);
        }
        self.notify.notify_waiters();
    }

    /// Forgives the current gap: the window restarts from what the slowest subscriber has.
    pub fn write_off(&self) {
        let gap = self
            .reserved
            .load(Ordering::Acquire)
            .saturating_sub(self.floor());
        self.written_off.fetch_add(gap, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// The notification publishers wait on (enable it, re-check [`Gate::available`], then
    /// await it).
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_follows_the_slowest_subscriber() {
        let g = Gate::new(2, 10);
        assert_eq!(g.try_reserve(4), 4);
        assert_eq!(g.try_reserve(100), 6);
        assert_eq!(g.try_reserve(1), 0);
        g.record_received(0, 10);
        assert_eq!(g.available(), 0, "subscriber 1 has nothing yet");
        g.record_received(1, 3);
        assert_eq!(g.try_reserve(100), 3);
        g.write_off();
        assert_eq!(g.available(), 10);
    }
}
