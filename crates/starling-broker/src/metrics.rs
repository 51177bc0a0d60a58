//! Counters. Each worker thread has its own cache-line-aligned block, so the hot path never
//! contends on a shared atomic; readers add the blocks up.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// A configured limit that refused, dropped or paused something. Each has its own counter and
/// is named by its configuration key (in logs and in `/metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Limit {
    /// A connection refused at accept: `max_connections` open already.
    MaxConnections,
    /// A connection refused at accept: its IP has `max_connections_per_ip` open.
    MaxConnectionsPerIp,
    /// A connection closed for not sending CONNECT (or finishing its TLS / WebSocket
    /// handshake) within `connect_timeout_secs`.
    ConnectTimeout,
    /// A connection closed for announcing a packet above `max_packet_size`.
    MaxPacketSize,
    /// Reading from a client paused: `max_inflight_in` acknowledgements owed.
    MaxInflightIn,
    /// A message dropped: session queue at `max_queued_messages`.
    MaxQueuedMessages,
    /// A message dropped: session queue at `max_queued_bytes`.
    MaxQueuedBytes,
    /// A QoS 0 message dropped: write buffer at `max_write_buffer`.
    MaxWriteBuffer,
    /// A PUBLISH dropped or a filter refused: longer than `max_topic_length`.
    MaxTopicLength,
    /// A PUBLISH dropped or a filter refused: more levels than `max_topic_levels`.
    MaxTopicLevels,
    /// A filter refused: the client has `max_subscriptions`.
    MaxSubscriptions,
    /// Reading from a client paused: above `max_publish_rate`.
    MaxPublishRate,
    /// A connection refused (CONNACK 3): `max_pending_auth` verifications waiting.
    MaxPendingAuth,
}

impl Limit {
    /// Number of limits.
    pub const COUNT: usize = 13;
    /// Every limit, in counter order.
    pub const ALL: [Limit; Limit::COUNT] = [
        Limit::MaxConnections,
        Limit::MaxConnectionsPerIp,
        Limit::ConnectTimeout,
        Limit::MaxPacketSize,
        Limit::MaxInflightIn,
        Limit::MaxQueuedMessages,
        Limit::MaxQueuedBytes,
        Limit::MaxWriteBuffer,
        Limit::MaxTopicLength,
        Limit::MaxTopicLevels,
        Limit::MaxSubscriptions,
        Limit::MaxPublishRate,
        Limit::MaxPendingAuth,
    ];

    /// The configuration key.
    pub fn key(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::MaxConnectionsPerIp => "max_connections_per_ip",
            Limit::ConnectTimeout => "connect_timeout_secs",
            Limit::MaxPacketSize => "max_packet_size",
            Limit::MaxInflightIn => "max_inflight_in",
            Limit::MaxQueuedMessages => "max_queued_messages",
            Limit::MaxQueuedBytes => "max_queued_bytes",
            Limit::MaxWriteBuffer => "max_write_buffer",
            Limit::MaxTopicLength => "max_topic_length",
            Limit::MaxTopicLevels => "max_topic_levels",
            Limit::MaxSubscriptions => "max_subscriptions",
            Limit::MaxPublishRate => "max_publish_rate",
            Limit::MaxPendingAuth => "max_pending_auth",
        }
    }

    /// The limit named by a configuration key.
    pub fn from_key(key: &str) -> Option<Limit> {
        Limit::ALL.into_iter().find(|l| l.key() == key)
    }
}

/// A security decision worth counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum SecurityEvent {
    /// CONNACK 4: unknown user, wrong or missing password, missing client certificate identity.
    BadCredentials,
    /// CONNACK 5: anonymous client refused, will topic not allowed, session bound to another
    /// user.
    NotAuthorized,
    /// A PUBLISH dropped by the ACL.
    PublishDenied,
    /// A subscription refused by the ACL.
    SubscribeDenied,
    /// A message (live, retained or will) not delivered because the ACL does not let the
    /// subscriber read its topic.
    DeliveryDenied,
    /// A TLS handshake failed.
    TlsHandshakeFailed,
    /// A WebSocket upgrade failed.
    WebSocketHandshakeFailed,
}

impl SecurityEvent {
    /// Number of events.
    pub const COUNT: usize = 7;
    /// Every event, in counter order.
    pub const ALL: [SecurityEvent; SecurityEvent::COUNT] = [
        SecurityEvent::BadCredentials,
        SecurityEvent::NotAuthorized,
        SecurityEvent::PublishDenied,
        SecurityEvent::SubscribeDenied,
        SecurityEvent::DeliveryDenied,
        SecurityEvent::TlsHandshakeFailed,
        SecurityEvent::WebSocketHandshakeFailed,
    ];

    /// Name in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            SecurityEvent::BadCredentials => "bad_credentials",
            SecurityEvent::NotAuthorized => "not_authorized",
            SecurityEvent::PublishDenied => "publish_denied",
            SecurityEvent::SubscribeDenied => "subscribe_denied",
            SecurityEvent::DeliveryDenied => "delivery_denied",
            SecurityEvent::TlsHandshakeFailed => "tls_handshake_failed",
            SecurityEvent::WebSocketHandshakeFailed => "websocket_handshake_failed",
        }
    }
}

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
    /// Times each [`Limit`] bit.
    pub limits: [AtomicU64; Limit::COUNT],
    /// [`SecurityEvent`]s.
    pub security: [AtomicU64; SecurityEvent::COUNT],
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Counts one hit of `limit`.
    #[inline]
    pub fn limit(&self, limit: Limit) {
        self.limits[limit as usize].fetch_add(1, Relaxed);
    }

    /// Counts one security event.
    #[inline]
    pub fn security(&self, e: SecurityEvent) {
        self.security[e as usize].fetch_add(1, Relaxed);
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
    /// See [`Counters::limits`].
    pub limits: [u64; Limit::COUNT],
    /// See [`Counters::security`].
    pub security: [u64; SecurityEvent::COUNT],
}

impl Totals {
    /// Hits of each limit, by configuration key.
    pub fn limit_hits(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Limit::ALL
            .iter()
            .map(|l| (l.key(), self.limits[*l as usize]))
    }

    /// Count of each security event, by name.
    pub fn security_events(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        SecurityEvent::ALL
            .iter()
            .map(|e| (e.name(), self.security[*e as usize]))
    }

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
            for (t, c) in t.limits.iter_mut().zip(&b.limits) {
                *t += g(c);
            }
            for (t, c) in t.security.iter_mut().zip(&b.security) {
                *t += g(c);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_events_are_listed_in_counter_order() {
        for (i, l) in Limit::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i);
            assert_eq!(Limit::from_key(l.key()), Some(*l));
        }
        for (i, e) in SecurityEvent::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
        let m = Metrics::new();
        m.block().limit(Limit::MaxSubscriptions);
        m.block().security(SecurityEvent::PublishDenied);
        let t = m.totals();
        assert_eq!(
            t.limit_hits().find(|(k, _)| *k == "max_subscriptions"),
            Some(("max_subscriptions", 1))
        );
        assert_eq!(
            t.security_events().find(|(k, _)| *k == "publish_denied"),
            Some(("publish_denied", 1))
        );
    }
}
