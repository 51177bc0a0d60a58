//! What this node derives from the replicated state, rebuilt from it whenever the state is
//! replaced (a snapshot from the leader) or recovered (replay at start), and checked against a
//! rebuild from scratch:
//!
//! - the router key of every session (`keys`);
//! - the router shards' subscriptions of every session in the state, with their targets (a
//!   connection here, another node, or none while offline);
//! - the agreement between the registry of connections on this node and the owners the state
//!   records: a session recorded as served by a connection of this node that is gone is
//!   disconnected (its will published), and a connection serving a session the state gives to
//!   someone else is closed.
//!
//! The incremental path (effects of applied entries, registry changes) keeps all of this up to
//! date; the rebuild makes a replaced state impossible to miss (entries compacted into a snapshot
//! carry effects nobody applied here), and the check proves the two agree.

use std::sync::Arc;

use bytestring::ByteString;
use starling_state::{Owner, SubOptions};
use tracing::info;

use super::core::{mutated, Closing, StoreCore};
use super::output::ConnMessage;
use crate::messages::*;

impl<C: Clone> StoreCore<C> {
    /// Everything derived from the state, rebuilt after it was replaced or recovered.
    pub(super) fn after_state_replaced(&mut self) {
        self.shared_limits.set(self.state.config());
        if mutated!(NoRouteRebuild) {
            return;
        }
        self.rebuild_keys();
        self.rebuild_routes();
        if self.recovered {
            self.reconcile();
        }
        if self.check_every != 0 {
            // A difference is logged and fatal (`None`: nobody to answer).
            let _ = self.check_derived(None);
        }
    }

    /// One key per session of the state: existing keys are kept, missing ones made, the keys
    /// of sessions that are gone dropped.
    fn rebuild_keys(&mut self) {
        let mut ids: Vec<Arc<str>> = self
            .state
            .sessions()
            .map(|s| s.client_id.clone())
            .chain(self.state.clean_sessions().map(|c| c.client_id.clone()))
            .collect();
        ids.sort_unstable();
        self.keys.retain(|id, _| ids.binary_search(id).is_ok());
        for id in ids {
            self.key_of(&id);
        }
    }

    /// The router shards' subscriptions of sessions, replaced by those the state gives.
    fn rebuild_routes(&mut self) {
        /// A session as the rebuild needs it: id, owner, durable (persistent), subscriptions.
        type Row = (Arc<str>, Option<Owner>, bool, Vec<(Arc<str>, SubOptions)>);
        let subs = |m: &std::collections::BTreeMap<Arc<str>, SubOptions>| {
            m.iter().map(|(f, o)| (f.clone(), *o)).collect()
        };
        let rows: Vec<Row> = self
            .state
            .sessions()
            .map(|s| (s.client_id.clone(), s.owner, true, subs(&s.subscriptions)))
            .chain(self.state.clean_sessions().map(|c| {
                (
                    c.client_id.clone(),
                    Some(c.owner),
                    false,
                    subs(&c.subscriptions),
                )
            }))
            .collect();
        let mut entries = Vec::new();
        for (client_id, owner, durable, subs) in rows {
            let key = self.key_of(&client_id);
            let target = owner.and_then(|o| self.route_target(&client_id, o));
            for (filter, options) in subs {
                entries.push(RouteEntry {
                    key,
                    filter,
                    options,
                    durable,
                    target: target.clone(),
                });
            }
        }
        info!(
            subscriptions = entries.len(),
            "router index rebuilt from the replicated state"
        );
        self.broadcast(RouteUpdate::Reset {
            entries: Arc::new(entries),
        });
    }

    /// The subscriptions of sessions a rebuild from the state gives now, sorted.
    pub fn expected_routes(&self) -> Vec<ExpectedRoute> {
        let mut out = Vec::new();
        let mut add =
            |client_id: &Arc<str>,
             owner: Option<Owner>,
             durable: bool,
             subs: &mut dyn Iterator<Item = (&Arc<str>, &SubOptions)>| {
                let key = self.keys.get(client_id).copied().unwrap_or(0);
                let target = owner
                    .and_then(|o| self.route_target(client_id, o))
                    .map(|t| t.id());
                for (filter, options) in subs {
                    out.push((key, filter.clone(), *options, durable, target));
                }
            };
        for s in self.state.sessions() {
            add(&s.client_id, s.owner, true, &mut s.subscriptions.iter());
        }
        for c in self.state.clean_sessions() {
            add(
                &c.client_id,
                Some(c.owner),
                false,
                &mut c.subscriptions.iter(),
            );
        }
        out.sort_unstable();
        out
    }

    /// Checks the derived indices against a rebuild: the state's own subscription index and the
    /// router keys here; the router shards' subscriptions by a [`RouteUpdate::Check`] each shard
    /// answers through `reply` (or logs, and in debug builds aborts on, when `reply` is `None`).
    ///
    /// # Errors
    /// The state's index or the router keys differ from their rebuild (the shards' answers
    /// arrive through `reply`).
    pub fn check_derived(
        &mut self,
        reply: Option<tokio::sync::mpsc::Sender<Result<(), String>>>,
    ) -> Result<(), String> {
        self.since_check = 0;
        let outcome = self.state.check_derived().and_then(|()| self.check_keys());
        if let (Err(e), None) = (&outcome, &reply) {
            crate::router::derived_index_differs("session store", e);
        }
        let entries = Arc::new(self.expected_routes());
        self.broadcast(RouteUpdate::Check { entries, reply });
        outcome
    }

    fn check_keys(&self) -> Result<(), String> {
        let mut ids: Vec<&Arc<str>> = self
            .state
            .sessions()
            .map(|s| &s.client_id)
            .chain(self.state.clean_sessions().map(|c| &c.client_id))
            .collect();
        ids.sort_unstable();
        if let Some(missing) = ids.iter().find(|id| !self.keys.contains_key(&***id)) {
            return Err(format!("session {missing} has no router key"));
        }
        if self.keys.len() != ids.len() {
            let mut extra: Vec<&Arc<str>> = self
                .keys
                .keys()
                .filter(|k| ids.binary_search(k).is_err())
                .collect();
            extra.sort_unstable();
            return Err(format!(
                "router keys of sessions that are not in the state: {extra:?}"
            ));
        }
        Ok(())
    }

    /// Brings the registry of connections here and the owners the state records into agreement
    /// (after a restore, at start, and every ten seconds).
    pub(crate) fn reconcile(&mut self) {
        // Sessions the state says a connection of this node serves, where that connection is
        // gone: disconnected (will published), unless their end is being proposed already.
        let mut orphans: Vec<(ByteString, u64)> = Vec::new();
        let me = self.node_id;
        let live = |id: &str, conn: u64| self.client(id, conn).is_some();
        for s in self.state.sessions() {
            if let Some(o) = s.owner.filter(|o| o.node == me) {
                if !live(&s.client_id, o.connection) {
                    orphans.push((ByteString::from(&*s.client_id), s.epoch));
                }
            }
        }
        for c in self.state.clean_sessions() {
            if c.owner.node == me && !live(&c.client_id, c.owner.connection) {
                orphans.push((ByteString::from(&*c.client_id), c.epoch));
            }
        }
        // Not while this node's own NodeDown is pending: it takes them all at once. (The
        // broken variant that proposes that NodeDown once leaves them too, as the code that
        // had the bug did.)
        if self.self_down == super::core::SelfDown::Done && !mutated!(NodeDownOnce) {
            orphans.sort_unstable();
            for (client_id, epoch) in orphans {
                if !self.closing.contains_key(&(client_id.clone(), epoch)) {
                    info!(client_id = %client_id, epoch, "session recorded as served by a connection of this node that is gone: disconnecting it");
                    let c = Closing {
                        publish_will: true,
                        sent_up_to: 0,
                        in_flight: false,
                    };
                    self.propose_closing(client_id, epoch, c);
                }
            }
        }
        // Connections serving a session the state gives to another connection (a takeover
        // this node learnt of through a snapshot): closed.
        let mut stale: Vec<(ByteString, u64)> = self
            .clients
            .iter()
            .filter(|(id, c)| c.epoch != 0 && !self.serves_with(id, c.conn_id, c.epoch))
            .map(|(id, c)| (id.clone(), c.conn_id))
            .collect();
        stale.sort_unstable();
        for (client_id, conn_id) in stale {
            if let Some(c) = self.client(&client_id, conn_id) {
                info!(client_id = %client_id, "connection serves a session now served elsewhere: closing it");
                let t = Target {
                    conn_id,
                    addr: c.addr.clone(),
                };
                self.send_conn(t, ConnMessage::Kick(KickReason::TakenOver));
                self.remove_client(&client_id, conn_id);
            }
        }
    }

    /// Whether the state records `client_id` as served by connection `conn` of this node under
    /// `epoch`.
    fn serves_with(&self, client_id: &str, conn: u64, epoch: u64) -> bool {
        let me = Owner {
            node: self.node_id,
            connection: conn,
        };
        match (
            self.state.session(client_id),
            self.state.clean_session(client_id),
        ) {
            (Some(s), _) => s.epoch == epoch && s.owner == Some(me),
            (None, Some(c)) => c.epoch == epoch && c.owner == me,
            (None, None) => false,
        }
    }
}
