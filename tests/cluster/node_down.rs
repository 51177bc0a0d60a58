//! A restarted node's own `NodeDown` is retried until it applies (issue 12, item 2). A node
//! that restarts proposes that the sessions it served before go offline, which publishes their
//! wills; if no leader appears within its startup hold, that proposal is refused, and nothing
//! proposes it again: the sessions keep a dead owner and their wills never come.
//!
//! Here every node is killed, node 3 comes back alone for longer than the hold (five election
//! timeouts: 2.5 s with the testkit's 50 ms ticks), then node 1 comes back. The wills of the
//! clients node 3 served must then be published, exactly once.

use std::time::{Duration, Instant};

use starling_codec::{LastWill, ProtocolVersion, Publish, QoS};
use starling_testkit::raw::connect_packet;
use starling_testkit::RawClient;

use crate::support::*;

/// The startup hold: five election timeouts of 10 ticks of 50 ms.
const HOLD: Duration = Duration::from_millis(2500);

/// What the store logs when the hold refuses what it held.
const REFUSED: &str = "no leader since the start";

/// A client `id` with a QoS 1 will on `will/<id>`, connected through `addr`.
async fn with_will(addr: std::net::SocketAddr, id: &str, clean: bool) -> RawClient {
    let will = LastWill {
        topic: format!("will/{id}").into(),
        payload: bytes::Bytes::from(format!("{id} is gone")),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    connect_packet_when_ready(
        addr,
        connect_packet(id, clean, ProtocolVersion::V3_1_1, 60, Some(will)),
    )
    .await
    .0
}

fn wills_of(got: &[Publish], id: &str) -> usize {
    let topic = format!("will/{id}");
    got.iter().filter(|p| p.topic == topic[..]).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_of_a_restarted_node_is_retried_until_it_applies() {
    // The leader's own report of a silent node comes after a minute: only node 3's NodeDown
    // for itself can publish these wills within the test.
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_CLUSTER_NODE_DOWN_SECS", "60")
            .start()
    });
    blocking(|| c.wait_for_leader(ELECTION));
    park_when_ready(c.addr(1), "nd-watch", "will/#").await;
    let _persistent = with_will(c.addr(3), "nd-persistent", false).await;
    let _clean = with_will(c.addr(3), "nd-clean", true).await;
    blocking(|| c.wait_converged(CONVERGE));
    assert_eq!(
        blocking(|| c.metric(1, "starling_sessions_online")),
        Some(1.0),
        "nd-persistent is online (the watcher is parked)"
    );

    blocking(|| {
        for id in [3, 1, 2] {
            c.kill9(id);
        }
    });
    let t = Instant::now();
    blocking(|| c.restart(3));
    // Alone for longer than the hold: its NodeDown cannot commit. The store says so when the
    // hold refuses it; a node that holds it on instead logs nothing, hence the time bound.
    let mut refused = None;
    blocking(|| {
        poll_until(3 * HOLD, || {
            refused = c
                .node(3)
                .log_since_start()
                .into_iter()
                .find(|l| l.contains(REFUSED));
            refused.is_some()
        })
    });
    measure(
        "node 3 alone after restart",
        format!(
            "{:?}; its log says {:?}",
            t.elapsed(),
            refused.as_deref().map(crate::common::plain)
        ),
    );
    assert!(
        c.try_status(3).is_ok_and(|s| s["leader"].is_null()),
        "node 3 alone has no leader"
    );

    let t = Instant::now();
    blocking(|| {
        c.restart(1);
        c.wait_for_leader(ELECTION);
    });
    let watch = Collector::resume(c.addr(1), "nd-watch").await;
    let both =
        |got: &[Publish]| wills_of(got, "nd-persistent") >= 1 && wills_of(got, "nd-clean") >= 1;
    if let Err(e) = watch
        .wait(2 * PROMPT, "will of both clients node 3 served", both)
        .await
    {
        panic!(
            "the sessions node 3 served before the crash must go offline and their wills be \
             published once nodes 3 and 1 have a leader: {e}\nnode 3 logged: {:?}\n\
             starling_sessions_online on node 1: {:?}\n{}",
            refused.as_deref().map(crate::common::plain),
            blocking(|| c.metric(1, "starling_sessions_online")),
            blocking(|| c.describe()),
        );
    }
    measure(
        "wills published after the second node came back",
        format!("{:?}", t.elapsed()),
    );
    // Every node has applied everything: a second NodeDown would have been delivered by now.
    blocking(|| c.wait_converged(CONVERGE));
    let got = watch.received();
    assert_eq!(wills_of(&got, "nd-persistent"), 1, "the will exactly once");
    assert_eq!(wills_of(&got, "nd-clean"), 1, "the will exactly once");
    for id in [1, 3] {
        assert_eq!(
            blocking(|| c.metric(id, "starling_sessions_online")),
            Some(1.0),
            "node {id}: only the watcher is online"
        );
    }
}
