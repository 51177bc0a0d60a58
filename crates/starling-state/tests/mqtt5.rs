//! MQTT 5 in the replicated state: message properties and expiry, session expiry, will delay,
//! subscription options and the client's Maximum Packet Size, all applied in log time.

use std::sync::Arc;

use bytes::Bytes;
use starling_codec::QoS;
use starling_state::pb::{self, command::Kind};
use starling_state::{CommandResult, Effect, Resume, State, StateConfig, SubOptions};

/// A log whose entries carry the timestamps the test sets.
struct Log {
    state: State,
    index: u64,
    now: u64,
    next_request: u64,
}

/// Where every test's log time starts.
const T0: u64 = 1_000_000;

impl Log {
    fn new() -> Log {
        Log {
            state: State::new(StateConfig::default()),
            index: 0,
            now: T0,
            next_request: 1,
        }
    }

    /// Moves the timestamp of the next entries to `T0 + ms`.
    fn at(&mut self, ms: u64) -> &mut Log {
        self.now = T0 + ms;
        self
    }

    fn run(&mut self, kind: Kind) -> (Option<CommandResult>, Vec<Effect>) {
        let request_id = self.next_request;
        self.next_request += 1;
        let batch = pb::Batch {
            node_id: 1,
            incarnation: 7,
            timestamp_ms: self.now,
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

    fn tick(&mut self) -> Vec<Effect> {
        self.run(Kind::Tick(pb::Tick {})).1
    }

    fn connect_with(&mut self, c: pb::SessionConnect) -> (u64, bool, Resume, Vec<Effect>) {
        let (r, e) = self.run(Kind::Connect(c));
        match r {
            Some(CommandResult::Connected {
                epoch,
                session_present,
                resume,
            }) => (epoch, session_present, *resume, e),
            other => panic!("connect gave {other:?}"),
        }
    }

    /// A v5 CONNECT on node 1 with this Clean Start and Session Expiry Interval.
    fn connect5(&mut self, id: &str, clean_start: bool, expiry: u32) -> (u64, bool, Resume) {
        let (epoch, present, resume, _) = self.connect_with(v5(id, clean_start, expiry));
        (epoch, present, resume)
    }

    fn subscribe(
        &mut self,
        id: &str,
        epoch: u64,
        reqs: Vec<pb::SubscriptionRequest>,
    ) -> Vec<Effect> {
        let (r, e) = self.run(Kind::Subscribe(pb::Subscribe {
            client_id: id.into(),
            epoch,
            filters: reqs,
        }));
        assert!(
            matches!(r, Some(CommandResult::Subscribed { .. })),
            "subscribe gave {r:?}"
        );
        e
    }

    fn publish(&mut self, m: pb::AppMessage) -> Vec<Effect> {
        self.run(Kind::Publish(pb::Publish {
            message: Some(m),
            fast_path_done: true,
            ..Default::default()
        }))
        .1
    }

    fn disconnect(&mut self, id: &str, epoch: u64, publish_will: bool, expiry: Option<u32>) {
        let (r, _) = self.run(Kind::Disconnect(pb::SessionDisconnect {
            client_id: id.into(),
            epoch,
            sent_up_to: 0,
            publish_will,
            session_expiry_secs: expiry,
        }));
        assert_eq!(r, Some(CommandResult::Disconnected));
    }

    fn ack(&mut self, id: &str, epoch: u64, seq: u64, kind: pb::AckKind) {
        self.run(Kind::Ack(pb::OutboundAck {
            client_id: id.into(),
            epoch,
            seq,
            kind: kind as i32,
        }));
    }

    /// Every derived index equals its rebuild, and a snapshot restores the same state.
    fn check(&self) {
        assert_eq!(self.state.check_derived(), Ok(()));
        let restored = State::decode_snapshot(self.state.encode_snapshot()).unwrap();
        assert_eq!(restored.digest(), self.state.digest());
        assert_eq!(restored.check_derived(), Ok(()));
        assert_eq!(restored.next_deadline_ms(), self.state.next_deadline_ms());
    }
}

fn v5(id: &str, clean_start: bool, expiry: u32) -> pb::SessionConnect {
    pb::SessionConnect {
        client_id: id.into(),
        clean_session: clean_start,
        node_id: 1,
        connection_id: 1,
        protocol_level: 5,
        session_expiry_secs: Some(expiry),
        ..Default::default()
    }
}

fn msg(topic: &str, payload: &str, qos: u32) -> pb::AppMessage {
    pb::AppMessage {
        topic: topic.into(),
        payload: Bytes::from(payload.to_string()),
        qos,
        ..Default::default()
    }
}

fn sub(filter: &str, qos: u32) -> pb::SubscriptionRequest {
    pb::SubscriptionRequest {
        filter: filter.into(),
        qos,
        ..Default::default()
    }
}

/// (client, payload, QoS, RETAIN, subscription ids) of the durable deliveries.
type Seen = (String, String, QoS, bool, Vec<u32>);

fn delivered(effects: &[Effect]) -> Vec<Seen> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver {
                client_id, message, ..
            } => Some((
                client_id.to_string(),
                String::from_utf8(message.message.payload.to_vec()).unwrap(),
                message.message.qos,
                message.message.retain,
                message.subscription_ids.clone(),
            )),
            Effect::DeliverQos0 {
                client_id,
                message,
                subscription_ids,
                ..
            } => Some((
                client_id.to_string(),
                String::from_utf8(message.payload.to_vec()).unwrap(),
                message.qos,
                message.retain,
                subscription_ids.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn payloads(effects: &[Effect]) -> Vec<String> {
    delivered(effects).into_iter().map(|d| d.1).collect()
}

fn removed(effects: &[Effect], id: &str) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::SessionRemoved { client_id, .. } if &**client_id == id))
}

// ---- Messages carry v5 properties; expired messages are never delivered ----

#[test]
fn properties_expiry_and_publisher_travel_with_queued_messages_and_snapshots() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("s", false, 600);
    log.subscribe("s", e, vec![sub("t", 1)]);
    let m = pb::AppMessage {
        properties: Some(pb::MessageProperties {
            payload_format_indicator: true,
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/s".into()),
            correlation_data: Some(Bytes::from_static(b"42")),
            user_properties: vec![
                pb::UserProperty {
                    key: "a".into(),
                    value: "1".into(),
                },
                pb::UserProperty {
                    key: "a".into(),
                    value: "2".into(),
                },
            ],
        }),
        expires_at_ms: T0 + 60_000,
        publisher: "p".into(),
        ..msg("t", "x", 1)
    };
    let effects = log.publish(m.clone());
    let Some(Effect::Deliver { message, .. }) =
        effects.iter().find(|e| matches!(e, Effect::Deliver { .. }))
    else {
        panic!("no delivery in {effects:?}");
    };
    let props = message.message.properties.as_deref().unwrap();
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        props.user_properties,
        vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        "user properties in order, repeated keys kept"
    );
    assert_eq!(message.message.expires_at_ms, T0 + 60_000);
    assert_eq!(&*message.message.publisher, "p");
    let queued = &log.state.session("s").unwrap().queue[0];
    assert_eq!(
        queued.message.to_pb(),
        pb::AppMessage { retain: false, ..m }
    );
    assert!(
        queued.message.cost() > "t".len() + "x".len() + 64,
        "the properties count against the byte limit"
    );
    log.check();
}

#[test]
fn an_expired_message_is_not_queued_nor_routed() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("s", false, 600);
    log.subscribe("s", e, vec![sub("t", 1)]);
    log.at(5_000);
    let stale = pb::AppMessage {
        expires_at_ms: T0 + 5_000,
        ..msg("t", "stale", 1)
    };
    let effects = log.run(Kind::Publish(pb::Publish {
        message: Some(stale),
        ..Default::default()
    }));
    assert!(payloads(&effects.1).is_empty());
    assert!(
        !effects
            .1
            .iter()
            .any(|e| matches!(e, Effect::FastPath { .. })),
        "nor handed to the fast path"
    );
    assert!(log.state.session("s").unwrap().queue.is_empty());
}

#[test]
fn resume_drops_expired_messages_never_sent_and_keeps_those_sent_or_released() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("s", false, 600);
    log.subscribe("s", e, vec![sub("t", 2)]);
    let expiring = |p: &str, qos| pb::AppMessage {
        expires_at_ms: T0 + 10_000,
        ..msg("t", p, qos)
    };
    log.publish(expiring("sent", 1));
    log.publish(expiring("released", 2));
    log.ack("s", e, 2, pb::AckKind::Pubrec);
    log.publish(expiring("unsent", 1));
    log.publish(msg("t", "forever", 1));
    // The connection wrote seq 1 and 2 (and got PUBREC for 2), not 3 and 4.
    log.run(Kind::Disconnect(pb::SessionDisconnect {
        client_id: "s".into(),
        epoch: e,
        sent_up_to: 2,
        ..Default::default()
    }));
    log.at(10_000);
    let (_, present, resume) = log.connect5("s", false, 600);
    assert!(present);
    let kept: Vec<(u64, String)> = resume
        .outbound
        .iter()
        .map(|o| {
            (
                o.seq,
                String::from_utf8(o.message.payload.to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        vec![
            (1, "sent".into()),
            (2, "released".into()),
            (4, "forever".into())
        ]
    );
    let s = log.state.session("s").unwrap();
    assert_eq!(
        s.queued_bytes,
        s.queue.iter().map(|q| q.message.cost()).sum::<usize>()
    );
    log.check();
}

// ---- Retained messages expire in log time ----

#[test]
fn a_retained_message_expires_in_log_time_and_is_not_sent_on_subscribe_after() {
    let mut log = Log::new();
    log.publish(pb::AppMessage {
        retain: true,
        expires_at_ms: T0 + 3_000,
        ..msg("r/a", "brief", 1)
    });
    log.publish(pb::AppMessage {
        retain: true,
        ..msg("r/b", "stays", 1)
    });
    assert_eq!(log.state.next_deadline_ms(), Some(T0 + 3_000));
    log.check();
    let (e, _, _) = log.connect5("s", false, 600);
    let effects = log.subscribe("s", e, vec![sub("r/#", 1)]);
    assert_eq!(payloads(&effects), vec!["brief", "stays"]);
    log.at(2_999).tick();
    assert_eq!(log.state.retained().len(), 2, "not yet");
    log.at(3_000).tick();
    assert_eq!(
        log.state.retained().len(),
        1,
        "gone on the entry that passes it"
    );
    assert_eq!(log.state.next_deadline_ms(), None);
    let (e2, _, _) = log.connect5("t", false, 600);
    let effects = log.subscribe("t", e2, vec![sub("r/#", 1)]);
    assert_eq!(payloads(&effects), vec!["stays"]);
    log.check();
}

#[test]
fn a_retained_message_already_expired_when_applied_clears_the_topic() {
    let mut log = Log::new();
    log.publish(pb::AppMessage {
        retain: true,
        ..msg("r", "old", 1)
    });
    log.at(9_000);
    log.publish(pb::AppMessage {
        retain: true,
        expires_at_ms: T0 + 8_000,
        ..msg("r", "late", 1)
    });
    assert!(log.state.retained().is_empty());
    log.check();
}

#[test]
fn the_log_clock_never_goes_back_and_travels_in_snapshots() {
    let mut log = Log::new();
    log.at(5_000).tick();
    log.at(1_000).tick();
    assert_eq!(log.state.log_clock_ms(), T0 + 5_000);
    let restored = State::decode_snapshot(log.state.encode_snapshot()).unwrap();
    assert_eq!(restored.log_clock_ms(), T0 + 5_000);
}

// ---- Session expiry ----

#[test]
fn a_session_ends_when_its_expiry_has_passed_after_disconnect() {
    let mut log = Log::new();
    let (e, present, _) = log.connect5("s", false, 2);
    assert!(!present);
    log.subscribe("s", e, vec![sub("t", 1)]);
    log.at(1_000).disconnect("s", e, false, None);
    assert_eq!(log.state.next_deadline_ms(), Some(T0 + 3_000));
    log.check();
    log.at(2_999).tick();
    assert!(log.state.session("s").is_some());
    let effects = log.at(3_000).tick();
    assert!(removed(&effects, "s"), "routes removed: {effects:?}");
    assert!(log.state.session("s").is_none());
    assert_eq!(log.state.next_deadline_ms(), None);
    log.check();
    let (_, present, _) = log.connect5("s", false, 2);
    assert!(!present);
}

#[test]
fn any_entry_passes_a_deadline_not_only_a_tick() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("s", false, 1);
    log.disconnect("s", e, false, None);
    let effects = log.at(1_500).publish(msg("elsewhere", "x", 0));
    assert!(removed(&effects, "s"));
}

#[test]
fn a_reconnect_before_the_expiry_keeps_the_session() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("s", false, 5);
    log.disconnect("s", e, false, None);
    let (e2, present, _) = log.at(4_000).connect5("s", false, 5);
    assert!(present);
    assert_eq!(log.state.next_deadline_ms(), None, "connected: no deadline");
    log.at(60_000).tick();
    assert!(log.state.session("s").is_some());
    log.disconnect("s", e2, false, None);
    assert_eq!(log.state.next_deadline_ms(), Some(T0 + 65_000));
    log.check();
}

#[test]
fn a_session_of_a_dead_node_expires_from_the_node_down_entry() {
    let mut log = Log::new();
    log.connect_with(pb::SessionConnect {
        node_id: 2,
        ..v5("s", false, 10)
    });
    log.at(4_000)
        .run(Kind::NodeDown(pb::NodeDown { node_id: 2 }));
    assert_eq!(log.state.session("s").unwrap().owner, None);
    assert_eq!(log.state.next_deadline_ms(), Some(T0 + 14_000));
    // A snapshot taken here (a node catching up after the failover) expires it alike.
    let mut restored = Log {
        state: State::decode_snapshot(log.state.encode_snapshot()).unwrap(),
        ..Log::new()
    };
    restored.index = log.index;
    for l in [&mut log, &mut restored] {
        let effects = l.at(14_000).tick();
        assert!(removed(&effects, "s"));
    }
    assert_eq!(log.state.digest(), restored.state.digest());
}

#[test]
fn a_session_with_the_maximum_expiry_never_expires() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("s", false, u32::MAX);
    log.disconnect("s", e, false, None);
    assert_eq!(log.state.next_deadline_ms(), None);
    log.at(100 * 365 * 86_400_000).tick();
    assert!(log.state.session("s").is_some());
    log.check();
}

#[test]
fn disconnect_changes_the_expiry() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("a", false, 600);
    log.disconnect("a", e, false, Some(0));
    assert!(
        log.state.session("a").is_none(),
        "0: ends with the connection"
    );
    let (e, _, _) = log.connect5("b", false, 600);
    log.disconnect("b", e, false, Some(5));
    assert_eq!(log.state.next_deadline_ms(), Some(T0 + 5_000));
    // A 3.1.1 session has no expiry of its own: a DISCONNECT cannot give it one.
    let (_, _, _, _) = log.connect_with(pb::SessionConnect {
        client_id: "c".into(),
        node_id: 1,
        connection_id: 3,
        protocol_level: 4,
        ..Default::default()
    });
    let e = log.state.session("c").unwrap().epoch;
    log.disconnect("c", e, false, Some(1));
    assert_eq!(log.state.session("c").unwrap().expiry_secs, None);
    log.at(3_600_000).tick();
    assert!(
        log.state.session("c").is_some(),
        "the node's DropSession path governs it"
    );
    log.check();
}

// ---- Clean Start ----

#[test]
fn clean_start_discards_a_stored_session_of_either_kind() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("s", false, 600);
    log.subscribe("s", e, vec![sub("t", 1)]);
    log.disconnect("s", e, false, None);
    log.publish(msg("t", "queued", 1));
    let (_, present, resume, effects) = log.connect_with(v5("s", true, 600));
    assert!(!present);
    assert!(resume.outbound.is_empty() && resume.subscriptions.is_empty());
    assert!(removed(&effects, "s"));
    assert!(
        log.state.session("s").is_some(),
        "a new session, expiry 600"
    );
    // A tracked clean session of the same id is replaced too.
    log.connect_with(pb::SessionConnect {
        clean_session: true,
        track: true,
        ..v5("c", true, 0)
    });
    let (_, present, _) = log.connect5("c", true, 60);
    assert!(!present);
    assert!(log.state.clean_session("c").is_none());
    log.check();
}

#[test]
fn without_clean_start_a_stored_session_resumes_even_with_expiry_0_and_then_ends() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("s", false, 600);
    log.subscribe("s", e, vec![sub("t", 1)]);
    log.disconnect("s", e, false, None);
    let (e, present, resume) = log.connect5("s", false, 0);
    assert!(present);
    assert_eq!(resume.subscriptions.len(), 1);
    log.disconnect("s", e, false, None);
    assert!(
        log.state.session("s").is_none(),
        "the session ended with the connection"
    );
    // Nothing stored: an ordinary clean session.
    let (epoch, present, _, _) = log.connect_with(v5("n", false, 0));
    assert!(!present);
    assert_eq!(epoch, 0, "untracked: not in the state");
    assert!(log.state.session("n").is_none());
    let (epoch, _, _, _) = log.connect_with(pb::SessionConnect {
        track: true,
        ..v5("m", false, 0)
    });
    assert!(epoch > 0);
    assert!(
        log.state.clean_session("m").is_some(),
        "tracked in a cluster"
    );
}

// ---- Will Delay Interval ----

fn with_will(c: pb::SessionConnect, delay: u32) -> pb::SessionConnect {
    pb::SessionConnect {
        will: Some(msg("will/s", "bye", 1)),
        will_delay_secs: delay,
        ..c
    }
}

/// A watcher subscribed to the wills, and the epoch of `s` connected with `c`.
fn watched(log: &mut Log, c: pb::SessionConnect) -> u64 {
    let (we, _, _, _) = log.connect_with(pb::SessionConnect {
        connection_id: 9,
        ..v5("w", false, 600)
    });
    log.subscribe("w", we, vec![sub("will/#", 1)]);
    log.connect_with(c).0
}

#[test]
fn a_delayed_will_is_published_when_due() {
    let mut log = Log::new();
    let e = watched(&mut log, with_will(v5("s", false, 600), 5));
    let effects = log.at(1_000).run(Kind::Disconnect(pb::SessionDisconnect {
        client_id: "s".into(),
        epoch: e,
        publish_will: true,
        ..Default::default()
    }));
    assert!(payloads(&effects.1).is_empty(), "not at once");
    assert_eq!(log.state.next_deadline_ms(), Some(T0 + 6_000));
    log.check();
    assert!(payloads(&log.at(5_999).tick()).is_empty());
    assert_eq!(payloads(&log.at(6_000).tick()), vec!["bye"]);
    assert_eq!(
        log.state.next_deadline_ms(),
        Some(T0 + 601_000),
        "only the session's expiry is left"
    );
    assert!(payloads(&log.at(9_000).tick()).is_empty(), "once");
    log.check();
}

#[test]
fn a_delayed_will_goes_when_the_session_ends_first() {
    let mut log = Log::new();
    let e = watched(&mut log, with_will(v5("s", false, 2), 10));
    log.disconnect("s", e, true, None);
    let effects = log.at(2_000).tick();
    assert!(removed(&effects, "s"));
    assert_eq!(payloads(&effects), vec!["bye"]);
    assert_eq!(log.state.next_deadline_ms(), None);
    // A session that ends with its connection publishes at once, whatever the delay.
    let e = log.connect5("z", false, 600).0;
    log.disconnect("z", e, false, None);
    let e = log.connect_with(with_will(v5("z", false, 0), 10)).0;
    let effects = log.run(Kind::Disconnect(pb::SessionDisconnect {
        client_id: "z".into(),
        epoch: e,
        publish_will: true,
        ..Default::default()
    }));
    assert_eq!(payloads(&effects.1), vec!["bye"]);
    log.check();
}

#[test]
fn a_reconnect_cancels_a_delayed_will() {
    let mut log = Log::new();
    let e = watched(&mut log, with_will(v5("s", false, 600), 5));
    log.disconnect("s", e, true, None);
    let (_, present, _, effects) = log.at(4_000).connect_with(v5("s", false, 600));
    assert!(present);
    assert!(payloads(&effects).is_empty());
    assert_eq!(log.state.next_deadline_ms(), None);
    assert!(payloads(&log.at(10_000).tick()).is_empty());
    // Also with Clean Start: the client is back, its session discarded, the will cancelled.
    let e = log.connect_with(with_will(v5("s", false, 600), 5)).0;
    log.disconnect("s", e, true, None);
    let (_, _, _, effects) = log.at(11_000).connect_with(v5("s", true, 600));
    assert!(payloads(&effects).is_empty());
    log.check();
}

#[test]
fn node_down_and_takeover_hold_a_delayed_will_and_delay_0_is_as_before() {
    let mut log = Log::new();
    watched(
        &mut log,
        pb::SessionConnect {
            node_id: 2,
            ..with_will(v5("s", false, 600), 3)
        },
    );
    let (_, effects) = log.run(Kind::NodeDown(pb::NodeDown { node_id: 2 }));
    assert!(payloads(&effects).is_empty());
    assert_eq!(payloads(&log.at(3_000).tick()), vec!["bye"]);
    // Takeover on the same node: a delayed will is cut short by the new connection.
    log.connect_with(with_will(v5("t", false, 600), 3));
    let (_, _, _, effects) = log.connect_with(pb::SessionConnect {
        connection_id: 2,
        ..v5("t", false, 600)
    });
    assert!(payloads(&effects).is_empty());
    assert_eq!(log.state.session("t").unwrap().will_due_at(), None);
    // Delay 0: published at once, as a 3.1.1 will.
    log.connect_with(with_will(v5("u", false, 600), 0));
    let (_, _, _, effects) = log.connect_with(pb::SessionConnect {
        connection_id: 2,
        ..v5("u", false, 600)
    });
    assert_eq!(payloads(&effects), vec!["bye"]);
    log.check();
}

#[test]
fn a_will_expires_counted_from_its_publication() {
    let mut log = Log::new();
    let e = watched(
        &mut log,
        pb::SessionConnect {
            will_expiry_secs: 30,
            ..with_will(v5("s", false, 600), 5)
        },
    );
    log.disconnect("s", e, true, None);
    let effects = log.at(5_000).tick();
    let Some(Effect::Deliver { message, .. }) =
        effects.iter().find(|e| matches!(e, Effect::Deliver { .. }))
    else {
        panic!("no will in {effects:?}");
    };
    assert_eq!(message.message.expires_at_ms, T0 + 35_000);
    assert_eq!(&*message.message.publisher, "s");
}

// ---- Subscription options ----

#[test]
fn retain_handling_0_sends_retained_always_1_only_for_a_new_subscription_2_never() {
    let mut log = Log::new();
    log.publish(pb::AppMessage {
        retain: true,
        ..msg("r", "kept", 1)
    });
    let (e, _, _) = log.connect5("s", false, 600);
    for (handling, first, again) in [(0, true, true), (1, true, false), (2, false, false)] {
        let req = pb::SubscriptionRequest {
            retain_handling: handling,
            ..sub("r", 1)
        };
        let (r, effects) = log.run(Kind::Subscribe(pb::Subscribe {
            client_id: "s".into(),
            epoch: e,
            filters: vec![req.clone()],
        }));
        let Some(CommandResult::Subscribed { send_retained, .. }) = r else {
            panic!("{r:?}");
        };
        // The first round of each handling subscribes anew (unsubscribed below).
        assert_eq!(
            payloads(&effects).len() == 1,
            first,
            "handling {handling}, new"
        );
        assert_eq!(send_retained, vec![first]);
        let effects = log.subscribe("s", e, vec![req]);
        assert_eq!(
            payloads(&effects).len() == 1,
            again,
            "handling {handling}, existing"
        );
        log.run(Kind::Unsubscribe(pb::Unsubscribe {
            client_id: "s".into(),
            epoch: e,
            filters: vec!["r".into()],
        }));
    }
    // Retained deliveries on subscribe always have RETAIN set and carry the identifier.
    let effects = log.subscribe(
        "s",
        e,
        vec![pb::SubscriptionRequest {
            subscription_id: 7,
            ..sub("r", 1)
        }],
    );
    assert_eq!(
        delivered(&effects),
        vec![("s".into(), "kept".into(), QoS::AtLeastOnce, true, vec![7])]
    );
}

#[test]
fn no_local_skips_the_sessions_own_messages_only() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("me", false, 600);
    log.subscribe(
        "me",
        e,
        vec![pb::SubscriptionRequest {
            no_local: true,
            ..sub("t", 1)
        }],
    );
    let (o, _, _, _) = log.connect_with(pb::SessionConnect {
        connection_id: 2,
        ..v5("other", false, 600)
    });
    log.subscribe("other", o, vec![sub("t", 1)]);
    let mine = |p: &str| pb::AppMessage {
        publisher: "me".into(),
        ..msg("t", p, 1)
    };
    let seen: Vec<String> = delivered(&log.publish(mine("own")))
        .into_iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(seen, vec!["other"]);
    let theirs = pb::AppMessage {
        publisher: "other".into(),
        ..msg("t", "theirs", 1)
    };
    assert_eq!(delivered(&log.publish(theirs)).len(), 2);
    // Another matching subscription without No Local still delivers it.
    log.subscribe("me", e, vec![sub("#", 1)]);
    let seen: Vec<String> = delivered(&log.publish(mine("again")))
        .into_iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(seen, vec!["me", "other"]);
    log.check();
}

#[test]
fn retain_as_published_keeps_the_retain_flag_of_routed_messages() {
    let mut log = Log::new();
    let (a, _, _) = log.connect5("a", false, 600);
    log.subscribe(
        "a",
        a,
        vec![pb::SubscriptionRequest {
            retain_as_published: true,
            retain_handling: 2,
            ..sub("t", 1)
        }],
    );
    let (b, _, _, _) = log.connect_with(pb::SessionConnect {
        connection_id: 2,
        ..v5("b", false, 600)
    });
    log.subscribe("b", b, vec![sub("t", 1)]);
    let effects = log.publish(pb::AppMessage {
        retain: true,
        ..msg("t", "r", 1)
    });
    let flags: Vec<(String, bool)> = delivered(&effects)
        .into_iter()
        .map(|d| (d.0, d.3))
        .collect();
    assert_eq!(flags, vec![("a".into(), true), ("b".into(), false)]);
    // The fast path gets RETAIN as published; each delivery there decides.
    let effects = log.run(Kind::Publish(pb::Publish {
        message: Some(pb::AppMessage {
            retain: true,
            ..msg("t", "r2", 1)
        }),
        ..Default::default()
    }));
    assert!(effects
        .1
        .iter()
        .any(|e| matches!(e, Effect::FastPath { message } if message.retain)));
}

#[test]
fn overlapping_subscriptions_give_one_copy_at_the_highest_qos_with_every_identifier() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("s", false, 600);
    log.subscribe(
        "s",
        e,
        vec![
            pb::SubscriptionRequest {
                subscription_id: 9,
                ..sub("a/+", 1)
            },
            pb::SubscriptionRequest {
                subscription_id: 3,
                ..sub("a/#", 2)
            },
            sub("+/b", 0),
        ],
    );
    let effects = log.publish(msg("a/b", "x", 2));
    assert_eq!(
        delivered(&effects),
        vec![("s".into(), "x".into(), QoS::ExactlyOnce, false, vec![3, 9])]
    );
    let q = &log.state.session("s").unwrap().queue[0];
    assert_eq!(q.subscription_ids, vec![3, 9]);
    // They survive a snapshot, and a resume hands them to the connection.
    log.check();
    let restored = State::decode_snapshot(log.state.encode_snapshot()).unwrap();
    assert_eq!(
        restored.session("s").unwrap().queue[0].subscription_ids,
        vec![3, 9]
    );
    let (_, _, resume) = log.connect5("s", false, 600);
    assert_eq!(resume.outbound[0].subscription_ids, vec![3, 9]);
    assert_eq!(
        resume.subscriptions[0],
        (Arc::from("+/b"), SubOptions::qos(QoS::AtMostOnce))
    );
}

#[test]
fn route_add_carries_the_options() {
    let mut log = Log::new();
    let (e, _, _) = log.connect5("s", false, 600);
    let req = pb::SubscriptionRequest {
        no_local: true,
        retain_as_published: true,
        subscription_id: 4,
        ..sub("t", 2)
    };
    let effects = log.subscribe("s", e, vec![req]);
    assert!(effects.contains(&Effect::RouteAdd {
        client_id: "s".into(),
        filter: "t".into(),
        options: SubOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            subscription_id: 4,
        },
        durable: true,
    }));
}

// ---- Maximum Packet Size ----

#[test]
fn a_message_larger_than_the_clients_maximum_packet_size_is_not_queued() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect_with(pb::SessionConnect {
        maximum_packet_size: 64,
        ..v5("s", false, 600)
    });
    log.subscribe("s", e, vec![sub("t", 1)]);
    let small = log.publish(msg("t", "fits", 1));
    assert_eq!(payloads(&small), vec!["fits"]);
    let big = log.publish(msg("t", &"x".repeat(100), 1));
    assert!(payloads(&big).is_empty());
    assert!(big.iter().any(|e| matches!(
        e,
        Effect::PacketTooLarge { client_id, size, limit: 64 } if &**client_id == "s" && *size > 100
    )));
    assert_eq!(log.state.stats().oversized_messages, 1);
    assert_eq!(log.state.stats().dropped_messages, 0, "not a full queue");
    assert_eq!(log.state.session("s").unwrap().queue.len(), 1);
    log.check();
}

// ---- Compatibility ----

#[test]
fn a_snapshot_without_the_v5_fields_restores_as_3_1_1() {
    let mut log = Log::new();
    log.connect_with(pb::SessionConnect {
        client_id: "old".into(),
        node_id: 1,
        connection_id: 1,
        ..Default::default()
    });
    let e = log.state.session("old").unwrap().epoch;
    log.subscribe("old", e, vec![sub("t", 1)]);
    log.disconnect("old", e, false, None);
    log.publish(msg("t", "x", 1));
    let mut snap = log.state.to_snapshot();
    // What a snapshot written before these fields holds.
    snap.log_clock_ms = 0;
    for s in &mut snap.sessions {
        s.protocol_level = 0;
        assert_eq!(s.session_expiry_secs, None);
    }
    let restored = State::from_snapshot(snap);
    let s = restored.session("old").unwrap();
    assert_eq!(s.expiry_secs, None);
    assert_eq!(
        s.subscriptions[&Arc::<str>::from("t")],
        SubOptions::qos(QoS::AtLeastOnce)
    );
    assert_eq!(restored.next_deadline_ms(), None);
    assert_eq!(restored.check_derived(), Ok(()));
    assert!(restored.session("old").unwrap().queue[0]
        .subscription_ids
        .is_empty());
}

#[test]
fn v5_fields_of_a_3_1_1_connect_are_ignored() {
    let mut log = Log::new();
    let (e, _, _, _) = log.connect_with(pb::SessionConnect {
        protocol_level: 4,
        session_expiry_secs: Some(1),
        maximum_packet_size: 10,
        ..with_will(v5("s", false, 1), 30)
    });
    let s = log.state.session("s").unwrap();
    assert_eq!((s.expiry_secs, s.maximum_packet_size), (None, 0));
    assert_eq!(s.will.as_ref().unwrap().delay_secs, 0);
    log.disconnect("s", e, false, None);
    assert_eq!(log.state.next_deadline_ms(), None);
    assert!(log.state.session("s").unwrap().owner.is_none());
    assert_eq!(
        log.state.session("s").unwrap().receive_maximum(),
        65535,
        "not given"
    );
}
