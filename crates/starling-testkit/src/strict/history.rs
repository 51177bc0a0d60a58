//! The client's history: every connection, packet, completion and delivery with its time, and
//! the state the test side reads while the driver runs.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use starling_codec::{Packet, QoS};
use tokio::sync::watch;

use super::Held;

/// A message handed to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// When.
    pub at: Instant,
    /// Node of the connection it arrived on.
    pub node: SocketAddr,
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS as received.
    pub qos: QoS,
    /// DUP flag as received.
    pub dup: bool,
    /// RETAIN flag as received.
    pub retain: bool,
    /// Packet id (0 for QoS 0).
    pub packet_id: u16,
}

/// One entry of the client's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// When.
    pub at: Instant,
    /// What.
    pub event: Event,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A connection attempt to a node.
    Connecting(SocketAddr),
    /// CONNACK 0 from a node.
    Connected {
        /// The node.
        node: SocketAddr,
        /// Session-present flag.
        session_present: bool,
    },
    /// A node refused or did not answer in time.
    Refused {
        /// The node.
        node: SocketAddr,
        /// CONNACK code, IO error or timeout.
        why: String,
    },
    /// The connection ended (socket error, close, silence, or
    /// [`Release::Reconnect`](super::Release::Reconnect)).
    Lost {
        /// The node.
        node: SocketAddr,
        /// Why.
        why: String,
        /// The last time anything was read on the connection (a PINGRESP too): it is known to
        /// have worked until then, while a silent node is noticed only a response timeout
        /// later.
        last_read: Instant,
    },
    /// A resumed session (not the first connection) was not present on the broker: the broker
    /// lost it. Never expected in a cluster with a majority up.
    SessionLost(SocketAddr),
    /// A packet written (PUBLISH, PUBREL, PUBACK, PUBREC, PUBCOMP, SUBSCRIBE; not PINGREQ).
    Sent(Packet),
    /// A packet read (not PINGRESP).
    Received(Packet),
    /// One of our publishes completed.
    Completed {
        /// Packet id.
        packet_id: u16,
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
    },
    /// A message delivered to the application.
    Delivered {
        /// Packet id.
        packet_id: u16,
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
    },
    /// A QoS 2 PUBLISH whose id awaits PUBREL: answered with PUBREC, not delivered again.
    DuplicateSuppressed(u16),
    /// PUBREL for an id not awaiting one: answered with PUBCOMP.
    UnknownPubRel(u16),
    /// An acknowledgement for nothing we have in flight (ignored).
    UnexpectedAck(Packet),
    /// The client paused at a stage.
    Paused(Held),
}

/// What the test side and the driver share.
#[derive(Default)]
pub(super) struct Observed {
    /// Everything that happened, for the tests' checkers.
    pub(super) history: Vec<Record>,
    /// The messages handed to the application, in order (the checkers' main input).
    pub(super) deliveries: Vec<Delivery>,
    /// The node of the current connection: tests aim faults at it.
    pub(super) connected: Option<SocketAddr>,
    /// Outbound messages in flight or queued.
    pub(super) outbound: usize,
    /// Inbound QoS 2 ids awaiting PUBREL.
    pub(super) inbound: Vec<u16>,
    /// Why the driver gave up, once it did: every later call reports it.
    pub(super) fatal: Option<String>,
}

pub(super) struct Inner {
    /// The state both sides read and write, behind one lock held only briefly.
    pub(super) observed: Mutex<Observed>,
    /// Where the driver is paused by a stage hook; the handle waits on it.
    pub(super) held: watch::Sender<Option<Held>>,
}

impl Inner {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn record(&self, event: Event) {
        self.lock().history.push(Record {
            at: Instant::now(),
            event,
        });
    }
}
