//! The state machine: applies log entries ([`pb::Batch`]) deterministically.
//!
//! Every node applies the same entries in the same order and ends with the same state; nothing
//! here reads a clock, a random number or the iteration order of a hash map when that order could
//! change the state. Effects are returned for the node to act on.

use std::sync::Arc;

use starling_codec::{topic, QoS};
use starling_proto::state::v1 as pb;

use crate::effect::{CommandResult, Effect, Rejection, Resume};
use crate::message::Message;
use crate::retained::RetainedStore;
use crate::session::{CleanSession, Owner, Session};
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
    index: TopicTrie<Arc<str>, QoS>,
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
    timestamp_ms: u64,
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

fn qos_of(v: u32) -> QoS {
    QoS::from_u8(v.min(2) as u8).unwrap_or(QoS::ExactlyOnce)
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
            retained: RetainedStore::new(),
            clean: FastMap::default(),
            last_epoch: 0,
            applied_index: 0,
            dropped_messages: 0,
        }
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
        let mut have: Vec<(String, Arc<str>, QoS)> = Vec::with_capacity(self.index.len());
        self.index
            .for_each_entry(|f, k, q| have.push((f.to_string(), k.clone(), *q)));
        let mut want: Vec<(String, Arc<str>, QoS)> = Vec::with_capacity(have.len());
        for s in self.sessions.values() {
            for (f, q) in &s.subscriptions {
                want.push((f.to_string(), s.client_id.clone(), *q));
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

    /// Counts (walks all sessions).
    pub fn stats(&self) -> StateStats {
        let mut s = StateStats {
            sessions: self.sessions.len(),
            subscriptions: self.index.len(),
            retained_messages: self.retained.len(),
            dropped_messages: self.dropped_messages,
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
        for command in &batch.commands {
            let origin = Origin {
                node: batch.node_id,
                incarnation: batch.incarnation,
                request_id: command.request_id,
                timestamp_ms: batch.timestamp_ms,
            };
            self.apply_command(&origin, command, effects);
        }
        self.applied_index = index;
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
        let will = c.will.clone().map(Message::from_pb);
        // A client id has one session: a connect of either kind replaces the other kind.
        if c.clean_session {
            if let Some(s) = self.sessions.remove(c.client_id.as_str()) {
                self.forget(s, Some(owner), effects);
            }
        }
        if let Some(old) = self.clean.remove(c.client_id.as_str()) {
            let will = will_on_takeover(old.owner, owner);
            self.forget_clean(old, will, Some(owner), effects);
        }
        if c.clean_session {
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
        let mut old_will = None;
        if let Some(old) = s.owner {
            // The previous connection never reported what it sent: assume it sent everything.
            effects.push(Effect::Kick {
                client_id: s.client_id.clone(),
                owner: old,
                by: Some(owner),
            });
            s.sent_up_to = s.next_seq - 1;
            old_will = s.will.take().filter(|_| will_on_takeover(old, owner));
        }
        if !present {
            s.username = c.username.clone();
        }
        s.epoch = epoch;
        s.owner = Some(owner);
        s.will = will;
        s.disconnected_at_ms = 0;
        let resume = Box::new(Resume {
            subscriptions: s
                .subscriptions
                .iter()
                .map(|(f, q)| (f.clone(), *q))
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
            self.publish_message(&w, false, effects);
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
                self.publish_message(&w, false, effects);
            }
        }
    }

    /// Removes a session's subscriptions and closes its connection, if any.
    /// Removes a session; `taken_over_by` is the connection of the same client id that replaces
    /// it, if that is why.
    fn forget(&mut self, s: Session, taken_over_by: Option<Owner>, effects: &mut Vec<Effect>) {
        if let Some(owner) = s.owner {
            effects.push(Effect::Kick {
                client_id: s.client_id.clone(),
                owner,
                by: taken_over_by,
            });
            // Its connection is closed by this: its will is due, unless the client itself
            // reconnected through another node.
            let due = taken_over_by.is_none_or(|new| will_on_takeover(owner, new));
            if let (true, Some(w)) = (due, &s.will) {
                self.publish_message(w, false, effects);
            }
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
                        self.publish_message(&w, false, effects);
                    }
                }
            }
            return origin.reply(effects, CommandResult::Disconnected);
        }
        let s = match self.owned(&d.client_id, d.epoch) {
            Ok(s) => s,
            Err(r) => return origin.reply(effects, CommandResult::Rejected(r)),
        };
        let will = Self::go_offline(s, d.sent_up_to, origin.timestamp_ms, effects);
        if d.publish_will {
            if let Some(w) = will {
                self.publish_message(&w, false, effects);
            }
        }
        origin.reply(effects, CommandResult::Disconnected);
    }

    fn go_offline(
        s: &mut Session,
        sent_up_to: u64,
        now_ms: u64,
        effects: &mut Vec<Effect>,
    ) -> Option<Message> {
        s.owner = None;
        s.sent_up_to = s.sent_up_to.max(sent_up_to.min(s.next_seq - 1));
        s.disconnected_at_ms = now_ms.max(1);
        effects.push(Effect::Offline {
            client_id: s.client_id.clone(),
        });
        s.will.take()
    }

    fn subscribe(&mut self, origin: &Origin, sub: &pb::Subscribe, effects: &mut Vec<Effect>) {
        if let Some(cs) = self
            .clean
            .get_mut(sub.client_id.as_str())
            .filter(|c| c.epoch == sub.epoch)
        {
            // Retained messages for a clean session are sent by the node serving it.
            let mut granted = Vec::with_capacity(sub.filters.len());
            for f in &sub.filters {
                let qos = qos_of(f.qos);
                granted.push(qos);
                if topic::validate_filter(&f.filter).is_ok() {
                    let filter: Arc<str> = Arc::from(f.filter.as_str());
                    cs.subscriptions.insert(filter.clone(), qos);
                    effects.push(Effect::RouteAdd {
                        client_id: cs.client_id.clone(),
                        filter,
                        qos,
                        durable: false,
                    });
                }
            }
            return origin.reply(effects, CommandResult::Subscribed(granted));
        }
        let s = match self.owned(&sub.client_id, sub.epoch) {
            Ok(s) => s,
            Err(r) => return origin.reply(effects, CommandResult::Rejected(r)),
        };
        let client_id = s.client_id.clone();
        let mut granted = Vec::with_capacity(sub.filters.len());
        let mut added = Vec::with_capacity(sub.filters.len());
        for f in &sub.filters {
            let qos = qos_of(f.qos);
            granted.push(qos);
            if topic::validate_filter(&f.filter).is_err() {
                continue;
            }
            let filter: Arc<str> = Arc::from(f.filter.as_str());
            s.subscriptions.insert(filter.clone(), qos);
            added.push((filter, qos));
        }
        for (filter, qos) in &added {
            self.index.insert(filter, client_id.clone(), *qos);
            effects.push(Effect::RouteAdd {
                client_id: client_id.clone(),
                filter: filter.clone(),
                qos: *qos,
                durable: true,
            });
        }
        origin.reply(effects, CommandResult::Subscribed(granted));
        // Retained messages follow the SUBACK, for every filter, also when re-subscribing.
        let mut retained = Vec::new();
        for (filter, qos) in &added {
            self.retained
                .for_each_matching(filter, |m| retained.push(m.with(m.qos.min(*qos), true)));
        }
        for m in retained {
            if m.qos == QoS::AtMostOnce {
                if let Some(s) = self.sessions.get(&*client_id) {
                    if let Some(owner) = s.owner {
                        let (client_id, epoch) = (client_id.clone(), s.epoch);
                        effects.push(Effect::DeliverQos0 {
                            client_id,
                            owner,
                            epoch,
                            message: m,
                        });
                    }
                }
            } else {
                self.enqueue(&client_id, m, effects);
            }
        }
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
    fn publish_message(&mut self, m: &Message, fast_path_done: bool, effects: &mut Vec<Effect>) {
        if m.retain {
            self.retained.set(m);
        }
        let mut targets: Vec<(Arc<str>, QoS)> = Vec::new();
        self.index
            .for_each_match(&m.topic, |k, q| targets.push((k.clone(), *q)));
        targets.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        targets.dedup_by(|a, b| a.0 == b.0);
        for (client_id, sub_qos) in targets {
            let qos = m.qos.min(sub_qos);
            if qos != QoS::AtMostOnce {
                self.enqueue(&client_id, m.with(qos, false), effects);
            }
        }
        if !fast_path_done {
            effects.push(Effect::FastPath {
                message: m.with(m.qos, false),
            });
        }
    }

    fn enqueue(&mut self, client_id: &str, m: Message, effects: &mut Vec<Effect>) {
        let Some(s) = self.sessions.get_mut(client_id) else {
            return;
        };
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
        s.push(m);
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
            if let Some(s) = self.sessions.remove(d.client_id.as_str()) {
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
            let Some(s) = self.sessions.get_mut(&*id) else {
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
            if let Some(w) = Self::go_offline(s, all, origin.timestamp_ms, effects) {
                self.publish_message(&w, false, effects);
            }
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
                    subscriptions: s
                        .subscriptions
                        .iter()
                        .map(|(f, q)| pb::SubscriptionRecord {
                            filter: f.to_string(),
                            qos: q.as_u8().into(),
                        })
                        .collect(),
                    queue: s
                        .queue
                        .iter()
                        .map(|q| pb::QueuedMessage {
                            seq: q.seq,
                            qos: q.message.qos.as_u8().into(),
                            released: q.released,
                            message: Some(q.message.to_pb()),
                        })
                        .collect(),
                    next_seq: s.next_seq,
                    sent_up_to: s.sent_up_to,
                    inbound: s.inbound.iter().map(|&p| u32::from(p)).collect(),
                    will: s.will.as_ref().map(Message::to_pb),
                    disconnected_at_ms: s.disconnected_at_ms,
                    username: s.username.clone(),
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
                    subscriptions: c
                        .subscriptions
                        .iter()
                        .map(|(f, q)| pb::SubscriptionRecord {
                            filter: f.to_string(),
                            qos: q.as_u8().into(),
                        })
                        .collect(),
                    will: c.will.as_ref().map(Message::to_pb),
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
        }
    }

    /// Rebuilds a state from a snapshot (limits included: the defaults when it has none).
    pub fn from_snapshot(snap: pb::Snapshot) -> State {
        let config = match &snap.limits {
            Some(l) => StateConfig::default().updated(l),
            None => StateConfig::default(),
        };
        let mut state = State::new(config);
        state.applied_index = snap.applied_index;
        state.dropped_messages = snap.dropped_messages;
        state.last_epoch = snap.last_epoch;
        for c in snap.clean_sessions {
            let id: Arc<str> = Arc::from(c.client_id.as_str());
            let subscriptions = c
                .subscriptions
                .into_iter()
                .map(|s| (Arc::from(s.filter.as_str()), qos_of(s.qos)))
                .collect();
            let owner = Owner {
                node: c.owner_node,
                connection: c.owner_connection,
            };
            let will = c.will.map(Message::from_pb);
            state.clean.insert(
                id.clone(),
                CleanSession {
                    client_id: id,
                    owner,
                    epoch: c.epoch,
                    subscriptions,
                    will,
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
            for sub in r.subscriptions {
                let filter: Arc<str> = Arc::from(sub.filter.as_str());
                let qos = qos_of(sub.qos);
                state.index.insert(&filter, id.clone(), qos);
                s.subscriptions.insert(filter, qos);
            }
            for q in r.queue {
                let Some(m) = q.message else { continue };
                let message = Message::from_pb(m);
                s.queued_bytes += message.cost();
                s.queue.push_back(crate::session::Queued {
                    seq: q.seq,
                    message,
                    released: q.released,
                });
            }
            s.next_seq = r.next_seq.max(1);
            s.sent_up_to = r.sent_up_to;
            s.inbound = r.inbound.into_iter().map(|p| p as u16).collect();
            s.will = r.will.map(Message::from_pb);
            s.disconnected_at_ms = r.disconnected_at_ms;
            s.username = r.username;
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
