//! Membership changes through Raft: a fourth node joins (`starling cluster join`), gets the
//! state, and leaves (`starling cluster leave`); the cluster commits throughout, and afterwards
//! two of the three remaining nodes are a quorum again.

use std::time::Instant;

use starling_testkit::cluster::voters;

use crate::support::*;

fn wait_voters(c: &starling_testkit::TestCluster, nodes: &[u64], want: &[u64]) {
    c.wait(
        CONVERGE,
        &format!("nodes {nodes:?} to report voters {want:?}"),
        || {
            nodes
                .iter()
                .all(|id| c.try_status(*id).is_ok_and(|s| voters(&s) == want))
        },
    );
}

fn cli_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_joins_and_leaves() {
    let mut c = blocking(|| cluster(3).start());
    let leader = blocking(|| c.wait_for_leader(ELECTION));
    let (mut publ, _) = connect(c.addr(leader), "mem-pub", true).await;
    publish_acked(&mut publ, "mem/before", "before-join", true).await;

    // Node 4 starts empty, waiting to be added; nobody counts it yet.
    blocking(|| c.start_joining(4));
    let s4 = blocking(|| c.status(4));
    assert_eq!(
        voters(&s4),
        Vec::<u64>::new(),
        "a joining node has no configuration yet: {s4}"
    );
    assert_eq!(s4["retained"], 0, "{s4}");

    let admin1 = c.node(1).admin_addr().to_string();
    let raft4 = c.node(4).raft_addr().to_string();
    let admin4 = c.node(4).admin_addr().to_string();
    let t = Instant::now();
    let out = blocking(|| {
        c.cluster_cli(&[
            "join",
            "--admin",
            &admin1,
            "--node-id",
            "4",
            "--raft-address",
            &raft4,
            "--admin-address",
            &admin4,
        ])
    });
    cli_ok(&out, "starling cluster join");
    blocking(|| wait_voters(&c, &[1, 2, 3, 4], &[1, 2, 3, 4]));
    let conv = blocking(|| c.wait_converged(CONVERGE));
    measure(
        "join: from `cluster join` to 4 voters converged",
        format!("{:?}", t.elapsed()),
    );
    assert_eq!(conv.nodes, vec![1, 2, 3, 4]);
    let s4 = blocking(|| c.status(4));
    assert_eq!(s4["retained"], 1, "{s4}");
    let members = s4["members"].as_array().unwrap();
    let m4 = members
        .iter()
        .find(|m| m["id"] == 4)
        .expect("node 4 listed");
    assert_eq!(m4["raft_address"].as_str(), Some(raft4.as_str()), "{s4}");

    // A member now, it restarts from its own disk (the snapshot it was sent, the log after).
    blocking(|| c.kill9(4));
    blocking(|| c.restart(4));
    blocking(|| c.wait_for_leader(ELECTION));
    let conv = blocking(|| c.wait_converged(CONVERGE));
    assert_eq!(conv.nodes, vec![1, 2, 3, 4]);
    assert_eq!(voters(&blocking(|| c.status(4))), vec![1, 2, 3, 4]);

    // It serves the state, and commits go through it too.
    let got = retained_on(c.addr(4), "mem/#", 1).await;
    assert_eq!(&got[0].payload[..], b"before-join");
    let (mut p4, _) = connect(c.addr(4), "mem-pub4", true).await;
    publish_acked(&mut p4, "mem/via4", "through-4", true).await;
    disconnect(p4).await;
    let conv = blocking(|| c.wait_converged(CONVERGE));
    assert_eq!(conv.nodes, vec![1, 2, 3, 4]);

    // Node 4 leaves, asked through node 2.
    let admin2 = c.node(2).admin_addr().to_string();
    let out = blocking(|| c.cluster_cli(&["leave", "--admin", &admin2, "--node-id", "4"]));
    cli_ok(&out, "starling cluster leave");
    blocking(|| wait_voters(&c, &[1, 2, 3], &[1, 2, 3]));
    blocking(|| c.kill9(4));
    publish_acked(&mut publ, "mem/after", "after-leave", true).await;
    let conv = blocking(|| c.wait_converged(CONVERGE));
    assert_eq!(conv.nodes, vec![1, 2, 3]);
    for id in [1, 2, 3] {
        assert_eq!(blocking(|| c.status(id))["retained"], 3);
    }

    // With four voters, two of them down would stop every commit; with three, one follower
    // down does not.
    let leader = blocking(|| c.wait_for_leader(ELECTION));
    let follower = a_follower(&c, leader);
    blocking(|| c.kill9(follower));
    let (mut pl, _) = connect(c.addr(leader), "mem-pub-last", true).await;
    publish_acked(&mut pl, "mem/quorum", "two-of-three", true).await;
    disconnect(pl).await;
    disconnect(publ).await;
    blocking(|| c.restart(follower));
    let conv = blocking(|| c.wait_converged(CONVERGE));
    assert_eq!(conv.nodes, vec![1, 2, 3]);
    assert_eq!(blocking(|| c.status(follower))["retained"], 4);
}
