//! The load generator's smoke run against the `starling` binary of this package: every scenario
//! of `starling-bench`, tiny (a few thousand messages, a few hundred connections, QoS 2 with two
//! subscriber reconnects). It checks that the harness works and that nothing is lost (and, at
//! QoS 2, nothing duplicated); a second test does the same for the cluster runner's rows on a
//! three-node cluster. It never asserts a speed.
//!
//! `cargo test -p starling --test bench_smoke` (debug build), or
//! `starling-bench smoke --starling target/release/starling [--cluster]`.

use std::path::Path;

#[test]
fn every_scenario_runs_and_loses_nothing() {
    let runs = starling_bench::smoke::run(Path::new(env!("CARGO_BIN_EXE_starling")))
        .unwrap_or_else(|e| panic!("smoke run failed: {e}"));
    assert_eq!(runs.len(), starling_bench::smoke::SMOKE_ROWS.len());
    for s in &runs {
        assert!(s.ok, "not clean: {}", s.to_json());
    }
}

/// The cluster runner's smoke rows on a three-node cluster of this package's `starling`
/// (publishers on node 1, subscribers on nodes 2 and 3): fast-path QoS 0/1 and the durable QoS 2
/// path with subscriber reconnects. A few seconds on a debug build.
#[test]
fn cluster_rows_run_across_nodes_and_lose_nothing() {
    let runs = starling_bench::cluster::smoke(Path::new(env!("CARGO_BIN_EXE_starling")))
        .unwrap_or_else(|e| panic!("cluster smoke run failed: {e}"));
    assert_eq!(runs.len(), starling_bench::cluster::SMOKE_ROWS.len());
    for s in &runs {
        assert!(s.ok, "not clean: {}", s.to_json());
    }
}
