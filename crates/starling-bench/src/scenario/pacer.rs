//! Precise wake-ups for open-loop publishers.
//!
//! Tokio's timer has a 1 ms resolution and its worker threads sleep in `epoll_wait` with a
//! millisecond timeout, so a publisher that sleeps until its next scheduled send wakes up to
//! ~2 ms late; with latency measured from the *scheduled* time, that lateness would be charged to
//! the broker. The pacer is one plain thread that keeps every publisher's next due time in a heap
//! and sleeps on a channel with a nanosecond timeout (`recv_timeout`, a futex wait), then wakes
//! the publisher through its `Notify`:
//!
//! ```text
//! publisher ──(due ns, Notify)──▶ channel ──▶ pacer thread: heap of due times
//!     ▲                                          │ recv_timeout(until the earliest)
//!     └──────────── notify_one() at due ◀────────┘
//! ```
//!
//! The thread ends when every publisher has dropped its sender.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One wake-up request.
struct Due {
    at_ns: u64,
    seq: u64,
    notify: Arc<Notify>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at_ns, self.seq) == (o.at_ns, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at_ns, self.seq).cmp(&(o.at_ns, o.seq))
    }
}

/// Handle publishers use to ask for a wake-up.
#[derive(Clone, Debug)]
pub(crate) struct PacerHandle {
    tx: Sender<(u64, Arc<Notify>)>,
}

impl PacerHandle {
    /// Asks for `notify.notify_one()` at `at_ns` (ns since the run's clock origin).
    pub(crate) fn wake_at(&self, at_ns: u64, notify: &Arc<Notify>) {
        let _ = self.tx.send((at_ns, notify.clone()));
    }
}

/// Starts the pacer thread; `epoch` is the run's clock origin.
pub(crate) fn start(epoch: Instant) -> PacerHandle {
    let (tx, rx) = channel::<(u64, Arc<Notify>)>();
    std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            let mut heap: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
            let mut seq = 0u64;
            let now_ns = || epoch.elapsed().as_nanos() as u64;
            loop {
                let wait = heap.peek().map_or(Duration::from_millis(50), |Reverse(d)| {
                    Duration::from_nanos(d.at_ns.saturating_sub(now_ns()))
                });
                match rx.recv_timeout(wait) {
                    Ok((at_ns, notify)) => {
                        seq += 1;
                        heap.push(Reverse(Due { at_ns, seq, notify }));
                        while let Ok((at_ns, notify)) = rx.try_recv() {
                            seq += 1;
                            heap.push(Reverse(Due { at_ns, seq, notify }));
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    // Every publisher is done.
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                let now = now_ns();
                while heap.peek().is_some_and(|Reverse(d)| d.at_ns <= now) {
                    if let Some(Reverse(d)) = heap.pop() {
                        d.notify.notify_one();
                    }
                }
            }
        })
        .map_or_else(
            |_| {
                // No thread: publishers fall back to tokio timers (see flow.rs).
                let (tx, _) = channel();
                PacerHandle { tx }
            },
            |_| PacerHandle { tx },
        )
}
