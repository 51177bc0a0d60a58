//! What the store's logic asks its shell to send: messages for the router shards and for the
//! connections on this node, in order, and takeovers to carry out.

use actix::Addr;
use starling_state::Message as AppMessage;

use crate::connection::Connection;
use crate::messages::{
    Acked, ConnectRequest, DurableDeliver, KickReason, ReleaseReady, RouteUpdate, Target,
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
        /// Messages in order, RETAIN cleared.
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

/// Everything one input produced, in order per destination.
pub struct StoreOutput<C = Addr<Connection>> {
    /// For the router shards.
    pub shards: Vec<ShardMessage<C>>,
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
            conns: Vec::new(),
            takeovers: Vec::new(),
            stop: false,
        }
    }
}

impl<C> StoreOutput<C> {
    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty() && self.conns.is_empty() && self.takeovers.is_empty() && !self.stop
    }
}
