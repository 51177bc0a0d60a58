//! Crashes at arbitrary points of Ready handling lose nothing that was acknowledged.
//!
//! A publisher sends sequence-numbered QoS 1 messages to the topic of a persistent session
//! that is offline, so each PUBACK means the message is in a committed entry (queued for the
//! session). Meanwhile, round after round, a random node (every third round the leader; every
//! fifth round all of them at once) is killed with SIGKILL at a random point of the traffic and
//! restarted; the next round starts either once it caught up or at once (it may then die again
//! while replaying its log or installing a snapshot; snapshots are taken every 200 entries).
//! At the end every node holds the same state and the session delivers every acknowledged
//! message.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;

const ROUNDS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_under_load_loses_no_acknowledged_entry() {
    let mut rng = Rng::new("crash_loop_under_load_loses_no_acknowledged_entry");
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_MQTT_COMMIT_TIMEOUT_SECS", "2")
            .env("STARLING_MQTT_SNAPSHOT_ENTRIES", "200")
            .start()
    });
    blocking(|| c.wait_for_leader(ELECTION));
    // The offline session queues everything the load publishes: far more than the default
    // 1,000 messages (a node's own configuration does not set the replicated limits).
    blocking(|| {
        c.set_limits(
            r#"{"max_queued_messages": 1000000, "max_queued_bytes": 1000000000}"#,
            ELECTION,
        )
    });
    park_persistent_subscriber(c.addr(1), "crash-sub", "crash/t/#").await;
    let targets = c.ids().into_iter().map(|id| c.addr(id)).collect();
    let load = Load::start(targets, "crash", 4, false, Duration::from_secs(4));
    load.wait_more(&c, 20, PROMPT).await;

    let started = Instant::now();
    for round in 1..=ROUNDS {
        // A random moment: after a random number of further acknowledgements.
        load.wait_more(&c, rng.range(1, 40) as usize, Duration::from_secs(30))
            .await;
        if round % 5 == 0 {
            // Every node at once: what was acknowledged must be on the disks, since no
            // surviving replica can hand it back.
            for id in c.ids() {
                blocking(|| c.kill9(id));
            }
            for id in c.ids() {
                blocking(|| c.restart(id));
            }
            blocking(|| c.wait_for_leader(ELECTION));
            println!(
                "round {round}: killed every node, restarted; {} acknowledged",
                load.acked()
            );
            continue;
        }
        let victim = if round % 3 == 0 {
            blocking(|| c.wait_for_leader(ELECTION))
        } else {
            rng.range(1, 3)
        };
        blocking(|| c.kill9(victim));
        // The other two go on committing (after electing a leader if need be).
        load.wait_more(&c, rng.range(1, 20) as usize, Duration::from_secs(30))
            .await;
        let t = Instant::now();
        blocking(|| c.restart(victim));
        if rng.range(0, 1) == 0 {
            // Next round only once it caught up...
            let leader = blocking(|| c.wait_for_leader(ELECTION));
            let target = blocking(|| c.status(leader))["commit_index"]
                .as_u64()
                .unwrap();
            blocking(|| {
                c.wait(
                    CONVERGE,
                    &format!("node {victim} to apply up to {target}"),
                    || {
                        c.try_status(victim)
                            .ok()
                            .and_then(|s| s["applied_index"].as_u64())
                            .is_some_and(|a| a >= target)
                    },
                )
            });
            println!(
                "round {round}: killed node {victim}, restarted and caught up in {:?}; {} acknowledged",
                t.elapsed(),
                load.acked()
            );
        } else {
            // ... or at once, so that the next kill may find it replaying its log or
            // installing a snapshot.
            println!(
                "round {round}: killed node {victim}, restarted; {} acknowledged",
                load.acked()
            );
        }
    }
    load.wait_more(&c, 10, PROMPT).await;
    let report = load.stop().await;
    println!(
        "{ROUNDS} rounds in {:?}: {} acknowledged of {} sent; {} failures, first: {:?}",
        started.elapsed(),
        report.acked.len(),
        report.sent,
        report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    let conv = blocking(|| c.wait_converged(CONVERGE));
    assert_eq!(conv.nodes, vec![1, 2, 3]);
    assert!(
        report.acked.len() >= 100,
        "enough traffic to mean something: {}",
        report.acked.len()
    );

    let acked: BTreeSet<u64> = report.acked.iter().copied().collect();
    let node = rng.range(1, 3);
    let got = drain_session(c.addr(node), "crash-sub", &acked, Duration::from_secs(30)).await;
    let received: BTreeSet<u64> = got.iter().copied().collect();
    let unacked_but_committed = received.difference(&acked).count();
    println!(
        "resumed on node {node}: {} messages, {} distinct, {} committed without PUBACK",
        got.len(),
        received.len(),
        unacked_but_committed
    );
    assert!(acked.is_subset(&received));
    assert!(
        received.iter().all(|s| *s <= report.sent),
        "only what was sent"
    );
    let end = blocking(|| c.wait_converged(CONVERGE));
    assert!(end.applied_index > conv.applied_index);
}
