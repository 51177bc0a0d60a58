//! The chaos checker: the failover suite's per-subscriber checker
//! (`tests/failover/check.rs`: exactly once at QoS 2, at least once at QoS 1, per-publisher
//! order per topic among first deliveries) over every subscriber, plus the cluster-wide checks
//! of this suite: retained messages equal on every node and equal to the last one published
//! per topic, every acknowledged subscription still delivering, no session lost. It also turns
//! the clients' histories into failover times and JSON lines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use starling_codec::{Packet, QoS};
use starling_testkit::strict::{Delivery, Event, Record};

use crate::check::{check, Published};

/// The topics of the checked workload start with this (`chaos/<k>`).
pub(crate) const WORKLOAD_PREFIX: &str = "chaos/";

/// A subscriber as the checker sees it.
pub(crate) struct SubscriberView {
    /// Client id.
    pub(crate) client: String,
    /// QoS of its `chaos/#` subscription.
    pub(crate) qos: QoS,
    /// Everything delivered to it, in order.
    pub(crate) deliveries: Vec<Delivery>,
    /// Its history (for lost sessions).
    pub(crate) history: Vec<Record>,
}

/// What the checker found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Messages written by the publishers.
    pub(crate) published: usize,
    /// Of which completed (PUBACK / PUBCOMP).
    pub(crate) completed: usize,
    /// Deliveries that had to happen (completed messages × subscribers).
    pub(crate) expected: usize,
    /// Deliveries seen, duplicates included.
    pub(crate) deliveries: usize,
    /// Allowed QoS 1 redeliveries.
    pub(crate) qos1_redeliveries: usize,
    /// Out-of-order first deliveries of a message its publisher wrote more than once (allowed).
    pub(crate) explained_reorders: usize,
    /// Completed messages a subscriber never got: "subscriber: publisher/seq (QoS n)".
    pub(crate) lost: Vec<String>,
    /// Messages delivered more than once where that is not allowed.
    pub(crate) duplicated: Vec<String>,
    /// First deliveries after a later message of the same publisher and topic, unexplained.
    pub(crate) reordered: Vec<String>,
    /// Deliveries of something nobody published.
    pub(crate) unknown: Vec<String>,
    /// Retained messages that differ between nodes or from the last one published.
    pub(crate) retained: Vec<String>,
    /// Acknowledged subscriptions that no longer deliver.
    pub(crate) subscriptions_lost: Vec<String>,
    /// Sessions a client found gone when it resumed.
    pub(crate) sessions_lost: Vec<String>,
    /// Replicas that did not converge to one applied index and state digest.
    pub(crate) replicas: Vec<String>,
}

impl Report {
    /// Everything wrong, one line each (empty: the run is clean).
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, v) in [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("reordered", &self.reordered),
            ("unknown", &self.unknown),
            ("retained", &self.retained),
            ("subscription lost", &self.subscriptions_lost),
            ("session lost", &self.sessions_lost),
            ("replicas", &self.replicas),
        ] {
            if !v.is_empty() {
                out.push(format!(
                    "{what}: {} (first: {:?})",
                    v.len(),
                    &v[..v.len().min(10)]
                ));
            }
        }
        out
    }
}

/// Checks the workload: `ledger` (every publisher's messages, from their histories) against
/// each subscriber's `chaos/` deliveries.
pub(crate) fn check_messages(ledger: &[Published], subs: &[SubscriberView]) -> Report {
    let mut r = Report {
        published: ledger.len(),
        completed: ledger.iter().filter(|p| p.completed).count(),
        ..Report::default()
    };
    for s in subs {
        let deliveries: Vec<Delivery> = s
            .deliveries
            .iter()
            .filter(|d| d.topic.starts_with(WORKLOAD_PREFIX))
            .cloned()
            .collect();
        let v = check(ledger, &deliveries, s.qos);
        r.expected += v.expected;
        r.deliveries += v.deliveries;
        r.qos1_redeliveries += v.qos1_redeliveries;
        r.lost.extend(
            v.lost
                .iter()
                .map(|(p, seq, q)| format!("{}: {p}/{seq} (QoS {})", s.client, *q as u8)),
        );
        r.duplicated.extend(
            v.duplicated
                .iter()
                .map(|(p, seq, n)| format!("{}: {p}/{seq} delivered {n} times", s.client)),
        );
        r.unknown
            .extend(v.unknown.iter().map(|u| format!("{}: {u}", s.client)));
        for (topic, seq, later, resent) in &v.out_of_order {
            if *resent {
                r.explained_reorders += 1;
            } else {
                r.reordered
                    .push(format!("{}: {topic} seq {seq} after seq {later}", s.client));
            }
        }
        r.sessions_lost.extend(sessions_lost(&s.client, &s.history));
    }
    r
}

/// "client: node" for every resumption that found no session.
pub(crate) fn sessions_lost(client: &str, history: &[Record]) -> Vec<String> {
    history
        .iter()
        .filter_map(|r| match &r.event {
            Event::SessionLost(node) => Some(format!("{client}: session gone on {node}")),
            _ => None,
        })
        .collect()
}

/// Retained messages: `expected` (topic → payload of the last message published there) against
/// what a new subscription on each node received (`per_node`: node name, topic → payload).
pub(crate) fn check_retained(
    expected: &BTreeMap<String, String>,
    per_node: &[(String, BTreeMap<String, String>)],
) -> Vec<String> {
    let mut out = Vec::new();
    for (node, got) in per_node {
        for (topic, want) in expected {
            match got.get(topic) {
                Some(have) if have == want => {}
                Some(have) => out.push(format!("{node}: {topic} = {have}, expected {want}")),
                None => out.push(format!("{node}: {topic} missing, expected {want}")),
            }
        }
        for (topic, have) in got {
            if !expected.contains_key(topic) {
                out.push(format!("{node}: unexpected retained {topic} = {have}"));
            }
        }
    }
    out
}

/// Subscriptions: every `(client, topic)` acknowledged (SUBACK) must have delivered the probe
/// published on `topic` at the end.
pub(crate) fn check_subscriptions(
    acked: &[(String, String)],
    deliveries: &BTreeMap<String, Vec<Delivery>>,
) -> Vec<String> {
    acked
        .iter()
        .filter(|(client, topic)| {
            !deliveries
                .get(client)
                .is_some_and(|d| d.iter().any(|d| d.topic == *topic))
        })
        .map(|(client, topic)| format!("{client}: {topic} acknowledged, probe not delivered"))
        .collect()
}

/// Client failover times: from each lost connection to the next CONNACK 0.
pub(crate) fn failover_times(history: &[Record]) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut lost_at: Option<Instant> = None;
    for r in history {
        match &r.event {
            Event::Lost { why, .. } if why != "DISCONNECT" => {
                lost_at.get_or_insert(r.at);
            }
            Event::Connected { .. } => {
                if let Some(t) = lost_at.take() {
                    out.push(r.at - t);
                }
            }
            _ => {}
        }
    }
    out
}

/// p50, p99 and max of `v` (sorted here), as text.
pub(crate) fn percentiles(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "n=0".into();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "n={} p50={:.3}s p99={:.3}s max={:.3}s",
        v.len(),
        at(0.5).as_secs_f64(),
        at(0.99).as_secs_f64(),
        v[v.len() - 1].as_secs_f64()
    )
}

/// One history record as a JSON line's object (`t`: seconds since `start`).
pub(crate) fn record_json(start: Instant, client: &str, r: &Record) -> Value {
    let mut v = event_json(&r.event);
    v["t"] = json!(secs(start, r.at));
    v["client"] = json!(client);
    v
}

pub(crate) fn secs(start: Instant, at: Instant) -> f64 {
    (at.saturating_duration_since(start).as_secs_f64() * 1e6).round() / 1e6
}

fn node(n: &SocketAddr) -> String {
    n.to_string()
}

fn event_json(e: &Event) -> Value {
    match e {
        Event::Connecting(n) => json!({"ev": "connecting", "node": node(n)}),
        Event::Connected {
            node: n,
            session_present,
        } => json!({"ev": "connected", "node": node(n), "session_present": session_present}),
        Event::Refused { node: n, why } => json!({"ev": "refused", "node": node(n), "why": why}),
        Event::Lost { node: n, why } => json!({"ev": "lost", "node": node(n), "why": why}),
        Event::SessionLost(n) => json!({"ev": "session_lost", "node": node(n)}),
        Event::Sent(p) => packet_json("sent", p),
        Event::Received(p) => packet_json("received", p),
        Event::Completed {
            packet_id,
            topic,
            payload,
        } => json!({"ev": "completed", "pid": packet_id, "topic": topic,
                    "payload": String::from_utf8_lossy(payload)}),
        Event::Delivered {
            packet_id,
            topic,
            payload,
        } => json!({"ev": "delivered", "pid": packet_id, "topic": topic,
                    "payload": String::from_utf8_lossy(payload)}),
        Event::DuplicateSuppressed(pid) => json!({"ev": "duplicate_suppressed", "pid": pid}),
        Event::UnknownPubRel(pid) => json!({"ev": "unknown_pubrel", "pid": pid}),
        Event::UnexpectedAck(p) => {
            let mut v = packet_json("unexpected_ack", p);
            v["ev"] = json!("unexpected_ack");
            v
        }
        Event::Paused(h) => json!({"ev": "paused", "stage": format!("{:?}", h.stage),
                                   "pid": h.packet_id, "topic": h.topic, "node": node(&h.node)}),
    }
}

fn packet_json(ev: &str, p: &Packet) -> Value {
    match p {
        Packet::Publish(p) => json!({"ev": ev, "packet": "PUBLISH", "pid": p.packet_id,
            "qos": p.qos as u8, "dup": p.dup, "retain": p.retain, "topic": p.topic.to_string(),
            "payload": String::from_utf8_lossy(&p.payload)}),
        Packet::PubAck(pid) => json!({"ev": ev, "packet": "PUBACK", "pid": pid}),
        Packet::PubRec(pid) => json!({"ev": ev, "packet": "PUBREC", "pid": pid}),
        Packet::PubRel(pid) => json!({"ev": ev, "packet": "PUBREL", "pid": pid}),
        Packet::PubComp(pid) => json!({"ev": ev, "packet": "PUBCOMP", "pid": pid}),
        Packet::Subscribe(s) => json!({"ev": ev, "packet": "SUBSCRIBE", "pid": s.packet_id,
            "filters": s.filters.iter().map(|f| format!("{} (QoS {})", f.filter, f.qos as u8))
                .collect::<Vec<_>>()}),
        Packet::SubAck(a) => json!({"ev": ev, "packet": "SUBACK", "pid": a.packet_id,
            "codes": format!("{:?}", a.return_codes)}),
        other => json!({"ev": ev, "packet": format!("{other:?}")}),
    }
}

#[cfg(test)]
mod tests {
    //! The checker on hand-made histories: a clean one passes, and loss, duplicates, reorders,
    //! diverging retained messages, lost subscriptions and lost sessions are each reported.

    use super::*;
    use crate::check::ledger_from_history;
    use bytes::Bytes;
    use starling_codec::Publish;

    fn addr() -> SocketAddr {
        "127.0.0.1:18830".parse().unwrap()
    }

    /// A publisher's history: every seq written once, `completed` ones acknowledged.
    fn publisher(seqs: &[(u64, QoS, bool)]) -> Vec<Record> {
        let mut h = Vec::new();
        for (seq, qos, completed) in seqs {
            let payload = Bytes::from(format!("pub/{seq}"));
            let topic = format!("chaos/{}", seq % 2);
            h.push(Record {
                at: Instant::now(),
                event: Event::Sent(Packet::Publish(Publish {
                    dup: false,
                    qos: *qos,
                    retain: false,
                    topic: topic.as_str().into(),
                    packet_id: *seq as u16,
                    payload: payload.clone(),
                })),
            });
            if *completed {
                h.push(Record {
                    at: Instant::now(),
                    event: Event::Completed {
                        packet_id: *seq as u16,
                        topic,
                        payload,
                    },
                });
            }
        }
        h
    }

    fn deliveries(seqs: &[u64], qos: QoS) -> Vec<Delivery> {
        seqs.iter()
            .map(|seq| Delivery {
                at: Instant::now(),
                node: addr(),
                topic: format!("chaos/{}", seq % 2),
                payload: Bytes::from(format!("pub/{seq}")),
                qos,
                dup: false,
                retain: false,
                packet_id: *seq as u16,
            })
            .collect()
    }

    fn sub(deliveries: Vec<Delivery>, qos: QoS, history: Vec<Record>) -> SubscriberView {
        SubscriberView {
            client: "sub".into(),
            qos,
            deliveries,
            history,
        }
    }

    const Q2: QoS = QoS::ExactlyOnce;
    const Q1: QoS = QoS::AtLeastOnce;

    #[test]
    fn a_clean_history_passes() {
        let ledger = ledger_from_history(&publisher(&[
            (1, Q2, true),
            (2, Q1, true),
            (3, Q2, true),
            (4, Q1, true),
            (5, Q2, false),
        ]));
        // QoS 1 message 2 twice (allowed); 5 was never acknowledged (may be missing).
        let subs = [sub(deliveries(&[1, 2, 2, 3, 4], Q2), Q2, Vec::new())];
        let r = check_messages(&ledger, &subs);
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        assert_eq!((r.published, r.completed, r.expected), (5, 4, 4));
        assert_eq!(r.qos1_redeliveries, 1);
    }

    #[test]
    fn loss_duplicate_and_reorder_fail_the_run() {
        let ledger = ledger_from_history(&publisher(&[
            (1, Q2, true),
            (2, Q1, true),
            (3, Q2, true),
            (4, Q1, true),
            (5, Q2, true),
            (7, Q2, true),
        ]));
        // 1 twice at QoS 2 (duplicate), 5 before 3 on topic chaos/1 (reorder), 4 missing (loss).
        let subs = [sub(deliveries(&[1, 1, 2, 5, 3, 7], Q2), Q2, Vec::new())];
        let r = check_messages(&ledger, &subs);
        assert_eq!(r.lost, vec!["sub: pub/4 (QoS 1)".to_string()]);
        assert_eq!(
            r.duplicated,
            vec!["sub: pub/1 delivered 2 times".to_string()]
        );
        assert_eq!(
            r.reordered,
            vec!["sub: chaos/1 seq 3 after seq 5".to_string()]
        );
        assert_eq!(r.problems().len(), 3, "{:?}", r.problems());
    }

    #[test]
    fn a_qos1_subscriber_may_see_repeats_but_not_gaps() {
        let ledger = ledger_from_history(&publisher(&[(1, Q2, true), (2, Q2, true)]));
        let ok = check_messages(&ledger, &[sub(deliveries(&[1, 1, 2], Q1), Q1, Vec::new())]);
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let bad = check_messages(&ledger, &[sub(deliveries(&[2], Q1), Q1, Vec::new())]);
        assert_eq!(bad.lost.len(), 1);
    }

    #[test]
    fn a_lost_session_fails_the_run() {
        let ledger = ledger_from_history(&publisher(&[(1, Q2, true)]));
        let history = vec![Record {
            at: Instant::now(),
            event: Event::SessionLost(addr()),
        }];
        let r = check_messages(&ledger, &[sub(deliveries(&[1], Q2), Q2, history)]);
        assert_eq!(r.sessions_lost.len(), 1);
        assert_eq!(r.problems().len(), 1);
    }

    #[test]
    fn diverging_retained_messages_are_reported() {
        let expected: BTreeMap<String, String> = [("r/0".to_string(), "ret/8".to_string())].into();
        let same = vec![("node 1".to_string(), expected.clone())];
        assert!(check_retained(&expected, &same).is_empty());
        let stale = vec![
            ("node 1".to_string(), expected.clone()),
            (
                "node 2".to_string(),
                [
                    ("r/0".to_string(), "ret/6".to_string()),
                    ("r/9".to_string(), "ret/1".to_string()),
                ]
                .into(),
            ),
            ("node 3".to_string(), BTreeMap::new()),
        ];
        let found = check_retained(&expected, &stale);
        assert_eq!(found.len(), 3, "{found:?}");
    }

    #[test]
    fn a_subscription_that_stopped_delivering_is_reported() {
        let acked = vec![
            ("sub".to_string(), "chaossub/sub/0".to_string()),
            ("sub".to_string(), "chaossub/sub/1".to_string()),
        ];
        let mut d = deliveries(&[1], Q1);
        d[0].topic = "chaossub/sub/0".into();
        let got: BTreeMap<String, Vec<Delivery>> = [("sub".to_string(), d)].into();
        assert_eq!(
            check_subscriptions(&acked, &got),
            vec!["sub: chaossub/sub/1 acknowledged, probe not delivered".to_string()]
        );
    }

    #[test]
    fn failover_time_is_lost_to_next_connack() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let rec = |ms, event| Record { at: at(ms), event };
        let h = vec![
            rec(
                0,
                Event::Connected {
                    node: addr(),
                    session_present: false,
                },
            ),
            rec(
                100,
                Event::Lost {
                    node: addr(),
                    why: "read".into(),
                },
            ),
            rec(
                200,
                Event::Refused {
                    node: addr(),
                    why: "CONNACK 3".into(),
                },
            ),
            rec(
                1100,
                Event::Connected {
                    node: addr(),
                    session_present: true,
                },
            ),
        ];
        assert_eq!(failover_times(&h), vec![Duration::from_millis(1000)]);
    }
}
