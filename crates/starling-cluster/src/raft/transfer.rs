//! Snapshots in bounded, resumable chunks: the sender and receiver state machines.
//!
//! A Raft snapshot (`MsgSnapshot`) is the whole replicated state; it can be far larger than the
//! largest message peers exchange (`cluster.max_message_bytes`). So it does not travel on the
//! Raft stream: the leader encodes the message once and sends it in chunks of at most
//! `cluster.snapshot_chunk_bytes`, one request per chunk, each answered with how much of it the
//! receiver holds.
//!
//! ```text
//!  leader                                              follower
//!  SnapshotTransfer::next(now) ─▶ Send(Chunk{offset}) ─▶ SnapshotReceiver::offer
//!            ▲                                              │ Reply(ChunkAck{held})
//!            └────────── on_ack(ack) / on_error ◀───────────┘ or Complete(message): install
//!                                                            └▶ installed(verdict) ─▶ ChunkAck
//!  Done(Finished | Failed) ─▶ RaftCore::snapshot_sent ─▶ raft-rs report_snapshot
//! ```
//!
//! - One chunk is in flight at a time (stop and wait); every chunk also asks where the receiver
//!   is: its answer says how many bytes it holds, and the sender continues from there. After a
//!   broken connection or a timeout the sender resends from what was last confirmed, and the
//!   receiver's answer moves it on (it may hold more) or back (it lost its partial copy).
//! - The receiver keeps at most one partial transfer per sender, never more than the total the
//!   sender announced, and refuses totals over its configured maximum. A transfer of a newer
//!   snapshot (higher term, then higher index) replaces an older partial one; chunks of an older
//!   one are refused. A partial transfer from an older term is dropped as soon as a transfer of
//!   a newer term starts, whoever sends it (its sender is no longer the leader).
//! - Every transfer ends exactly once: [`Outcome::Finished`] when the receiver confirmed the
//!   whole snapshot as installed, [`Outcome::Failed`] when it refused it, when attempts in a row
//!   without progress reach the limit, or at the deadline.
//!
//! Both machines are plain structs over caller-supplied time: the peer transport drives them over
//! gRPC, a simulation over its simulated network.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use raft::eraftpb::{Message as RaftMessage, MessageType};
use tokio::time::Instant;

/// Identifies one snapshot transfer: who sends it to whom, the sender's Raft term when it sent
/// the snapshot, and the snapshot's index and term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransferId {
    /// The sending node (the leader).
    pub from: u64,
    /// The receiving node.
    pub to: u64,
    /// The Raft term of the `MsgSnapshot`.
    pub term: u64,
    /// The index the snapshot covers.
    pub index: u64,
    /// The term of that index.
    pub snapshot_term: u64,
}

impl TransferId {
    /// The transfer that carries `msg`, if it is a `MsgSnapshot`.
    pub fn of(msg: &RaftMessage) -> Option<TransferId> {
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return None;
        }
        let meta = msg.get_snapshot().get_metadata();
        Some(TransferId {
            from: msg.from,
            to: msg.to,
            term: msg.term,
            index: meta.index,
            snapshot_term: meta.term,
        })
    }

    /// Orders transfers of the same pair of nodes: a later term, then a later snapshot, is newer.
    fn age(&self) -> (u64, u64, u64) {
        (self.term, self.index, self.snapshot_term)
    }
}

/// One piece of an encoded `MsgSnapshot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The transfer it belongs to.
    pub id: TransferId,
    /// Size of the whole encoded message.
    pub total: u64,
    /// Where `data` starts in it.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

/// Where a receiver stands with a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// Still assembling: send from `held` on.
    Receiving,
    /// It holds everything and is installing it: ask again shortly.
    Installing,
    /// Installed (handed to Raft).
    Accepted,
    /// Refused for good (too large, malformed, superseded, invalid snapshot).
    Refused(String),
}

/// A receiver's answer to a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkAck {
    /// The transfer it answers.
    pub id: TransferId,
    /// Bytes of the transfer it holds, contiguous from 0.
    pub held: u64,
    /// Where it stands.
    pub status: AckStatus,
}

/// How a transfer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver confirmed that it holds and installed the whole snapshot.
    Finished,
    /// It did not get there; why.
    Failed(String),
}

/// Limits of a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferSettings {
    /// Largest chunk (`cluster.snapshot_chunk_bytes`).
    pub chunk_bytes: usize,
    /// How long a chunk may go unanswered before it counts as a failed attempt.
    pub chunk_timeout: Duration,
    /// Pause after a failed attempt before the next one (and between questions to a receiver
    /// that is installing).
    pub retry_pause: Duration,
    /// Failed attempts in a row (no progress in between) that end the transfer.
    pub max_attempts: u32,
    /// How long a whole transfer may take.
    pub deadline: Duration,
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings {
            chunk_bytes: 1024 * 1024,
            chunk_timeout: Duration::from_secs(10),
            retry_pause: Duration::from_millis(200),
            max_attempts: 5,
            deadline: Duration::from_secs(30 * 60),
        }
    }
}

/// What the driver of a [`SnapshotTransfer`] does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send this chunk and report the answer ([`SnapshotTransfer::on_ack`]) or the failure to
    /// get one ([`SnapshotTransfer::on_error`]).
    Send(Chunk),
    /// Nothing to do before this instant (an answer may come meanwhile).
    WaitUntil(Instant),
    /// The transfer is over; it keeps answering this.
    Done(Outcome),
}

/// The sending side of one transfer.
#[derive(Debug)]
pub struct SnapshotTransfer {
    /// Which transfer this is.
    id: TransferId,
    /// The encoded `MsgSnapshot`, cut into chunks as they are sent.
    data: Bytes,
    /// Limits.
    settings: TransferSettings,
    /// Bytes the receiver confirmed holding: the next chunk starts here.
    acked: u64,
    /// When the chunk in flight was sent, if one is.
    in_flight: Option<Instant>,
    /// Failed attempts since the last progress.
    failures: u32,
    /// No chunk before this (a pause after a failure, or while the receiver installs).
    resume_at: Option<Instant>,
    /// The transfer fails at this instant.
    deadline: Instant,
    /// Set once it is over.
    outcome: Option<Outcome>,
    /// Chunks handed out for sending (resends included), for logs and tests.
    sent: u64,
}

impl SnapshotTransfer {
    /// A transfer of `data` (the encoded `MsgSnapshot` `id` identifies) starting at `now`.
    pub fn new(
        id: TransferId,
        data: Bytes,
        settings: TransferSettings,
        now: Instant,
    ) -> SnapshotTransfer {
        let deadline = now + settings.deadline;
        SnapshotTransfer {
            id,
            data,
            settings,
            acked: 0,
            in_flight: None,
            failures: 0,
            resume_at: None,
            deadline,
            outcome: None,
            sent: 0,
        }
    }

    /// The transfer.
    pub fn id(&self) -> TransferId {
        self.id
    }

    /// Size of the whole encoded message.
    pub fn total(&self) -> u64 {
        self.data.len() as u64
    }

    /// Bytes the receiver confirmed so far.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Chunks handed out so far, resends included.
    pub fn chunks_sent(&self) -> u64 {
        self.sent
    }

    /// The outcome, once it is over.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    fn fail(&mut self, why: String) {
        if self.outcome.is_none() {
            self.outcome = Some(Outcome::Failed(why));
        }
    }

    /// One attempt failed (an error, no answer in time): pause, or give up after too many.
    fn attempt_failed(&mut self, why: &str, now: Instant) {
        self.in_flight = None;
        self.failures += 1;
        if self.failures >= self.settings.max_attempts {
            self.fail(format!(
                "{} attempts in a row without progress at byte {} of {}; last: {why}",
                self.failures,
                self.acked,
                self.total()
            ));
        } else {
            self.resume_at = Some(now + self.settings.retry_pause);
        }
    }

    /// What to do at `now`.
    pub fn next(&mut self, now: Instant) -> Next {
        if let Some(o) = &self.outcome {
            return Next::Done(o.clone());
        }
        if now >= self.deadline {
            self.fail(format!(
                "not done within {:?} (byte {} of {})",
                self.settings.deadline,
                self.acked,
                self.total()
            ));
            return self.next(now);
        }
        if let Some(sent_at) = self.in_flight {
            let timeout = sent_at + self.settings.chunk_timeout;
            if now < timeout {
                return Next::WaitUntil(timeout.min(self.deadline));
            }
            self.attempt_failed("no answer in time", now);
            return self.next(now);
        }
        if let Some(at) = self.resume_at {
            if now < at {
                return Next::WaitUntil(at.min(self.deadline));
            }
            self.resume_at = None;
        }
        let start = self.acked.min(self.total()) as usize;
        let end = (start + self.settings.chunk_bytes.max(1)).min(self.data.len());
        self.in_flight = Some(now);
        self.sent += 1;
        Next::Send(Chunk {
            id: self.id,
            total: self.total(),
            offset: start as u64,
            data: self.data.slice(start..end),
        })
    }

    /// The receiver answered.
    pub fn on_ack(&mut self, ack: &ChunkAck, now: Instant) {
        if ack.id != self.id || self.outcome.is_some() {
            return;
        }
        self.in_flight = None;
        let total = self.total();
        if ack.held > total {
            return self.fail(format!("the receiver claims {} bytes of {total}", ack.held));
        }
        match &ack.status {
            AckStatus::Refused(why) => self.fail(format!("refused: {why}")),
            AckStatus::Accepted if ack.held == total => self.outcome = Some(Outcome::Finished),
            AckStatus::Accepted => {
                self.fail(format!("accepted with {} bytes of {total}", ack.held));
            }
            AckStatus::Installing => {
                // Not a failure: it holds everything. Ask again after a pause.
                self.acked = total;
                self.failures = 0;
                self.resume_at = Some(now + self.settings.retry_pause);
            }
            AckStatus::Receiving => {
                if ack.held > self.acked {
                    self.failures = 0;
                }
                // Forward when it took the chunk; back when it lost what it held (a restart,
                // or its partial copy was replaced): either way, continue from there.
                self.acked = ack.held;
            }
        }
    }

    /// The chunk in flight got no answer: the connection failed, or it timed out.
    pub fn on_error(&mut self, why: &str, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        self.attempt_failed(why, now);
    }
}

/// What a receiver makes of a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Answer this.
    Reply(ChunkAck),
    /// That was the last piece: decode `message` (an encoded `MsgSnapshot`), install it, and
    /// answer with [`SnapshotReceiver::installed`].
    Complete {
        /// The transfer.
        id: TransferId,
        /// The whole encoded message.
        message: Bytes,
    },
}

/// What a receiver knows of the latest transfer from one sender.
#[derive(Debug)]
enum Slot {
    /// Being assembled: `buf` holds the first `buf.len()` bytes of `total`.
    Partial {
        id: TransferId,
        total: u64,
        buf: BytesMut,
    },
    /// Complete and handed over for installation; the verdict is pending.
    Installing { id: TransferId, total: u64 },
    /// Over: how it went (answered again to a sender that asks again).
    Done {
        id: TransferId,
        total: u64,
        verdict: Result<(), String>,
    },
}

impl Slot {
    fn id(&self) -> TransferId {
        match self {
            Slot::Partial { id, .. } | Slot::Installing { id, .. } | Slot::Done { id, .. } => *id,
        }
    }
}

/// Most senders a receiver keeps track of at once; a new one past this is refused. Only the
/// leader sends snapshots, so more than a few means something is wrong.
pub const MAX_SENDERS: usize = 8;

/// The receiving side: assembles chunks into whole `MsgSnapshot`s, at most one partial
/// transfer per sender.
#[derive(Debug)]
pub struct SnapshotReceiver {
    /// Largest total accepted (`cluster.max_snapshot_bytes`).
    max_bytes: u64,
    /// Per sender: its latest transfer.
    slots: HashMap<u64, Slot>,
}

impl SnapshotReceiver {
    /// A receiver that refuses transfers of more than `max_bytes`.
    pub fn new(max_bytes: u64) -> SnapshotReceiver {
        SnapshotReceiver {
            max_bytes,
            slots: HashMap::new(),
        }
    }

    /// Bytes held in partial transfers.
    pub fn held_bytes(&self) -> u64 {
        self.slots
            .values()
            .map(|s| match s {
                Slot::Partial { buf, .. } => buf.len() as u64,
                _ => 0,
            })
            .sum()
    }

    fn refuse(id: TransferId, held: u64, why: String) -> Received {
        Received::Reply(ChunkAck {
            id,
            held,
            status: AckStatus::Refused(why),
        })
    }

    /// Takes a chunk.
    pub fn offer(&mut self, chunk: Chunk) -> Received {
        let Chunk {
            id,
            total,
            offset,
            data,
        } = chunk;
        if total > self.max_bytes {
            return Self::refuse(
                id,
                0,
                format!(
                    "a snapshot of {total} bytes is over cluster.max_snapshot_bytes = {}",
                    self.max_bytes
                ),
            );
        }
        if total == 0 || offset > total || data.len() as u64 > total - offset {
            return Self::refuse(
                id,
                0,
                format!(
                    "malformed chunk: {} bytes at {offset} of {total}",
                    data.len()
                ),
            );
        }
        match self.slots.get(&id.from).map(Slot::id) {
            Some(current) if current == id => {}
            Some(current) if current.age() > id.age() => {
                return Self::refuse(id, 0, "superseded by a newer snapshot".into());
            }
            _ => {
                // A newer term means a new leader: what older terms sent is of no use now.
                self.slots.retain(|_, s| s.id().term >= id.term);
                if !self.slots.contains_key(&id.from) && self.slots.len() >= MAX_SENDERS {
                    return Self::refuse(
                        id,
                        0,
                        format!("transfers from more than {MAX_SENDERS} senders"),
                    );
                }
                self.slots.insert(
                    id.from,
                    Slot::Partial {
                        id,
                        total,
                        buf: BytesMut::new(),
                    },
                );
            }
        }
        let Some(slot) = self.slots.get_mut(&id.from) else {
            return Self::refuse(id, 0, "no transfer".into());
        };
        match slot {
            Slot::Partial {
                total: expected,
                buf,
                ..
            } => {
                if *expected != total {
                    let held = buf.len() as u64;
                    return Self::refuse(
                        id,
                        held,
                        format!("size changed from {expected} to {total}"),
                    );
                }
                let held = buf.len() as u64;
                // Contiguous, or overlapping what it holds (a resend): keep what is new.
                if offset <= held && offset + data.len() as u64 > held {
                    let skip = (held - offset) as usize;
                    buf.extend_from_slice(&data[skip..]);
                }
                let held = buf.len() as u64;
                if held < total {
                    return Received::Reply(ChunkAck {
                        id,
                        held,
                        status: AckStatus::Receiving,
                    });
                }
                let message = std::mem::take(buf).freeze();
                *slot = Slot::Installing { id, total };
                Received::Complete { id, message }
            }
            Slot::Installing { total, .. } => Received::Reply(ChunkAck {
                id,
                held: *total,
                status: AckStatus::Installing,
            }),
            Slot::Done { total, verdict, .. } => Received::Reply(ChunkAck {
                id,
                held: *total,
                status: match verdict {
                    Ok(()) => AckStatus::Accepted,
                    Err(why) => AckStatus::Refused(why.clone()),
                },
            }),
        }
    }

    /// The snapshot of a [`Received::Complete`] was installed (`Ok`) or refused: the answer to
    /// the last chunk, and to any later question about this transfer.
    pub fn installed(&mut self, id: &TransferId, verdict: Result<(), String>) -> ChunkAck {
        let status = match &verdict {
            Ok(()) => AckStatus::Accepted,
            Err(why) => AckStatus::Refused(why.clone()),
        };
        let held = match self.slots.get(&id.from) {
            Some(Slot::Installing { id: current, total }) if current == id => {
                let total = *total;
                self.slots.insert(
                    id.from,
                    Slot::Done {
                        id: *id,
                        total,
                        verdict,
                    },
                );
                total
            }
            // Replaced meanwhile by a newer transfer: answer without touching it.
            _ => 0,
        };
        ChunkAck {
            id: *id,
            held,
            status,
        }
    }

    /// Forgets a sender (removed from the cluster).
    pub fn forget(&mut self, from: u64) {
        self.slots.remove(&from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(term: u64, index: u64) -> TransferId {
        TransferId {
            from: 1,
            to: 2,
            term,
            index,
            snapshot_term: term,
        }
    }

    fn settings() -> TransferSettings {
        TransferSettings {
            chunk_bytes: 10,
            chunk_timeout: Duration::from_secs(1),
            retry_pause: Duration::from_millis(100),
            max_attempts: 3,
            deadline: Duration::from_secs(60),
        }
    }

    fn data(n: usize) -> Bytes {
        (0..n).map(|i| i as u8).collect::<Vec<u8>>().into()
    }

    /// What the network does with one chunk.
    enum Fate {
        /// Delivered, answer delivered.
        Delivered,
        /// Lost on the way there.
        Lost,
        /// Delivered; the answer is lost.
        AnswerLost,
        /// Delivered twice; the second answer comes back.
        Twice,
        /// The receiving process restarted (its partial copy is gone); then delivered.
        Reset,
    }

    /// The receiver takes `chunk`; a complete message is installed with `verdict`.
    fn deliver(
        rx: &mut SnapshotReceiver,
        chunk: Chunk,
        verdict: &Result<(), String>,
        installed: &mut Vec<Bytes>,
    ) -> ChunkAck {
        match rx.offer(chunk) {
            Received::Reply(ack) => ack,
            Received::Complete { id, message } => {
                installed.push(message);
                rx.installed(&id, verdict.clone())
            }
        }
    }

    /// Runs `tx` to its end against `rx`; `fate` decides what becomes of send number `n`.
    /// Returns the outcome and the messages handed for installation.
    fn run(
        tx: &mut SnapshotTransfer,
        rx: &mut SnapshotReceiver,
        verdict: &Result<(), String>,
        mut fate: impl FnMut(u64, &Chunk) -> Fate,
    ) -> (Outcome, Vec<Bytes>) {
        let mut now = Instant::now();
        let mut installed = Vec::new();
        let mut sent = 0;
        for _ in 0..10_000u64 {
            match tx.next(now) {
                Next::Done(o) => return (o, installed),
                Next::WaitUntil(t) => now = t,
                Next::Send(chunk) => {
                    let f = fate(sent, &chunk);
                    sent += 1;
                    if matches!(f, Fate::Reset) {
                        *rx = SnapshotReceiver::new(rx.max_bytes);
                    }
                    let times = match f {
                        Fate::Lost => 0,
                        Fate::Twice => 2,
                        _ => 1,
                    };
                    let mut answer = None;
                    for _ in 0..times {
                        answer = Some(deliver(rx, chunk.clone(), verdict, &mut installed));
                    }
                    if let (Some(ack), false) = (answer, matches!(f, Fate::AnswerLost)) {
                        tx.on_ack(&ack, now);
                    }
                }
            }
        }
        panic!("transfer did not end");
    }

    #[test]
    fn a_clean_transfer_arrives_whole_in_bounded_chunks() {
        let payload = data(95);
        let mut tx = SnapshotTransfer::new(id(2, 10), payload.clone(), settings(), Instant::now());
        let mut rx = SnapshotReceiver::new(1000);
        let mut biggest = 0;
        let (o, got) = run(&mut tx, &mut rx, &Ok(()), |_, c| {
            biggest = biggest.max(c.data.len());
            Fate::Delivered
        });
        assert_eq!(o, Outcome::Finished);
        assert_eq!(got, vec![payload]);
        assert_eq!(biggest, 10);
        assert_eq!(tx.chunks_sent(), 10);
        assert_eq!(rx.held_bytes(), 0, "nothing partial left");
    }

    #[test]
    fn drops_and_duplicates_are_survived_and_installed_once() {
        let payload = data(95);
        let mut tx = SnapshotTransfer::new(id(2, 10), payload.clone(), settings(), Instant::now());
        let mut rx = SnapshotReceiver::new(1000);
        let (o, got) = run(&mut tx, &mut rx, &Ok(()), |n, _| match n % 4 {
            1 => Fate::Lost,
            2 => Fate::AnswerLost,
            3 => Fate::Twice,
            _ => Fate::Delivered,
        });
        assert_eq!(o, Outcome::Finished);
        assert_eq!(got, vec![payload], "installed exactly once, intact");
    }

    #[test]
    fn reordered_and_stale_chunks_do_not_corrupt_the_copy() {
        let payload = data(45);
        let mut rx = SnapshotReceiver::new(1000);
        let chunk = |offset: usize, len: usize| Chunk {
            id: id(2, 10),
            total: 45,
            offset: offset as u64,
            data: payload.slice(offset..(offset + len).min(45)),
        };
        let held = |r: Received| match r {
            Received::Reply(a) => (a.held, a.status),
            other => panic!("{other:?}"),
        };
        assert_eq!(held(rx.offer(chunk(0, 10))), (10, AckStatus::Receiving));
        // Ahead of what it holds: not taken, it says where it is.
        assert_eq!(held(rx.offer(chunk(20, 10))), (10, AckStatus::Receiving));
        // Overlapping resend: only the new part is kept.
        assert_eq!(held(rx.offer(chunk(5, 10))), (15, AckStatus::Receiving));
        // Old duplicate.
        assert_eq!(held(rx.offer(chunk(0, 10))), (15, AckStatus::Receiving));
        assert_eq!(held(rx.offer(chunk(15, 20))), (35, AckStatus::Receiving));
        match rx.offer(chunk(35, 10)) {
            Received::Complete { message, .. } => assert_eq!(message, payload),
            other => panic!("{other:?}"),
        }
        // Asked again while installing, then after.
        assert_eq!(held(rx.offer(chunk(35, 10))), (45, AckStatus::Installing));
        rx.installed(&id(2, 10), Ok(()));
        assert_eq!(held(rx.offer(chunk(0, 10))), (45, AckStatus::Accepted));
        // A chunk of an older snapshot from the same sender is refused.
        let stale = Chunk {
            id: id(2, 5),
            ..chunk(0, 10)
        };
        assert!(matches!(held(rx.offer(stale)).1, AckStatus::Refused(_)));
    }

    #[test]
    fn resumes_after_a_reset_from_where_the_receiver_is() {
        let payload = data(95);
        let mut tx = SnapshotTransfer::new(id(2, 10), payload.clone(), settings(), Instant::now());
        let mut rx = SnapshotReceiver::new(1000);
        let mut offsets = Vec::new();
        let (o, got) = run(&mut tx, &mut rx, &Ok(()), |n, c| {
            offsets.push(c.offset);
            // The connection breaks as the fifth chunk arrives: its answer is lost, and so is
            // the next attempt.
            match n {
                4 => Fate::AnswerLost,
                5 => Fate::Lost,
                _ => Fate::Delivered,
            }
        });
        assert_eq!(o, Outcome::Finished);
        assert_eq!(got, vec![payload]);
        // It resent the unanswered chunk (the question), learnt the receiver held 50, went on.
        assert_eq!(&offsets[..8], &[0, 10, 20, 30, 40, 40, 40, 50]);
    }

    #[test]
    fn a_receiver_that_lost_its_copy_makes_the_sender_start_over() {
        let payload = data(35);
        let mut tx = SnapshotTransfer::new(id(2, 10), payload.clone(), settings(), Instant::now());
        let mut rx = SnapshotReceiver::new(1000);
        let (o, got) = run(&mut tx, &mut rx, &Ok(()), |n, _| {
            if n == 2 {
                Fate::Reset
            } else {
                Fate::Delivered
            }
        });
        assert_eq!(o, Outcome::Finished);
        assert_eq!(got, vec![payload]);
    }

    #[test]
    fn every_failure_ends_the_transfer_once() {
        let now = Instant::now();
        // Refused: over the receiver's maximum.
        let mut tx = SnapshotTransfer::new(id(2, 10), data(95), settings(), now);
        let mut rx = SnapshotReceiver::new(50);
        let (o, _) = run(&mut tx, &mut rx, &Ok(()), |_, _| Fate::Delivered);
        assert!(
            matches!(&o, Outcome::Failed(w) if w.contains("max_snapshot_bytes")),
            "{o:?}"
        );
        // Refused at install (an invalid snapshot).
        let mut tx = SnapshotTransfer::new(id(2, 10), data(15), settings(), now);
        let mut rx = SnapshotReceiver::new(100);
        let (o, got) = run(&mut tx, &mut rx, &Err("undecodable".into()), |_, _| {
            Fate::Delivered
        });
        assert!(
            matches!(&o, Outcome::Failed(w) if w.contains("undecodable")),
            "{o:?}"
        );
        assert_eq!(got.len(), 1);
        // Unreachable: attempts run out.
        let mut tx = SnapshotTransfer::new(id(2, 10), data(15), settings(), now);
        let mut sent = 0;
        let (o, _) = run(&mut tx, &mut rx, &Ok(()), |_, _| {
            sent += 1;
            Fate::Lost
        });
        assert!(
            matches!(&o, Outcome::Failed(w) if w.contains("3 attempts")),
            "{o:?}"
        );
        assert_eq!(sent, 3);
        // Errors reported by the driver count the same way.
        let mut tx = SnapshotTransfer::new(id(2, 10), data(15), settings(), now);
        for i in 0..3 {
            let t = now + Duration::from_secs(i);
            assert!(matches!(tx.next(t), Next::Send(_)));
            tx.on_error("connection reset", t);
        }
        assert!(matches!(
            tx.next(now + Duration::from_secs(3)),
            Next::Done(Outcome::Failed(w)) if w.contains("connection reset")
        ));
        // The deadline, even while the receiver keeps installing.
        let mut tx = SnapshotTransfer::new(id(2, 10), data(15), settings(), now);
        let mut rx = SnapshotReceiver::new(100);
        let mut t = now;
        let outcome = loop {
            match tx.next(t) {
                Next::Done(o) => break o,
                Next::WaitUntil(w) => t = w,
                Next::Send(c) => {
                    let ack = match rx.offer(c) {
                        Received::Reply(a) => a,
                        // Never installed: the receiver keeps saying Installing.
                        Received::Complete { id, .. } => ChunkAck {
                            id,
                            held: 15,
                            status: AckStatus::Installing,
                        },
                    };
                    tx.on_ack(&ack, t);
                }
            }
        };
        assert!(matches!(&outcome, Outcome::Failed(w) if w.contains("not done within")));
        // Over means over: later answers change nothing, and it keeps saying so.
        tx.on_ack(
            &ChunkAck {
                id: id(2, 10),
                held: 15,
                status: AckStatus::Accepted,
            },
            t,
        );
        assert_eq!(tx.next(t), Next::Done(outcome));
    }

    #[test]
    fn a_newer_term_replaces_older_partial_copies_and_memory_stays_bounded() {
        let mut rx = SnapshotReceiver::new(100);
        let chunk = |from: u64, term: u64| Chunk {
            id: TransferId {
                from,
                ..id(term, 10)
            },
            total: 50,
            offset: 0,
            data: data(10),
        };
        let _ = rx.offer(chunk(1, 2));
        let _ = rx.offer(chunk(3, 2));
        assert_eq!(rx.held_bytes(), 20, "one partial copy per sender");
        let _ = rx.offer(chunk(3, 2));
        assert_eq!(rx.held_bytes(), 20, "a resend does not grow it");
        let _ = rx.offer(chunk(4, 3));
        assert_eq!(rx.held_bytes(), 10, "the term 2 copies are dropped");
        // Too many senders.
        for from in 10..10 + MAX_SENDERS as u64 {
            let _ = rx.offer(chunk(from, 3));
        }
        assert!(rx.slots.len() <= MAX_SENDERS);
        assert!(rx.held_bytes() <= MAX_SENDERS as u64 * 50);
    }
}
