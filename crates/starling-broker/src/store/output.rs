//! What the store's logic asks its shell to send: messages for the router shards and for the
//! connections on this node, in order, and takeovers to carry out.

use actix::Addr;
use bytestring::ByteString;
use starling_state::Message as AppMessage;
use tokio::sync::oneshot;

use crate::connection::Connection;
use crate::messages::{
    Acked, ConnectOutcome, ConnectRequest, DurableDeliver, KickReason, ReleaseReady, RouteUpdate,
    SubscribeOutcome, Target,
};

/// A message for the router shards.
#[derive(Debug)]
pub enum ShardMessage<C = Addr<Connection>> {
    /// To every shard, in order with the other updates.
    Update(RouteUpdate<C>),
    /// To shard `shard` only: deliver to this node's non-durable subscribers.
    FastPath {
        /// The shard (`router::shard_of` of the messages' topic).
        shard: usize,
        /// Messages in order, RETAIN as published (every delivery clears it).
        messages: Vec<AppMessage>,
    },
}

/// A message for a connection on this node.
pub enum ConnMessage {
    /// QoS 1/2 messages of its persistent session (and QoS 0 retained ones).
    Durable(DurableDeliver),
    /// PUBRECs committed: PUBREL may go out.
    Release(ReleaseReady),
    /// Tokens completed (or refused).
    Acked(Acked),
    /// Close it.
    Kick(KickReason),
}

impl std::fmt::Debug for ConnMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnMessage::Durable(d) => write!(
                f,
                "Durable(epoch {}, {} items, {} qos0)",
                d.epoch,
                d.items.len(),
                d.qos0.len()
            ),
            ConnMessage::Release(r) => write!(f, "Release(epoch {}, {:?})", r.epoch, r.seqs),
            ConnMessage::Acked(a) => write!(f, "Acked({:?}, refused {})", a.tokens, a.refused),
            ConnMessage::Kick(k) => write!(f, "Kick({k:?})"),
        }
    }
}

/// A CONNECT for a client id whose previous connection on this node must close first
/// (MQTT-3.1.4-2: the new client gets its CONNACK only once the old socket is closed). The shell
/// closes `old`, waits until it is gone (at most the commit timeout), then hands `request` back
/// to [`StoreCore::finish_takeover`](super::StoreCore::finish_takeover).
pub struct Takeover<C = Addr<Connection>> {
    /// The connection to close.
    pub old: Target<C>,
    /// The CONNECT that waits for it.
    pub request: ConnectRequest<C>,
}

/// An answer to a connection's request. It goes out after the router updates of the same
/// pass: a client that has its SUBACK (or CONNACK) and publishes at once finds the routes it was
/// promised already queued at the shards (each shard's mailbox is in order).
pub enum Reply {
    /// CONNECT accepted.
    Connect {
        /// The waiting connection.
        reply: oneshot::Sender<ConnectOutcome>,
        /// What it gets.
        outcome: ConnectOutcome,
        /// What the store must undo if the connection stopped waiting.
        lost: LostConnect,
    },
    /// SUBSCRIBE done (or not).
    Subscribe {
        /// The waiting connection.
        reply: oneshot::Sender<SubscribeOutcome>,
        /// What it gets.
        outcome: SubscribeOutcome,
    },
    /// UNSUBSCRIBE done (or not).
    Unsubscribe {
        /// The waiting connection.
        reply: oneshot::Sender<bool>,
        /// Whether it was.
        done: bool,
    },
}

/// A CONNECT whose connection stopped waiting before its answer: it will not report its end,
/// so the store forgets it (see [`StoreCore::connect_lost`](super::StoreCore::connect_lost)).
#[derive(Debug, Clone)]
pub struct LostConnect {
    /// Its client id.
    pub client_id: ByteString,
    /// Its connection.
    pub conn_id: u64,
    /// The session epoch it was given.
    pub epoch: u64,
    /// An untracked clean session (single node): nothing replicated to release.
    pub local: bool,
}

impl Reply {
    /// Sends the answer. A CONNECT nobody waits for any more comes back: hand it to
    /// [`StoreCore::connect_lost`](super::StoreCore::connect_lost).
    pub fn send(self) -> Option<LostConnect> {
        match self {
            Reply::Connect {
                reply,
                outcome,
                lost,
            } => reply.send(outcome).err().map(|_| lost),
            Reply::Subscribe { reply, outcome } => {
                let _ = reply.send(outcome);
                None
            }
            Reply::Unsubscribe { reply, done } => {
                let _ = reply.send(done);
                None
            }
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Connect { lost, .. } => write!(f, "Connect({})", lost.client_id),
            Reply::Subscribe { .. } => write!(f, "Subscribe"),
            Reply::Unsubscribe { done, .. } => write!(f, "Unsubscribe({done})"),
        }
    }
}

/// Everything one input produced, in order per destination.
pub struct StoreOutput<C = Addr<Connection>> {
    /// For the router shards.
    pub shards: Vec<ShardMessage<C>>,
    /// Answers to connections' requests, sent after `shards`.
    pub replies: Vec<Reply>,
    /// For connections on this node.
    pub conns: Vec<(Target<C>, ConnMessage)>,
    /// Takeovers on this node.
    pub takeovers: Vec<Takeover<C>>,
    /// The store cannot go on (its state cannot be restored): the shell stops it.
    pub stop: bool,
}

impl<C> Default for StoreOutput<C> {
    fn default() -> Self {
        StoreOutput {
            shards: Vec::new(),
            replies: Vec::new(),
            conns: Vec::new(),
            takeovers: Vec::new(),
            stop: false,
        }
    }
}

impl<C> StoreOutput<C> {
    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
            && self.replies.is_empty()
            && self.conns.is_empty()
            && self.takeovers.is_empty()
            && !self.stop
    }
}
