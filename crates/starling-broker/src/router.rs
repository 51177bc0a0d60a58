//! Router shards, one per worker thread: each holds the whole subscription index. A PUBLISH is
//! routed by the shard on the thread of the connection that received it, which keeps each
//! client's messages in order (MQTT orders per publisher) and costs no thread hop; only the
//! deliveries cross threads, batched per subscriber. Messages that come from the session store
//! or from another node go to the shard chosen by a hash of their topic, keeping per-topic order.
//!
//! `#[PerformanceCriticalPath]`: every PUBLISH passes through [`RouteTable::route`].

use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use starling_codec::QoS;
use starling_state::{Message as AppMessage, SubOptions, TopicTrie};
use tracing::warn;

use crate::messages::{
    Acked, Deliver, DurableItem, DurablePublish, ExpectedRoute, FastPath, Route, RouteTarget,
    RouteUpdate, Target,
};
use crate::metrics::Counters;
use crate::replication::{Forwarder, Freshness};
use crate::store::SessionStore;

/// Picks the shard of a topic (FNV-1a).
pub fn shard_of(topic: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// Router keys of sessions in the replicated state (persistent, and clean ones tracked in
/// clustered mode) have this bit set; an untracked clean session (single node) is keyed by its
/// connection id, which never has it.
pub const SESSION_KEY: u64 = 1 << 63;

/// An index derived from the replicated state differs from its rebuild from the state: a bug
/// that would lose or misroute messages. Logged; fatal in debug builds (tests), so that it
/// cannot pass unnoticed.
pub(crate) fn derived_index_differs(what: &str, difference: &str) {
    tracing::error!(index = what, %difference, "derived index differs from its rebuild from the replicated state");
    if cfg!(debug_assertions) {
        eprintln!("{what}: derived index differs from its rebuild: {difference}");
        std::process::exit(70);
    }
}

/// One subscription in a shard's index.
#[derive(Clone, Debug)]
struct Sub<C> {
    /// Granted QoS (what routing reads) and the subscription's other options.
    options: SubOptions,
    durable: bool,
    target: Option<RouteTarget<C>>,
}

/// Deliveries of one routing pass, grouped per connection.
pub struct Outbox<C = Addr<crate::connection::Connection>> {
    // Integer keys we assign ourselves: a fast hash is safe here (not client-controlled).
    /// Messages for connections of this node.
    pub by_conn: FxHashMap<u64, (Target<C>, Vec<AppMessage>)>,
    /// Messages to forward, per remote node (each message once per node).
    pub by_node: FxHashMap<u64, Vec<AppMessage>>,
    /// Messages that need the store (persistent subscribers at QoS 1/2, or RETAIN).
    pub durable: Vec<DurableItem<C>>,
    /// Tokens of the publishing connection that routing completed.
    pub acked: Vec<u64>,
    /// Those of `acked` whose message matched no subscription at all.
    pub unmatched: Vec<u64>,
}

impl<C> Default for Outbox<C> {
    fn default() -> Self {
        Outbox {
            by_conn: FxHashMap::default(),
            by_node: FxHashMap::default(),
            durable: Vec::new(),
            acked: Vec::new(),
            unmatched: Vec::new(),
        }
    }
}

/// A shard's subscription index: the routing logic of a [`RouterShard`], without the actor.
pub struct RouteTable<C = Addr<crate::connection::Connection>> {
    /// Filter → (subscriber key → subscription).
    trie: TopicTrie<u64, Sub<C>>,
    /// Matches of the message being routed (reused between messages).
    scratch: Vec<(u64, QoS, bool, Option<RouteTarget<C>>)>,
    /// Remote nodes the message being routed is forwarded to (reused).
    nodes: Vec<u64>,
    /// The message last routed matched at least one subscription.
    matched: bool,
}

impl<C> Default for RouteTable<C> {
    fn default() -> Self {
        RouteTable {
            trie: TopicTrie::new(),
            scratch: Vec::new(),
            nodes: Vec::new(),
            matched: false,
        }
    }
}

impl<C: Clone> RouteTable<C> {
    /// Applies a change of the index. A [`RouteUpdate::Check`] is answered through its reply (or
    /// logged) and changes nothing.
    pub fn update(&mut self, u: RouteUpdate<C>) {
        match u {
            RouteUpdate::Add {
                key,
                filter,
                options,
                durable,
                target,
            } => {
                self.trie.insert(
                    &filter,
                    key,
                    Sub {
                        options,
                        durable,
                        target,
                    },
                );
            }
            RouteUpdate::Remove { key, filter } => {
                self.trie.remove(&filter, &key);
            }
            RouteUpdate::Retarget {
                key,
                filters,
                target,
            } => {
                for filter in filters {
                    if let Some(old) = self.trie.remove(&filter, &key) {
                        let sub = Sub {
                            target: target.clone(),
                            ..old
                        };
                        self.trie.insert(&filter, key, sub);
                    }
                }
            }
            RouteUpdate::Reset { entries } => {
                self.trie.retain(|key, _| key & SESSION_KEY == 0);
                for e in entries.iter() {
                    let sub = Sub {
                        options: e.options,
                        durable: e.durable,
                        target: e.target.clone(),
                    };
                    self.trie.insert(&e.filter, e.key, sub);
                }
            }
            RouteUpdate::Check { entries, reply } => {
                let outcome = self.check(&entries);
                match reply {
                    Some(r) => {
                        let _ = r.try_send(outcome);
                    }
                    None => {
                        if let Err(e) = outcome {
                            derived_index_differs("router shard", &e);
                        }
                    }
                }
            }
        }
    }

    /// The subscriptions of sessions in the replicated state (keys with [`SESSION_KEY`]), sorted.
    pub fn session_entries(&self) -> Vec<ExpectedRoute> {
        let mut out = Vec::new();
        self.trie.for_each_entry(|filter, key, sub| {
            if key & SESSION_KEY != 0 {
                out.push((
                    *key,
                    Arc::from(filter),
                    sub.options,
                    sub.durable,
                    sub.target.as_ref().map(RouteTarget::id),
                ));
            }
        });
        out.sort_unstable();
        out
    }

    /// Compares the subscriptions of sessions with `expected` (sorted, as
    /// [`RouteTable::session_entries`] gives them).
    ///
    /// # Errors
    /// They differ: the first difference.
    pub fn check(&self, expected: &[ExpectedRoute]) -> Result<(), String> {
        let have = self.session_entries();
        if have == expected {
            return Ok(());
        }
        let extra = have.iter().find(|e| expected.binary_search(e).is_err());
        let missing = expected.iter().find(|e| have.binary_search(e).is_err());
        Err(format!(
            "{} subscriptions held, {} expected; first extra {extra:?}, first missing {missing:?}",
            have.len(),
            expected.len()
        ))
    }

    /// Subscriptions held (all kinds).
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    /// True when no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// Routes one message. Deliveries to this node's connections go to `out`, and, unless
    /// `local_only`, the message once to every other node with a matching subscriber. Returns
    /// true when the message also needs the store (a persistent subscriber at QoS 1/2, or
    /// RETAIN).
    pub fn route(&mut self, message: &AppMessage, out: &mut Outbox<C>, local_only: bool) -> bool {
        let scratch = &mut self.scratch;
        scratch.clear();
        self.trie.for_each_match(&message.topic, |k, s| {
            scratch.push((*k, s.options.qos, s.durable, s.target.clone()));
        });
        // One delivery per subscriber, at the highest QoS of its matching filters.
        if scratch.len() > 1 {
            scratch.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            scratch.dedup_by(|a, b| a.0 == b.0);
        }
        let mut needs_store = message.retain;
        self.matched = !scratch.is_empty();
        self.nodes.clear();
        for (_, sub_qos, durable, target) in scratch.drain(..) {
            let qos = message.qos.min(sub_qos);
            if durable && qos != QoS::AtMostOnce {
                needs_store = true;
                continue;
            }
            match target {
                Some(RouteTarget::Local(t)) => {
                    let m = message.with(qos, false);
                    out.by_conn
                        .entry(t.conn_id)
                        .or_insert_with(|| (t, Vec::new()))
                        .1
                        .push(m);
                }
                Some(RouteTarget::Remote(node)) if !local_only && !self.nodes.contains(&node) => {
                    self.nodes.push(node);
                }
                _ => {}
            }
        }
        for node in &self.nodes {
            // The remote node downgrades per subscriber itself.
            out.by_node
                .entry(*node)
                .or_default()
                .push(message.with(message.qos, false));
        }
        needs_store
    }

    /// Routes a connection's batch of PUBLISHes (a [`Route`] message): local deliveries and
    /// forwards into `out`, with the messages that need the store (which then completes their
    /// tokens after the commit) and the tokens routing completed.
    pub fn route_batch(
        &mut self,
        from: Option<&Target<C>>,
        publishes: Vec<crate::messages::RoutedPublish>,
        out: &mut Outbox<C>,
    ) {
        for p in publishes {
            if self.route(&p.message, out, false) {
                let reply = p.token.and_then(|t| from.cloned().map(|a| (a, t)));
                out.durable.push(DurableItem {
                    message: p.message,
                    reply,
                });
            } else if let Some(t) = p.token {
                out.acked.push(t);
                if !self.matched {
                    out.unmatched.push(t);
                }
            }
        }
    }

    /// Delivers messages to this node's non-durable subscribers only (a [`FastPath`] message:
    /// the store's deferred fast path, or messages forwarded by another node).
    pub fn route_local(&mut self, messages: Vec<AppMessage>, out: &mut Outbox<C>) {
        for m in messages {
            // Durable targets were served by the state machine already.
            let _ = self.route(&m, out, true);
        }
    }
}

/// Connections' PUBLISHes held while this node's replica is not fresh (see [`Freshness`]).
///
/// A node that has just restarted, or that lost contact with the leader, may not know the
/// subscriptions made meanwhile: deciding alone that a QoS 1/2 message needs no durable delivery
/// could lose it for a persistent subscriber, or skip a clean one on another node. So its
/// batches wait, in order, until the replica is fresh again, and are then routed with what it
/// knows by then; a batch that waits longer than the commit timeout is refused (its publisher's
/// connection closes, and the client sends it again elsewhere). Holding, rather than routing
/// those messages another way, keeps every publisher's messages in order. Batches of QoS 0 only
/// pass while nothing is held (QoS 0 promises no delivery).
pub struct HeldRoutes<C = Addr<crate::connection::Connection>> {
    /// Batches waiting, with when they arrived.
    held: VecDeque<(tokio::time::Instant, Route<C>)>,
}

impl<C> Default for HeldRoutes<C> {
    fn default() -> Self {
        HeldRoutes {
            held: VecDeque::new(),
        }
    }
}

/// What [`HeldRoutes::release`] lets go.
pub struct Released<C> {
    /// To route now, in order.
    pub ready: Vec<Route<C>>,
    /// Held too long: to refuse.
    pub expired: Vec<Route<C>>,
}

impl<C> HeldRoutes<C> {
    /// A batch from a connection: given back to be routed now, or held (`None`).
    pub fn offer(
        &mut self,
        route: Route<C>,
        fresh: bool,
        now: tokio::time::Instant,
    ) -> Option<Route<C>> {
        let qos0_only = route
            .publishes
            .iter()
            .all(|p| p.message.qos == QoS::AtMostOnce);
        if self.held.is_empty() && (fresh || qos0_only) {
            return Some(route);
        }
        if self.held.is_empty() {
            warn!("this node's replica is not fresh (no contact with a leader, or catching up): QoS 1/2 PUBLISHes wait until it is (at most commit_timeout_secs)");
        }
        self.held.push_back((now, route));
        None
    }

    /// Everything held if the replica is fresh now; else what waited longer than `timeout`.
    pub fn release(
        &mut self,
        fresh: bool,
        now: tokio::time::Instant,
        timeout: Duration,
    ) -> Released<C> {
        let mut r = Released {
            ready: Vec::new(),
            expired: Vec::new(),
        };
        if fresh {
            r.ready = self.held.drain(..).map(|(_, route)| route).collect();
        } else {
            while self
                .held
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) >= timeout)
            {
                if let Some((_, route)) = self.held.pop_front() {
                    r.expired.push(route);
                }
            }
        }
        r
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// A router shard actor.
pub struct RouterShard {
    table: RouteTable,
    /// Batches waiting for this node's replica to be fresh.
    held: HeldRoutes,
    /// Whether this node's replica is fresh enough to route by (set by the log).
    freshness: Arc<Freshness>,
    /// How long a held batch may wait (the commit timeout).
    hold_timeout: Duration,
    store: Addr<SessionStore>,
    forwarder: Option<Arc<dyn Forwarder>>,
    counters: Arc<Counters>,
}

impl RouterShard {
    /// A shard that hands durable work to `store` and fast-path messages for other nodes to
    /// `forwarder` (clustered mode); connections' PUBLISHes wait while `freshness` says the
    /// replica is not fresh, at most `hold_timeout`.
    pub fn new(
        store: Addr<SessionStore>,
        forwarder: Option<Arc<dyn Forwarder>>,
        counters: Arc<Counters>,
        freshness: Arc<Freshness>,
        hold_timeout: Duration,
    ) -> RouterShard {
        RouterShard {
            table: RouteTable::default(),
            held: HeldRoutes::default(),
            freshness,
            hold_timeout,
            store,
            forwarder,
            counters,
        }
    }

    fn send_out(&mut self, out: Outbox, from: Option<&Target>) {
        for (_, (target, messages)) in out.by_conn {
            let n = messages.len() as u64;
            if let Err(e) = target.addr.try_send(Deliver { messages }) {
                if matches!(e, SendError::Full(_)) {
                    Counters::add(&self.counters.dropped_mailbox_full, n);
                    warn!(
                        conn = target.conn_id,
                        dropped = n,
                        "connection mailbox full, messages dropped"
                    );
                }
            }
        }
        if let Some(f) = &self.forwarder {
            for (node, messages) in out.by_node {
                f.forward(node, messages);
            }
        }
        if !out.durable.is_empty() {
            self.store.do_send(DurablePublish { items: out.durable });
        }
        if let (Some(from), false) = (from, out.acked.is_empty()) {
            from.addr.do_send(Acked {
                tokens: out.acked,
                refused: false,
                unmatched: out.unmatched,
            });
        }
    }
}

impl RouterShard {
    fn route(&mut self, msg: Route) {
        let mut out = Outbox::default();
        self.table
            .route_batch(msg.from.as_ref(), msg.publishes, &mut out);
        self.send_out(out, msg.from.as_ref());
    }

    /// Routes what was held once the replica is fresh; refuses what waited too long.
    fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        let r = self
            .held
            .release(self.freshness.is_fresh(), now, self.hold_timeout);
        for msg in r.ready {
            self.route(msg);
        }
        for msg in r.expired {
            refuse(&msg);
        }
    }
}

/// A held batch waited too long: its publisher's connection closes (its client sends the
/// messages again, elsewhere).
fn refuse(msg: &Route) {
    let tokens: Vec<u64> = msg.publishes.iter().filter_map(|p| p.token).collect();
    if let Some(from) = &msg.from {
        from.addr.do_send(Acked {
            tokens,
            refused: true,
            unmatched: Vec::new(),
        });
    }
}

impl Actor for RouterShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(Duration::from_millis(20), |act, _| act.release_held());
    }
}

impl Handler<Route> for RouterShard {
    type Result = ();

    fn handle(&mut self, msg: Route, _: &mut Self::Context) {
        let now = tokio::time::Instant::now();
        if let Some(msg) = self.held.offer(msg, self.freshness.is_fresh(), now) {
            self.route(msg);
        }
    }
}

impl Handler<FastPath> for RouterShard {
    type Result = ();

    fn handle(&mut self, msg: FastPath, _: &mut Self::Context) {
        let mut out = Outbox::default();
        self.table.route_local(msg.messages, &mut out);
        self.send_out(out, None);
    }
}

impl Handler<crate::sys::CountSubscriptions> for RouterShard {
    type Result = usize;

    fn handle(&mut self, _: crate::sys::CountSubscriptions, _: &mut Self::Context) -> usize {
        self.table.len()
    }
}

impl Handler<RouteUpdate> for RouterShard {
    type Result = ();

    fn handle(&mut self, msg: RouteUpdate, _: &mut Self::Context) {
        self.table.update(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, qos: QoS, retain: bool) -> AppMessage {
        AppMessage {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"p"),
            qos,
            retain,
            ..AppMessage::default()
        }
    }

    fn add(t: &mut RouteTable, key: u64, filter: &str, qos: QoS, durable: bool) {
        t.update(RouteUpdate::Add {
            key,
            filter: filter.into(),
            options: SubOptions::qos(qos),
            durable,
            target: None,
        });
    }

    #[test]
    fn durable_subscriber_at_qos1_needs_the_store_but_qos0_does_not() {
        let mut t = RouteTable::default();
        add(&mut t, 1, "a/#", QoS::AtLeastOnce, true);
        let mut out = Outbox::default();
        assert!(t.route(&msg("a/b", QoS::AtLeastOnce, false), &mut out, false));
        assert!(!t.route(&msg("a/b", QoS::AtMostOnce, false), &mut out, false));
        assert!(
            t.route(&msg("x", QoS::AtMostOnce, true), &mut out, false),
            "retained messages always go to the store"
        );
    }

    #[test]
    fn durable_subscriber_granted_qos0_stays_on_the_fast_path() {
        let mut t = RouteTable::default();
        add(&mut t, 1, "a", QoS::AtMostOnce, true);
        assert!(!t.route(
            &msg("a", QoS::ExactlyOnce, false),
            &mut Outbox::default(),
            false
        ));
    }

    #[test]
    fn retarget_keeps_subscriptions() {
        let mut t = RouteTable::default();
        add(&mut t, 7, "a", QoS::AtLeastOnce, true);
        add(&mut t, 7, "b/+", QoS::AtLeastOnce, true);
        t.update(RouteUpdate::Retarget {
            key: 7,
            filters: vec!["a".into(), "b/+".into()],
            target: None,
        });
        assert_eq!(t.len(), 2);
        t.update(RouteUpdate::Remove {
            key: 7,
            filter: "a".into(),
        });
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn remote_subscribers_get_one_forward_per_node_and_none_when_local_only() {
        let mut t: RouteTable = RouteTable::default();
        for (key, filter, node) in [(1, "a/#", 2), (2, "a/b", 2), (3, "+/b", 3)] {
            t.update(RouteUpdate::Add {
                key,
                filter: filter.into(),
                options: SubOptions::qos(QoS::AtLeastOnce),
                durable: false,
                target: Some(RouteTarget::Remote(node)),
            });
        }
        let mut out = Outbox::default();
        assert!(
            t.route(&msg("a/b", QoS::AtLeastOnce, true), &mut out, false),
            "retained: needs the store"
        );
        assert_eq!(out.by_node.len(), 2);
        assert_eq!(
            out.by_node[&2].len(),
            1,
            "one forward per node, not per subscriber"
        );
        assert!(!out.by_node[&2][0].retain, "live forwards carry RETAIN=0");
        let mut out = Outbox::default();
        t.route(&msg("a/b", QoS::AtLeastOnce, false), &mut out, true);
        assert!(out.by_node.is_empty());
    }

    #[test]
    fn reset_replaces_the_sessions_subscriptions_and_keeps_untracked_ones() {
        let mut t: RouteTable<u8> = RouteTable::default();
        let session = SESSION_KEY | 1;
        t.update(RouteUpdate::Add {
            key: session,
            filter: "stale/#".into(),
            options: SubOptions::qos(QoS::AtLeastOnce),
            durable: true,
            target: None,
        });
        // An untracked clean session (single node): keyed by its connection id.
        t.update(RouteUpdate::Add {
            key: 42,
            filter: "local".into(),
            options: SubOptions::qos(QoS::AtMostOnce),
            durable: false,
            target: Some(RouteTarget::Local(Target {
                conn_id: 42,
                addr: 0,
            })),
        });
        let entries = vec![crate::messages::RouteEntry {
            key: SESSION_KEY | 2,
            filter: Arc::from("t/#"),
            options: SubOptions::qos(QoS::ExactlyOnce),
            durable: true,
            target: Some(RouteTarget::Remote(3)),
        }];
        t.update(RouteUpdate::Reset {
            entries: Arc::new(entries),
        });
        assert_eq!(t.len(), 2);
        let want = vec![(
            SESSION_KEY | 2,
            Arc::from("t/#"),
            SubOptions::qos(QoS::ExactlyOnce),
            true,
            Some(crate::messages::RouteTargetId::Remote(3)),
        )];
        assert_eq!(t.session_entries(), want);
        assert_eq!(t.check(&want), Ok(()));
        let mut wrong = want.clone();
        wrong[0].4 = None;
        let err = t.check(&wrong).unwrap_err();
        assert!(err.contains("first extra"), "{err}");
        let mut out = Outbox::default();
        assert!(t.route(&msg("t/x", QoS::AtLeastOnce, false), &mut out, false));
        assert!(!t.route(&msg("stale/x", QoS::AtLeastOnce, false), &mut out, false));
        t.route(&msg("local", QoS::AtMostOnce, false), &mut out, false);
        assert_eq!(out.by_conn.len(), 1, "the untracked subscription stayed");
    }

    fn batch(qos: &[QoS]) -> Route<u8> {
        Route {
            from: Some(Target {
                conn_id: 9,
                addr: 0,
            }),
            publishes: qos
                .iter()
                .enumerate()
                .map(|(i, q)| crate::messages::RoutedPublish {
                    message: msg("t", *q, false),
                    token: (*q != QoS::AtMostOnce).then_some(i as u64),
                })
                .collect(),
        }
    }

    #[test]
    fn publishes_wait_while_the_replica_is_not_fresh_and_keep_their_order() {
        let t0 = tokio::time::Instant::now();
        let mut h: HeldRoutes<u8> = HeldRoutes::default();
        assert!(h.offer(batch(&[QoS::AtLeastOnce]), true, t0).is_some());
        assert!(
            h.offer(batch(&[QoS::AtMostOnce]), false, t0).is_some(),
            "QoS 0 passes while nothing is held"
        );
        assert!(h.offer(batch(&[QoS::AtLeastOnce]), false, t0).is_none());
        assert!(
            h.offer(batch(&[QoS::AtMostOnce]), true, t0).is_none(),
            "behind a held batch everything waits (order)"
        );
        let later = t0 + Duration::from_secs(1);
        let r = h.release(false, later, Duration::from_secs(5));
        assert!(r.ready.is_empty() && r.expired.is_empty());
        let r = h.release(true, later, Duration::from_secs(5));
        let qos: Vec<QoS> = r.ready.iter().map(|b| b.publishes[0].message.qos).collect();
        assert_eq!(
            qos,
            vec![QoS::AtLeastOnce, QoS::AtMostOnce],
            "in arrival order"
        );
        assert!(h.is_empty());
        // Not fresh for longer than the timeout: refused.
        assert!(h.offer(batch(&[QoS::ExactlyOnce]), false, t0).is_none());
        let r = h.release(false, t0 + Duration::from_secs(6), Duration::from_secs(5));
        assert_eq!(r.expired.len(), 1);
        assert!(h.is_empty());
    }

    #[test]
    fn shard_choice_is_stable_and_in_range() {
        for n in 1..5 {
            let s = shard_of("sensors/1/temp", n);
            assert!(s < n);
            assert_eq!(s, shard_of("sensors/1/temp", n));
        }
    }
}
