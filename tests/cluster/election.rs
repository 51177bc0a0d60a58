//! A fresh cluster elects exactly one leader that every node knows, and commits through it.

use std::time::Instant;

use starling_testkit::cluster::voters;

use crate::support::*;

/// Starts `n` nodes and checks the election: one leader, everyone else a follower of it in the
/// same term, every node with the full voter set, the leader's first entry applied everywhere.
fn elects_a_leader(n: u64) {
    let c = cluster(n).start();
    let t = Instant::now();
    let leader = c.wait_for_leader(ELECTION);
    measure(
        &format!("first election, {n} nodes (from all admin ports up)"),
        format!("{:?}", t.elapsed()),
    );
    let all: Vec<u64> = (1..=n).collect();
    let statuses: Vec<_> = all.iter().map(|id| c.status(*id)).collect();
    let term = statuses[0]["term"].as_u64().unwrap();
    assert!(term >= 1, "a leader is elected in a term >= 1");
    for (id, s) in all.iter().zip(&statuses) {
        assert_eq!(s["node_id"].as_u64(), Some(*id));
        let want_role = if *id == leader { "leader" } else { "follower" };
        assert_eq!(s["role"], want_role, "node {id}: {s}");
        assert_eq!(s["leader"].as_u64(), Some(leader), "node {id}: {s}");
        assert_eq!(s["term"].as_u64(), Some(term), "node {id}: {s}");
        assert_eq!(voters(s), all, "node {id}: {s}");
    }
    // A new leader appends an empty entry of its term; once applied everywhere the nodes agree.
    let conv = c.wait_converged(CONVERGE);
    assert!(conv.applied_index >= 1, "{conv:?}");
    assert_eq!(conv.nodes, all);
}

#[test]
fn three_nodes_elect_a_leader() {
    elects_a_leader(3);
}

#[test]
fn five_nodes_elect_a_leader() {
    elects_a_leader(5);
}
