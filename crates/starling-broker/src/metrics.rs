//! Counters. Each worker thread has its own cache-line-aligned block, so the hot path never
//! contends on a shared atomic; readers add the blocks up.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Counters of one thread.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Counters {
    /// Connections accepted (before CONNECT).
    pub connections_opened: AtomicU64,
    /// Connections closed.
    pub connections_closed: AtomicU64,
    /// Clients that completed CONNECT.
    pub clients_connected: AtomicU64,
    /// Clients that left after CONNECT.
    pub clients_disconnected: AtomicU64,
    /// PUBLISH received, by QoS.
    pub publish_received: [AtomicU64; 3],
    /// PUBLISH sent, by QoS.
    pub publish_sent: [AtomicU64; 3],
    /// Packets received.
    pub packets_received: AtomicU64,
    /// Packets sent.
    pub packets_sent: AtomicU64,
    /// Bytes received.
    pub bytes_received: AtomicU64,
    /// Bytes sent.
    pub bytes_sent: AtomicU64,
    /// Messages dropped: QoS 0 to a full write buffer.
    pub dropped_qos0: AtomicU64,
    /// Messages dropped: session queue full.
    pub dropped_queue_full: AtomicU64,
    /// Messages dropped: a connection's mailbox was full.
    pub dropped_mailbox_full: AtomicU64,
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}

/// A sum of all threads' counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// See [`Counters::connections_opened`].
    pub connections_opened: u64,
    /// See [`Counters::connections_closed`].
    pub connections_closed: u64,
    /// See [`Counters::clients_connected`].
    pub clients_connected: u64,
    /// See [`Counters::clients_disconnected`].
    pub clients_disconnected: u64,
    /// See [`Counters::publish_received`].
    pub publish_received: [u64; 3],
    /// See [`Counters::publish_sent`].
    pub publish_sent: [u64; 3],
    /// See [`Counters::packets_received`].
    pub packets_received: u64,
    /// See [`Counters::packets_sent`].
    pub packets_sent: u64,
    /// See [`Counters::bytes_received`].
    pub bytes_received: u64,
    /// See [`Counters::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`Counters::dropped_qos0`].
    pub dropped_qos0: u64,
    /// See [`Counters::dropped_queue_full`].
    pub dropped_queue_full: u64,
    /// See [`Counters::dropped_mailbox_full`].
    pub dropped_mailbox_full: u64,
    /// See [`Counters::protocol_errors`].
    pub protocol_errors: u64,
}

impl Totals {
    /// Clients connected now.
    pub fn clients_online(&self) -> u64 {
        self.clients_connected
            .saturating_sub(self.clients_disconnected)
    }
}

/// All counter blocks of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    blocks: Mutex<Vec<Arc<Counters>>>,
}

impl Metrics {
    /// A new registry.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// A new block for one thread (or component).
    pub fn block(&self) -> Arc<Counters> {
        let c = Arc::new(Counters::default());
        self.blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c.clone());
        c
    }

    /// Sums every block.
    pub fn totals(&self) -> Totals {
        let blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = Totals::default();
        let g = |a: &AtomicU64| a.load(Relaxed);
        for b in blocks.iter() {
            t.connections_opened += g(&b.connections_opened);
            t.connections_closed += g(&b.connections_closed);
            t.clients_connected += g(&b.clients_connected);
            t.clients_disconnected += g(&b.clients_disconnected);
            for q in 0..3 {
                t.publish_received[q] += g(&b.publish_received[q]);
                t.publish_sent[q] += g(&b.publish_sent[q]);
            }
            t.packets_received += g(&b.packets_received);
            t.packets_sent += g(&b.packets_sent);
            t.bytes_received += g(&b.bytes_received);
            t.bytes_sent += g(&b.bytes_sent);
            t.dropped_qos0 += g(&b.dropped_qos0);
            t.dropped_queue_full += g(&b.dropped_queue_full);
            t.dropped_mailbox_full += g(&b.dropped_mailbox_full);
            t.protocol_errors += g(&b.protocol_errors);
        }
        t
    }
}
