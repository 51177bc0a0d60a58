//! Proposal batching and the requesters waiting for their commands to apply.

use std::collections::BTreeMap;

use bytes::Bytes;
use bytestring::ByteString;
use prost::Message as _;
use starling_state::pb;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::messages::{ConnectOutcome, SubscribeOutcome, Target};

/// Someone waiting for a command to apply.
pub(crate) enum Waiter {
    /// A connection's CONNECT.
    Connect {
        reply: oneshot::Sender<ConnectOutcome>,
        target: Target,
        client_id: ByteString,
        /// An untracked clean session (single node): keyed by its connection in the router.
        local: bool,
    },
    /// SUBSCRIBE of a persistent or tracked clean session.
    Subscribe {
        reply: oneshot::Sender<SubscribeOutcome>,
        filters: Vec<(std::sync::Arc<str>, starling_codec::QoS)>,
        /// A clean session: its retained messages come with the reply (not queued).
        clean: bool,
    },
    /// UNSUBSCRIBE of a persistent session.
    Unsubscribe(oneshot::Sender<bool>),
    /// A PUBLISH or PUBREL whose acknowledgement waits for the commit.
    Ack { conn: Target, token: u64 },
    /// A persistent subscriber's PUBACK / PUBREC / PUBCOMP: nothing waits for it, but if it
    /// cannot commit the connection is closed, so that the client resumes and the flow is
    /// redone from the replicated state (a lost PUBREC would otherwise never get its PUBREL).
    OutboundAck(Target),
    /// DISCONNECT of a persistent session.
    Disconnect(oneshot::Sender<bool>),
}

/// Commands waiting to be proposed and requesters waiting for them to apply.
pub(crate) struct Proposals {
    node_id: u64,
    incarnation: u64,
    buffer: Vec<pb::Command>,
    buffer_bytes: usize,
    next_request: u64,
    /// Highest request id handed to the log.
    proposed_up_to: u64,
    waiting: BTreeMap<u64, (Instant, Waiter)>,
}

/// Flush the buffer once it holds this much, without waiting for the end of the mailbox pass.
pub(crate) const MAX_BATCH_BYTES: usize = 1024 * 1024;

impl Proposals {
    pub(crate) fn new(node_id: u64, incarnation: u64) -> Proposals {
        Proposals {
            node_id,
            incarnation,
            buffer: Vec::new(),
            buffer_bytes: 0,
            next_request: 0,
            proposed_up_to: 0,
            waiting: BTreeMap::new(),
        }
    }

    /// Queues a command; returns true when the buffer was empty (schedule a flush).
    pub(crate) fn push(&mut self, kind: pb::command::Kind, waiter: Option<Waiter>) -> bool {
        let request_id = match waiter {
            Some(w) => {
                self.next_request += 1;
                self.waiting.insert(self.next_request, (Instant::now(), w));
                self.next_request
            }
            None => 0,
        };
        let was_empty = self.buffer.is_empty();
        let command = pb::Command {
            request_id,
            kind: Some(kind),
        };
        self.buffer_bytes += command.encoded_len();
        self.buffer.push(command);
        was_empty
    }

    /// True when the buffer should be flushed now.
    pub(crate) fn full(&self) -> bool {
        self.buffer_bytes >= MAX_BATCH_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// The buffered commands as one entry: encoded, and as they are.
    pub(crate) fn take_entry(&mut self) -> Option<(Bytes, pb::Batch)> {
        if self.buffer.is_empty() {
            return None;
        }
        let timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let batch = pb::Batch {
            node_id: self.node_id,
            incarnation: self.incarnation,
            timestamp_ms,
            commands: std::mem::take(&mut self.buffer),
        };
        self.buffer_bytes = 0;
        self.proposed_up_to = self.next_request;
        Some((Bytes::from(batch.encode_to_vec()), batch))
    }

    /// Puts an entry that could not be proposed back in front of the buffer.
    pub(crate) fn restore(&mut self, entry: Bytes) {
        if let Ok(batch) = pb::Batch::decode(entry) {
            let mut commands = batch.commands;
            commands.append(&mut self.buffer);
            self.buffer_bytes = commands.iter().map(|c| c.encoded_len()).sum();
            self.buffer = commands;
        }
    }

    /// The waiter of a reply addressed to this node and incarnation.
    pub(crate) fn take(&mut self, node: u64, incarnation: u64, request_id: u64) -> Option<Waiter> {
        if node != self.node_id || incarnation != self.incarnation {
            return None;
        }
        self.waiting.remove(&request_id).map(|(_, w)| w)
    }

    /// Removes the waiters of an entry this node proposed (it will not commit).
    pub(crate) fn take_entry_waiters(&mut self, entry: Bytes) -> Vec<Waiter> {
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
    pub(crate) fn expire(&mut self, deadline: Instant) -> Vec<Waiter> {
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
    pub(crate) fn take_proposed(&mut self) -> Vec<Waiter> {
        let later = self.waiting.split_off(&(self.proposed_up_to + 1));
        std::mem::replace(&mut self.waiting, later)
            .into_values()
            .map(|(_, w)| w)
            .collect()
    }

    /// Every waiter (shutdown).
    pub(crate) fn drain(&mut self) -> Vec<Waiter> {
        std::mem::take(&mut self.waiting)
            .into_values()
            .map(|(_, w)| w)
            .collect()
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }
}
