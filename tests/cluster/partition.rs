//! The minority side: with three of five nodes stopped, the two left cannot commit. Operations
//! that need a commit fail visibly within the commit timeout (CONNACK 3, or no PUBACK and a
//! closed connection) and never succeed silently; once the three are back, nothing that was
//! acknowledged before is missing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use starling_codec::{ConnectReasonCode, Packet, PubAck};

use crate::support::*;

const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Process scheduling, the store's 500 ms expiry sweep, connection teardown.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_side_refuses_after_timeout_and_majority_loses_nothing() {
    let mut c = blocking(|| {
        cluster(5)
            .env(
                "STARLING_MQTT_COMMIT_TIMEOUT_SECS",
                COMMIT_TIMEOUT.as_secs().to_string(),
            )
            .start()
    });
    let leader = blocking(|| c.wait_for_leader(ELECTION));

    // Acknowledged data: a persistent session with queued messages, and retained messages.
    park_persistent_subscriber(c.addr(leader), "min-sub", "min/q").await;
    let (mut publ, _) = connect(c.addr(leader), "min-pub", true).await;
    let queued: Vec<(String, String)> = (1..=40)
        .map(|i| ("min/q".to_string(), i.to_string()))
        .collect();
    publish_all(&mut publ, &queued, false).await;
    let retained: Vec<(String, String)> = (0..5)
        .map(|i| (format!("min/r/{i}"), format!("r{i}")))
        .collect();
    publish_all(&mut publ, &retained, true).await;
    disconnect(publ).await;

    // Three nodes will stop, the leader among them, so that the two left are a minority. A
    // publisher is connected to one of those two beforehand (a CONNECT needs a commit too).
    let mut stopped = vec![leader];
    stopped.extend(c.ids().into_iter().filter(|id| *id != leader).take(2));
    let left: Vec<u64> = c
        .ids()
        .into_iter()
        .filter(|id| !stopped.contains(id))
        .collect();
    let (mut p, _) = connect(c.addr(left[0]), "min-pub2", true).await;
    let before = blocking(|| c.wait_converged(CONVERGE));
    for id in &stopped {
        blocking(|| c.kill9(*id));
    }
    let minority = left[0];
    let addr = c.addr(minority);

    // A persistent CONNECT needs a commit: CONNACK 3 (server unavailable), within the timeout.
    let t = Instant::now();
    let (mut refused, ack) = connect_raw(addr, "min-new", false).await;
    let waited = t.elapsed();
    measure(
        "minority: persistent CONNECT refused after",
        format!("{waited:?}"),
    );
    assert_eq!(
        ack.code,
        ConnectReasonCode::ServerUnavailable,
        "persistent CONNECT on the minority side"
    );
    assert!(!ack.session_present);
    assert!(waited <= COMMIT_TIMEOUT + SLACK, "refused after {waited:?}");
    assert!(
        refused.closed_within(PROMPT).await,
        "the refused connection is closed"
    );

    // A QoS 1 message for the persistent session is never acknowledged: the publisher's
    // connection is closed within the timeout.
    let t = Instant::now();
    p.send(&publish_packet("min/q", "41", false, 7)).await;
    let mut acked = false;
    let closed = loop {
        match p.recv_within(COMMIT_TIMEOUT + SLACK).await {
            Ok(Packet::PubAck(PubAck { packet_id: 7, .. })) => acked = true,
            Ok(_) => {}
            Err(starling_testkit::RecvError::Timeout) => break false,
            Err(_) => break true,
        }
    };
    let waited = t.elapsed();
    measure(
        "minority: durable publish failed (connection closed) after",
        format!("{waited:?}"),
    );
    assert!(
        !acked,
        "a durable publish must not be acknowledged without a quorum"
    );
    assert!(
        closed,
        "the publisher's connection is closed within the timeout (after {waited:?})"
    );

    // The node says why, in one line naming the client.
    let warned = |l: &String| {
        let l = crate::common::plain(l);
        l.contains("WARN") && l.contains("min-pub2") && l.contains("commit")
    };
    blocking(|| {
        c.wait(PROMPT, "a warning about min-pub2's failed commit", || {
            c.node(minority).log_since_start().iter().any(warned)
        })
    });
    let line = c
        .node(minority)
        .log_since_start()
        .into_iter()
        .find(warned)
        .unwrap_or_default();
    println!("minority log line: {line}");
    // Nothing was applied meanwhile.
    for id in &left {
        let s = blocking(|| c.status(*id));
        assert_eq!(
            s["applied_index"].as_u64(),
            Some(before.applied_index),
            "node {id}: {s}"
        );
        assert_eq!(
            s["state_digest"].as_str(),
            Some(before.state_digest.as_str()),
            "node {id}: {s}"
        );
    }

    // The majority returns.
    for id in &stopped {
        blocking(|| c.restart(*id));
    }
    blocking(|| c.wait_for_leader(ELECTION));
    let conv = blocking(|| c.wait_converged(CONVERGE));
    assert_eq!(conv.nodes, vec![1, 2, 3, 4, 5]);
    for id in c.ids() {
        let s = blocking(|| c.status(id));
        assert_eq!(s["retained"], 5, "node {id}: {s}");
    }
    // Every acknowledged message is still queued, served by a node that was on the minority
    // side; the refused message 41 may have been committed late or not at all.
    let want: BTreeSet<u64> = (1..=40).collect();
    let got = drain_session(c.addr(left[1]), "min-sub", &want, PROMPT).await;
    let first: Vec<u64> = got.iter().copied().filter(|s| *s <= 40).collect();
    assert_eq!(
        first,
        want.iter().copied().collect::<Vec<_>>(),
        "once each, in order"
    );
    assert!(got.iter().all(|s| *s <= 41), "{got:?}");
    let r = retained_on(c.addr(left[1]), "min/r/#", 5).await;
    for (i, p) in r.iter().enumerate() {
        assert_eq!(&p.payload[..], format!("r{i}").as_bytes());
    }
    // With the majority back, the same persistent CONNECT succeeds.
    let (ok, _) = connect(c.addr(minority), "min-new", false).await;
    disconnect(ok).await;
}

/// Connects without requiring acceptance.
async fn connect_raw(
    addr: std::net::SocketAddr,
    id: &str,
    clean: bool,
) -> (starling_testkit::RawClient, starling_codec::ConnAck) {
    starling_testkit::RawClient::connect(addr, id, clean).await
}
