//! A graceful stop (SIGTERM) ends with the node's storage closed and a snapshot of what it
//! applied: a restart after SIGTERM restores from that shutdown snapshot (docs/cluster.md).
//! The process used to exit while the Raft node still had the snapshot and the storage
//! shutdown queued, so the next start repaired the storage file as after a crash, and the
//! snapshot was often missing.

use crate::support::*;

const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_writes_its_shutdown_snapshot_and_closes_its_storage() {
    let mut c = blocking(|| cluster(3).start());
    blocking(|| c.wait_for_leader(ELECTION));
    let mut problems = Vec::new();
    for round in 1..=ROUNDS {
        // Something to snapshot, and a client that the stop closes.
        let _sub = Collector::start(c.addr(2), "gs-sub", false, "gs/#").await;
        publish_once(c.addr(1), "gs-pub", "gs/1", &format!("m{round}")).await;
        let at_stop = blocking(|| c.wait_converged(CONVERGE)).applied_index;
        let code = blocking(|| c.stop(2));
        assert_eq!(code, Some(0), "node 2 exits 0 after SIGTERM");
        blocking(|| {
            c.restart(2);
            c.wait_for_leader(ELECTION);
            c.wait_converged(CONVERGE);
        });
        let log = c.node(2).log_since_start();
        let restored = log
            .iter()
            .filter(|l| l.contains("state restored from snapshot"))
            .filter_map(|l| log_field(l, "index="))
            .max();
        let repaired = log.iter().any(|l| l.contains("unclean shutdown"));
        measure(
            &format!("graceful restart {round} of node 2"),
            format!(
                "applied {at_stop} when stopped; restored the snapshot at {restored:?}; \
                 storage repaired as after a crash: {repaired}"
            ),
        );
        if repaired {
            problems.push(format!(
                "round {round}: the storage was not closed (repaired at the next start)"
            ));
        }
        if restored.is_none_or(|i| i < at_stop) {
            problems.push(format!(
                "round {round}: restored the snapshot at {restored:?}, not one at {at_stop} or \
                 later"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "a node stopped with SIGTERM must close its storage and leave a snapshot of what it \
         applied:\n{}",
        problems.join("\n")
    );
}
