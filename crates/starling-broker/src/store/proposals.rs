//! Proposal batching and the requesters waiting for their commands to apply.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::Addr;
use bytes::Bytes;
use bytestring::ByteString;
use prost::Message as _;
use starling_state::{pb, StateConfig};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connection::Connection;
use crate::messages::{ConnectOutcome, SubscribeOutcome, Target};

/// Someone waiting for a command to apply.
pub(crate) enum Waiter<C = Addr<Connection>> {
    /// A connection's CONNECT.
    Connect {
        reply: oneshot::Sender<ConnectOutcome>,
        target: Target<C>,
        client_id: ByteString,
    },
    /// SUBSCRIBE of a persistent or tracked clean session.
    Subscribe {
        reply: oneshot::Sender<SubscribeOutcome>,
        filters: Vec<(Arc<str>, starling_codec::QoS)>,
        /// A clean session: its retained messages come with the reply (not queued).
        clean: bool,
    },
    /// UNSUBSCRIBE of a persistent session.
    Unsubscribe(oneshot::Sender<bool>),
    /// A PUBLISH or PUBREL whose acknowledgement waits for the commit.
    Ack { conn: Target<C>, token: u64 },
    /// A persistent subscriber's PUBACK / PUBREC / PUBCOMP: nothing waits for it, but if it
    /// cannot commit the connection is closed, so that the client resumes and the flow is
    /// redone from the replicated state (a lost PUBREC would otherwise never get its PUBREL).
    OutboundAck(Target<C>),
    /// DISCONNECT of a persistent session.
    Disconnect(oneshot::Sender<bool>),
    /// The end of a session's connection on this node (see `StoreCore::closing`): proposed
    /// again until it applies.
    Closing { client_id: ByteString, epoch: u64 },
    /// This node's own `NodeDown` after a restart: proposed again until it applies.
    NodeDown,
    /// A change of the replicated limits (admin operation).
    Limits(oneshot::Sender<Result<StateConfig, String>>),
    /// Nobody waits for it, but a retained message's change that later local reads of retained
    /// messages must see (see `StoreCore::subscribe`): its request id orders them after it.
    Retained,
    /// A single node's configured limits, proposed at start: the node reports itself ready
    /// (and listens) once they apply, so that no connection runs under the previous ones.
    StartLimits,
    /// A `Tick` that moves the log's clock past a deadline (see `StoreCore::tick`): nobody
    /// waits, but only one is in flight at a time.
    Tick,
}

impl<C> Waiter<C> {
    /// Its kind, for log lines.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Waiter::Connect { .. } => "connect",
            Waiter::Subscribe { .. } => "subscribe",
            Waiter::Unsubscribe(_) => "unsubscribe",
            Waiter::Ack { .. } => "publish",
            Waiter::OutboundAck(_) => "delivery ack",
            Waiter::Disconnect(_) => "disconnect",
            Waiter::Closing { .. } => "connection end",
            Waiter::NodeDown => "node down",
            Waiter::Limits(_) => "limits",
            Waiter::Retained => "retained",
            Waiter::StartLimits => "start limits",
            Waiter::Tick => "tick",
        }
    }
}

/// Why a command was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooLarge {
    /// Its encoded size with the entry's header.
    pub(crate) bytes: usize,
    /// The bound on one entry.
    pub(crate) limit: usize,
}

/// Commands waiting to be proposed and requesters waiting for them to apply.
pub(crate) struct Proposals<C = Addr<Connection>> {
    /// This node: the entries' header, and which replies are ours.
    node_id: u64,
    /// This process: request ids are only meaningful within one incarnation.
    incarnation: u64,
    /// Commands not yet proposed, in order.
    buffer: Vec<pb::Command>,
    /// Encoded size of `buffer`.
    buffer_bytes: usize,
    /// Largest encoded entry (the log's bound on one entry: a Raft message must carry it).
    max_entry_bytes: usize,
    /// Last request id handed out.
    next_request: u64,
    /// Highest request id handed to the log.
    proposed_up_to: u64,
    /// Requesters by request id, with when they started waiting.
    waiting: BTreeMap<u64, (Instant, Waiter<C>)>,
}

/// Flush the buffer once it holds this much, without waiting for the end of the mailbox pass.
pub(crate) const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Bytes an entry's header and a command's framing may take beyond the command itself.
pub const ENTRY_OVERHEAD: usize = 128;

impl<C> Proposals<C> {
    pub(crate) fn new(node_id: u64, incarnation: u64, max_entry_bytes: usize) -> Proposals<C> {
        Proposals {
            node_id,
            incarnation,
            buffer: Vec::new(),
            buffer_bytes: 0,
            max_entry_bytes: max_entry_bytes.max(ENTRY_OVERHEAD * 2),
            next_request: 0,
            proposed_up_to: 0,
            waiting: BTreeMap::new(),
        }
    }

    /// Queues a command. A command that could never fit in one entry is refused; its waiter is
    /// handed back with the refusal.
    pub(crate) fn push(
        &mut self,
        kind: pb::command::Kind,
        waiter: Option<Waiter<C>>,
        now: Instant,
    ) -> Result<(), (TooLarge, Option<Waiter<C>>)> {
        let mut command = pb::Command {
            request_id: 0,
            kind: Some(kind),
        };
        let bytes = command.encoded_len() + ENTRY_OVERHEAD;
        if bytes > self.max_entry_bytes {
            let limit = self.max_entry_bytes;
            return Err((TooLarge { bytes, limit }, waiter));
        }
        if let Some(w) = waiter {
            self.next_request += 1;
            self.waiting.insert(self.next_request, (now, w));
            command.request_id = self.next_request;
        }
        self.buffer_bytes += command.encoded_len() + 4;
        self.buffer.push(command);
        Ok(())
    }

    /// True when the buffer should be flushed now.
    pub(crate) fn full(&self) -> bool {
        self.buffer_bytes >= MAX_BATCH_BYTES.min(self.max_entry_bytes)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// The buffered commands that fit in one entry, as one entry: encoded, and as they are.
    /// Commands beyond the bound stay buffered for the next entry.
    pub(crate) fn take_entry(&mut self, timestamp_ms: u64) -> Option<(Bytes, pb::Batch)> {
        if self.buffer.is_empty() {
            return None;
        }
        let mut size = ENTRY_OVERHEAD;
        let mut n = 0;
        for c in &self.buffer {
            let len = c.encoded_len() + 4;
            if n > 0 && size + len > self.max_entry_bytes {
                break;
            }
            size += len;
            n += 1;
        }
        let rest = self.buffer.split_off(n);
        let commands = std::mem::replace(&mut self.buffer, rest);
        self.buffer_bytes = self.buffer.iter().map(|c| c.encoded_len() + 4).sum();
        let batch = pb::Batch {
            node_id: self.node_id,
            incarnation: self.incarnation,
            timestamp_ms,
            commands,
        };
        self.proposed_up_to = batch
            .commands
            .iter()
            .map(|c| c.request_id)
            .max()
            .unwrap_or(0)
            .max(self.proposed_up_to);
        Some((Bytes::from(batch.encode_to_vec()), batch))
    }

    /// Puts an entry that could not be proposed back in front of the buffer.
    pub(crate) fn restore(&mut self, entry: Bytes) {
        if let Ok(batch) = pb::Batch::decode(entry) {
            let mut commands = batch.commands;
            commands.append(&mut self.buffer);
            self.buffer_bytes = commands.iter().map(|c| c.encoded_len() + 4).sum();
            self.buffer = commands;
        }
    }

    /// The waiter of a reply addressed to this node and incarnation.
    pub(crate) fn take(
        &mut self,
        node: u64,
        incarnation: u64,
        request_id: u64,
    ) -> Option<Waiter<C>> {
        if node != self.node_id || incarnation != self.incarnation {
            return None;
        }
        self.waiting.remove(&request_id).map(|(_, w)| w)
    }

    /// Removes the waiters of an entry this node proposed (it will not commit).
    pub(crate) fn take_entry_waiters(&mut self, entry: Bytes) -> Vec<Waiter<C>> {
        let Ok(batch) = pb::Batch::decode(entry) else {
            return Vec::new();
        };
        if batch.node_id != self.node_id || batch.incarnation != self.incarnation {
            return Vec::new();
        }
        batch
            .commands
            .iter()
            .filter_map(|c| self.waiting.remove(&c.request_id).map(|(_, w)| w))
            .collect()
    }

    /// Removes waiters older than `deadline`.
    pub(crate) fn expire(&mut self, deadline: Instant) -> Vec<Waiter<C>> {
        let mut out = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if entry.get().0 > deadline {
                break;
            }
            out.push(entry.remove().1);
        }
        out
    }

    /// The waiters of everything already handed to the log (a leader change may lose it).
    pub(crate) fn take_proposed(&mut self) -> Vec<Waiter<C>> {
        let later = self.waiting.split_off(&(self.proposed_up_to + 1));
        std::mem::replace(&mut self.waiting, later)
            .into_values()
            .map(|(_, w)| w)
            .collect()
    }

    /// Every waiter (shutdown).
    pub(crate) fn drain(&mut self) -> Vec<Waiter<C>> {
        std::mem::take(&mut self.waiting)
            .into_values()
            .map(|(_, w)| w)
            .collect()
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// How many requesters of each kind wait (a log line's detail).
    pub(crate) fn waiting_kinds(&self) -> BTreeMap<&'static str, usize> {
        let mut kinds = BTreeMap::new();
        for (_, w) in self.waiting.values() {
            *kinds.entry(w.kind()).or_default() += 1;
        }
        kinds
    }

    /// The last request id handed out: everything queued so far has an id up to it.
    pub(crate) fn last_request(&self) -> u64 {
        self.next_request
    }

    /// Whether a request with an id up to `id` still waits (to be proposed, or to apply).
    pub(crate) fn waits_up_to(&self, id: u64) -> bool {
        self.waiting
            .first_key_value()
            .is_some_and(|(k, _)| *k <= id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(bytes: usize) -> pb::command::Kind {
        pb::command::Kind::Publish(pb::Publish {
            message: Some(pb::AppMessage {
                topic: "t".into(),
                payload: Bytes::from(vec![0u8; bytes]),
                qos: 1,
                retain: true,
                ..pb::AppMessage::default()
            }),
            ..pb::Publish::default()
        })
    }

    #[test]
    fn no_entry_exceeds_the_bound_and_a_command_that_never_fits_is_refused() {
        let now = Instant::now();
        let mut p: Proposals<()> = Proposals::new(1, 1, 10_000);
        for _ in 0..5 {
            assert!(p.push(publish(3_000), None, now).is_ok());
        }
        let mut sizes = Vec::new();
        while let Some((entry, batch)) = p.take_entry(0) {
            assert!(entry.len() <= 10_000, "entry of {} bytes", entry.len());
            sizes.push(batch.commands.len());
        }
        assert_eq!(sizes, vec![3, 2], "split into entries in order, none lost");
        let (err, waiter) = p
            .push(publish(20_000), Some(Waiter::NodeDown), now)
            .unwrap_err();
        assert_eq!(err.limit, 10_000);
        assert!(err.bytes > 20_000);
        assert!(
            matches!(waiter, Some(Waiter::NodeDown)),
            "the waiter comes back"
        );
        assert_eq!(p.waiting(), 0);
        assert!(p.is_empty());
    }
}
