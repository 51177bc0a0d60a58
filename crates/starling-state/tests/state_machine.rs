//! Behaviour of the replicated state machine, driven through log entries as a node would.

use bytes::Bytes;
use proptest::prelude::*;
use starling_codec::QoS;
use starling_state::pb::{self, command::Kind};
use starling_state::{CommandResult, Effect, Owner, Rejection, State, StateConfig};

struct Log {
    state: State,
    index: u64,
    next_request: u64,
}

impl Log {
    fn new() -> Log {
        Log {
            state: State::new(StateConfig::default()),
            index: 0,
            next_request: 1,
        }
    }

    fn with(config: StateConfig) -> Log {
        Log {
            state: State::new(config),
            index: 0,
            next_request: 1,
        }
    }

    /// Applies one command in its own entry and returns (its result, all effects).
    fn run(&mut self, kind: Kind) -> (Option<CommandResult>, Vec<Effect>) {
        let request_id = self.next_request;
        self.next_request += 1;
        let batch = pb::Batch {
            node_id: 1,
            incarnation: 7,
            timestamp_ms: 1000 + self.index,
            commands: vec![pb::Command {
                request_id,
                kind: Some(kind),
            }],
        };
        self.index += 1;
        let mut effects = Vec::new();
        self.state.apply(self.index, &batch, &mut effects);
        let result = effects.iter().find_map(|e| match e {
            Effect::Reply {
                request_id: r,
                result,
                ..
            } if *r == request_id => Some(result.clone()),
            _ => None,
        });
        (result, effects)
    }

    fn connect(
        &mut self,
        id: &str,
        clean: bool,
        conn: u64,
    ) -> (u64, bool, starling_state::Resume, Vec<Effect>) {
        let (r, e) = self.run(Kind::Connect(pb::SessionConnect {
            client_id: id.into(),
            clean_session: clean,
            node_id: 1,
            connection_id: conn,
            will: None,
            username: String::new(),
            track: false,
            ..Default::default()
        }));
        match r {
            Some(CommandResult::Connected {
                epoch,
                session_present,
                resume,
            }) => (epoch, session_present, *resume, e),
            other => panic!("connect gave {other:?}"),
        }
    }

    fn subscribe(
        &mut self,
        id: &str,
        epoch: u64,
        filter: &str,
        qos: u32,
    ) -> (Option<CommandResult>, Vec<Effect>) {
        self.run(Kind::Subscribe(pb::Subscribe {
            client_id: id.into(),
            epoch,
            filters: vec![pb::SubscriptionRequest {
                filter: filter.into(),
                qos,
                ..Default::default()
            }],
        }))
    }

    fn publish(&mut self, topic: &str, payload: &str, qos: u32, retain: bool) -> Vec<Effect> {
        self.run(Kind::Publish(pb::Publish {
            message: Some(msg(topic, payload, qos, retain)),
            origin_client: String::new(),
            origin_epoch: 0,
            packet_id: 0,
            fast_path_done: true,
        }))
        .1
    }

    fn ack(&mut self, id: &str, epoch: u64, seq: u64, kind: pb::AckKind) -> Vec<Effect> {
        self.run(Kind::Ack(pb::OutboundAck {
            client_id: id.into(),
            epoch,
            seq,
            kind: kind as i32,
        }))
        .1
    }

    fn disconnect(
        &mut self,
        id: &str,
        epoch: u64,
        sent_up_to: u64,
        will: bool,
    ) -> Option<CommandResult> {
        self.run(Kind::Disconnect(pb::SessionDisconnect {
            client_id: id.into(),
            epoch,
            sent_up_to,
            publish_will: will,
            ..Default::default()
        }))
        .0
    }
}

fn msg(topic: &str, payload: &str, qos: u32, retain: bool) -> pb::AppMessage {
    pb::AppMessage {
        topic: topic.into(),
        payload: Bytes::from(payload.to_string()),
        qos,
        retain,
        ..Default::default()
    }
}

/// What a 3.1.1 SUBSCRIBE of valid filters gets: the QoS granted, retained messages for all.
fn subscribed(granted: Vec<QoS>) -> CommandResult {
    let send_retained = vec![true; granted.len()];
    CommandResult::Subscribed {
        granted,
        send_retained,
    }
}

fn deliveries(effects: &[Effect]) -> Vec<(String, u64, u16, QoS, bool)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver {
                client_id, message, ..
            } => Some((
                client_id.to_string(),
                message.seq,
                message.packet_id,
                message.message.qos,
                message.dup,
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn new_persistent_session_is_not_present_then_resumes_with_flag() {
    let mut log = Log::new();
    let (e1, present, _, _) = log.connect("c", false, 1);
    assert!(!present);
    log.disconnect("c", e1, 0, false);
    let (e2, present, _, _) = log.connect("c", false, 2);
    assert!(present);
    assert!(e2 > e1);
}

#[test]
fn takeover_kicks_old_owner_and_fences_its_commands() {
    let mut log = Log::new();
    let (e1, _, _, _) = log.connect("c", false, 1);
    let (e2, present, _, effects) = log.connect("c", false, 2);
    assert!(present);
    assert!(effects.contains(&Effect::Kick {
        client_id: "c".into(),
        owner: Owner {
            node: 1,
            connection: 1
        },
        by: Some(Owner {
            node: 1,
            connection: 2
        }),
    }));
    let (r, _) = log.subscribe("c", e1, "a", 1);
    assert_eq!(r, Some(CommandResult::Rejected(Rejection::StaleEpoch)));
    let (r, _) = log.subscribe("c", e2, "a", 1);
    assert_eq!(r, Some(subscribed(vec![QoS::AtLeastOnce])));
}

#[test]
fn clean_connect_discards_stored_session() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect("c", false, 1);
    log.subscribe("c", e, "a/#", 2);
    log.disconnect("c", e, 0, false);
    let (_, present, _, effects) = log.connect("c", true, 2);
    assert!(!present);
    assert!(effects.contains(&Effect::SessionRemoved {
        client_id: "c".into(),
        filters: vec!["a/#".into()]
    }));
    assert!(log.state.session("c").is_none());
    assert!(deliveries(&log.publish("a/b", "x", 1, false)).is_empty());
}

#[test]
fn offline_session_queues_qos1_and_2_but_not_qos0_with_downgrade() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect("s", false, 1);
    log.subscribe("s", e, "t/+", 1);
    log.disconnect("s", e, 0, false);
    log.publish("t/a", "zero", 0, false);
    log.publish("t/a", "one", 1, false);
    log.publish("t/a", "two", 2, false);
    let (_, _, resume, _) = log.connect("s", false, 2);
    let got: Vec<(String, QoS, bool)> = resume
        .outbound
        .iter()
        .map(|o| {
            (
                String::from_utf8(o.message.payload.to_vec()).unwrap(),
                o.message.qos,
                o.dup,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("one".into(), QoS::AtLeastOnce, false),
            ("two".into(), QoS::AtLeastOnce, false)
        ]
    );
}

#[test]
fn online_session_gets_deliveries_with_sequential_packet_ids() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect("s", false, 1);
    log.subscribe("s", e, "#", 2);
    let d1 = deliveries(&log.publish("a", "1", 2, false));
    let d2 = deliveries(&log.publish("b", "2", 1, false));
    assert_eq!(d1, vec![("s".into(), 1, 1, QoS::ExactlyOnce, false)]);
    assert_eq!(d2, vec![("s".into(), 2, 2, QoS::AtLeastOnce, false)]);
}

#[test]
fn overlapping_subscriptions_deliver_once_at_highest_qos() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect("s", false, 1);
    log.subscribe("s", e, "a/+", 1);
    log.subscribe("s", e, "a/#", 2);
    let d = deliveries(&log.publish("a/b", "x", 2, false));
    assert_eq!(d, vec![("s".into(), 1, 1, QoS::ExactlyOnce, false)]);
}

#[test]
fn qos2_outbound_stages_pubrec_releases_then_pubcomp_completes() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect("s", false, 1);
    log.subscribe("s", e, "t", 2);
    log.publish("t", "x", 2, false);
    let effects = log.ack("s", e, 1, pb::AckKind::Pubrec);
    assert!(effects
        .iter()
        .any(|x| matches!(x, Effect::Release { seq: 1, .. })));
    // A node failing over now resends PUBREL, not PUBLISH.
    let (e2, _, resume, _) = log.connect("s", false, 2);
    assert_eq!(resume.outbound.len(), 1);
    assert!(resume.outbound[0].released);
    log.ack("s", e2, 1, pb::AckKind::Pubcomp);
    assert!(log.state.session("s").unwrap().queue.is_empty());
}

#[test]
fn pubcomp_before_pubrec_is_ignored_and_puback_on_qos2_is_ignored() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect("s", false, 1);
    log.subscribe("s", e, "t", 2);
    log.publish("t", "x", 2, false);
    log.ack("s", e, 1, pb::AckKind::Pubcomp);
    log.ack("s", e, 1, pb::AckKind::Puback);
    assert_eq!(log.state.session("s").unwrap().queue.len(), 1);
}

#[test]
fn resume_marks_dup_only_for_what_may_have_been_sent() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect("s", false, 1);
    log.subscribe("s", e, "t", 1);
    for i in 0..3 {
        log.publish("t", &i.to_string(), 1, false);
    }
    // The connection wrote seq 1 and 2 before the client went away.
    log.disconnect("s", e, 2, false);
    log.publish("t", "3", 1, false);
    let (e2, _, resume, _) = log.connect("s", false, 2);
    let dups: Vec<(u64, bool)> = resume.outbound.iter().map(|o| (o.seq, o.dup)).collect();
    assert_eq!(dups, vec![(1, true), (2, true), (3, false), (4, false)]);
    // Node lost without a disconnect entry: everything may have been sent.
    let (_, _, resume, _) = log.connect("s", false, 3);
    assert!(resume.outbound.iter().all(|o| o.dup));
    let _ = e2;
}

#[test]
fn inbound_qos2_duplicate_is_not_routed_until_released() {
    let mut log = Log::new();
    let (ep, _, _, _) = log.connect("pub", false, 1);
    let (es, _, _, _) = log.connect("sub", false, 2);
    log.subscribe("sub", es, "t", 2);
    let publish = |epoch: u64| {
        Kind::Publish(pb::Publish {
            message: Some(msg("t", "x", 2, false)),
            origin_client: "pub".into(),
            origin_epoch: epoch,
            packet_id: 9,
            fast_path_done: false,
        })
    };
    let (r, effects) = log.run(publish(ep));
    assert_eq!(r, Some(CommandResult::Published { duplicate: false }));
    assert_eq!(deliveries(&effects).len(), 1);
    assert!(effects.iter().any(|e| matches!(e, Effect::FastPath { .. })));
    // Failover: the publisher resumes elsewhere and resends with DUP.
    let (ep2, _, resume, _) = log.connect("pub", false, 3);
    assert_eq!(resume.inbound, vec![9]);
    let (r, effects) = log.run(publish(ep2));
    assert_eq!(r, Some(CommandResult::Published { duplicate: true }));
    assert!(deliveries(&effects).is_empty());
    assert!(!effects.iter().any(|e| matches!(e, Effect::FastPath { .. })));
    // A stale connection cannot publish at all.
    let (r, _) = log.run(publish(ep));
    assert_eq!(r, Some(CommandResult::Rejected(Rejection::StaleEpoch)));
    // PUBREL frees the id: the same id is a new message afterwards.
    log.run(Kind::Release(pb::ReleaseInbound {
        client_id: "pub".into(),
        epoch: ep2,
        packet_id: 9,
    }));
    let (r, effects) = log.run(publish(ep2));
    assert_eq!(r, Some(CommandResult::Published { duplicate: false }));
    assert_eq!(deliveries(&effects).len(), 1);
}

#[test]
fn retained_set_clear_and_delivery_on_subscribe_after_suback() {
    let mut log = Log::new();
    log.publish("r/a", "keep", 1, true);
    log.publish("r/b", "zero", 0, true);
    log.publish("r/c", "gone", 1, true);
    log.publish("r/c", "", 1, true);
    assert_eq!(log.state.retained().len(), 2);
    let (e, _, _, _) = log.connect("s", false, 1);
    let (_, effects) = log.subscribe("s", e, "r/#", 2);
    let reply = effects
        .iter()
        .position(|x| matches!(x, Effect::Reply { .. }))
        .unwrap();
    let first_delivery = effects
        .iter()
        .position(|x| matches!(x, Effect::Deliver { .. } | Effect::DeliverQos0 { .. }))
        .unwrap();
    assert!(reply < first_delivery, "SUBACK before retained messages");
    let d = deliveries(&effects);
    assert_eq!(d.len(), 1);
    assert!(effects.iter().any(|x| matches!(x, Effect::DeliverQos0 { message, .. } if message.retain && message.payload == "zero")));
    let queued = &log.state.session("s").unwrap().queue[0];
    assert!(queued.message.retain);
}

/// The limit is "queued beyond the in-flight window": window + queued messages are held.
#[test]
fn queue_limit_drops_new_messages_and_reports() {
    let mut log = Log::with(StateConfig {
        max_queued_messages: 1,
        max_inflight: 1,
        max_queued_bytes: 1 << 20,
    });
    let (e, _, _, _) = log.connect("s", false, 1);
    log.subscribe("s", e, "t", 1);
    log.disconnect("s", e, 0, false);
    log.publish("t", "1", 1, false);
    log.publish("t", "2", 1, false);
    let effects = log.publish("t", "3", 1, false);
    assert!(effects
        .iter()
        .any(|x| matches!(x, Effect::QueueFull { queued: 2, .. })));
    assert_eq!(log.state.stats().dropped_messages, 1);
    let s = log.state.session("s").unwrap();
    assert_eq!(
        s.queue
            .iter()
            .map(|q| q.message.payload.clone())
            .collect::<Vec<_>>(),
        vec!["1", "2"]
    );
}

#[test]
fn node_down_disconnects_its_sessions_and_publishes_wills_once() {
    let mut log = Log::new();
    let (es, _, _, _) = log.connect("watcher", false, 1);
    log.subscribe("watcher", es, "will/#", 1);
    log.run(Kind::Connect(pb::SessionConnect {
        client_id: "dying".into(),
        clean_session: false,
        node_id: 2,
        connection_id: 5,
        will: Some(msg("will/dying", "gone", 1, true)),
        username: String::new(),
        track: false,
        ..Default::default()
    }));
    let (_, effects) = log.run(Kind::NodeDown(pb::NodeDown { node_id: 2 }));
    assert_eq!(deliveries(&effects).len(), 1);
    assert!(effects.contains(&Effect::Offline {
        client_id: "dying".into()
    }));
    assert_eq!(
        log.state.retained().get("will/dying").unwrap().payload,
        "gone"
    );
    let (_, effects) = log.run(Kind::NodeDown(pb::NodeDown { node_id: 2 }));
    assert!(deliveries(&effects).is_empty());
    assert!(log.state.session("watcher").unwrap().owner.is_some());
}

#[test]
fn takeover_publishes_the_old_connections_will() {
    let mut log = Log::new();
    let connect = |conn| {
        Kind::Connect(pb::SessionConnect {
            client_id: "c".into(),
            clean_session: false,
            node_id: 1,
            connection_id: conn,
            will: Some(msg("w", "old", 0, true)),
            username: String::new(),
            track: false,
            ..Default::default()
        })
    };
    log.run(connect(1));
    log.run(connect(2));
    assert_eq!(log.state.retained().get("w").unwrap().payload, "old");
    assert!(
        log.state.session("c").unwrap().will.is_some(),
        "the new connection's will is kept"
    );
}

#[test]
fn graceful_disconnect_discards_will() {
    let mut log = Log::new();
    log.run(Kind::Connect(pb::SessionConnect {
        client_id: "c".into(),
        clean_session: false,
        node_id: 1,
        connection_id: 1,
        will: Some(msg("w", "x", 0, true)),
        username: String::new(),
        track: false,
        ..Default::default()
    }));
    log.disconnect("c", 1, 0, false);
    assert!(log.state.retained().is_empty());
}

#[test]
fn expiry_drop_loses_race_against_reconnect() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect("c", false, 1);
    log.disconnect("c", e, 0, false);
    let at = log.state.session("c").unwrap().disconnected_at_ms;
    log.connect("c", false, 2);
    log.run(Kind::DropSession(pb::DropSession {
        client_id: "c".into(),
        if_disconnected_at_ms: at,
    }));
    assert!(log.state.session("c").is_some());
    log.run(Kind::DropSession(pb::DropSession {
        client_id: "c".into(),
        if_disconnected_at_ms: 0,
    }));
    assert!(log.state.session("c").is_none());
}

#[test]
fn replayed_entries_are_ignored() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect("s", false, 1);
    log.subscribe("s", e, "t", 1);
    let batch = pb::Batch {
        node_id: 1,
        incarnation: 1,
        timestamp_ms: 0,
        commands: vec![pb::Command {
            request_id: 0,
            kind: Some(Kind::Publish(pb::Publish {
                message: Some(msg("t", "x", 1, false)),
                fast_path_done: true,
                ..Default::default()
            })),
        }],
    };
    let mut fx = Vec::new();
    log.state.apply(3, &batch, &mut fx);
    log.state.apply(3, &batch, &mut fx);
    log.state.apply(2, &batch, &mut fx);
    assert_eq!(log.state.session("s").unwrap().queue.len(), 1);
}

// ---- Determinism: the same entries give the same state, snapshots restore it exactly ----

/// MQTT 5 properties, or none.
fn arb_properties() -> impl Strategy<Value = Option<pb::MessageProperties>> {
    prop_oneof![
        Just(None),
        (
            any::<bool>(),
            prop_oneof![Just(None), Just(Some("json".to_string()))],
            0..3usize
        )
            .prop_map(|(utf8, content_type, users)| Some(pb::MessageProperties {
                payload_format_indicator: utf8,
                content_type,
                response_topic: None,
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: (0..users)
                    .map(|i| pb::UserProperty {
                        key: "k".into(),
                        value: i.to_string(),
                    })
                    .collect(),
            })),
    ]
}

/// A Session Expiry Interval as a connect or a disconnect carries it.
fn arb_expiry() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        Just(Some(1)),
        Just(Some(3)),
        Just(Some(u32::MAX))
    ]
}

/// An epoch a generated command carries: mostly the client's current one (resolved against the
/// state when the command is applied, see [`resolve_epochs`]), sometimes any.
const CURRENT_EPOCH: u64 = u64::MAX;

fn arb_epoch() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(CURRENT_EPOCH), 1 => 0..6u64]
}

/// Replaces [`CURRENT_EPOCH`] in `kind` with the epoch `state` gives the client now (0 if none).
fn resolve_epochs(kind: &mut Kind, state: &State) {
    let current = |id: &str| {
        state
            .session(id)
            .map(|s| s.epoch)
            .or_else(|| state.clean_session(id).map(|c| c.epoch))
            .unwrap_or(0)
    };
    let (id, epoch) = match kind {
        Kind::Disconnect(d) => (&d.client_id, &mut d.epoch),
        Kind::Subscribe(x) => (&x.client_id, &mut x.epoch),
        Kind::Unsubscribe(x) => (&x.client_id, &mut x.epoch),
        Kind::Publish(p) => (&p.origin_client, &mut p.origin_epoch),
        Kind::Release(r) => (&r.client_id, &mut r.epoch),
        Kind::Ack(a) => (&a.client_id, &mut a.epoch),
        _ => return,
    };
    if *epoch == CURRENT_EPOCH {
        *epoch = current(id);
    }
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    let id = prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from);
    let topic = prop_oneof![Just("x"), Just("x/y"), Just("z"), Just("$s/x")].prop_map(String::from);
    let filter = prop_oneof![
        Just("x"),
        Just("x/#"),
        Just("+"),
        Just("#"),
        Just("+/y"),
        Just("$s/#")
    ]
    .prop_map(String::from);
    // Expiry instants across the run's timeline (batches move the clock by up to 4 s each).
    let expires = prop_oneof![Just(0u64), 1..120_000u64];
    prop_oneof![
        (
            id.clone(),
            any::<bool>(),
            1..3u64,
            1..4u64,
            any::<bool>(),
            prop_oneof![Just(4u32), Just(5u32)],
            arb_expiry(),
            prop_oneof![Just(0u32), Just(60), Just(1000)],
            (0..3u32, 0..2u32, any::<bool>()),
        )
            .prop_map(
                |(c, clean, node, conn, track, level, expiry, max_packet, (delay, wexp, will))| {
                    Kind::Connect(pb::SessionConnect {
                        client_id: c.clone(),
                        clean_session: clean,
                        node_id: node,
                        connection_id: conn,
                        will: will.then(|| msg(&format!("will/{c}"), "w", 1, false)),
                        username: String::new(),
                        track,
                        protocol_level: level,
                        session_expiry_secs: expiry,
                        receive_maximum: 10,
                        maximum_packet_size: max_packet,
                        will_delay_secs: delay,
                        will_expiry_secs: wexp,
                    })
                }
            ),
        (
            id.clone(),
            arb_epoch(),
            0..8u64,
            any::<bool>(),
            arb_expiry()
        )
            .prop_map(|(c, epoch, sent, will, expiry)| {
                Kind::Disconnect(pb::SessionDisconnect {
                    client_id: c,
                    epoch,
                    sent_up_to: sent,
                    publish_will: will,
                    session_expiry_secs: expiry,
                })
            }),
        (
            id.clone(),
            arb_epoch(),
            filter.clone(),
            0..3u32,
            (any::<bool>(), any::<bool>(), 0..3u32, 0..3u32)
        )
            .prop_map(|(c, epoch, f, qos, (no_local, rap, handling, sub_id))| {
                Kind::Subscribe(pb::Subscribe {
                    client_id: c,
                    epoch,
                    filters: vec![pb::SubscriptionRequest {
                        filter: f,
                        qos,
                        no_local,
                        retain_as_published: rap,
                        retain_handling: handling,
                        subscription_id: sub_id,
                    }],
                })
            }),
        (id.clone(), arb_epoch(), filter).prop_map(|(c, epoch, f)| Kind::Unsubscribe(
            pb::Unsubscribe {
                client_id: c,
                epoch,
                filters: vec![f]
            }
        )),
        (
            topic,
            0..3u32,
            any::<bool>(),
            prop_oneof![Just(""), Just("a"), Just("b")],
            arb_epoch(),
            0..3u32,
            any::<bool>(),
            (
                arb_properties(),
                expires,
                prop_oneof![Just(""), Just("a"), Just("c")]
            )
        )
            .prop_map(
                |(
                    t,
                    qos,
                    retain,
                    origin,
                    epoch,
                    pid,
                    empty,
                    (properties, expires_at_ms, publisher),
                )| {
                    let message = pb::AppMessage {
                        properties,
                        expires_at_ms,
                        publisher: publisher.into(),
                        ..msg(&t, if empty { "" } else { "p" }, qos, retain)
                    };
                    Kind::Publish(pb::Publish {
                        message: Some(message),
                        origin_client: origin.into(),
                        origin_epoch: epoch,
                        packet_id: pid,
                        fast_path_done: false,
                    })
                }
            ),
        (id.clone(), arb_epoch(), 0..3u32).prop_map(|(c, epoch, pid)| Kind::Release(
            pb::ReleaseInbound {
                client_id: c,
                epoch,
                packet_id: pid
            }
        )),
        (id.clone(), arb_epoch(), 0..8u64, 1..4i32).prop_map(|(c, epoch, seq, kind)| Kind::Ack(
            pb::OutboundAck {
                client_id: c,
                epoch,
                seq,
                kind
            }
        )),
        (id, 0..1200u64).prop_map(|(c, at)| Kind::DropSession(pb::DropSession {
            client_id: c,
            if_disconnected_at_ms: at
        })),
        (1..3u64).prop_map(|n| Kind::NodeDown(pb::NodeDown { node_id: n })),
        (
            0..4u64,
            0..3u64,
            prop_oneof![Just(0u64), Just(200), Just(1 << 20)]
        )
            .prop_map(|(m, i, b)| Kind::SetLimits(pb::SetLimits {
                limits: Some(pb::Limits {
                    max_queued_messages: m,
                    max_inflight: i,
                    max_queued_bytes: b,
                }),
            })),
        Just(Kind::Tick(pb::Tick {})),
    ]
}

/// How far each batch's timestamp moves from the previous one's: mostly forward, by up to 4 s
/// (expiries and will delays of a few seconds pass within a run), sometimes back (a proposer
/// whose clock is behind: the log's clock never goes back).
fn arb_step() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(10),
        Just(500),
        Just(1500),
        Just(4000),
        Just(-3000)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn same_log_same_state_and_snapshot_restores_it(
        kinds in proptest::collection::vec((arb_kind(), arb_step()), 1..60),
        cut in 0usize..60,
    ) {
        let config = StateConfig { max_queued_messages: 3, max_inflight: 2, max_queued_bytes: 1 << 20 };
        let mut clock: i64 = 10_000;
        let mut batches: Vec<pb::Batch> = kinds.into_iter().enumerate().map(|(i, (k, step))| {
            clock += step;
            pb::Batch {
                node_id: 1, incarnation: 1, timestamp_ms: clock as u64,
                commands: vec![pb::Command { request_id: i as u64 + 1, kind: Some(k) }],
            }
        }).collect();
        let mut a = State::new(config.clone());
        let mut b = State::new(config.clone());
        let mut fa = Vec::new();
        let mut fb = Vec::new();
        let cut = cut.min(batches.len());
        for (i, batch) in batches.iter_mut().enumerate() {
            for c in &mut batch.commands {
                if let Some(k) = c.kind.as_mut() {
                    resolve_epochs(k, &a);
                }
            }
            let batch = &*batch;
            a.apply(i as u64 + 1, batch, &mut fa);
            prop_assert_eq!(a.check_derived(), Ok(()), "after entry {}", i + 1);
            prop_assert!(a.log_clock_ms() >= batch.timestamp_ms);
            prop_assert!(a.next_deadline_ms().is_none_or(|d| d > a.log_clock_ms()), "a passed deadline stays behind");
            if i == cut {
                // b restarts from a snapshot taken here, as a node catching up would.
                b = State::decode_snapshot(a.encode_snapshot()).unwrap();
                prop_assert_eq!(b.check_derived(), Ok(()), "restored at entry {}", i + 1);
                prop_assert_eq!(b.digest(), a.digest());
                fb = fa.clone();
            } else {
                b.apply(i as u64 + 1, batch, &mut fb);
            }
        }
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.to_snapshot(), b.to_snapshot());
        prop_assert_eq!(a.stats(), b.stats());
        prop_assert_eq!(a.config(), b.config(), "the limits travel in the snapshot");
        prop_assert_eq!(a.next_deadline_ms(), b.next_deadline_ms());
        prop_assert_eq!(&fa, &fb, "the restored state has the same effects from there on");
        prop_assert_eq!(a.check_derived(), Ok(()));
        prop_assert_eq!(b.check_derived(), Ok(()));
        // Invariants: queue ordered, bytes accounted, in-flight ids distinct.
        for s in a.sessions() {
            prop_assert!(s.queue.iter().zip(s.queue.iter().skip(1)).all(|(x, y)| x.seq < y.seq));
            prop_assert_eq!(s.queued_bytes, s.queue.iter().map(|q| q.message.cost()).sum::<usize>());
            prop_assert!(s.queue.len() <= a.config().max_queued_messages + a.config().max_inflight);
            prop_assert!(s.queue.iter().all(|q| q.subscription_ids.windows(2).all(|w| w[0] < w[1])));
            // A connected session has no expiry deadline.
            if s.owner.is_some() {
                prop_assert!(s.expires_at_ms().is_none());
            }
        }
    }
}

// ---- Clean sessions tracked in clustered mode ----

fn tracked(
    log: &mut Log,
    id: &str,
    node: u64,
    conn: u64,
    will: Option<pb::AppMessage>,
) -> (u64, Vec<Effect>) {
    let (r, e) = log.run(Kind::Connect(pb::SessionConnect {
        client_id: id.into(),
        clean_session: true,
        node_id: node,
        connection_id: conn,
        will,
        username: String::new(),
        track: true,
        ..Default::default()
    }));
    match r {
        Some(CommandResult::Connected {
            epoch,
            session_present: false,
            ..
        }) => (epoch, e),
        other => panic!("tracked connect gave {other:?}"),
    }
}

#[test]
fn tracked_clean_session_routes_without_queueing_and_ends_at_disconnect() {
    let mut log = Log::new();
    let (e, _) = tracked(&mut log, "c", 2, 9, None);
    assert!(e > 0);
    let (r, effects) = log.subscribe("c", e, "t/#", 1);
    assert_eq!(r, Some(subscribed(vec![QoS::AtLeastOnce])));
    assert!(effects.contains(&Effect::RouteAdd {
        client_id: "c".into(),
        filter: "t/#".into(),
        options: starling_state::SubOptions::qos(QoS::AtLeastOnce),
        durable: false
    }));
    // Not a durable target: nothing is queued for it.
    assert!(deliveries(&log.publish("t/x", "m", 1, false)).is_empty());
    assert_eq!(log.state.stats().clean_sessions, 1);
    log.disconnect("c", e, 0, false);
    assert!(log.state.clean_session("c").is_none());
    assert_eq!(log.state.stats().clean_sessions, 0);
}

/// A persistent CONNECT of `id` through `node`: (session present, effects).
fn persistent_on(
    log: &mut Log,
    id: &str,
    node: u64,
    conn: u64,
    will: Option<pb::AppMessage>,
) -> (bool, Vec<Effect>) {
    let (r, e) = log.run(Kind::Connect(pb::SessionConnect {
        client_id: id.into(),
        clean_session: false,
        node_id: node,
        connection_id: conn,
        will,
        username: String::new(),
        track: false,
        ..Default::default()
    }));
    match r {
        Some(CommandResult::Connected {
            session_present, ..
        }) => (session_present, e),
        other => panic!("persistent connect gave {other:?}"),
    }
}

#[test]
fn tracked_clean_takeover_kicks_the_old_owner_and_publishes_its_will_on_its_own_node() {
    let mut log = Log::new();
    let (es, _, _, _) = log.connect("w", false, 1);
    log.subscribe("w", es, "will/#", 1);
    let (e1, _) = tracked(&mut log, "c", 2, 5, Some(msg("will/c", "bye", 1, false)));
    let (e2, effects) = tracked(&mut log, "c", 2, 6, None);
    assert!(e2 > e1);
    assert!(effects.contains(&Effect::Kick {
        client_id: "c".into(),
        owner: Owner {
            node: 2,
            connection: 5
        },
        by: Some(Owner {
            node: 2,
            connection: 6
        }),
    }));
    assert_eq!(
        deliveries(&effects).len(),
        1,
        "the old connection's will reaches the watcher"
    );
    // The old connection's late commands are stale.
    let (r, _) = log.subscribe("c", e1, "x", 0);
    assert_eq!(r, Some(CommandResult::Rejected(Rejection::NoSession)));
}

/// A client that reconnects through another node (its node died or is cut off) takes its
/// session over without its old connection's will: the cluster publishes the wills of a lost
/// node's clients unless they reconnected in between. Persistent and tracked clean sessions.
#[test]
fn takeover_through_another_node_publishes_no_will() {
    let mut log = Log::new();
    let (es, _, _, _) = log.connect("w", false, 1);
    log.subscribe("w", es, "will/#", 1);
    let (e1, _) = tracked(&mut log, "c", 2, 5, Some(msg("will/c", "bye", 1, false)));
    let (_, effects) = tracked(&mut log, "c", 3, 6, None);
    assert!(effects.contains(&Effect::Kick {
        client_id: "c".into(),
        owner: Owner {
            node: 2,
            connection: 5
        },
        by: Some(Owner {
            node: 3,
            connection: 6
        }),
    }));
    assert_eq!(
        deliveries(&effects),
        Vec::new(),
        "no will for a clean session"
    );
    let (r, _) = log.subscribe("c", e1, "x", 0);
    assert_eq!(r, Some(CommandResult::Rejected(Rejection::NoSession)));

    persistent_on(&mut log, "p", 2, 7, Some(msg("will/p", "bye", 1, false)));
    let (present, effects) = persistent_on(&mut log, "p", 3, 8, None);
    assert!(present);
    assert_eq!(
        deliveries(&effects),
        Vec::new(),
        "no will for a persistent session"
    );
    // The same on its own node: the will is published.
    persistent_on(&mut log, "q", 2, 9, Some(msg("will/q", "bye", 1, false)));
    let (_, effects) = persistent_on(&mut log, "q", 2, 10, None);
    assert_eq!(deliveries(&effects).len(), 1, "a will on the same node");
}

#[test]
fn persistent_connect_replaces_a_tracked_clean_session_and_vice_versa() {
    let mut log = Log::new();
    let (e, _) = tracked(&mut log, "c", 2, 5, None);
    log.subscribe("c", e, "a", 0);
    let (_, present, _, effects) = log.connect("c", false, 7);
    assert!(!present);
    assert!(effects.iter().any(|x| matches!(x, Effect::SessionRemoved { filters, .. } if filters == &vec![std::sync::Arc::<str>::from("a")])));
    assert!(log.state.clean_session("c").is_none());
    let (_, effects) = tracked(&mut log, "c", 2, 8, None);
    assert!(effects.contains(&Effect::Kick {
        client_id: "c".into(),
        owner: Owner {
            node: 1,
            connection: 7
        },
        by: Some(Owner {
            node: 2,
            connection: 8
        }),
    }));
    assert!(log.state.session("c").is_none());
}

#[test]
fn epochs_are_never_reused_even_for_a_recreated_session() {
    let mut log = Log::new();
    let (e1, _, _, _) = log.connect("p", false, 1);
    log.run(Kind::DropSession(pb::DropSession {
        client_id: "p".into(),
        if_disconnected_at_ms: 0,
    }));
    let (e2, _, _, _) = log.connect("p", false, 2);
    assert!(e2 > e1);
    assert_eq!(
        log.disconnect("p", e1, 0, false),
        Some(CommandResult::Rejected(Rejection::StaleEpoch))
    );
}

#[test]
fn node_down_removes_its_tracked_clean_sessions_and_publishes_their_wills() {
    let mut log = Log::new();
    let (es, _, _, _) = log.connect("w", false, 1);
    log.subscribe("w", es, "will/#", 1);
    tracked(
        &mut log,
        "gone",
        2,
        1,
        Some(msg("will/gone", "x", 1, false)),
    );
    tracked(
        &mut log,
        "stays",
        3,
        1,
        Some(msg("will/stays", "x", 1, false)),
    );
    let (_, effects) = log.run(Kind::NodeDown(pb::NodeDown { node_id: 2 }));
    assert!(log.state.clean_session("gone").is_none());
    assert!(log.state.clean_session("stays").is_some());
    let d = deliveries(&effects);
    assert_eq!(d.len(), 1);
}

// ---- Replicated limits ----

#[test]
fn limits_change_only_through_the_log_and_travel_in_snapshots() {
    let mut log = Log::new();
    let (epoch, ..) = log.connect("s", false, 1);
    log.subscribe("s", epoch, "t", 1);
    log.disconnect("s", epoch, 0, false);
    let (r, e) = log.run(Kind::SetLimits(pb::SetLimits {
        limits: Some(pb::Limits {
            max_queued_messages: 2,
            max_inflight: 1,
            max_queued_bytes: 0,
        }),
    }));
    let want = StateConfig {
        max_queued_messages: 2,
        max_inflight: 1,
        max_queued_bytes: StateConfig::default().max_queued_bytes,
    };
    assert_eq!(
        r,
        Some(CommandResult::LimitsSet(want.clone())),
        "0 leaves a limit as it is"
    );
    assert!(e.contains(&Effect::LimitsChanged {
        limits: want.clone()
    }));
    for i in 0..5 {
        log.publish("t", &format!("m{i}"), 1, false);
    }
    assert_eq!(
        log.state.session("s").unwrap().queue.len(),
        3,
        "max_queued_messages + max_inflight"
    );
    let restored = State::decode_snapshot(log.state.encode_snapshot()).unwrap();
    assert_eq!(restored.config(), &want);
    assert_eq!(restored.digest(), log.state.digest());
    // A snapshot without limits (written before they were replicated) restores the defaults.
    let mut old = log.state.to_snapshot();
    old.limits = None;
    assert_eq!(State::from_snapshot(old).config(), &StateConfig::default());
}
