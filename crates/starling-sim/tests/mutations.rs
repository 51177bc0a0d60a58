//! The simulator finds each of the known bugs of the replicated core when it is put back
//! (`--features mutations`; never in the binary): within 500 seeds, and the router-index one by
//! the lost-message checker alone, with the derived-index checks off.
#![cfg(feature = "mutations")]

use starling_sim::mutations::{set, Mutation, ALL};
use starling_sim::Search;

const WITHIN: u64 = 500;

#[test]
fn the_simulator_finds_every_known_bug() {
    for m in ALL {
        set(m, true);
        let mut search = Search::new(1, WITHIN);
        search.stop_at_failure = true;
        if m == Mutation::NoRouteRebuild {
            search.options.derived_checks = false;
        }
        let summary = search.run();
        set(m, false);
        let found = summary
            .failures
            .first()
            .map(|f| (f.seed, f.violations[0].clone()));
        println!(
            "mutation {m:?}: {}",
            match &found {
                Some((seed, v)) => format!("found by seed {seed}: {v}"),
                None => format!("NOT found in {} seeds", summary.seeds),
            }
        );
        let Some((_, first)) = found else {
            panic!("the simulator did not find {m:?} within {WITHIN} seeds");
        };
        if m == Mutation::NoRouteRebuild {
            let f = summary.failures.first().expect("a failure");
            assert!(
                f.violations.iter().any(|v| v.starts_with("LOST")),
                "the lost-message checker must find it on its own; found: {first}"
            );
        }
    }
}
