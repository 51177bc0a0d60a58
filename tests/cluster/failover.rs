//! `kill -9` of one node of three under traffic, then restart: the cluster keeps committing
//! (through a new leader if the leader died), the restarted node catches up from its own disk
//! and the log, and every node ends with the same state: the same digest, every acknowledged
//! message queued for the persistent subscriber, the retained messages.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;

const TOPICS: u64 = 8;

async fn kill_and_restart(kill_leader: bool, tag: &str) {
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_MQTT_COMMIT_TIMEOUT_SECS", "2")
            .start()
    });
    let leader = blocking(|| c.wait_for_leader(ELECTION));
    blocking(|| c.set_limits(r#"{"max_queued_messages": 100000}"#, ELECTION));
    let term_before = blocking(|| c.status(leader))["term"].as_u64().unwrap();
    let victim = if kill_leader {
        leader
    } else {
        a_follower(&c, leader)
    };
    let survivors: Vec<u64> = c.ids().into_iter().filter(|id| *id != victim).collect();
    let sub_id = format!("{tag}-sub");
    park_persistent_subscriber(c.addr(survivors[0]), &sub_id, &format!("{tag}/t/#")).await;

    // The publisher starts on a survivor that is not the leader when the leader is the victim
    // (its proposals then go to a dead leader), and on the leader otherwise.
    let first = if kill_leader { survivors[0] } else { leader };
    let mut order = vec![first];
    order.extend(c.ids().into_iter().filter(|id| *id != first));
    let targets = order.iter().map(|id| c.addr(*id)).collect();
    let load = Load::start(targets, tag, TOPICS, true, Duration::from_secs(4));
    load.wait_more(&c, 30, PROMPT).await;

    blocking(|| c.kill9(victim));
    let killed_at = Instant::now();
    if kill_leader {
        let mut new_leader = None;
        blocking(|| {
            c.wait(ELECTION, "a new leader among the survivors", || {
                new_leader = c.leader().filter(|l| *l != victim);
                new_leader.is_some()
            })
        });
        measure(
            "re-election after kill -9 of the leader (3 nodes, 50 ms ticks, 10 election ticks)",
            format!("{:?}", killed_at.elapsed()),
        );
        let new_leader = new_leader.unwrap();
        let term = blocking(|| c.status(new_leader))["term"].as_u64().unwrap();
        assert!(
            term > term_before,
            "the new leader {new_leader} leads a later term ({term} > {term_before})"
        );
    }
    // Traffic while the node is down: the two others commit.
    load.wait_more(&c, 30, Duration::from_secs(30)).await;
    let down_for = killed_at.elapsed();
    if !kill_leader {
        assert_eq!(
            blocking(|| c.leader()),
            Some(leader),
            "losing a follower does not disturb the leader"
        );
    }

    let t = Instant::now();
    blocking(|| c.restart(victim));
    let started = t.elapsed();
    let leader_now = blocking(|| c.wait_for_leader(ELECTION));
    let target = blocking(|| c.status(leader_now))["commit_index"]
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
    measure(
        &format!("{tag}: restarted node caught up (down {down_for:?}; process up in {started:?})"),
        format!(
            "{:?} from restart to applied >= leader's commit {target}",
            t.elapsed()
        ),
    );
    // Traffic after the restart too.
    load.wait_more(&c, 10, PROMPT).await;
    let report = load.stop().await;
    let conv_t = Instant::now();
    let conv = blocking(|| c.wait_converged(CONVERGE));
    measure(
        &format!("{tag}: convergence after the load stopped"),
        format!("{:?}", conv_t.elapsed()),
    );
    assert_eq!(conv.nodes, vec![1, 2, 3]);
    println!(
        "{tag}: {} acknowledged of {} sent; failures: {:?}",
        report.acked.len(),
        report.sent,
        report.failures
    );
    assert!(report.acked.len() >= 70);
    for id in c.ids() {
        let s = blocking(|| c.status(id));
        assert_eq!(s["sessions"], 1, "node {id}: {s}");
        assert_eq!(s["retained"], TOPICS, "node {id}: {s}");
    }

    // The restarted node serves the session: every acknowledged message, in commit order.
    let acked: BTreeSet<u64> = report.acked.iter().copied().collect();
    let got = drain_session(c.addr(victim), &sub_id, &acked, PROMPT).await;
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "queue order is commit order, no duplicates: {got:?}"
    );
    // And the retained messages: for each topic, the last acknowledged one or a later committed one.
    let retained = retained_on(c.addr(victim), &format!("{tag}/t/#"), TOPICS as usize).await;
    let received: BTreeSet<u64> = got.iter().copied().collect();
    for p in &retained {
        let seq = seq_of(p);
        let last_acked = report
            .acked
            .iter()
            .filter(|s| load_topic(tag, TOPICS, **s) == p.topic[..])
            .max();
        assert!(
            last_acked.is_none_or(|l| seq >= *l),
            "{}: retained {seq}, acknowledged {last_acked:?}",
            p.topic
        );
        assert!(
            received.contains(&seq),
            "retained {seq} was committed, so queued too"
        );
    }
    let end = blocking(|| c.wait_converged(CONVERGE));
    assert!(
        end.applied_index > conv.applied_index,
        "the session's acknowledgements were committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_follower_then_restart_state_identical() {
    kill_and_restart(false, "kf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_leader_then_restart_state_identical() {
    kill_and_restart(true, "kl").await;
}
