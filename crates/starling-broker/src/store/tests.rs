//! The store's logic without actix: a [`StoreCore`] over a log that records what is proposed,
//! fed committed entries and log events as the Raft node or the local log would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Recipient;
use bytes::Bytes;
use bytestring::ByteString;
use prost::Message as _;
use starling_codec::{ProtocolVersion, QoS};
use starling_state::{pb, State, StateConfig};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::output::{ConnMessage, ShardMessage};
use super::StoreCore;
use crate::config::BrokerConfig;
use crate::messages::*;
use crate::replication::{LogEvent, LogStartError, LogStatus, ProposeError, ReplicatedLog};
use crate::router::{RouteTable, SESSION_KEY};

/// A log that records proposals; the test decides what commits.
#[derive(Clone, Default)]
struct TestLog {
    proposed: Arc<Mutex<Vec<Bytes>>>,
    /// Snapshots handed to the log: (index, size).
    snapshots: Arc<Mutex<Vec<(u64, usize)>>>,
    /// The role its status reports.
    role: Arc<Mutex<&'static str>>,
}

impl ReplicatedLog for TestLog {
    fn start(&mut self, _: Recipient<LogEvent>) -> Result<(), LogStartError> {
        Ok(())
    }
    fn propose(&mut self, data: Bytes) -> Result<(), ProposeError> {
        self.proposed.lock().unwrap().push(data);
        Ok(())
    }
    fn save_snapshot(&mut self, index: u64, data: Bytes) {
        self.snapshots.lock().unwrap().push((index, data.len()));
    }
    fn status(&self) -> LogStatus {
        LogStatus {
            role: *self.role.lock().unwrap(),
            ..LogStatus::default()
        }
    }
    fn shutdown(&mut self, _: oneshot::Sender<()>) {}
}

impl TestLog {
    fn take(&self) -> Vec<pb::Batch> {
        std::mem::take(&mut *self.proposed.lock().unwrap())
            .into_iter()
            .map(|b| pb::Batch::decode(b).unwrap())
            .collect()
    }
}

/// A node's store with connections identified by plain ids (`C = u64`).
struct Node {
    core: StoreCore<u64>,
    log: TestLog,
    /// The router shard (one), fed the store's updates.
    router: RouteTable<u64>,
    index: u64,
    ready: oneshot::Receiver<Result<(), String>>,
    t0: Instant,
}

impl Node {
    fn new(node_id: u64, clustered: bool, config: BrokerConfig) -> Node {
        let log = TestLog::default();
        let (tx, ready) = oneshot::channel();
        let t0 = Instant::now();
        let limits = Arc::new(crate::config::SharedLimits::new(&config.state_config()));
        let mut core = StoreCore::new(
            node_id,
            Arc::new(config),
            Box::new(log.clone()),
            1,
            tx,
            clustered,
            7,
            1 << 20,
            t0,
            limits,
        );
        core.set_check_every(0);
        Node {
            core,
            log,
            router: RouteTable::default(),
            index: 1,
            ready,
            t0,
        }
    }

    fn at(&mut self, ms: u64) {
        self.core
            .set_clock(self.t0 + Duration::from_millis(ms), 1_000_000 + ms);
    }

    /// Feeds the router what the store output; returns the connection messages.
    fn pump(&mut self) -> Vec<(Target<u64>, ConnMessage)> {
        if self.core.take_flush_due() {
            self.core.flush();
        }
        let mut conns = Vec::new();
        loop {
            let out = self.core.take_output();
            if out.is_empty() {
                return conns;
            }
            for m in out.shards {
                if let ShardMessage::Update(u) = m {
                    self.router.update(u);
                }
            }
            for reply in out.replies {
                if let Some(lost) = reply.send() {
                    self.core.connect_lost(&lost);
                }
            }
            conns.extend(out.conns);
        }
    }

    /// Commits entries (as the log would hand them back) and pumps.
    fn commit(&mut self, batches: Vec<pb::Batch>) -> Vec<(Target<u64>, ConnMessage)> {
        let entries = batches
            .into_iter()
            .map(|b| {
                self.index += 1;
                (self.index, Bytes::from(b.encode_to_vec()))
            })
            .collect();
        self.core.on_log_event(LogEvent::Committed(entries));
        self.pump()
    }

    /// Commits everything proposed so far.
    fn commit_proposed(&mut self) -> Vec<(Target<u64>, ConnMessage)> {
        self.pump();
        let b = self.log.take();
        self.commit(b)
    }

    /// The derived indices against a rebuild: the store's own, and the router's (which answers
    /// the check the store sends it).
    fn check(&mut self) -> Result<(), String> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        self.core.check_derived(Some(tx))?;
        self.pump();
        rx.try_recv().expect("the router answered")
    }

    fn connect(&mut self, id: &str, conn: u64, clean: bool) -> oneshot::Receiver<ConnectOutcome> {
        self.connect_with(id, conn, clean, None)
    }

    fn connect_with(
        &mut self,
        id: &str,
        conn: u64,
        clean: bool,
        session: Option<SessionSettings>,
    ) -> oneshot::Receiver<ConnectOutcome> {
        let (tx, rx) = oneshot::channel();
        self.core.connect(ConnectRequest {
            target: Target {
                conn_id: conn,
                addr: conn,
            },
            info: ConnectInfo {
                client_id: ByteString::from(id),
                clean_session: clean,
                protocol: ProtocolVersion::V3_1_1,
                will: None,
                username: None,
                peer: "127.0.0.1:1".parse().unwrap(),
                session,
            },
            reply: tx,
        });
        rx
    }
}

fn batch(node: u64, commands: Vec<pb::command::Kind>) -> pb::Batch {
    pb::Batch {
        node_id: node,
        incarnation: 99,
        timestamp_ms: 1,
        commands: commands
            .into_iter()
            .map(|k| pb::Command {
                request_id: 0,
                kind: Some(k),
            })
            .collect(),
    }
}

fn connect_cmd(id: &str, node: u64, conn: u64, clean: bool) -> pb::command::Kind {
    pb::command::Kind::Connect(pb::SessionConnect {
        client_id: id.into(),
        clean_session: clean,
        node_id: node,
        connection_id: conn,
        will: None,
        username: String::new(),
        track: clean,
        ..pb::SessionConnect::default()
    })
}

fn subscribe_cmd(id: &str, epoch: u64, filter: &str) -> pb::command::Kind {
    pb::command::Kind::Subscribe(pb::Subscribe {
        client_id: id.into(),
        epoch,
        filters: vec![pb::SubscriptionRequest {
            filter: filter.into(),
            qos: 1,
            ..pb::SubscriptionRequest::default()
        }],
    })
}

/// A state in which node 1 serves a persistent session (`t/#`) and node 3 a tracked clean one
/// (`x/#`), as a snapshot.
fn snapshot_with_remote_sessions() -> (u64, Bytes) {
    let mut state = State::default();
    let mut effects = Vec::new();
    let entries = [
        batch(1, vec![connect_cmd("persistent", 1, 11, false)]),
        batch(1, vec![subscribe_cmd("persistent", 1, "t/#")]),
        batch(3, vec![connect_cmd("clean", 3, 33, true)]),
        batch(3, vec![subscribe_cmd("clean", 2, "x/#")]),
    ];
    for (i, b) in entries.iter().enumerate() {
        state.apply(i as u64 + 2, b, &mut effects);
    }
    (state.applied_index(), state.encode_snapshot())
}

fn routes(n: &Node) -> Vec<(String, bool, Option<RouteTargetId>)> {
    let mut r: Vec<_> = n
        .router
        .session_entries()
        .into_iter()
        .map(|(_, f, _, durable, t)| (f.to_string(), durable, t))
        .collect();
    r.sort();
    r
}

fn disconnects(batches: &[pb::Batch]) -> Vec<pb::SessionDisconnect> {
    batches
        .iter()
        .flat_map(|b| &b.commands)
        .filter_map(|c| match &c.kind {
            Some(pb::command::Kind::Disconnect(d)) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_snapshot_from_the_leader_rebuilds_the_routes_of_every_session() {
    let mut n = Node::new(2, true, BrokerConfig::default());
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    assert!(n.ready.try_recv().is_ok());
    let (index, data) = snapshot_with_remote_sessions();
    n.core.on_log_event(LogEvent::Restore { index, data });
    n.pump();
    assert_eq!(
        routes(&n),
        vec![
            ("t/#".into(), true, Some(RouteTargetId::Remote(1))),
            ("x/#".into(), false, Some(RouteTargetId::Remote(3))),
        ],
        "persistent and clean sessions of other nodes are routed to their nodes"
    );
    n.check().unwrap();
}

#[test]
fn recovery_routes_clean_sessions_and_keeps_remote_targets() {
    let mut n = Node::new(2, true, BrokerConfig::default());
    let (index, data) = snapshot_with_remote_sessions();
    n.core.on_log_event(LogEvent::Restore { index, data });
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    assert_eq!(
        routes(&n),
        vec![
            ("t/#".into(), true, Some(RouteTargetId::Remote(1))),
            ("x/#".into(), false, Some(RouteTargetId::Remote(3))),
        ]
    );
    n.check().unwrap();
}

#[test]
fn a_restore_closes_local_connections_whose_session_moved_away() {
    let mut n = Node::new(3, true, BrokerConfig::default());
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    // "clean" connects here as connection 33 (what the snapshot's owner says), committed.
    let mut rx = n.connect("clean", 33, true);
    n.commit_proposed();
    assert!(matches!(rx.try_recv(), Ok(ConnectOutcome::Accepted { .. })));
    n.check().unwrap();
    // A snapshot in which another node took the session over: the connection here is closed.
    let mut state = State::decode_snapshot(snapshot_with_remote_sessions().1).unwrap();
    let mut effects = Vec::new();
    state.apply(
        50,
        &batch(1, vec![connect_cmd("clean", 1, 77, true)]),
        &mut effects,
    );
    n.core.on_log_event(LogEvent::Restore {
        index: 50,
        data: state.encode_snapshot(),
    });
    let conns = n.pump();
    assert!(
        conns
            .iter()
            .any(|(t, m)| t.conn_id == 33 && matches!(m, ConnMessage::Kick(KickReason::TakenOver))),
        "{conns:?}"
    );
    n.check().unwrap();
}

#[test]
fn a_failed_connect_is_no_longer_pending() {
    let mut n = Node::new(1, false, BrokerConfig::default());
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    let mut rx = n.connect("c", 5, false);
    n.pump();
    assert_eq!(n.log.take().len(), 1, "a persistent connect is proposed");
    n.core.on_log_event(LogEvent::LeaderChanged {
        leader: None,
        term: 2,
    });
    n.pump();
    assert!(matches!(rx.try_recv(), Ok(ConnectOutcome::Unavailable)));
    // A clean session of the same id afterwards is served at once (nothing pending to order
    // it after), as for any clean session on a single node.
    n.core.connection_closed(ConnectionClosed {
        conn_id: 5,
        client_id: "c".into(),
        key: 0,
        epoch: 0,
        persistent: true,
        publish_will: false,
        sent_up_to: 0,
        filters: Vec::new(),
    });
    let mut rx = n.connect("c", 6, true);
    n.pump();
    assert!(matches!(rx.try_recv(), Ok(ConnectOutcome::Accepted { .. })));
    assert!(n.log.take().is_empty(), "nothing proposed for it");
}

/// A node restarted with sessions recorded as served by it.
fn restarted_node() -> Node {
    let mut n = Node::new(2, true, BrokerConfig::default());
    let mut state = State::default();
    let mut effects = Vec::new();
    state.apply(
        2,
        &batch(2, vec![connect_cmd("old", 2, 21, false)]),
        &mut effects,
    );
    n.core.on_log_event(LogEvent::Restore {
        index: 2,
        data: state.encode_snapshot(),
    });
    n.index = 2;
    n.at(0);
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    n
}

fn node_downs(batches: &[pb::Batch]) -> usize {
    batches
        .iter()
        .flat_map(|b| &b.commands)
        .filter(|c| matches!(c.kind, Some(pb::command::Kind::NodeDown(_))))
        .count()
}

#[test]
fn a_restarted_nodes_node_down_is_proposed_until_it_applies_and_connects_wait_for_it() {
    let mut n = restarted_node();
    let first = n.log.take();
    assert_eq!(node_downs(&first), 1);
    // Refused (no leader since the start): proposed again after a while, not at once.
    let entry = Bytes::from(first[0].encode_to_vec());
    n.core.on_log_event(LogEvent::Rejected {
        entry,
        reason: "no leader since the start".into(),
    });
    n.pump();
    let mut rx = n.connect("new", 22, false);
    n.pump();
    assert!(
        n.log.take().is_empty(),
        "the CONNECT waits for the NodeDown"
    );
    n.at(100);
    n.core.tick();
    n.pump();
    assert!(n.log.take().is_empty(), "not before the retry delay");
    n.at(600);
    n.core.tick();
    n.pump();
    let again = n.log.take();
    assert_eq!(node_downs(&again), 1, "proposed again");
    // It applies: the old session goes offline, then the CONNECT is proposed.
    n.commit(again);
    assert!(n.core.state().session("old").unwrap().owner.is_none());
    n.pump();
    let connect = n.log.take();
    assert_eq!(connect.len(), 1);
    assert!(matches!(
        connect[0].commands[0].kind,
        Some(pb::command::Kind::Connect(_))
    ));
    n.commit(connect);
    assert!(matches!(rx.try_recv(), Ok(ConnectOutcome::Accepted { .. })));
    n.check().unwrap();
}

#[test]
fn a_session_served_by_a_connection_that_is_gone_is_disconnected_until_it_applies() {
    let mut n = Node::new(1, true, BrokerConfig::default());
    n.at(0);
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    // Committed while no connection of this node serves it (the client gave up waiting).
    n.commit(vec![batch(1, vec![connect_cmd("gone", 1, 9, false)])]);
    let proposed = n.log.take();
    let d = disconnects(&proposed);
    assert_eq!(d.len(), 1, "{proposed:?}");
    assert_eq!(d[0].client_id, "gone");
    assert!(d[0].publish_will, "its connection ended without DISCONNECT");
    // That proposal is lost with a leader change: proposed again later, until it applies.
    n.core.on_log_event(LogEvent::LeaderChanged {
        leader: Some(2),
        term: 3,
    });
    n.pump();
    n.at(1_000);
    n.core.tick();
    n.pump();
    let again = n.log.take();
    assert_eq!(disconnects(&again).len(), 1, "{again:?}");
    n.commit(again);
    assert!(n.core.state().session("gone").unwrap().owner.is_none());
    n.at(2_000);
    n.core.tick();
    n.core.expire_sessions();
    n.pump();
    assert!(n.log.take().is_empty(), "nothing more once applied");
    n.check().unwrap();
}

#[test]
fn the_end_of_a_connection_is_proposed_until_it_applies() {
    let mut n = Node::new(1, true, BrokerConfig::default());
    n.at(0);
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    let mut rx = n.connect("p", 4, false);
    n.commit_proposed();
    let epoch = match rx.try_recv() {
        Ok(ConnectOutcome::Accepted { epoch, .. }) => epoch,
        other => panic!("{other:?}"),
    };
    n.core.connection_closed(ConnectionClosed {
        conn_id: 4,
        client_id: "p".into(),
        key: 0,
        epoch,
        persistent: true,
        publish_will: true,
        sent_up_to: 0,
        filters: Vec::new(),
    });
    n.pump();
    let first = n.log.take();
    assert_eq!(disconnects(&first).len(), 1);
    n.core.on_log_event(LogEvent::Rejected {
        entry: Bytes::from(first[0].encode_to_vec()),
        reason: "no leader".into(),
    });
    n.pump();
    // The reconciliation does not add a second one while this one is pending.
    n.core.expire_sessions();
    n.pump();
    assert!(n.log.take().is_empty());
    n.at(600);
    n.core.tick();
    n.pump();
    let again = n.log.take();
    assert_eq!(disconnects(&again).len(), 1);
    n.commit(again);
    assert!(n.core.state().session("p").unwrap().owner.is_none());
    n.check().unwrap();
}

#[test]
fn the_limits_come_from_the_log_single_node_proposes_its_configuration() {
    let config = BrokerConfig {
        max_queued_messages: 7,
        ..BrokerConfig::default()
    };
    let mut single = Node::new(1, false, config.clone());
    single.core.on_log_event(LogEvent::Recovered);
    single.commit_proposed();
    assert_eq!(single.core.state().config().max_queued_messages, 7);
    let mut clustered = Node::new(1, true, config);
    clustered.core.on_log_event(LogEvent::Recovered);
    clustered.pump();
    assert!(clustered.log.take().is_empty(), "ignored in a cluster");
    assert_eq!(clustered.core.state().config(), &StateConfig::default());
    let (tx, mut rx) = oneshot::channel();
    clustered.core.set_limits(
        pb::Limits {
            max_inflight: 3,
            ..pb::Limits::default()
        },
        tx,
    );
    clustered.commit_proposed();
    assert_eq!(rx.try_recv().unwrap().unwrap().max_inflight, 3);
}

#[test]
fn a_durable_publish_larger_than_an_entry_is_refused_for_its_publisher_alone() {
    let mut n = Node::new(1, true, BrokerConfig::default());
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    let big = starling_state::Message {
        topic: "t".into(),
        payload: Bytes::from(vec![0u8; 2 << 20]),
        qos: QoS::AtLeastOnce,
        retain: true,
        ..starling_state::Message::default()
    };
    let small = starling_state::Message {
        payload: Bytes::from_static(b"ok"),
        ..big.clone()
    };
    let conn = |id| Target {
        conn_id: id,
        addr: id,
    };
    n.core.durable_publish(vec![
        DurableItem {
            message: big,
            reply: Some((conn(1), 10)),
        },
        DurableItem {
            message: small,
            reply: Some((conn(2), 20)),
        },
    ]);
    let conns = n.pump();
    assert!(
        conns.iter().any(|(t, m)| t.conn_id == 1
            && matches!(m, ConnMessage::Acked(a) if a.refused && a.tokens == vec![10])),
        "{conns:?}"
    );
    let conns = n.commit_proposed();
    assert!(conns.iter().any(|(t, m)| t.conn_id == 2
        && matches!(m, ConnMessage::Acked(a) if !a.refused && a.tokens == vec![20])));
    assert_eq!(n.core.state().retained().len(), 1);
}

#[test]
fn session_keys_have_the_session_bit() {
    let mut n = Node::new(1, true, BrokerConfig::default());
    assert_ne!(n.core.key_of("a") & SESSION_KEY, 0);
}

#[test]
fn a_connect_that_failed_and_commits_late_leaves_no_session_behind() {
    let mut n = Node::new(1, true, BrokerConfig::default());
    n.at(0);
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    let mut rx = n.connect("late", 7, false);
    n.pump();
    let proposed = n.log.take();
    assert_eq!(proposed.len(), 1);
    // The leader changes before the commit: the CONNECT fails, its connection closes without
    // a session (and so without telling the store).
    n.core.on_log_event(LogEvent::LeaderChanged {
        leader: Some(2),
        term: 3,
    });
    n.pump();
    assert!(matches!(rx.try_recv(), Ok(ConnectOutcome::Unavailable)));
    // The new leader commits the entry all the same: the session is released, not left
    // recorded as served by the connection that gave up.
    n.commit(proposed);
    let d = disconnects(&n.log.take());
    assert_eq!(d.len(), 1, "the session is disconnected");
    assert_eq!(d[0].client_id, "late");
    n.check().unwrap();
}

/// Takes the store's output and checks that the subscription's answer is not out yet while
/// its route is: the shell sends the routes first, then the answer.
fn subscribe_answered_after_route(n: &mut Node, mut rx: oneshot::Receiver<SubscribeOutcome>) {
    let out = n.core.take_output();
    assert!(
        rx.try_recv().is_err(),
        "answered before its routes went out"
    );
    assert!(
        out.shards.iter().any(|m| matches!(
            m,
            ShardMessage::Update(RouteUpdate::Add { filter, .. }) if &**filter == "s/t"
        )),
        "{:?}",
        out.shards
    );
    assert_eq!(out.replies.len(), 1);
    for reply in out.replies {
        assert!(reply.send().is_none());
    }
    assert!(matches!(
        rx.try_recv(),
        Ok(SubscribeOutcome::Done { granted, .. }) if granted == vec![QoS::AtLeastOnce]
    ));
}

fn subscribe(
    n: &mut Node,
    id: &str,
    conn: u64,
    key: u64,
    epoch: u64,
) -> oneshot::Receiver<SubscribeOutcome> {
    let (tx, rx) = oneshot::channel();
    n.core.subscribe(SubscribeRequest {
        target: Target {
            conn_id: conn,
            addr: conn,
        },
        client_id: ByteString::from(id),
        key,
        epoch,
        filters: vec![(Arc::from("s/t"), QoS::AtLeastOnce)],
        reply: tx,
    });
    rx
}

#[test]
fn a_subscribe_is_answered_after_its_routes_single_node_clean() {
    let mut n = Node::new(1, false, BrokerConfig::default());
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    let mut c = n.connect("c", 5, true);
    n.pump();
    let Ok(ConnectOutcome::Accepted { key, .. }) = c.try_recv() else {
        panic!("clean connect not accepted at once");
    };
    let rx = subscribe(&mut n, "c", 5, key, 0);
    subscribe_answered_after_route(&mut n, rx);
}

#[test]
fn a_subscribe_is_answered_after_its_routes_once_committed() {
    let mut n = Node::new(1, true, BrokerConfig::default());
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    let mut c = n.connect("p", 5, false);
    n.commit_proposed();
    let Ok(ConnectOutcome::Accepted { key, epoch, .. }) = c.try_recv() else {
        panic!("persistent connect not accepted once committed");
    };
    let rx = subscribe(&mut n, "p", 5, key, epoch);
    n.pump();
    let entries: Vec<_> = n
        .log
        .take()
        .into_iter()
        .map(|b| {
            n.index += 1;
            (n.index, Bytes::from(b.encode_to_vec()))
        })
        .collect();
    n.core.on_log_event(LogEvent::Committed(entries));
    subscribe_answered_after_route(&mut n, rx);
}

fn retained_item(payload: &'static [u8]) -> DurableItem<u64> {
    DurableItem {
        message: starling_state::Message {
            topic: ByteString::from("s/t"),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            ..starling_state::Message::default()
        },
        reply: None,
    }
}

fn commit_all(n: &mut Node) {
    n.pump();
    let entries: Vec<_> = n
        .log
        .take()
        .into_iter()
        .map(|b| {
            n.index += 1;
            (n.index, Bytes::from(b.encode_to_vec()))
        })
        .collect();
    n.core.on_log_event(LogEvent::Committed(entries));
}

#[test]
fn a_clean_subscribe_on_a_single_node_sees_the_retained_change_queued_before_it() {
    let mut n = Node::new(1, false, BrokerConfig::default());
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    n.core.durable_publish(vec![retained_item(b"old")]);
    commit_all(&mut n);
    n.pump();
    // A clear, proposed and not yet applied, then a clean subscriber.
    n.core.durable_publish(vec![retained_item(b"")]);
    let mut c = n.connect("c", 5, true);
    n.pump();
    let Ok(ConnectOutcome::Accepted { key, .. }) = c.try_recv() else {
        panic!("clean connect not accepted at once");
    };
    let mut rx = subscribe(&mut n, "c", 5, key, 0);
    // An UNSUBSCRIBE after it waits behind it too.
    let (tx, mut unsub) = oneshot::channel();
    n.core.unsubscribe(UnsubscribeRequest {
        client_id: ByteString::from("c"),
        key,
        epoch: 0,
        filters: vec![Arc::from("s/t")],
        reply: tx,
    });
    n.pump();
    assert!(rx.try_recv().is_err(), "answered before the clear applied");
    assert!(unsub.try_recv().is_err(), "overtook the SUBSCRIBE");
    commit_all(&mut n);
    n.pump();
    match rx.try_recv() {
        Ok(SubscribeOutcome::Done { retained, .. }) => {
            assert!(retained.is_empty(), "the cleared message: {retained:?}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(unsub.try_recv(), Ok(true));
    assert!(routes(&n).is_empty(), "{:?}", routes(&n));
    // Nothing pending: answered at once.
    let mut rx = subscribe(&mut n, "c", 5, key, 0);
    n.pump();
    assert!(rx.try_recv().is_ok());
}

/// Snapshots come after `snapshot_bytes` of entries, or after as many bytes as the last
/// snapshot held if that is more (a large state is not rewritten for every few bytes logged).
#[test]
fn snapshots_follow_bytes_logged_at_least_the_size_of_the_state() {
    let config = BrokerConfig {
        snapshot_bytes: 10_000,
        ..BrokerConfig::default()
    };
    let mut n = Node::new(1, false, config);
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    let taken = |n: &Node| n.log.snapshots.lock().unwrap().len();
    // Retained messages of 1 KB on distinct topics: the state grows with the log.
    let item = |i: usize| DurableItem {
        message: starling_state::Message {
            topic: ByteString::from(format!("big/{i}")),
            payload: Bytes::from(vec![b'x'; 1000]),
            qos: QoS::AtMostOnce,
            retain: true,
            ..starling_state::Message::default()
        },
        reply: None,
    };
    let mut at = Vec::new();
    for i in 0..100 {
        n.core.durable_publish(vec![item(i)]);
        commit_all(&mut n);
        if taken(&n) > at.len() {
            at.push(i);
        }
    }
    let snaps = n.log.snapshots.lock().unwrap().clone();
    assert!(snaps.len() >= 3, "{snaps:?} at {at:?}");
    // The first after about 10 KB of entries; each later one after at least the previous
    // snapshot's size in entries.
    assert!((8..=11).contains(&at[0]), "{at:?}");
    for w in snaps.windows(2).zip(at.windows(2)) {
        let ((_, prev_size), gap) = (w.0[0], w.1[1] - w.1[0]);
        assert!(
            gap * 1000 >= prev_size.max(10_000) - 1000,
            "{gap} entries after a snapshot of {prev_size} bytes: {snaps:?} at {at:?}"
        );
    }
    // The state of 100 messages is about 100 KB: far fewer snapshots than 100 KB / 10 KB.
    assert!(snaps.len() <= 6, "{snaps:?}");
}

fn ticks(batches: &[pb::Batch]) -> usize {
    batches
        .iter()
        .flat_map(|b| &b.commands)
        .filter(|c| matches!(c.kind, Some(pb::command::Kind::Tick(_))))
        .count()
}

#[test]
fn the_leader_proposes_one_tick_when_its_clock_passes_the_next_deadline() {
    let mut n = Node::new(1, true, BrokerConfig::default());
    n.core.on_log_event(LogEvent::Recovered);
    n.pump();
    // An MQTT 5 session on node 2 that ends 2 s after its connection (log time 1).
    let connect = pb::command::Kind::Connect(pb::SessionConnect {
        protocol_level: 5,
        session_expiry_secs: Some(2),
        ..match connect_cmd("s", 2, 5, false) {
            pb::command::Kind::Connect(c) => c,
            _ => unreachable!(),
        }
    });
    n.commit(vec![batch(2, vec![connect])]);
    let epoch = n.core.state().session("s").unwrap().epoch;
    let disconnect = pb::command::Kind::Disconnect(pb::SessionDisconnect {
        client_id: "s".into(),
        epoch,
        ..Default::default()
    });
    n.commit(vec![batch(2, vec![disconnect])]);
    assert_eq!(n.core.state().next_deadline_ms(), Some(2_001));
    n.at(0);
    for role in ["follower", "candidate"] {
        *n.log.role.lock().unwrap() = role;
        n.core.tick();
        n.pump();
        assert_eq!(ticks(&n.log.take()), 0, "a {role} proposes none");
    }
    *n.log.role.lock().unwrap() = "leader";
    n.core.tick();
    n.pump();
    n.core.tick();
    n.pump();
    let proposed = n.log.take();
    assert_eq!(ticks(&proposed), 1, "one in flight at a time");
    // It fails (a leader change): proposed again at the next tick.
    n.core.on_log_event(LogEvent::LeaderChanged {
        leader: Some(1),
        term: 2,
    });
    n.core.tick();
    n.pump();
    let proposed = n.log.take();
    assert_eq!(ticks(&proposed), 1);
    n.commit(proposed);
    assert!(n.core.state().session("s").is_none(), "expired on the tick");
    assert_eq!(n.core.state().next_deadline_ms(), None);
    assert_eq!(n.check(), Ok(()));
    n.core.tick();
    n.pump();
    assert_eq!(ticks(&n.log.take()), 0, "nothing left to pass");
}

#[test]
fn a_single_node_ticks_through_its_log_and_3_1_1_sessions_keep_the_configured_expiry() {
    let config = BrokerConfig {
        session_expiry_secs: 60,
        ..BrokerConfig::default()
    };
    let mut n = Node::new(1, false, config);
    *n.log.role.lock().unwrap() = "single";
    n.core.on_log_event(LogEvent::Recovered);
    n.commit_proposed();
    let v5 = pb::command::Kind::Connect(pb::SessionConnect {
        protocol_level: 5,
        session_expiry_secs: Some(u32::MAX),
        ..match connect_cmd("five", 2, 5, false) {
            pb::command::Kind::Connect(c) => c,
            _ => unreachable!(),
        }
    });
    n.commit(vec![batch(
        2,
        vec![
            v5,
            connect_cmd("three", 2, 6, false),
            connect_cmd("short", 2, 7, false),
        ],
    )]);
    n.commit(vec![batch(
        2,
        vec![pb::command::Kind::NodeDown(pb::NodeDown { node_id: 2 })],
    )]);
    // The configured expiry (60 s) applies to the 3.1.1 sessions only.
    n.at(61_000);
    n.core.expire_sessions();
    n.pump();
    let drops: Vec<String> = n
        .log
        .take()
        .iter()
        .flat_map(|b| &b.commands)
        .filter_map(|c| match &c.kind {
            Some(pb::command::Kind::DropSession(d)) => Some(d.client_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(drops, vec!["short".to_string(), "three".to_string()]);
    assert_eq!(
        n.core.state().next_deadline_ms(),
        None,
        "u32::MAX never expires"
    );
    // A retained message that expires: the single node's own log carries the tick.
    let retained = pb::command::Kind::Publish(pb::Publish {
        message: Some(pb::AppMessage {
            topic: "r".into(),
            payload: Bytes::from_static(b"x"),
            retain: true,
            expires_at_ms: 1_062_000,
            ..pb::AppMessage::default()
        }),
        fast_path_done: true,
        ..pb::Publish::default()
    });
    n.commit(vec![batch(2, vec![retained])]);
    assert_eq!(n.core.state().next_deadline_ms(), Some(1_062_000));
    n.at(61_999);
    n.core.tick();
    n.pump();
    assert_eq!(ticks(&n.log.take()), 0, "not yet due");
    n.at(62_000);
    n.core.tick();
    let proposed = {
        n.pump();
        n.log.take()
    };
    assert_eq!(ticks(&proposed), 1);
    n.commit(proposed);
    assert!(n.core.state().retained().is_empty());
    assert_eq!(n.check(), Ok(()));
}

fn connects(batches: &[pb::Batch]) -> Vec<pb::SessionConnect> {
    batches
        .iter()
        .flat_map(|b| &b.commands)
        .filter_map(|c| match &c.kind {
            Some(pb::command::Kind::Connect(c)) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_mqtt5_connect_is_persistent_by_its_expiry_and_carries_its_settings() {
    let mut n = Node::new(1, false, BrokerConfig::default());
    n.core.on_log_event(LogEvent::Recovered);
    n.commit_proposed();
    let v5 = |expiry_secs| {
        Some(SessionSettings {
            expiry_secs,
            receive_maximum: 10,
            maximum_packet_size: 4096,
            will_delay_secs: 5,
            will_expiry_secs: 60,
        })
    };
    // Expiry 0 and nothing stored: a clean session, served without the log on a single node.
    let mut rx = n.connect_with("zero", 1, false, v5(0));
    n.pump();
    assert!(matches!(
        rx.try_recv(),
        Ok(ConnectOutcome::Accepted { epoch: 0, .. })
    ));
    assert!(n.log.take().is_empty());
    // Clean Start with an expiry: a new persistent session, through the log.
    let mut rx = n.connect_with("kept", 2, true, v5(300));
    n.pump();
    let proposed = n.log.take();
    let c = &connects(&proposed)[0];
    assert_eq!(
        (c.protocol_level, c.session_expiry_secs, c.clean_session),
        (5, Some(300), true)
    );
    assert_eq!(
        (
            c.receive_maximum,
            c.maximum_packet_size,
            c.will_delay_secs,
            c.will_expiry_secs
        ),
        (10, 4096, 5, 60)
    );
    n.commit(proposed);
    assert!(matches!(
        rx.try_recv(),
        Ok(ConnectOutcome::Accepted { session_present: false, epoch, .. }) if epoch > 0
    ));
    let epoch = n.core.state().session("kept").unwrap().epoch;
    n.core.connection_closed(ConnectionClosed {
        conn_id: 2,
        client_id: "kept".into(),
        key: 0,
        epoch,
        persistent: true,
        publish_will: false,
        sent_up_to: 0,
        filters: Vec::new(),
    });
    n.commit_proposed();
    // Expiry 0 without Clean Start resumes the stored session (which ends with it).
    let mut rx = n.connect_with("kept", 3, false, v5(0));
    n.pump();
    let proposed = n.log.take();
    assert_eq!(connects(&proposed)[0].session_expiry_secs, Some(0));
    n.commit(proposed);
    assert!(matches!(
        rx.try_recv(),
        Ok(ConnectOutcome::Accepted {
            session_present: true,
            ..
        })
    ));
    // A 3.1.1 CONNECT carries none of it.
    n.connect("old", 4, false);
    n.pump();
    let c = &connects(&n.log.take())[0];
    assert_eq!((c.protocol_level, c.session_expiry_secs), (4, None));
}
