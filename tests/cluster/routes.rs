//! Routes survive a node's state being replaced or recovered (issue 12). Every node routes
//! with its own index of the cluster's subscriptions, derived from the replicated state; a
//! node that catches up by installing the leader's snapshot, or restarts from a snapshot of
//! its own, must still route to every subscriber the state holds: a QoS 1 PUBLISH it
//! acknowledges must reach them. Variants cover the class, not just the two reported cases:
//! persistent and clean subscribers, QoS 0 to a persistent subscriber (the fast path needs the
//! route's target node), the snapshot arriving before or after the node recovered from its
//! own disk, the subscribers' own node restarting, and a catch-up by log.

use std::time::Instant;

use starling_testkit::TestCluster;

use crate::support::*;

const RETAINED: usize = 300;

/// Waits until every collector in `subs` has `payload`, then until every node applied
/// everything, and requires it exactly once at each; on a miss, names every collector that
/// missed it and says `why` it matters.
async fn delivered_once(c: &TestCluster, subs: &[&Collector], payload: &str, why: &str) {
    let mut missed = Vec::new();
    for sub in subs {
        // The first miss has waited long enough for the others.
        let within = if missed.is_empty() {
            PROMPT
        } else {
            std::time::Duration::ZERO
        };
        if let Err(e) = sub.wait_payload(payload, within).await {
            missed.push(e);
        }
    }
    if !missed.is_empty() {
        panic!(
            "{why}:\n{}\n{}",
            missed.join("\n"),
            blocking(|| c.describe())
        );
    }
    blocking(|| c.wait_converged(CONVERGE));
    for sub in subs {
        assert_eq!(
            sub.count_payload(payload),
            1,
            "{payload:?} once at {}",
            sub.id
        );
    }
}

/// Publishes retained messages through `via`, one entry each, until node `id` took a snapshot
/// at `index` or later: its restart then restores a state that holds what came before `index`
/// from that snapshot, not from its log, whatever it writes when it stops. Needs a small
/// `STARLING_MQTT_SNAPSHOT_ENTRIES`.
async fn cover_by_snapshot(c: &TestCluster, via: u64, id: u64, index: u64) {
    let (mut p, _) = connect_when_ready(c.addr(via), "filler", true).await;
    let mut n = 0;
    while blocking(|| c.status(id))["snapshot_index"]
        .as_u64()
        .unwrap_or(0)
        < index
    {
        assert!(n < 100, "node {id} took no snapshot at {index} or later");
        publish_acked(&mut p, &format!("filler/{n}"), "f", true).await;
        n += 1;
    }
    disconnect(p).await;
}

/// Stops node `id` with SIGTERM, starts it again and waits until every node converged;
/// requires that it restored a snapshot at `covering` or later (the case under test), and
/// reports whether that was the snapshot it wrote when it stopped.
fn graceful_restart(c: &mut TestCluster, id: u64, covering: u64) {
    let at_stop = c.status(id)["applied_index"].as_u64().unwrap_or(0);
    let t = Instant::now();
    let code = c.stop(id);
    let stopped = t.elapsed();
    assert_eq!(code, Some(0), "node {id} exits 0 after SIGTERM");
    let t = Instant::now();
    c.restart(id);
    c.wait_for_leader(ELECTION);
    c.wait_converged(CONVERGE);
    let back = t.elapsed();
    let log = c.node(id).log_since_start();
    let restored = log
        .iter()
        .filter(|l| l.contains("state restored from snapshot"))
        .filter_map(|l| log_field(l, "index="))
        .max();
    let repaired = log.iter().any(|l| l.contains("unclean shutdown"));
    measure(
        &format!("graceful restart of node {id}"),
        format!(
            "stopped in {stopped:?}, back and converged in {back:?}; applied {at_stop} when \
             stopped, restored the snapshot at {restored:?}; storage repaired as after an \
             unclean shutdown: {repaired}"
        ),
    );
    assert!(
        restored.is_some_and(|i| i >= covering),
        "node {id} must restart from a snapshot at {covering} or later (the case under test); \
         restored {restored:?}:\n{}",
        log.join("\n")
    );
}

/// Where in node `id`'s log since its start the first line containing `needle` is.
fn position(c: &TestCluster, id: u64, needle: &str) -> Option<usize> {
    c.node(id)
        .log_since_start()
        .iter()
        .position(|l| l.contains(needle))
}

/// The first scenario: node 3 misses the subscriptions and 300 retained messages,
/// catches up by snapshot, then acknowledges a QoS 1 PUBLISH for the subscribers. A clean
/// subscriber is there too: a restored state holds it, and no order of events routes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_by_snapshot_keeps_routes() {
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_MQTT_SNAPSHOT_ENTRIES", "50")
            .start()
    });
    blocking(|| c.wait_for_leader(ELECTION));
    let last_seen = blocking(|| c.status(3))["last_index"].as_u64().unwrap();
    blocking(|| c.kill9(3));
    blocking(|| c.wait_for_leader(ELECTION));

    let persistent = Collector::start(c.addr(1), "cs-pers", false, "t/#").await;
    let clean = Collector::start(c.addr(1), "cs-clean", true, "t/#").await;
    let (mut p, _) = connect_when_ready(c.addr(2), "cs-pub", true).await;
    for i in 0..RETAINED {
        publish_acked(&mut p, &format!("t/r/{i:03}"), &format!("r{i}"), true).await;
    }
    disconnect(p).await;
    for sub in [&persistent, &clean] {
        sub.wait(PROMPT, "300 retained messages", |got| got.len() >= RETAINED)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // The routes work from a node that never went away.
    publish_once(c.addr(2), "cs-probe-2", "t/1", "via-2").await;
    delivered_once(
        &c,
        &[&persistent, &clean],
        "via-2",
        "control: through node 2",
    )
    .await;
    let first = blocking(|| c.status(2))["first_index"].as_u64().unwrap();
    assert!(
        first > last_seen + 1,
        "the others compacted past node 3's log ({last_seen}): theirs starts at {first}"
    );

    let t = Instant::now();
    blocking(|| c.restart(3));
    let conv = blocking(|| c.wait_converged(CONVERGE));
    let took = t.elapsed();
    let install = snapshot_install_line(&c, 3).unwrap_or_else(|| {
        panic!(
            "node 3 must catch up by snapshot (the case under test):\n{}",
            c.node(3).log_since_start().join("\n")
        )
    });
    let installed_after_recovery =
        position(&c, 3, "installing snapshot from the leader") > position(&c, 3, "state recovered");
    measure(
        "node 3 caught up by snapshot",
        format!(
            "{took:?} from restart to converged at {}; snapshot index {:?}, {:?} bytes; \
             installed after it recovered from its own disk: {installed_after_recovery}",
            conv.applied_index,
            log_field(&install, "index="),
            log_field(&install, "bytes=")
        ),
    );

    publish_once(c.addr(3), "cs-probe-3", "t/1", "via-3").await;
    delivered_once(
        &c,
        &[&persistent, &clean],
        "via-3",
        "a QoS 1 PUBLISH to t/1 acknowledged by node 3 after it caught up by snapshot must \
         reach the subscribers of t/# on node 1",
    )
    .await;
}

/// The first scenario with the order of events fixed: node 3 has recovered from its own disk
/// (it restarts while the others are down) before the leader's snapshot replaces its state.
/// This is the order in which the persistent subscriber's route is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installed_after_recovery_keeps_routes_to_a_persistent_subscriber() {
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_MQTT_SNAPSHOT_ENTRIES", "50")
            .start()
    });
    blocking(|| c.wait_for_leader(ELECTION));
    let last_seen = blocking(|| c.status(3))["last_index"].as_u64().unwrap();
    blocking(|| c.kill9(3));
    blocking(|| c.wait_for_leader(ELECTION));
    park_when_ready(c.addr(1), "sr-sub", "t/#").await;
    let (mut p, _) = connect_when_ready(c.addr(2), "sr-pub", true).await;
    for i in 0..RETAINED {
        publish_acked(&mut p, &format!("t/r/{i:03}"), &format!("r{i}"), true).await;
    }
    disconnect(p).await;
    let first = blocking(|| c.status(2))["first_index"].as_u64().unwrap();
    assert!(
        first > last_seen + 1,
        "the others compacted past node 3's log ({last_seen}): theirs starts at {first}"
    );

    blocking(|| {
        c.kill9(1);
        c.kill9(2);
        c.restart(3);
        c.wait(PROMPT, "node 3 to recover from its own disk", || {
            position(&c, 3, "state recovered").is_some()
        });
        c.restart(1);
        c.restart(2);
        c.wait_for_leader(ELECTION);
        c.wait_converged(CONVERGE);
    });
    assert!(
        snapshot_install_line(&c, 3).is_some(),
        "node 3 must catch up by snapshot (the case under test):\n{}",
        c.node(3).log_since_start().join("\n")
    );

    let sub = Collector::resume(c.addr(1), "sr-sub").await;
    sub.wait(PROMPT, "300 queued messages", |got| got.len() >= RETAINED)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    publish_once(c.addr(3), "sr-probe", "t/1", "via-3").await;
    delivered_once(
        &c,
        &[&sub],
        "via-3",
        "a QoS 1 PUBLISH to t/1 acknowledged by node 3, which installed the leader's snapshot \
         after recovering, must reach the persistent subscriber of t/# on node 1",
    )
    .await;
}

/// The second scenario: a clean subscriber on node 1, node 2 stopped with SIGTERM and
/// started again from a snapshot that holds the subscription, then a QoS 1 PUBLISH through
/// node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_routes_to_a_clean_subscriber() {
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_MQTT_SNAPSHOT_ENTRIES", "5")
            .start()
    });
    blocking(|| c.wait_for_leader(ELECTION));
    let sub = Collector::start(c.addr(1), "gc-sub", true, "x/#").await;
    let subscribed = blocking(|| c.wait_converged(CONVERGE)).applied_index;
    publish_once(c.addr(2), "gc-pub-a", "x/1", "before").await;
    delivered_once(&c, &[&sub], "before", "control: before the restart").await;

    cover_by_snapshot(&c, 1, 2, subscribed).await;
    blocking(|| graceful_restart(&mut c, 2, subscribed));
    publish_once(c.addr(2), "gc-pub-b", "x/1", "after").await;
    delivered_once(
        &c,
        &[&sub],
        "after",
        "a QoS 1 PUBLISH to x/1 acknowledged by node 2 after its graceful restart must reach \
         the clean subscriber of x/# on node 1",
    )
    .await;
    assert!(!sub.is_closed(), "the subscriber stayed connected");
}

/// The same with a persistent subscriber: the QoS 1 PUBLISH goes through the log, and a QoS 0
/// one takes the fast path, which needs the route's target (node 1) on node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_routes_to_a_persistent_subscriber() {
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_MQTT_SNAPSHOT_ENTRIES", "5")
            .start()
    });
    blocking(|| c.wait_for_leader(ELECTION));
    let sub = Collector::start(c.addr(1), "gp-sub", false, "x/#").await;
    let subscribed = blocking(|| c.wait_converged(CONVERGE)).applied_index;
    publish_once(c.addr(2), "gp-pub-a", "x/1", "before-qos1").await;
    delivered_once(
        &c,
        &[&sub],
        "before-qos1",
        "control: QoS 1 before the restart",
    )
    .await;
    publish_qos0_once(c.addr(2), "gp-pub-b", "x/2", "before-qos0").await;
    delivered_once(
        &c,
        &[&sub],
        "before-qos0",
        "control: QoS 0 before the restart",
    )
    .await;

    cover_by_snapshot(&c, 1, 2, subscribed).await;
    blocking(|| graceful_restart(&mut c, 2, subscribed));
    publish_once(c.addr(2), "gp-pub-c", "x/1", "after-qos1").await;
    delivered_once(
        &c,
        &[&sub],
        "after-qos1",
        "a QoS 1 PUBLISH to x/1 acknowledged by node 2 after its graceful restart must reach \
         the persistent subscriber of x/# on node 1",
    )
    .await;
    publish_qos0_once(c.addr(2), "gp-pub-d", "x/2", "after-qos0").await;
    delivered_once(
        &c,
        &[&sub],
        "after-qos0",
        "a QoS 0 PUBLISH to x/2 through node 2 after its graceful restart must reach the \
         persistent subscriber of x/# connected to node 1, as it did before the restart",
    )
    .await;
}

/// The subscribers' own node restarts: its persistent subscriber resumes there and a clean one
/// subscribes there anew; the other nodes must route to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_a_gracefully_restarted_node_are_routed_to() {
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_MQTT_SNAPSHOT_ENTRIES", "5")
            .start()
    });
    blocking(|| c.wait_for_leader(ELECTION));
    let own = Collector::start(c.addr(2), "go-sub", false, "x/#").await;
    let subscribed = blocking(|| c.wait_converged(CONVERGE)).applied_index;

    cover_by_snapshot(&c, 1, 2, subscribed).await;
    blocking(|| graceful_restart(&mut c, 2, subscribed));
    assert!(own.is_closed(), "a stopping node closes its clients");
    drop(own);
    let own = Collector::resume(c.addr(2), "go-sub").await;
    let fresh = Collector::start(c.addr(2), "go-clean", true, "x/#").await;
    blocking(|| c.wait_converged(CONVERGE));

    let why = "a PUBLISH acknowledged by another node must reach the subscribers of the \
               restarted node 2";
    publish_once(c.addr(1), "go-pub-1", "x/1", "via-1").await;
    delivered_once(&c, &[&own, &fresh], "via-1", why).await;
    publish_once(c.addr(3), "go-pub-3", "x/1", "via-3").await;
    delivered_once(&c, &[&own, &fresh], "via-3", why).await;
    publish_qos0_once(c.addr(1), "go-pub-0", "x/2", "via-1-qos0").await;
    delivered_once(&c, &[&own, &fresh], "via-1-qos0", why).await;
}

/// Subscriptions made while node 3 was down reach it through the log (no snapshot involved):
/// it must route to them once it caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_made_while_a_node_was_down_are_routed_after_catch_up_by_log() {
    let mut c = blocking(|| cluster(3).start());
    blocking(|| c.wait_for_leader(ELECTION));
    blocking(|| c.kill9(3));
    blocking(|| c.wait_for_leader(ELECTION));
    let clean = Collector::start(c.addr(1), "cl-clean", true, "x/#").await;
    let persistent = Collector::start(c.addr(1), "cl-pers", false, "y/#").await;

    blocking(|| c.restart(3));
    blocking(|| c.wait_converged(CONVERGE));
    assert_eq!(
        snapshot_install_line(&c, 3),
        None,
        "node 3 must catch up by log here"
    );

    let why = "a PUBLISH through node 3, which caught up by log, must reach a subscriber that \
               subscribed on node 1 while node 3 was down";
    publish_once(c.addr(3), "cl-pub-x", "x/1", "x-via-3").await;
    delivered_once(&c, &[&clean], "x-via-3", why).await;
    publish_once(c.addr(3), "cl-pub-y", "y/1", "y-via-3").await;
    delivered_once(&c, &[&persistent], "y-via-3", why).await;
    publish_qos0_once(c.addr(3), "cl-pub-y0", "y/2", "y0-via-3").await;
    delivered_once(&c, &[&persistent], "y0-via-3", why).await;
}
