//! A node that was down while the others took many entries, and compacted their logs behind
//! snapshots, catches up by installing the leader's snapshot.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::support::*;

const RETAINED: usize = 300;
const QUEUED: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot() {
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_MQTT_SNAPSHOT_ENTRIES", "50")
            .start()
    });
    let leader = blocking(|| c.wait_for_leader(ELECTION));
    let lagging = a_follower(&c, leader);
    park_persistent_subscriber(c.addr(leader), "lag-sub", "lag/q").await;
    let before = blocking(|| c.wait_converged(CONVERGE));
    let last_seen = blocking(|| c.status(lagging))["last_index"]
        .as_u64()
        .unwrap();
    blocking(|| c.kill9(lagging));

    // Many entries while it is away: retained messages on distinct topics, and messages queued
    // for the persistent session, one entry each (one at a time).
    let (mut publ, _) = connect(c.addr(leader), "lag-pub", true).await;
    for i in 0..RETAINED {
        publish_acked(&mut publ, &format!("lag/r/{i:03}"), &format!("r{i}"), true).await;
    }
    for seq in 1..=QUEUED {
        publish_acked(&mut publ, "lag/q", &seq.to_string(), false).await;
    }
    disconnect(publ).await;
    let s = blocking(|| c.status(leader));
    let (leader_first, leader_last) = (
        s["first_index"].as_u64().unwrap(),
        s["last_index"].as_u64().unwrap(),
    );
    let entries = leader_last - before.applied_index;
    assert!(
        entries >= RETAINED as u64 + QUEUED,
        "one entry per acknowledged publish: {s}"
    );
    assert!(
        leader_first > last_seen + 1,
        "the leader compacted past the lagging node's log ({last_seen}): its log starts at {leader_first}"
    );

    let t = Instant::now();
    blocking(|| c.restart(lagging));
    let conv = blocking(|| c.wait_converged(CONVERGE));
    let took = t.elapsed();
    blocking(|| c.wait_for_leader(ELECTION));
    let log = c.node(lagging).log_since_start();
    let install = log
        .iter()
        .find(|l| l.contains("installing snapshot from the leader"))
        .unwrap_or_else(|| {
            panic!(
                "node {lagging} did not install a snapshot:\n{}",
                log.join("\n")
            )
        });
    let bytes = field(install, "bytes=");
    let index = field(install, "index=");
    measure(
        "lagging node caught up by snapshot",
        format!("{took:?} from restart to converged; {entries} entries behind; snapshot at index {index}, {bytes} bytes"),
    );
    let s = blocking(|| c.status(lagging));
    assert!(
        s["snapshot_index"].as_u64().unwrap() > last_seen,
        "its log now starts after a snapshot: {s}"
    );
    assert_eq!(s["retained"], RETAINED, "{s}");
    assert_eq!(s["sessions"], 1, "{s}");
    assert!(conv.applied_index >= leader_last);

    // What it serves is what the others hold.
    let retained = retained_on(c.addr(lagging), "lag/r/#", RETAINED).await;
    for (i, p) in retained.iter().enumerate() {
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            (format!("lag/r/{i:03}").as_str(), format!("r{i}").as_bytes())
        );
    }
    let want: BTreeSet<u64> = (1..=QUEUED).collect();
    let got = drain_session(c.addr(lagging), "lag-sub", &want, PROMPT).await;
    assert_eq!(
        got,
        want.iter().copied().collect::<Vec<_>>(),
        "queued messages, once each, in order"
    );
    // It restarts from the snapshot it installed and the log after it.
    let conv = blocking(|| c.wait_converged(CONVERGE));
    blocking(|| c.kill9(lagging));
    blocking(|| c.restart(lagging));
    let again = blocking(|| c.wait_converged(CONVERGE));
    assert!(again.applied_index >= conv.applied_index);
    let log = c.node(lagging).log_since_start();
    assert!(
        !log.iter()
            .any(|l| l.contains("installing snapshot from the leader")),
        "a restart after catching up needs no snapshot from the leader"
    );
    assert_eq!(blocking(|| c.status(lagging))["retained"], RETAINED);
}

/// The value after `key` in a log line (`bytes=1234 ...`).
fn field(line: &str, key: &str) -> u64 {
    let plain = crate::common::plain(line);
    let from = plain
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {plain}"))
        + key.len();
    plain[from..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}
