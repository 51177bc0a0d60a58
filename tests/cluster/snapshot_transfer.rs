//! Snapshots travel in chunks: a lagging node installs a snapshot several times larger than the
//! largest message peers exchange (`cluster.max_message_bytes`), and then serves what the others
//! hold. Before snapshots were chunked, such a snapshot could never be sent: the follower stayed
//! behind for good.

use std::time::Instant;

use crate::support::*;

/// The largest peer message: small, so that a modest state makes a snapshot several times it.
const MAX_MESSAGE: usize = 256 * 1024;
/// Snapshot chunk size: a quarter of `MAX_MESSAGE` by default.
const CHUNK: usize = MAX_MESSAGE / 4;
/// Retained messages of `PAYLOAD` bytes: about 1.4 MiB of state, over 4 x `MAX_MESSAGE`.
const RETAINED: usize = 60;
const PAYLOAD: usize = 24 * 1024;

/// The payload of retained message `i`: its number, repeated to `PAYLOAD` bytes.
fn payload(i: usize) -> String {
    format!("{i:03}-").repeat(PAYLOAD / 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_installs_a_snapshot_larger_than_a_message() {
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_MQTT_SNAPSHOT_ENTRIES", "20")
            .env(
                "STARLING_CLUSTER_MAX_MESSAGE_BYTES",
                MAX_MESSAGE.to_string(),
            )
            // One entry must fit in one message: the largest PUBLISH accepted shrinks with it.
            .env(
                "STARLING_MQTT_MAX_PACKET_SIZE",
                (MAX_MESSAGE / 4).to_string(),
            )
            .start()
    });
    let leader = blocking(|| c.wait_for_leader(ELECTION));
    let lagging = a_follower(&c, leader);
    blocking(|| c.wait_converged(CONVERGE));
    let last_seen = blocking(|| c.status(lagging))["last_index"]
        .as_u64()
        .unwrap();
    blocking(|| c.kill9(lagging));

    let (mut publ, _) = connect(c.addr(leader), "big-pub", true).await;
    for i in 0..RETAINED {
        publish_acked(&mut publ, &format!("big/{i:03}"), &payload(i), true).await;
    }
    disconnect(publ).await;
    let s = blocking(|| c.status(leader));
    assert!(
        s["first_index"].as_u64().unwrap() > last_seen + 1,
        "the leader compacted past the lagging node's log ({last_seen}): {s}"
    );

    let t = Instant::now();
    blocking(|| c.restart(lagging));
    let conv = blocking(|| c.wait_converged(CONVERGE));
    let took = t.elapsed();
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
    let sent = c
        .node(leader)
        .log_since_start()
        .into_iter()
        .find(|l| l.contains("sending snapshot in chunks"))
        .expect("the leader sent the snapshot in chunks");
    assert_eq!(field(&sent, "chunk_bytes="), CHUNK as u64, "{sent}");
    measure(
        "snapshot larger than a message installed",
        format!(
            "{bytes} bytes ({:.1} x max_message_bytes) in chunks of {CHUNK}; {took:?} from \
             restart to converged at index {}",
            bytes as f64 / MAX_MESSAGE as f64,
            conv.applied_index
        ),
    );
    assert!(
        bytes >= 4 * MAX_MESSAGE as u64,
        "the snapshot must be at least 4 x max_message_bytes: {install}"
    );

    // It serves what the others hold.
    let retained = retained_on(c.addr(lagging), "big/#", RETAINED).await;
    for (i, p) in retained.iter().enumerate() {
        assert_eq!(p.topic, format!("big/{i:03}"));
        assert!(
            p.payload == payload(i).as_bytes(),
            "payload of big/{i:03} differs"
        );
    }
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
