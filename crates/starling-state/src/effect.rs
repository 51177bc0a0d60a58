//! What applying a log entry asks the node to do: replies to waiting requesters, deliveries to
//! connected clients, router updates. The state machine never does IO itself; the node that owns
//! the connection (or the router) acts on the effects that concern it.

use std::sync::Arc;

use starling_codec::QoS;

use crate::message::Message;
use crate::session::{Outbound, Owner, SubOptions};
use crate::state::StateConfig;

/// Why a command was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The command came from a connection that no longer owns the session (takeover fencing).
    StaleEpoch,
    /// No such session.
    NoSession,
}

/// What a session's resumed connection must know, as of the connect entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Subscriptions (filter, options).
    pub subscriptions: Vec<(Arc<str>, SubOptions)>,
    /// Outbound messages not yet completed, in order: resend PUBREL for `released` ones,
    /// PUBLISH (DUP as marked) for the rest.
    pub outbound: Vec<Outbound>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound: Vec<u16>,
}

/// The result of one command, for the requester that proposed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandResult {
    /// Session connected (persistent) or stored session discarded (clean).
    Connected {
        /// Epoch the connection must put on its later commands.
        epoch: u64,
        /// A stored session was resumed.
        session_present: bool,
        /// The resumed session's state (also for a new session: empty).
        resume: Box<Resume>,
    },
    /// Publish applied; `duplicate` when it was a QoS 2 resend of an id awaiting PUBREL.
    Published {
        /// True when the message was not routed again.
        duplicate: bool,
    },
    /// Subscriptions applied.
    Subscribed {
        /// The QoS granted per filter, in request order.
        granted: Vec<QoS>,
        /// Per filter, whether its Retain Handling asks for the retained messages now (0, or 1
        /// and the subscription is new). A persistent session gets them as deliveries; this is
        /// for whoever sends those of a clean session.
        send_retained: Vec<bool>,
    },
    /// Unsubscribed.
    Unsubscribed,
    /// Inbound packet id released.
    Released,
    /// Disconnect applied.
    Disconnected,
    /// Session dropped (or nothing to drop).
    Dropped,
    /// Acknowledgement applied.
    Acked,
    /// Node-down applied.
    NodeDownApplied,
    /// Limits changed: the limits now in force.
    LimitsSet(StateConfig),
    /// A `Tick` applied (the log's clock moved).
    Ticked,
    /// Not applied.
    Rejected(Rejection),
}

/// One consequence of applying an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Answer the requester `request_id` of `incarnation` on `node`.
    Reply {
        /// Proposing node.
        node: u64,
        /// Its process incarnation.
        incarnation: u64,
        /// Request id within that incarnation.
        request_id: u64,
        /// The result.
        result: CommandResult,
    },
    /// Send these QoS 1/2 messages to the session's connection.
    Deliver {
        /// Session.
        client_id: Arc<str>,
        /// Connection to send on.
        owner: Owner,
        /// Session epoch of that connection.
        epoch: u64,
        /// The message.
        message: Outbound,
    },
    /// Send a QoS 0 message to the session's connection (a retained message on subscribe).
    DeliverQos0 {
        /// Session.
        client_id: Arc<str>,
        /// Connection to send on.
        owner: Owner,
        /// Session epoch.
        epoch: u64,
        /// The message (QoS 0).
        message: Message,
        /// Subscription Identifier of the subscription it is sent for (none or one).
        subscription_ids: Vec<u32>,
    },
    /// PUBREC committed: the connection may now send PUBREL.
    Release {
        /// Session.
        client_id: Arc<str>,
        /// Connection.
        owner: Owner,
        /// Session epoch.
        epoch: u64,
        /// Sequence number of the message.
        seq: u64,
    },
    /// Deliver to non-durable subscribers through the router (a message whose fast path was
    /// deferred until commit, or a will).
    FastPath {
        /// The message with RETAIN as published: each delivery clears it unless its
        /// subscription has Retain As Published.
        message: Message,
    },
    /// Close the connection that served the session (takeover or session drop).
    Kick {
        /// Session.
        client_id: Arc<str>,
        /// Connection to close.
        owner: Owner,
        /// The connection that takes the client id over; `None` when the session was dropped or
        /// its node is down.
        by: Option<Owner>,
    },
    /// A subscription was added or its options changed.
    RouteAdd {
        /// Session.
        client_id: Arc<str>,
        /// Filter.
        filter: Arc<str>,
        /// Granted QoS and the other options, for the router's own deliveries.
        options: SubOptions,
        /// Persistent session: its QoS 1/2 deliveries are durable (queued here).
        durable: bool,
    },
    /// A subscription was removed.
    RouteRemove {
        /// Session.
        client_id: Arc<str>,
        /// Filter.
        filter: Arc<str>,
    },
    /// The session (persistent, or a tracked clean session) is now served by `owner`.
    Online {
        /// Session.
        client_id: Arc<str>,
        /// Connection.
        owner: Owner,
        /// Epoch.
        epoch: u64,
    },
    /// The session has no connection any more.
    Offline {
        /// Session.
        client_id: Arc<str>,
    },
    /// The session and all its subscriptions are gone.
    SessionRemoved {
        /// Session.
        client_id: Arc<str>,
        /// The filters it was subscribed to.
        filters: Vec<Arc<str>>,
    },
    /// The limits in force changed (a `SetLimits` entry).
    LimitsChanged {
        /// The limits now in force.
        limits: StateConfig,
    },
    /// A message for the session was dropped because its queue is full.
    QueueFull {
        /// Session.
        client_id: Arc<str>,
        /// Messages in the queue.
        queued: usize,
        /// Bytes in the queue.
        queued_bytes: usize,
    },
    /// A message for the session was dropped because its PUBLISH would exceed the Maximum
    /// Packet Size the client accepts (MQTT 5 §3.1.2.11.4).
    PacketTooLarge {
        /// Session.
        client_id: Arc<str>,
        /// Size of the PUBLISH (see [`crate::message::publish_packet_size`]).
        size: usize,
        /// The client's Maximum Packet Size.
        limit: u32,
    },
}
