//! Wills when a node dies (`docs/cluster.md`, "Wills when a node dies"): the will of a
//! persistent client whose node is killed is published exactly once, whether the node stays
//! down (the leader's `NodeDown` after `node_down_secs`) or comes back at once (the restarted
//! node's own `NodeDown` after replaying its log); and not at all if the client resumed on
//! another node within the grace period (ignored: Starling publishes it, see the test).

use std::time::{Duration, Instant};

use starling_codec::{ConnectReasonCode, LastWill, ProtocolVersion, QoS};
use starling_testkit::raw::connect_packet;
use starling_testkit::{RawClient, StrictClient, TestCluster};

use crate::support::*;

/// The grace period in these tests (`cluster.node_down_secs`).
const NODE_DOWN: Duration = Duration::from_secs(2);

/// A persistent client `id` with a QoS 1 will on `w/<id>` connected to node `node`.
async fn with_will(c: &TestCluster, node: u64, id: &str) -> RawClient {
    let will = LastWill {
        topic: format!("w/{id}").into(),
        payload: bytes::Bytes::from(format!("{id} is gone")),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    let (client, ack) = RawClient::connect_with(
        c.addr(node),
        connect_packet(id, false, ProtocolVersion::V3_1_1, 60, Some(will)),
    )
    .await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    client
}

/// A persistent watcher of every will, on node `node`.
async fn watcher(c: &TestCluster, node: u64, id: &str) -> StrictClient {
    let w = strict_at(c, id, node).await;
    w.subscribe(&[("w/#", QoS::AtLeastOnce)], PROMPT)
        .await
        .unwrap();
    w
}

/// Waits for the will of `id`, then for every running node of `c` to have applied
/// everything (a second NodeDown, or a second node publishing it, would have been delivered
/// by then); returns how many times it came and after how long.
async fn will_of(
    c: &TestCluster,
    w: &StrictClient,
    id: &str,
    since: Instant,
    within: Duration,
) -> (usize, Duration) {
    let topic = format!("w/{id}");
    let _ = w
        .wait_deliveries(within, &format!("the will of {id}"), |d| {
            d.iter().any(|d| d.topic == topic)
        })
        .await;
    let first = w
        .deliveries()
        .iter()
        .find(|d| d.topic == topic)
        .map(|d| d.at - since);
    blocking(|| c.wait_converged(CONVERGE));
    let n = w.deliveries().iter().filter(|d| d.topic == topic).count();
    (n, first.unwrap_or(within))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_once_when_a_node_dies_and_stays_down() {
    let mut c = blocking(|| {
        cluster(3)
            .env(
                "STARLING_CLUSTER_NODE_DOWN_SECS",
                NODE_DOWN.as_secs().to_string(),
            )
            .start()
    });
    let pl = place(&c);
    let w = watcher(&c, pl.subscriber, "w-watch-1").await;
    let _doomed = with_will(&c, pl.publisher, "w-down").await;
    blocking(|| c.wait_converged(CONVERGE));
    let t = Instant::now();
    blocking(|| c.kill9(pl.publisher));
    let (n, after) = will_of(&c, &w, "w-down", t, NODE_DOWN + Duration::from_secs(10)).await;
    measure("will after kill -9 (node stays down)", format!("{after:?}"));
    assert_eq!(n, 1, "the will exactly once\n{}", diagnose(&c, &[&w]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_once_when_a_node_dies_and_restarts_at_once() {
    // The leader's grace period is long: the restarted node must publish the will itself.
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_CLUSTER_NODE_DOWN_SECS", "60")
            .start()
    });
    let pl = place(&c);
    let w = watcher(&c, pl.subscriber, "w-watch-2").await;
    let _doomed = with_will(&c, pl.publisher, "w-back").await;
    blocking(|| c.wait_converged(CONVERGE));
    blocking(|| {
        c.kill9(pl.publisher);
        c.restart(pl.publisher);
    });
    let t = Instant::now();
    let (n, after) = will_of(&c, &w, "w-back", t, Duration::from_secs(15)).await;
    measure(
        "will after kill -9 and immediate restart",
        format!("{after:?}"),
    );
    let s = blocking(|| c.status(pl.publisher));
    assert_eq!(
        n,
        1,
        "the will exactly once (status of the restarted node: {s})\n{}",
        diagnose(&c, &[&w])
    );
}

/// What `cluster.md` promises: a dead node's clients get their wills published exactly once,
/// "unless the client reconnected in between". The reconnection through another node takes the
/// session over from the dead node's connection, and a takeover through another node publishes
/// no will (a takeover on the same node does, as on a single node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_will_when_the_client_resumes_elsewhere_in_time() {
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_CLUSTER_NODE_DOWN_SECS", "3")
            .start()
    });
    let pl = place(&c);
    let w = watcher(&c, pl.subscriber, "w-watch-3").await;
    let _doomed = with_will(&c, pl.publisher, "w-moves").await;
    blocking(|| c.wait_converged(CONVERGE));
    blocking(|| c.kill9(pl.publisher));
    let t = Instant::now();
    // The client comes back on another node within the grace period (same will).
    let _back = with_will(&c, pl.leader, "w-moves").await;
    assert!(t.elapsed() < Duration::from_secs(3));
    let (n, _) = will_of(
        &c,
        &w,
        "w-moves",
        t,
        Duration::from_secs(3) + Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        n,
        0,
        "no will: the client resumed in time\n{}",
        diagnose(&c, &[&w])
    );
}
