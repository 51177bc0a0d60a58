//! The simulator's search: many seeds, each a whole cluster run under faults and checked.
//!
//! `cargo test -p starling-sim --test sim` runs a few seeds (a debug build is slow); CI runs the
//! optimised search: `STARLING_SIM_SECS=300 STARLING_SIM_MIN_SEEDS=2000 cargo test --profile sim
//! -p starling-sim --test sim -- --nocapture`. `STARLING_SIM_SEED=<seed>` replays one seed and
//! prints its history. docs/simulation.md has the details.

use starling_sim::{Options, Search};

fn env(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn seeds_keep_every_promise() {
    if env("STARLING_SIM_SEED").is_some() {
        return;
    }
    // A debug build runs about ten times slower than the optimised profile.
    let default = if cfg!(debug_assertions) { 16 } else { 200 };
    let search = Search::new(1, default).from_env();
    let summary = search.run();
    println!("{}", summary.describe());
    for f in &summary.failures {
        println!(
            "\n===== seed {} =====\nfaults: {:#?}\nviolations:\n  {}\nhistory:\n{}",
            f.seed,
            f.faults,
            f.violations.join("\n  "),
            f.history
        );
    }
    assert!(
        summary.failures.is_empty(),
        "{} of {} seeds failed (replay one with STARLING_SIM_SEED=...)",
        summary.failures.len(),
        summary.seeds
    );
    if let Some(min) = env("STARLING_SIM_MIN_SEEDS") {
        assert!(
            summary.seeds >= min,
            "only {} seeds in the budget, {min} required",
            summary.seeds
        );
        // A search that did not exercise what it must is no test (a few seeds may miss some).
        for (what, n) in summary.required_coverage() {
            assert!(n > 0, "the search never exercised: {what}");
        }
    }
}

#[test]
fn a_seed_replays_exactly() {
    if env("STARLING_SIM_SEED").is_some() {
        return;
    }
    let run = |seed| {
        let r = starling_sim::run(Options::new(seed));
        (
            r.steps,
            r.sim_ms,
            r.messages,
            r.faults,
            r.violations,
            r.coverage.derived_checks,
        )
    };
    assert_eq!(run(7), run(7), "the same seed, the same run");
    assert_ne!(run(7).0, run(8).0, "another seed, another run");
}

#[test]
fn replay() {
    let Some(seed) = env("STARLING_SIM_SEED") else {
        return;
    };
    let mut opts = Options::new(seed);
    opts.full_history = true;
    let r = starling_sim::run(opts);
    println!(
        "seed {seed}: {} events, {:.1} s simulated, {} messages\nfaults: {:#?}\ncoverage: {:?}\n\nhistory:\n{}",
        r.steps,
        r.sim_ms as f64 / 1000.0,
        r.messages,
        r.faults,
        r.coverage,
        r.history
    );
    assert!(
        r.passed(),
        "seed {seed} violations:\n  {}",
        r.violations.join("\n  ")
    );
}
