//! Limits that the replicated apply uses come from the log, not from each node's local
//! configuration (issue 12, item 3). `mqtt.max_queued_messages`, `max_inflight` and
//! `max_queued_bytes` decide what a session's queue keeps; read locally, two nodes with
//! different values hold different states (different queues and packet ids after a
//! failover). In clustered mode a node's differing local values are ignored, with a warning at
//! start that names them, and the limits change through one replicated operation:
//! `PUT /cluster/limits` (any subset of the three keys, answered with the limits in force once
//! applied there), `GET /cluster/limits`, and `starling cluster limits --admin HOST:PORT
//! [--max-queued-messages N] [--max-inflight N] [--max-queued-bytes N]` (no flag: prints them).

use std::collections::BTreeSet;

use serde_json::Value;
use starling_testkit::TestCluster;

use crate::support::*;

const QUEUED: &str = "STARLING_MQTT_MAX_QUEUED_MESSAGES";
const INFLIGHT: &str = "STARLING_MQTT_MAX_INFLIGHT";

/// Node 3 keeps at most 5 + 1 messages per offline session by its local configuration, the
/// others 1000 + 20 (the defaults).
const NODE3_LOCAL: &[(u64, &str, &str)] = &[(3, QUEUED, "5"), (3, INFLIGHT, "1")];

/// `n` sequence-numbered messages for `topic`.
fn numbered(topic: &str, n: u64) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| (topic.to_string(), i.to_string()))
        .collect()
}

/// Waits until every node applied the leader's commit index and requires one state digest
/// there; `context` says what could make them differ.
fn same_state_everywhere(c: &TestCluster, context: &str) {
    let nodes = blocking(|| applied_everywhere(c));
    let digests: BTreeSet<&str> = nodes.iter().map(|(_, _, d)| d.as_str()).collect();
    assert_eq!(
        digests.len(),
        1,
        "every node must hold the same state at the same applied index ({context}); \
         (node, applied index, digest): {nodes:?}"
    );
}

/// A limit in a limits document (`{"max_queued_messages": 10, ...}`, or the same under
/// `"limits"`).
fn limit(v: &Value, key: &str) -> Option<u64> {
    v[key].as_u64().or_else(|| v["limits"][key].as_u64())
}

/// `GET /cluster/limits` of node `id`.
fn limits(c: &TestCluster, id: u64) -> Result<Value, String> {
    let (code, body) = c.admin(id, "GET", "/cluster/limits", None)?;
    if code != 200 {
        return Err(format!(
            "GET /cluster/limits on node {id}: HTTP {code}: {body}"
        ));
    }
    serde_json::from_str(&body).map_err(|e| format!("node {id}: {e}: {body}"))
}

/// Waits until node `id` has `max_queued_messages` and `max_inflight` in force.
fn wait_limits(c: &TestCluster, id: u64, queued: u64, inflight: u64) {
    let mut last = Err(String::new());
    let ok = poll_until(PROMPT, || {
        last = limits(c, id);
        last.as_ref().is_ok_and(|v| {
            limit(v, "max_queued_messages") == Some(queued)
                && limit(v, "max_inflight") == Some(inflight)
        })
    });
    assert!(
        ok,
        "node {id} must have max_queued_messages {queued} and max_inflight {inflight} in force \
         within {PROMPT:?}; GET /cluster/limits: {last:?}"
    );
}

/// The number that follows `key` in `text` (`"max_inflight": 4`, `max_inflight = 4`, ...).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let from = text.find(key)? + key.len();
    let rest = &text[from..];
    let start = rest.find(|ch: char| ch.is_ascii_digit())?;
    // Only separators between the key and its value.
    if rest[..start].chars().any(|ch| ch.is_alphanumeric()) {
        return None;
    }
    rest[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_local_limits_do_not_make_replicas_diverge() {
    let c = blocking(|| cluster(3).start_with_node_env(NODE3_LOCAL));
    blocking(|| c.wait_for_leader(ELECTION));
    park_when_ready(c.addr(1), "ld-sub", "ld/q").await;
    let (mut p, _) = connect_when_ready(c.addr(2), "ld-pub", true).await;
    publish_all(&mut p, &numbered("ld/q", 50), false).await;
    disconnect(p).await;
    same_state_everywhere(
        &c,
        "50 messages queued for an offline session; node 3 has max_queued_messages = 5 and \
         max_inflight = 1 in its local configuration, the others the defaults",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_local_limits_are_named_in_a_warning_at_start() {
    let c = blocking(|| cluster(3).start_with_node_env(NODE3_LOCAL));
    blocking(|| c.wait_for_leader(ELECTION));
    blocking(|| c.wait_converged(CONVERGE));
    let warned = |key: &str| {
        c.node(3).log_since_start().iter().any(|l| {
            let l = crate::common::plain(l);
            l.contains("WARN") && l.contains(key)
        })
    };
    // The warning may come once the node knows the replicated limits.
    let named = blocking(|| {
        poll_until(PROMPT, || {
            warned("max_queued_messages") && warned("max_inflight")
        })
    });
    assert!(
        named,
        "node 3 runs clustered with local mqtt.max_queued_messages and mqtt.max_inflight that \
         the replicated apply must ignore: its start log must warn, naming them; it logged:\n{}",
        c.node(3).log_since_start().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_through_the_admin_endpoint_and_the_cli_on_every_node() {
    let mut c = blocking(|| {
        cluster(3)
            .env("STARLING_MQTT_SNAPSHOT_ENTRIES", "50")
            .start_with_node_env(NODE3_LOCAL)
    });
    blocking(|| c.wait_for_leader(ELECTION));

    // Through node 2's admin endpoint.
    let (code, body) = blocking(|| {
        c.admin(
            2,
            "PUT",
            "/cluster/limits",
            Some(r#"{"max_queued_messages": 10}"#),
        )
    })
    .unwrap_or_else(|e| panic!("PUT /cluster/limits on node 2: {e}"));
    assert_eq!(
        code, 200,
        "PUT /cluster/limits {{\"max_queued_messages\": 10}} on node 2 must change the \
         replicated limit (answer: {body:?})"
    );
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(limit(&v, "max_queued_messages"), Some(10), "{body}");
    assert!(limit(&v, "max_inflight").is_some(), "{body}");
    assert!(limit(&v, "max_queued_bytes").is_some(), "{body}");

    // Through the command line, on node 3; printed on node 1.
    let admin = |id: u64| c.node(id).admin_addr().to_string();
    let out = blocking(|| c.cluster_cli(&["limits", "--admin", &admin(3), "--max-inflight", "4"]));
    assert!(
        out.status.success(),
        "starling cluster limits --max-inflight 4: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    blocking(|| {
        for id in c.ids() {
            wait_limits(&c, id, 10, 4);
        }
    });
    let out = blocking(|| c.cluster_cli(&["limits", "--admin", &admin(1)]));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "starling cluster limits: {out:?}");
    assert_eq!(
        number_after(&printed, "max_queued_messages"),
        Some(10),
        "{printed}"
    );
    assert_eq!(number_after(&printed, "max_inflight"), Some(4), "{printed}");
    assert!(printed.contains("max_queued_bytes"), "{printed}");

    // An offline session keeps 10 queued + 4 in flight; every node agrees.
    let keep: BTreeSet<u64> = (1..=14).collect();
    park_when_ready(c.addr(1), "lc-a", "lc/a").await;
    let (mut p, _) = connect_when_ready(c.addr(2), "lc-pub-a", true).await;
    publish_all(&mut p, &numbered("lc/a", 50), false).await;
    disconnect(p).await;
    same_state_everywhere(&c, "after 50 messages for a session limited to 10 + 4");
    let got = drain_session(c.addr(3), "lc-a", &keep, PROMPT).await;
    assert_eq!(
        got,
        keep.iter().copied().collect::<Vec<_>>(),
        "the first 10 + 4 messages, once each, the others dropped (served by node 3, whose \
         local configuration says 5 + 1)"
    );

    // A restarted node keeps them.
    blocking(|| {
        c.kill9(3);
        c.restart(3);
        c.wait_converged(CONVERGE);
        wait_limits(&c, 3, 10, 4);
    });

    // So does a node that catches up by snapshot.
    blocking(|| {
        c.kill9(1);
        c.wait_for_leader(ELECTION);
    });
    let (mut p, _) = connect_when_ready(c.addr(2), "lc-fill", true).await;
    for i in 0..120 {
        publish_acked(&mut p, &format!("lc/r/{i}"), "r", true).await;
    }
    disconnect(p).await;
    blocking(|| {
        c.restart(1);
        c.wait_converged(CONVERGE);
    });
    assert!(
        snapshot_install_line(&c, 1).is_some(),
        "node 1 must catch up by snapshot here:\n{}",
        c.node(1).log_since_start().join("\n")
    );
    blocking(|| wait_limits(&c, 1, 10, 4));
    park_when_ready(c.addr(1), "lc-b", "lc/b").await;
    let (mut p, _) = connect_when_ready(c.addr(3), "lc-pub-b", true).await;
    publish_all(&mut p, &numbered("lc/b", 50), false).await;
    disconnect(p).await;
    same_state_everywhere(&c, "after a restart and a catch-up by snapshot");
    let got = drain_session(c.addr(1), "lc-b", &keep, PROMPT).await;
    assert_eq!(
        got,
        keep.iter().copied().collect::<Vec<_>>(),
        "after a catch-up by snapshot, node 1 serves what the limits in force kept"
    );
}

#[test]
fn numbers_are_read_after_their_key() {
    assert_eq!(
        number_after(r#"{"max_inflight": 4}"#, "max_inflight"),
        Some(4)
    );
    assert_eq!(number_after("max_inflight = 4\n", "max_inflight"), Some(4));
    assert_eq!(
        number_after("max_inflight: none, x 4", "max_inflight"),
        None
    );
    assert_eq!(number_after("nothing", "max_inflight"), None);
}
