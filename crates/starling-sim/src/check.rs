//! The checks: on the nodes at the end of a run (liveness and agreement), and on the history
//! (what every client saw).
//!
//! History rules, for every completed QoS 1/2 message (PUBACK or PUBCOMP received by its
//! publisher):
//! - a persistent subscriber whose subscription was acknowledged before the message was
//!   published (by more than [`PROPAGATION_MS`], the time a subscription takes to reach every
//!   node's routes) receives it, at the QoS it granted, whatever happened to the nodes;
//! - a clean subscriber receives it on the connection it subscribed on, if that connection
//!   stayed up until [`DELIVERY_MS`] after the completion and no fault touched the publisher's
//!   node, the subscriber's node or the network between them meanwhile (the fast path to clean
//!   sessions is at most once across node and link failures);
//! - a QoS 2 message reaches each QoS 2 subscription at most once (DUP and retained copies on
//!   a new subscription aside); with the above, exactly once;
//! - per publisher and topic, first deliveries keep the publishing order, except for a message
//!   its publisher had to send again after a failover;
//! - every delivered message was published by someone;
//! - the will of a connection that ended without DISCONNECT, after its CONNACK 0, is delivered
//!   to the will subscriber exactly once, unless the client may have taken its session over
//!   through another node meanwhile (a cluster publishes no will then), or its will waits for
//!   a Will Delay Interval and the client came back (which cancels it); no will is delivered
//!   twice.
//!
//! And on the nodes at the end: no deadline in log time (an MQTT 5 session's expiry, a delayed
//! will, a retained message's expiry) is left more than [`DEADLINE_SLACK_MS`] behind the clock:
//! expiry happens on a quiet cluster too, after any failover.

use std::collections::{BTreeMap, BTreeSet};

use starling_codec::{topic, QoS};

use crate::client::{ClientIdx, SimClient};
use crate::history::{Ev, History, MsgId};
use crate::node::SimNode;
use crate::sched::Sched;

/// How long after its SUBACK a subscription may take to reach every node's routes (a heartbeat
/// and an election timeout: a node that lost contact with the leader for longer than that stops
/// routing QoS 1/2 messages itself).
pub const PROPAGATION_MS: u64 = 2_500;

/// How long after its completion a message may take to reach a clean subscriber.
pub const DELIVERY_MS: u64 = 2_000;

/// How long a deadline in log time may stay unpassed at the end of a run: the leader proposes a
/// Tick at its next store tick (every 500 ms) once its clock has passed it, and it commits.
pub const DEADLINE_SLACK_MS: u64 = 3_000;

/// Checks on the nodes at the end of the quiet phase.
pub fn end_of_run(
    s: &mut Sched,
    nodes: &mut [&mut SimNode],
    clients: &[SimClient],
    violations: &mut Vec<String>,
) {
    // Everyone up and agreeing.
    let Some(leader) = nodes
        .iter()
        .map(|n| n.raft.status())
        .find(|st| st.role == "leader")
    else {
        violations.push("no leader at the end of the quiet phase".into());
        return;
    };
    let (leader_id, commit, voters) = (leader.id, leader.commit_index, leader.voters);
    for v in &voters {
        if !nodes.iter().any(|n| n.id == *v) {
            violations.push(format!("voter {v} is not running at the end"));
        }
    }
    let mut digests: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for n in nodes.iter_mut() {
        if voters.contains(&n.id) && n.raft.last_applied() < commit {
            violations.push(format!(
                "node {} applied {} of the leader's commit index {commit} after the quiet phase",
                n.id,
                n.raft.last_applied()
            ));
        }
        let applied = n.store.state().applied_index();
        digests
            .entry(applied)
            .or_default()
            .push((n.id, n.store.state().digest()));
    }
    for (index, ds) in &digests {
        if ds.windows(2).any(|w| w[0].1 != w[1].1) {
            violations.push(format!("replicas differ at applied index {index}: {ds:?}"));
        } else if ds.len() > 1 {
            s.coverage.digest_checks += 1;
        }
    }
    // No session recorded as served by a connection that is gone.
    let live: BTreeSet<(u64, u64)> = nodes
        .iter()
        .flat_map(|n| {
            n.conns
                .iter()
                .filter(|(_, c)| c.is_active())
                .map(move |(id, _)| (n.id, *id))
        })
        .collect();
    if let Some(n) = nodes.iter().find(|n| n.id == leader_id) {
        let state = n.store.state();
        for sess in state.sessions() {
            if let Some(o) = sess.owner {
                if !live.contains(&(o.node, o.connection)) {
                    violations.push(format!(
                        "session {} is recorded as served by connection {:x} of node {}, which is gone",
                        sess.client_id, o.connection, o.node
                    ));
                }
            }
        }
        for c in state.clean_sessions() {
            if !live.contains(&(c.owner.node, c.owner.connection)) {
                violations.push(format!(
                    "clean session {} is recorded as served by connection {:x} of node {}, which is gone",
                    c.client_id, c.owner.connection, c.owner.node
                ));
            }
        }
        // Deadlines in log time are passed even when nothing else is logged.
        if let Some(due) = state.next_deadline_ms() {
            if due + DEADLINE_SLACK_MS < s.wall_ms() {
                violations.push(format!(
                    "a deadline at {due} (log time) was never passed: {} ms later the log's \
                     clock is still at {}",
                    s.wall_ms() - due,
                    state.log_clock_ms()
                ));
            }
        }
        // The retained message of each retaining client is its last one.
        for c in clients
            .iter()
            .filter(|c| c.spec.publishes.as_ref().is_some_and(|p| p.retain))
        {
            let topic_name = format!("r/{}", c.spec.name);
            let mut found = None;
            state
                .retained()
                .for_each_matching(&topic_name, |m| found = Some(m.payload.clone()));
            let want = MsgId {
                client: c.idx,
                seq: c.published(),
            };
            if c.published() > 0 && found.as_deref() != Some(&want.payload()[..]) {
                violations.push(format!(
                    "retained message of {topic_name} is {found:?}, expected {want} (its last)"
                ));
            }
        }
    }
    for c in clients {
        if !c.settled() {
            violations.push(format!("client did not get every answer: {}", c.describe()));
        }
    }
}

/// A delivery: (connection, message, QoS, RETAIN, time).
type Delivery = (u64, MsgId, QoS, bool, u64);

/// What the history says of one subscription.
struct Sub {
    client: ClientIdx,
    gen: u64,
    filter: String,
    qos: QoS,
    at: u64,
    clean: bool,
}

/// Checks the history; returns the clients and messages the violations involve.
pub fn history(
    h: &History,
    clients: &[SimClient],
    violations: &mut Vec<String>,
) -> (Vec<ClientIdx>, Vec<MsgId>) {
    let mut involved_clients: BTreeSet<ClientIdx> = BTreeSet::new();
    let mut involved_msgs: BTreeSet<MsgId> = BTreeSet::new();
    let mut published: BTreeMap<MsgId, (String, QoS, u64, u64)> = BTreeMap::new();
    let mut completed: BTreeMap<MsgId, u64> = BTreeMap::new();
    let mut resent: BTreeSet<MsgId> = BTreeSet::new();
    let mut subs: Vec<Sub> = Vec::new();
    // Per client: deliveries (gen, msg, qos, retain, at).
    let mut delivered: BTreeMap<ClientIdx, Vec<Delivery>> = BTreeMap::new();
    // Per (client, gen): connected, ended at.
    let mut connected: BTreeSet<(ClientIdx, u64)> = BTreeSet::new();
    let mut ended_at: BTreeMap<(ClientIdx, u64), u64> = BTreeMap::new();
    let mut disconnecting: BTreeSet<(ClientIdx, u64)> = BTreeSet::new();
    let mut opened_on: BTreeMap<(ClientIdx, u64), u64> = BTreeMap::new();
    // Will deliveries per (subscriber, whose, which connection).
    let mut wills: BTreeMap<(ClientIdx, ClientIdx, u64), u64> = BTreeMap::new();
    // Faults by node (0: the network), with their time; and when the network was faulty.
    let mut faults: Vec<(u64, u64)> = Vec::new();
    let mut faulty_net: Vec<(u64, u64)> = Vec::new();
    let mut net_fault_since: Option<u64> = None;
    let mut last = 0;
    for (at, ev) in &h.events {
        last = *at;
        match ev {
            Ev::Published {
                msg,
                topic,
                qos,
                gen,
                ..
            } => {
                published.insert(*msg, (topic.clone(), *qos, *at, *gen));
            }
            Ev::Resent { msg, .. } => {
                resent.insert(*msg);
            }
            Ev::Completed { msg } => {
                completed.entry(*msg).or_insert(*at);
            }
            Ev::Subscribed {
                client,
                gen,
                filter,
                qos,
            } => subs.push(Sub {
                client: *client,
                gen: *gen,
                filter: filter.clone(),
                qos: *qos,
                at: *at,
                clean: clients[*client].spec.clean,
            }),
            Ev::Delivered {
                client,
                gen,
                msg,
                qos,
                retain,
                ..
            } => delivered
                .entry(*client)
                .or_default()
                .push((*gen, *msg, *qos, *retain, *at)),
            Ev::Connected { client, gen, .. } => {
                connected.insert((*client, *gen));
            }
            Ev::Opened { client, gen, node } => {
                opened_on.insert((*client, *gen), *node);
            }
            Ev::Lost { client, gen } => {
                ended_at.entry((*client, *gen)).or_insert(*at);
            }
            Ev::Disconnecting { client, gen } => {
                disconnecting.insert((*client, *gen));
                ended_at.entry((*client, *gen)).or_insert(*at);
            }
            Ev::WillDelivered {
                client,
                of,
                of_gen,
                qos,
            } => {
                // QoS 1 copies may repeat; a QoS 2 one comes once.
                let n = wills.entry((*client, *of, *of_gen)).or_default();
                if *qos == QoS::ExactlyOnce {
                    *n += 1;
                }
            }
            Ev::Node { node, what } => {
                if what.starts_with("FAULT flaky") || what.starts_with("FAULT isolate") {
                    net_fault_since.get_or_insert(*at);
                }
                if what.starts_with("network healed") || what.starts_with("quiet") {
                    if let Some(since) = net_fault_since.take() {
                        faulty_net.push((since, *at));
                    }
                }
                if what.starts_with("FAULT")
                    || what.starts_with("crashed")
                    || what.starts_with("started")
                    || what.starts_with("stopped")
                    || what.starts_with("network healed")
                {
                    faults.push((*node, *at));
                }
            }
            _ => {}
        }
    }
    if let Some(since) = net_fault_since {
        faulty_net.push((since, last));
    }
    let mut report = |v: String, c: &[ClientIdx], m: &[MsgId]| {
        violations.push(v);
        involved_clients.extend(c);
        involved_msgs.extend(m);
    };
    // Every delivery is of a published message; QoS 2 at most once per subscriber.
    for (client, ds) in &delivered {
        let mut q2: BTreeMap<MsgId, u32> = BTreeMap::new();
        for (_, msg, qos, retain, _) in ds {
            if !published.contains_key(msg) {
                report(
                    format!(
                        "{} received {msg}, which nobody published",
                        name(clients, *client)
                    ),
                    &[*client],
                    &[*msg],
                );
            }
            if *qos == QoS::ExactlyOnce && !*retain {
                *q2.entry(*msg).or_default() += 1;
            }
        }
        for (msg, n) in q2 {
            if n > 1 {
                report(
                    format!(
                        "{} received QoS 2 message {msg} {n} times",
                        name(clients, *client)
                    ),
                    &[*client, msg.client],
                    &[msg],
                );
            }
        }
    }
    // Nothing lost.
    for sub in &subs {
        let ds = delivered.get(&sub.client).map(Vec::as_slice).unwrap_or(&[]);
        let got: BTreeSet<MsgId> = ds
            .iter()
            .filter(|(gen, ..)| !sub.clean || *gen == sub.gen)
            .map(|(_, m, ..)| *m)
            .collect();
        // Persistent subscriptions count from their first acknowledgement.
        if !sub.clean
            && subs
                .iter()
                .any(|o| o.client == sub.client && o.filter == sub.filter && o.at < sub.at)
        {
            continue;
        }
        let window_end = ended_at
            .get(&(sub.client, sub.gen))
            .copied()
            .unwrap_or(last);
        let sub_node = opened_on.get(&(sub.client, sub.gen)).copied();
        for (msg, (topic_name, qos, sent, pub_gen)) in &published {
            let Some(done) = completed.get(msg) else {
                continue;
            };
            if *qos == QoS::AtMostOnce
                || sub.qos == QoS::AtMostOnce
                || *sent <= sub.at + PROPAGATION_MS
                || !topic::matches(&sub.filter, topic_name)
            {
                continue;
            }
            if sub.clean {
                if *done + DELIVERY_MS >= window_end {
                    continue;
                }
                let pub_node = opened_on.get(&(msg.client, *pub_gen)).copied();
                let touched = faults.iter().any(|(node, at)| {
                    *at + 1_000 >= *sent
                        && *at <= *done + DELIVERY_MS
                        && (*node == 0 || Some(*node) == pub_node || Some(*node) == sub_node)
                }) || faulty_net
                    .iter()
                    .any(|(from, to)| *from <= *done + DELIVERY_MS && *to + 1_000 >= *sent);
                if touched {
                    continue;
                }
            }
            if !got.contains(msg) {
                report(
                    format!(
                        "LOST{}: {} (SUBACK {} at {:.3}s, #{}) never received {msg} (topic {topic_name}, q{}, published {:.3}s, completed {:.3}s)",
                        if sub.clean { " (clean)" } else { "" },
                        name(clients, sub.client),
                        sub.filter,
                        sub.at as f64 / 1000.0,
                        sub.gen,
                        *qos as u8,
                        *sent as f64 / 1000.0,
                        *done as f64 / 1000.0
                    ),
                    &[sub.client, msg.client],
                    &[*msg],
                );
            }
        }
    }
    // Order: per publisher, topic and QoS (MQTT-4.6.0-6), first deliveries in publishing order.
    for (client, ds) in &delivered {
        let mut seen: BTreeSet<MsgId> = BTreeSet::new();
        let mut last_seq: BTreeMap<(ClientIdx, String, QoS), u64> = BTreeMap::new();
        for (_, msg, _, retain, _) in ds {
            if *retain || !seen.insert(*msg) {
                continue;
            }
            let Some((topic_name, qos, ..)) = published.get(msg) else {
                continue;
            };
            let key = (msg.client, topic_name.clone(), *qos);
            let prev = last_seq.get(&key).copied().unwrap_or(0);
            if msg.seq < prev && !resent.contains(msg) {
                report(
                    format!(
                        "{} received {msg} after m:{}:{prev} on {topic_name} (out of publishing order)",
                        name(clients, *client),
                        msg.client
                    ),
                    &[*client, msg.client],
                    &[*msg],
                );
            }
            last_seq.insert(key, prev.max(msg.seq));
        }
    }
    // Wills.
    // The will subscriber's first SUBACK: wills of connections that ended before it (and the
    // propagation time) may not reach it.
    let will_sub_at = subs
        .iter()
        .filter(|s| s.filter == "will/#")
        .map(|s| s.at)
        .min();
    for ((sub, client, gen), n) in &wills {
        if *n > 1 {
            report(
                format!(
                    "{} received the will of {} #{gen} {n} times",
                    name(clients, *sub),
                    name(clients, *client)
                ),
                &[*sub, *client],
                &[],
            );
        }
    }
    if let Some(will_sub_at) = will_sub_at {
        for c in clients.iter().filter(|c| c.spec.will) {
            for gen in 1..=c.gen() {
                let due = h.ended.get(&(c.idx, gen)).copied();
                // A connection of the same client through another node whose CONNECT may have
                // committed after this one's took the session over there: a cluster publishes no
                // will then (the client reconnected), unless it was published before. Either is
                // right, depending on which committed first; twice never is (checked above). Such
                // a CONNECT is a later one, or an earlier one that never got its CONNACK 0 (it
                // may commit late, after its client gave up on it).
                let on = opened_on.get(&(c.idx, gen));
                let moved = (1..=c.gen()).filter(|g| *g != gen).any(|g| {
                    (g > gen || !connected.contains(&(c.idx, g)))
                        && opened_on.get(&(c.idx, g)).is_some_and(|n| Some(n) != on)
                });
                // A will waiting for its delay is cancelled by the client's next connection;
                // when that came is not known here (the delay runs from when the broker ended
                // the connection), so a will of a client that came back is not required. Came
                // back: a later connection that was opened (its CONNECT may have committed even
                // if its CONNACK never arrived), or an earlier one that never got its CONNACK
                // (it may commit late).
                let came_back = c.spec.will_delayed()
                    && (1..=c.gen()).filter(|g| *g != gen).any(|g| {
                        (g > gen || !connected.contains(&(c.idx, g)))
                            && (connected.contains(&(c.idx, g))
                                || opened_on.contains_key(&(c.idx, g)))
                    });
                if connected.contains(&(c.idx, gen))
                    && !moved
                    && !came_back
                    && !disconnecting.contains(&(c.idx, gen))
                    && due.is_some_and(|(due, at)| due && at > will_sub_at + PROPAGATION_MS)
                    && !wills.keys().any(|(_, of, g)| *of == c.idx && *g == gen)
                {
                    report(
                        format!("the will of {} #{gen} was never delivered", c.spec.name),
                        &[c.idx],
                        &[],
                    );
                }
            }
        }
    }
    (
        involved_clients.into_iter().collect(),
        involved_msgs.into_iter().collect(),
    )
}

fn name(clients: &[SimClient], c: ClientIdx) -> &str {
    clients.get(c).map_or("?", |c| c.spec.name.as_str())
}
