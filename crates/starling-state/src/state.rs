//! The state machine: applies log entries ([`pb::Batch`]) deterministically.
//!
//! Every node applies the same entries in the same order and ends with the same state; nothing
//! here reads a clock, a random number or the iteration order of a hash map when that order could
//! change the state. Effects are returned for the node to act on.
//!
//! # Log time
//! What depends on time (MQTT 5 session expiry, delayed wills, message expiry) is measured
//! against the log's clock, [`State::log_clock_ms`]: the highest batch timestamp applied so far,
//! part of the replicated state. Applying a batch first moves that clock, then passes the
//! deadlines it reached, in time order, then applies the commands:
//!
//! ```text
//!  batch(timestamp) ─▶ log_clock = max(log_clock, timestamp)
//!                   ─▶ expired retained messages removed        (retained-expiry index)
//!                   ─▶ delayed wills published, expired sessions ended   (deadline index)
//!                   ─▶ commands
//! ```
//!
//! The deadline indexes are derived from the sessions and retained messages: rebuilt by
//! [`State::from_snapshot`] and compared with a rebuild by [`State::check_derived`]. A deadline
//! that no entry passes is reached by a `Tick`, which the node that may propose one (a single
//! node, or a cluster's leader) proposes once its own clock passes
//! [`State::next_deadline_ms`]: so every expiry happens once, in the same entry on every node,
//! and after a failover too.

use std::collections::BTreeSet;
use std::sync::Arc;

use starling_codec::{topic, QoS};
use starling_proto::state::v1 as pb;

use crate::effect::{CommandResult, Effect, Rejection, Resume};
use crate::message::{publish_packet_size, Message};
use crate::retained::RetainedStore;
use crate::session::{CleanSession, Owner, Queued, Session, SubOptions, Will};
use crate::trie::TopicTrie;
use crate::FastMap;

/// The limits the state machine applies: part of the replicated state (and of its snapshots), so
/// that every node applies the same entries with the same bounds. They change only through a
/// `SetLimits` command in the log, never from a node's local configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateConfig {
    /// Most messages waiting behind a session's in-flight window; a message that would exceed
    /// it is dropped.
    pub max_queued_messages: usize,
    /// The in-flight window: a session holds up to `max_inflight + max_queued_messages`
    /// messages not yet completed.
    pub max_inflight: usize,
    /// Most bytes held for one session, in flight or waiting (see [`Message::cost`]).
    pub max_queued_bytes: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            max_queued_messages: 1000,
            max_inflight: 20,
            max_queued_bytes: 16 * 1024 * 1024,
        }
    }
}

impl StateConfig {
    /// The log encoding.
    pub fn to_pb(&self) -> pb::Limits {
        pb::Limits {
            max_queued_messages: self.max_queued_messages as u64,
            max_inflight: self.max_inflight as u64,
            max_queued_bytes: self.max_queued_bytes as u64,
        }
    }

    /// These limits with the non-zero fields of `l` applied.
    pub fn updated(&self, l: &pb::Limits) -> StateConfig {
        let pick = |new: u64, old: usize| {
            if new == 0 {
                old
            } else {
                usize::try_from(new).unwrap_or(usize::MAX)
            }
        };
        StateConfig {
            max_queued_messages: pick(l.max_queued_messages, self.max_queued_messages),
            max_inflight: pick(l.max_inflight, self.max_inflight),
            max_queued_bytes: pick(l.max_queued_bytes, self.max_queued_bytes),
        }
    }

    /// The names (configuration keys) of the limits that differ between `self` and `other`, with
    /// both values: `[("max_inflight", 20, 32)]`.
    pub fn differences(&self, other: &StateConfig) -> Vec<(&'static str, usize, usize)> {
        let pairs = [
            (
                "max_queued_messages",
                self.max_queued_messages,
                other.max_queued_messages,
            ),
            ("max_inflight", self.max_inflight, other.max_inflight),
            (
                "max_queued_bytes",
                self.max_queued_bytes,
                other.max_queued_bytes,
            ),
        ];
        pairs.into_iter().filter(|(_, a, b)| a != b).collect()
    }
}

/// Counts for `$SYS` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Persistent sessions.
    pub sessions: usize,
    /// Of which connected.
    pub connected: usize,
    /// Persistent subscriptions.
    pub subscriptions: usize,
    /// Messages queued or in flight for persistent sessions.
    pub queued_messages: usize,
    /// Retained messages.
    pub retained_messages: usize,
    /// Messages dropped because a session queue was full, since the beginning of the log.
    pub dropped_messages: u64,
    /// Messages not queued because they exceeded a session's Maximum Packet Size, since the
    /// beginning of the log.
    pub oversized_messages: u64,
    /// Clean sessions tracked (clustered mode).
    pub clean_sessions: usize,
}

/// A snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a snapshot.
    #[error("undecodable snapshot: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// The deadlines of sessions, in log time. Derived from the sessions: each key is a function of
/// one session's fields ([`Session::expires_at_ms`], [`Session::will_due_at`]), removed before
/// the session changes and inserted again after.
#[derive(Debug, Default, PartialEq, Eq)]
struct Deadlines {
    /// (when it ends, client id) of every disconnected MQTT 5 session that expires.
    sessions: BTreeSet<(u64, Arc<str>)>,
    /// (when it is published, client id) of every will waiting for its delay.
    wills: BTreeSet<(u64, Arc<str>)>,
}

impl Deadlines {
    fn remove(&mut self, s: &Session) {
        if let Some(at) = s.expires_at_ms() {
            self.sessions.remove(&(at, s.client_id.clone()));
        }
        if let Some(at) = s.will_due_at() {
            self.wills.remove(&(at, s.client_id.clone()));
        }
    }

    fn insert(&mut self, s: &Session) {
        if let Some(at) = s.expires_at_ms() {
            self.sessions.insert((at, s.client_id.clone()));
        }
        if let Some(at) = s.will_due_at() {
            self.wills.insert((at, s.client_id.clone()));
        }
    }
}

/// The replicated state: persistent sessions and retained messages.
#[derive(Debug)]
pub struct State {
    /// The limits in force (replicated: changed by `SetLimits` entries only).
    config: StateConfig,
    /// Persistent sessions by client id.
    sessions: FastMap<Arc<str>, Session>,
    /// Subscriptions of persistent sessions, for routing durable messages. Derived from
    /// `sessions` (rebuilt by [`State::from_snapshot`]; [`State::check_index`] compares it with a
    /// rebuild).
    index: TopicTrie<Arc<str>, SubOptions>,
    /// Session expiries and delayed wills by time. Derived from `sessions` (rebuilt by
    /// [`State::from_snapshot`]; [`State::check_deadlines`] compares it with a rebuild).
    deadlines: Deadlines,
    /// The log's clock: the highest batch timestamp applied (ms since the Unix epoch). The only
    /// time apply reads.
    log_clock_ms: u64,
    /// Retained messages by topic.
    retained: RetainedStore,
    /// Clean sessions tracked in clustered mode.
    clean: FastMap<Arc<str>, CleanSession>,
    /// Highest epoch handed out; every connect takes the next one, so a command from any earlier
    /// connection (of this or an older incarnation of the session) is recognised as stale.
    last_epoch: u64,
    /// Index of the last entry applied (entries at or below it are skipped on replay).
    applied_index: u64,
    /// Messages dropped because a session's queue was full, since the beginning of the log.
    dropped_messages: u64,
    /// Messages not queued because they exceeded a session's Maximum Packet Size.
    oversized_messages: u64,
}

impl Default for State {
    /// An empty state with the default limits: what a log starts from.
    fn default() -> Self {
        State::new(StateConfig::default())
    }
}

/// Where the command being applied came from.
struct Origin {
    node: u64,
    incarnation: u64,
    request_id: u64,
}

impl Origin {
    fn reply(&self, effects: &mut Vec<Effect>, result: CommandResult) {
        if self.request_id != 0 {
            effects.push(Effect::Reply {
                node: self.node,
                incarnation: self.incarnation,
                request_id: self.request_id,
                result,
            });
        }
    }
}

/// Whether a subscription's Retain Handling asks for the retained messages now: 0 always, 1
/// when the subscription is new, 2 (and anything else) never (MQTT 5 §3.3.1.3).
fn retained_wanted(retain_handling: u32, existed: bool) -> bool {
    match retain_handling {
        0 => true,
        1 => !existed,
        _ => false,
    }
}

/// The Subscription Identifier of a subscription, as the list a delivery carries.
fn ids_of(options: &SubOptions) -> Vec<u32> {
    if options.subscription_id == 0 {
        Vec::new()
    } else {
        vec![options.subscription_id]
    }
}

/// Whether a PUBLISH of `m` with `ids` fits the session's Maximum Packet Size; else its size.
fn oversized(s: &Session, m: &Message, ids: &[u32]) -> Option<usize> {
    if s.maximum_packet_size == 0 {
        return None;
    }
    let size = publish_packet_size(m, ids);
    (size > s.maximum_packet_size as usize).then_some(size)
}

/// Whether a connection taken over by a CONNECT of the same client id gets its will published.
///
/// On its own node, yes: the broker closes a live network connection without a DISCONNECT
/// (MQTT-3.1.4-2), as a single node (and Mosquitto) does. Through another node, no: the client
/// has reconnected elsewhere, typically because its node died or became unreachable, and a
/// cluster publishes the wills of a lost node's clients unless they reconnected in between
/// (docs/cluster.md, "Wills when a node dies"). Both are decided from the log alone.
fn will_on_takeover(old: Owner, new: Owner) -> bool {
    old.node == new.node
}

impl State {
    /// An empty state.
    pub fn new(config: StateConfig) -> State {
        State {
            config,
            sessions: FastMap::default(),
            index: TopicTrie::new(),
            deadlines: Deadlines::default(),
            log_clock_ms: 0,
            retained: RetainedStore::new(),
            clean: FastMap::default(),
            last_epoch: 0,
            applied_index: 0,
            dropped_messages: 0,
            oversized_messages: 0,
        }
    }

    /// The log's clock: the highest batch timestamp applied (ms since the Unix epoch).
    pub fn log_clock_ms(&self) -> u64 {
        self.log_clock_ms
    }

    /// The earliest deadline in log time (a session's expiry, a delayed will, a retained
    /// message's expiry) that the log's clock has not passed yet. The first batch with a
    /// timestamp at or after it passes it; a node proposes a `Tick` for that when nothing else
    /// would.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        [
            self.deadlines.sessions.first().map(|(at, _)| *at),
            self.deadlines.wills.first().map(|(at, _)| *at),
            self.retained.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Marks `index` applied without a batch (an entry that carries no commands, e.g. a Raft
    /// leader's empty entry).
    pub fn skip(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Applies the log entry `index` as a log stores it: an encoded [`pb::Batch`], or no bytes
    /// for an entry that carries no commands (a Raft leader's empty entry, a membership change),
    /// which is skipped. An undecodable entry is skipped too, and the decoding error returned.
    ///
    /// # Errors
    /// `data` is not a [`pb::Batch`] (the index counts as applied all the same).
    pub fn apply_encoded(
        &mut self,
        index: u64,
        data: &[u8],
        effects: &mut Vec<Effect>,
    ) -> Result<(), prost::DecodeError> {
        use prost::Message as _;
        if data.is_empty() {
            self.skip(index);
            return Ok(());
        }
        match pb::Batch::decode(data) {
            Ok(batch) => {
                self.apply(index, &batch, effects);
                Ok(())
            }
            Err(e) => {
                self.skip(index);
                Err(e)
            }
        }
    }

    /// Whether any session (persistent, or clean and tracked) is connected through node `node`.
    pub fn has_sessions_on(&self, node: u64) -> bool {
        self.sessions
            .values()
            .any(|s| s.owner.is_some_and(|o| o.node == node))
            || self.clean.values().any(|c| c.owner.node == node)
    }

    /// A stored session.
    pub fn session(&self, client_id: &str) -> Option<&Session> {
        self.sessions.get(client_id)
    }

    /// A tracked clean session (clustered mode).
    pub fn clean_session(&self, client_id: &str) -> Option<&CleanSession> {
        self.clean.get(client_id)
    }

    /// The filters of a persistent or tracked clean session.
    pub fn filters_of(&self, client_id: &str) -> Vec<Arc<str>> {
        match (self.sessions.get(client_id), self.clean.get(client_id)) {
            (Some(s), _) => s.subscriptions.keys().cloned().collect(),
            (None, Some(c)) => c.subscriptions.keys().cloned().collect(),
            (None, None) => Vec::new(),
        }
    }

    /// All stored sessions (in no particular order).
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Retained messages.
    pub fn retained(&self) -> &RetainedStore {
        &self.retained
    }

    /// The limits in force.
    pub fn config(&self) -> &StateConfig {
        &self.config
    }

    /// All tracked clean sessions (clustered mode; in no particular order).
    pub fn clean_sessions(&self) -> impl Iterator<Item = &CleanSession> {
        self.clean.values()
    }

    /// Replaces the limits without a log entry: the state then diverges from the other replicas.
    /// Only for the simulator's mutation tests, which prove that divergence is caught.
    #[cfg(feature = "mutations")]
    pub fn override_limits(&mut self, limits: StateConfig) {
        self.config = limits;
    }

    /// Compares the subscription index of persistent sessions with one rebuilt from the
    /// sessions; `Err` describes the first difference.
    ///
    /// # Errors
    /// The incrementally maintained index differs from the rebuilt one.
    pub fn check_index(&self) -> Result<(), String> {
        type Entry = (String, Arc<str>, SubOptions);
        let mut have: Vec<Entry> = Vec::with_capacity(self.index.len());
        self.index
            .for_each_entry(|f, k, o| have.push((f.to_string(), k.clone(), *o)));
        let mut want: Vec<Entry> = Vec::with_capacity(have.len());
        for s in self.sessions.values() {
            for (f, o) in &s.subscriptions {
                want.push((f.to_string(), s.client_id.clone(), *o));
            }
        }
        have.sort_unstable();
        want.sort_unstable();
        if have == want {
            return Ok(());
        }
        let extra = have.iter().find(|e| want.binary_search(e).is_err());
        let missing = want.iter().find(|e| have.binary_search(e).is_err());
        Err(format!(
            "persistent subscription index differs from its rebuild: {} entries kept, {} \
             expected; first extra {extra:?}, first missing {missing:?}",
            have.len(),
            want.len()
        ))
    }

    /// Compares the deadline indexes (session expiries, delayed wills) with ones rebuilt from
    /// the sessions; `Err` describes the first difference.
    ///
    /// # Errors
    /// An incrementally maintained index differs from its rebuild.
    pub fn check_deadlines(&self) -> Result<(), String> {
        let mut want = Deadlines::default();
        for s in self.sessions.values() {
            want.insert(s);
        }
        for (what, have, want) in [
            ("session-expiry", &self.deadlines.sessions, &want.sessions),
            ("delayed-will", &self.deadlines.wills, &want.wills),
        ] {
            if have != want {
                let extra = have.difference(want).next();
                let missing = want.difference(have).next();
                return Err(format!(
                    "{what} index differs from its rebuild: {} entries kept, {} expected; \
                     first extra {extra:?}, first missing {missing:?}",
                    have.len(),
                    want.len()
                ));
            }
        }
        Ok(())
    }

    /// Compares every index derived from the state with a rebuild: the subscription index
    /// ([`State::check_index`]), the deadline indexes ([`State::check_deadlines`]) and the
    /// retained-expiry index; `Err` describes the first difference.
    ///
    /// # Errors
    /// An incrementally maintained index differs from its rebuild.
    pub fn check_derived(&self) -> Result<(), String> {
        self.check_index()?;
        self.check_deadlines()?;
        self.retained.check_expiry_index()
    }

    /// Counts (walks all sessions).
    pub fn stats(&self) -> StateStats {
        let mut s = StateStats {
            sessions: self.sessions.len(),
            subscriptions: self.index.len(),
            retained_messages: self.retained.len(),
            dropped_messages: self.dropped_messages,
            oversized_messages: self.oversized_messages,
            clean_sessions: self.clean.len(),
            ..StateStats::default()
        };
        for session in self.sessions.values() {
            s.connected += usize::from(session.owner.is_some());
            s.queued_messages += session.queue.len();
        }
        s
    }

    /// Applies the entry `index`. Entries at or below the applied index are ignored, so replaying
    /// a log over a snapshot is safe.
    pub fn apply(&mut self, index: u64, batch: &pb::Batch, effects: &mut Vec<Effect>) {
        if index <= self.applied_index {
            return;
        }
        self.advance_clock(batch.timestamp_ms, effects);
        for command in &batch.commands {
            let origin = Origin {
                node: batch.node_id,
                incarnation: batch.incarnation,
                request_id: command.request_id,
            };
            self.apply_command(&origin, command, effects);
        }
        self.applied_index = index;
    }

    /// Moves the log's clock to `timestamp_ms` (never back) and passes the deadlines it
    /// reached: expired retained messages go, then delayed wills are published and expired
    /// sessions end, in time order (a will due at the moment its session ends goes first; it
    /// goes once either way).
    fn advance_clock(&mut self, timestamp_ms: u64, effects: &mut Vec<Effect>) {
        self.log_clock_ms = self.log_clock_ms.max(timestamp_ms);
        let now = self.log_clock_ms;
        self.retained.expire(now);
        loop {
            let session = self.deadlines.sessions.first().filter(|(at, _)| *at <= now);
            let will = self.deadlines.wills.first().filter(|(at, _)| *at <= now);
            let will_first = match (session, will) {
                (None, None) => break,
                (Some((s, _)), Some((w, _))) => w <= s,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            if will_first {
                if let Some((_, id)) = self.deadlines.wills.pop_first() {
                    self.publish_delayed_will(&id, effects);
                }
            } else if let Some((_, id)) = self.deadlines.sessions.pop_first() {
                // MQTT 5 §4.1: the session state is discarded when its expiry has passed.
                if let Some(s) = self.remove_session(&id) {
                    self.forget(s, None, effects);
                }
            }
        }
    }

    /// Publishes the will that waited for its delay (MQTT 5 §3.1.3.2.2).
    fn publish_delayed_will(&mut self, client_id: &str, effects: &mut Vec<Effect>) {
        let Some(s) = self.sessions.get_mut(client_id) else {
            return;
        };
        self.deadlines.remove(s);
        let will = s.will.take();
        s.will_due_at_ms = 0;
        self.deadlines.insert(s);
        if let Some(w) = will {
            let m = w.publication(self.log_clock_ms);
            self.publish_message(&m, false, effects);
        }
    }

    /// Removes a session from the map and its deadlines from the index.
    fn remove_session(&mut self, client_id: &str) -> Option<Session> {
        let s = self.sessions.remove(client_id)?;
        self.deadlines.remove(&s);
        Some(s)
    }

    /// A new connection of the client: a will waiting for its delay is not published
    /// (MQTT-3.1.2-8).
    fn cancel_delayed_will(&mut self, client_id: &str) {
        if let Some(s) = self.sessions.get_mut(client_id) {
            if s.will_due_at().is_some() {
                self.deadlines.remove(s);
                s.will = None;
                s.will_due_at_ms = 0;
                self.deadlines.insert(s);
            }
        }
    }

    fn apply_command(&mut self, origin: &Origin, command: &pb::Command, effects: &mut Vec<Effect>) {
        use pb::command::Kind;
        match &command.kind {
            Some(Kind::Connect(c)) => self.connect(origin, c, effects),
            Some(Kind::Disconnect(d)) => self.disconnect(origin, d, effects),
            Some(Kind::Subscribe(s)) => self.subscribe(origin, s, effects),
            Some(Kind::Unsubscribe(u)) => self.unsubscribe(origin, u, effects),
            Some(Kind::Publish(p)) => self.publish(origin, p, effects),
            Some(Kind::Release(r)) => self.release(origin, r, effects),
            Some(Kind::Ack(a)) => self.ack(origin, a, effects),
            Some(Kind::DropSession(d)) => self.drop_session(origin, d, effects),
            Some(Kind::NodeDown(n)) => self.node_down(origin, n, effects),
            Some(Kind::SetLimits(l)) => {
                if let Some(l) = &l.limits {
                    self.config = self.config.updated(l);
                }
                let limits = self.config.clone();
                effects.push(Effect::LimitsChanged {
                    limits: limits.clone(),
                });
                origin.reply(effects, CommandResult::LimitsSet(limits));
            }
            // Its work is the clock's move, done for every batch.
            Some(Kind::Tick(_)) => origin.reply(effects, CommandResult::Ticked),
            None => origin.reply(effects, CommandResult::Rejected(Rejection::NoSession)),
        }
    }

    /// The session `client_id` if `epoch` is its current epoch and it is connected.
    fn owned(&mut self, client_id: &str, epoch: u64) -> Result<&mut Session, Rejection> {
        let s = self
            .sessions
            .get_mut(client_id)
            .ok_or(Rejection::NoSession)?;
        if s.epoch != epoch || s.owner.is_none() {
            return Err(Rejection::StaleEpoch);
        }
        Ok(s)
    }

    fn next_epoch(&mut self) -> u64 {
        self.last_epoch += 1;
        self.last_epoch
    }

    fn connect(&mut self, origin: &Origin, c: &pb::SessionConnect, effects: &mut Vec<Effect>) {
        let owner = Owner {
            node: c.node_id,
            connection: c.connection_id,
        };
        let now = self.log_clock_ms;
        // MQTT 5: `clean_session` is Clean Start, and the session's life is its expiry. The v5
        // fields of an older connect are ignored, so that 3.1 / 3.1.1 behave as before them.
        let v5 = c.protocol_level >= 5;
        let will = c.will.clone().map(|m| {
            let mut message = Message::from_pb(m);
            message.expires_at_ms = 0;
            if message.publisher.is_empty() {
                message.publisher = c.client_id.as_str().into();
            }
            Will {
                message,
                delay_secs: if v5 { c.will_delay_secs } else { 0 },
                expiry_secs: if v5 { c.will_expiry_secs } else { 0 },
            }
        });
        // A new connection of the client: a will waiting for its delay is not published.
        self.cancel_delayed_will(&c.client_id);
        // A client id has one session: Clean Start discards a stored one, and a connect of
        // either kind replaces a tracked clean session.
        if c.clean_session {
            if let Some(s) = self.remove_session(&c.client_id) {
                self.forget(s, Some(owner), effects);
            }
        }
        if let Some(old) = self.clean.remove(c.client_id.as_str()) {
            let will = will_on_takeover(old.owner, owner);
            self.forget_clean(old, will, Some(owner), effects);
        }
        // A session outlives its connection iff its expiry is non-zero (3.1.1: iff Clean
        // Session is 0). A v5 client with expiry 0 and without Clean Start resumes a stored
        // session, which then ends with this connection; without one it is a clean session.
        let expiry = c.session_expiry_secs.unwrap_or(0);
        let persistent = if v5 {
            expiry > 0 || (!c.clean_session && self.sessions.contains_key(c.client_id.as_str()))
        } else {
            !c.clean_session
        };
        if !persistent {
            let epoch = if c.track {
                let epoch = self.next_epoch();
                let client_id: Arc<str> = Arc::from(c.client_id.as_str());
                self.clean.insert(
                    client_id.clone(),
                    CleanSession {
                        client_id: client_id.clone(),
                        owner,
                        epoch,
                        subscriptions: Default::default(),
                        will,
                    },
                );
                effects.push(Effect::Online {
                    client_id,
                    owner,
                    epoch,
                });
                epoch
            } else {
                0
            };
            let resume = Box::default();
            return origin.reply(
                effects,
                CommandResult::Connected {
                    epoch,
                    session_present: false,
                    resume,
                },
            );
        }
        let epoch = self.next_epoch();
        let present = self.sessions.contains_key(c.client_id.as_str());
        let s = self
            .sessions
            .entry(Arc::from(c.client_id.as_str()))
            .or_insert_with_key(|id| Session::new(id.clone()));
        self.deadlines.remove(s);
        let mut old_will = None;
        if let Some(old) = s.owner {
            // The previous connection never reported what it sent: assume it sent everything.
            effects.push(Effect::Kick {
                client_id: s.client_id.clone(),
                owner: old,
                by: Some(owner),
            });
            s.sent_up_to = s.next_seq - 1;
            // A will with a delay is cut short by this very connection (MQTT-3.1.2-8).
            old_will = s
                .will
                .take()
                .filter(|w| will_on_takeover(old, owner) && w.delay_secs == 0);
        }
        if !present {
            s.username = c.username.clone();
        }
        s.epoch = epoch;
        s.owner = Some(owner);
        s.will = will;
        s.will_due_at_ms = 0;
        s.disconnected_at_ms = 0;
        s.protocol_level = c.protocol_level.min(u32::from(u8::MAX)) as u8;
        s.expiry_secs = v5.then_some(expiry);
        s.receive_maximum = if v5 { c.receive_maximum } else { 0 };
        s.maximum_packet_size = if v5 { c.maximum_packet_size } else { 0 };
        // What expired while the session was offline is not sent; what was sent stays.
        s.drop_expired_unsent(now);
        self.deadlines.insert(s);
        let resume = Box::new(Resume {
            subscriptions: s
                .subscriptions
                .iter()
                .map(|(f, o)| (f.clone(), *o))
                .collect(),
            outbound: s.queue.iter().map(|q| s.outbound(q)).collect(),
            inbound: s.inbound.iter().copied().collect(),
        });
        effects.push(Effect::Online {
            client_id: s.client_id.clone(),
            owner,
            epoch,
        });
        // A connection taken over on its own node loses its network connection: its will is
        // published (see `will_on_takeover`).
        if let Some(w) = old_will {
            self.publish_message(&w.publication(now), false, effects);
        }
        origin.reply(
            effects,
            CommandResult::Connected {
                epoch,
                session_present: present,
                resume,
            },
        );
    }

    /// Ends a tracked clean session: closes its connection (taken over `by` another one, if
    /// that is why), publishes its will if asked.
    fn forget_clean(
        &mut self,
        cs: CleanSession,
        publish_will: bool,
        by: Option<Owner>,
        effects: &mut Vec<Effect>,
    ) {
        effects.push(Effect::Kick {
            client_id: cs.client_id.clone(),
            owner: cs.owner,
            by,
        });
        let filters = cs.subscriptions.into_keys().collect();
        effects.push(Effect::SessionRemoved {
            client_id: cs.client_id,
            filters,
        });
        if publish_will {
            if let Some(w) = cs.will {
                self.publish_message(&w.publication(self.log_clock_ms), false, effects);
            }
        }
    }

    /// Removes a session's subscriptions and closes its connection, if any; `taken_over_by` is
    /// the connection of the same client id that replaces it, if that is why. The session ends:
    /// the will of its connection is published (unless the client reconnected through another
    /// node, or cut its delay short), and so is a will that waited for its delay.
    fn forget(&mut self, s: Session, taken_over_by: Option<Owner>, effects: &mut Vec<Effect>) {
        let mut will = None;
        if let Some(owner) = s.owner {
            effects.push(Effect::Kick {
                client_id: s.client_id.clone(),
                owner,
                by: taken_over_by,
            });
            // Its connection is closed by this: its will is due, unless the client itself
            // reconnected through another node, or reconnected before the will's delay.
            let due = taken_over_by.is_none_or(|new| {
                will_on_takeover(owner, new) && s.will.as_ref().is_some_and(|w| w.delay_secs == 0)
            });
            if due {
                will = s.will.as_ref();
            }
        } else if s.will_due_at().is_some() {
            will = s.will.as_ref();
        }
        if let Some(w) = will {
            self.publish_message(&w.publication(self.log_clock_ms), false, effects);
        }
        for filter in s.subscriptions.keys() {
            self.index.remove(filter, &s.client_id);
        }
        let filters = s.subscriptions.into_keys().collect();
        effects.push(Effect::SessionRemoved {
            client_id: s.client_id,
            filters,
        });
    }

    fn disconnect(
        &mut self,
        origin: &Origin,
        d: &pb::SessionDisconnect,
        effects: &mut Vec<Effect>,
    ) {
        if self
            .clean
            .get(d.client_id.as_str())
            .is_some_and(|c| c.epoch == d.epoch)
        {
            if let Some(cs) = self.clean.remove(d.client_id.as_str()) {
                let filters = cs.subscriptions.into_keys().collect();
                effects.push(Effect::SessionRemoved {
                    client_id: cs.client_id,
                    filters,
                });
                if d.publish_will {
                    if let Some(w) = cs.will {
                        self.publish_message(&w.publication(self.log_clock_ms), false, effects);
                    }
                }
            }
            return origin.reply(effects, CommandResult::Disconnected);
        }
        if let Err(r) = self.owned(&d.client_id, d.epoch) {
            return origin.reply(effects, CommandResult::Rejected(r));
        }
        self.end_connection(
            &d.client_id,
            d.sent_up_to,
            d.publish_will,
            d.session_expiry_secs,
            effects,
        );
        origin.reply(effects, CommandResult::Disconnected);
    }

    /// The connection of session `client_id` ended. Its will (if `publish_will`) is published
    /// now, or kept until its delay has passed (MQTT 5 §3.1.3.2.2); `expiry` is a new Session
    /// Expiry Interval (MQTT 5 DISCONNECT). A session whose expiry has run out by now (expiry
    /// 0) ends here, and its will goes at once.
    fn end_connection(
        &mut self,
        client_id: &str,
        sent_up_to: u64,
        publish_will: bool,
        expiry: Option<u32>,
        effects: &mut Vec<Effect>,
    ) {
        let now = self.log_clock_ms;
        let Some(s) = self.sessions.get_mut(client_id) else {
            return;
        };
        self.deadlines.remove(s);
        s.owner = None;
        s.sent_up_to = s.sent_up_to.max(sent_up_to.min(s.next_seq - 1));
        s.disconnected_at_ms = now.max(1);
        if let (Some(secs), Some(_)) = (expiry, s.expiry_secs) {
            s.expiry_secs = Some(secs);
        }
        effects.push(Effect::Offline {
            client_id: s.client_id.clone(),
        });
        let ends = s.expires_at_ms().is_some_and(|at| at <= now);
        let mut publish = None;
        match s.will.take().filter(|_| publish_will) {
            Some(w) if w.delay_secs > 0 && !ends => {
                s.will_due_at_ms = now.saturating_add(u64::from(w.delay_secs) * 1000);
                s.will = Some(w);
            }
            w => publish = w,
        }
        if ends {
            let id = s.client_id.clone();
            if let Some(s) = self.sessions.remove(&id) {
                self.forget(s, None, effects);
            }
        } else {
            self.deadlines.insert(s);
        }
        if let Some(w) = publish {
            self.publish_message(&w.publication(now), false, effects);
        }
    }

    fn subscribe(&mut self, origin: &Origin, sub: &pb::Subscribe, effects: &mut Vec<Effect>) {
        let mut granted = Vec::with_capacity(sub.filters.len());
        let mut send_retained = Vec::with_capacity(sub.filters.len());
        if let Some(cs) = self
            .clean
            .get_mut(sub.client_id.as_str())
            .filter(|c| c.epoch == sub.epoch)
        {
            // Retained messages for a clean session are sent by the node serving it.
            for f in &sub.filters {
                let options = SubOptions::from_request(f);
                granted.push(options.qos);
                if topic::validate_filter(&f.filter).is_err() {
                    send_retained.push(false);
                    continue;
                }
                let filter: Arc<str> = Arc::from(f.filter.as_str());
                let existed = cs.subscriptions.insert(filter.clone(), options).is_some();
                send_retained.push(retained_wanted(f.retain_handling, existed));
                effects.push(Effect::RouteAdd {
                    client_id: cs.client_id.clone(),
                    filter,
                    options,
                    durable: false,
                });
            }
            return origin.reply(
                effects,
                CommandResult::Subscribed {
                    granted,
                    send_retained,
                },
            );
        }
        let s = match self.owned(&sub.client_id, sub.epoch) {
            Ok(s) => s,
            Err(r) => return origin.reply(effects, CommandResult::Rejected(r)),
        };
        let client_id = s.client_id.clone();
        let mut added = Vec::with_capacity(sub.filters.len());
        for f in &sub.filters {
            let options = SubOptions::from_request(f);
            granted.push(options.qos);
            if topic::validate_filter(&f.filter).is_err() {
                send_retained.push(false);
                continue;
            }
            let filter: Arc<str> = Arc::from(f.filter.as_str());
            let existed = s.subscriptions.insert(filter.clone(), options).is_some();
            let send = retained_wanted(f.retain_handling, existed);
            send_retained.push(send);
            added.push((filter, options, send));
        }
        for (filter, options, _) in &added {
            self.index.insert(filter, client_id.clone(), *options);
            effects.push(Effect::RouteAdd {
                client_id: client_id.clone(),
                filter: filter.clone(),
                options: *options,
                durable: true,
            });
        }
        origin.reply(
            effects,
            CommandResult::Subscribed {
                granted,
                send_retained,
            },
        );
        // Retained messages follow the SUBACK, for every filter whose Retain Handling asks for
        // them (3.1.1: every filter, also when re-subscribing), RETAIN set, with the
        // subscription's identifier.
        let now = self.log_clock_ms;
        let mut retained = Vec::new();
        for (filter, options, _) in added.iter().filter(|(_, _, send)| *send) {
            self.retained.for_each_matching(filter, |m| {
                if !m.is_expired(now) {
                    retained.push((m.with(m.qos.min(options.qos), true), ids_of(options)));
                }
            });
        }
        for (m, ids) in retained {
            if m.qos == QoS::AtMostOnce {
                self.deliver_qos0(&client_id, m, ids, effects);
            } else {
                self.enqueue(&client_id, m, ids, effects);
            }
        }
    }

    /// Sends a QoS 0 message (a retained one on subscribe) to the session's connection, if it
    /// has one and the message fits its Maximum Packet Size.
    fn deliver_qos0(
        &mut self,
        client_id: &str,
        message: Message,
        subscription_ids: Vec<u32>,
        effects: &mut Vec<Effect>,
    ) {
        let Some(s) = self.sessions.get(client_id) else {
            return;
        };
        let Some(owner) = s.owner else {
            return;
        };
        if let Some(size) = oversized(s, &message, &subscription_ids) {
            self.oversized_messages += 1;
            effects.push(Effect::PacketTooLarge {
                client_id: s.client_id.clone(),
                size,
                limit: s.maximum_packet_size,
            });
            return;
        }
        effects.push(Effect::DeliverQos0 {
            client_id: s.client_id.clone(),
            owner,
            epoch: s.epoch,
            message,
            subscription_ids,
        });
    }

    fn unsubscribe(&mut self, origin: &Origin, u: &pb::Unsubscribe, effects: &mut Vec<Effect>) {
        if let Some(cs) = self
            .clean
            .get_mut(u.client_id.as_str())
            .filter(|c| c.epoch == u.epoch)
        {
            for f in &u.filters {
                if let Some((filter, _)) = cs.subscriptions.remove_entry(f.as_str()) {
                    effects.push(Effect::RouteRemove {
                        client_id: cs.client_id.clone(),
                        filter,
                    });
                }
            }
            return origin.reply(effects, CommandResult::Unsubscribed);
        }
        let s = match self.owned(&u.client_id, u.epoch) {
            Ok(s) => s,
            Err(r) => return origin.reply(effects, CommandResult::Rejected(r)),
        };
        let client_id = s.client_id.clone();
        let removed: Vec<Arc<str>> = u
            .filters
            .iter()
            .filter_map(|f| s.subscriptions.remove_entry(f.as_str()).map(|(k, _)| k))
            .collect();
        for filter in removed {
            self.index.remove(&filter, &client_id);
            effects.push(Effect::RouteRemove {
                client_id: client_id.clone(),
                filter,
            });
        }
        origin.reply(effects, CommandResult::Unsubscribed);
    }

    fn publish(&mut self, origin: &Origin, p: &pb::Publish, effects: &mut Vec<Effect>) {
        let Some(m) = p.message.clone() else {
            return origin.reply(effects, CommandResult::Rejected(Rejection::NoSession));
        };
        if !p.origin_client.is_empty() && p.packet_id != 0 {
            let s = match self.owned(&p.origin_client, p.origin_epoch) {
                Ok(s) => s,
                Err(r) => return origin.reply(effects, CommandResult::Rejected(r)),
            };
            if !s.inbound.insert(p.packet_id as u16) {
                return origin.reply(effects, CommandResult::Published { duplicate: true });
            }
        }
        self.publish_message(&Message::from_pb(m), p.fast_path_done, effects);
        origin.reply(effects, CommandResult::Published { duplicate: false });
    }

    /// Retains and routes a message to persistent sessions; asks for the fast path unless done.
    /// A message that has expired (log time) is neither delivered nor retained, and clears the
    /// retained message it would have replaced.
    fn publish_message(&mut self, m: &Message, fast_path_done: bool, effects: &mut Vec<Effect>) {
        let expired = m.is_expired(self.log_clock_ms);
        if m.retain {
            if expired {
                self.retained.remove(&m.topic);
            } else {
                self.retained.set(m);
            }
        }
        if expired {
            return;
        }
        // Every matching subscription, less those with No Local of the publisher's session.
        let mut matches: Vec<(Arc<str>, SubOptions)> = Vec::new();
        self.index.for_each_match(&m.topic, |k, o| {
            if !(o.no_local && *m.publisher == **k) {
                matches.push((k.clone(), *o));
            }
        });
        matches.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // One copy per session, at the highest QoS of its matching subscriptions, with all their
        // identifiers; RETAIN kept if one of them has Retain As Published.
        let mut targets: Vec<(Arc<str>, QoS, bool, Vec<u32>)> = Vec::new();
        for group in matches.chunk_by(|a, b| a.0 == b.0) {
            let qos = group
                .iter()
                .map(|(_, o)| o.qos)
                .max()
                .unwrap_or(QoS::AtMostOnce);
            let keep_retain = group.iter().any(|(_, o)| o.retain_as_published);
            let mut ids: Vec<u32> = group
                .iter()
                .map(|(_, o)| o.subscription_id)
                .filter(|id| *id != 0)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            targets.push((group[0].0.clone(), qos, keep_retain, ids));
        }
        for (client_id, sub_qos, keep_retain, ids) in targets {
            let qos = m.qos.min(sub_qos);
            if qos != QoS::AtMostOnce {
                self.enqueue(
                    &client_id,
                    m.with(qos, m.retain && keep_retain),
                    ids,
                    effects,
                );
            }
        }
        if !fast_path_done {
            effects.push(Effect::FastPath { message: m.clone() });
        }
    }

    /// Queues a message for a session (and hands it to its connection, if any), unless it has
    /// expired, is larger than the client accepts, or the session's queue is full.
    fn enqueue(
        &mut self,
        client_id: &str,
        m: Message,
        subscription_ids: Vec<u32>,
        effects: &mut Vec<Effect>,
    ) {
        let Some(s) = self.sessions.get_mut(client_id) else {
            return;
        };
        if m.is_expired(self.log_clock_ms) {
            return;
        }
        if let Some(size) = oversized(s, &m, &subscription_ids) {
            self.oversized_messages += 1;
            effects.push(Effect::PacketTooLarge {
                client_id: s.client_id.clone(),
                size,
                limit: s.maximum_packet_size,
            });
            return;
        }
        if s.queue.len() >= self.config.max_queued_messages + self.config.max_inflight
            || s.queued_bytes + m.cost() > self.config.max_queued_bytes
        {
            self.dropped_messages += 1;
            effects.push(Effect::QueueFull {
                client_id: s.client_id.clone(),
                queued: s.queue.len(),
                queued_bytes: s.queued_bytes,
            });
            return;
        }
        s.push(m, subscription_ids);
        if let Some(owner) = s.owner {
            let message = s.queue.back().map(|q| s.outbound(q)).expect("just pushed");
            effects.push(Effect::Deliver {
                client_id: s.client_id.clone(),
                owner,
                epoch: s.epoch,
                message,
            });
        }
    }

    fn release(&mut self, origin: &Origin, r: &pb::ReleaseInbound, effects: &mut Vec<Effect>) {
        match self.owned(&r.client_id, r.epoch) {
            Ok(s) => {
                s.inbound.remove(&(r.packet_id as u16));
                origin.reply(effects, CommandResult::Released);
            }
            Err(e) => origin.reply(effects, CommandResult::Rejected(e)),
        }
    }

    fn ack(&mut self, origin: &Origin, a: &pb::OutboundAck, effects: &mut Vec<Effect>) {
        let s = match self.owned(&a.client_id, a.epoch) {
            Ok(s) => s,
            Err(r) => return origin.reply(effects, CommandResult::Rejected(r)),
        };
        let Some(i) = s.position(a.seq) else {
            return origin.reply(effects, CommandResult::Acked);
        };
        let q = &mut s.queue[i];
        match pb::AckKind::try_from(a.kind) {
            Ok(pb::AckKind::Puback) if q.message.qos == QoS::AtLeastOnce => {
                s.remove(a.seq);
            }
            Ok(pb::AckKind::Pubrec) if q.message.qos == QoS::ExactlyOnce => {
                q.released = true;
                if let Some(owner) = s.owner {
                    let (client_id, epoch, seq) = (s.client_id.clone(), s.epoch, a.seq);
                    effects.push(Effect::Release {
                        client_id,
                        owner,
                        epoch,
                        seq,
                    });
                }
            }
            Ok(pb::AckKind::Pubcomp) if q.message.qos == QoS::ExactlyOnce && q.released => {
                s.remove(a.seq);
            }
            _ => {}
        }
        origin.reply(effects, CommandResult::Acked);
    }

    fn drop_session(&mut self, origin: &Origin, d: &pb::DropSession, effects: &mut Vec<Effect>) {
        let keep = match self.sessions.get(d.client_id.as_str()) {
            None => true,
            Some(s) => {
                d.if_disconnected_at_ms != 0
                    && (s.owner.is_some() || s.disconnected_at_ms != d.if_disconnected_at_ms)
            }
        };
        if !keep {
            if let Some(s) = self.remove_session(d.client_id.as_str()) {
                self.forget(s, None, effects);
            }
        }
        origin.reply(effects, CommandResult::Dropped);
    }

    fn node_down(&mut self, origin: &Origin, n: &pb::NodeDown, effects: &mut Vec<Effect>) {
        let mut ids: Vec<Arc<str>> = self
            .sessions
            .values()
            .filter(|s| s.owner.is_some_and(|o| o.node == n.node_id))
            .map(|s| s.client_id.clone())
            .collect();
        ids.sort_unstable();
        for id in ids {
            let Some(s) = self.sessions.get(&*id) else {
                continue;
            };
            let all = s.next_seq - 1;
            if let Some(owner) = s.owner {
                // Should the node still be serving it (a partition), it stops.
                effects.push(Effect::Kick {
                    client_id: s.client_id.clone(),
                    owner,
                    by: None,
                });
            }
            self.end_connection(&id, all, true, None, effects);
        }
        let mut clean: Vec<Arc<str>> = self
            .clean
            .values()
            .filter(|c| c.owner.node == n.node_id)
            .map(|c| c.client_id.clone())
            .collect();
        clean.sort_unstable();
        for id in clean {
            if let Some(cs) = self.clean.remove(&*id) {
                self.forget_clean(cs, true, None, effects);
            }
        }
        origin.reply(effects, CommandResult::NodeDownApplied);
    }

    /// The whole state as a snapshot message, in a canonical order.
    pub fn to_snapshot(&self) -> pb::Snapshot {
        let subscriptions = |subs: &std::collections::BTreeMap<Arc<str>, SubOptions>| {
            subs.iter().map(|(f, o)| o.to_record(f)).collect()
        };
        let mut ids: Vec<&Arc<str>> = self.sessions.keys().collect();
        ids.sort_unstable();
        let sessions = ids
            .into_iter()
            .map(|id| {
                let s = &self.sessions[id];
                pb::SessionRecord {
                    client_id: s.client_id.to_string(),
                    connected: s.owner.is_some(),
                    owner_node: s.owner.map_or(0, |o| o.node),
                    owner_connection: s.owner.map_or(0, |o| o.connection),
                    epoch: s.epoch,
                    subscriptions: subscriptions(&s.subscriptions),
                    queue: s
                        .queue
                        .iter()
                        .map(|q| pb::QueuedMessage {
                            seq: q.seq,
                            qos: q.message.qos.as_u8().into(),
                            released: q.released,
                            message: Some(q.message.to_pb()),
                            subscription_ids: q.subscription_ids.clone(),
                        })
                        .collect(),
                    next_seq: s.next_seq,
                    sent_up_to: s.sent_up_to,
                    inbound: s.inbound.iter().map(|&p| u32::from(p)).collect(),
                    will: s.will.as_ref().map(|w| w.message.to_pb()),
                    disconnected_at_ms: s.disconnected_at_ms,
                    username: s.username.clone(),
                    protocol_level: u32::from(s.protocol_level),
                    session_expiry_secs: s.expiry_secs,
                    receive_maximum: s.receive_maximum,
                    maximum_packet_size: s.maximum_packet_size,
                    will_delay_secs: s.will.as_ref().map_or(0, |w| w.delay_secs),
                    will_expiry_secs: s.will.as_ref().map_or(0, |w| w.expiry_secs),
                    will_due_at_ms: s.will_due_at_ms,
                }
            })
            .collect();
        let mut retained = Vec::with_capacity(self.retained.len());
        self.retained.for_each(|m| retained.push(m.to_pb()));
        let mut clean_ids: Vec<&Arc<str>> = self.clean.keys().collect();
        clean_ids.sort_unstable();
        let clean_sessions = clean_ids
            .into_iter()
            .map(|id| {
                let c = &self.clean[id];
                pb::CleanSessionRecord {
                    client_id: c.client_id.to_string(),
                    owner_node: c.owner.node,
                    owner_connection: c.owner.connection,
                    epoch: c.epoch,
                    subscriptions: subscriptions(&c.subscriptions),
                    will: c.will.as_ref().map(|w| w.message.to_pb()),
                    will_delay_secs: c.will.as_ref().map_or(0, |w| w.delay_secs),
                    will_expiry_secs: c.will.as_ref().map_or(0, |w| w.expiry_secs),
                }
            })
            .collect();
        pb::Snapshot {
            applied_index: self.applied_index,
            sessions,
            retained,
            dropped_messages: self.dropped_messages,
            clean_sessions,
            last_epoch: self.last_epoch,
            limits: Some(self.config.to_pb()),
            log_clock_ms: self.log_clock_ms,
            oversized_messages: self.oversized_messages,
        }
    }

    /// Rebuilds a state from a snapshot (limits included: the defaults when it has none), with
    /// every index derived from it. A snapshot written before a field existed restores that
    /// field's default, which means what a 3.1.1 session always meant.
    pub fn from_snapshot(snap: pb::Snapshot) -> State {
        let config = match &snap.limits {
            Some(l) => StateConfig::default().updated(l),
            None => StateConfig::default(),
        };
        let mut state = State::new(config);
        state.applied_index = snap.applied_index;
        state.dropped_messages = snap.dropped_messages;
        state.oversized_messages = snap.oversized_messages;
        state.last_epoch = snap.last_epoch;
        state.log_clock_ms = snap.log_clock_ms;
        let subscription = |r: pb::SubscriptionRecord| {
            let options = SubOptions::from_record(&r);
            (Arc::<str>::from(r.filter), options)
        };
        let will = |m: Option<pb::AppMessage>, delay_secs, expiry_secs| {
            m.map(|m| Will {
                message: Message::from_pb(m),
                delay_secs,
                expiry_secs,
            })
        };
        for c in snap.clean_sessions {
            let id: Arc<str> = Arc::from(c.client_id.as_str());
            let owner = Owner {
                node: c.owner_node,
                connection: c.owner_connection,
            };
            state.clean.insert(
                id.clone(),
                CleanSession {
                    client_id: id,
                    owner,
                    epoch: c.epoch,
                    subscriptions: c.subscriptions.into_iter().map(subscription).collect(),
                    will: will(c.will, c.will_delay_secs, c.will_expiry_secs),
                },
            );
        }
        for m in snap.retained {
            state.retained.set(&Message::from_pb(m));
        }
        for r in snap.sessions {
            let id: Arc<str> = Arc::from(r.client_id.as_str());
            let mut s = Session::new(id.clone());
            s.owner = r.connected.then_some(Owner {
                node: r.owner_node,
                connection: r.owner_connection,
            });
            s.epoch = r.epoch;
            for (filter, options) in r.subscriptions.into_iter().map(subscription) {
                state.index.insert(&filter, id.clone(), options);
                s.subscriptions.insert(filter, options);
            }
            for q in r.queue {
                let Some(m) = q.message else { continue };
                let message = Message::from_pb(m);
                s.queued_bytes += message.cost();
                s.queue.push_back(Queued {
                    seq: q.seq,
                    message,
                    released: q.released,
                    subscription_ids: q.subscription_ids,
                });
            }
            s.next_seq = r.next_seq.max(1);
            s.sent_up_to = r.sent_up_to;
            s.inbound = r.inbound.into_iter().map(|p| p as u16).collect();
            s.will = will(r.will, r.will_delay_secs, r.will_expiry_secs);
            s.will_due_at_ms = r.will_due_at_ms;
            s.disconnected_at_ms = r.disconnected_at_ms;
            s.username = r.username;
            s.protocol_level = r.protocol_level.min(u32::from(u8::MAX)) as u8;
            s.expiry_secs = r.session_expiry_secs;
            s.receive_maximum = r.receive_maximum;
            s.maximum_packet_size = r.maximum_packet_size;
            state.deadlines.insert(&s);
            state.sessions.insert(id, s);
        }
        state
    }

    /// Encodes a snapshot.
    pub fn encode_snapshot(&self) -> bytes::Bytes {
        use prost::Message as _;
        bytes::Bytes::from(self.to_snapshot().encode_to_vec())
    }

    /// Decodes and restores an encoded snapshot.
    ///
    /// # Errors
    /// The bytes are not a snapshot.
    pub fn decode_snapshot(data: bytes::Bytes) -> Result<State, SnapshotError> {
        use prost::Message as _;
        Ok(State::from_snapshot(pb::Snapshot::decode(data)?))
    }

    /// A digest of the whole state (FNV-1a over the canonical snapshot encoding): equal on two
    /// nodes exactly when their states are equal.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.encode_snapshot().iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}
