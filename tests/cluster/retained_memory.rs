//! Memory and disk under large retained messages (issue 12, item 7). One client replaces a
//! 256 KiB retained message 2,000 times at QoS 0 through node 1; the state then holds one
//! message, so every node's memory and data directory must stay small. Snapshots are taken on
//! bytes of log as well as on entries (`mqtt.snapshot_bytes`, 16 MiB by default); when they
//! were taken by entry count only (every 100,000 entries by default), every replacement stayed
//! in each node's in-memory log and on its disk (620-660 MiB of RSS, 990 MiB on disk).
//!
//! The replacements go in windows of 10, each closed by a tiny retained QoS 1 PUBLISH on
//! another topic whose PUBACK (after its commit, and the node handles a client's publishes in
//! order) says the window is committed: the stream moves as fast as the cluster commits it.
//! (Before retained QoS 0 publishes waited for their commit, an unpaced stream reached the
//! store without backpressure, built entries of many replacements that could not be
//! replicated, and cost the node its leadership; `tests/protocol/backpressure.rs` covers the
//! backpressure itself.)
//!
//! `STARLING_TEST_BIN=target/release/starling` runs the same scenario on another build of the
//! binary (the suite runs the debug build).

use std::time::{Duration, Instant};

use starling_codec::QoS;

use crate::support::*;

const PAYLOAD: usize = 256 * 1024;
const REPLACEMENTS: usize = 2000;
const WINDOW: usize = 10;
const MIB: u64 = 1024 * 1024;
/// Per node, after convergence.
const MAX_RSS: u64 = 150 * MIB;
/// Per node's data directory.
const MAX_DISK: u64 = 300 * MIB;
/// How long one window may take to commit.
const WINDOW_COMMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_retained_replacements_keep_memory_and_disk_bounded() {
    let bin = std::env::var("STARLING_TEST_BIN").unwrap_or_else(|_| crate::common::BIN.into());
    let c = blocking(|| starling_testkit::ClusterBuilder::new(&bin, 3).start());
    blocking(|| c.wait_for_leader(ELECTION));
    let (mut p, _) = connect_when_ready(c.addr(1), "big-pub", true).await;
    let mut payload = vec![b'x'; PAYLOAD];
    let t = Instant::now();
    for window in 0..REPLACEMENTS / WINDOW {
        for i in window * WINDOW..(window + 1) * WINDOW {
            payload[..8].copy_from_slice(format!("{i:08}").as_bytes());
            p.publish("big/r", &payload, QoS::AtMostOnce, true, 0).await;
        }
        let pid = (window % 65_000) as u16 + 1;
        p.send(&publish_packet(
            "big/window",
            &window.to_string(),
            true,
            pid,
        ))
        .await;
        if let Err(e) = wait_puback(&mut p, pid, WINDOW_COMMIT).await {
            panic!(
                "window {window} of {WINDOW} replacements not committed within \
                 {WINDOW_COMMIT:?} ({e:?})\n{}\n{}",
                blocking(|| c.describe()),
                blocking(|| c.log_tails(20))
            );
        }
    }
    // The last replacement, small, so that what the state holds is plain to see.
    publish_acked(&mut p, "big/r", "last", true).await;
    disconnect(p).await;
    let acked = t.elapsed();
    let conv = blocking(|| c.wait_converged(CONVERGE));
    let converged = t.elapsed();
    measure(
        "2,000 replacements of a 256 KiB retained message (QoS 0, windows of 10) through node 1",
        format!(
            "the last one acknowledged after {acked:?}, every node converged at applied index \
             {} after {converged:?}",
            conv.applied_index
        ),
    );
    for id in c.ids() {
        let r = retained_on(c.addr(id), "big/r", 1).await;
        assert_eq!(
            &r[0].payload[..],
            b"last",
            "node {id} holds the last replacement"
        );
    }

    let mut over = Vec::new();
    for id in c.ids() {
        let rss = blocking(|| c.rss_bytes(id)).expect("VmRSS of a running node");
        let peak = blocking(|| c.peak_rss_bytes(id)).unwrap_or(0);
        let disk = blocking(|| c.data_dir_bytes(id));
        measure(
            &format!("node {id} after the replacements"),
            format!(
                "RSS {} MiB (peak {} MiB), data directory {} MiB",
                rss / MIB,
                peak / MIB,
                disk / MIB
            ),
        );
        if rss >= MAX_RSS {
            over.push(format!(
                "node {id}: RSS {} MiB >= {} MiB",
                rss / MIB,
                MAX_RSS / MIB
            ));
        }
        if disk >= MAX_DISK {
            over.push(format!(
                "node {id}: data directory {} MiB >= {} MiB",
                disk / MIB,
                MAX_DISK / MIB
            ));
        }
    }
    assert!(
        over.is_empty(),
        "a state holding one 256 KiB retained message must leave every node under {} MiB of \
         RSS and {} MiB on disk:\n{}",
        MAX_RSS / MIB,
        MAX_DISK / MIB,
        over.join("\n")
    );
}
