//! Cross-node delivery on a healthy cluster: publisher and subscribers on different nodes, QoS
//! 0/1/2 (downgraded to the subscription's QoS), overlapping wildcards (one delivery per
//! subscriber, at the highest matching QoS), per-topic order, retained messages, and takeover
//! of a session (persistent and clean) by a connection on another node.

use std::collections::BTreeMap;
use std::time::Duration;

use starling_codec::{ConnectReasonCode, QoS, SubAckReasonCode};
use starling_testkit::{RawClient, StrictClient};

use crate::check::{check, ledger_from_history, parse_payload};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_qos_levels_wildcards_and_order() {
    let c = blocking(|| cluster(3).start());
    let [a, b, n3] = [1, 2, 3];
    blocking(|| c.wait_for_leader(ELECTION));

    // Persistent subscriber on node 2, two overlapping filters.
    let s1 = strict_at(&c, "x-s1", b).await;
    let codes = s1
        .subscribe(
            &[("x/+/a", QoS::ExactlyOnce), ("x/#", QoS::AtLeastOnce)],
            PROMPT,
        )
        .await
        .unwrap();
    assert_eq!(
        codes,
        vec![SubAckReasonCode::GrantedQoS2, SubAckReasonCode::GrantedQoS1]
    );
    // Clean subscriber on node 3 (fast path), and a persistent one at QoS 0.
    let mut cfg = config(&c, "x-s2");
    cfg.clean_session = true;
    let s2 = strict_with(cfg, &c, n3).await;
    s2.subscribe(&[("x/+/a", QoS::ExactlyOnce)], PROMPT)
        .await
        .unwrap();
    let s3 = strict_at(&c, "x-s3", n3).await;
    s3.subscribe(&[("x/1/a", QoS::AtMostOnce)], PROMPT)
        .await
        .unwrap();
    blocking(|| c.wait_converged(CONVERGE));

    // Publisher on node 1: 3 topics x 3 QoS levels x 20, interleaved.
    let publ = strict_at(&c, "x-pub", a).await;
    let topics = ["x/1/a", "x/2/b", "x/3/a"];
    let mut pending = Vec::new();
    let mut seq = 0;
    for _ in 0..20 {
        for t in topics {
            for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                seq += 1;
                pending.push(publ.publish_nowait(t, payload("x-pub", seq), q, false));
            }
        }
    }
    for p in pending {
        p.wait(FLOW).await.expect("every publish completes");
    }
    let ledger = ledger_from_history(&publ.history());
    assert_eq!(ledger.len(), 180);

    // What each subscriber must get: the matching messages, once each (healthy cluster, QoS 0
    // included), at min(publish QoS, best matching subscription QoS).
    let expect = |sub_qos_of: &dyn Fn(&str) -> Option<QoS>| -> BTreeMap<u64, QoS> {
        ledger
            .iter()
            .filter_map(|p| sub_qos_of(&p.topic).map(|q| (p.seq, p.qos.min(q))))
            .collect()
    };
    // The QoS each subscriber gets a topic at (its best matching filter), if it matches.
    fn s1_qos(t: &str) -> Option<QoS> {
        Some(if t.ends_with("/a") {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        })
    }
    fn s2_qos(t: &str) -> Option<QoS> {
        t.ends_with("/a").then_some(QoS::ExactlyOnce)
    }
    fn s3_qos(t: &str) -> Option<QoS> {
        (t == "x/1/a").then_some(QoS::AtMostOnce)
    }
    let s1_want = expect(&s1_qos);
    let s2_want = expect(&s2_qos);
    let s3_want = expect(&s3_qos);
    type SubQos = fn(&str) -> Option<QoS>;
    let subs: [(&StrictClient, &BTreeMap<u64, QoS>, SubQos); 3] = [
        (&s1, &s1_want, s1_qos),
        (&s2, &s2_want, s2_qos),
        (&s3, &s3_want, s3_qos),
    ];
    for (sub, want, sub_qos) in subs {
        sub.wait_deliveries(FLOW, &format!("{} messages", want.len()), |d| {
            d.len() >= want.len()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&c, &[sub, &publ])));
        // Every node has applied everything: a duplicate would have been delivered by now.
        blocking(|| c.wait_converged(CONVERGE));
        let d = sub.deliveries();
        let got: BTreeMap<u64, QoS> = d
            .iter()
            .map(|d| (parse_payload(&d.payload).unwrap().1, d.qos))
            .collect();
        assert_eq!(
            d.len(),
            want.len(),
            "{}: one delivery each",
            sub.client_id()
        );
        assert_eq!(&got, want, "{}: messages and QoS", sub.client_id());
        assert!(
            d.iter().all(|d| !d.retain),
            "live deliveries carry RETAIN=0"
        );
        assert!(
            d.iter().all(|d| d.node != c.addr(a)),
            "delivered by another node than the publisher's"
        );
        // Per topic and QoS, in publishing order (each topic with the QoS it is subscribed at).
        for t in topics {
            let Some(q) = sub_qos(t) else { continue };
            let sent: Vec<_> = ledger.iter().filter(|p| p.topic == t).cloned().collect();
            let got: Vec<_> = d.iter().filter(|d| d.topic == t).cloned().collect();
            check(&sent, &got, q).assert_clean(&format!("{} on {t}", sub.client_id()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_across_nodes() {
    let c = blocking(|| cluster(3).start());
    blocking(|| c.wait_for_leader(ELECTION));
    let publ = strict_at(&c, "r-pub", 1).await;
    for (t, body, q) in [
        ("r/1", "one", QoS::AtLeastOnce),
        ("r/2", "two", QoS::ExactlyOnce),
        ("r/3", "three", QoS::AtMostOnce),
    ] {
        publ.publish_nowait(t, body, q, true)
            .wait(FLOW)
            .await
            .unwrap();
    }
    blocking(|| {
        c.wait(CONVERGE, "3 retained messages on every node", || {
            c.ids()
                .into_iter()
                .all(|id| c.try_status(id).is_ok_and(|s| s["retained"] == 3))
        })
    });

    // A clean subscriber on node 2 and a persistent one on node 3 get them with RETAIN=1.
    let mut cfg = config(&c, "r-clean");
    cfg.clean_session = true;
    let clean = strict_with(cfg, &c, 2).await;
    clean
        .subscribe(&[("r/#", QoS::ExactlyOnce)], PROMPT)
        .await
        .unwrap();
    let pers = strict_at(&c, "r-pers", 3).await;
    pers.subscribe(&[("r/+", QoS::AtLeastOnce)], PROMPT)
        .await
        .unwrap();
    let want_clean = [
        ("r/1", "one", QoS::AtLeastOnce),
        ("r/2", "two", QoS::ExactlyOnce),
        ("r/3", "three", QoS::AtMostOnce),
    ];
    let want_pers = [
        ("r/1", "one", QoS::AtLeastOnce),
        ("r/2", "two", QoS::AtLeastOnce),
        ("r/3", "three", QoS::AtMostOnce),
    ];
    for (sub, want) in [(&clean, want_clean), (&pers, want_pers)] {
        sub.wait_deliveries(PROMPT, "3 retained messages", |d| d.len() >= 3)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&c, &[sub])));
        let mut got: Vec<(String, String, QoS, bool)> = sub
            .deliveries()
            .iter()
            .map(|d| {
                (
                    d.topic.clone(),
                    String::from_utf8_lossy(&d.payload).into_owned(),
                    d.qos,
                    d.retain,
                )
            })
            .collect();
        got.sort();
        let want: Vec<(String, String, QoS, bool)> = want
            .iter()
            .map(|(t, p, q)| (t.to_string(), p.to_string(), *q, true))
            .collect();
        assert_eq!(got, want, "{}", sub.client_id());
    }

    // A live retained publish reaches them with RETAIN=0; an empty one deletes.
    publ.publish_nowait("r/1", "uno", QoS::AtLeastOnce, true)
        .wait(FLOW)
        .await
        .unwrap();
    publ.publish_nowait("r/2", "", QoS::AtLeastOnce, true)
        .wait(FLOW)
        .await
        .unwrap();
    for sub in [&clean, &pers] {
        sub.wait_deliveries(PROMPT, "the live retained publishes", |d| d.len() >= 5)
            .await
            .unwrap();
        let d = sub.deliveries();
        assert_eq!(&d[3].payload[..], b"uno");
        assert!(!d[3].retain && !d[4].retain, "live forwards carry RETAIN=0");
    }
    blocking(|| {
        c.wait(CONVERGE, "2 retained messages on every node", || {
            c.ids()
                .into_iter()
                .all(|id| c.try_status(id).is_ok_and(|s| s["retained"] == 2))
        })
    });
    let mut cfg = config(&c, "r-late");
    cfg.clean_session = true;
    let late = strict_with(cfg, &c, 3).await;
    late.subscribe(&[("r/#", QoS::AtLeastOnce)], PROMPT)
        .await
        .unwrap();
    late.wait_deliveries(PROMPT, "2 retained messages", |d| d.len() >= 2)
        .await
        .unwrap();
    blocking(|| c.wait_converged(CONVERGE));
    let mut got: Vec<(String, String)> = late
        .deliveries()
        .iter()
        .map(|d| (d.topic.clone(), String::from_utf8_lossy(&d.payload).into()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("r/1".to_string(), "uno".to_string()),
            ("r/3".to_string(), "three".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_across_nodes() {
    let c = blocking(|| cluster(3).start());
    blocking(|| c.wait_for_leader(ELECTION));

    // A persistent session on node 1 receives five QoS 2 messages and acknowledges none.
    let (mut old, ack) = RawClient::connect(c.addr(1), "tk", false).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    assert_eq!(
        old.subscribe(1, &[("tk/#", QoS::ExactlyOnce)]).await,
        vec![SubAckReasonCode::GrantedQoS2]
    );
    let publ = strict_at(&c, "tk-pub", 2).await;
    for seq in 1..=5 {
        publ.publish("tk/t", payload("tk-pub", seq), QoS::ExactlyOnce, FLOW)
            .await
            .unwrap();
    }
    let mut first_ids = BTreeMap::new();
    while first_ids.len() < 5 {
        let p = old
            .next_publish()
            .await
            .expect("the old connection gets them");
        first_ids.insert(parse_payload(&p.payload).unwrap().1, p.packet_id);
    }

    // The same client id connects on node 3: the old connection is closed, the session is
    // present, and the five messages are resent there (DUP=1, same packet ids).
    let new = strict_at(&c, "tk", 3).await;
    assert!(
        old.closed_within(PROMPT).await,
        "the old connection on node 1 is closed"
    );
    assert!(new.history().iter().any(|r| matches!(
        r.event,
        starling_testkit::strict::Event::Connected {
            session_present: true,
            ..
        }
    )));
    new.wait_deliveries(FLOW, "the five messages", |d| d.len() >= 5)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&c, &[&new, &publ])));
    for d in new.deliveries() {
        let seq = parse_payload(&d.payload).unwrap().1;
        assert!(d.dup, "resent after the takeover: DUP=1");
        assert_eq!(Some(&d.packet_id), first_ids.get(&seq), "same packet id");
    }
    // New messages flow to the new connection, exactly once.
    for seq in 6..=10 {
        publ.publish("tk/t", payload("tk-pub", seq), QoS::ExactlyOnce, FLOW)
            .await
            .unwrap();
    }
    new.wait_deliveries(FLOW, "ten messages", |d| d.len() >= 10)
        .await
        .unwrap();
    let v = check(
        &ledger_from_history(&publ.history()),
        &new.deliveries(),
        QoS::ExactlyOnce,
    );
    v.assert_clean("takeover");
    let deadline = std::time::Instant::now() + FLOW;
    while !new.inbound_awaiting().is_empty() {
        assert!(std::time::Instant::now() < deadline, "PUBRELs arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A clean session taken over across nodes: the old connection is closed too.
    let (mut clean_old, _) = RawClient::connect(c.addr(2), "tk-clean", true).await;
    let (_clean_new, ack) = RawClient::connect(c.addr(3), "tk-clean", true).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    assert!(!ack.session_present);
    assert!(
        clean_old.closed_within(PROMPT).await,
        "the old clean connection on node 2 is closed"
    );
}
