//! What the failover tests share: the cluster's settings, strict clients placed on chosen
//! nodes, the placement of publisher, subscriber and leader on three different nodes, failure
//! diagnostics, figures, and a seeded random source.

use std::net::SocketAddr;
use std::time::Duration;

use starling_testkit::strict::{Event, Record};
use starling_testkit::{ClusterBuilder, StrictClient, StrictConfig, TestCluster};

/// The broker binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// How long a test waits for a leader.
pub(crate) const ELECTION: Duration = Duration::from_secs(15);

/// How long a test waits for the nodes to converge.
pub(crate) const CONVERGE: Duration = Duration::from_secs(30);

/// How long a test waits for something that should happen promptly (a SUBACK, a pause).
pub(crate) const PROMPT: Duration = Duration::from_secs(10);

/// How long a QoS flow may take to complete across a failover (an election, the commit
/// timeout, a reconnection, resends).
pub(crate) const FLOW: Duration = Duration::from_secs(30);

/// The brokers' commit timeout (`mqtt.commit_timeout_secs`) in these tests.
pub(crate) const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);

/// A cluster of `n` nodes: 50 ms Raft ticks (an election about half a second after the leader
/// is missed), a 2 s commit timeout. The replicated queue limits stay at their defaults
/// (1,000 messages a session), above what these tests queue; the soak raises them.
pub(crate) fn cluster(n: u64) -> ClusterBuilder {
    ClusterBuilder::new(BIN, n)
        .env("STARLING_CLUSTER_TICK_MS", "50")
        .env(
            "STARLING_MQTT_COMMIT_TIMEOUT_SECS",
            COMMIT_TIMEOUT.as_secs().to_string(),
        )
        // Quiet: no $SYS traffic in the logs.
        .env("STARLING_MQTT_SYS_INTERVAL_SECS", "0")
}

/// Runs cluster operations (process start/stop, admin HTTP, polling) without stalling the
/// runtime's other tasks.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// The MQTT addresses of every node, by node id.
pub(crate) fn addrs(c: &TestCluster) -> Vec<SocketAddr> {
    c.ids().into_iter().map(|id| c.addr(id)).collect()
}

/// Position of node `id` in [`addrs`].
pub(crate) fn index_of(c: &TestCluster, id: u64) -> usize {
    c.ids()
        .iter()
        .position(|i| *i == id)
        .unwrap_or_else(|| panic!("no node {id}"))
}

/// Strict-client settings for the test clusters: a stopped node is given up after 3 s of
/// silence; failover may take up to a minute.
pub(crate) fn config(c: &TestCluster, client_id: &str) -> StrictConfig {
    let mut cfg = StrictConfig::new(client_id, addrs(c));
    cfg.connect_timeout = COMMIT_TIMEOUT + Duration::from_secs(3);
    cfg.response_timeout = Duration::from_secs(3);
    cfg.ping_interval = Duration::from_millis(500);
    cfg.failover_deadline = Duration::from_secs(60);
    cfg
}

/// A strict (persistent) client connected first to node `node`.
pub(crate) async fn strict_at(c: &TestCluster, client_id: &str, node: u64) -> StrictClient {
    strict_with(config(c, client_id), c, node).await
}

/// A strict client with `cfg`, connected first to node `node`.
pub(crate) async fn strict_with(cfg: StrictConfig, c: &TestCluster, node: u64) -> StrictClient {
    let id = cfg.client_id.clone();
    let client = StrictClient::connect_at(cfg, index_of(c, node))
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}\n{}", blocking(|| c.describe())));
    assert_eq!(
        client.connected_to(),
        Some(c.addr(node)),
        "{id} connected to node {node}"
    );
    client
}

/// Moves `client` to node `node` (DISCONNECT, then CONNECT there; the session resumes).
pub(crate) async fn move_to(client: &StrictClient, c: &TestCluster, node: u64) {
    let want = c.addr(node);
    for _ in 0..5 {
        if client.connected_to() == Some(want) {
            return;
        }
        client
            .reconnect(Some(index_of(c, node)))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", client.client_id()));
    }
    panic!(
        "{} could not be moved to node {node}: {:?}",
        client.client_id(),
        client.connected_to()
    );
}

/// Which node does what: publisher, subscriber and leader on three different nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The Raft leader.
    pub(crate) leader: u64,
    /// The publisher's node (a follower).
    pub(crate) publisher: u64,
    /// The subscriber's node (the other follower).
    pub(crate) subscriber: u64,
}

/// Waits for a leader and places the publisher and the subscriber on the two followers.
pub(crate) fn place(c: &TestCluster) -> Placement {
    let leader = blocking(|| c.wait_for_leader(ELECTION));
    let followers: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    assert!(followers.len() >= 2, "three nodes");
    Placement {
        leader,
        publisher: followers[0],
        subscriber: followers[1],
    }
}

/// Payload of message `seq` of `publisher`.
pub(crate) fn payload(publisher: &str, seq: u64) -> String {
    format!("{publisher}/{seq}")
}

/// The last `n` records of a client's history, one a line.
pub(crate) fn history_tail(client: &StrictClient, n: usize) -> String {
    let h = client.history();
    let start = h[0].at;
    h[h.len().saturating_sub(n)..]
        .iter()
        .map(|r| format!("  +{:>8.3}s {:?}", (r.at - start).as_secs_f64(), r.event))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything worth reading when a failover test fails: the nodes, the clients' recent
/// histories, the nodes' logs.
pub(crate) fn diagnose(c: &TestCluster, clients: &[&StrictClient]) -> String {
    let mut out = blocking(|| c.describe());
    for cl in clients {
        out.push_str(&format!(
            "\n--- {} (connected to {:?}, outbound pending {}, inbound awaiting {:?}, fatal {:?}):\n{}",
            cl.client_id(),
            cl.connected_to(),
            cl.outbound_pending(),
            cl.inbound_awaiting(),
            cl.fatal(),
            history_tail(cl, 40)
        ));
    }
    out.push('\n');
    out.push_str(&blocking(|| c.log_tails(25)));
    out
}

/// Sessions the broker lost (a resumed connection without session-present).
pub(crate) fn sessions_lost(h: &[Record]) -> usize {
    h.iter()
        .filter(|r| matches!(r.event, Event::SessionLost(_)))
        .count()
}

/// Prints a measured figure in a form the report can collect (`cargo test -- --nocapture`).
pub(crate) fn measure(what: &str, value: impl std::fmt::Display) {
    println!("MEASURE {what}: {value}");
}

/// p50, p99 and max of `v` (sorted here), as text.
pub(crate) fn percentiles(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "n={} p50={:?} p99={:?} max={:?}",
        v.len(),
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    )
}

pub(crate) use starling_testkit::Rng;

/// A number from the environment, or `default`.
pub(crate) fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
