//! The soak: sequence-numbered QoS 2 messages from a persistent publisher to a persistent
//! subscriber on another node while nodes are `kill -9`'d and restarted at random every few
//! seconds (one at a time, so a majority is always up). At the end: 0 lost, 0 duplicated,
//! every node with the same state; printed: the kills, throughput, and the time from a kill to
//! the resumption of each client that was connected to the node killed (its next CONNACK),
//! and to the publisher's next completed message (the stall every kill causes).
//!
//! Size: `STARLING_SOAK_MESSAGES` (default 20,000) handed to the publisher at a steady pace
//! over `STARLING_SOAK_SECS` (default 90) while the chaos runs; then the publisher has 120 s to
//! complete what is left. A node restarted by the chaos has 0.3 to 2 s down, so most kills
//! are shorter than the leader's `node_down_secs` (2 s here) and some are not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starling_codec::QoS;
use starling_testkit::strict::{Event, Record};
use starling_testkit::StrictClient;

use crate::check::{check, ledger_from_history};
use crate::support::*;

const TOPICS: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_qos2_with_random_kills() {
    let messages = env_u64("STARLING_SOAK_MESSAGES", 20_000);
    let secs = Duration::from_secs(env_u64("STARLING_SOAK_SECS", 90).max(1));
    let mut rng = Rng::new("soak");
    let mut c = blocking(|| {
        cluster(3)
            // Nodes down for longer than this have their sessions taken offline by the leader
            // (NodeDown), racing with the clients' reconnections: part of the soak.
            .env("STARLING_CLUSTER_NODE_DOWN_SECS", "2")
            .start()
    });
    blocking(|| c.wait_for_leader(ELECTION));
    blocking(|| c.set_limits(r#"{"max_queued_messages": 100000}"#, ELECTION));
    let pl = place(&c);
    let sub = strict_at(&c, "soak-sub", pl.subscriber).await;
    sub.subscribe(&[("soak/#", QoS::ExactlyOnce)], PROMPT)
        .await
        .unwrap();
    let mut cfg = config(&c, "soak-pub");
    cfg.window = 32;
    let publ = strict_with(cfg, &c, pl.publisher).await;

    // Messages are handed to the publisher at a steady pace over `secs`, while the chaos
    // kills a random node every 1.5 to 3.5 s and restarts it 0.3 to 2 s later (one node down at
    // most); the chaos stops when every message has been handed over.
    let started = Instant::now();
    let mut handed = 0u64;
    // (when, node, its address, it was the leader)
    let mut kills: Vec<(Instant, u64, SocketAddr, bool)> = Vec::new();
    let mut next_kill = started + Duration::from_millis(rng.range(1500, 3500));
    let mut down: Option<(u64, Instant)> = None;
    while handed < messages || down.is_some() {
        let elapsed = started.elapsed().as_secs_f64();
        let due = ((messages as f64 * elapsed / secs.as_secs_f64()) as u64).min(messages);
        while handed < due {
            handed += 1;
            let topic = format!("soak/t/{}", handed % TOPICS);
            // Completion is read from the history; the handles are not needed.
            drop(publ.publish_nowait(&topic, payload("soak-pub", handed), QoS::ExactlyOnce, false));
        }
        let now = Instant::now();
        match down {
            Some((victim, until)) if now >= until => {
                blocking(|| c.restart(victim));
                down = None;
                next_kill = Instant::now() + Duration::from_millis(rng.range(1500, 3500));
            }
            None if now >= next_kill && handed < messages => {
                // Half the time the node of one of the clients (so that every kind of
                // resumption is exercised often), else any node.
                let on = |cl: &StrictClient| {
                    cl.connected_to()
                        .and_then(|a| c.ids().into_iter().find(|id| c.addr(*id) == a))
                };
                let victim = match rng.range(0, 3) {
                    0 => on(&publ),
                    1 => on(&sub),
                    _ => None,
                }
                .unwrap_or_else(|| rng.range(1, 3));
                let addr = c.addr(victim);
                let (p_on, s_on) = (on(&publ), on(&sub));
                let was_leader = blocking(|| c.leader()) == Some(victim);
                // The moment of the kill is when the signal goes out: the clients may have
                // noticed and reconnected by the time the process is reaped.
                kills.push((Instant::now(), victim, addr, was_leader));
                blocking(|| c.kill9(victim));
                println!(
                    "soak: +{:.1}s kill -9 node {victim} (leader: {was_leader}; publisher on \
                     {p_on:?}, subscriber on {s_on:?}; {handed} handed over, {} pending)",
                    started.elapsed().as_secs_f64(),
                    publ.outbound_pending()
                );
                down = Some((victim, now + Duration::from_millis(rng.range(300, 2000))));
            }
            _ => {}
        }
        if let Some(f) = publ.fatal().or_else(|| sub.fatal()) {
            panic!(
                "soak: a client gave up: {f}\n{}",
                diagnose(&c, &[&publ, &sub])
            );
        }
        // The pace of the chaos and of the publisher: a timer, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let chaos_secs = started.elapsed();
    for id in c.ids() {
        if !c.node(id).is_up() {
            blocking(|| c.restart(id));
        }
    }
    publ.wait_idle(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&c, &[&publ, &sub])));
    let all_sent = started.elapsed();
    let want = messages as usize;
    sub.wait_deliveries(FLOW, &format!("{want} messages"), |d| d.len() >= want)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnose(&c, &[&publ, &sub])));
    let deadline = Instant::now() + FLOW;
    while !sub.inbound_awaiting().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the subscriber still awaits PUBREL for {:?}\n{}",
            sub.inbound_awaiting(),
            diagnose(&c, &[&publ, &sub])
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every node has applied everything: a late duplicate would have been delivered by now.
    blocking(|| c.wait_converged(CONVERGE));

    let ph = publ.history();
    let sh = sub.history();
    let ledger = ledger_from_history(&ph);
    assert_eq!(ledger.len(), want, "every message written");
    let v = check(&ledger, &sub.deliveries(), QoS::ExactlyOnce);
    let resent = ledger.iter().filter(|p| p.writes > 1).count();
    measure(
        "soak: messages (QoS 2, persistent publisher and subscriber on different nodes)",
        format!(
            "{} sent, {} delivered, {} lost, {} duplicated, {} resent by the publisher",
            want,
            v.deliveries,
            v.lost.len(),
            v.duplicated.len(),
            resent
        ),
    );
    measure(
        "soak: kills",
        format!(
            "{} kill -9 in {:.1}s of chaos (victims {:?}); all completed after {:.1}s \
             (handed over at {:.0} msg/s)",
            kills.len(),
            chaos_secs.as_secs_f64(),
            kills.iter().map(|k| k.1).collect::<Vec<_>>(),
            all_sent.as_secs_f64(),
            want as f64 / secs.as_secs_f64()
        ),
    );
    for (what, which) in [
        ("any node", None),
        ("the leader", Some(true)),
        ("a follower", Some(false)),
    ] {
        let points: Vec<(Instant, SocketAddr)> = kills
            .iter()
            .filter(|k| which.is_none_or(|l| k.3 == l))
            .map(|k| (k.0, k.2))
            .collect();
        let mut resumptions = resumption_times(&ph, &points);
        resumptions.extend(resumption_times(&sh, &points));
        measure(
            &format!(
                "soak: kill -9 of {what} -> reconnected (clients that were on it; next CONNACK 0)"
            ),
            percentiles(&mut resumptions),
        );
        let mut stalls = completion_gaps(&ph, &points);
        measure(
            &format!("soak: kill -9 of {what} -> publisher's next completed message"),
            percentiles(&mut stalls),
        );
    }
    println!(
        "soak: {} deliveries out of order, of which {} not explained by a resend: {:?}",
        v.out_of_order.len(),
        v.unexplained_reorders().len(),
        &v.out_of_order[..v.out_of_order.len().min(10)]
    );
    v.assert_no_loss_no_dup("soak");
    assert!(
        v.unexplained_reorders().is_empty(),
        "soak: reordered without a resend: {:?}",
        v.unexplained_reorders()
    );
    assert_eq!(sessions_lost(&ph), 0, "publisher session lost");
    assert_eq!(sessions_lost(&sh), 0, "subscriber session lost");
    assert!(
        want < 2000 || !kills.is_empty(),
        "a soak of {want} messages saw no kill"
    );
}

/// For each kill of a node the client was connected to: the time to its next CONNACK 0.
fn resumption_times(h: &[Record], kills: &[(Instant, SocketAddr)]) -> Vec<Duration> {
    let mut out = Vec::new();
    for (at, addr) in kills {
        let on = h
            .iter()
            .take_while(|r| r.at <= *at)
            .fold(None, |on, r| match &r.event {
                Event::Connected { node, .. } => Some(*node),
                Event::Lost { .. } => None,
                _ => on,
            });
        if on != Some(*addr) {
            continue;
        }
        if let Some(r) = h
            .iter()
            .find(|r| r.at > *at && matches!(r.event, Event::Connected { .. }))
        {
            out.push(r.at - *at);
        }
    }
    out
}

/// For each kill: the time to the publisher's next completed message.
fn completion_gaps(h: &[Record], kills: &[(Instant, SocketAddr)]) -> Vec<Duration> {
    kills
        .iter()
        .filter_map(|(at, _)| {
            h.iter()
                .find(|r| r.at > *at && matches!(r.event, Event::Completed { .. }))
                .map(|r| r.at - *at)
        })
        .collect()
}
