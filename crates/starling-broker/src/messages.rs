//! Messages between the broker's actors.
//!
//! ```text
//!  Connection ──Route──────────▶ RouterShard ──Deliver/Acked──▶ Connection
//!      │                             │ DurablePublish (persistent targets, retain)
//!      │ Connect/Subscribe/…         ▼
//!      └───────────────────────▶ SessionStore ──Propose──▶ ReplicatedLog
//!                                    ▲  │ DurableDeliver/Release/Acked/Kick ──▶ Connection
//!                       LogEvent ────┘  └ RouteUpdate/FastPath ──▶ every RouterShard
//! ```
//! Replies that a connection must see before anything else (CONNACK, SUBACK) travel on oneshot
//! channels the connection waits on; everything else is a mailbox message, so per-sender FIFO
//! order holds (a SUBACK always precedes the retained messages that follow it).

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use starling_codec::{LastWill, ProtocolVersion, QoS};
use starling_codec::{PayloadFormat, PublishProperties, UserProperty};
use starling_state::{Message as AppMessage, MessageProperties, Outbound, Resume, SubOptions};
use tokio::sync::oneshot;

use crate::connection::Connection;

/// A connection as a delivery target. `C` is how messages reach it: the actor's address in the
/// broker; the deterministic simulator, which runs the store and router logic without actix,
/// uses its own handle.
#[derive(Clone, Debug)]
pub struct Target<C = Addr<Connection>> {
    /// Connection id (unique within the process).
    pub conn_id: u64,
    /// Its address.
    pub addr: C,
}

/// Where a subscription's non-durable deliveries go.
#[derive(Clone, Debug)]
pub enum RouteTarget<C = Addr<Connection>> {
    /// A connection on this node.
    Local(Target<C>),
    /// Another node, which delivers to its own connections (fast-path forwarding).
    Remote(u64),
}

impl<C> RouteTarget<C> {
    /// The connection id or node it designates, without the handle (for comparisons).
    pub fn id(&self) -> RouteTargetId {
        match self {
            RouteTarget::Local(t) => RouteTargetId::Local(t.conn_id),
            RouteTarget::Remote(n) => RouteTargetId::Remote(*n),
        }
    }
}

/// A [`RouteTarget`] without the handle: what checks compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteTargetId {
    /// A connection on this node.
    Local(u64),
    /// Another node.
    Remote(u64),
}

/// Which acknowledgement a connection owes its client once a PUBLISH or PUBREL is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckKind {
    /// PUBACK (QoS 1 PUBLISH).
    PubAck,
    /// PUBREC (QoS 2 PUBLISH).
    PubRec,
    /// PUBCOMP (PUBREL).
    PubComp,
}

/// A PUBLISH on its way to the router.
#[derive(Debug)]
pub struct RoutedPublish {
    /// The message; RETAIN as received.
    pub message: AppMessage,
    /// Token to complete at the publishing connection, if it waits for an acknowledgement.
    pub token: Option<u64>,
}

/// Connection → router shard: a batch of PUBLISHes read together.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route<C = Addr<Connection>> {
    /// The publishing connection, for [`Acked`].
    pub from: Option<Target<C>>,
    /// Messages in the order received.
    pub publishes: Vec<RoutedPublish>,
}

/// Router shard / store → connection: messages for non-durable delivery (QoS already
/// downgraded, RETAIN as to be sent).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    /// Messages in order.
    pub messages: Vec<AppMessage>,
}

/// → connection: these PUBLISH/PUBREL tokens are done; send the owed acknowledgements.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Acked {
    /// Completed tokens.
    pub tokens: Vec<u64>,
    /// The durable path refused them (e.g. stale session): close instead of acknowledging.
    pub refused: bool,
    /// Those of `tokens` whose message reached no subscriber (a 5.0 PUBACK / PUBREC says 0x10).
    pub unmatched: Vec<u64>,
}

/// A message whose routing needs the replicated state (persistent targets or RETAIN).
#[derive(Debug)]
pub struct DurableItem<C = Addr<Connection>> {
    /// The message.
    pub message: AppMessage,
    /// Who waits for it to commit, and the token to complete.
    pub reply: Option<(Target<C>, u64)>,
}

/// Router shard → store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DurablePublish<C = Addr<Connection>> {
    /// Items in order.
    pub items: Vec<DurableItem<C>>,
}

/// One subscription of the replicated state as a router shard holds it (see
/// [`RouteUpdate::Reset`]).
#[derive(Clone, Debug)]
pub struct RouteEntry<C = Addr<Connection>> {
    /// Subscriber key (a session's key: top bit set).
    pub key: u64,
    /// Filter.
    pub filter: Arc<str>,
    /// Granted QoS and the other subscription options.
    pub options: SubOptions,
    /// Persistent session: QoS 1/2 go through the store.
    pub durable: bool,
    /// Where non-durable deliveries go; `None` while offline.
    pub target: Option<RouteTarget<C>>,
}

/// Store → every router shard: a change of the subscription index.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub enum RouteUpdate<C = Addr<Connection>> {
    /// Add or replace a subscription.
    Add {
        /// Subscriber key (a clean connection's id, or a persistent session's key).
        key: u64,
        /// Filter.
        filter: Arc<str>,
        /// Granted QoS (what routing uses) and the other subscription options.
        options: SubOptions,
        /// Persistent session: QoS 1/2 go through the store.
        durable: bool,
        /// Where QoS 0 (and, if not durable, all) deliveries go; `None` while offline.
        target: Option<RouteTarget<C>>,
    },
    /// Remove a subscription.
    Remove {
        /// Subscriber key.
        key: u64,
        /// Filter.
        filter: Arc<str>,
    },
    /// A persistent session went online or offline: retarget all its subscriptions.
    Retarget {
        /// Subscriber key.
        key: u64,
        /// Its filters.
        filters: Vec<Arc<str>>,
        /// New target.
        target: Option<RouteTarget<C>>,
    },
    /// The replicated state was replaced or recovered: every subscription of a session (keys
    /// with the top bit set) is replaced by `entries`, rebuilt from the state. Subscriptions of
    /// clean sessions outside the replicated state (single node) stay.
    Reset {
        /// Every subscription of the replicated state, shared by all shards.
        entries: Arc<Vec<RouteEntry<C>>>,
    },
    /// Compare the shard's subscriptions of the replicated state with `entries` (what a rebuild
    /// from the state gives now) and report a difference: the check that the incrementally
    /// maintained index equals a rebuild.
    Check {
        /// The expected subscriptions, sorted: (key, filter, options, durable, target).
        entries: Arc<Vec<ExpectedRoute>>,
        /// Where the outcome goes (`None`: a difference is logged, and is fatal in debug builds).
        reply: Option<tokio::sync::mpsc::Sender<Result<(), String>>>,
    },
}

/// One expected subscription in a [`RouteUpdate::Check`]: (key, filter, options, durable,
/// target).
pub type ExpectedRoute = (u64, Arc<str>, SubOptions, bool, Option<RouteTargetId>);

/// → router shard: deliver to this node's non-durable subscribers only (never forwarded: the
/// store's deferred fast path runs on every node that applies the entry, and messages received
/// from another node were forwarded already).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FastPath {
    /// Messages in order; every delivery clears RETAIN.
    pub messages: Vec<AppMessage>,
}

/// What an MQTT 5 CONNECT asks of its session (MQTT 5 §3.1.2.11, §3.1.3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionSettings {
    /// Session Expiry Interval (absent: 0, the session ends with the connection;
    /// `u32::MAX`: never).
    pub expiry_secs: u32,
    /// Receive Maximum (0: not given).
    pub receive_maximum: u32,
    /// Maximum Packet Size (0: no limit).
    pub maximum_packet_size: u32,
    /// Will Delay Interval of the will.
    pub will_delay_secs: u32,
    /// Message Expiry Interval of the will (0: none).
    pub will_expiry_secs: u32,
}

/// What a connection tells the store about its CONNECT.
#[derive(Debug)]
pub struct ConnectInfo {
    /// Client id (assigned one if the client sent none).
    pub client_id: ByteString,
    /// Clean Session (3.1, 3.1.1) or Clean Start (5).
    pub clean_session: bool,
    /// Protocol.
    pub protocol: ProtocolVersion,
    /// Will.
    pub will: Option<LastWill>,
    /// User name.
    pub username: Option<ByteString>,
    /// Peer address.
    pub peer: SocketAddr,
    /// The MQTT 5 session settings; `None` for 3.1 / 3.1.1.
    pub session: Option<SessionSettings>,
}

/// Result of a connect.
#[derive(Debug)]
pub enum ConnectOutcome {
    /// Accepted.
    Accepted {
        /// A stored session was resumed.
        session_present: bool,
        /// Epoch to put on session commands (persistent sessions).
        epoch: u64,
        /// Subscriber key in the router index.
        key: u64,
        /// State to resume (persistent sessions).
        resume: Box<Resume>,
    },
    /// The store cannot commit now (no quorum, shutting down): CONNACK 3.
    Unavailable,
    /// `bind_session_to_user`: the stored session was created by another user: CONNACK 5.
    NotAuthorized,
}

/// Connection → store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectRequest<C = Addr<Connection>> {
    /// The connection.
    pub target: Target<C>,
    /// CONNECT contents.
    pub info: ConnectInfo,
    /// Answer.
    pub reply: oneshot::Sender<ConnectOutcome>,
}

/// Result of SUBSCRIBE.
#[derive(Debug)]
pub enum SubscribeOutcome {
    /// Applied: granted QoS per requested filter, and (clean sessions) the retained messages to
    /// send after the SUBACK. Persistent sessions get theirs as deliveries.
    Done {
        /// Granted QoS per filter, in request order.
        granted: Vec<QoS>,
        /// Retained messages (RETAIN=1, QoS downgraded).
        retained: Vec<AppMessage>,
    },
    /// Could not commit.
    Unavailable,
}

/// Connection → store: SUBSCRIBE (filters already validated).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribeRequest<C = Addr<Connection>> {
    /// The connection.
    pub target: Target<C>,
    /// Client id.
    pub client_id: ByteString,
    /// Router key.
    pub key: u64,
    /// Persistent session epoch; 0 for clean sessions.
    pub epoch: u64,
    /// Valid filters with requested QoS.
    pub filters: Vec<(Arc<str>, QoS)>,
    /// Answer.
    pub reply: oneshot::Sender<SubscribeOutcome>,
}

/// Connection → store: UNSUBSCRIBE.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UnsubscribeRequest {
    /// Client id.
    pub client_id: ByteString,
    /// Router key.
    pub key: u64,
    /// Persistent session epoch; 0 for clean sessions.
    pub epoch: u64,
    /// Filters.
    pub filters: Vec<Arc<str>>,
    /// Answer: false when the store could not commit.
    pub reply: oneshot::Sender<bool>,
}

/// Connection → store: a request on a persistent session's replicated state.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum SessionRequest<C = Addr<Connection>> {
    /// QoS 2 PUBLISH from a persistent session: accept exactly once, then PUBREC.
    Publish {
        /// Connection to answer.
        from: Target<C>,
        /// Token to complete.
        token: u64,
        /// Client id.
        client_id: ByteString,
        /// Epoch.
        epoch: u64,
        /// Packet id.
        packet_id: u16,
        /// Message.
        message: AppMessage,
    },
    /// PUBREL from a persistent session.
    Release {
        /// Connection to answer.
        from: Target<C>,
        /// Token to complete.
        token: u64,
        /// Client id.
        client_id: ByteString,
        /// Epoch.
        epoch: u64,
        /// Packet id.
        packet_id: u16,
    },
    /// DISCONNECT from a persistent session's client: the session goes offline (will
    /// discarded) before the socket is closed, so that a crash right after cannot publish it.
    Disconnect {
        /// Client id.
        client_id: ByteString,
        /// Epoch.
        epoch: u64,
        /// Highest outbound sequence number written.
        sent_up_to: u64,
        /// True once committed.
        reply: oneshot::Sender<bool>,
    },
    /// PUBACK / PUBREC / PUBCOMP from a persistent session's client.
    Ack {
        /// Client id.
        client_id: ByteString,
        /// Epoch.
        epoch: u64,
        /// Sequence number of the message.
        seq: u64,
        /// Which acknowledgement.
        kind: AckKind,
    },
}

/// How a connection ended, as far as the session is concerned.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ConnectionClosed {
    /// Connection id.
    pub conn_id: u64,
    /// Client id.
    pub client_id: ByteString,
    /// Router key.
    pub key: u64,
    /// Persistent session epoch (0: clean session).
    pub epoch: u64,
    /// Persistent session.
    pub persistent: bool,
    /// Publish the will (persistent sessions; clean sessions publish their own).
    pub publish_will: bool,
    /// Highest outbound sequence number written (persistent sessions).
    pub sent_up_to: u64,
    /// Filters subscribed (clean sessions), to remove from the router.
    pub filters: Vec<Arc<str>>,
}

/// Store → connection: QoS 1/2 messages of a persistent session, and QoS 0 retained messages.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DurableDeliver {
    /// Epoch they belong to.
    pub epoch: u64,
    /// Outbound messages in sequence order.
    pub items: Vec<Outbound>,
    /// QoS 0 messages (retained on subscribe).
    pub qos0: Vec<AppMessage>,
}

/// Store → connection: PUBREC for `seq` is committed; send PUBREL.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseReady {
    /// Epoch.
    pub epoch: u64,
    /// Sequence numbers.
    pub seqs: Vec<u64>,
}

/// Why the store closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KickReason {
    /// Another connection on this node took the client id.
    TakenOver,
    /// A connection through another node took the client id: the client reconnected there
    /// (its will is not published).
    TakenOverElsewhere,
    /// The session was discarded (clean-session connect elsewhere, expiry).
    SessionRemoved,
    /// The broker is shutting down.
    Shutdown,
    /// This node fell behind and replaced its state with a snapshot: what its connections knew
    /// of their sessions is stale, so they close and their clients resume from the state.
    StateReplaced,
}

/// Store → connection: close.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick {
    /// Why.
    pub reason: KickReason,
    /// Dropped once the connection's socket is closed, for a caller that must not proceed before
    /// (a takeover accepts the new connection only after the old one is gone).
    pub closed: Option<oneshot::Sender<()>>,
}

/// The message a will publishes, with its MQTT 5 properties (the Will Delay and the Message
/// Expiry Interval are the session's: [`SessionSettings`]).
pub fn will_message(w: &LastWill) -> AppMessage {
    let p = &w.properties;
    let properties = message_properties(MessageProperties {
        payload_format_indicator: p.payload_format_indicator == Some(PayloadFormat::Utf8),
        content_type: p.content_type.as_ref().map(|s| s.to_string()),
        response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
        correlation_data: p.correlation_data.clone(),
        user_properties: user_properties(&p.user_properties),
    });
    AppMessage {
        topic: w.topic.clone(),
        payload: w.payload.clone(),
        qos: w.qos,
        retain: w.retain,
        properties,
        ..AppMessage::default()
    }
}

/// The properties of a 5.0 PUBLISH that travel with its message (`None` when it has none).
pub fn publish_properties(p: &PublishProperties) -> Option<Arc<MessageProperties>> {
    message_properties(MessageProperties {
        payload_format_indicator: p.payload_format_indicator == Some(PayloadFormat::Utf8),
        content_type: p.content_type.as_ref().map(|s| s.to_string()),
        response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
        correlation_data: p.correlation_data.clone(),
        user_properties: user_properties(&p.user_properties),
    })
}

fn message_properties(m: MessageProperties) -> Option<Arc<MessageProperties>> {
    (m != MessageProperties::default()).then(|| Arc::new(m))
}

fn user_properties(u: &[UserProperty]) -> Vec<(String, String)> {
    u.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
